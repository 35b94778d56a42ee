//! Downloading: find a video's manifest and holders among peers, then fetch the missing
//! chunks from several peers in parallel, verifying each chunk before it is stored.
//!
//! Work is a priority queue of wanted chunks ordered by (class, rank, fragment, chunk):
//! - [`priority::URGENT`]: bytes a player needs next, deadline-first (the rank is the
//!   order in which they were asked for). While urgent chunks wait for a peer or are in
//!   flight from it, no background chunk starts on that peer, so a player's bytes never
//!   share a peer's upload with the background download.
//! - [`priority::EARLY`]: the first and the last fragment, from the start: a player reads
//!   the container's header first and often its index, which may sit at the end.
//! - [`priority::NORMAL`]: everything else, rarest first.
//!
//! A [`Download`] is one such long-lived download whose priorities can change while it
//! runs ([`Download::want_range`], [`Download::prioritize`]); [`Fetcher::fetch`] is a
//! download awaited to its end. A peer that fails a chunk is not asked for that chunk
//! again in this round; a peer whose bytes fail verification is banned for the rest of
//! the download. When no peer can serve what is left, the fetcher asks every peer for
//! its have-set again, a bounded number of times with backoff.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::addr::PeerAddr;
use crate::ids::{FragmentIndex, VideoId};
use crate::manifest::Manifest;
use crate::protocol::{ErrorCode, PeerClient, ProtocolError, Timeouts, VideoSummary};
use crate::store::{ChunkOutcome, FragmentStatus, FragmentStore, StoreError};
use crate::transport::{Connection, Transports};

/// Connections and idle protocol sessions to peers, reused across requests.
pub struct PeerPool {
    transports: Transports,
    timeouts: Timeouts,
    conns: Mutex<HashMap<PeerAddr, Arc<dyn Connection>>>,
    idle: Mutex<HashMap<PeerAddr, Vec<PeerClient>>>,
}

impl std::fmt::Debug for PeerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerPool")
            .field("transports", &self.transports)
            .finish_non_exhaustive()
    }
}

const MAX_IDLE_PER_PEER: usize = 16;

impl PeerPool {
    /// A pool dialing with `transports`.
    pub fn new(transports: Transports, timeouts: Timeouts) -> Self {
        PeerPool {
            transports,
            timeouts,
            conns: Mutex::default(),
            idle: Mutex::default(),
        }
    }

    /// The transports this pool dials with.
    pub fn transports(&self) -> &Transports {
        &self.transports
    }

    /// An idle session to `addr`, or a new one (dialing if there is no connection).
    pub async fn session(&self, addr: &PeerAddr) -> Result<PeerClient, ProtocolError> {
        if let Some(s) = self
            .idle
            .lock()
            .unwrap()
            .get_mut(addr)
            .and_then(|v| v.pop())
        {
            return Ok(s);
        }
        let cached = self.conns.lock().unwrap().get(addr).cloned();
        let conn = match cached {
            Some(c) => c,
            None => {
                let dialed = tokio::time::timeout(self.timeouts.io, self.transports.dial(addr))
                    .await
                    .map_err(|_| ProtocolError::Timeout("connecting"))??;
                let c: Arc<dyn Connection> = Arc::from(dialed);
                self.conns.lock().unwrap().insert(addr.clone(), c.clone());
                c
            }
        };
        match PeerClient::open(conn, self.timeouts).await {
            Ok(s) => Ok(s),
            Err(e) => {
                self.forget(addr);
                Err(e)
            }
        }
    }

    /// Returns a healthy session for reuse.
    pub fn put_back(&self, addr: &PeerAddr, s: PeerClient) {
        let mut idle = self.idle.lock().unwrap();
        let v = idle.entry(addr.clone()).or_default();
        if v.len() < MAX_IDLE_PER_PEER {
            v.push(s);
        }
    }

    /// Drops the connection and idle sessions to `addr` (after an error).
    pub fn forget(&self, addr: &PeerAddr) {
        self.conns.lock().unwrap().remove(addr);
        self.idle.lock().unwrap().remove(addr);
    }
}

/// Hears about a fetch's progress (progress bars, console lines, summaries).
pub trait FetchObserver: Send + Sync {
    /// The plan is known: total bytes wanted and how many are already verified here.
    fn started(&self, _video: VideoId, _manifest: &Manifest, _wanted_bytes: u64, _already: u64) {}
    /// A chunk arrived and verified.
    fn chunk(&self, _index: FragmentIndex, _bytes: u64, _from: &PeerAddr) {}
    /// A fragment completed and verified.
    fn fragment(&self, _index: FragmentIndex, _bytes: u64, _from: &[PeerAddr]) {}
    /// A peer failed (a chunk, a probe); the fetch goes on without it for that work.
    fn peer_failed(&self, _peer: &PeerAddr, _error: &str) {}
}

/// An observer that hears nothing.
#[derive(Debug)]
pub struct Quiet;
impl FetchObserver for Quiet {}

/// What to fetch.
#[derive(Debug, Clone, Default)]
pub struct FetchRequest {
    /// The video; `None` means the only video the peers offer (or `default_video`).
    pub video: Option<VideoId>,
    /// Fragments wanted; `None` means all.
    pub fragments: Option<Vec<FragmentIndex>>,
    /// Peers to ask.
    pub peers: Vec<PeerAddr>,
}

/// What a fetch did.
#[derive(Debug, Clone)]
pub struct FetchReport {
    /// The video.
    pub video: VideoId,
    /// Its manifest.
    pub manifest: Arc<Manifest>,
    /// Fragments completed by this fetch, with the peers their chunks came from.
    pub fetched: Vec<(FragmentIndex, Vec<PeerAddr>)>,
    /// Wanted fragments that were already complete.
    pub already_complete: Vec<FragmentIndex>,
    /// Chunks already verified in `.part` files when the fetch started (resumed).
    pub resumed_chunks: u64,
    /// Body bytes received and verified.
    pub bytes: u64,
    /// Wall time.
    pub elapsed: Duration,
}

/// Why a fetch failed.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// No peer answered.
    #[error("no peer answered ({0}); check the addresses and that the peers are running")]
    NoPeers(String),
    /// No video could be chosen.
    #[error("{0}")]
    NoVideo(String),
    /// Nobody had the manifest.
    #[error("no peer could provide the manifest of video {0}")]
    NoManifest(VideoId),
    /// A fragment index is out of range.
    #[error("video {video} has fragments 0..{count}; there is no fragment {index}")]
    NoSuchFragment {
        /// Video.
        video: VideoId,
        /// Asked for.
        index: FragmentIndex,
        /// Count.
        count: u32,
    },
    /// Some fragments could not be fetched from any peer.
    #[error("could not fetch fragment(s) {missing:?} from any peer{}", last_error.as_ref().map(|e| format!(" (last error: {e})")).unwrap_or_default())]
    Incomplete {
        /// Still missing.
        missing: Vec<FragmentIndex>,
        /// The last peer error seen.
        last_error: Option<String>,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Cancelled (Ctrl-C); verified chunks are kept for resume.
    #[error("cancelled; verified chunks are kept and the next fetch resumes from them")]
    Cancelled,
}

/// Tuning of a fetch.
#[derive(Debug, Clone, Copy)]
pub struct FetchOptions {
    /// Chunk requests in flight at once, across peers.
    pub concurrency: usize,
    /// Chunk requests in flight to one peer.
    pub per_peer: usize,
    /// Times to re-ask peers for their have-sets when nobody can serve what is left.
    pub max_rounds: u32,
    /// Urgent chunk requests in flight to one peer. 1 gives a player's next chunk the
    /// peer's whole upload (the shortest time to first byte); more pipeline requests
    /// on links whose round trip is long next to a chunk's transfer time.
    pub urgent_per_peer: usize,
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            concurrency: 8,
            per_peer: 4,
            max_rounds: 5,
            urgent_per_peer: 1,
        }
    }
}

/// Priority classes: lower goes first.
pub mod priority {
    /// A player is waiting for these bytes: deadline-first, ahead of everything else.
    pub const URGENT: u8 = 0;
    /// The first and the last fragment: a player needs the container's header and
    /// index (often at the end) before it can play anything.
    pub const EARLY: u8 = 1;
    /// Background download, rarest first.
    pub const NORMAL: u8 = 2;
}

/// A chunk: (fragment, chunk within the fragment).
type Item = (FragmentIndex, u32);
/// Heap order: (class, rank, fragment, chunk). The rank is the deadline order for
/// URGENT, 0 for EARLY and the number of holders (rarity) for NORMAL.
type Key = (u8, u64, FragmentIndex, u32);

/// The chunks of `manifest` that bytes `offset..offset+len` of the whole file touch.
fn covering(manifest: &Manifest, offset: u64, len: u64) -> Vec<Item> {
    let end = offset.saturating_add(len).min(manifest.size);
    let mut out = Vec::new();
    if offset >= end {
        return out;
    }
    let cs = manifest.chunk_size as u64;
    let first = manifest
        .fragments
        .partition_point(|f| f.offset + f.size <= offset);
    for f in &manifest.fragments[first..] {
        if f.offset >= end {
            break;
        }
        let from = offset.saturating_sub(f.offset) / cs;
        let to = (end.min(f.offset + f.size) - f.offset - 1) / cs;
        out.extend((from..=to).map(|c| (f.index, c as u32)));
    }
    out
}

struct PeerState {
    addr: PeerAddr,
    holds: HashSet<FragmentIndex>,
    in_flight: usize,
    urgent_in_flight: usize,
    failures: u32,
    banned: bool,
    dead: bool,
}

/// The shared scheduling state of one download.
///
/// The heap may hold stale entries (an item re-queued with another priority): an entry
/// counts only if it equals the item's key in `queued`.
struct Sched {
    heap: BinaryHeap<Reverse<Key>>,
    /// Items waiting in the heap, with their live key.
    queued: HashMap<Item, Key>,
    urgent_queued: usize,
    urgent_in_flight: usize,
    /// Items with a class above NORMAL: (class, rank).
    boost: HashMap<Item, (u8, u64)>,
    /// Fragments whose chunks are EARLY when nothing asks for them more urgently.
    early: HashSet<FragmentIndex>,
    /// Items not verified yet: queued, in flight or stalled.
    pending: HashSet<Item>,
    next_rank: u64,
    /// Urgent requests in flight to one peer.
    urgent_per_peer: usize,
    /// Items no live peer holds; retried after a refresh.
    stalled: Vec<Item>,
    in_flight: usize,
    peers: Vec<PeerState>,
    excluded: HashMap<Item, HashSet<usize>>,
    left: HashMap<FragmentIndex, u32>,
    sources: HashMap<FragmentIndex, BTreeSet<usize>>,
    rounds: u32,
    refreshing: bool,
    last_error: Option<String>,
    bytes: u64,
    done: Vec<(FragmentIndex, Vec<PeerAddr>)>,
    fatal: Option<FetchError>,
    /// The workers are gone: nothing queued now would be fetched.
    finished: bool,
}

/// One chunk request handed to a worker.
struct Job {
    item: Item,
    peer: usize,
    addr: PeerAddr,
    urgent: bool,
}

enum Next {
    Job(Job),
    Wait,
    Refresh,
    Done,
}

impl Sched {
    fn new(peers: Vec<PeerState>, early: HashSet<FragmentIndex>) -> Self {
        Sched {
            heap: BinaryHeap::new(),
            queued: HashMap::new(),
            urgent_queued: 0,
            urgent_in_flight: 0,
            boost: HashMap::new(),
            early,
            pending: HashSet::new(),
            next_rank: 0,
            urgent_per_peer: 1,
            stalled: Vec::new(),
            in_flight: 0,
            peers,
            excluded: HashMap::new(),
            left: HashMap::new(),
            sources: HashMap::new(),
            rounds: 0,
            refreshing: false,
            last_error: None,
            bytes: 0,
            done: Vec::new(),
            fatal: None,
            finished: false,
        }
    }

    fn rarity(&self, index: FragmentIndex) -> usize {
        self.peers
            .iter()
            .filter(|p| !p.banned && p.holds.contains(&index))
            .count()
    }

    /// The class and rank an item is queued with now.
    fn class_of(&self, item: Item) -> (u8, u64) {
        if let Some(&b) = self.boost.get(&item) {
            return b;
        }
        if self.early.contains(&item.0) {
            return (priority::EARLY, 0);
        }
        (priority::NORMAL, self.rarity(item.0) as u64)
    }

    /// Adds a wanted item (not verified here) to the download.
    fn want(&mut self, item: Item) {
        if self.pending.insert(item) {
            *self.left.entry(item.0).or_default() += 1;
            self.enqueue(item);
        }
    }

    /// Queues an item (again) with its current class; replaces an older entry.
    fn enqueue(&mut self, item: Item) {
        let (class, rank) = self.class_of(item);
        let key = (class, rank, item.0, item.1);
        self.dequeue(item);
        if class == priority::URGENT {
            self.urgent_queued += 1;
        }
        self.queued.insert(item, key);
        self.heap.push(Reverse(key));
    }

    /// Takes an item out of the queue (its heap entry goes stale).
    fn dequeue(&mut self, item: Item) -> Option<Key> {
        let key = self.queued.remove(&item)?;
        if key.0 == priority::URGENT {
            self.urgent_queued -= 1;
        }
        Some(key)
    }

    /// Makes items URGENT, in the order given, after those already urgent. Items
    /// already urgent keep their place; verified ones are skipped. Returns how many
    /// items are newly urgent.
    fn prioritize(&mut self, items: &[Item], verified: impl Fn(Item) -> bool) -> usize {
        if self.finished {
            return 0;
        }
        let mut n = 0;
        for &item in items {
            if self
                .boost
                .get(&item)
                .is_some_and(|b| b.0 == priority::URGENT)
                || verified(item)
            {
                continue;
            }
            self.boost.insert(item, (priority::URGENT, self.next_rank));
            self.next_rank += 1;
            n += 1;
            if self.queued.contains_key(&item) {
                self.enqueue(item);
            } else {
                // Queued above when new; in flight or stalled items keep the boost
                // for when they are queued again.
                self.want(item);
            }
        }
        n
    }

    /// Returns URGENT items to the class they had before.
    fn release(&mut self, items: &[Item]) {
        for &item in items {
            if self
                .boost
                .get(&item)
                .is_some_and(|b| b.0 == priority::URGENT)
            {
                self.boost.remove(&item);
                if self.queued.contains_key(&item) {
                    self.enqueue(item);
                }
            }
        }
    }

    fn eligible(&self, item: Item, p: usize) -> bool {
        let st = &self.peers[p];
        !st.banned
            && !st.dead
            && st.holds.contains(&item.0)
            && !self.excluded.get(&item).is_some_and(|x| x.contains(&p))
    }

    fn next(&mut self, per_peer: usize) -> Next {
        if self.fatal.is_some() {
            return Next::Done;
        }
        // Peers an urgent chunk is in flight from or waits for: no background chunk
        // starts there, so it does not share that peer's upload with the player's bytes.
        let mut reserved: Vec<bool> = self.peers.iter().map(|p| p.urgent_in_flight > 0).collect();
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(Reverse(key)) = self.heap.pop() {
            let item = (key.2, key.3);
            if self.queued.get(&item) != Some(&key) {
                continue; // stale: re-queued with another key, or taken
            }
            let urgent = key.0 == priority::URGENT;
            let candidates: Vec<usize> = (0..self.peers.len())
                .filter(|&p| self.eligible(item, p))
                .collect();
            if candidates.is_empty() {
                self.dequeue(item);
                self.stalled.push(item);
                continue;
            }
            let usable = |s: &Self, reserved: &[bool], p: usize| {
                let st = &s.peers[p];
                st.in_flight < per_peer
                    && if urgent {
                        st.urgent_in_flight < s.urgent_per_peer
                    } else {
                        !reserved[p]
                    }
            };
            // Least loaded first; among equals, spread by chunk number.
            let free = candidates
                .iter()
                .copied()
                .filter(|&p| usable(self, &reserved, p))
                .min_by_key(|&p| {
                    (
                        self.peers[p].in_flight,
                        (p + key.3 as usize) % self.peers.len(),
                    )
                });
            if let Some(p) = free {
                self.dequeue(item);
                found = Some((item, p, urgent));
                break;
            }
            if urgent {
                for &p in &candidates {
                    reserved[p] = true;
                }
            }
            busy.push(Reverse(key));
            // Items further down the heap have no more options than this one.
            let any_usable = (0..self.peers.len()).any(|p| {
                !self.peers[p].banned && !self.peers[p].dead && usable(self, &reserved, p)
            });
            if !any_usable {
                break;
            }
        }
        self.heap.extend(busy);
        if let Some((item, p, urgent)) = found {
            self.in_flight += 1;
            self.peers[p].in_flight += 1;
            if urgent {
                self.urgent_in_flight += 1;
                self.peers[p].urgent_in_flight += 1;
            }
            return Next::Job(Job {
                item,
                peer: p,
                addr: self.peers[p].addr.clone(),
                urgent,
            });
        }
        if self.queued.is_empty() && self.in_flight == 0 {
            if self.stalled.is_empty() {
                return Next::Done;
            }
            if !self.refreshing {
                self.refreshing = true;
                return Next::Refresh;
            }
        }
        Next::Wait
    }

    /// A job ended: frees its slots.
    fn end_job(&mut self, job: &Job) {
        self.in_flight -= 1;
        self.peers[job.peer].in_flight -= 1;
        if job.urgent {
            self.urgent_in_flight -= 1;
            self.peers[job.peer].urgent_in_flight -= 1;
        }
    }
}

/// Where a [`Download`] stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DownloadState {
    /// Workers are fetching (or waiting for peers).
    Running,
    /// Every wanted fragment is complete and verified.
    Complete,
    /// It stopped with wanted bytes missing; the message says why.
    Failed(String),
    /// Cancelled; verified chunks are kept.
    Cancelled,
}

/// A running download of one video whose chunk priorities can change while it runs.
///
/// It lives as long as its handle: dropping the handle cancels it (verified chunks stay
/// in the store for the next download to resume from).
pub struct Download {
    video: VideoId,
    manifest: Arc<Manifest>,
    store: Arc<FragmentStore>,
    sched: Arc<Mutex<Sched>>,
    wake: Arc<Notify>,
    state: watch::Receiver<DownloadState>,
    task: Option<tokio::task::JoinHandle<Result<FetchReport, FetchError>>>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Download {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Download")
            .field("video", &self.video)
            .field("state", &*self.state.borrow())
            .finish_non_exhaustive()
    }
}

impl Download {
    /// The video.
    pub fn video(&self) -> VideoId {
        self.video
    }

    /// Its manifest.
    pub fn manifest(&self) -> &Arc<Manifest> {
        &self.manifest
    }

    /// Where it stands now.
    pub fn state(&self) -> DownloadState {
        self.state.borrow().clone()
    }

    /// Resolves once the download is no longer running, with how it ended.
    pub async fn ended(&self) -> DownloadState {
        let mut rx = self.state.clone();
        match rx.wait_for(|s| *s != DownloadState::Running).await {
            Ok(s) => s.clone(),
            // The driver is gone without a word: it was cancelled (or panicked).
            Err(_) => DownloadState::Cancelled,
        }
    }

    /// Makes bytes `offset..offset+len` of the whole file URGENT (deadline-first,
    /// after bytes asked for earlier). Returns how many chunks became urgent; 0 when
    /// they are all verified, already urgent, or the download has ended.
    pub fn want_range(&self, offset: u64, len: u64) -> usize {
        self.prioritize_items(&covering(&self.manifest, offset, len))
    }

    /// Makes chunks `chunks` of fragment `index` URGENT, like [`Download::want_range`].
    pub fn prioritize(&self, index: FragmentIndex, chunks: Range<u32>) -> usize {
        let Some(f) = self.manifest.fragment(index) else {
            return 0;
        };
        let n = f.chunks.len() as u32;
        let items: Vec<Item> = (chunks.start.min(n)..chunks.end.min(n))
            .map(|c| (index, c))
            .collect();
        self.prioritize_items(&items)
    }

    fn prioritize_items(&self, items: &[Item]) -> usize {
        let (store, video) = (&self.store, self.video);
        let n = self
            .sched
            .lock()
            .unwrap()
            .prioritize(items, |(i, c)| store.has_chunk(video, i, c));
        if n > 0 {
            self.wake.notify_waiters();
        }
        n
    }

    /// Tells the download that `addr` holds `fragments` (a fragment event, a registry
    /// answer). A new peer joins the download; stalled chunks it can serve are queued
    /// again at once, so a swarm converges on events without waiting for a refresh.
    /// Returns how many stalled chunks were re-queued.
    pub fn add_holder(&self, addr: PeerAddr, fragments: &[FragmentIndex]) -> usize {
        let mut s = self.sched.lock().unwrap();
        let p = match s.peers.iter().position(|p| p.addr == addr) {
            Some(p) => p,
            None => {
                s.peers.push(PeerState {
                    addr,
                    holds: HashSet::new(),
                    in_flight: 0,
                    urgent_in_flight: 0,
                    failures: 0,
                    banned: false,
                    dead: false,
                });
                s.peers.len() - 1
            }
        };
        if s.peers[p].banned {
            return 0;
        }
        s.peers[p].holds.extend(fragments.iter().copied());
        s.peers[p].dead = false;
        let stalled = std::mem::take(&mut s.stalled);
        let (now, still): (Vec<Item>, Vec<Item>) = stalled
            .into_iter()
            .partition(|it| fragments.contains(&it.0));
        s.stalled = still;
        for item in &now {
            if let Some(x) = s.excluded.get_mut(item) {
                x.remove(&p);
            }
            s.enqueue(*item);
        }
        drop(s);
        self.wake.notify_waiters();
        now.len()
    }

    /// Nobody waits for bytes `offset..offset+len` any more (a player went away or
    /// seeked): those still urgent go back to their background priority.
    pub fn release_range(&self, offset: u64, len: u64) {
        let items = covering(&self.manifest, offset, len);
        self.sched.lock().unwrap().release(&items);
    }

    /// Chunks still to fetch (queued, in flight or waiting for a peer).
    pub fn chunks_left(&self) -> usize {
        self.sched.lock().unwrap().pending.len()
    }

    /// Chunks asked for urgently and not yet verified.
    pub fn urgent_chunks(&self) -> usize {
        let s = self.sched.lock().unwrap();
        s.urgent_queued + s.urgent_in_flight
    }

    /// Body bytes fetched and verified so far.
    pub fn bytes_fetched(&self) -> u64 {
        self.sched.lock().unwrap().bytes
    }

    /// Stops the download; verified chunks are kept.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Waits for the download to end and reports what it did.
    pub async fn finish(mut self) -> Result<FetchReport, FetchError> {
        let task = self.task.take().expect("finish is called once");
        match task.await {
            Ok(r) => r,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(_) => Err(FetchError::Cancelled),
        }
    }
}

impl Drop for Download {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Fetches videos into a store from peers.
pub struct Fetcher {
    store: Arc<FragmentStore>,
    pool: Arc<PeerPool>,
    opts: FetchOptions,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

impl Fetcher {
    /// A fetcher storing into `store`, dialing through `pool`.
    pub fn new(store: Arc<FragmentStore>, pool: Arc<PeerPool>, opts: FetchOptions) -> Self {
        Fetcher { store, pool, opts }
    }

    /// The store this fetcher writes to.
    pub fn store(&self) -> &Arc<FragmentStore> {
        &self.store
    }

    /// Asks every peer which videos it has; peers that fail are reported and skipped.
    pub async fn probe(
        &self,
        peers: &[PeerAddr],
        obs: &dyn FetchObserver,
    ) -> Vec<(PeerAddr, Vec<VideoSummary>)> {
        let tasks = peers.iter().cloned().map(|addr| {
            let pool = self.pool.clone();
            async move {
                let r = async {
                    let mut s = pool.session(&addr).await?;
                    let v = s.videos().await?;
                    pool.put_back(&addr, s);
                    Ok::<_, ProtocolError>(v)
                }
                .await;
                (addr, r)
            }
        });
        let mut out = Vec::new();
        for (addr, r) in futures::future::join_all(tasks).await {
            match r {
                Ok(v) => out.push((addr, v)),
                Err(e) => {
                    self.pool.forget(&addr);
                    obs.peer_failed(&addr, &e.to_string());
                }
            }
        }
        out
    }

    async fn find_manifest(
        &self,
        video: VideoId,
        offers: &[(PeerAddr, Vec<VideoSummary>)],
    ) -> Result<Arc<Manifest>, FetchError> {
        if let Some(m) = self.store.manifest(video) {
            return Ok(m);
        }
        for (addr, vids) in offers {
            if !vids.iter().any(|v| v.video == video) {
                continue;
            }
            let r = async {
                let mut s = self.pool.session(addr).await?;
                let m = s.manifest(video).await?;
                self.pool.put_back(addr, s);
                Ok::<_, ProtocolError>(m)
            }
            .await;
            match r {
                Ok(m) => {
                    self.store.add_manifest(&m)?;
                    return Ok(Arc::new(m));
                }
                Err(e) => warn!(peer = %addr, error = %e, "could not get the manifest"),
            }
        }
        Err(FetchError::NoManifest(video))
    }

    /// Fetches the wanted fragments of a video. Verified chunks already in the store
    /// are kept (resume); each new chunk is verified before it is stored.
    pub async fn fetch(
        &self,
        req: FetchRequest,
        obs: Arc<dyn FetchObserver>,
        cancel: CancellationToken,
    ) -> Result<FetchReport, FetchError> {
        self.start(req, obs, cancel).await?.finish().await
    }

    /// Starts a download of the wanted fragments and returns its handle once the
    /// manifest is known and the workers run. Cancelling `cancel` (or dropping the
    /// handle) stops it.
    pub async fn start(
        &self,
        req: FetchRequest,
        obs: Arc<dyn FetchObserver>,
        cancel: CancellationToken,
    ) -> Result<Download, FetchError> {
        self.start_with(req, &[], obs, cancel).await
    }

    /// [`Fetcher::start`], with byte ranges of the whole file (offset, length) made
    /// URGENT before any worker starts: a player's first request on an empty node gets
    /// its first chunk first.
    pub async fn start_with(
        &self,
        req: FetchRequest,
        urgent: &[(u64, u64)],
        obs: Arc<dyn FetchObserver>,
        cancel: CancellationToken,
    ) -> Result<Download, FetchError> {
        let started = Instant::now();
        let offers = self.probe(&req.peers, obs.as_ref()).await;
        if offers.is_empty() && !req.peers.is_empty() {
            return Err(FetchError::NoPeers(
                req.peers
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", "),
            ));
        }
        let video = match req.video {
            Some(v) => v,
            None => {
                let mut all: BTreeSet<VideoId> = offers
                    .iter()
                    .flat_map(|(_, v)| v.iter().map(|s| s.video))
                    .collect();
                all.extend(self.store.videos());
                let all: Vec<_> = all.into_iter().collect();
                crate::serve::default_video(None, &all).map_err(|e| {
                    FetchError::NoVideo(match e {
                        crate::serve::DefaultVideoError::None => "no peer offers any video".into(),
                        e => e
                            .to_string()
                            .replace("this node holds", "the peers offer")
                            .replace("set default_video to", "choose with --video"),
                    })
                })?
            }
        };
        let manifest = self.find_manifest(video, &offers).await?;
        let wanted: Vec<FragmentIndex> = match &req.fragments {
            Some(f) => {
                if let Some(&bad) = f.iter().find(|&&i| i >= manifest.fragment_count) {
                    return Err(FetchError::NoSuchFragment {
                        video,
                        index: bad,
                        count: manifest.fragment_count,
                    });
                }
                f.clone()
            }
            None => (0..manifest.fragment_count).collect(),
        };

        let peers: Vec<PeerState> = offers
            .iter()
            .map(|(addr, vids)| PeerState {
                addr: addr.clone(),
                holds: vids
                    .iter()
                    .find(|v| v.video == video)
                    .map(|v| v.have.iter().copied().collect())
                    .unwrap_or_default(),
                in_flight: 0,
                urgent_in_flight: 0,
                failures: 0,
                banned: false,
                dead: false,
            })
            .collect();
        let early: HashSet<FragmentIndex> = [0, manifest.fragment_count - 1].into();
        let mut sched = Sched::new(peers, early);
        sched.urgent_per_peer = self.opts.urgent_per_peer.max(1);
        let (mut already_complete, mut resumed, mut wanted_bytes, mut already_bytes) =
            (Vec::new(), 0u64, 0u64, 0u64);
        for &index in &wanted {
            let info = &manifest.fragments[index as usize];
            wanted_bytes += info.size;
            if self.store.status(video, index)? == FragmentStatus::Complete {
                already_complete.push(index);
                already_bytes += info.size;
                continue;
            }
            let verified = self.store.verified_chunks(video, index)?;
            sched.left.insert(index, 0);
            for (c, ok) in verified.iter().enumerate() {
                if *ok {
                    resumed += 1;
                    already_bytes += manifest
                        .chunk_range(index, c as u32)
                        .map(|r| r.1)
                        .unwrap_or(0);
                } else {
                    sched.want((index, c as u32));
                }
            }
        }
        for &(offset, len) in urgent {
            let (store, items) = (&self.store, covering(&manifest, offset, len));
            sched.prioritize(&items, |(i, c)| store.has_chunk(video, i, c));
        }
        obs.started(video, &manifest, wanted_bytes, already_bytes);
        if resumed > 0 {
            info!(video = %video.short(), chunks = resumed, "resuming from chunks verified earlier");
        }

        let cancel = cancel.child_token();
        let sched = Arc::new(Mutex::new(sched));
        let wake = Arc::new(Notify::new());
        let (state_tx, state_rx) = watch::channel(DownloadState::Running);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..self.opts.concurrency.max(1) {
            let ctx = WorkerCtx {
                sched: sched.clone(),
                wake: wake.clone(),
                store: self.store.clone(),
                pool: self.pool.clone(),
                obs: obs.clone(),
                manifest: manifest.clone(),
                video,
                per_peer: self.opts.per_peer.max(1),
                max_rounds: self.opts.max_rounds,
                cancel: cancel.clone(),
            };
            set.spawn(ctx.run());
        }
        let end = DriverEnd {
            sched: sched.clone(),
            store: self.store.clone(),
            manifest: manifest.clone(),
            video,
            wanted,
            already_complete,
            resumed,
            started,
            cancel: cancel.clone(),
        };
        let task = tokio::spawn(async move {
            while set.join_next().await.is_some() {}
            let result = end.report();
            let state = match &result {
                Ok(_) => DownloadState::Complete,
                Err(FetchError::Cancelled) => DownloadState::Cancelled,
                Err(e) => DownloadState::Failed(e.to_string()),
            };
            let _ = state_tx.send(state);
            result
        });
        Ok(Download {
            video,
            manifest,
            store: self.store.clone(),
            sched,
            wake,
            state: state_rx,
            task: Some(task),
            cancel,
        })
    }
}

/// What the driver needs to report once the workers are gone.
struct DriverEnd {
    sched: Arc<Mutex<Sched>>,
    store: Arc<FragmentStore>,
    manifest: Arc<Manifest>,
    video: VideoId,
    wanted: Vec<FragmentIndex>,
    already_complete: Vec<FragmentIndex>,
    resumed: u64,
    started: Instant,
    cancel: CancellationToken,
}

impl DriverEnd {
    fn report(self) -> Result<FetchReport, FetchError> {
        let mut s = self.sched.lock().unwrap();
        s.finished = true;
        if self.cancel.is_cancelled() {
            return Err(FetchError::Cancelled);
        }
        if let Some(e) = s.fatal.take() {
            return Err(e);
        }
        let missing: Vec<FragmentIndex> = self
            .wanted
            .iter()
            .copied()
            .filter(|&i| self.store.status(self.video, i).ok() != Some(FragmentStatus::Complete))
            .collect();
        if !missing.is_empty() {
            return Err(FetchError::Incomplete {
                missing,
                last_error: s.last_error.clone(),
            });
        }
        let mut fetched = std::mem::take(&mut s.done);
        fetched.sort_by_key(|f| f.0);
        Ok(FetchReport {
            video: self.video,
            manifest: self.manifest,
            fetched,
            already_complete: self.already_complete,
            resumed_chunks: self.resumed,
            bytes: s.bytes,
            elapsed: self.started.elapsed(),
        })
    }
}

struct WorkerCtx {
    sched: Arc<Mutex<Sched>>,
    wake: Arc<Notify>,
    store: Arc<FragmentStore>,
    pool: Arc<PeerPool>,
    obs: Arc<dyn FetchObserver>,
    manifest: Arc<Manifest>,
    video: VideoId,
    per_peer: usize,
    max_rounds: u32,
    cancel: CancellationToken,
}

enum Failure {
    /// The peer's bytes failed verification: ban it.
    Lied(String),
    /// The peer does not have it after all, or the request failed.
    Failed(String, bool),
    /// Our own store failed: stop.
    Local(StoreError),
}

impl WorkerCtx {
    async fn run(self) {
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            // Register for a wake-up before looking, so a prioritize or a finished
            // job between the look and the wait is not missed.
            let woken = self.wake.notified();
            let next = self.sched.lock().unwrap().next(self.per_peer);
            match next {
                Next::Done => {
                    // Others may be waiting for work that will never come.
                    self.wake.notify_waiters();
                    return;
                }
                Next::Wait => {
                    tokio::select! {
                        _ = woken => {}
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        _ = self.cancel.cancelled() => return,
                    }
                }
                Next::Refresh => self.refresh().await,
                Next::Job(job) => {
                    let result = tokio::select! {
                        r = self.fetch_chunk(job.item, &job.addr) => r,
                        _ = self.cancel.cancelled() => return,
                    };
                    self.finish(&job, result);
                    self.wake.notify_waiters();
                }
            }
        }
    }

    async fn fetch_chunk(
        &self,
        (index, chunk): Item,
        addr: &PeerAddr,
    ) -> Result<(u64, ChunkOutcome), Failure> {
        let (offset, len) = self
            .manifest
            .chunk_range(index, chunk)
            .expect("queued chunks exist");
        let mut s = self
            .pool
            .session(addr)
            .await
            .map_err(|e| Failure::Failed(e.to_string(), true))?;
        let data = match s.get(self.video, index, offset, len).await {
            Ok(d) => d,
            Err(ProtocolError::Remote {
                code: ErrorCode::NotAvailable | ErrorCode::UnknownVideo | ErrorCode::NoSuchFragment,
                message,
            }) => {
                self.pool.put_back(addr, s);
                return Err(Failure::Failed(message, false));
            }
            Err(e) => {
                self.pool.forget(addr);
                return Err(Failure::Failed(e.to_string(), true));
            }
        };
        self.pool.put_back(addr, s);
        match self.store.write_chunk(self.video, index, chunk, data).await {
            Ok(outcome) => Ok((len, outcome)),
            Err(StoreError::HashMismatch { what, .. }) => Err(Failure::Lied(format!(
                "{what} of fragment {index} failed verification"
            ))),
            Err(e) => Err(Failure::Local(e)),
        }
    }

    fn finish(&self, job: &Job, result: Result<(u64, ChunkOutcome), Failure>) {
        let (item, p, addr) = (job.item, job.peer, &job.addr);
        let mut s = self.sched.lock().unwrap();
        s.end_job(job);
        match result {
            Ok((len, outcome)) => {
                s.peers[p].failures = 0;
                s.rounds = 0; // progress: refresh rounds count from here
                s.bytes += len;
                s.pending.remove(&item);
                s.boost.remove(&item);
                s.sources.entry(item.0).or_default().insert(p);
                if let Some(left) = s.left.get_mut(&item.0) {
                    *left = left.saturating_sub(1);
                }
                drop(s);
                self.obs.chunk(item.0, len, addr);
                if outcome == ChunkOutcome::FragmentComplete {
                    let mut s = self.sched.lock().unwrap();
                    let from: Vec<PeerAddr> = s
                        .sources
                        .get(&item.0)
                        .map(|set| set.iter().map(|&i| s.peers[i].addr.clone()).collect())
                        .unwrap_or_default();
                    s.done.push((item.0, from.clone()));
                    drop(s);
                    let size = self.manifest.fragments[item.0 as usize].size;
                    self.obs.fragment(item.0, size, &from);
                }
            }
            Err(Failure::Lied(msg)) => {
                warn!(peer = %addr, "{msg}; not using this peer again");
                s.peers[p].banned = true;
                s.last_error = Some(format!("{addr}: {msg}"));
                s.enqueue(item);
                drop(s);
                self.obs.peer_failed(addr, &msg);
            }
            Err(Failure::Failed(msg, connection)) => {
                debug!(peer = %addr, fragment = item.0, chunk = item.1, error = %msg, "chunk request failed");
                s.excluded.entry(item).or_default().insert(p);
                if connection {
                    s.peers[p].failures += 1;
                    if s.peers[p].failures >= 3 {
                        s.peers[p].dead = true;
                    }
                } else {
                    s.peers[p].holds.remove(&item.0);
                }
                s.last_error = Some(format!("{addr}: {msg}"));
                s.enqueue(item);
                drop(s);
                if connection {
                    self.obs.peer_failed(addr, &msg);
                }
            }
            Err(Failure::Local(e)) => {
                s.fatal = Some(FetchError::Store(e));
            }
        }
    }

    /// Nobody can serve what is left: ask every peer again (dead ones too) for its
    /// have-set, with backoff, a bounded number of times.
    async fn refresh(&self) {
        let (round, addrs) = {
            let mut s = self.sched.lock().unwrap();
            s.rounds += 1;
            (
                s.rounds,
                s.peers.iter().map(|p| p.addr.clone()).collect::<Vec<_>>(),
            )
        };
        if round > self.max_rounds {
            let mut s = self.sched.lock().unwrap();
            s.stalled.clear(); // give up: the report says what is missing
            s.refreshing = false;
            return;
        }
        let backoff = Duration::from_millis(100 * (1 << round.min(6)));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = self.cancel.cancelled() => return,
        }
        let mut fresh = Vec::new();
        for addr in &addrs {
            let r = async {
                let mut sess = self.pool.session(addr).await?;
                let h = sess.have(self.video).await?;
                self.pool.put_back(addr, sess);
                Ok::<_, ProtocolError>(h)
            }
            .await;
            fresh.push(r.ok());
        }
        let mut s = self.sched.lock().unwrap();
        for (p, have) in fresh.into_iter().enumerate() {
            if let Some(have) = have {
                s.peers[p].holds = have.into_iter().collect();
                s.peers[p].dead = false;
                s.peers[p].failures = 0;
            }
        }
        s.excluded.clear();
        let stalled = std::mem::take(&mut s.stalled);
        for item in stalled {
            s.enqueue(item);
        }
        s.refreshing = false;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Digest;
    use crate::manifest::FragmentInfo;

    /// A manifest of `frags` fragments of `size` bytes in chunks of `chunk`.
    fn manifest(frags: u32, size: u64, chunk: u32) -> Manifest {
        let h = Digest::of(b"x");
        let fragments = (0..frags)
            .map(|i| FragmentInfo {
                chunks: vec![h; size.div_ceil(chunk as u64) as usize],
                hash: h,
                index: i,
                offset: i as u64 * size,
                size,
            })
            .collect();
        Manifest {
            chunk_size: chunk,
            fragment_count: frags,
            fragments,
            hash: h,
            mime: "video/mp4".into(),
            name: "v.mp4".into(),
            size: frags as u64 * size,
            version: 1,
        }
    }

    fn peer(port: u16, holds: &[FragmentIndex]) -> PeerState {
        PeerState {
            addr: PeerAddr::parse(&format!("127.0.0.1:{port}"), "tcp").unwrap(),
            holds: holds.iter().copied().collect(),
            in_flight: 0,
            urgent_in_flight: 0,
            failures: 0,
            banned: false,
            dead: false,
        }
    }

    /// Four fragments of two chunks; fragments 0 and 3 are EARLY.
    fn sched(peers: Vec<PeerState>) -> Sched {
        let mut s = Sched::new(peers, [0, 3].into());
        s.urgent_per_peer = 100;
        for f in 0..4 {
            for c in 0..2 {
                s.want((f, c));
            }
        }
        s
    }

    fn job(s: &mut Sched, per_peer: usize) -> Job {
        match s.next(per_peer) {
            Next::Job(j) => j,
            _ => panic!("expected a job"),
        }
    }

    #[test]
    fn covering_maps_file_bytes_to_chunks() {
        let m = manifest(3, 10, 4); // fragments of chunks 4+4+2
        assert_eq!(covering(&m, 0, 1), vec![(0, 0)]);
        assert_eq!(covering(&m, 3, 2), vec![(0, 0), (0, 1)]);
        assert_eq!(covering(&m, 8, 4), vec![(0, 2), (1, 0)]);
        assert_eq!(covering(&m, 25, 100), vec![(2, 1), (2, 2)]);
        assert_eq!(covering(&m, 30, 1), vec![], "past the end");
        assert_eq!(covering(&m, 5, 0), vec![]);
        assert_eq!(covering(&m, 0, u64::MAX).len(), 9);
    }

    #[test]
    fn first_and_last_fragment_come_first_then_rarest() {
        let mut s = sched(vec![peer(1, &[0, 1, 2, 3]), peer(2, &[0, 1, 3])]);
        let order: Vec<Item> = (0..8).map(|_| job(&mut s, 100).item).collect();
        assert_eq!(
            order,
            vec![
                (0, 0),
                (0, 1),
                (3, 0),
                (3, 1),
                (2, 0), // one holder: rarer than fragment 1
                (2, 1),
                (1, 0),
                (1, 1)
            ]
        );
    }

    #[test]
    fn urgent_chunks_go_first_in_deadline_order_and_release_demotes_them() {
        let mut s = sched(vec![peer(1, &[0, 1, 2, 3])]);
        assert_eq!(s.prioritize(&[(2, 1), (1, 0)], |_| false), 2);
        assert_eq!(
            s.prioritize(&[(2, 1), (1, 1)], |_| false),
            1,
            "already urgent keeps its place"
        );
        assert_eq!(s.prioritize(&[(3, 0)], |i| i == (3, 0)), 0, "verified");
        let first: Vec<Job> = (0..3).map(|_| job(&mut s, 100)).collect();
        let items: Vec<Item> = first.iter().map(|j| j.item).collect();
        assert_eq!(items, vec![(2, 1), (1, 0), (1, 1)]);
        assert!(
            matches!(s.next(100), Next::Wait),
            "no background chunk while urgent ones are in flight from the only peer"
        );
        for j in &first {
            s.end_job(j);
        }
        s.prioritize(&[(2, 0)], |_| false);
        s.release(&[(2, 0)]);
        assert_eq!(s.urgent_queued, 0);
        assert_eq!(job(&mut s, 100).item, (0, 0), "released: back to its class");
    }

    #[test]
    fn no_background_chunk_starts_on_a_peer_an_urgent_chunk_needs() {
        // Peer 1 holds everything; peer 2 only fragment 3.
        let mut s = sched(vec![peer(1, &[0, 1, 2, 3]), peer(2, &[3])]);
        s.prioritize(&[(1, 0), (1, 1)], |_| false);
        let a = job(&mut s, 1);
        assert_eq!((a.item, a.peer, a.urgent), ((1, 0), 0, true));
        // (1, 1) waits for peer 1 (full); background may only use peer 2.
        let b = job(&mut s, 1);
        assert_eq!((b.item, b.peer, b.urgent), ((3, 0), 1, false));
        assert!(matches!(s.next(1), Next::Wait));
        s.end_job(&a);
        s.pending.remove(&a.item);
        let c = job(&mut s, 1);
        assert_eq!((c.item, c.urgent), ((1, 1), true));
        s.end_job(&c);
        s.end_job(&b);
        // Nothing urgent left: background resumes on peer 1 with the early fragment.
        assert_eq!(job(&mut s, 1).item, (0, 0));
    }

    #[test]
    fn one_urgent_request_at_a_time_per_peer_by_default() {
        let mut s = sched(vec![peer(1, &[0, 1, 2, 3]), peer(2, &[0, 1, 2, 3])]);
        s.urgent_per_peer = 1;
        s.prioritize(&[(1, 0), (1, 1), (2, 0)], |_| false);
        let (a, b) = (job(&mut s, 4), job(&mut s, 4));
        assert_eq!((a.item, b.item), ((1, 0), (1, 1)));
        assert_ne!(
            a.peer, b.peer,
            "the second urgent chunk goes to the other peer"
        );
        assert!(
            matches!(s.next(4), Next::Wait),
            "(2, 0) waits for a peer; no background chunk starts meanwhile"
        );
        s.end_job(&a);
        let c = job(&mut s, 4);
        assert_eq!((c.item, c.peer), ((2, 0), a.peer));
    }

    #[test]
    fn prioritizing_an_unwanted_chunk_adds_it() {
        let mut s = Sched::new(vec![peer(1, &[0, 1])], HashSet::new());
        s.want((0, 0));
        assert_eq!(s.prioritize(&[(1, 1)], |_| false), 1);
        let urgent = job(&mut s, 10);
        assert_eq!(urgent.item, (1, 1));
        s.end_job(&urgent);
        assert_eq!(job(&mut s, 10).item, (0, 0));
        assert!(
            matches!(s.next(10), Next::Wait),
            "one in flight, nothing queued"
        );
        s.finished = true;
        assert_eq!(s.prioritize(&[(1, 0)], |_| false), 0, "ended");
    }
}
