//! The in-memory registry: embedded use, tests, and the manager's state.
//!
//! Expiry is exact without a background task: the state remembers the earliest moment
//! any node can expire (`next_expiry`), and every operation that starts at or after it
//! sweeps first. Heartbeats only move deadlines later and a new node's deadline is
//! never earlier than `now + ttl`, so between sweeps `next_expiry` stays a lower bound
//! and no answer ever contains an expired node.
//!
//! Every change is also sent on a broadcast channel ([`Registry::changes`]); nobody
//! listening costs one failed send.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::ops::Bound;
use std::sync::{Arc, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use async_trait::async_trait;
use indexmap::IndexMap;
use tokio::time::Instant;

use tokio::sync::broadcast;

use super::{
    CHANGE_FEED_CAPACITY, FragmentCursor, FragmentEntry, FragmentPage, FragmentQuery, Holders,
    Holding, Lease, MAX_LOCATE, MAX_PAGE, MAX_SAMPLE, NodeDetail, NodeInfo, NodeRecord,
    NodeRegistration, Registry, RegistryChange, RegistryChanges, RegistryError, VideoInfo,
    check_manifest, normalize_have, sample_positions, validate_registration,
};
use crate::ids::{FragmentIndex, NodeId, VideoId};
use crate::manifest::Manifest;
use crate::store::fragment_file_name;

/// Limits of a [`MemoryRegistry`].
#[derive(Debug, Clone)]
pub struct MemoryRegistryConfig {
    /// A node expires this long after its last heartbeat (about three heartbeat intervals).
    pub ttl: Duration,
    /// Most live nodes.
    pub max_nodes: usize,
    /// Most videos.
    pub max_videos: usize,
}

impl Default for MemoryRegistryConfig {
    fn default() -> Self {
        MemoryRegistryConfig {
            ttl: Duration::from_secs(30),
            max_nodes: 10_000,
            max_videos: 10_000,
        }
    }
}

/// Counts for health and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RegistryStats {
    /// Live nodes.
    pub nodes: u64,
    /// Registered videos.
    pub videos: u64,
    /// (node, video, fragment) holdings of live nodes.
    pub fragments_held: u64,
}

struct NodeEntry {
    record: NodeRecord,
    /// `record` as JSON, rendered when it changes: answers copy it instead of encoding
    /// every holder on every request.
    json: Arc<str>,
    last_seen: Instant,
    /// Non-empty, sorted have-sets.
    holdings: BTreeMap<VideoId, Vec<FragmentIndex>>,
    fragments: u64,
}

/// The live holders of one fragment with their pre-rendered records: an IndexMap, so
/// that removal is O(1), a random sample O(sample), and an answer needs no other lookup.
type HolderSet = IndexMap<NodeId, Arc<str>>;

struct VideoEntry {
    manifest: Arc<Manifest>,
    /// Per fragment, the live nodes holding it.
    holders: Vec<HolderSet>,
    /// Nodes holding at least one fragment.
    nodes: u64,
}

struct State {
    nodes: BTreeMap<NodeId, NodeEntry>,
    videos: BTreeMap<VideoId, VideoEntry>,
    next_expiry: Instant,
    held: u64,
}

/// A [`Registry`] held in memory, with TTL expiry of nodes.
pub struct MemoryRegistry {
    config: MemoryRegistryConfig,
    state: RwLock<State>,
    changes: broadcast::Sender<RegistryChange>,
}

impl std::fmt::Debug for MemoryRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemoryRegistry")
            .field("config", &self.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Default for MemoryRegistry {
    fn default() -> Self {
        Self::new(MemoryRegistryConfig::default())
    }
}

impl State {
    fn remove_node(&mut self, id: &NodeId) -> bool {
        let Some(entry) = self.nodes.remove(id) else {
            return false;
        };
        for (video, have) in &entry.holdings {
            if let Some(v) = self.videos.get_mut(video) {
                for &i in have {
                    v.holders[i as usize].swap_remove(id);
                }
                v.nodes -= 1;
            }
        }
        self.held -= entry.fragments;
        true
    }

    fn sweep(&mut self, now: Instant, ttl: Duration) -> Vec<NodeId> {
        let expired: Vec<NodeId> = self
            .nodes
            .iter()
            .filter(|(_, n)| n.last_seen + ttl <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in &expired {
            self.remove_node(id);
        }
        self.next_expiry = self
            .nodes
            .values()
            .map(|n| n.last_seen + ttl)
            .min()
            .unwrap_or(now + ttl);
        expired
    }

    fn record(&self, id: &NodeId) -> Option<NodeRecord> {
        self.nodes.get(id).map(|n| n.record.clone())
    }

    fn sample(&self, set: &HolderSet, count: usize) -> Vec<NodeRecord> {
        sample_positions(set.len(), count)
            .into_iter()
            .filter_map(|p| set.get_index(p).and_then(|(id, _)| self.record(id)))
            .collect()
    }

    fn video_info(&self, id: VideoId, v: &VideoEntry) -> VideoInfo {
        VideoInfo {
            id,
            name: v.manifest.name.clone(),
            mime: v.manifest.mime.clone(),
            size: v.manifest.size,
            fragment_count: v.manifest.fragment_count,
            holders: v.nodes,
            available: v.holders.iter().filter(|h| !h.is_empty()).count() as u32,
        }
    }

    fn node_info(&self, n: &NodeEntry, now: Instant, ttl: Duration) -> NodeInfo {
        let since = now.saturating_duration_since(n.last_seen);
        NodeInfo {
            id: n.record.id,
            name: n.record.name.clone(),
            addrs: n.record.addrs.clone(),
            http: n.record.http.clone(),
            last_seen_ms: since.as_millis() as u64,
            expires_in_ms: ttl.saturating_sub(since).as_millis() as u64,
            videos: n.holdings.len() as u64,
            fragments: n.fragments,
        }
    }

    /// The (video, fragment) keys of one listing page, and the cursor of the next page.
    #[allow(clippy::type_complexity)]
    fn fragment_keys(
        &self,
        q: &FragmentQuery,
    ) -> Result<(Vec<(VideoId, FragmentIndex)>, Option<FragmentCursor>), RegistryError> {
        let limit = q.limit.clamp(1, MAX_PAGE);
        if let Some(v) = q.video {
            self.videos.get(&v).ok_or(RegistryError::UnknownVideo(v))?;
        }
        let holdings = match q.node {
            Some(node) => Some(
                &self
                    .nodes
                    .get(&node)
                    .ok_or(RegistryError::UnknownNode(node))?
                    .holdings,
            ),
            None => None,
        };
        // Resume after the cursor: skip its video's indices up to and including its own.
        let skip = |video: VideoId, index: FragmentIndex| {
            q.after
                .is_some_and(|c| c.video == video && index <= c.index)
        };
        let video_range = match (q.video, q.after.map(|c| c.video)) {
            (Some(v), Some(c)) if c > v => return Ok((Vec::new(), None)),
            (Some(v), _) => (Bound::Included(v), Bound::Included(v)),
            (None, Some(c)) => (Bound::Included(c), Bound::Unbounded),
            (None, None) => (Bound::Unbounded, Bound::Unbounded),
        };
        let mut keys = Vec::with_capacity(limit.min(1024));
        // One more than a page tells whether there is a next page.
        let mut add = |video: VideoId, index: FragmentIndex| {
            keys.push((video, index));
            keys.len() <= limit
        };
        match holdings {
            Some(h) => {
                'outer: for (&video, have) in h.range(video_range) {
                    for &index in have.iter().filter(|&&i| !skip(video, i)) {
                        if !add(video, index) {
                            break 'outer;
                        }
                    }
                }
            }
            None => {
                'outer: for (&video, v) in self.videos.range(video_range) {
                    for index in (0..v.manifest.fragment_count).filter(|&i| !skip(video, i)) {
                        if !add(video, index) {
                            break 'outer;
                        }
                    }
                }
            }
        }
        let next = if keys.len() > limit {
            keys.truncate(limit);
            keys.last()
                .map(|&(video, index)| FragmentCursor { video, index })
        } else {
            None
        };
        Ok((keys, next))
    }

    /// Appends a JSON array of a random sample of `set`'s records.
    fn sample_json(set: &HolderSet, count: usize, out: &mut String) {
        out.push('[');
        for (k, p) in sample_positions(set.len(), count).into_iter().enumerate() {
            if k > 0 {
                out.push(',');
            }
            out.push_str(set.get_index(p).expect("position in range").1);
        }
        out.push(']');
    }

    fn entry(&self, video: VideoId, index: FragmentIndex, sample: usize) -> FragmentEntry {
        let set = &self.videos[&video].holders[index as usize];
        FragmentEntry {
            video,
            index,
            file: fragment_file_name(index),
            holders: set.len() as u64,
            sample: self.sample(set, sample),
        }
    }
}

fn after<K: Ord + Copy>(cursor: Option<K>) -> (Bound<K>, Bound<K>) {
    (
        cursor.map_or(Bound::Unbounded, Bound::Excluded),
        Bound::Unbounded,
    )
}

impl MemoryRegistry {
    /// An empty registry.
    pub fn new(config: MemoryRegistryConfig) -> Self {
        let state = State {
            nodes: BTreeMap::new(),
            videos: BTreeMap::new(),
            next_expiry: Instant::now() + config.ttl,
            held: 0,
        };
        MemoryRegistry {
            config,
            state: RwLock::new(state),
            changes: broadcast::channel(CHANGE_FEED_CAPACITY).0,
        }
    }

    /// Its limits.
    pub fn config(&self) -> &MemoryRegistryConfig {
        &self.config
    }

    /// A read view with every expired node already removed.
    fn read(&self) -> RwLockReadGuard<'_, State> {
        let now = Instant::now();
        {
            let g = self.state.read().unwrap_or_else(|e| e.into_inner());
            if now < g.next_expiry {
                return g;
            }
        }
        drop(self.write());
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> RwLockWriteGuard<'_, State> {
        let mut g = self.state.write().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        if now >= g.next_expiry {
            let expired = g.sweep(now, self.config.ttl);
            self.report_expired(&expired);
        }
        g
    }

    fn report_expired(&self, expired: &[NodeId]) {
        if !expired.is_empty() {
            tracing::info!(
                expired = expired.len(),
                "nodes expired: no heartbeat within the TTL"
            );
        }
        for &node in expired {
            self.emit(RegistryChange::NodeLeft {
                node,
                expired: true,
            });
        }
    }

    fn emit(&self, change: RegistryChange) {
        // An error only means that nobody is listening.
        let _ = self.changes.send(change);
    }

    /// Removes expired nodes now (answers never include them anyway); returns how many.
    pub fn sweep(&self) -> usize {
        let mut g = self.state.write().unwrap_or_else(|e| e.into_inner());
        let expired = g.sweep(Instant::now(), self.config.ttl);
        self.report_expired(&expired);
        expired.len()
    }

    /// The earliest moment a live node can expire, if any node is registered: a
    /// follower of [`Registry::changes`] that wants to see expiries looks again then
    /// (expiry needs no sweeper, so it happens when someone looks).
    pub fn next_expiry(&self) -> Option<Instant> {
        let g = self.state.read().unwrap_or_else(|e| e.into_inner());
        (!g.nodes.is_empty()).then_some(g.next_expiry)
    }

    /// Counts of live nodes, videos and holdings.
    pub fn stats(&self) -> RegistryStats {
        let g = self.read();
        RegistryStats {
            nodes: g.nodes.len() as u64,
            videos: g.videos.len() as u64,
            fragments_held: g.held,
        }
    }

    /// Registers or refreshes a node.
    pub fn register_node(
        &self,
        id: NodeId,
        node: &NodeRegistration,
    ) -> Result<Lease, RegistryError> {
        self.register_node_at(id, node, Instant::now())
    }

    /// Registers or refreshes a node whose last heartbeat was at `seen` (not later than
    /// now). A replica of a registry kept elsewhere uses it, so that a node expires at
    /// the same moment whenever the replica learnt of it.
    pub fn register_node_at(
        &self,
        id: NodeId,
        node: &NodeRegistration,
        seen: Instant,
    ) -> Result<Lease, RegistryError> {
        validate_registration(node)?;
        let record = NodeRecord {
            id,
            name: node.name.clone(),
            addrs: node.addrs.clone(),
            http: node.http.clone(),
        };
        // Rendered before taking the lock; a heartbeat that changes nothing keeps the old one.
        let json: Arc<str> = serde_json::to_string(&record)
            .expect("a node record always serializes")
            .into();
        let mut g = self.write();
        let now = seen.min(Instant::now());
        let state = &mut *g;
        // A heartbeat from the past moves the earliest expiry earlier: keep it a lower bound.
        state.next_expiry = state.next_expiry.min(now + self.config.ttl);
        let mut changed = None;
        let new = match state.nodes.get_mut(&id) {
            Some(n) => {
                if n.json != json {
                    changed = Some(record.clone());
                    // The holder sets carry the record too: refresh it where the node holds.
                    for (video, have) in &n.holdings {
                        if let Some(v) = state.videos.get_mut(video) {
                            for &i in have {
                                v.holders[i as usize].insert(id, json.clone());
                            }
                        }
                    }
                    n.record = record;
                    n.json = json;
                }
                n.last_seen = n.last_seen.max(now);
                false
            }
            None => {
                if state.nodes.len() >= self.config.max_nodes {
                    return Err(RegistryError::Full(format!(
                        "{} nodes registered (the limit)",
                        self.config.max_nodes
                    )));
                }
                changed = Some(record.clone());
                state.nodes.insert(
                    id,
                    NodeEntry {
                        record,
                        json,
                        last_seen: now,
                        holdings: BTreeMap::new(),
                        fragments: 0,
                    },
                );
                true
            }
        };
        drop(g);
        if let Some(node) = changed {
            self.emit(RegistryChange::Node { node });
        }
        let ttl = self.config.ttl;
        Ok(Lease {
            ttl_ms: ttl.as_millis() as u64,
            heartbeat_ms: (ttl / 3).as_millis() as u64,
            new,
        })
    }

    /// Removes a node and its holdings.
    pub fn remove_node(&self, id: NodeId) -> Result<(), RegistryError> {
        if self.write().remove_node(&id) {
            self.emit(RegistryChange::NodeLeft {
                node: id,
                expired: false,
            });
            Ok(())
        } else {
            Err(RegistryError::UnknownNode(id))
        }
    }

    /// Replaces a node's have-set for a video (empty withdraws it).
    pub fn set_have(
        &self,
        id: NodeId,
        video: VideoId,
        have: &[FragmentIndex],
    ) -> Result<(), RegistryError> {
        let mut g = self.write();
        let state = &mut *g;
        let node = state
            .nodes
            .get_mut(&id)
            .ok_or(RegistryError::UnknownNode(id))?;
        let v = state
            .videos
            .get_mut(&video)
            .ok_or(RegistryError::UnknownVideo(video))?;
        let new = normalize_have(video, v.manifest.fragment_count, have)?;
        let old = node.holdings.remove(&video).unwrap_or_default();
        // Both lists are sorted: touch only the indices that changed.
        let (mut a, mut b) = (0, 0);
        while a < old.len() || b < new.len() {
            match (old.get(a), new.get(b)) {
                (Some(x), Some(y)) if x == y => {
                    a += 1;
                    b += 1;
                }
                (Some(&x), y) if y.is_none_or(|&y| x < y) => {
                    v.holders[x as usize].swap_remove(&id);
                    a += 1;
                }
                (_, Some(&y)) => {
                    v.holders[y as usize].insert(id, node.json.clone());
                    b += 1;
                }
                // Covered by the first removal arm; the loop condition excludes (None, None).
                (Some(_), None) | (None, None) => break,
            }
        }
        match (old.is_empty(), new.is_empty()) {
            (true, false) => v.nodes += 1,
            (false, true) => v.nodes -= 1,
            _ => {}
        }
        node.fragments = node.fragments - old.len() as u64 + new.len() as u64;
        state.held = state.held - old.len() as u64 + new.len() as u64;
        let changed = old != new;
        if !new.is_empty() {
            node.holdings.insert(video, new.clone());
        }
        drop(g);
        if changed {
            self.emit(RegistryChange::Announced {
                node: id,
                video,
                have: new,
            });
        }
        Ok(())
    }

    /// A random sample of at most `limit` holders of a fragment (clamped to [`MAX_LOCATE`]).
    pub fn holders(
        &self,
        video: VideoId,
        index: FragmentIndex,
        limit: usize,
    ) -> Result<Holders, RegistryError> {
        let g = self.read();
        let v = g
            .videos
            .get(&video)
            .ok_or(RegistryError::UnknownVideo(video))?;
        let set = v
            .holders
            .get(index as usize)
            .ok_or(RegistryError::UnknownFragment {
                video,
                index,
                count: v.manifest.fragment_count,
            })?;
        Ok(Holders {
            video,
            index,
            total: set.len() as u64,
            peers: g.sample(set, limit.min(MAX_LOCATE)),
        })
    }

    /// [`MemoryRegistry::holders`] rendered as the JSON of [`Holders`], from each node's
    /// pre-rendered record.
    pub fn holders_json(
        &self,
        video: VideoId,
        index: FragmentIndex,
        limit: usize,
    ) -> Result<String, RegistryError> {
        let g = self.read();
        let v = g
            .videos
            .get(&video)
            .ok_or(RegistryError::UnknownVideo(video))?;
        let set = v
            .holders
            .get(index as usize)
            .ok_or(RegistryError::UnknownFragment {
                video,
                index,
                count: v.manifest.fragment_count,
            })?;
        let limit = limit.min(MAX_LOCATE);
        let mut out = String::with_capacity(128 + limit.min(set.len()) * 200);
        let _ = write!(
            out,
            r#"{{"video":"{video}","index":{index},"total":{},"peers":"#,
            set.len()
        );
        State::sample_json(set, limit, &mut out);
        out.push('}');
        Ok(out)
    }

    /// Registers a video; `claimed` is the id the caller expects. Returns the id and
    /// whether it was new.
    pub fn insert_video(
        &self,
        manifest: &Manifest,
        claimed: Option<VideoId>,
    ) -> Result<(VideoId, bool), RegistryError> {
        let id = check_manifest(manifest, claimed)?;
        let mut g = self.write();
        if g.videos.contains_key(&id) {
            return Ok((id, false));
        }
        if g.videos.len() >= self.config.max_videos {
            return Err(RegistryError::Full(format!(
                "{} videos registered (the limit)",
                self.config.max_videos
            )));
        }
        let holders = vec![HolderSet::default(); manifest.fragment_count as usize];
        g.videos.insert(
            id,
            VideoEntry {
                manifest: Arc::new(manifest.clone()),
                holders,
                nodes: 0,
            },
        );
        drop(g);
        self.emit(RegistryChange::Video {
            video: id,
            name: manifest.name.clone(),
        });
        Ok((id, true))
    }

    /// Whether a video is registered.
    pub fn has_video(&self, id: VideoId) -> bool {
        self.read().videos.contains_key(&id)
    }

    /// One video's summary.
    pub fn video(&self, id: VideoId) -> Result<VideoInfo, RegistryError> {
        let g = self.read();
        let v = g.videos.get(&id).ok_or(RegistryError::UnknownVideo(id))?;
        Ok(g.video_info(id, v))
    }

    /// A video's manifest.
    pub fn video_manifest(&self, id: VideoId) -> Result<Arc<Manifest>, RegistryError> {
        self.read()
            .videos
            .get(&id)
            .map(|v| v.manifest.clone())
            .ok_or(RegistryError::UnknownVideo(id))
    }

    /// Up to `max` registered videos whose id starts with `prefix`, in id order.
    pub fn videos_with_prefix(&self, prefix: &crate::ids::IdPrefix, max: usize) -> Vec<VideoId> {
        // The smallest id with this prefix: the prefix padded with zeros.
        let padded = format!("{:0<64}", prefix.as_str());
        let Ok(from) = padded.parse::<VideoId>() else {
            return Vec::new();
        };
        self.read()
            .videos
            .range(from..)
            .map(|(id, _)| *id)
            .take_while(|id| prefix.matches(&id.0))
            .take(max)
            .collect()
    }

    /// Videos after `cursor` in id order, at most `limit` (clamped to [`MAX_PAGE`]), and
    /// the cursor of the next page if there is one.
    pub fn videos_page(
        &self,
        cursor: Option<VideoId>,
        limit: usize,
    ) -> (Vec<VideoInfo>, Option<VideoId>) {
        let g = self.read();
        let limit = limit.clamp(1, MAX_PAGE);
        let mut it = g.videos.range(after(cursor));
        let page: Vec<VideoInfo> = it
            .by_ref()
            .take(limit)
            .map(|(id, v)| g.video_info(*id, v))
            .collect();
        let next = if it.next().is_some() {
            page.last().map(|v| v.id)
        } else {
            None
        };
        (page, next)
    }

    /// Live nodes after `cursor` in id order, at most `limit` (clamped to [`MAX_PAGE`]),
    /// and the cursor of the next page if there is one.
    pub fn nodes_page(
        &self,
        cursor: Option<NodeId>,
        limit: usize,
    ) -> (Vec<NodeInfo>, Option<NodeId>) {
        let g = self.read();
        let (now, ttl) = (Instant::now(), self.config.ttl);
        let limit = limit.clamp(1, MAX_PAGE);
        let mut it = g.nodes.range(after(cursor));
        let page: Vec<NodeInfo> = it
            .by_ref()
            .take(limit)
            .map(|(_, n)| g.node_info(n, now, ttl))
            .collect();
        let next = if it.next().is_some() {
            page.last().map(|n| n.id)
        } else {
            None
        };
        (page, next)
    }

    /// One live node with its holdings.
    pub fn node(&self, id: NodeId) -> Result<NodeDetail, RegistryError> {
        let g = self.read();
        let n = g.nodes.get(&id).ok_or(RegistryError::UnknownNode(id))?;
        Ok(NodeDetail {
            node: g.node_info(n, Instant::now(), self.config.ttl),
            holdings: n
                .holdings
                .iter()
                .map(|(v, have)| Holding {
                    video: *v,
                    have: have.clone(),
                })
                .collect(),
        })
    }

    /// A page of the fragment listing: every fragment of every video (or of one video,
    /// or those one node holds) with its holder count and a random sample of holders.
    pub fn fragments(&self, q: &FragmentQuery) -> Result<FragmentPage, RegistryError> {
        let g = self.read();
        let (keys, next) = g.fragment_keys(q)?;
        let sample = q.sample.min(MAX_SAMPLE);
        Ok(FragmentPage {
            fragments: keys
                .into_iter()
                .map(|(v, i)| g.entry(v, i, sample))
                .collect(),
            next_cursor: next.map(|c| c.to_string()),
        })
    }

    /// [`MemoryRegistry::fragments`] rendered as the JSON of a [`FragmentPage`], from
    /// each node's pre-rendered record (what a server sends; no per-request encoding
    /// of the holders).
    pub fn fragments_json(&self, q: &FragmentQuery) -> Result<String, RegistryError> {
        let g = self.read();
        let (keys, next) = g.fragment_keys(q)?;
        let sample = q.sample.min(MAX_SAMPLE);
        let mut out = String::with_capacity(32 + keys.len() * (160 + sample * 200));
        out.push_str(r#"{"fragments":["#);
        let mut last_video: Option<(VideoId, String)> = None;
        for (n, (video, index)) in keys.into_iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            if last_video.as_ref().is_none_or(|(v, _)| *v != video) {
                last_video = Some((video, video.to_string()));
            }
            let hex = &last_video.as_ref().expect("set above").1;
            let set = &g.videos[&video].holders[index as usize];
            let _ = write!(
                out,
                r#"{{"video":"{hex}","index":{index},"file":"{}","holders":{},"sample":"#,
                fragment_file_name(index),
                set.len()
            );
            State::sample_json(set, sample, &mut out);
            out.push('}');
        }
        out.push(']');
        if let Some(c) = next {
            let _ = write!(out, r#","next_cursor":"{c}""#);
        }
        out.push('}');
        Ok(out)
    }
}

#[async_trait]
impl Registry for MemoryRegistry {
    async fn register(&self, id: NodeId, node: &NodeRegistration) -> Result<Lease, RegistryError> {
        self.register_node(id, node)
    }

    async fn deregister(&self, id: NodeId) -> Result<(), RegistryError> {
        self.remove_node(id)
    }

    async fn announce(
        &self,
        id: NodeId,
        video: VideoId,
        have: &[FragmentIndex],
    ) -> Result<(), RegistryError> {
        self.set_have(id, video, have)
    }

    async fn locate(
        &self,
        video: VideoId,
        index: FragmentIndex,
        limit: usize,
    ) -> Result<Holders, RegistryError> {
        self.holders(video, index, limit)
    }

    async fn add_video(&self, manifest: &Manifest) -> Result<VideoId, RegistryError> {
        self.insert_video(manifest, None).map(|(id, _)| id)
    }

    async fn videos(&self) -> Result<Vec<VideoInfo>, RegistryError> {
        let g = self.read();
        Ok(g.videos
            .iter()
            .map(|(id, v)| g.video_info(*id, v))
            .collect())
    }

    async fn manifest(&self, video: VideoId) -> Result<Arc<Manifest>, RegistryError> {
        self.video_manifest(video)
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        let g = self.read();
        let now = Instant::now();
        Ok(g.nodes
            .values()
            .map(|n| g.node_info(n, now, self.config.ttl))
            .collect())
    }

    fn changes(&self) -> Option<RegistryChanges> {
        Some(self.changes.subscribe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::Digest;
    use crate::manifest::FragmentInfo;

    fn manifest(name: &str, fragments: u32) -> Manifest {
        let h = Digest::of(name.as_bytes());
        Manifest {
            chunk_size: 4,
            fragment_count: fragments,
            fragments: (0..fragments)
                .map(|i| FragmentInfo {
                    chunks: vec![h],
                    hash: h,
                    index: i,
                    offset: i as u64 * 4,
                    size: 4,
                })
                .collect(),
            hash: h,
            mime: "video/mp4".into(),
            name: name.into(),
            size: fragments as u64 * 4,
            version: 1,
        }
    }

    fn node(i: u32) -> (NodeId, NodeRegistration) {
        let id = NodeId(Digest::of(&i.to_le_bytes()));
        (
            id,
            NodeRegistration {
                name: format!("n{i}"),
                addrs: vec![format!("tcp://127.0.0.1:{}", 6000 + i).parse().unwrap()],
                http: None,
            },
        )
    }

    #[tokio::test(start_paused = true)]
    async fn expiry_is_exact_without_a_sweeper() {
        let r = MemoryRegistry::new(MemoryRegistryConfig {
            ttl: Duration::from_secs(30),
            ..Default::default()
        });
        let (vid, _) = r.insert_video(&manifest("a", 2), None).unwrap();
        let (a, ra) = node(1);
        let (b, rb) = node(2);
        assert!(r.register_node(a, &ra).unwrap().new);
        assert!(r.register_node(b, &rb).unwrap().new);
        r.set_have(a, vid, &[0, 1]).unwrap();
        r.set_have(b, vid, &[1]).unwrap();
        assert_eq!(r.stats().fragments_held, 3);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(!r.register_node(b, &rb).unwrap().new, "heartbeat");
        tokio::time::advance(Duration::from_secs(10)).await;
        // a's deadline (t=30) has passed, b's (t=50) has not.
        assert_eq!(r.holders(vid, 0, 10).unwrap().total, 0);
        assert_eq!(
            r.holders(vid, 1, 10)
                .unwrap()
                .peers
                .iter()
                .map(|p| p.id)
                .collect::<Vec<_>>(),
            vec![b]
        );
        assert_eq!(
            r.stats(),
            RegistryStats {
                nodes: 1,
                videos: 1,
                fragments_held: 1
            }
        );
        assert_eq!(r.set_have(a, vid, &[0]), Err(RegistryError::UnknownNode(a)));
        assert!(
            r.register_node(a, &ra).unwrap().new,
            "an expired node is new again"
        );
        tokio::time::advance(Duration::from_secs(31)).await;
        assert_eq!(r.stats().nodes, 0);
        assert_eq!(r.video(vid).unwrap().holders, 0);
    }

    #[test]
    fn announcements_replace_and_counts_follow() {
        let r = MemoryRegistry::default();
        let (vid, new) = r.insert_video(&manifest("a", 4), None).unwrap();
        assert!(new);
        assert!(!r.insert_video(&manifest("a", 4), Some(vid)).unwrap().1);
        let (a, ra) = node(1);
        r.register_node(a, &ra).unwrap();
        r.set_have(a, vid, &[0, 1, 2]).unwrap();
        r.set_have(a, vid, &[2, 3]).unwrap();
        assert_eq!(r.holders(vid, 0, 5).unwrap().total, 0);
        assert_eq!(r.holders(vid, 3, 5).unwrap().total, 1);
        assert_eq!(
            r.node(a).unwrap().holdings,
            vec![Holding {
                video: vid,
                have: vec![2, 3]
            }]
        );
        assert_eq!(r.video(vid).unwrap().available, 2);
        assert_eq!(r.stats().fragments_held, 2);
        r.set_have(a, vid, &[]).unwrap();
        assert_eq!(r.video(vid).unwrap().holders, 0);
        assert!(r.node(a).unwrap().holdings.is_empty());
        assert_eq!(r.stats().fragments_held, 0);
    }

    #[test]
    fn fragment_listing_pages_and_filters() {
        let r = MemoryRegistry::default();
        let v1 = r.insert_video(&manifest("a", 3), None).unwrap().0;
        let v2 = r.insert_video(&manifest("b", 2), None).unwrap().0;
        let (a, ra) = node(1);
        r.register_node(a, &ra).unwrap();
        r.set_have(a, v2, &[1]).unwrap();
        r.set_have(a, v1, &[0, 2]).unwrap();
        let all = |q: FragmentQuery| {
            let mut q = q;
            let mut out = Vec::new();
            loop {
                let p = r.fragments(&q).unwrap();
                out.extend(p.fragments.iter().map(|e| (e.video, e.index, e.holders)));
                match p.next_cursor {
                    Some(c) => q.after = Some(c.parse().unwrap()),
                    None => return out,
                }
            }
        };
        let everything = all(FragmentQuery {
            limit: 2,
            sample: 1,
            ..Default::default()
        });
        assert_eq!(everything.len(), 5);
        assert!(
            everything
                .windows(2)
                .all(|w| (w[0].0, w[0].1) < (w[1].0, w[1].1)),
            "sorted, no repeats"
        );
        assert_eq!(everything.iter().map(|e| e.2).sum::<u64>(), 3);
        let held = all(FragmentQuery {
            node: Some(a),
            limit: 1,
            ..Default::default()
        });
        assert_eq!(held.len(), 3);
        assert_eq!(
            all(FragmentQuery {
                node: Some(a),
                video: Some(v1),
                limit: 1,
                ..Default::default()
            })
            .len(),
            2
        );
        assert_eq!(
            all(FragmentQuery {
                video: Some(v2),
                limit: 1,
                ..Default::default()
            }),
            vec![(v2, 0, 0), (v2, 1, 1)]
        );
        let p = r
            .fragments(&FragmentQuery {
                limit: 10,
                sample: 5,
                ..Default::default()
            })
            .unwrap();
        assert!(p.next_cursor.is_none());
        let e = p
            .fragments
            .iter()
            .find(|e| e.video == v2 && e.index == 1)
            .unwrap();
        assert_eq!(
            (e.file.as_str(), e.sample.len(), e.sample[0].id),
            ("fragment_1.bin", 1, a)
        );
        let unknown = NodeId(Digest::of(b"nobody"));
        assert_eq!(
            r.fragments(&FragmentQuery {
                node: Some(unknown),
                limit: 1,
                ..Default::default()
            }),
            Err(RegistryError::UnknownNode(unknown))
        );
    }

    #[test]
    fn json_renderings_match_the_typed_answers() {
        let r = MemoryRegistry::default();
        let v1 = r.insert_video(&manifest("a", 3), None).unwrap().0;
        let v2 = r.insert_video(&manifest("b", 2), None).unwrap().0;
        for i in 1..=3 {
            let (id, mut reg) = node(i);
            reg.http = (i != 2).then(|| format!("http://h{i}:80"));
            r.register_node(id, &reg).unwrap();
            r.set_have(id, v1, &[0, 2]).unwrap();
            r.set_have(id, v2, &[1]).unwrap();
        }
        let sorted = |mut h: Holders| {
            h.peers.sort_by_key(|p| p.id);
            h
        };
        let json: Holders = serde_json::from_str(&r.holders_json(v1, 2, 50).unwrap()).unwrap();
        assert_eq!(sorted(json), sorted(r.holders(v1, 2, 50).unwrap()));
        let json: Holders = serde_json::from_str(&r.holders_json(v1, 1, 50).unwrap()).unwrap();
        assert_eq!(json, r.holders(v1, 1, 50).unwrap());
        assert_eq!(
            r.holders_json(v1, 9, 5).unwrap_err(),
            r.holders(v1, 9, 5).unwrap_err()
        );
        for q in [
            FragmentQuery {
                limit: 2,
                sample: 20,
                ..Default::default()
            },
            FragmentQuery {
                limit: 100,
                sample: 20,
                ..Default::default()
            },
            FragmentQuery {
                limit: 1,
                sample: 0,
                video: Some(v2),
                ..Default::default()
            },
            FragmentQuery {
                limit: 10,
                sample: 20,
                node: Some(node(1).0),
                ..Default::default()
            },
        ] {
            let sort = |mut p: FragmentPage| {
                p.fragments
                    .iter_mut()
                    .for_each(|e| e.sample.sort_by_key(|n| n.id));
                p
            };
            let json: FragmentPage = serde_json::from_str(&r.fragments_json(&q).unwrap()).unwrap();
            assert_eq!(sort(json), sort(r.fragments(&q).unwrap()), "{q:?}");
        }
        // A node that re-registers with new addresses is answered with them everywhere.
        let (id, mut reg) = node(1);
        reg.name = "renamed".into();
        reg.addrs = vec!["tcp://192.0.2.1:7000".parse().unwrap()];
        r.register_node(id, &reg).unwrap();
        let json: Holders = serde_json::from_str(&r.holders_json(v2, 1, 50).unwrap()).unwrap();
        let p = json.peers.iter().find(|p| p.id == id).unwrap();
        assert_eq!((p.name.as_str(), &p.addrs), ("renamed", &reg.addrs));
        let page: FragmentPage = serde_json::from_str(
            &r.fragments_json(&FragmentQuery {
                limit: 10,
                sample: 20,
                node: Some(id),
                ..Default::default()
            })
            .unwrap(),
        )
        .unwrap();
        assert!(
            page.fragments
                .iter()
                .all(|e| e.sample.iter().any(|p| p.id == id && p.name == "renamed"))
        );
    }

    #[test]
    fn capacity_is_enforced() {
        let r = MemoryRegistry::new(MemoryRegistryConfig {
            max_nodes: 1,
            max_videos: 1,
            ..Default::default()
        });
        r.register_node(node(1).0, &node(1).1).unwrap();
        assert!(matches!(
            r.register_node(node(2).0, &node(2).1),
            Err(RegistryError::Full(_))
        ));
        r.register_node(node(1).0, &node(1).1)
            .expect("a heartbeat is not a new node");
        r.insert_video(&manifest("a", 1), None).unwrap();
        assert!(matches!(
            r.insert_video(&manifest("b", 1), None),
            Err(RegistryError::Full(_))
        ));
    }
}
