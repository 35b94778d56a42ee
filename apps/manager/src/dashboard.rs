//! The swarm dashboard at `/`: a nodes × fragments grid per video, each node's
//! transport addresses and a link to its player, links to Swagger UI; it updates live
//! from `GET /dashboard/events` (server-sent events carrying the registry's state each
//! time it changes). Plain HTML, CSS and JS compiled into the binary: no CDN, no build.
//!
//! Each event stream follows the registry's change feed
//! ([`fragnet_core::Registry::changes`]: a broadcast in memory; with the NATS registry,
//! fed by the key-value watches), so nothing polls: a change wakes the stream, a burst
//! of changes is taken together ([`COALESCE`]), and a snapshot is sent when it differs
//! from the last one sent. Expiry has no event of its own (it needs no sweeper), so a
//! stream also wakes at the registry's next possible expiry. Snapshots are bounded
//! ([`MAX_NODES`], [`MAX_VIDEOS`]), and so is the number of streams ([`MAX_STREAMS`]);
//! a comment every 15 s keeps idle connections open through proxies.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use fragnet_core::registry::{RegistryChanges, VideoInfo};
use fragnet_core::{FragmentIndex, MemoryRegistry, NodeId, Registry, VideoId};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio::sync::broadcast::error::{RecvError, TryRecvError};
use tokio_util::sync::CancellationToken;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::state::AppState;

/// How long a woken event stream gathers further changes before it sends one snapshot.
pub const COALESCE: Duration = Duration::from_millis(50);
/// Nodes shown (the first, in id order); the page says when there are more.
pub const MAX_NODES: usize = 200;
/// Videos shown (the first, in id order); the page says when there are more.
pub const MAX_VIDEOS: usize = 20;
/// Dashboards streaming at once; more get 503.
pub const MAX_STREAMS: usize = 32;

const PAGE: &str = include_str!("../assets/dashboard.html");

/// What the dashboard's event streams share: the manager's shutdown, and a cap.
#[derive(Debug)]
pub struct Live {
    cancel: CancellationToken,
    permits: Arc<Semaphore>,
}

impl Live {
    /// Streams end when `cancel` fires (the manager stops).
    pub fn new(cancel: CancellationToken) -> Self {
        Live {
            cancel,
            permits: Arc::new(Semaphore::new(MAX_STREAMS)),
        }
    }
}

/// One node as the dashboard shows it.
#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct NodeView {
    /// Node id.
    pub id: NodeId,
    /// Display name.
    pub name: String,
    /// Transport addresses with their schemes.
    pub addrs: Vec<String>,
    /// HTTP base URL (its player), if it serves HTTP.
    pub http: Option<String>,
    /// Fragments held, by video.
    #[schema(value_type = BTreeMap<String, Vec<u32>>)]
    pub holdings: BTreeMap<VideoId, Vec<FragmentIndex>>,
}

/// The registry as the dashboard shows it.
#[derive(Debug, Serialize, PartialEq, utoipa::ToSchema)]
pub struct Snapshot {
    /// Videos (at most [`MAX_VIDEOS`]).
    pub videos: Vec<VideoInfo>,
    /// Live nodes (at most [`MAX_NODES`]).
    pub nodes: Vec<NodeView>,
    /// More videos than shown.
    pub more_videos: bool,
    /// More nodes than shown.
    pub more_nodes: bool,
}

/// The registry's state now.
pub fn snapshot(registry: &MemoryRegistry) -> Snapshot {
    let (videos, next_video) = registry.videos_page(None, MAX_VIDEOS);
    let (nodes, next_node) = registry.nodes_page(None, MAX_NODES);
    let nodes = nodes
        .into_iter()
        .filter_map(|n| {
            // A node can expire between the two reads: leave it out.
            let detail = registry.node(n.id).ok()?;
            Some(NodeView {
                id: n.id,
                name: n.name,
                addrs: n.addrs.iter().map(|a| a.to_string()).collect(),
                http: n.http,
                holdings: detail
                    .holdings
                    .into_iter()
                    .map(|h| (h.video, h.have))
                    .collect(),
            })
        })
        .collect();
    Snapshot {
        videos,
        nodes,
        more_videos: next_video.is_some(),
        more_nodes: next_node.is_some(),
    }
}

/// `/` and `/dashboard/state`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/dashboard/state", get(state))
}

/// `/dashboard/events`, described in the OpenAPI document.
pub fn api_router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(events))
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn state(State(s): State<AppState>) -> Response {
    axum::Json(snapshot(&s.registry)).into_response()
}

/// One event of `GET /dashboard/events` as an SSE client parses it: the event's name
/// and its data, a [`Snapshot`] as JSON text. (Documentation only: the stream is
/// written as text; describing the parsed event, not the snapshot, lets API checkers
/// such as Schemathesis validate each event.)
#[derive(utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SnapshotEvent {
    /// Always `snapshot`.
    #[schema(example = "snapshot", pattern = "^snapshot$")]
    event: String,
    /// A `Snapshot` (see that schema), as JSON text.
    data: String,
}

/// Follow the registry live (server-sent events).
///
/// A `text/event-stream`: first an event `snapshot` whose data is the registry as the
/// dashboard shows it (at most 20 videos and 200 nodes, with their holdings), then
/// another each time the registry changes: a node joins, changes or leaves (or
/// expires), a node announces, a video is registered. The stream follows the
/// registry's change feed (with `registry = "nats"`, the key-value watches), so a
/// change arrives within milliseconds; bursts are sent as one snapshot. A comment line
/// every 15 s keeps the connection open. At most 32 streams at once: more get 503 with
/// `Retry-After`.
#[utoipa::path(
    get,
    path = "/dashboard/events",
    tag = "service",
    responses(
        (status = 200, description = "Events `snapshot`, each with a Snapshot as its data", content_type = "text/event-stream", body = SnapshotEvent),
        (status = 503, description = "Too many streams are open; retry after the Retry-After seconds", body = crate::error::ErrorBody),
    )
)]
async fn events(State(s): State<AppState>) -> Response {
    let Ok(permit) = s.dashboard.permits.clone().try_acquire_owned() else {
        let mut r = (
            StatusCode::SERVICE_UNAVAILABLE,
            "too many dashboards are open; try again shortly",
        )
            .into_response();
        r.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        return r;
    };
    let cancel = s.dashboard.cancel.clone();
    let stream = changes(s, cancel, permit);
    Sse::new(stream)
        .keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
        .into_response()
}

/// The event stream: a `snapshot` now, then one whenever the registry's state differs
/// from the last one sent, woken by the change feed or the next possible expiry.
fn changes(
    s: AppState,
    cancel: CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    // Subscribed before the first snapshot, so that no change falls in between.
    let feed = s
        .registry
        .changes()
        .expect("the in-memory registry has a change feed");
    let state = (s, String::new(), permit, feed);
    futures::stream::unfold(state, move |(s, last, permit, mut feed)| {
        let cancel = cancel.clone();
        async move {
            let mut first = last.is_empty();
            loop {
                if !first && !woken(&s.registry, &mut feed, &cancel).await {
                    return None;
                }
                first = false;
                let now =
                    serde_json::to_string(&snapshot(&s.registry)).expect("a snapshot serializes");
                if now != last {
                    let event = Event::default().event("snapshot").data(now.clone());
                    return Some((Ok(event), (s, now, permit, feed)));
                }
            }
        }
    })
}

/// Waits for a change (then gathers the rest of its burst) or the next possible expiry;
/// false when the manager stops.
async fn woken(
    registry: &MemoryRegistry,
    feed: &mut RegistryChanges,
    cancel: &CancellationToken,
) -> bool {
    let expiry = registry.next_expiry();
    let at_expiry = async {
        match expiry {
            // Just after it: an answer at the deadline itself still includes the node.
            Some(t) => tokio::time::sleep_until(t + Duration::from_millis(1)).await,
            None => std::future::pending().await,
        }
    };
    tokio::select! {
        r = feed.recv() => {
            if matches!(r, Err(RecvError::Closed)) {
                return false;
            }
        }
        _ = at_expiry => return true,
        _ = cancel.cancelled() => return false,
    }
    tokio::select! {
        _ = tokio::time::sleep(COALESCE) => {}
        _ = cancel.cancelled() => return false,
    }
    // Lagging only means a snapshot is due, which comes next anyway.
    while !matches!(
        feed.try_recv(),
        Err(TryRecvError::Empty | TryRecvError::Closed)
    ) {}
    true
}
