//! The OpenAPI document: the served one equals the generated one, the generated one
//! equals the committed snapshot (`apps/manager/openapi.json`; regenerate with
//! `UPDATE_OPENAPI=1 cargo test -p fragnet-manager --test openapi`), and it is a
//! well-formed OpenAPI 3.1 document that describes every route, body and error.
//! (`scripts/schemathesis.sh` also validates it with openapi-spec-validator.)

mod common;

use std::collections::{BTreeSet, HashSet};
use std::path::PathBuf;

use serde_json::Value;

fn snapshot_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("openapi.json")
}

fn spec() -> Value {
    serde_json::to_value(fragnet_manager::openapi()).unwrap()
}

#[test]
fn generated_spec_matches_the_snapshot() {
    let generated = fragnet_manager::openapi().to_pretty_json().unwrap() + "\n";
    let path = snapshot_path();
    if std::env::var_os("UPDATE_OPENAPI").is_some() {
        std::fs::write(&path, &generated).unwrap();
        return;
    }
    let committed = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        committed == generated,
        "the API changed: review the difference, then run `UPDATE_OPENAPI=1 cargo test -p fragnet-manager --test openapi` and commit {}",
        path.display()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn served_spec_is_the_generated_one() {
    let m = common::TestManager::start(|_| {}).await;
    let (s, served) = m.get("/openapi.json").await;
    assert_eq!(s, 200);
    assert_eq!(served, spec());
    m.stop().await;
}

fn refs(v: &Value, out: &mut Vec<String>) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                if k == "$ref" {
                    out.push(x.as_str().unwrap().to_string());
                } else {
                    refs(x, out);
                }
            }
        }
        Value::Array(a) => a.iter().for_each(|x| refs(x, out)),
        _ => {}
    }
}

#[test]
fn spec_is_well_formed_and_complete() {
    let spec = spec();
    assert!(
        spec["openapi"].as_str().unwrap().starts_with("3.1"),
        "OpenAPI 3.1"
    );
    assert!(
        !spec["info"]["title"].as_str().unwrap().is_empty()
            && !spec["info"]["version"].as_str().unwrap().is_empty()
    );
    let bearer = &spec["components"]["securitySchemes"]["bearer"];
    assert_eq!(
        (bearer["type"].as_str(), bearer["scheme"].as_str()),
        (Some("http"), Some("bearer"))
    );

    let expected: BTreeSet<(&str, &str)> = [
        ("/fragments", "get"),
        ("/videos", "get"),
        ("/videos", "post"),
        ("/videos/{id}", "get"),
        ("/videos/{id}/fragments/{index}/peers", "get"),
        ("/nodes", "get"),
        ("/nodes/{id}", "get"),
        ("/nodes/{id}", "put"),
        ("/nodes/{id}", "delete"),
        ("/nodes/{id}/fragments", "put"),
        ("/health", "get"),
        ("/metrics", "get"),
        ("/dashboard/events", "get"),
    ]
    .into_iter()
    .collect();
    let mut found = BTreeSet::new();
    let mut op_ids = HashSet::new();
    for (path, item) in spec["paths"].as_object().unwrap() {
        for (method, op) in item.as_object().unwrap() {
            found.insert((path.as_str(), method.as_str()));
            let what = format!("{method} {path}");
            assert!(
                op_ids.insert(op["operationId"].as_str().unwrap().to_string()),
                "{what}: duplicate operationId"
            );
            assert!(
                op["summary"].as_str().is_some_and(|s| s.len() > 10),
                "{what}: the handler's doc comment is the summary"
            );
            assert!(!op["tags"].as_array().unwrap().is_empty(), "{what}: tagged");
            let responses = op["responses"].as_object().unwrap();
            assert!(
                responses.keys().any(|k| k.starts_with('2')),
                "{what}: a success response"
            );
            for (status, r) in responses {
                if status.starts_with('4') || status.starts_with('5') {
                    assert_eq!(
                        r["content"]["application/json"]["schema"]["$ref"],
                        "#/components/schemas/ErrorBody",
                        "{what} {status}: errors use ErrorBody"
                    );
                }
            }
            let params = op["parameters"].as_array().cloned().unwrap_or_default();
            for seg in path
                .split('/')
                .filter_map(|s| s.strip_prefix('{').and_then(|s| s.strip_suffix('}')))
            {
                assert!(
                    params
                        .iter()
                        .any(|p| p["name"] == seg && p["in"] == "path" && p["required"] == true),
                    "{what}: path parameter {seg} documented"
                );
            }
            let write = matches!(method.as_str(), "put" | "post" | "delete");
            if write {
                assert_eq!(
                    op["security"],
                    serde_json::json!([{"bearer": []}]),
                    "{what}: writes declare the bearer token"
                );
                assert!(responses.contains_key("401"), "{what}: 401 documented");
            } else {
                assert!(op.get("security").is_none(), "{what}: reads are open");
            }
            if matches!(method.as_str(), "put" | "post") {
                assert!(
                    op["requestBody"]["content"]["application/json"]["schema"]["$ref"].is_string(),
                    "{what}: body documented"
                );
                assert!(
                    responses.contains_key("413") && responses.contains_key("422"),
                    "{what}: 413 and 422 documented"
                );
            }
        }
    }
    assert_eq!(
        found, expected,
        "exactly the routes of the issues (13: /dashboard/events)"
    );

    let mut all = Vec::new();
    refs(&spec, &mut all);
    let schemas = spec["components"]["schemas"].as_object().unwrap();
    for r in &all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(schemas.contains_key(name), "dangling $ref {r}");
    }
    for name in [
        "Manifest",
        "NodeRegistration",
        "Announcement",
        "Lease",
        "Holders",
        "FragmentPage",
        "VideoPage",
        "NodePage",
        "NodeDetail",
        "ErrorBody",
        "Health",
    ] {
        assert!(schemas.contains_key(name), "schema {name} present");
    }
}
