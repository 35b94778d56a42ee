//! `/nodes`: registration, heartbeat, listing, deregistration and announcements.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use fragnet_core::NodeId;
use fragnet_core::registry::{
    Announcement, Lease, MAX_PAGE, NodeDetail, NodeInfo, NodeRegistration,
};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::PageParams;
use super::fragments::{DEFAULT_PAGE, page_limit};
use crate::error::{ApiResult, ErrorBody};
use crate::extract::{ApiQuery, JsonBody, node_id};
use crate::state::AppState;

/// One page of nodes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct NodePage {
    /// Live nodes in id order.
    pub nodes: Vec<NodeInfo>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<NodeId>,
}

/// List the live nodes.
///
/// In id order, with their addresses, liveness and how much they hold; paged with
/// `limit` (1 to 1000, default 100) and `cursor`. Expired nodes never appear.
#[utoipa::path(
    get,
    path = "/nodes",
    tag = "nodes",
    params(PageParams),
    responses(
        (status = 200, description = "A page of nodes", body = NodePage),
        (status = 400, description = "A malformed parameter", body = ErrorBody),
    )
)]
async fn list_nodes(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> ApiResult<Json<NodePage>> {
    let limit = page_limit(p.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let cursor = p.cursor.as_deref().map(node_id).transpose()?;
    let (nodes, next_cursor) = state.registry.nodes_page(cursor, limit);
    Ok(Json(NodePage { nodes, next_cursor }))
}

/// Get one node and everything it holds.
#[utoipa::path(
    get,
    path = "/nodes/{id}",
    tag = "nodes",
    params(("id" = NodeId, Path, description = "The node id")),
    responses(
        (status = 200, description = "The node", body = NodeDetail),
        (status = 400, description = "A malformed node id", body = ErrorBody),
        (status = 404, description = "No such live node", body = ErrorBody),
    )
)]
async fn get_node(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<Json<NodeDetail>> {
    Ok(Json(state.registry.node(node_id(&id)?)?))
}

/// Register a node, or heartbeat.
///
/// Registration and heartbeat are the same call: it replaces the node's name and
/// addresses and renews its lease for `ttl_ms`. Heartbeat every `heartbeat_ms`. The
/// answer is 201 with `new: true` when the manager did not know the node (first start,
/// manager restart, expiry): the node should then announce everything it holds.
#[utoipa::path(
    put,
    path = "/nodes/{id}",
    tag = "nodes",
    params(("id" = NodeId, Path, description = "The node id: BLAKE3 of its public key")),
    request_body = NodeRegistration,
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Registered (new to this manager)", body = Lease),
        (status = 200, description = "Lease renewed", body = Lease),
        (status = 400, description = "A malformed node id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit", body = ErrorBody),
        (status = 422, description = "Not a valid registration", body = ErrorBody),
        (status = 507, description = "The manager holds as many nodes as it may", body = ErrorBody),
    )
)]
async fn put_node(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(reg): JsonBody<NodeRegistration>,
) -> ApiResult<Response> {
    let id = node_id(&id)?;
    let lease = state.register(id, &reg).await?;
    if lease.new {
        tracing::info!(node = %id, name = %reg.name, "node registered");
    }
    let status = if lease.new {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(lease)).into_response())
}

/// Deregister a node and drop everything it announced.
#[utoipa::path(
    delete,
    path = "/nodes/{id}",
    tag = "nodes",
    params(("id" = NodeId, Path, description = "The node id")),
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Deregistered"),
        (status = 400, description = "A malformed node id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "No such live node", body = ErrorBody),
    )
)]
async fn delete_node(
    State(state): State<AppState>,
    Path(id): Path<String>,
) -> ApiResult<StatusCode> {
    let id = node_id(&id)?;
    state.deregister(id).await?;
    tracing::info!(node = %id, "node deregistered");
    Ok(StatusCode::NO_CONTENT)
}

/// Announce what a node holds of a video.
///
/// The have-set replaces what the node announced before for that video; an empty
/// `have` withdraws the video. Only complete, verified fragments belong in it.
#[utoipa::path(
    put,
    path = "/nodes/{id}/fragments",
    tag = "nodes",
    params(("id" = NodeId, Path, description = "The node id")),
    request_body = Announcement,
    security(("bearer" = [])),
    responses(
        (status = 204, description = "Recorded"),
        (status = 400, description = "A malformed node id", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 404, description = "The node is not registered (or expired), the video is not, or it has no such fragment", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 413, description = "The body is larger than the limit", body = ErrorBody),
        (status = 422, description = "Not a valid announcement", body = ErrorBody),
    )
)]
async fn put_fragments(
    State(state): State<AppState>,
    Path(id): Path<String>,
    JsonBody(a): JsonBody<Announcement>,
) -> ApiResult<StatusCode> {
    let id = node_id(&id)?;
    state.announce(id, a.video, &a.have).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// The `/nodes` routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_nodes))
        .routes(routes!(get_node, put_node, delete_node))
        .routes(routes!(put_fragments))
}
