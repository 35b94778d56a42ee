//! The stream endpoint against real nodes on real sockets: range semantics on a node
//! holding part of a video, bytes streamed while the download runs, seeks that
//! overtake the background download, limits, events and shutdown.

mod common;

use std::time::Duration;

use common::{Viewer, client, original, seeder};
use fragnet_core::conformance::{TestVideo, generated_bytes, within};
use fragnet_http::HttpConfig;
use futures::StreamExt;
use reqwest::StatusCode;
use reqwest::header::{ACCEPT_RANGES, CONTENT_LENGTH, CONTENT_RANGE, CONTENT_TYPE, RETRY_AFTER};

const SIZE: usize = 1_000_000;

/// 1 MB in 10 fragments of 100 kB, chunks of 16 KiB.
fn video() -> TestVideo {
    TestVideo::from_bytes("clip.mp4", &generated_bytes(SIZE, 21), 10, 16384)
}

fn header(r: &reqwest::Response, name: reqwest::header::HeaderName) -> String {
    r.headers()
        .get(&name)
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn range_semantics_on_a_node_holding_part_of_the_video() {
    let v = video();
    let orig = original(&v);
    let seed = seeder(&v, None).await;
    let mut viewer = Viewer::start(
        &v,
        &[3],
        std::slice::from_ref(&seed.addr),
        HttpConfig::default(),
    )
    .await;
    let url = format!("{}/videos/{}/stream", viewer.base, v.id());
    let c = client();

    // HEAD: headers only, and nothing is fetched for it.
    let r = within(10, "HEAD", c.head(&url).send()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, CONTENT_LENGTH), SIZE.to_string());
    assert_eq!(header(&r, ACCEPT_RANGES), "bytes");
    assert_eq!(header(&r, CONTENT_TYPE), "video/mp4");
    assert_eq!(header(&r, reqwest::header::ETAG), format!("\"{}\"", v.id()));
    assert!(within(10, "HEAD body", r.bytes()).await.unwrap().is_empty());
    let r = within(
        10,
        "HEAD range",
        c.head(&url).header("Range", "bytes=10-19").send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(header(&r, CONTENT_RANGE), format!("bytes 10-19/{SIZE}"));
    assert_eq!(header(&r, CONTENT_LENGTH), "10");
    assert_eq!(viewer.held(&v), 1, "HEAD fetched nothing");

    let get = |range: &'static str| {
        let req = c.get(&url).header("Range", range);
        async move {
            let r = within(30, range, req.send()).await.unwrap();
            let status = r.status();
            let cr = header(&r, CONTENT_RANGE);
            let body = within(30, "body", r.bytes()).await.unwrap();
            (status, cr, body)
        }
    };
    // A single range inside the fragment held here.
    let (s, cr, body) = get("bytes=300000-300099").await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(cr, format!("bytes 300000-300099/{SIZE}"));
    assert_eq!(&body[..], &orig[300_000..300_100]);
    // Open-ended, over fragments that were not here: fetched for the player.
    let (s, cr, body) = get("bytes=450000-").await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(cr, format!("bytes 450000-{}/{SIZE}", SIZE - 1));
    assert!(body[..] == orig[450_000..]);
    // Suffix.
    let (s, cr, body) = get("bytes=-1000").await;
    assert_eq!(s, StatusCode::PARTIAL_CONTENT);
    assert_eq!(cr, format!("bytes {}-{}/{SIZE}", SIZE - 1000, SIZE - 1));
    assert!(body[..] == orig[SIZE - 1000..]);
    // A range that ends past the end is clipped.
    let (s, cr, body) = get("bytes=999990-2000000").await;
    assert_eq!(
        (s, cr),
        (
            StatusCode::PARTIAL_CONTENT,
            format!("bytes 999990-999999/{SIZE}")
        )
    );
    assert_eq!(&body[..], &orig[999_990..]);
    // Past the end.
    let (s, cr, body) = get("bytes=1000000-").await;
    assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(cr, format!("bytes */{SIZE}"));
    assert!(body.is_empty());
    // An unusable range is ignored: the whole video.
    let (s, _, body) = get("bytes=500-100").await;
    assert_eq!(s, StatusCode::OK);
    assert!(body[..] == orig[..]);
    // No range at all.
    let r = within(30, "GET", c.get(&url).send()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, CONTENT_LENGTH), SIZE.to_string());
    assert!(within(30, "body", r.bytes()).await.unwrap()[..] == orig[..]);
    // If-Range with another validator: the whole video.
    let r = within(
        30,
        "If-Range",
        c.get(&url)
            .header("Range", "bytes=0-9")
            .header("If-Range", "\"something-else\"")
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::OK);

    // Ids: malformed, unknown.
    let r = c
        .get(format!("{}/videos/not-an-id/stream", viewer.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    assert!(r.text().await.unwrap().contains("not a video id"));
    let unknown = "ab".repeat(32);
    let r = within(
        30,
        "unknown video",
        c.get(format!("{}/videos/{unknown}/stream", viewer.base))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);

    // Health and metrics.
    let h: serde_json::Value = c
        .get(format!("{}/health", viewer.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok");
    assert_eq!(h["node_id"], viewer.node.identity.node_id().to_string());
    let m = c
        .get(format!("{}/metrics", viewer.base))
        .send()
        .await
        .unwrap();
    assert!(header(&m, CONTENT_TYPE).starts_with("text/plain; version=0.0.4"));
    let m = m.text().await.unwrap();
    let value = |name: &str| -> u64 {
        m.lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("{name} missing in\n{m}"))
    };
    assert!(value("fragnet_http_stream_bytes_total") >= 2 * SIZE as u64);
    assert_eq!(value("fragnet_download_started_total"), 1);
    assert!(m.contains(&format!(
        "fragnet_store_fragments{{video=\"{}\"}} 10",
        v.id()
    )));
    assert!(m.contains("# TYPE fragnet_http_streams_active gauge"));
    viewer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bytes_stream_out_as_chunks_verify_not_after_the_whole_video() {
    let v = video();
    let orig = original(&v);
    // 1 MB at 300 kB/s: the whole download takes over 3 s; one chunk about 50 ms.
    let seed = seeder(&v, Some(300_000)).await;
    let mut viewer = Viewer::start(
        &v,
        &[],
        std::slice::from_ref(&seed.addr),
        HttpConfig::default(),
    )
    .await;
    let url = format!("{}/videos/{}/stream", viewer.base, v.id());
    let r = within(30, "GET", client().get(&url).send()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    assert_eq!(header(&r, CONTENT_TYPE), "video/mp4");
    let mut body = Vec::with_capacity(SIZE);
    let mut pieces = r.bytes_stream();
    let mut held_at_first_byte = None;
    let mut pieces_seen = 0;
    within(60, "streamed body", async {
        while let Some(p) = pieces.next().await {
            let p = p.unwrap();
            if held_at_first_byte.is_none() && !p.is_empty() {
                held_at_first_byte = Some(viewer.held(&v));
            }
            pieces_seen += 1;
            body.extend_from_slice(&p);
        }
    })
    .await;
    let held = held_at_first_byte.expect("some bytes");
    assert!(
        held < 10,
        "the first bytes must go out while the download runs (held {held} of 10)"
    );
    assert!(pieces_seen > 10, "streamed piece by piece ({pieces_seen})");
    assert!(body == orig, "the streamed bytes equal the original file");
    viewer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_seek_into_missing_bytes_overtakes_the_background_download() {
    let v = video();
    let orig = original(&v);
    let seed = seeder(&v, Some(300_000)).await;
    let mut viewer = Viewer::start(
        &v,
        &[],
        std::slice::from_ref(&seed.addr),
        HttpConfig::default(),
    )
    .await;
    let url = format!("{}/videos/{}/stream", viewer.base, v.id());
    let c = client();
    // The player's first request starts the download.
    let first = within(
        30,
        "first bytes",
        c.get(&url).header("Range", "bytes=0-99").send(),
    )
    .await
    .unwrap();
    assert_eq!(&first.bytes().await.unwrap()[..], &orig[..100]);
    // It seeks near the end: those bytes come ahead of the rest.
    let r = within(
        30,
        "seek",
        c.get(&url).header("Range", "bytes=800000-849999").send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::PARTIAL_CONTENT);
    let body = within(30, "seek body", r.bytes()).await.unwrap();
    let held = viewer.held(&v);
    assert!(body[..] == orig[800_000..850_000]);
    assert!(
        held < 10,
        "the seek's bytes arrived before the background download finished (held {held})"
    );
    viewer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_peers_only_what_is_held_is_served() {
    let v = video();
    let orig = original(&v);
    let config = HttpConfig {
        chunk_wait: Duration::from_millis(500),
        ..HttpConfig::default()
    };
    let mut viewer = Viewer::start(&v, &[0], &[], config).await;
    let url = format!("{}/videos/{}/stream", viewer.base, v.id());
    let c = client();
    // Bytes not here and nobody to ask: refused before any body.
    let r = within(
        10,
        "missing",
        c.get(&url).header("Range", "bytes=500000-").send(),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.text().await.unwrap().contains("not held here"));
    // Starting in what is held: the held bytes go out, then the body ends short
    // once the next chunk does not arrive within the chunk wait.
    let r = within(10, "partial", c.get(&url).send()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let mut got = Vec::new();
    let mut s = r.bytes_stream();
    let mut failed = false;
    within(10, "short body", async {
        while let Some(p) = s.next().await {
            match p {
                Ok(p) => got.extend_from_slice(&p),
                Err(_) => {
                    failed = true;
                    break;
                }
            }
        }
    })
    .await;
    assert!(
        failed,
        "a body that cannot complete must not end as if complete"
    );
    assert!(
        got[..] == orig[..100_000],
        "exactly fragment 0 was sent (got {} bytes)",
        got.len()
    );
    // Unknown video, no peers: 404.
    let r = c
        .get(format!("{}/videos/{}/stream", viewer.base, "cd".repeat(32)))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::NOT_FOUND);
    viewer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_report_progress_live_and_responses_are_capped() {
    let v = video();
    let seed = seeder(&v, Some(500_000)).await;
    let config = HttpConfig {
        max_responses: 2,
        ..HttpConfig::default()
    };
    let mut viewer = Viewer::start(&v, &[], std::slice::from_ref(&seed.addr), config).await;
    let c = client();
    // The page opens its event stream before the node knows the video.
    let ev = within(
        10,
        "events",
        c.get(format!("{}/videos/{}/events", viewer.base, v.id()))
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(ev.status(), StatusCode::OK);
    assert!(header(&ev, CONTENT_TYPE).starts_with("text/event-stream"));
    let url = format!("{}/videos/{}/stream", viewer.base, v.id());
    let player = within(10, "player", c.get(&url).send()).await.unwrap();
    assert_eq!(player.status(), StatusCode::OK);
    // Two responses in progress: a third is refused.
    let third = within(10, "third", c.get(&url).send()).await.unwrap();
    assert_eq!(third.status(), StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(header(&third, RETRY_AFTER), "2");

    let mut text = String::new();
    let mut s = ev.bytes_stream();
    let mut complete = std::collections::BTreeSet::new();
    within(60, "progress events", async {
        while complete.len() < 10 {
            let p = s.next().await.unwrap().unwrap();
            text.push_str(std::str::from_utf8(&p).unwrap());
            while let Some(end) = text.find("\n\n") {
                let event: String = text.drain(..end + 2).collect();
                let name = event.lines().find_map(|l| l.strip_prefix("event: "));
                let data = event.lines().find_map(|l| l.strip_prefix("data: "));
                let (Some(name), Some(data)) = (name, data) else {
                    continue; // keep-alive comment
                };
                let d: serde_json::Value = serde_json::from_str(data).unwrap();
                match name {
                    "snapshot" => assert_eq!(d["fragment_count"], 10),
                    "progress" => {
                        if d["complete"] == true {
                            complete.insert(d["index"].as_u64().unwrap());
                        }
                    }
                    other => panic!("unexpected event {other}"),
                }
            }
        }
    })
    .await;
    drop(player);
    viewer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_are_served_from_the_binary_and_shutdown_ends_waiting_streams() {
    let v = video();
    // So slow that the stream below is still waiting when the node stops.
    let seed = seeder(&v, Some(20_000)).await;
    let mut viewer = Viewer::start(
        &v,
        &[],
        std::slice::from_ref(&seed.addr),
        HttpConfig::default(),
    )
    .await;
    let c = client();
    let page = c
        .get(format!("{}/watch/{}", viewer.base, v.id()))
        .send()
        .await
        .unwrap();
    assert_eq!(page.status(), StatusCode::OK);
    assert!(header(&page, CONTENT_TYPE).starts_with("text/html"));
    let html = page.text().await.unwrap();
    assert!(html.contains(&format!("/videos/{}/stream", v.id())));
    assert!(html.contains("<video") && !html.contains("{{") && !html.contains("https://"));
    let r = c
        .get(format!("{}/watch/..%2F..%2Fetc", viewer.base))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let index = c.get(&viewer.base).send().await.unwrap();
    assert!(index.text().await.unwrap().contains("fragnet node viewer"));

    let url = format!("{}/videos/{}/stream", viewer.base, v.id());
    let r = within(10, "slow stream", c.get(&url).send()).await.unwrap();
    let mut s = r.bytes_stream();
    within(30, "first piece", s.next()).await.unwrap().unwrap();
    within(
        10,
        "shutdown with a stream waiting",
        viewer.node.node.take().unwrap().shutdown(),
    )
    .await;
    // The body ends (short) rather than hanging.
    within(10, "body ends", async {
        while let Some(Ok(_)) = s.next().await {}
    })
    .await;
    viewer.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_event_stream_for_a_video_that_never_comes_ends() {
    let v = video();
    let seed = seeder(&v, None).await;
    let config = HttpConfig {
        chunk_wait: Duration::from_millis(500),
        max_responses: 1,
        ..HttpConfig::default()
    };
    let mut viewer = Viewer::start(&v, &[], std::slice::from_ref(&seed.addr), config).await;
    let url = format!("{}/videos/{}/events", viewer.base, "ef".repeat(32));
    let c = client();
    let r = within(10, "events", c.get(&url).send()).await.unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    let body = within(10, "the stream ends", r.text()).await.unwrap();
    assert!(!body.contains("event:"), "{body}");
    // Its response slot is free again.
    let r = within(10, "events again", c.get(&url).send())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::OK);
    viewer.stop().await;
}
