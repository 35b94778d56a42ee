//! Helpers shared by the manager's integration tests: a real manager on 127.0.0.1:0
//! and a plain HTTP client.

#![allow(dead_code)]

use std::path::PathBuf;

use fragnet_core::conformance::within;
use fragnet_manager::{ManagerConfig, ManagerHandle};
use reqwest::{Client, Method, Response};
use serde_json::Value;
use tempfile::TempDir;
use tokio_util::sync::CancellationToken;

#[allow(unused_imports)]
pub use fragnet_core::registry::conformance::{test_manifest, test_node};

pub const TOKEN: &str = "t0ken-for-tests";

/// A manager under test with its data directory.
pub struct TestManager {
    pub handle: ManagerHandle,
    pub dir: TempDir,
    pub base: String,
    pub client: Client,
}

pub fn client() -> Client {
    let _ = rustls::crypto::ring::default_provider().install_default();
    Client::builder()
        .timeout(std::time::Duration::from_secs(10))
        .build()
        .unwrap()
}

impl TestManager {
    /// Starts a manager with `tweak` applied to a local config.
    pub async fn start(tweak: impl FnOnce(&mut ManagerConfig)) -> Self {
        let dir = tempfile::tempdir().unwrap();
        Self::start_in(dir, tweak).await
    }

    pub async fn start_in(dir: TempDir, tweak: impl FnOnce(&mut ManagerConfig)) -> Self {
        let mut config = ManagerConfig::local(dir.path().to_path_buf());
        tweak(&mut config);
        let handle = within(
            10,
            "manager start",
            fragnet_manager::spawn(config, CancellationToken::new()),
        )
        .await
        .unwrap();
        let base = handle.url();
        TestManager {
            handle,
            dir,
            base,
            client: client(),
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends a request with an optional raw body and bearer token.
    pub async fn send(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        token: Option<&str>,
    ) -> Response {
        let mut rb = self.client.request(method, self.url(path));
        if let Some(b) = body {
            rb = rb.header("content-type", "application/json").body(b);
        }
        if let Some(t) = token {
            rb = rb.bearer_auth(t);
        }
        within(10, "request", rb.send()).await.unwrap()
    }

    pub async fn get(&self, path: &str) -> (u16, Value) {
        json(self.send(Method::GET, path, None, None).await).await
    }

    pub async fn put(&self, path: &str, body: &Value) -> (u16, Value) {
        json(
            self.send(
                Method::PUT,
                path,
                Some(serde_json::to_vec(body).unwrap()),
                None,
            )
            .await,
        )
        .await
    }

    pub async fn post_raw(&self, path: &str, body: Vec<u8>) -> (u16, Value) {
        json(self.send(Method::POST, path, Some(body), None).await).await
    }

    pub async fn delete(&self, path: &str) -> (u16, Value) {
        json(self.send(Method::DELETE, path, None, None).await).await
    }

    pub async fn stop(self) {
        within(10, "manager shutdown", self.handle.shutdown()).await;
    }
}

/// Status and JSON body (Null for an empty body).
pub async fn json(resp: Response) -> (u16, Value) {
    let status = resp.status().as_u16();
    let bytes = within(10, "body", resp.bytes()).await.unwrap();
    let v = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&bytes)))
    };
    (status, v)
}

/// Asserts an error answer has the API's shape, status and code.
#[track_caller]
pub fn assert_error(got: &(u16, Value), status: u16, code: &str) {
    let (s, v) = got;
    assert_eq!(*s, status, "status; body {v}");
    assert_eq!(v["status"], status, "body repeats the status: {v}");
    assert_eq!(v["code"], code, "code: {v}");
    assert!(
        v["message"].as_str().is_some_and(|m| !m.is_empty()),
        "message: {v}"
    );
}

pub fn reg_json(i: u32) -> (String, Value) {
    let (id, reg) = test_node(i);
    (id.to_string(), serde_json::to_value(reg).unwrap())
}

/// A real `nats-server -js` on a loopback port of its own choosing, with its store in
/// a temporary directory; killed when dropped. Fails (does not skip) when the binary
/// is missing.
pub struct NatsServer {
    pub url: String,
    child: std::process::Child,
    _store: TempDir,
}

impl NatsServer {
    pub async fn start() -> NatsServer {
        use std::io::BufRead;
        let store = tempfile::tempdir().unwrap();
        let mut child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", "-1", "-js", "-sd"])
            .arg(store.path())
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| {
                panic!("cannot run nats-server ({e}); install it: apt-get install nats-server")
            });
        // nats-server logs to stderr; a thread reads it to the end so it never blocks.
        let stderr = child.stderr.take().unwrap();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        std::thread::spawn(move || {
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        let url = within(15, "nats-server ready", async {
            let mut url = None;
            loop {
                let line = rx
                    .recv()
                    .await
                    .expect("nats-server exited before it was ready");
                if let Some((_, a)) = line.split_once("Listening for client connections on ") {
                    url = Some(format!("nats://{}", a.trim()));
                }
                if line.contains("Server is ready") {
                    return url.expect("nats-server logged its port");
                }
            }
        })
        .await;
        NatsServer {
            url,
            child,
            _store: store,
        }
    }
}

impl Drop for NatsServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A manager that serves the registry in the NATS server at `url`.
pub async fn nats_manager(url: &str, tweak: impl FnOnce(&mut ManagerConfig)) -> TestManager {
    let url = url.to_string();
    TestManager::start(move |c| {
        c.registry = fragnet_manager::ManagerBackend::Nats;
        c.nats = fragnet_broker::NatsConfig::new(url);
        tweak(c);
    })
    .await
}
