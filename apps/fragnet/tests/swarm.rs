//! Swarms of real `fragnet` processes: peers that find each other only through the
//! manager, a manager restart mid-swarm, and convergence by fragment events alone over
//! the broker and over a real nats-server. Every server binds port 0 and the test reads
//! the address it printed; only the manager's restart reuses its first port.

mod common;

use std::path::Path;

use common::*;

/// Splits the sample clip in `dir`; returns the video id.
fn split_sample(dir: &Path) -> String {
    split_sample_with(dir, &[])
}

/// Splits the sample clip in `dir` with extra `split` arguments; returns the video id.
fn split_sample_with(dir: &Path, extra: &[&str]) -> String {
    let clip = sample();
    let mut args = vec!["split", clip.to_str().unwrap()];
    args.extend_from_slice(extra);
    let o = fragnet(dir, &args);
    assert!(o.status.success(), "{}", text(&o));
    let line = text(&o)
        .lines()
        .find(|l| l.contains("video id"))
        .unwrap()
        .to_string();
    line.split_whitespace().last().unwrap().to_string()
}

/// `fragnet broker` on a port of its own; returns it and its address.
fn start_broker(dir: &Path) -> (Proc, String) {
    let mut b = spawn(dir, &["broker", "--listen", "127.0.0.1:0"], &[]);
    let lines = wait_for_line(&mut b, "[BROKER] Listening on ", 20);
    let addr = after(&lines, "[BROKER] Listening on ");
    (b, addr)
}

/// The `HOST:PORT` of a peer's player, from the line it prints.
fn http_of(p: &mut Proc) -> String {
    let lines = wait_for_line(p, "[HTTP] Player on http://", 20);
    after(&lines, "[HTTP] Player on http://")
        .split('/')
        .next()
        .unwrap()
        .to_string()
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

/// `fragnet manager` on `listen`; returns it and the address it printed (`HOST:PORT`).
fn start_manager(dir: &Path, listen: &str) -> (Proc, String) {
    let mut m = spawn(
        dir,
        &[
            "manager", "--listen", listen, "--data", "manager", "--ttl", "6",
        ],
        &[],
    );
    let lines = wait_for_line(&mut m, "REST API on ", 20);
    let url = after(&lines, "REST API on http://");
    (m, url)
}

/// A peer on its own port and data directory, with environment configuration; returns
/// once it listens.
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
    let (_m, maddr) = start_manager(d, "127.0.0.1:0");
    let murl = format!("http://{maddr}");
    let env = [("FRAGNET_PUBSUB", "none")];
    let _seeder = peer(
        d,
        "seeder",
        "127.0.0.1:0",
        &["--seed", "fragments", "--manager", &murl],
        &env,
    );
    let _a = peer(
        d,
        "leech-a",
        "127.0.0.1:0",
        &["--manager", &murl, "--want", "all"],
        &env,
    );
    let _b = peer(
        d,
        "leech-b",
        "quic://127.0.0.1:0",
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
    let (mut m, maddr) = start_manager(d, "127.0.0.1:0");
    let murl = format!("http://{maddr}");
    let env = [("FRAGNET_PUBSUB", "none")];
    let _seeder = peer(
        d,
        "seeder",
        "127.0.0.1:0",
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
        "127.0.0.1:0",
        &["--manager", &murl, "--want", "all"],
        &env,
    );
    // Not a wait for an event: the manager stays down a while, so the nodes' registration
    // and heartbeats fail and back off (200 ms, 400 ms, ...) first, as in a real outage.
    std::thread::sleep(std::time::Duration::from_millis(800));
    // Back on the same port: the nodes know only that address.
    let (_m2, again) = start_manager(d, &maddr);
    assert_eq!(again, maddr, "the manager restarted on its port");
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
/// `subscribers(subject)` counts the subscriptions to `subject` the pub/sub server has.
/// With `per_video`, the leechers want the video by id and listen only on its subject
/// (`fragments.<video id>`); otherwise they want `all` and listen on the plain topic.
fn converge_by_events(
    env: &[(&str, &str)],
    per_video: bool,
    subscribers: impl Fn(&str) -> Option<u64>,
) {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let video = split_sample(d);
    let (want, subject) = if per_video {
        (video.clone(), format!("fragments.{video}"))
    } else {
        ("all".to_string(), "fragments".to_string())
    };
    let mut env = env.to_vec();
    // Reconciliation off in practice: only events can move fragments.
    env.push(("FRAGNET_REGISTRY", "none"));
    env.push(("FRAGNET_RECONCILE_SECS", "3600"));
    let mut leechers = Vec::new();
    for name in ["leech-a", "leech-b"] {
        let args = [
            "peer",
            "--listen",
            "127.0.0.1:0",
            "--data",
            name,
            "--name",
            name,
            "--no-console",
            "--want",
            &want,
        ];
        let mut p = spawn(d, &args, &env);
        wait_for_line(&mut p, "Node listening", 20);
        leechers.push(p);
    }
    // The seeder announces what it holds once, when it comes up: both leechers must be
    // subscribed by then (a node subscribes in the background after it listens).
    eventually(
        20,
        &format!("both leechers subscribed to {subject}"),
        || (subscribers(&subject)? >= 2).then_some(()),
    );
    let mut s = spawn(
        d,
        &[
            "peer",
            "--listen",
            "127.0.0.1:0",
            "--data",
            "seeder",
            "--seed",
            "fragments",
            "--no-console",
        ],
        &env,
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
    converge_by_broker_events(false);
}

#[test]
fn a_swarm_converges_by_per_video_broker_events() {
    converge_by_broker_events(true);
}

fn converge_by_broker_events(per_video: bool) {
    // The broker runs in this process so that the test can see its subscriptions; the
    // `fragnet broker` command itself is run by the tests in discovery.rs and below.
    let rt = tokio::runtime::Runtime::new().unwrap();
    let broker = rt
        .block_on(fragnet_broker::spawn(
            fragnet_broker::BrokerConfig {
                listen: "127.0.0.1:0".into(),
                ..Default::default()
            },
            tokio_util::sync::CancellationToken::new(),
        ))
        .expect("the broker starts");
    let addr = broker.local_addr().to_string();
    converge_by_events(&[("FRAGNET_BROKER__ADDR", &addr)], per_video, |_| {
        Some(broker.stats().subscriptions)
    });
    rt.block_on(broker.shutdown());
}

#[test]
fn a_swarm_converges_by_nats_events_alone() {
    converge_by_nats_events(false);
}

#[test]
fn a_swarm_converges_by_per_video_nats_events() {
    converge_by_nats_events(true);
}

fn converge_by_nats_events(per_video: bool) {
    let dir = tempfile::tempdir().unwrap();
    let (_server, url, monitor) = nats_server(dir.path());
    converge_by_events(
        &[("FRAGNET_PUBSUB", "nats"), ("FRAGNET_NATS__URL", &url)],
        per_video,
        |subject| nats_subscribers(&monitor, subject),
    );
}

/// Connections subscribed to `subject`, from nats-server's monitoring endpoint.
fn nats_subscribers(monitor: &str, subject: &str) -> Option<u64> {
    let (status, body) = http_get(monitor, "/connz?subs=1")?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let n = v["connections"]
        .as_array()?
        .iter()
        .filter(|c| {
            c["subscriptions_list"]
                .as_array()
                .is_some_and(|subs| subs.iter().any(|s| s == subject))
        })
        .count();
    Some(n as u64)
}

#[test]
fn the_original_three_terminal_pubsub_demo() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut b = spawn(d, &["broker", "--listen", "127.0.0.1:0"], &[]);
    let lines = wait_for_line(&mut b, "[BROKER] Listening on ", 20);
    let addr = after(&lines, "[BROKER] Listening on ");
    let mut sub = spawn(d, &["subscribe", "fragments", "--broker", &addr], &[]);
    wait_for_line(&mut sub, "Subscribed to 'fragments'", 20);
    let o = fragnet(d, &["notify", "fragment_5.bin", "--broker", &addr]);
    assert!(o.status.success(), "{}", text(&o));
    wait_for_line(&mut sub, "[fragments] fragment_5.bin", 20);
    // A broker that is not there (nothing listens on a dead port): notify fails with a
    // clear error.
    let o = fragnet(
        d,
        &[
            "notify",
            "fragment_5.bin",
            "--broker",
            &format!("127.0.0.1:{}", dead_port()),
        ],
    );
    assert!(
        !o.status.success() && text(&o).contains("broker"),
        "{}",
        text(&o)
    );
}

/// A Prometheus counter's value on a peer's /metrics.
fn counter(http: &str, name: &str) -> Option<f64> {
    let (status, body) = http_get(http, "/metrics")?;
    if status != 200 {
        return None;
    }
    body.lines()
        .find(|l| l.starts_with(name) && !l.starts_with('#'))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn a_rate_limited_swarm_spreads_the_video_peer_to_peer() {
    rate_limited_swarm("tcp");
}

/// The same over QUIC (a QUIC swarm once gained nothing over client-server: leechers
/// logged `sending stopped by peer` and the seeder served every byte).
#[test]
fn a_rate_limited_quic_swarm_spreads_the_video_peer_to_peer() {
    rate_limited_swarm("quic");
}

fn rate_limited_swarm(scheme: &str) {
    let listen = format!("{scheme}://127.0.0.1:0");
    // 1 seeder + 6 leechers on loopback with a manager and a broker, every node's
    // upload limited: every leecher passes chunks on, and the seeder uploads less than
    // twice the video (it super-seeds: every chunk once before any twice). Without
    // super-seeding and upload slots the seeder's share fails this (seen: over 2x).
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // Chunks of 64 KiB: enough pieces (about 42) for seven nodes to trade.
    let video = split_sample_with(d, &["--chunk-size", "64KiB"]);
    let size = std::fs::metadata(sample()).unwrap().len() as f64;
    let (_m, maddr) = start_manager(d, "127.0.0.1:0");
    let murl = format!("http://{maddr}");
    let (_b, baddr) = start_broker(d);
    let rate = [
        "--max-upload-rate",
        "1MB",
        "--http",
        "127.0.0.1:0",
        "--broker",
        baddr.as_str(),
    ];
    let env = [];
    let mut seeder_args = vec!["--seed", "fragments", "--manager", &murl];
    seeder_args.extend_from_slice(&rate);
    let mut seeder = peer(d, "seeder", &listen, &seeder_args, &env);
    let seeder_http = http_of(&mut seeder);
    let mut leechers = Vec::new();
    for i in 0..6 {
        let mut args = vec!["--manager", &murl, "--want", "all"];
        args.extend_from_slice(&rate);
        let name = format!("leech-{i}");
        let mut p = peer(d, &name, &listen, &args, &env);
        let http = http_of(&mut p);
        leechers.push((name, p, http));
    }
    eventually(120, "every leecher holds the whole video", || {
        let all = nodes(&maddr)?;
        let done = all
            .iter()
            .filter(|(n, f)| n.starts_with("leech-") && *f == 10)
            .count();
        (done == 6).then_some(())
    });
    for (name, _, http) in &leechers {
        let up = counter(http, "fragnet_serve_bytes_sent_total").unwrap();
        assert!(up > 0.0, "{name} uploaded nothing");
        assert_copy(d, name, &video);
    }
    let seeder_up = counter(&seeder_http, "fragnet_serve_bytes_sent_total").unwrap();
    assert!(
        seeder_up < 2.0 * size,
        "the seeder uploaded {seeder_up} bytes, {:.2}x the video",
        seeder_up / size
    );
}

/// How a viewer fared: the worst lateness of any byte against its play time (negative:
/// every byte was early by at least that much), and the bytes received.
#[derive(Debug)]
struct Viewing {
    worst_lateness: f64,
    /// Where in the video the worst lateness was (bytes).
    worst_at: u64,
    bytes: u64,
    body: Vec<u8>,
}

/// Plays `/videos/{video}/stream` from a node's HTTP address the way a player does:
/// playback starts `startup` seconds after `t0` and runs at `bitrate` bytes/s; the
/// player buffers at most `lookahead` seconds ahead of the playhead (it stops reading
/// when its buffer is full). Byte `o` must arrive before `t0 + startup + o / bitrate`.
fn view_at_bitrate(
    http: &str,
    video: &str,
    t0: std::time::Instant,
    bitrate: f64,
    startup: f64,
    lookahead: f64,
) -> Viewing {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(http).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    write!(
        s,
        "GET /videos/{video}/stream HTTP/1.1\r\nHost: {http}\r\nRange: bytes=0-\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    // Headers first (small), then the body as it comes.
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(s.read(&mut byte).unwrap(), 1, "headers ended early");
        head.push(byte[0]);
        assert!(head.len() < 16 << 10, "headers too long");
    }
    let head = String::from_utf8_lossy(&head).to_string();
    assert!(head.starts_with("HTTP/1.1 20"), "{head}");
    let mut buf = vec![0u8; 16 << 10];
    let mut body = Vec::new();
    let mut got = 0u64;
    let mut worst = f64::NEG_INFINITY;
    let mut worst_at = 0;
    loop {
        // A full buffer: wait for the playhead to make room, as a player does.
        let now = t0.elapsed().as_secs_f64();
        let room_at = (got as f64 / bitrate) + startup - lookahead;
        if room_at > now {
            std::thread::sleep(std::time::Duration::from_secs_f64(room_at - now));
        }
        let n = s.read(&mut buf).unwrap();
        if n == 0 {
            break;
        }
        got += n as u64;
        body.extend_from_slice(&buf[..n]);
        let arrived = t0.elapsed().as_secs_f64();
        // The last byte of this read is the latest-due one.
        let due = startup + (got - 1) as f64 / bitrate;
        if arrived - due > worst {
            worst = arrived - due;
            worst_at = got;
        }
    }
    Viewing {
        worst_lateness: worst,
        worst_at,
        bytes: got,
        body,
    }
}

/// A flash crowd: eight viewers open the stream at the same moment from a seeder whose
/// upload is only 1.5x the video's bitrate. The seeder alone could feed 1.5 of them, so
/// the viewers must feed each other, and every byte must still arrive before its play
/// time (after a few seconds of start-up buffering, as any player has).
#[test]
fn a_flash_crowd_of_eight_viewers_keeps_up_with_playback_from_a_slow_seeder() {
    // The sample clip is 20 s long.
    const DURATION: f64 = 20.0;
    const VIEWERS: usize = 8;
    const STARTUP: f64 = 4.0;
    // On a quiet machine the viewers stay within a second of the 4 s start-up buffer;
    // debug builds of nine nodes on a loaded two-core CI machine add seconds. The test
    // checks the crowd keeps up with playback within this slack (before super-seeding
    // of a player's chunks every viewer was 80 s late); bench/flashcrowd.py measures
    // stalls on rate-limited hosts with release builds.
    const LOADED_MACHINE_SLACK: f64 = 6.0;
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let video = split_sample_with(d, &["--chunk-size", "64KiB"]);
    let size = std::fs::metadata(sample()).unwrap().len();
    let bitrate = size as f64 / DURATION;
    let upload = format!("{}", (1.5 * bitrate) as u64);
    let (_m, maddr) = start_manager(d, "127.0.0.1:0");
    let murl = format!("http://{maddr}");
    let (_b, baddr) = start_broker(d);
    let common = [
        "--manager",
        murl.as_str(),
        "--broker",
        baddr.as_str(),
        "--max-upload-rate",
        upload.as_str(),
        "--http",
        "127.0.0.1:0",
    ];
    let mut seeder_args = vec!["--seed", "fragments"];
    seeder_args.extend_from_slice(&common);
    let mut seeder = peer(d, "seeder", "127.0.0.1:0", &seeder_args, &[]);
    let seeder_http = http_of(&mut seeder);
    // Viewers hold nothing and want nothing until their player asks.
    let mut viewers = Vec::new();
    for i in 0..VIEWERS {
        let name = format!("viewer-{i}");
        let mut p = peer(d, &name, "127.0.0.1:0", &common, &[]);
        let http = http_of(&mut p);
        viewers.push((name, p, http));
    }
    // The crowd arrives once the seeder's holdings are on the manager; the viewers'
    // nodes learn the manifest and holders when their players ask.
    eventually(20, "the seeder's fragments are on the manager", || {
        let (status, body) = http_get(&maddr, &format!("/fragments?video={video}"))?;
        let v: serde_json::Value = serde_json::from_str(&body).ok()?;
        let held = v["fragments"]
            .as_array()?
            .iter()
            .filter(|f| f["holders"] == 1)
            .count();
        (status == 200 && held == 10).then_some(())
    });
    let t0 = std::time::Instant::now();
    let results: Vec<(String, Viewing)> = std::thread::scope(|s| {
        let handles: Vec<_> = viewers
            .iter()
            .map(|(name, _, http)| {
                let video = video.as_str();
                s.spawn(move || {
                    (
                        name.clone(),
                        view_at_bitrate(http, video, t0, bitrate, STARTUP, 8.0),
                    )
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let seeder_up = counter(&seeder_http, "fragnet_serve_bytes_sent_total").unwrap();
    let report: Vec<String> = results
        .iter()
        .map(|(n, v)| {
            format!(
                "{n}: worst {:+.2} s at byte {}, {} bytes",
                v.worst_lateness, v.worst_at, v.bytes
            )
        })
        .collect();
    eprintln!(
        "flash crowd: seeder uploaded {:.2}x the video; {}",
        seeder_up / size as f64,
        report.join("; ")
    );
    let original = std::fs::read(sample()).unwrap();
    for (name, v) in &results {
        assert_eq!(v.bytes, size, "{name} got a short stream");
        assert!(v.body == original, "{name}'s stream differs from the clip");
        assert!(
            v.worst_lateness <= LOADED_MACHINE_SLACK,
            "{name} fell behind playback: a byte arrived {:.2} s after its play time ({})",
            v.worst_lateness,
            report.join("; ")
        );
    }
    // Without super-seeding of a player's chunks the seeder sent every chunk to every
    // viewer (7.98x the video) and every viewer fell 80 s behind.
    assert!(
        seeder_up < 2.5 * size as f64,
        "the seeder uploaded {:.2}x the video",
        seeder_up / size as f64
    );
}
