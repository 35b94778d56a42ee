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
use fragnet_core::fetch::{FetchError, FetchRequest, Fetcher};
use fragnet_core::ratelimit::human_bytes;
use fragnet_core::registry::Registry;
use fragnet_core::serve::{DefaultVideoError, default_video};
use fragnet_core::store::{FragmentStatus, fragment_file_name};
use fragnet_core::{FragmentIndex, FragmentStore, PeerAddr, VideoId};
use futures::StreamExt;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::assemble;
use crate::cli::{PeerArgs, parse_fragment_list};
use crate::cmd::shutdown_signal;
use crate::config::{self, Config};
use crate::node::{InProcess, PeerNode};
use crate::progress::FetchProgress;

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
    let node = PeerNode::start(&cfg, &InProcess::default(), seed, cancel.clone()).await?;
    for addr in &node.bound {
        println!("[SERVER] Node listening on {addr}");
    }
    println!(
        "Node {} (\"{}\"), data in {}",
        node.node_id(),
        node.ctx.name,
        node.local.data_dir.display()
    );
    if let Some(url) = &node.http_url {
        println!("[HTTP] Player on {url}/watch/<video id>");
        for (video, m, _) in node.local.store.summary() {
            println!("[HTTP] Watch {}: {url}/watch/{video}", m.name);
        }
    }
    if node.registry.is_some() {
        println!(
            "Registered as {}",
            node.advertised
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }

    let console = Console {
        cfg: cfg.clone(),
        store: node.local.store.clone(),
        fetcher: assemble::fetcher(&cfg, &node.local, node.transports.clone()),
        peers: cfg.peer_addrs()?,
        registry: node.registry.clone(),
        node_id: node.node_id(),
        schemes: node.transports.schemes(),
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

/// `0-4,7` from `[0,1,2,3,4,7]`.
pub fn ranges(v: &[FragmentIndex]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let start = v[i];
        while i + 1 < v.len() && v[i + 1] == v[i] + 1 {
            i += 1;
        }
        out.push(if v[i] == start {
            start.to_string()
        } else {
            format!("{start}-{}", v[i])
        });
        i += 1;
    }
    if out.is_empty() {
        "none".into()
    } else {
        out.join(",")
    }
}

struct Console {
    cfg: Config,
    store: Arc<FragmentStore>,
    fetcher: Fetcher,
    peers: Vec<PeerAddr>,
    registry: Option<Arc<dyn Registry>>,
    node_id: fragnet_core::NodeId,
    schemes: Vec<&'static str>,
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
    if let Some(rest) = l.strip_prefix("who ") {
        let rest = rest.trim();
        if let Some(i) =
            fragnet_core::protocol::parse_bare_name(rest.as_bytes()).or_else(|| rest.parse().ok())
        {
            return Cmd::Who(i);
        }
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
  videos                the videos the manager knows
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
                Cmd::Fragment(i) => self.fetch(Some(vec![i]), &cancel).await,
                Cmd::FetchAll => self.fetch(None, &cancel).await,
            }
        }
    }

    /// The video console commands refer to: configured, else the only one held; `None`
    /// lets the fetch pick the only one the peers offer.
    fn video(&self) -> Result<Option<VideoId>, DefaultVideoError> {
        match default_video(self.cfg.default_video, &self.store.videos()) {
            Ok(v) => Ok(Some(v)),
            Err(DefaultVideoError::None) => Ok(None),
            Err(e) => Err(e),
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
        if self.peers.is_empty() {
            println!("  no peers configured (start with --peer HOST:PORT)");
            return;
        }
        let progress = FetchProgress::new(true);
        for (addr, videos) in self.fetcher.probe(&self.peers, &progress).await {
            if videos.is_empty() {
                println!("  {addr}: holds nothing");
            }
            for v in videos {
                println!(
                    "  {addr}: {} {} — {} of {}: {}",
                    v.video.short(),
                    v.name,
                    v.have.len(),
                    v.fragment_count,
                    ranges(&v.have)
                );
            }
        }
    }

    async fn who(&self, index: FragmentIndex) {
        let Some(reg) = &self.registry else {
            return println!("[✗] No manager configured (start with --manager URL)");
        };
        let video = match self.video() {
            Ok(Some(v)) => v,
            Ok(None) => match reg
                .videos()
                .await
                .map(|v| v.into_iter().map(|v| v.id).collect::<Vec<_>>())
            {
                Ok(ids) => match default_video(None, &ids) {
                    Ok(v) => v,
                    Err(e) => {
                        return println!(
                            "[✗] {}",
                            e.to_string()
                                .replace("this node holds", "the manager knows")
                        );
                    }
                },
                Err(e) => return println!("[✗] {e}"),
            },
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
        let Some(reg) = &self.registry else {
            return println!("[✗] No manager configured (start with --manager URL)");
        };
        match reg.videos().await {
            Ok(v) if v.is_empty() => println!("  the manager knows no video yet"),
            Ok(v) => {
                for info in v {
                    let here = self.store.have(info.id).len();
                    println!(
                        "  {} {} — {} fragments, {} here",
                        info.id, info.name, info.fragment_count, here
                    );
                }
            }
            Err(e) => println!("[✗] {e}"),
        }
    }

    /// Peers to fetch from: the configured ones, plus every live node the registry knows.
    async fn candidates(&self) -> Vec<PeerAddr> {
        let mut peers = self.peers.clone();
        if let Some(reg) = &self.registry
            && let Ok(nodes) = reg.nodes().await
        {
            for n in nodes.into_iter().filter(|n| n.id != self.node_id) {
                let pick = n
                    .addrs
                    .iter()
                    .filter(|a| self.schemes.contains(&a.scheme.as_str()))
                    .min_by_key(|a| a.scheme != self.cfg.transport.as_str());
                if let Some(a) = pick
                    && !peers.contains(a)
                {
                    peers.push(a.clone());
                }
            }
        }
        peers
    }

    async fn fetch(&self, fragments: Option<Vec<FragmentIndex>>, cancel: &CancellationToken) {
        let peers = self.candidates().await;
        if peers.is_empty() {
            println!("[✗] No peers to ask; start the node with --peer HOST:PORT or --manager URL");
            return;
        }
        let video = match self.video() {
            Ok(v) => v,
            Err(e) => return println!("[✗] {e}"),
        };
        if let (Some(v), Some([i])) = (video, fragments.as_deref())
            && self.store.status(v, *i).ok() == Some(FragmentStatus::Complete)
        {
            return println!(
                "[=] Fragment '{}' is already here (verified)",
                fragment_file_name(*i)
            );
        }
        let progress = Arc::new(FetchProgress::new(true));
        let req = FetchRequest {
            video,
            fragments: fragments.clone(),
            peers: self.peers.clone(),
        };
        let result = self
            .fetcher
            .fetch(req, progress.clone(), cancel.child_token())
            .await;
        progress.finish();
        match result {
            Ok(r) if r.fetched.is_empty() => {
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

    #[test]
    fn ranges_compress() {
        assert_eq!(ranges(&[0, 1, 2, 3, 4]), "0-4");
        assert_eq!(ranges(&[0, 2, 3, 7]), "0,2-3,7");
        assert_eq!(ranges(&[]), "none");
    }
}
