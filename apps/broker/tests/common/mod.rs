//! Shared test helpers: a broker on 127.0.0.1:0, a real nats-server, raw line clients.

#![allow(dead_code)]

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

/// A free loopback port (bound and released; nats-server takes it right after).
pub fn free_port() -> u16 {
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

impl NatsServer {
    /// Starts `nats-server -a 127.0.0.1 -p PORT [extra args]` and waits until it accepts
    /// connections. Fails (does not skip) when the binary is missing.
    pub async fn start_on(port: u16, extra: &[&str]) -> NatsServer {
        let child = Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot run nats-server ({e}). The NATS tests need a real NATS server: install it \
                     (Debian: apt-get install nats-server) so that `nats-server` is on PATH"
                )
            });
        let server = NatsServer { port, child };
        within(15, "nats-server accepting connections", async {
            while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
        .await;
        server
    }

    pub async fn start(extra: &[&str]) -> NatsServer {
        Self::start_on(free_port(), extra).await
    }

    pub fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

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
