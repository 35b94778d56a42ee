//! A node: one builder, one handle.
//!
//! ```text
//! Node::builder(identity, store, transports)      configuration, plugins
//!   .listen(..) .peers(..) .registry(..) .pubsub(..) .want(..) .service(http) ...
//!   .spawn(&cancel)
//!     1. discovery   static peers + registry + fragment events + peer exchange
//!     2. serving     listeners on every transport (peer protocol, seed's bare names)
//!     3. engine      Downloads: one download per video, fed by discovery
//!     4. services    e.g. the player's HTTP side, given the engine
//!     5. announcing  register, announce, heartbeat, publish fragment events
//!   -> NodeHandle    shutdown(): 5, 4, engine and discovery, then 2 (with a grace)
//! ```
//!
//! `fragnet peer`, `run`, `demo` and `fetch` (a node that does not listen) all build
//! nodes here, and so do the tests.

mod accept;
mod announce;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use accept::{ServeHandle, ServeLimits, serve};
pub use announce::AnnounceStats;

use crate::addr::PeerAddr;
use crate::discovery::{
    AddrPicker, CombinedDiscovery, Discovery, EventDiscovery, EventIdentity, EventStats,
    PeerExchange, RegistryDiscovery, StaticPeers,
};
use crate::engine::{Downloads, Want};
use crate::fetch::{FetchOptions, Fetcher, PeerPool};
use crate::identity::Identity;
use crate::ids::{NodeId, VideoId};
use crate::library::{Library, Withdrawer};
use crate::protocol::Timeouts;
use crate::pubsub::PubSub;
use crate::ratelimit::RateLimiter;
use crate::registry::{NodeRegistration, Registry};
use crate::serve::{ServeContext, ServeStats};
use crate::store::FragmentStore;
use crate::transport::{TransportError, Transports};

/// Which addresses a node registers and puts in its fragment events.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Advertise {
    /// The bound addresses; a wildcard host (`0.0.0.0`, `::`) is replaced by this one.
    Bound {
        /// This machine's address for others.
        wildcard: String,
    },
    /// This host on every bound address, with its real port and scheme.
    Host(String),
    /// These addresses, as given.
    Addrs(Vec<PeerAddr>),
}

impl Default for Advertise {
    fn default() -> Self {
        Advertise::Bound {
            wildcard: "127.0.0.1".into(),
        }
    }
}

impl Advertise {
    /// The addresses to advertise for `bound`; QUIC ones carry `node`, so dialers check
    /// they reach this node.
    pub fn resolve(&self, bound: &[PeerAddr], node: NodeId) -> Vec<PeerAddr> {
        let mut out: Vec<PeerAddr> = match self {
            Advertise::Addrs(a) => a.clone(),
            Advertise::Host(h) => bound
                .iter()
                .map(|b| PeerAddr {
                    host: h.clone(),
                    ..b.clone()
                })
                .collect(),
            Advertise::Bound { wildcard } => bound
                .iter()
                .map(|b| {
                    let any = b.host == "0.0.0.0" || b.host == "::";
                    PeerAddr {
                        host: if any {
                            wildcard.clone()
                        } else {
                            b.host.clone()
                        },
                        ..b.clone()
                    }
                })
                .collect(),
        };
        for a in &mut out {
            if a.scheme == "quic" {
                a.node_id = Some(node);
            }
        }
        out
    }
}

/// What a node gives the services it runs (the player's HTTP side).
#[derive(Clone)]
pub struct NodeParts {
    /// The node's id.
    pub node_id: NodeId,
    /// Its display name.
    pub name: String,
    /// Its store.
    pub store: Arc<FragmentStore>,
    /// Its download engine.
    pub engine: Arc<Downloads>,
    /// Its serving side (counters).
    pub serve: Arc<ServeContext>,
    /// Its library: add, remove, pin, the disk quota.
    pub library: Arc<Library>,
    /// The host others reach it at (for URLs).
    pub host: String,
    /// What it heard on the fragment topic, when it has pub/sub.
    pub events: Option<Arc<EventStats>>,
    /// The addresses it registers and announces (for share links).
    pub advertised: Vec<PeerAddr>,
}

/// Why a service could not start.
pub type ServiceError = Box<dyn std::error::Error + Send + Sync>;

/// Something a node runs beside the peer protocol, with the node's engine: started
/// once the engine exists and before the node registers (so its URL is registered),
/// stopped first.
#[async_trait]
pub trait NodeService: Send + 'static {
    /// Starts; runs until the returned service is shut down or `cancel` fires.
    async fn start(
        self: Box<Self>,
        node: NodeParts,
        cancel: CancellationToken,
    ) -> Result<Box<dyn RunningService>, ServiceError>;
}

/// A service a node started.
#[async_trait]
pub trait RunningService: Send + Sync {
    /// Its base URL for others (`http://host:port`), registered with the node.
    fn url(&self) -> Option<String>;
    /// Stops it.
    async fn shutdown(self: Box<Self>);
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// A listen address could not be bound.
    #[error(transparent)]
    Listen(#[from] TransportError),
    /// A service failed to start.
    #[error("starting a node service: {0}")]
    Service(ServiceError),
}

/// Chunk transfers a node serves at once by default: few enough that each chunk
/// arrives quickly (and can be passed on), enough to keep an upload link busy.
pub const DEFAULT_UPLOAD_SLOTS: usize = 4;

/// Builds nodes. See the module docs for the order of assembly.
pub struct Node;

impl Node {
    /// A node with this identity, store and transports; every other setting has a
    /// default (listen nowhere, no discovery, fetch nothing on its own).
    pub fn builder(
        identity: Arc<Identity>,
        store: Arc<FragmentStore>,
        transports: Transports,
    ) -> NodeBuilder {
        let prefer = transports.schemes().first().copied().unwrap_or("tcp");
        NodeBuilder {
            name: identity.node_id().short(),
            identity,
            store,
            transports,
            listen: Vec::new(),
            advertise: Advertise::default(),
            default_video: None,
            upload: None,
            timeouts: Timeouts::default(),
            serve_limits: ServeLimits::default(),
            fetch: FetchOptions::default(),
            peers: Vec::new(),
            registry: None,
            pubsub: None,
            topic: "fragments".into(),
            want: Want::None,
            reconcile: Duration::from_secs(10),
            prefer: prefer.to_string(),
            peer_exchange: true,
            upload_slots: Some(DEFAULT_UPLOAD_SLOTS),
            super_seed: true,
            max_disk: None,
            pinned: Vec::new(),
            services: Vec::new(),
        }
    }
}

/// A node's configuration and plugins, before it starts.
#[must_use = "a builder does nothing until spawn()"]
pub struct NodeBuilder {
    identity: Arc<Identity>,
    store: Arc<FragmentStore>,
    transports: Transports,
    name: String,
    listen: Vec<PeerAddr>,
    advertise: Advertise,
    default_video: Option<VideoId>,
    upload: Option<u64>,
    timeouts: Timeouts,
    serve_limits: ServeLimits,
    fetch: FetchOptions,
    peers: Vec<PeerAddr>,
    registry: Option<Arc<dyn Registry>>,
    pubsub: Option<Arc<dyn PubSub>>,
    topic: String,
    want: Want,
    reconcile: Duration,
    prefer: String,
    peer_exchange: bool,
    upload_slots: Option<usize>,
    super_seed: bool,
    max_disk: Option<u64>,
    pinned: Vec<VideoId>,
    services: Vec<Box<dyn NodeService>>,
}

impl NodeBuilder {
    /// Display name.
    pub fn name(mut self, name: impl Into<String>) -> Self {
        self.name = name.into();
        self
    }
    /// Addresses to listen on (port 0 picks one); none: a node that only downloads.
    pub fn listen(mut self, addrs: Vec<PeerAddr>) -> Self {
        self.listen = addrs;
        self
    }
    /// What to register and announce.
    pub fn advertise(mut self, a: Advertise) -> Self {
        self.advertise = a;
        self
    }
    /// The video a bare fragment name refers to.
    pub fn default_video(mut self, v: Option<VideoId>) -> Self {
        self.default_video = v;
        self
    }
    /// Upload limit in bytes per second for everything served.
    pub fn upload_limit(mut self, bytes_per_sec: Option<u64>) -> Self {
        self.upload = bytes_per_sec;
        self
    }
    /// Protocol timeouts (serving and fetching).
    pub fn timeouts(mut self, t: Timeouts) -> Self {
        self.timeouts = t;
        self
    }
    /// Connection limits and shutdown grace of the serving side.
    pub fn serve_limits(mut self, l: ServeLimits) -> Self {
        self.serve_limits = l;
        self
    }
    /// Download tuning.
    pub fn fetch_options(mut self, o: FetchOptions) -> Self {
        self.fetch = o;
        self
    }
    /// Peers to ask without a registry (a discovery source).
    pub fn peers(mut self, peers: Vec<PeerAddr>) -> Self {
        self.peers = peers;
        self
    }
    /// The registry: registered with, announced to, and a discovery source.
    pub fn registry(mut self, r: Option<Arc<dyn Registry>>) -> Self {
        self.registry = r;
        self
    }
    /// Pub/sub for fragment events on `topic`: published to, and a discovery source.
    pub fn pubsub(mut self, p: Option<Arc<dyn PubSub>>, topic: impl Into<String>) -> Self {
        self.pubsub = p;
        self.topic = topic.into();
        self
    }
    /// Videos to fetch on their own.
    pub fn want(mut self, w: Want) -> Self {
        self.want = w;
        self
    }
    /// How often wanted videos are looked up again (catches lost events).
    pub fn reconcile(mut self, every: Duration) -> Self {
        self.reconcile = every;
        self
    }
    /// The scheme to dial first when a peer has several.
    pub fn prefer(mut self, scheme: impl Into<String>) -> Self {
        self.prefer = scheme.into();
        self
    }
    /// Ask peers for the peers they know (on by default).
    pub fn peer_exchange(mut self, on: bool) -> Self {
        self.peer_exchange = on;
        self
    }
    /// Chunk transfers served at once (`None`: no bound); more wait briefly, then are
    /// told to ask another peer.
    pub fn upload_slots(mut self, n: Option<usize>) -> Self {
        self.upload_slots = n;
        self
    }
    /// Super-seed videos held whole: every chunk goes out once before any goes out
    /// twice (on by default).
    pub fn super_seed(mut self, on: bool) -> Self {
        self.super_seed = on;
        self
    }
    /// The most bytes the store may hold (`None`: no bound). Downloads that would
    /// exceed it evict the least recently watched unpinned videos, or fail.
    pub fn max_disk(mut self, bytes: Option<u64>) -> Self {
        self.max_disk = bytes;
        self
    }
    /// Videos never evicted (the node seeded them itself); kept across restarts.
    pub fn pinned(mut self, videos: Vec<VideoId>) -> Self {
        self.pinned = videos;
        self
    }
    /// A service to run with the node's engine (the player's HTTP side).
    pub fn service(mut self, s: impl NodeService) -> Self {
        self.services.push(Box::new(s));
        self
    }

    /// Starts the node: discovery, serving, the engine, services, announcing. Every
    /// part stops with `cancel` or [`NodeHandle::shutdown`].
    pub async fn spawn(self, cancel: &CancellationToken) -> Result<NodeHandle, NodeError> {
        let cancel = cancel.child_token();
        let node_id = self.identity.node_id();
        let pool = Arc::new(PeerPool::new(self.transports.clone(), self.timeouts));
        let picker = AddrPicker::new(self.transports.schemes(), self.prefer.clone());

        // 1. Discovery: every configured source, peer exchange last (it asks the
        // peers the others found).
        let mut sources: Vec<Arc<dyn Discovery>> = Vec::new();
        if !self.peers.is_empty() {
            sources.push(Arc::new(StaticPeers::new(self.peers.clone(), pool.clone())));
        }
        if let Some(r) = &self.registry {
            sources.push(Arc::new(RegistryDiscovery::new(
                r.clone(),
                node_id,
                picker.clone(),
            )));
        }
        let events = self.pubsub.as_ref().map(|p| {
            Arc::new(
                EventDiscovery::new(p.clone(), self.topic.clone(), node_id, picker.clone())
                    .with_store(self.store.clone())
                    .with_want(&self.want),
            )
        });
        if let Some(e) = &events {
            sources.push(e.clone());
        }
        if self.peer_exchange && !sources.is_empty() {
            sources.push(Arc::new(PeerExchange::new(pool.clone(), picker.clone())));
        }
        let discovery =
            Arc::new(CombinedDiscovery::new(sources).with_configured(self.peers.clone()));

        // 2. Serving.
        let ctx = Arc::new(ServeContext {
            store: self.store.clone(),
            node_id,
            name: self.name.clone(),
            default_video: self.default_video,
            upload: self.upload.map(|r| Arc::new(RateLimiter::new(r))),
            timeouts: self.timeouts,
            exchange: Some(discovery.clone()),
            upload_slots: self
                .upload_slots
                .map(|n| Arc::new(tokio::sync::Semaphore::new(n.max(1)))),
            super_seed: self
                .super_seed
                .then(|| Arc::new(crate::serve::SuperSeed::default())),
            stats: ServeStats::default(),
        });
        let serving = serve(
            &self.transports,
            &self.listen,
            ctx.clone(),
            self.serve_limits.clone(),
            cancel.clone(),
        )
        .await?;
        let bound = serving.local_addrs().to_vec();
        let advertised = if bound.is_empty() {
            Vec::new()
        } else {
            self.advertise.resolve(&bound, node_id)
        };
        let own: Vec<PeerAddr> = bound.iter().chain(&advertised).cloned().collect();
        discovery.set_own(&own);
        if let Some(e) = &events
            && !advertised.is_empty()
        {
            e.answer_as(EventIdentity {
                store: self.store.clone(),
                addrs: advertised.clone(),
            });
        }

        // 3. The library and the engine: every download is admitted under the quota.
        let library = Arc::new(Library::open(self.store.clone(), self.max_disk));
        library.pin_seeded(&self.pinned);
        library.set_withdrawer(Withdrawer {
            node: Some(node_id),
            registry: self.registry.clone(),
            pubsub: self.pubsub.clone().map(|p| (p, self.topic.clone())),
            addrs: advertised.clone(),
        });
        let engine = Arc::new(
            Downloads::new(
                Fetcher::new(self.store.clone(), pool, self.fetch).with_library(library.clone()),
                discovery.clone(),
                self.want.clone(),
                cancel.child_token(),
            )
            .with_library(library.clone()),
        );

        // 4. Services.
        let host = advertised
            .first()
            .map(|a| a.host.clone())
            .unwrap_or_else(|| "127.0.0.1".into());
        let parts = NodeParts {
            node_id,
            name: self.name.clone(),
            store: self.store.clone(),
            engine: engine.clone(),
            serve: ctx.clone(),
            library: library.clone(),
            host,
            events: events.as_ref().map(|e| e.stats.clone()),
            advertised: advertised.clone(),
        };
        let mut services = Vec::new();
        for s in self.services {
            match s.start(parts.clone(), cancel.child_token()).await {
                Ok(r) => services.push(r),
                Err(e) => {
                    for r in services {
                        r.shutdown().await;
                    }
                    cancel.cancel();
                    serving.shutdown().await;
                    return Err(NodeError::Service(e));
                }
            }
        }
        let url = services.iter().find_map(|s| s.url());

        let mut tasks = JoinSet::new();
        discovery.start(&cancel, &mut tasks);
        engine.spawn(self.reconcile, &cancel, &mut tasks);

        // 5. Announcing: only a node others can dial registers and publishes.
        let announce_stats = Arc::new(AnnounceStats::default());
        let announce = (!advertised.is_empty()).then(|| {
            announce::Announcer {
                node_id,
                registration: NodeRegistration {
                    name: self.name.clone(),
                    addrs: advertised.clone(),
                    http: url.clone(),
                },
                store: self.store.clone(),
                registry: self.registry.clone(),
                pubsub: self.pubsub.clone(),
                topic: self.topic.clone(),
                stats: announce_stats.clone(),
            }
            .spawn(&cancel)
        });

        Ok(NodeHandle {
            node_id,
            name: self.name,
            store: self.store,
            transports: self.transports,
            serve: ctx,
            engine,
            library,
            discovery,
            registry: self.registry,
            bound,
            advertised,
            url,
            announce_stats,
            event_stats: events.map(|e| e.stats.clone()),
            serving,
            services,
            announce,
            tasks,
            cancel,
        })
    }
}

/// A running node.
#[must_use = "dropping the handle does not stop the node; call shutdown()"]
pub struct NodeHandle {
    node_id: NodeId,
    name: String,
    store: Arc<FragmentStore>,
    transports: Transports,
    serve: Arc<ServeContext>,
    engine: Arc<Downloads>,
    library: Arc<Library>,
    discovery: Arc<CombinedDiscovery>,
    registry: Option<Arc<dyn Registry>>,
    bound: Vec<PeerAddr>,
    advertised: Vec<PeerAddr>,
    url: Option<String>,
    announce_stats: Arc<AnnounceStats>,
    event_stats: Option<Arc<EventStats>>,
    serving: ServeHandle,
    services: Vec<Box<dyn RunningService>>,
    announce: Option<announce::AnnounceHandle>,
    tasks: JoinSet<()>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for NodeHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeHandle")
            .field("node_id", &self.node_id)
            .field("bound", &self.bound)
            .finish_non_exhaustive()
    }
}

impl NodeHandle {
    /// The node id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }
    /// The display name.
    pub fn name(&self) -> &str {
        &self.name
    }
    /// The store.
    pub fn store(&self) -> &Arc<FragmentStore> {
        &self.store
    }
    /// The transports it dials with.
    pub fn transports(&self) -> &Transports {
        &self.transports
    }
    /// The serving side (counters).
    pub fn serve_context(&self) -> &Arc<ServeContext> {
        &self.serve
    }
    /// The download engine: the only way this node downloads.
    pub fn engine(&self) -> &Arc<Downloads> {
        &self.engine
    }
    /// The library: add, remove, pin, the disk quota.
    pub fn library(&self) -> &Arc<Library> {
        &self.library
    }
    /// The combined discovery.
    pub fn discovery(&self) -> &Arc<CombinedDiscovery> {
        &self.discovery
    }
    /// The registry, when configured.
    pub fn registry(&self) -> Option<&Arc<dyn Registry>> {
        self.registry.as_ref()
    }
    /// The addresses actually bound.
    pub fn bound(&self) -> &[PeerAddr] {
        &self.bound
    }
    /// The addresses registered and announced.
    pub fn advertised(&self) -> &[PeerAddr] {
        &self.advertised
    }
    /// The first service's base URL (the player), when one runs.
    pub fn url(&self) -> Option<&str> {
        self.url.as_deref()
    }
    /// What it told the swarm.
    pub fn announce_stats(&self) -> &Arc<AnnounceStats> {
        &self.announce_stats
    }
    /// What it heard on the fragment topic, when it has pub/sub.
    pub fn event_stats(&self) -> Option<&Arc<EventStats>> {
        self.event_stats.as_ref()
    }

    /// Stops in a fixed order: withdraw from the registry and stop publishing; stop
    /// the services (HTTP); stop the engine and discovery (downloads keep their
    /// verified chunks); stop serving, letting transfers in flight finish for the
    /// grace period.
    pub async fn shutdown(mut self) {
        if let Some(a) = self.announce.take() {
            a.shutdown().await;
        }
        for s in self.services.drain(..) {
            s.shutdown().await;
        }
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
        self.serving.shutdown().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn addr(s: &str) -> PeerAddr {
        PeerAddr::parse(s, "tcp").unwrap()
    }

    #[test]
    fn advertise_replaces_wildcards_and_names_quic_identities() {
        let node = NodeId(crate::ids::Digest::of(b"n"));
        let bound = [addr("tcp://0.0.0.0:6001"), addr("quic://127.0.0.1:6002")];
        let a = Advertise::Bound {
            wildcard: "10.0.0.5".into(),
        }
        .resolve(&bound, node);
        assert_eq!(a[0], addr("tcp://10.0.0.5:6001"));
        assert_eq!(
            (a[1].host.as_str(), a[1].node_id),
            ("127.0.0.1", Some(node))
        );
        let a = Advertise::Host("peer1".into()).resolve(&bound, node);
        assert!(a.iter().all(|a| a.host == "peer1"));
        assert_eq!(a[0].port, 6001);
        let a = Advertise::Addrs(vec![addr("tcp://x:1")]).resolve(&bound, node);
        assert_eq!(a, vec![addr("tcp://x:1")]);
    }
}
