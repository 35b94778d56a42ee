//! Streaming benchmark (a program, not a test; never run in CI).
//!
//! For a node that starts empty, with the seeder's upload limited: the time to the first
//! byte of `GET /videos/{id}/stream` and the time to the browser's `playing` event on
//! `/watch/{id}` (headless Chromium), each next to baselines measured in the same run:
//! the time to fetch one chunk from the seeder, and the time to download the whole
//! video with a plain fetch. Target: first byte ≤ one chunk + 50 ms.
//!
//! ```text
//! cargo run --release -p fragnet-http --example stream_bench -- [--runs 5] [--rate 1000000] [--chunk 262144] [--clip sample-480p.mp4]
//! ```
//! Needs Debian's chromium and chromium-driver for the `playing` figure.

#[path = "../tests/common/mod.rs"]
mod common;

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::webdriver::Browser;
use common::{Viewer, client, seeder, tcp};
use fragnet_core::conformance::{NodeOptions, TestNode, TestVideo, sample_media};
use fragnet_core::fetch::{FetchOptions, Quiet};
use fragnet_http::HttpConfig;
use futures::StreamExt;

struct Args {
    runs: usize,
    rate: u64,
    chunk: u32,
    clip: String,
}

fn args() -> Args {
    let mut a = Args {
        runs: 5,
        rate: 1_000_000,
        chunk: 256 * 1024,
        clip: "sample-480p.mp4".into(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--runs" => a.runs = v.parse().unwrap(),
            "--rate" => a.rate = v.parse().unwrap(),
            "--chunk" => a.chunk = v.parse().unwrap(),
            "--clip" => a.clip = v,
            _ => panic!("unknown option {k}"),
        }
    }
    a
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// Lets the seeder's token bucket fill up again, so every measurement starts alike.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(1500)).await;
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let a = args();
    let bytes = std::fs::read(sample_media(&a.clip)).unwrap();
    let v = TestVideo::from_bytes(&a.clip, &bytes, 10, a.chunk);
    let seed = seeder(&v, Some(a.rate)).await;
    let browser = Browser::start().await;
    let (chunk0_len, size) = (v.manifest.chunk_range(0, 0).unwrap().1, v.manifest.size);
    println!(
        "clip {} ({size} bytes, 10 fragments, chunks of {} bytes), seeder upload {} B/s, {} runs",
        a.clip, a.chunk, a.rate, a.runs
    );
    let (mut chunk, mut whole, mut ttfb, mut body, mut dl_http, mut playing, mut dl_browser) =
        (vec![], vec![], vec![], vec![], vec![], vec![], vec![]);
    for run in 0..a.runs {
        // Baseline 1: one chunk, fresh connection included (as the node's first is).
        settle().await;
        let me = TestNode::start(tcp, "tcp://127.0.0.1:0", NodeOptions::default()).await;
        let t = Instant::now();
        let mut s = me.client(&seed.addr).await.unwrap();
        let data = s.get(v.id(), 0, 0, chunk0_len).await.unwrap();
        assert!(fragnet_core::ids::Digest::of(&data) == v.manifest.fragments[0].chunks[0]);
        chunk.push(ms(t.elapsed()));
        drop(s);

        // Baseline 2: the whole video, plain fetch.
        settle().await;
        let t = Instant::now();
        me.fetch(
            std::slice::from_ref(&seed.addr),
            Some(v.id()),
            None,
            FetchOptions::default(),
            Arc::new(Quiet),
        )
        .await
        .unwrap();
        whole.push(ms(t.elapsed()));

        // Time to first byte on an empty node, and to the whole body.
        settle().await;
        let mut viewer = Viewer::start(
            &v,
            &[],
            std::slice::from_ref(&seed.addr),
            HttpConfig::default(),
        )
        .await;
        let url = format!("{}/videos/{}/stream", viewer.base, v.id());
        let c = client();
        let t = Instant::now();
        let r = c.get(&url).send().await.unwrap();
        let mut pieces = r.bytes_stream();
        let mut got = 0usize;
        while let Some(p) = pieces.next().await {
            let p = p.unwrap();
            if got == 0 && !p.is_empty() {
                ttfb.push(ms(t.elapsed()));
            }
            got += p.len();
        }
        body.push(ms(t.elapsed()));
        while viewer.held(&v) < 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        dl_http.push(ms(t.elapsed()));
        assert_eq!(got as u64, size);
        viewer.stop().await;

        // The browser: navigation to the `playing` event, on an empty node.
        settle().await;
        let mut viewer = Viewer::start(
            &v,
            &[],
            std::slice::from_ref(&seed.addr),
            HttpConfig::default(),
        )
        .await;
        let start_epoch = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
        let t = Instant::now();
        browser
            .goto(&format!("{}/watch/{}", viewer.base, v.id()))
            .await;
        let played_at = loop {
            let r = browser
                .eval(
                    "const e = (window.fragnetWatch.events || []).find((e) => e.type === 'playing');\
                     return e ? performance.timeOrigin + e.t : null;",
                )
                .await;
            if let Some(epoch_ms) = r.as_f64() {
                break epoch_ms - start_epoch.as_secs_f64() * 1000.0;
            }
            assert!(t.elapsed() < Duration::from_secs(120), "never played");
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        playing.push(played_at);
        while viewer.held(&v) < 10 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        dl_browser.push(ms(t.elapsed()));
        browser.goto("about:blank").await;
        viewer.stop().await;
        println!(
            "run {run}: chunk {:.0} ms, whole {:.0} ms, ttfb {:.0} ms, body {:.0} ms, download (http) {:.0} ms, playing {:.0} ms, download (browser) {:.0} ms",
            chunk[run],
            whole[run],
            ttfb[run],
            body[run],
            dl_http[run],
            playing[run],
            dl_browser[run]
        );
    }
    let (chunk, whole, ttfb, body, dl_http, playing, dl_browser) = (
        median(&mut chunk),
        median(&mut whole),
        median(&mut ttfb),
        median(&mut body),
        median(&mut dl_http),
        median(&mut playing),
        median(&mut dl_browser),
    );
    println!("\nmedians of {} runs", a.runs);
    println!("| figure | ms | ratio |");
    println!("|---|---:|---:|");
    println!("| fetch one chunk (baseline) | {chunk:.0} | 1.00 × chunk |");
    println!("| download the whole video, plain fetch (baseline) | {whole:.0} | 1.00 × whole |");
    println!(
        "| time to first byte, empty node | {ttfb:.0} | {:.2} × chunk; {:.3} × whole; chunk + {:.0} ms (target ≤ chunk + 50 ms: {}) |",
        ttfb / chunk,
        ttfb / whole,
        ttfb - chunk,
        if ttfb <= chunk + 50.0 {
            "met"
        } else {
            "missed"
        }
    );
    println!(
        "| whole body streamed | {body:.0} | {:.2} × whole |",
        body / whole
    );
    println!(
        "| download complete while streaming | {dl_http:.0} | {:.2} × whole |",
        dl_http / whole
    );
    println!(
        "| browser `playing` event, empty node | {playing:.0} | {:.3} × whole; {:.3} × its own download ({dl_browser:.0} ms) |",
        playing / whole,
        playing / dl_browser
    );
    browser.close().await;
}
