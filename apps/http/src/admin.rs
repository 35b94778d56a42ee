//! The admin listener: `GET /health` and `GET /metrics` over any metrics registry, and
//! nothing else. A peer runs it on `admin_listen` (its metrics whether or not the player
//! runs), the broker on `broker.metrics_listen`. Few connections, short idle timeout:
//! it is for scrapers and health checks.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use fragnet_core::metrics::{self, Registry};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::{Handle, HttpError, io};

/// How the admin listener runs.
#[derive(Debug, Clone)]
pub struct AdminConfig {
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// A connection that makes no progress for this long is closed.
    pub idle_timeout: Duration,
}

impl Default for AdminConfig {
    /// At most 16 connections, 10 s idle timeout.
    fn default() -> Self {
        AdminConfig {
            max_connections: 16,
            idle_timeout: Duration::from_secs(10),
        }
    }
}

/// Binds the admin listener's address (port 0 picks one), so the caller knows the
/// address before it starts serving.
pub async fn bind(addr: SocketAddr) -> Result<TcpListener, HttpError> {
    TcpListener::bind(addr)
        .await
        .map_err(|error| HttpError::Bind { addr, error })
}

struct Admin {
    registry: Registry,
    health: serde_json::Value,
}

/// Serves `/metrics` (what `registry` collects) and `/health` (`health` as JSON) on
/// `listener` until `cancel`.
pub fn spawn(
    listener: TcpListener,
    config: AdminConfig,
    registry: Registry,
    health: serde_json::Value,
    cancel: CancellationToken,
) -> Result<Handle, HttpError> {
    let addr = listener.local_addr().map_err(|error| HttpError::Bind {
        addr: SocketAddr::from(([0, 0, 0, 0], 0)),
        error,
    })?;
    let cancel = cancel.child_token();
    let listener = io::TimedListener {
        inner: listener,
        idle: config.idle_timeout,
        connections: Arc::new(Semaphore::new(config.max_connections.max(1))),
    };
    let routes = Router::new()
        .route("/health", get(health_json))
        .route("/metrics", get(metrics_text))
        .with_state(Arc::new(Admin { registry, health }));
    let stop = cancel.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(listener, routes)
            .with_graceful_shutdown(stop.cancelled_owned())
            .await;
        if let Err(e) = served {
            warn!(error = %e, "admin listener stopped");
        }
    });
    info!(%addr, "admin listening (/health, /metrics)");
    Ok(Handle {
        addr,
        cancel,
        grace: Duration::from_secs(1),
        task,
    })
}

async fn health_json(State(a): State<Arc<Admin>>) -> Response {
    axum::Json(a.health.clone()).into_response()
}

async fn metrics_text(State(a): State<Arc<Admin>>) -> Response {
    (
        [(header::CONTENT_TYPE, metrics::CONTENT_TYPE)],
        metrics::render(&a.registry),
    )
        .into_response()
}
