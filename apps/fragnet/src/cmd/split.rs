//! `fragnet split` and the summary it prints.

use anyhow::{Result, anyhow, bail};
use fragnet_core::PeerAddr;
use fragnet_core::link::{BadLink, Link};
use fragnet_core::ratelimit::{human_bytes, parse_bytes};
use fragnet_core::split::{SplitOptions, split};

use crate::cli::SplitArgs;
use crate::progress::bytes_bar;

/// Splits a video and prints its id and sizes.
pub async fn run(a: SplitArgs) -> Result<()> {
    let chunk_size = parse_bytes(&a.chunk_size).map_err(|e| anyhow!("--chunk-size: {e}"))?;
    let chunk_size = u32::try_from(chunk_size)
        .map_err(|_| anyhow!("--chunk-size {} is too large", a.chunk_size))?;
    let fragments = u32::try_from(a.fragments)
        .map_err(|_| fragnet_core::split::SplitError::BadFragmentCount(a.fragments))?;
    let size = std::fs::metadata(&a.video).map(|m| m.len()).unwrap_or(0);
    let bar = bytes_bar(size, "splitting");
    let opts = SplitOptions {
        fragments,
        chunk_size,
        force: a.force,
    };
    let (video, out) = (a.video.clone(), a.out.clone());
    let b2 = bar.clone();
    let manifest = tokio::task::spawn_blocking(move || {
        split(&video, &out, &opts, &mut |n| b2.set_position(n))
    })
    .await??;
    bar.finish_and_clear();
    let (min, max) = manifest.fragment_size_range();
    println!("Video split into {} fragments.", manifest.fragment_count);
    println!("  video id   {}", manifest.video_id());
    println!(
        "  file       {} ({}, {}, {} bytes)",
        manifest.name,
        human_bytes(manifest.size),
        manifest.mime,
        manifest.size
    );
    let sizes = if human_bytes(min) == human_bytes(max) {
        human_bytes(min)
    } else {
        format!("{} to {}", human_bytes(min), human_bytes(max))
    };
    println!(
        "  fragments  fragment_0.bin … fragment_{}.bin, {sizes} each",
        manifest.fragment_count - 1
    );
    println!(
        "  chunks     {} each (the unit of verification and resume)",
        binary_size(manifest.chunk_size as u64)
    );
    println!(
        "  written to {}/ (manifest.json + fragments)",
        a.out.display()
    );
    let link = Link {
        video: manifest.video_id(),
        manager: a
            .manager
            .as_deref()
            .map(|m| m.trim_end_matches('/').to_string()),
        peers: a
            .peer
            .iter()
            .map(|p| PeerAddr::parse(p, "tcp"))
            .collect::<Result<_, _>>()
            .map_err(|e| anyhow!("--peer: {e}"))?,
    };
    // Checked as a friend's `fetch`/`watch` will check it.
    let text = link.to_string();
    match Link::parse(&text) {
        Ok(_) => println!("  share link {text}"),
        Err(BadLink::NoLocation) => println!(
            "  share link: seed it (fragnet peer --seed {}) and the node prints one with its addresses, or split with --manager URL / --peer ADDR",
            a.out.display()
        ),
        Err(e) => bail!("the share link would not work: {e}"),
    }
    Ok(())
}

/// `1 MiB`, `256 KiB`, or bytes.
fn binary_size(n: u64) -> String {
    match n {
        n if n >= 1 << 20 && n % (1 << 20) == 0 => format!("{} MiB", n >> 20),
        n if n >= 1 << 10 && n % (1 << 10) == 0 => format!("{} KiB", n >> 10),
        n => format!("{n} bytes"),
    }
}
