//! A running node's library with real `fragnet` processes: `fragnet add` uploads videos
//! to a running seeder, a viewer with a small `--max-disk` watches them, evicts the
//! least recently watched, keeps the video it seeded itself, refuses one that cannot
//! fit with 507, and `fragnet remove` deletes one.

mod common;

use std::io::Write;
use std::path::Path;

use common::*;
use fragnet_core::conformance::generated_bytes;
use serde_json::Value;

/// A plain HTTP/1.1 GET; returns (status, body).
fn get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    let (status, _, body) = http_raw(addr, path, "");
    (status, body)
}

fn library(addr: &str) -> Value {
    let (status, body) = get(addr, "/library");
    assert_eq!(status, 200);
    serde_json::from_slice(&body).unwrap()
}

/// The HTTP address a peer printed (`[HTTP] Player on http://ADDR/watch/...`).
fn http_addr(lines: &[String]) -> String {
    after(lines, "[HTTP] Player on http://")
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// `fragnet add FILE --to URL`; returns the video id it printed.
fn add(d: &Path, file: &str, to: &str) -> String {
    let o = fragnet(
        d,
        &[
            "add",
            file,
            "--to",
            &format!("http://{to}"),
            "-n",
            "3",
            "--chunk-size",
            "32KiB",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(
        out.contains(&format!("player     http://{to}/watch/")),
        "{out}"
    );
    // The link a friend needs, made by the node from its own addresses.
    let link = after(
        &out.lines().map(str::to_string).collect::<Vec<_>>(),
        "share link ",
    );
    let link = fragnet_core::Link::parse(link.trim()).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(!link.peers.is_empty() || link.manager.is_some(), "{out}");
    after(
        &out.lines().map(str::to_string).collect::<Vec<_>>(),
        "video id",
    )
}

#[test]
fn add_watch_evict_and_remove_with_real_processes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let files: Vec<(&str, Vec<u8>)> = vec![
        ("p.mp4", generated_bytes(300_000, 31)),
        ("a.mp4", generated_bytes(300_000, 32)),
        ("b.mp4", generated_bytes(300_000, 33)),
        ("big.mp4", generated_bytes(500_000, 34)),
    ];
    for (name, bytes) in &files {
        std::fs::write(d.join(name), bytes).unwrap();
    }
    let s = fragnet(
        d,
        &[
            "split",
            "p.mp4",
            "--out",
            "pdir",
            "-n",
            "3",
            "--chunk-size",
            "32KiB",
        ],
    );
    assert!(s.status.success(), "{}", text(&s));

    // A seeder with nothing, then three videos added to it while it runs.
    let mut seeder = spawn_peer(
        d,
        &[
            "--listen",
            "127.0.0.1:0",
            "--http",
            "127.0.0.1:0",
            "--no-console",
            "--data",
            "seeder",
        ],
    );
    let listening = "[SERVER] Node listening on ";
    let seeder_tcp = after(&wait_for_line(&mut seeder, listening, 30), listening);
    let seeder_http = http_addr(&wait_for_line(&mut seeder, "[HTTP] Player on", 30));
    let a = add(d, "a.mp4", &seeder_http);
    let b = add(d, "b.mp4", &seeder_http);
    let big = add(d, "big.mp4", &seeder_http);
    let held = library(&seeder_http);
    let held: Vec<&str> = held["videos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["video"].as_str().unwrap())
        .collect();
    for id in [&a, &b, &big] {
        assert!(held.contains(&id.as_str()), "{id} not in {held:?}");
    }

    // A viewer that seeded P itself and may hold 700 kB.
    let mut viewer = spawn_peer(
        d,
        &[
            "--listen",
            "127.0.0.1:0",
            "--peer",
            &seeder_tcp,
            "--http",
            "127.0.0.1:0",
            "--no-console",
            "--data",
            "viewer",
            "--seed",
            "pdir",
            "--max-disk",
            "700KB",
        ],
    );
    let viewer_http = http_addr(&wait_for_line(&mut viewer, "[HTTP] Player on", 30));
    let p = fragnet_core::split::video_id_of_dir(&d.join("pdir"))
        .unwrap()
        .to_string();
    let lib = library(&viewer_http);
    assert_eq!(lib["max_disk"], 700_000);
    assert_eq!(lib["videos"][0]["video"], p);
    assert_eq!(
        lib["videos"][0]["pinned"], true,
        "what a node seeds is pinned"
    );

    let settled = |id: &str| {
        eventually(20, "the download to settle", || {
            let lib = library(&viewer_http);
            lib["videos"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["video"] == id && v["complete"] == true && v["downloading"] == false)
                .then_some(())
        })
    };
    let (status, body) = get(&viewer_http, &format!("/videos/{a}/stream"));
    assert_eq!(status, 200);
    assert!(body == files[1].1, "A streamed whole");
    settled(&a);

    // B does not fit beside P and A: A goes, P stays.
    let (status, body) = get(&viewer_http, &format!("/videos/{b}/stream"));
    assert_eq!(status, 200);
    assert!(body == files[2].1, "B streamed whole");
    settled(&b);
    let lib = library(&viewer_http);
    let ids: Vec<&str> = lib["videos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["video"].as_str().unwrap())
        .collect();
    let mut want = vec![p.as_str(), b.as_str()];
    want.sort();
    assert_eq!(ids, want, "A was evicted, P kept");
    assert!(!d.join("viewer").join(&a).exists(), "A's files are deleted");
    assert_eq!(lib["used"], 600_000);

    // 500 kB cannot fit beside the pinned 300 kB: 507 with a reason, nothing kept.
    let (status, body) = get(&viewer_http, &format!("/videos/{big}/stream"));
    assert_eq!(status, 507, "{}", String::from_utf8_lossy(&body));
    assert!(String::from_utf8_lossy(&body).contains("limits.max_disk"));
    assert!(!d.join("viewer").join(&big).exists());

    // `fragnet remove` from this machine (no token set: loopback only).
    let o = fragnet(
        d,
        &["remove", &b, "--from", &format!("http://{viewer_http}")],
    );
    assert!(o.status.success(), "{}", text(&o));
    let lib = library(&viewer_http);
    assert_eq!(lib["videos"].as_array().unwrap().len(), 1);
    assert_eq!(lib["videos"][0]["video"], p);
    assert!(!d.join("viewer").join(&b).exists());
    // Removing it again says why it failed.
    let o = fragnet(
        d,
        &["remove", &b, "--from", &format!("http://{viewer_http}")],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("404"), "{}", text(&o));
}

/// The console: `add FILE`, `videos`, `pin`/`unpin`, `remove ID` (a unique prefix).
#[test]
fn console_adds_lists_pins_and_removes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("talk.mp4"), generated_bytes(200_000, 41)).unwrap();
    let mut node = spawn_peer(d, &["--listen", "127.0.0.1:0", "--data", "node"]);
    wait_for_line(&mut node, "[SERVER] Node listening on ", 30);
    let mut stdin = node.0.stdin.take().unwrap();
    let mut say = |line: &str| {
        writeln!(stdin, "{line}").unwrap();
        stdin.flush().unwrap();
    };
    say("add talk.mp4");
    let lines = wait_for_line(&mut node, "[✓] Added talk.mp4 as ", 30);
    let id = after(&lines, "[✓] Added talk.mp4 as ");
    say("videos");
    let lines = wait_for_line(&mut node, "talk.mp4 — 10 of 10 fragments", 10);
    assert!(lines.last().unwrap().contains("(pinned)"), "{lines:?}");
    say(&format!("unpin {}", &id[..8]));
    wait_for_line(&mut node, "[✓] Unpinned", 10);
    say("add missing.mp4");
    let lines = wait_for_line(&mut node, "[✗]", 10);
    assert!(lines.last().unwrap().contains("missing.mp4"), "{lines:?}");
    say(&format!("remove {}", &id[..8]));
    wait_for_line(&mut node, &format!("[✓] Removed {id}"), 10);
    assert!(!d.join("node").join(&id).exists());
    say("videos");
    wait_for_line(&mut node, "no video here yet", 10);
    say("exit");
    assert!(wait_exit(&mut node, 20).success());
}
