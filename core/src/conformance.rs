//! The transport conformance suite: the same behaviour tests for every transport.
//!
//! A transport crate runs it with
//! `fragnet_core::transport_conformance!(make_transports, "tcp://127.0.0.1:0");`
//! where `make_transports(&Identity) -> Transports` builds the transport(s) for one
//! node. Every test starts real nodes on real sockets and bounds every wait.
//! [`pubsub`] holds the same kind of suite for [`crate::pubsub::PubSub`] backends.

pub mod pubsub;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

use crate::addr::PeerAddr;
use crate::fetch::{
    FetchError, FetchObserver, FetchOptions, FetchReport, FetchRequest, Fetcher, PeerPool,
};
use crate::identity::Identity;
use crate::ids::{Digest, FragmentIndex, NodeId, VideoId};
use crate::manifest::Manifest;
use crate::node::ServeLimits;
use crate::protocol::{
    ErrorCode, PeerClient, ProtocolError, Request, Response, ServerSession, Timeouts, read_opening,
};
use crate::serve::ServeContext;
use crate::split::{SplitOptions, split};
use crate::store::FragmentStore;
use crate::transport::Transports;

/// Builds one node's transports from its identity.
pub type MakeTransports = fn(&Identity) -> Transports;

/// Awaits `f`, failing the test if it takes longer than `secs`.
pub async fn within<T>(secs: u64, what: &str, f: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(secs), f)
        .await
        .unwrap_or_else(|_| panic!("timed out after {secs}s: {what}"))
}

/// The sample clip shipped beside the project (`../shared/media`), or
/// `$SHARED_MEDIA_DIR`.
pub fn sample_media(name: &str) -> PathBuf {
    let dir = std::env::var_os("SHARED_MEDIA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../shared/media"));
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "sample media {} not found; set SHARED_MEDIA_DIR",
        p.display()
    );
    p
}

/// Deterministic pseudo-random bytes (not compressible, not repetitive).
pub fn generated_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// A video split into a directory.
pub struct TestVideo {
    /// Holds the files.
    pub dir: TempDir,
    /// The original file.
    pub input: PathBuf,
    /// The split directory.
    pub split_dir: PathBuf,
    /// Its manifest.
    pub manifest: Manifest,
}

impl TestVideo {
    /// Splits `bytes` (written as `name`) into `fragments` with `chunk_size` chunks.
    pub fn from_bytes(name: &str, bytes: &[u8], fragments: u32, chunk_size: u32) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join(name);
        std::fs::write(&input, bytes).unwrap();
        Self::split(dir, input, fragments, chunk_size)
    }

    /// Splits the sample clip into the seed's 10 fragments.
    pub fn sample() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let input = dir.path().join("sample-480p.mp4");
        std::fs::copy(sample_media("sample-480p.mp4"), &input).unwrap();
        Self::split(dir, input, 10, crate::manifest::DEFAULT_CHUNK_SIZE)
    }

    fn split(dir: TempDir, input: PathBuf, fragments: u32, chunk_size: u32) -> Self {
        let split_dir = dir.path().join("fragments");
        let manifest = split(
            &input,
            &split_dir,
            &SplitOptions {
                fragments,
                chunk_size,
                force: false,
            },
            &mut |_| {},
        )
        .unwrap();
        TestVideo {
            dir,
            input,
            split_dir,
            manifest,
        }
    }

    /// The video id.
    pub fn id(&self) -> VideoId {
        self.manifest.video_id()
    }
}

/// A real serving node on a real socket, with its own store and identity.
pub struct TestNode {
    /// Its store.
    pub store: Arc<FragmentStore>,
    /// Its identity.
    pub identity: Arc<Identity>,
    /// Its transports (for dialing out).
    pub transports: Transports,
    /// The address it listens on (the first, when several).
    pub addr: PeerAddr,
    /// Every address it listens on, in the order asked for.
    pub addrs: Vec<PeerAddr>,
    /// Its serving context (stats).
    pub ctx: Arc<ServeContext>,
    /// The running node (built by [`crate::node::Node::builder`], like every node).
    pub node: Option<crate::node::NodeHandle>,
    _dir: TempDir,
}

/// Options for [`TestNode::start`].
#[derive(Default, Clone)]
pub struct NodeOptions {
    /// Import these fragments of this split directory.
    pub seed: Option<(PathBuf, Option<Vec<FragmentIndex>>)>,
    /// Upload limit in bytes per second.
    pub upload: Option<u64>,
    /// Connection cap.
    pub max_connections: Option<usize>,
    /// Idle timeout for clients.
    pub idle: Option<Duration>,
    /// Shutdown grace (default 5 s).
    pub grace: Option<Duration>,
    /// More addresses to listen on besides the one given to [`TestNode::start`] (say,
    /// another transport's); `make` must provide their transports.
    pub also_listen: Vec<String>,
}

impl TestNode {
    /// Starts a node listening on `listen` (port 0).
    pub async fn start(make: MakeTransports, listen: &str, opts: NodeOptions) -> TestNode {
        Self::start_with(make, listen, opts, |b| b).await
    }

    /// [`TestNode::start`], with more of the node's configuration (discovery sources,
    /// services) set by `customize` on its builder.
    pub async fn start_with(
        make: MakeTransports,
        listen: &str,
        opts: NodeOptions,
        customize: impl FnOnce(crate::node::NodeBuilder) -> crate::node::NodeBuilder,
    ) -> TestNode {
        let dir = tempfile::tempdir().unwrap();
        let identity = Arc::new(Identity::load_or_create(dir.path()).unwrap());
        let (store, _) = FragmentStore::open(dir.path().join("store")).unwrap();
        let store = Arc::new(store);
        if let Some((src, only)) = &opts.seed {
            store.import_dir(src, only.as_deref()).unwrap();
        }
        let transports = make(&identity);
        let mut timeouts = Timeouts::default();
        if let Some(idle) = opts.idle {
            timeouts.idle = idle;
        }
        let listen: Vec<PeerAddr> = std::iter::once(listen)
            .chain(opts.also_listen.iter().map(String::as_str))
            .map(|a| PeerAddr::parse(a, "tcp").unwrap())
            .collect();
        let limits = ServeLimits {
            max_connections: opts.max_connections.unwrap_or(256),
            shutdown_grace: opts.grace.unwrap_or(Duration::from_secs(5)),
        };
        let builder =
            crate::node::Node::builder(identity.clone(), store.clone(), transports.clone())
                .name("test")
                .listen(listen)
                .upload_limit(opts.upload)
                .timeouts(timeouts)
                .serve_limits(limits);
        let node = within(
            10,
            "node start",
            customize(builder).spawn(&CancellationToken::new()),
        )
        .await
        .unwrap();
        let addrs: Vec<PeerAddr> = node
            .bound()
            .iter()
            .map(|a| PeerAddr {
                host: "127.0.0.1".into(),
                ..a.clone()
            })
            .collect();
        TestNode {
            store,
            identity,
            transports,
            addr: addrs[0].clone(),
            addrs,
            ctx: node.serve_context().clone(),
            node: Some(node),
            _dir: dir,
        }
    }

    /// The address with the node id in it (what a registry would hand out).
    pub fn addr_with_id(&self) -> PeerAddr {
        PeerAddr {
            node_id: Some(self.identity.node_id()),
            ..self.addr.clone()
        }
    }

    /// Fetches from `peers` into this node's store.
    pub async fn fetch(
        &self,
        peers: &[PeerAddr],
        video: Option<VideoId>,
        fragments: Option<Vec<FragmentIndex>>,
        opts: FetchOptions,
        obs: Arc<dyn FetchObserver>,
    ) -> Result<FetchReport, FetchError> {
        let pool = Arc::new(PeerPool::new(
            self.transports.clone(),
            Timeouts {
                io: Duration::from_secs(5),
                ..Timeouts::default()
            },
        ));
        let fetcher = Fetcher::new(self.store.clone(), pool, opts);
        fetcher
            .fetch(
                FetchRequest {
                    video,
                    fragments,
                    peers: peers.to_vec(),
                },
                obs,
                CancellationToken::new(),
            )
            .await
    }

    /// Opens a protocol session to `peer`.
    pub async fn client(&self, peer: &PeerAddr) -> Result<PeerClient, ProtocolError> {
        crate::protocol::connect(
            &self.transports,
            peer,
            Timeouts {
                io: Duration::from_secs(5),
                ..Timeouts::default()
            },
        )
        .await
    }

    /// Stops the node (grace period as configured).
    pub async fn stop(&mut self) {
        if let Some(h) = self.node.take() {
            within(30, "node shutdown", h.shutdown()).await;
        }
    }
}

/// Counts what a fetch reported.
#[derive(Default)]
pub struct Counter {
    /// Chunks received.
    pub chunks: AtomicU64,
    /// Fragments completed.
    pub fragments: AtomicU64,
    /// Peer failures, by address.
    pub failures: std::sync::Mutex<Vec<(PeerAddr, String)>>,
}

impl FetchObserver for Counter {
    fn chunk(&self, _: FragmentIndex, _: u32, _: u64, _: &PeerAddr) {
        self.chunks.fetch_add(1, Ordering::SeqCst);
    }
    fn fragment(&self, _: FragmentIndex, _: u64, _: &[PeerAddr]) {
        self.fragments.fetch_add(1, Ordering::SeqCst);
    }
    fn peer_failed(&self, peer: &PeerAddr, error: &str) {
        self.failures
            .lock()
            .unwrap()
            .push((peer.clone(), error.to_string()));
    }
}

/// Joins a node's copy of a video and returns the bytes.
pub fn joined_bytes(node: &TestNode, video: VideoId) -> Vec<u8> {
    let out = node._dir.path().join("joined.out");
    crate::split::join(&node.store.video_dir(video), &out, &mut |_| {}).unwrap();
    std::fs::read(out).unwrap()
}

// ---------------------------------------------------------------------------------
// The cases.

/// Fails the test unless `r` is a typed refusal with `code`.
fn assert_refused<T: std::fmt::Debug>(r: Result<T, ProtocolError>, code: ErrorCode) {
    match r {
        Err(ProtocolError::Remote { code: got, .. }) if got == code => {}
        other => panic!("expected a {code:?} refusal, got {other:?}"),
    }
}

/// Hello, listing, manifest, ranges, and error frames that leave the stream usable.
pub async fn session_basics(make: MakeTransports, listen: &str) {
    let v = TestVideo::from_bytes("v.mp4", &generated_bytes(300_000, 1), 10, 8192);
    let server = TestNode::start(
        make,
        listen,
        NodeOptions {
            seed: Some((v.split_dir.clone(), None)),
            ..Default::default()
        },
    )
    .await;
    let client = TestNode::start(make, listen, NodeOptions::default()).await;
    let mut s = within(10, "connect", client.client(&server.addr))
        .await
        .unwrap();
    assert_eq!(s.remote_node_id, server.identity.node_id());
    let vids = within(5, "videos", s.videos()).await.unwrap();
    assert_eq!(vids.len(), 1);
    assert_eq!(vids[0].video, v.id());
    assert_eq!(vids[0].have, (0..10).collect::<Vec<_>>());
    let m = within(5, "manifest", s.manifest(v.id())).await.unwrap();
    assert_eq!(m, v.manifest);
    let original = std::fs::read(&v.input).unwrap();
    let f3 = &v.manifest.fragments[3];
    let got = within(5, "get", s.get(v.id(), 3, 100, 5000)).await.unwrap();
    assert_eq!(
        &got[..],
        &original[f3.offset as usize + 100..f3.offset as usize + 5100]
    );

    assert_refused(
        within(5, "get past end", s.get(v.id(), 3, f3.size - 10, 20)).await,
        ErrorCode::NotAvailable,
    );
    assert_refused(
        within(5, "get index 99", s.get(v.id(), 99, 0, 10)).await,
        ErrorCode::NoSuchFragment,
    );
    let unknown = VideoId(Digest::of(b"nothing"));
    assert_refused(
        within(5, "unknown video", s.manifest(unknown)).await,
        ErrorCode::UnknownVideo,
    );
    // After three refusals the same session still works.
    let again = within(5, "get again", s.get(v.id(), 0, 0, 10))
        .await
        .unwrap();
    assert_eq!(&again[..], &original[..10]);
}

/// A watch reports the verified chunks a node holds, including chunks of a fragment
/// still in `.part`, then each chunk as it verifies; those chunks are served at once.
pub async fn watch_reports_chunks_and_part_files_serve_them(make: MakeTransports, listen: &str) {
    let v = TestVideo::from_bytes("v.mp4", &generated_bytes(80_000, 7), 4, 4096);
    let original = std::fs::read(&v.input).unwrap();
    // The server holds fragment 0 and chunk 2 of fragment 1 (in a .part file).
    let server = TestNode::start(
        make,
        listen,
        NodeOptions {
            seed: Some((v.split_dir.clone(), Some(vec![0]))),
            ..Default::default()
        },
    )
    .await;
    let chunk = |index: FragmentIndex, c: u32| {
        let (off, len) = v.manifest.chunk_range(index, c).unwrap();
        let start = (v.manifest.fragments[index as usize].offset + off) as usize;
        Bytes::copy_from_slice(&original[start..start + len as usize])
    };
    server
        .store
        .write_chunk(v.id(), 1, 2, chunk(1, 2))
        .await
        .unwrap();
    let client = TestNode::start(make, listen, NodeOptions::default()).await;
    let s = within(10, "connect", client.client(&server.addr))
        .await
        .unwrap();
    let (bits, mut updates) = within(5, "watch", s.watch(v.id())).await.unwrap();
    let map = crate::avail::ChunkMap::of(&v.manifest);
    let per_fragment = v.manifest.fragments[0].chunks.len() as u32;
    let mut want: Vec<(FragmentIndex, u32)> = (0..per_fragment).map(|c| (0, c)).collect();
    want.push((1, 2));
    assert_eq!(
        map.items(&bits),
        want,
        "fragment 0 and the one chunk of fragment 1"
    );
    // A chunk verified now is reported on the open watch.
    server
        .store
        .write_chunk(v.id(), 1, 4, chunk(1, 4))
        .await
        .unwrap();
    let got = within(15, "an update", async {
        loop {
            let u = updates.next().await.unwrap();
            if !u.is_empty() {
                return u;
            }
        }
    })
    .await;
    assert_eq!(got, vec![(1, 4)]);
    // Both chunks of the .part file are served; the rest of the fragment is not.
    let mut s = within(10, "connect", client.client(&server.addr))
        .await
        .unwrap();
    let (off, len) = v.manifest.chunk_range(1, 4).unwrap();
    let bytes = within(5, "get from .part", s.get(v.id(), 1, off, len))
        .await
        .unwrap();
    assert_eq!(bytes, chunk(1, 4));
    assert_refused(
        within(5, "get unverified", s.get(v.id(), 1, 0, 10)).await,
        ErrorCode::NotAvailable,
    );
    // A video the server does not know: a typed refusal, not a watch.
    let s = within(10, "connect", client.client(&server.addr))
        .await
        .unwrap();
    assert_refused(
        within(5, "watch unknown", s.watch(VideoId(Digest::of(b"none"))))
            .await
            .map(|_| ()),
        ErrorCode::UnknownVideo,
    );
}

/// A leecher that got chunks of a fragment seconds ago (the fragment still in `.part`)
/// serves them to a third node, which learns of them through its watch: the third node
/// completes the fragment from the leecher alone, with the seeder gone.
pub async fn a_leecher_relays_chunks_it_just_got(make: MakeTransports, listen: &str) {
    let v = TestVideo::from_bytes("v.mp4", &generated_bytes(200_000, 9), 2, 4096);
    let mut seeder = TestNode::start(
        make,
        listen,
        NodeOptions {
            seed: Some((v.split_dir.clone(), None)),
            ..Default::default()
        },
    )
    .await;
    let leecher = TestNode::start(make, listen, NodeOptions::default()).await;
    // The leecher takes every chunk of fragment 1 but its last: the fragment stays a
    // .part file, announced nowhere as a whole fragment.
    let n = v.manifest.fragments[1].chunks.len() as u32;
    let mut s = within(10, "connect", leecher.client(&seeder.addr))
        .await
        .unwrap();
    leecher.store.add_manifest(&v.manifest).unwrap();
    for c in 0..n - 1 {
        let (off, len) = v.manifest.chunk_range(1, c).unwrap();
        let data = within(5, "get", s.get(v.id(), 1, off, len)).await.unwrap();
        leecher.store.write_chunk(v.id(), 1, c, data).await.unwrap();
    }
    assert!(
        leecher.store.have(v.id()).is_empty(),
        "no whole fragment yet"
    );
    drop(s);
    // The seeder goes; a third node that knows only the leecher downloads fragment 1.
    seeder.stop().await;
    let third = TestNode::start(make, listen, NodeOptions::default()).await;
    let pool = Arc::new(PeerPool::new(third.transports.clone(), Timeouts::default()));
    let fetcher = Fetcher::new(third.store.clone(), pool.clone(), FetchOptions::default());
    third.store.add_manifest(&v.manifest).unwrap();
    let discovery = Arc::new(crate::discovery::CombinedDiscovery::of_peers(
        vec![leecher.addr.clone()],
        pool,
    ));
    let dl = within(
        10,
        "start",
        fetcher.start(
            v.id(),
            Some(vec![1]),
            &discovery,
            &[],
            Arc::new(crate::fetch::Quiet),
            CancellationToken::new(),
        ),
    )
    .await
    .unwrap();
    // The leecher's last chunk arrives later (from outside): the watch tells the third
    // node, which then completes the fragment.
    let (off, len) = v.manifest.chunk_range(1, n - 1).unwrap();
    let start = (v.manifest.fragments[1].offset + off) as usize;
    let original = std::fs::read(&v.input).unwrap();
    leecher
        .store
        .write_chunk(
            v.id(),
            1,
            n - 1,
            Bytes::copy_from_slice(&original[start..start + len as usize]),
        )
        .await
        .unwrap();
    let report = within(30, "download from the leecher", dl.finish())
        .await
        .unwrap();
    assert_eq!(report.fetched.len(), 1);
    assert!(
        report.fetched[0]
            .1
            .iter()
            .all(|a| a.port == leecher.addr.port),
        "every chunk came from the leecher: {:?}",
        report.fetched
    );
    assert_eq!(
        third.store.status(v.id(), 1).unwrap(),
        crate::store::FragmentStatus::Complete
    );
}

/// A version the server does not speak gets a typed refusal.
pub async fn unsupported_version(make: MakeTransports, listen: &str) {
    let server = TestNode::start(make, listen, NodeOptions::default()).await;
    let client = TestNode::start(make, listen, NodeOptions::default()).await;
    let conn = within(10, "dial", client.transports.dial(&server.addr))
        .await
        .unwrap();
    let stream = within(5, "open", conn.open_stream()).await.unwrap();
    let hello = PeerClient::handshake_with_version(stream, Timeouts::default(), 99);
    assert_refused(
        within(5, "hello", hello).await,
        ErrorCode::UnsupportedVersion,
    );
}

/// Malformed frames get an error frame; a frame claiming 4 GB is refused without
/// allocating it; the server keeps serving others.
pub async fn malformed_and_oversized_frames(make: MakeTransports, listen: &str) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let v = TestVideo::from_bytes("v.bin", &generated_bytes(50_000, 2), 10, 4096);
    let server = TestNode::start(
        make,
        listen,
        NodeOptions {
            seed: Some((v.split_dir.clone(), None)),
            ..Default::default()
        },
    )
    .await;
    let client = TestNode::start(make, listen, NodeOptions::default()).await;
    let conn = within(10, "dial", client.transports.dial(&server.addr))
        .await
        .unwrap();
    let mut stream = within(5, "open", conn.open_stream()).await.unwrap();
    let mut hello = crate::protocol::MAGIC.to_vec();
    hello.extend_from_slice(&crate::protocol::PROTOCOL_VERSION.to_be_bytes());
    stream.send.write_all(&hello).await.unwrap();
    let mut sess = ServerSession::new(stream); // reuse the framing from the client side
    let hello_frame = within(5, "hello", futures::StreamExt::next(&mut sess.reader))
        .await
        .unwrap()
        .unwrap();
    assert!(matches!(
        serde_json::from_slice(&hello_frame).unwrap(),
        Response::Hello { .. }
    ));
    for bad in [
        &b"not json"[..],
        br#"{"op":"get","video":"../../etc/passwd","index":0,"offset":0,"length":1}"#,
        br#"{"op":"explode"}"#,
    ] {
        within(
            5,
            "send",
            futures::SinkExt::send(&mut sess.writer, Bytes::copy_from_slice(bad)),
        )
        .await
        .unwrap();
        let frame = within(5, "error frame", futures::StreamExt::next(&mut sess.reader))
            .await
            .unwrap()
            .unwrap();
        let resp: Response = serde_json::from_slice(&frame).unwrap();
        assert!(
            matches!(
                resp,
                Response::Error {
                    code: ErrorCode::BadRequest,
                    ..
                }
            ),
            "{resp:?}"
        );
    }
    // A length prefix claiming 4 GB: the server must close the stream, not allocate.
    let raw = sess.writer.get_mut();
    raw.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
    raw.write_all(b"xxxx").await.unwrap();
    let mut rest = Vec::new();
    // `within` fails the test unless the server ends the stream (EOF or reset) promptly.
    let _ = within(
        10,
        "server closes the stream",
        sess.reader.get_mut().read_to_end(&mut rest),
    )
    .await;
    assert!(
        rest.is_empty(),
        "no response to an oversized frame: {rest:?}"
    );
    // Others are still served.
    let mut s = within(10, "connect", client.client(&server.addr))
        .await
        .unwrap();
    assert_eq!(within(5, "videos", s.videos()).await.unwrap().len(), 1);
}

/// The original demo: A holds 0–4, B holds 5–9; each fetches the rest from the other;
/// both end with all 10 and the joined files equal the input byte for byte.
pub async fn original_scenario(make: MakeTransports, listen: &str) {
    let v = TestVideo::sample();
    let a = TestNode::start(
        make,
        listen,
        NodeOptions {
            seed: Some((v.split_dir.clone(), Some((0..5).collect()))),
            ..Default::default()
        },
    )
    .await;
    let b = TestNode::start(
        make,
        listen,
        NodeOptions {
            seed: Some((v.split_dir.clone(), Some((5..10).collect()))),
            ..Default::default()
        },
    )
    .await;
    let (ra, rb) = within(60, "both fetch", async {
        tokio::join!(
            a.fetch(
                std::slice::from_ref(&b.addr),
                None,
                None,
                FetchOptions::default(),
                Arc::new(Counter::default())
            ),
            b.fetch(
                std::slice::from_ref(&a.addr),
                None,
                None,
                FetchOptions::default(),
                Arc::new(Counter::default())
            ),
        )
    })
    .await;
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(
        ra.fetched.iter().map(|f| f.0).collect::<Vec<_>>(),
        (5..10).collect::<Vec<_>>()
    );
    assert_eq!(
        rb.fetched.iter().map(|f| f.0).collect::<Vec<_>>(),
        (0..5).collect::<Vec<_>>()
    );
    assert_eq!(
        ra.fetched[0].1,
        vec![b.addr.clone()],
        "fragments came from B"
    );
    let original = std::fs::read(&v.input).unwrap();
    assert_eq!(a.store.have(v.id()).len(), 10);
    assert_eq!(b.store.have(v.id()).len(), 10);
    assert!(
        joined_bytes(&a, v.id()) == original,
        "A's copy differs from the input"
    );
    assert!(
        joined_bytes(&b, v.id()) == original,
        "B's copy differs from the input"
    );
}

/// Serves lies: claims every fragment, sends the right manifest and wrong bytes.
pub async fn spawn_liar(
    make: MakeTransports,
    listen: &str,
    manifest: Manifest,
) -> (PeerAddr, CancellationToken) {
    let identity = Identity::generate();
    let transports = make(&identity);
    let node_id = identity.node_id();
    let listener = transports
        .listen(&PeerAddr::parse(listen, "tcp").unwrap())
        .await
        .unwrap();
    let mut addr = listener.local_addr();
    addr.host = "127.0.0.1".into();
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        let _identity = identity;
        loop {
            let conn = tokio::select! { _ = stop.cancelled() => return, c = listener.accept() => match c { Ok(c) => c, Err(_) => continue } };
            let manifest = manifest.clone();
            tokio::spawn(async move {
                while let Ok(Some(mut stream)) = conn.accept_stream().await {
                    let manifest = manifest.clone();
                    tokio::spawn(async move {
                        let _ = lie(&mut stream, node_id, manifest).await;
                        drop(stream);
                    });
                }
            });
        }
    });
    (addr, cancel)
}

async fn lie(
    stream: &mut crate::transport::BiStream,
    node_id: NodeId,
    manifest: Manifest,
) -> Result<(), ProtocolError> {
    use tokio::io::AsyncWriteExt;
    let t = Timeouts::default();
    read_opening(&mut stream.recv, &t).await?;
    let taken = std::mem::replace(
        stream,
        crate::transport::BiStream {
            send: Box::pin(tokio::io::sink()),
            recv: Box::pin(tokio::io::empty()),
        },
    );
    let mut s = ServerSession::new(taken);
    s.send(
        &Response::Hello {
            version: crate::protocol::PROTOCOL_VERSION,
            node_id,
            name: "liar".into(),
        },
        &t,
    )
    .await?;
    let id = manifest.video_id();
    while let Some(req) = s.next_request(&t).await? {
        match req {
            Ok(Request::Videos) => {
                let videos = vec![crate::protocol::VideoSummary {
                    video: id,
                    name: manifest.name.clone(),
                    fragment_count: manifest.fragment_count,
                    have: (0..manifest.fragment_count).collect(),
                }];
                s.send(&Response::Videos { videos }, &t).await?
            }
            Ok(Request::Have { video }) => {
                s.send(
                    &Response::Have {
                        video,
                        fragments: (0..manifest.fragment_count).collect(),
                    },
                    &t,
                )
                .await?
            }
            Ok(Request::Manifest { .. }) => {
                let body = manifest.canonical_bytes();
                s.send(
                    &Response::Manifest {
                        length: body.len() as u64,
                    },
                    &t,
                )
                .await?;
                s.writer.get_mut().write_all(&body).await?;
            }
            Ok(Request::Get { length, .. }) => {
                s.send(&Response::Data { length }, &t).await?;
                s.writer
                    .get_mut()
                    .write_all(&vec![0x5A; length as usize])
                    .await?;
            }
            Ok(Request::Watch { .. }) => {
                s.send(
                    &Response::Error {
                        code: ErrorCode::BadRequest,
                        message: "no watches here".into(),
                    },
                    &t,
                )
                .await?
            }
            Ok(Request::Peers { video }) => {
                s.send(
                    &Response::Peers {
                        video,
                        peers: Vec::new(),
                    },
                    &t,
                )
                .await?
            }
            Err(_) => return Ok(()),
        }
    }
    Ok(())
}

/// A peer serving corrupted bytes is caught by verification, banned, and every
/// fragment comes from the honest peer.
pub async fn lying_peer_is_caught(make: MakeTransports, listen: &str) {
    let v = TestVideo::from_bytes("v.bin", &generated_bytes(600_000, 3), 10, 16384);
    let (liar, stop, honest) = liar_and_honest(make, listen, &v).await;
    let me = TestNode::start(make, listen, NodeOptions::default()).await;
    let obs = Arc::new(Counter::default());
    // The liar first in the list: it is asked early and must be caught.
    let report = within(
        60,
        "fetch",
        me.fetch(
            &[liar.clone(), honest.addr.clone()],
            Some(v.id()),
            None,
            FetchOptions::default(),
            obs.clone(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(me.store.have(v.id()).len(), 10);
    assert!(joined_bytes(&me, v.id()) == std::fs::read(&v.input).unwrap());
    let failures = obs.failures.lock().unwrap().clone();
    assert!(
        failures
            .iter()
            .any(|(p, e)| *p == liar && e.contains("failed verification")),
        "liar not reported: {failures:?}"
    );
    assert!(
        report
            .fetched
            .iter()
            .all(|(_, from)| from == std::slice::from_ref(&honest.addr)),
        "{:?}",
        report.fetched
    );
    stop.cancel();
}

/// A peer that lies about `v` and one that serves it honestly.
async fn liar_and_honest(
    make: MakeTransports,
    listen: &str,
    v: &TestVideo,
) -> (PeerAddr, CancellationToken, TestNode) {
    let (liar, stop) = spawn_liar(make, listen, v.manifest.clone()).await;
    let honest = TestNode::start(
        make,
        listen,
        NodeOptions {
            seed: Some((v.split_dir.clone(), None)),
            ..Default::default()
        },
    )
    .await;
    (liar, stop, honest)
}

/// A peer caught sending bad data stays banned for the node's later downloads: they
/// never ask it again.
pub async fn a_ban_lasts_across_downloads(make: MakeTransports, listen: &str) {
    let v = TestVideo::from_bytes("v.bin", &generated_bytes(600_000, 4), 10, 16384);
    let (liar, stop, honest) = liar_and_honest(make, listen, &v).await;
    let peers = vec![liar.clone(), honest.addr.clone()];
    let me = TestNode::start_with(make, listen, NodeOptions::default(), move |b| {
        b.peers(peers)
    })
    .await;
    let engine = me.node.as_ref().unwrap().engine().clone();
    let video = v.id();
    let download = |fragments: std::ops::Range<u32>, obs: Arc<Counter>| {
        let engine = engine.clone();
        async move {
            within(
                60,
                "a download",
                engine.fetch(
                    Some(video),
                    Some(fragments.collect()),
                    obs,
                    &CancellationToken::new(),
                ),
            )
            .await
            .unwrap()
        }
    };
    let first = Arc::new(Counter::default());
    download(0..5, first.clone()).await;
    assert!(
        first
            .failures
            .lock()
            .unwrap()
            .iter()
            .any(|(p, e)| *p == liar && e.contains("failed verification")),
        "the liar is caught in the first download"
    );
    let second = Arc::new(Counter::default());
    let report = download(5..10, second.clone()).await;
    assert!(
        second
            .failures
            .lock()
            .unwrap()
            .iter()
            .all(|(p, _)| *p != liar),
        "the liar was asked again: {:?}",
        second.failures.lock().unwrap()
    );
    assert!(
        report
            .fetched
            .iter()
            .all(|(_, from)| from == std::slice::from_ref(&honest.addr)),
        "{:?}",
        report.fetched
    );
    assert!(joined_bytes(&me, v.id()) == std::fs::read(&v.input).unwrap());
    stop.cancel();
}

/// A peer that dies mid-transfer: the fetch fails with what is missing, keeps the
/// verified chunks, and a restarted fetch from another peer resumes from them.
pub async fn dying_peer_then_resume(make: MakeTransports, listen: &str) {
    let size = 2_000_000usize;
    let v = TestVideo::from_bytes("v.bin", &generated_bytes(size, 4), 4, 16384);
    let mut dying = TestNode::start(
        make,
        listen,
        NodeOptions {
            seed: Some((v.split_dir.clone(), None)),
            upload: Some(1_000_000),
            grace: Some(Duration::ZERO),
            ..Default::default()
        },
    )
    .await;
    let me = TestNode::start(make, listen, NodeOptions::default()).await;
    let obs = Arc::new(Counter::default());
    let opts = FetchOptions {
        max_rounds: 1,
        ..FetchOptions::default()
    };
    let dying_addr = dying.addr.clone();
    let fetch = me.fetch(
        std::slice::from_ref(&dying_addr),
        Some(v.id()),
        None,
        opts,
        obs.clone(),
    );
    let kill = async {
        while obs.chunks.load(Ordering::SeqCst) < 20 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        dying.stop().await;
    };
    let (result, ()) = within(60, "fetch from a dying peer", async {
        tokio::join!(fetch, kill)
    })
    .await;
    let err = result.expect_err("the only peer died mid-transfer");
    assert!(matches!(err, FetchError::Incomplete { .. }), "{err}");
    let before = obs.chunks.load(Ordering::SeqCst);
    assert!(
        before >= 20 && (before as usize) < size / 16384,
        "got {before} chunks before the peer died"
    );

    // Reopen the store from disk, as a restarted process would.
    let (reopened, scan) = FragmentStore::open(me.store.root()).unwrap();
    assert!(
        scan.partial_chunks as u64 + scan.complete as u64 * 31 >= before,
        "{scan:?} vs {before} chunks"
    );
    let saved: usize = (0..4)
        .map(|i| {
            reopened
                .verified_chunks(v.id(), i)
                .unwrap()
                .iter()
                .filter(|b| **b)
                .count()
        })
        .sum();
    assert!(
        saved as u64 >= before,
        "verified chunks survive a reopen ({saved} < {before})"
    );

    let helper = TestNode::start(
        make,
        listen,
        NodeOptions {
            seed: Some((v.split_dir.clone(), None)),
            ..Default::default()
        },
    )
    .await;
    let report = within(
        60,
        "resumed fetch",
        me.fetch(
            std::slice::from_ref(&helper.addr),
            Some(v.id()),
            None,
            FetchOptions::default(),
            Arc::new(Counter::default()),
        ),
    )
    .await
    .unwrap();
    let resumed_bytes =
        report.resumed_chunks * 16384 + report.already_complete.len() as u64 * 500_000;
    assert!(
        report.resumed_chunks + report.already_complete.len() as u64 > 0,
        "nothing resumed: {report:?}"
    );
    assert_eq!(
        report.bytes + resumed_bytes,
        size as u64,
        "only what was missing is fetched again"
    );
    assert_eq!(
        helper.ctx.stats.bytes_sent.load(Ordering::SeqCst),
        report.bytes
    );
    assert!(joined_bytes(&me, v.id()) == std::fs::read(&v.input).unwrap());
}

/// Eight nodes fetch the same video from one seeder at once.
pub async fn many_concurrent_fetches(make: MakeTransports, listen: &str) {
    let v = TestVideo::from_bytes("v.bin", &generated_bytes(1_500_000, 5), 10, 32768);
    let seeder = TestNode::start(
        make,
        listen,
        NodeOptions {
            seed: Some((v.split_dir.clone(), None)),
            ..Default::default()
        },
    )
    .await;
    let mut nodes = Vec::new();
    for _ in 0..8 {
        nodes.push(TestNode::start(make, listen, NodeOptions::default()).await);
    }
    let fetches = nodes.iter().map(|n| {
        n.fetch(
            std::slice::from_ref(&seeder.addr),
            None,
            None,
            FetchOptions::default(),
            Arc::new(Counter::default()),
        )
    });
    let results = within(
        90,
        "8 concurrent fetches",
        futures::future::join_all(fetches),
    )
    .await;
    let original = std::fs::read(&v.input).unwrap();
    for (n, r) in nodes.iter().zip(results) {
        r.unwrap();
        assert!(joined_bytes(n, v.id()) == original);
    }
}

/// Over the connection cap, a new connection is refused rather than queued forever,
/// and served once a slot frees up.
pub async fn connection_limit(make: MakeTransports, listen: &str) {
    let v = TestVideo::from_bytes("v.bin", &generated_bytes(20_000, 6), 2, 4096);
    let server = TestNode::start(
        make,
        listen,
        NodeOptions {
            seed: Some((v.split_dir.clone(), None)),
            max_connections: Some(1),
            ..Default::default()
        },
    )
    .await;
    let c1 = TestNode::start(make, listen, NodeOptions::default()).await;
    let c2 = TestNode::start(make, listen, NodeOptions::default()).await;
    let mut first = within(10, "first client", c1.client(&server.addr))
        .await
        .unwrap();
    assert!(within(5, "videos", first.videos()).await.is_ok());
    let second = within(15, "second client refused", c2.client(&server.addr)).await;
    assert!(
        second.is_err(),
        "a second connection over the cap of 1 must be refused"
    );
    drop(first);
    c1.transports.get(&server.addr.scheme).unwrap(); // keep c1 alive until here
    drop(c1);
    // The slot frees once the first connection is gone.
    let mut ok = None;
    for _ in 0..50 {
        if let Ok(mut s) = c2.client(&server.addr).await
            && s.videos().await.is_ok()
        {
            ok = Some(());
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(ok.is_some(), "served again once the first client left");
}

/// `client` asks `server` for every fragment of `v` at once, each on a connection of
/// its own.
async fn whole_fragments_at_once(
    client: &TestNode,
    server: &TestNode,
    v: &TestVideo,
    t: Timeouts,
) -> Vec<Result<Bytes, ProtocolError>> {
    let gets = (0..v.manifest.fragment_count).map(|i| {
        let (transports, addr, video) = (client.transports.clone(), server.addr.clone(), v.id());
        let size = v.manifest.fragments[i as usize].size;
        async move {
            let mut s = crate::protocol::connect(&transports, &addr, t).await?;
            s.get(video, i, 0, size).await
        }
    });
    futures::future::join_all(gets).await
}

/// Under a low upload limit shared by many responses, every response keeps making
/// progress: none waits out the others' bodies and hits the client's no-progress
/// timeout (which once made rate-limited swarms retry forever).
pub async fn upload_limit_keeps_every_response_moving(make: MakeTransports, listen: &str) {
    let v = TestVideo::from_bytes("v.bin", &generated_bytes(200_000, 7), 12, 16384);
    // No upload slots here: every response is served at once and shares the limit.
    let server = TestNode::start_with(
        make,
        listen,
        NodeOptions {
            seed: Some((v.split_dir.clone(), None)),
            upload: Some(40_000),
            ..Default::default()
        },
        |b| b.upload_slots(None),
    )
    .await;
    let client = TestNode::start(make, listen, NodeOptions::default()).await;
    // 12 whole fragments at once, 200 KB at 40 KB/s: about 5 s in all, while a client
    // gives up after 2 s without a byte.
    let t = Timeouts {
        io: Duration::from_secs(2),
        ..Timeouts::default()
    };
    let results = within(
        60,
        "12 rate-limited gets",
        whole_fragments_at_once(&client, &server, &v, t),
    )
    .await;
    let original = std::fs::read(&v.input).unwrap();
    for (i, r) in results.into_iter().enumerate() {
        let f = &v.manifest.fragments[i];
        let got = r.unwrap_or_else(|e| panic!("fragment {i} stalled under the upload limit: {e}"));
        assert!(
            got[..] == original[f.offset as usize..(f.offset + f.size) as usize],
            "fragment {i} differs"
        );
    }
}

/// With upload slots, requests beyond them are told to ask elsewhere (`choked`) well
/// before a client's no-progress timeout, and those served arrive whole.
pub async fn requests_beyond_the_upload_slots_are_choked_not_stalled(
    make: MakeTransports,
    listen: &str,
) {
    let v = TestVideo::from_bytes("v.bin", &generated_bytes(200_000, 8), 12, 16384);
    let server = TestNode::start_with(
        make,
        listen,
        NodeOptions {
            seed: Some((v.split_dir.clone(), None)),
            upload: Some(40_000),
            ..Default::default()
        },
        |b| b.upload_slots(Some(2)).super_seed(false),
    )
    .await;
    let client = TestNode::start(make, listen, NodeOptions::default()).await;
    let t = Timeouts {
        io: Duration::from_secs(3),
        ..Timeouts::default()
    };
    let results = within(
        60,
        "12 gets, 2 slots",
        whole_fragments_at_once(&client, &server, &v, t),
    )
    .await;
    let original = std::fs::read(&v.input).unwrap();
    let mut served = 0;
    for (i, r) in results.into_iter().enumerate() {
        let f = &v.manifest.fragments[i];
        match r {
            Ok(got) => {
                served += 1;
                assert!(got[..] == original[f.offset as usize..(f.offset + f.size) as usize]);
            }
            Err(ProtocolError::Remote {
                code: ErrorCode::Choked,
                ..
            }) => {}
            Err(e) => panic!("fragment {i}: neither served nor choked: {e}"),
        }
    }
    assert!(served >= 2, "the slots' requests are served ({served})");
    assert!(served < 12, "not all 12 at once with 2 slots");
}

/// A client that says hello and then nothing is disconnected after the idle timeout,
/// and a server that is not told otherwise keeps the session open.
pub async fn idle_client_times_out(make: MakeTransports, listen: &str) {
    let server = TestNode::start(
        make,
        listen,
        NodeOptions {
            idle: Some(Duration::from_millis(300)),
            ..Default::default()
        },
    )
    .await;
    let client = TestNode::start(make, listen, NodeOptions::default()).await;
    let mut s = within(10, "connect", client.client(&server.addr))
        .await
        .unwrap();
    assert!(
        within(5, "videos", s.videos()).await.is_ok(),
        "an active session is served"
    );
    // Silent for four times the idle timeout: that is what is tested.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let after = within(10, "request after idling", s.videos()).await;
    assert!(
        after.is_err(),
        "the server should have closed the idle session"
    );
}

/// A download's priorities change while it runs: bytes asked for before the workers
/// start come first in the order asked, ahead of the first and last fragment, and
/// those ahead of the rest; a fragment asked for mid-way overtakes the background order.
pub async fn download_priorities(make: MakeTransports, listen: &str) {
    use crate::store::StoreEvent;
    let v = TestVideo::from_bytes("v.bin", &generated_bytes(640_000, 11), 10, 8000);
    let seeder = TestNode::start(
        make,
        listen,
        NodeOptions {
            seed: Some((v.split_dir.clone(), None)),
            upload: Some(800_000),
            ..Default::default()
        },
    )
    .await;
    let me = TestNode::start(make, listen, NodeOptions::default()).await;
    let fetcher = Fetcher::new(
        me.store.clone(),
        Arc::new(PeerPool::new(me.transports.clone(), Timeouts::default())),
        FetchOptions::default(),
    );
    let mut events = me.store.subscribe();
    let m = &v.manifest;
    let frag = |i: usize| (m.fragments[i].offset, m.fragments[i].size);
    let req = FetchRequest {
        video: Some(v.id()),
        fragments: None,
        peers: vec![seeder.addr.clone()],
    };
    let dl = within(
        10,
        "start",
        fetcher.start_with(
            req,
            &[frag(5), frag(7)],
            Arc::new(Counter::default()),
            CancellationToken::new(),
        ),
    )
    .await
    .unwrap();
    assert_eq!(dl.state(), crate::fetch::DownloadState::Running);
    let mut chunks = Vec::new();
    let mut completed = Vec::new();
    within(60, "download with priorities", async {
        while completed.len() < 10 {
            match events.recv().await.unwrap() {
                StoreEvent::ChunkVerified { index, .. } => {
                    chunks.push(index);
                    // Mid-way through the background, fragment 8 is asked for.
                    if chunks.len() == 40 {
                        assert!(dl.want_range(frag(8).0, frag(8).1) > 0);
                        assert!(dl.urgent_chunks() > 0);
                    }
                }
                StoreEvent::FragmentComplete { index, .. } => completed.push(index),
                StoreEvent::VideoAdded(_) | StoreEvent::VideoRemoved(_) => {}
            }
        }
    })
    .await;
    assert_eq!(dl.ended().await, crate::fetch::DownloadState::Complete);
    let pos = |f: u32| chunks.iter().position(|&i| i == f).unwrap();
    let last = |f: u32| chunks.iter().rposition(|&i| i == f).unwrap();
    assert_eq!(
        chunks[0], 5,
        "the first bytes asked for come first: {chunks:?}"
    );
    assert!(
        last(5).max(last(7)) < pos(0).min(pos(9)),
        "urgent before the first and last fragment: {chunks:?}"
    );
    // Background chunks start only once the first and last fragments' have: at most
    // the requests one peer gets at once (per_peer, 4) overlap their end.
    let early_end = last(0).max(last(9));
    let overlap = chunks[..early_end]
        .iter()
        .filter(|&&i| ![0, 5, 7, 9].contains(&i))
        .count();
    assert!(
        overlap < FetchOptions::default().per_peer,
        "first and last fragment before the rest: {chunks:?}"
    );
    let (p6, p8) = (
        completed.iter().position(|&i| i == 6).unwrap(),
        completed.iter().position(|&i| i == 8).unwrap(),
    );
    assert!(
        p8 < p6,
        "fragment 8, asked for mid-way, completes before fragment 6: {completed:?}"
    );
    let report = within(10, "report", dl.finish()).await.unwrap();
    assert_eq!(report.fetched.len(), 10);
    assert!(joined_bytes(&me, v.id()) == std::fs::read(&v.input).unwrap());
}

/// Generates one `#[tokio::test]` per conformance case for a transport.
#[macro_export]
macro_rules! transport_conformance {
    ($make:expr, $listen:expr) => {
        mod conformance {
            use super::*;
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        $crate::conformance::$name($make, $listen).await
                    }
                };
            }
            case!(session_basics);
            case!(unsupported_version);
            case!(malformed_and_oversized_frames);
            case!(original_scenario);
            case!(lying_peer_is_caught);
            case!(a_ban_lasts_across_downloads);
            case!(dying_peer_then_resume);
            case!(many_concurrent_fetches);
            case!(connection_limit);
            case!(idle_client_times_out);
            case!(download_priorities);
            case!(upload_limit_keeps_every_response_moving);
            case!(requests_beyond_the_upload_slots_are_choked_not_stalled);
            case!(watch_reports_chunks_and_part_files_serve_them);
            case!(a_leecher_relays_chunks_it_just_got);
        }
    };
}
