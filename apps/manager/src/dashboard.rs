//! The swarm dashboard at `/`: a nodes × fragments grid per video, each node's
//! transport addresses and a link to its player, links to Swagger UI; it updates live
//! from `GET /dashboard/events` (server-sent events carrying the registry's state each
//! time it changes). Plain HTML, CSS and JS compiled into the binary: no CDN, no build.
//!
//! The registry has no change feed, so each event stream looks at it every
//! [`POLL`] and sends a snapshot when it differs from the last one sent: cheap for
//! the in-memory registry, and bounded ([`MAX_NODES`], [`MAX_VIDEOS`]).

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
use fragnet_core::registry::VideoInfo;
use fragnet_core::{FragmentIndex, MemoryRegistry, NodeId, VideoId};
use serde::Serialize;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::state::AppState;

/// How often an event stream looks for changes.
pub const POLL: Duration = Duration::from_millis(500);
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
#[derive(Debug, Serialize, PartialEq)]
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
    pub holdings: BTreeMap<VideoId, Vec<FragmentIndex>>,
}

/// The registry as the dashboard shows it.
#[derive(Debug, Serialize, PartialEq)]
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

/// `/` and `/dashboard/*`.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(page))
        .route("/dashboard/state", get(state))
        .route("/dashboard/events", get(events))
}

async fn page() -> Html<&'static str> {
    Html(PAGE)
}

async fn state(State(s): State<AppState>) -> Response {
    axum::Json(snapshot(&s.registry)).into_response()
}

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
/// from the last one sent.
fn changes(
    s: AppState,
    cancel: CancellationToken,
    permit: tokio::sync::OwnedSemaphorePermit,
) -> impl futures::Stream<Item = Result<Event, Infallible>> {
    let state = (s, String::new(), permit);
    futures::stream::unfold(state, move |(s, last, permit)| {
        let cancel = cancel.clone();
        async move {
            let mut first = last.is_empty();
            loop {
                if !first {
                    tokio::select! {
                        _ = tokio::time::sleep(POLL) => {}
                        _ = cancel.cancelled() => return None,
                    }
                }
                first = false;
                let now =
                    serde_json::to_string(&snapshot(&s.registry)).expect("a snapshot serializes");
                if now != last {
                    let event = Event::default().event("snapshot").data(now.clone());
                    return Some((Ok(event), (s, now, permit)));
                }
            }
        }
    })
}
