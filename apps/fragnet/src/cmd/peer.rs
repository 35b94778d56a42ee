//! `fragnet peer`: the original's node. Serves what it holds, fetches from its peers,
//! and reads a console on stdin:
//!
//! ```text
//! Fragment to request (or 'exit'): fragment_5.bin
//! [✓] Fragment 'fragment_5.bin' received from localhost:6002 (271 KB, verified)
//! ```

use std::io::Write;
use std::sync::Arc;

use anyhow::{Result, anyhow};
use fragnet_core::fetch::FetchError;
use fragnet_core::library::{Library, LibraryError};
use fragnet_core::ratelimit::human_bytes;
use fragnet_core::registry::Registry;
use fragnet_core::serve::default_video;
use fragnet_core::store::{FragmentStatus, fragment_file_name};
use fragnet_core::{Downloads, FragmentIndex, FragmentStore, VideoId};
use futures::StreamExt;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::assemble::{self, NodeStart};
use crate::cli::{PeerArgs, parse_fragment_list};
use crate::cmd::shutdown_signal;
use crate::config;
use crate::progress::{FetchProgress, ranges};

/// The original project's prompt, in English.
pub const PROMPT: &str = "Fragment to request (or 'exit'): ";

/// Runs `fragnet peer` until Ctrl-C, SIGTERM or `exit`.
pub async fn run(sources: &config::Sources, a: PeerArgs) -> Result<()> {
    let cfg = config::load(sources, &a.overrides())?;
    let seed = match &a.seed {
        Some(dir) => {
            let only = a
                .have
                .as_deref()
                .map(parse_fragment_list)
                .transpose()
                .map_err(|e| anyhow!("--have: {e}"))?;
            Some((dir.clone(), only))
        }
        None => None,
    };
    let cancel = CancellationToken::new();
    let started = assemble::start_node(
        &cfg,
        NodeStart {
            seed,
            serve: true,
            ..NodeStart::default()
        },
        &cancel,
    )
    .await?;
    let node = started.node;
    for addr in node.bound() {
        println!("[SERVER] Node listening on {addr}");
    }
    println!(
        "Node {} (\"{}\"), data in {}",
        node.node_id(),
        node.name(),
        started.data_dir.display()
    );
    if let Some(admin) = started.admin {
        println!("[ADMIN] Health and metrics on http://{admin}/health, http://{admin}/metrics");
    }
    if let Some(url) = node.url() {
        println!("[HTTP] Player on {url}/watch/<video id>");
        for (video, m, _) in node.store().summary() {
            println!("[HTTP] Watch {}: {url}/watch/{video}", m.name);
        }
    }
    if node.registry().is_some() {
        println!(
            "Registered as {}",
            node.advertised()
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    crate::share::print_links(&node, crate::share::manager_url(&cfg));

    let console = Console {
        default_video: std::sync::Mutex::new(cfg.default_video),
        store: node.store().clone(),
        engine: node.engine().clone(),
        registry: node.registry().cloned(),
        node_id: node.node_id(),
        library: node.library().clone(),
        split_fragments: cfg.library.fragments,
        player: node.url().map(str::to_string),
    };
    let console_done = async {
        if cfg.console {
            console.run(cancel.clone()).await
        } else {
            std::future::pending::<()>().await
        }
    };
    tokio::select! {
        _ = shutdown_signal() => info!("stopping: signal received"),
        _ = console_done => info!("stopping: exit from the console"),
    }
    node.shutdown().await;
    cancel.cancel();
    info!("stopped; incomplete fragments stay as .part files and resume on the next fetch");
    Ok(())
}

struct Console {
    /// The video console commands refer to; `video ID` changes it.
    default_video: std::sync::Mutex<Option<VideoId>>,
    store: Arc<FragmentStore>,
    engine: Arc<Downloads>,
    registry: Option<Arc<dyn Registry>>,
    node_id: fragnet_core::NodeId,
    library: Arc<Library>,
    split_fragments: u32,
    player: Option<String>,
}

/// What a console line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Cmd {
    Fragment(FragmentIndex),
    FetchAll,
    Have,
    Peers,
    Who(FragmentIndex),
    Videos,
    Add(String),
    Remove(String),
    Pin(String, bool),
    /// `video 73cdffcc`: the video later commands refer to (a full id or unique prefix).
    UseVideo(String),
    Help,
    Exit,
    Nothing,
    Unknown(String),
}

fn parse(line: &str) -> Cmd {
    let l = line.trim();
    if l.is_empty() {
        return Cmd::Nothing;
    }
    if let Some(i) = fragnet_core::protocol::parse_bare_name(l.as_bytes()) {
        return Cmd::Fragment(i);
    }
    if let Ok(i) = l.parse::<FragmentIndex>() {
        return Cmd::Fragment(i);
    }
    for (word, make) in [
        ("add ", Cmd::Add as fn(String) -> Cmd),
        ("remove ", Cmd::Remove),
        ("pin ", |s| Cmd::Pin(s, true)),
        ("unpin ", |s| Cmd::Pin(s, false)),
    ] {
        if let Some(rest) = l.strip_prefix(word)
            && !rest.trim().is_empty()
        {
            return make(rest.trim().to_string());
        }
    }
    if let Some(rest) = l.strip_prefix("who ") {
        let rest = rest.trim();
        if let Some(i) =
            fragnet_core::protocol::parse_bare_name(rest.as_bytes()).or_else(|| rest.parse().ok())
        {
            return Cmd::Who(i);
        }
    }
    if let Some(rest) = l.strip_prefix("video ") {
        return Cmd::UseVideo(rest.trim().chars().take(80).collect());
    }
    match l.to_ascii_lowercase().as_str() {
        "fetch all" | "all" => Cmd::FetchAll,
        "have" => Cmd::Have,
        "videos" => Cmd::Videos,
        "peers" => Cmd::Peers,
        "help" | "?" => Cmd::Help,
        "exit" | "quit" => Cmd::Exit,
        _ => Cmd::Unknown(l.chars().take(80).collect()),
    }
}

const HELP: &str = "\
  fragment_5.bin or 5   fetch fragment 5 of the default video from the peers
  fetch all             fetch every missing fragment
  have                  list what this node holds
  peers                 ask each peer what it holds
  who 5                 which nodes hold fragment 5 (asks the manager)
  videos                this node's videos with progress (and the manager's others)
  add FILE              split FILE into this node's library and seed it (pinned)
  remove ID             withdraw a video and delete its files (ID or a unique prefix)
  pin ID, unpin ID      never evict a video / let it be evicted when room is needed
  video 73cdffcc        the video the other commands refer to (a unique id prefix)
  help                  this list
  exit                  stop the node";

impl Console {
    async fn run(&self, cancel: CancellationToken) {
        let mut lines = FramedRead::new(tokio::io::stdin(), LinesCodec::new_with_max_length(4096));
        loop {
            print!("{PROMPT}");
            let _ = std::io::stdout().flush();
            let line = tokio::select! {
                _ = cancel.cancelled() => return,
                l = lines.next() => l,
            };
            let line = match line {
                None => {
                    // Piped input ended: keep serving until a signal.
                    println!();
                    info!("console input ended; serving until Ctrl-C");
                    std::future::pending::<()>().await;
                    return;
                }
                Some(Err(e)) => {
                    println!("[✗] {e}");
                    continue;
                }
                Some(Ok(l)) => l,
            };
            match parse(&line) {
                Cmd::Nothing => {}
                Cmd::Exit => return,
                Cmd::Help => println!("{HELP}"),
                Cmd::Unknown(s) => println!("[?] Unknown command '{s}'; type 'help'"),
                Cmd::Have => self.have(),
                Cmd::Peers => self.peers().await,
                Cmd::Who(i) => self.who(i).await,
                Cmd::Videos => self.videos().await,
                Cmd::Add(path) => self.add(&path).await,
                Cmd::Remove(id) => self.remove(&id).await,
                Cmd::Pin(id, on) => self.pin(&id, on),
                Cmd::UseVideo(id) => self.use_video(&id).await,
                Cmd::Fragment(i) => self.fetch(Some(vec![i]), &cancel).await,
                Cmd::FetchAll => self.fetch(None, &cancel).await,
            }
        }
    }

    /// The video console commands refer to: chosen or configured, else the only one
    /// held here, else the only one known to discovery.
    async fn video(&self) -> Result<VideoId, FetchError> {
        let chosen = *self.default_video.lock().unwrap();
        if let Ok(v) = default_video(chosen, &self.store.videos()) {
            return Ok(v);
        }
        self.engine.resolve_video(chosen).await
    }

    /// `video ID`: resolves a short id among the videos held here and those the manager
    /// knows, and makes it the one the other commands refer to.
    async fn use_video(&self, id: &str) {
        match crate::share::resolve_video(id, Some(&self.store), self.registry.as_ref()).await {
            Ok(v) => {
                *self.default_video.lock().unwrap() = Some(v);
                println!("  commands now refer to video {v}");
            }
            Err(e) => println!("[✗] {e}"),
        }
    }

    fn have(&self) {
        let summary = self.store.summary();
        if summary.is_empty() {
            println!("  nothing yet");
        }
        for (v, m, have) in summary {
            println!(
                "  {} {} — {} of {} fragments: {}",
                v.short(),
                m.name,
                have.len(),
                m.fragment_count,
                ranges(&have)
            );
        }
    }

    async fn peers(&self) {
        if !self.engine.can_discover() {
            println!(
                "  no peers to ask (start the node with --peer HOST:PORT, --manager URL or --broker ADDR)"
            );
            return;
        }
        let video = match self.video().await {
            Ok(v) => v,
            Err(e) => return println!("[✗] {e}"),
        };
        let holders = self.engine.holders(video).await;
        if holders.is_empty() {
            println!(
                "  no peer found for {} (asked: {})",
                video.short(),
                self.engine.discovery().describe()
            );
        }
        for (addr, have) in holders {
            println!(
                "  {addr}: {} fragment(s) of {}: {}",
                have.len(),
                video.short(),
                ranges(&have)
            );
        }
    }

    async fn who(&self, index: FragmentIndex) {
        let Some(reg) = &self.registry else {
            return println!("[✗] No manager configured (start with --manager URL)");
        };
        let video = match self.video().await {
            Ok(v) => v,
            Err(e) => return println!("[✗] {e}"),
        };
        match reg.locate(video, index, 50).await {
            Ok(h) if h.peers.is_empty() => println!(
                "  nobody holds '{}' of {}",
                fragment_file_name(index),
                video.short()
            ),
            Ok(h) => {
                println!(
                    "  '{}' of {}: {} holder(s)",
                    fragment_file_name(index),
                    video.short(),
                    h.total
                );
                for n in h.peers {
                    let me = if n.id == self.node_id {
                        " (this node)"
                    } else {
                        ""
                    };
                    let addrs: Vec<String> = n.addrs.iter().map(|a| a.to_string()).collect();
                    println!("  {} {}{me} — {}", n.id.short(), n.name, addrs.join(", "));
                }
            }
            Err(e) => println!("[✗] {e}"),
        }
    }

    async fn videos(&self) {
        let entries = self.library.entries();
        if entries.is_empty() {
            println!("  no video here yet");
        }
        for e in &entries {
            let mut notes = Vec::new();
            if e.pinned {
                notes.push("pinned");
            }
            if e.downloading {
                notes.push("downloading");
            }
            let notes = if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join(", "))
            };
            println!(
                "  {} {} — {} of {} fragments, {} of {}{notes}",
                e.video,
                e.name,
                e.complete_fragments,
                e.fragment_count,
                human_bytes(e.bytes_on_disk),
                human_bytes(e.size)
            );
        }
        if let Some(max) = self.library.max_disk() {
            println!(
                "  disk: {} of {} (limits.max_disk)",
                human_bytes(self.library.used()),
                human_bytes(max)
            );
        }
        let Some(reg) = &self.registry else {
            return;
        };
        match reg.videos().await {
            Ok(v) => {
                let others: Vec<_> = v
                    .into_iter()
                    .filter(|i| !entries.iter().any(|e| e.video == i.id))
                    .collect();
                if !others.is_empty() {
                    println!("  the manager also knows:");
                }
                for info in others {
                    println!(
                        "  {} {} — {} fragments, none here",
                        info.id, info.name, info.fragment_count
                    );
                }
            }
            Err(e) => println!("[✗] asking the manager: {e}"),
        }
    }

    /// A video of this node's library by id or unique prefix.
    fn held(&self, id: &str) -> Result<VideoId, String> {
        if let Ok(v) = id.parse::<VideoId>() {
            return Ok(v);
        }
        let id = id.to_ascii_lowercase();
        let matches: Vec<VideoId> = self
            .store
            .videos()
            .into_iter()
            .filter(|v| v.to_string().starts_with(&id))
            .collect();
        match matches.as_slice() {
            [one] => Ok(*one),
            [] => Err(format!("no video here starts with '{id}'; type 'videos'")),
            _ => Err(format!(
                "'{id}' matches {} videos; give more of the id",
                matches.len()
            )),
        }
    }

    async fn add(&self, path: &str) {
        let path = std::path::Path::new(path);
        let opts = fragnet_core::split::SplitOptions {
            fragments: self.split_fragments,
            ..Default::default()
        };
        match self.library.add_file(path, opts).await {
            Ok(video) => {
                println!("[✓] Added {} as {video} (pinned, seeding)", path.display());
                if let Some(url) = &self.player {
                    println!("    watch: {url}/watch/{video}");
                }
            }
            Err(e) => println!("[✗] {e}"),
        }
    }

    async fn remove(&self, id: &str) {
        let video = match self.held(id) {
            Ok(v) => v,
            Err(e) => return println!("[✗] {e}"),
        };
        match self.engine.remove(video).await {
            Ok(()) => println!("[✓] Removed {video}: withdrawn and deleted"),
            Err(LibraryError::Unknown(_)) => println!("[✗] {video} is not here"),
            Err(e) => println!("[✗] {e}"),
        }
    }

    fn pin(&self, id: &str, on: bool) {
        let video = match self.held(id) {
            Ok(v) => v,
            Err(e) => return println!("[✗] {e}"),
        };
        match self.library.pin(video, on) {
            Ok(()) if on => println!("[✓] Pinned {video}: never evicted"),
            Ok(()) => println!("[✓] Unpinned {video}: may be evicted when room is needed"),
            Err(e) => println!("[✗] {e}"),
        }
    }

    async fn fetch(&self, fragments: Option<Vec<FragmentIndex>>, cancel: &CancellationToken) {
        if !self.engine.can_discover() {
            println!(
                "[✗] No peers to ask; start the node with --peer HOST:PORT, --manager URL or --broker ADDR"
            );
            return;
        }
        let video = match self.video().await {
            Ok(v) => v,
            Err(e) => return println!("[✗] {e}"),
        };
        if let Some([i]) = fragments.as_deref()
            && self.store.status(video, *i).ok() == Some(FragmentStatus::Complete)
        {
            return println!(
                "[=] Fragment '{}' is already here (verified)",
                fragment_file_name(*i)
            );
        }
        let progress = Arc::new(FetchProgress::new(true));
        let result = self
            .engine
            .fetch(Some(video), fragments.clone(), progress.clone(), cancel)
            .await;
        progress.finish();
        match result {
            Ok(r) if r.fetched.is_empty() && fragments.is_none() => {
                println!("[=] Nothing to fetch: {} is complete here", r.manifest.name)
            }
            Ok(r) if fragments.is_none() => println!(
                "[✓] {} complete: {} fetched, {} fragments held",
                r.manifest.name,
                human_bytes(r.bytes),
                self.store.have(r.video).len()
            ),
            Ok(_) => {}
            Err(FetchError::NoSuchFragment { index, count, .. }) => {
                println!(
                    "[✗] Fragment '{}' does not exist; this video has fragment_0.bin … fragment_{}.bin",
                    fragment_file_name(index),
                    count - 1
                )
            }
            Err(e) => println!("[✗] {e}"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_commands() {
        assert_eq!(parse("fragment_5.bin"), Cmd::Fragment(5));
        assert_eq!(parse(" 5 "), Cmd::Fragment(5));
        assert_eq!(parse("fetch all"), Cmd::FetchAll);
        assert_eq!(parse("EXIT"), Cmd::Exit);
        assert_eq!(
            parse("add /tmp/my clip.mp4"),
            Cmd::Add("/tmp/my clip.mp4".into())
        );
        assert_eq!(parse("remove 73cd"), Cmd::Remove("73cd".into()));
        assert_eq!(parse("pin 73cd"), Cmd::Pin("73cd".into(), true));
        assert_eq!(parse("unpin 73cd"), Cmd::Pin("73cd".into(), false));
        assert_eq!(parse("add"), Cmd::Unknown("add".into()));
        assert_eq!(parse("video 73cdffcc…"), Cmd::UseVideo("73cdffcc…".into()));
        assert_eq!(parse(""), Cmd::Nothing);
        assert_eq!(
            parse("../../etc/passwd"),
            Cmd::Unknown("../../etc/passwd".into())
        );
        assert_eq!(
            parse("fragment_-1.bin"),
            Cmd::Unknown("fragment_-1.bin".into())
        );
    }
}
