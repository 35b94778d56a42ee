//! The serving side of the peer protocol: answers requests from a [`FragmentStore`],
//! only ever from verified bytes, and speaks the seed's bare-name protocol too.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tracing::{debug, info, warn};

use crate::ids::{FragmentIndex, NodeId, VideoId};
use crate::protocol::{
    ErrorCode, Opening, PROTOCOL_VERSION, ProtocolError, Request, Response, ServerSession,
    Timeouts, VideoSummary, describe_remote, parse_bare_name, read_opening,
};
use crate::ratelimit::{RateLimiter, human_bytes};
use crate::store::{FragmentStore, StoreError, fragment_file_name};
use crate::transport::BiStream;

/// Size of the pieces a body is read and written in: bounds memory per stream.
pub const BODY_PIECE: usize = 256 * 1024;

/// Counters of what a node served.
#[derive(Debug, Default)]
pub struct ServeStats {
    /// Body bytes sent.
    pub bytes_sent: AtomicU64,
    /// Requests answered (including errors).
    pub requests: AtomicU64,
    /// Requests refused with an error frame.
    pub errors: AtomicU64,
    /// Seed-style bare requests answered with data.
    pub bare_requests: AtomicU64,
}

/// What the serving side needs.
pub struct ServeContext {
    /// Where fragments come from.
    pub store: Arc<FragmentStore>,
    /// This node's id (sent in the hello).
    pub node_id: NodeId,
    /// This node's display name.
    pub name: String,
    /// The video a bare request refers to, when configured.
    pub default_video: Option<VideoId>,
    /// Shared upload limit, if any.
    pub upload: Option<Arc<RateLimiter>>,
    /// Timeouts.
    pub timeouts: Timeouts,
    /// Who this node tells peers about when they ask (peer exchange); `None` answers
    /// an empty list.
    pub exchange: Option<Arc<dyn PeerDirectory>>,
    /// Chunk transfers served at once; more wait briefly, then are told to ask
    /// elsewhere ([`ErrorCode::Choked`]). `None`: no bound.
    pub upload_slots: Option<Arc<tokio::sync::Semaphore>>,
    /// Super-seeding of videos held whole, when on.
    pub super_seed: Option<Arc<SuperSeed>>,
    /// Counters.
    pub stats: ServeStats,
}

/// How long a request waits for an upload slot before it is told to try elsewhere.
const SLOT_WAIT: std::time::Duration = std::time::Duration::from_secs(1);

/// The chunk `offset..offset+length` of fragment `index` is exactly, if it is one.
fn single_chunk(
    m: &crate::manifest::Manifest,
    index: FragmentIndex,
    offset: u64,
    length: u64,
) -> Option<u32> {
    let cs = m.chunk_size as u64;
    let chunk = (offset / cs) as u32;
    let (o, l) = m.chunk_range(index, chunk)?;
    (o == offset && l == length).then_some(chunk)
}

/// Super-seeding (BitTorrent's): a node holding a whole video sends every chunk once
/// before it sends any twice, so the leechers, not the seeder, spread the copies. Per
/// video: how many copies of each chunk went out (`done`) or are going out.
#[derive(Debug, Default)]
pub struct SuperSeed {
    videos: std::sync::Mutex<std::collections::HashMap<VideoId, SeedCounts>>,
}

#[derive(Debug)]
struct SeedCounts {
    /// Copies started (done + in flight), per chunk.
    started: Vec<u32>,
    /// Copies sent whole, per chunk.
    done: Vec<u32>,
    /// When the last copy of each chunk started.
    last: Vec<Option<std::time::Instant>>,
}

/// A chunk refused for super-seeding may go out again after this long anyway: its
/// earlier recipient may have left, or be the only one the asker cannot reach.
const RESEND_AFTER: std::time::Duration = std::time::Duration::from_secs(30);
/// The same for a player's urgent chunk. Viewers who started together all ask for the
/// same chunks at the same moment: the first asker gets the chunk and the others, told
/// to ask a peer that has it, learn within a moment (watch updates) that it does. A
/// viewer who cannot get it elsewhere gets it from here after this short wait, well
/// inside a player's start-up buffer.
const URGENT_RESEND_AFTER: std::time::Duration = std::time::Duration::from_secs(2);

impl SuperSeed {
    /// A copy of chunk `g` (of `total`) may start: no chunk has fewer whole copies out
    /// than this one has started, or its last copy started `resend` ago. Counts it as
    /// started.
    fn start(&self, video: VideoId, g: u32, total: u32, resend: std::time::Duration) -> bool {
        let mut v = self.videos.lock().unwrap();
        let c = v.entry(video).or_insert_with(|| SeedCounts {
            started: vec![0; total as usize],
            done: vec![0; total as usize],
            last: vec![None; total as usize],
        });
        let i = g as usize;
        let Some(&started) = c.started.get(i) else {
            return true;
        };
        // Once every chunk went out whole, the leechers hold the video between them:
        // a second copy goes out only when the first is old (its holder may be gone).
        let floor = c.done.iter().copied().min().unwrap_or(0).min(1);
        let stale = c.last[i].is_none_or(|t| t.elapsed() >= resend);
        if started > floor && !stale {
            return false;
        }
        c.started[i] += 1;
        c.last[i] = Some(std::time::Instant::now());
        true
    }

    fn end(&self, video: VideoId, g: u32, whole: bool) {
        let mut v = self.videos.lock().unwrap();
        if let Some(c) = v.get_mut(&video)
            && let Some(s) = c.started.get_mut(g as usize)
        {
            if whole {
                c.done[g as usize] += 1;
            } else {
                *s = s.saturating_sub(1);
            }
        }
    }
}

/// What one served request holds: an upload slot, and its super-seeding count (given
/// back if the transfer does not complete).
#[derive(Default)]
struct UploadGrant {
    slot: Option<tokio::sync::OwnedSemaphorePermit>,
    seed: Option<(Arc<SuperSeed>, VideoId, u32)>,
    whole: bool,
}

impl UploadGrant {
    fn sent(&mut self) {
        self.whole = true;
    }
}

impl Drop for UploadGrant {
    fn drop(&mut self) {
        if let Some((seeds, video, g)) = self.seed.take() {
            seeds.end(video, g, self.whole);
        }
    }
}

/// The holders of a video a node has heard of, for peer exchange.
pub trait PeerDirectory: Send + Sync {
    /// At most `limit` addresses of peers that may hold `video`, the best first.
    fn peers_of(&self, video: VideoId, limit: usize) -> Vec<crate::addr::PeerAddr>;
}

impl std::fmt::Debug for ServeContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeContext")
            .field("node_id", &self.node_id)
            .finish_non_exhaustive()
    }
}

/// Why no default video could be chosen.
#[derive(Debug, Clone, thiserror::Error)]
pub enum DefaultVideoError {
    /// Nothing held.
    #[error("this node holds no video yet")]
    None,
    /// Several held and none configured.
    #[error("this node holds several videos; set default_video to one of: {}", .0.iter().map(|v| v.to_string()).collect::<Vec<_>>().join(", "))]
    Ambiguous(Vec<VideoId>),
}

/// The default video: the configured one, else the only one held, else an error that
/// lists the ids.
pub fn default_video(
    configured: Option<VideoId>,
    known: &[VideoId],
) -> Result<VideoId, DefaultVideoError> {
    if let Some(v) = configured {
        return Ok(v);
    }
    match known {
        [] => Err(DefaultVideoError::None),
        [one] => Ok(*one),
        many => Err(DefaultVideoError::Ambiguous(many.to_vec())),
    }
}

fn error_response(e: &StoreError) -> Response {
    let code = match e {
        StoreError::UnknownVideo(_) => ErrorCode::UnknownVideo,
        StoreError::NoSuchFragment { .. } => ErrorCode::NoSuchFragment,
        StoreError::NotAvailable { .. } => ErrorCode::NotAvailable,
        _ => ErrorCode::Internal,
    };
    Response::Error {
        code,
        message: e.to_string(),
    }
}

impl ServeContext {
    /// Serves one stream until the client closes it, an error ends it, or it idles out.
    ///
    /// `stop` ends the stream between requests (shutdown), never in the middle of one.
    pub async fn serve_stream(
        self: &Arc<Self>,
        mut stream: BiStream,
        remote: SocketAddr,
        remote_id: Option<NodeId>,
        stop: &tokio_util::sync::CancellationToken,
    ) {
        let who = describe_remote(remote, remote_id);
        let t = self.timeouts;
        let result = match read_opening(&mut stream.recv, &t).await {
            Ok(Opening::Empty) => Ok(()),
            Ok(Opening::Bare(line)) => self.serve_bare(stream, &line, &who).await,
            Ok(Opening::Hello(version)) => self.serve_session(stream, version, &who, stop).await,
            Err(e) => {
                // Tell a seed-style client why, in one text line, then close.
                let _ = tokio::time::timeout(t.io, async {
                    let _ = stream
                        .send
                        .write_all(format!("ERR: {e}\n").as_bytes())
                        .await;
                    let _ = stream.send.shutdown().await;
                })
                .await;
                Err(e)
            }
        };
        match result {
            Ok(()) => {}
            Err(ProtocolError::Timeout(what)) => {
                debug!(peer = %who, "closed an idle stream: timed out {what}")
            }
            Err(e) => debug!(peer = %who, error = %e, "stream ended with an error"),
        }
    }

    async fn serve_bare(
        &self,
        mut stream: BiStream,
        line: &[u8],
        who: &str,
    ) -> Result<(), ProtocolError> {
        let shown = String::from_utf8_lossy(&line[..line.len().min(64)]).into_owned();
        let answer = match parse_bare_name(line) {
            None => Err(format!(
                "'{}' is not a fragment name; ask for fragment_<i>.bin",
                shown.escape_debug()
            )),
            Some(index) => match default_video(self.default_video, &self.store.videos()) {
                Err(e) => Err(e.to_string()),
                Ok(video) => match self
                    .store
                    .manifest(video)
                    .and_then(|m| m.fragment(index).map(|f| f.size))
                {
                    None => Err(format!(
                        "no fragment '{}' in video {}",
                        fragment_file_name(index),
                        video.short()
                    )),
                    Some(size) => Ok((video, index, size)),
                },
            },
        };
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        match answer {
            Ok((video, index, size)) => {
                if self.store.status(video, index).ok()
                    != Some(crate::store::FragmentStatus::Complete)
                {
                    self.stats.errors.fetch_add(1, Ordering::Relaxed);
                    let msg = format!(
                        "ERR: this node does not hold {} yet\n",
                        fragment_file_name(index)
                    );
                    tokio::time::timeout(self.timeouts.io, stream.send.write_all(msg.as_bytes()))
                        .await
                        .ok();
                    return Ok(());
                }
                self.send_body(&mut stream.send, video, index, 0, size)
                    .await?;
                tokio::time::timeout(self.timeouts.io, stream.send.shutdown())
                    .await
                    .ok();
                self.stats.bare_requests.fetch_add(1, Ordering::Relaxed);
                info!(
                    "[✓] Fragment '{}' sent to {who} ({})",
                    fragment_file_name(index),
                    human_bytes(size)
                );
                Ok(())
            }
            Err(msg) => {
                self.stats.errors.fetch_add(1, Ordering::Relaxed);
                warn!(peer = %who, "refused bare request: {msg}");
                let _ = tokio::time::timeout(self.timeouts.io, async {
                    stream
                        .send
                        .write_all(format!("ERR: {msg}\n").as_bytes())
                        .await?;
                    stream.send.shutdown().await
                })
                .await;
                Ok(())
            }
        }
    }

    /// Streams verified bytes in bounded pieces, paced by the upload limit.
    async fn send_body(
        &self,
        send: &mut crate::transport::SendStream,
        video: VideoId,
        index: FragmentIndex,
        offset: u64,
        length: u64,
    ) -> Result<(), ProtocolError> {
        let mut pos = offset;
        let end = offset + length;
        // Under an upload limit, pieces worth ~50 ms of budget: every response sharing
        // the limit then makes steady progress instead of one waiting out the others'
        // large pieces (and the client's no-progress timeout).
        let piece = match &self.upload {
            Some(rl) => ((rl.rate() / 20) as usize).clamp(4096, BODY_PIECE),
            None => BODY_PIECE,
        };
        while pos < end {
            let n = ((end - pos) as usize).min(piece);
            let piece = self
                .store
                .read(video, index, pos, n)
                .await
                .map_err(|e| ProtocolError::Io(std::io::Error::other(e.to_string())))?;
            if let Some(rl) = &self.upload {
                rl.acquire(n).await;
            }
            tokio::time::timeout(self.timeouts.io, send.write_all(&piece))
                .await
                .map_err(|_| ProtocolError::Timeout("sending data"))??;
            self.stats.bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
            pos += n as u64;
        }
        Ok(())
    }

    async fn serve_session(
        &self,
        stream: BiStream,
        version: u16,
        who: &str,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<(), ProtocolError> {
        let t = self.timeouts;
        let mut s = ServerSession::new(stream);
        if version != PROTOCOL_VERSION {
            let message = format!(
                "protocol version {version} is not supported; this node speaks {PROTOCOL_VERSION}"
            );
            s.send(
                &Response::Error {
                    code: ErrorCode::UnsupportedVersion,
                    message,
                },
                &t,
            )
            .await?;
            return Ok(());
        }
        s.send(
            &Response::Hello {
                version: PROTOCOL_VERSION,
                node_id: self.node_id,
                name: self.name.clone(),
            },
            &t,
        )
        .await?;
        // Bytes sent per fragment on this stream, logged when it ends.
        let mut sent: BTreeMap<(VideoId, FragmentIndex), u64> = BTreeMap::new();
        let result = loop {
            let next = tokio::select! {
                r = s.next_request(&t) => r,
                _ = stop.cancelled() => break Ok(()),
            };
            let req = match next {
                Ok(None) => break Ok(()),
                Ok(Some(r)) => r,
                Err(e) => break Err(e),
            };
            self.stats.requests.fetch_add(1, Ordering::Relaxed);
            let step = match req {
                Err(msg) => {
                    self.refuse(
                        &mut s,
                        ErrorCode::BadRequest,
                        format!("malformed request: {msg}"),
                    )
                    .await
                }
                Ok(Request::Videos) => {
                    let videos = self
                        .store
                        .summary()
                        .into_iter()
                        .map(|(video, m, have)| VideoSummary {
                            video,
                            name: m.name.clone(),
                            fragment_count: m.fragment_count,
                            have,
                        })
                        .collect();
                    s.send(&Response::Videos { videos }, &t).await
                }
                Ok(Request::Have { video }) => match self.store.manifest(video) {
                    None => {
                        self.refuse(
                            &mut s,
                            ErrorCode::UnknownVideo,
                            format!("unknown video {video}"),
                        )
                        .await
                    }
                    Some(_) => {
                        s.send(
                            &Response::Have {
                                video,
                                fragments: self.store.have(video),
                            },
                            &t,
                        )
                        .await
                    }
                },
                Ok(Request::Watch { video }) => {
                    // The stream is the watch's from here on.
                    break self.serve_watch(&mut s, video, stop).await;
                }
                Ok(Request::Peers { video }) => {
                    let peers = self
                        .exchange
                        .as_ref()
                        .map(|d| d.peers_of(video, crate::protocol::MAX_PEX_PEERS))
                        .unwrap_or_default()
                        .into_iter()
                        .map(|a| a.to_string())
                        .collect();
                    s.send(&Response::Peers { video, peers }, &t).await
                }
                Ok(Request::Manifest { video }) => match self.store.manifest(video) {
                    None => {
                        self.refuse(
                            &mut s,
                            ErrorCode::UnknownVideo,
                            format!("unknown video {video}"),
                        )
                        .await
                    }
                    Some(m) => {
                        let body = m.canonical_bytes();
                        match s
                            .send(
                                &Response::Manifest {
                                    length: body.len() as u64,
                                },
                                &t,
                            )
                            .await
                        {
                            Ok(()) => {
                                tokio::time::timeout(t.io, s.writer.get_mut().write_all(&body))
                                    .await
                                    .map_err(|_| ProtocolError::Timeout("sending a manifest"))
                                    .and_then(|r| r.map_err(Into::into))
                            }
                            Err(e) => Err(e),
                        }
                    }
                },
                Ok(Request::Get {
                    video,
                    index,
                    offset,
                    length,
                    urgent,
                }) => {
                    // Check the whole range before promising a body.
                    let check = self.store.check_range(video, index, offset, length);
                    let grant = match check {
                        Err(e) => Err(e),
                        Ok(()) => Ok(self
                            .upload_grant(video, index, offset, length, urgent)
                            .await),
                    };
                    match grant {
                        Err(e) => {
                            self.stats.errors.fetch_add(1, Ordering::Relaxed);
                            s.send(&error_response(&e), &t).await
                        }
                        Ok(Err(why)) => self.refuse(&mut s, ErrorCode::Choked, why).await,
                        Ok(Ok(mut grant)) => match s.send(&Response::Data { length }, &t).await {
                            Ok(()) => {
                                let r = self
                                    .send_body(s.writer.get_mut(), video, index, offset, length)
                                    .await;
                                if r.is_ok() {
                                    grant.sent();
                                    // Log once a whole fragment's worth went to this peer.
                                    let total = sent.entry((video, index)).or_default();
                                    *total += length;
                                    let size = self
                                        .store
                                        .manifest(video)
                                        .and_then(|m| m.fragment(index).map(|f| f.size))
                                        .unwrap_or(u64::MAX);
                                    if *total >= size {
                                        sent.remove(&(video, index));
                                        info!(
                                            "[✓] Fragment '{}' of {} sent to {who} ({})",
                                            fragment_file_name(index),
                                            video.short(),
                                            human_bytes(size)
                                        );
                                    }
                                }
                                r
                            }
                            Err(e) => Err(e),
                        },
                    }
                }
            };
            if let Err(e) = step {
                break Err(e);
            }
        };
        for ((video, index), bytes) in sent {
            info!(
                "[~] Part of fragment '{}' of {} sent to {who} ({})",
                fragment_file_name(index),
                video.short(),
                human_bytes(bytes)
            );
        }
        result
    }

    /// Whether this request may be served now: a free upload slot (waited for a short
    /// while), and, when super-seeding a video held whole, a chunk that has gone out no
    /// more often than every other chunk has arrived somewhere. `Err` says why not.
    async fn upload_grant(
        &self,
        video: VideoId,
        index: FragmentIndex,
        offset: u64,
        length: u64,
        urgent: bool,
    ) -> Result<UploadGrant, String> {
        let mut grant = UploadGrant::default();
        if let Some(seeds) = &self.super_seed
            && let Some(m) = self.store.manifest(video)
            && self.store.have(video).len() == m.fragment_count as usize
            && let Some(chunk) = single_chunk(&m, index, offset, length)
        {
            let map = crate::avail::ChunkMap::of(&m);
            let resend = if urgent {
                URGENT_RESEND_AFTER
            } else {
                RESEND_AFTER
            };
            if let Some(g) = map.global(index, chunk) {
                if !seeds.start(video, g, map.total(), resend) {
                    return Err(
                        "super-seeding: this chunk went out already; ask a peer that has it".into(),
                    );
                }
                grant.seed = Some((seeds.clone(), video, g));
            }
        }
        if let Some(slots) = &self.upload_slots {
            let wait = SLOT_WAIT;
            match tokio::time::timeout(wait, slots.clone().acquire_owned()).await {
                Ok(Ok(p)) => grant.slot = Some(p),
                _ => return Err("every upload slot is taken; ask another peer or later".into()),
            }
        }
        Ok(grant)
    }

    /// Tells a watching peer which verified chunks of `video` this node holds, then
    /// each chunk as it verifies, until the peer closes the stream or the node stops.
    async fn serve_watch(
        &self,
        s: &mut ServerSession,
        video: VideoId,
        stop: &tokio_util::sync::CancellationToken,
    ) -> Result<(), ProtocolError> {
        let t = self.timeouts;
        let Some(m) = self.store.manifest(video) else {
            return self
                .refuse(s, ErrorCode::UnknownVideo, format!("unknown video {video}"))
                .await;
        };
        // Subscribe before taking the snapshot: a chunk verified in between is sent
        // twice rather than never.
        let mut events = self.store.subscribe();
        let map = crate::avail::ChunkMap::of(&m);
        let bits = crate::avail::held_bitmap(&self.store, video, &map);
        s.send(
            &Response::Avail {
                video,
                chunks: crate::avail::to_hex(&bits),
            },
            &t,
        )
        .await?;
        let mut keepalive = tokio::time::interval(crate::protocol::WATCH_KEEPALIVE);
        keepalive.tick().await;
        loop {
            let mut batch: Vec<(FragmentIndex, u32)> = Vec::new();
            tokio::select! {
                _ = stop.cancelled() => return Ok(()),
                // The client closes its side (or sends anything): the watch ends.
                _ = s.reader.next() => return Ok(()),
                _ = keepalive.tick() => {}
                ev = events.recv() => match ev {
                    Ok(crate::store::StoreEvent::ChunkVerified { video: v, index, chunk, .. }) if v == video => {
                        batch.push((index, chunk));
                    }
                    Ok(crate::store::StoreEvent::FragmentComplete { video: v, index }) if v == video => {
                        let n = m.fragment(index).map(|f| f.chunks.len() as u32).unwrap_or(0);
                        batch.extend((0..n).map(|c| (index, c)));
                    }
                    Ok(_) => continue,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => {
                        // Missed some: send everything held again, in bounded frames.
                        let bits = crate::avail::held_bitmap(&self.store, video, &map);
                        batch = map.items(&bits);
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return Ok(()),
                },
            }
            // More that verified meanwhile goes in the same frame.
            while batch.len() < crate::protocol::MAX_UPDATE_CHUNKS {
                match events.try_recv() {
                    Ok(crate::store::StoreEvent::ChunkVerified {
                        video: v,
                        index,
                        chunk,
                        ..
                    }) if v == video => batch.push((index, chunk)),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            for part in batch.chunks(crate::protocol::MAX_UPDATE_CHUNKS) {
                s.send(
                    &Response::Update {
                        chunks: part.to_vec(),
                    },
                    &t,
                )
                .await?;
            }
            if batch.is_empty() {
                s.send(&Response::Update { chunks: Vec::new() }, &t).await?;
            }
            keepalive.reset();
        }
    }

    async fn refuse(
        &self,
        s: &mut ServerSession,
        code: ErrorCode,
        message: String,
    ) -> Result<(), ProtocolError> {
        self.stats.errors.fetch_add(1, Ordering::Relaxed);
        s.send(&Response::Error { code, message }, &self.timeouts)
            .await
    }
}
