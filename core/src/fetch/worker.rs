//! A download's workers: each asks the scheduler for a job, fetches that chunk from
//! its peer, verifies and stores it, and tells the scheduler how it went.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::addr::PeerAddr;
use crate::discovery::CombinedDiscovery;
use crate::ids::VideoId;
use crate::manifest::Manifest;
use crate::protocol::{ErrorCode, ProtocolError};
use crate::store::{ChunkOutcome, FragmentStore, StoreError};

use super::sched::{Item, Job, Next, Sched};
use super::{FetchError, FetchObserver, PeerPool};

/// How long a peer that choked a request is not asked for that chunk again.
const CHOKE_BACKOFF: Duration = Duration::from_secs(1);

pub(super) struct WorkerCtx {
    pub(super) sched: Arc<Mutex<Sched>>,
    pub(super) wake: Arc<Notify>,
    pub(super) store: Arc<FragmentStore>,
    pub(super) pool: Arc<PeerPool>,
    pub(super) obs: Arc<dyn FetchObserver>,
    pub(super) discovery: Arc<CombinedDiscovery>,
    pub(super) watches: Arc<super::watches::Watches>,
    pub(super) bans: Arc<super::Bans>,
    pub(super) manifest: Arc<Manifest>,
    pub(super) video: VideoId,
    pub(super) per_peer: usize,
    pub(super) max_rounds: u32,
    pub(super) cancel: CancellationToken,
}

enum Failure {
    /// The peer's bytes failed verification: ban it (and its node id, if known).
    Lied(String, Option<crate::ids::NodeId>),
    /// The peer does not have it after all, or the request failed.
    Failed(String, bool),
    /// The peer said "not now" (its upload slots are taken, or it super-seeds and sent
    /// this chunk to someone else): ask others, and it again a little later.
    Choked(String),
    /// Our own store failed: stop.
    Local(StoreError),
}

impl WorkerCtx {
    pub(super) async fn run(self) {
        loop {
            if self.cancel.is_cancelled() {
                return;
            }
            // Register for a wake-up before looking, so a prioritize or a finished
            // job between the look and the wait is not missed.
            let woken = self.wake.notified();
            let next = {
                let mut s = self.sched.lock().unwrap();
                let next = s.next(self.per_peer);
                if matches!(next, Next::Done) {
                    s.worker_done();
                }
                next
            };
            match next {
                Next::Done => {
                    // Others may be waiting for work that will never come.
                    self.wake.notify_waiters();
                    return;
                }
                Next::Wait => {
                    tokio::select! {
                        _ = woken => {}
                        _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                        _ = self.cancel.cancelled() => return,
                    }
                }
                Next::Refresh => self.refresh().await,
                Next::Job(job) => {
                    let result = tokio::select! {
                        r = self.fetch_chunk(job.item, &job.addr, job.urgent || job.sole) => r,
                        _ = self.cancel.cancelled() => return,
                    };
                    self.finish(&job, result);
                    self.wake.notify_waiters();
                }
            }
        }
    }

    async fn fetch_chunk(
        &self,
        (index, chunk): Item,
        addr: &PeerAddr,
        urgent: bool,
    ) -> Result<(u64, ChunkOutcome), Failure> {
        let (offset, len) = self
            .manifest
            .chunk_range(index, chunk)
            .expect("queued chunks exist");
        let mut s = self
            .pool
            .session(addr)
            .await
            .map_err(|e| Failure::Failed(e.to_string(), true))?;
        let node = s.authenticated_node_id();
        if let Some(n) = node
            && self.bans.is_banned_node(n)
        {
            // A banned node on an address not seen before (the transport proved who it is).
            self.pool.put_back(addr, s);
            return Err(Failure::Lied(
                format!("node {} is banned for sending bad data", n.short()),
                node,
            ));
        }
        let data = match s.get_with(self.video, index, offset, len, urgent).await {
            Ok(d) => d,
            Err(ProtocolError::Remote {
                code: ErrorCode::Choked,
                message,
            }) => {
                self.pool.put_back(addr, s);
                return Err(Failure::Choked(message));
            }
            Err(ProtocolError::Remote {
                code: ErrorCode::NotAvailable | ErrorCode::UnknownVideo | ErrorCode::NoSuchFragment,
                message,
            }) => {
                self.pool.put_back(addr, s);
                return Err(Failure::Failed(message, false));
            }
            Err(e) => {
                self.pool.forget(addr);
                return Err(Failure::Failed(e.to_string(), true));
            }
        };
        self.pool.put_back(addr, s);
        match self
            .store
            .write_chunk_from(self.video, index, chunk, data, Some(addr.clone()))
            .await
        {
            Ok(outcome) => Ok((len, outcome)),
            Err(StoreError::HashMismatch { what, .. }) => Err(Failure::Lied(
                format!("{what} of fragment {index} failed verification"),
                node,
            )),
            Err(e) => Err(Failure::Local(e)),
        }
    }

    fn finish(&self, job: &Job, result: Result<(u64, ChunkOutcome), Failure>) {
        let (item, p, addr) = (job.item, job.peer, &job.addr);
        let mut s = self.sched.lock().unwrap();
        s.end_job(job);
        match result {
            Ok((len, outcome)) => {
                s.peers[p].failures = 0;
                s.rounds = 0; // progress: refresh rounds count from here
                s.bytes += len;
                s.chunk_verified();
                let from_seeder = s.is_seeder(p);
                s.pending.remove(&item);
                s.boost.remove(&item);
                s.sources.entry(item.0).or_default().insert(p);
                if let Some(left) = s.left.get_mut(&item.0) {
                    *left = left.saturating_sub(1);
                }
                drop(s);
                self.obs.chunk(item.0, item.1, len, addr);
                self.obs.chunk_source(len, from_seeder);
                if outcome == ChunkOutcome::FragmentComplete {
                    let mut s = self.sched.lock().unwrap();
                    let from: Vec<PeerAddr> = s
                        .sources
                        .get(&item.0)
                        .map(|set| set.iter().map(|&i| s.peers[i].addr.clone()).collect())
                        .unwrap_or_default();
                    s.done.push((item.0, from.clone()));
                    drop(s);
                    let size = self.manifest.fragments[item.0 as usize].size;
                    self.obs.fragment(item.0, size, &from);
                }
            }
            Err(Failure::Lied(msg, node)) => {
                warn!(peer = %addr, "{msg}; not using this peer again");
                s.peers[p].banned = true;
                self.bans.ban(addr, node);
                s.last_error = Some(format!("{addr}: {msg}"));
                s.enqueue(item);
                drop(s);
                self.obs.peer_failed(addr, &msg);
            }
            Err(Failure::Failed(msg, connection)) => {
                debug!(peer = %addr, fragment = item.0, chunk = item.1, error = %msg, "chunk request failed");
                s.excluded.entry(item).or_default().insert(p);
                if connection {
                    s.peers[p].failures += 1;
                    if s.peers[p].failures >= 3 {
                        s.peers[p].dead = true;
                    }
                } else {
                    s.peers[p].holds.remove(&item.0);
                    s.peers[p].chunks.remove(&item);
                }
                s.last_error = Some(format!("{addr}: {msg}"));
                s.enqueue(item);
                drop(s);
                if connection {
                    self.obs.peer_failed(addr, &msg);
                }
            }
            Err(Failure::Choked(msg)) => {
                debug!(peer = %addr, fragment = item.0, chunk = item.1, "choked: {msg}");
                s.excluded.entry(item).or_default().insert(p);
                s.enqueue(item);
                drop(s);
                // The refusal is for now: the peer may serve this chunk in a moment.
                let (sched, wake) = (self.sched.clone(), self.wake.clone());
                tokio::spawn(async move {
                    tokio::time::sleep(CHOKE_BACKOFF).await;
                    let mut s = sched.lock().unwrap();
                    if let Some(x) = s.excluded.get_mut(&item) {
                        x.remove(&p);
                    }
                    if let Some(i) = s.stalled.iter().position(|it| *it == item) {
                        s.stalled.swap_remove(i);
                        s.enqueue(item);
                    }
                    drop(s);
                    wake.notify_waiters();
                });
            }
            Err(Failure::Local(e)) => {
                s.fatal = Some(FetchError::Store(e));
            }
        }
    }

    /// Nobody can serve what is left: ask discovery again, and every peer (dead ones
    /// too) for its have-set, with backoff, a bounded number of times.
    async fn refresh(&self) {
        let round = {
            let mut s = self.sched.lock().unwrap();
            s.rounds += 1;
            s.rounds
        };
        if round > self.max_rounds {
            let mut s = self.sched.lock().unwrap();
            s.stalled.clear(); // give up: the report says what is missing
            s.refreshing = false;
            return;
        }
        let backoff = Duration::from_millis(100 * (1 << round.min(6)));
        tokio::select! {
            _ = tokio::time::sleep(backoff) => {}
            _ = self.cancel.cancelled() => return,
        }
        let found = tokio::select! {
            f = self.discovery.locate(self.video) => f,
            _ = self.cancel.cancelled() => return,
        };
        let addrs: Vec<PeerAddr> = {
            let mut s = self.sched.lock().unwrap();
            for h in found {
                s.add_peer(h.addr, None);
            }
            s.peers
                .iter()
                .filter(|p| !p.banned)
                .map(|p| p.addr.clone())
                .collect()
        };
        let asks = addrs.iter().map(|addr| async move {
            let r = async {
                let mut sess = self.pool.session(addr).await?;
                let h = sess.have(self.video).await;
                if !matches!(h, Err(ProtocolError::Io(_) | ProtocolError::Timeout(_))) {
                    self.pool.put_back(addr, sess);
                }
                h
            }
            .await;
            (addr.clone(), r.ok())
        });
        let fresh = tokio::select! {
            f = futures::future::join_all(asks) => f,
            _ = self.cancel.cancelled() => return,
        };
        for addr in &addrs {
            self.watches.ensure(addr.clone());
        }
        let mut s = self.sched.lock().unwrap();
        for (addr, have) in fresh {
            if let Some(have) = have
                && let Some(p) = s.peers.iter_mut().find(|p| p.addr == addr)
            {
                p.holds = have.into_iter().collect();
                p.dead = false;
                p.failures = 0;
            }
        }
        s.excluded.clear();
        let stalled = std::mem::take(&mut s.stalled);
        for item in stalled {
            s.enqueue(item);
        }
        s.refreshing = false;
    }
}
