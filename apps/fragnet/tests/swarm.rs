//! Swarms of real `fragnet` processes: peers that find each other only through the
//! manager, a manager restart mid-swarm, and convergence by fragment events alone over
//! the broker and over a real nats-server.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

/// Splits the sample clip in `dir`; returns the video id.
fn split_sample(dir: &Path) -> String {
    let o = fragnet(dir, &["split", sample().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let line = text(&o)
        .lines()
        .find(|l| l.contains("video id"))
        .unwrap()
        .to_string();
    line.split_whitespace().last().unwrap().to_string()
}

/// Node records from the manager: (name, fragments held).
fn nodes(manager: &str) -> Option<Vec<(String, u64)>> {
    let (status, body) = http_get(manager, "/nodes")?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    Some(
        v["nodes"]
            .as_array()?
            .iter()
            .map(|n| {
                (
                    n["name"].as_str().unwrap_or("").to_string(),
                    n["fragments"].as_u64().unwrap_or(0),
                )
            })
            .collect(),
    )
}

/// Joins a node's copy and checks it against the sample.
fn assert_copy(dir: &Path, data: &str, video: &str) {
    let out = format!("{data}.mp4");
    let o = fragnet(dir, &["join", video, "--data", data, "--out", &out]);
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        std::fs::read(dir.join(out)).unwrap() == std::fs::read(sample()).unwrap(),
        "{data}'s copy differs"
    );
}

fn start_manager(dir: &Path, port: u16) -> Proc {
    let mut m = spawn(
        dir,
        &[
            "manager",
            "--listen",
            &format!("127.0.0.1:{port}"),
            "--data",
            "manager",
            "--ttl",
            "6",
        ],
        &[],
    );
    wait_for_line(&mut m, "REST API", 20);
    m
}

/// A peer on its own port and data directory, with environment configuration.
fn peer(dir: &Path, name: &str, listen: &str, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut args = vec![
        "peer",
        "--listen",
        listen,
        "--data",
        name,
        "--name",
        name,
        "--no-console",
    ];
    args.extend_from_slice(extra);
    let mut env = env.to_vec();
    env.push(("FRAGNET_RECONCILE_SECS", "1"));
    let mut p = spawn(dir, &args, &env);
    wait_for_line(&mut p, "Node listening", 20);
    p
}

#[test]
fn three_peers_find_each_other_only_through_the_manager() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let video = split_sample(d);
    let mport = free_port();
    let murl = format!("http://127.0.0.1:{mport}");
    let maddr = format!("127.0.0.1:{mport}");
    let _m = start_manager(d, mport);
    let env = [("FRAGNET_PUBSUB", "none")];
    let _seeder = peer(
        d,
        "seeder",
        &format!("127.0.0.1:{}", free_port()),
        &["--seed", "fragments", "--manager", &murl],
        &env,
    );
    let _a = peer(
        d,
        "leech-a",
        &format!("127.0.0.1:{}", free_port()),
        &["--manager", &murl, "--want", "all"],
        &env,
    );
    let _b = peer(
        d,
        "leech-b",
        &format!("quic://127.0.0.1:{}", free_port()),
        &["--manager", &murl, "--want", "all"],
        &env,
    );
    let done = eventually(60, "three nodes holding all 10 fragments", || {
        let n = nodes(&maddr)?;
        (n.len() == 3 && n.iter().all(|(_, f)| *f == 10)).then_some(n)
    });
    assert_eq!(done.len(), 3);
    // GET /fragments answers what the swarm really holds: every fragment, 3 holders.
    let (status, body) = http_get(&maddr, &format!("/fragments?video={video}")).unwrap();
    assert_eq!(status, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    let frags = v["fragments"].as_array().unwrap();
    assert_eq!(frags.len(), 10);
    assert!(frags.iter().all(|f| f["holders"] == 3), "{body}");
    assert_copy(d, "leech-a", &video);
    assert_copy(d, "leech-b", &video);
    // `fetch --manager` finds holders without any --peer.
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

#[test]
fn a_manager_restart_mid_swarm_loses_no_manifest() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let video = split_sample(d);
    let mport = free_port();
    let murl = format!("http://127.0.0.1:{mport}");
    let maddr = format!("127.0.0.1:{mport}");
    let mut m = start_manager(d, mport);
    let env = [("FRAGNET_PUBSUB", "none")];
    let _seeder = peer(
        d,
        "seeder",
        &format!("127.0.0.1:{}", free_port()),
        &["--seed", "fragments", "--manager", &murl],
        &env,
    );
    eventually(30, "the seeder's manifest at the manager", || {
        (http_get(&maddr, &format!("/videos/{video}"))?.0 == 200).then_some(())
    });
    // The manager dies hard; a leecher starts while it is down.
    m.0.kill().unwrap();
    m.0.wait().unwrap();
    let _l = peer(
        d,
        "leecher",
        &format!("127.0.0.1:{}", free_port()),
        &["--manager", &murl, "--want", "all"],
        &env,
    );
    std::thread::sleep(std::time::Duration::from_millis(800));
    let _m2 = start_manager(d, mport);
    // The manifest came back from disk, before any node re-announced it.
    let (status, _) = http_get(&maddr, &format!("/videos/{video}")).unwrap();
    assert_eq!(status, 200, "the manifest survives a manager restart");
    // Heartbeats rebuild the holdings and the leecher completes.
    eventually(
        60,
        "both nodes holding all 10 fragments after the restart",
        || {
            let n = nodes(&maddr)?;
            (n.len() == 2 && n.iter().all(|(_, f)| *f == 10)).then_some(())
        },
    );
    assert_copy(d, "leecher", &video);
}

/// No manager at all: leechers learn of the video and of every fragment from events.
fn converge_by_events(env: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let video = split_sample(d);
    let mut env = env.to_vec();
    // Reconciliation off in practice: only events can move fragments.
    env.push(("FRAGNET_REGISTRY", "none"));
    let slow = [("FRAGNET_RECONCILE_SECS", "3600")];
    let mut leechers = Vec::new();
    for name in ["leech-a", "leech-b"] {
        let mut args = vec![
            "peer",
            "--listen",
            "",
            "--data",
            name,
            "--name",
            name,
            "--no-console",
            "--want",
            "all",
        ];
        let listen = format!("127.0.0.1:{}", free_port());
        args[2] = &listen;
        let mut all_env = env.clone();
        all_env.extend_from_slice(&slow);
        let mut p = spawn(d, &args, &all_env);
        wait_for_line(&mut p, "Node listening", 20);
        leechers.push(p);
    }
    // Subscriptions settle, then the seeder comes up and announces what it holds.
    std::thread::sleep(std::time::Duration::from_millis(500));
    let listen = format!("127.0.0.1:{}", free_port());
    let mut all_env = env.clone();
    all_env.extend_from_slice(&slow);
    let mut s = spawn(
        d,
        &[
            "peer",
            "--listen",
            &listen,
            "--data",
            "seeder",
            "--seed",
            "fragments",
            "--no-console",
        ],
        &all_env,
    );
    wait_for_line(&mut s, "Node listening", 20);
    for name in ["leech-a", "leech-b"] {
        eventually(60, &format!("{name} holding all 10 fragments"), || {
            let dir = d.join(name).join(&video);
            ((0..10).all(|i| dir.join(format!("fragment_{i}.bin")).is_file())).then_some(())
        });
        assert_copy(d, name, &video);
    }
}

#[test]
fn a_swarm_converges_by_broker_events_alone() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let mut b = spawn(
        dir.path(),
        &["broker", "--listen", &format!("127.0.0.1:{port}")],
        &[],
    );
    wait_for_line(&mut b, "Listening", 20);
    let addr = format!("127.0.0.1:{port}");
    converge_by_events(&[("FRAGNET_BROKER__ADDR", &addr)]);
}

#[test]
fn a_swarm_converges_by_nats_events_alone() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let server = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", &port.to_string()])
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start nats-server ({e}); install it: apt-get install nats-server")
        });
    let _server = Proc::new(server);
    eventually(10, "nats-server accepting connections", || {
        std::net::TcpStream::connect(("127.0.0.1", port)).ok()
    });
    let url = format!("nats://127.0.0.1:{port}");
    converge_by_events(&[("FRAGNET_PUBSUB", "nats"), ("FRAGNET_NATS__URL", &url)]);
}

#[test]
fn the_original_three_terminal_pubsub_demo() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let port = free_port();
    let addr = format!("127.0.0.1:{port}");
    let mut b = spawn(d, &["broker", "--listen", &addr], &[]);
    wait_for_line(&mut b, "Listening", 20);
    let mut sub = spawn(d, &["subscribe", "fragments", "--broker", &addr], &[]);
    wait_for_line(&mut sub, "Subscribed to 'fragments'", 20);
    let o = fragnet(d, &["notify", "fragment_5.bin", "--broker", &addr]);
    assert!(o.status.success(), "{}", text(&o));
    wait_for_line(&mut sub, "[fragments] fragment_5.bin", 20);
    // A broker that is not there: notify fails with a clear error.
    let o = fragnet(
        d,
        &[
            "notify",
            "fragment_5.bin",
            "--broker",
            &format!("127.0.0.1:{}", free_port()),
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("broker"),
        "{}",
        text(&o)
    );
}
