//! Shared by the HTTP tests: a seeder, a viewing node with its HTTP side, and a
//! WebDriver client for the real-browser test.

#![allow(dead_code)] // each test binary uses a part

pub mod webdriver;

use std::sync::Arc;
use std::time::Duration;

use fragnet_core::conformance::{NodeOptions, TestNode, TestVideo};
use fragnet_core::identity::Identity;
use fragnet_core::node::NodeBuilder;
use fragnet_core::{FragmentIndex, PeerAddr, Transports};
use fragnet_http::{HttpConfig, HttpService};

/// One node's transports: TCP.
pub fn tcp(_: &Identity) -> Transports {
    Transports::new().with(Arc::new(fragnet_tcp::TcpTransport::default()))
}

/// A node holding every fragment of `v`, serving at most `upload` bytes per second.
pub async fn seeder(v: &TestVideo, upload: Option<u64>) -> TestNode {
    TestNode::start(
        tcp,
        "tcp://127.0.0.1:0",
        NodeOptions {
            seed: Some((v.split_dir.clone(), None)),
            upload,
            grace: Some(Duration::ZERO),
            ..Default::default()
        },
    )
    .await
}

/// A node holding `have` of `v`, with its HTTP side on 127.0.0.1:0 downloading from
/// the peers its discovery finds when a player asks. Built like every node, by core's
/// node builder, with the HTTP side as its service.
pub struct Viewer {
    pub node: TestNode,
    pub base: String,
}

impl Viewer {
    /// A viewer that knows `peers` (none: it serves only what it holds).
    pub async fn start(
        v: &TestVideo,
        have: &[FragmentIndex],
        peers: &[PeerAddr],
        config: HttpConfig,
    ) -> Viewer {
        let peers = peers.to_vec();
        Self::start_with(v, have, config, move |b| b.peers(peers)).await
    }

    /// A viewer whose discovery (or anything else) `customize` sets on its builder.
    pub async fn start_with(
        v: &TestVideo,
        have: &[FragmentIndex],
        config: HttpConfig,
        customize: impl FnOnce(NodeBuilder) -> NodeBuilder,
    ) -> Viewer {
        let seed = (!have.is_empty()).then(|| (v.split_dir.clone(), Some(have.to_vec())));
        let node = TestNode::start_with(
            tcp,
            "tcp://127.0.0.1:0",
            NodeOptions {
                seed,
                ..Default::default()
            },
            move |b| customize(b.name("viewer").service(HttpService::new(config))),
        )
        .await;
        if have.is_empty() {
            assert!(node.store.videos().is_empty());
        }
        let base = node
            .node
            .as_ref()
            .and_then(|n| n.url())
            .expect("the HTTP service runs")
            .to_string();
        Viewer { node, base }
    }

    pub fn held(&self, v: &TestVideo) -> usize {
        self.node.store.have(v.id()).len()
    }

    /// The viewer's download engine.
    pub fn engine(&self) -> &std::sync::Arc<fragnet_http::Downloads> {
        self.node.node.as_ref().unwrap().engine()
    }

    pub async fn stop(&mut self) {
        self.node.stop().await;
    }
}

/// An HTTP client (rustls with ring, no TLS used here).
pub fn client() -> reqwest::Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap()
}

/// The original bytes of a test video.
pub fn original(v: &TestVideo) -> Vec<u8> {
    std::fs::read(&v.input).unwrap()
}
