//! The `fragnet` binary end to end, as a user runs it: real processes, real sockets.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::process::{Command, Stdio};

use common::*;

#[test]
fn version_and_help() {
    let dir = tempfile::tempdir().unwrap();
    let v = fragnet(dir.path(), &["--version"]);
    assert!(
        v.status.success() && text(&v).starts_with("fragnet "),
        "{}",
        text(&v)
    );
    for cmd in ["split", "join", "peer", "fetch"] {
        let h = fragnet(dir.path(), &[cmd, "--help"]);
        assert!(
            h.status.success() && text(&h).contains("Usage: fragnet"),
            "{cmd}: {}",
            text(&h)
        );
    }
}

#[test]
fn split_bad_inputs_exit_nonzero_with_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("empty.mp4"), b"").unwrap();
    std::fs::write(d.join("tiny.mp4"), b"12345").unwrap();
    for (args, needle) in [
        (vec!["split", "missing.mp4"], "No such file"),
        (vec!["split", "."], "not a regular file"),
        (vec!["split", "empty.mp4"], "fewer than the 10 fragments"),
        (vec!["split", "tiny.mp4"], "fewer than the 10 fragments"),
        (
            vec!["split", "tiny.mp4", "--fragments", "0"],
            "between 1 and",
        ),
        (
            vec!["split", "tiny.mp4", "--fragments", "100000000000"],
            "between 1 and",
        ),
    ] {
        let o = fragnet(d, &args);
        assert!(!o.status.success(), "{args:?} should fail");
        assert!(text(&o).contains(needle), "{args:?}: {}", text(&o));
        assert!(
            !d.join("fragments").exists(),
            "{args:?} left a fragments directory behind"
        );
    }
}

#[test]
fn split_then_join_and_refuse_another_video() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = fragnet(d, &["split", sample().to_str().unwrap()]);
    assert!(s.status.success(), "{}", text(&s));
    assert!(text(&s).contains("Video split into 10 fragments."));
    for i in 0..10 {
        assert!(d.join(format!("fragments/fragment_{i}.bin")).is_file());
    }
    let j = fragnet(d, &["join", "fragments", "--out", "copy.mp4"]);
    assert!(j.status.success(), "{}", text(&j));
    assert!(std::fs::read(d.join("copy.mp4")).unwrap() == std::fs::read(sample()).unwrap());
    // An existing file is not replaced unless --force, and is left as it was.
    std::fs::write(d.join("mine.txt"), b"keep me").unwrap();
    let j = fragnet(d, &["join", "fragments", "--out", "mine.txt"]);
    assert!(
        !j.status.success() && text(&j).contains("--force"),
        "{}",
        text(&j)
    );
    assert_eq!(std::fs::read(d.join("mine.txt")).unwrap(), b"keep me");
    let j = fragnet(d, &["join", "fragments", "--out", "mine.txt", "--force"]);
    assert!(j.status.success(), "{}", text(&j));
    assert!(std::fs::read(d.join("mine.txt")).unwrap() == std::fs::read(sample()).unwrap());
    // Another video into the same directory is refused unless --force.
    std::fs::write(d.join("other.bin"), vec![7u8; 5000]).unwrap();
    let o = fragnet(d, &["split", "other.bin"]);
    assert!(
        !o.status.success() && text(&o).contains("--force"),
        "{}",
        text(&o)
    );
    let o = fragnet(d, &["split", "other.bin", "--force"]);
    assert!(o.status.success(), "{}", text(&o));
}

/// The original walkthrough: A holds 0–4, B holds 5–9; A's console asks for
/// fragment_5.bin and gets it from B; B exits cleanly on SIGTERM.
///
/// Both listen on a bare port, as in the original, but port 0: each prints the port it
/// bound. So B, which starts first, cannot be told A's address as in the original; it
/// only serves here, and nothing depends on it knowing A.
#[test]
fn original_walkthrough_with_two_peer_processes() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(
        fragnet(d, &["split", sample().to_str().unwrap()])
            .status
            .success()
    );
    let mut b = spawn_peer(
        d,
        &[
            "--listen",
            "0",
            "--seed",
            "fragments",
            "--have",
            "5-9",
            "--no-console",
        ],
    );
    let pb = port_of(&after(
        &wait_for_line(&mut b, "Node listening on ", 20),
        "Node listening on ",
    ));
    let to_b = format!("localhost:{pb}");
    let mut a = spawn_peer(
        d,
        &[
            "--listen",
            "0",
            "--peer",
            &to_b,
            "--seed",
            "fragments",
            "--have",
            "0-4",
        ],
    );
    let store = d.join(after(&wait_for_line(&mut a, "data in ", 20), "data in "));
    let stdin = a.0.stdin.as_mut().unwrap();
    stdin.write_all(b"fragment_5.bin\n").unwrap();
    let lines = wait_for_line(&mut a, "received from", 30);
    let last = lines.last().unwrap();
    assert!(
        last.contains(&format!(
            "[✓] Fragment 'fragment_5.bin' received from localhost:{pb}"
        )),
        "{last}"
    );
    assert!(last.contains("verified"), "{last}");
    a.0.stdin.as_mut().unwrap().write_all(b"exit\n").unwrap();
    assert!(wait_exit(&mut a, 20).success());
    // Node A's store now holds 0-4 and 5.
    let vid = std::fs::read_dir(&store)
        .unwrap()
        .filter_map(|e| e.ok())
        .find(|e| e.path().join("manifest.json").is_file())
        .unwrap()
        .path();
    assert!(vid.join("fragment_5.bin").is_file());
    assert!(!vid.join("fragment_6.bin").exists());
    // SIGTERM stops B cleanly with status 0.
    let kill = Command::new("kill")
        .args(["-TERM", &b.0.id().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    assert!(wait_exit(&mut b, 20).success(), "peer exits 0 on SIGTERM");
}

/// `fragnet fetch` from two peers in parallel reassembles a byte-identical file.
#[test]
fn fetch_from_two_peers_reassembles_the_video() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(
        fragnet(d, &["split", sample().to_str().unwrap()])
            .status
            .success()
    );
    let mut a = spawn_peer(
        d,
        &[
            "--listen",
            "0",
            "--seed",
            "fragments",
            "--have",
            "0-6",
            "--no-console",
        ],
    );
    let mut b = spawn_peer(
        d,
        &[
            "--listen",
            "0",
            "--seed",
            "fragments",
            "--have",
            "3-9",
            "--no-console",
        ],
    );
    let listening = "Node listening on ";
    let pa = port_of(&after(&wait_for_line(&mut a, listening, 20), listening));
    let pb = port_of(&after(&wait_for_line(&mut b, listening, 20), listening));
    let o = fragnet(
        d,
        &[
            "fetch",
            "--peer",
            &format!("127.0.0.1:{pa}"),
            "--peer",
            &format!("tcp://127.0.0.1:{pb}"),
            "--out",
            "got.mp4",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(text(&o).contains("Wrote got.mp4"), "{}", text(&o));
    assert!(std::fs::read(d.join("got.mp4")).unwrap() == std::fs::read(sample()).unwrap());
    // Again: nothing to fetch, the file is already right.
    let o = fragnet(
        d,
        &[
            "fetch",
            "--peer",
            &format!("127.0.0.1:{pa}"),
            "--out",
            "got.mp4",
        ],
    );
    assert!(
        o.status.success() && text(&o).contains("already holds this video"),
        "{}",
        text(&o)
    );
    // A dead peer (nothing listens on a dead port) is a clear error.
    let o = fragnet(
        d,
        &[
            "fetch",
            "--peer",
            &format!("127.0.0.1:{}", dead_port()),
            "--data",
            "elsewhere",
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("no peer answered"),
        "{}",
        text(&o)
    );
}

#[test]
fn unknown_config_keys_and_bad_flags_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(d.join("node.toml"), "listen = [0]\nmax_speed = 3\n").unwrap();
    let o = fragnet(d, &["--config", "node.toml", "peer", "--no-console"]);
    assert!(
        !o.status.success() && text(&o).contains("max_speed") && text(&o).contains("node.toml"),
        "{}",
        text(&o)
    );
    let o = Command::new(BIN)
        .args(["peer", "--no-console"])
        .current_dir(d)
        .env("FRAGNET_TRANSPROT", "tcp")
        .output()
        .unwrap();
    assert!(
        !o.status.success() && text(&o).to_lowercase().contains("transprot"),
        "{}",
        text(&o)
    );
    let o = fragnet(d, &["peer", "--listen", "not-an-address", "--no-console"]);
    assert!(
        !o.status.success() && text(&o).contains("not-an-address"),
        "{}",
        text(&o)
    );
    let o = fragnet(d, &["peer", "--max-upload-rate", "fast", "--no-console"]);
    assert!(
        !o.status.success() && text(&o).contains("max_upload_rate"),
        "{}",
        text(&o)
    );
}

#[test]
fn port_in_use_says_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let busy = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = busy.local_addr().unwrap().port().to_string();
    let o = fragnet(dir.path(), &["peer", "--listen", &port, "--no-console"]);
    assert!(
        !o.status.success() && text(&o).contains("another process uses that port"),
        "{}",
        text(&o)
    );
}

/// Swapping TCP for QUIC is one key: the same walkthrough with FRAGNET_TRANSPORT=quic,
/// and a dual-stack node serving a TCP-only and a QUIC-only client.
#[test]
fn quic_is_one_key_away() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    assert!(
        fragnet(d, &["split", sample().to_str().unwrap()])
            .status
            .success()
    );
    // A bare port is QUIC under this key; the second listener names TCP. Each binds a
    // port of its own and prints it.
    let child = Command::new(BIN)
        .args([
            "peer",
            "--listen",
            "0",
            "--listen",
            "tcp://0.0.0.0:0",
            "--seed",
            "fragments",
            "--no-console",
        ])
        .current_dir(d)
        .env("FRAGNET_TRANSPORT", "quic")
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut node = Proc::new(child);
    let lines = wait_for_line(&mut node, "Node listening on tcp://0.0.0.0:", 20);
    let quic_port = port_of(&after(&lines, "Node listening on quic://"));
    let tcp_port = port_of(&after(&lines, "Node listening on tcp://"));
    let quic = Command::new(BIN)
        .args([
            "fetch",
            "--peer",
            &format!("localhost:{quic_port}"),
            "--data",
            "q",
            "--out",
            "via-quic.mp4",
        ])
        .current_dir(d)
        .env("FRAGNET_TRANSPORT", "quic")
        .output()
        .unwrap();
    assert!(quic.status.success(), "{}", text(&quic));
    let tcp = fragnet(
        d,
        &[
            "fetch",
            "--peer",
            &format!("tcp://localhost:{tcp_port}"),
            "--data",
            "t",
            "--out",
            "via-tcp.mp4",
        ],
    );
    assert!(tcp.status.success(), "{}", text(&tcp));
    let original = std::fs::read(sample()).unwrap();
    assert!(std::fs::read(d.join("via-quic.mp4")).unwrap() == original);
    assert!(std::fs::read(d.join("via-tcp.mp4")).unwrap() == original);
    let h = fragnet(d, &["health", &format!("quic://127.0.0.1:{quic_port}")]);
    assert!(h.status.success(), "{}", text(&h));
}

/// `fragnet peer --http`: a node holding nothing plays a video its peer offers; the
/// player's range request starts the download and gets verified bytes.
#[test]
fn peer_http_streams_a_video_it_does_not_hold_yet() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let s = fragnet(
        d,
        &["split", sample().to_str().unwrap(), "--chunk-size", "64KiB"],
    );
    assert!(s.status.success(), "{}", text(&s));
    let manifest = std::fs::read(d.join("fragments/manifest.json")).unwrap();
    let id = fragnet_core::Manifest::from_bytes(&manifest)
        .unwrap()
        .video_id();
    let original = std::fs::read(sample()).unwrap();
    let mut seeder = spawn_peer(
        d,
        &[
            "--listen",
            "0",
            "--seed",
            "fragments",
            "--no-console",
            "--max-upload-rate",
            "2MB",
            "--data",
            "seeder",
        ],
    );
    let listening = "[SERVER] Node listening on ";
    let ps = port_of(&after(
        &wait_for_line(&mut seeder, listening, 30),
        listening,
    ));
    let mut viewer = spawn_peer(
        d,
        &[
            "--listen",
            "0",
            "--peer",
            &format!("localhost:{ps}"),
            "--http",
            "127.0.0.1:0",
            "--no-console",
            "--data",
            "viewer",
        ],
    );
    let lines = wait_for_line(&mut viewer, "[HTTP] Player on http://", 30);
    let addr = lines
        .last()
        .unwrap()
        .split("http://")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let (status, _, body) = http_raw(&addr, "/health", "");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&body).contains("\"status\":\"ok\""));
    let stream = format!("/videos/{id}/stream");
    let (status, head, body) = http_raw(&addr, &stream, "Range: bytes=0-99\r\n");
    assert_eq!(status, 206, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains(&format!("content-range: bytes 0-99/{}", original.len())),
        "{head}"
    );
    assert_eq!(body, original[..100]);
    let (status, head, body) = http_raw(&addr, &stream, "");
    assert_eq!(status, 200, "{head}");
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: video/mp4")
    );
    assert!(body == original, "the streamed video equals the original");
    let (status, _, page) = http_raw(&addr, &format!("/watch/{id}"), "");
    assert_eq!(status, 200);
    assert!(String::from_utf8_lossy(&page).contains("<video"));
}

/// Every shipped profile loads; a profile on disk with an unknown key is an error that
/// names the key and the file; `config show` says where each value came from.
#[test]
fn profiles_load_and_show_their_sources() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    for p in [
        "seeder",
        "leecher",
        "leecher-quic",
        "leecher-nats",
        "manager",
        "manager-nats",
        "peer-nats",
        "broker",
        "all-in-one",
    ] {
        let o = fragnet(d, &["--profile", p, "config", "show"]);
        assert!(o.status.success(), "{p}: {}", text(&o));
        assert!(
            text(&o).contains(&format!("configs/{p}.toml")),
            "{p}: {}",
            text(&o)
        );
    }
    let o = Command::new(BIN)
        .args(["--profile", "leecher-quic", "config", "show"])
        .current_dir(d)
        .env("FRAGNET_LIMITS__CONCURRENCY", "3")
        .output()
        .unwrap();
    let out = text(&o);
    assert!(
        out.lines()
            .any(|l| l.starts_with("transport = \"quic\"") && l.contains("leecher-quic.toml")),
        "{out}"
    );
    assert!(
        out.lines().any(|l| l.starts_with("limits.concurrency = 3")
            && l.contains("FRAGNET_LIMITS__CONCURRENCY")),
        "{out}"
    );
    std::fs::create_dir_all(d.join("configs")).unwrap();
    std::fs::write(
        d.join("configs/mine.toml"),
        "roles = [\"peer\"]\nlisten_port = 1\n",
    )
    .unwrap();
    let o = fragnet(d, &["--profile", "mine", "config", "show"]);
    assert!(
        !o.status.success() && text(&o).contains("listen_port") && text(&o).contains("mine.toml"),
        "{}",
        text(&o)
    );
    let o = fragnet(d, &["--profile", "nope", "config", "show"]);
    assert!(
        !o.status.success() && text(&o).contains("no profile"),
        "{}",
        text(&o)
    );
    // Secrets are never printed.
    let o = Command::new(BIN)
        .args(["config", "show"])
        .current_dir(d)
        .env("FRAGNET_MANAGER__TOKEN", "s3cret")
        .output()
        .unwrap();
    assert!(
        o.status.success() && !text(&o).contains("s3cret"),
        "{}",
        text(&o)
    );
}
