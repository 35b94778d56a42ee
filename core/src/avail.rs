//! Chunk-level availability: which verified chunks of a video a node holds, as a
//! bitmap over the video's chunks in manifest order (fragment by fragment), sent as
//! lowercase hex. Peers exchange these so a node can trade a chunk seconds after it
//! verified it, long before its fragment completes.

use crate::ids::{FragmentIndex, VideoId};
use crate::manifest::Manifest;
use crate::store::{FragmentStatus, FragmentStore};

/// Numbers a video's chunks 0.. in manifest order.
#[derive(Debug, Clone)]
pub struct ChunkMap {
    /// The global number of each fragment's first chunk.
    starts: Vec<u32>,
    total: u32,
}

impl ChunkMap {
    /// The numbering of `m`'s chunks.
    pub fn of(m: &Manifest) -> Self {
        let mut starts = Vec::with_capacity(m.fragments.len());
        let mut total = 0u32;
        for f in &m.fragments {
            starts.push(total);
            total += f.chunks.len() as u32;
        }
        ChunkMap { starts, total }
    }

    /// How many chunks the video has.
    pub fn total(&self) -> u32 {
        self.total
    }

    /// The global number of chunk `chunk` of fragment `index`.
    pub fn global(&self, index: FragmentIndex, chunk: u32) -> Option<u32> {
        let start = *self.starts.get(index as usize)?;
        let end = self
            .starts
            .get(index as usize + 1)
            .copied()
            .unwrap_or(self.total);
        (start + chunk < end).then_some(start + chunk)
    }

    /// (fragment, chunk) of global chunk `g`.
    pub fn local(&self, g: u32) -> Option<(FragmentIndex, u32)> {
        if g >= self.total {
            return None;
        }
        let f = self.starts.partition_point(|&s| s <= g) - 1;
        Some((f as FragmentIndex, g - self.starts[f]))
    }

    /// The chunks of `bitmap` that are set, as (fragment, chunk).
    pub fn items(&self, bitmap: &[u8]) -> Vec<(FragmentIndex, u32)> {
        (0..self.total)
            .filter(|&g| {
                bitmap
                    .get(g as usize / 8)
                    .is_some_and(|b| b & (1 << (g % 8)) != 0)
            })
            .filter_map(|g| self.local(g))
            .collect()
    }
}

/// The bitmap of the chunks `store` holds verified of `video`.
pub fn held_bitmap(store: &FragmentStore, video: VideoId, map: &ChunkMap) -> Vec<u8> {
    let mut bits = vec![0u8; map.total().div_ceil(8) as usize];
    let Some(m) = store.manifest(video) else {
        return bits;
    };
    for f in &m.fragments {
        let verified: Vec<bool> = match store.status(video, f.index) {
            Ok(FragmentStatus::Complete) => vec![true; f.chunks.len()],
            _ => store.verified_chunks(video, f.index).unwrap_or_default(),
        };
        for (c, ok) in verified.into_iter().enumerate() {
            if ok && let Some(g) = map.global(f.index, c as u32) {
                bits[g as usize / 8] |= 1 << (g % 8);
            }
        }
    }
    bits
}

/// Lowercase hex.
pub fn to_hex(bytes: &[u8]) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(HEX[(b >> 4) as usize] as char);
        s.push(HEX[(b & 15) as usize] as char);
    }
    s
}

/// Parses lowercase or uppercase hex; `None` if it is not hex of whole bytes.
pub fn from_hex(s: &str) -> Option<Vec<u8>> {
    if !s.len().is_multiple_of(2) {
        return None;
    }
    let digit = |c: u8| (c as char).to_digit(16).map(|d| d as u8);
    s.as_bytes()
        .chunks(2)
        .map(|p| Some(digit(p[0])? << 4 | digit(p[1])?))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Digest;
    use crate::manifest::FragmentInfo;

    fn manifest(chunks: &[usize]) -> Manifest {
        let h = Digest::of(b"x");
        Manifest {
            chunk_size: 4,
            fragment_count: chunks.len() as u32,
            fragments: chunks
                .iter()
                .enumerate()
                .map(|(i, &n)| FragmentInfo {
                    chunks: vec![h; n],
                    hash: h,
                    index: i as u32,
                    offset: 0,
                    size: n as u64 * 4,
                })
                .collect(),
            hash: h,
            mime: "video/mp4".into(),
            name: "v".into(),
            size: 0,
            version: 1,
        }
    }

    #[test]
    fn chunks_are_numbered_in_manifest_order() {
        let map = ChunkMap::of(&manifest(&[3, 1, 2]));
        assert_eq!(map.total(), 6);
        assert_eq!(map.global(0, 2), Some(2));
        assert_eq!(map.global(1, 0), Some(3));
        assert_eq!(map.global(1, 1), None, "fragment 1 has one chunk");
        assert_eq!(map.global(3, 0), None);
        assert_eq!(map.local(5), Some((2, 1)));
        assert_eq!(map.local(6), None);
        assert_eq!(map.items(&[0b0010_1001]), vec![(0, 0), (1, 0), (2, 1)]);
        assert_eq!(map.items(&[]), vec![], "a short bitmap holds nothing");
    }

    #[test]
    fn hex_round_trips_and_rejects_junk() {
        assert_eq!(to_hex(&[0, 0xab, 0x10]), "00ab10");
        assert_eq!(from_hex("00ab10").unwrap(), vec![0, 0xab, 0x10]);
        assert_eq!(from_hex("00AB").unwrap(), vec![0, 0xab]);
        assert!(from_hex("abc").is_none());
        assert!(from_hex("zz").is_none());
        assert!(from_hex("+1").is_none());
    }
}
