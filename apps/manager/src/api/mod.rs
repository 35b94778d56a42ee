//! The REST API: one module per resource, each with `router() -> OpenApiRouter<AppState>`;
//! the OpenAPI document is generated from the handlers' `#[utoipa::path]` attributes and
//! the types' `ToSchema`, so the spec and the code cannot drift apart.

use axum::body::Body;
use axum::http::{HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{IntoParams, Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::error::{ApiError, ErrorBody, ErrorCode};
use crate::state::AppState;

pub mod fragments;
pub mod health;
pub mod nodes;
pub mod videos;

/// Paging of the `/videos` and `/nodes` listings.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Entries per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u32>,
    /// Where to resume: the `next_cursor` of the previous page (an id).
    #[param(pattern = "^[0-9a-f]{64}$")]
    pub cursor: Option<String>,
}

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("Required on writes (PUT, POST, DELETE) when the manager runs with a token; reads are open."))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "fragnet manager",
        description = "The registry of a fragnet swarm: which nodes are up and how to reach them, which videos exist \
(their manifests), and who holds which fragment. Nodes register and heartbeat with `PUT /nodes/{id}`, announce \
what they hold with `PUT /nodes/{id}/fragments`, and find holders with \
`GET /videos/{id}/fragments/{index}/peers`. Errors are JSON: `{status, code, message}`.",
        license(name = "MIT OR Apache-2.0")
    ),
    tags(
        (name = "fragments", description = "Who holds what, over every video"),
        (name = "videos", description = "Manifests and per-fragment holders"),
        (name = "nodes", description = "Registration, heartbeat and announcements"),
        (name = "service", description = "Health and metrics"),
    ),
    components(schemas(ErrorBody, ErrorCode, crate::extract::VideoIdOrPrefix, crate::dashboard::Snapshot)),
    modifiers(&BearerAuth)
)]
struct ApiDoc;

/// Every REST route with its OpenAPI description.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(fragments::router())
        .merge(videos::router())
        .merge(nodes::router())
        .merge(health::router())
        .merge(crate::dashboard::api_router())
}

/// 404 for any path that is not a route.
pub async fn not_found(method: Method, uri: Uri) -> ApiError {
    let path: String = uri.path().chars().take(200).collect();
    ApiError::new(
        StatusCode::NOT_FOUND,
        ErrorCode::NotFound,
        format!("no route for {method} {path}; the API is described at /openapi.json and /apidocs"),
    )
}

/// Gives every error the API's JSON shape, including those made outside the handlers
/// (axum's rejections, 405), keeping their headers (`Allow`).
pub async fn json_errors(resp: Response) -> Response {
    let status = resp.status();
    let is_json = resp
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return resp;
    }
    let (mut parts, body) = resp.into_parts();
    let text = axum::body::to_bytes(body, 4096)
        .await
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let message = if text.trim().is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let err = ApiError::new(status, ApiError::code_for(status), message);
    let json = serde_json::to_vec(&err.body()).unwrap_or_default();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    parts.headers.remove(header::CONTENT_LENGTH);
    Response::from_parts(parts, Body::from(json)).into_response()
}
