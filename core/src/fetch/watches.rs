//! Watching peers' verified chunks: one watch stream per peer of a download, feeding
//! the scheduler as the peer verifies chunks, so this node can fetch a chunk from a
//! leecher seconds after that leecher got it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::debug;

use crate::addr::PeerAddr;
use crate::avail::ChunkMap;
use crate::ids::{FragmentIndex, VideoId};
use crate::protocol::ProtocolError;

use super::PeerPool;
use super::sched::Sched;

/// The watches of one download.
pub(super) struct Watches {
    pub(super) pool: Arc<PeerPool>,
    pub(super) sched: Arc<Mutex<Sched>>,
    pub(super) wake: Arc<Notify>,
    pub(super) video: VideoId,
    pub(super) map: ChunkMap,
    pub(super) cancel: CancellationToken,
    pub(super) watched: Mutex<HashSet<PeerAddr>>,
}

impl Watches {
    /// Watches `addr` unless it is watched already or holds every fragment (a seeder's
    /// availability does not change).
    pub(super) fn ensure(self: &Arc<Self>, addr: PeerAddr) {
        {
            let s = self.sched.lock().unwrap();
            let seeder = s.fragment_count > 0
                && s.peers
                    .iter()
                    .find(|p| p.addr == addr)
                    .is_some_and(|p| p.holds.len() as u32 >= s.fragment_count);
            if seeder || s.finished {
                return;
            }
        }
        if !self.watched.lock().unwrap().insert(addr.clone()) {
            return;
        }
        debug!(peer = %addr, video = %self.video.short(), "watching a peer's chunks");
        tokio::spawn(self.clone().run(addr));
    }

    async fn run(self: Arc<Self>, addr: PeerAddr) {
        let result = tokio::select! {
            r = self.follow(&addr) => r,
            _ = self.cancel.cancelled() => Ok(()),
        };
        if let Err(e) = result {
            debug!(peer = %addr, "watch ended: {e}");
        }
        self.watched.lock().unwrap().remove(&addr);
    }

    async fn follow(&self, addr: &PeerAddr) -> Result<(), ProtocolError> {
        let session = self.pool.session(addr).await?;
        let (bits, mut updates) = session.watch(self.video).await?;
        self.apply(addr, &self.map.items(&bits));
        loop {
            let chunks = updates.next().await?;
            let valid: Vec<(FragmentIndex, u32)> = chunks
                .into_iter()
                .filter(|&(i, c)| self.map.global(i, c).is_some())
                .collect();
            if !valid.is_empty() {
                self.apply(addr, &valid);
            }
        }
    }

    fn apply(&self, addr: &PeerAddr, items: &[(FragmentIndex, u32)]) {
        let mut s = self.sched.lock().unwrap();
        if let Some(p) = s.peers.iter().position(|p| &p.addr == addr) {
            s.peer_has(p, items);
        }
        drop(s);
        self.wake.notify_waiters();
    }
}
