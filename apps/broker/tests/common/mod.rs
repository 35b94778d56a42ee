//! Shared test helpers: a broker on 127.0.0.1:0, a real nats-server, raw line clients.

#![allow(dead_code)]

use std::io::BufRead;
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fragnet_broker::{
    BrokerClientConfig, BrokerConfig, BrokerHandle, BrokerPubSub, NatsConfig, NatsPubSub,
};
use fragnet_core::PubSub;
use fragnet_core::conformance::pubsub::PubSubFixture;
use fragnet_core::conformance::within;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio_util::sync::{CancellationToken, DropGuard};

/// A broker config listening on a free loopback port.
pub fn loopback_config() -> BrokerConfig {
    BrokerConfig {
        listen: "127.0.0.1:0".into(),
        ..BrokerConfig::default()
    }
}

/// Starts a broker.
pub async fn start_broker(config: BrokerConfig) -> BrokerHandle {
    within(
        10,
        "starting the broker",
        fragnet_broker::spawn(config, CancellationToken::new()),
    )
    .await
    .expect("broker starts")
}

/// Client settings for tests: quick reconnects.
pub fn client_config(addr: SocketAddr) -> BrokerClientConfig {
    BrokerClientConfig {
        reconnect_min_secs: 0.02,
        reconnect_max_secs: 0.3,
        ..BrokerClientConfig::new(addr.to_string())
    }
}

/// Polls `cond` every 10 ms until it holds, failing after `secs`.
pub async fn eventually(secs: u64, what: &str, mut cond: impl FnMut() -> bool) {
    within(secs, what, async {
        while !cond() {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await
}

/// A broker for the behaviour suite; stops when dropped.
pub struct BrokerFixture {
    pub handle: BrokerHandle,
    _stop: DropGuard,
}

pub async fn broker_fixture() -> BrokerFixture {
    let stop = CancellationToken::new();
    let handle = fragnet_broker::spawn(loopback_config(), stop.clone())
        .await
        .expect("broker starts");
    BrokerFixture {
        handle,
        _stop: stop.drop_guard(),
    }
}

#[async_trait]
impl PubSubFixture for BrokerFixture {
    async fn client(&self) -> Arc<dyn PubSub> {
        Arc::new(BrokerPubSub::new(&client_config(self.handle.local_addr())).unwrap())
    }
}

/// A loopback port with nothing listening on it (bound, then released): for tests of
/// what a client does when no server is there. Never start a server on it: start the
/// server on port 0 and read back the port it bound.
pub fn dead_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A real `nats-server` on a loopback port, killed when dropped.
pub struct NatsServer {
    pub port: u16,
    child: Child,
}

/// What nats-server logs once its client listener is bound, followed by `HOST:PORT`.
const NATS_LISTENING: &str = "Listening for client connections on ";
/// What nats-server logs once it is up.
const NATS_READY: &str = "Server is ready";

impl NatsServer {
    /// Starts `nats-server -a 127.0.0.1 -p -1` (a port of the server's choosing) and
    /// returns once it has logged the port it listens on and that it is ready.
    pub async fn start(extra: &[&str]) -> NatsServer {
        Self::spawn("-1", extra).await
    }

    /// Starts it on `port`: only for a restart on the port an earlier server had, so
    /// that clients find it at the address they already know. Fails (with the server's
    /// log) if the port was taken in between.
    pub async fn start_on(port: u16, extra: &[&str]) -> NatsServer {
        let server = Self::spawn(&port.to_string(), extra).await;
        assert_eq!(server.port, port, "nats-server restarted on another port");
        server
    }

    /// Fails (does not skip) when the binary is missing.
    async fn spawn(port: &str, extra: &[&str]) -> NatsServer {
        let mut child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", port])
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run nats-server ({e}). The NATS tests need a real NATS server: install it \
                     (Debian: apt-get install nats-server) so that `nats-server` is on PATH"
                )
            });
        // nats-server logs to stderr. A thread reads it to the end, so the server never
        // blocks on a full pipe; the lines up to "ready" come here.
        let stderr = child.stderr.take().expect("stderr is piped");
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                let _ = tx.send(line);
            }
        });
        let mut server = NatsServer { port: 0, child };
        let mut log = Vec::new();
        within(15, "nats-server ready", async {
            loop {
                let Some(line) = rx.recv().await else {
                    panic!(
                        "nats-server exited before it was ready; its log:\n{}",
                        log.join("\n")
                    );
                };
                if let Some((_, addr)) = line.split_once(NATS_LISTENING) {
                    let addr: SocketAddr = addr.trim().parse().expect("nats-server logs HOST:PORT");
                    server.port = addr.port();
                }
                let ready = line.contains(NATS_READY);
                log.push(line);
                if ready {
                    break;
                }
            }
        })
        .await;
        assert_ne!(server.port, 0, "nats-server did not log its port: {log:?}");
        server
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    /// Kills the server and waits for it to exit (its port is free again).
    pub fn stop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        self.stop();
    }
}

#[async_trait]
impl PubSubFixture for NatsServer {
    async fn client(&self) -> Arc<dyn PubSub> {
        Arc::new(
            within(
                10,
                "connecting to NATS",
                NatsPubSub::connect(&NatsConfig::new(self.url())),
            )
            .await
            .unwrap(),
        )
    }
}

/// A raw line client: exactly the bytes a test writes, every line the broker sends.
pub struct Raw {
    pub reader: BufReader<OwnedReadHalf>,
    pub writer: OwnedWriteHalf,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let s = within(10, "connecting", TcpStream::connect(addr))
            .await
            .unwrap();
        // Every write leaves at once (no Nagle delay), so a test that writes a line in
        // pieces with pauses between them has them arrive in separate segments.
        s.set_nodelay(true).unwrap();
        let (r, w) = s.into_split();
        Raw {
            reader: BufReader::new(r),
            writer: w,
        }
    }

    pub async fn send(&mut self, bytes: impl AsRef<[u8]>) {
        within(10, "writing", self.writer.write_all(bytes.as_ref()))
            .await
            .unwrap();
    }

    /// The next line without its `\n`; `None` at end of stream.
    pub async fn line(&mut self) -> Option<String> {
        let mut buf = Vec::new();
        let n = within(
            10,
            "reading a line",
            self.reader.read_until(b'\n', &mut buf),
        )
        .await
        .unwrap();
        if n == 0 {
            return None;
        }
        assert_eq!(
            buf.pop(),
            Some(b'\n'),
            "line not terminated: {:?}",
            String::from_utf8_lossy(&buf)
        );
        Some(String::from_utf8(buf).expect("the broker sends UTF-8"))
    }

    pub async fn expect(&mut self, want: &str) {
        assert_eq!(self.line().await.as_deref(), Some(want));
    }

    /// Sends `PING` and expects `PONG` as the very next line (so nothing else was queued).
    pub async fn ping(&mut self) {
        self.send("PING\n").await;
        self.expect("PONG").await;
    }

    /// Expects the broker to close the connection next.
    pub async fn expect_eof(&mut self) {
        assert_eq!(
            self.line().await,
            None,
            "expected the broker to close the connection"
        );
    }

    /// Subscribes and waits for the broker to confirm.
    pub async fn subscribe(addr: SocketAddr, topic: &str) -> Raw {
        let mut r = Raw::connect(addr).await;
        r.send(format!("SUB:{topic}\n")).await;
        r.ping().await;
        r
    }
}
