//! The service roles: `fragnet manager`, `fragnet broker`, `fragnet subscribe`,
//! `fragnet notify`, and `fragnet run`, which starts every role a profile enables in
//! one process.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, anyhow, bail};
use fragnet_core::{LocalPubSub, PubSub};
use tokio_util::sync::CancellationToken;
use tracing::info;

use crate::assemble::{InProcess, NodeStart, start_node};
use crate::cli::{BrokerArgs, ManagerArgs, NotifyArgs, RunArgs, SubscribeArgs};
use crate::cmd::shutdown_signal;
use crate::config::{self, Config, PubSubKind, Role, Sources};
use fragnet_core::NodeHandle;

/// The manager role's settings from `manager.*`.
pub fn manager_config(cfg: &Config) -> Result<fragnet_manager::ManagerConfig> {
    let m = &cfg.manager;
    let listen =
        tokio_listen(&m.listen).with_context(|| format!("manager.listen = {:?}", m.listen))?;
    Ok(fragnet_manager::ManagerConfig {
        listen,
        data_dir: m.data_dir.clone(),
        ttl_secs: m.ttl_secs,
        token: cfg.manager_token()?,
        token_file: None,
        limits: m.limits.clone(),
        registry: m.registry,
        nats: match m.registry {
            fragnet_manager::ManagerBackend::Nats => {
                cfg.nats_config("manager.registry = \"nats\"")?
            }
            fragnet_manager::ManagerBackend::Memory => fragnet_broker::NatsConfig::default(),
        },
        nats_buckets: cfg.nats.buckets.clone(),
        nats_replicas: cfg.nats.replicas,
    })
}

/// The broker role's settings from `broker.*`.
pub fn broker_config(cfg: &Config) -> Result<fragnet_broker::BrokerConfig> {
    let b = &cfg.broker;
    let token = cfg
        .broker_token()?
        .map(|t| fragnet_broker::AuthToken::new(&t).map_err(|e| anyhow!("broker token: {e}")))
        .transpose()?;
    Ok(fragnet_broker::BrokerConfig {
        listen: b.listen.clone(),
        token,
        token_file: None,
        limits: b.limits.clone(),
    })
}

/// `5001` or `HOST:PORT` as a socket address.
fn tokio_listen(s: &str) -> Result<std::net::SocketAddr> {
    if let Ok(port) = s.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([0, 0, 0, 0], port)));
    }
    s.parse()
        .map_err(|_| anyhow!("expected PORT or IP:PORT, got {s:?}"))
}

/// Starts the manager role.
pub async fn start_manager(
    cfg: &Config,
    cancel: CancellationToken,
) -> Result<fragnet_manager::ManagerHandle> {
    let mc = manager_config(cfg)?;
    let listen = mc.listen;
    let h = fragnet_manager::spawn(mc, cancel).await.map_err(|e| {
        let hint = if e.to_string().contains("in use") {
            " (another process uses that port: stop it or set manager.listen)"
        } else {
            ""
        };
        anyhow!("starting the manager on {listen}: {e}{hint}")
    })?;
    let shown = h.local_addr().to_string().replace("0.0.0.0", "localhost");
    println!(
        "[MANAGER] REST API on http://{shown} — Swagger UI at http://{shown}/apidocs, fragments at http://{shown}/fragments"
    );
    Ok(h)
}

/// Starts the broker role.
pub async fn start_broker(cfg: &Config, cancel: CancellationToken) -> Result<BrokerRole> {
    let bc = broker_config(cfg)?;
    let listen = bc.listen.clone();
    let h = fragnet_broker::spawn(bc, cancel.clone())
        .await
        .map_err(|e| anyhow!("starting the broker on {listen}: {e}"))?;
    println!(
        "[BROKER] Listening on {} (SUB:<topic>, PUB:<topic>:<message>, PING)",
        h.local_addr()
    );
    let metrics = match &cfg.broker.metrics_listen {
        None => None,
        Some(m) => {
            let addr = crate::config::http_addr(m)
                .with_context(|| format!("in broker.metrics_listen = {m:?}"))?;
            let registry = fragnet_core::metrics::registry(vec![Box::new(h.collector())]);
            let health = serde_json::json!({"status": "ok", "service": "broker"});
            let started = async {
                let listener = fragnet_http::admin::bind(addr).await?;
                fragnet_http::admin::spawn(
                    listener,
                    fragnet_http::admin::AdminConfig::default(),
                    registry,
                    health,
                    cancel,
                )
            };
            let admin = started
                .await
                .map_err(|e| anyhow!("starting the broker's metrics listener: {e}"))?;
            println!("[BROKER] Metrics on http://{}/metrics", admin.local_addr());
            Some(admin)
        }
    };
    Ok(BrokerRole { broker: h, metrics })
}

/// The broker role: the broker and, with `broker.metrics_listen`, its metrics listener.
#[derive(Debug)]
pub struct BrokerRole {
    broker: fragnet_broker::BrokerHandle,
    metrics: Option<fragnet_http::Handle>,
}

impl BrokerRole {
    /// The broker's address.
    pub fn local_addr(&self) -> std::net::SocketAddr {
        self.broker.local_addr()
    }

    /// Stops the metrics listener, then the broker.
    pub async fn shutdown(self) {
        if let Some(m) = self.metrics {
            m.shutdown().await;
        }
        self.broker.shutdown().await;
    }
}

/// `fragnet manager`.
pub async fn manager(sources: &Sources, a: ManagerArgs) -> Result<()> {
    let cfg = config::load(sources, &a.overrides())?;
    let cancel = CancellationToken::new();
    let h = start_manager(&cfg, cancel.clone()).await?;
    shutdown_signal().await;
    info!("stopping the manager");
    h.shutdown().await;
    Ok(())
}

/// `fragnet broker`.
pub async fn broker(sources: &Sources, a: BrokerArgs) -> Result<()> {
    let cfg = config::load(sources, &a.overrides())?;
    let cancel = CancellationToken::new();
    let h = start_broker(&cfg, cancel.clone()).await?;
    shutdown_signal().await;
    info!("stopping the broker");
    h.shutdown().await;
    Ok(())
}

/// The pub/sub a client command talks to: `broker.addr` (default localhost:5555) or
/// NATS.
async fn client_pubsub(cfg: &mut Config) -> Result<Arc<dyn PubSub>> {
    if cfg.pubsub == PubSubKind::Broker && cfg.broker.addr.is_none() {
        cfg.broker.addr = Some("localhost:5555".into());
    }
    if matches!(cfg.pubsub, PubSubKind::Local | PubSubKind::None) {
        bail!(
            "pubsub = \"{}\" has no server to talk to; use --broker ADDR or --nats URL",
            cfg.pubsub
        );
    }
    crate::assemble::pubsub(cfg, &InProcess::default())
        .await?
        .ok_or_else(|| anyhow!("no pub/sub configured"))
}

/// `fragnet subscribe TOPIC`: prints `[fragments] fragment_5.bin` per message.
pub async fn subscribe(sources: &Sources, a: SubscribeArgs) -> Result<()> {
    let mut cfg = config::load(sources, &a.overrides())?;
    let ps = client_pubsub(&mut cfg).await?;
    let cancel = CancellationToken::new();
    let stop = cancel.clone();
    tokio::spawn(async move {
        shutdown_signal().await;
        stop.cancel();
    });
    let format = if a.json {
        fragnet_broker::OutputFormat::Json
    } else {
        fragnet_broker::OutputFormat::Text
    };
    let topic = a.topic.clone().unwrap_or_else(|| cfg.topic.clone());
    let mut out = std::io::stdout();
    fragnet_broker::subscribe(ps.as_ref(), &topic, format, &mut out, &cancel).await?;
    Ok(())
}

/// `fragnet notify MESSAGE`: succeeds only once the broker took the message.
pub async fn notify(sources: &Sources, a: NotifyArgs) -> Result<()> {
    let mut cfg = config::load(sources, &a.overrides())?;
    let ps = client_pubsub(&mut cfg).await?;
    let topic = a.topic.clone().unwrap_or_else(|| cfg.topic.clone());
    fragnet_broker::notify(
        ps.as_ref(),
        &topic,
        &a.message,
        Duration::from_secs(a.timeout.max(1)),
    )
    .await?;
    Ok(())
}

/// Everything `fragnet run` started.
pub struct Roles {
    /// The manager, if enabled.
    pub manager: Option<fragnet_manager::ManagerHandle>,
    /// The broker, if enabled.
    pub broker: Option<BrokerRole>,
    /// The peer, if enabled.
    pub peer: Option<NodeHandle>,
}

impl Roles {
    /// Starts the roles `cfg.roles` names; peers in the same process use the manager's
    /// registry and an in-process bus when no endpoint is configured.
    pub async fn start(
        cfg: &Config,
        seed: Option<crate::assemble::Seed>,
        cancel: CancellationToken,
    ) -> Result<Roles> {
        let has = |r: Role| cfg.roles.contains(&r);
        let manager = if has(Role::Manager) {
            Some(start_manager(cfg, cancel.clone()).await?)
        } else {
            None
        };
        let broker = if has(Role::Broker) {
            Some(start_broker(cfg, cancel.clone()).await?)
        } else {
            None
        };
        let mut cfg = cfg.clone();
        if let Some(b) = &broker
            && cfg.broker.addr.is_none()
            && cfg.pubsub == PubSubKind::Broker
        {
            cfg.broker.addr = Some(b.local_addr().to_string().replace("0.0.0.0", "127.0.0.1"));
        }
        let here = InProcess {
            registry: manager.as_ref().map(|m| m.plugin()),
            pubsub: Some(Arc::new(LocalPubSub::new(1024))),
        };
        let peer = if has(Role::Peer) {
            Some(
                start_node(
                    &cfg,
                    NodeStart {
                        seed,
                        here,
                        serve: true,
                        default_data_dir: None,
                    },
                    &cancel,
                )
                .await?
                .node,
            )
        } else {
            None
        };
        if manager.is_none() && broker.is_none() && peer.is_none() {
            bail!("no role enabled: set roles = [\"peer\", \"manager\", \"broker\"] (any of them)");
        }
        Ok(Roles {
            manager,
            broker,
            peer,
        })
    }

    /// Stops peers first (they withdraw from the registry), then broker and manager.
    pub async fn shutdown(self) {
        if let Some(p) = self.peer {
            p.shutdown().await;
        }
        if let Some(b) = self.broker {
            b.shutdown().await;
        }
        if let Some(m) = self.manager {
            m.shutdown().await;
        }
    }
}

/// `fragnet run --profile NAME`: every role the profile enables, in one process.
pub async fn run(sources: &Sources, a: RunArgs) -> Result<()> {
    let cfg = config::load(sources, &a.overrides())?;
    let seed = a.seed.clone().map(|d| (d, None));
    let cancel = CancellationToken::new();
    let roles = Roles::start(&cfg, seed, cancel.clone()).await?;
    if let Some(p) = &roles.peer {
        for addr in p.bound() {
            println!("[SERVER] Node listening on {addr}");
        }
        println!(
            "Node {} (\"{}\"), data in {}",
            p.node_id(),
            p.name(),
            p.store().root().display()
        );
        if let Some(url) = p.url() {
            println!("[HTTP] Player on {url}/watch/<video id>");
        }
        // The manager a link names: the configured one, else the one running here, at
        // the host this node advertises.
        let here = roles.manager.as_ref().and_then(|m| {
            let host = p.advertised().first()?.host_port();
            let host = host.rsplit_once(':')?.0.to_string();
            Some(format!("http://{host}:{}", m.local_addr().port()))
        });
        let manager = crate::share::manager_url(&cfg).map(str::to_string).or(here);
        crate::share::print_links(p, manager.as_deref());
    }
    shutdown_signal().await;
    info!("stopping");
    roles.shutdown().await;
    Ok(())
}
