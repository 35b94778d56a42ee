//! `fragnet watch LINK`: the friend's side of a share link. Starts a node that fetches
//! the video through the same engine as every other command (and serves what it has to
//! the swarm), serves the player over HTTP, prints the player's URL and keeps running
//! until Ctrl-C. It opens a browser only when asked (`--open`) and one is installed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Result;
use fragnet_core::ratelimit::human_bytes;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::assemble::{self, NodeStart};
use crate::cli::{WatchArgs, link_overrides};
use crate::cmd::shutdown_signal;
use crate::config::{self, http_addr};
use crate::progress::FetchProgress;
use crate::share::{link_for, manager_url, parse_link};

/// Runs `fragnet watch` until Ctrl-C or SIGTERM.
pub async fn run(sources: &config::Sources, a: WatchArgs) -> Result<()> {
    let link = parse_link(&a.link)?;
    let mut flags = link_overrides(a.overrides(), &link);
    if flags.listen.is_empty() {
        // A free port: a watcher should not collide with a node already on 6001.
        flags.listen = vec!["0".into()];
    }
    flags.default_video = Some(link.video.to_string());
    let cfg = config::load(sources, &flags)?;
    let cancel = CancellationToken::new();
    let started = assemble::start_node(
        &cfg,
        NodeStart {
            serve: true,
            default_data_dir: Some(PathBuf::from("fragnet-data/watch")),
            ..NodeStart::default()
        },
        &cancel,
    )
    .await?;
    let node = started.node;
    let player = player_url(node.url(), &a.http, link.video);
    println!(
        "Watching video {} from {}",
        link.video.short(),
        where_from(&link)
    );
    println!("[HTTP] Player: {player}");
    println!(
        "[LINK] Pass it on (this node shares what it fetched): {}",
        link_for(&node, manager_url(&cfg), link.video)
    );
    if a.open {
        open_browser(&player);
    }
    println!("Serving until Ctrl-C.");

    let progress = Arc::new(FetchProgress::new(false));
    let fetch = node
        .engine()
        .fetch(Some(link.video), None, progress.clone(), &cancel);
    tokio::select! {
        _ = shutdown_signal() => {
            progress.finish();
            info!("stopping: signal received");
        }
        r = fetch => {
            progress.finish();
            match r {
                Ok(r) => println!(
                    "[✓] {} complete here ({} fetched, every fragment verified); still serving the player until Ctrl-C",
                    r.manifest.name,
                    human_bytes(r.bytes)
                ),
                Err(e) => println!("[✗] fetching stopped: {e}; the player serves what is here, and its ranges retry"),
            }
            shutdown_signal().await;
        }
    }
    node.shutdown().await;
    cancel.cancel();
    Ok(())
}

/// Where the link says to look, for people.
fn where_from(link: &fragnet_core::Link) -> String {
    let mut parts: Vec<String> = link.peers.iter().map(|p| p.to_string()).collect();
    if let Some(m) = &link.manager {
        parts.push(format!("manager {m}"));
    }
    parts.join(", ")
}

/// The player's URL on this machine: the HTTP side's own address (loopback when it
/// listens on every interface), not the host it advertises to others.
fn player_url(node_url: Option<&str>, http: &str, video: fragnet_core::VideoId) -> String {
    let bound_port = node_url
        .and_then(|u| u.rsplit(':').next())
        .and_then(|p| p.parse::<u16>().ok());
    let host = match http_addr(http) {
        Ok(sa) if sa.ip().is_unspecified() => "127.0.0.1".to_string(),
        Ok(sa) if sa.is_ipv6() => format!("[{}]", sa.ip()),
        Ok(sa) => sa.ip().to_string(),
        Err(_) => "127.0.0.1".to_string(),
    };
    let port = bound_port.unwrap_or(0);
    format!("http://{host}:{port}/watch/{video}")
}

/// Opens `url` with the first browser launcher found on PATH (or `$BROWSER`); says so
/// when there is none. Never waits for the browser.
fn open_browser(url: &str) {
    let from_env = std::env::var("BROWSER")
        .ok()
        .filter(|b| !b.trim().is_empty());
    let candidates: Vec<String> = from_env
        .into_iter()
        .chain(["xdg-open", "sensible-browser", "open"].map(String::from))
        .collect();
    for c in &candidates {
        let Some(path) = find_on_path(c) else {
            continue;
        };
        match std::process::Command::new(&path)
            .arg(url)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        {
            Ok(_) => {
                println!("Opened the player with {}", path.display());
                return;
            }
            Err(e) => println!("Could not start {}: {e}", path.display()),
        }
    }
    println!(
        "--open: no browser launcher found ({}); open the URL above yourself",
        candidates.join(", ")
    );
}

/// `name` if it is a path to a file, else the first `PATH` entry holding it.
fn find_on_path(name: &str) -> Option<PathBuf> {
    let p = Path::new(name);
    if p.components().count() > 1 {
        return p.is_file().then(|| p.to_path_buf());
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join(name))
            .find(|f| f.is_file())
    })
}
