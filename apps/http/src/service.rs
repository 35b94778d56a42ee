//! The HTTP side as a node service: a node built with
//! `Node::builder(..).service(HttpService::new(config))` serves the player and the
//! stream from its own engine, and registers the URL. [`AdminService`] is the admin
//! listener (health and metrics only; its address is not registered).

use async_trait::async_trait;
use fragnet_core::node::{NodeParts, NodeService, RunningService, ServiceError};
use tokio_util::sync::CancellationToken;

use crate::admin::AdminConfig;
use crate::{Handle, HttpConfig, HttpState};

/// The player, stream, health and metrics of a node.
#[derive(Debug, Clone)]
pub struct HttpService {
    config: HttpConfig,
}

impl HttpService {
    /// Serves with `config` (its `listen` may use port 0).
    pub fn new(config: HttpConfig) -> Self {
        HttpService { config }
    }
}

struct Running {
    handle: Handle,
    url: Option<String>,
}

/// A node's admin listener: `/health` and `/metrics` (the node's own metrics, without
/// the player's) on an address of its own, whether or not the player runs.
#[derive(Debug)]
pub struct AdminService {
    listener: tokio::net::TcpListener,
    config: AdminConfig,
}

impl AdminService {
    /// Serves on `listener` (see [`crate::admin::bind`]) with `config`.
    pub fn new(listener: tokio::net::TcpListener, config: AdminConfig) -> Self {
        AdminService { listener, config }
    }
}

/// What the HTTP side (player or admin listener) sees of a running node.
fn state_of(node: &NodeParts) -> HttpState {
    HttpState {
        store: node.store.clone(),
        node_id: node.node_id,
        name: node.name.clone(),
        serve: Some(node.serve.clone()),
        downloads: Some(node.engine.clone()),
        events: node.events.clone(),
        library: Some(node.library.clone()),
        advertised: node.advertised.clone(),
    }
}

#[async_trait]
impl NodeService for AdminService {
    async fn start(
        self: Box<Self>,
        node: NodeParts,
        cancel: CancellationToken,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        let state = state_of(&node);
        let health = serde_json::json!({
            "status": "ok",
            "node_id": node.node_id,
            "name": node.name,
        });
        let registry =
            fragnet_core::metrics::registry(vec![Box::new(crate::metrics::NodeCollector {
                state,
                http: None,
            })]);
        let handle = crate::admin::spawn(self.listener, self.config, registry, health, cancel)?;
        Ok(Box::new(Running { handle, url: None }))
    }
}

#[async_trait]
impl NodeService for HttpService {
    async fn start(
        self: Box<Self>,
        node: NodeParts,
        cancel: CancellationToken,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        let state = state_of(&node);
        let handle = crate::spawn(self.config, state, cancel).await?;
        let port = handle.local_addr().port();
        let host = if node.host.contains(':') {
            format!("[{}]", node.host)
        } else {
            node.host.clone()
        };
        Ok(Box::new(Running {
            handle,
            url: Some(format!("http://{host}:{port}")),
        }))
    }
}

#[async_trait]
impl RunningService for Running {
    fn url(&self) -> Option<String> {
        self.url.clone()
    }

    async fn shutdown(self: Box<Self>) {
        self.handle.shutdown().await;
    }
}
