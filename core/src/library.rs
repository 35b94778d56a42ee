//! A node's video library: which videos it keeps, which it may evict, and how a video
//! comes and goes while the node runs.
//!
//! - **Adding** splits a file into the store ([`Library::add_file`]); the node's
//!   announcer then registers and announces it and publishes its fragment events, as
//!   for any fragment that becomes complete. A video added here is pinned.
//! - **Removing** ([`Library::remove`]) withdraws the video from the registry and
//!   publishes a [`Withdrawal`] on the fragment topic first, then takes it out of the
//!   store (nothing more is served) and deletes its files: renamed away in one step,
//!   then deleted, so a crash never leaves a half-deleted video that looks held.
//! - **The disk quota** (`limits.max_disk`): every download is admitted before its first
//!   chunk ([`Library::admit`]). A video counts at its full size from the moment its
//!   download is admitted until it ends (its `.part` files are preallocated to full
//!   size anyway); a video held without a running download counts what it holds. When
//!   the new download would not fit, the least recently watched complete videos that
//!   are not pinned and not downloading are evicted (withdrawn, then deleted) until it
//!   does ([`plan_eviction`], a pure function); if even that is not enough the download
//!   is refused with [`QuotaError::Full`] and its manifest, if nothing else of it is
//!   here, is removed again, so nothing of it stays counted.
//!
//! Pins and watch times live in `<data_dir>/library.json`, written atomically. Which
//! bytes are verified is never written there: the store derives that by hashing.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use tracing::{info, warn};

use crate::addr::PeerAddr;
use crate::fsutil;
use crate::ids::{NodeId, VideoId};
use crate::pubsub::{PubSub, Withdrawal};
use crate::ratelimit::human_bytes;
use crate::registry::Registry;
use crate::split::{SplitError, SplitOptions};
use crate::store::{FragmentStore, StoreError};

/// The file holding pins and watch times, in the data directory.
pub const LIBRARY_FILE: &str = "library.json";
/// Prefix of a directory where an added file is split before it enters the store;
/// [`FragmentStore::open`] deletes leftovers.
pub const STAGING_PREFIX: &str = ".staging-";
/// How stale a persisted watch time may get before a new one is written (a player
/// touches a video on every range request).
const WATCH_PERSIST_EVERY_MS: u64 = 60_000;

/// Why a download or an addition does not fit the disk quota.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum QuotaError {
    /// Even after evicting every video that may be evicted, it would not fit.
    #[error(
        "video {video} needs {} but limits.max_disk is {} and {} of it is held by pinned or downloading videos; \
remove or unpin a video (console: remove ID, unpin ID) or raise limits.max_disk",
        human_bytes(*need), human_bytes(*max), human_bytes(*kept)
    )]
    Full {
        /// The video (or the file being added).
        video: String,
        /// Its size.
        need: u64,
        /// The quota.
        max: u64,
        /// Bytes held by videos that cannot be evicted.
        kept: u64,
    },
}

/// Why a library operation failed.
#[derive(Debug, thiserror::Error)]
pub enum LibraryError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Splitting the added file failed.
    #[error(transparent)]
    Split(#[from] SplitError),
    /// It does not fit the disk quota.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// The video is not here.
    #[error("video {0} is not in this node's library")]
    Unknown(VideoId),
    /// A file operation failed.
    #[error("{action} {path}: {error}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
}

/// A video that may be evicted, for [`plan_eviction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidate {
    /// The video.
    pub video: VideoId,
    /// The bytes evicting it frees.
    pub bytes: u64,
    /// When it was last watched (or added), unix milliseconds.
    pub last_used: u64,
}

/// Which videos to evict so that `need` more bytes fit beside `used` under `max`: the
/// least recently used candidates first (ties by id, so the plan is deterministic),
/// only as many as needed. `Err` carries how many bytes would still be missing after
/// evicting every candidate.
pub fn plan_eviction(
    used: u64,
    need: u64,
    max: u64,
    candidates: &[Candidate],
) -> Result<Vec<VideoId>, u64> {
    let mut total = used.saturating_add(need);
    if total <= max {
        return Ok(Vec::new());
    }
    let mut order: Vec<&Candidate> = candidates.iter().collect();
    order.sort_by_key(|c| (c.last_used, c.video));
    let mut evict = Vec::new();
    for c in order {
        evict.push(c.video);
        total = total.saturating_sub(c.bytes);
        if total <= max {
            return Ok(evict);
        }
    }
    Err(total - max)
}

/// What `library.json` holds.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct Persisted {
    /// Videos never evicted.
    #[serde(default)]
    pinned: BTreeSet<VideoId>,
    /// Last watched (stream access) or added, unix milliseconds.
    #[serde(default)]
    used: BTreeMap<VideoId, u64>,
}

/// One video of the library, as listed.
#[derive(Debug, Clone, Serialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct LibraryEntry {
    /// Video id.
    pub video: VideoId,
    /// File name.
    pub name: String,
    /// Size of the whole video in bytes.
    pub size: u64,
    /// Fragments in the video.
    pub fragment_count: u32,
    /// Complete, verified fragments here.
    pub complete_fragments: u32,
    /// Bytes on disk (complete fragments and `.part` files).
    pub bytes_on_disk: u64,
    /// Every fragment is here.
    pub complete: bool,
    /// Never evicted (added or seeded here, or pinned).
    pub pinned: bool,
    /// A download of it is running.
    pub downloading: bool,
    /// Last watched (or added), unix milliseconds; absent if never.
    pub last_used_ms: Option<u64>,
}

/// Counters of the library, for `/metrics`.
#[derive(Debug, Default)]
pub struct LibraryStats {
    /// Videos evicted to make room.
    pub evictions: AtomicU64,
    /// Videos removed on request.
    pub removals: AtomicU64,
    /// Downloads and additions refused for lack of room.
    pub refused: AtomicU64,
}

/// Where a node tells the swarm that it withdrew a video.
#[derive(Clone, Default)]
pub struct Withdrawer {
    /// The node's id.
    pub node: Option<NodeId>,
    /// The registry it announced to.
    pub registry: Option<Arc<dyn Registry>>,
    /// The pub/sub and topic its fragment events go to.
    pub pubsub: Option<(Arc<dyn PubSub>, String)>,
    /// The addresses it advertises.
    pub addrs: Vec<PeerAddr>,
}

/// A directory an added file is split in; deleted when dropped.
#[derive(Debug)]
pub struct Staging {
    path: PathBuf,
}

impl Staging {
    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for Staging {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// A node's library. See the module docs.
pub struct Library {
    store: Arc<FragmentStore>,
    max_disk: Option<u64>,
    path: PathBuf,
    state: Mutex<Persisted>,
    /// What `library.json` says now (watch times are written lazily).
    written: Mutex<Persisted>,
    reserved: Mutex<HashSet<VideoId>>,
    /// One admission (with its evictions) at a time.
    admitting: tokio::sync::Mutex<()>,
    withdrawer: Mutex<Withdrawer>,
    /// Videos evicted while the node runs: `want` does not fetch them back on its own
    /// (that would evict another, and so on); a player or the console still can.
    evicted: Mutex<HashSet<VideoId>>,
    stats: LibraryStats,
}

impl std::fmt::Debug for Library {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Library")
            .field("max_disk", &self.max_disk)
            .finish_non_exhaustive()
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Library {
    /// The library of `store`, with pins and watch times from `<store root>/library.json`
    /// (a missing or unreadable file starts empty, with a warning), under `max_disk`
    /// bytes (`None`: no quota). Videos that are no longer in the store are forgotten.
    pub fn open(store: Arc<FragmentStore>, max_disk: Option<u64>) -> Self {
        let path = store.root().join(LIBRARY_FILE);
        let mut state = match std::fs::read(&path) {
            Ok(b) => serde_json::from_slice::<Persisted>(&b).unwrap_or_else(|e| {
                warn!(path = %path.display(), "ignoring an unreadable library file: {e}");
                Persisted::default()
            }),
            Err(_) => Persisted::default(),
        };
        let held: BTreeSet<VideoId> = store.videos().into_iter().collect();
        state.pinned.retain(|v| held.contains(v));
        state.used.retain(|v, _| held.contains(v));
        Library {
            store,
            max_disk,
            path,
            written: Mutex::new(state.clone()),
            state: Mutex::new(state),
            reserved: Mutex::default(),
            admitting: tokio::sync::Mutex::new(()),
            withdrawer: Mutex::default(),
            evicted: Mutex::default(),
            stats: LibraryStats::default(),
        }
    }

    /// Where withdrawals go (set once the node knows its addresses).
    pub fn set_withdrawer(&self, w: Withdrawer) {
        *self.withdrawer.lock().unwrap() = w;
    }

    /// The store.
    pub fn store(&self) -> &Arc<FragmentStore> {
        &self.store
    }

    /// The quota, if any.
    pub fn max_disk(&self) -> Option<u64> {
        self.max_disk
    }

    /// Counters.
    pub fn stats(&self) -> &LibraryStats {
        &self.stats
    }

    fn persist(&self) {
        let snapshot = self.state.lock().unwrap().clone();
        let bytes = serde_json::to_vec_pretty(&snapshot).expect("library state serializes");
        match fsutil::write_atomic(&self.path, &bytes) {
            Ok(()) => *self.written.lock().unwrap() = snapshot,
            Err(e) => warn!(path = %self.path.display(), "saving the library: {e}"),
        }
    }

    /// Pins (`true`) or unpins a video: a pinned video is never evicted.
    pub fn pin(&self, video: VideoId, on: bool) -> Result<(), LibraryError> {
        if self.store.manifest(video).is_none() {
            return Err(LibraryError::Unknown(video));
        }
        {
            let mut s = self.state.lock().unwrap();
            let changed = if on {
                s.pinned.insert(video)
            } else {
                s.pinned.remove(&video)
            };
            if !changed {
                return Ok(());
            }
        }
        self.persist();
        Ok(())
    }

    /// Whether a video is pinned.
    pub fn is_pinned(&self, video: VideoId) -> bool {
        self.state.lock().unwrap().pinned.contains(&video)
    }

    /// A player watched `video` now: it becomes the most recently used. Never waits
    /// for the disk: a stale watch time is written by a blocking task, off the player's
    /// path.
    pub fn touch(self: &Arc<Self>, video: VideoId) {
        let now = now_ms();
        self.state.lock().unwrap().used.insert(video, now);
        let stale = self
            .written
            .lock()
            .unwrap()
            .used
            .get(&video)
            .is_none_or(|&t| now.saturating_sub(t) >= WATCH_PERSIST_EVERY_MS);
        if stale {
            // Mark it written now so a burst of requests writes once.
            self.written.lock().unwrap().used.insert(video, now);
            let me = self.clone();
            tokio::task::spawn_blocking(move || me.persist());
        }
    }

    /// What a video counts against the quota: its full size while it downloads or
    /// has `.part` files, else what it holds.
    fn charge(&self, video: VideoId, reserved: &HashSet<VideoId>) -> u64 {
        match self.store.footprint(video) {
            Some(fp) if reserved.contains(&video) || fp.partial_bytes > 0 => fp.size,
            Some(fp) => fp.complete_bytes,
            None => 0,
        }
    }

    /// Bytes counted against the quota now.
    pub fn used(&self) -> u64 {
        let reserved = self.reserved.lock().unwrap().clone();
        self.store
            .videos()
            .into_iter()
            .map(|v| self.charge(v, &reserved))
            .sum()
    }

    /// Every video here, in id order.
    pub fn entries(&self) -> Vec<LibraryEntry> {
        let reserved = self.reserved.lock().unwrap().clone();
        let state = self.state.lock().unwrap().clone();
        self.store
            .videos()
            .into_iter()
            .filter_map(|v| {
                let m = self.store.manifest(v)?;
                let fp = self.store.footprint(v)?;
                Some(LibraryEntry {
                    video: v,
                    name: m.name.clone(),
                    size: m.size,
                    fragment_count: m.fragment_count,
                    complete_fragments: fp.complete_fragments,
                    bytes_on_disk: fp.on_disk(),
                    complete: fp.is_complete(),
                    pinned: state.pinned.contains(&v),
                    downloading: reserved.contains(&v),
                    last_used_ms: state.used.get(&v).copied(),
                })
            })
            .collect()
    }

    /// Makes room for `need` bytes beside everything held (but `exclude`), evicting
    /// as [`plan_eviction`] says. Called with the admission lock held.
    async fn make_room(
        &self,
        what: &str,
        exclude: Option<VideoId>,
        need: u64,
    ) -> Result<(), QuotaError> {
        let Some(max) = self.max_disk else {
            return Ok(());
        };
        let reserved = self.reserved.lock().unwrap().clone();
        let state = self.state.lock().unwrap().clone();
        let mut used = 0;
        let mut kept = 0;
        let mut candidates = Vec::new();
        for v in self.store.videos() {
            if Some(v) == exclude {
                continue;
            }
            let charge = self.charge(v, &reserved);
            used += charge;
            let evictable = !state.pinned.contains(&v)
                && !reserved.contains(&v)
                && self
                    .store
                    .footprint(v)
                    .is_some_and(|fp| fp.is_complete() && fp.partial_bytes == 0);
            if evictable {
                candidates.push(Candidate {
                    video: v,
                    bytes: charge,
                    last_used: state.used.get(&v).copied().unwrap_or(0),
                });
            } else {
                kept += charge;
            }
        }
        let plan = plan_eviction(used, need, max, &candidates).map_err(|_| {
            self.stats.refused.fetch_add(1, Ordering::Relaxed);
            QuotaError::Full {
                video: what.to_string(),
                need,
                max,
                kept,
            }
        })?;
        for v in plan {
            info!(video = %v.short(), "evicting the least recently watched video to make room for {what}");
            match self.withdraw_and_delete(v).await {
                Ok(_) => {
                    self.stats.evictions.fetch_add(1, Ordering::Relaxed);
                    let mut evicted = self.evicted.lock().unwrap();
                    if evicted.len() < 4096 {
                        evicted.insert(v);
                    }
                }
                Err(e) => warn!(video = %v.short(), "evicting: {e}"),
            }
        }
        Ok(())
    }

    /// Admits a download of `video` (its manifest is in the store) under the quota,
    /// evicting what must go; the video counts at its full size until
    /// [`Library::release`]. Refused: its manifest leaves the store again when nothing
    /// else of it is here.
    pub async fn admit(&self, video: VideoId) -> Result<(), QuotaError> {
        let _one = self.admitting.lock().await;
        let size = self.store.manifest(video).map(|m| m.size).unwrap_or(0);
        match self.make_room(&video.to_string(), Some(video), size).await {
            Ok(()) => {
                self.reserved.lock().unwrap().insert(video);
                self.evicted.lock().unwrap().remove(&video);
                Ok(())
            }
            Err(e) => {
                let nothing_here = self
                    .store
                    .footprint(video)
                    .is_some_and(|fp| fp.on_disk() == 0);
                if nothing_here {
                    let store = self.store.clone();
                    let _ = tokio::task::spawn_blocking(move || store.remove_video(video)).await;
                }
                Err(e)
            }
        }
    }

    /// Whether `video` was evicted here (and not fetched again since): automatic
    /// fetching (`want`) leaves it alone.
    pub fn was_evicted(&self, video: VideoId) -> bool {
        self.evicted.lock().unwrap().contains(&video)
    }

    /// The download of `video` ended: it counts what it holds from now on.
    pub fn release(&self, video: VideoId) {
        self.reserved.lock().unwrap().remove(&video);
    }

    /// A fresh staging directory for a file to add (under the store root, so the split
    /// fragments are on the same filesystem; deleted when dropped, and on the next
    /// start if the process dies first).
    pub fn staging(&self) -> Result<Staging, LibraryError> {
        let path = self.store.root().join(format!(
            "{STAGING_PREFIX}{}-{}",
            std::process::id(),
            fastrand::u64(..)
        ));
        std::fs::create_dir_all(&path).map_err(|error| LibraryError::Io {
            action: "creating",
            path: path.clone(),
            error,
        })?;
        Ok(Staging { path })
    }

    /// Splits `file` (its file name becomes the video's name) into the store and pins
    /// it; returns its id. Blocks the calling task for the split: large files take
    /// seconds. Room is made first ([`plan_eviction`]); a file that cannot fit is
    /// refused before anything is written.
    pub async fn add_file(&self, file: &Path, opts: SplitOptions) -> Result<VideoId, LibraryError> {
        let size = std::fs::metadata(file)
            .map_err(|error| LibraryError::Io {
                action: "reading",
                path: file.to_path_buf(),
                error,
            })?
            .len();
        let _one = self.admitting.lock().await;
        let name = file
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "video".into());
        self.make_room(&name, None, size).await?;
        let staging = self.staging()?;
        let (store, input, out) = (
            self.store.clone(),
            file.to_path_buf(),
            staging.path().join("split"),
        );
        let video = tokio::task::spawn_blocking(move || -> Result<VideoId, LibraryError> {
            crate::split::split(&input, &out, &opts, &mut |_| {})?;
            let (video, _) = store.import_dir(&out, None)?;
            Ok(video)
        })
        .await
        .expect("splitting does not panic")?;
        drop(staging);
        {
            let mut s = self.state.lock().unwrap();
            s.pinned.insert(video);
            s.used.insert(video, now_ms());
        }
        self.persist();
        info!(video = %video, name, "added to the library (pinned)");
        Ok(video)
    }

    /// Pins videos this node seeded itself (`--seed`), noting them as used now if they
    /// were never used.
    pub fn pin_seeded(&self, videos: &[VideoId]) {
        if videos.is_empty() {
            return;
        }
        {
            let mut s = self.state.lock().unwrap();
            let now = now_ms();
            for v in videos {
                s.pinned.insert(*v);
                s.used.entry(*v).or_insert(now);
            }
        }
        self.persist();
    }

    /// Removes a video on request: withdrawn, then deleted. The caller stops its
    /// download first ([`crate::engine::Downloads::remove`] does).
    pub async fn remove(&self, video: VideoId) -> Result<(), LibraryError> {
        let _one = self.admitting.lock().await;
        if !self.withdraw_and_delete(video).await? {
            return Err(LibraryError::Unknown(video));
        }
        self.stats.removals.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Withdraws `video` from the registry and the fragment topic, then deletes it.
    /// Registry and pub/sub failures are logged, not fatal: the registry forgets a
    /// node's announcements when it re-announces, and a stale event only costs a peer
    /// one failed request.
    async fn withdraw_and_delete(&self, video: VideoId) -> Result<bool, LibraryError> {
        if self.store.manifest(video).is_none() {
            return Ok(false);
        }
        let w = self.withdrawer.lock().unwrap().clone();
        if let (Some(node), Some(reg)) = (w.node, &w.registry) {
            match tokio::time::timeout(Duration::from_secs(5), reg.withdraw(node, video)).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => warn!(video = %video.short(), "withdrawing from the registry: {e}"),
                Err(_) => warn!(video = %video.short(), "withdrawing from the registry timed out"),
            }
        }
        if let (Some(node), Some((ps, topic))) = (w.node, &w.pubsub)
            && !w.addrs.is_empty()
        {
            let msg = Withdrawal {
                withdrawn: video,
                node,
                addrs: w
                    .addrs
                    .iter()
                    .take(crate::pubsub::MAX_EVENT_ADDRS)
                    .cloned()
                    .collect(),
            };
            // On the video's subject (nodes that follow it) and on the plain topic
            // (`want = "all"` nodes and the seed's subscribers), like fragment events.
            for t in [crate::pubsub::video_topic(topic, video), topic.clone()] {
                match tokio::time::timeout(Duration::from_secs(5), ps.publish(&t, msg.encode()))
                    .await
                {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => warn!(video = %video.short(), "publishing the withdrawal: {e}"),
                    Err(_) => warn!(video = %video.short(), "publishing the withdrawal timed out"),
                }
            }
        }
        let store = self.store.clone();
        let removed = tokio::task::spawn_blocking(move || store.remove_video(video))
            .await
            .expect("removing does not panic")?;
        {
            let mut s = self.state.lock().unwrap();
            s.pinned.remove(&video);
            s.used.remove(&video);
        }
        self.reserved.lock().unwrap().remove(&video);
        self.persist();
        if removed {
            info!(video = %video, "removed: withdrawn and deleted");
        }
        Ok(removed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Digest;

    fn v(n: u8) -> VideoId {
        VideoId(Digest::of(&[n]))
    }

    fn c(n: u8, bytes: u64, last_used: u64) -> Candidate {
        Candidate {
            video: v(n),
            bytes,
            last_used,
        }
    }

    #[test]
    fn nothing_is_evicted_when_it_fits() {
        assert_eq!(plan_eviction(50, 50, 100, &[c(1, 10, 0)]), Ok(vec![]));
        assert_eq!(plan_eviction(0, 0, 0, &[]), Ok(vec![]));
    }

    #[test]
    fn the_least_recently_used_go_first_and_only_as_many_as_needed() {
        let cands = [c(1, 30, 300), c(2, 30, 100), c(3, 30, 200)];
        // 90 used + 20 needed = 110 > 100: one eviction (the oldest, 2) is enough.
        assert_eq!(plan_eviction(90, 20, 100, &cands), Ok(vec![v(2)]));
        // 90 + 50 = 140: two, oldest first.
        assert_eq!(plan_eviction(90, 50, 100, &cands), Ok(vec![v(2), v(3)]));
        // Never-watched (0) goes before watched.
        let cands = [c(1, 30, 5), c(2, 30, 0)];
        assert_eq!(plan_eviction(60, 50, 100, &cands), Ok(vec![v(2)]));
    }

    #[test]
    fn a_download_that_cannot_fit_says_how_much_is_missing() {
        // 80 held, of which only 30 evictable; 60 needed: 80 - 30 + 60 = 110 > 100.
        assert_eq!(plan_eviction(80, 60, 100, &[c(1, 30, 0)]), Err(10));
        // Larger than the quota itself.
        assert_eq!(plan_eviction(0, 101, 100, &[]), Err(1));
    }

    #[test]
    fn ties_are_broken_by_id() {
        let a = [c(1, 10, 7), c(2, 10, 7)];
        let b = [c(2, 10, 7), c(1, 10, 7)];
        assert_eq!(
            plan_eviction(100, 5, 100, &a),
            plan_eviction(100, 5, 100, &b)
        );
    }
}
