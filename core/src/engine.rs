//! The node's one download engine: one running [`Download`] per video, found through
//! the node's combined discovery. It is the only way anything downloads: a player's
//! ranges ([`Downloads::ensure`]), the console and `fragnet fetch`
//! ([`Downloads::fetch`]), `want` and fragment events ([`Downloads::spawn`]).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::{Deserialize, Deserializer, Serialize};
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::addr::PeerAddr;
use crate::discovery::CombinedDiscovery;
use crate::fetch::{
    Download, DownloadState, FetchError, FetchObserver, FetchReport, Fetcher, Observers,
};
use crate::ids::{FragmentIndex, VideoId};
use crate::manifest::Manifest;
use crate::ratelimit::human_bytes;
use crate::store::{FragmentStatus, FragmentStore, StoreEvent, fragment_file_name};

/// What a node fetches on its own.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Want {
    /// Nothing unless asked (console, player).
    #[default]
    None,
    /// Every video discovery knows (the registry's, the configured peers').
    All,
    /// These videos.
    Videos(Vec<VideoId>),
}

impl Want {
    /// Whether this policy fetches `video` on its own.
    pub fn wants(&self, video: VideoId) -> bool {
        match self {
            Want::None => false,
            Want::All => true,
            Want::Videos(v) => v.contains(&video),
        }
    }
}

impl Serialize for Want {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self {
            Want::None => s.serialize_str("none"),
            Want::All => s.serialize_str("all"),
            Want::Videos(v) => v.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for Want {
    /// `"all"`, `"none"`, a video id, `"id1, id2"` or a list of ids.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum OneOrMany {
            One(String),
            Many(Vec<String>),
        }
        let items: Vec<String> = match OneOrMany::deserialize(d)? {
            OneOrMany::One(s) => s
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect(),
            OneOrMany::Many(v) => v,
        };
        match items.as_slice() {
            [] => Ok(Want::None),
            [one] if one == "none" => Ok(Want::None),
            [one] if one == "all" => Ok(Want::All),
            many => many
                .iter()
                .map(|s| {
                    s.parse::<VideoId>().map_err(|e| {
                        serde::de::Error::custom(format!("want: {e} (or \"all\", \"none\")"))
                    })
                })
                .collect::<Result<Vec<_>, _>>()
                .map(Want::Videos),
        }
    }
}

/// Counters of what the node's downloads fetched, for `/metrics` and summaries.
#[derive(Debug, Default)]
pub struct DownloadStats {
    /// Downloads started.
    pub started: AtomicU64,
    /// Chunks fetched and verified.
    pub chunks: AtomicU64,
    /// Body bytes fetched and verified.
    pub bytes: AtomicU64,
    /// Fragments completed.
    pub fragments: AtomicU64,
    /// Peer failures.
    pub peer_failures: AtomicU64,
    /// Bytes fetched from seeders (peers holding the whole video).
    pub bytes_from_seeders: AtomicU64,
    /// Bytes fetched from other leechers.
    pub bytes_from_peers: AtomicU64,
    /// The latest completed fragments and the peers their chunks came from (bounded).
    pub sources: Mutex<Vec<(FragmentIndex, Vec<PeerAddr>)>>,
}

/// How many entries [`DownloadStats::sources`] keeps.
const MAX_SOURCES: usize = 4096;

/// Logs and counts what every download does.
struct LogObserver {
    stats: Arc<DownloadStats>,
}

impl FetchObserver for LogObserver {
    fn started(&self, video: VideoId, manifest: &Manifest, wanted: u64, already: u64) {
        info!(
            video = %video.short(),
            name = %manifest.name,
            "downloading: {} to fetch, {} already here",
            human_bytes(wanted.saturating_sub(already)),
            human_bytes(already)
        );
    }
    fn chunk(&self, _: FragmentIndex, _: u32, bytes: u64, _: &PeerAddr) {
        self.stats.chunks.fetch_add(1, Ordering::Relaxed);
        self.stats.bytes.fetch_add(bytes, Ordering::Relaxed);
    }
    fn fragment(&self, index: FragmentIndex, bytes: u64, from: &[PeerAddr]) {
        self.stats.fragments.fetch_add(1, Ordering::Relaxed);
        {
            let mut src = self.stats.sources.lock().unwrap();
            if src.len() < MAX_SOURCES {
                src.push((index, from.to_vec()));
            }
        }
        let from: Vec<String> = from.iter().map(|a| a.host_port()).collect();
        info!(
            "[✓] Fragment '{}' received from {} ({}, verified)",
            fragment_file_name(index),
            from.join(", "),
            human_bytes(bytes)
        );
    }
    fn chunk_source(&self, bytes: u64, from_seeder: bool) {
        let c = if from_seeder {
            &self.stats.bytes_from_seeders
        } else {
            &self.stats.bytes_from_peers
        };
        c.fetch_add(bytes, Ordering::Relaxed);
    }
    fn peer_failed(&self, peer: &PeerAddr, error: &str) {
        self.stats.peer_failures.fetch_add(1, Ordering::Relaxed);
        warn!(%peer, "peer failed: {error}");
    }
}

/// Collects what one request (a console line, `fragnet fetch`) got out of a download
/// it may share with others.
struct RequestTracker {
    /// The fragments asked for; `None`: all.
    wanted: Option<Vec<FragmentIndex>>,
    inner: Arc<dyn FetchObserver>,
    fetched: Mutex<Vec<(FragmentIndex, Vec<PeerAddr>)>>,
    bytes: AtomicU64,
}

impl RequestTracker {
    fn asked(&self, index: FragmentIndex) -> bool {
        self.wanted.as_ref().is_none_or(|w| w.contains(&index))
    }
}

impl FetchObserver for RequestTracker {
    fn started(&self, video: VideoId, manifest: &Manifest, wanted: u64, already: u64) {
        self.inner.started(video, manifest, wanted, already);
    }
    fn chunk(&self, index: FragmentIndex, chunk: u32, bytes: u64, from: &PeerAddr) {
        if self.asked(index) {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
            self.inner.chunk(index, chunk, bytes, from);
        }
    }
    fn fragment(&self, index: FragmentIndex, bytes: u64, from: &[PeerAddr]) {
        if self.asked(index) {
            self.fetched.lock().unwrap().push((index, from.to_vec()));
            self.inner.fragment(index, bytes, from);
        }
    }
    fn peer_failed(&self, peer: &PeerAddr, error: &str) {
        self.inner.peer_failed(peer, error);
    }
}

/// Distinct peers [`ChunkSources`] names per video; chunks from more peers are counted
/// as from "another peer".
pub const MAX_SOURCE_PEERS: usize = 64;
/// Videos [`ChunkSources`] remembers (the most recently downloaded).
const MAX_SOURCE_VIDEOS: usize = 32;

/// Which peer each chunk of a video came from, for the videos this node downloaded
/// most recently (bounded: [`MAX_SOURCE_VIDEOS`] videos, [`MAX_SOURCE_PEERS`] peers
/// each, one entry per chunk of the manifest). Chunks held before this run have no
/// source.
#[derive(Debug, Clone, Default)]
pub struct VideoSources {
    /// The peers chunks came from, in the order they first sent one.
    pub peers: Vec<PeerAddr>,
    /// (fragment, chunk) → index into `peers`; `None`: a peer beyond the bound.
    pub chunks: HashMap<(FragmentIndex, u32), Option<u16>>,
}

impl VideoSources {
    /// The peer chunk `chunk` of fragment `index` came from, if known and named.
    pub fn source(&self, index: FragmentIndex, chunk: u32) -> Option<&PeerAddr> {
        let i = (*self.chunks.get(&(index, chunk))?)?;
        self.peers.get(i as usize)
    }

    fn record(&mut self, index: FragmentIndex, chunk: u32, from: &PeerAddr) {
        let i = match self.peers.iter().position(|p| p == from) {
            Some(i) => Some(i as u16),
            None if self.peers.len() < MAX_SOURCE_PEERS => {
                self.peers.push(from.clone());
                Some((self.peers.len() - 1) as u16)
            }
            None => None,
        };
        self.chunks.insert((index, chunk), i);
    }
}

/// Chunk sources of the recent downloads.
#[derive(Debug, Default)]
struct ChunkSources(Mutex<indexmap::IndexMap<VideoId, VideoSources>>);

impl ChunkSources {
    fn record(&self, video: VideoId, index: FragmentIndex, chunk: u32, from: &PeerAddr) {
        let mut all = self.0.lock().unwrap();
        if !all.contains_key(&video) {
            while all.len() >= MAX_SOURCE_VIDEOS {
                all.shift_remove_index(0);
            }
        }
        let sources = all.entry(video).or_default();
        // The first peer whose copy verified; a duplicate from an endgame request
        // arrives later and changes nothing.
        if !sources.chunks.contains_key(&(index, chunk)) {
            sources.record(index, chunk, from);
        }
    }
}

/// Records the source of each chunk of one download.
struct SourceRecorder {
    video: VideoId,
    sources: Arc<ChunkSources>,
}

impl FetchObserver for SourceRecorder {
    fn started(&self, video: VideoId, _: &Manifest, _: u64, already: u64) {
        // Nothing of it here: whatever was recorded belongs to a copy since removed.
        if already == 0 {
            self.sources.0.lock().unwrap().shift_remove(&video);
        }
    }
    fn chunk(&self, index: FragmentIndex, chunk: u32, _: u64, from: &PeerAddr) {
        self.sources.record(self.video, index, chunk, from);
    }
}

/// One video's slot: at most one download at a time, started under its lock.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Download>>>>;

/// The node's downloads: one per video, from the peers its discovery finds.
pub struct Downloads {
    fetcher: Fetcher,
    discovery: Arc<CombinedDiscovery>,
    want: Want,
    slots: Mutex<HashMap<VideoId, Slot>>,
    stats: Arc<DownloadStats>,
    log: Arc<dyn FetchObserver>,
    sources: Arc<ChunkSources>,
    library: Option<Arc<crate::library::Library>>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Downloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloads")
            .field("discovery", &self.discovery)
            .field("want", &self.want)
            .finish_non_exhaustive()
    }
}

impl Downloads {
    /// Downloads through `fetcher` from the peers `discovery` finds, fetching `want` on
    /// its own once [`Downloads::spawn`] runs; `cancel` stops them all.
    pub fn new(
        fetcher: Fetcher,
        discovery: Arc<CombinedDiscovery>,
        want: Want,
        cancel: CancellationToken,
    ) -> Self {
        let stats: Arc<DownloadStats> = Arc::default();
        Downloads {
            fetcher,
            discovery,
            want,
            slots: Mutex::default(),
            log: Arc::new(LogObserver {
                stats: stats.clone(),
            }),
            stats,
            sources: Arc::default(),
            library: None,
            cancel,
        }
    }

    /// Keeps `library` informed of downloads (its quota counts them until they end);
    /// the fetcher should admit through the same library.
    pub fn with_library(mut self, library: Arc<crate::library::Library>) -> Self {
        self.library = Some(library);
        self
    }

    /// The node's library, when it has one.
    pub fn library(&self) -> Option<&Arc<crate::library::Library>> {
        self.library.as_ref()
    }

    /// Evicted here to make room: not fetched back on its own.
    fn evicted(&self, video: VideoId) -> bool {
        self.library.as_ref().is_some_and(|l| l.was_evicted(video))
    }

    /// Which peer each chunk of `video` came from, if this node downloaded any of it
    /// recently.
    pub fn sources(&self, video: VideoId) -> Option<VideoSources> {
        self.sources.0.lock().unwrap().get(&video).cloned()
    }

    /// Removes `video` from this node: its running download is stopped (so nothing
    /// more of it is announced), then the library withdraws and deletes it.
    pub async fn remove(&self, video: VideoId) -> Result<(), crate::library::LibraryError> {
        let slot = self.slot(video);
        {
            let mut guard = slot.lock().await;
            if let Some(d) = guard.take() {
                d.cancel();
                let _ = tokio::time::timeout(Duration::from_secs(5), d.ended()).await;
            }
        }
        self.sources.0.lock().unwrap().shift_remove(&video);
        let result = match &self.library {
            Some(lib) => lib.remove(video).await,
            None => Err(crate::library::LibraryError::Unknown(video)),
        };
        self.slots.lock().unwrap().remove(&video);
        result
    }

    /// The store downloads write to.
    pub fn store(&self) -> &Arc<FragmentStore> {
        self.fetcher.store()
    }

    /// The node's combined discovery.
    pub fn discovery(&self) -> &Arc<CombinedDiscovery> {
        &self.discovery
    }

    /// What the downloads fetched.
    pub fn stats(&self) -> &Arc<DownloadStats> {
        &self.stats
    }

    /// Whether anything could ever be downloaded (some discovery source is configured).
    pub fn can_discover(&self) -> bool {
        !self.discovery.is_empty()
    }

    fn slot(&self, video: VideoId) -> Slot {
        self.slots.lock().unwrap().entry(video).or_default().clone()
    }

    /// The running download of `video`, if any.
    pub fn get(&self, video: VideoId) -> Option<Arc<Download>> {
        let slot = self.slots.lock().unwrap().get(&video).cloned()?;
        let guard = slot.try_lock().ok()?;
        guard
            .as_ref()
            .filter(|d| d.state() == DownloadState::Running)
            .cloned()
    }

    /// Every running download.
    pub fn running(&self) -> Vec<Arc<Download>> {
        let videos: Vec<VideoId> = self.slots.lock().unwrap().keys().copied().collect();
        videos.into_iter().filter_map(|v| self.get(v)).collect()
    }

    fn complete(&self, video: VideoId, fragments: Option<&[FragmentIndex]>) -> bool {
        let store = self.store();
        let Some(m) = store.manifest(video) else {
            return false;
        };
        match fragments {
            None => store.have(video).len() == m.fragment_count as usize,
            Some(f) => f
                .iter()
                .all(|&i| store.status(video, i).ok() == Some(FragmentStatus::Complete)),
        }
    }

    /// The running download of the whole `video`, started if the video is not complete
    /// here; `None` when it is. `first` (offset, length in the file) is made urgent
    /// before anything else, so a player's first bytes come first.
    pub async fn ensure(
        &self,
        video: VideoId,
        first: Option<(u64, u64)>,
    ) -> Result<Option<Arc<Download>>, FetchError> {
        self.ensure_fragments(video, None, first, None).await
    }

    /// The running download of `video` that fetches `fragments` (all when `None`),
    /// extended or started as needed; `None` when they are all here.
    async fn ensure_fragments(
        &self,
        video: VideoId,
        fragments: Option<&[FragmentIndex]>,
        first: Option<(u64, u64)>,
        extra: Option<Arc<dyn FetchObserver>>,
    ) -> Result<Option<Arc<Download>>, FetchError> {
        let slot = self.slot(video);
        let mut guard = slot.lock().await;
        if let Some(d) = guard.as_ref()
            && d.state() == DownloadState::Running
        {
            let all: Vec<FragmentIndex>;
            let wanted = match fragments {
                Some(f) => f,
                None => {
                    all = (0..d.manifest().fragment_count).collect();
                    &all
                }
            };
            if d.wants(wanted) || d.want_fragments(wanted)? {
                if let Some((off, len)) = first {
                    d.want_range(off, len);
                }
                if let Some(o) = extra {
                    d.observe(o);
                }
                return Ok(Some(d.clone()));
            }
            // It ended between the look and the extension: start a new one below.
            d.ended().await;
        }
        if self.complete(video, fragments) {
            return Ok(None);
        }
        let recorder: Arc<dyn FetchObserver> = Arc::new(SourceRecorder {
            video,
            sources: self.sources.clone(),
        });
        let obs: Arc<dyn FetchObserver> = Arc::new(Observers::new(
            [Some(self.log.clone()), Some(recorder), extra]
                .into_iter()
                .flatten()
                .collect(),
        ));
        let urgent: Vec<(u64, u64)> = first.into_iter().collect();
        let started = self
            .fetcher
            .start(
                video,
                fragments.map(|f| f.to_vec()),
                &self.discovery,
                &urgent,
                obs,
                self.cancel.child_token(),
            )
            .await;
        let d = match started {
            Ok(d) => Arc::new(d),
            Err(e) => {
                if let Some(lib) = &self.library {
                    lib.release(video);
                }
                return Err(e);
            }
        };
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        *guard = Some(d.clone());
        // Hints that arrived while the download was being set up (its manifest and
        // first lookup take a moment) found no download to join; a crowd of viewers
        // starting together announce themselves in exactly that window. Their
        // addresses are in the directory: join them now (their watches say what they
        // hold).
        let known = self
            .discovery
            .known(video, crate::discovery::DIRECTORY_HOLDERS);
        debug!(video = %video.short(), known = known.len(), "joining the peers heard of meanwhile");
        for addr in known {
            d.add_holder(addr, &[]);
        }
        // Report how it ends, once, and stop counting it at full size.
        let watch = d.clone();
        let library = self.library.clone();
        tokio::spawn(async move {
            let end = watch.ended().await;
            if let Some(lib) = &library {
                lib.release(watch.video());
            }
            match end {
                DownloadState::Complete => {
                    info!(video = %watch.video().short(), "download complete")
                }
                DownloadState::Failed(e) => {
                    warn!(video = %watch.video().short(), "download stopped: {e}")
                }
                _ => {}
            }
        });
        Ok(Some(d))
    }

    /// Who holds what of `video` now: every peer discovery finds, with its have-set
    /// (asked of peers whose source did not say).
    pub async fn holders(&self, video: VideoId) -> Vec<(PeerAddr, Vec<FragmentIndex>)> {
        let hints = self.discovery.locate(video).await;
        self.fetcher
            .holdings(video, hints, &crate::fetch::Quiet)
            .await
    }

    /// The video a request without one means: `configured`, else the only one held
    /// here or known to discovery.
    pub async fn resolve_video(&self, configured: Option<VideoId>) -> Result<VideoId, FetchError> {
        self.fetcher
            .resolve_video(configured, &self.discovery)
            .await
    }

    /// Fetches `fragments` (all when `None`) of `video` (the default video when
    /// `None`) and waits until they are here: through the video's running download if
    /// there is one (extended with these fragments), else a new one. `obs` hears about
    /// these fragments only.
    pub async fn fetch(
        &self,
        video: Option<VideoId>,
        fragments: Option<Vec<FragmentIndex>>,
        obs: Arc<dyn FetchObserver>,
        cancel: &CancellationToken,
    ) -> Result<FetchReport, FetchError> {
        let started = Instant::now();
        let video = self.resolve_video(video).await?;
        if let (Some(m), Some(f)) = (self.store().manifest(video), &fragments)
            && let Some(&bad) = f.iter().find(|&&i| i >= m.fragment_count)
        {
            return Err(FetchError::NoSuchFragment {
                video,
                index: bad,
                count: m.fragment_count,
            });
        }
        let wanted_now = |m: &Manifest| -> Vec<FragmentIndex> {
            fragments
                .clone()
                .unwrap_or_else(|| (0..m.fragment_count).collect())
        };
        // Which of them are here before anything is fetched.
        let already = |m: &Manifest| -> Vec<FragmentIndex> {
            wanted_now(m)
                .into_iter()
                .filter(|&i| self.store().status(video, i).ok() == Some(FragmentStatus::Complete))
                .collect()
        };
        let already_complete = self
            .store()
            .manifest(video)
            .map(|m| already(&m))
            .unwrap_or_default();
        let tracker = Arc::new(RequestTracker {
            wanted: fragments.clone(),
            inner: obs,
            fetched: Mutex::default(),
            bytes: AtomicU64::new(0),
        });
        let as_obs: Arc<dyn FetchObserver> = tracker.clone();
        let mut events = self.store().subscribe();
        let download = self
            .ensure_fragments(video, fragments.as_deref(), None, Some(as_obs.clone()))
            .await?;
        let manifest = self
            .store()
            .manifest(video)
            .ok_or(FetchError::NoManifest(video))?;
        let wanted = wanted_now(&manifest);
        let resumed = download.as_ref().map(|d| d.resumed_chunks()).unwrap_or(0);
        let result = async {
            let Some(d) = &download else {
                return Ok(());
            };
            loop {
                if wanted
                    .iter()
                    .all(|&i| self.store().status(video, i).ok() == Some(FragmentStatus::Complete))
                {
                    return Ok(());
                }
                tokio::select! {
                    _ = cancel.cancelled() => return Err(FetchError::Cancelled),
                    state = d.ended() => {
                        // One last look: the fragments may have completed as it ended.
                        if wanted.iter().all(|&i| self.store().status(video, i).ok() == Some(FragmentStatus::Complete)) {
                            return Ok(());
                        }
                        let missing = wanted.iter().copied().filter(|&i| self.store().status(video, i).ok() != Some(FragmentStatus::Complete)).collect();
                        return Err(match state {
                            DownloadState::Failed(e) => FetchError::Incomplete { missing, last_error: Some(e) },
                            DownloadState::Cancelled => FetchError::Cancelled,
                            _ => FetchError::Incomplete { missing, last_error: None },
                        });
                    }
                    ev = events.recv() => match ev {
                        Ok(StoreEvent::FragmentComplete { .. }) | Err(RecvError::Lagged(_)) | Ok(_) => {}
                        Err(RecvError::Closed) => return Err(FetchError::Cancelled),
                    },
                }
            }
        }
        .await;
        if let Some(d) = &download {
            d.unobserve(&as_obs);
        }
        result?;
        let mut fetched = std::mem::take(&mut *tracker.fetched.lock().unwrap());
        fetched.retain(|(i, _)| wanted.contains(i));
        fetched.sort_by_key(|f| f.0);
        Ok(FetchReport {
            video,
            manifest,
            fetched,
            already_complete,
            resumed_chunks: resumed,
            bytes: tracker.bytes.load(Ordering::Relaxed),
            elapsed: started.elapsed(),
        })
    }

    /// Starts the engine's own work until `cancel`: holders that discovery hears of
    /// join the running download of their video (or start one, for a video in
    /// `want`), and every `reconcile` period the wanted videos that are not complete
    /// here are looked up again, so a lost event loses nothing.
    pub fn spawn(
        self: &Arc<Self>,
        reconcile: Duration,
        cancel: &CancellationToken,
        tasks: &mut JoinSet<()>,
    ) {
        tasks.spawn(self.clone().hint_loop(cancel.clone()));
        if self.want != Want::None {
            tasks.spawn(self.clone().reconcile_loop(reconcile, cancel.clone()));
        }
    }

    async fn hint_loop(self: Arc<Self>, cancel: CancellationToken) {
        let mut hints = self.discovery.subscribe();
        loop {
            let hint = tokio::select! {
                _ = cancel.cancelled() => return,
                h = hints.recv() => h,
            };
            let hint = match hint {
                Ok(h) => h,
                Err(RecvError::Lagged(_)) => continue, // reconciliation catches up
                Err(RecvError::Closed) => return,
            };
            let fragments = hint.fragments.clone().unwrap_or_default();
            if let Some(d) = self.get(hint.video) {
                d.add_holder(hint.addr, &fragments);
                continue;
            }
            if !self.want.wants(hint.video)
                || self.complete(hint.video, None)
                || self.evicted(hint.video)
            {
                continue;
            }
            if fragments
                .iter()
                .all(|&i| self.store().status(hint.video, i).ok() == Some(FragmentStatus::Complete))
                && !fragments.is_empty()
            {
                continue;
            }
            debug!(video = %hint.video.short(), from = %hint.addr, "a holder appeared; downloading");
            let me = self.clone();
            tokio::spawn(async move {
                match me.ensure(hint.video, None).await {
                    Ok(Some(d)) => {
                        d.add_holder(hint.addr, &fragments);
                    }
                    Ok(None) => {}
                    Err(e) => debug!(video = %hint.video.short(), "not downloading yet: {e}"),
                }
            });
        }
    }

    async fn reconcile_loop(self: Arc<Self>, every: Duration, cancel: CancellationToken) {
        // A short first wait: let registration and subscriptions settle.
        let mut wait = Duration::from_millis(300);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = every;
            self.reconcile_once().await;
        }
    }

    /// Which wanted videos are incomplete here: start their downloads, or tell running
    /// ones about holders discovery knows now.
    pub async fn reconcile_once(&self) {
        let videos = match &self.want {
            Want::None => return,
            Want::All => self.discovery.videos().await.0,
            Want::Videos(v) => v.clone(),
        };
        for video in videos {
            if self.complete(video, None) || self.evicted(video) {
                continue;
            }
            match self.get(video) {
                Some(d) => {
                    let hints = self.discovery.locate(video).await;
                    for (addr, f) in self
                        .fetcher
                        .holdings(video, hints, &crate::fetch::Quiet)
                        .await
                    {
                        d.add_holder(addr, &f);
                    }
                }
                None => {
                    if let Err(e) = self.ensure(video, None).await {
                        debug!(video = %video.short(), "not downloading yet: {e}");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn want_reads_all_none_and_ids() {
        let id = "ab".repeat(32);
        let w: Want = serde_json::from_value(serde_json::json!("all")).unwrap();
        assert_eq!(w, Want::All);
        let w: Want = serde_json::from_value(serde_json::json!("none")).unwrap();
        assert_eq!(w, Want::None);
        let w: Want = serde_json::from_value(serde_json::json!(format!("{id}, {id}"))).unwrap();
        assert!(matches!(w, Want::Videos(ref v) if v.len() == 2));
        let w: Want = serde_json::from_value(serde_json::json!([id])).unwrap();
        assert!(w.wants(id.parse().unwrap()));
        let e = serde_json::from_value::<Want>(serde_json::json!("some")).unwrap_err();
        assert!(e.to_string().contains("want"), "{e}");
    }
}
