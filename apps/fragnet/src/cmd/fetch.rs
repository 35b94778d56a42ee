//! `fragnet fetch`: parallel, verified, resumable download, then reassembly.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use fragnet_core::fetch::FetchReport;
use fragnet_core::manifest::safe_file_name;
use fragnet_core::ratelimit::human_bytes;
use fragnet_core::store::FragmentStatus;
use fragnet_core::{FragmentStore, VideoId};
use tokio_util::sync::CancellationToken;

use crate::assemble::{self, NodeStart};
use crate::cli::{FetchArgs, link_overrides, parse_fragment_list};
use crate::cmd::shutdown_signal;
use crate::config;
use crate::progress::{FetchProgress, bytes_bar, sources};
use crate::share::{parse_link, resolve_video};

/// Runs `fragnet fetch`.
pub async fn run(sources: &config::Sources, a: FetchArgs) -> Result<()> {
    let link = a.link.as_deref().map(parse_link).transpose()?;
    let flags = match &link {
        Some(l) => link_overrides(a.overrides(), l),
        None => a.overrides(),
    };
    let cfg = config::load(sources, &flags)?;
    let fragments = a
        .fragments
        .as_deref()
        .map(parse_fragment_list)
        .transpose()
        .map_err(|e| anyhow!("--fragments: {e}"))?;
    // A node that does not listen: it finds peers through the same discovery and
    // downloads through the same engine as any other.
    let cancel = CancellationToken::new();
    let started = assemble::start_node(
        &cfg,
        NodeStart {
            serve: false,
            default_data_dir: Some(PathBuf::from("fragnet-data/fetch")),
            ..NodeStart::default()
        },
        &cancel,
    )
    .await?;
    let node = started.node;
    if !node.engine().can_discover() {
        node.shutdown().await;
        bail!(
            "nowhere to look for the video: give a share link, --peer HOST:PORT or --manager URL"
        );
    }
    let video: Option<VideoId> = match (&link, &a.video) {
        (Some(l), _) => Some(l.video),
        (None, Some(v)) => match resolve_video(v, Some(node.store()), node.registry()).await {
            Ok(v) => Some(v),
            Err(e) => {
                node.shutdown().await;
                return Err(e.context("--video"));
            }
        },
        (None, None) => cfg.default_video,
    };
    let progress = Arc::new(FetchProgress::new(false));
    let stop = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    let result = node
        .engine()
        .fetch(video, fragments, progress.clone(), &cancel)
        .await;
    progress.finish();
    let store = node.store().clone();
    node.shutdown().await;
    let report = result?;
    print_report(&report);
    reassemble(&store, &report, a.out, a.force).await
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
