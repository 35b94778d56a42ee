//! The pub/sub behaviour suite: the same tests for every [`PubSub`] implementation.
//!
//! A crate runs it with `fragnet_core::pubsub_conformance!(start_fixture);` where
//! `async fn start_fixture() -> F` starts the backend (a real broker, a real
//! nats-server, or a [`LocalPubSub`]) and `F: PubSubFixture` hands out independent
//! clients of it. Every wait is bounded.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::within;
use crate::ids::{Digest, NodeId, VideoId};
use crate::pubsub::{
    FragmentEvent, LocalPubSub, MAX_MESSAGE_LEN, MAX_TOPIC_LEN, Message, PubSub, PubSubError,
    Subscription,
};

/// A running backend under test.
#[async_trait]
pub trait PubSubFixture: Send + Sync {
    /// A new client of the backend: its own connection(s), as a separate process would
    /// have.
    async fn client(&self) -> Arc<dyn PubSub>;
}

#[async_trait]
impl PubSubFixture for LocalPubSub {
    async fn client(&self) -> Arc<dyn PubSub> {
        Arc::new(self.clone())
    }
}

async fn recv(sub: &mut Subscription, what: &str) -> Message {
    within(10, what, sub.next())
        .await
        .unwrap_or_else(|| panic!("subscription ended while waiting for {what}"))
}

/// Asserts nothing arrives on `sub` for a short while.
async fn quiet(sub: &mut Subscription, what: &str) {
    if let Ok(Some(m)) = tokio::time::timeout(Duration::from_millis(300), sub.next()).await {
        panic!("{what}: unexpected message {m:?}");
    }
}

/// One publisher's messages reach a subscriber on another client, intact and in order;
/// the message may contain ':' and any UTF-8.
pub async fn delivers_in_order(f: &dyn PubSubFixture) {
    let (sub_client, pub_client) = (f.client().await, f.client().await);
    let mut sub = within(10, "subscribe", sub_client.subscribe("fragments"))
        .await
        .unwrap();
    assert_eq!(sub.topic(), "fragments");
    let odd = "PUB:x:y: ✓ fragment_5.bin:";
    within(
        10,
        "publish",
        pub_client.publish("fragments", Bytes::from(odd)),
    )
    .await
    .unwrap();
    let m = recv(&mut sub, "the first message").await;
    assert_eq!((m.topic.as_str(), m.text()), ("fragments", Some(odd)));
    for i in 0..200 {
        within(
            10,
            "publish",
            pub_client.publish("fragments", Bytes::from(format!("m{i}"))),
        )
        .await
        .unwrap();
    }
    for i in 0..200 {
        let m = recv(&mut sub, "message in sequence").await;
        assert_eq!(
            m.text(),
            Some(format!("m{i}").as_str()),
            "order broken at {i}"
        );
    }
    assert_eq!(sub.lost(), 0);
}

/// Every subscriber gets every message, whichever client it is on (the publisher's own
/// included).
pub async fn fan_out_to_every_subscriber(f: &dyn PubSubFixture) {
    let publisher = f.client().await;
    let mut subs = Vec::new();
    for _ in 0..5 {
        let c = f.client().await;
        subs.push(within(10, "subscribe", c.subscribe("fan")).await.unwrap());
    }
    subs.push(
        within(
            10,
            "subscribe on the publisher's client",
            publisher.subscribe("fan"),
        )
        .await
        .unwrap(),
    );
    for i in 0..20 {
        within(
            10,
            "publish",
            publisher.publish("fan", Bytes::from(format!("{i}"))),
        )
        .await
        .unwrap();
    }
    for (n, sub) in subs.iter_mut().enumerate() {
        for i in 0..20 {
            let m = recv(sub, "fan-out message").await;
            assert_eq!(m.text(), Some(format!("{i}").as_str()), "subscriber {n}");
        }
    }
}

/// A subscriber sees its topic only: not another topic, not a longer one that starts
/// with the same characters.
pub async fn topics_are_separate(f: &dyn PubSubFixture) {
    let (a, b) = (f.client().await, f.client().await);
    let mut sub = within(10, "subscribe", a.subscribe("news")).await.unwrap();
    let mut deeper = within(10, "subscribe", a.subscribe("news.sport"))
        .await
        .unwrap();
    within(10, "publish", b.publish("other", Bytes::from("no")))
        .await
        .unwrap();
    within(
        10,
        "publish",
        b.publish("news.sport", Bytes::from("deeper")),
    )
    .await
    .unwrap();
    within(10, "publish", b.publish("newsx", Bytes::from("no")))
        .await
        .unwrap();
    within(10, "publish", b.publish("news", Bytes::from("yes")))
        .await
        .unwrap();
    // Same publisher, so "news.sport" was routed before "news": had "news" matched it,
    // it would arrive first.
    assert_eq!(recv(&mut sub, "news").await.text(), Some("yes"));
    assert_eq!(recv(&mut deeper, "news.sport").await.text(), Some("deeper"));
    quiet(&mut sub, "news").await;
    quiet(&mut deeper, "news.sport").await;
}

/// `subscribe` returns only once the subscription is in place: a message published by
/// another client right after it returns is delivered.
pub async fn subscription_is_in_place_when_subscribe_returns(f: &dyn PubSubFixture) {
    let publisher = f.client().await;
    for i in 0..50 {
        let c = f.client().await;
        let topic = format!("race.{i}");
        let mut sub = within(10, "subscribe", c.subscribe(&topic)).await.unwrap();
        within(10, "publish", publisher.publish(&topic, Bytes::from("now")))
            .await
            .unwrap();
        assert_eq!(
            recv(&mut sub, "the message published right after subscribing")
                .await
                .text(),
            Some("now"),
            "round {i}"
        );
    }
}

/// Publishing to a topic nobody listens to succeeds (the message goes nowhere).
pub async fn publish_without_subscribers(f: &dyn PubSubFixture) {
    let c = f.client().await;
    within(10, "publish", c.publish("nobody.listens", Bytes::from("x")))
        .await
        .unwrap();
}

/// Bad topics and messages are refused with a typed error, on publish and subscribe, and
/// the client stays usable.
pub async fn refuses_invalid_topics_and_messages(f: &dyn PubSubFixture) {
    let c = f.client().await;
    let long = "t".repeat(MAX_TOPIC_LEN + 1);
    for topic in ["", "a b", "a:b", "a\nb", "*", "a.>", "a..b", long.as_str()] {
        let e = within(10, "publish", c.publish(topic, Bytes::from("x")))
            .await
            .unwrap_err();
        assert!(
            matches!(e, PubSubError::InvalidTopic { .. }),
            "publish to {topic:?}: {e}"
        );
        let e = within(10, "subscribe", c.subscribe(topic))
            .await
            .unwrap_err();
        assert!(
            matches!(e, PubSubError::InvalidTopic { .. }),
            "subscribe to {topic:?}: {e}"
        );
    }
    let big = vec![b'x'; MAX_MESSAGE_LEN + 1];
    for msg in [&b"two\nlines"[..], b"cr\rhere", b"\xff\xfe", &big] {
        let e = within(10, "publish", c.publish("ok", Bytes::copy_from_slice(msg)))
            .await
            .unwrap_err();
        assert!(matches!(e, PubSubError::InvalidMessage(_)), "{e}");
    }
    let mut sub = within(10, "subscribe", c.subscribe("ok")).await.unwrap();
    within(10, "publish", c.publish("ok", Bytes::from("still works")))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut sub, "after refusals").await.text(),
        Some("still works")
    );
}

/// The largest message on the longest topic travels intact.
pub async fn largest_message(f: &dyn PubSubFixture) {
    let (a, b) = (f.client().await, f.client().await);
    let topic = "t".repeat(MAX_TOPIC_LEN);
    let body: String = (0..MAX_MESSAGE_LEN)
        .map(|i| char::from(b'a' + (i % 26) as u8))
        .collect();
    let mut sub = within(10, "subscribe", a.subscribe(&topic)).await.unwrap();
    within(10, "publish", b.publish(&topic, Bytes::from(body.clone())))
        .await
        .unwrap();
    assert_eq!(
        recv(&mut sub, "largest message").await.text(),
        Some(body.as_str())
    );
}

/// Fragment events arrive parseable; the original project's plain `fragment_5.bin` on the
/// same topic arrives too and is recognised as not an event.
pub async fn fragment_events_and_plain_messages(f: &dyn PubSubFixture) {
    let (a, b) = (f.client().await, f.client().await);
    let mut sub = within(10, "subscribe", a.subscribe("fragments"))
        .await
        .unwrap();
    let event = FragmentEvent {
        video: VideoId(Digest::of(b"v")),
        index: 5,
        node: NodeId(Digest::of(b"n")),
        addrs: vec![
            "tcp://127.0.0.1:6001".parse().unwrap(),
            "quic://127.0.0.1:7001".parse().unwrap(),
        ],
    };
    within(
        10,
        "publish",
        b.publish("fragments", Bytes::from("fragment_5.bin")),
    )
    .await
    .unwrap();
    within(10, "publish", b.publish("fragments", event.encode()))
        .await
        .unwrap();
    let plain = recv(&mut sub, "plain message").await;
    assert_eq!(plain.text(), Some("fragment_5.bin"));
    assert!(FragmentEvent::parse(&plain.payload).is_err());
    let m = recv(&mut sub, "event").await;
    assert_eq!(FragmentEvent::parse(&m.payload).unwrap(), event);
}

/// Dropping one subscription does not disturb another on the same client or another.
pub async fn dropping_a_subscription(f: &dyn PubSubFixture) {
    let (a, b, p) = (f.client().await, f.client().await, f.client().await);
    let gone = within(10, "subscribe", a.subscribe("t")).await.unwrap();
    let mut same_client = within(10, "subscribe", a.subscribe("t")).await.unwrap();
    let mut other_client = within(10, "subscribe", b.subscribe("t")).await.unwrap();
    drop(gone);
    for i in 0..10 {
        within(10, "publish", p.publish("t", Bytes::from(format!("{i}"))))
            .await
            .unwrap();
    }
    for i in 0..10 {
        assert_eq!(
            recv(&mut same_client, "same client").await.text(),
            Some(format!("{i}").as_str())
        );
        assert_eq!(
            recv(&mut other_client, "other client").await.text(),
            Some(format!("{i}").as_str())
        );
    }
}

/// Runs the pub/sub behaviour suite, one `#[tokio::test]` per case, against the fixture
/// `$start().await` returns.
#[macro_export]
macro_rules! pubsub_conformance {
    ($start:expr) => {
        mod pubsub_conformance {
            use super::*;
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        let fixture =
                            $crate::conformance::within(60, "starting the backend", $start()).await;
                        $crate::conformance::pubsub::$name(&fixture).await
                    }
                };
            }
            case!(delivers_in_order);
            case!(fan_out_to_every_subscriber);
            case!(topics_are_separate);
            case!(subscription_is_in_place_when_subscribe_returns);
            case!(publish_without_subscribers);
            case!(refuses_invalid_topics_and_messages);
            case!(largest_message);
            case!(fragment_events_and_plain_messages);
            case!(dropping_a_subscription);
        }
    };
}
