//! The broker server: an accept loop, one reader and one writer task per connection,
//! and a topic table shared by all of them.
//!
//! Fan-out never waits: a publish looks up the topic's subscribers under a read lock and
//! offers each one the ready-made `MSG:` line. Each connection has an outbound queue
//! bounded in bytes ([`BrokerLimits::queue_bytes`]); an offer that would overflow it
//! cuts that connection off (`ERR:slow consumer`, counted) instead of blocking the
//! publisher or anyone else. Replies (`PONG`, `ERR:`) go through the same queue, so
//! they come out in order with the messages.
//!
//! The broker runs on a thread of its own with a single-threaded tokio runtime, like
//! Mosquitto's event loop, whatever runtime calls [`spawn`]: one core carries millions
//! of deliveries a second, and keeping every connection's tasks on one thread avoids
//! cross-thread wake-ups, which on a 2-core machine tripled the p99 latency
//! (BENCHMARKS.md).
//!
//! Shutdown order: stop accepting, tell every connection to stop reading, give writers
//! [`BrokerLimits::shutdown_grace_secs`] to flush what is queued, then drop the sockets.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use fragnet_core::PeerAddr;
use fragnet_core::metrics::{self, DescriptorEncoder};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio_util::codec::FramedRead;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{Instrument, debug, error, info, info_span, warn};

use crate::token::AuthToken;
use crate::wire::{
    Command, DEFAULT_MAX_LINE, Line, LineCodec, LineError, PONG_LINE, SLOW_CONSUMER, err_line,
    msg_line, parse_command,
};
use crate::{BrokerError, seconds};

/// The broker's default listen address (the original project's port).
pub const DEFAULT_LISTEN: &str = "0.0.0.0:5555";

/// How long a cut-off subscriber's socket may take to accept `ERR:slow consumer`
/// (it gets it if it starts reading again within this time).
const NOTICE_TIMEOUT: Duration = Duration::from_secs(5);

/// Broker settings. Every field has a default, so `BrokerConfig::default()` is the
/// original's open broker on port 5555.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerConfig {
    /// Where to listen: `HOST:PORT`, `PORT` (all interfaces) or `tcp://HOST:PORT`; port 0
    /// picks a free one. Default `0.0.0.0:5555`.
    pub listen: String,
    /// Shared token: when set, a connection's first line must be `AUTH:<token>`. Give it
    /// through the environment or [`BrokerConfig::token_file`], not on a command line.
    /// Default: none (open, like
    /// the original).
    pub token: Option<AuthToken>,
    /// A file whose first line is the token. Default: none.
    pub token_file: Option<PathBuf>,
    /// Limits.
    pub limits: BrokerLimits,
}

impl Default for BrokerConfig {
    fn default() -> Self {
        BrokerConfig {
            listen: DEFAULT_LISTEN.into(),
            token: None,
            token_file: None,
            limits: BrokerLimits::default(),
        }
    }
}

/// What one client may use.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerLimits {
    /// Longest line in bytes, line break not counted. Default 4096.
    pub max_line: usize,
    /// Concurrent connections; one more is answered `ERR:too many connections` and
    /// closed. Default 4096 (mind `ulimit -n`).
    pub max_connections: usize,
    /// Topics one connection may subscribe to. Default 128.
    pub max_subscriptions: usize,
    /// Bytes that may wait in one connection's outbound queue; a subscriber that falls
    /// further behind is cut off with `ERR:slow consumer`. Default 1 MiB. The broker's
    /// memory is bounded by `max_connections × (queue_bytes + 64 KiB)`.
    pub queue_bytes: usize,
    /// Seconds a connection has to send `AUTH:` when a token is set. Default 10.
    pub auth_timeout_secs: f64,
    /// A connection with no subscription that sends nothing for this many seconds is
    /// closed. Subscribers are never closed for being quiet. Default 300.
    pub idle_timeout_secs: f64,
    /// Seconds writers get to flush queued messages when a connection ends or the
    /// broker shuts down. Default 2.
    pub shutdown_grace_secs: f64,
}

impl Default for BrokerLimits {
    fn default() -> Self {
        BrokerLimits {
            max_line: DEFAULT_MAX_LINE,
            max_connections: 4096,
            max_subscriptions: 128,
            queue_bytes: 1 << 20,
            auth_timeout_secs: 10.0,
            idle_timeout_secs: 300.0,
            shutdown_grace_secs: 2.0,
        }
    }
}

impl BrokerLimits {
    fn check(&self) -> Result<Timeouts, BrokerError> {
        let bad = |what: &str| Err(BrokerError::Config(what.to_string()));
        if self.max_line < 64 {
            return bad("limits.max_line must be at least 64 bytes");
        }
        if self.max_connections == 0 || self.max_subscriptions == 0 {
            return bad("limits.max_connections and limits.max_subscriptions must be at least 1");
        }
        if self.queue_bytes < self.max_line + 16 {
            return bad("limits.queue_bytes must hold at least one full line (max_line + 16)");
        }
        Ok(Timeouts {
            auth: seconds("limits.auth_timeout_secs", self.auth_timeout_secs)?,
            idle: seconds("limits.idle_timeout_secs", self.idle_timeout_secs)?,
            grace: seconds("limits.shutdown_grace_secs", self.shutdown_grace_secs)?,
        })
    }
}

/// [`BrokerLimits`]' timeouts, checked.
#[derive(Debug, Clone, Copy)]
struct Timeouts {
    auth: Duration,
    idle: Duration,
    grace: Duration,
}

/// A snapshot of the broker's counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct BrokerStats {
    /// Connections open now.
    pub connections: u64,
    /// Connections accepted since start.
    pub connections_total: u64,
    /// Connections refused because `max_connections` were open.
    pub connections_refused: u64,
    /// Subscriptions in place now (one per connection and topic).
    pub subscriptions: u64,
    /// Messages published.
    pub published: u64,
    /// Messages written to subscribers' sockets.
    pub delivered: u64,
    /// Messages that a subscriber did not get because it was cut off or went away.
    pub dropped: u64,
    /// Subscribers cut off for falling behind.
    pub slow_consumers: u64,
    /// Connections closed for a missing or wrong token.
    pub auth_failures: u64,
    /// Lines answered with `ERR:`.
    pub bad_lines: u64,
}

impl BrokerStats {
    /// Writes the counters as `fragnet_broker_*` metrics (counters get `_total`).
    pub fn encode(&self, mut e: DescriptorEncoder) -> std::fmt::Result {
        let e = &mut e;
        let gauges: [(&str, &str, u64); 2] = [
            (
                "connections",
                "Client connections open now.",
                self.connections,
            ),
            (
                "subscriptions",
                "Subscriptions in place now.",
                self.subscriptions,
            ),
        ];
        for (name, help, v) in gauges {
            metrics::gauge(e, &format!("fragnet_broker_{name}"), help, v)?;
        }
        let counters: [(&str, &str, u64); 8] = [
            (
                "connections",
                "Client connections accepted.",
                self.connections_total,
            ),
            (
                "connections_refused",
                "Connections refused at the connection limit.",
                self.connections_refused,
            ),
            ("published", "Messages published.", self.published),
            (
                "delivered",
                "Messages written to subscribers.",
                self.delivered,
            ),
            (
                "dropped",
                "Messages not delivered to a subscriber that was cut off or gone.",
                self.dropped,
            ),
            (
                "slow_consumers",
                "Subscribers cut off for falling behind.",
                self.slow_consumers,
            ),
            (
                "auth_failures",
                "Connections closed for a missing or wrong token.",
                self.auth_failures,
            ),
            ("bad_lines", "Lines answered with ERR.", self.bad_lines),
        ];
        for (name, help, v) in counters {
            metrics::counter(e, &format!("fragnet_broker_{name}"), help, v)?;
        }
        Ok(())
    }
}

/// The broker's metrics for a `prometheus-client` registry: its counters as they are at
/// each scrape.
#[derive(Clone)]
pub struct BrokerCollector(Arc<Shared>);

impl std::fmt::Debug for BrokerCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BrokerCollector")
    }
}

impl metrics::Collector for BrokerCollector {
    fn encode(&self, e: DescriptorEncoder) -> std::fmt::Result {
        self.0.stats().encode(e)
    }
}

#[derive(Default)]
struct Counters {
    connections: AtomicU64,
    connections_total: AtomicU64,
    connections_refused: AtomicU64,
    subscriptions: AtomicU64,
    published: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
    slow_consumers: AtomicU64,
    auth_failures: AtomicU64,
    bad_lines: AtomicU64,
}

fn bump(c: &AtomicU64, n: u64) {
    c.fetch_add(n, Ordering::Relaxed);
}

/// What one connection is sent.
enum Out {
    /// A `MSG:` line (counted as delivered once written).
    Msg(Bytes),
    /// `PONG` or `ERR:`.
    Reply(Bytes),
    /// Flush what came before, then close.
    Close,
}

impl Out {
    fn len(&self) -> usize {
        match self {
            Out::Msg(b) | Out::Reply(b) => b.len(),
            Out::Close => 0,
        }
    }
}

/// One connection's outbound side, as publishers see it.
struct Outbox {
    tx: mpsc::UnboundedSender<Out>,
    /// Bytes offered and not yet taken by the writer.
    queued: AtomicUsize,
    limit: usize,
    slow: AtomicBool,
    /// Cancelled when the connection must end now: cut off, or its socket failed.
    closing: CancellationToken,
}

impl Outbox {
    /// Queues `out` unless that would overflow the queue, in which case the connection
    /// is cut off as a slow consumer. Never waits.
    fn offer(&self, out: Out, counters: &Counters) -> bool {
        let is_msg = matches!(out, Out::Msg(_));
        let dropped = || {
            if is_msg {
                bump(&counters.dropped, 1);
            }
            false
        };
        if self.closing.is_cancelled() {
            return dropped();
        }
        let len = out.len();
        if self.queued.fetch_add(len, Ordering::AcqRel) + len > self.limit {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            if !self.slow.swap(true, Ordering::AcqRel) {
                bump(&counters.slow_consumers, 1);
                warn!(
                    limit = self.limit,
                    "subscriber fell behind; cutting it off (slow consumer)"
                );
            }
            self.closing.cancel();
            return dropped();
        }
        if self.tx.send(out).is_err() {
            self.queued.fetch_sub(len, Ordering::AcqRel);
            return dropped();
        }
        true
    }
}

struct Shared {
    limits: BrokerLimits,
    timeouts: Timeouts,
    token: Option<AuthToken>,
    /// topic -> connection id -> outbox.
    topics: RwLock<HashMap<String, HashMap<u64, Arc<Outbox>>>>,
    counters: Counters,
}

impl Shared {
    fn publish(&self, topic: &str, message: &str) {
        bump(&self.counters.published, 1);
        let line = msg_line(topic, message);
        let topics = self.topics.read().unwrap();
        if let Some(subs) = topics.get(topic) {
            for outbox in subs.values() {
                outbox.offer(Out::Msg(line.clone()), &self.counters);
            }
        }
    }

    fn stats(&self) -> BrokerStats {
        let c = &self.counters;
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        BrokerStats {
            connections: get(&c.connections),
            connections_total: get(&c.connections_total),
            connections_refused: get(&c.connections_refused),
            subscriptions: get(&c.subscriptions),
            published: get(&c.published),
            delivered: get(&c.delivered),
            dropped: get(&c.dropped),
            slow_consumers: get(&c.slow_consumers),
            auth_failures: get(&c.auth_failures),
            bad_lines: get(&c.bad_lines),
        }
    }
}

/// A running broker.
#[must_use = "dropping the handle does not stop the broker; call shutdown()"]
pub struct BrokerHandle {
    local_addr: SocketAddr,
    cancel: CancellationToken,
    /// Fires (or is dropped) when the broker's thread has finished.
    done: oneshot::Receiver<()>,
    shared: Arc<Shared>,
}

impl std::fmt::Debug for BrokerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerHandle")
            .field("local_addr", &self.local_addr)
            .finish()
    }
}

impl BrokerHandle {
    /// The address actually bound (the real port when 0 was asked for).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// The counters now.
    pub fn stats(&self) -> BrokerStats {
        self.shared.stats()
    }

    /// The broker's metrics, for a registry served at `/metrics`.
    pub fn collector(&self) -> BrokerCollector {
        BrokerCollector(self.shared.clone())
    }

    /// Stops accepting, closes every connection (after the shutdown grace for queued
    /// messages), and returns when all is closed.
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        let _ = (&mut self.done).await;
    }

    /// Waits until the broker has stopped (because the token given to [`spawn`] was
    /// cancelled), without stopping it.
    pub async fn stopped(&mut self) {
        let _ = (&mut self.done).await;
    }
}

/// Binds `config.listen` and runs the broker until `cancel` fires or
/// [`BrokerHandle::shutdown`] is called.
pub async fn spawn(
    config: BrokerConfig,
    cancel: CancellationToken,
) -> Result<BrokerHandle, BrokerError> {
    let timeouts = config.limits.check()?;
    let token = AuthToken::resolve(config.token.as_ref(), config.token_file.as_deref())?;
    let addr = PeerAddr::parse(&config.listen, "tcp")
        .map_err(|e| BrokerError::Config(format!("listen: {e}")))?;
    if addr.scheme != "tcp" || addr.node_id.is_some() {
        return Err(BrokerError::Config(format!(
            "listen: the broker speaks plain TCP; {} is not a tcp://HOST:PORT address",
            config.listen
        )));
    }
    let bind_err = |source| BrokerError::Bind {
        addr: addr.host_port(),
        source,
    };
    // Bound here, in the caller's runtime, so that errors come back from `spawn`; served
    // on the broker's own thread.
    let listener = TcpListener::bind(addr.host_port())
        .await
        .map_err(bind_err)?;
    let local_addr = listener.local_addr().map_err(bind_err)?;
    let listener = listener.into_std().map_err(bind_err)?;
    info!(addr = %local_addr, auth = token.is_some(), "broker listening");
    let shared = Arc::new(Shared {
        limits: config.limits,
        timeouts,
        token,
        topics: RwLock::new(HashMap::new()),
        counters: Counters::default(),
    });
    let cancel = cancel.child_token();
    let (done_tx, done) = oneshot::channel();
    let (thread_shared, thread_cancel) = (shared.clone(), cancel.clone());
    std::thread::Builder::new()
        .name("fragnet-broker".into())
        .spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build();
            match runtime {
                Ok(rt) => rt.block_on(
                    async move {
                        match TcpListener::from_std(listener) {
                            Ok(l) => accept_loop(l, thread_shared, thread_cancel).await,
                            Err(e) => error!(error = %e, "cannot register the listener"),
                        }
                    }
                    .instrument(info_span!("broker", addr = %local_addr)),
                ),
                Err(e) => error!(error = %e, "cannot start the broker's runtime"),
            }
            // Connections still open after the grace period end with the runtime, here.
            let _ = done_tx.send(());
        })
        .map_err(|e| BrokerError::Config(format!("cannot start the broker thread: {e}")))?;
    Ok(BrokerHandle {
        local_addr,
        cancel,
        done,
        shared,
    })
}

async fn accept_loop(listener: TcpListener, shared: Arc<Shared>, cancel: CancellationToken) {
    let permits = Arc::new(Semaphore::new(shared.limits.max_connections));
    let tracker = TaskTracker::new();
    let mut next_id = 0u64;
    loop {
        let (stream, remote) = tokio::select! {
            _ = cancel.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Running out of descriptors must not spin or stop the broker.
                    warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            bump(&shared.counters.connections_refused, 1);
            debug!(%remote, limit = shared.limits.max_connections, "connection limit reached; refusing");
            tracker.spawn(async move {
                let mut stream = stream;
                let _ = tokio::time::timeout(
                    Duration::from_secs(1),
                    stream.write_all(&err_line("too many connections")),
                )
                .await;
            });
            continue;
        };
        stream.set_nodelay(true).ok();
        next_id += 1;
        let (shared, cancel) = (shared.clone(), cancel.clone());
        tracker.spawn(
            async move {
                let _permit = permit;
                serve_connection(stream, next_id, shared, cancel).await;
            }
            .instrument(info_span!("conn", peer = %remote)),
        );
    }
    drop(listener);
    tracker.close();
    // Connections watch the same token; this only bounds a writer stuck on a dead peer.
    let grace = shared.timeouts.grace + NOTICE_TIMEOUT + Duration::from_secs(2);
    if tokio::time::timeout(grace, tracker.wait()).await.is_err() {
        warn!(
            left = tracker.len(),
            "connections still closing after the shutdown grace"
        );
    }
    info!("broker stopped");
}

async fn serve_connection(
    stream: TcpStream,
    id: u64,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) {
    bump(&shared.counters.connections, 1);
    bump(&shared.counters.connections_total, 1);
    debug!("connected");
    let (reader, writer) = stream.into_split();
    let (tx, rx) = mpsc::unbounded_channel();
    let outbox = Arc::new(Outbox {
        tx,
        queued: AtomicUsize::new(0),
        limit: shared.limits.queue_bytes,
        slow: AtomicBool::new(false),
        closing: CancellationToken::new(),
    });
    let mut write_task =
        tokio::spawn(write_loop(writer, rx, outbox.clone(), shared.clone()).in_current_span());
    let mut conn = Connection {
        id,
        authed: shared.token.is_none(),
        shared: shared.clone(),
        outbox: outbox.clone(),
        subs: HashSet::new(),
    };
    let why = conn.read_loop(reader, &shutdown).await;
    conn.unsubscribe_all();
    // Let the writer flush replies and messages already queued (a `PUB`+`PING` client
    // that closes at once still gets its `PONG`), within the grace period.
    outbox.offer(Out::Close, &shared.counters);
    let grace = shared.timeouts.grace;
    if tokio::time::timeout(grace, &mut write_task).await.is_err() {
        // A peer that does not read: stop writing where we are.
        outbox.closing.cancel();
        if tokio::time::timeout(NOTICE_TIMEOUT + Duration::from_secs(1), &mut write_task)
            .await
            .is_err()
        {
            write_task.abort();
        }
    }
    shared.counters.connections.fetch_sub(1, Ordering::Relaxed);
    debug!(reason = why, "disconnected");
}

/// Writes what the connection is sent, many queued lines per system call.
async fn write_loop(
    mut w: OwnedWriteHalf,
    mut rx: mpsc::UnboundedReceiver<Out>,
    outbox: Arc<Outbox>,
    shared: Arc<Shared>,
) {
    const BATCH: usize = 64 * 1024;
    let mut buf = BytesMut::with_capacity(BATCH);
    let mut unsent = 0u64;
    loop {
        let first = tokio::select! {
            biased;
            _ = outbox.closing.cancelled() => break,
            item = rx.recv() => item,
        };
        let Some(mut item) = first else { break };
        let (mut msgs, mut close) = (0u64, false);
        loop {
            outbox.queued.fetch_sub(item.len(), Ordering::AcqRel);
            match item {
                Out::Msg(b) => {
                    buf.extend_from_slice(&b);
                    msgs += 1;
                }
                Out::Reply(b) => buf.extend_from_slice(&b),
                Out::Close => close = true,
            }
            if close || buf.len() >= BATCH {
                break;
            }
            match rx.try_recv() {
                Ok(next) => item = next,
                Err(_) => break,
            }
        }
        if !buf.is_empty() {
            let written = tokio::select! {
                biased;
                _ = outbox.closing.cancelled() => None,
                r = w.write_all(&buf) => Some(r),
            };
            match written {
                Some(Ok(())) => bump(&shared.counters.delivered, msgs),
                Some(Err(e)) => {
                    debug!(error = %e, "write failed");
                    bump(&shared.counters.dropped, msgs);
                    outbox.closing.cancel();
                    return;
                }
                None => {
                    // Interrupted mid-write: whatever part of a line went out is cut.
                    unsent = msgs;
                    buf.clear();
                    buf.extend_from_slice(b"\n");
                    break;
                }
            }
            buf.clear();
        }
        if close {
            let _ = tokio::time::timeout(Duration::from_secs(1), w.shutdown()).await;
            return;
        }
    }
    // Cut off: count what will never be sent, then tell the client why if it listens.
    while let Ok(item) = rx.try_recv() {
        if matches!(item, Out::Msg(_)) {
            unsent += 1;
        }
    }
    bump(&shared.counters.dropped, unsent);
    if outbox.slow.load(Ordering::Acquire) {
        buf.extend_from_slice(&err_line(SLOW_CONSUMER));
        let _ = tokio::time::timeout(NOTICE_TIMEOUT, w.write_all(&buf)).await;
    }
}

/// One client connection's reading side and subscriptions.
struct Connection {
    id: u64,
    authed: bool,
    shared: Arc<Shared>,
    outbox: Arc<Outbox>,
    subs: HashSet<String>,
}

/// What to do after a line.
enum Next {
    Continue,
    Close(&'static str),
}

impl Connection {
    async fn read_loop(
        &mut self,
        reader: OwnedReadHalf,
        shutdown: &CancellationToken,
    ) -> &'static str {
        let limits = self.shared.limits.clone();
        let mut lines = FramedRead::new(reader, LineCodec::new(limits.max_line));
        // From the connection's start, not per line: empty lines do not buy time.
        let auth_deadline = tokio::time::Instant::now() + self.shared.timeouts.auth;
        loop {
            let wait = if !self.authed {
                Some(auth_deadline.saturating_duration_since(tokio::time::Instant::now()))
            } else if self.subs.is_empty() {
                Some(self.shared.timeouts.idle)
            } else {
                None
            };
            let next = async {
                match wait {
                    Some(w) => tokio::time::timeout(w, lines.next()).await.ok(),
                    None => Some(lines.next().await),
                }
            };
            let next = tokio::select! {
                _ = shutdown.cancelled() => return "broker shutting down",
                _ = self.outbox.closing.cancelled() => return "cut off",
                n = next => n,
            };
            let line = match next {
                None if !self.authed => {
                    bump(&self.shared.counters.auth_failures, 1);
                    self.reply(err_line("auth timeout"));
                    return "no AUTH in time";
                }
                None => return "idle timeout",
                // End of input closes the connection (after what is queued is flushed),
                // as Mosquitto and NATS do: a client that has gone cannot be told from
                // one that only closed its sending side, and a gone subscriber must not
                // linger in the topic table until a write fails.
                Some(None) => return "closed by client",
                Some(Some(Err(e))) => {
                    debug!(error = %e, "read failed");
                    return "read failed";
                }
                Some(Some(Ok(line))) => line,
            };
            let next = match line {
                Line::Text(text) => self.handle(&text),
                _ if !self.authed => self.refuse("auth required"),
                Line::TooLong => self.bad(LineError::TooLong(limits.max_line)),
                Line::NotUtf8 => self.bad(LineError::NotUtf8),
            };
            if let Next::Close(why) = next {
                return why;
            }
        }
    }

    fn reply(&self, line: Bytes) {
        self.outbox.offer(Out::Reply(line), &self.shared.counters);
    }

    fn bad(&self, e: LineError) -> Next {
        bump(&self.shared.counters.bad_lines, 1);
        self.reply(err_line(&e.to_string()));
        Next::Continue
    }

    fn handle(&mut self, line: &str) -> Next {
        let cmd = match parse_command(line) {
            Ok(Some(cmd)) => cmd,
            Ok(None) => return Next::Continue,
            Err(e) if self.authed => return self.bad(e),
            Err(_) => return self.refuse("auth required"),
        };
        if !self.authed {
            return match cmd {
                Command::Auth(given)
                    if self.shared.token.as_ref().is_some_and(|t| t.matches(given)) =>
                {
                    self.authed = true;
                    Next::Continue
                }
                Command::Auth(_) => self.refuse("auth failed"),
                _ => self.refuse("auth required"),
            };
        }
        match cmd {
            Command::Ping => self.reply(Bytes::from_static(PONG_LINE)),
            Command::Pub { topic, message } => self.shared.publish(topic, message),
            Command::Sub(topic) => return self.subscribe(topic),
            Command::Unsub(topic) => {
                if self.subs.remove(topic) {
                    self.remove_from_table(topic);
                }
            }
            Command::Auth(given) => {
                // Harmless on an open broker (clients may always send their token); a
                // wrong one on a guarded broker still ends the connection.
                if self
                    .shared
                    .token
                    .as_ref()
                    .is_some_and(|t| !t.matches(given))
                {
                    return self.refuse("auth failed");
                }
            }
        }
        Next::Continue
    }

    fn refuse(&self, why: &'static str) -> Next {
        bump(&self.shared.counters.auth_failures, 1);
        warn!(reason = why, "refusing connection");
        self.reply(err_line(why));
        Next::Close(why)
    }

    fn subscribe(&mut self, topic: &str) -> Next {
        if self.subs.contains(topic) {
            return Next::Continue;
        }
        if self.subs.len() >= self.shared.limits.max_subscriptions {
            bump(&self.shared.counters.bad_lines, 1);
            self.reply(err_line(&format!(
                "too many subscriptions (max {})",
                self.shared.limits.max_subscriptions
            )));
            return Next::Continue;
        }
        self.subs.insert(topic.to_string());
        self.shared
            .topics
            .write()
            .unwrap()
            .entry(topic.to_string())
            .or_default()
            .insert(self.id, self.outbox.clone());
        bump(&self.shared.counters.subscriptions, 1);
        Next::Continue
    }

    fn remove_from_table(&self, topic: &str) {
        let mut topics = self.shared.topics.write().unwrap();
        if let Some(subs) = topics.get_mut(topic) {
            subs.remove(&self.id);
            if subs.is_empty() {
                topics.remove(topic);
            }
        }
        self.shared
            .counters
            .subscriptions
            .fetch_sub(1, Ordering::Relaxed);
    }

    fn unsubscribe_all(&mut self) {
        for topic in std::mem::take(&mut self.subs) {
            self.remove_from_table(&topic);
        }
    }
}
