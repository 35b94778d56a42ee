//! A response body that sends verified bytes only, chunk by chunk as they verify: it
//! keeps the lookahead window ahead of its position urgent in the video's download,
//! waits for each missing chunk through the store's events, and holds at most one
//! piece ([`BODY_PIECE`]) in memory.

use std::io;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::Bytes;
use fragnet_core::fetch::{Download, DownloadState, FetchError};
use fragnet_core::serve::BODY_PIECE;
use fragnet_core::store::StoreEvent;
use fragnet_core::{FragmentIndex, Manifest, VideoId};
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::broadcast::error::RecvError;
use tokio::time::Instant;

use crate::App;

/// How often a waiting body re-checks the store and the download.
const TICK: Duration = Duration::from_secs(1);

/// The state of one streaming response.
pub(crate) struct Body {
    pub(crate) app: Arc<App>,
    pub(crate) video: VideoId,
    pub(crate) manifest: Arc<Manifest>,
    /// Next byte to send (offset in the file).
    pub(crate) pos: u64,
    /// End of the response, exclusive.
    pub(crate) end: u64,
    pub(crate) download: Option<Arc<Download>>,
    /// The chunk the window was last moved to.
    pub(crate) at_chunk: Option<(FragmentIndex, u32)>,
    pub(crate) _permit: OwnedSemaphorePermit,
}

impl Body {
    /// The lookahead window ahead of the position, within this response.
    fn window(&self) -> (u64, u64) {
        let len = self.app.config.lookahead.min(self.end - self.pos).max(1);
        (self.pos, len)
    }

    /// The next piece of the body; `None` at the end.
    pub(crate) async fn next_piece(&mut self) -> Option<io::Result<Bytes>> {
        if self.pos >= self.end {
            return None;
        }
        let m = self.manifest.clone();
        let fi = m
            .fragments
            .partition_point(|f| f.offset + f.size <= self.pos);
        let f = &m.fragments[fi];
        let in_frag = self.pos - f.offset;
        let chunk = (in_frag / m.chunk_size as u64) as u32;
        let (c_off, c_len) = m.chunk_range(f.index, chunk)?;
        let n = (self.end - self.pos)
            .min(c_off + c_len - in_frag)
            .min(BODY_PIECE as u64) as usize;
        if self.at_chunk != Some((f.index, chunk)) {
            self.at_chunk = Some((f.index, chunk));
            if let Some(d) = &self.download {
                let (o, l) = self.window();
                d.want_range(o, l);
            }
        }
        if let Err(e) = self.wait_for(f.index, chunk).await {
            return Some(Err(e));
        }
        match self
            .app
            .state
            .store
            .read(self.video, f.index, in_frag, n)
            .await
        {
            Ok(piece) => {
                self.pos += n as u64;
                self.app
                    .metrics
                    .stream_bytes
                    .fetch_add(n as u64, Ordering::Relaxed);
                Some(Ok(piece))
            }
            Err(e) => Some(Err(io::Error::other(e.to_string()))),
        }
    }

    /// Waits until chunk `chunk` of fragment `index` is verified here, making sure a
    /// download is fetching it, for at most the configured chunk wait.
    async fn wait_for(&mut self, index: FragmentIndex, chunk: u32) -> io::Result<()> {
        if self.app.state.store.has_chunk(self.video, index, chunk) {
            return Ok(());
        }
        // The player waits on the swarm: a stall, counted with its length.
        let m = self.app.metrics.clone();
        m.stream_stalls.fetch_add(1, Ordering::Relaxed);
        let started = Instant::now();
        let r = self.wait_missing(index, chunk).await;
        m.stream_stall_micros
            .fetch_add(started.elapsed().as_micros() as u64, Ordering::Relaxed);
        if r.as_ref()
            .is_err_and(|e| e.kind() == io::ErrorKind::TimedOut)
        {
            m.stream_timeouts.fetch_add(1, Ordering::Relaxed);
        }
        r
    }

    /// [`Self::wait_for`] once the chunk was found missing.
    async fn wait_missing(&mut self, index: FragmentIndex, chunk: u32) -> io::Result<()> {
        let store = self.app.state.store.clone();
        let mut events = store.subscribe();
        let deadline = Instant::now() + self.app.config.chunk_wait;
        loop {
            if store.has_chunk(self.video, index, chunk) {
                return Ok(());
            }
            self.keep_fetching().await?;
            let tick = Instant::now() + TICK;
            loop {
                tokio::select! {
                    ev = events.recv() => match ev {
                        Ok(StoreEvent::ChunkVerified { video, index: i, chunk: c, .. })
                            if video == self.video && i == index && c == chunk => break,
                        Ok(StoreEvent::FragmentComplete { video, index: i })
                            if video == self.video && i == index => break,
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) => break,
                        Err(RecvError::Closed) => {
                            return Err(io::Error::other("the store is closing"));
                        }
                    },
                    _ = tokio::time::sleep_until(tick) => break,
                    _ = tokio::time::sleep_until(deadline) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            format!(
                                "chunk {chunk} of fragment {index} did not arrive within {:?}",
                                self.app.config.chunk_wait
                            ),
                        ));
                    }
                    _ = self.app.cancel.cancelled() => {
                        return Err(io::Error::other("the node is shutting down"));
                    }
                }
            }
        }
    }

    /// Makes sure the bytes ahead are being fetched: keeps the window urgent in the
    /// running download, or starts a new download when the last one ended short.
    async fn keep_fetching(&mut self) -> io::Result<()> {
        if let Some(d) = &self.download
            && d.state() == DownloadState::Running
        {
            let (o, l) = self.window();
            d.want_range(o, l);
            return Ok(());
        }
        let Some(downloads) = &self.app.state.downloads else {
            // Nothing to fetch with; the bytes may still come (a console fetch).
            return Ok(());
        };
        match downloads.ensure(self.video, Some(self.window())).await {
            Ok(d) => {
                self.download = d;
                Ok(())
            }
            // Nobody to ask right now; the bytes may still come (a holder appears, a
            // console fetch): wait out the chunk wait, asking again each tick.
            Err(FetchError::NoPeers(_) | FetchError::NoHolders(_)) => Ok(()),
            Err(e) => Err(io::Error::other(format!(
                "cannot fetch the rest of the video: {e}"
            ))),
        }
    }
}

impl Drop for Body {
    fn drop(&mut self) {
        // Nobody waits for these bytes any more (the player closed or seeked away).
        if let Some(d) = &self.download
            && self.pos < self.end
        {
            let (o, l) = self.window();
            d.release_range(o, l);
        }
        self.app
            .metrics
            .streams_active
            .fetch_sub(1, Ordering::Relaxed);
    }
}
