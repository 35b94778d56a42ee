//! The registry behaviour suite, run against the in-memory registry and against the
//! HTTP client talking to a real manager (with a token) on 127.0.0.1:0.

mod common;

use std::sync::Arc;
use std::time::Duration;

use fragnet_core::MemoryRegistry;
use fragnet_core::registry::MemoryRegistryConfig;
use fragnet_core::registry::conformance::Subject;
use futures::FutureExt;
use futures::future::BoxFuture;

fn make_memory(ttl: Duration) -> BoxFuture<'static, Subject> {
    async move {
        let registry = Arc::new(MemoryRegistry::new(MemoryRegistryConfig {
            ttl,
            ..Default::default()
        }));
        Subject {
            registry,
            shutdown: async {}.boxed(),
        }
    }
    .boxed()
}

fn make_http(ttl: Duration) -> BoxFuture<'static, Subject> {
    async move {
        let m = common::TestManager::start(|c| {
            c.ttl_secs = ttl.as_secs_f64();
            c.token = Some(common::TOKEN.into());
        })
        .await;
        let registry = Arc::new(
            fragnet_manager::HttpRegistry::new(&m.base, Some(common::TOKEN.into())).unwrap(),
        );
        Subject {
            registry,
            shutdown: async move { m.stop().await }.boxed(),
        }
    }
    .boxed()
}

mod memory {
    fragnet_core::registry_conformance!(crate::make_memory);

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn change_feed() {
        fragnet_core::registry::conformance::change_feed(crate::make_memory).await;
    }
}

mod http {
    fragnet_core::registry_conformance!(crate::make_http);
}

/// What only the HTTP client can meet: a manager that is not there.
#[tokio::test]
async fn unreachable_manager_is_unavailable() {
    use fragnet_core::{Registry, RegistryError};
    // Bind then drop: a port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let r = fragnet_manager::HttpRegistry::with_timeouts(
        &format!("127.0.0.1:{port}"),
        None,
        Duration::from_secs(2),
        Duration::from_secs(3),
    )
    .unwrap();
    let err = fragnet_core::conformance::within(10, "videos", r.videos())
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RegistryError::Unavailable(m) if m.contains(&port.to_string())),
        "{err}"
    );
    assert!(fragnet_manager::HttpRegistry::new("ftp://x", None).is_err());
}
