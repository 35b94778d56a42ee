//! `GET /health` and `GET /metrics`.

use axum::Json;
use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// The manager's health.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Health {
    /// Always `ok` when the manager answers.
    #[schema(example = "ok")]
    pub status: String,
    /// The manager's version.
    pub version: String,
    /// Seconds since start.
    pub uptime_secs: f64,
    /// Live nodes.
    pub nodes: u64,
    /// Registered videos.
    pub videos: u64,
    /// Fragments held, summed over live nodes.
    pub fragments_held: u64,
    /// Node TTL in milliseconds.
    pub ttl_ms: u64,
    /// Whether writes need a bearer token.
    pub auth: bool,
}

/// Liveness and a summary of the registry.
#[utoipa::path(get, path = "/health", tag = "service", responses((status = 200, description = "The manager is up", body = Health)))]
async fn health(State(state): State<AppState>) -> Json<Health> {
    let s = state.registry.stats();
    Json(Health {
        status: "ok".into(),
        version: env!("CARGO_PKG_VERSION").into(),
        uptime_secs: state.started.elapsed().as_secs_f64(),
        nodes: s.nodes,
        videos: s.videos,
        fragments_held: s.fragments_held,
        ttl_ms: state.registry.config().ttl.as_millis() as u64,
        auth: state.token.is_some(),
    })
}

/// Prometheus metrics: nodes, videos, fragments held, requests by route and status.
#[utoipa::path(
    get,
    path = "/metrics",
    tag = "service",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4", body = String, content_type = "text/plain"))
)]
async fn metrics(State(state): State<AppState>) -> impl IntoResponse {
    let text = state.metrics.render(
        state.registry.stats(),
        state.started.elapsed().as_secs_f64(),
    );
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
}

/// The service routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(health))
        .routes(routes!(metrics))
}
