//! A node's life in the swarm: it registers with the registry and announces what it
//! holds (again after every verified fragment, and whenever the registry forgot it),
//! heartbeats, publishes a fragment event after each verified fragment, reacts to other
//! nodes' events by fetching the announced fragment from the announcer at once, and
//! reconciles with the registry periodically so a lost event loses nothing. On a clean
//! shutdown it withdraws.
//!
//! Failure of the manager or the broker slows a node down but loses nothing: every loop
//! retries, re-registers and re-announces.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fragnet_core::pubsub::FragmentEvent;
use fragnet_core::registry::{NodeRegistration, Registry};
use fragnet_core::store::StoreEvent;
use fragnet_core::{FragmentIndex, FragmentStore, NodeId, PeerAddr, PubSub, VideoId};
use fragnet_http::Downloads;
use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, info, warn};

use crate::config::Want;

/// Counters of the swarm side, for logs and metrics.
#[derive(Debug, Default)]
pub struct SwarmStats {
    /// Fragment events published.
    pub events_published: AtomicU64,
    /// Fragment events received from other nodes.
    pub events_received: AtomicU64,
    /// Messages on the topic that were not fragment events (the seed's plain names).
    pub not_events: AtomicU64,
    /// Announcements sent to the registry.
    pub announcements: AtomicU64,
    /// Reconciliation rounds run.
    pub reconciliations: AtomicU64,
}

/// What the swarm side of a node needs.
pub struct Swarm {
    /// This node.
    pub node_id: NodeId,
    /// Its display name.
    pub name: String,
    /// Addresses others can dial (with the node id on QUIC ones).
    pub advertised: Vec<PeerAddr>,
    /// Its HTTP base URL, if it serves HTTP.
    pub http: Option<String>,
    /// Its store.
    pub store: Arc<FragmentStore>,
    /// Its downloads (one per video; players prioritize inside them).
    pub downloads: Arc<Downloads>,
    /// Dialing (for probing configured peers).
    pub transports: fragnet_core::Transports,
    /// Schemes this node can dial.
    pub schemes: Vec<&'static str>,
    /// The preferred scheme (the configured transport).
    pub prefer: String,
    /// Registry, if any.
    pub registry: Option<Arc<dyn Registry>>,
    /// Pub/sub, if any.
    pub pubsub: Option<Arc<dyn PubSub>>,
    /// Fragment-event topic.
    pub topic: String,
    /// What to fetch on its own.
    pub want: Want,
    /// Peers configured statically.
    pub static_peers: Vec<PeerAddr>,
    /// Reconciliation period.
    pub reconcile: Duration,
    /// Counters.
    pub stats: Arc<SwarmStats>,
}

/// The running swarm tasks.
#[must_use = "call shutdown() to withdraw from the registry"]
pub struct SwarmHandle {
    cancel: CancellationToken,
    tasks: JoinSet<()>,
    swarm: Arc<Swarm>,
}

impl SwarmHandle {
    /// Stops the loops and withdraws from the registry (bounded by a timeout).
    pub async fn shutdown(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        if let Some(reg) = &self.swarm.registry {
            match tokio::time::timeout(Duration::from_secs(3), reg.deregister(self.swarm.node_id))
                .await
            {
                Ok(Ok(())) => info!("withdrew from the registry"),
                Ok(Err(e)) => warn!("could not withdraw from the registry: {e}"),
                Err(_) => warn!("could not withdraw from the registry: timed out"),
            }
        }
    }
}

impl Swarm {
    /// Starts the loops.
    pub fn spawn(self, cancel: CancellationToken) -> SwarmHandle {
        let swarm = Arc::new(self);
        let cancel = cancel.child_token();
        let mut tasks = JoinSet::new();
        if swarm.registry.is_some() {
            tasks.spawn(swarm.clone().registry_loop(cancel.clone()));
        }
        if swarm.pubsub.is_some() {
            tasks.spawn(swarm.clone().publish_loop(cancel.clone()));
            tasks.spawn(swarm.clone().event_loop(cancel.clone()));
        }
        if swarm.want != Want::None {
            tasks.spawn(swarm.clone().reconcile_loop(cancel.clone()));
        }
        SwarmHandle {
            cancel,
            tasks,
            swarm,
        }
    }

    fn registration(&self) -> NodeRegistration {
        NodeRegistration {
            name: self.name.clone(),
            addrs: self.advertised.clone(),
            http: self.http.clone(),
        }
    }

    fn wants(&self, video: VideoId) -> bool {
        match &self.want {
            Want::None => false,
            Want::All => true,
            Want::Videos(v) => v.contains(&video),
        }
    }

    /// The address of another node this node can dial: the configured scheme first.
    pub fn pick(&self, addrs: &[PeerAddr]) -> Option<PeerAddr> {
        addrs
            .iter()
            .filter(|a| self.schemes.contains(&a.scheme.as_str()))
            .min_by_key(|a| a.scheme != self.prefer)
            .cloned()
    }

    async fn announce_all(&self, reg: &dyn Registry) {
        for (video, manifest, have) in self.store.summary() {
            if let Err(e) = reg.add_video(&manifest).await {
                debug!(video = %video.short(), "registering the manifest: {e}");
            }
            match reg.announce(self.node_id, video, &have).await {
                Ok(()) => {
                    self.stats.announcements.fetch_add(1, Ordering::Relaxed);
                }
                Err(e) => warn!(video = %video.short(), "announcing to the registry: {e}"),
            }
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
            match reg.register(self.node_id, &self.registration()).await {
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
                            if let Some(m) = self.store.manifest(video) {
                                let _ = reg.add_video(&m).await;
                            }
                            match reg.announce(self.node_id, video, &self.store.have(video)).await {
                                Ok(()) => { self.stats.announcements.fetch_add(1, Ordering::Relaxed); }
                                Err(e) => warn!(video = %video.short(), "announcing: {e}"),
                            }
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
            addrs: self.advertised.clone(),
        };
        match tokio::time::timeout(
            Duration::from_secs(5),
            ps.publish(&self.topic, event.encode()),
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

    /// Another node verified a fragment of a video this node wants: fetch it from that
    /// node now.
    async fn event_loop(self: Arc<Self>, cancel: CancellationToken) {
        let ps = self.pubsub.clone().expect("event loop runs with pub/sub");
        let mut backoff = Duration::from_millis(200);
        loop {
            let sub = tokio::select! {
                _ = cancel.cancelled() => return,
                s = ps.subscribe(&self.topic) => s,
            };
            let mut sub = match sub {
                Ok(s) => s,
                Err(e) => {
                    warn!(
                        "cannot subscribe to {:?}: {e}; retrying in {:?}",
                        self.topic, backoff
                    );
                    tokio::select! {
                        _ = cancel.cancelled() => return,
                        _ = tokio::time::sleep(backoff) => {}
                    }
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                    continue;
                }
            };
            backoff = Duration::from_millis(200);
            loop {
                let msg = tokio::select! {
                    _ = cancel.cancelled() => return,
                    m = sub.next() => m,
                };
                let Some(msg) = msg else { break };
                match FragmentEvent::parse(&msg.payload) {
                    Err(e) => {
                        self.stats.not_events.fetch_add(1, Ordering::Relaxed);
                        debug!("ignored a message on {:?}: {e}", self.topic);
                    }
                    Ok(ev) if ev.node == self.node_id => {}
                    Ok(ev) => {
                        self.stats.events_received.fetch_add(1, Ordering::Relaxed);
                        if self.wants(ev.video) || self.downloads.get(ev.video).is_some() {
                            self.on_event(ev).await;
                        }
                    }
                }
            }
        }
    }

    async fn on_event(&self, ev: FragmentEvent) {
        let Some(addr) = self.pick(&ev.addrs) else {
            debug!(node = %ev.node.short(), "no address this node can dial in the event");
            return;
        };
        if self.store.have(ev.video).contains(&ev.index) {
            return;
        }
        debug!(video = %ev.video.short(), index = ev.index, from = %addr, "fragment event");
        self.fetch_from(ev.video, vec![(addr, vec![ev.index])])
            .await;
    }

    /// Makes sure a download of `video` runs, and tells it who holds what.
    async fn fetch_from(&self, video: VideoId, holders: Vec<(PeerAddr, Vec<FragmentIndex>)>) {
        if holders.is_empty() {
            return;
        }
        if let Some(d) = self.downloads.get(video) {
            for (addr, frags) in holders {
                d.add_holder(addr, &frags);
            }
            return;
        }
        let peers: Vec<PeerAddr> = {
            let mut seen = HashSet::new();
            holders
                .iter()
                .map(|(a, _)| a.clone())
                .filter(|a| seen.insert(a.clone()))
                .collect()
        };
        self.downloads.set_peers(merge(&self.static_peers, &peers));
        match self.downloads.ensure(video, None).await {
            Ok(Some(d)) => {
                for (addr, frags) in holders {
                    d.add_holder(addr, &frags);
                }
            }
            Ok(None) => {}
            Err(e) => debug!(video = %video.short(), "not downloading yet: {e}"),
        }
    }

    /// Every `reconcile` period: which wanted videos are incomplete here, and who holds
    /// their missing fragments (from the registry, else from the configured peers).
    async fn reconcile_loop(self: Arc<Self>, cancel: CancellationToken) {
        // A short first wait: let registration and subscriptions settle.
        let mut wait = Duration::from_millis(300);
        loop {
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(wait) => {}
            }
            wait = self.reconcile;
            self.stats.reconciliations.fetch_add(1, Ordering::Relaxed);
            if let Err(e) = self.reconcile_once().await {
                debug!("reconciliation: {e}");
            }
        }
    }

    async fn reconcile_once(&self) -> anyhow::Result<()> {
        let Some(reg) = self.registry.clone() else {
            // No registry: the configured peers are the swarm.
            if !self.static_peers.is_empty() {
                let videos = match &self.want {
                    Want::Videos(v) => v.clone(),
                    _ => self.probe_static_videos().await,
                };
                for video in videos {
                    if !self.complete(video) {
                        self.downloads.set_peers(self.static_peers.clone());
                        let _ = self.downloads.ensure(video, None).await;
                    }
                }
            }
            return Ok(());
        };
        let videos: Vec<VideoId> = match &self.want {
            Want::All => reg.videos().await?.into_iter().map(|v| v.id).collect(),
            Want::Videos(v) => v.clone(),
            Want::None => Vec::new(),
        };
        for video in videos {
            if self.complete(video) {
                continue;
            }
            if self.store.manifest(video).is_none() {
                match reg.manifest(video).await {
                    Ok(m) => {
                        self.store.add_manifest(&m)?;
                    }
                    Err(e) => {
                        debug!(video = %video.short(), "no manifest yet: {e}");
                        continue;
                    }
                }
            }
            let manifest = self.store.manifest(video).expect("added above");
            let have: HashSet<FragmentIndex> = self.store.have(video).into_iter().collect();
            let mut holders: Vec<(PeerAddr, Vec<FragmentIndex>)> = Vec::new();
            for index in (0..manifest.fragment_count).filter(|i| !have.contains(i)) {
                let found = match reg.locate(video, index, 16).await {
                    Ok(h) => h,
                    Err(e) => {
                        debug!(video = %video.short(), index, "locate: {e}");
                        continue;
                    }
                };
                for node in found.peers.into_iter().filter(|n| n.id != self.node_id) {
                    if let Some(addr) = self.pick(&node.addrs) {
                        match holders.iter_mut().find(|(a, _)| *a == addr) {
                            Some((_, f)) => f.push(index),
                            None => holders.push((addr, vec![index])),
                        }
                    }
                }
            }
            self.fetch_from(video, holders).await;
        }
        Ok(())
    }

    async fn probe_static_videos(&self) -> Vec<VideoId> {
        let mut out = Vec::new();
        for addr in &self.static_peers {
            let conn = fragnet_core::protocol::connect(
                &self.transports,
                addr,
                fragnet_core::protocol::Timeouts::default(),
            )
            .await;
            if let Ok(mut c) = conn
                && let Ok(v) = c.videos().await
            {
                out.extend(v.into_iter().map(|s| s.video));
            }
        }
        out.sort();
        out.dedup();
        out
    }

    fn complete(&self, video: VideoId) -> bool {
        self.store
            .manifest(video)
            .is_some_and(|m| self.store.have(video).len() == m.fragment_count as usize)
    }
}

fn merge(a: &[PeerAddr], b: &[PeerAddr]) -> Vec<PeerAddr> {
    let mut out = a.to_vec();
    for x in b {
        if !out.contains(x) {
            out.push(x.clone());
        }
    }
    out
}
