//! The `nats` registry against a real `nats-server -js`: the registry behaviour suite,
//! the change feed, and two registries sharing one set of buckets.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::NatsServer;
use fragnet_broker::{NatsConfig, NatsRegistry, NatsRegistryConfig};
use fragnet_core::Registry;
use fragnet_core::conformance::within;
use fragnet_core::registry::conformance::{Subject, test_manifest, test_node};
use futures::FutureExt;
use futures::future::BoxFuture;

async fn registry(server: &NatsServer, ttl: Duration) -> NatsRegistry {
    within(
        15,
        "connecting the NATS registry",
        NatsRegistry::connect(
            &NatsConfig::new(server.url()),
            NatsRegistryConfig {
                ttl_secs: ttl.as_secs_f64(),
                ..Default::default()
            },
        ),
    )
    .await
    .unwrap()
}

fn make_nats(ttl: Duration) -> BoxFuture<'static, Subject> {
    async move {
        let dir = tempfile::tempdir().unwrap();
        let server = NatsServer::start(&["-js", "-sd", dir.path().to_str().unwrap()]).await;
        let registry = Arc::new(registry(&server, ttl).await);
        Subject {
            registry,
            shutdown: async move {
                drop(server);
                drop(dir);
            }
            .boxed(),
        }
    }
    .boxed()
}

fragnet_core::registry_conformance!(crate::make_nats);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn change_feed() {
    fragnet_core::registry::conformance::change_feed(make_nats).await;
}

/// Two registries on one server answer alike: what one writes, the other serves, and
/// a node registered through one is not new to the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_registries_share_the_buckets() {
    let dir = tempfile::tempdir().unwrap();
    let server = NatsServer::start(&["-js", "-sd", dir.path().to_str().unwrap()]).await;
    let ttl = Duration::from_secs(30);
    let one = registry(&server, ttl).await;
    let m = test_manifest("shared.mp4", 4);
    let vid = within(10, "add", one.add_video(&m)).await.unwrap();
    let (a, ra) = test_node(1);
    assert!(
        within(10, "register", one.register(a, &ra))
            .await
            .unwrap()
            .new
    );
    within(10, "announce", one.announce(a, vid, &[1, 3]))
        .await
        .unwrap();
    // A second registry started afterwards loads everything before it answers.
    let two = registry(&server, ttl).await;
    assert_eq!(*within(10, "manifest", two.manifest(vid)).await.unwrap(), m);
    let h = within(10, "locate", two.locate(vid, 3, 10)).await.unwrap();
    assert_eq!((h.total, h.peers[0].id), (1, a));
    assert!(
        !within(10, "heartbeat via two", two.register(a, &ra))
            .await
            .unwrap()
            .new,
        "a live node is not new to another registry"
    );
    // A write through two reaches one through its watch.
    let (b, rb) = test_node(2);
    within(10, "register b", two.register(b, &rb))
        .await
        .unwrap();
    within(10, "announce b", two.announce(b, vid, &[3]))
        .await
        .unwrap();
    within(5, "one sees b's announcement", async {
        loop {
            if one.locate(vid, 3, 10).await.unwrap().total == 2 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert_eq!(
        one.videos().await.unwrap(),
        two.videos().await.unwrap(),
        "identical answers"
    );
}
