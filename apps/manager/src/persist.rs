//! Manifests on disk: `<data_dir>/videos/<video-id>.json`, canonical bytes, written
//! atomically (temp file, fsync, rename, fsync the directory) so that a crash leaves
//! the manifest whole or absent. Node holdings are soft state and never written.

use std::path::{Path, PathBuf};

use fragnet_core::fsutil::write_atomic;
use fragnet_core::{Manifest, VideoId};
use tracing::warn;

/// The directory of persisted manifests.
#[derive(Debug, Clone)]
pub struct ManifestDir {
    dir: PathBuf,
}

impl ManifestDir {
    /// Uses (and creates) `<data_dir>/videos`.
    pub fn open(data_dir: &Path) -> std::io::Result<Self> {
        let dir = data_dir.join("videos");
        std::fs::create_dir_all(&dir)?;
        Ok(ManifestDir { dir })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.dir
    }

    fn file(&self, id: VideoId) -> PathBuf {
        self.dir.join(format!("{id}.json"))
    }

    /// Every manifest that loads, validates and hashes to its file name. Anything else
    /// is reported and skipped, so one damaged file does not keep the manager down.
    pub fn load_all(&self, max_bytes: usize) -> std::io::Result<Vec<Manifest>> {
        let mut out = Vec::new();
        for entry in std::fs::read_dir(&self.dir)? {
            let entry = entry?;
            let name = entry.file_name().to_string_lossy().into_owned();
            // Leftover temporary files of an interrupted write start with a dot.
            if name.starts_with('.') {
                continue;
            }
            let Some(id) = name
                .strip_suffix(".json")
                .and_then(|s| s.parse::<VideoId>().ok())
            else {
                warn!(file = %entry.path().display(), "ignoring a file that is not <video-id>.json");
                continue;
            };
            let path = entry.path();
            match std::fs::metadata(&path) {
                Ok(m) if m.len() > max_bytes as u64 => {
                    warn!(file = %path.display(), size = m.len(), "ignoring a manifest larger than limits.max_manifest_bytes");
                    continue;
                }
                Err(e) => {
                    warn!(file = %path.display(), error = %e, "cannot read manifest");
                    continue;
                }
                Ok(_) => {}
            }
            match std::fs::read(&path)
                .map_err(|e| e.to_string())
                .and_then(|b| Manifest::from_bytes(&b).map_err(|e| e.to_string()))
            {
                Ok(m) if m.video_id() == id => out.push(m),
                Ok(m) => {
                    warn!(file = %path.display(), actual = %m.video_id(), "ignoring a manifest whose id does not match its file name")
                }
                Err(e) => warn!(file = %path.display(), error = %e, "ignoring a damaged manifest"),
            }
        }
        Ok(out)
    }

    /// Writes a manifest durably (blocking; call from `spawn_blocking`).
    pub fn save(&self, manifest: &Manifest) -> std::io::Result<VideoId> {
        let id = manifest.video_id();
        write_atomic(&self.file(id), &manifest.canonical_bytes())?;
        Ok(id)
    }

    /// Removes a manifest file (undoing a save whose registration failed).
    pub fn remove(&self, id: VideoId) -> std::io::Result<()> {
        std::fs::remove_file(self.file(id))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fragnet_core::registry::conformance::test_manifest;

    #[test]
    fn saves_reload_and_bad_files_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let d = ManifestDir::open(dir.path()).unwrap();
        let m = test_manifest("a.mp4", 3);
        let id = d.save(&m).unwrap();
        assert_eq!(
            std::fs::read(d.path().join(format!("{id}.json"))).unwrap(),
            m.canonical_bytes()
        );
        let other = test_manifest("b.mp4", 1);
        std::fs::write(
            d.path().join(format!("{}.json", other.video_id())),
            b"{not json",
        )
        .unwrap();
        std::fs::write(
            d.path().join(format!("{}.json", "0".repeat(64))),
            m.canonical_bytes(),
        )
        .unwrap();
        std::fs::write(d.path().join("README"), b"hi").unwrap();
        std::fs::write(d.path().join(".x.json.tmp-1"), b"partial").unwrap();
        assert_eq!(d.load_all(1 << 20).unwrap(), vec![m]);
        assert!(d.load_all(10).unwrap().is_empty(), "size limit");
    }
}
