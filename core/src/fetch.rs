//! Downloading: find a video's manifest and holders among peers, then fetch the missing
//! chunks from several peers in parallel, verifying each chunk before it is stored.
//!
//! Work is a priority queue of wanted chunks ordered by (priority, rarity, fragment,
//! chunk): urgent chunks (a player's next bytes) first, then the rarest fragments, so
//! that streaming and rarest-first need no rewrite. A peer that fails a chunk is not
//! asked for that chunk again in this round; a peer whose bytes fail verification is
//! banned for the rest of the fetch. When no peer can serve what is left, the fetcher
//! asks every peer for its have-set again, a bounded number of times with backoff.

use std::cmp::Reverse;
use std::collections::{BTreeSet, BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

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
}

impl Default for FetchOptions {
    fn default() -> Self {
        FetchOptions {
            concurrency: 8,
            per_peer: 4,
            max_rounds: 5,
        }
    }
}

/// Priority classes: lower goes first.
pub mod priority {
    /// A player is waiting for these bytes.
    pub const URGENT: u8 = 0;
    /// Background download.
    pub const NORMAL: u8 = 1;
}

type Item = (FragmentIndex, u32);

struct PeerState {
    addr: PeerAddr,
    holds: HashSet<FragmentIndex>,
    in_flight: usize,
    failures: u32,
    banned: bool,
    dead: bool,
}

/// The shared scheduling state of one fetch.
struct Sched {
    heap: BinaryHeap<Reverse<(u8, usize, FragmentIndex, u32)>>,
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
}

enum Next {
    Job(Item, usize, PeerAddr),
    Wait,
    Refresh,
    Done,
}

impl Sched {
    fn rarity(&self, index: FragmentIndex) -> usize {
        self.peers
            .iter()
            .filter(|p| !p.banned && p.holds.contains(&index))
            .count()
    }

    fn push(&mut self, item: Item, prio: u8) {
        let r = self.rarity(item.0);
        self.heap.push(Reverse((prio, r, item.0, item.1)));
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
        let mut busy = Vec::new();
        let mut found = None;
        while let Some(Reverse((prio, r, index, chunk))) = self.heap.pop() {
            let item = (index, chunk);
            let candidates: Vec<usize> = (0..self.peers.len())
                .filter(|&p| self.eligible(item, p))
                .collect();
            if candidates.is_empty() {
                self.stalled.push(item);
                continue;
            }
            // Least loaded first; among equals, spread by chunk number.
            let free = candidates
                .iter()
                .copied()
                .filter(|&p| self.peers[p].in_flight < per_peer)
                .min_by_key(|&p| {
                    (
                        self.peers[p].in_flight,
                        (p + chunk as usize) % self.peers.len(),
                    )
                });
            match free {
                Some(p) => {
                    found = Some((item, p));
                    break;
                }
                None => busy.push(Reverse((prio, r, index, chunk))),
            }
        }
        self.heap.extend(busy);
        if let Some((item, p)) = found {
            self.in_flight += 1;
            self.peers[p].in_flight += 1;
            return Next::Job(item, p, self.peers[p].addr.clone());
        }
        if self.heap.is_empty() && self.in_flight == 0 {
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
                failures: 0,
                banned: false,
                dead: false,
            })
            .collect();
        let mut sched = Sched {
            heap: BinaryHeap::new(),
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
        };
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
            let mut left = 0;
            for (c, ok) in verified.iter().enumerate() {
                if *ok {
                    resumed += 1;
                    already_bytes += manifest
                        .chunk_range(index, c as u32)
                        .map(|r| r.1)
                        .unwrap_or(0);
                } else {
                    sched.push((index, c as u32), priority::NORMAL);
                    left += 1;
                }
            }
            sched.left.insert(index, left);
        }
        obs.started(video, &manifest, wanted_bytes, already_bytes);
        if resumed > 0 {
            info!(video = %video.short(), chunks = resumed, "resuming from chunks verified earlier");
        }

        let sched = Arc::new(Mutex::new(sched));
        let workers = self.opts.concurrency.max(1);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let ctx = WorkerCtx {
                sched: sched.clone(),
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
        while set.join_next().await.is_some() {}

        let mut s = sched.lock().unwrap();
        if cancel.is_cancelled() {
            return Err(FetchError::Cancelled);
        }
        if let Some(e) = s.fatal.take() {
            return Err(e);
        }
        let missing: Vec<FragmentIndex> = wanted
            .iter()
            .copied()
            .filter(|&i| self.store.status(video, i).ok() != Some(FragmentStatus::Complete))
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
            video,
            manifest,
            fetched,
            already_complete,
            resumed_chunks: resumed,
            bytes: s.bytes,
            elapsed: started.elapsed(),
        })
    }
}

struct WorkerCtx {
    sched: Arc<Mutex<Sched>>,
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
            let next = self.sched.lock().unwrap().next(self.per_peer);
            match next {
                Next::Done => return,
                Next::Wait => {
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                        _ = self.cancel.cancelled() => return,
                    }
                }
                Next::Refresh => self.refresh().await,
                Next::Job(item, p, addr) => {
                    let result = tokio::select! {
                        r = self.fetch_chunk(item, &addr) => r,
                        _ = self.cancel.cancelled() => return,
                    };
                    self.finish(item, p, &addr, result);
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

    fn finish(
        &self,
        item: Item,
        p: usize,
        addr: &PeerAddr,
        result: Result<(u64, ChunkOutcome), Failure>,
    ) {
        let mut s = self.sched.lock().unwrap();
        s.in_flight -= 1;
        s.peers[p].in_flight -= 1;
        match result {
            Ok((len, outcome)) => {
                s.peers[p].failures = 0;
                s.rounds = 0; // progress: refresh rounds count from here
                s.bytes += len;
                s.sources.entry(item.0).or_default().insert(p);
                let left = s.left.get_mut(&item.0).expect("tracked");
                *left = left.saturating_sub(1);
                let fragment_done = *left == 0 || outcome == ChunkOutcome::FragmentComplete;
                drop(s);
                self.obs.chunk(item.0, len, addr);
                if fragment_done && outcome == ChunkOutcome::FragmentComplete {
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
                s.push(item, priority::NORMAL);
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
                s.push(item, priority::NORMAL);
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
            s.stalled.clear(); // give up: fetch() reports what is missing
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
            s.push(item, priority::NORMAL);
        }
        s.refreshing = false;
    }
}
