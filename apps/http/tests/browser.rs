//! A real browser plays a video from a node that is still downloading it: Debian's
//! headless Chromium, driven through Debian's chromedriver over WebDriver. The seeder's
//! upload is limited so the whole download takes several times the clip's first
//! seconds; the node starts with 1 of the 10 fragments. Both sample clips play: the
//! one with its index (moov) at the start, and the one with it at the end.
//!
//! The manager's dashboard is opened too: it shows the swarm (the registration and
//! announcements a node makes are done here on the nodes' behalf) and follows changes
//! live, without a reload.
//!
//! Needs `apt-get install -y chromium chromium-driver`; fails (never skips) without.

mod common;

use std::sync::Arc;
use std::time::{Duration, Instant};

use common::webdriver::{Browser, screenshot_dir};
use common::{Viewer, original, seeder};
use fragnet_core::conformance::{TestVideo, joined_bytes, sample_media};
use fragnet_core::registry::NodeRegistration;
use fragnet_core::store::StoreEvent;
use fragnet_core::{MemoryRegistry, NodeId};
use fragnet_http::HttpConfig;
use fragnet_manager::{ManagerConfig, ManagerHandle};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

/// Bytes per second the seeder uploads: the 2.7 MB clip takes about 12 s to arrive,
/// while its first 2 s of video are about 300 kB.
const UPLOAD: u64 = 200_000;

const PLAYER_STATE: &str = r#"
const p = document.getElementById("player");
const w = window.fragnetWatch || {};
return {
  t: p.currentTime, readyState: p.readyState, paused: p.paused,
  error: p.error ? (p.error.message || String(p.error.code)) : null,
  held: w.held || 0, total: w.total || 0,
  peers: (w.peers || []).length,
  sourced: (w.fragments || []).reduce((n, f) => n + (f.chunks || []).filter((c) => c >= 1).length, 0),
  segments: document.querySelectorAll('#bar .seg').length,
  events: (w.events || []).map((e) => e.type),
  state: document.getElementById("state").textContent,
  link: w.link || null,
  link_shown: !document.getElementById("share").hidden,
};
"#;

async fn poll_until(
    browser: &Browser,
    secs: u64,
    what: &str,
    done: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let s = browser.eval(PLAYER_STATE).await;
        assert!(s["error"].is_null(), "the player failed: {s}");
        if done(&s) {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}; player: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Registers a node with the manager and keeps its announcement of `video` current
/// (what the registry wiring of a peer does), until `stop`.
fn announce(
    registry: Arc<MemoryRegistry>,
    node: &fragnet_core::conformance::TestNode,
    http: Option<String>,
    v: &TestVideo,
    stop: CancellationToken,
) {
    let id = node.identity.node_id();
    let reg = NodeRegistration {
        name: if http.is_some() { "viewer" } else { "seeder" }.into(),
        addrs: vec![node.addr.clone()],
        http,
    };
    let (store, video) = (node.store.clone(), v.id());
    registry.insert_video(&v.manifest, Some(video)).unwrap();
    registry.register_node(id, &reg).unwrap();
    registry.set_have(id, video, &store.have(video)).unwrap();
    let mut events = store.subscribe();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                ev = events.recv() => if !matches!(ev, Ok(StoreEvent::FragmentComplete { .. })) {
                    continue;
                },
                // The heartbeat.
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
            let _ = registry.register_node(id, &reg);
            let _ = registry.set_have(id, video, &store.have(video));
        }
    });
}

async fn dashboard_follows_the_swarm(
    browser: &Browser,
    manager: &ManagerHandle,
    v: &TestVideo,
    viewer: NodeId,
) {
    browser.goto(&manager.url()).await;
    let video = v.id().to_string();
    let viewer = viewer.to_string();
    let script = format!(
        "const d = window.fragnetDashboard; const s = d && d.snapshot;\
         if (!s) return null;\
         const n = s.nodes.find((n) => n.id === '{viewer}');\
         return {{ updates: d.updates, nodes: s.nodes.length,\
                  viewer: n ? (n.holdings['{video}'] || []).length : -1,\
                  cells: document.querySelectorAll('td.cell.held').length,\
                  player: document.querySelectorAll('a[href$=\"/watch/{video}\"]').length }};"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    let state = loop {
        let s = browser.eval(&script).await;
        if s["viewer"] == 10 && s["nodes"] == 2 {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard never showed the swarm: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(state["cells"], 20, "two nodes × ten fragments: {state}");
    assert_eq!(
        state["player"], 1,
        "the viewer's row links to its player: {state}"
    );
    browser
        .screenshot(&screenshot_dir().join("dashboard.png"))
        .await;
    // A change in the registry reaches the open page without a reload.
    let before = state["updates"].as_u64().unwrap();
    let registry = manager.registry();
    let late = fragnet_core::identity::Identity::generate().node_id();
    registry
        .register_node(
            late,
            &NodeRegistration {
                name: "late-joiner".into(),
                addrs: vec!["tcp://127.0.0.1:7999".parse().unwrap()],
                http: None,
            },
        )
        .unwrap();
    registry.set_have(late, v.id(), &[4]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s = browser.eval(&script).await;
        if s["nodes"] == 3 && s["cells"] == 21 {
            assert!(s["updates"].as_u64().unwrap() > before);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the dashboard did not update live: {s}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    browser
        .screenshot(&screenshot_dir().join("dashboard-live.png"))
        .await;
}

async fn plays_while_downloading(browser: &Browser, clip: &str, manager: Option<&ManagerHandle>) {
    let bytes = std::fs::read(sample_media(clip)).unwrap();
    // Chunks of 64 KiB: the unit a player's bytes are fetched, verified and sent in.
    let v = TestVideo::from_bytes(clip, &bytes, 10, 64 * 1024);
    let seed = seeder(&v, Some(UPLOAD)).await;
    let config = HttpConfig {
        lookahead: 512 * 1024,
        ..HttpConfig::default()
    };
    // With a manager, the viewer is given no peer at all: it finds the seeder through
    // the registry, as a node started with only --manager does.
    let mut viewer = match manager {
        Some(m) => {
            let registry: Arc<dyn fragnet_core::Registry> = m.registry();
            Viewer::start_with(&v, &[5], config, move |b| b.registry(Some(registry))).await
        }
        None => Viewer::start(&v, &[5], std::slice::from_ref(&seed.addr), config).await,
    };
    assert_eq!(viewer.held(&v), 1, "starts with 1 of 10 fragments");
    let stop = CancellationToken::new();
    if let Some(m) = manager {
        announce(m.registry(), &seed, None, &v, stop.clone());
        announce(
            m.registry(),
            &viewer.node,
            Some(viewer.base.clone()),
            &v,
            stop.clone(),
        );
    }

    let started = Instant::now();
    browser
        .goto(&format!("{}/watch/{}", viewer.base, v.id()))
        .await;
    let s = poll_until(browser, 90, "currentTime past 2 s", |s| {
        s["t"].as_f64().unwrap_or(0.0) > 2.0
    })
    .await;
    let held = viewer.held(&v);
    let at = started.elapsed();
    let stem = clip.trim_end_matches(".mp4");
    browser
        .screenshot(&screenshot_dir().join(format!("watch-{stem}-playing.png")))
        .await;
    assert!(
        held < 10,
        "{clip}: the player passed 2 s only after the node held every fragment ({s})"
    );
    eprintln!(
        "{clip}: currentTime {} after {at:?}, node held {held} of 10 fragments",
        s["t"]
    );

    // The download finishes in the background; the page's bar fills to the end.
    let deadline = Instant::now() + Duration::from_secs(90);
    while viewer.held(&v) < 10 {
        assert!(
            Instant::now() < deadline,
            "{clip}: the download did not finish"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let s = poll_until(browser, 20, "the fragment bar to fill", |s| s["held"] == 10).await;
    assert_eq!(s["total"], 10);
    // The bar is drawn per chunk and names the peer the chunks came from (the seeder;
    // fragment 5 was here before).
    assert!(
        s["segments"].as_u64().unwrap() > 10,
        "one segment per chunk: {s}"
    );
    assert!(s["peers"].as_u64().unwrap() >= 1, "{s}");
    assert!(s["sourced"].as_u64().unwrap() > 0, "{s}");
    // The "copy link" box shows this node's share link to the video.
    let link = s["link"]
        .as_str()
        .unwrap_or_else(|| panic!("no share link: {s}"));
    let link = fragnet_core::Link::parse(link).unwrap();
    assert_eq!(link.video, v.id());
    assert!(!link.peers.is_empty(), "{link}");
    assert_eq!(s["link_shown"], true, "{s}");
    browser
        .screenshot(&screenshot_dir().join(format!("watch-{stem}-complete.png")))
        .await;
    assert!(
        joined_bytes(&viewer.node, v.id()) == original(&v),
        "{clip}: the node's copy equals the original"
    );
    if let Some(m) = manager {
        dashboard_follows_the_swarm(browser, m, &v, viewer.node.identity.node_id()).await;
    }
    stop.cancel();
    viewer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_plays_both_sample_clips_while_they_download() {
    let dir = tempfile::tempdir().unwrap();
    let manager = fragnet_manager::spawn(
        ManagerConfig::local(dir.path().to_path_buf()),
        CancellationToken::new(),
    )
    .await
    .unwrap();
    let browser = Browser::start().await;
    // One after the other: two browsers at once on two cores would measure the CPU.
    plays_while_downloading(&browser, "sample-480p.mp4", Some(&manager)).await;
    plays_while_downloading(&browser, "sample-480p-moov-at-end.mp4", None).await;
    browser.close().await;
    manager.shutdown().await;
}
