//! Downloading: find a video's manifest and holders through discovery, then fetch the
//! missing chunks from several peers in parallel, verifying each chunk before it is
//! stored.
//!
//! Work is a priority queue of wanted chunks ordered by (class, rank, fragment, chunk),
//! decided by the pure scheduler in [`sched`]:
//! - [`priority::URGENT`]: bytes a player needs next, deadline-first (the rank is the
//!   order in which they were asked for). While urgent chunks wait for a peer or are in
//!   flight from it, no background chunk starts on that peer, so a player's bytes never
//!   share a peer's upload with the background download.
//! - [`priority::EARLY`]: the first and the last fragment, from the start: a player reads
//!   the container's header first and often its index, which may sit at the end.
//! - [`priority::NORMAL`]: everything else, rarest first.
//!
//! A [`Download`] is one such long-lived download whose priorities and wanted
//! fragments can change while it runs ([`Download::want_range`],
//! [`Download::want_fragments`]); [`Fetcher::fetch`] is a download awaited to its end.
//! A node's downloads (one per video) are kept by [`crate::engine::Downloads`]. The
//! parts: [`pool`] (connections), [`sched`] (decisions), `worker` (chunk I/O).
//!
//! A peer that fails a chunk is not asked for that chunk again in this round; a peer
//! whose bytes fail verification is banned for the rest of the download. When no peer
//! can serve what is left, the download asks discovery again and every peer for its
//! have-set, a bounded number of times with backoff.

pub mod bans;
pub mod pool;
mod sched;
mod watches;
mod worker;

use std::collections::HashSet;
use std::ops::Range;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::addr::PeerAddr;
use crate::discovery::{CombinedDiscovery, Hint};
use crate::ids::{FragmentIndex, VideoId};
use crate::manifest::Manifest;
use crate::protocol::{ErrorCode, ProtocolError};
use crate::store::{FragmentStatus, FragmentStore, StoreError};

pub use bans::Bans;
pub use pool::PeerPool;
pub use sched::priority;
use sched::{Item, PeerState, Sched, covering};
use worker::WorkerCtx;

pub trait FetchObserver: Send + Sync {
    /// The plan is known: total bytes wanted and how many are already verified here.
    fn started(&self, _video: VideoId, _manifest: &Manifest, _wanted_bytes: u64, _already: u64) {}
    /// Chunk `chunk` of fragment `index` arrived from `from` and verified.
    fn chunk(&self, _index: FragmentIndex, _chunk: u32, _bytes: u64, _from: &PeerAddr) {}
    /// Whether that chunk came from a seeder (a peer holding the whole video) or from
    /// another leecher: the swarm's P2P share.
    fn chunk_source(&self, _bytes: u64, _from_seeder: bool) {}
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
    /// Peers were found, but none of them answered.
    #[error("{0}")]
    NoPeers(String),
    /// Discovery found no peer that may hold the video.
    #[error("{0}")]
    NoHolders(String),
    /// No video could be chosen.
    #[error("{0}")]
    NoVideo(String),
    /// The video does not fit the node's disk quota.
    #[error(transparent)]
    NoRoom(#[from] crate::library::QuotaError),
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
    /// The video's download stopped before these fragments arrived.
    #[error("the download stopped: {0}")]
    Stopped(String),
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

/// Several observers heard as one (those of one download can change while it runs).
#[derive(Default)]
pub struct Observers(Mutex<Vec<Arc<dyn FetchObserver>>>);

impl Observers {
    /// These observers.
    pub fn new(all: Vec<Arc<dyn FetchObserver>>) -> Self {
        Observers(Mutex::new(all))
    }

    fn snapshot(&self) -> Vec<Arc<dyn FetchObserver>> {
        self.0.lock().unwrap().clone()
    }
}

impl FetchObserver for Observers {
    fn started(&self, video: VideoId, manifest: &Manifest, wanted: u64, already: u64) {
        for o in self.snapshot() {
            o.started(video, manifest, wanted, already);
        }
    }
    fn chunk(&self, index: FragmentIndex, chunk: u32, bytes: u64, from: &PeerAddr) {
        for o in self.snapshot() {
            o.chunk(index, chunk, bytes, from);
        }
    }
    fn fragment(&self, index: FragmentIndex, bytes: u64, from: &[PeerAddr]) {
        for o in self.snapshot() {
            o.fragment(index, bytes, from);
        }
    }
    fn chunk_source(&self, bytes: u64, from_seeder: bool) {
        for o in self.snapshot() {
            o.chunk_source(bytes, from_seeder);
        }
    }
    fn peer_failed(&self, peer: &PeerAddr, error: &str) {
        for o in self.snapshot() {
            o.peer_failed(peer, error);
        }
    }
}

/// A running download of one video whose chunk priorities and wanted fragments can
/// change while it runs.
///
/// It lives as long as its handle: dropping the handle cancels it (verified chunks stay
/// in the store for the next download to resume from).
pub struct Download {
    video: VideoId,
    manifest: Arc<Manifest>,
    store: Arc<FragmentStore>,
    sched: Arc<Mutex<Sched>>,
    wake: Arc<Notify>,
    observers: Arc<Observers>,
    watches: Arc<watches::Watches>,
    state: watch::Receiver<DownloadState>,
    task: Mutex<Option<tokio::task::JoinHandle<Result<FetchReport, FetchError>>>>,
    resumed: u64,
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

    /// Adds `fragments` to what this download fetches (the console asked for one more,
    /// `fetch all` after a single fragment). Returns false when the download has ended
    /// (start a new one); fragments out of range are the caller's to check.
    pub fn want_fragments(&self, fragments: &[FragmentIndex]) -> Result<bool, StoreError> {
        let mut missing = Vec::new();
        for &index in fragments {
            if self.store.status(self.video, index)? == FragmentStatus::Complete {
                continue;
            }
            let verified = self.store.verified_chunks(self.video, index)?;
            missing.extend(
                verified
                    .iter()
                    .enumerate()
                    .filter(|(_, ok)| !**ok)
                    .map(|(c, _)| (index, c as u32)),
            );
        }
        let mut s = self.sched.lock().unwrap();
        if s.finished || self.cancel.is_cancelled() {
            return Ok(false);
        }
        s.wanted.extend(fragments.iter().copied());
        for item in missing {
            s.want(item);
        }
        drop(s);
        self.wake.notify_waiters();
        Ok(true)
    }

    /// Whether every fragment in `fragments` is among those this download fetches.
    pub fn wants(&self, fragments: &[FragmentIndex]) -> bool {
        let s = self.sched.lock().unwrap();
        fragments.iter().all(|f| s.wanted.contains(f))
    }

    /// Tells the download that `addr` holds `fragments` (a fragment event, a registry
    /// answer). A new peer joins the download; stalled chunks it can serve are queued
    /// again at once, so a swarm converges on events without waiting for a refresh.
    /// Returns how many stalled chunks were re-queued.
    pub fn add_holder(&self, addr: PeerAddr, fragments: &[FragmentIndex]) -> usize {
        let n = self
            .sched
            .lock()
            .unwrap()
            .add_peer(addr.clone(), Some(fragments));
        self.watches.ensure(addr);
        self.wake.notify_waiters();
        n
    }

    /// Hears about this download's progress too, until [`Download::unobserve`].
    pub fn observe(&self, obs: Arc<dyn FetchObserver>) {
        self.observers.0.lock().unwrap().push(obs);
    }

    /// Stops telling `obs`.
    pub fn unobserve(&self, obs: &Arc<dyn FetchObserver>) {
        self.observers
            .0
            .lock()
            .unwrap()
            .retain(|o| !Arc::ptr_eq(o, obs));
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

    /// Chunks that were already verified in `.part` files when it started (resumed).
    pub fn resumed_chunks(&self) -> u64 {
        self.resumed
    }

    /// The peers taking part, with what they are known to hold.
    pub fn peers(&self) -> Vec<(PeerAddr, usize)> {
        let s = self.sched.lock().unwrap();
        s.peers
            .iter()
            .filter(|p| !p.banned)
            .map(|p| (p.addr.clone(), p.holds.len()))
            .collect()
    }

    /// Stops the download; verified chunks are kept.
    pub fn cancel(&self) {
        self.cancel.cancel();
    }

    /// Waits for the download to end and reports what it did (once; later calls say
    /// it was cancelled).
    pub async fn finish(&self) -> Result<FetchReport, FetchError> {
        let task = self.task.lock().unwrap().take();
        let Some(task) = task else {
            return Err(FetchError::Cancelled);
        };
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

/// Fetches videos into a store from the peers discovery finds.
pub struct Fetcher {
    store: Arc<FragmentStore>,
    pool: Arc<PeerPool>,
    opts: FetchOptions,
    bans: Arc<Bans>,
    library: Option<Arc<crate::library::Library>>,
}

impl std::fmt::Debug for Fetcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fetcher")
            .field("opts", &self.opts)
            .finish_non_exhaustive()
    }
}

/// Messages of `default_video` errors, said of what discovery found.
fn no_default_video(e: crate::serve::DefaultVideoError, sources: &str) -> FetchError {
    use crate::serve::DefaultVideoError;
    FetchError::NoVideo(match e {
        DefaultVideoError::None => {
            format!("no video found here or through discovery ({sources})")
        }
        DefaultVideoError::Ambiguous(v) => format!(
            "several videos are offered; choose one with --video (or default_video): {}",
            v.iter()
                .map(|v| v.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        ),
    })
}

impl Fetcher {
    /// A fetcher storing into `store`, dialing through `pool`.
    pub fn new(store: Arc<FragmentStore>, pool: Arc<PeerPool>, opts: FetchOptions) -> Self {
        Fetcher {
            store,
            pool,
            opts,
            bans: Arc::default(),
            library: None,
        }
    }

    /// Admits every download under `library`'s disk quota before its first chunk.
    pub fn with_library(mut self, library: Arc<crate::library::Library>) -> Self {
        self.library = Some(library);
        self
    }

    /// Peers banned for sending bad data: skipped by every download of this fetcher.
    pub fn bans(&self) -> &Arc<Bans> {
        &self.bans
    }

    /// The store this fetcher writes to.
    pub fn store(&self) -> &Arc<FragmentStore> {
        &self.store
    }

    /// The connection pool it dials through.
    pub fn pool(&self) -> &Arc<PeerPool> {
        &self.pool
    }

    /// The video a request without one means: `configured`, else the only one held
    /// here or known to discovery (all of them count: a choice between several is the
    /// user's, and the error lists them).
    pub async fn resolve_video(
        &self,
        configured: Option<VideoId>,
        discovery: &CombinedDiscovery,
    ) -> Result<VideoId, FetchError> {
        if let Some(v) = configured {
            return Ok(v);
        }
        let mut all: std::collections::BTreeSet<VideoId> =
            self.store.videos().into_iter().collect();
        let (found, errors) = discovery.videos().await;
        all.extend(found);
        let all: Vec<VideoId> = all.into_iter().collect();
        if all.is_empty() && !errors.is_empty() {
            return Err(FetchError::NoPeers(
                errors
                    .iter()
                    .map(|e| e.to_string())
                    .collect::<Vec<_>>()
                    .join("; "),
            ));
        }
        crate::serve::default_video(None, &all)
            .map_err(|e| no_default_video(e, &discovery.describe()))
    }

    /// What each hinted peer holds of `video`: hints that carry fragments as they are,
    /// the others asked (concurrently). Peers that fail are reported to `obs` and left
    /// out; a peer that does not know the video holds nothing.
    pub async fn holdings(
        &self,
        video: VideoId,
        hints: Vec<Hint>,
        obs: &dyn FetchObserver,
    ) -> Vec<(PeerAddr, Vec<FragmentIndex>)> {
        let asks = hints.into_iter().map(|h| {
            let pool = self.pool.clone();
            async move {
                if let Some(f) = h.fragments {
                    return (h.addr, Ok(f));
                }
                let r = async {
                    let mut s = pool.session(&h.addr).await?;
                    let have = s.have(video).await;
                    match have {
                        Ok(f) => {
                            pool.put_back(&h.addr, s);
                            Ok(f)
                        }
                        Err(ProtocolError::Remote {
                            code: ErrorCode::UnknownVideo,
                            ..
                        }) => {
                            pool.put_back(&h.addr, s);
                            Ok(Vec::new())
                        }
                        Err(e) => Err(e),
                    }
                }
                .await;
                (h.addr, r)
            }
        });
        let mut out = Vec::new();
        for (addr, r) in futures::future::join_all(asks).await {
            match r {
                Ok(f) => out.push((addr, f)),
                Err(e) => {
                    self.pool.forget(&addr);
                    obs.peer_failed(&addr, &e.to_string());
                }
            }
        }
        out
    }

    /// The manifest of `video`: the store's, else from a peer that holds some of it,
    /// else from discovery (the registry keeps manifests). Every source is checked: the
    /// manifest must hash to `video`.
    async fn find_manifest(
        &self,
        video: VideoId,
        holders: &[(PeerAddr, Vec<FragmentIndex>)],
        discovery: &CombinedDiscovery,
    ) -> Result<Arc<Manifest>, FetchError> {
        if let Some(m) = self.store.manifest(video) {
            return Ok(m);
        }
        for (addr, _) in holders.iter().filter(|(_, f)| !f.is_empty()) {
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
                    return Ok(self.store.manifest(video).unwrap_or_else(|| Arc::new(m)));
                }
                Err(e) => warn!(peer = %addr, error = %e, "could not get the manifest"),
            }
        }
        if let Some(m) = discovery.manifest(video).await {
            self.store.add_manifest(&m)?;
            return Ok(self.store.manifest(video).unwrap_or_else(|| Arc::new(m)));
        }
        Err(FetchError::NoManifest(video))
    }

    /// Fetches the wanted fragments of a video from `req.peers` only. Verified chunks
    /// already in the store are kept (resume); each new chunk is verified before it is
    /// stored.
    pub async fn fetch(
        &self,
        req: FetchRequest,
        obs: Arc<dyn FetchObserver>,
        cancel: CancellationToken,
    ) -> Result<FetchReport, FetchError> {
        self.start_with(req, &[], obs, cancel).await?.finish().await
    }

    /// [`Fetcher::start`] from `req.peers` only, with byte ranges of the whole file
    /// (offset, length) made URGENT before any worker starts.
    pub async fn start_with(
        &self,
        req: FetchRequest,
        urgent: &[(u64, u64)],
        obs: Arc<dyn FetchObserver>,
        cancel: CancellationToken,
    ) -> Result<Download, FetchError> {
        let discovery = Arc::new(CombinedDiscovery::of_peers(req.peers, self.pool.clone()));
        let video = self.resolve_video(req.video, &discovery).await?;
        self.start(video, req.fragments, &discovery, urgent, obs, cancel)
            .await
    }

    /// Starts a download of `fragments` (all when `None`) of `video` from the peers
    /// `discovery` finds, with byte ranges of the whole file (offset, length) made
    /// URGENT before any worker starts (a player's first request on an empty node gets
    /// its first chunk first). Returns once the manifest is known and the workers run.
    /// Cancelling `cancel` (or dropping the handle) stops it.
    pub async fn start(
        &self,
        video: VideoId,
        fragments: Option<Vec<FragmentIndex>>,
        discovery: &Arc<CombinedDiscovery>,
        urgent: &[(u64, u64)],
        obs: Arc<dyn FetchObserver>,
        cancel: CancellationToken,
    ) -> Result<Download, FetchError> {
        let hints = discovery.locate(video).await;
        if hints.is_empty() {
            return Err(FetchError::NoHolders(format!(
                "no peer holding video {} was found (asked: {}); give the node a --peer, --manager or --broker",
                video.short(),
                discovery.describe()
            )));
        }
        let asked: Vec<String> = hints.iter().map(|h| h.addr.to_string()).collect();
        let holders = self.holdings(video, hints, obs.as_ref()).await;
        if holders.is_empty() && !asked.is_empty() {
            return Err(FetchError::NoPeers(format!(
                "no peer answered ({}); check the addresses and that the peers are running",
                asked.join(", ")
            )));
        }
        let manifest = self.find_manifest(video, &holders, discovery).await?;
        if let Some(lib) = &self.library {
            lib.admit(video).await?;
        }
        let wanted: Vec<FragmentIndex> = match &fragments {
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
        let peers: Vec<PeerState> = holders
            .into_iter()
            .map(|(addr, have)| {
                let mut p = PeerState::new(addr);
                p.holds = have.into_iter().collect();
                p.banned = self.bans.is_banned(&p.addr);
                p
            })
            .collect();
        let early: HashSet<FragmentIndex> = [0, manifest.fragment_count - 1].into();
        let mut sched = Sched::new(peers, early);
        sched.bans = Some(self.bans.clone());
        sched.urgent_per_peer = self.opts.urgent_per_peer.max(1);
        sched.wanted.extend(wanted.iter().copied());
        sched.fragment_count = manifest.fragment_count;
        sched.shuffle = true;
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
        // A node that holds nothing of the video takes its first chunks at random.
        sched.random_first = self.store.have(video).is_empty()
            && resumed == 0
            && self.store.manifest(video).is_some_and(|m| {
                crate::avail::held_bitmap(&self.store, video, &crate::avail::ChunkMap::of(&m))
                    .iter()
                    .all(|b| *b == 0)
            });
        obs.started(video, &manifest, wanted_bytes, already_bytes);
        if resumed > 0 {
            info!(video = %video.short(), chunks = resumed, "resuming from chunks verified earlier");
        }

        let cancel = cancel.child_token();
        let workers = self.opts.concurrency.max(1);
        sched.alive = workers;
        let sched = Arc::new(Mutex::new(sched));
        let wake = Arc::new(Notify::new());
        let observers = Arc::new(Observers::new(vec![obs]));
        let watches = Arc::new(watches::Watches {
            pool: self.pool.clone(),
            sched: sched.clone(),
            wake: wake.clone(),
            video,
            map: crate::avail::ChunkMap::of(&manifest),
            cancel: cancel.clone(),
            watched: Mutex::default(),
        });
        let initial: Vec<PeerAddr> = sched
            .lock()
            .unwrap()
            .peers
            .iter()
            .map(|p| p.addr.clone())
            .collect();
        for addr in initial {
            watches.ensure(addr);
        }
        let (state_tx, state_rx) = watch::channel(DownloadState::Running);
        let mut set = tokio::task::JoinSet::new();
        for _ in 0..workers {
            let ctx = WorkerCtx {
                sched: sched.clone(),
                wake: wake.clone(),
                store: self.store.clone(),
                pool: self.pool.clone(),
                obs: observers.clone(),
                discovery: discovery.clone(),
                watches: watches.clone(),
                bans: self.bans.clone(),
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
            already_complete,
            resumed,
            started: Instant::now(),
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
            observers,
            watches,
            state: state_rx,
            task: Mutex::new(Some(task)),
            resumed,
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
        let missing: Vec<FragmentIndex> = s
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
