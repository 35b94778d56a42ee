//! `/videos`: registering and reading manifests, and who holds a fragment.

use axum::Json;
use axum::extract::{Path, Request, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use fragnet_core::manifest::ManifestError;
use fragnet_core::registry::{
    DEFAULT_LOCATE, Holders, MAX_LOCATE, MAX_PAGE, VideoInfo, check_manifest,
};
use fragnet_core::{Manifest, VideoId};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::PageParams;
use super::fragments::{DEFAULT_PAGE, page_limit};
use crate::error::{ApiError, ApiResult, ErrorBody, ErrorCode};
use crate::extract::{
    ApiQuery, VideoIdOrPrefix, fragment_index, read_body, registered_video, video_id,
};
use crate::state::{AppState, Backend};

/// One page of videos.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct VideoPage {
    /// Videos in id order.
    pub videos: Vec<VideoInfo>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<VideoId>,
}

/// Options of `POST /videos`.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AddVideoParams {
    /// The video id the client expects; the manager refuses the manifest (422
    /// `id_mismatch`) when its canonical bytes hash to another id.
    id: Option<VideoId>,
}

/// Options of the holder lookup.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct PeersParams {
    /// Most holders to return, 0 to 200 (default 50); 0 returns only the count.
    #[param(minimum = 0, maximum = 200)]
    limit: Option<u32>,
}

/// List the registered videos.
///
/// In id order, with how many live nodes hold each and how many of its fragments are
/// available somewhere; paged with `limit` (1 to 1000, default 100) and `cursor`.
#[utoipa::path(
    get,
    path = "/videos",
    tag = "videos",
    params(PageParams),
    responses(
        (status = 200, description = "A page of videos", body = VideoPage),
        (status = 400, description = "A malformed parameter", body = ErrorBody),
    )
)]
async fn list_videos(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<PageParams>,
) -> ApiResult<Json<VideoPage>> {
    let limit = page_limit(p.limit, DEFAULT_PAGE, MAX_PAGE)?;
    let cursor = p.cursor.as_deref().map(video_id).transpose()?;
    let (videos, next_cursor) = state.registry.videos_page(cursor, limit);
    Ok(Json(VideoPage {
        videos,
        next_cursor,
    }))
}

/// Register a video by its manifest.
///
/// The body is the manifest (`manifest.json` as written by `fragnet split`). The manager
/// validates it, recomputes the video id from its canonical bytes, refuses a mismatch
/// with `?id=`, stores it durably and answers 201 (new) or 200 (already registered).
#[utoipa::path(
    post,
    path = "/videos",
    tag = "videos",
    params(AddVideoParams),
    request_body(content = Manifest, description = "The video's manifest", content_type = "application/json"),
    security(("bearer" = [])),
    responses(
        (status = 201, description = "Registered", body = VideoInfo, headers(("location" = String, description = "/videos/{id}"))),
        (status = 200, description = "Already registered", body = VideoInfo),
        (status = 400, description = "A malformed parameter", body = ErrorBody),
        (status = 401, description = "Missing or wrong token", body = ErrorBody),
        (status = 408, description = "The body did not arrive in time", body = ErrorBody),
        (status = 413, description = "The manifest is larger than the limit", body = ErrorBody),
        (status = 422, description = "Not a valid manifest, or its id is not the one claimed", body = ErrorBody),
        (status = 507, description = "The manager holds as many videos as it may", body = ErrorBody),
    )
)]
async fn add_video(
    State(state): State<AppState>,
    ApiQuery(p): ApiQuery<AddVideoParams>,
    req: Request,
) -> ApiResult<Response> {
    let bytes = read_body(&state, req, state.limits.max_manifest_bytes).await?;
    let manifest = Manifest::from_bytes(&bytes).map_err(|e| match e {
        ManifestError::TooLarge => ApiError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            ErrorCode::PayloadTooLarge,
            e.to_string(),
        ),
        e => ApiError::invalid(e.to_string()),
    })?;
    let id = check_manifest(&manifest, p.id)?;
    let manifests = match &state.backend {
        Backend::Memory { manifests } => manifests.clone(),
        Backend::Nats(nats) => {
            // The bucket is the durable copy; every replica serves it.
            let (_, new) = nats.insert_video(&manifest).await?;
            if new {
                tracing::info!(video = %id, name = %manifest.name, fragments = manifest.fragment_count, "video registered");
            }
            let status = if new {
                StatusCode::CREATED
            } else {
                StatusCode::OK
            };
            let info = state.registry.video(id)?;
            return Ok((
                status,
                [(header::LOCATION, format!("/videos/{id}"))],
                Json(info),
            )
                .into_response());
        }
    };
    let _one_at_a_time = state.video_writes.lock().await;
    if state.registry.has_video(id) {
        return Ok((StatusCode::OK, Json(state.registry.video(id)?)).into_response());
    }
    let max = state.registry.config().max_videos;
    if state.registry.stats().videos as usize >= max {
        return Err(fragnet_core::RegistryError::Full(format!(
            "{max} videos registered (the limit)"
        ))
        .into());
    }
    // Durable first: a 201 means the manifest survives a restart.
    let dir = manifests.clone();
    let m = manifest.clone();
    tokio::task::spawn_blocking(move || dir.save(&m))
        .await
        .map_err(|e| ApiError::internal(format!("saving the manifest: {e}")))?
        .map_err(|e| {
            ApiError::internal(format!(
                "saving the manifest in {}: {e}",
                manifests.path().display()
            ))
        })?;
    if let Err(e) = state.registry.insert_video(&manifest, Some(id)) {
        let _ = manifests.remove(id);
        return Err(e.into());
    }
    tracing::info!(video = %id, name = %manifest.name, fragments = manifest.fragment_count, "video registered");
    let info = state.registry.video(id)?;
    Ok((
        StatusCode::CREATED,
        [(header::LOCATION, format!("/videos/{id}"))],
        Json(info),
    )
        .into_response())
}

/// Get a video's manifest.
///
/// Exactly the canonical bytes the id is the BLAKE3 of, so a client can check it. A
/// unique prefix of the id (at least 8 hex digits) answers for its video; a prefix that
/// matches several is a 409 listing them in `details.matches`.
#[utoipa::path(
    get,
    path = "/videos/{id}",
    tag = "videos",
    params(("id" = VideoIdOrPrefix, Path, description = "The video id, or a unique prefix of it (at least 8 lowercase hex digits, as fragnet prints short ids), which answers for the one video it matches")),
    responses(
        (status = 200, description = "The manifest, in canonical form", body = Manifest),
        (status = 400, description = "A malformed or too short video id", body = ErrorBody),
        (status = 404, description = "No such video", body = ErrorBody),
        (status = 409, description = "A short id that matches several videos", body = ErrorBody),
    )
)]
async fn get_video(State(state): State<AppState>, Path(id): Path<String>) -> ApiResult<Response> {
    let m = state
        .registry
        .video_manifest(registered_video(&state, &id)?)?;
    Ok((
        [(header::CONTENT_TYPE, "application/json")],
        m.canonical_bytes(),
    )
        .into_response())
}

/// Who holds a fragment: a bounded random sample of live holders.
///
/// A different sample each call (default 50, at most 200), so that the load of many
/// fetchers spreads over every holder; `total` says how many there are.
#[utoipa::path(
    get,
    path = "/videos/{id}/fragments/{index}/peers",
    tag = "videos",
    params(
        ("id" = VideoIdOrPrefix, Path, description = "The video id, or a unique prefix of it (at least 8 lowercase hex digits, as fragnet prints short ids), which answers for the one video it matches"),
        ("index" = u32, Path, description = "The fragment index, from 0"),
        PeersParams,
    ),
    responses(
        (status = 200, description = "Holders of the fragment", body = Holders),
        (status = 400, description = "A malformed id, index or limit", body = ErrorBody),
        (status = 404, description = "No such video or fragment", body = ErrorBody),
        (status = 409, description = "A short id that matches several videos", body = ErrorBody),
    )
)]
async fn fragment_peers(
    State(state): State<AppState>,
    Path((id, index)): Path<(String, String)>,
    ApiQuery(p): ApiQuery<PeersParams>,
) -> ApiResult<Response> {
    let video = registered_video(&state, &id)?;
    let index = fragment_index(&index)?;
    let limit = p.limit.map_or(DEFAULT_LOCATE, |l| l as usize);
    if limit > MAX_LOCATE {
        return Err(ApiError::bad_request(format!(
            "limit must be at most {MAX_LOCATE}"
        )));
    }
    // The hot path of every fetch: rendered from pre-encoded node records.
    let body = state.registry.holders_json(video, index, limit)?;
    Ok(([(header::CONTENT_TYPE, "application/json")], body).into_response())
}

/// The `/videos` routes.
pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_videos, add_video))
        .routes(routes!(get_video))
        .routes(routes!(fragment_peers))
}
