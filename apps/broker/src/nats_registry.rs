//! [`NatsRegistry`]: the `nats` registry plugin, kept in NATS JetStream key-value
//! buckets so that any number of managers (and nodes, directly) share one registry that
//! survives any one of them, and a clustered NATS survives the loss of a server.
//!
//! Three buckets, named `<prefix>-nodes`, `<prefix>-holdings` and `<prefix>-manifests`:
//!
//! - **nodes**: key `<node-id>`, value the node's record and its *epoch* (a random number
//!   chosen when the node registers as new). The bucket's `max_age` is the lease TTL, and
//!   a heartbeat is a put of the same key, so a node whose heartbeats stop is removed by
//!   the server itself. The Debian nats-server (2.9) has no per-message TTL (2.11 has),
//!   so the TTL is a property of the bucket: the first registry to create the bucket
//!   sets it and every other one adopts it.
//! - **holdings**: key `<node-id>.<video-id>`, value the have-set and the epoch of the
//!   registration it was announced under. A holding counts only while its node is alive
//!   with that same epoch, so when a node expires and registers again as new (a new
//!   epoch), its old holdings stop counting at once, without a sweeper, until it
//!   announces again (which [`Lease::new`] asks it to do).
//! - **manifests**: key `<video-id>`, value the manifest's canonical bytes (at most the
//!   server's `max_payload`, 1 MiB by default).
//!
//! Reads are served from a replica of the buckets in memory (a [`MemoryRegistry`] fed by
//! KV watches, which also gives [`Registry::changes`]), so a holder lookup costs what it
//! costs in memory and the answer is still a bounded random sample. Each write waits
//! until the replica has applied it (the revision the server acknowledged), so a client
//! reads its own writes; another registry sharing the buckets sees them once its
//! watches deliver them (milliseconds). Node limits and video limits are checked
//! against the replica, so concurrent registrations through several managers can
//! overshoot a limit by the few that race.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_nats::jetstream::{self, kv};
use async_trait::async_trait;
use bytes::Bytes;
use fragnet_core::pubsub::SubscriptionStats;
use fragnet_core::registry::{
    Holders, Lease, MemoryRegistryConfig, NodeInfo, NodeRegistration, RegistryChanges, VideoInfo,
    check_manifest, normalize_have, validate_registration,
};
use fragnet_core::{
    FragmentIndex, Manifest, MemoryRegistry, NodeId, PeerAddr, Registry, RegistryError, VideoId,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::nats::{NatsConfig, connect_client};
use crate::{BrokerError, seconds};

/// Settings of the NATS registry. Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsRegistryConfig {
    /// Bucket name prefix: the buckets are `<prefix>-nodes`, `<prefix>-holdings`,
    /// `<prefix>-manifests`. Registries sharing a prefix share the registry. Default
    /// `fragnet`.
    pub bucket_prefix: String,
    /// Seconds a node lives after its last heartbeat, used when this registry creates
    /// the buckets (an existing bucket keeps its own). Default 30.
    pub ttl_secs: f64,
    /// Copies of each bucket in a NATS cluster (1 for a single server; 3 in a cluster of
    /// three, so that losing one server loses nothing). Default 1.
    pub replicas: usize,
    /// Most live nodes. Default 10 000.
    pub max_nodes: usize,
    /// Most videos. Default 10 000.
    pub max_videos: usize,
    /// Largest manifest in bytes (also bounded by the server's `max_payload`). Default 1 MiB.
    pub max_manifest_bytes: usize,
    /// Seconds a write may take, including until this registry's replica shows it.
    /// Default 10.
    pub write_timeout_secs: f64,
}

impl Default for NatsRegistryConfig {
    fn default() -> Self {
        NatsRegistryConfig {
            bucket_prefix: "fragnet".into(),
            ttl_secs: 30.0,
            replicas: 1,
            max_nodes: 10_000,
            max_videos: 10_000,
            max_manifest_bytes: 1 << 20,
            write_timeout_secs: 10.0,
        }
    }
}

/// A node's value in the nodes bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct NodeValue {
    name: String,
    addrs: Vec<PeerAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    http: Option<String>,
    /// Which registration of the node this is: new on every registration as new.
    epoch: u64,
}

/// A holding's value in the holdings bucket.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct HoldingValue {
    /// The epoch of the registration it was announced under.
    epoch: u64,
    have: Vec<FragmentIndex>,
}

/// Why a compare-and-set write did not happen.
enum Written {
    /// The key changed since it was read: read again.
    Raced,
    /// The server failed or could not be reached.
    Failed(String),
}

impl From<kv::UpdateError> for Written {
    fn from(e: kv::UpdateError) -> Self {
        match e.kind() {
            kv::UpdateErrorKind::WrongLastRevision => Written::Raced,
            _ => Written::Failed(e.to_string()),
        }
    }
}

impl From<kv::CreateError> for Written {
    fn from(e: kv::CreateError) -> Self {
        match e.kind() {
            kv::CreateErrorKind::AlreadyExists => Written::Raced,
            _ => Written::Failed(e.to_string()),
        }
    }
}

/// The three buckets, in the order of [`Applied`].
#[derive(Clone, Copy, Debug)]
enum Bucket {
    Nodes = 0,
    Holdings = 1,
    Manifests = 2,
}

/// How long a write waits for the replica before the watches are opened again.
const STALL: Duration = Duration::from_secs(2);

/// The last revision the replica applied, per bucket.
type Applied = [watch::Sender<u64>; 3];

/// The `nats` registry plugin (see the module documentation).
pub struct NatsRegistry {
    nodes: kv::Store,
    holdings: kv::Store,
    manifests: kv::Store,
    view: Arc<MemoryRegistry>,
    applied: Arc<Applied>,
    /// Tells the follower to open its watches again (a write it did not see in time).
    rewatch: Arc<tokio::sync::Notify>,
    ttl: Duration,
    config: NatsRegistryConfig,
    max_manifest: usize,
    write_timeout: Duration,
    endpoint: String,
    follower: JoinHandle<()>,
}

impl std::fmt::Debug for NatsRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsRegistry")
            .field("server", &self.endpoint)
            .field("buckets", &self.config.bucket_prefix)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl Drop for NatsRegistry {
    fn drop(&mut self) {
        self.follower.abort();
    }
}

fn unavailable(what: &str, e: impl std::fmt::Display) -> RegistryError {
    RegistryError::Unavailable(format!("NATS {what}: {e}"))
}

/// A bucket: the name, what it is for, its `max_age` (zero: none) and largest value.
struct BucketSpec {
    name: String,
    description: &'static str,
    max_age: Duration,
    max_value: usize,
    replicas: usize,
}

/// [`open_bucket`], retried until `deadline`: a NATS cluster that has just started has no
/// JetStream leader for a moment, and the replicas of a compose file start together.
async fn bucket_until(
    js: &jetstream::Context,
    spec: BucketSpec,
    deadline: tokio::time::Instant,
) -> Result<kv::Store, RegistryError> {
    loop {
        match open_bucket(js, &spec).await {
            Ok(store) => return Ok(store),
            Err(e) if tokio::time::Instant::now() >= deadline => return Err(e),
            Err(e) => {
                debug!(bucket = %spec.name, error = %e, "bucket not ready; retrying");
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
        }
    }
}

/// Opens a bucket, creating it when missing. The stream is created here with the
/// key-value conventions (`KV_<bucket>`, subjects `$KV.<bucket>.>`, rollup, direct get)
/// rather than with `create_key_value`, which first reads the account's JetStream
/// information in a shape nats-server 2.9 (Debian's) does not send.
async fn open_bucket(
    js: &jetstream::Context,
    spec: &BucketSpec,
) -> Result<kv::Store, RegistryError> {
    if let Ok(store) = js.get_key_value(&spec.name).await {
        return Ok(store);
    }
    let stream = jetstream::stream::Config {
        name: format!("KV_{}", spec.name),
        description: Some(spec.description.into()),
        subjects: vec![format!("$KV.{}.>", spec.name)],
        max_messages_per_subject: 1,
        max_age: spec.max_age,
        // The server refuses a duplicate window longer than max_age.
        duplicate_window: if spec.max_age.is_zero() {
            Duration::from_secs(120)
        } else {
            spec.max_age.min(Duration::from_secs(120))
        },
        max_message_size: spec.max_value.min(i32::MAX as usize) as i32,
        storage: jetstream::stream::StorageType::File,
        allow_rollup: true,
        deny_delete: true,
        allow_direct: true,
        num_replicas: spec.replicas,
        discard: jetstream::stream::DiscardPolicy::New,
        ..Default::default()
    };
    if let Err(create) = js.create_stream(stream).await {
        // Another registry may have created it meanwhile.
        if js.get_key_value(&spec.name).await.is_err() {
            return Err(unavailable(&format!("bucket {}", spec.name), create));
        }
    }
    js.get_key_value(&spec.name)
        .await
        .map_err(|e| unavailable(&format!("bucket {}", spec.name), e))
}

/// How long ago the server stored an entry (zero if the clocks disagree the other way).
fn age(entry: &kv::Entry) -> Duration {
    let stored = entry.created.unix_timestamp_nanos();
    let now = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or(0);
    Duration::from_nanos((now - stored).clamp(0, u64::MAX as i128) as u64)
}

impl NatsRegistry {
    /// Connects, opens (or creates) the buckets, and loads the registry into this
    /// registry's replica before returning.
    pub async fn connect(
        nats: &NatsConfig,
        config: NatsRegistryConfig,
    ) -> Result<Self, BrokerError> {
        let ttl = seconds("registry ttl_secs", config.ttl_secs)?;
        let write_timeout = seconds("registry write_timeout_secs", config.write_timeout_secs)?;
        if config.bucket_prefix.is_empty()
            || config.bucket_prefix.len() > 64
            || !config
                .bucket_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(BrokerError::Config(format!(
                "registry bucket_prefix {:?} must be 1 to 64 letters, digits, '-' or '_'",
                config.bucket_prefix
            )));
        }
        if !(1..=5).contains(&config.replicas) {
            return Err(BrokerError::Config(format!(
                "registry replicas must be 1 to 5, not {}",
                config.replicas
            )));
        }
        let client = connect_client(nats, Arc::new(SubscriptionStats::default())).await?;
        let max_payload = client.server_info().max_payload;
        let max_manifest = config
            .max_manifest_bytes
            .min(max_payload.saturating_sub(1024));
        let js = jetstream::new(client);
        let to_broker = |e: RegistryError| BrokerError::Config(e.to_string());
        let spec = |suffix: &str, description, max_age, max_value| BucketSpec {
            name: format!("{}-{suffix}", config.bucket_prefix),
            description,
            max_age,
            max_value,
            replicas: config.replicas,
        };
        // JetStream may need a moment after a cluster starts: retry for the write timeout.
        let deadline = tokio::time::Instant::now() + write_timeout;
        let bucket = |js, spec| bucket_until(js, spec, deadline);
        let nodes = bucket(
            &js,
            spec("nodes", "fragnet registry: live nodes", ttl, 4096),
        )
        .await
        .map_err(to_broker)?;
        let holdings = bucket(
            &js,
            spec(
                "holdings",
                "fragnet registry: who holds which fragments",
                Duration::ZERO,
                64 * 1024,
            ),
        )
        .await
        .map_err(to_broker)?;
        let manifests = bucket(
            &js,
            spec(
                "manifests",
                "fragnet registry: manifests",
                Duration::ZERO,
                max_manifest,
            ),
        )
        .await
        .map_err(to_broker)?;
        // An existing bucket's TTL wins: every registry sharing it must agree.
        let ttl = match nodes.status().await {
            Ok(s) if !s.info.config.max_age.is_zero() => s.info.config.max_age,
            _ => ttl,
        };
        if ttl != Duration::from_secs_f64(config.ttl_secs) {
            warn!(
                bucket_ttl_secs = ttl.as_secs_f64(),
                "the nodes bucket exists with another TTL; using the bucket's"
            );
        }
        let view = Arc::new(MemoryRegistry::new(MemoryRegistryConfig {
            ttl,
            // Limits are checked on writes; the replica holds whatever the buckets hold.
            max_nodes: usize::MAX,
            max_videos: usize::MAX,
        }));
        let applied: Arc<Applied> = Arc::new(std::array::from_fn(|_| watch::channel(0).0));
        let (synced_tx, mut synced_rx) = watch::channel(false);
        let rewatch = Arc::new(tokio::sync::Notify::new());
        let follower = tokio::spawn(follow(
            js.clone(),
            [nodes.clone(), holdings.clone(), manifests.clone()],
            view.clone(),
            applied.clone(),
            synced_tx,
            rewatch.clone(),
        ));
        let endpoint = format!("NATS {}", nats.url);
        let loaded = tokio::time::timeout(write_timeout, synced_rx.wait_for(|s| *s)).await;
        if !matches!(loaded, Ok(Ok(_))) {
            follower.abort();
            return Err(BrokerError::Config(format!(
                "{endpoint}: the registry buckets could not be read within {write_timeout:?} (is JetStream enabled: nats-server -js?)"
            )));
        }
        let stats = view.stats();
        info!(server = %nats.url, prefix = %config.bucket_prefix, nodes = stats.nodes, videos = stats.videos, ttl_secs = ttl.as_secs_f64(), "NATS registry loaded");
        Ok(NatsRegistry {
            nodes,
            holdings,
            manifests,
            view,
            applied,
            rewatch,
            ttl,
            config,
            max_manifest,
            write_timeout,
            endpoint,
            follower,
        })
    }

    /// The in-memory replica that answers reads (what a manager serves its listings,
    /// dashboard and change feed from).
    pub fn view(&self) -> Arc<MemoryRegistry> {
        self.view.clone()
    }

    /// The lease TTL (the nodes bucket's `max_age`).
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Registers a video by manifest; returns its id and whether it was new to the
    /// registry (not only to this replica).
    pub async fn insert_video(
        &self,
        manifest: &Manifest,
    ) -> Result<(VideoId, bool), RegistryError> {
        let id = check_manifest(manifest, None)?;
        if self.view.has_video(id) {
            return Ok((id, false));
        }
        let bytes = manifest.canonical_bytes();
        if bytes.len() > self.max_manifest {
            return Err(RegistryError::Invalid(format!(
                "the manifest is {} bytes; this NATS registry takes at most {} (the server's max_payload bounds it)",
                bytes.len(),
                self.max_manifest
            )));
        }
        if self.view.stats().videos as usize >= self.config.max_videos {
            return Err(RegistryError::Full(format!(
                "{} videos registered (the limit)",
                self.config.max_videos
            )));
        }
        match self.manifests.create(id.to_string(), bytes.into()).await {
            Ok(revision) => {
                self.applied(Bucket::Manifests, revision).await?;
                Ok((id, true))
            }
            // Registered meanwhile (through another registry): the same bytes, by id.
            Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                let (_, revision) = self.fragment_count(id).await?;
                self.applied(Bucket::Manifests, revision).await?;
                Ok((id, false))
            }
            Err(e) => Err(unavailable("write", e)),
        }
    }

    /// Waits until the replica has applied `revision` of `bucket`.
    async fn applied(&self, bucket: Bucket, revision: u64) -> Result<(), RegistryError> {
        let mut rx = self.applied[bucket as usize].subscribe();
        // A watch whose consumer was lost with a server may stall without an error:
        // when a write does not show within a moment, open the watches again.
        let soon = STALL.min(self.write_timeout);
        if let Ok(Ok(_)) = tokio::time::timeout(soon, rx.wait_for(|&r| r >= revision)).await {
            return Ok(());
        }
        warn!(
            ?bucket,
            revision, "the registry watch is behind; opening it again"
        );
        self.rewatch.notify_one();
        let rest = self.write_timeout.saturating_sub(soon);
        match tokio::time::timeout(rest, rx.wait_for(|&r| r >= revision)).await {
            Ok(Ok(_)) => Ok(()),
            _ => Err(RegistryError::Unavailable(format!(
                "{}: the write was stored but this registry's replica did not see it within {:?}",
                self.endpoint, self.write_timeout
            ))),
        }
    }

    /// The live registration of a node: its epoch and the entry's revision.
    async fn live_node(&self, id: NodeId) -> Result<Option<(NodeValue, u64)>, RegistryError> {
        let entry = self
            .nodes
            .entry(id.to_string())
            .await
            .map_err(|e| unavailable("read", e))?;
        Ok(entry.and_then(|e| {
            if e.operation != kv::Operation::Put || age(&e) >= self.ttl {
                return None;
            }
            let v: NodeValue = serde_json::from_slice(&e.value).ok()?;
            Some((v, e.revision))
        }))
    }

    /// A video's fragment count and the manifests revision that has it.
    async fn fragment_count(&self, video: VideoId) -> Result<(u32, u64), RegistryError> {
        if let Ok(m) = self.view.video_manifest(video) {
            return Ok((m.fragment_count, 0));
        }
        // Registered through another registry and not yet replicated here: ask the bucket.
        let entry = self
            .manifests
            .entry(video.to_string())
            .await
            .map_err(|e| unavailable("read", e))?
            .filter(|e| e.operation == kv::Operation::Put)
            .ok_or(RegistryError::UnknownVideo(video))?;
        let m = Manifest::from_bytes(&entry.value)
            .map_err(|e| RegistryError::Protocol(format!("manifest {video} in NATS: {e}")))?;
        Ok((m.fragment_count, entry.revision))
    }
}

#[async_trait]
impl Registry for NatsRegistry {
    async fn register(&self, id: NodeId, node: &NodeRegistration) -> Result<Lease, RegistryError> {
        validate_registration(node)?;
        let key = id.to_string();
        let value = |epoch| {
            Bytes::from(
                serde_json::to_vec(&NodeValue {
                    name: node.name.clone(),
                    addrs: node.addrs.clone(),
                    http: node.http.clone(),
                    epoch,
                })
                .expect("a node value serializes"),
            )
        };
        // Compare-and-set on the key's revision: two registrations racing (a heartbeat
        // through two managers) cannot both decide the node is new.
        for _ in 0..5 {
            let entry = self
                .nodes
                .entry(key.clone())
                .await
                .map_err(|e| unavailable("read", e))?;
            let alive = entry.as_ref().and_then(|e| {
                (e.operation == kv::Operation::Put && age(e) < self.ttl)
                    .then(|| serde_json::from_slice::<NodeValue>(&e.value).ok())
                    .flatten()
                    .map(|v| (v.epoch, e.revision))
            });
            let (written, new) = match (alive, &entry) {
                (Some((epoch, revision)), _) => (
                    self.nodes
                        .update(&key, value(epoch), revision)
                        .await
                        .map_err(Written::from),
                    false,
                ),
                (None, previous) => {
                    if self.view.stats().nodes as usize >= self.config.max_nodes {
                        return Err(RegistryError::Full(format!(
                            "{} nodes registered (the limit)",
                            self.config.max_nodes
                        )));
                    }
                    let epoch = fastrand::u64(..);
                    let written = match previous {
                        // An expired entry the server has not removed yet, or a deletion.
                        Some(e) => self
                            .nodes
                            .update(&key, value(epoch), e.revision)
                            .await
                            .map_err(Written::from),
                        None => self
                            .nodes
                            .create(&key, value(epoch))
                            .await
                            .map_err(Written::from),
                    };
                    (written, true)
                }
            };
            match written {
                Ok(revision) => {
                    self.applied(Bucket::Nodes, revision).await?;
                    return Ok(Lease {
                        ttl_ms: self.ttl.as_millis() as u64,
                        heartbeat_ms: (self.ttl / 3).as_millis() as u64,
                        new,
                    });
                }
                Err(Written::Raced) => {
                    debug!(node = %id, "registration raced another; trying again");
                }
                Err(Written::Failed(e)) => return Err(unavailable("write", e)),
            }
        }
        Err(RegistryError::Unavailable(format!(
            "{}: node {id} is being registered concurrently; try again",
            self.endpoint
        )))
    }

    async fn deregister(&self, id: NodeId) -> Result<(), RegistryError> {
        if self.live_node(id).await?.is_none() {
            return Err(RegistryError::UnknownNode(id));
        }
        let held: Vec<VideoId> = self
            .view
            .node(id)
            .map(|d| d.holdings.into_iter().map(|h| h.video).collect())
            .unwrap_or_default();
        self.nodes
            .delete(id.to_string())
            .await
            .map_err(|e| unavailable("delete", e))?;
        for video in held {
            if let Err(e) = self.holdings.delete(format!("{id}.{video}")).await {
                // They no longer count: the node is gone and a new registration has a new epoch.
                debug!(node = %id, %video, error = %e, "holding not deleted");
            }
        }
        // A deletion has no revision to wait for; apply it here too (the watch repeats it).
        let _ = self.view.remove_node(id);
        Ok(())
    }

    async fn announce(
        &self,
        id: NodeId,
        video: VideoId,
        have: &[FragmentIndex],
    ) -> Result<(), RegistryError> {
        let (node, node_revision) = self
            .live_node(id)
            .await?
            .ok_or(RegistryError::UnknownNode(id))?;
        let (count, manifest_revision) = self.fragment_count(video).await?;
        let have = normalize_have(video, count, have)?;
        let value = serde_json::to_vec(&HoldingValue {
            epoch: node.epoch,
            have,
        })
        .expect("a holding serializes");
        let revision = self
            .holdings
            .put(format!("{id}.{video}"), value.into())
            .await
            .map_err(|e| unavailable("write", e))?;
        // The holding counts here once the node and the video are here too.
        self.applied(Bucket::Nodes, node_revision).await?;
        self.applied(Bucket::Manifests, manifest_revision).await?;
        self.applied(Bucket::Holdings, revision).await
    }

    async fn locate(
        &self,
        video: VideoId,
        index: FragmentIndex,
        limit: usize,
    ) -> Result<Holders, RegistryError> {
        self.view.holders(video, index, limit)
    }

    async fn add_video(&self, manifest: &Manifest) -> Result<VideoId, RegistryError> {
        self.insert_video(manifest).await.map(|(id, _)| id)
    }

    async fn videos(&self) -> Result<Vec<VideoInfo>, RegistryError> {
        self.view.videos().await
    }

    async fn manifest(&self, video: VideoId) -> Result<Arc<Manifest>, RegistryError> {
        if let Ok(m) = self.view.video_manifest(video) {
            return Ok(m);
        }
        let bytes = self
            .manifests
            .get(video.to_string())
            .await
            .map_err(|e| unavailable("read", e))?
            .ok_or(RegistryError::UnknownVideo(video))?;
        Manifest::from_bytes(&bytes)
            .map(Arc::new)
            .map_err(|e| RegistryError::Protocol(format!("manifest {video} in NATS: {e}")))
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        self.view.nodes().await
    }

    fn changes(&self) -> Option<RegistryChanges> {
        self.view.changes()
    }
}

/// What the follower knows beyond the replica: every node's epoch and every holding, so
/// that holdings that arrive before their node or video are applied when those do.
#[derive(Default)]
struct Mirror {
    epochs: HashMap<NodeId, u64>,
    holdings: HashMap<NodeId, HashMap<VideoId, HoldingValue>>,
}

impl Mirror {
    fn apply_holding(&self, view: &MemoryRegistry, node: NodeId, video: VideoId) {
        let Some(h) = self.holdings.get(&node).and_then(|m| m.get(&video)) else {
            return;
        };
        if self.epochs.get(&node) == Some(&h.epoch)
            && view.has_video(video)
            && let Err(e) = view.set_have(node, video, &h.have)
        {
            debug!(%node, %video, error = %e, "holding not applied");
        }
    }

    fn apply_node_holdings(&self, view: &MemoryRegistry, node: NodeId) {
        let videos: Vec<VideoId> = self
            .holdings
            .get(&node)
            .map(|m| m.keys().copied().collect())
            .unwrap_or_default();
        for video in videos {
            self.apply_holding(view, node, video);
        }
    }

    fn on_node(&mut self, view: &MemoryRegistry, entry: &kv::Entry) {
        let Ok(id) = entry.key.parse::<NodeId>() else {
            return warn!(key = %entry.key, "ignoring a nodes key that is not a node id");
        };
        if entry.operation != kv::Operation::Put {
            self.epochs.remove(&id);
            let _ = view.remove_node(id);
            return;
        }
        let Ok(v) = serde_json::from_slice::<NodeValue>(&entry.value) else {
            return warn!(node = %id, "ignoring a node value that does not parse");
        };
        let reg = NodeRegistration {
            name: v.name,
            addrs: v.addrs,
            http: v.http,
        };
        let seen = tokio::time::Instant::now()
            .checked_sub(age(entry))
            .unwrap_or_else(tokio::time::Instant::now);
        if self
            .epochs
            .insert(id, v.epoch)
            .is_some_and(|e| e != v.epoch)
        {
            // Registered anew: what it announced before no longer counts.
            let _ = view.remove_node(id);
        }
        match view.register_node_at(id, &reg, seen) {
            Ok(lease) if lease.new => self.apply_node_holdings(view, id),
            Ok(_) => {}
            Err(e) => warn!(node = %id, error = %e, "node not applied"),
        }
    }

    fn on_holding(&mut self, view: &MemoryRegistry, entry: &kv::Entry) {
        let parsed = entry
            .key
            .split_once('.')
            .and_then(|(n, v)| Some((n.parse::<NodeId>().ok()?, v.parse::<VideoId>().ok()?)));
        let Some((node, video)) = parsed else {
            return warn!(key = %entry.key, "ignoring a holdings key that is not <node>.<video>");
        };
        let value = (entry.operation == kv::Operation::Put)
            .then(|| serde_json::from_slice::<HoldingValue>(&entry.value).ok())
            .flatten();
        match value {
            Some(h) => {
                self.holdings.entry(node).or_default().insert(video, h);
                self.apply_holding(view, node, video);
            }
            None => {
                if let Some(m) = self.holdings.get_mut(&node) {
                    m.remove(&video);
                }
                if self.epochs.contains_key(&node) && view.has_video(video) {
                    let _ = view.set_have(node, video, &[]);
                }
            }
        }
    }

    fn on_manifest(&mut self, view: &MemoryRegistry, entry: &kv::Entry) {
        if entry.operation != kv::Operation::Put {
            return;
        }
        let Ok(claimed) = entry.key.parse::<VideoId>() else {
            return warn!(key = %entry.key, "ignoring a manifests key that is not a video id");
        };
        match Manifest::from_bytes(&entry.value)
            .map_err(|e| RegistryError::Invalid(e.to_string()))
            .and_then(|m| view.insert_video(&m, Some(claimed)))
        {
            Ok((video, true)) => {
                let holders: Vec<NodeId> = self
                    .holdings
                    .iter()
                    .filter(|(_, m)| m.contains_key(&video))
                    .map(|(n, _)| *n)
                    .collect();
                for node in holders {
                    self.apply_holding(view, node, video);
                }
            }
            Ok(_) => {}
            Err(e) => warn!(video = %claimed, error = %e, "ignoring a manifest in NATS"),
        }
    }
}

/// Follows the three buckets into `view` for the registry's life: each watch first
/// delivers every key's current value, then every change. A watch that fails is
/// opened again (applying a value twice changes nothing).
async fn follow(
    js: jetstream::Context,
    stores: [kv::Store; 3],
    view: Arc<MemoryRegistry>,
    applied: Arc<Applied>,
    synced: watch::Sender<bool>,
    rewatch: Arc<tokio::sync::Notify>,
) {
    let mirror = Arc::new(Mutex::new(Mirror::default()));
    let mut current = [false; 3];
    loop {
        let mut watches = Vec::with_capacity(3);
        for (i, store) in stores.iter().enumerate() {
            // An empty bucket delivers nothing to say it is current.
            let empty = match store.status().await {
                Ok(s) => match js.get_stream(format!("KV_{}", s.bucket())).await {
                    Ok(stream) => stream.cached_info().state.messages == 0,
                    Err(_) => false,
                },
                Err(_) => false,
            };
            current[i] |= empty;
            match store.watch_with_history(">").await {
                Ok(w) => watches.push(w.map(move |e| (i, e)).boxed()),
                Err(e) => {
                    warn!(error = %e, "cannot watch a registry bucket; retrying");
                    break;
                }
            }
        }
        if watches.len() == 3 {
            synced.send_replace(current.iter().all(|c| *c));
            let mut all = futures::stream::select_all(watches);
            loop {
                let next = tokio::select! {
                    n = all.next() => n,
                    _ = rewatch.notified() => break,
                };
                let Some((i, entry)) = next else { break };
                let entry = match entry {
                    Ok(e) => e,
                    Err(e) => {
                        warn!(error = %e, "registry watch failed; watching again");
                        break;
                    }
                };
                {
                    let mut m = mirror.lock().unwrap_or_else(|e| e.into_inner());
                    match i {
                        0 => m.on_node(&view, &entry),
                        1 => m.on_holding(&view, &entry),
                        _ => m.on_manifest(&view, &entry),
                    }
                }
                applied[i].send_if_modified(|r| {
                    let newer = entry.revision > *r;
                    *r = (*r).max(entry.revision);
                    newer
                });
                if entry.delta == 0 && !current[i] {
                    current[i] = true;
                    synced.send_replace(current.iter().all(|c| *c));
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}
