//! The node's running downloads, one per video, started when a player asks for a video
//! the node does not hold completely.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use fragnet_core::fetch::{
    Download, DownloadState, FetchError, FetchObserver, FetchRequest, Fetcher,
};
use fragnet_core::ratelimit::human_bytes;
use fragnet_core::store::fragment_file_name;
use fragnet_core::{FragmentIndex, Manifest, PeerAddr, VideoId};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

/// Counters of what the node's downloads fetched, for `/metrics`.
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
    /// The latest completed fragments and the peers their chunks came from (bounded).
    pub sources: Mutex<Vec<(FragmentIndex, Vec<PeerAddr>)>>,
}

/// How many entries [`DownloadStats::sources`] keeps.
const MAX_SOURCES: usize = 4096;

/// Logs and counts what downloads do.
struct LogObserver {
    stats: Arc<DownloadStats>,
}

impl FetchObserver for LogObserver {
    fn started(&self, video: VideoId, manifest: &Manifest, wanted: u64, already: u64) {
        info!(
            video = %video.short(),
            name = %manifest.name,
            "downloading: {} to fetch, {} already here",
            human_bytes(wanted - already),
            human_bytes(already)
        );
    }
    fn chunk(&self, _: FragmentIndex, bytes: u64, _: &PeerAddr) {
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
    fn peer_failed(&self, peer: &PeerAddr, error: &str) {
        self.stats.peer_failures.fetch_add(1, Ordering::Relaxed);
        warn!(%peer, "peer failed: {error}");
    }
}

/// One video's slot: at most one download at a time, started under its lock.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Download>>>>;

/// Starts and keeps the node's downloads: one per video, from the configured peers.
pub struct Downloads {
    fetcher: Fetcher,
    peers: RwLock<Vec<PeerAddr>>,
    slots: Mutex<HashMap<VideoId, Slot>>,
    stats: Arc<DownloadStats>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for Downloads {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Downloads")
            .field("peers", &*self.peers.read().unwrap())
            .finish_non_exhaustive()
    }
}

impl Downloads {
    /// Downloads through `fetcher` from `peers`; `cancel` stops them all.
    pub fn new(fetcher: Fetcher, peers: Vec<PeerAddr>, cancel: CancellationToken) -> Self {
        Downloads {
            fetcher,
            peers: RwLock::new(peers),
            slots: Mutex::default(),
            stats: Arc::default(),
            cancel,
        }
    }

    /// Replaces the peers new downloads ask (running ones keep theirs).
    pub fn set_peers(&self, peers: Vec<PeerAddr>) {
        *self.peers.write().unwrap() = peers;
    }

    /// Whether there is anyone to download from.
    pub fn has_peers(&self) -> bool {
        !self.peers.read().unwrap().is_empty()
    }

    /// What the downloads fetched.
    pub fn stats(&self) -> &Arc<DownloadStats> {
        &self.stats
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

    /// The running download of `video`, started if the video is not complete here;
    /// `None` when it is. `first` (offset, length in the file) is made urgent before
    /// anything else, so a player's first bytes come first.
    pub async fn ensure(
        &self,
        video: VideoId,
        first: Option<(u64, u64)>,
    ) -> Result<Option<Arc<Download>>, FetchError> {
        let slot = self.slots.lock().unwrap().entry(video).or_default().clone();
        let mut guard = slot.lock().await;
        if let Some(d) = guard.as_ref()
            && d.state() == DownloadState::Running
        {
            if let Some((off, len)) = first {
                d.want_range(off, len);
            }
            return Ok(Some(d.clone()));
        }
        let store = self.fetcher.store();
        if let Some(m) = store.manifest(video)
            && store.have(video).len() == m.fragment_count as usize
        {
            return Ok(None);
        }
        let peers = self.peers.read().unwrap().clone();
        if peers.is_empty() {
            return Err(FetchError::NoPeers(
                "none configured; start the node with --peer HOST:PORT".into(),
            ));
        }
        let obs = Arc::new(LogObserver {
            stats: self.stats.clone(),
        });
        let req = FetchRequest {
            video: Some(video),
            fragments: None,
            peers,
        };
        let urgent: Vec<(u64, u64)> = first.into_iter().collect();
        let d = Arc::new(
            self.fetcher
                .start_with(req, &urgent, obs, self.cancel.child_token())
                .await?,
        );
        self.stats.started.fetch_add(1, Ordering::Relaxed);
        *guard = Some(d.clone());
        // Report how it ends, once.
        let watch = d.clone();
        tokio::spawn(async move {
            match watch.ended().await {
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
}
