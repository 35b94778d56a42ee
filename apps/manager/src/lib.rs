//! fragnet-manager: fragnet's REST manager (the swarm's registry) and its HTTP client.
//!
//! The manager keeps who is in the swarm, how to reach them, which videos exist and who
//! holds which fragment, in a [`fragnet_core::MemoryRegistry`]; it persists manifests in
//! its data directory (node holdings are soft state that heartbeats rebuild). With
//! `registry = "nats"` it keeps nothing of its own: the registry lives in NATS
//! JetStream key-value ([`fragnet_broker::NatsRegistry`]), reads come from its replica
//! there, and any number of managers serve the same answers. Either way it serves
//! the REST API described by [`openapi`], with Swagger UI at `/apidocs` (served from the
//! binary) and the document at `/openapi.json`.
//!
//! - [`spawn`] starts a manager from a [`ManagerConfig`]; the [`ManagerHandle`] tells the
//!   bound address and shuts it down.
//! - [`client::HttpRegistry`] implements [`fragnet_core::Registry`] against a manager,
//!   for peers.
//! - [`api`] holds one module per resource; [`error`] the JSON error shape.
//! - [`dashboard`]: the swarm dashboard at `/`, live over server-sent events.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use fragnet_core::MemoryRegistry;
use fragnet_core::registry::MemoryRegistryConfig;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};
use utoipa_swagger_ui::SwaggerUi;

pub mod api;
mod auth;
pub mod client;
pub mod config;
pub mod dashboard;
pub mod error;
mod extract;
mod metrics;
mod persist;
mod server;
mod state;

pub use client::HttpRegistry;
pub use config::{ManagerBackend, ManagerConfig, ManagerLimits};

use state::{AppState, Backend, Shared};

/// Why the manager could not start.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// A configuration value is not acceptable.
    #[error("manager configuration: {0}")]
    Config(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source} (is another manager or program using the port?)")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// The NATS registry could not be reached or opened.
    #[error("manager registry in NATS: {0}")]
    Nats(String),
    /// The data directory could not be created or read.
    #[error("manager data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// The OpenAPI document of the REST API (what `/openapi.json` serves).
pub fn openapi() -> utoipa::openapi::OpenApi {
    api::api_router().split_for_parts().1
}

/// A running manager.
#[must_use = "dropping the handle does not stop the manager; call shutdown()"]
#[derive(Debug)]
pub struct ManagerHandle {
    addr: SocketAddr,
    registry: Arc<MemoryRegistry>,
    /// The shared registry, with `registry = "nats"`.
    nats: Option<Arc<fragnet_broker::NatsRegistry>>,
    cancel: CancellationToken,
    task: JoinHandle<()>,
}

impl ManagerHandle {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The base URL clients use (`http://127.0.0.1:PORT` when bound to all interfaces).
    pub fn url(&self) -> String {
        let mut a = self.addr;
        if a.ip().is_unspecified() {
            a.set_ip(if a.is_ipv4() {
                [127, 0, 0, 1].into()
            } else {
                std::net::Ipv6Addr::LOCALHOST.into()
            });
        }
        format!("http://{a}")
    }

    /// The registry's state as the manager reads it: the registry itself with
    /// `registry = "memory"`, this manager's replica with `registry = "nats"`.
    pub fn registry(&self) -> Arc<MemoryRegistry> {
        self.registry.clone()
    }

    /// The registry as a plugin, for peers in the same process (`fragnet run`,
    /// `fragnet demo`): writes through it reach every replica.
    pub fn plugin(&self) -> Arc<dyn fragnet_core::Registry> {
        match &self.nats {
            Some(n) => n.clone(),
            None => self.registry.clone(),
        }
    }

    /// Stops accepting, lets in-flight requests finish (up to 5 s), returns.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        let _ = self.task.await;
    }
}

fn router(state: AppState) -> Router {
    let (api, spec) = api::api_router().split_for_parts();
    api.route_layer(axum::middleware::from_fn_with_state(
        state.clone(),
        auth::require_token,
    ))
    .merge(SwaggerUi::new("/apidocs").url("/openapi.json", spec))
    .merge(dashboard::router())
    .fallback(api::not_found)
    .layer(axum::middleware::map_response(api::json_errors))
    .layer(axum::middleware::from_fn_with_state(
        state.clone(),
        metrics::track,
    ))
    .with_state(state)
}

/// Starts a manager: validates the configuration, loads the persisted manifests, binds
/// `config.listen` and serves until `cancel` fires or [`ManagerHandle::shutdown`].
pub async fn spawn(
    config: ManagerConfig,
    cancel: CancellationToken,
) -> Result<ManagerHandle, ManagerError> {
    config.validate()?;
    let ttl = config.ttl()?;
    let request_timeout = config.request_timeout()?;
    let token = config.resolve_token()?;
    let (registry, backend, videos) = match config.registry {
        ManagerBackend::Memory => memory_backend(&config, ttl).await?,
        ManagerBackend::Nats => {
            let nats = fragnet_broker::NatsRegistry::connect(
                &config.nats,
                fragnet_broker::NatsRegistryConfig {
                    bucket_prefix: config.nats_buckets.clone(),
                    ttl_secs: ttl.as_secs_f64(),
                    replicas: config.nats_replicas,
                    max_nodes: config.limits.max_nodes,
                    max_videos: config.limits.max_videos,
                    max_manifest_bytes: config.limits.max_manifest_bytes,
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| ManagerError::Nats(format!("{} ({})", e, config.nats.url)))?;
            let view = nats.view();
            let videos = view.stats().videos as usize;
            (view, Backend::Nats(Arc::new(nats)), videos)
        }
    };
    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| ManagerError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| ManagerError::Bind {
        addr: config.listen,
        source,
    })?;
    let cancel = cancel.child_token();
    let state: AppState = Arc::new(Shared {
        registry: registry.clone(),
        backend,
        video_writes: tokio::sync::Mutex::new(()),
        metrics: metrics::Metrics::default(),
        token,
        limits: config.limits.clone(),
        request_timeout,
        started: Instant::now(),
        dashboard: dashboard::Live::new(cancel.clone()),
    });
    info!(%addr, videos, ttl_secs = ttl.as_secs_f64(), auth = state.token.is_some(), registry = ?config.registry, "manager listening; Swagger UI at /apidocs");
    let nats = match &state.backend {
        Backend::Nats(n) => Some(n.clone()),
        Backend::Memory { .. } => None,
    };
    let task = tokio::spawn(server::serve(
        listener,
        router(state),
        config.limits.max_connections,
        request_timeout,
        cancel.clone(),
    ));
    Ok(ManagerHandle {
        addr,
        registry,
        nats,
        cancel,
        task,
    })
}

/// The in-process registry, with the manifests persisted in the data directory loaded.
async fn memory_backend(
    config: &ManagerConfig,
    ttl: std::time::Duration,
) -> Result<(Arc<MemoryRegistry>, Backend, usize), ManagerError> {
    let data_err = |source| ManagerError::DataDir {
        path: config.data_dir.clone(),
        source,
    };
    let dir = config.data_dir.clone();
    let max_manifest = config.limits.max_manifest_bytes;
    let (manifests, loaded) = tokio::task::spawn_blocking(move || {
        let m = persist::ManifestDir::open(&dir)?;
        let loaded = m.load_all(max_manifest)?;
        Ok::<_, std::io::Error>((m, loaded))
    })
    .await
    .map_err(|e| data_err(std::io::Error::other(e)))?
    .map_err(data_err)?;
    let registry = Arc::new(MemoryRegistry::new(MemoryRegistryConfig {
        ttl,
        max_nodes: config.limits.max_nodes,
        max_videos: config.limits.max_videos,
    }));
    for m in &loaded {
        if let Err(e) = registry.insert_video(m, None) {
            warn!(video = %m.video_id(), error = %e, "persisted manifest not loaded");
        }
    }
    info!(data_dir = %config.data_dir.display(), videos = loaded.len(), "manifests loaded");
    Ok((registry, Backend::Memory { manifests }, loaded.len()))
}
