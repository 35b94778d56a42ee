//! Assembly of a node from configuration: identity, store, transports, serving side and
//! fetcher. Every role (peer, fetch, later demo and run) starts nodes through here.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use fragnet_core::fetch::{FetchOptions, Fetcher, PeerPool};
use fragnet_core::identity::Identity;
use fragnet_core::node::{ServeHandle, ServeLimits, serve};
use fragnet_core::protocol::Timeouts;
use fragnet_core::ratelimit::RateLimiter;
use fragnet_core::serve::{ServeContext, ServeStats};
use fragnet_core::{FragmentStore, PeerAddr, Transports};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, TransportKind};

/// Transport schemes this build can use: one per [`TransportKind`].
pub const SCHEMES: &[&str] = &[TransportKind::Tcp.as_str(), TransportKind::Quic.as_str()];

/// Every transport this build has. A node listens on the ones its `listen` names and
/// can dial any of them, so TCP-only and QUIC-only nodes share one swarm. QUIC
/// authenticates with the node's key; `trust` says what to do with a bare address.
pub fn transports(identity: &Arc<Identity>, cfg: &Config) -> Result<Transports> {
    let quic = fragnet_quic::QuicTransport::new(
        identity,
        fragnet_quic::Config::default().trust(cfg.trust),
    )
    .context("setting up the QUIC transport")?;
    Ok(Transports::new()
        .with(Arc::new(fragnet_tcp::TcpTransport::default()))
        .with(Arc::new(quic)))
}

/// Timeouts from `limits.*`.
pub fn timeouts(cfg: &Config) -> Timeouts {
    Timeouts {
        io: Duration::from_secs(cfg.limits.io_timeout_secs.max(1)),
        idle: Duration::from_secs(cfg.limits.idle_timeout_secs.max(1)),
        ..Timeouts::default()
    }
}

/// A node's local state: identity and verified store.
pub struct Local {
    /// Where it lives.
    pub data_dir: PathBuf,
    /// Key pair and node id.
    pub identity: Arc<Identity>,
    /// Fragments.
    pub store: Arc<FragmentStore>,
}

/// Opens (or creates) a data directory: the node key and the store, verifying every
/// fragment it holds.
pub async fn open_local(data_dir: PathBuf) -> Result<Local> {
    let dir = data_dir.clone();
    tokio::task::spawn_blocking(move || -> Result<Local> {
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("creating the data directory {}", dir.display()))?;
        let identity = Arc::new(Identity::load_or_create(&dir)?);
        let (store, report) = FragmentStore::open(&dir)
            .with_context(|| format!("opening the store in {}", dir.display()))?;
        if report.videos > 0 {
            info!(
                videos = report.videos,
                complete = report.complete,
                partial = report.partial,
                resumable_chunks = report.partial_chunks,
                "store verified"
            );
        }
        for (path, reason) in &report.set_aside {
            warn!("{reason}; moved to {}", path.display());
        }
        Ok(Local {
            data_dir: dir,
            identity,
            store: Arc::new(store),
        })
    })
    .await
    .expect("opening the store does not panic")
}

/// A fetcher for a node.
pub fn fetcher(cfg: &Config, local: &Local, transports: Transports) -> Fetcher {
    let pool = Arc::new(PeerPool::new(transports, timeouts(cfg)));
    let opts = FetchOptions {
        concurrency: cfg.limits.concurrency,
        per_peer: cfg.limits.per_peer,
        ..FetchOptions::default()
    };
    Fetcher::new(local.store.clone(), pool, opts)
}

/// The display name: configured, else host and port.
pub fn display_name(cfg: &Config, listen: &[PeerAddr]) -> String {
    if let Some(n) = &cfg.name {
        return n.clone();
    }
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "localhost".into());
    match listen.first() {
        Some(a) => format!("{host}:{}", a.port),
        None => host,
    }
}

/// Starts serving the store on every listen address.
pub async fn start_serving(
    cfg: &Config,
    local: &Local,
    transports: &Transports,
    listen: &[PeerAddr],
    cancel: CancellationToken,
) -> Result<(ServeHandle, Arc<ServeContext>)> {
    let ctx = Arc::new(ServeContext {
        store: local.store.clone(),
        node_id: local.identity.node_id(),
        name: display_name(cfg, listen),
        default_video: cfg.default_video,
        upload: cfg.upload_rate().map(|r| Arc::new(RateLimiter::new(r))),
        timeouts: timeouts(cfg),
        stats: ServeStats::default(),
    });
    let limits = ServeLimits {
        max_connections: cfg.limits.max_connections,
        shutdown_grace: Duration::from_secs(cfg.limits.shutdown_grace_secs),
    };
    let handle = serve(transports, listen, ctx.clone(), limits, cancel)
        .await
        .map_err(|e| {
            let hint = match &e {
                fragnet_core::transport::TransportError::Listen { error, .. }
                    if error.kind() == std::io::ErrorKind::AddrInUse =>
                {
                    " (another process uses that port: stop it or choose another with --listen)"
                }
                _ => "",
            };
            anyhow::anyhow!("{e}{hint}")
        })?;
    Ok((handle, ctx))
}

/// Starts the peer's HTTP side when `http_listen` is set: the stream and player pages
/// serve the store, and a player asking for a video not held completely starts its
/// download from the configured peers.
pub async fn start_http(
    cfg: &Config,
    local: &Local,
    downloads: Arc<fragnet_http::Downloads>,
    serve: Arc<ServeContext>,
    cancel: CancellationToken,
) -> Result<Option<fragnet_http::Handle>> {
    let Some(http) = cfg.http()? else {
        return Ok(None);
    };
    let listen = http.listen;
    let state = fragnet_http::HttpState {
        store: local.store.clone(),
        node_id: local.identity.node_id(),
        name: serve.name.clone(),
        serve: Some(serve),
        downloads: Some(downloads),
    };
    let handle = fragnet_http::spawn(http, state, cancel)
        .await
        .map_err(|e| {
            let hint = match &e {
                fragnet_http::HttpError::Bind { error, .. }
                    if error.kind() == std::io::ErrorKind::AddrInUse =>
                {
                    " (another process uses that port: stop it or choose another with --http)"
                }
                _ => "",
            };
            anyhow::anyhow!("{e}{hint}")
        })
        .with_context(|| format!("starting HTTP on {listen}"))?;
    Ok(Some(handle))
}
