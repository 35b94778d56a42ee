//! Connections that close when they make no progress: a client that stops reading a
//! response, or keeps a connection open without sending, is cut off after the idle
//! timeout instead of holding a slot forever (axum's `serve` has no such timeout).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::{Instant, Sleep};
use tracing::warn;

/// A TCP listener whose connections time out when idle, at most `connections` open at
/// once (the next is accepted when one closes; until then it waits in the backlog).
pub(crate) struct TimedListener {
    pub(crate) inner: TcpListener,
    pub(crate) idle: Duration,
    pub(crate) connections: Arc<Semaphore>,
}

impl axum::serve::Listener for TimedListener {
    type Io = TimedIo<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        // The semaphore is never closed.
        let permit = self.connections.clone().acquire_owned().await.ok();
        loop {
            match self.inner.accept().await {
                Ok((stream, addr)) => {
                    let _ = stream.set_nodelay(true);
                    let mut io = TimedIo::new(stream, self.idle);
                    io.permit = permit;
                    return (io, addr);
                }
                Err(e) => {
                    // One failed accept (fd exhaustion, a reset) never stops the server.
                    warn!(error = %e, "HTTP accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.inner.local_addr()
    }
}

/// The address of the client on the other end of a connection (what the library's
/// loopback-only default checks).
#[derive(Debug, Clone, Copy)]
pub(crate) struct ClientAddr(pub(crate) SocketAddr);

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, TimedListener>>
    for ClientAddr
{
    fn connect_info(stream: axum::serve::IncomingStream<'_, TimedListener>) -> Self {
        ClientAddr(*stream.remote_addr())
    }
}

/// An I/O stream that fails with `TimedOut` when neither reading nor writing has made
/// progress for `idle` while one of them was waiting.
pub(crate) struct TimedIo<T> {
    inner: T,
    idle: Duration,
    timer: Pin<Box<Sleep>>,
    armed: bool,
    /// Held while the connection is open.
    permit: Option<OwnedSemaphorePermit>,
}

impl<T> TimedIo<T> {
    fn new(inner: T, idle: Duration) -> Self {
        TimedIo {
            inner,
            idle,
            timer: Box::pin(tokio::time::sleep(idle)),
            armed: false,
            permit: None,
        }
    }

    /// Called when an operation is pending: starts the clock if it is not running,
    /// and fails once it has run out.
    fn check(&mut self, cx: &mut Context<'_>) -> Poll<io::Error> {
        if !self.armed {
            self.armed = true;
            let at = Instant::now() + self.idle;
            self.timer.as_mut().reset(at);
        }
        match self.timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(io::Error::new(
                io::ErrorKind::TimedOut,
                "HTTP connection made no progress within the idle timeout",
            )),
            Poll::Pending => Poll::Pending,
        }
    }

    fn progress<R>(&mut self, r: Poll<R>, cx: &mut Context<'_>) -> Poll<io::Result<R>> {
        match r {
            Poll::Ready(v) => {
                self.armed = false;
                Poll::Ready(Ok(v))
            }
            Poll::Pending => match self.check(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for TimedIo<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_read(cx, buf);
        match r {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(())) => this.progress(Poll::Ready(()), cx),
            Poll::Pending => this.progress(Poll::<()>::Pending, cx),
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for TimedIo<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(n)) => this.progress(Poll::Ready(n), cx),
            Poll::Pending => this.progress(Poll::<usize>::Pending, cx),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_flush(cx) {
            Poll::Ready(r) => {
                this.armed = false;
                Poll::Ready(r)
            }
            Poll::Pending => match this.check(cx) {
                Poll::Ready(e) => Poll::Ready(Err(e)),
                Poll::Pending => Poll::Pending,
            },
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let r = ready!(Pin::new(&mut this.inner).poll_shutdown(cx));
        Poll::Ready(r)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        match Pin::new(&mut this.inner).poll_write_vectored(cx, bufs) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Ready(Ok(n)) => this.progress(Poll::Ready(n), cx),
            Poll::Pending => this.progress(Poll::<usize>::Pending, cx),
        }
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn a_silent_peer_times_out_and_an_active_one_does_not() {
        let (a, mut b) = tokio::io::duplex(64);
        let mut timed = TimedIo::new(a, Duration::from_millis(200));
        let mut buf = [0u8; 4];
        // Activity every 100 ms keeps it alive past the 200 ms timeout.
        for _ in 0..4 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            b.write_all(b"x").await.unwrap();
            assert_eq!(timed.read(&mut buf).await.unwrap(), 1);
        }
        let e = timed.read(&mut buf).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
        // A writer whose reader stopped reading: the 64-byte pipe fills, then times out.
        let (a, _b) = tokio::io::duplex(64);
        let mut timed = TimedIo::new(a, Duration::from_millis(200));
        let e = timed.write_all(&[0u8; 1024]).await.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }
}
