//! Byte-level tests of the broker, in the manner of Mosquitto's broker tests: raw
//! sockets, exact bytes in, exact lines out.

mod common;

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Raw, eventually, loopback_config, start_broker};
use fragnet_broker::{AuthToken, BrokerConfig, BrokerLimits};
use fragnet_core::conformance::within;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn original_nc_clients_still_work() {
    let broker = start_broker(BrokerConfig {
        listen: "tcp://127.0.0.1:0".into(),
        ..BrokerConfig::default()
    })
    .await;
    let port = broker.local_addr().port();
    let has_nc = Command::new("nc")
        .arg("-h")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    if has_nc {
        // `printf 'SUB:fragments\n' | nc 127.0.0.1 PORT` and
        // `printf 'PUB:fragments:fragment_5.bin\n' | nc 127.0.0.1 PORT`: nc gets the same
        // bytes on its standard input, which then ends.
        let nc = |input: &'static str, stdout: Stdio| {
            let mut child = tokio::process::Command::new("nc")
                .args(["127.0.0.1", &port.to_string()])
                .stdin(Stdio::piped())
                .stdout(stdout)
                .kill_on_drop(true)
                .spawn()
                .unwrap();
            let mut stdin = child.stdin.take().unwrap();
            tokio::spawn(async move {
                stdin.write_all(input.as_bytes()).await.unwrap();
            });
            child
        };
        let mut sub = nc("SUB:fragments\n", Stdio::piped());
        eventually(10, "nc subscriber registered", || {
            broker.stats().subscriptions == 1
        })
        .await;
        let mut publisher = nc("PUB:fragments:fragment_5.bin\n", Stdio::null());
        let mut out = tokio::io::BufReader::new(sub.stdout.take().unwrap());
        let mut line = String::new();
        within(10, "nc subscriber output", out.read_line(&mut line))
            .await
            .unwrap();
        assert_eq!(line, "MSG:fragments:fragment_5.bin\n");
        // nc without -N/-q keeps its socket open after stdin ends; the message was
        // delivered all the same.
        let _ = publisher.kill().await;
        let _ = sub.kill().await;
    } else {
        let mut sub = Raw::connect(broker.local_addr()).await;
        sub.send("SUB:fragments\n").await;
        eventually(10, "subscriber registered", || {
            broker.stats().subscriptions == 1
        })
        .await;
        let mut publisher = Raw::connect(broker.local_addr()).await;
        publisher.send("PUB:fragments:fragment_5.bin\n").await;
        sub.expect("MSG:fragments:fragment_5.bin").await;
    }
    eventually(10, "delivery counted", || broker.stats().delivered == 1).await;
    let s = broker.stats();
    assert_eq!((s.published, s.delivered), (1, 1));
    within(10, "shutdown", broker.shutdown()).await;
}

#[tokio::test]
async fn partial_lines_across_writes_and_crlf() {
    let broker = start_broker(loopback_config()).await;
    let mut sub = Raw::connect(broker.local_addr()).await;
    // The pauses are what is tested, not waits for anything: they give the broker time
    // to read each piece on its own, as a line split across TCP segments arrives.
    for piece in ["S", "UB:", "to", "pic\r", "\nPI", "NG", "\r\n"] {
        sub.send(piece).await;
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    sub.expect("PONG").await;
    let mut publisher = Raw::connect(broker.local_addr()).await;
    publisher.send("PUB:topic:hel").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    publisher.send("lo:wor").await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    publisher.send("ld\r\nPUB:topic:second\nPING\r\n").await;
    publisher.expect("PONG").await;
    sub.expect("MSG:topic:hello:world").await;
    sub.expect("MSG:topic:second").await;
    within(10, "shutdown", broker.shutdown()).await;
}

#[tokio::test]
async fn bad_lines_get_err_and_the_connection_stays_usable() {
    let broker = start_broker(loopback_config()).await;
    let mut sub = Raw::subscribe(broker.local_addr(), "t").await;
    let mut c = Raw::connect(broker.local_addr()).await;
    let cases: [(&[u8], &str); 10] = [
        (b"SUB:\n", "ERR:invalid topic \"\": empty topic"),
        (b"PUB::x\n", "ERR:invalid topic \"\": empty topic"),
        (b"UNSUB:\n", "ERR:invalid topic \"\": empty topic"),
        (
            b"PUB:t\n",
            "ERR:missing ':' between topic and message (PUB:<topic>:<message>)",
        ),
        (
            b"SUB:a b\n",
            "ERR:invalid topic \"a b\": character ' ' not allowed (use letters, digits, '.', '_', '-', '/')",
        ),
        (
            b"HELLO\n",
            "ERR:unknown command (expected SUB:<topic>, UNSUB:<topic>, PUB:<topic>:<message> or PING)",
        ),
        (
            b"sub:t\n",
            "ERR:unknown command (expected SUB:<topic>, UNSUB:<topic>, PUB:<topic>:<message> or PING)",
        ),
        (b"PUB:t:\xff\xfe bytes\n", "ERR:line is not UTF-8 text"),
        (b"\xc3\x28\r\n", "ERR:line is not UTF-8 text"),
        (
            b"MSG:t:spoofed\n",
            "ERR:unknown command (expected SUB:<topic>, UNSUB:<topic>, PUB:<topic>:<message> or PING)",
        ),
    ];
    for (input, want) in cases {
        c.send(input).await;
        c.expect(want).await;
        c.ping().await;
    }
    // Empty lines are ignored silently.
    c.send("\n\r\n\n").await;
    c.ping().await;
    // The subscriber got nothing from all that: PONG is the very next line.
    sub.ping().await;
    c.send("PUB:t:after the errors\nPING\n").await;
    c.expect("PONG").await;
    sub.expect("MSG:t:after the errors").await;
    assert_eq!(broker.stats().bad_lines, cases.len() as u64);
    within(10, "shutdown", broker.shutdown()).await;
}

#[tokio::test]
async fn oversized_lines_are_refused_whole() {
    let broker = start_broker(loopback_config()).await;
    let mut sub = Raw::subscribe(broker.local_addr(), "t").await;
    let mut c = Raw::connect(broker.local_addr()).await;
    // 4096 bytes exactly (not counting "\r\n") is accepted.
    let fits = format!("PUB:t:{}", "x".repeat(4096 - 6));
    c.send(format!("{fits}\r\nPING\n")).await;
    c.expect("PONG").await;
    assert_eq!(sub.line().await.unwrap().len(), 4096);
    // One byte more is refused, the whole line is skipped (nothing of it is published or
    // taken as a command), even when it arrives in pieces (the pauses split it).
    let long = format!("PUB:t:{}PING", "y".repeat(4096 - 6 - 3));
    c.send(&long[..2000]).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.send(&long[2000..]).await;
    tokio::time::sleep(Duration::from_millis(30)).await;
    c.send("\nPING\n").await;
    c.expect("ERR:line too long (max 4096 bytes)").await;
    c.expect("PONG").await;
    // A huge line (1 MiB) costs the broker nothing and gets one ERR.
    c.send(vec![b'z'; 1 << 20]).await;
    c.send("\nPING\n").await;
    c.expect("ERR:line too long (max 4096 bytes)").await;
    c.expect("PONG").await;
    sub.ping().await;
    within(10, "shutdown", broker.shutdown()).await;
}

#[tokio::test]
async fn subscribe_unsubscribe_and_limits() {
    let limits = BrokerLimits {
        max_subscriptions: 2,
        ..BrokerLimits::default()
    };
    let broker = start_broker(BrokerConfig {
        limits,
        ..loopback_config()
    })
    .await;
    let mut sub = Raw::connect(broker.local_addr()).await;
    sub.send("SUB:a\nSUB:a\nSUB:b\nSUB:c\nPING\n").await;
    sub.expect("ERR:too many subscriptions (max 2)").await;
    sub.expect("PONG").await;
    assert_eq!(
        broker.stats().subscriptions,
        2,
        "a repeated SUB does not count twice"
    );
    let mut p = Raw::connect(broker.local_addr()).await;
    p.send("PUB:a:1\nPUB:c:nobody\nPUB:b:2\nPING\n").await;
    p.expect("PONG").await;
    sub.expect("MSG:a:1").await;
    sub.expect("MSG:b:2").await;
    // Unsubscribed: nothing more from "a", and a free slot for "c".
    sub.send("UNSUB:a\nUNSUB:never-subscribed\nSUB:c\nPING\n")
        .await;
    sub.expect("PONG").await;
    p.send("PUB:a:3\nPUB:c:4\nPING\n").await;
    p.expect("PONG").await;
    sub.expect("MSG:c:4").await;
    sub.ping().await;
    // A connection's subscriptions go when it closes.
    drop(sub);
    eventually(10, "subscriptions released", || {
        broker.stats().subscriptions == 0
    })
    .await;
    within(10, "shutdown", broker.shutdown()).await;
}

#[tokio::test]
async fn connection_limit() {
    let limits = BrokerLimits {
        max_connections: 2,
        ..BrokerLimits::default()
    };
    let broker = start_broker(BrokerConfig {
        limits,
        ..loopback_config()
    })
    .await;
    let mut a = Raw::subscribe(broker.local_addr(), "t").await;
    let mut b = Raw::connect(broker.local_addr()).await;
    b.ping().await;
    let mut c = Raw::connect(broker.local_addr()).await;
    c.expect("ERR:too many connections").await;
    c.expect_eof().await;
    assert_eq!(broker.stats().connections_refused, 1);
    drop(b);
    eventually(10, "slot freed", || broker.stats().connections == 1).await;
    let mut d = Raw::connect(broker.local_addr()).await;
    d.send("PUB:t:ok\nPING\n").await;
    d.expect("PONG").await;
    a.expect("MSG:t:ok").await;
    within(10, "shutdown", broker.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_subscribers_get_every_message() {
    let broker = start_broker(loopback_config()).await;
    let addr = broker.local_addr();
    let mut subs = Vec::new();
    for _ in 0..1000 {
        subs.push(Raw::subscribe(addr, "fragments").await);
    }
    assert_eq!(broker.stats().subscriptions, 1000);
    let mut p = Raw::connect(addr).await;
    let mut batch = String::new();
    for i in 0..10 {
        batch.push_str(&format!("PUB:fragments:fragment_{i}.bin\n"));
    }
    batch.push_str("PING\n");
    p.send(batch).await;
    p.expect("PONG").await;
    let mut readers = tokio::task::JoinSet::new();
    for mut s in subs {
        readers.spawn(async move {
            for i in 0..10 {
                s.expect(&format!("MSG:fragments:fragment_{i}.bin")).await;
            }
        });
    }
    while let Some(r) = within(60, "1000 readers", readers.join_next()).await {
        r.unwrap();
    }
    eventually(10, "deliveries counted", || {
        broker.stats().delivered == 10_000
    })
    .await;
    let s = broker.stats();
    assert_eq!(
        (s.published, s.delivered, s.dropped, s.slow_consumers),
        (10, 10_000, 0, 0)
    );
    within(10, "shutdown", broker.shutdown()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_is_cut_off_and_nobody_else_notices() {
    let limits = BrokerLimits {
        queue_bytes: 64 * 1024,
        ..BrokerLimits::default()
    };
    let broker = start_broker(BrokerConfig {
        limits,
        ..loopback_config()
    })
    .await;
    let addr = broker.local_addr();
    // The stalled one subscribes, then never reads.
    let mut stalled = Raw::subscribe(addr, "t").await;
    // Five that read everything, counting and checking order.
    let received: Arc<Vec<AtomicU64>> = Arc::new((0..5).map(|_| AtomicU64::new(0)).collect());
    let mut readers = tokio::task::JoinSet::new();
    for n in 0..5 {
        let mut s = Raw::subscribe(addr, "t").await;
        let received = received.clone();
        readers.spawn(async move {
            let mut next = 0u64;
            while let Some(line) = s.line().await {
                let seq: u64 = line
                    .strip_prefix("MSG:t:")
                    .and_then(|r| r.split(':').next())
                    .and_then(|n| n.parse().ok())
                    .unwrap_or_else(|| panic!("reader {n}: unexpected line {line:?}"));
                assert_eq!(seq, next, "reader {n} missed a message");
                next += 1;
                received[n].store(next, Ordering::Release);
            }
        });
    }
    // Publish 1 KB messages in batches of 20, each confirmed by PONG, keeping the readers
    // close behind, until the stalled subscriber has been cut off (its socket buffers
    // hold a few MB), then 200 more. Bounded: 60 MB at most.
    let mut p = Raw::connect(addr).await;
    let pad = "p".repeat(1000);
    let mut sent = 0u64;
    let mut after_cut = None;
    while after_cut.is_none_or(|at| sent < at + 200) {
        assert!(sent < 60_000, "the stalled subscriber was never cut off");
        let mut batch = String::new();
        for _ in 0..20 {
            batch.push_str(&format!("PUB:t:{sent}:{pad}\n"));
            sent += 1;
        }
        batch.push_str("PING\n");
        p.send(batch).await;
        p.expect("PONG").await;
        let target = sent;
        eventually(30, "readers keeping up", || {
            received.iter().all(|r| r.load(Ordering::Acquire) == target)
        })
        .await;
        if after_cut.is_none() && broker.stats().slow_consumers == 1 {
            after_cut = Some(sent);
        }
    }
    eventually(10, "deliveries counted", || {
        broker.stats().delivered >= 5 * sent
    })
    .await;
    let s = broker.stats();
    assert_eq!(s.slow_consumers, 1);
    assert!(s.dropped > 0);
    assert_eq!(s.published, sent);
    assert!(s.delivered + s.dropped <= 6 * sent, "{s:?}");
    assert_eq!(s.subscriptions, 5, "the cut-off subscriber is gone");
    // The stalled client finally reads: what the kernel held, then the end.
    let mut rest = Vec::new();
    within(
        30,
        "draining the stalled socket",
        stalled.reader.read_to_end(&mut rest),
    )
    .await
    .unwrap();
    let text = String::from_utf8_lossy(&rest);
    assert!(
        text.lines()
            .all(|l| l.is_empty() || l.starts_with("MSG:t:") || l == "ERR:slow consumer")
    );
    // The others are still subscribed and in step.
    drop(p);
    within(10, "shutdown", broker.shutdown()).await;
    while let Some(r) = within(30, "readers end", readers.join_next()).await {
        r.unwrap();
    }
    assert!(received.iter().all(|r| r.load(Ordering::Acquire) == sent));
}

#[tokio::test]
async fn a_client_that_floods_pings_without_reading_is_cut_off() {
    let limits = BrokerLimits {
        queue_bytes: 8 * 1024,
        ..BrokerLimits::default()
    };
    let broker = start_broker(BrokerConfig {
        limits,
        ..loopback_config()
    })
    .await;
    let mut c = Raw::connect(broker.local_addr()).await;
    // 20 MB of PINGs: far more PONGs than the socket buffers and the queue hold.
    let pings = "PING\n".repeat(200_000);
    let flood = async {
        for _ in 0..20 {
            if c.writer.write_all(pings.as_bytes()).await.is_err() {
                break;
            }
        }
    };
    let cut = async {
        while broker.stats().slow_consumers == 0 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    within(30, "cut off", async {
        tokio::select! {
            _ = flood => {}
            _ = cut => {}
        }
    })
    .await;
    eventually(30, "cut off", || broker.stats().slow_consumers == 1).await;
    within(10, "shutdown", broker.shutdown()).await;
}

#[tokio::test]
async fn half_closed_clients() {
    let broker = start_broker(loopback_config()).await;
    // A subscriber that closes its sending side is done: the broker closes too.
    let mut gone = Raw::subscribe(broker.local_addr(), "t").await;
    gone.writer.shutdown().await.unwrap();
    gone.expect_eof().await;
    eventually(10, "subscription released", || {
        broker.stats().subscriptions == 0
    })
    .await;
    let mut sub = Raw::subscribe(broker.local_addr(), "t").await;
    // A publisher that sends PUB + PING and closes its side at once still gets its PONG,
    // then the broker closes.
    let mut p = Raw::connect(broker.local_addr()).await;
    p.send("PUB:t:one\nPING\n").await;
    p.writer.shutdown().await.unwrap();
    p.expect("PONG").await;
    p.expect_eof().await;
    sub.expect("MSG:t:one").await;
    // The last line counts even without a line break.
    let mut p = Raw::connect(broker.local_addr()).await;
    p.send("PUB:t:no newline").await;
    p.writer.shutdown().await.unwrap();
    p.expect_eof().await;
    sub.expect("MSG:t:no newline").await;
    within(10, "shutdown", broker.shutdown()).await;
}

#[tokio::test]
async fn idle_connections_without_subscriptions_are_closed() {
    let limits = BrokerLimits {
        idle_timeout_secs: 0.2,
        ..BrokerLimits::default()
    };
    let broker = start_broker(BrokerConfig {
        limits,
        ..loopback_config()
    })
    .await;
    let mut idle = Raw::connect(broker.local_addr()).await;
    let mut partial = Raw::connect(broker.local_addr()).await;
    partial.send("PUB:t:never finish").await;
    let mut sub = Raw::subscribe(broker.local_addr(), "t").await;
    idle.expect_eof().await;
    partial.expect_eof().await;
    // A quiet subscriber is not idle: the idle timeout elapses (twice over) and its
    // connection is still served.
    tokio::time::sleep(Duration::from_millis(400)).await;
    sub.ping().await;
    within(10, "shutdown", broker.shutdown()).await;
}

#[tokio::test]
async fn auth_required_and_refused() {
    let limits = BrokerLimits {
        auth_timeout_secs: 1.0,
        ..BrokerLimits::default()
    };
    let config = BrokerConfig {
        token: Some(AuthToken::new("s3cret").unwrap()),
        limits,
        ..loopback_config()
    };
    let broker = start_broker(config).await;
    let addr = broker.local_addr();
    // No AUTH first: refused and closed.
    let mut c = Raw::connect(addr).await;
    c.send("SUB:t\n").await;
    c.expect("ERR:auth required").await;
    c.expect_eof().await;
    let mut c = Raw::connect(addr).await;
    c.send("PING\n").await;
    c.expect("ERR:auth required").await;
    c.expect_eof().await;
    // Wrong token.
    let mut c = Raw::connect(addr).await;
    c.send("AUTH:s3cre\nPING\n").await;
    c.expect("ERR:auth failed").await;
    c.expect_eof().await;
    // Nothing at all in time, or only empty lines.
    let mut c = Raw::connect(addr).await;
    c.expect("ERR:auth timeout").await;
    c.expect_eof().await;
    let Raw {
        mut reader,
        mut writer,
    } = Raw::connect(addr).await;
    let keep_typing = tokio::spawn(async move {
        // Every 0.1 s for as long as the broker listens (at most 10 s).
        for _ in 0..100 {
            if writer.write_all(b"\n").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut rest = String::new();
    within(
        10,
        "auth deadline despite empty lines",
        reader.read_to_string(&mut rest),
    )
    .await
    .unwrap();
    assert_eq!(rest, "ERR:auth timeout\n");
    keep_typing.abort();
    // A bad line before AUTH ends it too.
    let mut c = Raw::connect(addr).await;
    c.send(b"\xff\n").await;
    c.expect("ERR:auth required").await;
    c.expect_eof().await;
    // Right token (CRLF too); after that the protocol as usual.
    let mut sub = Raw::connect(addr).await;
    sub.send("AUTH:s3cret\r\nSUB:t\nPING\n").await;
    sub.expect("PONG").await;
    let mut p = Raw::connect(addr).await;
    p.send("\nAUTH:s3cret\nPUB:t:authorised\nPING\n").await;
    p.expect("PONG").await;
    sub.expect("MSG:t:authorised").await;
    // A wrong AUTH later still ends the connection.
    p.send("AUTH:other\n").await;
    p.expect("ERR:auth failed").await;
    p.expect_eof().await;
    assert_eq!(broker.stats().auth_failures, 7);
    assert_eq!(broker.stats().published, 1);
    within(10, "shutdown", broker.shutdown()).await;
}

#[tokio::test]
async fn token_from_a_file_and_auth_on_an_open_broker() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("broker.token");
    std::fs::write(&file, "from-file\n").unwrap();
    let broker = start_broker(BrokerConfig {
        token_file: Some(file),
        ..loopback_config()
    })
    .await;
    let mut c = Raw::connect(broker.local_addr()).await;
    c.send("AUTH:from-file\nPING\n").await;
    c.expect("PONG").await;
    within(10, "shutdown", broker.shutdown()).await;
    // A client configured with a token may talk to an open broker.
    let open = start_broker(loopback_config()).await;
    let mut c = Raw::connect(open.local_addr()).await;
    c.send("AUTH:anything\nPING\n").await;
    c.expect("PONG").await;
    within(10, "shutdown", open.shutdown()).await;
}

#[tokio::test]
async fn bad_configuration_is_reported() {
    let cases = [
        BrokerConfig {
            listen: "quic://127.0.0.1:0".into(),
            ..BrokerConfig::default()
        },
        BrokerConfig {
            listen: "nonsense".into(),
            ..BrokerConfig::default()
        },
        BrokerConfig {
            limits: BrokerLimits {
                max_line: 10,
                ..BrokerLimits::default()
            },
            ..loopback_config()
        },
        BrokerConfig {
            limits: BrokerLimits {
                queue_bytes: 100,
                ..BrokerLimits::default()
            },
            ..loopback_config()
        },
        BrokerConfig {
            token_file: Some("/nonexistent/token".into()),
            ..loopback_config()
        },
    ];
    for config in cases {
        let e = within(
            10,
            "spawn",
            fragnet_broker::spawn(config.clone(), Default::default()),
        )
        .await
        .unwrap_err();
        assert!(!e.to_string().is_empty(), "{config:?}");
    }
    let taken = start_broker(loopback_config()).await;
    let config = BrokerConfig {
        listen: taken.local_addr().to_string(),
        ..BrokerConfig::default()
    };
    let e = within(
        10,
        "spawn",
        fragnet_broker::spawn(config, Default::default()),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("cannot listen on") && e.contains("another broker may be running"),
        "{e}"
    );
    // Unknown config keys are refused.
    assert!(serde_json::from_str::<BrokerConfig>(r#"{"listen":"1","limitz":{}}"#).is_err());
    let c: BrokerConfig = serde_json::from_str(r#"{"limits":{"max_line":8192}}"#).unwrap();
    assert_eq!(
        (
            c.listen.as_str(),
            c.limits.max_line,
            c.limits.max_connections
        ),
        ("0.0.0.0:5555", 8192, 4096)
    );
    within(10, "shutdown", taken.shutdown()).await;
}

#[tokio::test]
async fn counters_and_prometheus_text() {
    let broker = start_broker(loopback_config()).await;
    let mut sub = Raw::subscribe(broker.local_addr(), "t").await;
    let mut p = Raw::connect(broker.local_addr()).await;
    p.send("PUB:t:1\nPUB:t:2\nPUB:nobody:3\nBAD\nPING\n").await;
    p.expect(
        "ERR:unknown command (expected SUB:<topic>, UNSUB:<topic>, PUB:<topic>:<message> or PING)",
    )
    .await;
    p.expect("PONG").await;
    sub.expect("MSG:t:1").await;
    sub.expect("MSG:t:2").await;
    // Counted right after the write returns, which may be just after the reader has it.
    eventually(10, "deliveries counted", || broker.stats().delivered == 2).await;
    let s = broker.stats();
    assert_eq!(
        (
            s.connections,
            s.connections_total,
            s.subscriptions,
            s.published,
            s.delivered,
            s.dropped,
            s.bad_lines
        ),
        (2, 2, 1, 3, 2, 0, 1)
    );
    let text = fragnet_core::metrics::render(&fragnet_core::metrics::registry(vec![Box::new(
        broker.collector(),
    )]));
    for line in [
        "fragnet_broker_connections 2",
        "fragnet_broker_subscriptions 1",
        "fragnet_broker_published_total 3",
        "fragnet_broker_delivered_total 2",
        "fragnet_broker_dropped_total 0",
        "# TYPE fragnet_broker_published_total counter",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing {line:?} in\n{text}"
        );
    }
    within(10, "shutdown", broker.shutdown()).await;
}

#[tokio::test]
async fn shutdown_closes_everyone_even_a_stalled_subscriber() {
    let limits = BrokerLimits {
        shutdown_grace_secs: 0.3,
        ..BrokerLimits::default()
    };
    let broker = start_broker(BrokerConfig {
        limits,
        ..loopback_config()
    })
    .await;
    let addr = broker.local_addr();
    let mut sub = Raw::subscribe(addr, "t").await;
    let _stalled = Raw::subscribe(addr, "t").await;
    let mut p = Raw::connect(addr).await;
    let big = format!("PUB:t:{}\n", "x".repeat(4000)).repeat(1000);
    p.send(&big).await;
    p.send("PING\n").await;
    p.expect("PONG").await;
    within(10, "shutdown with a stalled subscriber", broker.shutdown()).await;
    // Subscribers get what had reached their socket, then the end.
    let mut rest = Vec::new();
    within(30, "reading to the end", sub.reader.read_to_end(&mut rest))
        .await
        .unwrap();
    assert!(
        String::from_utf8_lossy(&rest)
            .lines()
            .all(|l| l.is_empty() || l.starts_with("MSG:t:") || l == "ERR:slow consumer")
    );
    p.expect_eof().await;
    assert!(
        Raw::connect_refused(addr).await,
        "nothing listens after shutdown"
    );
}

impl Raw {
    async fn connect_refused(addr: std::net::SocketAddr) -> bool {
        within(10, "connect", tokio::net::TcpStream::connect(addr))
            .await
            .is_err()
    }
}

#[tokio::test]
async fn cut_off_subscriber_reads_err_slow_consumer_when_it_finally_reads() {
    // Same as above but small, and the client starts reading right after the cut: it
    // sees the messages that were in flight, then `ERR:slow consumer`, then the end.
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
    let mut slow = Raw::subscribe(addr, "t").await;
    let mut p = Raw::connect(addr).await;
    // Bursts (5 × 2 KB) stay below the queue limit: only the stalled socket overflows it.
    let line = format!("PUB:t:{}\n", "x".repeat(2000));
    let mut sent = 0;
    while broker.stats().slow_consumers == 0 {
        assert!(sent < 100_000, "never cut off");
        p.send(line.repeat(5) + "PING\n").await;
        p.expect("PONG").await;
        sent += 5;
    }
    let mut buf = Vec::new();
    within(30, "reading to the end", slow.reader.read_to_end(&mut buf))
        .await
        .unwrap();
    let text = String::from_utf8_lossy(&buf);
    let mut lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines.pop(),
        Some("ERR:slow consumer"),
        "{} bytes before",
        buf.len()
    );
    assert!(
        lines.len() > 100,
        "messages in flight were delivered before the notice"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.is_empty() || l.starts_with("MSG:t:x"))
    );
    within(10, "shutdown", broker.shutdown()).await;
}
