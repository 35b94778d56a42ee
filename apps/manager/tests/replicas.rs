//! Managers as stateless replicas of a registry in NATS JetStream key-value: the
//! registry suite through a NATS-backed manager's REST API, two managers answering
//! alike, and a manager killed without losing anything.

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{NatsServer, TestManager, nats_manager, reg_json, test_manifest};
use fragnet_core::conformance::within;
use fragnet_core::registry::conformance::Subject;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde_json::{Value, json};

fn make_http_over_nats(ttl: Duration) -> BoxFuture<'static, Subject> {
    async move {
        let nats = NatsServer::start().await;
        let m = nats_manager(&nats.url, |c| {
            c.ttl_secs = ttl.as_secs_f64();
            c.token = Some(common::TOKEN.into());
        })
        .await;
        let registry = Arc::new(
            fragnet_manager::HttpRegistry::new(&m.base, Some(common::TOKEN.into())).unwrap(),
        );
        Subject {
            registry,
            shutdown: async move {
                m.stop().await;
                drop(nats);
            }
            .boxed(),
        }
    }
    .boxed()
}

fragnet_core::registry_conformance!(crate::make_http_over_nats);

/// What does not change between two reads of the same registry: everything but the
/// clocks (`last_seen_ms`, `expires_in_ms`) and the order of a random sample.
fn stable(mut v: Value) -> Value {
    fn walk(v: &mut Value) {
        match v {
            Value::Object(m) => {
                m.remove("last_seen_ms");
                m.remove("expires_in_ms");
                m.values_mut().for_each(walk);
            }
            Value::Array(a) => {
                a.iter_mut().for_each(walk);
                a.sort_by_key(|x| x.to_string());
            }
            _ => {}
        }
    }
    walk(&mut v);
    v
}

async fn same_answers(a: &TestManager, b: &TestManager, paths: &[String]) {
    for p in paths {
        let (sa, va) = a.get(p).await;
        let (sb, vb) = b.get(p).await;
        assert_eq!(sa, 200, "{p}: {va}");
        assert_eq!((sa, stable(va)), (sb, stable(vb)), "{p}");
    }
}

/// Two managers on one NATS give identical answers; killing one loses nothing: the
/// other keeps every node, video and holding, a heartbeat through it is not a new
/// registration, and a manager started afterwards loads it all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_answer_alike_and_survive_each_other() {
    let nats = NatsServer::start().await;
    let one = nats_manager(&nats.url, |_| {}).await;
    let two = nats_manager(&nats.url, |_| {}).await;
    let m = test_manifest("replicated.mp4", 4);
    let vid = m.video_id();
    let (s, _) = one.post_raw("/videos", m.canonical_bytes()).await;
    assert_eq!(s, 201);
    let (s, _) = two.post_raw("/videos", m.canonical_bytes()).await;
    assert_eq!(
        s, 200,
        "the same video through the other replica is not new"
    );
    let mut nodes = Vec::new();
    for i in 1..=3 {
        let (id, reg) = reg_json(i);
        let through = if i % 2 == 0 { &two } else { &one };
        let (s, lease) = through.put(&format!("/nodes/{id}"), &reg).await;
        assert_eq!((s, &lease["new"]), (201, &json!(true)));
        let (s, _) = through
            .put(
                &format!("/nodes/{id}/fragments"),
                &json!({"video": vid, "have": [0, i]}),
            )
            .await;
        assert_eq!(s, 204);
        nodes.push((id, reg));
    }
    let paths: Vec<String> = [
        "/videos".to_string(),
        format!("/videos/{vid}"),
        format!("/videos/{vid}/fragments/0/peers"),
        format!("/videos/{vid}/fragments/2/peers"),
        "/nodes".into(),
        format!("/nodes/{}", nodes[0].0),
        "/fragments?sample=20".into(),
    ]
    .into();
    // The writes through one reach the other through its watch: within a moment.
    within(5, "the replicas converge", async {
        loop {
            let a = stable(one.get("/fragments?sample=20").await.1);
            let b = stable(two.get("/fragments?sample=20").await.1);
            if a == b {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    same_answers(&one, &two, &paths).await;
    let (_, peers) = two.get(&format!("/videos/{vid}/fragments/0/peers")).await;
    assert_eq!(peers["total"], 3, "{peers}");

    // Kill one: the other has everything, and the nodes are not new to it.
    one.stop().await;
    let (_, peers) = two.get(&format!("/videos/{vid}/fragments/0/peers")).await;
    assert_eq!(peers["total"], 3, "nothing lost: {peers}");
    let (id, reg) = &nodes[0];
    let (s, lease) = two.put(&format!("/nodes/{id}"), reg).await;
    assert_eq!((s, &lease["new"]), (200, &json!(false)), "{lease}");
    // A replica started afterwards loads it all before it serves.
    let three = nats_manager(&nats.url, |_| {}).await;
    same_answers(&two, &three, &paths).await;
    two.stop().await;
    three.stop().await;
}
