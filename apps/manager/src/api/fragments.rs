//! `GET /fragments`: the original manager's endpoint, now over every video in the swarm.

use axum::extract::State;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use fragnet_core::registry::{FragmentCursor, FragmentPage, FragmentQuery, MAX_PAGE, MAX_SAMPLE};
use fragnet_core::{NodeId, VideoId};
use serde::Deserialize;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::error::{ApiError, ApiResult, ErrorBody};
use crate::extract::ApiQuery;
use crate::state::AppState;

/// A fragment cursor: `<video-id>.<index>`, as returned in `next_cursor`.
pub const FRAGMENT_CURSOR_PATTERN: &str = r"^[0-9a-f]{64}\.(0|[1-9][0-9]{0,8})$";

/// Filters and paging of `GET /fragments`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct FragmentsParams {
    /// Only this video's fragments.
    video: Option<VideoId>,
    /// Only the fragments this node holds.
    node: Option<NodeId>,
    /// Entries per page, 1 to 1000 (default 100).
    #[param(minimum = 1, maximum = 1000)]
    limit: Option<u32>,
    /// Where to resume: the `next_cursor` of the previous page.
    #[param(pattern = r"^[0-9a-f]{64}\.(0|[1-9][0-9]{0,8})$")]
    cursor: Option<String>,
    /// Holders sampled per fragment, 0 to 20 (default 5).
    #[param(minimum = 0, maximum = 20)]
    sample: Option<u32>,
}

/// Default page size of the listings.
pub const DEFAULT_PAGE: u32 = 100;
/// Default holders sampled per fragment.
pub const DEFAULT_SAMPLE: u32 = 5;

/// Checks a `limit` query parameter (400 outside 1..=max).
pub fn page_limit(limit: Option<u32>, default: u32, max: usize) -> Result<usize, ApiError> {
    match limit.unwrap_or(default) {
        0 => Err(ApiError::bad_request("limit must be at least 1")),
        n if n as usize > max => Err(ApiError::bad_request(format!(
            "limit must be at most {max}"
        ))),
        n => Ok(n as usize),
    }
}

/// Every fragment of every video, with its holder count and a sample of holders.
///
/// The seed's `GET /fragments`, extended to a swarm: one entry per (video, fragment), in
/// video id then index order, including fragments nobody holds (holders 0). Filter by
/// `video` or by `node` (only what that node holds); page with `limit` and `cursor`.
#[utoipa::path(
    get,
    path = "/fragments",
    tag = "fragments",
    params(FragmentsParams),
    responses(
        (status = 200, description = "A page of fragments", body = FragmentPage),
        (status = 400, description = "A malformed parameter", body = ErrorBody),
        (status = 404, description = "The video or node filter names nothing registered", body = ErrorBody),
    )
)]
async fn list_fragments(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<FragmentsParams>,
) -> ApiResult<Response> {
    let limit = page_limit(p.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let sample = p.sample.unwrap_or(DEFAULT_SAMPLE) as usize;
    if sample > MAX_SAMPLE {
        return Err(ApiError::bad_request(format!(
            "sample must be at most {MAX_SAMPLE}"
        )));
    }
    let after = p
        .cursor
        .as_deref()
        .map(str::parse::<FragmentCursor>)
        .transpose()
        .map_err(ApiError::bad_request)?;
    let q = FragmentQuery {
        video: p.video,
        node: p.node,
        after,
        limit,
        sample,
    };
    let body = state.registry.fragments_json(&q)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The `/fragments` routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(list_fragments))
}
