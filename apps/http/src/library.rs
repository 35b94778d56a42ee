//! The node's library over HTTP: add a video (upload it; the node splits and seeds
//! it), list, remove, pin. Described in the node's OpenAPI document (`/openapi.json`,
//! Swagger UI at `/apidocs`).
//!
//! Writes are guarded: with `library.token` set they need `Authorization: Bearer
//! <token>` from anywhere; without one they are accepted only from loopback
//! (127.0.0.1, ::1), so a node whose HTTP port is reachable on a network never lets
//! strangers add or delete videos by default. Reads are open, like the player's.
//!
//! An upload streams to a staging file under the data directory (never whole in
//! memory), bounded by `library.max_upload`; a body that goes past the bound is
//! refused with 413 and its file deleted.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use fragnet_core::VideoId;
use fragnet_core::library::{LibraryEntry, LibraryError};
use fragnet_core::split::{SplitError, SplitOptions};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::io::AsyncWriteExt;
use tracing::{info, warn};
use utoipa::{IntoParams, ToSchema};

use crate::App;
use crate::io::ClientAddr;

/// An error answer of the library API.
#[derive(Debug, Serialize, ToSchema)]
pub struct LibraryErrorBody {
    /// What went wrong, and what to do.
    pub error: String,
}

pub(crate) struct LibraryApiError(StatusCode, String);

impl IntoResponse for LibraryApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(LibraryErrorBody { error: self.1 })).into_response()
    }
}

type ApiResult<T> = Result<T, LibraryApiError>;

fn err(status: StatusCode, msg: impl Into<String>) -> LibraryApiError {
    LibraryApiError(status, msg.into())
}

/// The library as listed by `GET /library`.
#[derive(Debug, Serialize, ToSchema)]
pub struct LibraryListing {
    /// The disk quota in bytes (`limits.max_disk`); absent: none.
    pub max_disk: Option<u64>,
    /// Bytes counted against the quota now (running downloads at their full size).
    pub used: u64,
    /// Every video here.
    pub videos: Vec<LibraryEntry>,
}

/// What `POST /library` added.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Added {
    /// The video id.
    pub video: VideoId,
    /// Its name.
    pub name: String,
    /// Its size in bytes.
    pub size: u64,
    /// Fragments it was split into.
    pub fragments: u32,
    /// Where to watch it on this node.
    pub player: String,
}

/// How to split an uploaded file.
#[derive(Debug, Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct AddParams {
    /// The file name (becomes the video's name and decides its MIME type), e.g.
    /// `talk.mp4`; no `/`, at most 255 bytes.
    pub name: String,
    /// Fragments to split into (default: the node's `library.fragments`, 10).
    pub fragments: Option<u32>,
    /// Chunk size in bytes (default 1 MiB).
    pub chunk_size: Option<u32>,
}

/// Checks the guard on a write: the token when one is set, else loopback only.
fn guard(app: &App, peer: SocketAddr, headers: &HeaderMap) -> ApiResult<()> {
    let Some(token) = app.config.library_token.as_deref() else {
        if peer.ip().is_loopback() {
            return Ok(());
        }
        return Err(err(
            StatusCode::FORBIDDEN,
            "library writes are accepted only from this machine unless library.token is set \
(then send Authorization: Bearer <token>)",
        ));
    };
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .map(str::trim);
    let bearer = given
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, t)| t.trim());
    match (given, bearer) {
        (_, Some(t)) if same(t.as_bytes(), token.as_bytes()) => Ok(()),
        (None, _) => Err(err(
            StatusCode::UNAUTHORIZED,
            "this node requires Authorization: Bearer <token> on library writes",
        )),
        (Some(_), None) => Err(err(
            StatusCode::UNAUTHORIZED,
            "the Authorization header must be Bearer <token>",
        )),
        (Some(_), Some(_)) => Err(err(StatusCode::UNAUTHORIZED, "wrong token")),
    }
}

/// Compares without an early exit, so the time taken does not tell how much matched.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

fn library(app: &App) -> ApiResult<&Arc<fragnet_core::library::Library>> {
    app.state.library.as_ref().ok_or_else(|| {
        err(
            StatusCode::NOT_FOUND,
            "this HTTP side has no library (it serves a store only)",
        )
    })
}

fn video_id(s: &str) -> ApiResult<VideoId> {
    s.parse().map_err(|_| {
        err(
            StatusCode::BAD_REQUEST,
            format!(
                "'{}' is not a video id (64 lowercase hex characters)",
                s.chars().take(80).collect::<String>().escape_debug()
            ),
        )
    })
}

/// A file name that is only a name: no path, no control characters.
fn file_name(s: &str) -> ApiResult<String> {
    let bad = s.is_empty()
        || s.len() > 255
        || s == "."
        || s == ".."
        || s.starts_with('.')
        || s.contains(['/', '\\'])
        || s.chars().any(char::is_control);
    if bad {
        return Err(err(
            StatusCode::BAD_REQUEST,
            format!(
                "name {:?} is not a plain file name (1 to 255 bytes, no '/', '\\', leading '.' or control characters)",
                s.chars().take(80).collect::<String>()
            ),
        ));
    }
    Ok(s.to_string())
}

fn library_error(e: LibraryError) -> LibraryApiError {
    match e {
        LibraryError::Quota(q) => err(StatusCode::INSUFFICIENT_STORAGE, q.to_string()),
        LibraryError::Unknown(v) => err(
            StatusCode::NOT_FOUND,
            format!("video {v} is not in this node's library"),
        ),
        LibraryError::Split(
            e @ (SplitError::TooSmall { .. }
            | SplitError::BadFragmentCount(_)
            | SplitError::BadChunking(_)),
        ) => err(StatusCode::BAD_REQUEST, e.to_string()),
        e => err(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

/// Lists the videos this node holds, with progress, pins and the disk quota.
#[utoipa::path(
    get,
    path = "/library",
    tag = "library",
    responses((status = 200, description = "The library", body = LibraryListing))
)]
pub(crate) async fn list(State(app): State<Arc<App>>) -> ApiResult<axum::Json<LibraryListing>> {
    let lib = library(&app)?;
    Ok(axum::Json(LibraryListing {
        max_disk: lib.max_disk(),
        used: lib.used(),
        videos: lib.entries(),
    }))
}

/// Adds a video: the request body is the file (streamed to disk, at most
/// `library.max_upload` bytes); the node splits it, pins it and seeds it (registers
/// it with the manager, announces it, publishes its fragment events).
#[utoipa::path(
    post,
    path = "/library",
    tag = "library",
    params(AddParams),
    request_body(content = Vec<u8>, content_type = "application/octet-stream", description = "The video file"),
    responses(
        (status = 201, description = "Added and seeded", body = Added),
        (status = 400, description = "Bad name or split parameters", body = LibraryErrorBody),
        (status = 401, description = "Missing or wrong token", body = LibraryErrorBody),
        (status = 403, description = "No token is set and the request is not from loopback", body = LibraryErrorBody),
        (status = 413, description = "Larger than library.max_upload", body = LibraryErrorBody),
        (status = 507, description = "Does not fit limits.max_disk even after evicting", body = LibraryErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn add(
    State(app): State<Arc<App>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    Query(params): Query<AddParams>,
    headers: HeaderMap,
    body: Body,
) -> ApiResult<(StatusCode, axum::Json<Added>)> {
    let mut data = body.into_data_stream();
    if let Err(e) = guard(&app, peer, &headers) {
        drain(&mut data).await;
        return Err(e);
    }
    let lib = library(&app)?.clone();
    let name = file_name(&params.name)?;
    let max = app.config.max_upload;
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
        && len > max
    {
        drain(&mut data).await;
        return Err(too_large(max));
    }
    let staging = lib.staging().map_err(library_error)?;
    let path = staging.path().join(&name);
    let mut file = tokio::fs::File::create(&path).await.map_err(|e| {
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("creating {}: {e}", path.display()),
        )
    })?;
    let mut received = 0u64;
    while let Some(piece) = data.next().await {
        let piece = piece.map_err(|e| {
            err(
                StatusCode::BAD_REQUEST,
                format!("reading the upload after {received} bytes: {e}"),
            )
        })?;
        received += piece.len() as u64;
        if received > max {
            drain(&mut data).await;
            return Err(too_large(max));
        }
        file.write_all(&piece).await.map_err(|e| {
            err(
                StatusCode::INTERNAL_SERVER_ERROR,
                format!("writing {}: {e}", path.display()),
            )
        })?;
    }
    file.sync_all().await.map_err(|e| {
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("syncing {}: {e}", path.display()),
        )
    })?;
    drop(file);
    let opts = SplitOptions {
        fragments: params.fragments.unwrap_or(app.config.fragments),
        chunk_size: params
            .chunk_size
            .unwrap_or(fragnet_core::manifest::DEFAULT_CHUNK_SIZE),
        force: false,
    };
    let video = lib.add_file(&path, opts).await.map_err(library_error)?;
    drop(staging);
    let m = app.state.store.manifest(video).ok_or_else(|| {
        err(
            StatusCode::INTERNAL_SERVER_ERROR,
            "the video left the store as it was added",
        )
    })?;
    info!(video = %video, %peer, bytes = received, "video added over HTTP");
    Ok((
        StatusCode::CREATED,
        axum::Json(Added {
            video,
            name: m.name.clone(),
            size: m.size,
            fragments: m.fragment_count,
            player: format!("/watch/{video}"),
        }),
    ))
}

/// Reads and drops what is left of a refused upload, up to [`DRAIN_LIMIT`] bytes and
/// [`DRAIN_TIME`]: a client still sending its body when the refusal goes out and the
/// connection closes sees a broken connection instead of the 413 that says why.
/// Larger bodies are cut off (the bound protects the node, not the client's message).
async fn drain(data: &mut axum::body::BodyDataStream) {
    let mut left = DRAIN_LIMIT;
    let _ = tokio::time::timeout(DRAIN_TIME, async {
        while left > 0
            && let Some(Ok(piece)) = data.next().await
        {
            left = left.saturating_sub(piece.len() as u64);
        }
    })
    .await;
}

/// Most bytes of a refused upload read before answering.
const DRAIN_LIMIT: u64 = 4 << 20;
/// Longest time spent reading a refused upload before answering.
const DRAIN_TIME: std::time::Duration = std::time::Duration::from_secs(5);

fn too_large(max: u64) -> LibraryApiError {
    err(
        StatusCode::PAYLOAD_TOO_LARGE,
        format!(
            "the upload is larger than library.max_upload ({}); raise it on the node or split the file with `fragnet split` and seed it",
            fragnet_core::ratelimit::human_bytes(max)
        ),
    )
}

/// Removes a video: withdrawn from the manager and the fragment topic first, its
/// download stopped, then its files deleted.
#[utoipa::path(
    delete,
    path = "/library/{id}",
    tag = "library",
    params(("id" = String, Path, description = "Video id (64 lowercase hex)")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, description = "Malformed id", body = LibraryErrorBody),
        (status = 401, description = "Missing or wrong token", body = LibraryErrorBody),
        (status = 403, description = "No token is set and the request is not from loopback", body = LibraryErrorBody),
        (status = 404, description = "Not here", body = LibraryErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn remove(
    State(app): State<Arc<App>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    guard(&app, peer, &headers)?;
    let video = video_id(&id)?;
    library(&app)?;
    let Some(engine) = &app.state.downloads else {
        return Err(err(StatusCode::NOT_FOUND, "this HTTP side has no engine"));
    };
    engine.remove(video).await.map_err(library_error)?;
    info!(video = %video, %peer, "video removed over HTTP");
    Ok(StatusCode::NO_CONTENT)
}

/// Pins a video: it is never evicted to make room.
#[utoipa::path(
    put,
    path = "/library/{id}/pin",
    tag = "library",
    params(("id" = String, Path, description = "Video id (64 lowercase hex)")),
    responses(
        (status = 204, description = "Pinned"),
        (status = 401, description = "Missing or wrong token", body = LibraryErrorBody),
        (status = 403, description = "No token is set and the request is not from loopback", body = LibraryErrorBody),
        (status = 404, description = "Not here", body = LibraryErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn pin(
    State(app): State<Arc<App>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    set_pin(app, peer, id, headers, true).await
}

/// Unpins a video: it may be evicted again when room is needed.
#[utoipa::path(
    delete,
    path = "/library/{id}/pin",
    tag = "library",
    params(("id" = String, Path, description = "Video id (64 lowercase hex)")),
    responses(
        (status = 204, description = "Unpinned"),
        (status = 401, description = "Missing or wrong token", body = LibraryErrorBody),
        (status = 403, description = "No token is set and the request is not from loopback", body = LibraryErrorBody),
        (status = 404, description = "Not here", body = LibraryErrorBody),
    ),
    security((), ("bearer" = []))
)]
pub(crate) async fn unpin(
    State(app): State<Arc<App>>,
    ConnectInfo(ClientAddr(peer)): ConnectInfo<ClientAddr>,
    Path(id): Path<String>,
    headers: HeaderMap,
) -> ApiResult<StatusCode> {
    set_pin(app, peer, id, headers, false).await
}

async fn set_pin(
    app: Arc<App>,
    peer: SocketAddr,
    id: String,
    headers: HeaderMap,
    on: bool,
) -> ApiResult<StatusCode> {
    guard(&app, peer, &headers)?;
    let video = video_id(&id)?;
    library(&app)?.pin(video, on).map_err(library_error)?;
    if !on {
        warn!(video = %video, "unpinned: it may be evicted when room is needed");
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_plain_file_names() {
        assert!(file_name("talk.mp4").is_ok());
        assert!(file_name("a b (1).webm").is_ok());
        for bad in [
            "", ".", "..", "../x.mp4", "a/b.mp4", ".hidden", "a\\b", "x\n.mp4",
        ] {
            assert!(file_name(bad).is_err(), "{bad:?}");
        }
        assert!(file_name(&"x".repeat(256)).is_err());
    }

    #[test]
    fn token_comparison() {
        assert!(same(b"abc", b"abc"));
        assert!(!same(b"abc", b"abd"));
        assert!(!same(b"abc", b"ab"));
    }
}
