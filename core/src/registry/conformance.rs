//! The registry behaviour suite: the same tests for every [`Registry`] implementation.
//!
//! An implementation's crate runs it with
//! `fragnet_core::registry_conformance!(make);` where `make(ttl) -> BoxFuture<Subject>`
//! starts a registry whose nodes expire after `ttl` (for HTTP: a real manager on
//! `127.0.0.1:0` and a client of it). Every wait is bounded.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;

use super::{NodeRegistration, Registry, RegistryError};
use crate::conformance::within;
use crate::ids::{Digest, NodeId, VideoId};
use crate::manifest::{FragmentInfo, Manifest};

/// A registry under test and how to stop it.
pub struct Subject {
    /// The registry.
    pub registry: Arc<dyn Registry>,
    /// Stops whatever serves it (a manager); run at the end of each test.
    pub shutdown: BoxFuture<'static, ()>,
}

/// Starts a registry whose nodes expire after the given TTL.
pub type MakeRegistry = fn(Duration) -> BoxFuture<'static, Subject>;

/// A consistent manifest of `fragments` 4-byte fragments (the name makes it unique).
pub fn test_manifest(name: &str, fragments: u32) -> Manifest {
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

/// A node id and registration for test node `i`.
pub fn test_node(i: u32) -> (NodeId, NodeRegistration) {
    let id = NodeId(Digest::of(format!("node-{i}").as_bytes()));
    let reg = NodeRegistration {
        name: format!("node-{i}"),
        addrs: vec![
            format!("tcp://127.0.0.1:{}", 20000 + i).parse().unwrap(),
            format!("quic://{id}@127.0.0.1:{}", 30000 + i)
                .parse()
                .unwrap(),
        ],
        http: Some(format!("http://127.0.0.1:{}", 40000 + i)),
    };
    (id, reg)
}

const T: u64 = 10;

/// Registration, heartbeat and listing.
pub async fn register_and_heartbeat(make: MakeRegistry) {
    let s = make(Duration::from_secs(30)).await;
    let r = &s.registry;
    let (id, mut reg) = test_node(1);
    let lease = within(T, "register", r.register(id, &reg)).await.unwrap();
    assert!(lease.new, "first registration is new");
    assert_eq!(lease.ttl_ms, 30_000);
    assert_eq!(lease.heartbeat_ms, 10_000);
    reg.name = "renamed".into();
    let again = within(T, "heartbeat", r.register(id, &reg)).await.unwrap();
    assert!(!again.new, "a heartbeat is not new");
    let nodes = within(T, "nodes", r.nodes()).await.unwrap();
    assert_eq!(nodes.len(), 1);
    let n = &nodes[0];
    assert_eq!(
        (n.id, n.name.as_str(), &n.addrs, &n.http),
        (id, "renamed", &reg.addrs, &reg.http)
    );
    assert!(
        n.expires_in_ms <= 30_000 && n.expires_in_ms > 20_000,
        "{n:?}"
    );
    assert_eq!((n.videos, n.fragments), (0, 0));
    within(T, "deregister", r.deregister(id)).await.unwrap();
    assert!(within(T, "nodes", r.nodes()).await.unwrap().is_empty());
    assert_eq!(
        within(T, "deregister twice", r.deregister(id)).await,
        Err(RegistryError::UnknownNode(id))
    );
    s.shutdown.await;
}

/// Announce, replace, withdraw and locate.
pub async fn announce_and_locate(make: MakeRegistry) {
    let s = make(Duration::from_secs(30)).await;
    let r = &s.registry;
    let m = test_manifest("announce.mp4", 4);
    let vid = within(T, "add video", r.add_video(&m)).await.unwrap();
    assert_eq!(vid, m.video_id());
    let (a, ra) = test_node(1);
    let (b, rb) = test_node(2);
    within(T, "register a", r.register(a, &ra)).await.unwrap();
    within(T, "register b", r.register(b, &rb)).await.unwrap();
    within(T, "announce a", r.announce(a, vid, &[0, 1, 2]))
        .await
        .unwrap();
    within(T, "announce b", r.announce(b, vid, &[2, 3, 3]))
        .await
        .unwrap();

    let h = within(T, "locate 2", r.locate(vid, 2, 50)).await.unwrap();
    assert_eq!((h.video, h.index, h.total), (vid, 2, 2));
    let ids: HashSet<NodeId> = h.peers.iter().map(|p| p.id).collect();
    assert_eq!(ids, HashSet::from([a, b]));
    let pa = h.peers.iter().find(|p| p.id == a).unwrap();
    assert_eq!(
        (&pa.name, &pa.addrs, &pa.http),
        (&ra.name, &ra.addrs, &ra.http),
        "holders come with their addresses"
    );

    // Replace semantics: a's new set drops 0 and 1.
    within(T, "re-announce a", r.announce(a, vid, &[2]))
        .await
        .unwrap();
    assert_eq!(
        within(T, "locate 0", r.locate(vid, 0, 50))
            .await
            .unwrap()
            .total,
        0
    );
    assert_eq!(
        within(T, "locate 2", r.locate(vid, 2, 50))
            .await
            .unwrap()
            .total,
        2
    );
    within(T, "withdraw b", r.withdraw(b, vid)).await.unwrap();
    let h = within(T, "locate 2", r.locate(vid, 2, 50)).await.unwrap();
    assert_eq!((h.total, h.peers.len(), h.peers[0].id), (1, 1, a));
    assert_eq!(
        within(T, "locate 3", r.locate(vid, 3, 50))
            .await
            .unwrap()
            .total,
        0
    );

    let videos = within(T, "videos", r.videos()).await.unwrap();
    assert_eq!(videos.len(), 1);
    assert_eq!(
        (
            videos[0].id,
            videos[0].fragment_count,
            videos[0].holders,
            videos[0].available
        ),
        (vid, 4, 1, 1)
    );
    let nodes = within(T, "nodes", r.nodes()).await.unwrap();
    let na = nodes.iter().find(|n| n.id == a).unwrap();
    assert_eq!((na.videos, na.fragments), (1, 1));

    // Deregistering drops the node's holdings.
    within(T, "deregister a", r.deregister(a)).await.unwrap();
    assert_eq!(
        within(T, "locate 2", r.locate(vid, 2, 50))
            .await
            .unwrap()
            .total,
        0
    );
    s.shutdown.await;
}

/// The sample is bounded, distinct, and over many calls reaches every holder.
pub async fn locate_spreads_load(make: MakeRegistry) {
    let s = make(Duration::from_secs(30)).await;
    let r = &s.registry;
    let vid = within(
        T,
        "add video",
        r.add_video(&test_manifest("popular.mp4", 2)),
    )
    .await
    .unwrap();
    let mut all = HashSet::new();
    for i in 0..60 {
        let (id, reg) = test_node(i);
        within(T, "register", r.register(id, &reg)).await.unwrap();
        within(T, "announce", r.announce(id, vid, &[0]))
            .await
            .unwrap();
        all.insert(id);
    }
    let mut seen = HashSet::new();
    for _ in 0..200 {
        let h = within(T, "locate", r.locate(vid, 0, 10)).await.unwrap();
        assert_eq!((h.total, h.peers.len()), (60, 10));
        let ids: HashSet<NodeId> = h.peers.iter().map(|p| p.id).collect();
        assert_eq!(ids.len(), 10, "distinct holders");
        assert!(ids.is_subset(&all));
        seen.extend(ids);
    }
    // Each holder is missed by one call with probability 5/6; by all 200 with ~1e-16.
    assert_eq!(seen, all, "every holder is offered sometimes");
    let h = within(T, "locate all", r.locate(vid, 0, 500))
        .await
        .unwrap();
    assert!(h.peers.len() <= super::MAX_LOCATE && h.peers.len() == 60);
    let h = within(T, "locate none", r.locate(vid, 0, 0)).await.unwrap();
    assert_eq!((h.total, h.peers.len()), (60, 0));
    s.shutdown.await;
}

/// Unknown nodes, videos and fragments, and bad input, are refused with the right error.
pub async fn refusals(make: MakeRegistry) {
    let s = make(Duration::from_secs(30)).await;
    let r = &s.registry;
    let m = test_manifest("refusals.mp4", 3);
    let vid = within(T, "add", r.add_video(&m)).await.unwrap();
    let ghost_video = VideoId(Digest::of(b"no such video"));
    let (a, ra) = test_node(1);
    assert_eq!(
        within(T, "announce unregistered", r.announce(a, vid, &[0])).await,
        Err(RegistryError::UnknownNode(a))
    );
    within(T, "register", r.register(a, &ra)).await.unwrap();
    assert_eq!(
        within(
            T,
            "announce unknown video",
            r.announce(a, ghost_video, &[0])
        )
        .await,
        Err(RegistryError::UnknownVideo(ghost_video))
    );
    assert_eq!(
        within(T, "announce out of range", r.announce(a, vid, &[1, 3])).await,
        Err(RegistryError::UnknownFragment {
            video: vid,
            index: 3,
            count: 3
        })
    );
    assert_eq!(
        within(T, "locate unknown video", r.locate(ghost_video, 0, 5))
            .await
            .unwrap_err(),
        RegistryError::UnknownVideo(ghost_video)
    );
    assert_eq!(
        within(T, "locate out of range", r.locate(vid, 7, 5))
            .await
            .unwrap_err(),
        RegistryError::UnknownFragment {
            video: vid,
            index: 7,
            count: 3
        }
    );
    assert_eq!(
        within(T, "unknown manifest", r.manifest(ghost_video))
            .await
            .unwrap_err(),
        RegistryError::UnknownVideo(ghost_video)
    );

    let mut bad = ra.clone();
    bad.name = "x".repeat(super::MAX_NAME_LEN + 1);
    assert!(matches!(
        within(T, "long name", r.register(a, &bad)).await,
        Err(RegistryError::Invalid(_))
    ));
    let mut bad = ra.clone();
    bad.addrs = vec!["tcp://127.0.0.1:1".parse().unwrap(); super::MAX_ADDRS + 1];
    assert!(matches!(
        within(T, "many addrs", r.register(a, &bad)).await,
        Err(RegistryError::Invalid(_))
    ));

    let mut inconsistent = test_manifest("bad.mp4", 2);
    inconsistent.size += 1;
    assert!(matches!(
        within(T, "bad manifest", r.add_video(&inconsistent)).await,
        Err(RegistryError::Invalid(_))
    ));
    assert_eq!(
        within(T, "videos", r.videos()).await.unwrap().len(),
        1,
        "the bad manifest was not registered"
    );
    s.shutdown.await;
}

/// Manifests round-trip exactly and registering one twice is not an error.
pub async fn manifests(make: MakeRegistry) {
    let s = make(Duration::from_secs(30)).await;
    let r = &s.registry;
    let m1 = test_manifest("one.mp4", 3);
    let m2 = test_manifest("two.webm", 1);
    let v1 = within(T, "add 1", r.add_video(&m1)).await.unwrap();
    assert_eq!(
        within(T, "add 1 again", r.add_video(&m1)).await.unwrap(),
        v1
    );
    let v2 = within(T, "add 2", r.add_video(&m2)).await.unwrap();
    let got = within(T, "manifest", r.manifest(v1)).await.unwrap();
    assert_eq!(*got, m1);
    assert_eq!(got.video_id(), v1);
    let mut videos = within(T, "videos", r.videos()).await.unwrap();
    videos.sort_by_key(|v| v.id);
    let mut want = [(v1, "one.mp4", 3u32, 12u64), (v2, "two.webm", 1, 4)];
    want.sort();
    let have: Vec<_> = videos
        .iter()
        .map(|v| (v.id, v.name.as_str(), v.fragment_count, v.size))
        .collect();
    assert_eq!(have, want);
    assert!(
        videos
            .iter()
            .all(|v| v.mime == "video/mp4" && v.holders == 0 && v.available == 0)
    );
    s.shutdown.await;
}

/// A node whose heartbeats stop vanishes from every answer, then can come back as new.
pub async fn expiry(make: MakeRegistry) {
    let ttl = Duration::from_millis(800);
    let s = make(ttl).await;
    let r = &s.registry;
    let vid = within(T, "add", r.add_video(&test_manifest("expiry.mp4", 2)))
        .await
        .unwrap();
    let (a, ra) = test_node(1);
    let (b, rb) = test_node(2);
    for (id, reg) in [(a, &ra), (b, &rb)] {
        within(T, "register", r.register(id, reg)).await.unwrap();
        within(T, "announce", r.announce(id, vid, &[0, 1]))
            .await
            .unwrap();
    }
    // b heartbeats every 200 ms; a stays silent.
    let deadline = tokio::time::Instant::now() + ttl + Duration::from_millis(400);
    while tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(
            !within(T, "heartbeat b", r.register(b, &rb))
                .await
                .unwrap()
                .new
        );
    }
    let nodes = within(T, "nodes", r.nodes()).await.unwrap();
    assert_eq!(
        nodes.iter().map(|n| n.id).collect::<Vec<_>>(),
        vec![b],
        "a expired, b did not"
    );
    for i in 0..2 {
        let h = within(T, "locate", r.locate(vid, i, 50)).await.unwrap();
        assert_eq!(
            (h.total, h.peers.iter().map(|p| p.id).collect::<Vec<_>>()),
            (1, vec![b])
        );
    }
    let v = &within(T, "videos", r.videos()).await.unwrap()[0];
    assert_eq!(v.holders, 1);
    assert_eq!(
        within(T, "announce expired", r.announce(a, vid, &[0])).await,
        Err(RegistryError::UnknownNode(a))
    );
    assert!(
        within(T, "come back", r.register(a, &ra))
            .await
            .unwrap()
            .new,
        "an expired node registers as new"
    );
    assert_eq!(
        within(T, "locate", r.locate(vid, 0, 50))
            .await
            .unwrap()
            .total,
        1,
        "holdings are not restored without an announcement"
    );
    s.shutdown.await;
}

/// The change feed, for implementations that have one ([`Registry::changes`]): a new
/// node, a new video, an announcement and a departure each reach a follower within a
/// second, in order. Not in [`registry_conformance!`](crate::registry_conformance): the
/// HTTP client has no feed of its own (the manager serves its feed over SSE).
pub async fn change_feed(make: MakeRegistry) {
    use super::RegistryChange;
    let s = make(Duration::from_secs(30)).await;
    let r = &s.registry;
    let mut feed = r.changes().expect("this registry has a change feed");
    let mut next = async || {
        within(1, "a change on the feed", feed.recv())
            .await
            .expect("the feed is open and keeps up")
    };
    let (a, ra) = test_node(1);
    within(T, "register", r.register(a, &ra)).await.unwrap();
    match next().await {
        RegistryChange::Node { node } => assert_eq!((node.id, node.name), (a, ra.name.clone())),
        other => panic!("expected the new node, got {other:?}"),
    }
    let m = test_manifest("feed.mp4", 3);
    let vid = within(T, "add", r.add_video(&m)).await.unwrap();
    assert_eq!(
        next().await,
        RegistryChange::Video {
            video: vid,
            name: "feed.mp4".into()
        }
    );
    within(T, "heartbeat", r.register(a, &ra)).await.unwrap();
    within(T, "announce", r.announce(a, vid, &[2, 0]))
        .await
        .unwrap();
    assert_eq!(
        next().await,
        RegistryChange::Announced {
            node: a,
            video: vid,
            have: vec![0, 2]
        },
        "a heartbeat that changes nothing is not a change"
    );
    within(T, "deregister", r.deregister(a)).await.unwrap();
    assert_eq!(
        next().await,
        RegistryChange::NodeLeft {
            node: a,
            expired: false
        }
    );
    s.shutdown.await;
}

/// Runs the registry behaviour suite against `$make` (a [`MakeRegistry`]).
#[macro_export]
macro_rules! registry_conformance {
    ($make:expr) => {
        mod registry_conformance {
            use super::*;
            macro_rules! case {
                ($name:ident) => {
                    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                    async fn $name() {
                        $crate::registry::conformance::$name($make).await
                    }
                };
            }
            case!(register_and_heartbeat);
            case!(announce_and_locate);
            case!(locate_spreads_load);
            case!(refusals);
            case!(manifests);
            case!(expiry);
        }
    };
}
