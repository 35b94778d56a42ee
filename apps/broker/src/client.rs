//! [`BrokerPubSub`]: the `broker` pub/sub plugin, a client of fragnet's broker.
//!
//! Publishing uses one shared connection: `PUB:<topic>:<message>` then `PING`; the
//! broker handles a connection's lines in order, so its `PONG` means the message was
//! taken (an `ERR:` before it means it was not). Each subscription has a connection of
//! its own, established with `SUB` + `PING` before [`PubSub::subscribe`] returns. When
//! that connection breaks (broker restart, cut off as a slow consumer, keepalive
//! unanswered) the subscription reconnects with exponential backoff and subscribes
//! again; messages published meanwhile are lost and [`Subscription::reconnects`] says
//! that it happened.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use fragnet_core::PeerAddr;
use fragnet_core::pubsub::{
    Message, PubSub, PubSubError, Subscription, SubscriptionStats, check_message, check_topic,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Mutex, mpsc};
use tokio::time::Instant;
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, info, info_span, warn};

use crate::token::AuthToken;
use crate::wire::{Line, LineCodec, SLOW_CONSUMER};
use crate::{BrokerError, seconds};

/// How to reach the broker. Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerClientConfig {
    /// The broker: `HOST:PORT` or `tcp://HOST:PORT`. Default `127.0.0.1:5555`.
    pub addr: String,
    /// Token sent as `AUTH:<token>` first. From the environment or
    /// [`BrokerClientConfig::token_file`].
    /// Default: none.
    pub token: Option<AuthToken>,
    /// A file whose first line is the token. Default: none.
    pub token_file: Option<PathBuf>,
    /// Seconds to establish a TCP connection. Default 5.
    pub connect_timeout_secs: f64,
    /// Seconds the broker has to answer `PING` (to confirm a publish or a subscribe).
    /// Default 5.
    pub reply_timeout_secs: f64,
    /// A subscription pings the broker this often, and reconnects when nothing has come
    /// back for this plus `reply_timeout_secs`. Default 15.
    pub keepalive_secs: f64,
    /// First wait before reconnecting a subscription, in seconds; doubles per failure.
    /// Default 0.1.
    pub reconnect_min_secs: f64,
    /// Longest wait between reconnection attempts, in seconds. Default 5.
    pub reconnect_max_secs: f64,
    /// Longest line accepted from the broker. Default 64 KiB.
    pub max_line: usize,
    /// Messages buffered per subscription before the client stops reading (and the
    /// broker eventually cuts it off as a slow consumer). Default 1024.
    pub queue: usize,
}

impl Default for BrokerClientConfig {
    fn default() -> Self {
        BrokerClientConfig {
            addr: "127.0.0.1:5555".into(),
            token: None,
            token_file: None,
            connect_timeout_secs: 5.0,
            reply_timeout_secs: 5.0,
            keepalive_secs: 15.0,
            reconnect_min_secs: 0.1,
            reconnect_max_secs: 5.0,
            max_line: 64 * 1024,
            queue: 1024,
        }
    }
}

impl BrokerClientConfig {
    /// The defaults, for the broker at `addr`.
    pub fn new(addr: impl Into<String>) -> Self {
        BrokerClientConfig {
            addr: addr.into(),
            ..Self::default()
        }
    }

    /// Sets the token.
    pub fn token(mut self, token: AuthToken) -> Self {
        self.token = Some(token);
        self
    }
}

/// What every connection of one client needs.
struct Dialer {
    host_port: String,
    endpoint: String,
    token: Option<AuthToken>,
    connect_timeout: Duration,
    reply_timeout: Duration,
    keepalive: Duration,
    reconnect_min: Duration,
    reconnect_max: Duration,
    max_line: usize,
    queue: usize,
    /// Cancelled by [`BrokerPubSub::close`]: every subscription ends.
    closed: CancellationToken,
}

/// The `broker` plugin. Cheap to clone; clones share the publishing connection.
#[derive(Clone)]
pub struct BrokerPubSub {
    dialer: Arc<Dialer>,
    publisher: Arc<Mutex<Option<LineConn>>>,
}

impl std::fmt::Debug for BrokerPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerPubSub")
            .field("broker", &self.dialer.host_port)
            .finish()
    }
}

impl BrokerPubSub {
    /// A client for the broker in `config`. Connects lazily; call [`BrokerPubSub::ping`]
    /// to check the broker is there and takes the token.
    pub fn new(config: &BrokerClientConfig) -> Result<Self, BrokerError> {
        let addr = PeerAddr::parse(&config.addr, "tcp")
            .map_err(|e| BrokerError::Config(format!("broker address: {e}")))?;
        if addr.scheme != "tcp" || addr.node_id.is_some() {
            return Err(BrokerError::Config(format!(
                "broker address {}: the broker speaks plain TCP (HOST:PORT)",
                config.addr
            )));
        }
        let dialer = Dialer {
            host_port: addr.host_port(),
            endpoint: format!("broker {}", addr.host_port()),
            token: AuthToken::resolve(config.token.as_ref(), config.token_file.as_deref())?,
            connect_timeout: seconds("connect_timeout_secs", config.connect_timeout_secs)?,
            reply_timeout: seconds("reply_timeout_secs", config.reply_timeout_secs)?,
            keepalive: seconds("keepalive_secs", config.keepalive_secs)?,
            reconnect_min: seconds("reconnect_min_secs", config.reconnect_min_secs)?,
            reconnect_max: seconds("reconnect_max_secs", config.reconnect_max_secs)?
                .max(seconds("reconnect_min_secs", config.reconnect_min_secs)?),
            max_line: config.max_line.max(1024),
            queue: config.queue.max(1),
            closed: CancellationToken::new(),
        };
        Ok(BrokerPubSub {
            dialer: Arc::new(dialer),
            publisher: Arc::new(Mutex::new(None)),
        })
    }

    /// The broker's `HOST:PORT`.
    pub fn broker_addr(&self) -> &str {
        &self.dialer.host_port
    }

    /// Round trip to the broker on the publishing connection: reachable, token accepted.
    pub async fn ping(&self) -> Result<(), PubSubError> {
        self.request(b"PING\n").await
    }

    /// Ends every subscription of this client (their streams end) and closes the
    /// publishing connection.
    pub async fn close(&self) {
        self.dialer.closed.cancel();
        self.publisher.lock().await.take();
    }

    /// Sends `lines` (which end with `PING`) on the publishing connection and waits for
    /// the `PONG`. A connection kept from earlier may have been closed by the broker in
    /// the meantime (restart, idle timeout): then it retries once on a fresh one.
    async fn request(&self, lines: &[u8]) -> Result<(), PubSubError> {
        let d = &self.dialer;
        let mut publisher = self.publisher.lock().await;
        loop {
            let reused = publisher.is_some();
            let conn = match publisher.as_mut() {
                Some(c) => c,
                None => publisher.insert(d.dial().await?),
            };
            let result = match tokio::time::timeout(d.reply_timeout, async {
                conn.send(lines, d).await?;
                conn.until_pong(d, |_| {}).await
            })
            .await
            {
                Ok(r) => r,
                Err(_) => Err(PubSubError::Timeout {
                    endpoint: d.endpoint.clone(),
                    what: "PONG".into(),
                    after: d.reply_timeout,
                }),
            };
            match result {
                Ok(()) => return Ok(()),
                Err(PubSubError::Disconnected { .. }) if reused => {
                    debug!("publishing connection was stale; reconnecting");
                    *publisher = None;
                }
                Err(e) => {
                    *publisher = None;
                    return Err(e);
                }
            }
        }
    }
}

#[async_trait]
impl PubSub for BrokerPubSub {
    fn kind(&self) -> &'static str {
        "broker"
    }

    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), PubSubError> {
        check_topic(topic)?;
        let text = check_message(&payload)?;
        self.request(format!("PUB:{topic}:{text}\nPING\n").as_bytes())
            .await
    }

    async fn subscribe(&self, topic: &str) -> Result<Subscription, PubSubError> {
        check_topic(topic)?;
        let d = self.dialer.clone();
        let (conn, early) = d.establish(topic).await?;
        let (tx, rx) = mpsc::channel(d.queue);
        let stats = Arc::new(SubscriptionStats::default());
        let span = info_span!("subscription", broker = %d.host_port, topic);
        tokio::spawn(
            run_subscription(d, topic.to_string(), conn, early, tx, stats.clone()).instrument(span),
        );
        Ok(Subscription::from_channel(topic, rx, stats))
    }
}

/// One line-oriented connection to the broker.
struct LineConn {
    lines: FramedRead<OwnedReadHalf, LineCodec>,
    writer: OwnedWriteHalf,
}

impl Dialer {
    fn lost(&self, reason: impl std::fmt::Display) -> PubSubError {
        PubSubError::Disconnected {
            endpoint: self.endpoint.clone(),
            reason: reason.to_string(),
        }
    }

    /// Connects and sends `AUTH` when there is a token (its outcome shows at the next
    /// `PONG`, or as `ERR:`).
    async fn dial(&self) -> Result<LineConn, PubSubError> {
        let stream =
            match tokio::time::timeout(self.connect_timeout, TcpStream::connect(&self.host_port))
                .await
            {
                Err(_) => {
                    return Err(PubSubError::Timeout {
                        endpoint: self.endpoint.clone(),
                        what: "TCP connection".into(),
                        after: self.connect_timeout,
                    });
                }
                Ok(Err(e)) => {
                    return Err(PubSubError::Unreachable {
                        endpoint: self.endpoint.clone(),
                        reason: e.to_string(),
                    });
                }
                Ok(Ok(s)) => s,
            };
        stream.set_nodelay(true).ok();
        let (r, w) = stream.into_split();
        let mut conn = LineConn {
            lines: FramedRead::new(r, LineCodec::new(self.max_line)),
            writer: w,
        };
        if let Some(t) = &self.token {
            conn.send(format!("AUTH:{}\n", t.expose()).as_bytes(), self)
                .await?;
        }
        Ok(conn)
    }

    /// Dials, subscribes, and waits for the broker to confirm. Messages that arrive
    /// before the confirmation are returned with the connection.
    async fn establish(&self, topic: &str) -> Result<(LineConn, Vec<Message>), PubSubError> {
        let mut conn = self.dial().await?;
        let mut early = Vec::new();
        let confirmed = tokio::time::timeout(self.reply_timeout, async {
            conn.send(format!("SUB:{topic}\nPING\n").as_bytes(), self)
                .await?;
            conn.until_pong(self, |m| early.push(m)).await
        })
        .await;
        match confirmed {
            Ok(Ok(())) => Ok((conn, early)),
            Ok(Err(e)) => Err(e),
            Err(_) => Err(PubSubError::Timeout {
                endpoint: self.endpoint.clone(),
                what: "PONG after SUB".into(),
                after: self.reply_timeout,
            }),
        }
    }

    fn backoff_with_jitter(&self, base: Duration) -> Duration {
        // Up to 25% jitter so a thousand subscribers do not reconnect in lockstep.
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        base + base.mul_f64(f64::from(nanos % 1000) / 4000.0)
    }
}

/// `MSG:<topic>:<message>` as a [`Message`].
fn parse_msg(line: &str) -> Option<Message> {
    let (topic, message) = line.strip_prefix("MSG:")?.split_once(':')?;
    Some(Message {
        topic: topic.to_string(),
        payload: Bytes::copy_from_slice(message.as_bytes()),
    })
}

impl LineConn {
    async fn send(&mut self, bytes: &[u8], d: &Dialer) -> Result<(), PubSubError> {
        self.writer.write_all(bytes).await.map_err(|e| d.lost(e))
    }

    /// Reads until `PONG`. `ERR:` means refused; `MSG:` lines go to `on_msg`.
    async fn until_pong(
        &mut self,
        d: &Dialer,
        mut on_msg: impl FnMut(Message),
    ) -> Result<(), PubSubError> {
        loop {
            match self.lines.next().await {
                None => return Err(d.lost("the broker closed the connection")),
                Some(Err(e)) => return Err(d.lost(e)),
                Some(Ok(Line::Text(line))) => {
                    if line == "PONG" {
                        return Ok(());
                    } else if let Some(reason) = line.strip_prefix("ERR:") {
                        return Err(PubSubError::Rejected {
                            endpoint: d.endpoint.clone(),
                            reason: reason.to_string(),
                        });
                    } else if let Some(m) = parse_msg(&line) {
                        on_msg(m);
                    }
                }
                Some(Ok(other)) => {
                    return Err(d.lost(format!("the broker sent a malformed line ({other:?})")));
                }
            }
        }
    }
}

/// Feeds one subscription, reconnecting as long as someone holds it.
async fn run_subscription(
    d: Arc<Dialer>,
    topic: String,
    first: LineConn,
    early: Vec<Message>,
    tx: mpsc::Sender<Message>,
    stats: Arc<SubscriptionStats>,
) {
    for m in early {
        if tx.send(m).await.is_err() {
            return;
        }
    }
    let mut conn = Some(first);
    let mut backoff = d.reconnect_min;
    loop {
        let c = match conn.take() {
            Some(c) => c,
            None => {
                tokio::select! {
                    _ = tx.closed() => return,
                    _ = d.closed.cancelled() => return,
                    _ = tokio::time::sleep(d.backoff_with_jitter(backoff)) => {}
                }
                match d.establish(&topic).await {
                    Ok((c, early)) => {
                        stats.reconnects.fetch_add(1, Ordering::Relaxed);
                        info!("re-subscribed");
                        backoff = d.reconnect_min;
                        for m in early {
                            if tx.send(m).await.is_err() {
                                return;
                            }
                        }
                        c
                    }
                    Err(e) => {
                        backoff = (backoff * 2).min(d.reconnect_max);
                        warn!(error = %e, retry_in = ?backoff, "cannot re-subscribe yet");
                        continue;
                    }
                }
            }
        };
        match pump(&d, &topic, c, &tx).await {
            None => return,
            Some(reason) => warn!(%reason, "lost the broker; re-subscribing"),
        }
    }
}

/// Delivers messages from one connection until it breaks (`Some(reason)`) or nobody
/// listens any more (`None`).
async fn pump(
    d: &Dialer,
    topic: &str,
    mut c: LineConn,
    tx: &mpsc::Sender<Message>,
) -> Option<String> {
    let dead_after = d.keepalive + d.reply_timeout;
    let mut tick = tokio::time::interval_at(Instant::now() + d.keepalive, d.keepalive);
    let mut last_heard = Instant::now();
    loop {
        tokio::select! {
            _ = tx.closed() => return None,
            _ = d.closed.cancelled() => return None,
            line = c.lines.next() => {
                last_heard = Instant::now();
                match line {
                    None => return Some("the broker closed the connection".into()),
                    Some(Err(e)) => return Some(format!("read failed: {e}")),
                    Some(Ok(Line::Text(line))) => {
                        if let Some(m) = parse_msg(&line) {
                            if m.topic == topic && tx.send(m).await.is_err() {
                                return None;
                            }
                        } else if let Some(reason) = line.strip_prefix("ERR:") {
                            if reason == SLOW_CONSUMER {
                                return Some("cut off by the broker as a slow consumer".into());
                            }
                            warn!(%reason, "the broker reported an error");
                        }
                    }
                    Some(Ok(other)) => warn!(?other, "skipped a malformed line from the broker"),
                }
            }
            _ = tick.tick() => {
                if last_heard.elapsed() > dead_after {
                    return Some(format!("no answer to keepalive for {dead_after:?}"));
                }
                match tokio::time::timeout(d.reply_timeout, c.writer.write_all(b"PING\n")).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Some(format!("keepalive failed: {e}")),
                    Err(_) => return Some("keepalive write timed out".into()),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_deliveries() {
        let m = parse_msg("MSG:fragments:a:b").unwrap();
        assert_eq!((m.topic.as_str(), m.text()), ("fragments", Some("a:b")));
        assert!(parse_msg("PONG").is_none());
        assert!(parse_msg("MSG:nocolon").is_none());
    }

    #[test]
    fn config_checks() {
        assert!(BrokerPubSub::new(&BrokerClientConfig::new("quic://h:1")).is_err());
        assert!(BrokerPubSub::new(&BrokerClientConfig::new("nonsense")).is_err());
        BrokerPubSub::new(&BrokerClientConfig::new("tcp://127.0.0.1:5555")).unwrap();
        let c: BrokerClientConfig =
            serde_json::from_str(r#"{"addr":"h:1","reply_timeout_secs":0.05}"#).unwrap();
        assert_eq!(
            (c.addr.as_str(), c.reply_timeout_secs, c.keepalive_secs),
            ("h:1", 0.05, 15.0)
        );
        assert!(serde_json::from_str::<BrokerClientConfig>(r#"{"adr":"h:1"}"#).is_err());
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e9] {
            let c = BrokerClientConfig {
                reply_timeout_secs: bad,
                ..BrokerClientConfig::default()
            };
            assert!(BrokerPubSub::new(&c).is_err(), "{bad}");
        }
    }
}
