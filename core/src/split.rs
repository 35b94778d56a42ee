//! Splitting a video into fragments and joining them back, in one streaming pass with
//! bounded memory (one chunk buffer), whatever the file size.
//!
//! A split directory has the same layout as a video directory in the store
//! (`manifest.json` + `fragment_<i>.bin`), so `join` reads either.

use std::fs::File;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use crate::fsutil;
use crate::ids::{Digest, VideoId};
use crate::manifest::{FragmentInfo, MAX_CHUNKS, MAX_FRAGMENTS, Manifest, mime_for};
use crate::store::{MANIFEST_FILE, fragment_file_name};
use crate::tree;

/// Errors of split and join, each saying what to do.
#[derive(Debug, thiserror::Error)]
pub enum SplitError {
    /// Input missing, unreadable, or output unwritable.
    #[error("{action} {path}: {error}")]
    Io {
        /// What was being done.
        action: &'static str,
        /// Which path.
        path: PathBuf,
        /// OS error.
        error: std::io::Error,
    },
    /// The input is not a regular file.
    #[error("{0} is not a regular file; give the path of a video file")]
    NotAFile(PathBuf),
    /// The input cannot be split into that many non-empty fragments.
    #[error(
        "{path} has {size} bytes, fewer than the {fragments} fragments asked for; use --fragments with at most {size}"
    )]
    TooSmall {
        /// Input.
        path: PathBuf,
        /// Its size.
        size: u64,
        /// Requested fragments.
        fragments: u32,
    },
    /// Fragment count out of range.
    #[error("--fragments must be between 1 and {MAX_FRAGMENTS}, got {0}")]
    BadFragmentCount(u64),
    /// Chunk size out of range or too many chunks.
    #[error("{0}")]
    BadChunking(String),
    /// The output directory already holds another video.
    #[error(
        "{dir} already holds fragments of another video ({other}); choose another --out or pass --force to replace them"
    )]
    OutputInUse {
        /// Output directory.
        dir: PathBuf,
        /// What is there.
        other: String,
    },
    /// The input changed while being read.
    #[error("{0} changed size while being split; try again")]
    InputChanged(PathBuf),
    /// A fragment or the whole file failed verification while joining.
    #[error("{0}")]
    Verification(String),
    /// A manifest is invalid.
    #[error(transparent)]
    Manifest(#[from] crate::manifest::ManifestError),
}

type Result<T, E = SplitError> = std::result::Result<T, E>;

fn io_err<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> SplitError + 'a {
    move |error| SplitError::Io {
        action,
        path: path.to_path_buf(),
        error,
    }
}

/// Options for [`split`].
#[derive(Debug, Clone)]
pub struct SplitOptions {
    /// Number of fragments (default 10).
    pub fragments: u32,
    /// Chunk size (default 1 MiB).
    pub chunk_size: u32,
    /// Replace another video's fragments in the output directory.
    pub force: bool,
}

impl Default for SplitOptions {
    fn default() -> Self {
        SplitOptions {
            fragments: crate::manifest::DEFAULT_FRAGMENTS,
            chunk_size: crate::manifest::DEFAULT_CHUNK_SIZE,
            force: false,
        }
    }
}

/// Byte size of fragment `i` when `size` bytes are split into `n`: as even as possible,
/// the first `size % n` fragments one byte longer.
pub fn fragment_sizes(size: u64, n: u32) -> Vec<u64> {
    let (base, rem) = (size / n as u64, size % n as u64);
    (0..n as u64).map(|i| base + u64::from(i < rem)).collect()
}

/// What the output directory already holds: `None` if nothing of a video.
fn existing_video(dir: &Path) -> Option<String> {
    if let Ok(bytes) = std::fs::read(dir.join(MANIFEST_FILE)) {
        return Some(match Manifest::from_bytes(&bytes) {
            Ok(m) => m.video_id().to_string(),
            Err(_) => "an unreadable manifest.json".into(),
        });
    }
    let has_fragments = std::fs::read_dir(dir)
        .ok()?
        .filter_map(|e| e.ok())
        .any(|e| {
            let n = e.file_name();
            let n = n.to_string_lossy();
            n.starts_with("fragment_") && n.ends_with(".bin")
        });
    has_fragments.then(|| "fragment files without a manifest".into())
}

/// Progress callback: bytes processed so far.
pub type Progress<'a> = &'a mut dyn FnMut(u64);

/// Splits `input` into fragments in `out_dir` and writes `manifest.json` last.
/// Everything is written to temporary files first; on any error nothing is left
/// half-written (a directory that did not exist is removed again).
pub fn split(
    input: &Path,
    out_dir: &Path,
    opts: &SplitOptions,
    progress: Progress<'_>,
) -> Result<Manifest> {
    if opts.fragments == 0 || opts.fragments > MAX_FRAGMENTS {
        return Err(SplitError::BadFragmentCount(opts.fragments as u64));
    }
    if opts.chunk_size < 1024 || opts.chunk_size > 64 << 20 {
        return Err(SplitError::BadChunking(format!(
            "chunk size {} is outside 1 KiB..64 MiB",
            opts.chunk_size
        )));
    }
    let meta = std::fs::metadata(input).map_err(io_err("reading", input))?;
    if !meta.is_file() {
        return Err(SplitError::NotAFile(input.to_path_buf()));
    }
    let size = meta.len();
    if size < opts.fragments as u64 {
        return Err(SplitError::TooSmall {
            path: input.to_path_buf(),
            size,
            fragments: opts.fragments,
        });
    }
    let sizes = fragment_sizes(size, opts.fragments);
    let chunks: u64 = sizes
        .iter()
        .map(|s| s.div_ceil(opts.chunk_size as u64))
        .sum();
    if chunks > MAX_CHUNKS {
        return Err(SplitError::BadChunking(format!(
            "{chunks} chunks is more than {MAX_CHUNKS}; use a larger chunk size"
        )));
    }
    let mut file = File::open(input).map_err(io_err("opening", input))?;

    let created = !out_dir.exists();
    std::fs::create_dir_all(out_dir).map_err(io_err("creating the output directory", out_dir))?;
    let mut temps: Vec<PathBuf> = Vec::new();
    let result = (|| -> Result<Manifest> {
        let name = input
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "video".into());
        let mut manifest = Manifest {
            chunk_size: opts.chunk_size,
            fragment_count: opts.fragments,
            fragments: Vec::with_capacity(opts.fragments as usize),
            hash: Digest([0; 32]),
            mime: mime_for(&name).to_string(),
            name,
            size,
            version: tree::version_for(opts.chunk_size),
        };
        if let Some(other) = existing_video(out_dir)
            && !opts.force
        {
            // Checked before writing anything; the same video again is fine and is
            // re-checked once its id is known below.
            return Err(SplitError::OutputInUse {
                dir: out_dir.to_path_buf(),
                other,
            });
        }
        let mut whole = blake3::Hasher::new();
        let mut buf = vec![0u8; opts.chunk_size as usize];
        let mut offset = 0u64;
        for (i, &fsize) in sizes.iter().enumerate() {
            let dest = out_dir.join(fragment_file_name(i as u32));
            let tmp = fsutil::temp_path(&dest);
            temps.push(tmp.clone());
            let mut out = File::create(&tmp).map_err(io_err("creating", &tmp))?;
            let mut frag_hash = blake3::Hasher::new();
            let mut chunk_hashes = Vec::new();
            let chunks = fsize.div_ceil(opts.chunk_size as u64) as usize;
            let mut left = fsize;
            while left > 0 {
                let n = left.min(opts.chunk_size as u64) as usize;
                file.read_exact(&mut buf[..n]).map_err(|e| match e.kind() {
                    std::io::ErrorKind::UnexpectedEof => {
                        SplitError::InputChanged(input.to_path_buf())
                    }
                    _ => SplitError::Io {
                        action: "reading",
                        path: input.to_path_buf(),
                        error: e,
                    },
                })?;
                let chunk = &buf[..n];
                // BLAKE3 throughout (several GB/s). Version 2 chunk digests add up to
                // the fragment hash, so only version 1 hashes the fragment separately.
                chunk_hashes.push(tree::chunk_digest(
                    manifest.version,
                    opts.chunk_size,
                    chunk_hashes.len() as u32,
                    chunks,
                    chunk,
                ));
                if manifest.version == tree::V1 {
                    frag_hash.update(chunk);
                }
                whole.update(chunk);
                out.write_all(chunk).map_err(io_err("writing", &tmp))?;
                left -= n as u64;
                progress(offset + fsize - left);
            }
            out.sync_all().map_err(io_err("syncing", &tmp))?;
            let hash = if manifest.version == tree::V1 {
                frag_hash.finalize().into()
            } else {
                tree::fragment_root(opts.chunk_size, fsize, &chunk_hashes)
            };
            manifest.fragments.push(FragmentInfo {
                chunks: chunk_hashes,
                hash,
                index: i as u32,
                offset,
                size: fsize,
            });
            offset += fsize;
        }
        if file.read(&mut buf[..1]).map_err(io_err("reading", input))? != 0 {
            return Err(SplitError::InputChanged(input.to_path_buf()));
        }
        manifest.hash = whole.finalize().into();
        manifest.validate()?;
        for (i, tmp) in temps.iter().enumerate() {
            let dest = out_dir.join(fragment_file_name(i as u32));
            std::fs::rename(tmp, &dest).map_err(io_err("renaming", tmp))?;
        }
        temps.clear();
        // Fragments of a previous, larger split would confuse a reader; remove them.
        for i in opts.fragments..MAX_FRAGMENTS {
            let stale = out_dir.join(fragment_file_name(i));
            if std::fs::remove_file(&stale).is_err() && i > opts.fragments + 64 {
                break;
            }
        }
        let mpath = out_dir.join(MANIFEST_FILE);
        fsutil::write_atomic(&mpath, &manifest.canonical_bytes())
            .map_err(io_err("writing", &mpath))?;
        Ok(manifest)
    })();
    if result.is_err() {
        for t in &temps {
            let _ = std::fs::remove_file(t);
        }
        if created {
            let _ = std::fs::remove_dir_all(out_dir);
        }
    }
    result
}

/// Reassembles the video in `dir` (a split directory or a store video directory) into
/// `out`, verifying every fragment and the whole-file hash. Writes to a temporary file
/// and renames it into place only if everything verifies.
pub fn join(dir: &Path, out: &Path, progress: Progress<'_>) -> Result<Manifest> {
    let mpath = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&mpath).map_err(io_err("reading", &mpath))?;
    let manifest = Manifest::from_bytes(&bytes)?;
    if out.is_dir() {
        return Err(SplitError::Io {
            action: "writing",
            path: out.to_path_buf(),
            error: std::io::Error::other("is a directory; give a file name"),
        });
    }
    let tmp = fsutil::temp_path(out);
    let result = (|| -> Result<()> {
        let mut dest = File::create(&tmp).map_err(io_err("creating", &tmp))?;
        let mut whole = blake3::Hasher::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut done = 0u64;
        for f in &manifest.fragments {
            let path = dir.join(fragment_file_name(f.index));
            let mut src = File::open(&path).map_err(|e| {
                SplitError::Verification(format!(
                    "fragment {} is missing ({}: {e}); fetch it first",
                    f.index,
                    path.display()
                ))
            })?;
            let mut frag = blake3::Hasher::new();
            let mut left = f.size;
            while left > 0 {
                let n = left.min(buf.len() as u64) as usize;
                src.read_exact(&mut buf[..n]).map_err(|e| {
                    SplitError::Verification(format!(
                        "fragment {} is shorter than the manifest says ({e})",
                        f.index
                    ))
                })?;
                frag.update(&buf[..n]);
                whole.update(&buf[..n]);
                dest.write_all(&buf[..n]).map_err(io_err("writing", &tmp))?;
                left -= n as u64;
                done += n as u64;
                progress(done);
            }
            if Digest::from(frag.finalize()) != f.hash {
                return Err(SplitError::Verification(format!(
                    "fragment {} ({}) does not match its hash; delete it and fetch it again",
                    f.index,
                    path.display()
                )));
            }
        }
        if Digest::from(whole.finalize()) != manifest.hash {
            return Err(SplitError::Verification(
                "the reassembled file does not match the manifest's hash".into(),
            ));
        }
        dest.sync_all().map_err(io_err("syncing", &tmp))?;
        std::fs::rename(&tmp, out).map_err(io_err("renaming", &tmp))?;
        fsutil::sync_dir(out.parent().unwrap_or(Path::new("."))).map_err(io_err("syncing", out))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|_| manifest)
}

/// The video id recorded in a split directory.
pub fn video_id_of_dir(dir: &Path) -> Result<VideoId> {
    let mpath = dir.join(MANIFEST_FILE);
    let bytes = std::fs::read(&mpath).map_err(io_err("reading", &mpath))?;
    Ok(Manifest::from_bytes(&bytes)?.video_id())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 31 % 251) as u8).collect()
    }

    fn opts(fragments: u32) -> SplitOptions {
        SplitOptions {
            fragments,
            chunk_size: 1024,
            force: false,
        }
    }

    #[test]
    fn split_then_join_is_identity() {
        let t = tempfile::tempdir().unwrap();
        let input = t.path().join("v.mp4");
        std::fs::write(&input, data(10_007)).unwrap();
        let out = t.path().join("fragments");
        let m = split(&input, &out, &opts(10), &mut |_| {}).unwrap();
        assert_eq!(m.fragment_count, 10);
        assert_eq!(m.mime, "video/mp4");
        for i in 0..10 {
            assert!(out.join(format!("fragment_{i}.bin")).is_file());
        }
        let sizes: Vec<u64> = m.fragments.iter().map(|f| f.size).collect();
        assert_eq!(sizes.iter().sum::<u64>(), 10_007);
        assert!(sizes.iter().max().unwrap() - sizes.iter().min().unwrap() <= 1);
        let joined = t.path().join("joined.mp4");
        join(&out, &joined, &mut |_| {}).unwrap();
        assert_eq!(std::fs::read(&joined).unwrap(), data(10_007));
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(&out)
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 11, "{names:?}");
    }

    #[test]
    fn edge_cases_are_clear_errors_and_write_nothing() {
        let t = tempfile::tempdir().unwrap();
        let out = t.path().join("out");
        let missing = t.path().join("missing.mp4");
        assert!(matches!(
            split(&missing, &out, &opts(10), &mut |_| {}),
            Err(SplitError::Io { .. })
        ));
        assert!(matches!(
            split(t.path(), &out, &opts(10), &mut |_| {}),
            Err(SplitError::NotAFile(_))
        ));
        let empty = t.path().join("empty.mp4");
        std::fs::write(&empty, b"").unwrap();
        assert!(matches!(
            split(&empty, &out, &opts(10), &mut |_| {}),
            Err(SplitError::TooSmall { .. })
        ));
        let small = t.path().join("small.mp4");
        std::fs::write(&small, b"123456789").unwrap();
        assert!(matches!(
            split(&small, &out, &opts(10), &mut |_| {}),
            Err(SplitError::TooSmall { .. })
        ));
        assert!(matches!(
            split(&small, &out, &opts(0), &mut |_| {}),
            Err(SplitError::BadFragmentCount(0))
        ));
        assert!(matches!(
            split(&small, &out, &opts(1_000_000), &mut |_| {}),
            Err(SplitError::BadFragmentCount(_))
        ));
        assert!(!out.exists(), "a failed split leaves no directory behind");
        // Exactly as many bytes as fragments works: one byte each.
        let m = split(&small, &out, &opts(9), &mut |_| {}).unwrap();
        assert!(m.fragments.iter().all(|f| f.size == 1));
    }

    #[test]
    fn refuses_another_videos_directory_unless_forced() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a.bin"), t.path().join("b.bin"));
        std::fs::write(&a, data(5000)).unwrap();
        std::fs::write(&b, data(6000)).unwrap();
        let out = t.path().join("out");
        let ma = split(&a, &out, &opts(10), &mut |_| {}).unwrap();
        let e = split(&b, &out, &opts(4), &mut |_| {}).unwrap_err();
        assert!(e.to_string().contains("--force"), "{e}");
        assert_eq!(
            video_id_of_dir(&out).unwrap(),
            ma.video_id(),
            "the refused split changed nothing"
        );
        let mb = split(
            &b,
            &out,
            &SplitOptions {
                force: true,
                ..opts(4)
            },
            &mut |_| {},
        )
        .unwrap();
        assert_eq!(video_id_of_dir(&out).unwrap(), mb.video_id());
        assert!(
            !out.join("fragment_4.bin").exists(),
            "stale fragments of the old video are removed"
        );
    }

    #[test]
    fn unwritable_output_is_an_error() {
        let t = tempfile::tempdir().unwrap();
        let input = t.path().join("v.bin");
        std::fs::write(&input, data(100)).unwrap();
        // A regular file where the directory should be cannot be created as a directory.
        let blocker = t.path().join("blocker");
        std::fs::write(&blocker, b"x").unwrap();
        let e = split(&input, &blocker.join("out"), &opts(10), &mut |_| {}).unwrap_err();
        assert!(matches!(e, SplitError::Io { .. }), "{e}");
    }

    #[test]
    fn join_catches_a_corrupt_fragment_and_writes_nothing() {
        let t = tempfile::tempdir().unwrap();
        let input = t.path().join("v.bin");
        std::fs::write(&input, data(4000)).unwrap();
        let out = t.path().join("f");
        split(&input, &out, &opts(4), &mut |_| {}).unwrap();
        let mut frag = std::fs::read(out.join("fragment_2.bin")).unwrap();
        frag[0] ^= 1;
        std::fs::write(out.join("fragment_2.bin"), frag).unwrap();
        let dest = t.path().join("joined.bin");
        assert!(matches!(
            join(&out, &dest, &mut |_| {}),
            Err(SplitError::Verification(_))
        ));
        assert!(!dest.exists());
    }
}
