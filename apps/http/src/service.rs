//! The HTTP side as a node service: a node built with
//! `Node::builder(..).service(HttpService::new(config))` serves the player and the
//! stream from its own engine, and registers the URL.

use async_trait::async_trait;
use fragnet_core::node::{NodeParts, NodeService, RunningService, ServiceError};
use tokio_util::sync::CancellationToken;

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
    url: String,
}

#[async_trait]
impl NodeService for HttpService {
    async fn start(
        self: Box<Self>,
        node: NodeParts,
        cancel: CancellationToken,
    ) -> Result<Box<dyn RunningService>, ServiceError> {
        let state = HttpState {
            store: node.store.clone(),
            node_id: node.node_id,
            name: node.name.clone(),
            serve: Some(node.serve.clone()),
            downloads: Some(node.engine.clone()),
            advertised: node.advertised.clone(),
        };
        let handle = crate::spawn(self.config, state, cancel).await?;
        let port = handle.local_addr().port();
        let host = if node.host.contains(':') {
            format!("[{}]", node.host)
        } else {
            node.host.clone()
        };
        Ok(Box::new(Running {
            handle,
            url: format!("http://{host}:{port}"),
        }))
    }
}

#[async_trait]
impl RunningService for Running {
    fn url(&self) -> Option<String> {
        Some(self.url.clone())
    }

    async fn shutdown(self: Box<Self>) {
        self.handle.shutdown().await;
    }
}
