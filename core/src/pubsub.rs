//! Publish/subscribe: the [`PubSub`] plugin trait, the in-process [`LocalPubSub`], and
//! the [`FragmentEvent`] nodes publish when a fragment becomes available.
//!
//! The contract every implementation keeps (`local` here; `broker` and `nats` live in
//! the apps, because they open sockets):
//!
//! - a topic is 1 to [`MAX_TOPIC_LEN`] bytes of ASCII letters, digits, `.`, `_`, `-`
//!   and `/`, with no empty `.`-separated part ([`check_topic`]); that is a valid
//!   subject on fragnet's broker, on NATS and as an MQTT topic;
//! - a message is UTF-8 text of at most [`MAX_MESSAGE_LEN`] bytes without line breaks
//!   ([`check_message`]), so it fits one line of the broker protocol;
//! - [`PubSub::publish`] returns only when the backend has accepted the message: every
//!   subscription that existed at that moment will see it unless it falls behind;
//! - [`PubSub::subscribe`] returns once the subscription is in place, so a message
//!   published after it returns is delivered to it;
//! - messages from one publisher on one topic arrive in the order they were published;
//! - a subscriber that falls behind loses messages (it is never allowed to block the
//!   publisher); [`Subscription::lost`] and [`Subscription::reconnects`] tell it so it
//!   can catch up another way (nodes reconcile with the registry).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;
use serde::{Deserialize, Serialize};
use tokio::sync::mpsc;

use crate::addr::PeerAddr;
use crate::ids::{FragmentIndex, NodeId, VideoId};
use crate::manifest::MAX_FRAGMENTS;

/// The topic fragment events go to unless configured otherwise.
pub const DEFAULT_TOPIC: &str = "fragments";
/// Longest topic, in bytes.
pub const MAX_TOPIC_LEN: usize = 128;
/// Longest message, in bytes. With the longest topic, a `PUB` line stays well under the
/// broker's default 4 KiB line limit.
pub const MAX_MESSAGE_LEN: usize = 3 * 1024;
/// Longest fragment topic (`topic`): the per-video subject `<topic>.<64 hex>` must
/// still fit [`MAX_TOPIC_LEN`].
pub const MAX_EVENT_TOPIC_LEN: usize = MAX_TOPIC_LEN - 65;
/// Messages a [`LocalPubSub`] subscriber may have waiting before it starts losing them.
pub const DEFAULT_LOCAL_QUEUE: usize = 1024;

/// One message received on a subscription.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The topic it was published to.
    pub topic: String,
    /// What was published.
    pub payload: Bytes,
}

impl Message {
    /// The payload as text; `None` if it is not UTF-8 (possible only from a foreign
    /// publisher on a shared NATS server).
    pub fn text(&self) -> Option<&str> {
        std::str::from_utf8(&self.payload).ok()
    }
}

/// Why a pub/sub operation failed. Variants say what the caller can do about it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PubSubError {
    /// The topic breaks the rules of [`check_topic`]; fix the topic.
    #[error("invalid topic {topic:?}: {reason}")]
    InvalidTopic {
        /// The topic given (cut to 160 characters).
        topic: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The message breaks the rules of [`check_message`]; fix the message.
    #[error("invalid message: {0}")]
    InvalidMessage(String),
    /// The backend cannot be reached (refused, unreachable, name not found); retry later
    /// or fix the address.
    #[error("cannot reach {endpoint}: {reason}")]
    Unreachable {
        /// What was dialed, e.g. `broker 127.0.0.1:5555`.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The backend answered with a refusal (`ERR:...`, bad token); retrying the same
    /// request will not help.
    #[error("{endpoint} refused: {reason}")]
    Rejected {
        /// Who refused.
        endpoint: String,
        /// The reason it gave.
        reason: String,
    },
    /// The backend did not answer in time; the message may or may not have been taken.
    #[error("{endpoint} did not answer within {after:?} ({what})")]
    Timeout {
        /// Who did not answer.
        endpoint: String,
        /// What we were waiting for.
        what: String,
        /// How long we waited.
        after: Duration,
    },
    /// The connection broke mid-request; the message may or may not have been taken.
    #[error("connection to {endpoint} lost: {reason}")]
    Disconnected {
        /// Whose connection.
        endpoint: String,
        /// Why.
        reason: String,
    },
    /// The pub/sub instance was shut down.
    #[error("pub/sub is closed")]
    Closed,
}

/// Checks a topic against the rules every backend shares (see the module docs).
pub fn check_topic(topic: &str) -> Result<(), PubSubError> {
    let bad = |reason: &str| PubSubError::InvalidTopic {
        topic: topic.chars().take(160).collect(),
        reason: reason.to_string(),
    };
    if topic.is_empty() {
        return Err(bad("empty topic"));
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Err(bad(&format!("longer than {MAX_TOPIC_LEN} bytes")));
    }
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '/')))
    {
        return Err(bad(&format!(
            "character {c:?} not allowed (use letters, digits, '.', '_', '-', '/')"
        )));
    }
    // NATS treats '.' as a separator and refuses empty parts.
    if topic.split('.').any(str::is_empty) {
        return Err(bad("empty part between dots"));
    }
    Ok(())
}

/// The subject of one video's fragment events and `who_has` questions:
/// `<topic>.<video id>` (`fragments.3f2a…` by default). Nodes subscribe to the subjects
/// of the videos they hold or want, so a node hears only about those; the plain `topic`
/// also carries every fragment event, for the original clients and `want = "all"`.
pub fn video_topic(topic: &str, video: VideoId) -> String {
    format!("{topic}.{video}")
}

/// Checks a fragment topic (the `topic` setting): a valid topic short enough that its
/// per-video subjects ([`video_topic`]) are valid too.
pub fn check_event_topic(topic: &str) -> Result<(), PubSubError> {
    check_topic(topic)?;
    if topic.len() > MAX_EVENT_TOPIC_LEN {
        return Err(PubSubError::InvalidTopic {
            topic: topic.to_string(),
            reason: format!(
                "longer than {MAX_EVENT_TOPIC_LEN} bytes (the per-video subject \"<topic>.<video id>\" must fit {MAX_TOPIC_LEN})"
            ),
        });
    }
    Ok(())
}

/// Publishes a fragment event where every listener finds it: on the video's subject
/// ([`video_topic`]) for the nodes that follow that video, then on `topic` itself for
/// the original clients (`SUB:fragments`, `fragnet subscribe fragments`) and for
/// `want = "all"` nodes. Fails with the first error.
pub async fn publish_event(
    ps: &dyn PubSub,
    topic: &str,
    event: &FragmentEvent,
) -> Result<(), PubSubError> {
    let payload = event.encode();
    ps.publish(&video_topic(topic, event.video), payload.clone())
        .await?;
    ps.publish(topic, payload).await
}

/// Checks a message against the rules every backend shares: UTF-8, no line breaks, at
/// most [`MAX_MESSAGE_LEN`] bytes. Returns the text.
pub fn check_message(payload: &[u8]) -> Result<&str, PubSubError> {
    if payload.len() > MAX_MESSAGE_LEN {
        return Err(PubSubError::InvalidMessage(format!(
            "{} bytes, more than the {MAX_MESSAGE_LEN} allowed",
            payload.len()
        )));
    }
    let text = std::str::from_utf8(payload)
        .map_err(|_| PubSubError::InvalidMessage("not UTF-8 text".into()))?;
    if text.contains(['\n', '\r']) {
        return Err(PubSubError::InvalidMessage("contains a line break".into()));
    }
    Ok(text)
}

/// A pub/sub plugin: `local`, `broker`, `nats`.
#[async_trait]
pub trait PubSub: Send + Sync + 'static {
    /// Which implementation this is (`"local"`, `"broker"`, `"nats"`), for logs.
    fn kind(&self) -> &'static str;

    /// Publishes `payload` to `topic`; returns once the backend has accepted it.
    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), PubSubError>;

    /// Subscribes to `topic`; returns once the subscription is in place.
    async fn subscribe(&self, topic: &str) -> Result<Subscription, PubSubError>;
}

/// Counters shared between a subscription and whatever feeds it.
#[derive(Debug, Default)]
pub struct SubscriptionStats {
    /// Messages known to be lost because this subscriber fell behind.
    pub lost: AtomicU64,
    /// Times the subscription had to be re-established (messages published while it was
    /// down are lost, and their number is unknown).
    pub reconnects: AtomicU64,
}

/// A stream of the messages published to one topic. Dropping it unsubscribes.
///
/// Implements [`futures::Stream`]; [`Subscription::next`] is the same without importing
/// `StreamExt`. The stream ends when the backend is shut down for good.
pub struct Subscription {
    topic: String,
    stream: Pin<Box<dyn Stream<Item = Message> + Send>>,
    stats: Arc<SubscriptionStats>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("topic", &self.topic)
            .field("stats", &self.stats)
            .finish()
    }
}

impl Subscription {
    /// Wraps a backend's message stream (for implementations of [`PubSub`]).
    pub fn new(
        topic: &str,
        stream: impl Stream<Item = Message> + Send + 'static,
        stats: Arc<SubscriptionStats>,
    ) -> Self {
        Subscription {
            topic: topic.to_string(),
            stream: Box::pin(stream),
            stats,
        }
    }

    /// A subscription fed by a channel; dropping it closes the channel, which tells the
    /// feeder to stop.
    pub fn from_channel(
        topic: &str,
        mut rx: mpsc::Receiver<Message>,
        stats: Arc<SubscriptionStats>,
    ) -> Self {
        Self::new(
            topic,
            futures::stream::poll_fn(move |cx| rx.poll_recv(cx)),
            stats,
        )
    }

    /// The topic subscribed to.
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The next message; `None` once the backend has shut down.
    pub async fn next(&mut self) -> Option<Message> {
        futures::StreamExt::next(&mut self.stream).await
    }

    /// Messages known to be lost because this subscriber fell behind.
    pub fn lost(&self) -> u64 {
        self.stats.lost.load(Ordering::Relaxed)
    }

    /// Times the subscription was re-established after its connection broke.
    pub fn reconnects(&self) -> u64 {
        self.stats.reconnects.load(Ordering::Relaxed)
    }
}

impl Stream for Subscription {
    type Item = Message;
    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Message>> {
        self.stream.as_mut().poll_next(cx)
    }
}

/// The in-process bus: every clone shares the same topics. For the embedded demo and
/// for tests. Each subscriber has a bounded queue; when it is full, new messages for
/// that subscriber are dropped and counted ([`Subscription::lost`]), and the publisher
/// carries on.
#[derive(Clone)]
pub struct LocalPubSub {
    inner: Arc<LocalInner>,
}

struct LocalInner {
    queue: usize,
    topics: Mutex<HashMap<String, Vec<LocalSubscriber>>>,
    published: AtomicU64,
    delivered: AtomicU64,
    dropped: AtomicU64,
}

struct LocalSubscriber {
    tx: mpsc::Sender<Message>,
    stats: Arc<SubscriptionStats>,
}

/// A snapshot of a [`LocalPubSub`]'s counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct LocalStats {
    /// Messages published.
    pub published: u64,
    /// Messages queued to a subscriber.
    pub delivered: u64,
    /// Messages a subscriber lost because its queue was full.
    pub dropped: u64,
    /// Live subscriptions.
    pub subscriptions: u64,
}

impl std::fmt::Debug for LocalPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalPubSub")
            .field("queue", &self.inner.queue)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Default for LocalPubSub {
    fn default() -> Self {
        Self::new(DEFAULT_LOCAL_QUEUE)
    }
}

impl LocalPubSub {
    /// A bus whose subscribers may each have up to `queue` messages waiting.
    pub fn new(queue: usize) -> Self {
        LocalPubSub {
            inner: Arc::new(LocalInner {
                queue: queue.max(1),
                topics: Mutex::new(HashMap::new()),
                published: AtomicU64::new(0),
                delivered: AtomicU64::new(0),
                dropped: AtomicU64::new(0),
            }),
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> LocalStats {
        let i = &self.inner;
        let subscriptions = i
            .topics
            .lock()
            .unwrap()
            .values()
            .flatten()
            .filter(|s| !s.tx.is_closed())
            .count() as u64;
        LocalStats {
            published: i.published.load(Ordering::Relaxed),
            delivered: i.delivered.load(Ordering::Relaxed),
            dropped: i.dropped.load(Ordering::Relaxed),
            subscriptions,
        }
    }
}

#[async_trait]
impl PubSub for LocalPubSub {
    fn kind(&self) -> &'static str {
        "local"
    }

    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), PubSubError> {
        check_topic(topic)?;
        check_message(&payload)?;
        let i = &self.inner;
        i.published.fetch_add(1, Ordering::Relaxed);
        let mut topics = i.topics.lock().unwrap();
        let Some(subs) = topics.get_mut(topic) else {
            return Ok(());
        };
        subs.retain(|s| !s.tx.is_closed());
        let msg = Message {
            topic: topic.to_string(),
            payload,
        };
        for s in subs.iter() {
            match s.tx.try_send(msg.clone()) {
                Ok(()) => {
                    i.delivered.fetch_add(1, Ordering::Relaxed);
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    s.stats.lost.fetch_add(1, Ordering::Relaxed);
                    i.dropped.fetch_add(1, Ordering::Relaxed);
                }
                // Dropped between the retain and here; nobody is listening any more.
                Err(mpsc::error::TrySendError::Closed(_)) => {}
            }
        }
        if subs.is_empty() {
            topics.remove(topic);
        }
        Ok(())
    }

    async fn subscribe(&self, topic: &str) -> Result<Subscription, PubSubError> {
        check_topic(topic)?;
        let (tx, rx) = mpsc::channel(self.inner.queue);
        let stats = Arc::new(SubscriptionStats::default());
        let mut topics = self.inner.topics.lock().unwrap();
        let subs = topics.entry(topic.to_string()).or_default();
        subs.retain(|s| !s.tx.is_closed());
        subs.push(LocalSubscriber {
            tx,
            stats: stats.clone(),
        });
        Ok(Subscription::from_channel(topic, rx, stats))
    }
}

/// Most addresses an event may carry.
pub const MAX_EVENT_ADDRS: usize = 16;

/// "Node `node` now holds fragment `index` of video `video`; reach it at `addrs`."
/// Published on the fragment topic after a fragment is stored and verified. Carries ids,
/// never fragment data.
///
/// Wire form: one JSON object,
/// `{"video":"<64 hex>","index":5,"node":"<64 hex>","addrs":["tcp://10.0.0.2:6001"]}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FragmentEvent {
    /// The video.
    pub video: VideoId,
    /// The fragment now available.
    pub index: FragmentIndex,
    /// The node that holds it.
    pub node: NodeId,
    /// Where to reach that node: addresses with their scheme (`tcp://`, `quic://`).
    pub addrs: Vec<PeerAddr>,
}

/// Why a message on the fragment topic is not a [`FragmentEvent`] (for instance the
/// original project's plain `fragment_5.bin`). Nodes ignore and count such messages.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a fragment event: {0}")]
pub struct NotAnEvent(pub String);

/// The event as it travels, before its addresses are checked.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEvent {
    video: VideoId,
    index: FragmentIndex,
    node: NodeId,
    addrs: Vec<String>,
}

impl FragmentEvent {
    /// The JSON wire form (always valid under [`check_message`] when the event itself
    /// would pass [`FragmentEvent::parse`]).
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a FragmentEvent always serializes"))
    }

    /// Parses and checks a message: exactly the four fields, ids as 64 lowercase hex, an
    /// index below the manifest limit, 1 to [`MAX_EVENT_ADDRS`] addresses that each name
    /// their scheme and a host and port someone else can dial (not `0.0.0.0`, not port 0).
    pub fn parse(payload: &[u8]) -> Result<Self, NotAnEvent> {
        if payload.len() > MAX_MESSAGE_LEN {
            return Err(NotAnEvent(format!("{} bytes is too long", payload.len())));
        }
        if !payload.trim_ascii_start().starts_with(b"{") {
            return Err(NotAnEvent("not a JSON object".into()));
        }
        let raw: RawEvent =
            serde_json::from_slice(payload).map_err(|e| NotAnEvent(e.to_string()))?;
        if raw.index >= MAX_FRAGMENTS {
            return Err(NotAnEvent(format!(
                "fragment index {} out of range",
                raw.index
            )));
        }
        if raw.addrs.is_empty() || raw.addrs.len() > MAX_EVENT_ADDRS {
            return Err(NotAnEvent(format!(
                "{} addresses (expected 1 to {MAX_EVENT_ADDRS})",
                raw.addrs.len()
            )));
        }
        let mut addrs = Vec::with_capacity(raw.addrs.len());
        for a in &raw.addrs {
            if !a.contains("://") {
                return Err(NotAnEvent(format!("address {a:?} has no scheme")));
            }
            let addr: PeerAddr = a
                .parse()
                .map_err(|e: crate::addr::BadAddr| NotAnEvent(e.to_string()))?;
            let unspecified = addr
                .host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_unspecified());
            if addr.port == 0 || unspecified {
                return Err(NotAnEvent(format!("address {a:?} cannot be dialed")));
            }
            addrs.push(addr);
        }
        Ok(FragmentEvent {
            video: raw.video,
            index: raw.index,
            node: raw.node,
            addrs,
        })
    }
}

/// "Node `node` no longer holds video `withdrawn`": published when a node removes or
/// evicts a video, so nodes that heard its fragment events stop asking it.
///
/// Wire form: `{"withdrawn":"<64 hex>","node":"<64 hex>","addrs":["tcp://10.0.0.2:6001"]}`.
/// Nodes that don't know it ignore it like any message that is not a fragment event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Withdrawal {
    /// The video withdrawn.
    pub withdrawn: VideoId,
    /// The node that no longer holds it.
    pub node: NodeId,
    /// The addresses the node announced it at.
    pub addrs: Vec<PeerAddr>,
}

impl Withdrawal {
    /// The JSON wire form.
    pub fn encode(&self) -> Bytes {
        Bytes::from(serde_json::to_vec(self).expect("a Withdrawal always serializes"))
    }

    /// Parses a message: exactly the three fields, at most [`MAX_EVENT_ADDRS`] addresses.
    pub fn parse(payload: &[u8]) -> Result<Self, NotAnEvent> {
        if payload.len() > MAX_MESSAGE_LEN {
            return Err(NotAnEvent(format!("{} bytes is too long", payload.len())));
        }
        let w: Withdrawal =
            serde_json::from_slice(payload).map_err(|e| NotAnEvent(e.to_string()))?;
        if w.addrs.len() > MAX_EVENT_ADDRS {
            return Err(NotAnEvent(format!(
                "{} addresses (at most {MAX_EVENT_ADDRS})",
                w.addrs.len()
            )));
        }
        Ok(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Digest;

    #[test]
    fn withdrawals_round_trip_and_are_not_events() {
        let w = Withdrawal {
            withdrawn: VideoId(Digest::of(b"video")),
            node: NodeId(Digest::of(b"node")),
            addrs: vec!["tcp://10.0.0.2:6001".parse().unwrap()],
        };
        assert_eq!(Withdrawal::parse(&w.encode()).unwrap(), w);
        assert!(FragmentEvent::parse(&w.encode()).is_err());
        assert!(Withdrawal::parse(&event().encode()).is_err());
        assert!(Withdrawal::parse(b"fragment_5.bin").is_err());
    }

    fn event() -> FragmentEvent {
        FragmentEvent {
            video: VideoId(Digest::of(b"video")),
            index: 5,
            node: NodeId(Digest::of(b"node")),
            addrs: vec![
                "tcp://10.0.0.2:6001".parse().unwrap(),
                PeerAddr::parse("quic://[::1]:7001", "tcp").unwrap(),
            ],
        }
    }

    #[test]
    fn topics() {
        for ok in [
            "fragments",
            "a",
            "video.1.fragments",
            "a/b-c_d",
            &"x".repeat(MAX_TOPIC_LEN),
        ] {
            check_topic(ok).unwrap();
        }
        for bad in [
            "",
            "a b",
            "a:b",
            "a\nb",
            "*",
            "a.>",
            ".a",
            "a.",
            "a..b",
            "é",
            &"x".repeat(MAX_TOPIC_LEN + 1),
        ] {
            assert!(
                matches!(check_topic(bad), Err(PubSubError::InvalidTopic { .. })),
                "{bad:?} should be refused"
            );
        }
    }

    #[test]
    fn event_topics_leave_room_for_the_video_id() {
        let v = VideoId(Digest::of(b"video"));
        let longest = "x".repeat(MAX_EVENT_TOPIC_LEN);
        check_event_topic(&longest).unwrap();
        check_topic(&video_topic(&longest, v)).unwrap();
        assert_eq!(video_topic("fragments", v), format!("fragments.{v}"));
        let e = check_event_topic(&format!("{longest}x")).unwrap_err();
        assert!(e.to_string().contains("per-video subject"), "{e}");
        assert!(check_event_topic("a b").is_err());
    }

    #[test]
    fn messages() {
        assert_eq!(check_message(b"fragment_5.bin").unwrap(), "fragment_5.bin");
        check_message(b"").unwrap();
        check_message("a:b:c ✓".as_bytes()).unwrap();
        check_message(&vec![b'x'; MAX_MESSAGE_LEN]).unwrap();
        for bad in [
            &b"a\nb"[..],
            b"a\rb",
            b"\xff\xfe",
            &vec![b'x'; MAX_MESSAGE_LEN + 1],
        ] {
            assert!(matches!(
                check_message(bad),
                Err(PubSubError::InvalidMessage(_))
            ));
        }
    }

    #[test]
    fn event_round_trip() {
        let e = event();
        let wire = e.encode();
        check_message(&wire).unwrap();
        assert_eq!(FragmentEvent::parse(&wire).unwrap(), e);
        let text = std::str::from_utf8(&wire).unwrap();
        assert!(text.starts_with("{\"video\":\""), "{text}");
        assert!(
            text.contains("\"addrs\":[\"tcp://10.0.0.2:6001\",\"quic://[::1]:7001\"]"),
            "{text}"
        );
    }

    #[test]
    fn non_events_are_recognised() {
        let good = String::from_utf8(event().encode().to_vec()).unwrap();
        let cases = [
            "fragment_5.bin".to_string(),
            "".to_string(),
            "[]".to_string(),
            "{}".to_string(),
            "{\"video\":1}".to_string(),
            good.replace("\"index\":5", "\"index\":5,\"extra\":1"),
            good.replace("\"index\":5", "\"index\":-1"),
            good.replace("\"index\":5", "\"index\":4096"),
            good.replace("\"index\":5", "\"index\":\"5\""),
            good.replace("tcp://10.0.0.2:6001", "10.0.0.2:6001"),
            good.replace("tcp://10.0.0.2:6001", "tcp://0.0.0.0:6001"),
            good.replace("tcp://10.0.0.2:6001", "tcp://10.0.0.2:0"),
            good.replace("tcp://10.0.0.2:6001", "tcp://no port"),
            good.replace(
                &event().video.to_string(),
                &event().video.to_string().to_uppercase(),
            ),
            format!("{good} trailing"),
            format!("{good}{good}"),
            good.replace(
                "\"addrs\":[\"tcp://10.0.0.2:6001\",\"quic://[::1]:7001\"]",
                "\"addrs\":[]",
            ),
        ];
        for c in cases {
            assert!(
                FragmentEvent::parse(c.as_bytes()).is_err(),
                "{c:?} should not parse as an event"
            );
        }
        let many: Vec<String> = (0..=MAX_EVENT_ADDRS)
            .map(|i| format!("\"tcp://h:{}\"", i + 1))
            .collect();
        let too_many = good.replace(
            "\"tcp://10.0.0.2:6001\",\"quic://[::1]:7001\"",
            &many.join(","),
        );
        assert!(FragmentEvent::parse(too_many.as_bytes()).is_err());
    }

    #[tokio::test]
    async fn local_delivers_and_counts_a_slow_subscriber() {
        let bus = LocalPubSub::new(4);
        let mut slow = bus.subscribe("t").await.unwrap();
        let mut fast = bus.subscribe("t").await.unwrap();
        let mut other = bus.subscribe("u").await.unwrap();
        for i in 0..10 {
            bus.publish("t", Bytes::from(format!("m{i}")))
                .await
                .unwrap();
            assert_eq!(fast.next().await.unwrap().payload, format!("m{i}"));
        }
        // The slow one kept the first 4 and lost the rest; the publisher never waited.
        for i in 0..4 {
            assert_eq!(slow.next().await.unwrap().payload, format!("m{i}"));
        }
        assert_eq!(slow.lost(), 6);
        assert_eq!(fast.lost(), 0);
        let s = bus.stats();
        assert_eq!(
            (s.published, s.delivered, s.dropped, s.subscriptions),
            (10, 14, 6, 3)
        );
        bus.publish("u", Bytes::from_static(b"x")).await.unwrap();
        let m = other.next().await.unwrap();
        assert_eq!((m.topic.as_str(), m.text()), ("u", Some("x")));
        drop(slow);
        assert_eq!(bus.stats().subscriptions, 2);
    }

    #[tokio::test]
    async fn local_refuses_bad_input() {
        let bus = LocalPubSub::default();
        assert!(matches!(
            bus.subscribe("a b").await,
            Err(PubSubError::InvalidTopic { .. })
        ));
        assert!(matches!(
            bus.publish("t", Bytes::from_static(b"a\nb")).await,
            Err(PubSubError::InvalidMessage(_))
        ));
        assert_eq!(bus.stats().published, 0);
    }
}
