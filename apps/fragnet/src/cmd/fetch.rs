//! `fragnet fetch`: parallel, verified, resumable download, then reassembly.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use fragnet_core::fetch::{FetchReport, FetchRequest};
use fragnet_core::manifest::safe_file_name;
use fragnet_core::ratelimit::human_bytes;
use fragnet_core::store::FragmentStatus;
use fragnet_core::{FragmentStore, VideoId};
use tokio_util::sync::CancellationToken;

use crate::assemble;
use crate::cli::{FetchArgs, parse_fragment_list};
use crate::cmd::shutdown_signal;
use crate::config;
use crate::progress::{FetchProgress, bytes_bar, sources};

/// Runs `fragnet fetch`.
pub async fn run(sources: &config::Sources, a: FetchArgs) -> Result<()> {
    let cfg = config::load(sources, &a.overrides())?;
    let video: Option<VideoId> = match &a.video {
        Some(v) => Some(v.parse().map_err(|e| anyhow!("--video: {e}"))?),
        None => cfg.default_video,
    };
    let fragments = a
        .fragments
        .as_deref()
        .map(parse_fragment_list)
        .transpose()
        .map_err(|e| anyhow!("--fragments: {e}"))?;
    let data_dir = cfg
        .data_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("fragnet-data/fetch"));
    let local = assemble::open_local(data_dir).await?;
    let transports = assemble::transports(&local.identity, &cfg)?;
    let fetcher = assemble::fetcher(&cfg, &local, transports);
    let progress = Arc::new(FetchProgress::new(false));
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    let mut peers = cfg.peer_addrs()?;
    let mut video = video;
    if let Some(reg) = crate::node::registry(&cfg, &crate::node::InProcess::default())? {
        let found = holders_from_registry(
            reg.as_ref(),
            video,
            &transports_schemes(&cfg),
            cfg.transport.as_str(),
        )
        .await?;
        video = video.or(found.0);
        for p in found.1 {
            if !peers.contains(&p) {
                peers.push(p);
            }
        }
        if peers.is_empty() {
            bail!("the manager knows no node holding that video yet");
        }
    }
    let req = FetchRequest {
        video,
        fragments,
        peers,
    };
    let result = fetcher.fetch(req, progress.clone(), cancel).await;
    progress.finish();
    let report = result?;
    print_report(&report);
    reassemble(&local.store, &report, a.out, a.force).await
}

fn transports_schemes(_cfg: &crate::config::Config) -> Vec<&'static str> {
    crate::assemble::SCHEMES.to_vec()
}

/// The video (the only one the manager knows, if none was given) and the addresses of
/// every node holding any fragment of it.
async fn holders_from_registry(
    reg: &dyn fragnet_core::Registry,
    video: Option<VideoId>,
    schemes: &[&str],
    prefer: &str,
) -> Result<(Option<VideoId>, Vec<fragnet_core::PeerAddr>)> {
    let video = match video {
        Some(v) => v,
        None => {
            let ids: Vec<VideoId> = reg
                .videos()
                .await
                .context("asking the manager for its videos")?
                .into_iter()
                .map(|v| v.id)
                .collect();
            fragnet_core::serve::default_video(None, &ids).map_err(|e| {
                anyhow!(
                    "{}",
                    e.to_string()
                        .replace("this node holds", "the manager knows")
                        .replace("set default_video to", "choose with --video")
                )
            })?
        }
    };
    let manifest = reg
        .manifest(video)
        .await
        .with_context(|| format!("asking the manager for video {video}"))?;
    let mut out: Vec<fragnet_core::PeerAddr> = Vec::new();
    for index in 0..manifest.fragment_count {
        let h = reg
            .locate(video, index, 50)
            .await
            .with_context(|| format!("asking the manager who holds fragment {index}"))?;
        for n in h.peers {
            let pick = n
                .addrs
                .iter()
                .filter(|a| schemes.contains(&a.scheme.as_str()))
                .min_by_key(|a| a.scheme != prefer);
            if let Some(a) = pick
                && !out.contains(a)
            {
                out.push(a.clone());
            }
        }
    }
    Ok((Some(video), out))
}

fn print_report(r: &FetchReport) {
    let secs = r.elapsed.as_secs_f64().max(1e-6);
    println!(
        "Fetched {} fragment(s), {} in {:.2}s ({:.1} MB/s) for video {} ({})",
        r.fetched.len(),
        human_bytes(r.bytes),
        secs,
        r.bytes as f64 / 1e6 / secs,
        r.video.short(),
        r.manifest.name
    );
    if !r.already_complete.is_empty() {
        println!("  already here: {:?}", r.already_complete);
    }
    if r.resumed_chunks > 0 {
        println!(
            "  resumed from {} chunk(s) verified earlier",
            r.resumed_chunks
        );
    }
    for (index, from) in &r.fetched {
        println!("  fragment_{index}.bin from {}", sources(from));
    }
}

async fn reassemble(
    store: &Arc<FragmentStore>,
    r: &FetchReport,
    out: Option<PathBuf>,
    force: bool,
) -> Result<()> {
    let held = (0..r.manifest.fragment_count)
        .filter(|&i| store.status(r.video, i).ok() == Some(FragmentStatus::Complete))
        .count();
    if held < r.manifest.fragment_count as usize {
        println!(
            "Holding {held} of {} fragments; the video is reassembled once all are here.",
            r.manifest.fragment_count
        );
        return Ok(());
    }
    let out = out.unwrap_or_else(|| PathBuf::from(safe_file_name(&r.manifest.name)));
    if out.exists() && !force {
        let same = {
            let out = out.clone();
            let want = r.manifest.hash;
            tokio::task::spawn_blocking(move || -> Result<bool> {
                let mut h = blake3::Hasher::new();
                h.update_reader(std::fs::File::open(&out)?)?;
                Ok(fragnet_core::ids::Digest::from(h.finalize()) == want)
            })
            .await??
        };
        if same {
            println!(
                "{} already holds this video (BLAKE3 verified).",
                out.display()
            );
            return Ok(());
        }
        bail!(
            "{} exists and holds something else; pass --out FILE or --force",
            out.display()
        );
    }
    let dir = store.video_dir(r.video);
    let bar = bytes_bar(r.manifest.size, "reassembling");
    let (b2, out2) = (bar.clone(), out.clone());
    tokio::task::spawn_blocking(move || {
        fragnet_core::split::join(&dir, &out2, &mut |n| b2.set_position(n))
    })
    .await?
    .with_context(|| format!("reassembling into {}", out.display()))?;
    bar.finish_and_clear();
    println!(
        "Wrote {} ({}, BLAKE3 verified)",
        out.display(),
        human_bytes(r.manifest.size)
    );
    Ok(())
}
