//! Share links and short ids from a user's seat: `fragnet split` prints a link, a
//! friend's `fragnet fetch LINK` and `fragnet watch LINK` need nothing else; malformed
//! links are clear errors; short ids work where full ids do; `fragnet demo` without a
//! terminal reports the swarm and exits. Real processes, sockets on port 0.

mod common;

use std::path::Path;

use common::*;
use fragnet_core::Link;

/// `fragnet manager` on a free port; returns it and `http://HOST:PORT`.
fn manager(dir: &Path) -> (Proc, String) {
    let mut m = spawn(
        dir,
        &["manager", "--listen", "127.0.0.1:0", "--data", "manager"],
        &[],
    );
    let lines = wait_for_line(&mut m, "REST API on ", 20);
    let url = after(&lines, "REST API on http://");
    (m, format!("http://{url}"))
}

/// The link on the line that has `prefix`.
fn link_after(out: &str, prefix: &str) -> String {
    let line = out
        .lines()
        .find(|l| l.contains(prefix))
        .unwrap_or_else(|| panic!("no {prefix:?} in {out}"));
    let l = &line[line.find("fragnet://").expect("a link on the line")..];
    l.split_whitespace().next().unwrap().to_string()
}

/// A plain HTTP/1.1 GET of a response with a length (not chunked); (status, body).
fn get(addr: &str, path: &str) -> (u16, Vec<u8>) {
    let (status, head, body) = http_raw(addr, path, "");
    assert!(
        !head
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked"),
        "{head}"
    );
    (status, body)
}

#[test]
fn split_prints_a_link_that_fetch_and_watch_need_nothing_else_for() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let original = std::fs::read(sample()).unwrap();
    let (_m, murl) = manager(d);

    let o = fragnet(
        d,
        &[
            "split",
            sample().to_str().unwrap(),
            "--chunk-size",
            "256KiB",
            "--manager",
            &murl,
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    let split_link = link_after(&text(&o), "share link");
    let parsed = Link::parse(&split_link).unwrap();
    assert_eq!(parsed.manager.as_deref(), Some(murl.as_str()));
    let id = parsed.video.to_string();

    // The seeder registers with that manager and prints its own link: QUIC first, with
    // its node id, then TCP, then the manager.
    let mut seeder = spawn(
        d,
        &[
            "peer",
            "--listen",
            "tcp://127.0.0.1:0",
            "--listen",
            "quic://127.0.0.1:0",
            "--seed",
            "fragments",
            "--manager",
            &murl,
            "--no-console",
            "--data",
            "seeder",
        ],
        &[("FRAGNET_PUBSUB", "none")],
    );
    let lines = wait_for_line(&mut seeder, "[LINK] ", 30);
    let seeder_link = Link::parse(&link_after(&lines.join("\n"), "[LINK] ")).unwrap();
    assert_eq!(seeder_link.video, parsed.video);
    assert_eq!(seeder_link.manager.as_deref(), Some(murl.as_str()));
    let schemes: Vec<&str> = seeder_link
        .peers
        .iter()
        .map(|p| p.scheme.as_str())
        .collect();
    assert_eq!(schemes, ["quic", "tcp"]);
    assert!(seeder_link.peers[0].node_id.is_some());
    let maddr = murl.trim_start_matches("http://").to_string();
    eventually(20, "the seeder's fragments at the manager", || {
        let (s, body) = http_get(&maddr, &format!("/videos/{id}/fragments/9/peers"))?;
        (s == 200 && body.contains("\"total\":1")).then_some(())
    });

    // A friend with only the split's link (the manager finds the seeder).
    let friend = d.join("friend");
    std::fs::create_dir(&friend).unwrap();
    let o = fragnet(&friend, &["fetch", &split_link]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(friend.join("sample-480p.mp4")).unwrap() == original);

    // Another with the seeder's link, and no manager in it: QUIC with identity check.
    let friend2 = d.join("friend2");
    std::fs::create_dir(&friend2).unwrap();
    let only_peers = Link {
        manager: None,
        ..seeder_link.clone()
    };
    let o = fragnet(&friend2, &["fetch", &only_peers.to_string()]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(friend2.join("sample-480p.mp4")).unwrap() == original);

    // A short id through the manager.
    let friend3 = d.join("friend3");
    std::fs::create_dir(&friend3).unwrap();
    let short = format!("{}…", &id[..8]);
    let o = fragnet(
        &friend3,
        &[
            "fetch",
            "--manager",
            &murl,
            "--video",
            &short,
            "-o",
            "c.mp4",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(friend3.join("c.mp4")).unwrap() == original);

    // `fragnet watch LINK`: the player URL it prints serves the video.
    let viewer_dir = d.join("viewer");
    std::fs::create_dir(&viewer_dir).unwrap();
    let mut viewer = spawn(
        &viewer_dir,
        &["watch", &split_link, "--http", "127.0.0.1:0"],
        &[],
    );
    let lines = wait_for_line(&mut viewer, "[HTTP] Player: ", 30);
    let player = after(&lines, "[HTTP] Player: ");
    assert!(player.ends_with(&format!("/watch/{id}")), "{player}");
    let addr = player
        .trim_start_matches("http://")
        .split('/')
        .next()
        .unwrap()
        .to_string();
    let (s, page) = get(&addr, &format!("/watch/{id}"));
    assert_eq!(s, 200);
    assert!(String::from_utf8_lossy(&page).contains("copy link"));
    let (s, body) = get(&addr, &format!("/videos/{id}/stream"));
    assert_eq!(s, 200);
    assert!(body == original, "the watched stream equals the original");
    // Its own link, for the player's "copy link": its address and the manager.
    let (s, body) = get(&addr, &format!("/videos/{id}/link"));
    assert_eq!(s, 200);
    let v: serde_json::Value = serde_json::from_slice(&body).unwrap();
    let own = Link::parse(v["link"].as_str().unwrap()).unwrap();
    assert_eq!(own.video, parsed.video);
    assert_eq!(own.manager.as_deref(), Some(murl.as_str()));
    assert!(!own.peers.is_empty());
    wait_for_line(&mut viewer, "complete here", 60);
}

#[test]
fn malformed_links_are_errors_that_say_what_is_wrong() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let id = "ab".repeat(32);
    let cases = [
        (
            vec![
                "fetch".to_string(),
                "fragnet://73cdffcc?peer=tcp://h:1".into(),
            ],
            "is not a video id",
        ),
        (
            vec!["watch".to_string(), format!("https://x/{id}")],
            "starts with fragnet://",
        ),
        (
            vec!["fetch".to_string(), format!("fragnet://{id}")],
            "no manager= and no peer=",
        ),
        (
            vec![
                "watch".to_string(),
                format!("fragnet://{id}?peer=tcp://0.0.0.0:6001"),
            ],
            "not dialable",
        ),
        (
            vec!["fetch".to_string(), format!("fragnet://{id}?seed=1")],
            "unknown parameter \"seed\"",
        ),
        (
            vec![
                "fetch".to_string(),
                format!("fragnet://{id}?manager={}", "a".repeat(3000)),
            ],
            "at most 2048",
        ),
    ];
    for (args, want) in cases {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let o = fragnet(d, &args);
        let t = text(&o);
        assert!(!o.status.success(), "{args:?}: {t}");
        assert!(
            t.contains("bad share link") && t.contains(want),
            "{args:?}: {t}"
        );
        assert!(!t.contains("panicked"), "{t}");
    }
}

#[test]
fn join_takes_a_unique_prefix_and_names_the_matches_of_an_ambiguous_one() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = fragnet(d, &["split", sample().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let m = std::fs::read(d.join("fragments/manifest.json")).unwrap();
    let id = fragnet_core::Manifest::from_bytes(&m).unwrap().video_id();
    // A store holds `<id>/manifest.json` + fragments, as the split directory does.
    let store = d.join("store");
    std::fs::create_dir(&store).unwrap();
    std::fs::rename(d.join("fragments"), store.join(id.to_string())).unwrap();
    let short = format!("{}…", id.short());
    let o = fragnet(d, &["join", &short, "--data", "store", "--out", "copy.mp4"]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(std::fs::read(d.join("copy.mp4")).unwrap() == std::fs::read(sample()).unwrap());

    // Two videos sharing the 8 digits given: the error lists both.
    let twin = format!("{}{}", &id.to_string()[..8], "0".repeat(56));
    std::fs::create_dir(store.join(&twin)).unwrap();
    let o = fragnet(
        d,
        &["join", &id.short(), "--data", "store", "--out", "x.mp4"],
    );
    let t = text(&o);
    assert!(!o.status.success());
    assert!(
        t.contains("ambiguous") && t.contains(&twin) && t.contains(&id.to_string()),
        "{t}"
    );
    // One more digit than they share tells them apart.
    let longer = &id.to_string()[..9];
    if !twin.starts_with(longer) {
        let o = fragnet(d, &["join", longer, "--data", "store", "--out", "y.mp4"]);
        assert!(o.status.success(), "{}", text(&o));
    }
    let o = fragnet(
        d,
        &[
            "join",
            &id.to_string()[..7],
            "--data",
            "store",
            "--out",
            "z.mp4",
        ],
    );
    let t = text(&o);
    assert!(!o.status.success() && t.contains("too short"), "{t}");
}

#[test]
fn demo_without_a_terminal_shows_peer_to_peer_spreading_and_exits() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut demo = spawn(
        d,
        &[
            "demo",
            "--seeder-rate",
            "1MB",
            "--dir",
            "work",
            "--timeout",
            "90",
        ],
        &[],
    );
    let lines = wait_for_line(&mut demo, "Stopping now", 120);
    let status = wait_exit(&mut demo, 20);
    assert!(status.success());
    let all = lines.join("\n");
    assert!(!all.contains("Serving until Ctrl-C"), "{all}");
    Link::parse(&link_after(&all, "share link")).unwrap();
    // Every peer got bytes from the other peers, not only from the seeder.
    let per_peer: Vec<&str> = lines
        .iter()
        .filter(|l| l.contains("bytes from peers "))
        .map(|l| l.split("bytes from peers ").nth(1).unwrap())
        .collect();
    assert_eq!(per_peer.len(), 4, "{all}");
    for p in &per_peer {
        assert!(
            !p.starts_with("0 B"),
            "a peer got nothing from its peers: {all}"
        );
    }
    let total = all
        .lines()
        .find(|l| l.contains("the peers got "))
        .unwrap_or_else(|| panic!("no total line in {all}"));
    assert!(!total.contains("got 0 B"), "{total}");
}

#[test]
fn the_console_picks_a_video_by_a_short_id() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = fragnet(d, &["split", sample().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let m = std::fs::read(d.join("fragments/manifest.json")).unwrap();
    let id = fragnet_core::Manifest::from_bytes(&m).unwrap().video_id();
    let mut p = spawn_peer(
        d,
        &[
            "--listen",
            "127.0.0.1:0",
            "--seed",
            "fragments",
            "--data",
            "n",
        ],
    );
    let mut stdin = p.0.stdin.take().unwrap();
    writeln!(
        stdin,
        "video {}…\nvideo 1234\nvideo {}\nexit",
        id.short(),
        "0".repeat(8)
    )
    .unwrap();
    drop(stdin);
    let lines = wait_for_line(&mut p, "no known id starts with 00000000", 30);
    let all = lines.join("\n");
    assert!(
        all.contains(&format!("commands now refer to video {id}")),
        "{all}"
    );
    assert!(all.contains("\"1234\" is too short"), "{all}");
    assert!(wait_exit(&mut p, 20).success());
}
