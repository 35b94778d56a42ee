//! The NATS-backed deployment as processes: a three-server NATS cluster (JetStream,
//! routes on loopback), two `fragnet manager --registry nats` replicas, a seeder and
//! leechers registered through either manager. One NATS server is killed mid-swarm
//! and the swarm still completes; a manager is killed and the other still answers
//! with everything, and a node that joins afterwards on the NATS registry directly (no
//! manager) still finds the video.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

/// One `nats-server` of a three-server cluster, logging to a file.
fn cluster_server(dir: &Path, name: &str, client: u16, route: u16, routes: &str) -> Proc {
    let store = dir.join(format!("js-{name}"));
    let log = std::fs::File::create(dir.join(format!("{name}.log"))).unwrap();
    let child = Command::new("nats-server")
        .args([
            "-a",
            "127.0.0.1",
            "-p",
            &client.to_string(),
            "-n",
            name,
            "-js",
        ])
        .arg("-sd")
        .arg(&store)
        .args(["--cluster_name", "fragnet-test"])
        .args(["--cluster", &format!("nats://127.0.0.1:{route}")])
        .args(["--routes", routes])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start nats-server ({e}); install it: apt-get install nats-server")
        });
    Proc::new(child)
}

fn manager(dir: &Path, name: &str, nats: &str) -> (Proc, String) {
    let mut m = spawn(
        dir,
        &[
            "manager",
            "--listen",
            "127.0.0.1:0",
            "--data",
            name,
            "--ttl",
            "6",
            "--registry",
            "nats",
            "--nats",
            nats,
        ],
        // Three copies of every bucket: losing one server loses nothing.
        &[("FRAGNET_NATS__REPLICAS", "3")],
    );
    let lines = wait_for_line(&mut m, "REST API on ", 60);
    (m, after(&lines, "REST API on http://"))
}

fn peer(dir: &Path, name: &str, extra: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut args = vec![
        "peer",
        "--listen",
        "127.0.0.1:0",
        "--data",
        name,
        "--name",
        name,
        "--no-console",
    ];
    args.extend_from_slice(extra);
    let mut env = env.to_vec();
    env.extend([("FRAGNET_RECONCILE_SECS", "1"), ("FRAGNET_PUBSUB", "none")]);
    let mut p = spawn(dir, &args, &env);
    wait_for_line(&mut p, "Node listening", 20);
    p
}

fn complete(manager: &str, prefix: &str) -> Option<usize> {
    Some(
        nodes(manager)?
            .iter()
            .filter(|(n, f)| n.starts_with(prefix) && *f == 10)
            .count(),
    )
}

// Known gap (docs/scaling.md, "Not done here"): this passed once (58 s) and failed
// twice. When the killed server held a manager's KV watch consumer, the watch (an
// async-nats ordered consumer) stops delivering and is not recreated; the manager's
// writes are stored but time out waiting for its replica, so its leechers stall.
// Opening the watches again on a stalled write did not fix it. Run it with
// `cargo nextest run -p fragnet --test nats_cluster --run-ignored all`.
#[test]
#[ignore = "a manager's KV watch does not recover when its NATS server dies; see docs/scaling.md"]
fn a_swarm_completes_when_a_nats_server_and_a_manager_die() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = fragnet(
        d,
        &["split", sample().to_str().unwrap(), "--chunk-size", "64KiB"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let clients: Vec<u16> = (0..3).map(|_| dead_port()).collect();
    let routes: Vec<u16> = (0..3).map(|_| dead_port()).collect();
    let route_list = routes
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    let mut servers: Vec<Option<Proc>> = (0..3)
        .map(|i| {
            Some(cluster_server(
                d,
                &format!("n{i}"),
                clients[i],
                routes[i],
                &route_list,
            ))
        })
        .collect();
    let nats = clients
        .iter()
        .map(|p| format!("nats://127.0.0.1:{p}"))
        .collect::<Vec<_>>()
        .join(",");
    // The managers retry until the cluster has a JetStream leader.
    let (m1, a1) = manager(d, "m1", &nats);
    let (_m2, a2) = manager(d, "m2", &nats);
    let (u1, u2) = (format!("http://{a1}"), format!("http://{a2}"));
    let rate = ["--max-upload-rate", "2MB"];
    let mut seeder_args = vec!["--seed", "fragments", "--manager", u1.as_str()];
    seeder_args.extend_from_slice(&rate);
    let _seeder = peer(d, "seeder", &seeder_args, &[]);
    let mut leechers = Vec::new();
    for i in 0..4 {
        let via = if i % 2 == 0 { &u1 } else { &u2 };
        let mut args = vec!["--manager", via.as_str(), "--want", "all"];
        args.extend_from_slice(&rate);
        leechers.push(peer(d, &format!("leech-{i}"), &args, &[]));
    }
    // Mid-swarm: every node registered through its manager, not every leecher done.
    eventually(30, "all five nodes registered", || {
        (nodes(&a2)?.len() == 5).then_some(())
    });
    let done_before = complete(&a2, "leech-").unwrap_or(0);
    assert!(done_before < 4, "the swarm finished before the kill");
    servers[0] = None; // killed (Proc kills on drop)
    eventually(120, "every leecher holds the whole video", || {
        (complete(&a2, "leech-")? == 4).then_some(())
    });
    // Both managers still answer, alike.
    eventually(10, "both managers see the finished swarm", || {
        (complete(&a1, "leech-")? == 4).then_some(())
    });
    // A manager dies: the other still has everything, and a node joining on the NATS
    // registry directly (no manager) finds the video and shows up in the manager.
    drop(m1);
    let mut late = vec!["--want", "all"];
    late.extend_from_slice(&rate);
    let _late = peer(
        d,
        "late",
        &late,
        &[("FRAGNET_REGISTRY", "nats"), ("FRAGNET_NATS__URL", &nats)],
    );
    eventually(60, "the late node holds the whole video", || {
        (complete(&a2, "late")? == 1).then_some(())
    });
    assert_eq!(complete(&a2, "leech-"), Some(4), "nothing lost");
    drop(servers);
}
