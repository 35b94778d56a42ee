//! Every way a node can find peers, each on its own, through real `fragnet` processes:
//! a viewer that knows only the manager, only the broker, or only one peer that is
//! itself a leecher (peer exchange finds the seeder); the console and `fragnet fetch`
//! with only a manager. Every server binds port 0 and the test reads the address it
//! printed.

mod common;

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use common::*;

/// Splits the sample clip in `dir`; returns the video id.
fn split_sample(dir: &Path) -> String {
    let o = fragnet(dir, &["split", sample().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    text(&o)
        .lines()
        .find(|l| l.contains("video id"))
        .and_then(|l| l.split_whitespace().last())
        .unwrap()
        .to_string()
}

/// `fragnet manager` on 127.0.0.1:0; returns it and its URL.
fn manager(dir: &Path) -> (Proc, String) {
    let mut m = spawn(
        dir,
        &["manager", "--listen", "127.0.0.1:0", "--data", "manager"],
        &[],
    );
    let lines = wait_for_line(&mut m, "REST API on ", 20);
    let url = after(&lines, "REST API on ");
    (m, url)
}

/// A manager, and a seeder of the split sample registered with it; returns both and
/// the manager's URL once the seeder's fragments are listed.
fn manager_and_seeder(dir: &Path, video: &str) -> (Proc, Proc, String) {
    let (m, murl) = manager(dir);
    let (s, _) = peer(dir, "seeder", &["--seed", "fragments", "--manager", &murl]);
    eventually(20, "the seeder's announcement", || {
        let (st, body) = http_get(murl.trim_start_matches("http://"), "/fragments")?;
        (st == 200 && body.contains(video)).then_some(())
    });
    (m, s, murl)
}

/// `fragnet broker` on 127.0.0.1:0; returns it and its address.
fn broker(dir: &Path) -> (Proc, String) {
    let mut b = spawn(dir, &["broker", "--listen", "127.0.0.1:0"], &[]);
    let lines = wait_for_line(&mut b, "[BROKER] Listening on ", 20);
    let addr = after(&lines, "[BROKER] Listening on ");
    (b, addr)
}

/// A peer on tcp://127.0.0.1:0 with its own data directory; returns it and its address.
fn peer(dir: &Path, name: &str, extra: &[&str]) -> (Proc, String) {
    let mut args = vec![
        "peer",
        "--listen",
        "tcp://127.0.0.1:0",
        "--data",
        name,
        "--name",
        name,
        "--no-console",
    ];
    args.extend_from_slice(extra);
    let mut p = spawn(dir, &args, &[("FRAGNET_RECONCILE_SECS", "1")]);
    let lines = wait_for_line(&mut p, "Node listening on ", 20);
    let addr = after(&lines, "Node listening on ");
    (p, addr)
}

/// A viewer: a peer holding nothing, with HTTP on 127.0.0.1:0; returns it and the
/// HTTP address (host:port).
fn viewer(dir: &Path, extra: &[&str]) -> (Proc, String) {
    let mut args = vec!["--http", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let (mut p, _) = peer(dir, "viewer", &args);
    let lines = wait_for_line(&mut p, "[HTTP] Player on ", 20);
    let url = after(&lines, "[HTTP] Player on http://");
    let hostport = url.split('/').next().unwrap().to_string();
    (p, hostport)
}

/// GET with a Range header; returns (status, body bytes).
fn get_range(addr: &str, path: &str, range: &str) -> (u16, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nRange: {range}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).unwrap();
    let split = raw.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&raw[..split]).to_string();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let mut body = raw[split + 4..].to_vec();
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk_bytes(&body);
    }
    (status, body)
}

fn dechunk_bytes(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    while let Some(eol) = b.windows(2).position(|w| w == b"\r\n") {
        let n = usize::from_str_radix(String::from_utf8_lossy(&b[..eol]).trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + n]);
        b = &b[eol + 2 + n + 2..];
    }
    out
}

/// The viewer answers the last 500 bytes (a player's first look for the index) with
/// exactly the file's, though it held none of them: the range arrives through
/// whatever discovery it has.
fn assert_streams_the_tail(http: &str, video: &str) {
    let want = std::fs::read(sample()).unwrap();
    let (status, body) = get_range(http, &format!("/videos/{video}/stream"), "bytes=-500");
    assert_eq!(
        status,
        206,
        "body: {}",
        String::from_utf8_lossy(&body[..body.len().min(300)])
    );
    assert_eq!(
        body,
        want[want.len() - 500..],
        "the streamed bytes are the file's"
    );
}

#[test]
fn a_viewer_with_only_a_manager_streams_a_range_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let video = split_sample(d);
    let (_m, _s, murl) = manager_and_seeder(d, &video);
    let (_v, http) = viewer(d, &["--manager", &murl]);
    assert_streams_the_tail(&http, &video);
}

#[test]
fn a_viewer_with_only_a_broker_streams_a_range_it_lacks() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let video = split_sample(d);
    let (_b, baddr) = broker(d);
    let (_s, _) = peer(d, "seeder", &["--seed", "fragments", "--broker", &baddr]);
    // The seeder's fragment events went out before the viewer subscribed: the viewer
    // finds it by asking the topic who holds the video.
    let (_v, http) = viewer(d, &["--broker", &baddr]);
    assert_streams_the_tail(&http, &video);
}

#[test]
fn a_viewer_given_only_a_leecher_finds_the_seeder_by_peer_exchange() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let video = split_sample(d);
    let (_s, seeder) = peer(d, "seeder", &["--seed", "fragments"]);
    // The leecher holds fragment 0 only and knows the seeder; the viewer knows only
    // the leecher, and asks for bytes of fragment 9.
    let (_l, leecher) = peer(
        d,
        "leecher",
        &["--seed", "fragments", "--have", "0", "--peer", &seeder],
    );
    let (_v, http) = viewer(d, &["--peer", &leecher]);
    assert_streams_the_tail(&http, &video);
}

#[test]
fn the_console_with_only_a_manager_fetches_all() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let video = split_sample(d);
    let (_m, _s, murl) = manager_and_seeder(d, &video);
    let mut c = spawn_peer(
        d,
        &[
            "--listen",
            "tcp://127.0.0.1:0",
            "--data",
            "console",
            "--manager",
            &murl,
        ],
    );
    wait_for_line(&mut c, "Node listening on ", 20);
    let stdin = c.0.stdin.as_mut().unwrap();
    stdin.write_all(b"who 3\nfetch all\n").unwrap();
    stdin.flush().unwrap();
    let lines = wait_for_line(&mut c, "complete:", 60);
    assert!(
        lines.iter().any(|l| l.contains("holder(s)")),
        "who 3 lists the holder: {lines:?}"
    );
    c.0.stdin.as_mut().unwrap().write_all(b"exit\n").unwrap();
    assert!(wait_exit(&mut c, 20).success());
    let o = fragnet(
        d,
        &["join", &video, "--data", "console", "--out", "copy.mp4"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(d.join("copy.mp4")).unwrap() == std::fs::read(sample()).unwrap());
}

#[test]
fn fetch_with_only_a_manager_downloads_and_reassembles() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let video = split_sample(d);
    let (_m, _s, murl) = manager_and_seeder(d, &video);
    let o = fragnet(
        d,
        &[
            "fetch",
            "--manager",
            &murl,
            "--data",
            "fetcher",
            "--out",
            "fetched.mp4",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(d.join("fetched.mp4")).unwrap() == std::fs::read(sample()).unwrap());
}
