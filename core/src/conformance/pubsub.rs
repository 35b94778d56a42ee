//! The pub/sub behaviour suite: the same tests for every [`PubSub`] implementation.
//!
//! A crate runs it with `fragnet_core::pubsub_conformance!(start_fixture);` where
//! `async fn start_fixture() -> F` starts the backend (a real broker, a real
//! nats-server, or a [`LocalPubSub`]) and `F: PubSubFixture` hands out independent
//! clients of it. Every wait is bounded.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use super::within;
use crate::discovery::{AddrPicker, Discovery, EventDiscovery, Hint};
use crate::engine::Want;
use crate::ids::{Digest, NodeId, VideoId};
use crate::pubsub::{
    FragmentEvent, LocalPubSub, MAX_MESSAGE_LEN, MAX_TOPIC_LEN, Message, PubSub, PubSubError,
    Subscription, publish_event, video_topic,
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

fn event_of(video: &[u8], index: u32, node: &[u8]) -> FragmentEvent {
    FragmentEvent {
        video: VideoId(Digest::of(video)),
        index,
        node: NodeId(Digest::of(node)),
        addrs: vec!["tcp://127.0.0.1:6001".parse().unwrap()],
    }
}

/// The next hint a discovery passes on, within 10 s.
async fn next_hint(hints: &mut tokio::sync::broadcast::Receiver<Hint>, what: &str) -> Hint {
    within(10, what, hints.recv())
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"))
}

/// Asserts no hint arrives for a short while.
async fn no_hint(hints: &mut tokio::sync::broadcast::Receiver<Hint>, what: &str) {
    if let Ok(Ok(h)) = tokio::time::timeout(Duration::from_millis(500), hints.recv()).await {
        panic!("{what}: unexpected hint {h:?}");
    }
}

/// Fragment events go to one subject per video: a node that wants video A hears A's
/// events and not B's; once it follows B (as a download of B does) it hears B's; a
/// `want = "all"` node and the original clients on the plain topic hear both.
pub async fn per_video_subjects(f: &dyn PubSubFixture) {
    let (a, b) = (
        VideoId(Digest::of(b"video a")),
        VideoId(Digest::of(b"video b")),
    );
    let (node_client, all_client, seed_client, publisher) = (
        f.client().await,
        f.client().await,
        f.client().await,
        f.client().await,
    );
    let picker = AddrPicker::new(vec!["tcp"], "tcp");
    let cancel = tokio_util::sync::CancellationToken::new();
    let start = |ps: Arc<dyn PubSub>, want: Want| {
        let d = Arc::new(
            EventDiscovery::new(
                ps,
                "fragments".into(),
                NodeId(Digest::of(b"listener")),
                picker.clone(),
            )
            .with_want(&want),
        );
        let (tx, rx) = tokio::sync::broadcast::channel(64);
        let task = d.clone().watch(tx, cancel.clone()).expect("events watch");
        (d, rx, task)
    };
    let (wants_a, mut hints_a, task_a) = start(node_client, Want::Videos(vec![a]));
    let (wants_all, mut hints_all, task_all) = start(all_client, Want::All);
    let mut seed = within(10, "subscribe", seed_client.subscribe("fragments"))
        .await
        .unwrap();
    within(10, "following a", async {
        while wants_a.followed() != vec![a] {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    // The want = all node's plain-topic subscription is made in the background: wait
    // until a probe on the plain topic reaches it.
    within(20, "the want = all node listening", async {
        loop {
            let probe = event_of(b"probe", 0, b"prober");
            publish_event(publisher.as_ref(), "fragments", &probe)
                .await
                .unwrap();
            if let Ok(Ok(h)) =
                tokio::time::timeout(Duration::from_millis(200), hints_all.recv()).await
            {
                assert_eq!(h.video, probe.video);
                break;
            }
        }
    })
    .await;
    while let Ok(Some(_)) = tokio::time::timeout(Duration::from_millis(300), seed.next()).await {}
    while hints_all.try_recv().is_ok() {}
    // Probes are not for video a: nothing reached its node.
    no_hint(&mut hints_a, "probes on the plain topic").await;

    let ev_a = event_of(b"video a", 1, b"holder");
    let ev_b = event_of(b"video b", 2, b"holder");
    for ev in [&ev_b, &ev_a] {
        within(
            10,
            "publish",
            publish_event(publisher.as_ref(), "fragments", ev),
        )
        .await
        .unwrap();
    }
    let h = next_hint(&mut hints_a, "video a's event").await;
    assert_eq!((h.video, h.fragments), (a, Some(vec![1])));
    no_hint(&mut hints_a, "video b's event at a node that wants only a").await;
    assert_eq!(wants_a.stats.events_received.load(Ordering::Relaxed), 1);
    let mut all_heard = vec![
        next_hint(&mut hints_all, "want = all").await.video,
        next_hint(&mut hints_all, "want = all").await.video,
    ];
    all_heard.sort();
    let mut both = vec![a, b];
    both.sort();
    assert_eq!(all_heard, both, "a want = all node hears every video");
    for ev in [&ev_b, &ev_a] {
        let m = recv(&mut seed, "the plain topic").await;
        assert_eq!(m.topic, "fragments");
        assert_eq!(FragmentEvent::parse(&m.payload).unwrap(), *ev);
    }

    // Starting to want b while running: follow its subject, then its events arrive.
    within(10, "follow b", wants_a.follow(b)).await;
    let ev_b2 = event_of(b"video b", 3, b"holder");
    within(
        10,
        "publish",
        publish_event(publisher.as_ref(), "fragments", &ev_b2),
    )
    .await
    .unwrap();
    let h = next_hint(&mut hints_a, "video b's event after following b").await;
    assert_eq!((h.video, h.fragments), (b, Some(vec![3])));
    // The want = all node follows no subject, so it hears the event once.
    let h = next_hint(&mut hints_all, "want = all").await;
    assert_eq!(h.video, b);
    no_hint(&mut hints_all, "a duplicate").await;

    // An event for b published only on a's subject is not taken for b's.
    within(
        10,
        "publish",
        publisher.publish(&video_topic("fragments", a), ev_b2.encode()),
    )
    .await
    .unwrap();
    no_hint(&mut hints_a, "b's event on a's subject").await;

    cancel.cancel();
    within(10, "watch a stops", task_a).await.unwrap();
    within(10, "watch all stops", task_all).await.unwrap();
    drop(wants_all);
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
            case!(per_video_subjects);
        }
    };
}
