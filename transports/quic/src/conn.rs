//! One QUIC connection shared by many handles, its streams, and the bookkeeping the idle
//! policy needs: how many streams are open and since when none is.

use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use fragnet_core::NodeId;
use fragnet_core::transport::BiStream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;

/// How long a dropped stream's sent data may take to be acknowledged before the stream
/// is forgotten. A connection is closed only once its streams are acknowledged (or this
/// has passed), because closing a QUIC connection discards data still in flight.
pub(crate) const LINGER: Duration = Duration::from_secs(10);

/// An established, authenticated connection.
pub(crate) struct Conn {
    pub(crate) quic: quinn::Connection,
    /// The node id the remote proved in the handshake.
    pub(crate) node_id: NodeId,
    /// Streams open: a stream counts until both halves are dropped and the data it sent
    /// is acknowledged (or [`LINGER`] passed).
    open: AtomicUsize,
    /// When `open` last fell to zero (or the connection was made).
    idle_since: Mutex<Instant>,
    /// Notified whenever `open` falls to zero.
    released: Notify,
}

impl Conn {
    pub(crate) fn new(quic: quinn::Connection, node_id: NodeId) -> Arc<Self> {
        Arc::new(Conn {
            quic,
            node_id,
            open: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
            released: Notify::new(),
        })
    }

    /// Whether the connection is closed (by either side, a timeout or a reset).
    pub(crate) fn is_closed(&self) -> bool {
        self.quic.close_reason().is_some()
    }

    /// How long the connection has had no open stream; `None` while one is open.
    pub(crate) fn idle_for(&self) -> Option<Duration> {
        if self.open.load(Ordering::SeqCst) > 0 {
            return None;
        }
        Some(self.idle_since.lock().unwrap().elapsed())
    }

    /// Closes with an application code and a reason. Data still in flight is discarded.
    pub(crate) fn close(&self, code: u32, reason: &str) {
        self.quic
            .close(quinn::VarInt::from_u32(code), reason.as_bytes());
    }

    /// Closes once every stream is acknowledged (or after [`LINGER`]).
    pub(crate) async fn close_when_drained(&self, code: u32, reason: &str) {
        let deadline = tokio::time::Instant::now() + LINGER;
        loop {
            let released = self.released.notified();
            tokio::pin!(released);
            released.as_mut().enable();
            if self.open.load(Ordering::SeqCst) == 0 || self.is_closed() {
                break;
            }
            if tokio::time::timeout_at(deadline, released).await.is_err() {
                break;
            }
        }
        self.close(code, reason);
    }

    /// Wraps a quinn stream pair into a [`BiStream`] that counts as open until both halves
    /// are gone.
    pub(crate) fn stream(
        self: &Arc<Self>,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> BiStream {
        self.open.fetch_add(1, Ordering::SeqCst);
        let guard = Arc::new(StreamGuard(self.clone()));
        BiStream {
            send: Box::pin(QuicSend {
                inner: Some(send),
                guard: Some(guard.clone()),
            }),
            recv: Box::pin(QuicRecv {
                inner: recv,
                _guard: guard,
            }),
        }
    }
}

/// Counts one open stream; dropped when both halves (and the send side's linger) are.
struct StreamGuard(Arc<Conn>);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let conn = &self.0;
        if conn.open.fetch_sub(1, Ordering::SeqCst) == 1 {
            *conn.idle_since.lock().unwrap() = Instant::now();
            conn.released.notify_waiters();
        }
    }
}

/// The sending half. Shutting it down (or dropping it) finishes the QUIC stream.
struct QuicSend {
    inner: Option<quinn::SendStream>,
    guard: Option<Arc<StreamGuard>>,
}

fn gone() -> io::Error {
    io::Error::new(io::ErrorKind::NotConnected, "stream already dropped")
}

impl AsyncWrite for QuicSend {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.inner.as_mut() {
            Some(s) => AsyncWrite::poll_write(Pin::new(s), cx, buf),
            None => Poll::Ready(Err(gone())),
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(s) => AsyncWrite::poll_flush(Pin::new(s), cx),
            None => Poll::Ready(Ok(())),
        }
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.inner.as_mut() {
            Some(s) => AsyncWrite::poll_shutdown(Pin::new(s), cx),
            None => Poll::Ready(Ok(())),
        }
    }
}

impl Drop for QuicSend {
    fn drop(&mut self) {
        let Some(mut send) = self.inner.take() else {
            return;
        };
        // Finishing tells the peer the stream ended cleanly; already finished or reset is fine.
        let _ = send.finish();
        let guard = self.guard.take();
        // Keep the stream counted until the peer acknowledged what was sent, so an idle
        // close or a handle drop does not cut off the tail of a response.
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let stopped = send.stopped();
            rt.spawn(async move {
                let _ = tokio::time::timeout(LINGER, stopped).await;
                drop(guard);
            });
        }
    }
}

/// The receiving half.
struct QuicRecv {
    inner: quinn::RecvStream,
    _guard: Arc<StreamGuard>,
}

impl AsyncRead for QuicRecv {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        AsyncRead::poll_read(Pin::new(&mut self.inner), cx, buf)
    }
}
