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
use fragnet_core::serve::{DefaultVideoError, default_video};
use fragnet_core::store::{FragmentStatus, fragment_file_name};
use fragnet_core::{FragmentIndex, FragmentStore, PeerAddr, VideoId};
use futures::StreamExt;
use serde_json::json;
use tokio_util::codec::{FramedRead, LinesCodec};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::assemble;
use crate::cli::{PeerArgs, parse_fragment_list};
use crate::cmd::{node_flags_json, shutdown_signal};
use crate::config::{self, Config};
use crate::progress::FetchProgress;

/// The original project's prompt, in English.
pub const PROMPT: &str = "Fragment to request (or 'exit'): ";

/// Runs `fragnet peer` until Ctrl-C, SIGTERM or `exit`.
pub async fn run(sources: &config::Sources, a: PeerArgs) -> Result<()> {
    let mut flags = node_flags_json(&a.node);
    if !a.listen.is_empty() {
        flags.insert("listen".into(), json!(a.listen));
    }
    if !a.peer.is_empty() {
        flags.insert("peers".into(), json!(a.peer));
    }
    if let Some(v) = &a.default_video {
        flags.insert("default_video".into(), json!(v));
    }
    if a.no_console {
        flags.insert("console".into(), json!(false));
    }
    if let Some(h) = &a.http {
        flags.insert("http_listen".into(), json!(h));
    }
    let cfg = config::load(sources, serde_json::Value::Object(flags))?;
    let listen = cfg.listen_addrs()?;
    let local = assemble::open_local(cfg.data_dir_or_default("peer")).await?;
    info!(node_id = %local.identity.node_id(), data_dir = %local.data_dir.display(), "node identity");

    if let Some(seed) = &a.seed {
        let only = a
            .have
            .as_deref()
            .map(parse_fragment_list)
            .transpose()
            .map_err(|e| anyhow!("--have: {e}"))?;
        let (store, seed) = (local.store.clone(), seed.clone());
        let (video, got) =
            tokio::task::spawn_blocking(move || store.import_dir(&seed, only.as_deref())).await??;
        println!("Seeded video {video}: fragments {}", ranges(&got));
    }

    let transports = assemble::transports(&local.identity, &cfg)?;
    let cancel = CancellationToken::new();
    let (handle, ctx) =
        assemble::start_serving(&cfg, &local, &transports, &listen, cancel.clone()).await?;
    for addr in handle.local_addrs() {
        println!("[SERVER] Node listening on {addr}");
    }
    println!(
        "Node {} (\"{}\"), data in {}",
        local.identity.node_id(),
        ctx.name,
        local.data_dir.display()
    );
    let http = assemble::start_http(
        &cfg,
        &local,
        transports.clone(),
        ctx.clone(),
        cancel.clone(),
    )
    .await?;
    if let Some(h) = &http {
        // 0.0.0.0 is where it listens, not an address to open.
        let shown = h.local_addr().to_string().replace("0.0.0.0", "localhost");
        println!("[HTTP] Player on http://{shown}/watch/<video id>");
        for (video, m, _) in local.store.summary() {
            println!("[HTTP] Watch {}: http://{shown}/watch/{video}", m.name);
        }
    }

    let console = Console {
        cfg: cfg.clone(),
        store: local.store.clone(),
        fetcher: assemble::fetcher(&cfg, &local, transports),
        peers: cfg.peer_addrs()?,
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
    cancel.cancel();
    if let Some(h) = http {
        h.shutdown().await;
    }
    handle.shutdown().await;
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
}

/// What a console line asks for.
#[derive(Debug, PartialEq, Eq)]
enum Cmd {
    Fragment(FragmentIndex),
    FetchAll,
    Have,
    Peers,
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
    match l.to_ascii_lowercase().as_str() {
        "fetch all" | "all" => Cmd::FetchAll,
        "have" => Cmd::Have,
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

    async fn fetch(&self, fragments: Option<Vec<FragmentIndex>>, cancel: &CancellationToken) {
        if self.peers.is_empty() {
            println!("[✗] No peers to ask; start the node with --peer HOST:PORT");
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
