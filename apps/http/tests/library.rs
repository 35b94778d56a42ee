//! A running node's library over HTTP, with real nodes, a real manager and a real
//! broker on loopback: a video uploaded to one node reaches another through the
//! manager and the fragment events, and its removal is seen the same way; writes are
//! token-guarded; the per-chunk status names the peer each chunk came from; a small
//! disk quota evicts the least recently watched video and keeps the pinned one.

mod common;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::{Viewer, client, seeder, tcp};
use fragnet_core::conformance::{NodeOptions, TestNode, TestVideo, generated_bytes, within};
use fragnet_core::registry::Registry;
use fragnet_core::{PubSub, VideoId, Want};
use fragnet_http::{HttpConfig, HttpService};
use futures::StreamExt;
use reqwest::StatusCode;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Polls `f` every 100 ms until it is true, failing after `secs`.
async fn until(secs: u64, what: &str, mut f: impl AsyncFnMut() -> bool) {
    within(secs, what, async {
        while !f().await {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
    .await
}

async fn json(c: &reqwest::Client, url: &str) -> Value {
    let r = within(10, url, c.get(url).send()).await.unwrap();
    assert!(r.status().is_success(), "{url}: {}", r.status());
    r.json().await.unwrap()
}

/// A node with an HTTP side, the manager as registry and the broker as pub/sub.
async fn swarm_node(
    manager: &str,
    broker: std::net::SocketAddr,
    want: Want,
    config: HttpConfig,
) -> (TestNode, String) {
    let registry: Arc<dyn Registry> =
        Arc::new(fragnet_manager::HttpRegistry::new(manager, None).unwrap());
    let pubsub: Arc<dyn PubSub> = Arc::new(
        fragnet_broker::BrokerPubSub::new(&fragnet_broker::BrokerClientConfig::new(
            broker.to_string(),
        ))
        .unwrap(),
    );
    let node = TestNode::start_with(tcp, "tcp://127.0.0.1:0", NodeOptions::default(), |b| {
        b.registry(Some(registry))
            .pubsub(Some(pubsub), "fragments")
            .want(want)
            .reconcile(Duration::from_millis(500))
            .service(HttpService::new(config))
    })
    .await;
    let base = node.node.as_ref().unwrap().url().unwrap().to_string();
    (node, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_video_added_to_a_running_node_reaches_another_node_and_so_does_its_removal() {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let dir = tempfile::tempdir().unwrap();
    let manager = fragnet_manager::spawn(
        fragnet_manager::ManagerConfig::local(dir.path().join("manager")),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let broker = fragnet_broker::spawn(
        fragnet_broker::BrokerConfig {
            listen: "127.0.0.1:0".into(),
            ..Default::default()
        },
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let murl = manager.url();
    // Someone listening on the topic, as any node does.
    let watcher = fragnet_broker::BrokerPubSub::new(&fragnet_broker::BrokerClientConfig::new(
        broker.local_addr().to_string(),
    ))
    .unwrap();
    let mut topic = within(10, "subscribe", watcher.subscribe("fragments"))
        .await
        .unwrap();

    let (mut a, a_base) = swarm_node(
        &murl,
        broker.local_addr(),
        Want::None,
        HttpConfig::default(),
    )
    .await;
    let (mut b, _) = swarm_node(&murl, broker.local_addr(), Want::All, HttpConfig::default()).await;
    let a_id = a.identity.node_id();

    // Upload a file to A's running node.
    let bytes = generated_bytes(700_000, 7);
    let c = client();
    let r = within(
        30,
        "upload",
        c.post(format!(
            "{a_base}/library?name=clip.mp4&fragments=5&chunk_size=65536"
        ))
        .body(bytes.clone())
        .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let added: Value = r.json().await.unwrap();
    let expected = TestVideo::from_bytes("clip.mp4", &bytes, 5, 65536).id();
    let video: VideoId = added["video"].as_str().unwrap().parse().unwrap();
    assert_eq!(
        video, expected,
        "the node split the upload as `fragnet split` does"
    );
    assert_eq!(added["fragments"], 5);
    assert_eq!(added["player"], format!("/watch/{video}"));
    assert_eq!(a.store.have(video).len(), 5);

    // A lists it, pinned; no staging directory is left behind.
    let lib = json(&c, &format!("{a_base}/library")).await;
    let entry = &lib["videos"][0];
    assert_eq!(entry["video"], video.to_string());
    assert_eq!(entry["pinned"], true);
    assert_eq!(entry["complete"], true);
    let leftovers: Vec<_> = std::fs::read_dir(a.store.root())
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| e.file_name().to_string_lossy().starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // The manager knows the video and A as a holder; B fetches it on its own
    // (want = all) and its copy equals the upload.
    let reg = fragnet_manager::HttpRegistry::new(&murl, None).unwrap();
    until(20, "the manager to list A as a holder", async || {
        reg.locate(video, 0, 10)
            .await
            .is_ok_and(|h| h.peers.iter().any(|p| p.id == a_id))
    })
    .await;
    until(30, "B to fetch the added video", async || {
        b.store.have(video).len() == 5
    })
    .await;
    assert_eq!(fragnet_core::conformance::joined_bytes(&b, video), bytes);

    // A fragment event of A's for the video went over the topic.
    let a_event = within(10, "A's fragment event", async {
        loop {
            let m = topic.next().await.unwrap();
            if let Ok(ev) = fragnet_core::FragmentEvent::parse(&m.payload)
                && ev.node == a_id
                && ev.video == video
            {
                return ev;
            }
        }
    })
    .await;
    assert!(!a_event.addrs.is_empty());

    // Remove it from A: withdrawn from the manager and on the topic, files gone.
    let r = within(
        20,
        "remove",
        c.delete(format!("{a_base}/library/{video}")).send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    assert!(a.store.manifest(video).is_none());
    assert!(!a.store.video_dir(video).exists());
    let held = reg.locate(video, 0, 10).await.unwrap();
    assert!(
        !held.peers.iter().any(|p| p.id == a_id),
        "A still listed as a holder: {held:?}"
    );
    assert!(
        held.peers.iter().any(|p| p.id == b.identity.node_id()),
        "B still holds it: {held:?}"
    );
    within(10, "A's withdrawal on the topic", async {
        loop {
            let m = topic.next().await.unwrap();
            if let Ok(w) = fragnet_core::pubsub::Withdrawal::parse(&m.payload)
                && w.node == a_id
                && w.withdrawn == video
            {
                return;
            }
        }
    })
    .await;
    let b_events = b.node.as_ref().unwrap().event_stats().unwrap().clone();
    until(10, "B to hear the withdrawal", async || {
        b_events.withdrawals_received.load(Ordering::Relaxed) >= 1
    })
    .await;
    // Removing it again: 404.
    let r = c
        .delete(format!("{a_base}/library/{video}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    a.stop().await;
    b.stop().await;
    broker.shutdown().await;
    manager.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_writes_need_the_token_when_one_is_set_and_uploads_are_bounded() {
    let config = HttpConfig {
        library_token: Some("s3cret".into()),
        max_upload: 100_000,
        ..HttpConfig::default()
    };
    let v = TestVideo::from_bytes("x.mp4", &generated_bytes(50_000, 1), 2, 16384);
    let mut node = Viewer::start(&v, &[], &[], config).await;
    let c = client();
    let url = format!("{}/library?name=clip.mp4&fragments=2", node.base);
    let body = generated_bytes(60_000, 2);
    let r = c.post(&url).body(body.clone()).send().await.unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .post(&url)
        .bearer_auth("wrong")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // Over the bound: refused, nothing kept.
    let r = c
        .post(&url)
        .bearer_auth("s3cret")
        .body(generated_bytes(100_001, 3))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::PAYLOAD_TOO_LARGE);
    // Not a plain file name.
    let r = c
        .post(format!("{}/library?name=..%2Fx.mp4", node.base))
        .bearer_auth("s3cret")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(node.node.store.videos().is_empty());
    let r = c
        .post(&url)
        .bearer_auth("s3cret")
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::CREATED);
    let id = r.json::<Value>().await.unwrap()["video"]
        .as_str()
        .unwrap()
        .to_string();
    // Reads are open; unpin and delete need the token too.
    let r = c
        .delete(format!("{}/library/{id}/pin", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    let r = c
        .delete(format!("{}/library/{id}/pin", node.base))
        .bearer_auth("s3cret")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
    let lib = json(&c, &format!("{}/library", node.base)).await;
    assert_eq!(lib["videos"][0]["pinned"], false);
    let r = c
        .delete(format!("{}/library/{id}", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::UNAUTHORIZED);
    // The OpenAPI document describes the library and Swagger UI is served.
    let spec = json(&c, &format!("{}/openapi.json", node.base)).await;
    for path in [
        "/library",
        "/library/{id}",
        "/library/{id}/pin",
        "/videos/{id}",
        "/videos/{id}/link",
    ] {
        assert!(
            spec["paths"][path].is_object(),
            "{path} missing from the spec"
        );
    }
    let ui = c
        .get(format!("{}/apidocs/", node.base))
        .send()
        .await
        .unwrap();
    assert_eq!(ui.status(), StatusCode::OK);
    assert!(ui.text().await.unwrap().contains("swagger"));
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_chunk_state_names_the_peer_each_chunk_came_from() {
    // Two peers, each holding half: every chunk has to come from the one that has it.
    let v = TestVideo::from_bytes("two.mp4", &generated_bytes(600_000, 11), 6, 32 * 1024);
    let low = TestNode::start(
        tcp,
        "tcp://127.0.0.1:0",
        NodeOptions {
            seed: Some((v.split_dir.clone(), Some(vec![0, 1, 2]))),
            upload: Some(2_000_000),
            ..Default::default()
        },
    )
    .await;
    let high = TestNode::start(
        tcp,
        "tcp://127.0.0.1:0",
        NodeOptions {
            seed: Some((v.split_dir.clone(), Some(vec![3, 4, 5]))),
            upload: Some(2_000_000),
            ..Default::default()
        },
    )
    .await;
    let mut viewer = Viewer::start(
        &v,
        &[],
        &[low.addr.clone(), high.addr.clone()],
        HttpConfig::default(),
    )
    .await;
    let c = client();
    // The page's event stream, opened before the download.
    let ev = within(
        10,
        "events",
        c.get(format!("{}/videos/{}/events", viewer.base, v.id()))
            .send(),
    )
    .await
    .unwrap();
    let body = within(
        60,
        "the whole stream",
        c.get(format!("{}/videos/{}/stream", viewer.base, v.id()))
            .send(),
    )
    .await
    .unwrap()
    .bytes()
    .await
    .unwrap();
    assert_eq!(body.len(), 600_000);

    // Each chunk's source is recorded as its download hears it verified: a moment
    // after the bytes went out.
    let url = format!("{}/videos/{}", viewer.base, v.id());
    until(10, "every chunk to have a source", async || {
        json(&c, &url).await["fragments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|f| {
                f["chunks"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .all(|c| c.as_i64() >= Some(1))
            })
    })
    .await;
    let status = json(&c, &url).await;
    let peers: Vec<String> = status["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    assert_eq!(peers.len(), 2, "{status}");
    let name = |n: i64| peers[(n - 1) as usize].clone();
    for f in status["fragments"].as_array().unwrap() {
        let index = f["index"].as_u64().unwrap();
        let want = if index < 3 { &low.addr } else { &high.addr };
        let chunks = f["chunks"].as_array().unwrap();
        assert_eq!(chunks.len() as u64, f["total"].as_u64().unwrap());
        for c in chunks {
            let n = c.as_i64().unwrap();
            assert!(n >= 1, "fragment {index}: a chunk without a source: {f}");
            assert_eq!(name(n), want.to_string(), "fragment {index}");
        }
    }

    // The live events said the same, chunk by chunk.
    let mut text = String::new();
    let mut s = ev.bytes_stream();
    let mut from = std::collections::BTreeMap::<u64, std::collections::BTreeSet<String>>::new();
    let total_chunks: usize = v.manifest.fragments.iter().map(|f| f.chunks.len()).sum();
    within(20, "progress events for every chunk", async {
        while from.values().map(|s| s.len()).sum::<usize>() < 2
            || text.matches("\"chunk\":").count() < total_chunks
        {
            let p = s.next().await.unwrap().unwrap();
            let piece = std::str::from_utf8(&p).unwrap();
            for line in piece.lines() {
                let Some(data) = line.strip_prefix("data: ") else {
                    continue;
                };
                let d: Value = serde_json::from_str(data).unwrap();
                if let (Some(i), Some(f)) = (d["index"].as_u64(), d["from"].as_str()) {
                    from.entry(i).or_default().insert(f.to_string());
                }
            }
            text.push_str(piece);
        }
    })
    .await;
    for (index, peers) in &from {
        let want = if *index < 3 { &low.addr } else { &high.addr };
        assert_eq!(
            peers.iter().collect::<Vec<_>>(),
            vec![&want.to_string()],
            "fragment {index}"
        );
    }
    viewer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_small_quota_evicts_the_least_recently_watched_and_keeps_the_pinned() {
    // Three 300 kB videos and a 500 kB one; the viewer may hold 700 kB and seeded P.
    let p = TestVideo::from_bytes("p.mp4", &generated_bytes(300_000, 21), 3, 32 * 1024);
    let a = TestVideo::from_bytes("a.mp4", &generated_bytes(300_000, 22), 3, 32 * 1024);
    let b = TestVideo::from_bytes("b.mp4", &generated_bytes(300_000, 23), 3, 32 * 1024);
    let big = TestVideo::from_bytes("big.mp4", &generated_bytes(500_000, 24), 3, 32 * 1024);
    let mut seed = seeder(&a, None).await;
    for v in [&b, &big] {
        seed.store.import_dir(&v.split_dir, None).unwrap();
    }
    let pinned = p.id();
    let mut viewer = Viewer::start_with(&p, &[0, 1, 2], HttpConfig::default(), {
        let peers = vec![seed.addr.clone()];
        move |builder| {
            builder
                .peers(peers)
                .max_disk(Some(700_000))
                .pinned(vec![pinned])
        }
    })
    .await;
    let c = client();
    let watch = async |v: &TestVideo| {
        c.get(format!("{}/videos/{}/stream", viewer.base, v.id()))
            .send()
            .await
            .unwrap()
    };
    // A fits beside P.
    let r = within(30, "watching A", watch(&a)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), 300_000);
    let lib = viewer.node.node.as_ref().unwrap().library().clone();
    until(10, "A's download to end", async || {
        lib.entries()
            .iter()
            .any(|e| e.video == a.id() && e.complete && !e.downloading)
    })
    .await;
    assert_eq!(lib.used(), 600_000);

    // B does not fit beside P and A: A (not pinned, least recently watched) goes.
    let r = within(30, "watching B", watch(&b)).await;
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(r.bytes().await.unwrap().len(), 300_000);
    assert!(
        viewer.node.store.manifest(a.id()).is_none(),
        "A was evicted"
    );
    assert!(!viewer.node.store.video_dir(a.id()).exists());
    assert_eq!(viewer.node.store.have(pinned).len(), 3, "P is pinned");
    // The last fragment is renamed into place just after its bytes went out.
    until(10, "B complete", async || {
        viewer.node.store.have(b.id()).len() == 3
    })
    .await;
    assert_eq!(lib.stats().evictions.load(Ordering::Relaxed), 1);

    // 500 kB cannot fit beside the pinned 300 kB under 700 kB: a clear 507, and
    // nothing of it stays (B is not evicted for a download that fails anyway).
    let r = within(30, "watching the big one", watch(&big)).await;
    assert_eq!(r.status(), StatusCode::INSUFFICIENT_STORAGE);
    let msg = r.text().await.unwrap();
    assert!(msg.contains("limits.max_disk"), "{msg}");
    assert!(viewer.node.store.manifest(big.id()).is_none());
    assert!(!viewer.node.store.video_dir(big.id()).exists());
    assert_eq!(viewer.node.store.have(b.id()).len(), 3);
    until(10, "B's download to end", async || {
        lib.entries().iter().all(|e| !e.downloading)
    })
    .await;
    assert_eq!(lib.used(), 600_000);
    let listing = json(&c, &format!("{}/library", viewer.base)).await;
    assert_eq!(listing["max_disk"], 700_000);
    assert_eq!(listing["videos"].as_array().unwrap().len(), 2);
    viewer.stop().await;
    seed.stop().await;
}
