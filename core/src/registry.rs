//! The registry: which nodes are in the swarm, how to reach them, which videos exist,
//! and who holds which fragment.
//!
//! [`Registry`] is the plugin trait. Nodes register (and heartbeat with the same call)
//! under their [`NodeId`], announce their have-set per video (each announcement replaces
//! the previous one for that video), and ask who holds a fragment; a bounded, random
//! sample comes back so that load spreads over the holders. Videos are registered by
//! manifest; the registry recomputes the id from the canonical bytes, so a caller that
//! claims another id is refused.
//!
//! Holdings are soft state: a node whose heartbeats stop for the lease's TTL vanishes
//! from every answer, with its holdings. A registration answer says whether the node was
//! new to the registry ([`Lease::new`]), which tells a node to announce everything it
//! holds again (after a registry restart or an expiry).
//!
//! Implementations: [`MemoryRegistry`] here (embedded use, tests, and the manager's
//! state), the HTTP client of the manager in `fragnet-manager`, and the NATS JetStream
//! key-value registry in `fragnet-broker`. The behaviour suite in [`conformance`]
//! (feature `conformance`) runs against each.
//!
//! [`Registry::changes`] is a change feed: every node that joins, changes or leaves,
//! every announcement and every new video, as it happens (the manager's dashboard
//! follows it instead of polling).

use std::sync::Arc;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::addr::PeerAddr;
use crate::ids::{FragmentIndex, NodeId, VideoId};
use crate::manifest::{MAX_FRAGMENTS, Manifest};

mod memory;
pub use memory::{MemoryRegistry, MemoryRegistryConfig, RegistryStats};

#[cfg(feature = "conformance")]
pub mod conformance;

/// Longest node name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 64;
/// Most transport addresses one node may register.
pub const MAX_ADDRS: usize = 8;
/// Longest HTTP base URL accepted, in bytes.
pub const MAX_HTTP_LEN: usize = 256;
/// Holders returned by [`Registry::locate`] when the caller does not say.
pub const DEFAULT_LOCATE: usize = 50;
/// Most holders one [`Registry::locate`] answer carries.
pub const MAX_LOCATE: usize = 200;
/// Most entries in one page of a listing.
pub const MAX_PAGE: usize = 1000;
/// Most holders sampled per entry of a fragment listing.
pub const MAX_SAMPLE: usize = 20;

/// What a node tells the registry about itself when it registers or heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeRegistration {
    /// Display name (1 to 64 bytes).
    #[cfg_attr(
        feature = "openapi",
        schema(min_length = 1, max_length = 64, example = "peer-6001")
    )]
    pub name: String,
    /// Transport addresses others can dial, with their schemes (at most 8).
    #[cfg_attr(feature = "openapi", schema(max_items = 8))]
    pub addrs: Vec<PeerAddr>,
    /// The node's HTTP base URL (stream, player, health), when it serves HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[cfg_attr(
        feature = "openapi",
        schema(
            max_length = 256,
            pattern = r"^https?://[^\s]+$",
            example = "http://192.0.2.10:8001"
        )
    )]
    pub http: Option<String>,
}

/// A node as others see it: who it is and how to reach it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeRecord {
    /// Node id.
    pub id: NodeId,
    /// Display name.
    pub name: String,
    /// Transport addresses with their schemes.
    pub addrs: Vec<PeerAddr>,
    /// HTTP base URL, when the node serves HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
}

/// The registry's answer to a registration or heartbeat.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Lease {
    /// Milliseconds after this heartbeat at which the node expires without another one.
    pub ttl_ms: u64,
    /// The heartbeat interval the registry asks for (a third of the TTL).
    pub heartbeat_ms: u64,
    /// True when the registry did not know the node (first start, registry restart,
    /// expiry): the node should announce everything it holds again.
    pub new: bool,
}

/// A node in a listing, with its liveness and how much it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeInfo {
    /// Node id.
    pub id: NodeId,
    /// Display name.
    pub name: String,
    /// Transport addresses with their schemes.
    pub addrs: Vec<PeerAddr>,
    /// HTTP base URL, when the node serves HTTP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<String>,
    /// Milliseconds since the last heartbeat.
    pub last_seen_ms: u64,
    /// Milliseconds until the node expires unless it heartbeats.
    pub expires_in_ms: u64,
    /// Videos the node holds at least one fragment of.
    pub videos: u64,
    /// Fragments the node holds, over all videos.
    pub fragments: u64,
}

/// The fragments one node holds of one video.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Holding {
    /// The video.
    pub video: VideoId,
    /// Fragment indices held, ascending.
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<u32>))]
    pub have: Vec<FragmentIndex>,
}

/// One node with everything it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct NodeDetail {
    /// The node.
    pub node: NodeInfo,
    /// Its holdings, by video id.
    pub holdings: Vec<Holding>,
}

/// A node's have-set for one video; replaces what it announced before for that video.
/// An empty `have` withdraws the video.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct Announcement {
    /// The video.
    pub video: VideoId,
    /// Fragment indices the node holds, complete and verified (at most 4096 entries).
    #[cfg_attr(feature = "openapi", schema(value_type = Vec<u32>, max_items = 4096))]
    #[serde(deserialize_with = "integral_indices")]
    pub have: Vec<FragmentIndex>,
}

/// A bounded sample of the nodes holding one fragment.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct Holders {
    /// The video.
    pub video: VideoId,
    /// The fragment.
    #[cfg_attr(feature = "openapi", schema(value_type = u32))]
    pub index: FragmentIndex,
    /// How many live nodes hold the fragment.
    pub total: u64,
    /// A random sample of them (a different one each time, so load spreads).
    pub peers: Vec<NodeRecord>,
}

/// A video the registry knows.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct VideoInfo {
    /// Video id.
    pub id: VideoId,
    /// The manifest's name.
    pub name: String,
    /// MIME type.
    pub mime: String,
    /// Size in bytes.
    pub size: u64,
    /// Number of fragments.
    pub fragment_count: u32,
    /// Live nodes holding at least one fragment.
    pub holders: u64,
    /// Fragments held by at least one live node.
    pub available: u32,
}

/// One fragment in the fragment listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FragmentEntry {
    /// The video.
    pub video: VideoId,
    /// The fragment's index.
    #[cfg_attr(feature = "openapi", schema(value_type = u32))]
    pub index: FragmentIndex,
    /// The fragment's seed-style file name, `fragment_<index>.bin`.
    pub file: String,
    /// How many live nodes hold it.
    pub holders: u64,
    /// A random sample of them.
    pub sample: Vec<NodeRecord>,
}

/// Where a listing resumes: after this (video, fragment).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct FragmentCursor {
    /// The last video listed.
    pub video: VideoId,
    /// The last fragment listed.
    pub index: FragmentIndex,
}

impl std::fmt::Display for FragmentCursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}.{}", self.video, self.index)
    }
}

impl std::str::FromStr for FragmentCursor {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "invalid cursor {:?}: expected <video-id>.<index> as returned in next_cursor",
                s.chars().take(80).collect::<String>()
            )
        };
        let (v, i) = s.split_once('.').ok_or_else(bad)?;
        Ok(FragmentCursor {
            video: v.parse().map_err(|_| bad())?,
            index: i.parse().map_err(|_| bad())?,
        })
    }
}

/// Which fragments to list.
#[derive(Debug, Clone, Default)]
pub struct FragmentQuery {
    /// Only this video's fragments.
    pub video: Option<VideoId>,
    /// Only fragments this node holds.
    pub node: Option<NodeId>,
    /// Resume after this entry.
    pub after: Option<FragmentCursor>,
    /// Page size (clamped to 1..=[`MAX_PAGE`]).
    pub limit: usize,
    /// Holders sampled per entry (clamped to [`MAX_SAMPLE`]).
    pub sample: usize,
}

/// One page of the fragment listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct FragmentPage {
    /// Fragments in (video id, index) order.
    pub fragments: Vec<FragmentEntry>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next_cursor: Option<String>,
}

/// Why a registry refused or failed a request. Variants say what the caller can do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RegistryError {
    /// The node is not registered (never was, deregistered, or expired): register again.
    #[error("node {0} is not registered (or expired); register it again")]
    UnknownNode(NodeId),
    /// The video is not registered: register its manifest first.
    #[error("video {0} is not registered; register its manifest first")]
    UnknownVideo(VideoId),
    /// The video has no such fragment.
    #[error("video {video} has {count} fragments; there is no fragment {index}")]
    UnknownFragment {
        /// The video.
        video: VideoId,
        /// The index asked for.
        index: FragmentIndex,
        /// How many fragments the video has.
        count: u32,
    },
    /// The manifest's id is not the one the caller claimed.
    #[error("manifest hashes to video id {actual}, not the claimed {claimed}")]
    IdMismatch {
        /// The id the caller expected.
        claimed: VideoId,
        /// The id of the canonical bytes.
        actual: VideoId,
    },
    /// The request is not acceptable as it is (a bad manifest, name, address, index).
    #[error("invalid request: {0}")]
    Invalid(String),
    /// A capacity limit is reached (nodes, videos).
    #[error("registry is full: {0}")]
    Full(String),
    /// The registry refused the credentials (HTTP: missing or wrong token).
    #[error("not authorized: {0}")]
    Unauthorized(String),
    /// The registry could not be reached or failed (connection refused, timeout, 5xx); retry later.
    #[error("registry unavailable: {0}")]
    Unavailable(String),
    /// The registry answered something this client does not understand.
    #[error("unexpected answer from the registry: {0}")]
    Protocol(String),
}

/// One change to the registry's state, as [`Registry::changes`] reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum RegistryChange {
    /// A node registered for the first time (or again, after it expired or left), or
    /// changed its name or addresses. Heartbeats that change nothing are not reported.
    Node {
        /// The node as others see it now.
        node: NodeRecord,
    },
    /// A node left: deregistered, or expired (no heartbeat within the TTL).
    NodeLeft {
        /// The node.
        node: NodeId,
        /// True when it expired rather than deregistered.
        expired: bool,
    },
    /// A node announced its have-set for a video (empty: it withdrew the video).
    Announced {
        /// The node.
        node: NodeId,
        /// The video.
        video: VideoId,
        /// The fragments it holds now, ascending.
        #[cfg_attr(feature = "openapi", schema(value_type = Vec<u32>))]
        have: Vec<FragmentIndex>,
    },
    /// A video was registered.
    Video {
        /// The video.
        video: VideoId,
        /// The manifest's name.
        name: String,
    },
}

/// The receiving end of a change feed. A receiver that falls more than its capacity
/// behind gets [`tokio::sync::broadcast::error::RecvError::Lagged`]: it lost changes and
/// should re-read the state it follows.
pub type RegistryChanges = tokio::sync::broadcast::Receiver<RegistryChange>;

/// Changes a feed holds for a slow receiver before it lags.
pub const CHANGE_FEED_CAPACITY: usize = 4096;

/// The registry plugin: `memory` (embedded), `http` (the manager's REST API) or `nats`
/// (JetStream key-value).
#[async_trait]
pub trait Registry: Send + Sync + 'static {
    /// Registers a node or refreshes its lease (a heartbeat is the same call). The
    /// registration replaces the node's name and addresses.
    async fn register(&self, id: NodeId, node: &NodeRegistration) -> Result<Lease, RegistryError>;

    /// Removes a node and everything it announced.
    async fn deregister(&self, id: NodeId) -> Result<(), RegistryError>;

    /// Sets the fragments `id` holds of `video`, replacing what it announced before;
    /// an empty `have` withdraws the video.
    async fn announce(
        &self,
        id: NodeId,
        video: VideoId,
        have: &[FragmentIndex],
    ) -> Result<(), RegistryError>;

    /// Withdraws everything `id` announced for `video`.
    async fn withdraw(&self, id: NodeId, video: VideoId) -> Result<(), RegistryError> {
        self.announce(id, video, &[]).await
    }

    /// A random sample of at most `limit` live holders of fragment `index` (clamped to
    /// [`MAX_LOCATE`]), and how many there are.
    async fn locate(
        &self,
        video: VideoId,
        index: FragmentIndex,
        limit: usize,
    ) -> Result<Holders, RegistryError>;

    /// Registers a video by manifest (validated; its id recomputed from the canonical
    /// bytes). Registering a known video again is not an error.
    async fn add_video(&self, manifest: &Manifest) -> Result<VideoId, RegistryError>;

    /// Every registered video, in id order.
    async fn videos(&self) -> Result<Vec<VideoInfo>, RegistryError>;

    /// A video's manifest.
    async fn manifest(&self, video: VideoId) -> Result<Arc<Manifest>, RegistryError>;

    /// Every live node, in id order.
    async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError>;

    /// A feed of changes from now on, when this implementation has one (the HTTP client
    /// has none: its manager serves the feed as server-sent events).
    fn changes(&self) -> Option<RegistryChanges> {
        None
    }
}

/// Fragment indices, accepting integral floats (`7.0`): JSON Schema's `integer` does,
/// and some JSON writers (Python's for floats) produce them.
fn integral_indices<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Vec<FragmentIndex>, D::Error> {
    struct Index(FragmentIndex);
    impl<'de> Deserialize<'de> for Index {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct V;
            impl serde::de::Visitor<'_> for V {
                type Value = Index;
                fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                    f.write_str("a fragment index (an integer from 0 to 4294967295)")
                }
                fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<Index, E> {
                    FragmentIndex::try_from(v)
                        .map(Index)
                        .map_err(|_| E::invalid_value(serde::de::Unexpected::Unsigned(v), &self))
                }
                fn visit_i64<E: serde::de::Error>(self, v: i64) -> Result<Index, E> {
                    FragmentIndex::try_from(v)
                        .map(Index)
                        .map_err(|_| E::invalid_value(serde::de::Unexpected::Signed(v), &self))
                }
                fn visit_f64<E: serde::de::Error>(self, v: f64) -> Result<Index, E> {
                    if v.fract() == 0.0 && (0.0..=FragmentIndex::MAX as f64).contains(&v) {
                        Ok(Index(v as FragmentIndex))
                    } else {
                        Err(E::invalid_value(serde::de::Unexpected::Float(v), &self))
                    }
                }
            }
            d.deserialize_any(V)
        }
    }
    Ok(Vec::<Index>::deserialize(d)?
        .into_iter()
        .map(|i| i.0)
        .collect())
}

/// Checks a registration's name, addresses and HTTP URL.
pub fn validate_registration(node: &NodeRegistration) -> Result<(), RegistryError> {
    let bad = |m: String| Err(RegistryError::Invalid(m));
    if node.name.is_empty()
        || node.name.len() > MAX_NAME_LEN
        || node.name.chars().any(char::is_control)
    {
        return bad(format!(
            "name must be 1..={MAX_NAME_LEN} bytes without control characters"
        ));
    }
    if node.addrs.len() > MAX_ADDRS {
        return bad(format!(
            "{} addresses; at most {MAX_ADDRS} are accepted",
            node.addrs.len()
        ));
    }
    for a in &node.addrs {
        if a.port == 0 {
            return bad(format!(
                "address {a} has port 0: register the port actually bound"
            ));
        }
        if a.host.len() > 253 {
            return bad("address host is longer than 253 bytes".into());
        }
    }
    if let Some(h) = &node.http {
        let rest = h
            .strip_prefix("http://")
            .or_else(|| h.strip_prefix("https://"));
        if h.len() > MAX_HTTP_LEN
            || rest.is_none_or(|r| r.is_empty() || r.contains(char::is_whitespace))
        {
            return bad(format!(
                "http must be an http:// or https:// URL of at most {MAX_HTTP_LEN} bytes without spaces"
            ));
        }
    }
    Ok(())
}

/// Checks a have-set against a video's fragment count; returns it sorted and deduplicated.
pub fn normalize_have(
    video: VideoId,
    fragment_count: u32,
    have: &[FragmentIndex],
) -> Result<Vec<FragmentIndex>, RegistryError> {
    if have.len() > MAX_FRAGMENTS as usize {
        return Err(RegistryError::Invalid(format!(
            "{} fragment indices; at most {MAX_FRAGMENTS} are accepted",
            have.len()
        )));
    }
    if let Some(&index) = have.iter().find(|&&i| i >= fragment_count) {
        return Err(RegistryError::UnknownFragment {
            video,
            index,
            count: fragment_count,
        });
    }
    let mut v = have.to_vec();
    v.sort_unstable();
    v.dedup();
    Ok(v)
}

/// Validates a manifest from the network and, if the caller claimed an id, checks it.
pub fn check_manifest(
    manifest: &Manifest,
    claimed: Option<VideoId>,
) -> Result<VideoId, RegistryError> {
    manifest
        .validate()
        .map_err(|e| RegistryError::Invalid(e.to_string()))?;
    let actual = manifest.video_id();
    match claimed {
        Some(claimed) if claimed != actual => Err(RegistryError::IdMismatch { claimed, actual }),
        _ => Ok(actual),
    }
}

/// `count` distinct positions out of `0..n`, uniformly at random and in random order.
/// This runs on every holder lookup: a small sample of many holders is drawn by
/// rejection against a bitset (fewer than two draws per pick on average), a large one
/// by a partial shuffle.
pub(crate) fn sample_positions(n: usize, count: usize) -> Vec<usize> {
    let count = count.min(n);
    if count == 0 {
        return Vec::new();
    }
    if count * 2 >= n {
        let mut all: Vec<usize> = (0..n).collect();
        fastrand::shuffle(&mut all);
        all.truncate(count);
        return all;
    }
    let mut taken = vec![0u64; n.div_ceil(64)];
    let mut picked = Vec::with_capacity(count);
    while picked.len() < count {
        let p = fastrand::usize(..n);
        let (word, bit) = (p / 64, 1u64 << (p % 64));
        if taken[word] & bit == 0 {
            taken[word] |= bit;
            picked.push(p);
        }
    }
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn samples_are_distinct_bounded_and_cover_everyone() {
        for (n, k) in [(0, 5), (3, 5), (10, 5), (1000, 50), (1000, 999)] {
            let s = sample_positions(n, k);
            assert_eq!(s.len(), k.min(n));
            let set: std::collections::HashSet<_> = s.iter().collect();
            assert_eq!(set.len(), s.len(), "distinct");
            assert!(s.iter().all(|&i| i < n));
        }
        // Every position shows up over enough draws: load spreads over all holders.
        let mut hits = [0u32; 100];
        for _ in 0..400 {
            for i in sample_positions(100, 10) {
                hits[i] += 1;
            }
        }
        assert!(
            hits.iter().all(|&h| h > 0),
            "some holder was never sampled: {hits:?}"
        );
    }

    #[test]
    fn registrations_are_checked() {
        let ok = NodeRegistration {
            name: "n".into(),
            addrs: vec!["tcp://127.0.0.1:6001".parse().unwrap()],
            http: Some("http://127.0.0.1:8001".into()),
        };
        validate_registration(&ok).unwrap();
        let mut r = ok.clone();
        r.name = "x".repeat(65);
        assert!(validate_registration(&r).is_err());
        let mut r = ok.clone();
        r.name = String::new();
        assert!(validate_registration(&r).is_err());
        let mut r = ok.clone();
        r.addrs = vec!["tcp://h:1".parse().unwrap(); MAX_ADDRS + 1];
        assert!(validate_registration(&r).is_err());
        let mut r = ok.clone();
        r.addrs = vec!["tcp://h:0".parse().unwrap()];
        assert!(
            validate_registration(&r)
                .unwrap_err()
                .to_string()
                .contains("port 0")
        );
        for h in ["ftp://x", "http://", "http://a b", "localhost:80"] {
            let mut r = ok.clone();
            r.http = Some(h.into());
            assert!(validate_registration(&r).is_err(), "{h}");
        }
    }

    #[test]
    fn have_sets_are_normalized() {
        let v = VideoId(crate::ids::Digest::of(b"v"));
        assert_eq!(normalize_have(v, 10, &[3, 1, 3]).unwrap(), vec![1, 3]);
        assert_eq!(
            normalize_have(v, 10, &[10]).unwrap_err(),
            RegistryError::UnknownFragment {
                video: v,
                index: 10,
                count: 10
            }
        );
        assert!(normalize_have(v, 10, &vec![0; 5000]).is_err());
    }

    #[test]
    fn announcements_accept_integral_floats_only() {
        let v = "ab".repeat(32);
        let a: Announcement =
            serde_json::from_str(&format!(r#"{{"video":"{v}","have":[1,2.0,4294967295]}}"#))
                .unwrap();
        assert_eq!(a.have, vec![1, 2, u32::MAX]);
        for bad in ["[1.5]", "[-1]", "[4294967296]", "[\"1\"]", "[null]"] {
            assert!(
                serde_json::from_str::<Announcement>(&format!(r#"{{"video":"{v}","have":{bad}}}"#))
                    .is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn cursors_round_trip() {
        let c = FragmentCursor {
            video: VideoId(crate::ids::Digest::of(b"v")),
            index: 7,
        };
        assert_eq!(c.to_string().parse::<FragmentCursor>().unwrap(), c);
        assert!("nope".parse::<FragmentCursor>().is_err());
        assert!(format!("{}.x", c.video).parse::<FragmentCursor>().is_err());
    }
}
