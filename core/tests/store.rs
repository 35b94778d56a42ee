//! The store: only verified bytes are ever served, counted or announced; partial
//! fragments resume; bad bytes are set aside.

use std::sync::Arc;

use bytes::Bytes;
use fragnet_core::conformance::{TestVideo, generated_bytes, within};
use fragnet_core::ids::Digest;
use fragnet_core::manifest::{MANIFEST_VERSION, Manifest};
use fragnet_core::store::{
    ChunkOutcome, FragmentStatus, FragmentStore, QUARANTINE_DIR, StoreError, StoreEvent,
};

const CHUNK: u32 = 4096;

fn video() -> TestVideo {
    TestVideo::from_bytes("v.mp4", &generated_bytes(100_000, 9), 4, CHUNK)
}

fn chunk_bytes(v: &TestVideo, index: u32, chunk: u32) -> Bytes {
    let all = std::fs::read(&v.input).unwrap();
    let f = &v.manifest.fragments[index as usize];
    let (off, len) = v.manifest.chunk_range(index, chunk).unwrap();
    let start = (f.offset + off) as usize;
    Bytes::copy_from_slice(&all[start..start + len as usize])
}

#[tokio::test]
async fn a_wrong_chunk_is_refused_and_nothing_is_stored() {
    let v = video();
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FragmentStore::open(dir.path()).unwrap();
    let id = store.add_manifest(&v.manifest).unwrap();
    let mut bad = chunk_bytes(&v, 1, 0).to_vec();
    bad[7] ^= 0xff;
    let e = store
        .write_chunk(id, 1, 0, Bytes::from(bad))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::HashMismatch { .. }), "{e}");
    assert_eq!(store.status(id, 1).unwrap(), FragmentStatus::Missing);
    assert!(!store.has_chunk(id, 1, 0));
    // A short chunk is refused too.
    let short = chunk_bytes(&v, 1, 0).slice(..100);
    assert!(store.write_chunk(id, 1, 0, short).await.is_err());
}

#[tokio::test]
async fn a_part_file_is_never_served_as_complete() {
    let v = video();
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FragmentStore::open(dir.path()).unwrap();
    let id = store.add_manifest(&v.manifest).unwrap();
    assert_eq!(
        store
            .write_chunk(id, 2, 1, chunk_bytes(&v, 2, 1))
            .await
            .unwrap(),
        ChunkOutcome::Stored
    );
    assert!(matches!(
        store.status(id, 2).unwrap(),
        FragmentStatus::Partial { verified: 1, .. }
    ));
    assert!(
        store.have(id).is_empty(),
        "a partial fragment is not announced"
    );
    // The verified chunk can be read (streaming), its neighbours cannot.
    let got = store
        .read(id, 2, CHUNK as u64, CHUNK as usize)
        .await
        .unwrap();
    assert_eq!(got, chunk_bytes(&v, 2, 1));
    assert!(matches!(
        store.read(id, 2, 0, 10).await,
        Err(StoreError::NotAvailable { .. })
    ));
    assert!(matches!(
        store.read(id, 2, CHUNK as u64 - 1, 2).await,
        Err(StoreError::NotAvailable { .. })
    ));
    // After a restart the .part is still partial, with the same verified chunk.
    drop(store);
    let (store, report) = FragmentStore::open(dir.path()).unwrap();
    assert_eq!(
        (report.partial, report.partial_chunks, report.complete),
        (1, 1, 0)
    );
    assert!(store.have(id).is_empty());
    assert_eq!(
        store
            .verified_chunks(id, 2)
            .unwrap()
            .iter()
            .filter(|b| **b)
            .count(),
        1
    );
}

#[tokio::test]
async fn chunks_complete_a_fragment_once_and_it_survives_restart() {
    let v = video();
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FragmentStore::open(dir.path()).unwrap();
    let store = Arc::new(store);
    let id = store.add_manifest(&v.manifest).unwrap();
    let mut events = store.subscribe();
    let n = v.manifest.fragments[0].chunks.len() as u32;
    // All chunks at once, from many tasks: exactly one completes the fragment.
    let tasks: Vec<_> = (0..n)
        .map(|c| {
            let (store, data) = (store.clone(), chunk_bytes(&v, 0, c));
            tokio::spawn(async move { store.write_chunk(id, 0, c, data).await.unwrap() })
        })
        .collect();
    let mut completions = 0;
    for t in tasks {
        if within(10, "chunk write", t).await.unwrap() == ChunkOutcome::FragmentComplete {
            completions += 1;
        }
    }
    assert_eq!(completions, 1);
    assert_eq!(store.have(id), vec![0]);
    assert!(store.video_dir(id).join("fragment_0.bin").is_file());
    assert!(!store.video_dir(id).join("fragment_0.bin.part").exists());
    let mut saw_complete = false;
    while let Ok(e) = events.try_recv() {
        saw_complete |= e
            == StoreEvent::FragmentComplete {
                video: id,
                index: 0,
            };
    }
    assert!(saw_complete);
    assert_eq!(
        store
            .write_chunk(id, 0, 0, chunk_bytes(&v, 0, 0))
            .await
            .unwrap(),
        ChunkOutcome::AlreadyHad
    );
    drop(events);
    let dir_path = store.root().to_path_buf();
    drop(store);
    let (store, report) = FragmentStore::open(&dir_path).unwrap();
    assert_eq!(report.complete, 1);
    assert_eq!(store.have(id), vec![0]);
}

#[tokio::test]
async fn a_corrupt_fragment_on_disk_is_set_aside_at_start() {
    let v = video();
    let dir = tempfile::tempdir().unwrap();
    {
        let (store, _) = FragmentStore::open(dir.path()).unwrap();
        store.import_dir(&v.split_dir, None).unwrap();
        assert_eq!(store.have(v.id()).len(), 4);
    }
    let path = dir.path().join(v.id().to_string()).join("fragment_3.bin");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[100] ^= 1;
    std::fs::write(&path, bytes).unwrap();
    let (store, report) = FragmentStore::open(dir.path()).unwrap();
    assert_eq!(
        store.have(v.id()),
        vec![0, 1, 2],
        "the corrupt fragment is not counted"
    );
    assert_eq!(report.set_aside.len(), 1);
    assert!(!path.exists(), "moved out of the video directory");
    assert!(
        report.set_aside[0]
            .0
            .starts_with(dir.path().join(QUARANTINE_DIR)),
        "kept for inspection: {:?}",
        report.set_aside
    );
    assert!(matches!(
        store.read(v.id(), 3, 0, 1).await,
        Err(StoreError::NotAvailable { .. })
    ));
}

#[tokio::test]
async fn importing_a_tampered_split_is_refused() {
    let v = video();
    let f = v.split_dir.join("fragment_1.bin");
    let mut bytes = std::fs::read(&f).unwrap();
    bytes[0] ^= 1;
    std::fs::write(&f, bytes).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FragmentStore::open(dir.path()).unwrap();
    let e = store.import_dir(&v.split_dir, Some(&[0, 1])).unwrap_err();
    assert!(
        matches!(e, StoreError::HashMismatch { index: 1, .. }),
        "{e}"
    );
    assert_eq!(store.have(v.id()), vec![0]);
}

#[tokio::test]
async fn a_manifest_in_the_wrong_directory_is_not_trusted() {
    let v = video();
    let dir = tempfile::tempdir().unwrap();
    let other = fragnet_core::ids::Digest::of(b"other").to_string();
    std::fs::create_dir_all(dir.path().join(&other)).unwrap();
    std::fs::copy(
        v.split_dir.join("manifest.json"),
        dir.path().join(&other).join("manifest.json"),
    )
    .unwrap();
    let (store, report) = FragmentStore::open(dir.path()).unwrap();
    assert!(store.videos().is_empty());
    assert_eq!(report.set_aside.len(), 1);
}

#[tokio::test]
async fn a_removed_video_is_gone_at_once_and_an_interrupted_removal_finishes_on_open() {
    let v = video();
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FragmentStore::open(dir.path()).unwrap();
    let (id, _) = store.import_dir(&v.split_dir, None).unwrap();
    let mut events = store.subscribe();
    assert!(store.remove_video(id).unwrap());
    assert!(store.manifest(id).is_none());
    assert!(store.have(id).is_empty());
    assert!(
        store.read(id, 0, 0, 10).await.is_err(),
        "nothing more is served"
    );
    assert!(!store.video_dir(id).exists());
    assert_eq!(events.recv().await.unwrap(), StoreEvent::VideoRemoved(id));
    assert!(
        !store.remove_video(id).unwrap(),
        "removing twice is a no-op"
    );
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "{left:?}");

    // A crash after the rename and before the delete, and one in the middle of an
    // addition: both leftovers go on the next open, and neither looks like a video.
    store.import_dir(&v.split_dir, None).unwrap();
    drop(store);
    let gone = dir.path().join(format!(".removing-{id}-1"));
    std::fs::rename(dir.path().join(id.to_string()), &gone).unwrap();
    let staging = dir.path().join(".staging-1-2");
    std::fs::create_dir_all(staging.join("split")).unwrap();
    std::fs::write(staging.join("upload.mp4"), b"half an upload").unwrap();
    let (store, report) = FragmentStore::open(dir.path()).unwrap();
    assert_eq!(report.videos, 0);
    assert!(store.videos().is_empty());
    assert!(!gone.exists() && !staging.exists());
}

#[tokio::test]
async fn a_footprint_counts_complete_fragments_and_part_files() {
    let v = video();
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FragmentStore::open(dir.path()).unwrap();
    let (id, _) = store.import_dir(&v.split_dir, Some(&[0])).unwrap();
    store
        .write_chunk(id, 2, 0, chunk_bytes(&v, 2, 0))
        .await
        .unwrap();
    let fp = store.footprint(id).unwrap();
    let size = |i: usize| v.manifest.fragments[i].size;
    assert_eq!(fp.size, v.manifest.size);
    assert_eq!(fp.complete_bytes, size(0));
    assert_eq!(
        fp.partial_bytes,
        size(2),
        "a .part file is preallocated whole"
    );
    assert_eq!((fp.complete_fragments, fp.fragment_count), (1, 4));
    assert!(!fp.is_complete());
    assert_eq!(fp.on_disk(), size(0) + size(2));
}

/// The manifest an earlier build (format version 1) wrote for `bytes`: chunk digests
/// are BLAKE3 of each chunk alone, whatever the chunk size.
fn version_1_manifest(bytes: &[u8], fragments: u32, chunk_size: u32) -> Manifest {
    let v = TestVideo::from_bytes("v.mp4", bytes, fragments, chunk_size);
    let mut m = v.manifest.clone();
    m.version = 1;
    for f in &mut m.fragments {
        let start = f.offset as usize;
        let data = &bytes[start..start + f.size as usize];
        f.chunks = data.chunks(chunk_size as usize).map(Digest::of).collect();
        f.hash = Digest::of(data);
    }
    m.validate().unwrap();
    m
}

async fn write_fragment(
    store: &FragmentStore,
    m: &Manifest,
    bytes: &[u8],
    index: u32,
) -> Vec<Result<ChunkOutcome, StoreError>> {
    let id = m.video_id();
    let f = &m.fragments[index as usize];
    let mut out = Vec::new();
    for c in 0..f.chunks.len() as u32 {
        let (off, len) = m.chunk_range(index, c).unwrap();
        let start = (f.offset + off) as usize;
        let data = Bytes::copy_from_slice(&bytes[start..start + len as usize]);
        out.push(within(10, "chunk write", store.write_chunk(id, index, c, data)).await);
    }
    out
}

#[tokio::test]
async fn version_1_manifests_from_earlier_builds_still_verify_and_complete() {
    let bytes = generated_bytes(50_000, 3);
    // 4096 would be written as version 2 today; an earlier build wrote version 1.
    let m = version_1_manifest(&bytes, 2, CHUNK);
    assert_ne!(m.version, MANIFEST_VERSION);
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FragmentStore::open(dir.path()).unwrap();
    let id = store.add_manifest(&m).unwrap();
    // A version 2 digest of the same chunk is not what a version 1 manifest lists.
    let mut bad = bytes[..CHUNK as usize].to_vec();
    bad[0] ^= 1;
    assert!(store.write_chunk(id, 0, 0, Bytes::from(bad)).await.is_err());
    let results = write_fragment(&store, &m, &bytes, 0).await;
    assert_eq!(
        results.last().unwrap().as_ref().unwrap(),
        &ChunkOutcome::FragmentComplete
    );
    assert_eq!(store.have(id), vec![0]);
    drop(store);
    let (store, report) = FragmentStore::open(dir.path()).unwrap();
    assert_eq!((report.complete, store.have(id)), (1, vec![0]));
}

#[tokio::test]
async fn a_version_1_fragment_whose_chunks_verify_but_whose_hash_does_not_is_not_completed() {
    // Version 1 cannot prove its fragment hash from its chunk digests, so the store
    // still hashes the whole fragment when the last chunk lands.
    let bytes = generated_bytes(20_000, 4);
    let mut m = version_1_manifest(&bytes, 1, 3000);
    m.fragments[0].hash = Digest::of(b"something else");
    m.validate().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FragmentStore::open(dir.path()).unwrap();
    let id = store.add_manifest(&m).unwrap();
    let results = write_fragment(&store, &m, &bytes, 0).await;
    let last = results.last().unwrap().as_ref().unwrap_err();
    assert!(matches!(last, StoreError::HashMismatch { .. }), "{last}");
    assert_eq!(store.status(id, 0).unwrap(), FragmentStatus::Missing);
    assert!(store.have(id).is_empty());
}

#[test]
fn split_writes_version_2_where_the_chunk_size_allows_and_version_1_elsewhere() {
    let bytes = generated_bytes(30_000, 5);
    let v2 = TestVideo::from_bytes("a.mp4", &bytes, 3, 4096);
    assert_eq!(v2.manifest.version, 2);
    let v1 = TestVideo::from_bytes("a.mp4", &bytes, 3, 3000);
    assert_eq!(v1.manifest.version, 1);
    // Both describe the same bytes: the fragment hashes agree.
    let hashes = |m: &Manifest| m.fragments.iter().map(|f| f.hash).collect::<Vec<_>>();
    assert_eq!(hashes(&v2.manifest), hashes(&v1.manifest));
}
