//! A whole peer node assembled from configuration: store and identity, listeners on its
//! transports, the HTTP side (stream, player), downloads, and the swarm loops (registry,
//! pub/sub, reconciliation). `fragnet peer`, `fragnet run` and `fragnet demo` all start
//! peers through [`PeerNode::start`].

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use fragnet_core::node::ServeHandle;
use fragnet_core::registry::Registry;
use fragnet_core::serve::ServeContext;
use fragnet_core::{FragmentIndex, PeerAddr, PubSub, Transports};
use fragnet_http::Downloads;
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::assemble::{self, Local};
use crate::config::{Config, PubSubKind, RegistryKind};
use crate::swarm::{Swarm, SwarmHandle, SwarmStats};

/// Registry and pub/sub living in this process (`fragnet run`, `fragnet demo`), used
/// for `registry = "memory"` and `pubsub = "local"`, and when no endpoint is configured.
#[derive(Clone, Default)]
pub struct InProcess {
    /// The manager's registry, when the manager role runs here.
    pub registry: Option<Arc<dyn Registry>>,
    /// The in-process bus.
    pub pubsub: Option<Arc<dyn PubSub>>,
}

/// A running peer.
pub struct PeerNode {
    /// Store and identity.
    pub local: Local,
    /// Dialing.
    pub transports: Transports,
    /// Serving side (stats).
    pub ctx: Arc<ServeContext>,
    /// Bound listen addresses.
    pub bound: Vec<PeerAddr>,
    /// Addresses registered for others.
    pub advertised: Vec<PeerAddr>,
    /// HTTP base URL others can use, if HTTP is on.
    pub http_url: Option<String>,
    /// Downloads (players and the swarm share them).
    pub downloads: Arc<Downloads>,
    /// The registry this node uses, if any.
    pub registry: Option<Arc<dyn Registry>>,
    /// Swarm counters.
    pub swarm_stats: Arc<SwarmStats>,
    serve: ServeHandle,
    http: Option<fragnet_http::Handle>,
    swarm: SwarmHandle,
    cancel: CancellationToken,
}

/// A split directory to import on start, optionally only some fragments.
pub type Seed = (PathBuf, Option<Vec<FragmentIndex>>);

/// The registry plugin the configuration asks for.
pub fn registry(cfg: &Config, here: &InProcess) -> Result<Option<Arc<dyn Registry>>> {
    match cfg.registry {
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
            let url = cfg.nats.url.clone().ok_or_else(|| {
                anyhow!("pubsub = \"nats\" needs nats.url (e.g. nats://127.0.0.1:4222)")
            })?;
            let mut nc = fragnet_broker::NatsConfig::new(url.clone());
            if let Some(t) = cfg.nats_token()? {
                nc.token = Some(
                    fragnet_broker::AuthToken::new(&t).map_err(|e| anyhow!("nats token: {e}"))?,
                );
            }
            let ps = fragnet_broker::NatsPubSub::connect(&nc)
                .await
                .with_context(|| format!("connecting to NATS at {url}"))?;
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

/// Addresses to register: `advertise` entries that are full addresses as given; a bare
/// host applied to every bound address (keeping its real port and scheme); else the
/// bound addresses with a wildcard host replaced by this machine's. QUIC addresses carry
/// the node id, so dialers check they reach this node.
pub async fn advertised(
    cfg: &Config,
    bound: &[PeerAddr],
    node: fragnet_core::NodeId,
) -> Result<Vec<PeerAddr>> {
    let mut out = Vec::new();
    let (full, hosts): (Vec<&String>, Vec<&String>) = cfg
        .advertise
        .iter()
        .partition(|a| a.contains("://") || a.contains(':'));
    for a in full {
        out.push(
            cfg.addr(a)
                .with_context(|| format!("in advertise = {a:?}"))?,
        );
    }
    if out.is_empty() {
        let own = match hosts.first() {
            Some(h) => h.to_string(),
            None => own_host().await,
        };
        for b in bound {
            let wildcard = b.host == "0.0.0.0" || b.host == "::";
            let host = if hosts.is_empty() && !wildcard {
                b.host.clone()
            } else {
                own.clone()
            };
            out.push(PeerAddr { host, ..b.clone() });
        }
    }
    for a in &mut out {
        if a.scheme == "quic" {
            a.node_id = Some(node);
        }
    }
    Ok(out)
}

impl PeerNode {
    /// Opens the store (importing `seed`), binds every listener, starts HTTP if
    /// configured, and joins the swarm.
    pub async fn start(
        cfg: &Config,
        here: &InProcess,
        seed: Option<Seed>,
        cancel: CancellationToken,
    ) -> Result<PeerNode> {
        let listen = cfg.listen_addrs()?;
        let local = assemble::open_local(cfg.data_dir_or_default("peer")).await?;
        info!(node_id = %local.identity.node_id(), data_dir = %local.data_dir.display(), "node identity");
        if let Some((dir, only)) = seed {
            let store = local.store.clone();
            let (video, got) =
                tokio::task::spawn_blocking(move || store.import_dir(&dir, only.as_deref()))
                    .await?
                    .context("importing --seed")?;
            println!(
                "Seeded video {video}: fragments {}",
                crate::cmd::peer::ranges(&got)
            );
        }
        let transports = assemble::transports(&local.identity, cfg)?;
        let cancel = cancel.child_token();
        let (serve, ctx) =
            assemble::start_serving(cfg, &local, &transports, &listen, cancel.clone()).await?;
        let bound = serve.local_addrs().to_vec();
        let advertised = advertised(cfg, &bound, local.identity.node_id()).await?;
        let downloads = Arc::new(Downloads::new(
            assemble::fetcher(cfg, &local, transports.clone()),
            cfg.peer_addrs()?,
            cancel.clone(),
        ));
        let http =
            assemble::start_http(cfg, &local, downloads.clone(), ctx.clone(), cancel.clone())
                .await?;
        let http_url = http.as_ref().map(|h| {
            let port = h.local_addr().port();
            let host = advertised
                .first()
                .map(|a| a.host.clone())
                .unwrap_or_else(|| "127.0.0.1".into());
            let host = if host.contains(':') {
                format!("[{host}]")
            } else {
                host
            };
            format!("http://{host}:{port}")
        });
        let registry = registry(cfg, here)?;
        let pubsub = pubsub(cfg, here).await?;
        let swarm_stats = Arc::new(SwarmStats::default());
        let swarm = Swarm {
            node_id: local.identity.node_id(),
            name: ctx.name.clone(),
            advertised: advertised.clone(),
            http: http_url.clone(),
            store: local.store.clone(),
            downloads: downloads.clone(),
            transports: transports.clone(),
            schemes: transports.schemes(),
            prefer: cfg.transport.as_str().to_string(),
            registry: registry.clone(),
            pubsub,
            topic: cfg.topic.clone(),
            want: cfg.want.clone(),
            static_peers: cfg.peer_addrs()?,
            reconcile: Duration::from_secs(cfg.reconcile_secs),
            stats: swarm_stats.clone(),
        }
        .spawn(cancel.clone());
        Ok(PeerNode {
            local,
            transports,
            ctx,
            bound,
            advertised,
            http_url,
            downloads,
            registry,
            swarm_stats,
            serve,
            http,
            swarm,
            cancel,
        })
    }

    /// The node id.
    pub fn node_id(&self) -> fragnet_core::NodeId {
        self.local.identity.node_id()
    }

    /// Stops in order: withdraw from the registry, stop HTTP, let transfers finish.
    pub async fn shutdown(self) {
        self.swarm.shutdown().await;
        self.cancel.cancel();
        if let Some(h) = self.http {
            h.shutdown().await;
        }
        self.serve.shutdown().await;
    }
}
