//! Helpers for the binary's end-to-end tests: real processes, real sockets, bounded
//! waits, and no process left behind.
#![allow(dead_code)] // each test binary uses a different subset

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_fragnet");

pub fn sample() -> PathBuf {
    fragnet_core::conformance::sample_media("sample-480p.mp4")
}

pub fn fragnet(dir: &Path, args: &[&str]) -> Output {
    Command::new(BIN)
        .args(args)
        .current_dir(dir)
        .env_remove("RUST_LOG")
        .output()
        .unwrap()
}

pub fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A loopback port with nothing listening on it (bound, then released): for a "dead
/// peer" address. Never start a server on it: start the server on port 0 and read back
/// what it printed ([`after`]).
pub fn dead_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The part of the last line containing `prefix` after it, up to the next space: the
/// address a server printed (`after(&lines, "Node listening on ")`).
pub fn after(lines: &[String], prefix: &str) -> String {
    let l = lines
        .iter()
        .rev()
        .find(|l| l.contains(prefix))
        .unwrap_or_else(|| panic!("no line containing {prefix:?} in {lines:?}"));
    let rest = &l[l.find(prefix).unwrap() + prefix.len()..];
    rest.split_whitespace().next().unwrap().to_string()
}

/// The port at the end of an address a server printed (`tcp://0.0.0.0:5001`).
pub fn port_of(addr: &str) -> u16 {
    let port = addr.trim_end_matches('/').rsplit(':').next().unwrap();
    port.parse()
        .unwrap_or_else(|e| panic!("no port at the end of {addr:?}: {e}"))
}

/// Kills the child on drop so a failing test leaves no process behind.
pub struct Proc(pub Child, Option<std::sync::mpsc::Receiver<String>>);

impl Proc {
    /// Wraps a spawned child; [`wait_for_line`] reads its stdout.
    pub fn new(child: Child) -> Self {
        Proc(child, None)
    }

    /// Wraps a spawned child whose lines come from `out` (its stderr, say) instead.
    pub fn reading(child: Child, out: impl Read + Send + 'static) -> Self {
        Proc(child, Some(lines(out)))
    }
}

/// Every line of `out`, read to the end by a thread (so the writer never blocks on a
/// full pipe).
fn lines(out: impl Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(out).split(b'\n') {
            let Ok(line) = line else { break };
            // Keep draining after the receiver is gone.
            let _ = tx.send(String::from_utf8_lossy(&line).into_owned());
        }
    });
    rx
}
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn spawn_peer(dir: &Path, args: &[&str]) -> Proc {
    let child = Command::new(BIN)
        .arg("peer")
        .args(args)
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    Proc::new(child)
}

/// Reads the child's output (stdout, unless [`Proc::reading`] named another stream) until
/// a line contains `needle`, within `secs`; returns the lines read on the way.
pub fn wait_for_line(p: &mut Proc, needle: &str, secs: u64) -> Vec<String> {
    if p.1.is_none() {
        p.1 = Some(lines(p.0.stdout.take().expect("stdout is piped")));
    }
    let rx = p.1.as_ref().unwrap();
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                let hit = l.contains(needle);
                seen.push(l);
                if hit {
                    return seen;
                }
            }
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => break,
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                panic!(
                    "the process ended its output without a line containing {needle:?}; saw {seen:?}"
                )
            }
        }
    }
    panic!("no line containing {needle:?} within {secs}s; saw {seen:?}");
}

pub fn wait_exit(p: &mut Proc, secs: u64) -> std::process::ExitStatus {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(s) = p.0.try_wait().unwrap() {
            return s;
        }
        assert!(
            Instant::now() < deadline,
            "process did not exit within {secs}s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Where a spawned process's stderr (its log) goes: nowhere, unless
/// `FNTEST_LOGS=DIR` asks to keep each one as a file in DIR (for debugging a
/// failing test; `RUST_LOG` applies as usual).
fn stderr_for(args: &[&str]) -> Stdio {
    static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let Some(dir) = std::env::var_os("FNTEST_LOGS") else {
        return Stdio::null();
    };
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let name = args
        .iter()
        .position(|a| *a == "--name")
        .and_then(|i| args.get(i + 1))
        .unwrap_or(args.first().unwrap_or(&"fragnet"));
    let path = Path::new(&dir).join(format!("{}-{n}-{name}.log", std::process::id()));
    std::fs::File::create(&path).map_or(Stdio::null(), Stdio::from)
}

/// Starts `fragnet ARGS` in `dir` with extra environment, stdout piped.
pub fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Proc {
    let mut cmd = Command::new(BIN);
    cmd.args(args)
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr_for(args));
    for (k, v) in env {
        cmd.env(k, v);
    }
    Proc::new(cmd.spawn().unwrap())
}

/// A real `nats-server` on loopback ports of its own choosing (`-p -1`, and `-m -1` for
/// its monitoring endpoint), killed when dropped. Returns it, its client URL
/// (`nats://HOST:PORT`) and its monitoring address (`HOST:PORT`), both read from its log.
/// Fails (does not skip) when the binary is missing.
pub fn nats_server(dir: &Path) -> (Proc, String, String) {
    let mut child = Command::new("nats-server")
        .args(["-a", "127.0.0.1", "-p", "-1", "-m", "-1"])
        .current_dir(dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| {
            panic!("cannot start nats-server ({e}); install it: apt-get install nats-server")
        });
    // nats-server logs to stderr.
    let log = child.stderr.take().expect("stderr is piped");
    let mut server = Proc::reading(child, log);
    let lines = wait_for_line(&mut server, "Server is ready", 20);
    let client = after(&lines, "Listening for client connections on ");
    let monitor = after(&lines, "Starting http monitor on ");
    (server, format!("nats://{client}"), monitor)
}

/// GET `path` on `addr` over plain HTTP/1.1; returns (status, body).
pub fn http_get(addr: &str, path: &str) -> Option<(u16, String)> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(10))).ok()?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    let status = out.split_whitespace().nth(1)?.parse().ok()?;
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    // Chunked bodies: good enough for JSON of known shape — strip chunk sizes.
    Some((status, dechunk(&out, body)))
}

fn dechunk(raw: &str, body: String) -> String {
    if !raw
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return body;
    }
    let mut out = String::new();
    let mut rest = body.as_str();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            break;
        };
        if n == 0 || after.len() < n {
            break;
        }
        out.push_str(&after[..n]);
        rest = after[n..].trim_start_matches("\r\n");
    }
    out
}

/// Polls `f` every 200 ms until it returns `Some`, failing after `secs`.
pub fn eventually<T>(secs: u64, what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs}s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A plain HTTP/1.1 GET with `extra` header lines (each ending in `\r\n`), read to the
/// end: (status, response head, body bytes). No chunked decoding: for responses with a
/// length, such as a video stream.
pub fn http_raw(addr: &str, path: &str, extra: &str) -> (u16, String, Vec<u8>) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\n{extra}Connection: close\r\n\r\n"
    )
    .unwrap();
    let mut all = Vec::new();
    s.read_to_end(&mut all).unwrap();
    let split = all.windows(4).position(|w| w == b"\r\n\r\n").unwrap();
    let head = String::from_utf8_lossy(&all[..split]).into_owned();
    let status = head.split(' ').nth(1).unwrap().parse().unwrap();
    (status, head, all[split + 4..].to_vec())
}

/// (name, fragments held) of every live node, from a manager's `GET /nodes`.
pub fn nodes(manager: &str) -> Option<Vec<(String, u64)>> {
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
