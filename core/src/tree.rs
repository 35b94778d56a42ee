//! Chunk digests and the fragment hash they add up to.
//!
//! A fragment's hash is plain BLAKE3 of its bytes. BLAKE3 is itself a Merkle tree over
//! 1 KiB blocks, so when chunks are a power of two of at least 1 KiB each chunk is a
//! whole subtree of that tree, and the fragment hash is a function of the chunks'
//! *chaining values* alone. Manifest version 2 lists those chaining values as the chunk
//! digests. That buys two things:
//!
//! - a manifest's chunk digests are checked against its fragment hashes once, when the
//!   manifest is validated ([`fragment_root`]), so a downloader that verified every
//!   chunk has verified the fragment and never reads or hashes it a second time;
//! - each byte is hashed once on the way in, not twice.
//!
//! Version 1 manifests (any chunk size; chunk digests are BLAKE3 of each chunk on its
//! own) are still read, and still written for chunk sizes v2 cannot use; their fragments
//! are hashed whole when they complete.
//!
//! A fragment of a single chunk has no interior nodes: its one chunk digest is the
//! fragment hash itself, in both versions.

use blake3::hazmat::{
    ChainingValue, HasherExt, Mode, left_subtree_len, merge_subtrees_non_root, merge_subtrees_root,
};

use crate::ids::Digest;

/// The first manifest format: chunk digests are BLAKE3 of each chunk alone.
pub const V1: u32 = 1;
/// Chunk digests are BLAKE3 chaining values at the chunk's offset in its fragment.
pub const V2: u32 = 2;

/// Whether chunks of `chunk_size` bytes are whole BLAKE3 subtrees, which v2 needs.
pub fn v2_chunk_size(chunk_size: u32) -> bool {
    chunk_size >= blake3::CHUNK_LEN as u32 && chunk_size.is_power_of_two()
}

/// The manifest version to write for `chunk_size`: v2 where it can be used.
pub fn version_for(chunk_size: u32) -> u32 {
    if v2_chunk_size(chunk_size) { V2 } else { V1 }
}

/// The digest a manifest of `version` lists for chunk `chunk` (of `chunks` in its
/// fragment), whose bytes are `data`. `version` must be [`V1`] or [`V2`], and for v2
/// `chunk_size` must pass [`v2_chunk_size`] (manifest validation ensures both).
pub fn chunk_digest(
    version: u32,
    chunk_size: u32,
    chunk: u32,
    chunks: usize,
    data: &[u8],
) -> Digest {
    if version == V1 || chunks == 1 {
        return Digest::of(data);
    }
    let mut h = blake3::Hasher::new();
    h.set_input_offset(chunk as u64 * chunk_size as u64);
    h.update(data);
    Digest(h.finalize_non_root())
}

/// The fragment hash that v2 chunk digests `cvs` add up to, for a fragment of `size`
/// bytes in chunks of `chunk_size` (a power of two ≥ 1 KiB; `cvs` has one digest per
/// chunk). Costs one compression per chunk: microseconds, not a pass over the bytes.
pub fn fragment_root(chunk_size: u32, size: u64, cvs: &[Digest]) -> Digest {
    let c = chunk_size as u64;
    debug_assert!(v2_chunk_size(chunk_size) && cvs.len() as u64 == size.div_ceil(c));
    if cvs.len() == 1 {
        return cvs[0];
    }
    let left = left_subtree_len(size);
    let nl = (left / c) as usize;
    let l = subtree(&cvs[..nl], c, left);
    let r = subtree(&cvs[nl..], c, size - left);
    Digest(*merge_subtrees_root(&l, &r, Mode::Hash).as_bytes())
}

/// The chaining value of the subtree made of `cvs` (chunks of `c` bytes, `len` bytes in
/// all). BLAKE3 splits a subtree at the largest power of two of 1 KiB blocks that leaves
/// the right side non-empty; with power-of-two chunks that split falls on a chunk
/// boundary.
fn subtree(cvs: &[Digest], c: u64, len: u64) -> ChainingValue {
    if len <= c {
        return cvs[0].0;
    }
    let left = left_subtree_len(len);
    let nl = (left / c) as usize;
    merge_subtrees_non_root(
        &subtree(&cvs[..nl], c, left),
        &subtree(&cvs[nl..], c, len - left),
        Mode::Hash,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v2_digests(data: &[u8], chunk_size: u32) -> Vec<Digest> {
        let chunks: Vec<&[u8]> = data.chunks(chunk_size as usize).collect();
        let n = chunks.len();
        chunks
            .iter()
            .enumerate()
            .map(|(i, c)| chunk_digest(V2, chunk_size, i as u32, n, c))
            .collect()
    }

    /// The whole point: the root built from chunk digests is BLAKE3 of the bytes, for
    /// every shape of fragment (one chunk, exact powers, ragged tails, odd counts).
    #[test]
    fn root_of_chunk_digests_is_blake3_of_the_bytes() {
        let mut data = vec![0u8; 70 * 1024 + 17];
        for (i, b) in data.iter_mut().enumerate() {
            *b = (i * 31 % 251) as u8;
        }
        for chunk_size in [1024u32, 2048, 4096, 16384, 65536, 1 << 20] {
            for size in [
                1,
                1023,
                1024,
                1025,
                2048,
                3072,
                4097,
                5 * 1024,
                7 * 4096 + 3,
                16384,
                65536,
                65537,
                70 * 1024 + 17,
            ] {
                let bytes = &data[..size];
                let cvs = v2_digests(bytes, chunk_size);
                assert_eq!(
                    fragment_root(chunk_size, size as u64, &cvs),
                    Digest::of(bytes),
                    "chunk_size {chunk_size}, size {size}"
                );
            }
        }
    }

    #[test]
    fn a_changed_byte_changes_its_chunk_digest_and_the_root() {
        let data = vec![7u8; 8 * 1024];
        let cvs = v2_digests(&data, 1024);
        let mut bad = data.clone();
        bad[3 * 1024 + 5] ^= 1;
        let bad_cvs = v2_digests(&bad, 1024);
        let differ: Vec<usize> = (0..8).filter(|&i| cvs[i] != bad_cvs[i]).collect();
        assert_eq!(differ, vec![3]);
        assert_ne!(
            fragment_root(1024, 8192, &bad_cvs),
            fragment_root(1024, 8192, &cvs)
        );
        // Equal bytes at another offset give another digest: digests bind position.
        assert_ne!(cvs[0], cvs[1]);
    }

    #[test]
    fn versions_by_chunk_size() {
        assert_eq!(version_for(1 << 20), V2);
        assert_eq!(version_for(1024), V2);
        assert_eq!(version_for(512), V1);
        assert_eq!(version_for(3 << 10), V1);
        assert_eq!(version_for(4), V1);
    }
}
