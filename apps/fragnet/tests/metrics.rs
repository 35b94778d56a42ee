//! Every service's `/metrics`, from real `fragnet` processes: the manager, the broker's
//! metrics listener (`--metrics-listen`), a seeder's player HTTP and admin listener, and
//! a leecher that has only an admin listener (`--admin-listen`, no player). Each output
//! must pass `promtool check metrics` (Debian's `prometheus` package), and every metric
//! the Grafana dashboard in docs/ queries must appear in some service's output.

mod common;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

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

/// `promtool check metrics` on `text`: Prometheus's own parser and linter.
fn promtool_check(what: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot run promtool ({e}); install it: apt-get install prometheus")
        });
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success() && out.stderr.is_empty() && out.stdout.is_empty(),
        "promtool rejects the {what} metrics: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The sample names in an exposition (`name` of `name{labels} value`).
fn sample_names(text: &str) -> BTreeSet<String> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .filter_map(|l| l.split(['{', ' ']).next())
        .map(str::to_string)
        .collect()
}

/// The value of the sample `line_start` (e.g. `fragnet_download_bytes_total`).
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
}

/// Every `fragnet_*` name in the dashboard's queries.
fn dashboard_metrics() -> BTreeSet<String> {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs/grafana-dashboard.json");
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut names = BTreeSet::new();
    for panel in json["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for word in expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
                if word.starts_with("fragnet_") {
                    names.insert(word.to_string());
                }
            }
        }
    }
    names
}

fn metrics(addr: &str, what: &str) -> String {
    let (status, body) = http_get(addr, "/metrics").unwrap_or_else(|| panic!("GET {what}"));
    assert_eq!(status, 200, "{what}: {body}");
    body
}

#[test]
fn every_service_serves_metrics_that_prometheus_parses() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let video = split_sample(d);

    let mut m = spawn(
        d,
        &["manager", "--listen", "127.0.0.1:0", "--data", "manager"],
        &[],
    );
    let murl = after(&wait_for_line(&mut m, "REST API on ", 20), "REST API on ");
    let mut b = spawn(
        d,
        &[
            "broker",
            "--listen",
            "127.0.0.1:0",
            "--metrics-listen",
            "127.0.0.1:0",
        ],
        &[],
    );
    let lines = wait_for_line(&mut b, "[BROKER] Metrics on ", 20);
    let baddr = after(&lines, "[BROKER] Listening on ");
    let bmetrics = after(&lines, "[BROKER] Metrics on http://").replace("/metrics", "");

    let node = |name: &str, extra: &[&str]| {
        let mut args = vec![
            "peer",
            "--listen",
            "127.0.0.1:0",
            "--data",
            name,
            "--name",
            name,
            "--no-console",
            "--manager",
            &murl,
            "--broker",
            &baddr,
            "--admin-listen",
            "127.0.0.1:0",
        ];
        args.extend_from_slice(extra);
        let mut p = spawn(d, &args, &[]);
        let lines = wait_for_line(&mut p, "[ADMIN] Health and metrics on ", 20);
        let admin = after(&lines, "[ADMIN] Health and metrics on http://")
            .split('/')
            .next()
            .unwrap()
            .to_string();
        (p, lines, admin)
    };
    let (_seeder, seeder_lines, seeder_admin) =
        node("seeder", &["--seed", "fragments", "--http", "127.0.0.1:0"]);
    let (_leecher, leecher_lines, leecher_admin) = node("leecher", &["--want", &video]);
    assert!(
        !leecher_lines.iter().any(|l| l.contains("[HTTP]")),
        "the leecher has no player: {leecher_lines:?}"
    );
    let mut seeder = _seeder;
    let player = after(
        &wait_for_line(&mut seeder, "[HTTP] Player on ", 20),
        "[HTTP] Player on http://",
    )
    .split('/')
    .next()
    .unwrap()
    .to_string();
    let _ = seeder_lines;

    // The leecher downloads the video; its admin listener shows where the bytes came from.
    let leecher = eventually(60, "the leecher's download in its metrics", || {
        let text = metrics(&leecher_admin, "leecher admin");
        (value(&text, "fragnet_download_fragments_total")? >= 10.0).then_some(text)
    });
    assert!(value(&leecher, "fragnet_download_bytes_total").unwrap() > 0.0);
    assert!(
        value(&leecher, "fragnet_events_videos_followed").unwrap() >= 1.0,
        "the leecher follows its video's subject:\n{leecher}"
    );
    assert!(
        !leecher.contains("fragnet_http_"),
        "the admin listener has no player counters"
    );
    let (status, health) = http_get(&leecher_admin, "/health").unwrap();
    assert_eq!(status, 200);
    let health: serde_json::Value = serde_json::from_str(&health).unwrap();
    assert_eq!(health["status"], "ok");
    assert_eq!(health["name"], "leecher");
    let (status, _) = http_get(&leecher_admin, &format!("/watch/{video}")).unwrap();
    assert_eq!(status, 404, "no player on the admin listener");

    // A player's range request, so the stream counters move.
    let mut c = std::net::TcpStream::connect(&player).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10)))
        .unwrap();
    write!(
        c,
        "GET /videos/{video}/stream HTTP/1.1\r\nHost: x\r\nRange: bytes=0-1023\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut got = Vec::new();
    std::io::Read::read_to_end(&mut c, &mut got).unwrap();
    assert!(got.starts_with(b"HTTP/1.1 206"), "a range answer");

    let broker = eventually(20, "the broker's counters", || {
        let text = metrics(&bmetrics, "broker");
        (value(&text, "fragnet_broker_published_total")? > 0.0).then_some(text)
    });
    let (status, health) = http_get(&bmetrics, "/health").unwrap();
    assert_eq!((status, health.contains("\"broker\"")), (200, true));
    let outputs = [
        (
            "manager",
            metrics(murl.trim_start_matches("http://"), "manager"),
        ),
        ("broker", broker),
        ("seeder player", metrics(&player, "seeder player")),
        ("seeder admin", metrics(&seeder_admin, "seeder admin")),
        ("leecher admin", leecher),
    ];
    let mut exposed = BTreeSet::new();
    for (what, text) in &outputs {
        promtool_check(what, text);
        exposed.extend(sample_names(text));
    }
    let used = dashboard_metrics();
    assert!(used.len() >= 10, "the dashboard queries {used:?}");
    let missing: Vec<&String> = used.difference(&exposed).collect();
    assert!(
        missing.is_empty(),
        "the dashboard queries metrics no service exposes: {missing:?}"
    );
}
