//! Contract tests: every endpoint and error path of the REST API, against a real
//! manager on 127.0.0.1:0.

mod common;

use std::collections::HashSet;
use std::time::Duration;

use common::*;
use fragnet_core::conformance::within;
use reqwest::Method;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metrics() {
    let m = TestManager::start(|c| c.ttl_secs = 12.0).await;
    let (s, h) = m.get("/health").await;
    assert_eq!(s, 200);
    assert_eq!(
        (
            h["status"].as_str(),
            h["nodes"].as_u64(),
            h["videos"].as_u64(),
            h["ttl_ms"].as_u64(),
            h["auth"].as_bool()
        ),
        (Some("ok"), Some(0), Some(0), Some(12_000), Some(false))
    );

    let (id, reg) = reg_json(1);
    assert_eq!(m.put(&format!("/nodes/{id}"), &reg).await.0, 201);
    assert_eq!(m.get("/nope").await.0, 404);
    let resp = m.send(Method::GET, "/metrics", None, None).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"),
        "Prometheus text format"
    );
    let text = resp.text().await.unwrap();
    for line in [
        "fragnet_manager_nodes 1\n",
        "fragnet_manager_videos 0\n",
        "fragnet_manager_fragments_held 0\n",
        "fragnet_manager_requests_total{route=\"/health\",method=\"GET\",status=\"200\"} 1\n",
        "fragnet_manager_requests_total{route=\"/nodes/{id}\",method=\"PUT\",status=\"201\"} 1\n",
        "fragnet_manager_requests_total{route=\"unmatched\",method=\"GET\",status=\"404\"} 1\n",
    ] {
        assert!(text.contains(line), "metrics lack {line:?}:\n{text}");
    }
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn videos() {
    let m = TestManager::start(|c| c.limits.max_manifest_bytes = 4096).await;
    let man = test_manifest("clip.mp4", 3);
    let id = man.video_id().to_string();

    let resp = m
        .send(Method::POST, "/videos", Some(man.canonical_bytes()), None)
        .await;
    assert_eq!(resp.status(), 201);
    assert_eq!(resp.headers()["location"], format!("/videos/{id}").as_str());
    let (_, info) = json(resp).await;
    assert_eq!(
        info,
        json!({"id": id, "name": "clip.mp4", "mime": "video/mp4", "size": 12, "fragment_count": 3, "holders": 0, "available": 0})
    );
    // Again, pretty-printed and with the right claimed id: same video, 200.
    let pretty = serde_json::to_vec_pretty(&man).unwrap();
    let (s, again) = m.post_raw(&format!("/videos?id={id}"), pretty).await;
    assert_eq!((s, &again["id"]), (200, &json!(id)));
    // Content-Type is not required (curl -d sends a form type).
    let resp = m
        .client
        .post(m.url("/videos"))
        .header("content-type", "application/x-www-form-urlencoded")
        .body(man.canonical_bytes())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let other = test_manifest("other.mp4", 1);
    let got = m
        .post_raw(&format!("/videos?id={id}"), other.canonical_bytes())
        .await;
    assert_error(&got, 422, "id_mismatch");
    assert_eq!(
        (
            got.1["details"]["video"].as_str(),
            got.1["details"]["actual"].as_str()
        ),
        (
            Some(id.as_str()),
            Some(other.video_id().to_string().as_str())
        )
    );
    assert_error(
        &m.post_raw("/videos?id=nothex", other.canonical_bytes())
            .await,
        400,
        "bad_request",
    );
    assert_error(
        &m.post_raw("/videos", b"{not json".to_vec()).await,
        422,
        "invalid",
    );
    assert_error(&m.post_raw("/videos", b"".to_vec()).await, 422, "invalid");
    let mut inconsistent = test_manifest("bad.mp4", 2);
    inconsistent.size = 99;
    assert_error(
        &m.post_raw("/videos", inconsistent.canonical_bytes()).await,
        422,
        "invalid",
    );
    let mut extra: Value = serde_json::from_slice(&other.canonical_bytes()).unwrap();
    extra["extra"] = json!(1);
    assert_error(
        &m.post_raw("/videos", serde_json::to_vec(&extra).unwrap())
            .await,
        422,
        "invalid",
    );
    let big = test_manifest("big.mp4", 200);
    assert!(big.canonical_bytes().len() > 4096);
    assert_error(
        &m.post_raw("/videos", big.canonical_bytes()).await,
        413,
        "payload_too_large",
    );
    // Without a Content-Length (chunked), the limit holds as well.
    let mut raw = tokio::net::TcpStream::connect(m.handle.local_addr())
        .await
        .unwrap();
    let mut req = b"POST /videos HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n".to_vec();
    for c in big.canonical_bytes().chunks(1000) {
        req.extend_from_slice(format!("{:x}\r\n", c.len()).as_bytes());
        req.extend_from_slice(c);
        req.extend_from_slice(b"\r\n");
    }
    req.extend_from_slice(b"0\r\n\r\n");
    // The server may answer and close before reading everything; a failed write is fine.
    let _ = raw.write_all(&req).await;
    let mut answer = Vec::new();
    let _ = within(10, "chunked answer", raw.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.starts_with("HTTP/1.1 413") && answer.contains("payload_too_large"),
        "{answer}"
    );

    // Listing and paging.
    let v2 = m.post_raw("/videos", other.canonical_bytes()).await.1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let v3 = m
        .post_raw("/videos", test_manifest("third.webm", 2).canonical_bytes())
        .await
        .1["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (s, page) = m.get("/videos").await;
    assert_eq!(s, 200);
    let ids: Vec<&str> = page["videos"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["id"].as_str().unwrap())
        .collect();
    let mut want = vec![id.as_str(), v2.as_str(), v3.as_str()];
    want.sort();
    assert_eq!(ids, want);
    assert!(page.get("next_cursor").is_none());
    let mut seen = Vec::new();
    let mut path = "/videos?limit=1".to_string();
    loop {
        let (_, p) = m.get(&path).await;
        seen.extend(
            p["videos"]
                .as_array()
                .unwrap()
                .iter()
                .map(|v| v["id"].as_str().unwrap().to_string()),
        );
        match p["next_cursor"].as_str() {
            Some(c) => path = format!("/videos?limit=1&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(seen, want);
    for bad in [
        "/videos?limit=0",
        "/videos?limit=1001",
        "/videos?limit=x",
        "/videos?cursor=zz",
    ] {
        assert_error(&m.get(bad).await, 400, "bad_request");
    }

    // The manifest, byte for byte.
    let resp = m
        .send(Method::GET, &format!("/videos/{id}"), None, None)
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "application/json");
    assert_eq!(resp.bytes().await.unwrap().to_vec(), man.canonical_bytes());
    assert_error(&m.get("/videos/xyz").await, 400, "bad_request");
    assert_error(
        &m.get(&format!("/videos/{}", id.to_uppercase())).await,
        400,
        "bad_request",
    );
    let ghost = "0".repeat(64);
    let got = m.get(&format!("/videos/{ghost}")).await;
    assert_error(&got, 404, "unknown_video");
    assert_eq!(got.1["details"]["video"], ghost.as_str());
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes() {
    let m = TestManager::start(|c| c.limits.max_body_bytes = 2048).await;
    let (id, reg) = reg_json(1);
    let (s, lease) = m.put(&format!("/nodes/{id}"), &reg).await;
    assert_eq!(
        (s, lease),
        (
            201,
            json!({"ttl_ms": 30000, "heartbeat_ms": 10000, "new": true})
        )
    );
    let (s, lease) = m.put(&format!("/nodes/{id}"), &reg).await;
    assert_eq!((s, &lease["new"]), (200, &json!(false)));

    assert_error(&m.put("/nodes/short", &reg).await, 400, "bad_request");
    let r = m
        .send(
            Method::PUT,
            &format!("/nodes/{id}"),
            Some(b"{\"name\":".to_vec()),
            None,
        )
        .await;
    assert_error(&json(r).await, 422, "invalid");
    let mut unknown_field = reg.clone();
    unknown_field["colour"] = json!("red");
    assert_error(
        &m.put(&format!("/nodes/{id}"), &unknown_field).await,
        422,
        "invalid",
    );
    for (field, value) in [
        ("name", json!("x".repeat(65))),
        ("name", json!("")),
        ("addrs", json!(["tcp://h:0"])),
        ("addrs", json!(["no-port"])),
        ("http", json!("ftp://x")),
    ] {
        let mut bad = reg.clone();
        bad[field] = value.clone();
        assert_error(&m.put(&format!("/nodes/{id}"), &bad).await, 422, "invalid");
    }
    let mut huge = reg.clone();
    huge["name"] = json!("x".repeat(4000));
    assert_error(
        &m.put(&format!("/nodes/{id}"), &huge).await,
        413,
        "payload_too_large",
    );

    // Listing, one node, paging.
    let (id2, reg2) = reg_json(2);
    m.put(&format!("/nodes/{id2}"), &reg2).await;
    let (s, page) = m.get("/nodes").await;
    assert_eq!(s, 200);
    let nodes = page["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 2);
    let n1 = nodes.iter().find(|n| n["id"] == id.as_str()).unwrap();
    assert_eq!(
        (&n1["name"], &n1["addrs"], &n1["http"]),
        (&reg["name"], &reg["addrs"], &reg["http"])
    );
    assert!(
        n1["expires_in_ms"].as_u64().unwrap() <= 30_000
            && n1["last_seen_ms"].as_u64().unwrap() < 10_000
    );
    let (_, p1) = m.get("/nodes?limit=1").await;
    let c = p1["next_cursor"].as_str().unwrap();
    let (_, p2) = m.get(&format!("/nodes?limit=1&cursor={c}")).await;
    assert!(p2.get("next_cursor").is_none());
    let paged: HashSet<&str> = [&p1, &p2]
        .iter()
        .map(|p| p["nodes"][0]["id"].as_str().unwrap())
        .collect();
    assert_eq!(paged, HashSet::from([id.as_str(), id2.as_str()]));
    assert_error(&m.get("/nodes?cursor=abc").await, 400, "bad_request");
    assert_error(&m.get("/nodes?limit=0").await, 400, "bad_request");

    let (s, detail) = m.get(&format!("/nodes/{id}")).await;
    assert_eq!(
        (s, &detail["node"]["id"], &detail["holdings"]),
        (200, &json!(id), &json!([]))
    );
    assert_error(&m.get("/nodes/nothex").await, 400, "bad_request");
    let ghost = "f".repeat(64);
    assert_error(
        &m.get(&format!("/nodes/{ghost}")).await,
        404,
        "unknown_node",
    );

    // Delete, then it is gone everywhere.
    assert_eq!(m.delete(&format!("/nodes/{id2}")).await, (204, Value::Null));
    assert_error(
        &m.delete(&format!("/nodes/{id2}")).await,
        404,
        "unknown_node",
    );
    assert_error(&m.get(&format!("/nodes/{id2}")).await, 404, "unknown_node");
    assert_eq!(
        m.get("/nodes").await.1["nodes"].as_array().unwrap().len(),
        1
    );
    assert_error(&m.delete("/nodes/bad").await, 400, "bad_request");
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn announcements_peers_and_fragments() {
    let m = TestManager::start(|_| {}).await;
    let v1 = test_manifest("one.mp4", 3);
    let v2 = test_manifest("two.mp4", 2);
    let (id1, id2) = (v1.video_id().to_string(), v2.video_id().to_string());
    m.post_raw("/videos", v1.canonical_bytes()).await;
    m.post_raw("/videos", v2.canonical_bytes()).await;
    let (a, ra) = reg_json(1);
    let (b, rb) = reg_json(2);
    m.put(&format!("/nodes/{a}"), &ra).await;
    m.put(&format!("/nodes/{b}"), &rb).await;

    let ann = |video: &str, have: Value| json!({"video": video, "have": have});
    assert_eq!(
        m.put(
            &format!("/nodes/{a}/fragments"),
            &ann(&id1, json!([0, 1, 2]))
        )
        .await,
        (204, Value::Null)
    );
    assert_eq!(
        m.put(&format!("/nodes/{b}/fragments"), &ann(&id1, json!([2])))
            .await
            .0,
        204
    );
    assert_eq!(
        m.put(&format!("/nodes/{b}/fragments"), &ann(&id2, json!([1])))
            .await
            .0,
        204
    );

    let ghost = "e".repeat(64);
    assert_error(
        &m.put(&format!("/nodes/{ghost}/fragments"), &ann(&id1, json!([0])))
            .await,
        404,
        "unknown_node",
    );
    assert_error(
        &m.put(&format!("/nodes/{a}/fragments"), &ann(&ghost, json!([0])))
            .await,
        404,
        "unknown_video",
    );
    let got = m
        .put(&format!("/nodes/{a}/fragments"), &ann(&id1, json!([3])))
        .await;
    assert_error(&got, 404, "unknown_fragment");
    assert_eq!(
        (
            got.1["details"]["index"].as_u64(),
            got.1["details"]["fragment_count"].as_u64()
        ),
        (Some(3), Some(3))
    );
    assert_error(
        &m.put(
            &format!("/nodes/{a}/fragments"),
            &ann(&id1, json!(vec![0; 5000])),
        )
        .await,
        422,
        "invalid",
    );
    assert_error(
        &m.put(
            &format!("/nodes/{a}/fragments"),
            &json!({"video": id1, "have": [-1]}),
        )
        .await,
        422,
        "invalid",
    );
    assert_error(
        &m.put(&format!("/nodes/{a}/fragments"), &json!({"video": id1}))
            .await,
        422,
        "invalid",
    );
    assert_error(
        &m.put("/nodes/x/fragments", &ann(&id1, json!([0]))).await,
        400,
        "bad_request",
    );

    // Holders of one fragment.
    let (s, h) = m.get(&format!("/videos/{id1}/fragments/2/peers")).await;
    assert_eq!(
        (
            s,
            h["total"].as_u64(),
            h["index"].as_u64(),
            h["video"].as_str()
        ),
        (200, Some(2), Some(2), Some(id1.as_str()))
    );
    let peers: HashSet<&str> = h["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["id"].as_str().unwrap())
        .collect();
    assert_eq!(peers, HashSet::from([a.as_str(), b.as_str()]));
    let pa = h["peers"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["id"] == a.as_str())
        .unwrap();
    assert_eq!(
        (&pa["addrs"], &pa["http"], &pa["name"]),
        (&ra["addrs"], &ra["http"], &ra["name"])
    );
    let (_, h) = m
        .get(&format!("/videos/{id1}/fragments/2/peers?limit=1"))
        .await;
    assert_eq!(
        (h["total"].as_u64(), h["peers"].as_array().unwrap().len()),
        (Some(2), 1)
    );
    let (_, h) = m
        .get(&format!("/videos/{id1}/fragments/2/peers?limit=0"))
        .await;
    assert_eq!(h["peers"], json!([]));
    for bad in ["x", "-1", "1.5", "4294967296"] {
        assert_error(
            &m.get(&format!("/videos/{id1}/fragments/{bad}/peers")).await,
            400,
            "bad_request",
        );
    }
    assert_error(
        &m.get(&format!("/videos/{id1}/fragments/0/peers?limit=201"))
            .await,
        400,
        "bad_request",
    );
    assert_error(
        &m.get("/videos/bad/fragments/0/peers").await,
        400,
        "bad_request",
    );
    assert_error(
        &m.get(&format!("/videos/{ghost}/fragments/0/peers")).await,
        404,
        "unknown_video",
    );
    assert_error(
        &m.get(&format!("/videos/{id1}/fragments/3/peers")).await,
        404,
        "unknown_fragment",
    );

    // The fragment listing: every fragment of every video, including unheld ones.
    let (s, page) = m.get("/fragments").await;
    assert_eq!(s, 200);
    let entries = page["fragments"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    let holders = |v: &str, i: u64| {
        entries
            .iter()
            .find(|e| e["video"] == v && e["index"] == i)
            .map(|e| e["holders"].as_u64().unwrap())
    };
    assert_eq!(
        (
            holders(&id1, 0),
            holders(&id1, 2),
            holders(&id2, 0),
            holders(&id2, 1)
        ),
        (Some(1), Some(2), Some(0), Some(1))
    );
    let e = entries
        .iter()
        .find(|e| e["video"] == id1.as_str() && e["index"] == 2)
        .unwrap();
    assert_eq!(
        (e["file"].as_str(), e["sample"].as_array().unwrap().len()),
        (Some("fragment_2.bin"), 2)
    );
    let (_, p) = m.get("/fragments?sample=0").await;
    assert!(
        p["fragments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["sample"] == json!([]))
    );
    let (_, p) = m.get(&format!("/fragments?node={b}")).await;
    let held: Vec<(String, u64)> = p["fragments"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["video"].as_str().unwrap().to_string(),
                e["index"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut want = vec![(id1.clone(), 2), (id2.clone(), 1)];
    want.sort();
    assert_eq!(held, want);
    let (_, p) = m.get(&format!("/fragments?video={id2}")).await;
    assert_eq!(p["fragments"].as_array().unwrap().len(), 2);
    let (_, p) = m.get(&format!("/fragments?video={id1}&node={b}")).await;
    assert_eq!(p["fragments"].as_array().unwrap().len(), 1);
    // Paging visits every entry once, in order.
    let mut all = Vec::new();
    let mut path = "/fragments?limit=2".to_string();
    loop {
        let (_, p) = m.get(&path).await;
        all.extend(p["fragments"].as_array().unwrap().iter().map(|e| {
            (
                e["video"].as_str().unwrap().to_string(),
                e["index"].as_u64().unwrap(),
            )
        }));
        match p["next_cursor"].as_str() {
            Some(c) => path = format!("/fragments?limit=2&cursor={c}"),
            None => break,
        }
    }
    assert_eq!(all.len(), 5);
    assert!(all.windows(2).all(|w| w[0] < w[1]));
    for bad in [
        "/fragments?limit=0",
        "/fragments?limit=1001",
        "/fragments?sample=21",
        "/fragments?cursor=nope",
        "/fragments?video=xyz",
        "/fragments?node=1",
    ] {
        assert_error(&m.get(bad).await, 400, "bad_request");
    }
    assert_error(
        &m.get(&format!("/fragments?video={ghost}")).await,
        404,
        "unknown_video",
    );
    assert_error(
        &m.get(&format!("/fragments?node={ghost}")).await,
        404,
        "unknown_node",
    );

    // Replace semantics and withdrawal, seen through every answer.
    m.put(&format!("/nodes/{a}/fragments"), &ann(&id1, json!([1])))
        .await;
    assert_eq!(
        m.get(&format!("/videos/{id1}/fragments/0/peers")).await.1["total"],
        0
    );
    let (_, d) = m.get(&format!("/nodes/{a}")).await;
    assert_eq!(d["holdings"], json!([{"video": id1, "have": [1]}]));
    assert_eq!(
        (
            d["node"]["videos"].as_u64(),
            d["node"]["fragments"].as_u64()
        ),
        (Some(1), Some(1))
    );
    m.put(&format!("/nodes/{a}/fragments"), &ann(&id1, json!([])))
        .await;
    assert_eq!(m.get(&format!("/nodes/{a}")).await.1["holdings"], json!([]));
    let (_, vids) = m.get("/videos").await;
    let v = vids["videos"]
        .as_array()
        .unwrap()
        .iter()
        .find(|v| v["id"] == id1.as_str())
        .unwrap()
        .clone();
    assert_eq!(
        (v["holders"].as_u64(), v["available"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(m.get("/health").await.1["fragments_held"], 2);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_have_one_shape() {
    let m = TestManager::start(|_| {}).await;
    assert_error(&m.get("/no/such/route").await, 404, "not_found");
    let resp = m
        .send(
            Method::PATCH,
            &format!("/nodes/{}", "a".repeat(64)),
            None,
            None,
        )
        .await;
    let allow = resp
        .headers()
        .get("allow")
        .map(|v| v.to_str().unwrap().to_string());
    assert_error(&json(resp).await, 405, "method_not_allowed");
    let allow = allow.expect("405 keeps the Allow header");
    for method in ["GET", "PUT", "DELETE"] {
        assert!(allow.contains(method), "{allow}");
    }
    assert_error(
        &json(m.send(Method::POST, "/health", None, None).await).await,
        405,
        "method_not_allowed",
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_guards_writes_only() {
    let dir = tempfile::tempdir().unwrap();
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let m = TestManager::start(|c| c.token_file = Some(token_file.clone())).await;
    let (id, reg) = reg_json(1);
    let body = serde_json::to_vec(&reg).unwrap();
    let path = format!("/nodes/{id}");

    let resp = m.send(Method::PUT, &path, Some(body.clone()), None).await;
    assert_eq!(
        resp.headers()["www-authenticate"].to_str().unwrap(),
        "Bearer realm=\"fragnet-manager\""
    );
    assert_error(&json(resp).await, 401, "unauthorized");
    assert_error(
        &json(
            m.send(Method::PUT, &path, Some(body.clone()), Some("wrong"))
                .await,
        )
        .await,
        401,
        "unauthorized",
    );
    let basic = m
        .client
        .put(m.url(&path))
        .header("authorization", format!("Basic {TOKEN}"))
        .body(body.clone())
        .send()
        .await
        .unwrap();
    assert_error(&json(basic).await, 401, "unauthorized");
    assert_eq!(
        m.send(Method::PUT, &path, Some(body.clone()), Some(TOKEN))
            .await
            .status(),
        201
    );

    let man = test_manifest("guarded.mp4", 1);
    assert_error(
        &json(
            m.send(Method::POST, "/videos", Some(man.canonical_bytes()), None)
                .await,
        )
        .await,
        401,
        "unauthorized",
    );
    assert_eq!(
        m.send(
            Method::POST,
            "/videos",
            Some(man.canonical_bytes()),
            Some(TOKEN)
        )
        .await
        .status(),
        201
    );
    let ann = serde_json::to_vec(&json!({"video": man.video_id(), "have": [0]})).unwrap();
    assert_error(
        &json(
            m.send(
                Method::PUT,
                &format!("{path}/fragments"),
                Some(ann.clone()),
                None,
            )
            .await,
        )
        .await,
        401,
        "unauthorized",
    );
    assert_eq!(
        m.send(
            Method::PUT,
            &format!("{path}/fragments"),
            Some(ann),
            Some(TOKEN)
        )
        .await
        .status(),
        204
    );
    assert_error(
        &json(m.send(Method::DELETE, &path, None, None).await).await,
        401,
        "unauthorized",
    );

    // Reads stay open.
    for p in [
        "/health",
        "/videos",
        "/nodes",
        "/fragments",
        "/metrics",
        "/openapi.json",
        &path,
        &format!("/videos/{}", man.video_id()),
    ] {
        assert_eq!(
            m.send(Method::GET, p, None, None).await.status(),
            200,
            "{p}"
        );
    }
    assert_eq!(m.get("/health").await.1["auth"], true);
    assert_eq!(
        m.send(Method::DELETE, &path, None, Some(TOKEN))
            .await
            .status(),
        204
    );

    // The client reports a wrong token as such.
    use fragnet_core::{Registry, RegistryError};
    let wrong = fragnet_manager::HttpRegistry::new(&m.base, Some("nope".into())).unwrap();
    let (nid, nreg) = test_node(5);
    assert!(matches!(
        within(10, "register", wrong.register(nid, &nreg)).await,
        Err(RegistryError::Unauthorized(_))
    ));
    let right = fragnet_manager::HttpRegistry::new(&m.base, Some(TOKEN.into())).unwrap();
    assert!(
        within(10, "register", right.register(nid, &nreg))
            .await
            .unwrap()
            .new
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_keeps_manifests_and_drops_soft_state() {
    let m = TestManager::start(|_| {}).await;
    let manifests = [test_manifest("a.mp4", 3), test_manifest("b.mkv", 5)];
    for man in &manifests {
        assert_eq!(m.post_raw("/videos", man.canonical_bytes()).await.0, 201);
    }
    let (id, reg) = reg_json(1);
    m.put(&format!("/nodes/{id}"), &reg).await;
    m.put(
        &format!("/nodes/{id}/fragments"),
        &json!({"video": manifests[0].video_id(), "have": [0]}),
    )
    .await;
    let dir = m.dir;
    within(10, "shutdown", m.handle.shutdown()).await;
    // A damaged file beside them does not keep the manager from starting.
    std::fs::write(
        dir.path()
            .join("videos")
            .join(format!("{}.json", "1".repeat(64))),
        b"garbage",
    )
    .unwrap();

    let m = TestManager::start_in(dir, |_| {}).await;
    let (_, page) = m.get("/videos").await;
    assert_eq!(page["videos"].as_array().unwrap().len(), 2);
    for man in &manifests {
        let resp = m
            .send(
                Method::GET,
                &format!("/videos/{}", man.video_id()),
                None,
                None,
            )
            .await;
        assert_eq!(
            resp.bytes().await.unwrap().to_vec(),
            man.canonical_bytes(),
            "manifest survives byte for byte"
        );
    }
    // Holdings are soft state: gone until the node comes back and announces.
    assert_eq!(m.get("/nodes").await.1["nodes"], json!([]));
    let (s, lease) = m.put(&format!("/nodes/{id}"), &reg).await;
    assert_eq!(
        (s, &lease["new"]),
        (201, &json!(true)),
        "the node learns it must announce again"
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_nodes_vanish_from_every_answer() {
    let m = TestManager::start(|c| c.ttl_secs = 0.6).await;
    let man = test_manifest("ttl.mp4", 2);
    let vid = man.video_id().to_string();
    m.post_raw("/videos", man.canonical_bytes()).await;
    let (a, ra) = reg_json(1);
    let (s, lease) = m.put(&format!("/nodes/{a}"), &ra).await;
    assert_eq!(
        (s, lease["ttl_ms"].as_u64(), lease["heartbeat_ms"].as_u64()),
        (201, Some(600), Some(200))
    );
    m.put(
        &format!("/nodes/{a}/fragments"),
        &json!({"video": vid, "have": [0, 1]}),
    )
    .await;
    assert_eq!(
        m.get(&format!("/videos/{vid}/fragments/0/peers")).await.1["total"],
        1
    );
    // The lease elapses (0.6 s TTL, no heartbeat): that is what is tested, so this
    // waits it out rather than polling; expiry is exact, so no answer may lag.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert_eq!(
        m.get(&format!("/videos/{vid}/fragments/0/peers")).await.1["total"],
        0
    );
    assert_eq!(m.get("/nodes").await.1["nodes"], json!([]));
    assert_error(&m.get(&format!("/nodes/{a}")).await, 404, "unknown_node");
    let (_, f) = m.get("/fragments").await;
    assert!(
        f["fragments"]
            .as_array()
            .unwrap()
            .iter()
            .all(|e| e["holders"] == 0 && e["sample"] == json!([])),
        "{f}"
    );
    assert_eq!(m.get("/videos").await.1["videos"][0]["holders"], 0);
    let (_, h) = m.get("/health").await;
    assert_eq!(
        (h["nodes"].as_u64(), h["fragments_held"].as_u64()),
        (Some(0), Some(0))
    );
    assert_error(
        &m.put(
            &format!("/nodes/{a}/fragments"),
            &json!({"video": vid, "have": [0]}),
        )
        .await,
        404,
        "unknown_node",
    );
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_and_idle_clients_time_out() {
    let m = TestManager::start(|c| {
        c.limits.request_timeout_secs = 0.5;
        c.limits.max_connections = 2;
    })
    .await;
    let addr = m.handle.local_addr();
    // Headers that never finish: the connection is closed.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    let mut buf = Vec::new();
    within(10, "slow headers are cut off", slow.read_to_end(&mut buf))
        .await
        .unwrap();
    // A body that never finishes: 408 in the API's shape.
    let mut slow = tokio::net::TcpStream::connect(addr).await.unwrap();
    let id = "a".repeat(64);
    slow.write_all(
        format!("PUT /nodes/{id} HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{{\"name\"")
            .as_bytes(),
    )
    .await
    .unwrap();
    let mut buf = Vec::new();
    let _ = within(10, "slow body is answered", slow.read_to_end(&mut buf)).await;
    let text = String::from_utf8_lossy(&buf);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("\"code\":\"timeout\""), "{text}");
    // Idle connections are closed by the same timeout.
    let mut idle = tokio::net::TcpStream::connect(addr).await.unwrap();
    let mut buf = Vec::new();
    within(10, "idle connection is closed", idle.read_to_end(&mut buf))
        .await
        .unwrap();
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_beyond_the_cap_wait_their_turn() {
    let m = TestManager::start(|c| c.limits.max_connections = 2).await;
    let addr = m.handle.local_addr();
    let idle1 = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _idle2 = tokio::net::TcpStream::connect(addr).await.unwrap();
    {
        let third = m.get("/health");
        tokio::pin!(third);
        assert!(
            tokio::time::timeout(Duration::from_millis(700), &mut third)
                .await
                .is_err(),
            "a third connection is not served while two are open"
        );
        drop(idle1);
        let (s, _) = within(10, "served once a slot frees", third).await;
        assert_eq!(s, 200);
    }
    drop(_idle2);
    m.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_stops_serving() {
    let m = TestManager::start(|_| {}).await;
    let addr = m.handle.local_addr();
    assert_eq!(m.get("/health").await.0, 200);
    m.stop().await;
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "nothing listens after shutdown"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swagger_ui_is_served_from_the_binary() {
    let m = TestManager::start(|_| {}).await;
    let client = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap();
    let r = client.get(m.url("/apidocs")).send().await.unwrap();
    assert!(r.status().is_redirection());
    assert_eq!(r.headers()["location"], "/apidocs/");
    let r = m.send(Method::GET, "/apidocs/", None, None).await;
    assert_eq!(r.status(), 200);
    assert!(r.text().await.unwrap().contains("swagger-ui"));
    for asset in [
        "/apidocs/swagger-ui-bundle.js",
        "/apidocs/swagger-ui.css",
        "/apidocs/swagger-ui-standalone-preset.js",
    ] {
        let r = m.send(Method::GET, asset, None, None).await;
        assert_eq!(r.status(), 200, "{asset}");
        assert!(
            r.bytes().await.unwrap().len() > 10_000,
            "{asset} is the real asset"
        );
    }
    let init = m
        .send(Method::GET, "/apidocs/swagger-initializer.js", None, None)
        .await
        .text()
        .await
        .unwrap();
    assert!(init.contains("/openapi.json"), "{init}");
    m.stop().await;
}

/// Two manifests whose video ids share their first 8 hex digits (a birthday search over
/// 32 bits: about 80,000 small manifests), for the ambiguous short-id case.
fn manifests_sharing_a_prefix() -> (fragnet_core::Manifest, fragnet_core::Manifest) {
    let mut seen = std::collections::HashMap::new();
    for i in 0u32.. {
        let m = test_manifest(&format!("clip-{i}.mp4"), 1);
        let id = m.video_id().to_string();
        if let Some(j) = seen.insert(id[..8].to_string(), i) {
            return (test_manifest(&format!("clip-{j}.mp4"), 1), m);
        }
    }
    unreachable!()
}

/// `/videos/{id}` answers for a unique prefix of at least 8 hex digits (the short ids
/// fragnet prints), refuses a shorter one (400), says 404 for no match, and 409 listing
/// the matches for an ambiguous one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_video_ids() {
    let m = TestManager::start(|_| {}).await;
    let (a, b) = tokio::task::spawn_blocking(manifests_sharing_a_prefix)
        .await
        .unwrap();
    let lone = test_manifest("lone.mp4", 3);
    for man in [&a, &b, &lone] {
        let (s, _) = m.post_raw("/videos", man.canonical_bytes()).await;
        assert_eq!(s, 201);
    }
    let (ida, idb, idl) = (
        a.video_id().to_string(),
        b.video_id().to_string(),
        lone.video_id().to_string(),
    );
    assert_eq!(ida[..8], idb[..8]);

    // Unique: the manifest itself, and the holder lookup.
    for prefix in [&idl[..8], &idl[..20], &ida[..ida.len().min(63)]] {
        let resp = m
            .send(Method::GET, &format!("/videos/{prefix}"), None, None)
            .await;
        assert_eq!(resp.status(), 200, "{prefix}");
        let want = if idl.starts_with(prefix) { &lone } else { &a };
        assert_eq!(resp.bytes().await.unwrap().to_vec(), want.canonical_bytes());
    }
    let (s, h) = m
        .get(&format!("/videos/{}/fragments/2/peers", &idl[..8]))
        .await;
    assert_eq!((s, h["total"].as_u64()), (200, Some(0)));

    // Ambiguous: 409 naming both.
    let got = m.get(&format!("/videos/{}", &ida[..8])).await;
    assert_error(&got, 409, "ambiguous_id");
    let mut matches: Vec<&str> = got.1["details"]["matches"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    matches.sort();
    let mut want = vec![ida.as_str(), idb.as_str()];
    want.sort();
    assert_eq!(matches, want);
    assert!(got.1["message"].as_str().unwrap().contains(&idb));
    assert_error(
        &m.get(&format!("/videos/{}/fragments/0/peers", &ida[..8]))
            .await,
        409,
        "ambiguous_id",
    );

    // Too short, not hex, no match.
    let got = m.get(&format!("/videos/{}", &idl[..7])).await;
    assert_error(&got, 400, "bad_request");
    assert!(got.1["message"].as_str().unwrap().contains("too short"));
    assert_error(&m.get("/videos/ABCDEF12").await, 400, "bad_request");
    let none = if idl.starts_with("ffffffff") || ida.starts_with("ffffffff") {
        "eeeeeeee"
    } else {
        "ffffffff"
    };
    assert_error(
        &m.get(&format!("/videos/{none}")).await,
        404,
        "unknown_video",
    );
    m.stop().await;
}
