//! TCP-only and QUIC-only nodes in one swarm: a seeder listening on both, a TCP-only
//! fetcher, a QUIC-only fetcher given every address (it skips the TCP ones), and a
//! fetcher on both transports that completes the video from the other two.

mod common;

use std::sync::Arc;

use common::{quic_only, tcp_and_quic, tcp_only};
use fragnet_core::PeerAddr;
use fragnet_core::conformance::{Counter, NodeOptions, TestNode, TestVideo, joined_bytes, within};
use fragnet_core::fetch::FetchOptions;

fn by_scheme<'a>(node: &'a TestNode, scheme: &str) -> &'a PeerAddr {
    node.addrs
        .iter()
        .find(|a| a.scheme == scheme)
        .unwrap_or_else(|| panic!("no {scheme} address"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tcp_only_and_quic_only_nodes_complete_a_video_in_one_swarm() {
    let v = TestVideo::sample();
    let original = std::fs::read(&v.input).unwrap();
    let seeder = TestNode::start(
        tcp_and_quic,
        "tcp://127.0.0.1:0",
        NodeOptions {
            seed: Some((v.split_dir.clone(), None)),
            also_listen: vec!["quic://127.0.0.1:0".into()],
            ..Default::default()
        },
    )
    .await;
    assert_eq!(
        seeder
            .addrs
            .iter()
            .map(|a| a.scheme.as_str())
            .collect::<Vec<_>>(),
        ["tcp", "quic"]
    );
    let tcp_node = TestNode::start(tcp_only, "tcp://127.0.0.1:0", NodeOptions::default()).await;
    let quic_node = TestNode::start(quic_only, "quic://127.0.0.1:0", NodeOptions::default()).await;

    // The TCP-only node fetches over TCP; the QUIC-only node is handed every address the
    // swarm has (as a registry would) and can only use the seeder's QUIC one.
    let every_addr: Vec<PeerAddr> = vec![
        by_scheme(&seeder, "tcp").clone(),
        by_scheme(&seeder, "quic").clone(),
        tcp_node.addr.clone(),
    ];
    let quic_obs = Arc::new(Counter::default());
    let (rt, rq) = within(90, "both fetch", async {
        tokio::join!(
            tcp_node.fetch(
                std::slice::from_ref(by_scheme(&seeder, "tcp")),
                None,
                None,
                FetchOptions::default(),
                Arc::new(Counter::default())
            ),
            quic_node.fetch(
                &every_addr,
                Some(v.id()),
                None,
                FetchOptions::default(),
                quic_obs.clone()
            ),
        )
    })
    .await;
    let (rt, rq) = (rt.unwrap(), rq.unwrap());
    assert!(
        joined_bytes(&tcp_node, v.id()) == original,
        "the TCP-only node's copy differs"
    );
    assert!(
        joined_bytes(&quic_node, v.id()) == original,
        "the QUIC-only node's copy differs"
    );
    assert!(
        rt.fetched
            .iter()
            .all(|(_, from)| from.iter().all(|a| a.scheme == "tcp"))
    );
    assert!(
        rq.fetched
            .iter()
            .all(|(_, from)| from == std::slice::from_ref(by_scheme(&seeder, "quic"))),
        "{:?}",
        rq.fetched
    );
    let failures = quic_obs.failures.lock().unwrap().clone();
    assert!(
        failures
            .iter()
            .all(|(a, e)| a.scheme == "tcp" && e.contains("cannot handle")),
        "{failures:?}"
    );

    // A node with both transports fetches from the TCP-only and the QUIC-only node
    // (the seeder is gone): chunks arrive over both.
    drop(seeder);
    let both = TestNode::start(
        tcp_and_quic,
        "tcp://127.0.0.1:0",
        NodeOptions {
            also_listen: vec!["quic://127.0.0.1:0".into()],
            ..Default::default()
        },
    )
    .await;
    let peers = [tcp_node.addr.clone(), quic_node.addr.clone()];
    let r = within(
        90,
        "fetch from both",
        both.fetch(
            &peers,
            Some(v.id()),
            None,
            FetchOptions::default(),
            Arc::new(Counter::default()),
        ),
    )
    .await
    .unwrap();
    assert!(joined_bytes(&both, v.id()) == original);
    let schemes: std::collections::BTreeSet<&str> = r
        .fetched
        .iter()
        .flat_map(|(_, from)| from.iter().map(|a| a.scheme.as_str()))
        .collect();
    assert_eq!(
        schemes.into_iter().collect::<Vec<_>>(),
        ["quic", "tcp"],
        "{:?}",
        r.fetched
    );
}
