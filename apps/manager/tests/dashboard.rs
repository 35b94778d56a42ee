//! The dashboard at `/`: served from the binary, and its event stream follows the
//! registry live as nodes register and announce.

mod common;

use std::time::Duration;

use common::{TestManager, reg_json, test_manifest};
use fragnet_core::conformance::within;
use serde_json::{Value, json};

/// Reads server-sent events from a response, one `snapshot` at a time.
struct Events {
    resp: reqwest::Response,
    buf: String,
}

impl Events {
    async fn next_snapshot(&mut self) -> Value {
        loop {
            if let Some(end) = self.buf.find("\n\n") {
                let event: String = self.buf.drain(..end + 2).collect();
                let name = event.lines().find_map(|l| l.strip_prefix("event: "));
                let data = event.lines().find_map(|l| l.strip_prefix("data: "));
                if let (Some("snapshot"), Some(d)) = (name, data) {
                    return serde_json::from_str(d).unwrap();
                }
                continue;
            }
            let chunk = within(10, "next event", self.resp.chunk())
                .await
                .unwrap()
                .expect("the event stream ended");
            self.buf.push_str(std::str::from_utf8(&chunk).unwrap());
        }
    }

    /// Skips snapshots until `pred` holds.
    async fn until(&mut self, pred: impl Fn(&Value) -> bool) -> Value {
        loop {
            let s = self.next_snapshot().await;
            if pred(&s) {
                return s;
            }
        }
    }
}

fn holdings(s: &Value, node: &str, video: &str) -> Vec<u64> {
    s["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["id"] == node)
        .and_then(|n| n["holdings"][video].as_array())
        .map(|a| a.iter().map(|i| i.as_u64().unwrap()).collect())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dashboard_page_and_live_events() {
    let m = TestManager::start(|_| {}).await;
    let page = within(10, "page", m.client.get(m.url("/")).send())
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let html = page.text().await.unwrap();
    for needle in ["/apidocs/", "/dashboard/events", "/watch/", "EventSource"] {
        assert!(html.contains(needle), "the page lacks {needle}");
    }
    assert!(
        !html.contains("https://") && !html.contains("http://"),
        "no CDN"
    );

    let sse_client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();
    let resp = within(
        10,
        "events",
        sse_client.get(m.url("/dashboard/events")).send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/event-stream")
    );
    let mut events = Events {
        resp,
        buf: String::new(),
    };
    let first = events.next_snapshot().await;
    assert_eq!(first["videos"], json!([]));
    assert_eq!(first["nodes"], json!([]));

    let manifest = test_manifest("clip.mp4", 10);
    let video = manifest.video_id().to_string();
    let (s, _) = m.post_raw("/videos", manifest.canonical_bytes()).await;
    assert_eq!(s, 201);
    let (node, reg) = reg_json(1);
    let (s, _) = m.put(&format!("/nodes/{node}"), &reg).await;
    assert_eq!(s, 201, "registered");
    let (s, _) = m
        .put(
            &format!("/nodes/{node}/fragments"),
            &json!({"video": video, "have": [0, 1]}),
        )
        .await;
    assert!((200..300).contains(&s), "announced: {s}");
    let snap = events.until(|s| holdings(s, &node, &video) == [0, 1]).await;
    assert_eq!(snap["videos"][0]["id"], video);
    assert_eq!(snap["videos"][0]["fragment_count"], 10);
    let n = &snap["nodes"][0];
    assert_eq!(n["name"], reg["name"]);
    assert_eq!(n["http"], reg["http"]);
    assert!(n["addrs"][0].as_str().unwrap().starts_with("tcp://"), "{n}");

    // A new announcement shows up live.
    m.put(
        &format!("/nodes/{node}/fragments"),
        &json!({"video": video, "have": [0, 1, 2]}),
    )
    .await;
    events
        .until(|s| holdings(s, &node, &video) == [0, 1, 2])
        .await;
    let (s, state) = m.get("/dashboard/state").await;
    assert_eq!(s, 200);
    assert_eq!(holdings(&state, &node, &video), [0, 1, 2]);

    // Stopping the manager ends open dashboards instead of waiting for them.
    within(10, "shutdown with a dashboard open", m.handle.shutdown()).await;
    let end = within(10, "the stream ends", async {
        loop {
            match events.resp.chunk().await {
                Ok(Some(_)) => continue,
                other => return other.map(|_| ()),
            }
        }
    })
    .await;
    let _ = end; // ended cleanly or with a closed connection: both are an end
}

async fn open_events(m: &TestManager) -> Events {
    let resp = within(
        10,
        "events",
        m.client.get(m.url("/dashboard/events")).send(),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    Events {
        resp,
        buf: String::new(),
    }
}

/// An announcement reaches an open event stream within a second: the stream follows
/// the registry's change feed.
async fn announcement_reaches_the_stream_within_a_second(m: &TestManager) {
    let mut events = open_events(m).await;
    events.next_snapshot().await;
    let manifest = test_manifest("live.mp4", 4);
    let video = manifest.video_id().to_string();
    assert_eq!(
        m.post_raw("/videos", manifest.canonical_bytes()).await.0,
        201
    );
    let (node, reg) = reg_json(7);
    assert_eq!(m.put(&format!("/nodes/{node}"), &reg).await.0, 201);
    events
        .until(|s| s["nodes"].as_array().is_some_and(|n| n.len() == 1))
        .await;
    let (s, _) = m
        .put(
            &format!("/nodes/{node}/fragments"),
            &json!({"video": video, "have": [3]}),
        )
        .await;
    assert_eq!(s, 204);
    within(1, "the announcement on the event stream", async {
        events.until(|s| holdings(s, &node, &video) == [3]).await
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_the_memory_registry() {
    let m = TestManager::start(|_| {}).await;
    announcement_reaches_the_stream_within_a_second(&m).await;
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_follow_the_nats_registry() {
    let nats = common::NatsServer::start().await;
    let m = common::nats_manager(&nats.url, |_| {}).await;
    announcement_reaches_the_stream_within_a_second(&m).await;
    // Through another replica: its write reaches this one's stream by the KV watch.
    let other = common::nats_manager(&nats.url, |_| {}).await;
    let mut events = open_events(&m).await;
    events.next_snapshot().await;
    let (node, reg) = reg_json(8);
    assert_eq!(other.put(&format!("/nodes/{node}"), &reg).await.0, 201);
    within(1, "a node registered through another manager", async {
        events
            .until(|s| {
                s["nodes"]
                    .as_array()
                    .is_some_and(|n| n.iter().any(|n| n["id"] == node))
            })
            .await
    })
    .await;
    other.stop().await;
    m.stop().await;
}

/// A node that stops heartbeating leaves the stream when it expires, with nothing
/// else happening: the stream wakes at the next possible expiry.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expiry_reaches_the_stream() {
    let m = TestManager::start(|c| c.ttl_secs = 1.0).await;
    let mut events = open_events(&m).await;
    let (node, reg) = reg_json(9);
    assert_eq!(m.put(&format!("/nodes/{node}"), &reg).await.0, 201);
    events
        .until(|s| s["nodes"].as_array().is_some_and(|n| n.len() == 1))
        .await;
    within(3, "the expiry on the event stream", async {
        events
            .until(|s| s["nodes"].as_array().is_some_and(|n| n.is_empty()))
            .await
    })
    .await;
    m.stop().await;
}
