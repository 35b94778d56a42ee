//! `fragnet demo`: the whole system in one process on loopback, with no configuration.
//! A manager, a broker, a seeder holding the video split in 10 fragments, and several
//! peers (TCP and QUIC mixed) that find the video through the manager, hear about
//! fragments from the broker and fetch them from each other. Real sockets, real
//! protocols: the same components `fragnet run` starts, only all in one process.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use fragnet_core::ratelimit::human_bytes;
use fragnet_core::split::{SplitOptions, split};
use fragnet_core::{Link, Manifest, VideoId};
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use std::io::IsTerminal;
use tokio_util::sync::CancellationToken;

use crate::assemble::{NodeStart, start_node};
use crate::cli::DemoArgs;
use crate::cmd::roles::{start_broker, start_manager};
use crate::cmd::shutdown_signal;
use crate::config::{Config, Want};

/// The clip the demo uses when none is given (media/demo.mp4, made by
/// media/make-demo-clip.sh from ffmpeg's test source).
const DEMO_CLIP: &[u8] = include_bytes!("../../../../media/demo.mp4");

/// Peers besides the seeder, and their transports: TCP and QUIC mixed.
const PEERS: &[&str] = &["tcp", "quic", "tcp", "quic"];

fn peer_config(
    work: &std::path::Path,
    name: &str,
    listen: Vec<String>,
    manager: &str,
    broker: &str,
    want: Want,
) -> Config {
    let mut c = Config {
        name: Some(name.to_string()),
        data_dir: Some(work.join(name)),
        listen,
        http_listen: Some("127.0.0.1:0".into()),
        console: false,
        want,
        reconcile_secs: 2,
        ..Config::default()
    };
    c.manager.url = Some(manager.to_string());
    c.broker.addr = Some(broker.to_string());
    c
}

/// Runs the demo.
pub async fn run(a: DemoArgs) -> Result<()> {
    let tmp;
    let work: PathBuf = match &a.dir {
        Some(d) => {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            d.clone()
        }
        None => {
            tmp = tempfile::Builder::new().prefix("fragnet-demo-").tempdir()?;
            tmp.path().to_path_buf()
        }
    };
    let video_path = match &a.video {
        Some(v) => v.clone(),
        None => {
            let p = work.join("demo.mp4");
            std::fs::write(&p, DEMO_CLIP).context("writing the built-in demo clip")?;
            p
        }
    };
    let frag_dir = work.join("fragments");
    let (vp, fd) = (video_path.clone(), frag_dir.clone());
    let manifest: Manifest = tokio::task::spawn_blocking(move || {
        split(
            &vp,
            &fd,
            &SplitOptions {
                force: true,
                ..SplitOptions::default()
            },
            &mut |_| {},
        )
    })
    .await?
    .with_context(|| format!("splitting {}", video_path.display()))?;
    let video: VideoId = manifest.video_id();
    println!(
        "Video split into {} fragments: {} ({}), id {}",
        manifest.fragment_count,
        manifest.name,
        human_bytes(manifest.size),
        video.short()
    );

    let cancel = CancellationToken::new();
    let mut base = Config::default();
    base.manager.listen = "127.0.0.1:0".into();
    base.manager.data_dir = work.join("manager");
    base.manager.ttl_secs = 6.0;
    base.broker.listen = "127.0.0.1:0".into();
    let manager = start_manager(&base, cancel.clone()).await?;
    let broker = start_broker(&base, cancel.clone()).await?;
    let murl = format!("http://{}", manager.local_addr());
    let baddr = broker.local_addr().to_string();

    let mut seed_cfg = peer_config(
        &work,
        "seeder",
        vec!["tcp://127.0.0.1:0".into(), "quic://127.0.0.1:0".into()],
        &murl,
        &baddr,
        Want::None,
    );
    if let Some(rate) = &a.seeder_rate {
        seed_cfg.limits.max_upload_rate = Some(rate.clone());
    }
    let seeder = start_node(
        &seed_cfg,
        NodeStart {
            seed: Some((frag_dir.clone(), None)),
            serve: true,
            ..NodeStart::default()
        },
        &cancel,
    )
    .await?
    .node;
    println!(
        "  seeder  {}",
        seeder
            .bound()
            .iter()
            .map(|a| a.to_string())
            .collect::<Vec<_>>()
            .join(", ")
    );

    let started = Instant::now();
    let mut peers = Vec::new();
    for i in 0..a.peers.max(1) {
        let scheme = PEERS[i % PEERS.len()];
        let name = format!("peer-{}", i + 1);
        let cfg = peer_config(
            &work,
            &name,
            vec![format!("{scheme}://127.0.0.1:0")],
            &murl,
            &baddr,
            Want::Videos(vec![video]),
        );
        let p = start_node(
            &cfg,
            NodeStart {
                serve: true,
                ..NodeStart::default()
            },
            &cancel,
        )
        .await?
        .node;
        peers.push((name, p, started, None::<Duration>));
    }

    // One bar per peer: fragments held, filled from the stores as fragments verify.
    let multi = MultiProgress::new();
    let style = ProgressStyle::with_template("{prefix:>8} [{bar:20}] {pos}/{len} fragments {msg}")
        .expect("valid template")
        .progress_chars("=> ");
    let bars: Vec<ProgressBar> = peers
        .iter()
        .map(|(name, p, _, _)| {
            let b = multi.add(ProgressBar::new(manifest.fragment_count as u64));
            b.set_style(style.clone());
            b.set_prefix(name.clone());
            b.set_message(
                p.bound()
                    .first()
                    .map(|a| a.scheme.clone())
                    .unwrap_or_default(),
            );
            b
        })
        .collect();
    let deadline = Instant::now() + Duration::from_secs(a.timeout);
    loop {
        let mut all = true;
        for (i, (_, p, _, done)) in peers.iter_mut().enumerate() {
            let have = p.store().have(video).len() as u64;
            bars[i].set_position(have);
            if have == manifest.fragment_count as u64 {
                if done.is_none() {
                    *done = Some(started.elapsed());
                    bars[i].finish();
                }
            } else {
                all = false;
            }
        }
        if all {
            break;
        }
        if Instant::now() > deadline {
            bail!(
                "the swarm did not complete within {}s; see the log lines above",
                a.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    drop(bars);
    let _ = multi.clear();

    println!(
        "\nEvery peer holds all {} fragments (each verified with BLAKE3):",
        manifest.fragment_count
    );
    for (name, p, _, done) in &peers {
        let t = done.unwrap_or_default().as_secs_f64().max(1e-3);
        println!(
            "  {name:<7} {:<5} {:>6.2}s  {:>6.1} MB/s  {}",
            p.bound().first().map(|a| a.scheme.as_str()).unwrap_or(""),
            t,
            manifest.size as f64 / 1e6 / t,
            p.bound().first().map(|a| a.to_string()).unwrap_or_default()
        );
        let sources = p.engine().stats().sources.lock().unwrap().clone();
        let mut by_fragment: Vec<_> = sources.into_iter().collect();
        by_fragment.sort_by_key(|(i, _)| *i);
        let names = |addr: &fragnet_core::PeerAddr| -> String {
            std::iter::once(("seeder", &seeder))
                .chain(peers.iter().map(|(n, p, _, _)| (n.as_str(), p)))
                .find(|(_, p)| p.bound().iter().any(|b| b.port == addr.port))
                .map(|(n, _)| n.to_string())
                .unwrap_or_else(|| addr.host_port())
        };
        let line: Vec<String> = by_fragment
            .iter()
            .map(|(i, from)| {
                format!(
                    "{i}←{}",
                    from.iter().map(&names).collect::<Vec<_>>().join("+")
                )
            })
            .collect();
        println!("          fragments from: {}", line.join("  "));
        let st = p.engine().stats();
        let (from_peers, from_seed) = (
            st.bytes_from_peers
                .load(std::sync::atomic::Ordering::Relaxed),
            st.bytes_from_seeders
                .load(std::sync::atomic::Ordering::Relaxed),
        );
        println!(
            "          bytes from peers {}, from the seeder {} ({:.0} % peer to peer); uploaded {}",
            human_bytes(from_peers),
            human_bytes(from_seed),
            100.0 * from_peers as f64 / (from_peers + from_seed).max(1) as f64,
            human_bytes(
                p.serve_context()
                    .stats
                    .bytes_sent
                    .load(std::sync::atomic::Ordering::Relaxed)
            )
        );
    }
    let (p2p, from_seeder) = peers.iter().fold((0, 0), |(p2p, seed), (_, p, _, _)| {
        let st = p.engine().stats();
        (
            p2p + st
                .bytes_from_peers
                .load(std::sync::atomic::Ordering::Relaxed),
            seed + st
                .bytes_from_seeders
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    });
    println!(
        "  the peers got {} from each other and {} from the seeder ({:.0} % peer to peer)",
        human_bytes(p2p),
        human_bytes(from_seeder),
        100.0 * p2p as f64 / (p2p + from_seeder).max(1) as f64
    );
    let seeder_up = seeder
        .serve_context()
        .stats
        .bytes_sent
        .load(std::sync::atomic::Ordering::Relaxed);
    println!(
        "  the seeder uploaded {} ({:.2}x the video)",
        human_bytes(seeder_up),
        seeder_up as f64 / manifest.size.max(1) as f64
    );
    let sum = |f: &dyn Fn(&fragnet_core::NodeHandle) -> u64| -> u64 {
        peers.iter().map(|(_, p, _, _)| f(p)).sum()
    };
    use std::sync::atomic::Ordering::Relaxed;
    println!(
        "  fragment events published {}, received {}; announcements to the manager {}",
        sum(&|p| p.announce_stats().events_published.load(Relaxed)),
        sum(&|p| p
            .event_stats()
            .map(|e| e.events_received.load(Relaxed))
            .unwrap_or(0)),
        sum(&|p| p.announce_stats().announcements.load(Relaxed)),
    );

    println!("\nLook around:");
    println!("  Swagger UI     {murl}/apidocs");
    println!("  who holds what {murl}/fragments");
    if let Some(url) = seeder.url() {
        println!("  player         {url}/watch/{video}");
    }
    if let Some((_, p, _, _)) = peers.first()
        && let Some(url) = p.url()
    {
        println!("  player (peer-1) {url}/watch/{video}");
    }
    println!("  broker         {baddr} (try: fragnet subscribe fragments --broker {baddr})");
    println!(
        "  share link     {}",
        Link::for_node(video, seeder.advertised(), Some(&murl))
    );
    // On a terminal the printed URLs are the point: keep them alive. A script or a test
    // (no terminal) gets the summary and the exit status at once.
    let keep = a.keep_running || (std::io::stdout().is_terminal() && !a.exit);
    if keep {
        println!(
            "\nServing until Ctrl-C (try: fragnet watch '<share link>' --http 127.0.0.1:0). --exit stops right after the summary."
        );
        shutdown_signal().await;
    } else {
        println!("\nStopping now (--keep-running keeps serving).");
    }
    for (_, p, _, _) in peers {
        p.shutdown().await;
    }
    seeder.shutdown().await;
    broker.shutdown().await;
    manager.shutdown().await;
    cancel.cancel();
    Ok(())
}
