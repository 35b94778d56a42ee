//! The fragment store: `<root>/<video_id>/manifest.json` + `fragment_<i>.bin`.
//!
//! A fragment being fetched lives in `fragment_<i>.bin.part`, preallocated to the
//! fragment's size. Which chunks of a `.part` file are verified is not written
//! anywhere: it is derived by hashing them, on start and as chunks arrive, so a
//! restart resumes at the first unverified chunk and a crash can never leave a
//! "verified" mark on bytes that are not. A complete fragment is checked against the
//! fragment hash, fsynced and renamed. Bytes that fail verification are never served,
//! announced or counted; whole files that fail are moved to `<root>/quarantine/`.

use std::collections::{BTreeMap, HashMap};
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::fsutil;
use crate::ids::{Digest, FragmentIndex, VideoId};
use crate::manifest::{Manifest, ManifestError};

/// Name of the manifest file in a video directory.
pub const MANIFEST_FILE: &str = "manifest.json";
/// Directory under the store root where bytes that failed verification are set aside.
pub const QUARANTINE_DIR: &str = "quarantine";
/// Prefix of a video directory being deleted: renamed away first (one atomic step), so
/// a crash mid-delete leaves a directory the next start removes, never a half-deleted
/// video that looks held.
const REMOVING_PREFIX: &str = ".removing-";

/// The seed's fragment file name.
pub fn fragment_file_name(index: FragmentIndex) -> String {
    format!("fragment_{index}.bin")
}

/// Errors of the store.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A filesystem operation failed.
    #[error("{action} {path}: {error}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        error: std::io::Error,
    },
    /// The store holds no manifest for this video.
    #[error("unknown video {0}")]
    UnknownVideo(VideoId),
    /// The video has no fragment (or chunk) with this index.
    #[error("video {video} has no fragment {index}")]
    NoSuchFragment {
        /// Video.
        video: VideoId,
        /// Requested index.
        index: FragmentIndex,
    },
    /// Bytes did not match the manifest's hash; nothing was stored.
    #[error("hash mismatch for {what} of fragment {index} of video {}", video.short())]
    HashMismatch {
        /// Video.
        video: VideoId,
        /// Fragment.
        index: FragmentIndex,
        /// "chunk 3", "fragment".
        what: String,
    },
    /// The requested bytes are not verified here (yet).
    #[error("bytes {offset}..{end} of fragment {index} of video {} are not available here", video.short())]
    NotAvailable {
        /// Video.
        video: VideoId,
        /// Fragment.
        index: FragmentIndex,
        /// Start of the requested range in the fragment.
        offset: u64,
        /// End (exclusive).
        end: u64,
    },
    /// A manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// A directory's manifest does not hash to the directory's name.
    #[error("{path}: manifest hashes to {actual}, not to the directory name")]
    IdMismatch {
        /// The manifest file.
        path: PathBuf,
        /// What it hashes to.
        actual: VideoId,
    },
}

type Result<T, E = StoreError> = std::result::Result<T, E>;

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> StoreError + 'a {
    move |error| StoreError::Io {
        action,
        path: path.to_path_buf(),
        error,
    }
}

/// What the store has of one fragment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FragmentStatus {
    /// Nothing.
    Missing,
    /// Some chunks verified (a `.part` file): how many, of how many.
    Partial {
        /// Verified chunks.
        verified: u32,
        /// Chunks in the fragment.
        total: u32,
    },
    /// The whole fragment, verified.
    Complete,
}

/// Something the store gained; streaming and announcing listen to these.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreEvent {
    /// A manifest was added.
    VideoAdded(VideoId),
    /// A chunk was verified and written.
    ChunkVerified {
        /// Video.
        video: VideoId,
        /// Fragment.
        index: FragmentIndex,
        /// Chunk within the fragment.
        chunk: u32,
        /// The peer it came from, when a download fetched it.
        from: Option<crate::addr::PeerAddr>,
    },
    /// A fragment became complete and verified.
    FragmentComplete {
        /// Video.
        video: VideoId,
        /// Fragment.
        index: FragmentIndex,
    },
    /// A video was removed (deleted or evicted).
    VideoRemoved(VideoId),
}

/// What one video takes in the store ([`FragmentStore::footprint`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Footprint {
    /// The whole video's size.
    pub size: u64,
    /// Bytes of its complete fragments.
    pub complete_bytes: u64,
    /// Bytes of its `.part` files (each preallocated to its fragment's size).
    pub partial_bytes: u64,
    /// Complete fragments.
    pub complete_fragments: u32,
    /// Fragments in the video.
    pub fragment_count: u32,
}

impl Footprint {
    /// Every fragment is here and verified.
    pub fn is_complete(&self) -> bool {
        self.complete_fragments == self.fragment_count
    }
    /// Bytes on disk (complete fragments and `.part` files).
    pub fn on_disk(&self) -> u64 {
        self.complete_bytes + self.partial_bytes
    }
}

/// What [`FragmentStore::write_chunk`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChunkOutcome {
    /// Stored; the fragment is not complete yet.
    Stored,
    /// The chunk was already verified here; nothing written.
    AlreadyHad,
    /// This chunk completed the fragment, which verified and is now `fragment_<i>.bin`.
    FragmentComplete,
}

/// What a start-up scan found.
#[derive(Debug, Default, Clone)]
pub struct ScanReport {
    /// Videos with a valid manifest.
    pub videos: usize,
    /// Complete, verified fragments.
    pub complete: usize,
    /// Fragments with a `.part` file.
    pub partial: usize,
    /// Verified chunks inside `.part` files.
    pub partial_chunks: usize,
    /// Files moved to quarantine, with the reason.
    pub set_aside: Vec<(PathBuf, String)>,
}

enum FragState {
    Missing,
    Partial {
        file: Arc<File>,
        verified: Vec<bool>,
        count: u32,
    },
    /// All chunks verified; the fragment hash is being checked and the file renamed.
    Finalizing {
        file: Arc<File>,
    },
    Complete {
        file: Arc<File>,
    },
}

struct VideoEntry {
    manifest: Arc<Manifest>,
    dir: PathBuf,
    fragments: Vec<Mutex<FragState>>,
}

impl VideoEntry {
    fn frag(&self, video: VideoId, index: FragmentIndex) -> Result<&Mutex<FragState>> {
        self.fragments
            .get(index as usize)
            .ok_or(StoreError::NoSuchFragment { video, index })
    }
    fn path(&self, index: FragmentIndex) -> PathBuf {
        self.dir.join(fragment_file_name(index))
    }
    fn part_path(&self, index: FragmentIndex) -> PathBuf {
        self.dir.join(format!("{}.part", fragment_file_name(index)))
    }
}

/// A node's fragments on disk. Cheap to share: wrap it in an `Arc`.
pub struct FragmentStore {
    root: PathBuf,
    videos: RwLock<BTreeMap<VideoId, Arc<VideoEntry>>>,
    events: broadcast::Sender<StoreEvent>,
}

impl std::fmt::Debug for FragmentStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FragmentStore")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// Whether the bytes of chunk `chunk` of fragment `index`, read from `file`, verify.
fn chunk_on_disk_verifies(
    file: &File,
    manifest: &Manifest,
    index: FragmentIndex,
    chunk: u32,
    buf: &mut Vec<u8>,
) -> bool {
    let Some((offset, len)) = manifest.chunk_range(index, chunk) else {
        return false;
    };
    buf.resize(len as usize, 0);
    file.read_exact_at(buf, offset).is_ok() && manifest.verify_chunk(index, chunk, buf)
}

fn hash_whole(file: &File, len: u64) -> std::io::Result<Digest> {
    let mut hasher = blake3::Hasher::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut off = 0;
    while off < len {
        let n = ((len - off) as usize).min(buf.len());
        file.read_exact_at(&mut buf[..n], off)?;
        hasher.update(&buf[..n]);
        off += n as u64;
    }
    Ok(hasher.finalize().into())
}

impl FragmentStore {
    /// Opens (creating) a store and verifies everything it holds. Blocking: call it from
    /// `spawn_blocking` inside a runtime.
    pub fn open(root: impl Into<PathBuf>) -> Result<(Self, ScanReport)> {
        let root = root.into();
        std::fs::create_dir_all(&root).map_err(io_err("creating the store directory", &root))?;
        let store = FragmentStore {
            root: root.clone(),
            videos: RwLock::new(BTreeMap::new()),
            events: broadcast::channel(4096).0,
        };
        let mut report = ScanReport::default();
        let entries = std::fs::read_dir(&root).map_err(io_err("listing", &root))?;
        let mut dirs: Vec<_> = entries.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        dirs.sort();
        for dir in &dirs {
            // A removal or an addition a crash interrupted: finish or undo it.
            let leftover = dir.file_name().and_then(|n| n.to_str()).is_some_and(|n| {
                n.starts_with(REMOVING_PREFIX) || n.starts_with(crate::library::STAGING_PREFIX)
            });
            if leftover && let Err(e) = std::fs::remove_dir_all(dir) {
                tracing::warn!(path = %dir.display(), error = %e, "could not finish removing a video");
            }
        }
        for dir in dirs {
            let Some(id) = dir
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse::<VideoId>().ok())
            else {
                continue;
            };
            let mpath = dir.join(MANIFEST_FILE);
            let manifest = match std::fs::read(&mpath)
                .map_err(io_err("reading", &mpath))
                .and_then(|b| Ok(Manifest::from_bytes(&b)?))
            {
                Ok(m) if m.video_id() == id => m,
                Ok(m) => {
                    let reason = format!(
                        "manifest hashes to {}, not to its directory name",
                        m.video_id()
                    );
                    report
                        .set_aside
                        .push((store.set_aside(&mpath, &id.to_string(), &reason), reason));
                    continue;
                }
                Err(e) => {
                    tracing::warn!(path = %mpath.display(), error = %e, "skipping a video directory without a valid manifest");
                    continue;
                }
            };
            let entry = store.scan_video(id, manifest, dir, &mut report);
            report.videos += 1;
            store.videos.write().unwrap().insert(id, Arc::new(entry));
        }
        for (path, reason) in &report.set_aside {
            tracing::warn!(path = %path.display(), %reason, "set aside bytes that failed verification");
        }
        Ok((store, report))
    }

    fn scan_video(
        &self,
        id: VideoId,
        manifest: Manifest,
        dir: PathBuf,
        report: &mut ScanReport,
    ) -> VideoEntry {
        let mut fragments = Vec::with_capacity(manifest.fragments.len());
        let mut buf = Vec::new();
        for f in &manifest.fragments {
            let path = dir.join(fragment_file_name(f.index));
            let part = dir.join(format!("{}.part", fragment_file_name(f.index)));
            let mut state = FragState::Missing;
            if let Ok(file) = File::open(&path) {
                let ok = file.metadata().map(|m| m.len() == f.size).unwrap_or(false)
                    && hash_whole(&file, f.size)
                        .map(|h| h == f.hash)
                        .unwrap_or(false);
                if ok {
                    state = FragState::Complete {
                        file: Arc::new(file),
                    };
                    report.complete += 1;
                } else {
                    let reason = format!(
                        "fragment {} of {} does not match its hash",
                        f.index,
                        id.short()
                    );
                    report
                        .set_aside
                        .push((self.set_aside(&path, &id.to_string(), &reason), reason));
                }
            }
            if matches!(state, FragState::Missing)
                && let Ok(file) = OpenOptions::new().read(true).write(true).open(&part)
            {
                let len = file.metadata().map(|m| m.len()).unwrap_or(0);
                let mut verified = vec![false; f.chunks.len()];
                let mut count = 0;
                for (c, ok) in verified.iter_mut().enumerate() {
                    let (off, clen) = manifest
                        .chunk_range(f.index, c as u32)
                        .expect("chunk in range");
                    if off + clen <= len
                        && chunk_on_disk_verifies(&file, &manifest, f.index, c as u32, &mut buf)
                    {
                        *ok = true;
                        count += 1;
                    }
                }
                // Every chunk verified but not renamed: a crash between the last
                // write and the rename. Finish the job if the fragment hash agrees
                // (v2 chunk digests already prove it).
                let whole = count as usize == verified.len()
                    && (manifest.chunks_prove_fragment()
                        || hash_whole(&file, f.size)
                            .map(|h| h == f.hash)
                            .unwrap_or(false));
                if whole
                    && file
                        .sync_all()
                        .and_then(|_| std::fs::rename(&part, &path))
                        .is_ok()
                {
                    report.complete += 1;
                    state = FragState::Complete {
                        file: Arc::new(file),
                    };
                } else {
                    report.partial += 1;
                    report.partial_chunks += count as usize;
                    state = FragState::Partial {
                        file: Arc::new(file),
                        verified,
                        count,
                    };
                }
            }
            fragments.push(Mutex::new(state));
        }
        VideoEntry {
            manifest: Arc::new(manifest),
            dir,
            fragments,
        }
    }

    /// Moves a file that failed verification to the quarantine directory; returns where.
    fn set_aside(&self, path: &Path, prefix: &str, reason: &str) -> PathBuf {
        let qdir = self.root.join(QUARANTINE_DIR);
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        let dest = qdir.join(format!("{prefix}-{name}-{stamp}"));
        let moved = std::fs::create_dir_all(&qdir).and_then(|_| std::fs::rename(path, &dest));
        match moved {
            Ok(()) => dest,
            Err(e) => {
                tracing::error!(path = %path.display(), error = %e, %reason, "could not set aside; removing instead");
                let _ = std::fs::remove_file(path);
                path.to_path_buf()
            }
        }
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Subscribes to what the store gains from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<StoreEvent> {
        self.events.subscribe()
    }

    fn entry(&self, video: VideoId) -> Result<Arc<VideoEntry>> {
        self.videos
            .read()
            .unwrap()
            .get(&video)
            .cloned()
            .ok_or(StoreError::UnknownVideo(video))
    }

    /// Adds a manifest (idempotent); returns its video id.
    pub fn add_manifest(&self, manifest: &Manifest) -> Result<VideoId> {
        manifest.validate()?;
        let id = manifest.video_id();
        if self.videos.read().unwrap().contains_key(&id) {
            return Ok(id);
        }
        let dir = self.root.join(id.to_string());
        std::fs::create_dir_all(&dir).map_err(io_err("creating", &dir))?;
        let mpath = dir.join(MANIFEST_FILE);
        fsutil::write_atomic(&mpath, &manifest.canonical_bytes())
            .map_err(io_err("writing", &mpath))?;
        let fragments = manifest
            .fragments
            .iter()
            .map(|_| Mutex::new(FragState::Missing))
            .collect();
        let entry = VideoEntry {
            manifest: Arc::new(manifest.clone()),
            dir,
            fragments,
        };
        let mut videos = self.videos.write().unwrap();
        if videos.contains_key(&id) {
            return Ok(id);
        }
        videos.insert(id, Arc::new(entry));
        drop(videos);
        let _ = self.events.send(StoreEvent::VideoAdded(id));
        Ok(id)
    }

    /// The ids of every video with a manifest here.
    pub fn videos(&self) -> Vec<VideoId> {
        self.videos.read().unwrap().keys().copied().collect()
    }

    /// A video's manifest.
    pub fn manifest(&self, video: VideoId) -> Option<Arc<Manifest>> {
        self.videos
            .read()
            .unwrap()
            .get(&video)
            .map(|e| e.manifest.clone())
    }

    /// The directory holding a video's files.
    pub fn video_dir(&self, video: VideoId) -> PathBuf {
        self.root.join(video.to_string())
    }

    /// What the store has of one fragment.
    pub fn status(&self, video: VideoId, index: FragmentIndex) -> Result<FragmentStatus> {
        let entry = self.entry(video)?;
        let st = entry.frag(video, index)?.lock().unwrap();
        Ok(match &*st {
            FragState::Missing => FragmentStatus::Missing,
            FragState::Partial {
                verified, count, ..
            } => FragmentStatus::Partial {
                verified: *count,
                total: verified.len() as u32,
            },
            FragState::Finalizing { .. } => {
                let total = entry.manifest.fragments[index as usize].chunks.len() as u32;
                FragmentStatus::Partial {
                    verified: total,
                    total,
                }
            }
            FragState::Complete { .. } => FragmentStatus::Complete,
        })
    }

    /// Indices of the complete, verified fragments of a video (empty if unknown).
    pub fn have(&self, video: VideoId) -> Vec<FragmentIndex> {
        let Ok(entry) = self.entry(video) else {
            return Vec::new();
        };
        (0..entry.fragments.len() as u32)
            .filter(|&i| {
                matches!(
                    *entry.fragments[i as usize].lock().unwrap(),
                    FragState::Complete { .. }
                )
            })
            .collect()
    }

    /// Whether chunk `chunk` of a fragment is verified here.
    pub fn has_chunk(&self, video: VideoId, index: FragmentIndex, chunk: u32) -> bool {
        let Ok(entry) = self.entry(video) else {
            return false;
        };
        let Ok(frag) = entry.frag(video, index) else {
            return false;
        };
        match &*frag.lock().unwrap() {
            FragState::Missing => false,
            FragState::Partial { verified, .. } => {
                verified.get(chunk as usize).copied().unwrap_or(false)
            }
            FragState::Finalizing { .. } | FragState::Complete { .. } => true,
        }
    }

    /// Per-chunk verified flags of a fragment.
    pub fn verified_chunks(&self, video: VideoId, index: FragmentIndex) -> Result<Vec<bool>> {
        let entry = self.entry(video)?;
        let n = entry
            .manifest
            .fragment(index)
            .map(|f| f.chunks.len())
            .unwrap_or(0);
        Ok(match &*entry.frag(video, index)?.lock().unwrap() {
            FragState::Missing => vec![false; n],
            FragState::Partial { verified, .. } => verified.clone(),
            _ => vec![true; n],
        })
    }

    /// The open file holding `offset..offset+len` of a fragment, if every chunk that
    /// range touches is verified.
    fn readable(
        &self,
        video: VideoId,
        index: FragmentIndex,
        offset: u64,
        len: u64,
    ) -> Result<Arc<File>> {
        let entry = self.entry(video)?;
        let info = entry
            .manifest
            .fragment(index)
            .ok_or(StoreError::NoSuchFragment { video, index })?;
        let end = offset.checked_add(len).filter(|&e| e <= info.size);
        let not_available = StoreError::NotAvailable {
            video,
            index,
            offset,
            end: offset.saturating_add(len),
        };
        let Some(end) = end else {
            return Err(not_available);
        };
        match &*entry.frag(video, index)?.lock().unwrap() {
            _ if len == 0 => Err(not_available),
            FragState::Complete { file } | FragState::Finalizing { file } => Ok(file.clone()),
            FragState::Partial { file, verified, .. } => {
                let cs = entry.manifest.chunk_size as u64;
                let all = (offset / cs..=(end - 1) / cs).all(|c| verified[c as usize]);
                if all {
                    Ok(file.clone())
                } else {
                    Err(not_available)
                }
            }
            _ => Err(not_available),
        }
    }

    /// Whether `len` bytes at `offset` of a fragment are all verified here (`len` > 0).
    pub fn check_range(
        &self,
        video: VideoId,
        index: FragmentIndex,
        offset: u64,
        len: u64,
    ) -> Result<()> {
        self.readable(video, index, offset, len).map(|_| ())
    }

    /// Reads `len` verified bytes at `offset` in a fragment. Fails with
    /// [`StoreError::NotAvailable`] unless every byte is verified.
    pub async fn read(
        &self,
        video: VideoId,
        index: FragmentIndex,
        offset: u64,
        len: usize,
    ) -> Result<Bytes> {
        let file = self.readable(video, index, offset, len as u64)?;
        let path = self.video_dir(video).join(fragment_file_name(index));
        tokio::task::spawn_blocking(move || {
            let mut buf = vec![0u8; len];
            file.read_exact_at(&mut buf, offset)
                .map_err(io_err("reading", &path))?;
            Ok(Bytes::from(buf))
        })
        .await
        .expect("read task does not panic")
    }

    /// Verifies a chunk against the manifest and stores it. A mismatch stores nothing
    /// and returns [`StoreError::HashMismatch`].
    pub async fn write_chunk(
        &self,
        video: VideoId,
        index: FragmentIndex,
        chunk: u32,
        data: Bytes,
    ) -> Result<ChunkOutcome> {
        self.write_chunk_from(video, index, chunk, data, None).await
    }

    /// [`FragmentStore::write_chunk`] of a chunk that came from `from`: its
    /// [`StoreEvent::ChunkVerified`] names the peer (the player's per-chunk bar).
    pub async fn write_chunk_from(
        &self,
        video: VideoId,
        index: FragmentIndex,
        chunk: u32,
        data: Bytes,
        from: Option<crate::addr::PeerAddr>,
    ) -> Result<ChunkOutcome> {
        let entry = self.entry(video)?;
        let info = entry
            .manifest
            .fragment(index)
            .ok_or(StoreError::NoSuchFragment { video, index })?;
        let (offset, len) = entry
            .manifest
            .chunk_range(index, chunk)
            .ok_or(StoreError::NoSuchFragment { video, index })?;
        let fsize = info.size;
        let mismatch = || StoreError::HashMismatch {
            video,
            index,
            what: format!("chunk {chunk}"),
        };
        if data.len() as u64 != len {
            return Err(mismatch());
        }
        // Hash off the async threads: a 1 MiB chunk is ~0.3 ms of BLAKE3.
        let manifest = entry.manifest.clone();
        let (data, ok) = tokio::task::spawn_blocking(move || {
            let ok = manifest.verify_chunk(index, chunk, &data);
            (data, ok)
        })
        .await
        .expect("hash task does not panic");
        if !ok {
            return Err(mismatch());
        }
        let file = {
            let mut st = entry.frag(video, index)?.lock().unwrap();
            match &*st {
                FragState::Complete { .. } | FragState::Finalizing { .. } => {
                    return Ok(ChunkOutcome::AlreadyHad);
                }
                FragState::Partial { verified, file, .. } => {
                    if verified[chunk as usize] {
                        return Ok(ChunkOutcome::AlreadyHad);
                    }
                    file.clone()
                }
                FragState::Missing => {
                    let part = entry.part_path(index);
                    let file = OpenOptions::new()
                        .read(true)
                        .write(true)
                        .create(true)
                        .truncate(false)
                        .open(&part)
                        .map_err(io_err("creating", &part))?;
                    file.set_len(fsize).map_err(io_err("sizing", &part))?;
                    let file = Arc::new(file);
                    let n = info.chunks.len();
                    *st = FragState::Partial {
                        file: file.clone(),
                        verified: vec![false; n],
                        count: 0,
                    };
                    file
                }
            }
        };
        let part = entry.part_path(index);
        let wfile = file.clone();
        tokio::task::spawn_blocking(move || {
            wfile
                .write_all_at(&data, offset)
                .map_err(io_err("writing", &part))
        })
        .await
        .expect("write task does not panic")?;
        let complete = {
            let mut st = entry.frag(video, index)?.lock().unwrap();
            match &mut *st {
                FragState::Partial {
                    verified,
                    count,
                    file,
                } => {
                    if !verified[chunk as usize] {
                        verified[chunk as usize] = true;
                        *count += 1;
                    }
                    if *count as usize == verified.len() {
                        *st = FragState::Finalizing { file: file.clone() };
                        true
                    } else {
                        false
                    }
                }
                _ => return Ok(ChunkOutcome::AlreadyHad),
            }
        };
        let _ = self.events.send(StoreEvent::ChunkVerified {
            video,
            index,
            chunk,
            from,
        });
        if !complete {
            return Ok(ChunkOutcome::Stored);
        }
        self.finalize(entry, video, index, file).await
    }

    /// All chunks verified: check the whole fragment, fsync, rename `.part` → `.bin`.
    async fn finalize(
        &self,
        entry: Arc<VideoEntry>,
        video: VideoId,
        index: FragmentIndex,
        file: Arc<File>,
    ) -> Result<ChunkOutcome> {
        let info = entry.manifest.fragments[index as usize].clone();
        // Version 2 chunk digests add up to the fragment hash (checked when the manifest
        // was accepted), so verified chunks are a verified fragment: no second pass.
        let proven = entry.manifest.chunks_prove_fragment();
        let (part, path, dir) = (entry.part_path(index), entry.path(index), entry.dir.clone());
        let f2 = file.clone();
        let result = tokio::task::spawn_blocking(move || -> Result<bool> {
            if !proven && hash_whole(&f2, info.size).map_err(io_err("reading", &part))? != info.hash
            {
                return Ok(false);
            }
            f2.sync_all().map_err(io_err("syncing", &part))?;
            std::fs::rename(&part, &path).map_err(io_err("renaming", &part))?;
            fsutil::sync_dir(&dir).map_err(io_err("syncing", &dir))?;
            Ok(true)
        })
        .await
        .expect("finalize task does not panic");
        let mut st = entry.frag(video, index)?.lock().unwrap();
        match result {
            Ok(true) => {
                *st = FragState::Complete { file };
                drop(st);
                let _ = self
                    .events
                    .send(StoreEvent::FragmentComplete { video, index });
                Ok(ChunkOutcome::FragmentComplete)
            }
            Ok(false) => {
                // Every chunk matched but the fragment does not: the manifest itself is
                // inconsistent. Start over rather than serve it.
                *st = FragState::Missing;
                drop(st);
                let reason = format!(
                    "fragment {index} of {} fails its fragment hash",
                    video.short()
                );
                self.set_aside(&entry.part_path(index), &video.to_string(), &reason);
                Err(StoreError::HashMismatch {
                    video,
                    index,
                    what: "fragment".into(),
                })
            }
            Err(e) => {
                let n = entry.manifest.fragments[index as usize].chunks.len();
                *st = FragState::Partial {
                    file,
                    verified: vec![true; n],
                    count: n as u32,
                };
                Err(e)
            }
        }
    }

    /// Imports fragments from a split directory (`manifest.json` + `fragment_<i>.bin`),
    /// verifying each; `only` restricts which. Returns the video id and what was imported.
    pub fn import_dir(
        &self,
        src: &Path,
        only: Option<&[FragmentIndex]>,
    ) -> Result<(VideoId, Vec<FragmentIndex>)> {
        let mpath = src.join(MANIFEST_FILE);
        let manifest =
            Manifest::from_bytes(&std::fs::read(&mpath).map_err(io_err("reading", &mpath))?)?;
        let video = self.add_manifest(&manifest)?;
        let entry = self.entry(video)?;
        let mut imported = Vec::new();
        for info in &manifest.fragments {
            if only.is_some_and(|o| !o.contains(&info.index)) {
                continue;
            }
            if matches!(
                *entry.fragments[info.index as usize].lock().unwrap(),
                FragState::Complete { .. }
            ) {
                imported.push(info.index);
                continue;
            }
            let from = src.join(fragment_file_name(info.index));
            let dest = entry.path(info.index);
            let tmp = fsutil::temp_path(&dest);
            let copy = (|| -> Result<bool> {
                let mut input = File::open(&from).map_err(io_err("opening", &from))?;
                let out = File::create(&tmp).map_err(io_err("creating", &tmp))?;
                let mut hasher = blake3::Hasher::new();
                let mut buf = vec![0u8; manifest.chunk_size as usize];
                let mut off = 0u64;
                for c in 0..info.chunks.len() {
                    let n = (info.size - off).min(manifest.chunk_size as u64) as usize;
                    input
                        .read_exact(&mut buf[..n])
                        .map_err(io_err("reading", &from))?;
                    if !manifest.verify_chunk(info.index, c as u32, &buf[..n]) {
                        return Ok(false);
                    }
                    if !manifest.chunks_prove_fragment() {
                        hasher.update(&buf[..n]);
                    }
                    out.write_all_at(&buf[..n], off)
                        .map_err(io_err("writing", &tmp))?;
                    off += n as u64;
                }
                let extra = input
                    .read(&mut buf[..1])
                    .map_err(io_err("reading", &from))?;
                if extra != 0
                    || (!manifest.chunks_prove_fragment()
                        && Digest::from(hasher.finalize()) != info.hash)
                {
                    return Ok(false);
                }
                out.sync_all().map_err(io_err("syncing", &tmp))?;
                std::fs::rename(&tmp, &dest).map_err(io_err("renaming", &tmp))?;
                Ok(true)
            })();
            match copy {
                Ok(true) => {
                    let file = File::open(&dest).map_err(io_err("opening", &dest))?;
                    *entry.fragments[info.index as usize].lock().unwrap() = FragState::Complete {
                        file: Arc::new(file),
                    };
                    let _ = std::fs::remove_file(entry.part_path(info.index));
                    imported.push(info.index);
                    let _ = self.events.send(StoreEvent::FragmentComplete {
                        video,
                        index: info.index,
                    });
                }
                Ok(false) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(StoreError::HashMismatch {
                        video,
                        index: info.index,
                        what: format!("fragment (file {})", from.display()),
                    });
                }
                Err(e) => {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
        }
        fsutil::sync_dir(&entry.dir).map_err(io_err("syncing", &entry.dir))?;
        Ok((video, imported))
    }

    /// Removes a video: it leaves the store at once (nothing more is served, counted or
    /// announced from it), its directory is renamed away in one atomic step and then
    /// deleted. A crash between the two leaves a `.removing-*` directory that the next
    /// [`FragmentStore::open`] deletes. Returns whether the video was here. Blocking:
    /// call it from `spawn_blocking` inside a runtime.
    pub fn remove_video(&self, video: VideoId) -> Result<bool> {
        let Some(entry) = self.videos.write().unwrap().remove(&video) else {
            return Ok(false);
        };
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let gone = self.root.join(format!("{REMOVING_PREFIX}{video}-{stamp}"));
        std::fs::rename(&entry.dir, &gone).map_err(io_err("renaming", &entry.dir))?;
        fsutil::sync_dir(&self.root).map_err(io_err("syncing", &self.root))?;
        std::fs::remove_dir_all(&gone).map_err(io_err("deleting", &gone))?;
        let _ = self.events.send(StoreEvent::VideoRemoved(video));
        Ok(true)
    }

    /// What a video takes on disk: the bytes of its complete fragments, and whether
    /// any fragment is partly here (a `.part` file is preallocated to its fragment's
    /// full size). `None` for an unknown video.
    pub fn footprint(&self, video: VideoId) -> Option<Footprint> {
        let entry = self.entry(video).ok()?;
        let mut fp = Footprint {
            size: entry.manifest.size,
            ..Footprint::default()
        };
        for (i, f) in entry.fragments.iter().enumerate() {
            let size = entry.manifest.fragments[i].size;
            match &*f.lock().unwrap() {
                FragState::Complete { .. } => {
                    fp.complete_bytes += size;
                    fp.complete_fragments += 1;
                }
                FragState::Partial { .. } | FragState::Finalizing { .. } => {
                    fp.partial_bytes += size
                }
                FragState::Missing => {}
            }
        }
        fp.fragment_count = entry.fragments.len() as u32;
        Some(fp)
    }

    /// A summary of every video: id, name, fragments held, fragment count.
    pub fn summary(&self) -> Vec<(VideoId, Arc<Manifest>, Vec<FragmentIndex>)> {
        self.videos()
            .into_iter()
            .filter_map(|v| Some((v, self.manifest(v)?, self.have(v))))
            .collect()
    }
}

/// Complete fragments per video, for logs and have-set answers.
pub fn have_map(store: &FragmentStore) -> HashMap<VideoId, Vec<FragmentIndex>> {
    store
        .videos()
        .into_iter()
        .map(|v| (v, store.have(v)))
        .collect()
}
