//! What a node holds of a video, as JSON and as a live server-sent event stream (the
//! player page's fragment bar): per fragment, per chunk, and which peer each chunk
//! this node downloaded came from (the engine keeps those, bounded:
//! [`fragnet_core::engine::VideoSources`]).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use fragnet_core::engine::VideoSources;
use fragnet_core::store::StoreEvent;
use fragnet_core::{Downloads, FragmentStore, VideoId};
use futures::Stream;
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::error::RecvError;

use crate::App;

/// One fragment's state.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct FragmentProgress {
    /// Fragment index.
    pub index: u32,
    /// Chunks verified here.
    pub verified: u32,
    /// Chunks in the fragment.
    pub total: u32,
    /// Complete and verified.
    pub complete: bool,
    /// Per chunk, in order: -1 not here, 0 here (held before this run, or from a peer
    /// beyond the bound), n ≥ 1 downloaded from `peers[n - 1]` of the video.
    pub chunks: Vec<i32>,
}

/// A chunk that just verified, as the `progress` event carries it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct ChunkProgress {
    /// Its fragment, after the change.
    #[serde(flatten)]
    pub fragment: FragmentProgress,
    /// The chunk that verified (absent for a fragment completed by import).
    pub chunk: Option<u32>,
    /// The peer it came from, when this node downloaded it.
    pub from: Option<String>,
}

/// A video as this node holds it.
#[derive(Debug, Clone, Serialize, utoipa::ToSchema)]
pub struct VideoStatus {
    /// Video id.
    pub video: VideoId,
    /// File name.
    pub name: String,
    /// MIME type.
    pub mime: String,
    /// Size in bytes.
    pub size: u64,
    /// Number of fragments.
    pub fragment_count: u32,
    /// Complete fragments here.
    pub held: u32,
    /// The peers chunks came from (what `chunks` entries n ≥ 1 refer to), at most
    /// [`fragnet_core::engine::MAX_SOURCE_PEERS`].
    pub peers: Vec<String>,
    /// Per fragment.
    pub fragments: Vec<FragmentProgress>,
}

fn fragment(
    store: &FragmentStore,
    sources: Option<&VideoSources>,
    video: VideoId,
    index: u32,
) -> Option<FragmentProgress> {
    let flags = store.verified_chunks(video, index).ok()?;
    let verified = flags.iter().filter(|b| **b).count() as u32;
    let total = flags.len() as u32;
    let chunks = flags
        .iter()
        .enumerate()
        .map(|(c, here)| match (here, sources) {
            (false, _) => -1,
            (true, Some(s)) => s
                .chunks
                .get(&(index, c as u32))
                .copied()
                .flatten()
                .map_or(0, |p| i32::from(p) + 1),
            (true, None) => 0,
        })
        .collect();
    Some(FragmentProgress {
        index,
        verified,
        total,
        complete: store.status(video, index).ok()
            == Some(fragnet_core::store::FragmentStatus::Complete),
        chunks,
    })
}

fn sources_of(downloads: Option<&Arc<Downloads>>, video: VideoId) -> Option<VideoSources> {
    downloads.and_then(|d| d.sources(video))
}

/// The status of a video, if the store has its manifest: per fragment and per chunk,
/// with the peer each chunk came from when `downloads` fetched it.
pub fn status(
    store: &FragmentStore,
    downloads: Option<&Arc<Downloads>>,
    video: VideoId,
) -> Option<VideoStatus> {
    let m = store.manifest(video)?;
    let sources = sources_of(downloads, video);
    let fragments: Vec<FragmentProgress> = (0..m.fragment_count)
        .filter_map(|i| fragment(store, sources.as_ref(), video, i))
        .collect();
    Some(VideoStatus {
        video,
        name: m.name.clone(),
        mime: m.mime.clone(),
        size: m.size,
        fragment_count: m.fragment_count,
        held: fragments.iter().filter(|f| f.complete).count() as u32,
        peers: sources
            .map(|s| s.peers.iter().map(|p| p.to_string()).collect())
            .unwrap_or_default(),
        fragments,
    })
}

fn json_event(name: &str, v: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(v).expect("status serializes"))
}

/// The event stream: `snapshot` (a [`VideoStatus`]) first and after any gap, then
/// `progress` (a [`ChunkProgress`]: the fragment, the chunk and its source peer)
/// whenever a chunk of the video verifies; `removed` when the video leaves the node. For a
/// video whose manifest is not here yet, the snapshot comes once it is; if it has not
/// come within the chunk wait, the stream ends (the browser reconnects by itself), so
/// streams for videos that never come do not hold response slots.
pub(crate) fn sse(
    app: Arc<App>,
    video: VideoId,
    permit: OwnedSemaphorePermit,
) -> Sse<impl Stream<Item = Result<Event, Infallible>>> {
    let store = app.state.store.clone();
    let rx = store.subscribe();
    let initial = status(&store, app.state.downloads.as_ref(), video);
    // Until the manifest is here, how long to wait for it.
    let deadline = initial
        .is_none()
        .then(|| tokio::time::Instant::now() + app.config.chunk_wait);
    let state = (rx, initial, deadline, permit);
    let stream = futures::stream::unfold(state, move |(mut rx, mut pending, deadline, permit)| {
        let (store, app) = (store.clone(), app.clone());
        async move {
            let downloads = app.state.downloads.as_ref();
            if let Some(s) = pending.take() {
                return Some((Ok(json_event("snapshot", &s)), (rx, None, None, permit)));
            }
            let give_up = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            };
            tokio::pin!(give_up);
            loop {
                let ev = tokio::select! {
                    ev = rx.recv() => ev,
                    _ = &mut give_up => return None,
                    _ = app.cancel.cancelled() => return None,
                };
                let out = match ev {
                    Ok(StoreEvent::VideoAdded(v)) if v == video => {
                        status(&store, downloads, video).map(|s| json_event("snapshot", &s))
                    }
                    Ok(StoreEvent::VideoRemoved(v)) if v == video => Some(json_event(
                        "removed",
                        &serde_json::json!({ "video": video }),
                    )),
                    Ok(StoreEvent::ChunkVerified {
                        video: v,
                        index,
                        chunk,
                        from,
                    }) if v == video => {
                        let sources = sources_of(downloads, video);
                        fragment(&store, sources.as_ref(), video, index).map(|f| {
                            let from = from.map(|p| p.to_string());
                            json_event(
                                "progress",
                                &ChunkProgress {
                                    fragment: f,
                                    chunk: Some(chunk),
                                    from,
                                },
                            )
                        })
                    }
                    Ok(StoreEvent::FragmentComplete { video: v, index }) if v == video => {
                        let sources = sources_of(downloads, video);
                        fragment(&store, sources.as_ref(), video, index).map(|f| {
                            json_event(
                                "progress",
                                &ChunkProgress {
                                    fragment: f,
                                    chunk: None,
                                    from: None,
                                },
                            )
                        })
                    }
                    Ok(_) => None,
                    // Missed some: send the whole picture again.
                    Err(RecvError::Lagged(_)) => {
                        status(&store, downloads, video).map(|s| json_event("snapshot", &s))
                    }
                    Err(RecvError::Closed) => return None,
                };
                if let Some(e) = out {
                    return Some((Ok(e), (rx, None, None, permit)));
                }
            }
        }
    });
    Sse::new(stream).keep_alive(KeepAlive::new().interval(Duration::from_secs(15)))
}
