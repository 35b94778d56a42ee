//! Helpers shared by the QUIC integration tests: transports, a raw echo server on real
//! QUIC endpoints, and a rebind loop for restarting a server on the same port.
#![allow(dead_code)] // each test file uses its own subset

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use fragnet_core::conformance::within;
use fragnet_core::identity::Identity;
use fragnet_core::transport::{Connection, Listener, Transport, TransportError};
use fragnet_core::{NodeId, PeerAddr, Transports};
use fragnet_quic::{Config, QuicTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::task::JoinSet;

/// A QUIC transport with default settings.
pub fn quic(identity: &Identity) -> Arc<QuicTransport> {
    quic_with(identity, Config::default())
}

/// A QUIC transport with these settings.
pub fn quic_with(identity: &Identity, config: Config) -> Arc<QuicTransport> {
    Arc::new(QuicTransport::new(identity, config).unwrap())
}

/// `make` for TestNode: QUIC only.
pub fn quic_only(identity: &Identity) -> Transports {
    Transports::new().with(quic(identity))
}

/// `make` for TestNode: TCP only.
pub fn tcp_only(_: &Identity) -> Transports {
    Transports::new().with(Arc::new(fragnet_tcp::TcpTransport::default()))
}

/// `make` for TestNode: both.
pub fn tcp_and_quic(identity: &Identity) -> Transports {
    tcp_only(identity).with(quic(identity))
}

/// Binds a listener.
pub async fn listen(t: &QuicTransport, addr: &str) -> Box<dyn Listener> {
    within(
        10,
        "listen",
        t.listen(&PeerAddr::parse(addr, "quic").unwrap()),
    )
    .await
    .unwrap()
}

/// Binds 127.0.0.1:`port` again, waiting while the previous owner's socket drains.
pub async fn rebind(t: &QuicTransport, port: u16) -> Box<dyn Listener> {
    let addr = PeerAddr::parse(&format!("quic://127.0.0.1:{port}"), "quic").unwrap();
    within(15, "rebinding the same port", async {
        loop {
            match t.listen(&addr).await {
                Ok(l) => return l,
                Err(TransportError::Listen { .. }) => {
                    tokio::time::sleep(Duration::from_millis(50)).await
                }
                Err(e) => panic!("listen: {e}"),
            }
        }
    })
    .await
}

/// The same address, naming a node id.
pub fn addr_named(addr: &PeerAddr, id: NodeId) -> PeerAddr {
    PeerAddr {
        node_id: Some(id),
        ..addr.clone()
    }
}

/// A raw echo server: every stream gets back what it sent (after `hold`), once the
/// client finished sending.
pub struct Echo {
    /// Where it listens (127.0.0.1, no node id).
    pub addr: PeerAddr,
    /// The node id each accepted connection authenticated, in order.
    pub peers: Arc<Mutex<Vec<Option<NodeId>>>>,
    /// Most streams open at once.
    pub max_active: Arc<AtomicUsize>,
    /// Connections whose handler is still running (the client has not closed them).
    pub open: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    /// Stops accepting and drops every connection (they close).
    pub fn stop(self) {}
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves echo on `listener`.
pub fn serve_echo(listener: Box<dyn Listener>, hold: Duration) -> Echo {
    let mut addr = listener.local_addr();
    addr.host = "127.0.0.1".into();
    let peers = Arc::new(Mutex::new(Vec::new()));
    let max_active = Arc::new(AtomicUsize::new(0));
    let active = Arc::new(AtomicUsize::new(0));
    let open = Arc::new(AtomicUsize::new(0));
    let (p, m, o) = (peers.clone(), max_active.clone(), open.clone());
    let task = tokio::spawn(async move {
        // Dropped with the task: aborts every connection and stream task.
        let mut conns = JoinSet::new();
        while let Ok(conn) = listener.accept().await {
            p.lock().unwrap().push(conn.remote_node_id());
            let (active, m, o) = (active.clone(), m.clone(), o.clone());
            o.fetch_add(1, Ordering::SeqCst);
            conns.spawn(async move {
                let mut streams = JoinSet::new();
                while let Ok(Some(mut stream)) = conn.accept_stream().await {
                    let n = active.fetch_add(1, Ordering::SeqCst) + 1;
                    m.fetch_max(n, Ordering::SeqCst);
                    let active = active.clone();
                    streams.spawn(async move {
                        let mut buf = Vec::new();
                        let read = (&mut stream.recv).take(1 << 20).read_to_end(&mut buf).await;
                        tokio::time::sleep(hold).await;
                        if read.is_ok() {
                            let _ = stream.send.write_all(&buf).await;
                        }
                        // Done before finishing: QUIC frees the stream's slot only once the
                        // finish is acknowledged, so this count never runs ahead of QUIC's
                        // (counting after the finish races with a preempted thread).
                        active.fetch_sub(1, Ordering::SeqCst);
                        let _ = stream.send.shutdown().await;
                    });
                }
                o.fetch_sub(1, Ordering::SeqCst);
                while streams.join_next().await.is_some() {}
            });
        }
    });
    Echo {
        addr,
        peers,
        max_active,
        open,
        task,
    }
}

/// Sends `msg` on a new stream, finishes it, and returns what comes back.
pub async fn echo_once(conn: &dyn Connection, msg: &[u8]) -> Vec<u8> {
    let mut s = conn.open_stream().await.expect("open a stream");
    s.send.write_all(msg).await.expect("send");
    s.send.shutdown().await.expect("finish");
    let mut out = Vec::new();
    s.recv.read_to_end(&mut out).await.expect("receive");
    out
}
