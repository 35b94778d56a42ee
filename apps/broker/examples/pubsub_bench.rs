//! Benchmark: fragnet's broker against Mosquitto (MQTT 3.1.1, QoS 0) and nats-server,
//! one harness, one session. Not a test: it prints a markdown report.
//!
//! ```text
//! cargo run --release -p fragnet-broker --example pubsub_bench            # full run
//! cargo run --release -p fragnet-broker --example pubsub_bench -- --quick # smaller
//! ```
//!
//! Needs `mosquitto` and `nats-server` on PATH. Each broker runs as its own process
//! (fragnet's broker is this program re-started as `serve-fragnet PORT`), so the
//! harness measures each one's resident memory the same way. Every client is a minimal
//! pipelined one speaking the broker's own protocol over a plain socket (MQTT packets
//! encoded and decoded by rumqttc's `mqttbytes`), so the client side costs the same for
//! all three and the brokers are what is measured.
//!
//! Scenarios: 1 publisher -> 1 subscriber messages/s; 1 -> 50 fan-out deliveries/s;
//! latency p50/p99 at 1,000 messages/s to 10 subscribers; broker memory while one
//! subscriber is stalled (never reads) and another reads everything.

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use bytes::{Buf, BytesMut};
use rumqttc::mqttbytes::v4::{Connect, Packet, Publish, Subscribe};
use rumqttc::mqttbytes::{Error as MqttError, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::task::JoinSet;

const TOPIC: &str = "bench";
/// Bytes of messages the publisher may be ahead of the slowest subscriber. The same for
/// every broker; small enough that no reading subscriber is ever a "slow consumer" by
/// any broker's default limits (fragnet's is 1 MiB queued per subscriber).
const WINDOW_BYTES: u64 = 128 * 1024;
/// Publish frames written per system call.
const BATCH: u64 = 100;
const MAX_PACKET: usize = 1 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Fragnet,
    Mosquitto,
    Nats,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Fragnet => "fragnet broker",
            Kind::Mosquitto => "Mosquitto",
            Kind::Nats => "nats-server",
        }
    }
}

/// A broker process on a loopback port, killed when dropped.
struct Server {
    kind: Kind,
    port: u16,
    child: Child,
}

impl Server {
    async fn start(kind: Kind) -> Result<Server> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let p = port.to_string();
        let mut cmd = match kind {
            Kind::Fragnet => {
                let mut c = Command::new(std::env::current_exe()?);
                c.args(["serve-fragnet", &p]);
                c
            }
            Kind::Mosquitto => {
                let mut c = Command::new("mosquitto");
                c.args(["-p", &p]);
                c
            }
            Kind::Nats => {
                let mut c = Command::new("nats-server");
                c.args(["-a", "127.0.0.1", "-p", &p]);
                c
            }
        };
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .with_context(|| format!("starting {} (is it installed?)", kind.name()))?;
        let server = Server { kind, port, child };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).await.is_err() {
            if Instant::now() > deadline {
                bail!("{} did not start listening on {port}", kind.name());
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(server)
    }

    /// Resident memory in KiB, from /proc.
    fn rss_kib(&self) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))
            .unwrap_or_default();
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or(0)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn dial(port: u16) -> Result<TcpStream> {
    let s = TcpStream::connect(("127.0.0.1", port)).await?;
    s.set_nodelay(true)?;
    Ok(s)
}

/// Reads into `buf` until `done(buf)` says the awaited reply is there.
async fn read_until(
    s: &mut TcpStream,
    buf: &mut BytesMut,
    mut done: impl FnMut(&mut BytesMut) -> Result<bool>,
) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !done(buf)? {
        let left = deadline.saturating_duration_since(Instant::now());
        let n = tokio::time::timeout(left, s.read_buf(buf))
            .await
            .context("no reply in 10 s")??;
        if n == 0 {
            bail!("connection closed during the handshake");
        }
    }
    Ok(())
}

/// Consumes one `\n`-terminated line equal to `want` (skipping others) if present.
fn take_line(buf: &mut BytesMut, want: &[u8]) -> bool {
    while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
        let line = buf.split_to(pos + 1);
        if line
            .strip_suffix(b"\n")
            .map(|l| l.strip_suffix(b"\r").unwrap_or(l))
            == Some(want)
        {
            return true;
        }
    }
    false
}

fn mqtt_packet(buf: &mut BytesMut) -> Result<Option<Packet>> {
    match Packet::read(buf, MAX_PACKET) {
        Ok(p) => Ok(Some(p)),
        Err(MqttError::InsufficientBytes(_)) => Ok(None),
        Err(e) => bail!("MQTT: {e:?}"),
    }
}

/// Consumes whole packets until one satisfies `want`.
fn mqtt_wait(buf: &mut BytesMut, want: impl Fn(&Packet) -> bool) -> Result<bool> {
    while let Some(p) = mqtt_packet(buf)? {
        if want(&p) {
            return Ok(true);
        }
    }
    Ok(false)
}

fn write_packet(p: Packet, out: &mut BytesMut) -> Result<()> {
    p.write(out, MAX_PACKET)
        .map_err(|e| anyhow::anyhow!("MQTT encode: {e:?}"))?;
    Ok(())
}

/// Connects a subscriber to `TOPIC` and waits until the broker confirms.
async fn subscriber(kind: Kind, port: u16, id: &str) -> Result<(TcpStream, BytesMut)> {
    let mut s = dial(port).await?;
    let mut buf = BytesMut::with_capacity(64 * 1024);
    match kind {
        Kind::Fragnet => {
            s.write_all(format!("SUB:{TOPIC}\nPING\n").as_bytes())
                .await?;
            read_until(&mut s, &mut buf, |b| Ok(take_line(b, b"PONG"))).await?;
        }
        Kind::Nats => {
            s.write_all(
                format!(
                    "CONNECT {{\"verbose\":false,\"pedantic\":false}}\r\nSUB {TOPIC} 1\r\nPING\r\n"
                )
                .as_bytes(),
            )
            .await?;
            read_until(&mut s, &mut buf, |b| Ok(take_line(b, b"PONG"))).await?;
        }
        Kind::Mosquitto => {
            let mut out = BytesMut::new();
            let mut connect = Connect::new(id);
            connect.keep_alive = 0;
            write_packet(Packet::Connect(connect), &mut out)?;
            let mut sub = Subscribe::new(TOPIC, QoS::AtMostOnce);
            sub.pkid = 1;
            write_packet(Packet::Subscribe(sub), &mut out)?;
            s.write_all(&out).await?;
            read_until(&mut s, &mut buf, |b| {
                mqtt_wait(b, |p| matches!(p, Packet::SubAck(_)))
            })
            .await?;
        }
    }
    Ok((s, buf))
}

/// Connects a publisher.
async fn publisher(kind: Kind, port: u16, id: &str) -> Result<TcpStream> {
    let mut s = dial(port).await?;
    let mut buf = BytesMut::new();
    match kind {
        Kind::Fragnet => {}
        Kind::Nats => {
            s.write_all(b"CONNECT {\"verbose\":false,\"pedantic\":false}\r\nPING\r\n")
                .await?;
            read_until(&mut s, &mut buf, |b| Ok(take_line(b, b"PONG"))).await?;
        }
        Kind::Mosquitto => {
            let mut out = BytesMut::new();
            let mut connect = Connect::new(id);
            connect.keep_alive = 0;
            write_packet(Packet::Connect(connect), &mut out)?;
            s.write_all(&out).await?;
            read_until(&mut s, &mut buf, |b| {
                mqtt_wait(b, |p| matches!(p, Packet::ConnAck(_)))
            })
            .await?;
        }
    }
    Ok(s)
}

/// One publish frame carrying `payload`.
fn encode_publish(kind: Kind, payload: &[u8], out: &mut BytesMut) -> Result<()> {
    match kind {
        Kind::Fragnet => {
            out.extend_from_slice(format!("PUB:{TOPIC}:").as_bytes());
            out.extend_from_slice(payload);
            out.extend_from_slice(b"\n");
        }
        Kind::Nats => {
            out.extend_from_slice(format!("PUB {TOPIC} {}\r\n", payload.len()).as_bytes());
            out.extend_from_slice(payload);
            out.extend_from_slice(b"\r\n");
        }
        Kind::Mosquitto => write_packet(
            Packet::Publish(Publish::new(TOPIC, QoS::AtMostOnce, payload.to_vec())),
            out,
        )?,
    }
    Ok(())
}

/// Takes every complete delivery out of `buf`, handing each payload to `f`.
fn drain_deliveries(kind: Kind, buf: &mut BytesMut, mut f: impl FnMut(&[u8])) -> Result<()> {
    match kind {
        Kind::Fragnet => {
            let prefix = format!("MSG:{TOPIC}:");
            let mut at = 0;
            while let Some(len) = buf[at..].iter().position(|&b| b == b'\n') {
                if let Some(p) = buf[at..at + len].strip_prefix(prefix.as_bytes()) {
                    f(p);
                }
                at += len + 1;
            }
            buf.advance(at);
        }
        Kind::Nats => {
            let mut at = 0;
            while let Some(pos) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                let line = &buf[at..at + pos];
                if line.starts_with(b"MSG ") {
                    let len: usize = std::str::from_utf8(line)?
                        .rsplit(' ')
                        .next()
                        .unwrap_or("")
                        .parse()?;
                    let start = at + pos + 2;
                    if buf.len() < start + len + 2 {
                        break;
                    }
                    f(&buf[start..start + len]);
                    at = start + len + 2;
                } else {
                    // PING from the server (every 2 min), +OK, INFO: not deliveries.
                    at += pos + 2;
                }
            }
            buf.advance(at);
        }
        Kind::Mosquitto => {
            while let Some(p) = mqtt_packet(buf)? {
                if let Packet::Publish(p) = p {
                    f(&p.payload);
                }
            }
        }
    }
    Ok(())
}

/// Subscribers that count what they receive; the publisher stays within WINDOW of the
/// slowest.
struct Readers {
    counts: Arc<Vec<AtomicU64>>,
    progress: Arc<Notify>,
    tasks: JoinSet<Result<Vec<u64>>>,
    samples: Vec<u64>,
    /// [`WINDOW_BYTES`] in messages.
    window: u64,
}

impl Readers {
    /// `n` subscribers, each expecting `messages`; with `origin`, each payload's
    /// timestamp is turned into a latency sample (ns) from message `skip` on.
    async fn start(
        kind: Kind,
        port: u16,
        n: usize,
        messages: u64,
        message_size: usize,
        origin: Option<(Instant, u64)>,
    ) -> Result<Readers> {
        let counts: Arc<Vec<AtomicU64>> = Arc::new((0..n).map(|_| AtomicU64::new(0)).collect());
        let progress = Arc::new(Notify::new());
        let mut tasks = JoinSet::new();
        for i in 0..n {
            let (mut s, mut buf) = subscriber(kind, port, &format!("sub-{i}")).await?;
            let (counts, progress) = (counts.clone(), progress.clone());
            tasks.spawn(async move {
                let mut got = 0u64;
                let mut samples = Vec::new();
                while got < messages {
                    if s.read_buf(&mut buf).await? == 0 {
                        bail!("subscriber {i} disconnected after {got} messages");
                    }
                    drain_deliveries(kind, &mut buf, |payload| {
                        got += 1;
                        if let Some((origin, skip)) = origin {
                            let seq: u64 = std::str::from_utf8(&payload[..12])
                                .ok()
                                .and_then(|t| t.parse().ok())
                                .unwrap_or(0);
                            let sent: u64 = std::str::from_utf8(&payload[12..28])
                                .ok()
                                .and_then(|t| t.parse().ok())
                                .unwrap_or(0);
                            if seq >= skip {
                                samples.push(origin.elapsed().as_nanos() as u64 - sent);
                            }
                        }
                    })?;
                    counts[i].store(got, Ordering::Release);
                    progress.notify_one();
                }
                Ok(samples)
            });
        }
        Ok(Readers {
            counts,
            progress,
            tasks,
            samples: Vec::new(),
            window: (WINDOW_BYTES / message_size as u64).max(BATCH),
        })
    }

    fn slowest(&self) -> u64 {
        self.counts
            .iter()
            .map(|c| c.load(Ordering::Acquire))
            .min()
            .unwrap_or(0)
    }

    async fn wait_window(&mut self, sent: u64) -> Result<()> {
        let mut last = (self.slowest(), Instant::now());
        while sent.saturating_sub(self.slowest()) > self.window {
            let _ = tokio::time::timeout(Duration::from_millis(5), self.progress.notified()).await;
            // A subscriber that failed (disconnected) would stall the publisher forever.
            if let Some(joined) = self.tasks.try_join_next() {
                self.samples.extend(joined??);
            }
            let now = self.slowest();
            if now != last.0 {
                last = (now, Instant::now());
            } else if last.1.elapsed() > Duration::from_secs(30) {
                bail!("no subscriber progress for 30 s (slowest at {now} of {sent})");
            }
        }
        Ok(())
    }

    async fn finish(mut self) -> Result<Vec<u64>> {
        let mut all = std::mem::take(&mut self.samples);
        while let Some(r) = tokio::time::timeout(Duration::from_secs(120), self.tasks.join_next())
            .await
            .context("subscribers did not finish in 120 s")?
        {
            all.extend(r??);
        }
        Ok(all)
    }
}

fn payload(size: usize) -> Vec<u8> {
    let mut p = format!("{:012}{:016}", 0, 0).into_bytes();
    p.resize(size, b'x');
    p
}

/// Deliveries per second with `subs` subscribers, the publisher as fast as the window
/// lets it.
async fn fan_out(kind: Kind, port: u16, subs: usize, messages: u64) -> Result<f64> {
    let mut readers = Readers::start(kind, port, subs, messages, 64, None).await?;
    let mut p = publisher(kind, port, "pub").await?;
    let mut frame = BytesMut::new();
    encode_publish(kind, &payload(64), &mut frame)?;
    let batch = frame.repeat(BATCH as usize);
    let start = Instant::now();
    let mut sent = 0;
    while sent < messages {
        let n = BATCH.min(messages - sent);
        readers.wait_window(sent + n).await?;
        p.write_all(&batch[..frame.len() * n as usize]).await?;
        sent += n;
    }
    readers.finish().await?;
    Ok((messages * subs as u64) as f64 / start.elapsed().as_secs_f64())
}

/// Latency samples (ns) at `rate` messages/s to `subs` subscribers.
async fn latency(kind: Kind, port: u16, subs: usize, rate: u64, seconds: u64) -> Result<Vec<u64>> {
    let warmup = rate / 2;
    let total = warmup + rate * seconds;
    let origin = Instant::now();
    let readers = Readers::start(kind, port, subs, total, 64, Some((origin, warmup))).await?;
    let mut p = publisher(kind, port, "pub").await?;
    let mut tick = tokio::time::interval(Duration::from_nanos(1_000_000_000 / rate));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut frame = BytesMut::new();
    for seq in 0..total {
        tick.tick().await;
        let mut body = format!("{seq:012}{:016}", origin.elapsed().as_nanos()).into_bytes();
        body.resize(64, b'x');
        frame.clear();
        encode_publish(kind, &body, &mut frame)?;
        p.write_all(&frame).await?;
    }
    let mut samples = readers.finish().await?;
    samples.sort_unstable();
    Ok(samples)
}

struct Memory {
    before_kib: u64,
    peak_kib: u64,
    after_kib: u64,
    stalled_cut_off: bool,
    seconds: f64,
}

/// Broker memory while one subscriber never reads and another reads `messages` 1 KB
/// messages published as fast as the reader keeps up.
async fn stalled_memory(server: &Server, messages: u64) -> Result<Memory> {
    let (kind, port) = (server.kind, server.port);
    let before_kib = server.rss_kib();
    let (mut stalled, _) = subscriber(kind, port, "stalled").await?;
    let mut readers = Readers::start(kind, port, 1, messages, 1000, None).await?;
    let mut p = publisher(kind, port, "pub").await?;
    let mut frame = BytesMut::new();
    encode_publish(kind, &payload(1000), &mut frame)?;
    let batch = frame.repeat(BATCH as usize);
    let mut peak_kib = before_kib;
    let start = Instant::now();
    let mut sent = 0;
    let mut last_sample = Instant::now();
    while sent < messages {
        readers.wait_window(sent + BATCH).await?;
        p.write_all(&batch).await?;
        sent += BATCH;
        if last_sample.elapsed() > Duration::from_millis(20) {
            peak_kib = peak_kib.max(server.rss_kib());
            last_sample = Instant::now();
        }
    }
    readers.finish().await?;
    let seconds = start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    peak_kib = peak_kib.max(server.rss_kib());
    let after_kib = server.rss_kib();
    // Was the stalled subscriber disconnected? Drain its socket for up to 5 s and see
    // whether the stream ends.
    let mut sink = vec![0u8; 1 << 16];
    let stalled_cut_off = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stalled.read(&mut sink).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => {}
            }
        }
    })
    .await
    .unwrap_or(false);
    Ok(Memory {
        before_kib,
        peak_kib,
        after_kib,
        stalled_cut_off,
        seconds,
    })
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn sh(cmd: &str) -> String {
    Command::new("sh")
        .args(["-c", cmd])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

struct Row {
    kind: Kind,
    one_to_one: f64,
    fan_out: f64,
    lat: (f64, f64, f64, f64),
    /// p99 of each round, µs.
    lat_rounds: Vec<f64>,
    mem: Memory,
}

async fn run(quick: bool) -> Result<()> {
    let (n11, nfan, lat_secs, mem_msgs, reps) = if quick {
        (50_000, 5_000, 2, 50_000, 1)
    } else {
        (200_000, 20_000, 5, 200_000, 3)
    };
    println!("## Machine\n");
    println!("- nproc: {}", sh("nproc"));
    println!(
        "- CPU: {}",
        sh("lscpu | grep 'Model name' | sed 's/Model name: *//'")
    );
    println!(
        "- memory: {}",
        sh("free -g | awk '/Mem:/ {print $2 \" GiB total, \" $7 \" GiB available\"}'")
    );
    println!(
        "- Mosquitto: {}; nats-server: {}",
        sh("mosquitto -h | head -1"),
        sh("nats-server --version")
    );
    println!(
        "- rounds: {reps}; in each round every scenario runs against the three brokers in turn, so load from other processes falls on all of them alike\n"
    );
    let kinds = [Kind::Fragnet, Kind::Mosquitto, Kind::Nats];
    let mut servers = Vec::new();
    for kind in kinds {
        servers.push(Server::start(kind).await?);
    }
    let mut one = vec![Vec::new(); 3];
    let mut fan = vec![Vec::new(); 3];
    let mut lat_samples: Vec<Vec<u64>> = vec![Vec::new(); 3];
    let mut lat_rounds: Vec<Vec<f64>> = vec![Vec::new(); 3];
    let mut loads = Vec::new();
    for round in 0..reps {
        let load = std::fs::read_to_string("/proc/loadavg")
            .unwrap_or_default()
            .split(' ')
            .next()
            .unwrap_or("?")
            .to_string();
        eprintln!("== round {} (load average {load})", round + 1);
        loads.push(load);
        for (i, s) in servers.iter().enumerate() {
            let name = s.kind.name();
            one[i].push(
                fan_out(s.kind, s.port, 1, n11)
                    .await
                    .with_context(|| format!("{name} 1->1"))?,
            );
            fan[i].push(
                fan_out(s.kind, s.port, 50, nfan)
                    .await
                    .with_context(|| format!("{name} 1->50"))?,
            );
        }
        for (i, s) in servers.iter().enumerate() {
            let samples = latency(s.kind, s.port, 10, 1000, lat_secs)
                .await
                .with_context(|| format!("{} latency", s.kind.name()))?;
            lat_rounds[i].push(pct(&samples, 0.99));
            eprintln!(
                "   {}: 1->1 {:.0}/s, 1->50 {:.0}/s, p50 {:.0} us, p99 {:.0} us",
                s.kind.name(),
                one[i][round],
                fan[i][round],
                pct(&samples, 0.5),
                pct(&samples, 0.99)
            );
            lat_samples[i].extend(samples);
        }
    }
    let mut rows = Vec::new();
    for (i, server) in servers.iter().enumerate() {
        let mem = stalled_memory(server, mem_msgs)
            .await
            .with_context(|| format!("{} stalled", server.kind.name()))?;
        let samples = &mut lat_samples[i];
        samples.sort_unstable();
        let lat = (
            pct(samples, 0.5),
            pct(samples, 0.99),
            pct(samples, 0.999),
            pct(samples, 1.0),
        );
        rows.push(Row {
            kind: server.kind,
            one_to_one: median(one[i].clone()),
            fan_out: median(fan[i].clone()),
            lat,
            lat_rounds: lat_rounds[i].clone(),
            mem,
        });
    }
    println!(
        "1-minute load average at the start of each round (2 cores; other builds share the machine): {}\n",
        loads.join(" / ")
    );
    println!("## Results\n");
    println!(
        "| broker | 1→1 msg/s | 1→50 deliveries/s | p50 µs | p99 µs | p99 per round µs | p99.9 µs | max µs | RSS idle | RSS peak, 1 stalled sub | RSS after | stalled sub cut off | stalled run s |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.0} | {:.0} | {} | {:.0} | {:.0} | {:.1} MiB | {:.1} MiB | {:.1} MiB | {} | {:.1} |",
            r.kind.name(),
            r.one_to_one,
            r.fan_out,
            r.lat.0,
            r.lat.1,
            r.lat_rounds
                .iter()
                .map(|p| format!("{p:.0}"))
                .collect::<Vec<_>>()
                .join(" / "),
            r.lat.2,
            r.lat.3,
            r.mem.before_kib as f64 / 1024.0,
            r.mem.peak_kib as f64 / 1024.0,
            r.mem.after_kib as f64 / 1024.0,
            if r.mem.stalled_cut_off { "yes" } else { "no" },
            r.mem.seconds
        );
    }
    let f = &rows[0];
    println!("\n## fragnet as a ratio of each baseline (same run)\n");
    println!("| baseline | 1→1 | 1→50 fan-out | p50 latency | p99 latency | peak RSS |");
    println!("|---|---:|---:|---:|---:|---:|");
    for r in &rows[1..] {
        println!(
            "| {} | {:.2}× | {:.2}× | {:.2}× | {:.2}× | {:.2}× |",
            r.kind.name(),
            f.one_to_one / r.one_to_one,
            f.fan_out / r.fan_out,
            f.lat.0 / r.lat.0,
            f.lat.1 / r.lat.1,
            f.mem.peak_kib as f64 / r.mem.peak_kib as f64
        );
    }
    println!(
        "\nScenario sizes: 1→1 {n11} messages of 64 B; 1→50 {nfan} messages of 64 B ({} deliveries); latency {} s per round at 1,000 msg/s to 10 subscribers after a 0.5 s warm-up, percentiles over all rounds' samples; throughput figures are the median of the rounds; memory: {mem_msgs} messages of 1 KB to one reader and one stalled subscriber. Publisher at most {} KiB of messages ahead of the slowest reader, {BATCH} frames per write.",
        nfan * 50,
        lat_secs,
        WINDOW_BYTES / 1024
    );
    Ok(())
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("serve-fragnet") {
        // The broker under test, as its own process with the default runtime and limits.
        let port = args.get(1).context("serve-fragnet PORT")?;
        return tokio::runtime::Runtime::new()?.block_on(async {
            let config = fragnet_broker::BrokerConfig {
                listen: format!("127.0.0.1:{port}"),
                ..Default::default()
            };
            let _broker =
                fragnet_broker::spawn(config, tokio_util::sync::CancellationToken::new()).await?;
            std::future::pending::<()>().await;
            Ok(())
        });
    }
    let quick = args.iter().any(|a| a == "--quick");
    tokio::runtime::Runtime::new()?.block_on(run(quick))
}
