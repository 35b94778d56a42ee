//! `fragnet join`: reassemble from a split directory or a node's store.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow};
use fragnet_core::ratelimit::human_bytes;
use fragnet_core::split::join;
use fragnet_core::{IdPrefix, VideoId};

use crate::cli::JoinArgs;
use crate::progress::bytes_bar;
use crate::share::videos_in;

/// Finds the directory holding a video: a directory given as is, `<data>/<id>`, or the
/// first `fragnet-data/*/<id>` that exists. The id may be a unique prefix (≥ 8 hex).
fn locate(source: &str, data: Option<&Path>) -> Result<PathBuf> {
    let as_path = Path::new(source);
    if as_path.is_dir() {
        return Ok(as_path.to_path_buf());
    }
    let prefix = IdPrefix::parse(source)
        .with_context(|| format!("{source:?} is neither a directory nor a video id"))?;
    let stores: Vec<PathBuf> = match data {
        Some(d) => vec![d.to_path_buf()],
        None => {
            let mut s: Vec<PathBuf> = std::fs::read_dir("fragnet-data")
                .map(|rd| rd.filter_map(|e| e.ok()).map(|e| e.path()).collect())
                .unwrap_or_default();
            s.sort();
            s
        }
    };
    let known: Vec<VideoId> = stores.iter().flat_map(|d| videos_in(d)).collect();
    let id: VideoId = prefix.resolve(known).map_err(|e| match data {
        Some(d) => anyhow!("in {}: {e}", d.display()),
        None => anyhow!("in the stores under ./fragnet-data: {e}; pass --data DIR"),
    })?;
    stores
        .iter()
        .map(|d| d.join(id.to_string()))
        .find(|p| p.is_dir())
        .with_context(|| match data {
            Some(d) => format!("{} holds no video {id}", d.display()),
            None => format!("no store under ./fragnet-data holds video {id}; pass --data DIR"),
        })
}

/// Reassembles and verifies.
pub async fn run(a: JoinArgs) -> Result<()> {
    // Checked first, so nothing is fetched or hashed for a join that would be refused.
    // (The file is still replaced atomically, by a rename, when --force allows it.)
    if !a.force && std::fs::symlink_metadata(&a.out).is_ok() {
        anyhow::bail!(
            "{} exists; pass --force to replace it, or choose another --out",
            a.out.display()
        );
    }
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
