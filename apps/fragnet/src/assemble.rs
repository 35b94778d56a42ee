//! Configuration to node: the binary's one assembly path. It opens the identity and
//! store, builds the transport, registry and pub/sub plugins the configuration names,
//! and hands them to core's `Node::builder`, with the HTTP side as a node service.
//! `fragnet peer`, `run`, `demo` and `fetch` all start their node with [`start_node`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use fragnet_core::fetch::FetchOptions;
use fragnet_core::identity::Identity;
use fragnet_core::node::{Advertise, Node, NodeError, NodeHandle, ServeLimits};
use fragnet_core::protocol::Timeouts;
use fragnet_core::registry::Registry;
use fragnet_core::{FragmentIndex, FragmentStore, PeerAddr, PubSub, Transports};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::config::{Config, PubSubKind, RegistryKind};

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

/// Registry and pub/sub living in this process (`fragnet run`, `fragnet demo`), used
/// for `registry = "memory"` and `pubsub = "local"`, and when no endpoint is configured.
#[derive(Clone, Default)]
pub struct InProcess {
    /// The manager's registry, when the manager role runs here.
    pub registry: Option<Arc<dyn Registry>>,
    /// The in-process bus.
    pub pubsub: Option<Arc<dyn PubSub>>,
}

/// The registry plugin the configuration asks for.
pub async fn registry(cfg: &Config, here: &InProcess) -> Result<Option<Arc<dyn Registry>>> {
    match cfg.registry {
        RegistryKind::Nats => {
            let nc = cfg.nats_config("registry = \"nats\"")?;
            let r = fragnet_broker::NatsRegistry::connect(
                &nc,
                fragnet_broker::NatsRegistryConfig {
                    bucket_prefix: cfg.nats.buckets.clone(),
                    ttl_secs: cfg.manager.ttl_secs,
                    replicas: cfg.nats.replicas,
                    max_nodes: cfg.manager.limits.max_nodes,
                    max_videos: cfg.manager.limits.max_videos,
                    ..Default::default()
                },
            )
            .await
            .with_context(|| format!("opening the registry in NATS at {}", nc.url))?;
            Ok(Some(Arc::new(r)))
        }
        RegistryKind::None => Ok(None),
        RegistryKind::Memory => here
            .registry
            .clone()
            .map(Some)
            .ok_or_else(|| anyhow!("registry = \"memory\" needs the manager role in this process (fragnet run with roles = [\"manager\", ...])")),
        RegistryKind::Http => match &cfg.manager.url {
            Some(url) => {
                let t = cfg.manager_token()?;
                let r = fragnet_manager::HttpRegistry::new(url, t).map_err(|e| anyhow!("manager.url {url}: {e}"))?;
                Ok(Some(Arc::new(r)))
            }
            None => Ok(here.registry.clone()),
        },
    }
}

/// The pub/sub plugin the configuration asks for.
pub async fn pubsub(cfg: &Config, here: &InProcess) -> Result<Option<Arc<dyn PubSub>>> {
    match cfg.pubsub {
        PubSubKind::None => Ok(None),
        PubSubKind::Local => here.pubsub.clone().map(Some).ok_or_else(|| {
            anyhow!("pubsub = \"local\" works only inside one process (fragnet run, fragnet demo)")
        }),
        PubSubKind::Nats => {
            let nc = cfg.nats_config("pubsub = \"nats\"")?;
            let ps = fragnet_broker::NatsPubSub::connect(&nc)
                .await
                .with_context(|| format!("connecting to NATS at {}", nc.url))?;
            Ok(Some(Arc::new(ps)))
        }
        PubSubKind::Broker => match &cfg.broker.addr {
            Some(addr) => {
                let mut bc = fragnet_broker::BrokerClientConfig::new(addr.clone());
                if let Some(t) = cfg.broker_token()? {
                    bc = bc.token(
                        fragnet_broker::AuthToken::new(&t)
                            .map_err(|e| anyhow!("broker token: {e}"))?,
                    );
                }
                // No ping here: a broker that is down now is reconnected to later.
                let ps = fragnet_broker::BrokerPubSub::new(&bc)
                    .map_err(|e| anyhow!("broker.addr {addr}: {e}"))?;
                Ok(Some(Arc::new(ps)))
            }
            None => Ok(here.pubsub.clone()),
        },
    }
}

/// This machine's address for others when a listener is bound to all interfaces: the
/// first non-loopback IPv4 address the host name resolves to, else loopback.
async fn own_host() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_default();
    if !host.is_empty()
        && let Ok(addrs) = tokio::net::lookup_host((host.as_str(), 0)).await
    {
        for a in addrs {
            if a.is_ipv4() && !a.ip().is_loopback() {
                return a.ip().to_string();
            }
        }
    }
    "127.0.0.1".into()
}

/// `advertise` as the node builder takes it: full addresses as given; a bare host
/// applied to every bound address; else the bound addresses with a wildcard host
/// replaced by this machine's.
async fn advertise(cfg: &Config, listen: &[PeerAddr]) -> Result<Advertise> {
    let (full, hosts): (Vec<&String>, Vec<&String>) = cfg
        .advertise
        .iter()
        .partition(|a| a.contains("://") || a.contains(':'));
    if !full.is_empty() {
        let addrs = full
            .iter()
            .map(|a| cfg.addr(a).with_context(|| format!("in advertise = {a:?}")))
            .collect::<Result<Vec<_>>>()?;
        return Ok(Advertise::Addrs(addrs));
    }
    if let Some(h) = hosts.first() {
        return Ok(Advertise::Host(h.to_string()));
    }
    let wildcard = if listen.iter().any(|l| l.host == "0.0.0.0" || l.host == "::") {
        own_host().await
    } else {
        "127.0.0.1".into()
    };
    Ok(Advertise::Bound { wildcard })
}

/// A split directory to import on start, optionally only some fragments.
pub type Seed = (PathBuf, Option<Vec<FragmentIndex>>);

/// What [`start_node`] needs besides the configuration.
#[derive(Default)]
pub struct NodeStart {
    /// A split directory to import first.
    pub seed: Option<Seed>,
    /// Plugins living in this process.
    pub here: InProcess,
    /// Listen on `listen` (false: a node that only downloads, as `fragnet fetch`).
    pub serve: bool,
    /// The data directory when `data_dir` is unset (default: one per listen port).
    pub default_data_dir: Option<PathBuf>,
}

/// A started node and where its files are.
pub struct Started {
    /// The node.
    pub node: NodeHandle,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Where its admin listener (`/health`, `/metrics`) is bound, if it has one.
    pub admin: Option<std::net::SocketAddr>,
}

/// Opens the store (importing the seed), builds the plugins the configuration names
/// and starts the node through core's builder: the one way this binary makes a node.
pub async fn start_node(
    cfg: &Config,
    start: NodeStart,
    cancel: &CancellationToken,
) -> Result<Started> {
    let listen = if start.serve {
        cfg.listen_addrs()?
    } else {
        Vec::new()
    };
    let data_dir = match (&cfg.data_dir, start.default_data_dir) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) => d,
        (None, None) => cfg.data_dir_or_default("peer"),
    };
    let local = open_local(data_dir).await?;
    info!(node_id = %local.identity.node_id(), data_dir = %local.data_dir.display(), "node identity");
    let mut seeded = Vec::new();
    if let Some((dir, only)) = start.seed {
        let store = local.store.clone();
        let (video, got) =
            tokio::task::spawn_blocking(move || store.import_dir(&dir, only.as_deref()))
                .await?
                .context("importing --seed")?;
        println!(
            "Seeded video {video}: fragments {}",
            crate::progress::ranges(&got)
        );
        // What a node seeds itself is never evicted.
        seeded.push(video);
    }
    let transports = transports(&local.identity, cfg)?;
    let registry = registry(cfg, &start.here).await?;
    let pubsub = pubsub(cfg, &start.here).await?;
    let mut builder = Node::builder(local.identity.clone(), local.store.clone(), transports)
        .name(display_name(cfg, &listen))
        .listen(listen.clone())
        .advertise(advertise(cfg, &listen).await?)
        .default_video(cfg.default_video)
        .upload_limit(cfg.upload_rate())
        .timeouts(timeouts(cfg))
        .serve_limits(ServeLimits {
            max_connections: cfg.limits.max_connections,
            shutdown_grace: Duration::from_secs(cfg.limits.shutdown_grace_secs),
        })
        .fetch_options(FetchOptions {
            concurrency: cfg.limits.concurrency,
            per_peer: cfg.limits.per_peer,
            ..FetchOptions::default()
        })
        .peers(cfg.peer_addrs()?)
        .registry(registry)
        .pubsub(pubsub, cfg.topic.clone())
        .want(cfg.want.clone())
        .reconcile(Duration::from_secs(cfg.reconcile_secs))
        .upload_slots((cfg.limits.upload_slots > 0).then_some(cfg.limits.upload_slots))
        .super_seed(cfg.super_seed)
        .max_disk(cfg.max_disk()?)
        .pinned(seeded)
        .prefer(cfg.transport.to_string());
    let http = if start.serve { cfg.http()? } else { None };
    if let Some(h) = &http {
        builder = builder.service(fragnet_http::HttpService::new(h.clone()));
    }
    let mut admin = None;
    if start.serve
        && let Some(addr) = cfg.admin_addr()?
    {
        let listener = fragnet_http::admin::bind(addr)
            .await
            .with_context(|| "starting the admin listener (admin_listen)")?;
        admin = listener.local_addr().ok();
        builder = builder.service(fragnet_http::AdminService::new(
            listener,
            fragnet_http::admin::AdminConfig::default(),
        ));
    }
    let node = builder.spawn(cancel).await.map_err(|e| {
        let hint = match &e {
            NodeError::Listen(fragnet_core::transport::TransportError::Listen {
                error, ..
            }) if error.kind() == std::io::ErrorKind::AddrInUse => {
                " (another process uses that port: stop it or choose another with --listen)"
            }
            NodeError::Service(s)
                if matches!(
                    s.downcast_ref::<fragnet_http::HttpError>(),
                    Some(fragnet_http::HttpError::Bind { error, .. })
                        if error.kind() == std::io::ErrorKind::AddrInUse
                ) =>
            {
                " (another process uses that port: stop it or choose another with --http)"
            }
            _ => "",
        };
        match &http {
            Some(h) if matches!(e, NodeError::Service(_)) => {
                anyhow!("starting HTTP on {}: {e}{hint}", h.listen)
            }
            _ => anyhow!("{e}{hint}"),
        }
    })?;
    Ok(Started {
        node,
        data_dir: local.data_dir,
        admin,
    })
}
