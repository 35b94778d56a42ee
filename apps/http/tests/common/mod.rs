//! Shared by the HTTP tests: a seeder, a viewing node with its HTTP side, and a
//! WebDriver client for the real-browser test.

#![allow(dead_code)] // each test binary uses a part

pub mod webdriver;

use std::sync::Arc;
use std::time::Duration;

use fragnet_core::Want;
use fragnet_core::conformance::{NodeOptions, TestNode, TestVideo, within};
use fragnet_core::discovery::{CombinedDiscovery, Discovery, StaticPeers};
use fragnet_core::fetch::{FetchOptions, Fetcher, PeerPool};
use fragnet_core::identity::Identity;
use fragnet_core::protocol::Timeouts;
use fragnet_core::{FragmentIndex, PeerAddr, Transports};
use fragnet_http::{Downloads, Handle, HttpConfig, HttpState};
use tokio_util::sync::CancellationToken;

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
/// `peers` when a player asks.
pub struct Viewer {
    pub node: TestNode,
    pub http: Option<Handle>,
    pub downloads: Option<Arc<Downloads>>,
    pub base: String,
    cancel: CancellationToken,
}

impl Viewer {
    pub async fn start(
        v: &TestVideo,
        have: &[FragmentIndex],
        peers: &[PeerAddr],
        config: HttpConfig,
    ) -> Viewer {
        let peers = peers.to_vec();
        Self::start_with(v, have, config, move |_, pool| {
            (!peers.is_empty())
                .then(|| Arc::new(StaticPeers::new(peers, pool)) as Arc<dyn Discovery>)
                .into_iter()
                .collect()
        })
        .await
    }

    /// A viewer whose discovery is the sources `sources(node, pool)` makes (none: it serves
    /// only what it holds).
    pub async fn start_with(
        v: &TestVideo,
        have: &[FragmentIndex],
        config: HttpConfig,
        sources: impl FnOnce(&TestNode, Arc<PeerPool>) -> Vec<Arc<dyn Discovery>>,
    ) -> Viewer {
        let seed = (!have.is_empty()).then(|| (v.split_dir.clone(), Some(have.to_vec())));
        let node = TestNode::start(
            tcp,
            "tcp://127.0.0.1:0",
            NodeOptions {
                seed,
                ..Default::default()
            },
        )
        .await;
        if have.is_empty() {
            assert!(node.store.videos().is_empty());
        }
        let cancel = CancellationToken::new();
        let pool = Arc::new(PeerPool::new(node.transports.clone(), Timeouts::default()));
        let sources = sources(&node, pool.clone());
        let downloads = (!sources.is_empty()).then(|| {
            let fetcher = Fetcher::new(node.store.clone(), pool, FetchOptions::default());
            let discovery = Arc::new(CombinedDiscovery::new(sources));
            Arc::new(Downloads::new(
                fetcher,
                discovery,
                Want::None,
                cancel.clone(),
            ))
        });
        let state = HttpState {
            store: node.store.clone(),
            node_id: node.identity.node_id(),
            name: "viewer".into(),
            serve: Some(node.ctx.clone()),
            downloads: downloads.clone(),
        };
        let http = within(
            10,
            "HTTP spawn",
            fragnet_http::spawn(config, state, cancel.clone()),
        )
        .await
        .unwrap();
        let base = format!("http://{}", http.local_addr());
        Viewer {
            node,
            http: Some(http),
            downloads,
            base,
            cancel,
        }
    }

    pub fn held(&self, v: &TestVideo) -> usize {
        self.node.store.have(v.id()).len()
    }

    pub async fn stop(&mut self) {
        if let Some(h) = self.http.take() {
            within(10, "HTTP shutdown", h.shutdown()).await;
        }
        self.cancel.cancel();
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
