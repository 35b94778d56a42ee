//! What a node holds of a video, as JSON and as a live server-sent event stream (the
//! player page's fragment bar).

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::response::sse::{Event, KeepAlive, Sse};
use fragnet_core::store::StoreEvent;
use fragnet_core::{FragmentStore, VideoId};
use futures::Stream;
use serde::Serialize;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::error::RecvError;

use crate::App;

/// One fragment's state.
#[derive(Debug, Clone, Serialize)]
pub struct FragmentProgress {
    /// Fragment index.
    pub index: u32,
    /// Chunks verified here.
    pub verified: u32,
    /// Chunks in the fragment.
    pub total: u32,
    /// Complete and verified.
    pub complete: bool,
}

/// A video as this node holds it.
#[derive(Debug, Clone, Serialize)]
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
    /// Per fragment.
    pub fragments: Vec<FragmentProgress>,
}

fn fragment(store: &FragmentStore, video: VideoId, index: u32) -> Option<FragmentProgress> {
    let flags = store.verified_chunks(video, index).ok()?;
    let verified = flags.iter().filter(|b| **b).count() as u32;
    let total = flags.len() as u32;
    Some(FragmentProgress {
        index,
        verified,
        total,
        complete: store.status(video, index).ok()
            == Some(fragnet_core::store::FragmentStatus::Complete),
    })
}

/// The status of a video, if the store has its manifest.
pub fn status(store: &FragmentStore, video: VideoId) -> Option<VideoStatus> {
    let m = store.manifest(video)?;
    let fragments: Vec<FragmentProgress> = (0..m.fragment_count)
        .filter_map(|i| fragment(store, video, i))
        .collect();
    Some(VideoStatus {
        video,
        name: m.name.clone(),
        mime: m.mime.clone(),
        size: m.size,
        fragment_count: m.fragment_count,
        held: fragments.iter().filter(|f| f.complete).count() as u32,
        fragments,
    })
}

fn json_event(name: &str, v: &impl Serialize) -> Event {
    Event::default()
        .event(name)
        .data(serde_json::to_string(v).expect("status serializes"))
}

/// The event stream: `snapshot` (a [`VideoStatus`]) first and after any gap, then
/// `progress` (a [`FragmentProgress`]) whenever a chunk of the video verifies. For a
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
    let initial = status(&store, video);
    // Until the manifest is here, how long to wait for it.
    let deadline = initial
        .is_none()
        .then(|| tokio::time::Instant::now() + app.config.chunk_wait);
    let state = (rx, initial, deadline, permit);
    let stream = futures::stream::unfold(state, move |(mut rx, mut pending, deadline, permit)| {
        let (store, app) = (store.clone(), app.clone());
        async move {
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
                        status(&store, video).map(|s| json_event("snapshot", &s))
                    }
                    Ok(
                        StoreEvent::ChunkVerified {
                            video: v, index, ..
                        }
                        | StoreEvent::FragmentComplete { video: v, index },
                    ) if v == video => {
                        fragment(&store, video, index).map(|f| json_event("progress", &f))
                    }
                    Ok(_) => None,
                    // Missed some: send the whole picture again.
                    Err(RecvError::Lagged(_)) => {
                        status(&store, video).map(|s| json_event("snapshot", &s))
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
