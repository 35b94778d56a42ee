//! `fragnet join`: reassemble from a split directory or a node's store.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use fragnet_core::VideoId;
use fragnet_core::ratelimit::human_bytes;
use fragnet_core::split::join;

use crate::cli::JoinArgs;
use crate::progress::bytes_bar;

/// Finds the directory holding a video: a directory given as is, `<data>/<id>`, or the
/// first `fragnet-data/*/<id>` that exists.
fn locate(source: &str, data: Option<&Path>) -> Result<PathBuf> {
    let as_path = Path::new(source);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    let id: VideoId = source
        .parse()
        .with_context(|| format!("{source:?} is neither a directory nor a video id"))?;
    if let Some(d) = data {
        let dir = d.join(id.to_string());
        if !dir.is_dir() {
            bail!("{} holds no video {id}", d.display());
        }
        return Ok(dir);
    }
    let mut candidates: Vec<PathBuf> = std::fs::read_dir("fragnet-data")
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .map(|e| e.path().join(id.to_string()))
                .filter(|p| p.is_dir())
                .collect()
        })
        .unwrap_or_default();
    candidates.sort();
    candidates
        .into_iter()
        .next()
        .with_context(|| format!("no store under ./fragnet-data holds video {id}; pass --data DIR"))
}

/// Reassembles and verifies.
pub async fn run(a: JoinArgs) -> Result<()> {
    let dir = locate(&a.source, a.data.as_deref())?;
    let out = a.out.clone();
    let bar = bytes_bar(0, "joining");
    let b2 = bar.clone();
    let manifest =
        tokio::task::spawn_blocking(move || join(&dir, &out, &mut |n| b2.set_position(n)))
            .await??;
    bar.finish_and_clear();
    println!(
        "Wrote {} ({}, {} fragments, BLAKE3 verified)",
        a.out.display(),
        human_bytes(manifest.size),
        manifest.fragment_count
    );
    Ok(())
}
