//! The clients against real servers: reconnection across a broker restart, keepalive,
//! tokens, what `fragnet subscribe` prints and what `fragnet notify` reports.

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use common::{NatsServer, Raw, client_config, eventually, loopback_config, start_broker};
use fragnet_broker::{
    AuthToken, BrokerClientConfig, BrokerConfig, BrokerError, BrokerPubSub, NatsConfig, NatsPubSub,
    OutputFormat, PubSubKind,
};
use fragnet_core::conformance::within;
use fragnet_core::{PubSub, PubSubError, Subscription};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio_util::sync::CancellationToken;

/// Publishes `prefix-N` until `sub` receives one of them; returns it.
async fn publish_until_received(
    p: &dyn PubSub,
    topic: &str,
    prefix: &str,
    sub: &mut Subscription,
) -> String {
    within(30, "a message after the restart", async {
        for i in 0.. {
            // Publishing fails while the broker is down; that is expected here.
            let _ = p.publish(topic, Bytes::from(format!("{prefix}-{i}"))).await;
            match tokio::time::timeout(Duration::from_millis(100), sub.next()).await {
                Ok(Some(m)) => {
                    let text = m.text().unwrap().to_string();
                    if text.starts_with(prefix) {
                        return text;
                    }
                }
                Ok(None) => panic!("the subscription ended instead of reconnecting"),
                Err(_) => {}
            }
        }
        unreachable!()
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_reconnect_after_a_broker_restart() {
    let broker = start_broker(loopback_config()).await;
    let addr = broker.local_addr();
    let client = BrokerPubSub::new(&client_config(addr)).unwrap();
    let mut subs = Vec::new();
    for _ in 0..3 {
        let c = BrokerPubSub::new(&client_config(addr)).unwrap();
        subs.push(
            within(10, "subscribe", c.subscribe("fragments"))
                .await
                .unwrap(),
        );
    }
    within(
        10,
        "publish",
        client.publish("fragments", Bytes::from("before")),
    )
    .await
    .unwrap();
    for s in &mut subs {
        assert_eq!(
            within(10, "before", s.next()).await.unwrap().text(),
            Some("before")
        );
    }
    within(10, "broker shutdown", broker.shutdown()).await;
    // While it is down, publishing fails with a clear error.
    let e = within(
        10,
        "publish while down",
        client.publish("fragments", Bytes::from("lost")),
    )
    .await
    .unwrap_err();
    assert!(matches!(e, PubSubError::Unreachable { .. }), "{e}");
    // Not a wait for an event: the broker stays down for a while, so the subscribers'
    // first reconnect attempts (20 ms backoff) fail and back off, as in a real outage.
    tokio::time::sleep(Duration::from_millis(300)).await;
    // Same port (the subscribers know only that address), new broker process state.
    let broker = start_broker(BrokerConfig {
        listen: addr.to_string(),
        ..BrokerConfig::default()
    })
    .await;
    for s in &mut subs {
        let got = publish_until_received(&client, "fragments", "after", s).await;
        assert!(got.starts_with("after-"));
        assert!(s.reconnects() >= 1);
    }
    eventually(10, "three subscriptions again", || {
        broker.stats().subscriptions == 3
    })
    .await;
    within(10, "broker shutdown", broker.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_cut_off_as_slow_reconnects() {
    use fragnet_broker::BrokerLimits;
    let limits = BrokerLimits {
        queue_bytes: 16 * 1024,
        ..BrokerLimits::default()
    };
    let broker = start_broker(BrokerConfig {
        limits,
        ..loopback_config()
    })
    .await;
    let addr = broker.local_addr();
    // A subscription whose owner does not read: its small local queue fills, the client
    // stops reading, the broker cuts it off.
    let cfg = BrokerClientConfig {
        queue: 4,
        ..client_config(addr)
    };
    let mut sub = within(
        10,
        "subscribe",
        BrokerPubSub::new(&cfg).unwrap().subscribe("t"),
    )
    .await
    .unwrap();
    let mut p = Raw::connect(addr).await;
    let line = format!("PUB:t:{}\n", "x".repeat(1000));
    let mut sent = 0;
    while broker.stats().slow_consumers == 0 {
        assert!(sent < 100_000, "never cut off");
        p.send(line.repeat(5) + "PING\n").await;
        p.expect("PONG").await;
        sent += 5;
    }
    // It drains what it had, reconnects, and gets new messages.
    let publisher = BrokerPubSub::new(&client_config(addr)).unwrap();
    let got = publish_until_received(&publisher, "t", "fresh", &mut sub).await;
    assert!(got.starts_with("fresh-"));
    assert!(sub.reconnects() >= 1);
    within(10, "broker shutdown", broker.shutdown()).await;
}

#[tokio::test]
async fn a_silent_broker_is_detected_by_keepalive() {
    // A "broker" that confirms the subscription and then goes silent (a host that
    // vanished without closing the connection). The client must notice and reconnect.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let accepts = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let counter = accepts.clone();
    let server = tokio::spawn(async move {
        let mut held = Vec::new();
        loop {
            let (s, _) = listener.accept().await.unwrap();
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let (r, mut w) = s.into_split();
            let mut r = tokio::io::BufReader::new(r);
            let mut line = String::new();
            while r.read_line(&mut line).await.unwrap_or(0) > 0 && !line.ends_with("PING\n") {}
            w.write_all(b"PONG\n").await.unwrap();
            held.push((r, w));
        }
    });
    let cfg = BrokerClientConfig {
        keepalive_secs: 0.1,
        reply_timeout_secs: 0.2,
        ..client_config(addr)
    };
    let _sub = within(
        10,
        "subscribe",
        BrokerPubSub::new(&cfg).unwrap().subscribe("t"),
    )
    .await
    .unwrap();
    eventually(
        10,
        "a second connection after the keepalive went unanswered",
        || accepts.load(std::sync::atomic::Ordering::SeqCst) >= 2,
    )
    .await;
    server.abort();
}

#[tokio::test]
async fn tokens_over_the_client() {
    let config = BrokerConfig {
        token: Some(AuthToken::new("s3cret").unwrap()),
        ..loopback_config()
    };
    let broker = start_broker(config).await;
    let addr = broker.local_addr();
    let good =
        BrokerPubSub::new(&client_config(addr).token(AuthToken::new("s3cret").unwrap())).unwrap();
    let mut sub = within(10, "subscribe", good.subscribe("t")).await.unwrap();
    within(10, "publish", good.publish("t", Bytes::from("ok")))
        .await
        .unwrap();
    assert_eq!(
        within(10, "receive", sub.next()).await.unwrap().text(),
        Some("ok")
    );
    for client in [
        BrokerPubSub::new(&client_config(addr)).unwrap(),
        BrokerPubSub::new(&client_config(addr).token(AuthToken::new("wrong").unwrap())).unwrap(),
    ] {
        let e = within(10, "publish", client.publish("t", Bytes::from("no")))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, PubSubError::Rejected { reason, .. } if reason.starts_with("auth")),
            "{e}"
        );
        let e = within(10, "subscribe", client.subscribe("t"))
            .await
            .unwrap_err();
        assert!(
            matches!(&e, PubSubError::Rejected { reason, .. } if reason.starts_with("auth")),
            "{e}"
        );
    }
    // Token from a file.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "s3cret\n").unwrap();
    let from_file = BrokerPubSub::new(&BrokerClientConfig {
        token_file: Some(file),
        ..client_config(addr)
    })
    .unwrap();
    within(10, "ping", from_file.ping()).await.unwrap();
    within(10, "broker shutdown", broker.shutdown()).await;
}

/// A `Write` that a test can read back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
    }
}

async fn run_subscribe_command(
    pubsub: Arc<dyn PubSub>,
    format: OutputFormat,
    publish: &[&str],
    subscriptions: impl Fn() -> u64,
) -> String {
    let out = Captured::default();
    let cancel = CancellationToken::new();
    let task = {
        let (pubsub, mut out, cancel) = (pubsub.clone(), out.clone(), cancel.clone());
        tokio::spawn(async move {
            fragnet_broker::subscribe(&*pubsub, "fragments", format, &mut out, &cancel).await
        })
    };
    eventually(10, "subscribed", || subscriptions() == 1).await;
    for m in publish {
        within(
            10,
            "notify",
            fragnet_broker::notify(&*pubsub, "fragments", m, Duration::from_secs(5)),
        )
        .await
        .unwrap();
    }
    let lines = publish.len() + usize::from(format == OutputFormat::Text);
    eventually(10, "printed", || out.text().lines().count() == lines).await;
    cancel.cancel();
    // Dropping the subscription closes its connection; the broker notices shortly.
    eventually(10, "unsubscribed", || subscriptions() == 0).await;
    let printed = within(10, "subscribe returns on cancel", task)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(printed, publish.len() as u64);
    out.text()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_prints_what_notify_sends() {
    let broker = start_broker(loopback_config()).await;
    let pubsub = within(
        10,
        "connect",
        PubSubKind::Broker.connect(&client_config(broker.local_addr()), &NatsConfig::default()),
    )
    .await
    .unwrap();
    let text = run_subscribe_command(
        pubsub.clone(),
        OutputFormat::Text,
        &["fragment_5.bin", "a:b ✓"],
        || broker.stats().subscriptions,
    )
    .await;
    assert_eq!(
        text,
        "[SUBSCRIBER] Subscribed to 'fragments'. Waiting for messages...\n[fragments] fragment_5.bin\n[fragments] a:b ✓\n"
    );
    let json = run_subscribe_command(
        pubsub,
        OutputFormat::Json,
        &["fragment_5.bin", "say \"hi\""],
        || broker.stats().subscriptions,
    )
    .await;
    assert_eq!(
        json,
        "{\"topic\":\"fragments\",\"message\":\"fragment_5.bin\"}\n{\"topic\":\"fragments\",\"message\":\"say \\\"hi\\\"\"}\n"
    );
    within(10, "broker shutdown", broker.shutdown()).await;
}

#[tokio::test]
async fn notify_reports_every_failure_clearly() {
    // Nothing listening (the port is bound and released, and no server is started on it).
    let port = common::dead_port();
    let b = BrokerPubSub::new(&BrokerClientConfig::new(format!("127.0.0.1:{port}"))).unwrap();
    let e = within(
        10,
        "notify",
        fragnet_broker::notify(&b, "fragments", "fragment_5.bin", Duration::from_secs(5)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, BrokerError::PubSub(PubSubError::Unreachable { .. })),
        "{e}"
    );
    assert!(
        e.to_string()
            .contains(&format!("cannot reach broker 127.0.0.1:{port}")),
        "{e}"
    );
    // Something that accepts and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let b = BrokerPubSub::new(&BrokerClientConfig::new(
        silent.local_addr().unwrap().to_string(),
    ))
    .unwrap();
    let e = within(
        10,
        "notify",
        fragnet_broker::notify(&b, "fragments", "x", Duration::from_millis(300)),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, BrokerError::PubSub(PubSubError::Timeout { .. })),
        "{e}"
    );
    // The broker refuses (a line over its limit) and says why.
    let limits = fragnet_broker::BrokerLimits {
        max_line: 100,
        queue_bytes: 4096,
        ..Default::default()
    };
    let broker = start_broker(BrokerConfig {
        limits,
        ..loopback_config()
    })
    .await;
    let b = BrokerPubSub::new(&client_config(broker.local_addr())).unwrap();
    let e = within(
        10,
        "notify",
        fragnet_broker::notify(&b, "fragments", &"x".repeat(200), Duration::from_secs(5)),
    )
    .await
    .unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "broker {} refused: line too long (max 100 bytes)",
            broker.local_addr()
        )
    );
    // Bad input never reaches the network.
    for (topic, msg) in [("bad topic", "x"), ("fragments", "two\nlines")] {
        let e = within(
            10,
            "notify",
            fragnet_broker::notify(&b, topic, msg, Duration::from_secs(5)),
        )
        .await
        .unwrap_err();
        assert!(
            matches!(
                e,
                BrokerError::PubSub(
                    PubSubError::InvalidTopic { .. } | PubSubError::InvalidMessage(_)
                )
            ),
            "{e}"
        );
    }
    within(
        10,
        "notify",
        fragnet_broker::notify(&b, "fragments", "fragment_5.bin", Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert_eq!(broker.stats().published, 1);
    // The publishing connection survives the broker closing it (idle timeout, restart).
    // The restart is on the same port: the client knows only that address.
    within(10, "broker shutdown", broker.shutdown()).await;
    let broker = start_broker(BrokerConfig {
        listen: b.broker_addr().to_string(),
        ..BrokerConfig::default()
    })
    .await;
    within(
        10,
        "notify after restart",
        fragnet_broker::notify(&b, "fragments", "again", Duration::from_secs(5)),
    )
    .await
    .unwrap();
    assert_eq!(broker.stats().published, 1);
    within(10, "broker shutdown", broker.shutdown()).await;
    // `local` cannot be reached from another process.
    assert!(
        PubSubKind::Local
            .connect(&BrokerClientConfig::default(), &NatsConfig::default())
            .await
            .is_err()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_connect_errors_tokens_and_restart() {
    // Nothing listening (the port is bound and released, and no server is started on it).
    let port = common::dead_port();
    let e = within(
        20,
        "connect",
        NatsPubSub::connect(&NatsConfig::new(format!("nats://127.0.0.1:{port}"))),
    )
    .await
    .unwrap_err();
    assert!(
        matches!(e, BrokerError::PubSub(PubSubError::Unreachable { .. })),
        "{e}"
    );
    // A server with a token: wrong token refused, right one works.
    let server = NatsServer::start(&["--auth", "natstoken"]).await;
    let wrong = NatsConfig {
        token: Some(AuthToken::new("nope").unwrap()),
        ..NatsConfig::new(server.url())
    };
    let e = within(20, "connect", NatsPubSub::connect(&wrong))
        .await
        .unwrap_err();
    assert!(
        matches!(e, BrokerError::PubSub(PubSubError::Rejected { .. })),
        "{e}"
    );
    let right = NatsConfig {
        token: Some(AuthToken::new("natstoken").unwrap()),
        ..NatsConfig::new(server.url())
    };
    let nats = within(20, "connect", NatsPubSub::connect(&right))
        .await
        .unwrap();
    drop(server);
    // The subscription survives a server restart on the same port (async-nats
    // reconnects and re-subscribes).
    let mut server = NatsServer::start(&[]).await;
    let nats = {
        drop(nats);
        // Short confirmations, so publishing while the server is down fails fast.
        let config = NatsConfig {
            reply_timeout_secs: 0.5,
            ..NatsConfig::new(server.url())
        };
        within(20, "connect", NatsPubSub::connect(&config))
            .await
            .unwrap()
    };
    let mut sub = within(10, "subscribe", nats.subscribe("fragments"))
        .await
        .unwrap();
    within(
        10,
        "publish",
        nats.publish("fragments", Bytes::from("before")),
    )
    .await
    .unwrap();
    assert_eq!(
        within(10, "before", sub.next()).await.unwrap().text(),
        Some("before")
    );
    // Restarted on the same port: the client knows only that address.
    let port = server.port;
    server.stop();
    let _server = NatsServer::start_on(port, &[]).await;
    let got = publish_until_received(&nats, "fragments", "after", &mut sub).await;
    assert!(got.starts_with("after-"));
    // The count is current when the first message of the new connection arrives.
    assert_eq!(sub.reconnects(), 1);
}

/// A fresh NATS client has not reconnected (the first connection's `Connected` event
/// once landed after a reset and counted as a reconnect, in about half of the runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_reconnects_start_at_zero() {
    let server = NatsServer::start(&[]).await;
    for _ in 0..10 {
        let nats = within(
            10,
            "connect",
            NatsPubSub::connect(&NatsConfig::new(server.url())),
        )
        .await
        .unwrap();
        let sub = within(10, "subscribe", nats.subscribe("fragments"))
            .await
            .unwrap();
        within(10, "publish", nats.publish("fragments", Bytes::from("x")))
            .await
            .unwrap();
        assert_eq!(sub.reconnects(), 0, "no reconnection has happened");
    }
}

/// A node's fragment event goes to the video's subject and to the plain topic: the
/// original raw `SUB:fragments` socket and `fragnet subscribe fragments` still see it,
/// byte for byte the seed's `MSG:` line; a subscriber of another video's subject does
/// not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fragment_events_reach_the_seed_clients_and_only_their_video_subject() {
    use fragnet_core::ids::Digest;
    use fragnet_core::pubsub::{publish_event, video_topic};
    use fragnet_core::{FragmentEvent, NodeId, VideoId};

    let broker = start_broker(loopback_config()).await;
    let (a, b) = (VideoId(Digest::of(b"a")), VideoId(Digest::of(b"b")));
    let mut seed = Raw::subscribe(broker.local_addr(), "fragments").await;
    let mut on_a = Raw::subscribe(broker.local_addr(), &video_topic("fragments", a)).await;
    let mut on_b = Raw::subscribe(broker.local_addr(), &video_topic("fragments", b)).await;
    let pubsub = within(
        10,
        "connect",
        PubSubKind::Broker.connect(&client_config(broker.local_addr()), &NatsConfig::default()),
    )
    .await
    .unwrap();
    let out = Captured::default();
    let cancel = CancellationToken::new();
    let command = {
        let (pubsub, mut out, cancel) = (pubsub.clone(), out.clone(), cancel.clone());
        tokio::spawn(async move {
            fragnet_broker::subscribe(&*pubsub, "fragments", OutputFormat::Text, &mut out, &cancel)
                .await
        })
    };
    eventually(10, "subscribed", || broker.stats().subscriptions == 4).await;
    let event = FragmentEvent {
        video: a,
        index: 7,
        node: NodeId(Digest::of(b"node")),
        addrs: vec!["tcp://127.0.0.1:6001".parse().unwrap()],
    };
    within(10, "publish", publish_event(&*pubsub, "fragments", &event))
        .await
        .unwrap();
    let json = String::from_utf8(event.encode().to_vec()).unwrap();
    seed.expect(&format!("MSG:fragments:{json}")).await;
    on_a.expect(&format!("MSG:fragments.{a}:{json}")).await;
    on_b.ping().await; // PONG first: nothing was queued for b's subject
    eventually(10, "printed", || out.text().lines().count() == 2).await;
    assert_eq!(
        out.text().lines().nth(1),
        Some(format!("[fragments] {json}").as_str())
    );
    cancel.cancel();
    within(10, "subscribe returns", command)
        .await
        .unwrap()
        .unwrap();
    within(10, "broker shutdown", broker.shutdown()).await;
}
