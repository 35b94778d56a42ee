//! Discovery: who may hold a video's fragments, and news of holders as they appear.
//!
//! A [`Discovery`] is one source of such hints, a plugin like a transport or a registry:
//! - [`StaticPeers`]: the addresses a node was configured with (`--peer`);
//! - [`RegistryDiscovery`]: the registry (the manager, or any [`Registry`]);
//! - [`EventDiscovery`]: fragment events on pub/sub (and `who_has` queries, so a node
//!   that subscribes late still finds holders that announced before it came up), on
//!   one subject per video the node holds or wants;
//! - [`PeerExchange`]: peers telling each other which peers they know of a video, over
//!   the peer protocol, so a node handed one address learns the rest of the swarm.
//!
//! A node combines every source it is configured with in one [`CombinedDiscovery`];
//! every download asks the combination, never a source directly. The combination also
//! keeps a bounded directory of the holders it has heard of, which is what this node
//! tells others when they ask it for peers.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use indexmap::IndexMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{broadcast, mpsc};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::addr::PeerAddr;
use crate::engine::Want;
use crate::fetch::PeerPool;
use crate::ids::{FragmentIndex, NodeId, VideoId};
use crate::manifest::Manifest;
use crate::protocol::ProtocolError;
use crate::pubsub::{FragmentEvent, Message, PubSub, Subscription, video_topic};
use crate::registry::Registry;
use crate::store::FragmentStore;

/// A peer that may hold fragments of a video.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hint {
    /// The video.
    pub video: VideoId,
    /// Where to reach the peer.
    pub addr: PeerAddr,
    /// The fragments it holds, when the source knows; `None`: ask the peer.
    pub fragments: Option<Vec<FragmentIndex>>,
}

/// Why a source could not answer.
#[derive(Debug, Clone, thiserror::Error)]
#[error("{source_name}: {message}")]
pub struct DiscoveryError {
    /// The source.
    pub source_name: &'static str,
    /// What went wrong, for people.
    pub message: String,
}

impl DiscoveryError {
    fn new(source_name: &'static str, e: impl std::fmt::Display) -> Self {
        DiscoveryError {
            source_name,
            message: e.to_string(),
        }
    }
}

/// One source of holders.
#[async_trait]
pub trait Discovery: Send + Sync + 'static {
    /// A short name for logs and errors (`static peers`, `registry`, …).
    fn name(&self) -> &'static str;

    /// Peers that may hold `video` now. `known` are the addresses the sources asked
    /// before this one found (peer exchange asks them).
    async fn locate(&self, video: VideoId, known: &[PeerAddr])
    -> Result<Vec<Hint>, DiscoveryError>;

    /// Videos this source knows of (to pick a default video, and for `want = "all"`).
    async fn videos(&self) -> Result<Vec<VideoId>, DiscoveryError> {
        Ok(Vec::new())
    }

    /// The manifest of `video`, if this source keeps manifests (the registry does). The
    /// caller checks that it hashes to `video`.
    async fn manifest(&self, _video: VideoId) -> Option<Manifest> {
        None
    }

    /// Starts pushing holders into `sink` as they appear, until `cancel`; sources that
    /// only answer when asked return `None`.
    fn watch(
        self: Arc<Self>,
        _sink: broadcast::Sender<Hint>,
        _cancel: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        None
    }
}

/// Picks the address of another node this node can dial: a scheme it has, the
/// configured one first.
#[derive(Debug, Clone)]
pub struct AddrPicker {
    schemes: Vec<&'static str>,
    prefer: String,
}

impl AddrPicker {
    /// Dials `schemes`, preferring `prefer`.
    pub fn new(schemes: Vec<&'static str>, prefer: impl Into<String>) -> Self {
        AddrPicker {
            schemes,
            prefer: prefer.into(),
        }
    }

    /// The address to dial among a node's addresses, if any is dialable here.
    pub fn pick(&self, addrs: &[PeerAddr]) -> Option<PeerAddr> {
        addrs
            .iter()
            .filter(|a| self.schemes.contains(&a.scheme.as_str()))
            .min_by_key(|a| a.scheme != self.prefer)
            .cloned()
    }

    /// Whether this node can dial `addr` at all.
    pub fn can_dial(&self, addr: &PeerAddr) -> bool {
        self.schemes.contains(&addr.scheme.as_str())
    }
}

/// An address someone else can dial: a scheme, a host that is not a wildcard, a port.
pub fn dialable(addr: &PeerAddr) -> bool {
    let unspecified = addr
        .host
        .parse::<std::net::IpAddr>()
        .is_ok_and(|ip| ip.is_unspecified());
    addr.port != 0 && !unspecified && !addr.host.is_empty()
}

/// How long one source may take to answer one question.
const SOURCE_TIMEOUT: Duration = Duration::from_secs(5);
/// Videos the directory remembers holders of.
const DIRECTORY_VIDEOS: usize = 256;
/// Holders the directory remembers per video (the most recently heard).
pub const DIRECTORY_HOLDERS: usize = 64;

/// Every source a node is configured with, asked as one, plus the directory of holders
/// heard of (for peer exchange) and a stream of new holders.
pub struct CombinedDiscovery {
    sources: Vec<Arc<dyn Discovery>>,
    /// This node's own addresses: never a holder to dial (set once listeners are bound).
    own: OnceLock<HashSet<PeerAddr>>,
    directory: Mutex<IndexMap<VideoId, IndexMap<PeerAddr, ()>>>,
    /// Peers the node was configured with: worth telling others about any video.
    configured: Vec<PeerAddr>,
    hints: broadcast::Sender<Hint>,
}

impl std::fmt::Debug for CombinedDiscovery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CombinedDiscovery")
            .field("sources", &self.describe())
            .finish_non_exhaustive()
    }
}

impl CombinedDiscovery {
    /// Asks `sources` in this order (peer exchange last, so it can ask what the others
    /// found).
    pub fn new(sources: Vec<Arc<dyn Discovery>>) -> Self {
        CombinedDiscovery {
            sources,
            own: OnceLock::new(),
            directory: Mutex::new(IndexMap::new()),
            configured: Vec::new(),
            hints: broadcast::channel(1024).0,
        }
    }

    /// Also tells peers that ask about `peers` (the node's `--peer` list), for any
    /// video: a node handed one address of a node configured with the seeder's finds
    /// the seeder.
    pub fn with_configured(mut self, peers: Vec<PeerAddr>) -> Self {
        self.configured = peers;
        self
    }

    /// Only these peers: what a plain `fetch --peer A --peer B` asks.
    pub fn of_peers(peers: Vec<PeerAddr>, pool: Arc<PeerPool>) -> Self {
        CombinedDiscovery::new(vec![Arc::new(StaticPeers::new(peers, pool))])
    }

    /// This node's addresses, so it never lists or dials itself.
    pub fn set_own(&self, addrs: &[PeerAddr]) {
        let _ = self.own.set(addrs.iter().cloned().collect());
    }

    fn is_own(&self, addr: &PeerAddr) -> bool {
        self.own.get().is_some_and(|own| {
            own.iter()
                .any(|o| o.scheme == addr.scheme && o.host == addr.host && o.port == addr.port)
        })
    }

    /// The sources, for messages: `static peers, registry, events, peer exchange`.
    pub fn describe(&self) -> String {
        if self.sources.is_empty() {
            return "none".into();
        }
        self.sources
            .iter()
            .map(|s| s.name())
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// Whether any source is configured at all.
    pub fn is_empty(&self) -> bool {
        self.sources.is_empty()
    }

    /// New holders as sources hear of them (fragment events, mostly).
    pub fn subscribe(&self) -> broadcast::Receiver<Hint> {
        self.hints.subscribe()
    }

    /// Starts every source that watches; they stop with `cancel`.
    pub fn start(self: &Arc<Self>, cancel: &CancellationToken, tasks: &mut JoinSet<()>) {
        // Sources push into a private channel; this task records what they heard in the
        // directory before passing it on, so peer exchange can tell others.
        let (tx, mut rx) = broadcast::channel::<Hint>(1024);
        for s in &self.sources {
            if let Some(h) = s.clone().watch(tx.clone(), cancel.child_token()) {
                tasks.spawn(async move {
                    let _ = h.await;
                });
            }
        }
        let me = self.clone();
        let stop = cancel.clone();
        tasks.spawn(async move {
            loop {
                let hint = tokio::select! {
                    _ = stop.cancelled() => return,
                    h = rx.recv() => h,
                };
                match hint {
                    Ok(h) if me.is_own(&h.addr) => {}
                    Ok(h) => {
                        me.remember(h.video, std::slice::from_ref(&h.addr));
                        let _ = me.hints.send(h);
                    }
                    Err(broadcast::error::RecvError::Lagged(n)) => {
                        debug!(
                            lost = n,
                            "discovery hints lagged; reconciliation catches up"
                        )
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
    }

    /// Asks every source who may hold `video`, in order; merges their answers (a peer
    /// named by several keeps the union of what they say it holds). A source that fails
    /// or times out is skipped.
    pub async fn locate(&self, video: VideoId) -> Vec<Hint> {
        let mut merged: IndexMap<PeerAddr, Option<BTreeSet<FragmentIndex>>> = IndexMap::new();
        for s in &self.sources {
            let known: Vec<PeerAddr> = merged.keys().cloned().collect();
            let found = match tokio::time::timeout(SOURCE_TIMEOUT, s.locate(video, &known)).await {
                Ok(Ok(h)) => h,
                Ok(Err(e)) => {
                    debug!(video = %video.short(), "discovery: {e}");
                    continue;
                }
                Err(_) => {
                    debug!(video = %video.short(), source = s.name(), "discovery timed out");
                    continue;
                }
            };
            for h in found {
                if h.video != video || self.is_own(&h.addr) {
                    continue;
                }
                let entry = merged.entry(h.addr).or_insert(Some(BTreeSet::new()));
                match (entry.as_mut(), h.fragments) {
                    (Some(set), Some(f)) => set.extend(f),
                    // Someone says "ask it": ask it, whatever others said.
                    (_, None) => *entry = None,
                    (None, Some(_)) => {}
                }
            }
        }
        let addrs: Vec<PeerAddr> = merged.keys().cloned().collect();
        self.remember(video, &addrs);
        merged
            .into_iter()
            .map(|(addr, f)| Hint {
                video,
                addr,
                fragments: f.map(|s| s.into_iter().collect()),
            })
            .collect()
    }

    /// Every video any source knows of, without duplicates, and the errors of the
    /// sources that could not answer.
    pub async fn videos(&self) -> (Vec<VideoId>, Vec<DiscoveryError>) {
        let mut out = BTreeSet::new();
        let mut errors = Vec::new();
        for s in &self.sources {
            match tokio::time::timeout(SOURCE_TIMEOUT, s.videos()).await {
                Ok(Ok(v)) => out.extend(v),
                Ok(Err(e)) => errors.push(e),
                Err(_) => errors.push(DiscoveryError::new(s.name(), "timed out")),
            }
        }
        (out.into_iter().collect(), errors)
    }

    /// The manifest of `video` from the first source that has one hashing to `video`.
    pub async fn manifest(&self, video: VideoId) -> Option<Manifest> {
        for s in &self.sources {
            if let Ok(Some(m)) = tokio::time::timeout(SOURCE_TIMEOUT, s.manifest(video)).await {
                if m.video_id() == video && m.validate().is_ok() {
                    return Some(m);
                }
                warn!(source = s.name(), video = %video.short(), "a manifest that does not hash to its video id; ignored");
            }
        }
        None
    }

    fn remember(&self, video: VideoId, addrs: &[PeerAddr]) {
        if addrs.is_empty() {
            return;
        }
        let mut dir = self.directory.lock().unwrap();
        let (i, _) = dir.insert_full(video, IndexMap::new());
        // Most recently heard last; the oldest go first when full.
        let last = dir.len() - 1;
        dir.move_index(i, last);
        let holders = &mut dir[last];
        for a in addrs.iter().filter(|a| dialable(a)) {
            holders.shift_remove(a);
            holders.insert(a.clone(), ());
        }
        while holders.len() > DIRECTORY_HOLDERS {
            holders.shift_remove_index(0);
        }
        while dir.len() > DIRECTORY_VIDEOS {
            dir.shift_remove_index(0);
        }
    }

    /// Holders of `video` this node has heard of, the most recent first (what it tells
    /// a peer that asks).
    pub fn known(&self, video: VideoId, limit: usize) -> Vec<PeerAddr> {
        let dir = self.directory.lock().unwrap();
        let heard = dir.get(&video).into_iter().flat_map(|h| h.keys().rev());
        let mut out: Vec<PeerAddr> = Vec::new();
        for a in heard.chain(self.configured.iter().filter(|a| dialable(a))) {
            if out.len() == limit {
                break;
            }
            if !out.contains(a) {
                out.push(a.clone());
            }
        }
        out
    }
}

impl crate::serve::PeerDirectory for CombinedDiscovery {
    fn peers_of(&self, video: VideoId, limit: usize) -> Vec<PeerAddr> {
        self.known(video, limit)
    }
}

/// Asks each peer which videos it has (bounded, concurrent); peers that fail are
/// skipped.
async fn probe_videos(pool: &PeerPool, peers: &[PeerAddr]) -> Result<Vec<VideoId>, DiscoveryError> {
    let asks = peers.iter().map(|addr| async move {
        let r = async {
            let mut s = pool.session(addr).await?;
            let v = s.videos().await?;
            pool.put_back(addr, s);
            Ok::<_, ProtocolError>(v)
        }
        .await;
        match r {
            Ok(v) => Ok(v.into_iter().map(|s| s.video).collect::<Vec<_>>()),
            Err(e) => {
                pool.forget(addr);
                debug!(peer = %addr, "asking for videos: {e}");
                Err(format!("{addr}: {e}"))
            }
        }
    });
    let answers = futures::future::join_all(asks).await;
    if !answers.is_empty() && answers.iter().all(|a| a.is_err()) {
        let errors: Vec<String> = answers.into_iter().filter_map(|a| a.err()).collect();
        return Err(DiscoveryError::new(
            "static peers",
            format!(
                "no peer answered ({}); check the addresses and that the peers are running",
                errors.join("; ")
            ),
        ));
    }
    Ok(answers.into_iter().flatten().flatten().collect())
}

/// The peers a node was configured with: worth asking about any video.
pub struct StaticPeers {
    peers: Vec<PeerAddr>,
    pool: Arc<PeerPool>,
}

impl StaticPeers {
    /// These peers, probed through `pool`.
    pub fn new(peers: Vec<PeerAddr>, pool: Arc<PeerPool>) -> Self {
        StaticPeers { peers, pool }
    }
}

#[async_trait]
impl Discovery for StaticPeers {
    fn name(&self) -> &'static str {
        "static peers"
    }

    async fn locate(&self, video: VideoId, _: &[PeerAddr]) -> Result<Vec<Hint>, DiscoveryError> {
        Ok(self
            .peers
            .iter()
            .map(|addr| Hint {
                video,
                addr: addr.clone(),
                fragments: None,
            })
            .collect())
    }

    async fn videos(&self) -> Result<Vec<VideoId>, DiscoveryError> {
        probe_videos(&self.pool, &self.peers).await
    }
}

/// Holders a registry lists.
pub struct RegistryDiscovery {
    registry: Arc<dyn Registry>,
    me: NodeId,
    picker: AddrPicker,
}

/// Holders asked of the registry per fragment: a sample, different each time.
const REGISTRY_SAMPLE: usize = 16;

impl RegistryDiscovery {
    /// Asks `registry`, leaving out node `me`, picking addresses with `picker`.
    pub fn new(registry: Arc<dyn Registry>, me: NodeId, picker: AddrPicker) -> Self {
        RegistryDiscovery {
            registry,
            me,
            picker,
        }
    }
}

#[async_trait]
impl Discovery for RegistryDiscovery {
    fn name(&self) -> &'static str {
        "registry"
    }

    async fn locate(&self, video: VideoId, _: &[PeerAddr]) -> Result<Vec<Hint>, DiscoveryError> {
        let m = self
            .registry
            .manifest(video)
            .await
            .map_err(|e| DiscoveryError::new("registry", e))?;
        let asks = (0..m.fragment_count).map(|index| {
            let reg = self.registry.clone();
            async move { (index, reg.locate(video, index, REGISTRY_SAMPLE).await) }
        });
        let mut by_addr: IndexMap<PeerAddr, Vec<FragmentIndex>> = IndexMap::new();
        for (index, r) in futures::future::join_all(asks).await {
            let holders = match r {
                Ok(h) => h,
                Err(e) => {
                    debug!(video = %video.short(), index, "registry locate: {e}");
                    continue;
                }
            };
            for node in holders.peers.into_iter().filter(|n| n.id != self.me) {
                if let Some(addr) = self.picker.pick(&node.addrs) {
                    by_addr.entry(addr).or_default().push(index);
                }
            }
        }
        Ok(by_addr
            .into_iter()
            .map(|(addr, f)| Hint {
                video,
                addr,
                fragments: Some(f),
            })
            .collect())
    }

    async fn videos(&self) -> Result<Vec<VideoId>, DiscoveryError> {
        Ok(self
            .registry
            .videos()
            .await
            .map_err(|e| DiscoveryError::new("registry", e))?
            .into_iter()
            .map(|v| v.id)
            .collect())
    }

    async fn manifest(&self, video: VideoId) -> Option<Manifest> {
        self.registry
            .manifest(video)
            .await
            .ok()
            .map(|m| (*m).clone())
    }
}

/// A question on the fragment topic: who holds fragments of this video? Nodes holding
/// any answer with their fragment events (at most once per video every few seconds).
/// It also says where the asker is: a node downloading the same video adds the asker
/// to its download (their watches then trade chunks long before either completes a
/// fragment) and, unless this is itself a reply, says where it is too.
///
/// Wire form: `{"who_has":"<video id>","node":"<node id>","addrs":["tcp://…"],"reply":false}`
/// (`addrs` and `reply` may be left out). Nodes that don't know it ignore it like any
/// message that is not a fragment event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WhoHas {
    /// The video.
    pub who_has: VideoId,
    /// The asking node.
    pub node: NodeId,
    /// Where the asker serves (it is downloading the video), if it does.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addrs: Vec<String>,
    /// An answer to another node's question: not answered again.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub reply: bool,
}

/// A message on the fragment topic.
#[derive(Debug)]
enum TopicMessage {
    Event(FragmentEvent),
    Query(WhoHas),
    Withdrawal(crate::pubsub::Withdrawal),
}

fn parse_topic_message(payload: &[u8]) -> Option<TopicMessage> {
    if let Ok(ev) = FragmentEvent::parse(payload) {
        return Some(TopicMessage::Event(ev));
    }
    if payload.len() <= 2048
        && let Ok(q) = serde_json::from_slice::<WhoHas>(payload)
        && q.addrs.len() <= crate::pubsub::MAX_EVENT_ADDRS
    {
        return Some(TopicMessage::Query(q));
    }
    if let Ok(w) = crate::pubsub::Withdrawal::parse(payload) {
        return Some(TopicMessage::Withdrawal(w));
    }
    None
}

/// Counters of the fragment topic.
#[derive(Debug, Default)]
pub struct EventStats {
    /// Fragment events received from other nodes.
    pub events_received: std::sync::atomic::AtomicU64,
    /// Messages on the topic that were neither events nor queries (the seed's plain
    /// names).
    pub not_events: std::sync::atomic::AtomicU64,
    /// `who_has` queries answered.
    pub queries_answered: std::sync::atomic::AtomicU64,
    /// Videos whose subjects this node follows now.
    pub videos_followed: std::sync::atomic::AtomicU64,
    /// Videos not followed because [`MAX_FOLLOWED_VIDEOS`] were already followed (their
    /// holders are still found through the registry and peer exchange).
    pub follows_refused: std::sync::atomic::AtomicU64,
    /// Withdrawals heard from other nodes (a video removed or evicted there).
    pub withdrawals_received: std::sync::atomic::AtomicU64,
}

/// What this node says about itself on the topic, when it serves.
#[derive(Clone)]
pub struct EventIdentity {
    /// Its store (what it holds).
    pub store: Arc<FragmentStore>,
    /// The addresses it advertises.
    pub addrs: Vec<PeerAddr>,
}

/// Videos whose subjects one node follows at most: each is a subscription, and on
/// fragnet's broker a connection of its own.
pub const MAX_FOLLOWED_VIDEOS: usize = 64;
/// How often the followed subjects are checked against what the node holds and wants.
const FOLLOW_SWEEP: Duration = Duration::from_secs(10);
/// A video this node asked about (it was downloading it) stays followed this long after
/// the last question, then is dropped unless the node holds or wants it.
const FOLLOW_AFTER_ASKING: Duration = Duration::from_secs(60);
/// Time allowed for a subscription to be confirmed before a question is asked anyway.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Messages waiting between the subscriptions and the task that handles them.
const INBOX: usize = 1024;

/// One followed video subject.
struct Followed {
    /// Cancels the task that feeds the subject's messages into the inbox (which drops
    /// the subscription).
    cancel: CancellationToken,
    /// When this node last asked about the video.
    asked: Instant,
}

/// Holders heard of through fragment events on pub/sub.
///
/// Fragment events and `who_has` questions about a video travel on its own subject
/// ([`video_topic`], `fragments.<video id>`), and a node subscribes only to the subjects
/// of the videos it holds (to answer questions), wants (its `want` list) or is
/// downloading (subscribed the first time a download asks [`Discovery::locate`], before
/// the question goes out; dropped a minute after the last question unless it now holds
/// the video). Events are also published on the plain topic for the original clients;
/// a `want = "all"` node, which cannot know video ids in advance, listens there too and
/// learns of new videos from it.
pub struct EventDiscovery {
    pubsub: Arc<dyn PubSub>,
    topic: String,
    me: NodeId,
    picker: AddrPicker,
    /// Holders heard of per video, with the fragments their events named.
    heard: Mutex<IndexMap<VideoId, IndexMap<PeerAddr, BTreeSet<FragmentIndex>>>>,
    /// Set once this node serves: then it answers `who_has`.
    answer_as: OnceLock<EventIdentity>,
    answered: Mutex<HashMap<VideoId, AnswerWindow>>,
    asked: Mutex<HashMap<VideoId, Instant>>,
    /// How long `locate` waits for answers to a `who_has` when it heard of nobody.
    query_wait: Duration,
    /// The node's store: the videos in it are followed.
    store: Option<Arc<FragmentStore>>,
    /// Videos followed whatever the store holds (a `want` list).
    pinned: Vec<VideoId>,
    /// Also listen on the plain topic, which carries every video's events.
    all_videos: bool,
    followed: Mutex<HashMap<VideoId, Followed>>,
    inbox: mpsc::Sender<Message>,
    inbox_rx: Mutex<Option<mpsc::Receiver<Message>>>,
    /// Parent of every subscription task: cancelled when the watch ends.
    root: CancellationToken,
    /// Counters.
    pub stats: Arc<EventStats>,
}

/// How often this node answers one asker's `who_has` for one video at most.
const ANSWER_EVERY: Duration = Duration::from_secs(2);
/// Most askers of one video this node answers per [`ANSWER_EVERY`].
const ANSWERS_PER_WINDOW: usize = 16;

/// The askers of one video answered since `since`.
struct AnswerWindow {
    since: Instant,
    askers: HashSet<NodeId>,
}

impl EventDiscovery {
    /// Listens on `topic` of `pubsub`, ignoring events of node `me`.
    pub fn new(pubsub: Arc<dyn PubSub>, topic: String, me: NodeId, picker: AddrPicker) -> Self {
        let (inbox, inbox_rx) = mpsc::channel(INBOX);
        EventDiscovery {
            pubsub,
            topic,
            me,
            picker,
            heard: Mutex::new(IndexMap::new()),
            answer_as: OnceLock::new(),
            answered: Mutex::new(HashMap::new()),
            asked: Mutex::new(HashMap::new()),
            query_wait: Duration::from_millis(1500),
            store: None,
            pinned: Vec::new(),
            all_videos: false,
            followed: Mutex::new(HashMap::new()),
            inbox,
            inbox_rx: Mutex::new(Some(inbox_rx)),
            root: CancellationToken::new(),
            stats: Arc::default(),
        }
    }

    /// Follows the subjects of the videos in `store` (held, or being downloaded).
    pub fn with_store(mut self, store: Arc<FragmentStore>) -> Self {
        self.store = Some(store);
        self
    }

    /// Follows what `want` names: the listed videos' subjects, or for `all` the plain
    /// topic, where every video's events appear.
    pub fn with_want(mut self, want: &Want) -> Self {
        match want {
            Want::None => {}
            Want::All => self.all_videos = true,
            Want::Videos(v) => self.pinned = v.clone(),
        }
        self
    }

    /// The videos whose subjects are followed now.
    pub fn followed(&self) -> Vec<VideoId> {
        self.followed.lock().unwrap().keys().copied().collect()
    }

    /// Subscribes to `video`'s subject unless it is followed already (or
    /// [`MAX_FOLLOWED_VIDEOS`] are); returns once the subscription is in place, or has
    /// failed and is being retried in the background.
    pub async fn follow(&self, video: VideoId) {
        let cancel = {
            let mut followed = self.followed.lock().unwrap();
            if let Some(f) = followed.get_mut(&video) {
                f.asked = Instant::now();
                return;
            }
            if followed.len() >= MAX_FOLLOWED_VIDEOS {
                self.stats.follows_refused.fetch_add(1, Ordering::Relaxed);
                debug!(video = %video.short(), "already following {MAX_FOLLOWED_VIDEOS} videos; not following this one");
                return;
            }
            let cancel = self.root.child_token();
            followed.insert(
                video,
                Followed {
                    cancel: cancel.clone(),
                    asked: Instant::now(),
                },
            );
            self.stats
                .videos_followed
                .store(followed.len() as u64, Ordering::Relaxed);
            cancel
        };
        let topic = video_topic(&self.topic, video);
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            r = tokio::time::timeout(SUBSCRIBE_TIMEOUT, self.pubsub.subscribe(&topic)) => r,
        };
        let first = match first {
            Ok(Ok(s)) => Some(s),
            Ok(Err(e)) => {
                warn!("cannot subscribe to {topic:?}: {e}; retrying");
                None
            }
            Err(_) => {
                warn!("subscribing to {topic:?} timed out; retrying");
                None
            }
        };
        debug!(video = %video.short(), "following {topic:?}");
        tokio::spawn(forward(
            self.pubsub.clone(),
            topic,
            first,
            self.inbox.clone(),
            cancel,
        ));
    }

    /// Drops the subjects of videos this node neither holds, wants, nor asked about
    /// lately, and follows those of the videos it holds or wants.
    async fn sweep(&self) {
        let held = self.store.as_ref().map(|s| s.videos()).unwrap_or_default();
        {
            let now = Instant::now();
            let mut followed = self.followed.lock().unwrap();
            followed.retain(|video, f| {
                let keep = held.contains(video)
                    || self.pinned.contains(video)
                    || now.duration_since(f.asked) < FOLLOW_AFTER_ASKING;
                if !keep {
                    debug!(video = %video.short(), "no longer following the video's subject");
                    f.cancel.cancel();
                }
                keep
            });
            self.stats
                .videos_followed
                .store(followed.len() as u64, Ordering::Relaxed);
        }
        for video in self.pinned.iter().chain(&held) {
            let (followed, full) = {
                let f = self.followed.lock().unwrap();
                (f.contains_key(video), f.len() >= MAX_FOLLOWED_VIDEOS)
            };
            // At the bound, the rest are found through the registry and peer exchange
            // (the refusal was counted when it first happened).
            if full {
                break;
            }
            if !followed {
                self.follow(*video).await;
            }
        }
    }

    /// Whether `video`'s subject is followed (its events arrive there, so the copy on
    /// the plain topic is a duplicate).
    fn follows(&self, video: VideoId) -> bool {
        self.followed.lock().unwrap().contains_key(&video)
    }

    /// From now on, answer `who_has` for what `who.store` holds.
    pub fn answer_as(&self, who: EventIdentity) {
        let _ = self.answer_as.set(who);
    }

    fn heard_of(&self, video: VideoId) -> Vec<Hint> {
        let heard = self.heard.lock().unwrap();
        heard
            .get(&video)
            .map(|h| {
                h.iter()
                    .map(|(addr, f)| Hint {
                        video,
                        addr: addr.clone(),
                        fragments: Some(f.iter().copied().collect()),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    fn record(&self, ev: &FragmentEvent, addr: &PeerAddr) {
        let mut heard = self.heard.lock().unwrap();
        let (i, _) = heard.insert_full(ev.video, IndexMap::new());
        let holders = &mut heard[i];
        holders.entry(addr.clone()).or_default().insert(ev.index);
        while holders.len() > DIRECTORY_HOLDERS {
            holders.shift_remove_index(0);
        }
        while heard.len() > DIRECTORY_VIDEOS {
            heard.shift_remove_index(0);
        }
    }

    /// A node no longer holds `video`: stop naming it as a holder.
    fn forget(&self, video: VideoId, addrs: &[PeerAddr]) {
        let mut heard = self.heard.lock().unwrap();
        if let Some(holders) = heard.get_mut(&video) {
            holders.retain(|a, _| {
                !addrs
                    .iter()
                    .any(|w| w.scheme == a.scheme && w.host == a.host && w.port == a.port)
            });
        }
    }

    /// A node downloading `video` is at `addr` (it may hold chunks, not fragments).
    fn record_downloader(&self, video: VideoId, addr: &PeerAddr) {
        let mut heard = self.heard.lock().unwrap();
        let (i, _) = heard.insert_full(video, IndexMap::new());
        let holders = &mut heard[i];
        holders.entry(addr.clone()).or_default();
        while holders.len() > DIRECTORY_HOLDERS {
            holders.shift_remove_index(0);
        }
        while heard.len() > DIRECTORY_VIDEOS {
            heard.shift_remove_index(0);
        }
    }

    /// Another node asked who holds `video` on `topic`: say what this node holds, if
    /// anything, there (the video's subject; the plain topic for a node of an older
    /// version), at most once per [`ANSWER_EVERY`].
    async fn answer(&self, q: &WhoHas, topic: &str) {
        let Some(me) = self.answer_as.get() else {
            return;
        };
        let have = me.store.have(q.who_has);
        // Downloading: the store has the manifest and not every fragment, or this node
        // asked about the video itself (its download is being set up: the manifest may
        // not be in the store yet, and a crowd that starts together asks in exactly
        // that moment).
        let asking = self.asked.lock().unwrap().contains_key(&q.who_has);
        let downloading = match me.store.manifest(q.who_has) {
            Some(m) => have.len() < m.fragment_count as usize,
            None => asking,
        };
        if (have.is_empty() && !downloading) || me.addrs.is_empty() {
            return;
        }
        {
            let mut answered = self.answered.lock().unwrap();
            let now = Instant::now();
            answered.retain(|_, w| now.duration_since(w.since) < ANSWER_EVERY);
            let w = answered.entry(q.who_has).or_insert_with(|| AnswerWindow {
                since: now,
                askers: HashSet::new(),
            });
            // Each asker once per window: a crowd that starts together subscribes to
            // the video's subject one by one, so a later asker did not hear the answer
            // this node gave an earlier one. At most ANSWERS_PER_WINDOW askers, so a
            // large crowd cannot make every node flood the subject.
            if w.askers.len() >= ANSWERS_PER_WINDOW || !w.askers.insert(q.node) {
                return;
            }
        }
        if downloading && !q.reply {
            // Tell the asker (and every other downloader) where this downloader is.
            let here = WhoHas {
                who_has: q.who_has,
                node: self.me,
                addrs: me.addrs.iter().map(|a| a.to_string()).collect(),
                reply: true,
            };
            let payload = Bytes::from(serde_json::to_vec(&here).expect("a query serializes"));
            let _ =
                tokio::time::timeout(Duration::from_secs(5), self.pubsub.publish(topic, payload))
                    .await;
        }
        self.stats
            .queries_answered
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for index in have {
            let ev = FragmentEvent {
                video: q.who_has,
                index,
                node: self.me,
                addrs: me.addrs.clone(),
            };
            let _ = tokio::time::timeout(
                Duration::from_secs(5),
                self.pubsub.publish(topic, ev.encode()),
            )
            .await;
        }
    }
}

#[async_trait]
impl Discovery for EventDiscovery {
    fn name(&self) -> &'static str {
        "events"
    }

    async fn locate(&self, video: VideoId, _: &[PeerAddr]) -> Result<Vec<Hint>, DiscoveryError> {
        // Listen to the video's subject before asking there, so the answers are heard.
        self.follow(video).await;
        // Ask the subject (which also tells other downloaders where this node is), at
        // most once per ANSWER_EVERY per video.
        let ask = {
            let mut asked = self.asked.lock().unwrap();
            let now = Instant::now();
            asked.retain(|_, t| now.duration_since(*t) < ANSWER_EVERY);
            asked.insert(video, now).is_none()
        };
        if ask {
            let q = WhoHas {
                who_has: video,
                node: self.me,
                addrs: self
                    .answer_as
                    .get()
                    .map(|me| me.addrs.iter().map(|a| a.to_string()).collect())
                    .unwrap_or_default(),
                reply: false,
            };
            debug!(video = %video.short(), addrs = q.addrs.len(), "asking the topic who has the video");
            let payload = Bytes::from(serde_json::to_vec(&q).expect("a query serializes"));
            self.pubsub
                .publish(&video_topic(&self.topic, video), payload)
                .await
                .map_err(|e| DiscoveryError::new("events", e))?;
        }
        let heard = self.heard_of(video);
        if !heard.is_empty() || !ask {
            return Ok(heard);
        }
        // Nobody heard of yet: give holders a moment to answer.
        let deadline = Instant::now() + self.query_wait;
        while Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let heard = self.heard_of(video);
            if !heard.is_empty() {
                return Ok(heard);
            }
        }
        Ok(Vec::new())
    }

    async fn videos(&self) -> Result<Vec<VideoId>, DiscoveryError> {
        Ok(self.heard.lock().unwrap().keys().copied().collect())
    }

    fn watch(
        self: Arc<Self>,
        sink: broadcast::Sender<Hint>,
        cancel: CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let mut inbox = self.inbox_rx.lock().unwrap().take()?;
        Some(tokio::spawn(async move {
            // Every subscription ends with this task.
            let _unsubscribe = self.root.clone().drop_guard();
            if self.all_videos {
                let first = tokio::select! {
                    _ = cancel.cancelled() => return,
                    s = self.pubsub.subscribe(&self.topic) => s,
                };
                let first = first
                    .inspect_err(|e| warn!("cannot subscribe to {:?}: {e}; retrying", self.topic))
                    .ok();
                tokio::spawn(forward(
                    self.pubsub.clone(),
                    self.topic.clone(),
                    first,
                    self.inbox.clone(),
                    self.root.child_token(),
                ));
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = self.sweep() => {}
            }
            let mut sweep = tokio::time::interval(FOLLOW_SWEEP);
            sweep.tick().await;
            loop {
                let msg = tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = sweep.tick() => {
                        self.sweep().await;
                        continue;
                    }
                    m = inbox.recv() => m,
                };
                let Some(msg) = msg else { return };
                self.handle(msg, &sink).await;
            }
        }))
    }
}

impl EventDiscovery {
    /// One message from the plain topic or a video's subject.
    async fn handle(&self, msg: Message, sink: &broadcast::Sender<Hint>) {
        let on_plain_topic = msg.topic == self.topic;
        match parse_topic_message(&msg.payload) {
            None => {
                self.stats.not_events.fetch_add(1, Ordering::Relaxed);
                debug!("ignored a message on {:?}", msg.topic);
            }
            Some(TopicMessage::Event(ev)) if ev.node == self.me => {}
            // The same event also arrives on the video's subject.
            Some(TopicMessage::Event(ev)) if on_plain_topic && self.follows(ev.video) => {}
            Some(TopicMessage::Event(ev))
                if !on_plain_topic && msg.topic != video_topic(&self.topic, ev.video) =>
            {
                self.stats.not_events.fetch_add(1, Ordering::Relaxed);
                debug!(video = %ev.video.short(), "ignored an event on another video's subject {:?}", msg.topic);
            }
            Some(TopicMessage::Event(ev)) => {
                self.stats.events_received.fetch_add(1, Ordering::Relaxed);
                let Some(addr) = self.picker.pick(&ev.addrs) else {
                    debug!(node = %ev.node.short(), "no address this node can dial in the event");
                    return;
                };
                self.record(&ev, &addr);
                let _ = sink.send(Hint {
                    video: ev.video,
                    addr,
                    fragments: Some(vec![ev.index]),
                });
            }
            Some(TopicMessage::Withdrawal(w)) if w.node == self.me => {}
            Some(TopicMessage::Withdrawal(w)) => {
                self.stats
                    .withdrawals_received
                    .fetch_add(1, Ordering::Relaxed);
                debug!(node = %w.node.short(), video = %w.withdrawn.short(), "a node withdrew a video");
                self.forget(w.withdrawn, &w.addrs);
            }
            Some(TopicMessage::Query(q)) if q.node == self.me => {}
            Some(TopicMessage::Query(q)) => {
                // A downloader of the video: worth watching.
                let addrs: Vec<PeerAddr> = q
                    .addrs
                    .iter()
                    .filter(|a| a.contains("://"))
                    .filter_map(|a| a.parse().ok())
                    .filter(dialable)
                    .collect();
                debug!(node = %q.node.short(), reply = q.reply, addrs = addrs.len(), "heard a who_has");
                if let Some(addr) = self.picker.pick(&addrs) {
                    self.record_downloader(q.who_has, &addr);
                    let _ = sink.send(Hint {
                        video: q.who_has,
                        addr,
                        fragments: Some(Vec::new()),
                    });
                }
                self.answer(&q, &msg.topic).await
            }
        }
    }
}

/// Feeds the messages of `topic` into `inbox` until `cancel`, subscribing again (with
/// backoff) whenever the subscription ends or could not be made. `first` is a
/// subscription already in place, if any.
async fn forward(
    pubsub: Arc<dyn PubSub>,
    topic: String,
    mut first: Option<Subscription>,
    inbox: mpsc::Sender<Message>,
    cancel: CancellationToken,
) {
    let mut backoff = Duration::from_millis(200);
    loop {
        let mut sub = match first.take() {
            Some(s) => s,
            None => {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(Duration::from_secs(10));
                let r = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = pubsub.subscribe(&topic) => r,
                };
                match r {
                    Ok(s) => {
                        backoff = Duration::from_millis(200);
                        s
                    }
                    Err(e) => {
                        warn!("cannot subscribe to {topic:?}: {e}; retrying in {backoff:?}");
                        continue;
                    }
                }
            }
        };
        loop {
            let msg = tokio::select! {
                _ = cancel.cancelled() => return,
                m = sub.next() => m,
            };
            let Some(msg) = msg else { break };
            tokio::select! {
                _ = cancel.cancelled() => return,
                sent = inbox.send(msg) => if sent.is_err() { return },
            }
        }
    }
}

/// Peers this node's peers know of (peer exchange over the peer protocol).
pub struct PeerExchange {
    pool: Arc<PeerPool>,
    picker: AddrPicker,
    /// Peers asked per lookup.
    fan_out: usize,
}

/// Addresses a peer-exchange answer may carry (the protocol's own bound).
pub const PEX_MAX_PEERS: usize = 32;

impl PeerExchange {
    /// Asks peers through `pool`, keeping addresses `picker` can dial.
    pub fn new(pool: Arc<PeerPool>, picker: AddrPicker) -> Self {
        PeerExchange {
            pool,
            picker,
            fan_out: 8,
        }
    }
}

#[async_trait]
impl Discovery for PeerExchange {
    fn name(&self) -> &'static str {
        "peer exchange"
    }

    async fn locate(
        &self,
        video: VideoId,
        known: &[PeerAddr],
    ) -> Result<Vec<Hint>, DiscoveryError> {
        let asks = known.iter().take(self.fan_out).map(|addr| async move {
            let r = async {
                let mut s = self.pool.session(addr).await?;
                let p = s.peers(video).await?;
                self.pool.put_back(addr, s);
                Ok::<_, ProtocolError>(p)
            }
            .await;
            match r {
                Ok(p) => p,
                Err(e) => {
                    debug!(peer = %addr, "peer exchange: {e}");
                    Vec::new()
                }
            }
        });
        let mut seen: HashSet<PeerAddr> = known.iter().cloned().collect();
        let mut out = Vec::new();
        for addr in futures::future::join_all(asks).await.into_iter().flatten() {
            if self.picker.can_dial(&addr) && dialable(&addr) && seen.insert(addr.clone()) {
                out.push(Hint {
                    video,
                    addr,
                    fragments: None,
                });
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Digest;

    fn addr(s: &str) -> PeerAddr {
        PeerAddr::parse(s, "tcp").unwrap()
    }

    struct Fixed(&'static str, Vec<Hint>);

    #[async_trait]
    impl Discovery for Fixed {
        fn name(&self) -> &'static str {
            self.0
        }
        async fn locate(
            &self,
            _: VideoId,
            known: &[PeerAddr],
        ) -> Result<Vec<Hint>, DiscoveryError> {
            if self.0 == "echo" {
                // Reports what the earlier sources found, like peer exchange.
                return Ok(known
                    .iter()
                    .map(|a| Hint {
                        video: self.1[0].video,
                        addr: PeerAddr {
                            port: a.port + 1000,
                            ..a.clone()
                        },
                        fragments: None,
                    })
                    .collect());
            }
            Ok(self.1.clone())
        }
    }

    #[tokio::test]
    async fn sources_are_merged_in_order_and_later_ones_see_earlier_finds() {
        let v = VideoId(Digest::of(b"v"));
        let h = |a: &str, f: Option<Vec<u32>>| Hint {
            video: v,
            addr: addr(a),
            fragments: f,
        };
        let d = CombinedDiscovery::new(vec![
            Arc::new(Fixed("registry", vec![h("10.0.0.1:1", Some(vec![0, 1]))])),
            Arc::new(Fixed(
                "events",
                vec![
                    h("10.0.0.1:1", Some(vec![5])),
                    h("10.0.0.2:1", Some(vec![2])),
                ],
            )),
            Arc::new(Fixed("echo", vec![h("10.0.0.9:1", None)])),
        ]);
        d.set_own(&[addr("10.0.0.2:1001")]);
        let found = d.locate(v).await;
        assert_eq!(
            found,
            vec![
                h("10.0.0.1:1", Some(vec![0, 1, 5])),
                h("10.0.0.2:1", Some(vec![2])),
                h("10.0.0.1:1001", None),
            ],
            "own address left out; the union of fragments per peer"
        );
        assert_eq!(d.describe(), "registry, events, echo");
        assert_eq!(
            d.known(v, 10),
            vec![
                addr("10.0.0.1:1001"),
                addr("10.0.0.2:1"),
                addr("10.0.0.1:1")
            ],
            "the directory lists the most recently heard first"
        );
    }

    #[test]
    fn the_directory_is_bounded() {
        let d = CombinedDiscovery::new(Vec::new());
        let v = VideoId(Digest::of(b"v"));
        let many: Vec<PeerAddr> = (1..=200).map(|p| addr(&format!("10.0.0.1:{p}"))).collect();
        d.remember(v, &many);
        assert_eq!(d.known(v, 1000).len(), DIRECTORY_HOLDERS);
        assert_eq!(d.known(v, 1)[0].port, 200);
        for i in 0..(DIRECTORY_VIDEOS + 10) {
            d.remember(VideoId(Digest::of(&i.to_le_bytes())), &many[..1]);
        }
        assert!(d.directory.lock().unwrap().len() <= DIRECTORY_VIDEOS);
        assert!(d.known(v, 10).is_empty(), "the oldest video went first");
        d.remember(v, &[addr("0.0.0.0:7"), addr("10.0.0.1:0")]);
        assert!(
            d.known(v, 10).is_empty(),
            "undialable addresses are not kept"
        );
    }

    #[test]
    fn topic_messages_are_events_queries_or_ignored() {
        let v = VideoId(Digest::of(b"v"));
        let n = NodeId(Digest::of(b"n"));
        let q = serde_json::to_vec(&WhoHas {
            who_has: v,
            node: n,
            addrs: vec!["tcp://10.0.0.1:6001".into()],
            reply: false,
        })
        .unwrap();
        assert!(matches!(
            parse_topic_message(&q),
            Some(TopicMessage::Query(_))
        ));
        assert!(parse_topic_message(b"fragment_5.bin").is_none());
        assert!(parse_topic_message(br#"{"who_has":"zz","node":"x"}"#).is_none());
        let ev = FragmentEvent {
            video: v,
            index: 3,
            node: n,
            addrs: vec![addr("tcp://10.0.0.1:6001")],
        };
        assert!(matches!(
            parse_topic_message(&ev.encode()),
            Some(TopicMessage::Event(_))
        ));
    }

    #[tokio::test]
    async fn a_video_no_longer_held_wanted_or_asked_about_is_unfollowed() {
        let bus = crate::pubsub::LocalPubSub::default();
        let (wanted, asked) = (
            VideoId(Digest::of(b"wanted")),
            VideoId(Digest::of(b"asked")),
        );
        let d = EventDiscovery::new(
            Arc::new(bus.clone()),
            "fragments".into(),
            NodeId(Digest::of(b"me")),
            AddrPicker::new(vec!["tcp"], "tcp"),
        )
        .with_want(&Want::Videos(vec![wanted]));
        d.sweep().await;
        d.follow(asked).await;
        let mut both = d.followed();
        both.sort();
        let mut expect = vec![wanted, asked];
        expect.sort();
        assert_eq!(both, expect);
        assert_eq!(bus.stats().subscriptions, 2);
        // A minute after the last question, the asked-about video is dropped; the
        // wanted one stays.
        d.followed.lock().unwrap().get_mut(&asked).unwrap().asked =
            Instant::now() - FOLLOW_AFTER_ASKING - Duration::from_secs(1);
        d.sweep().await;
        assert_eq!(d.followed(), vec![wanted]);
        assert_eq!(d.stats.videos_followed.load(Ordering::Relaxed), 1);
        tokio::time::timeout(Duration::from_secs(5), async {
            while bus.stats().subscriptions != 1 {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
        .await
        .expect("the subscription of the dropped video ends");
    }

    #[test]
    fn picker_prefers_the_configured_scheme() {
        let p = AddrPicker::new(vec!["tcp", "quic"], "quic");
        let a = [addr("tcp://h:1"), addr("quic://h:2"), addr("udp://h:3")];
        assert_eq!(p.pick(&a).unwrap().scheme, "quic");
        let p = AddrPicker::new(vec!["tcp"], "quic");
        assert_eq!(p.pick(&a).unwrap().scheme, "tcp");
        assert!(p.pick(&[addr("udp://h:3")]).is_none());
    }
}
