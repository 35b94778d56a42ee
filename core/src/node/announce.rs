//! A serving node telling the swarm what it holds: it registers with the registry and
//! announces its fragments (again after every verified fragment, and whenever the
//! registry forgot it), heartbeats, and publishes a fragment event after each verified
//! fragment (on the video's subject and on the plain topic, see
//! [`publish_event`]). On a clean shutdown it withdraws.
//!
//! Failure of the registry or the pub/sub slows a node down but loses nothing: every
//! loop retries, re-registers and re-announces.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::ids::{FragmentIndex, NodeId, VideoId};
use crate::pubsub::{FragmentEvent, PubSub, publish_event};
use crate::registry::{NodeRegistration, Registry};
use crate::store::{FragmentStore, StoreEvent};

/// Counters of what a node told the swarm.
#[derive(Debug, Default)]
pub struct AnnounceStats {
    /// Fragment events published.
    pub events_published: AtomicU64,
    /// Announcements sent to the registry.
    pub announcements: AtomicU64,
}

/// What the announcing side of a node needs.
pub(crate) struct Announcer {
    pub(crate) node_id: NodeId,
    pub(crate) registration: NodeRegistration,
    pub(crate) store: Arc<FragmentStore>,
    pub(crate) registry: Option<Arc<dyn Registry>>,
    pub(crate) pubsub: Option<Arc<dyn PubSub>>,
    pub(crate) topic: String,
    pub(crate) stats: Arc<AnnounceStats>,
}

/// The running announce loops.
pub(crate) struct AnnounceHandle {
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    announcer: Arc<Announcer>,
}

impl AnnounceHandle {
    /// Stops the loops and withdraws from the registry (bounded by a timeout).
    pub(crate) async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        if let Some(reg) = &self.announcer.registry {
            match tokio::time::timeout(
                Duration::from_secs(3),
                reg.deregister(self.announcer.node_id),
            )
            .await
            {
                Ok(Ok(())) => info!("withdrew from the registry"),
                Ok(Err(e)) => warn!("could not withdraw from the registry: {e}"),
                Err(_) => warn!("could not withdraw from the registry: timed out"),
            }
        }
    }
}

impl Announcer {
    /// Starts the loops; they stop with `cancel` (or the handle's shutdown).
    pub(crate) fn spawn(self, cancel: &CancellationToken) -> AnnounceHandle {
        let a = Arc::new(self);
        let cancel = cancel.child_token();
        let mut tasks = JoinSet::new();
        if a.registry.is_some() {
            tasks.spawn(a.clone().registry_loop(cancel.clone()));
        }
        if a.pubsub.is_some() {
            tasks.spawn(a.clone().publish_loop(cancel.clone()));
        }
        AnnounceHandle {
            cancel,
            tasks,
            announcer: a,
        }
    }

    async fn announce(&self, reg: &dyn Registry, video: VideoId) {
        if let Some(m) = self.store.manifest(video)
            && let Err(e) = reg.add_video(&m).await
        {
            debug!(video = %video.short(), "registering the manifest: {e}");
        }
        match reg
            .announce(self.node_id, video, &self.store.have(video))
            .await
        {
            Ok(()) => {
                self.stats.announcements.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => warn!(video = %video.short(), "announcing to the registry: {e}"),
        }
    }

    async fn announce_all(&self, reg: &dyn Registry) {
        for video in self.store.videos() {
            self.announce(reg, video).await;
        }
    }

    /// Register, announce, heartbeat; announce again after every verified fragment and
    /// whenever the registry says it did not know this node.
    async fn registry_loop(self: Arc<Self>, cancel: CancellationToken) {
        let reg = self
            .registry
            .clone()
            .expect("registry loop runs with a registry");
        let mut events = self.store.subscribe();
        let mut backoff = Duration::from_millis(200);
        let mut heartbeat: Duration;
        let mut registered = false;
        loop {
            match reg.register(self.node_id, &self.registration).await {
                Ok(lease) => {
                    if !registered || lease.new {
                        info!(node = %self.node_id.short(), "registered with the registry; announcing what this node holds");
                        self.announce_all(reg.as_ref()).await;
                    }
                    registered = true;
                    backoff = Duration::from_millis(200);
                    heartbeat = Duration::from_millis(lease.heartbeat_ms.clamp(200, 60_000));
                }
                Err(e) => {
                    if registered {
                        warn!("heartbeat failed: {e}; retrying");
                    } else {
                        warn!(
                            "cannot register with the registry: {e}; retrying in {:?}",
                            backoff
                        );
                    }
                    registered = false;
                    heartbeat = backoff;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            }
            let next = tokio::time::sleep(heartbeat);
            tokio::pin!(next);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = &mut next => break,
                    ev = events.recv() => match ev {
                        Ok(StoreEvent::FragmentComplete { video, .. }) if registered => {
                            self.announce(reg.as_ref(), video).await;
                        }
                        Ok(_) => {}
                        Err(RecvError::Lagged(_)) if registered => self.announce_all(reg.as_ref()).await,
                        Err(RecvError::Lagged(_)) => {}
                        Err(RecvError::Closed) => return,
                    },
                }
            }
        }
    }

    /// After each verified fragment, publish a fragment event (ids and addresses only,
    /// never data).
    async fn publish_loop(self: Arc<Self>, cancel: CancellationToken) {
        let ps = self.pubsub.clone().expect("publish loop runs with pub/sub");
        let mut events = self.store.subscribe();
        // What this node already holds is news to nodes that subscribed before it came
        // up: say so once (one small event per fragment, ids only).
        for (video, _, have) in self.store.summary() {
            for index in have {
                self.publish(ps.as_ref(), video, index).await;
            }
        }
        loop {
            let ev = tokio::select! {
                _ = cancel.cancelled() => return,
                ev = events.recv() => ev,
            };
            match ev {
                Ok(StoreEvent::FragmentComplete { video, index }) => {
                    self.publish(ps.as_ref(), video, index).await
                }
                Ok(_) | Err(RecvError::Lagged(_)) => {}
                Err(RecvError::Closed) => return,
            }
        }
    }

    async fn publish(&self, ps: &dyn PubSub, video: VideoId, index: FragmentIndex) {
        let event = FragmentEvent {
            video,
            index,
            node: self.node_id,
            addrs: self.registration.addrs.clone(),
        };
        match tokio::time::timeout(
            Duration::from_secs(5),
            publish_event(ps, &self.topic, &event),
        )
        .await
        {
            Ok(Ok(())) => {
                self.stats.events_published.fetch_add(1, Ordering::Relaxed);
            }
            Ok(Err(e)) => {
                warn!(video = %video.short(), index, "publishing the fragment event: {e}")
            }
            Err(_) => {
                warn!(video = %video.short(), index, "publishing the fragment event timed out")
            }
        }
    }
}
