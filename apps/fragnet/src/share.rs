//! Share links and short ids as the commands use them: the link a node prints for the
//! videos it holds, and one resolver that turns a short id (`73cdffcc…`) into the one
//! video it names among those a store or a manager knows.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use fragnet_core::registry::Registry;
use fragnet_core::{FragmentStore, IdPrefix, Link, NodeHandle, VideoId};

use crate::config::{Config, RegistryKind};

/// The manager a link should name: `manager.url` when this node talks to one over HTTP.
pub fn manager_url(cfg: &Config) -> Option<&str> {
    match cfg.registry {
        RegistryKind::Http => cfg.manager.url.as_deref(),
        _ => None,
    }
}

/// The link to `video` on a running node: its dialable advertised addresses and its
/// manager.
pub fn link_for(node: &NodeHandle, manager: Option<&str>, video: VideoId) -> Link {
    Link::for_node(video, node.advertised(), manager)
}

/// Prints `[LINK] <name>: fragnet://…` for every video the node holds, when the link
/// says somewhere to look.
pub fn print_links(node: &NodeHandle, manager: Option<&str>) {
    for (video, m, _) in node.store().summary() {
        let link = link_for(node, manager, video);
        if link.has_location() {
            println!("[LINK] {}: {link}", m.name);
        }
    }
}

/// Parses a share link for a command line argument, naming the argument on error.
pub fn parse_link(arg: &str) -> Result<Link> {
    Link::parse(arg).map_err(|e| anyhow!("bad share link: {e}"))
}

/// The video `input` names (a full id or a unique prefix of at least 8 hex digits)
/// among the videos in `store` and, when given, those `registry` knows.
pub async fn resolve_video(
    input: &str,
    store: Option<&Arc<FragmentStore>>,
    registry: Option<&Arc<dyn Registry>>,
) -> Result<VideoId> {
    let prefix = IdPrefix::parse(input)?;
    if let Some(d) = prefix.full() {
        return Ok(VideoId(d));
    }
    let mut known: Vec<VideoId> = store.map(|s| s.videos()).unwrap_or_default();
    if let Some(r) = registry {
        match r.videos().await {
            Ok(v) => known.extend(v.into_iter().map(|i| i.id)),
            Err(e) => tracing::warn!("asking the manager for its videos: {e}"),
        }
    }
    Ok(prefix.resolve(known)?)
}

/// The video ids stored under `dir` (`<dir>/<video id>/`).
pub fn videos_in(dir: &Path) -> Vec<VideoId> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter(|e| e.path().is_dir())
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}
