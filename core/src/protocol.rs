//! The peer protocol, on any transport stream.
//!
//! The client speaks first: [`MAGIC`] and a big-endian `u16` version. Then
//! length-delimited frames (a `u32` length, then JSON): the client sends a
//! [`Request`], the server answers a [`Response`]; `Manifest` and `Data` responses are
//! followed by exactly `length` raw body bytes. Requests on one stream are sequential;
//! errors are [`Response::Error`] frames with a code, and the stream stays usable.
//!
//! Seed compatibility: a client that sends a bare name such as `fragment_5.bin`
//! (ended by `\n`, by closing its write side, or by a short pause) instead of the magic
//! receives that fragment's raw bytes for the node's default video, and the stream
//! closes. The magic's first byte is not printable, so the two cannot be confused.

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::addr::PeerAddr;
use crate::ids::{FragmentIndex, NodeId, VideoId};
use crate::manifest::{MAX_MANIFEST_BYTES, Manifest};
use crate::transport::{BiStream, Connection, RecvStream, SendStream, TransportError};

/// First bytes of every fragnet stream.
pub const MAGIC: [u8; 4] = [0xF0, b'F', b'N', b'T'];
/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest request frame a server reads.
pub const MAX_REQUEST_FRAME: usize = 16 * 1024;
/// Largest response frame a client reads (bodies are not frames).
pub const MAX_RESPONSE_FRAME: usize = 4 << 20;
/// Most chunks one watch update carries; more go in the next frame.
pub const MAX_UPDATE_CHUNKS: usize = 1024;
/// Most addresses one peer-exchange answer carries; a client ignores the rest.
pub const MAX_PEX_PEERS: usize = 32;
/// Largest `get` body a client accepts in one response.
pub const MAX_GET_LENGTH: u64 = 64 << 20;

/// A request from client to server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Request {
    /// Which videos the server knows, and which fragments of each it holds.
    Videos,
    /// Which fragments of one video the server holds.
    Have {
        /// Video.
        video: VideoId,
    },
    /// The manifest of a video; answered by [`Response::Manifest`] and a body.
    Manifest {
        /// Video.
        video: VideoId,
    },
    /// A byte range of a fragment; answered by [`Response::Data`] and a body.
    Get {
        /// Video.
        video: VideoId,
        /// Fragment.
        index: FragmentIndex,
        /// Start, relative to the fragment.
        offset: u64,
        /// Number of bytes.
        length: u64,
        /// Hold nothing back: a player waits for these bytes, or the asker has no other
        /// peer to get them from. Never refused for super-seeding.
        #[serde(default, skip_serializing_if = "std::ops::Not::not")]
        urgent: bool,
    },
    /// Peers the server knows that may hold the video (peer exchange); answered by
    /// [`Response::Peers`].
    Peers {
        /// Video.
        video: VideoId,
    },
    /// Which verified chunks of the video the server holds, now and as they verify:
    /// answered by [`Response::Avail`], then [`Response::Update`] frames on the same
    /// stream (an empty one every [`WATCH_KEEPALIVE`]) until the client closes it.
    Watch {
        /// Video.
        video: VideoId,
    },
}

/// How often a watched server says something even when nothing changed.
pub const WATCH_KEEPALIVE: Duration = Duration::from_secs(10);

/// One video as listed by [`Request::Videos`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VideoSummary {
    /// Video id.
    pub video: VideoId,
    /// The manifest's name.
    pub name: String,
    /// Fragments in the video.
    pub fragment_count: u32,
    /// Fragments the server holds, complete and verified.
    pub have: Vec<FragmentIndex>,
}

/// Error codes of [`Response::Error`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The client's version is not spoken here.
    UnsupportedVersion,
    /// The request was malformed.
    BadRequest,
    /// The server does not know the video.
    UnknownVideo,
    /// No such fragment in the video.
    NoSuchFragment,
    /// The bytes are not verified here.
    NotAvailable,
    /// The server is at its connection or stream limit.
    Busy,
    /// Not now: every upload slot is taken, or (super-seeding) the chunk went out
    /// already and another peer should be asked. The request may be tried again later.
    Choked,
    /// Something failed on the server.
    Internal,
}

/// A response from server to client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response {
    /// The server's answer to the hello.
    Hello {
        /// The server's protocol version.
        version: u16,
        /// The server's node id.
        node_id: NodeId,
        /// The server's display name.
        name: String,
    },
    /// Answer to [`Request::Videos`].
    Videos {
        /// The videos.
        videos: Vec<VideoSummary>,
    },
    /// Answer to [`Request::Have`].
    Have {
        /// Video.
        video: VideoId,
        /// Complete, verified fragments.
        fragments: Vec<FragmentIndex>,
    },
    /// Answer to [`Request::Peers`]: at most [`MAX_PEX_PEERS`] addresses with their
    /// schemes (`tcp://…`, `quic://<id>@…`).
    Peers {
        /// Video.
        video: VideoId,
        /// Addresses.
        peers: Vec<String>,
    },
    /// Answer to [`Request::Watch`]: the verified chunks held, as a hex bitmap over
    /// the video's chunks in manifest order ([`crate::avail::ChunkMap`]).
    Avail {
        /// Video.
        video: VideoId,
        /// Hex bitmap.
        chunks: String,
    },
    /// Chunks verified since the last frame of a watch, as `[fragment, chunk]`.
    Update {
        /// The chunks (at most [`MAX_UPDATE_CHUNKS`]).
        chunks: Vec<(FragmentIndex, u32)>,
    },
    /// A manifest's canonical bytes follow.
    Manifest {
        /// Body length.
        length: u64,
    },
    /// Fragment bytes follow.
    Data {
        /// Body length.
        length: u64,
    },
    /// The request failed.
    Error {
        /// What kind of failure.
        code: ErrorCode,
        /// For people.
        message: String,
    },
}

/// Errors of the protocol client.
#[derive(Debug, thiserror::Error)]
pub enum ProtocolError {
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// Reading or writing the stream failed.
    #[error("{0}")]
    Io(#[from] std::io::Error),
    /// The peer did not answer in time.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// The peer answered with an error frame.
    #[error("peer refused: {message} ({code:?})")]
    Remote {
        /// Code.
        code: ErrorCode,
        /// Message.
        message: String,
    },
    /// The peer sent something that is not the protocol.
    #[error("peer broke the protocol: {0}")]
    Malformed(String),
    /// The peer closed the stream.
    #[error("peer closed the stream")]
    Closed,
}

fn codec(max: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_type::<u32>()
        .max_frame_length(max)
        .new_codec()
}

/// Timeouts of one protocol session.
#[derive(Debug, Clone, Copy)]
pub struct Timeouts {
    /// How long a read or write may make no progress.
    pub io: Duration,
    /// How long a server waits for the next request.
    pub idle: Duration,
    /// The pause that ends a seed-style bare request without a newline.
    pub bare_pause: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            io: Duration::from_secs(20),
            idle: Duration::from_secs(60),
            bare_pause: Duration::from_secs(1),
        }
    }
}

async fn timed<T>(
    d: Duration,
    what: &'static str,
    f: impl Future<Output = T>,
) -> Result<T, ProtocolError> {
    tokio::time::timeout(d, f)
        .await
        .map_err(|_| ProtocolError::Timeout(what))
}

/// A client session on one stream: hello done, requests sent one at a time.
pub struct PeerClient {
    reader: FramedRead<RecvStream, LengthDelimitedCodec>,
    writer: FramedWrite<SendStream, LengthDelimitedCodec>,
    timeouts: Timeouts,
    /// The server's node id, from its hello.
    pub remote_node_id: NodeId,
    /// The server's display name, from its hello.
    pub remote_name: String,
    // Keeps a multiplexed connection (QUIC) open while the session lives.
    _conn: Option<Arc<dyn Connection>>,
}

impl std::fmt::Debug for PeerClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerClient")
            .field("remote_node_id", &self.remote_node_id)
            .finish_non_exhaustive()
    }
}

impl PeerClient {
    /// Opens a stream on `conn` and says hello.
    pub async fn open(
        conn: Arc<dyn Connection>,
        timeouts: Timeouts,
    ) -> Result<Self, ProtocolError> {
        let stream = timed(timeouts.io, "opening a stream", conn.open_stream()).await??;
        let mut client = Self::handshake(stream, timeouts).await?;
        if let Some(expected) = conn.remote_node_id()
            && expected != client.remote_node_id
        {
            return Err(ProtocolError::Malformed(format!(
                "hello names node {}, the transport authenticated {}",
                client.remote_node_id, expected
            )));
        }
        client._conn = Some(conn);
        Ok(client)
    }

    /// The server's node id when the transport proved it (QUIC), not only the hello
    /// said it (TCP).
    pub fn authenticated_node_id(&self) -> Option<NodeId> {
        self._conn
            .as_ref()
            .and_then(|c| c.remote_node_id())
            .filter(|id| *id == self.remote_node_id)
    }

    /// Says hello on an open stream.
    pub async fn handshake(stream: BiStream, timeouts: Timeouts) -> Result<Self, ProtocolError> {
        Self::handshake_with_version(stream, timeouts, PROTOCOL_VERSION).await
    }

    #[doc(hidden)]
    /// Hello with any version (tests of the server's refusal).
    pub async fn handshake_with_version(
        mut stream: BiStream,
        timeouts: Timeouts,
        version: u16,
    ) -> Result<Self, ProtocolError> {
        let mut hello = MAGIC.to_vec();
        hello.extend_from_slice(&version.to_be_bytes());
        timed(timeouts.io, "sending hello", stream.send.write_all(&hello)).await??;
        let mut client = PeerClient {
            reader: FramedRead::new(stream.recv, codec(MAX_RESPONSE_FRAME)),
            writer: FramedWrite::new(stream.send, codec(MAX_REQUEST_FRAME)),
            timeouts,
            remote_node_id: NodeId(crate::ids::Digest([0; 32])),
            remote_name: String::new(),
            _conn: None,
        };
        match client.read_response("waiting for hello").await? {
            Response::Hello {
                version: PROTOCOL_VERSION,
                node_id,
                name,
            } => {
                client.remote_node_id = node_id;
                client.remote_name = name;
                Ok(client)
            }
            other => Err(ProtocolError::Malformed(format!(
                "expected hello, got {other:?}"
            ))),
        }
    }

    async fn read_response(&mut self, what: &'static str) -> Result<Response, ProtocolError> {
        self.read_response_within(self.timeouts.io, what).await
    }

    async fn read_response_within(
        &mut self,
        within: Duration,
        what: &'static str,
    ) -> Result<Response, ProtocolError> {
        let frame = timed(within, what, self.reader.next())
            .await?
            .ok_or(ProtocolError::Closed)??;
        let resp: Response =
            serde_json::from_slice(&frame).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        match resp {
            Response::Error { code, message } => Err(ProtocolError::Remote { code, message }),
            r => Ok(r),
        }
    }

    async fn call(&mut self, req: &Request) -> Result<Response, ProtocolError> {
        let bytes = serde_json::to_vec(req).expect("requests serialize");
        timed(
            self.timeouts.io,
            "sending a request",
            self.writer.send(Bytes::from(bytes)),
        )
        .await??;
        self.read_response("waiting for a response").await
    }

    /// Reads exactly `len` body bytes: first what the frame reader already buffered,
    /// then from the stream, each read bounded by the I/O timeout.
    async fn read_body(&mut self, len: u64) -> Result<Bytes, ProtocolError> {
        let len = len as usize;
        // Uninitialised capacity, filled by the reads: no zeroing pass over every chunk.
        let mut out = BytesMut::with_capacity(len);
        let buffered = self.reader.read_buffer_mut();
        let take = buffered.len().min(len);
        out.extend_from_slice(&buffered[..take]);
        buffered.advance(take);
        while out.len() < len {
            let want = len - out.len();
            let mut limited = (&mut out).limit(want);
            let n = timed(
                self.timeouts.io,
                "reading data",
                self.reader.get_mut().read_buf(&mut limited),
            )
            .await??;
            if n == 0 {
                return Err(ProtocolError::Closed);
            }
        }
        Ok(out.freeze())
    }

    /// The server's videos and what it holds of each.
    pub async fn videos(&mut self) -> Result<Vec<VideoSummary>, ProtocolError> {
        match self.call(&Request::Videos).await? {
            Response::Videos { videos } => Ok(videos),
            other => Err(ProtocolError::Malformed(format!(
                "expected videos, got {other:?}"
            ))),
        }
    }

    /// The fragments of `video` the server holds.
    pub async fn have(&mut self, video: VideoId) -> Result<Vec<FragmentIndex>, ProtocolError> {
        match self.call(&Request::Have { video }).await? {
            Response::Have { fragments, .. } => Ok(fragments),
            other => Err(ProtocolError::Malformed(format!(
                "expected have, got {other:?}"
            ))),
        }
    }

    /// Peers the server knows that may hold `video` (peer exchange). Addresses that do
    /// not parse or name no scheme are dropped; at most [`MAX_PEX_PEERS`] are kept.
    pub async fn peers(&mut self, video: VideoId) -> Result<Vec<PeerAddr>, ProtocolError> {
        match self.call(&Request::Peers { video }).await? {
            Response::Peers { peers, .. } => Ok(peers
                .iter()
                .take(MAX_PEX_PEERS)
                .filter(|a| a.contains("://"))
                .filter_map(|a| a.parse::<PeerAddr>().ok())
                .collect()),
            other => Err(ProtocolError::Malformed(format!(
                "expected peers, got {other:?}"
            ))),
        }
    }

    /// Turns this session into a watch of `video`'s verified chunks: returns the
    /// bitmap held now and the stream of updates. A server that does not know the video
    /// answers [`ErrorCode::UnknownVideo`]; one that predates watches, `BadRequest`.
    pub async fn watch(mut self, video: VideoId) -> Result<(Vec<u8>, Watcher), ProtocolError> {
        match self.call(&Request::Watch { video }).await? {
            Response::Avail { video: v, chunks } if v == video => {
                let bitmap = crate::avail::from_hex(&chunks)
                    .ok_or_else(|| ProtocolError::Malformed("a bitmap that is not hex".into()))?;
                Ok((bitmap, Watcher { client: self }))
            }
            other => Err(ProtocolError::Malformed(format!(
                "expected availability, got {other:?}"
            ))),
        }
    }

    /// The manifest of `video`, checked to hash to `video`.
    pub async fn manifest(&mut self, video: VideoId) -> Result<Manifest, ProtocolError> {
        let length = match self.call(&Request::Manifest { video }).await? {
            Response::Manifest { length } if length as usize <= MAX_MANIFEST_BYTES => length,
            other => {
                return Err(ProtocolError::Malformed(format!(
                    "expected a manifest, got {other:?}"
                )));
            }
        };
        let body = self.read_body(length).await?;
        let m = Manifest::from_bytes(&body).map_err(|e| ProtocolError::Malformed(e.to_string()))?;
        if m.video_id() != video {
            return Err(ProtocolError::Malformed(format!(
                "manifest hashes to {}, not to the requested {video}",
                m.video_id()
            )));
        }
        Ok(m)
    }

    /// `length` bytes at `offset` of a fragment. The caller verifies them.
    pub async fn get(
        &mut self,
        video: VideoId,
        index: FragmentIndex,
        offset: u64,
        length: u64,
    ) -> Result<Bytes, ProtocolError> {
        self.get_with(video, index, offset, length, false).await
    }

    /// [`PeerClient::get`], saying whether a player waits for the bytes (`urgent`).
    pub async fn get_with(
        &mut self,
        video: VideoId,
        index: FragmentIndex,
        offset: u64,
        length: u64,
        urgent: bool,
    ) -> Result<Bytes, ProtocolError> {
        if length > MAX_GET_LENGTH {
            return Err(ProtocolError::Malformed(format!(
                "a get of {length} bytes is larger than {MAX_GET_LENGTH}"
            )));
        }
        match self
            .call(&Request::Get {
                video,
                index,
                offset,
                length,
                urgent,
            })
            .await?
        {
            Response::Data { length: l } if l == length => self.read_body(length).await,
            other => Err(ProtocolError::Malformed(format!(
                "expected {length} data bytes, got {other:?}"
            ))),
        }
    }
}

/// The updates of a watched peer (see [`PeerClient::watch`]).
#[derive(Debug)]
pub struct Watcher {
    client: PeerClient,
}

impl Watcher {
    /// The next chunks the peer verified (empty: a keepalive). Fails when the peer
    /// says nothing for three keepalive periods, closes, or breaks the protocol.
    pub async fn next(&mut self) -> Result<Vec<(FragmentIndex, u32)>, ProtocolError> {
        match self
            .client
            .read_response_within(WATCH_KEEPALIVE * 3, "waiting for a watch update")
            .await?
        {
            Response::Update { chunks } if chunks.len() <= MAX_UPDATE_CHUNKS => Ok(chunks),
            other => Err(ProtocolError::Malformed(format!(
                "expected an update, got {other:?}"
            ))),
        }
    }
}

/// Parses a seed-style bare request, `fragment_<i>.bin`, strictly: no paths, no signs,
/// no spaces inside, at most 6 digits.
pub fn parse_bare_name(line: &[u8]) -> Option<FragmentIndex> {
    let s = std::str::from_utf8(line)
        .ok()?
        .trim_end_matches(['\r', '\n', ' ', '\t']);
    let digits = s.strip_prefix("fragment_")?.strip_suffix(".bin")?;
    if digits.is_empty() || digits.len() > 6 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// How the server side of a stream began.
#[derive(Debug, PartialEq, Eq)]
pub enum Opening {
    /// The fragnet hello with this version.
    Hello(u16),
    /// A seed-style bare request line (without its terminator).
    Bare(Vec<u8>),
    /// The client closed without sending anything.
    Empty,
}

/// Longest bare request line accepted.
pub const MAX_BARE_LINE: usize = 256;

/// Reads the start of a stream: the hello, or a bare line ended by `\n`, end of
/// stream, or `bare_pause` without bytes. Too-long lines are an error.
pub async fn read_opening(recv: &mut RecvStream, t: &Timeouts) -> Result<Opening, ProtocolError> {
    let mut first = [0u8; 1];
    let n = timed(t.idle, "waiting for a request", recv.read(&mut first)).await??;
    if n == 0 {
        return Ok(Opening::Empty);
    }
    if first[0] == MAGIC[0] {
        let mut rest = [0u8; 5];
        timed(t.io, "reading hello", recv.read_exact(&mut rest)).await??;
        if rest[..3] != MAGIC[1..] {
            return Err(ProtocolError::Malformed("bad magic".into()));
        }
        return Ok(Opening::Hello(u16::from_be_bytes([rest[3], rest[4]])));
    }
    let mut line = vec![first[0]];
    let mut buf = [0u8; 64];
    loop {
        if line.contains(&b'\n') {
            let end = line.iter().position(|&b| b == b'\n').unwrap();
            line.truncate(end);
            return Ok(Opening::Bare(line));
        }
        if line.len() > MAX_BARE_LINE {
            return Err(ProtocolError::Malformed(format!(
                "request line longer than {MAX_BARE_LINE} bytes"
            )));
        }
        match tokio::time::timeout(t.bare_pause, recv.read(&mut buf)).await {
            Err(_) => return Ok(Opening::Bare(line)), // a pause ends the name
            Ok(Ok(0)) => return Ok(Opening::Bare(line)),
            Ok(Ok(n)) => line.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(e.into()),
        }
    }
}

/// Server-side framing helpers for one stream after the hello.
pub struct ServerSession {
    /// Requests in.
    pub reader: FramedRead<RecvStream, LengthDelimitedCodec>,
    /// Responses out; bodies are written to `writer.get_mut()` after a header.
    pub writer: FramedWrite<SendStream, LengthDelimitedCodec>,
}

impl std::fmt::Debug for ServerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ServerSession")
    }
}

impl ServerSession {
    /// Wraps a stream whose opening was read.
    pub fn new(stream: BiStream) -> Self {
        ServerSession {
            reader: FramedRead::new(stream.recv, codec(MAX_REQUEST_FRAME)),
            writer: FramedWrite::new(stream.send, codec(MAX_RESPONSE_FRAME)),
        }
    }

    /// Sends one response frame.
    pub async fn send(&mut self, resp: &Response, t: &Timeouts) -> Result<(), ProtocolError> {
        let bytes = serde_json::to_vec(resp).expect("responses serialize");
        timed(
            t.io,
            "sending a response",
            self.writer.send(Bytes::from(bytes)),
        )
        .await??;
        Ok(())
    }

    /// Reads the next request; `None` when the client closed its side.
    pub async fn next_request(
        &mut self,
        t: &Timeouts,
    ) -> Result<Option<Result<Request, String>>, ProtocolError> {
        match timed(t.idle, "waiting for a request", self.reader.next()).await? {
            None => Ok(None),
            Some(Err(e)) => Err(e.into()),
            Some(Ok(frame)) => Ok(Some(
                serde_json::from_slice(&frame).map_err(|e| e.to_string()),
            )),
        }
    }
}

/// Formats an address and optional node id for logs: `127.0.0.1:59036 (node 1a2b3c4d)`.
pub fn describe_remote(addr: std::net::SocketAddr, node: Option<NodeId>) -> String {
    match node {
        Some(id) => format!("{addr} (node {})", id.short()),
        None => addr.to_string(),
    }
}

/// Dials and opens a session in one step (used by tools and tests).
pub async fn connect(
    transports: &crate::transport::Transports,
    addr: &PeerAddr,
    timeouts: Timeouts,
) -> Result<PeerClient, ProtocolError> {
    let conn: Arc<dyn Connection> =
        Arc::from(timed(timeouts.io, "connecting", transports.dial(addr)).await??);
    PeerClient::open(conn, timeouts).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_names_are_strict() {
        assert_eq!(parse_bare_name(b"fragment_5.bin"), Some(5));
        assert_eq!(parse_bare_name(b"fragment_12.bin\r"), Some(12));
        for bad in [
            &b"../../etc/passwd"[..],
            b"/etc/passwd",
            b"fragment_5.bin/../../x",
            b"fragment_-1.bin",
            b"fragment_+1.bin",
            b"fragment_.bin",
            b"fragment_5.bin\0",
            b"fragment_1234567.bin",
            b"\xff\xfe",
            b"fragment_ 5.bin",
        ] {
            assert_eq!(
                parse_bare_name(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn frames_round_trip() {
        let v = VideoId(crate::ids::Digest::of(b"v"));
        let req = Request::Get {
            video: v,
            index: 3,
            offset: 10,
            length: 20,
            urgent: false,
        };
        let s = serde_json::to_string(&req).unwrap();
        assert!(s.contains(r#""op":"get""#), "{s}");
        assert!(!s.contains("urgent"), "left out unless set: {s}");
        assert_eq!(serde_json::from_str::<Request>(&s).unwrap(), req);
        let e = Response::Error {
            code: ErrorCode::NotAvailable,
            message: "x".into(),
        };
        assert_eq!(
            serde_json::from_slice::<Response>(&serde_json::to_vec(&e).unwrap()).unwrap(),
            e
        );
        assert!(serde_json::from_str::<Request>(r#"{"op":"get","video":"zz"}"#).is_err());
    }

    fn pipe() -> (BiStream, BiStream) {
        let (a, b) = tokio::io::duplex(1 << 16);
        let (ar, aw) = tokio::io::split(a);
        let (br, bw) = tokio::io::split(b);
        (
            BiStream {
                send: Box::pin(aw),
                recv: Box::pin(ar),
            },
            BiStream {
                send: Box::pin(bw),
                recv: Box::pin(br),
            },
        )
    }

    #[tokio::test]
    async fn opening_detects_hello_bare_line_and_pause() {
        let t = Timeouts {
            bare_pause: Duration::from_millis(100),
            ..Timeouts::default()
        };
        let (mut c, mut s) = pipe();
        c.send
            .write_all(&[0xF0, b'F', b'N', b'T', 0, 7])
            .await
            .unwrap();
        assert_eq!(
            read_opening(&mut s.recv, &t).await.unwrap(),
            Opening::Hello(7)
        );

        let (mut c, mut s) = pipe();
        c.send.write_all(b"fragm").await.unwrap();
        c.send.write_all(b"ent_5.bin\nrest").await.unwrap();
        assert_eq!(
            read_opening(&mut s.recv, &t).await.unwrap(),
            Opening::Bare(b"fragment_5.bin".to_vec())
        );

        // No newline, write side kept open: the pause ends it.
        let (mut c, mut s) = pipe();
        c.send.write_all(b"fragment_5.bin").await.unwrap();
        assert_eq!(
            read_opening(&mut s.recv, &t).await.unwrap(),
            Opening::Bare(b"fragment_5.bin".to_vec())
        );

        let (mut c, mut s) = pipe();
        let long = vec![b'a'; 10_000];
        let w = tokio::spawn(async move { c.send.write_all(&long).await });
        assert!(matches!(
            read_opening(&mut s.recv, &t).await,
            Err(ProtocolError::Malformed(_))
        ));
        drop(s);
        let _ = w.await;
    }
}
