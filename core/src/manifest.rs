//! The manifest: what a video is made of, in a canonical form whose BLAKE3 is the
//! video id. Every field counts (name and MIME included), so anyone can recompute the
//! id and check a manifest they were handed.
//!
//! Canonical form: UTF-8 JSON, object keys sorted, no insignificant whitespace, hashes
//! as lowercase hex. serde writes struct fields in declaration order, so fields below
//! are declared alphabetically; `canonical_bytes` is the only way manifests are written.

use serde::{Deserialize, Serialize};

use crate::ids::{Digest, FragmentIndex, VideoId};
use crate::tree;

/// Newest manifest format version, written wherever the chunk size allows it (see
/// [`crate::tree`]); version 1 is still read, and written for other chunk sizes.
pub const MANIFEST_VERSION: u32 = tree::V2;
/// Default number of fragments a video is split into (the seed's 10).
pub const DEFAULT_FRAGMENTS: u32 = 10;
/// Default chunk size: the unit of verification, resume and streaming.
pub const DEFAULT_CHUNK_SIZE: u32 = 1 << 20;
/// Upper bound on fragments per video; more would make manifests and have-sets huge.
pub const MAX_FRAGMENTS: u32 = 4096;
/// Upper bound on chunks per video (bounds manifest size: ~70 bytes per chunk).
pub const MAX_CHUNKS: u64 = 1 << 20;
/// Upper bound on a manifest's canonical size, checked before parsing one from the network.
pub const MAX_MANIFEST_BYTES: usize = 80 << 20;

/// A video's description: its size, hash and fragments.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Bytes per chunk (every chunk of a fragment but its last has this size).
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub chunk_size: u32,
    /// Number of fragments.
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 4096))]
    pub fragment_count: u32,
    /// The fragments, in order: `fragment_count` of them, contiguous from offset 0.
    #[cfg_attr(feature = "openapi", schema(min_items = 1, max_items = 4096))]
    pub fragments: Vec<FragmentInfo>,
    /// BLAKE3 of the whole file.
    pub hash: Digest,
    /// MIME type, e.g. `video/mp4`.
    #[cfg_attr(feature = "openapi", schema(max_length = 255))]
    pub mime: String,
    /// File name for display and reassembly (never used as a path as is).
    #[cfg_attr(feature = "openapi", schema(min_length = 1, max_length = 255))]
    pub name: String,
    /// Total size in bytes: the sum of the fragments' sizes.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub size: u64,
    /// Format version: 2 (chunk digests are BLAKE3 chaining values, chunk size a power
    /// of two of at least 1 KiB) or 1 (chunk digests are BLAKE3 of each chunk).
    #[cfg_attr(feature = "openapi", schema(minimum = 1, maximum = 2))]
    pub version: u32,
}

/// One fragment of a video.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct FragmentInfo {
    /// Each chunk's digest, in order: ceil(size / chunk_size) of them. Version 1: BLAKE3
    /// of the chunk; version 2: its BLAKE3 chaining value within the fragment, so the
    /// digests add up to the fragment hash (see `fragnet_core::tree`).
    #[cfg_attr(feature = "openapi", schema(min_items = 1))]
    pub chunks: Vec<Digest>,
    /// BLAKE3 of the fragment's bytes.
    pub hash: Digest,
    /// Position in the video, from 0.
    #[cfg_attr(feature = "openapi", schema(value_type = u32))]
    pub index: FragmentIndex,
    /// Byte offset of the fragment in the whole file.
    pub offset: u64,
    /// Size in bytes.
    #[cfg_attr(feature = "openapi", schema(minimum = 1))]
    pub size: u64,
}

/// Why a manifest is not acceptable.
#[derive(Debug, thiserror::Error)]
pub enum ManifestError {
    /// Not JSON of the manifest's shape (includes unknown fields).
    #[error("manifest is not valid: {0}")]
    Parse(#[from] serde_json::Error),
    /// Parsed, but inconsistent.
    #[error("manifest is inconsistent: {0}")]
    Invalid(String),
    /// Larger than [`MAX_MANIFEST_BYTES`].
    #[error("manifest is larger than {MAX_MANIFEST_BYTES} bytes")]
    TooLarge,
}

impl Manifest {
    /// The canonical bytes: what is stored, sent and hashed into the video id.
    pub fn canonical_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("a manifest always serializes")
    }

    /// The video id: BLAKE3 of the canonical bytes.
    pub fn video_id(&self) -> VideoId {
        VideoId(Digest::of(&self.canonical_bytes()))
    }

    /// Parses and validates a manifest (canonical or not; the id is always computed from
    /// the canonical re-encoding).
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ManifestError> {
        if bytes.len() > MAX_MANIFEST_BYTES {
            return Err(ManifestError::TooLarge);
        }
        let m: Manifest = serde_json::from_slice(bytes)?;
        m.validate()?;
        Ok(m)
    }

    /// Checks internal consistency: version, contiguous fragments covering the file,
    /// chunk counts matching sizes, bounds, and for version 2 that each fragment's chunk
    /// digests add up to its hash.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let bad = |m: String| Err(ManifestError::Invalid(m));
        if self.version != tree::V1 && self.version != tree::V2 {
            return bad(format!(
                "unsupported version {} (this build reads 1 and {MANIFEST_VERSION})",
                self.version
            ));
        }
        if self.chunk_size == 0 {
            return bad("chunk_size is 0".into());
        }
        if self.version == tree::V2 && !tree::v2_chunk_size(self.chunk_size) {
            return bad(format!(
                "version 2 needs a chunk_size that is a power of two of at least 1024, not {}",
                self.chunk_size
            ));
        }
        if self.fragment_count == 0 || self.fragment_count > MAX_FRAGMENTS {
            return bad(format!(
                "fragment_count {} is not within 1..={MAX_FRAGMENTS}",
                self.fragment_count
            ));
        }
        if self.fragments.len() != self.fragment_count as usize {
            return bad(format!(
                "{} fragments listed, fragment_count says {}",
                self.fragments.len(),
                self.fragment_count
            ));
        }
        if self.name.is_empty() || self.name.len() > 255 || self.mime.len() > 255 {
            return bad("name must be 1..=255 bytes and mime at most 255".into());
        }
        let mut offset = 0u64;
        let mut chunks_total = 0u64;
        for (i, f) in self.fragments.iter().enumerate() {
            if f.index as usize != i {
                return bad(format!("fragment at position {i} has index {}", f.index));
            }
            if f.offset != offset {
                return bad(format!(
                    "fragment {i} starts at {} instead of {offset}",
                    f.offset
                ));
            }
            if f.size == 0 {
                return bad(format!("fragment {i} is empty"));
            }
            let want = f.size.div_ceil(self.chunk_size as u64);
            if f.chunks.len() as u64 != want {
                return bad(format!(
                    "fragment {i} has {} chunk hashes, its size needs {want}",
                    f.chunks.len()
                ));
            }
            chunks_total += want;
            offset = offset
                .checked_add(f.size)
                .ok_or_else(|| ManifestError::Invalid("size overflow".into()))?;
        }
        if chunks_total > MAX_CHUNKS {
            return bad(format!("{chunks_total} chunks is more than {MAX_CHUNKS}"));
        }
        if offset != self.size {
            return bad(format!(
                "fragments cover {offset} bytes, size says {}",
                self.size
            ));
        }
        if self.version == tree::V2 {
            for f in &self.fragments {
                if tree::fragment_root(self.chunk_size, f.size, &f.chunks) != f.hash {
                    return bad(format!(
                        "the chunk digests of fragment {} do not add up to its hash",
                        f.index
                    ));
                }
            }
        }
        Ok(())
    }

    /// Whether the chunk digests alone prove a fragment's hash (version 2, checked by
    /// [`Manifest::validate`]): a fragment whose chunks all verified needs no second
    /// pass. Version 1 fragments are hashed whole when they complete.
    pub fn chunks_prove_fragment(&self) -> bool {
        self.version == tree::V2
    }

    /// The digest of chunk `chunk` of fragment `index` with bytes `data`, computed the
    /// way this manifest's version lists it; `None` if there is no such chunk.
    pub fn chunk_digest(&self, index: FragmentIndex, chunk: u32, data: &[u8]) -> Option<Digest> {
        let f = self.fragment(index)?;
        if chunk as usize >= f.chunks.len() {
            return None;
        }
        Some(tree::chunk_digest(
            self.version,
            self.chunk_size,
            chunk,
            f.chunks.len(),
            data,
        ))
    }

    /// Whether `data` is chunk `chunk` of fragment `index` (length and digest).
    pub fn verify_chunk(&self, index: FragmentIndex, chunk: u32, data: &[u8]) -> bool {
        let (Some(f), Some((_, len))) = (self.fragment(index), self.chunk_range(index, chunk))
        else {
            return false;
        };
        data.len() as u64 == len
            && self.chunk_digest(index, chunk, data) == Some(f.chunks[chunk as usize])
    }

    /// The fragment at `index`, if there is one.
    pub fn fragment(&self, index: FragmentIndex) -> Option<&FragmentInfo> {
        self.fragments.get(index as usize)
    }

    /// Byte range `(offset, len)` of chunk `chunk` inside fragment `index`, relative to
    /// the fragment's start.
    pub fn chunk_range(&self, index: FragmentIndex, chunk: u32) -> Option<(u64, u64)> {
        let f = self.fragment(index)?;
        let start = chunk as u64 * self.chunk_size as u64;
        if start >= f.size {
            return None;
        }
        Some((start, (f.size - start).min(self.chunk_size as u64)))
    }

    /// Sizes of the smallest and largest fragment.
    pub fn fragment_size_range(&self) -> (u64, u64) {
        let sizes = self.fragments.iter().map(|f| f.size);
        (sizes.clone().min().unwrap_or(0), sizes.max().unwrap_or(0))
    }
}

/// Guesses a MIME type from a file name's extension (what browsers need to play it).
pub fn mime_for(name: &str) -> &'static str {
    let ext = name
        .rsplit_once('.')
        .map(|(_, e)| e.to_ascii_lowercase())
        .unwrap_or_default();
    match ext.as_str() {
        "mp4" | "m4v" => "video/mp4",
        "webm" => "video/webm",
        "mkv" => "video/x-matroska",
        "mov" => "video/quicktime",
        "ts" => "video/mp2t",
        "ogv" => "video/ogg",
        "mp3" => "audio/mpeg",
        _ => "application/octet-stream",
    }
}

/// A file name from a manifest (that is, from the network) made safe to create in a
/// directory: the last path component, restricted to `[A-Za-z0-9._-]`, never hidden.
pub fn safe_file_name(name: &str) -> String {
    let last = name.rsplit(['/', '\\']).next().unwrap_or("");
    let cleaned: String = last
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .collect();
    let cleaned = cleaned.trim_start_matches('.').to_string();
    if cleaned.is_empty() {
        "video.bin".to_string()
    } else {
        cleaned
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Manifest {
        let h = Digest::of(b"x");
        Manifest {
            chunk_size: 4,
            fragment_count: 2,
            fragments: vec![
                FragmentInfo {
                    chunks: vec![h, h],
                    hash: h,
                    index: 0,
                    offset: 0,
                    size: 5,
                },
                FragmentInfo {
                    chunks: vec![h],
                    hash: h,
                    index: 1,
                    offset: 5,
                    size: 4,
                },
            ],
            hash: h,
            mime: "video/mp4".into(),
            name: "a.mp4".into(),
            size: 9,
            version: 1,
        }
    }

    #[test]
    fn canonical_form_has_sorted_keys_and_no_spaces() {
        let m = sample();
        let s = String::from_utf8(m.canonical_bytes()).unwrap();
        assert!(!s.contains(' ') && !s.contains('\n'));
        let v: serde_json::Value = serde_json::from_str(&s).unwrap();
        // serde_json's Map is a BTreeMap (sorted) without preserve_order, so re-encoding
        // the parsed value sorts keys: equal strings mean our order was sorted.
        assert_eq!(serde_json::to_string(&v).unwrap(), s);
        assert!(s.starts_with(r#"{"chunk_size":4,"fragment_count":2,"fragments":[{"chunks":["#));
    }

    #[test]
    fn id_is_hash_of_canonical_bytes_and_every_field_counts() {
        let m = sample();
        assert_eq!(m.video_id().0, Digest::of(&m.canonical_bytes()));
        let mut renamed = m.clone();
        renamed.name = "b.mp4".into();
        assert_ne!(renamed.video_id(), m.video_id());
        // Whitespace does not change the id: it is computed from the canonical re-encoding.
        let pretty = serde_json::to_vec_pretty(&m).unwrap();
        assert_eq!(
            Manifest::from_bytes(&pretty).unwrap().video_id(),
            m.video_id()
        );
    }

    #[test]
    fn rejects_unknown_fields_and_inconsistency() {
        let mut v: serde_json::Value = serde_json::from_slice(&sample().canonical_bytes()).unwrap();
        v["extra"] = 1.into();
        assert!(matches!(
            Manifest::from_bytes(v.to_string().as_bytes()),
            Err(ManifestError::Parse(_))
        ));

        let mut m = sample();
        m.size = 10;
        assert!(m.validate().is_err());
        let mut m = sample();
        m.fragments[1].offset = 4;
        assert!(m.validate().is_err());
        let mut m = sample();
        m.fragments[0].chunks.pop();
        assert!(m.validate().is_err());
        let mut m = sample();
        m.version = 2;
        assert!(m.validate().unwrap_err().to_string().contains("version"));
    }

    /// A real version 2 manifest of `bytes` in chunks of 1 KiB.
    fn v2_of(bytes: &[u8]) -> Manifest {
        let n = bytes.len().div_ceil(1024);
        let chunks: Vec<Digest> = bytes
            .chunks(1024)
            .enumerate()
            .map(|(i, c)| tree::chunk_digest(tree::V2, 1024, i as u32, n, c))
            .collect();
        Manifest {
            chunk_size: 1024,
            fragment_count: 1,
            fragments: vec![FragmentInfo {
                chunks,
                hash: Digest::of(bytes),
                index: 0,
                offset: 0,
                size: bytes.len() as u64,
            }],
            hash: Digest::of(bytes),
            mime: "video/mp4".into(),
            name: "a.mp4".into(),
            size: bytes.len() as u64,
            version: tree::V2,
        }
    }

    #[test]
    fn version_2_chunk_digests_must_add_up_to_the_fragment_hash() {
        let bytes: Vec<u8> = (0..5000u32).map(|i| (i % 251) as u8).collect();
        let m = v2_of(&bytes);
        m.validate().unwrap();
        assert!(m.verify_chunk(0, 2, &bytes[2048..3072]));
        assert!(
            !m.verify_chunk(0, 1, &bytes[2048..3072]),
            "digests bind position"
        );
        assert!(
            !m.verify_chunk(0, 4, &bytes[4096..4999]),
            "length is checked"
        );
        assert!(!m.verify_chunk(0, 5, &[]));

        // A digest swapped for another chunk's: each digest may be "valid", the set
        // does not add up, and the manifest is refused before anyone downloads.
        let mut swapped = m.clone();
        swapped.fragments[0].chunks.swap(0, 1);
        let e = swapped.validate().unwrap_err().to_string();
        assert!(e.contains("do not add up"), "{e}");
        let mut wrong_hash = m.clone();
        wrong_hash.fragments[0].hash = Digest::of(b"x");
        assert!(wrong_hash.validate().is_err());

        let mut odd = m.clone();
        odd.chunk_size = 1000;
        let e = odd.validate().unwrap_err().to_string();
        assert!(e.contains("power of two"), "{e}");
        let mut future = m;
        future.version = 3;
        assert!(
            future
                .validate()
                .unwrap_err()
                .to_string()
                .contains("version 3")
        );
    }

    #[test]
    fn chunk_ranges() {
        let m = sample();
        assert_eq!(m.chunk_range(0, 0), Some((0, 4)));
        assert_eq!(m.chunk_range(0, 1), Some((4, 1)));
        assert_eq!(m.chunk_range(0, 2), None);
        assert_eq!(m.chunk_range(2, 0), None);
    }

    #[test]
    fn file_names_from_the_network_are_not_paths() {
        assert_eq!(safe_file_name("../../etc/passwd"), "passwd");
        assert_eq!(safe_file_name("/abs/x.mp4"), "x.mp4");
        assert_eq!(safe_file_name(".."), "video.bin");
        assert_eq!(safe_file_name(".hidden"), "hidden");
        assert_eq!(safe_file_name("a b\0c.mp4"), "a_b_c.mp4");
    }
}
