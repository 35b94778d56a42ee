//! fragnet-http: a peer's HTTP side, for players and monitoring.
//!
//! - `GET|HEAD /videos/{id}/stream`: the video with `Range` support (single, open-ended
//!   and suffix ranges; 206, 416, 200). Only verified bytes are sent. When the bytes
//!   are not here yet, the node's [`Downloads`] starts (or steers) the video's download
//!   so that the lookahead window ahead of the response's position is fetched first,
//!   and the body goes out chunk by chunk as chunks verify ([`stream`]).
//! - `GET /watch/{id}`: a player page with a fragment bar that fills live from
//!   `GET /videos/{id}/events` (server-sent events, [`events`]).
//! - `GET /videos`, `GET /videos/{id}`: what the node holds, as JSON, per fragment and
//!   per chunk, with the peer each downloaded chunk came from.
//! - `GET /videos/{id}/link`: the share link to the video through this node
//!   (`{"link": "fragnet://…"}`), which the player's "copy link" shows.
//! - `GET|POST /library`, `DELETE /library/{id}`, `PUT|DELETE /library/{id}/pin`: the
//!   node's library ([`library`]): add a video by uploading it, remove, pin. Writes
//!   need the token, or come from loopback when none is set.
//! - `GET /openapi.json` (the API above), Swagger UI at `/apidocs` (from the binary).
//! - `GET /health`, `GET /metrics` (Prometheus text, [`metrics`]).
//!
//! [`admin`] is a smaller server with only `/health` and `/metrics` over any metrics
//! registry: a peer's admin listener (`admin_listen`, without the player) and the
//! broker's (`broker.metrics_listen`).
//!
//! Plain HTML, CSS and JS are compiled into the binary: no CDN, no build step.
//! [`spawn`] binds (port 0 picks one) and serves until cancelled; connections that make
//! no progress for the idle timeout are closed ([`io`]), and concurrent stream and event
//! responses are capped.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, put};
use fragnet_core::discovery::EventStats;
use fragnet_core::fetch::FetchError;
use fragnet_core::serve::ServeContext;
use fragnet_core::{FragmentStore, Manifest, NodeId, VideoId};
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

pub mod admin;
pub mod events;
mod io;
pub mod library;
pub mod metrics;
pub mod range;
mod service;
mod stream;

pub use fragnet_core::engine::{DownloadStats, Downloads};
pub use service::{AdminService, HttpService};

use range::RangeRequest;

/// Default bound of an upload to `POST /library`: 4 GiB.
pub const DEFAULT_MAX_UPLOAD: u64 = 4 << 30;

/// How the HTTP side runs.
#[derive(Debug, Clone)]
pub struct HttpConfig {
    /// Address to bind; port 0 picks a free one.
    pub listen: SocketAddr,
    /// Bytes ahead of a response's position that its video's download fetches first.
    pub lookahead: u64,
    /// How long a response waits for one missing chunk before it gives up.
    pub chunk_wait: Duration,
    /// Stream and event responses served at once; more are refused with 503.
    pub max_responses: usize,
    /// A connection that makes no progress (reading or writing) for this long is closed.
    pub idle_timeout: Duration,
    /// Time in-flight responses get to finish on shutdown.
    pub shutdown_grace: Duration,
    /// Connections open at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// Bearer token for library writes; `None`: writes only from loopback.
    pub library_token: Option<String>,
    /// Largest upload `POST /library` takes, in bytes.
    pub max_upload: u64,
    /// Fragments an uploaded video is split into unless the request says.
    pub fragments: u32,
    /// The manager share links name (`manager.url` of a node that registers over HTTP).
    pub share_manager: Option<String>,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            lookahead: 4 << 20,
            chunk_wait: Duration::from_secs(30),
            max_responses: 64,
            idle_timeout: Duration::from_secs(60),
            shutdown_grace: Duration::from_secs(2),
            max_connections: 1024,
            library_token: None,
            max_upload: DEFAULT_MAX_UPLOAD,
            fragments: fragnet_core::manifest::DEFAULT_FRAGMENTS,
            share_manager: None,
        }
    }
}

/// What the HTTP side serves from.
#[derive(Debug, Clone)]
pub struct HttpState {
    /// The node's store: the only source of bytes.
    pub store: Arc<FragmentStore>,
    /// The node's id.
    pub node_id: NodeId,
    /// Its display name.
    pub name: String,
    /// The peer-serving side, for its counters in `/metrics`.
    pub serve: Option<Arc<ServeContext>>,
    /// Starts downloads when a player asks for bytes not held here; `None` serves only
    /// what the store holds.
    pub downloads: Option<Arc<Downloads>>,
    /// What the node heard on the fragment topic, for `/metrics`.
    pub events: Option<Arc<EventStats>>,
    /// The node's library (add, remove, pin, quota); `None`: no library API.
    pub library: Option<Arc<fragnet_core::library::Library>>,
    /// The node's advertised addresses, for share links (`GET /videos/{id}/link`).
    pub advertised: Vec<fragnet_core::PeerAddr>,
}

/// Why the HTTP side could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    /// The address could not be bound.
    #[error("binding the HTTP listener on {addr}: {error}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        error: std::io::Error,
    },
}

/// Shared by every handler.
pub(crate) struct App {
    pub(crate) config: HttpConfig,
    pub(crate) state: HttpState,
    pub(crate) permits: Arc<Semaphore>,
    pub(crate) metrics: Arc<metrics::HttpMetrics>,
    /// What `/metrics` renders.
    pub(crate) registry: fragnet_core::metrics::Registry,
    pub(crate) cancel: CancellationToken,
}

/// A running HTTP side.
#[must_use = "dropping the handle does not stop the server; call shutdown()"]
#[derive(Debug)]
pub struct Handle {
    addr: SocketAddr,
    cancel: CancellationToken,
    grace: Duration,
    task: JoinHandle<()>,
}

impl Handle {
    /// The address actually bound.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends streaming responses, and waits for connections to close
    /// (up to the grace period).
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        if tokio::time::timeout(self.grace, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

/// Binds `config.listen` and serves until `cancel` fires or the handle shuts down.
pub async fn spawn(
    config: HttpConfig,
    state: HttpState,
    cancel: CancellationToken,
) -> Result<Handle, HttpError> {
    let bind_err = |error| HttpError::Bind {
        addr: config.listen,
        error,
    };
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    let cancel = cancel.child_token();
    let http_metrics: Arc<metrics::HttpMetrics> = Arc::default();
    let registry = fragnet_core::metrics::registry(vec![Box::new(metrics::NodeCollector {
        state: state.clone(),
        http: Some(http_metrics.clone()),
    })]);
    let app = Arc::new(App {
        permits: Arc::new(Semaphore::new(config.max_responses.max(1))),
        config: config.clone(),
        state,
        metrics: http_metrics,
        registry,
        cancel: cancel.clone(),
    });
    let listener = io::TimedListener {
        inner: listener,
        idle: config.idle_timeout,
        connections: Arc::new(Semaphore::new(config.max_connections.max(1))),
    };

    let stop = cancel.clone();
    let task = tokio::spawn(async move {
        let served = axum::serve(
            listener,
            router(app).into_make_service_with_connect_info::<io::ClientAddr>(),
        )
        .with_graceful_shutdown(stop.cancelled_owned())
        .await;
        if let Err(e) = served {
            warn!(error = %e, "HTTP server stopped");
        }
    });
    info!(%addr, "HTTP listening");
    Ok(Handle {
        addr,
        cancel,
        grace: config.shutdown_grace,
        task,
    })
}

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "Library writes need it when the node runs with library.token; without a token \
they are accepted only from loopback. Reads are open.",
            ))
            .build();
        components.add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
}

/// The node's HTTP API (what `/openapi.json` serves).
#[derive(OpenApi)]
#[openapi(
    info(
        title = "fragnet node",
        description = "A fragnet node's HTTP side: what it holds (per fragment and per chunk, with the peer \
each chunk came from), its library (add a video by uploading it, remove, pin) and the stream a player \
plays while the video downloads. The player page is at `/watch/{id}`. Errors are JSON: `{error}`.",
        license(name = "MIT OR Apache-2.0")
    ),
    paths(
        library::list,
        library::add,
        library::remove,
        library::pin,
        library::unpin,
        videos,
        video,
        video_link,
        stream_doc,
        health
    ),
    tags(
        (name = "library", description = "The videos this node keeps: add, remove, pin, disk quota"),
        (name = "videos", description = "What this node holds and streams"),
        (name = "service", description = "Health"),
    ),
    modifiers(&BearerAuth)
)]
struct NodeApi;

/// The node's OpenAPI document.
pub fn openapi() -> utoipa::openapi::OpenApi {
    NodeApi::openapi()
}

fn router(app: Arc<App>) -> Router {
    Router::new()
        .route("/", get(index))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .route("/videos", get(videos))
        .route("/videos/{id}", get(video))
        .route("/videos/{id}/stream", get(stream_video))
        .route("/videos/{id}/events", get(video_events))
        .route("/videos/{id}/link", get(video_link))
        .route("/watch/{id}", get(watch))
        .route(
            "/library",
            get(library::list)
                .post(library::add)
                // The upload streams to disk under its own bound (library.max_upload).
                .layer(axum::extract::DefaultBodyLimit::disable()),
        )
        .route("/library/{id}", axum::routing::delete(library::remove))
        .route(
            "/library/{id}/pin",
            put(library::pin).delete(library::unpin),
        )
        .with_state(app)
        .merge(SwaggerUi::new("/apidocs").url("/openapi.json", openapi()))
}

/// An error answer: a status and a JSON body saying what went wrong.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, axum::Json(json!({ "error": self.1 }))).into_response()
    }
}

fn video_id(s: &str) -> Result<VideoId, ApiError> {
    s.parse().map_err(|_| {
        ApiError(
            StatusCode::BAD_REQUEST,
            format!(
                "'{}' is not a video id (64 lowercase hex characters)",
                s.chars().take(80).collect::<String>().escape_debug()
            ),
        )
    })
}

impl App {
    /// The video's manifest: from the store, else by starting its download (a player
    /// asked for it) with `first` urgent.
    async fn manifest(
        &self,
        video: VideoId,
        first: Option<(u64, u64)>,
    ) -> Result<Arc<Manifest>, ApiError> {
        if let Some(m) = self.state.store.manifest(video) {
            return Ok(m);
        }
        let not_here = || {
            ApiError(
                StatusCode::NOT_FOUND,
                format!("video {video} is not held here and no peer offers it"),
            )
        };
        let Some(d) = &self.state.downloads else {
            return Err(not_here());
        };
        match d.ensure(video, first).await {
            Ok(_) => self.state.store.manifest(video).ok_or_else(not_here),
            Err(FetchError::NoManifest(_) | FetchError::NoVideo(_) | FetchError::NoHolders(_)) => {
                Err(not_here())
            }
            Err(e @ FetchError::NoPeers(_)) => Err(ApiError(
                StatusCode::SERVICE_UNAVAILABLE,
                format!("video {video} is not held here: {e}"),
            )),
            Err(e @ FetchError::NoRoom(_)) => {
                Err(ApiError(StatusCode::INSUFFICIENT_STORAGE, e.to_string()))
            }
            Err(e) => Err(ApiError(StatusCode::BAD_GATEWAY, e.to_string())),
        }
    }
}

/// Whether the node is up, and who it is.
#[utoipa::path(get, path = "/health", tag = "service", responses((status = 200, description = "Up: `{status, node_id, name}`")))]
async fn health(State(app): State<Arc<App>>) -> Response {
    axum::Json(json!({
        "status": "ok",
        "node_id": app.state.node_id,
        "name": app.state.name,
    }))
    .into_response()
}

async fn metrics_text(State(app): State<Arc<App>>) -> Response {
    (
        [(header::CONTENT_TYPE, fragnet_core::metrics::CONTENT_TYPE)],
        fragnet_core::metrics::render(&app.registry),
    )
        .into_response()
}

/// Every video this node holds, per fragment and per chunk, with the peers chunks
/// came from.
#[utoipa::path(get, path = "/videos", tag = "videos", responses((status = 200, description = "Videos held", body = Vec<events::VideoStatus>)))]
async fn videos(State(app): State<Arc<App>>) -> Response {
    let store = &app.state.store;
    let all: Vec<events::VideoStatus> = store
        .videos()
        .into_iter()
        .filter_map(|v| events::status(store, app.state.downloads.as_ref(), v))
        .collect();
    axum::Json(all).into_response()
}

/// One video as this node holds it: per fragment and per chunk (`-1` not here, `0`
/// here, `n` from `peers[n-1]`).
#[utoipa::path(
    get,
    path = "/videos/{id}",
    tag = "videos",
    params(("id" = String, Path, description = "Video id (64 lowercase hex)")),
    responses(
        (status = 200, description = "The video", body = events::VideoStatus),
        (status = 400, description = "Malformed id"),
        (status = 404, description = "Not known here"),
    )
)]
async fn video(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let video = match video_id(&id) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    match events::status(&app.state.store, app.state.downloads.as_ref(), video) {
        Some(s) => axum::Json(s).into_response(),
        None => ApiError(
            StatusCode::NOT_FOUND,
            format!("video {video} is not known here"),
        )
        .into_response(),
    }
}

/// The share link to a video through this node.
///
/// `{"link": "fragnet://<id>?manager=…&peer=…"}` from the node's dialable advertised
/// addresses (QUIC first) and its manager; what the player's "copy link" shows and
/// `fragnet add` prints. `fragnet fetch LINK` and `fragnet watch LINK` take it.
#[utoipa::path(
    get,
    path = "/videos/{id}/link",
    tag = "videos",
    params(("id" = String, Path, description = "Video id (64 lowercase hex)")),
    responses(
        (status = 200, description = "`{\"link\": \"fragnet://…\"}`"),
        (status = 400, description = "Malformed id"),
        (status = 404, description = "This node has no address another machine can dial and no manager"),
    )
)]
async fn video_link(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let video = match video_id(&id) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let link = fragnet_core::Link::for_node(
        video,
        &app.state.advertised,
        app.config.share_manager.as_deref(),
    );
    if !link.has_location() {
        return ApiError(
            StatusCode::NOT_FOUND,
            "this node has no address another machine can dial and no manager; start it with --listen and --advertise HOST".into(),
        )
        .into_response();
    }
    axum::Json(json!({ "link": link.to_string() })).into_response()
}

async fn video_events(State(app): State<Arc<App>>, Path(id): Path<String>) -> Response {
    let video = match video_id(&id) {
        Ok(v) => v,
        Err(e) => return e.into_response(),
    };
    let can_arrive = app
        .state
        .downloads
        .as_ref()
        .is_some_and(|d| d.can_discover());
    if app.state.store.manifest(video).is_none() && !can_arrive {
        return ApiError(
            StatusCode::NOT_FOUND,
            format!("video {video} is not known here"),
        )
        .into_response();
    }
    let Ok(permit) = app.permits.clone().try_acquire_owned() else {
        return busy(&app);
    };
    events::sse(app, video, permit).into_response()
}

fn busy(app: &App) -> Response {
    app.metrics.refused.fetch_add(1, Ordering::Relaxed);
    let mut r = ApiError(
        StatusCode::SERVICE_UNAVAILABLE,
        "too many streams in progress; try again shortly".into(),
    )
    .into_response();
    r.headers_mut()
        .insert(header::RETRY_AFTER, HeaderValue::from_static("2"));
    r
}

/// The video's bytes, with `Range` support (206, 416), from verified bytes only;
/// what is not here yet is fetched first. 507 when it does not fit the node's disk
/// quota (`limits.max_disk`) even after evicting.
#[utoipa::path(
    get,
    path = "/videos/{id}/stream",
    tag = "videos",
    params(
        ("id" = String, Path, description = "Video id (64 lowercase hex)"),
        ("Range" = Option<String>, Header, description = "bytes=START-END, START- or -SUFFIX"),
    ),
    responses(
        (status = 200, description = "The whole video"),
        (status = 206, description = "The range asked for"),
        (status = 404, description = "Not here and no peer offers it"),
        (status = 416, description = "Range past the end"),
        (status = 503, description = "Too many streams, or no peer reachable"),
        (status = 507, description = "Does not fit limits.max_disk"),
    )
)]
#[allow(dead_code)]
async fn stream_doc() {}

async fn stream_video(
    State(app): State<Arc<App>>,
    Path(id): Path<String>,
    method: Method,
    headers: HeaderMap,
) -> Response {
    match stream_response(app, &id, &method, &headers).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn stream_response(
    app: Arc<App>,
    id: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Result<Response, ApiError> {
    app.metrics.stream_requests.fetch_add(1, Ordering::Relaxed);
    let video = video_id(id)?;
    let range_header = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let lookahead = app.config.lookahead.max(1);
    // Before the size is known: the window the player needs first (a suffix waits
    // for the size).
    let first = range::span_hint(range_header)
        .filter(|_| method != Method::HEAD)
        .map(|(first, last)| (first, lookahead.min(last - first + 1)));
    let manifest = app.manifest(video, first).await?;
    if let Some(lib) = &app.state.library {
        lib.touch(video);
    }
    let size = manifest.size;
    let etag = format!("\"{video}\"");
    // If-Range with another validator (or a date: there is no Last-Modified) means the
    // client's copy is not this one: send it whole.
    let if_range_ok = headers
        .get(header::IF_RANGE)
        .is_none_or(|v| v.as_bytes() == etag.as_bytes());
    let request = if if_range_ok {
        range::parse(range_header, size)
    } else {
        RangeRequest::Full
    };
    debug!(video = %video.short(), range = ?range_header, ?request, "stream request");
    let mut h = HeaderMap::new();
    h.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    h.insert(
        header::ETAG,
        HeaderValue::from_str(&etag).expect("hex is a valid header value"),
    );
    let (status, start, end) = match request {
        RangeRequest::Full => (StatusCode::OK, 0, size),
        RangeRequest::Partial { start, end } => {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes {start}-{end}/{size}"))
                    .expect("digits are a valid header value"),
            );
            (StatusCode::PARTIAL_CONTENT, start, end + 1)
        }
        RangeRequest::Unsatisfiable => {
            h.insert(
                header::CONTENT_RANGE,
                HeaderValue::from_str(&format!("bytes */{size}"))
                    .expect("digits are a valid header value"),
            );
            return Ok((StatusCode::RANGE_NOT_SATISFIABLE, h).into_response());
        }
    };
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&manifest.mime)
            .unwrap_or(HeaderValue::from_static("application/octet-stream")),
    );
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(end - start));
    if method == Method::HEAD {
        return Ok((status, h).into_response());
    }

    // Take a response slot before starting anything, so a refusal changes nothing.
    let Ok(permit) = app.permits.clone().try_acquire_owned() else {
        return Ok(busy(&app));
    };
    let store = &app.state.store;
    let complete = store.have(video).len() == manifest.fragment_count as usize;
    let window = (start, lookahead.min(end - start));
    let mut download = None;
    if !complete && let Some(d) = &app.state.downloads {
        match d.ensure(video, Some(window)).await {
            Ok(dl) => download = dl,
            Err(e @ FetchError::NoRoom(_)) => {
                return Err(ApiError(StatusCode::INSUFFICIENT_STORAGE, e.to_string()));
            }
            Err(e) => warn!(video = %video.short(), "cannot download: {e}"),
        }
    }
    let first_here = end > start && first_chunk_here(store, &manifest, video, start);
    if download.is_none() && !complete && !first_here {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            format!(
                "bytes {start}.. of video {video} are not held here and cannot be fetched (no peers)"
            ),
        ));
    }
    app.metrics.streams_active.fetch_add(1, Ordering::Relaxed);
    let body = stream::Body {
        app: app.clone(),
        video,
        manifest,
        pos: start,
        end,
        download,
        at_chunk: None,
        _permit: permit,
    };
    let pieces = futures::stream::unfold(body, |mut b| async move {
        let piece = b.next_piece().await?;
        if let Err(e) = &piece {
            warn!(video = %b.video.short(), pos = b.pos, "stream ended early: {e}");
        }
        Some((piece, b))
    });
    Ok((status, h, axum::body::Body::from_stream(pieces)).into_response())
}

fn first_chunk_here(store: &FragmentStore, m: &Manifest, video: VideoId, pos: u64) -> bool {
    let fi = m.fragments.partition_point(|f| f.offset + f.size <= pos);
    let Some(f) = m.fragments.get(fi) else {
        return false;
    };
    let chunk = ((pos - f.offset) / m.chunk_size as u64) as u32;
    store.has_chunk(video, f.index, chunk)
}

const WATCH_PAGE: &str = include_str!("../assets/watch.html");
const INDEX_PAGE: &str = include_str!("../assets/index.html");

async fn watch(Path(id): Path<String>) -> Response {
    match video_id(&id) {
        // The id is 64 hex characters: safe to put in the page as it is.
        Ok(v) => Html(WATCH_PAGE.replace("{{VIDEO_ID}}", &v.to_string())).into_response(),
        Err(e) => e.into_response(),
    }
}

async fn index(State(app): State<Arc<App>>) -> Response {
    Html(INDEX_PAGE.replace("{{NODE_NAME}}", &html_escape(&app.state.name))).into_response()
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
        .replace('\'', "&#39;")
}
