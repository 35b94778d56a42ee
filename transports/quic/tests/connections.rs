//! Connection behaviour over QUIC: one connection carries many streams, streams beyond
//! the peer's limit wait and complete, idle connections close, and a lost connection is
//! dialed again (server restarted gracefully, or killed and restarted).
//!
//! Real endpoints on 127.0.0.1; the killed peer is a child process (this test binary run
//! with `--ignored --exact child_node`), so the kill is a real SIGKILL.

mod common;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use common::{echo_once, listen, quic, quic_with, serve_echo};
use fragnet_core::conformance::{TestVideo, generated_bytes, within};
use fragnet_core::fetch::{FetchOptions, FetchRequest, Fetcher, PeerPool, Quiet};
use fragnet_core::identity::Identity;
use fragnet_core::node::{Node, NodeError, NodeHandle, ServeLimits};
use fragnet_core::protocol::{PeerClient, Timeouts};
use fragnet_core::transport::{Connection, Transport};
use fragnet_core::{FragmentStore, PeerAddr, Transports};
use fragnet_quic::{Config, QuicTransport};
use tokio_util::sync::CancellationToken;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_beyond_the_limit_wait_and_all_complete_on_one_connection() {
    let server = serve_echo(
        listen(
            &quic_with(
                &Identity::generate(),
                Config::default().max_concurrent_streams(2),
            ),
            "quic://127.0.0.1:0",
        )
        .await,
        Duration::from_millis(50),
    );
    let client = quic(&Identity::generate());
    let conn: Arc<dyn Connection> =
        Arc::from(within(10, "dial", client.dial(&server.addr)).await.unwrap());
    let requests = (0..12).map(|i| {
        let conn = conn.clone();
        async move { echo_once(&*conn, format!("request {i}").as_bytes()).await }
    });
    let answers = within(
        30,
        "12 streams through a limit of 2",
        futures::future::join_all(requests),
    )
    .await;
    for (i, a) in answers.iter().enumerate() {
        assert_eq!(a, format!("request {i}").as_bytes());
    }
    let max = server.max_active.load(std::sync::atomic::Ordering::SeqCst);
    assert!(
        (1..=2).contains(&max),
        "the server saw {max} streams at once with a limit of 2"
    );
    assert_eq!(
        server.peers.lock().unwrap().len(),
        1,
        "one connection carried every stream"
    );
    assert_eq!(client.open_connections(), 1);

    // Separate dials to the same peer share that connection too.
    let other = within(10, "second dial", client.dial(&server.addr))
        .await
        .unwrap();
    assert_eq!(
        within(10, "echo", echo_once(&*other, b"shared")).await,
        b"shared"
    );
    assert_eq!(server.peers.lock().unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_close_and_the_next_stream_dials_again() {
    let server = serve_echo(
        listen(&quic(&Identity::generate()), "quic://127.0.0.1:0").await,
        Duration::ZERO,
    );
    let config = Config::default()
        .idle_timeout(Duration::from_millis(400))
        .keep_alive(Some(Duration::from_millis(100)));
    let client = quic_with(&Identity::generate(), config);
    let conn = within(10, "dial", client.dial(&server.addr)).await.unwrap();
    assert_eq!(within(10, "echo", echo_once(&*conn, b"a")).await, b"a");
    // A stream held open keeps the connection, idle or not.
    let held = within(10, "open", conn.open_stream()).await.unwrap();
    // More than twice the idle timeout passes: that is what is tested.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert_eq!(
        client.open_connections(),
        1,
        "a connection with an open stream is not idle"
    );
    drop(held);
    within(10, "the idle connection closes", async {
        while client.open_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The handle still works: its next stream makes a new connection.
    assert_eq!(
        within(10, "echo after idling", echo_once(&*conn, b"b")).await,
        b"b"
    );
    assert_eq!(server.peers.lock().unwrap().len(), 2);
}

/// A node serving `dir`'s store under `dir`'s identity, as a restarted process would
/// (built like every node, by core's builder).
async fn start_node(dir: &Path, listen: &str) -> Result<NodeHandle, NodeError> {
    let identity = Arc::new(Identity::load_or_create(dir).unwrap());
    let (store, _) = FragmentStore::open(dir.join("store")).unwrap();
    let transports = Transports::new().with(quic(&identity));
    Node::builder(identity, Arc::new(store), transports)
        .name("restartable")
        .listen(vec![PeerAddr::parse(listen, "quic").unwrap()])
        .serve_limits(ServeLimits {
            max_connections: 16,
            shutdown_grace: Duration::from_millis(200),
        })
        .spawn(&CancellationToken::new())
        .await
}

/// Starts the node on `port`, waiting while the previous run's socket drains.
async fn restart_node(dir: &Path, port: u16) -> NodeHandle {
    within(15, "restart on the same port", async {
        loop {
            match start_node(dir, &format!("quic://127.0.0.1:{port}")).await {
                Ok(h) => return h,
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    })
    .await
}

fn seeded_dir(v: &TestVideo) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FragmentStore::open(dir.path().join("store")).unwrap();
    store.import_dir(&v.split_dir, None).unwrap();
    dir
}

async fn fetch_all(transports: Transports, peer: &PeerAddr, v: &TestVideo) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let (store, _) = FragmentStore::open(dir.path()).unwrap();
    let pool = Arc::new(PeerPool::new(
        transports,
        Timeouts {
            io: Duration::from_secs(5),
            ..Timeouts::default()
        },
    ));
    let fetcher = Fetcher::new(Arc::new(store), pool, FetchOptions::default());
    let req = FetchRequest {
        video: Some(v.id()),
        fragments: None,
        peers: vec![peer.clone()],
    };
    within(
        60,
        "fetch",
        fetcher.fetch(req, Arc::new(Quiet), CancellationToken::new()),
    )
    .await
    .unwrap();
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_the_server_restarts_on_the_same_port_the_next_dial_works() {
    let v = TestVideo::from_bytes("v.bin", &generated_bytes(400_000, 8), 4, 16384);
    let server_dir = seeded_dir(&v);
    let handle = start_node(server_dir.path(), "quic://127.0.0.1:0")
        .await
        .unwrap();
    let port = handle.bound()[0].port;
    let addr = PeerAddr::parse(&format!("quic://127.0.0.1:{port}"), "quic").unwrap();
    let server_id = Identity::load_or_create(server_dir.path())
        .unwrap()
        .node_id();

    let client = quic_with(
        &Identity::generate(),
        Config::default().connect_timeout(Duration::from_secs(1)),
    );
    let t = Timeouts {
        io: Duration::from_secs(5),
        ..Timeouts::default()
    };
    let conn: Arc<dyn Connection> =
        Arc::from(within(10, "dial", client.dial(&addr)).await.unwrap());
    let mut session = within(10, "session", PeerClient::open(conn.clone(), t))
        .await
        .unwrap();
    assert_eq!(
        within(10, "videos", session.videos()).await.unwrap().len(),
        1
    );

    within(30, "server shutdown", handle.shutdown()).await;
    within(10, "the client notices the close", async {
        while client.open_connections() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    let r = within(10, "request to a stopped server", session.videos()).await;
    assert!(r.is_err(), "the server is gone: {r:?}");
    let refused = within(30, "dial while the server is down", client.dial(&addr)).await;
    assert!(refused.is_err(), "nobody is listening");

    let handle = restart_node(server_dir.path(), port).await;
    // The old handle dials again on its next stream, with the same identity check.
    let mut session = within(
        10,
        "session on the old handle",
        PeerClient::open(conn.clone(), t),
    )
    .await
    .unwrap();
    assert_eq!(session.remote_node_id, server_id);
    assert_eq!(
        within(10, "videos", session.videos()).await.unwrap().len(),
        1
    );
    // And a fresh fetch through the same transport completes.
    let got = fetch_all(Transports::new().with(client.clone()), &addr, &v).await;
    let (store, _) = FragmentStore::open(got.path()).unwrap();
    assert_eq!(store.have(v.id()).len(), 4);
    within(30, "shutdown", handle.shutdown()).await;
}

const CHILD_DIR: &str = "FRAGNET_QUIC_TEST_CHILD_DIR";
const CHILD_PORT: &str = "FRAGNET_QUIC_TEST_CHILD_PORT";

/// Not a test: the server process `a_killed_and_restarted_peer_is_noticed_and_redialed`
/// starts (and kills) by running this test binary with `--ignored --exact`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "helper process for a_killed_and_restarted_peer_is_noticed_and_redialed"]
async fn child_node() {
    let (Some(dir), Some(port)) = (std::env::var_os(CHILD_DIR), std::env::var(CHILD_PORT).ok())
    else {
        panic!("run by a_killed_and_restarted_peer_is_noticed_and_redialed only");
    };
    let handle = restart_node(Path::new(&dir), port.parse().unwrap()).await;
    println!("LISTENING {}", handle.bound()[0].port);
    std::future::pending::<()>().await;
}

/// A child process running [`child_node`], killed (SIGKILL) when dropped.
struct Child(std::process::Child);

impl Child {
    /// Starts the node and waits for the port it bound.
    async fn start(dir: &Path, port: u16) -> (Child, u16) {
        use std::io::BufRead;
        let mut child = std::process::Command::new(std::env::current_exe().unwrap())
            .args([
                "child_node",
                "--exact",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env(CHILD_DIR, dir)
            .env(CHILD_PORT, port.to_string())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let child = Child(child);
        let port = within(
            30,
            "the child node starts",
            tokio::task::spawn_blocking(move || {
                for line in std::io::BufReader::new(stdout).lines() {
                    // libtest may print "test child_node ... " on the same line first.
                    if let Some((_, p)) = line.unwrap().split_once("LISTENING ") {
                        return p.trim().parse::<u16>().unwrap();
                    }
                }
                panic!("the child node exited without listening");
            }),
        )
        .await
        .unwrap();
        (child, port)
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_and_restarted_peer_is_noticed_and_redialed() {
    let v = TestVideo::from_bytes("v.bin", &generated_bytes(100_000, 9), 2, 16384);
    let server_dir = seeded_dir(&v);
    let (child, port) = Child::start(server_dir.path(), 0).await;
    let addr = PeerAddr::parse(&format!("quic://127.0.0.1:{port}"), "quic").unwrap();
    // A long idle timeout, so only noticing the restart can end the stale connection soon.
    let client = quic_with(
        &Identity::generate(),
        Config::default().idle_timeout(Duration::from_secs(120)),
    );
    let t = Timeouts {
        io: Duration::from_secs(3),
        ..Timeouts::default()
    };
    let conn: Arc<dyn Connection> =
        Arc::from(within(10, "dial", client.dial(&addr)).await.unwrap());
    let mut s = within(10, "session", PeerClient::open(conn.clone(), t))
        .await
        .unwrap();
    assert_eq!(within(10, "videos", s.videos()).await.unwrap().len(), 1);
    drop(s);

    // SIGKILL: no close frame reaches the client; its connection looks alive.
    drop(child);
    assert_eq!(client.open_connections(), 1);
    let (_child, _) = Child::start(server_dir.path(), port).await;

    // The restarted node (same key, hence same stateless-reset key) resets the stale
    // connection at its first packet; the handle then dials again. Without that, every
    // attempt would wait out the 120 s idle timeout.
    let mut failures = 0;
    let mut s = within(30, "a session with the restarted peer", async {
        loop {
            match PeerClient::open(conn.clone(), t).await {
                Ok(s) => return s,
                Err(_) => failures += 1,
            }
        }
    })
    .await;
    assert!(
        failures <= 2,
        "{failures} failed attempts before the stale connection was reset"
    );
    assert_eq!(within(10, "videos", s.videos()).await.unwrap().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_transport_closes_its_connections() {
    use std::sync::atomic::Ordering;
    let server = serve_echo(
        listen(&quic(&Identity::generate()), "quic://127.0.0.1:0").await,
        Duration::ZERO,
    );
    let client = QuicTransport::new(&Identity::generate(), Config::default()).unwrap();
    let conn = within(10, "dial", client.dial(&server.addr)).await.unwrap();
    assert_eq!(within(10, "echo", echo_once(&*conn, b"x")).await, b"x");
    drop(conn);
    // No handle left, but the transport keeps the connection for the next dial. The
    // pause is the test: something that does not happen has to be given time to.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(server.open.load(Ordering::SeqCst), 1);
    drop(client);
    within(10, "the server sees the close", async {
        while server.open.load(Ordering::SeqCst) > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
}
