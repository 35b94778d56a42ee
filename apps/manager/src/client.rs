//! [`HttpRegistry`]: the [`Registry`] of a remote manager, over its REST API.
//!
//! Every request has a connect timeout and a total timeout, every answer a size limit,
//! and every failure becomes a [`RegistryError`] a peer can act on: `Unavailable` (retry
//! later), `Unauthorized` (fix the token), `UnknownNode` (register again), and so on.
//! Manifests fetched from the manager are checked against the id asked for.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use fragnet_core::manifest::MAX_MANIFEST_BYTES;
use fragnet_core::registry::{
    Announcement, FragmentPage, FragmentQuery, Holders, Lease, MAX_LOCATE, MAX_PAGE, NodeDetail,
    NodeInfo, NodeRegistration, VideoInfo,
};
use fragnet_core::{FragmentIndex, Manifest, NodeId, Registry, RegistryError, VideoId};
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;

use crate::api::health::Health;
use crate::api::nodes::NodePage;
use crate::api::videos::VideoPage;
use crate::error::ErrorBody;

/// Default time to establish a connection to the manager.
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Default time for a whole request, answer included.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Largest answer read, except manifests (bounded by [`MAX_MANIFEST_BYTES`]).
pub const MAX_ANSWER_BYTES: usize = 32 << 20;
/// Most pages followed when listing everything (bounds a misbehaving manager).
const MAX_PAGES: usize = 1000;

/// A client of a fragnet manager, implementing [`Registry`].
#[derive(Clone)]
pub struct HttpRegistry {
    base: String,
    token: Option<Arc<str>>,
    client: reqwest::Client,
}

impl std::fmt::Debug for HttpRegistry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("HttpRegistry")
            .field("url", &self.base)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Normalizes a manager URL: `host:port` gets `http://`, a trailing `/` goes.
fn normalize(url: &str) -> Result<String, RegistryError> {
    let url = url.trim();
    let with_scheme = if url.contains("://") {
        url.to_string()
    } else {
        format!("http://{url}")
    };
    let parsed = reqwest::Url::parse(&with_scheme)
        .map_err(|e| RegistryError::Invalid(format!("manager URL {url:?}: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") || parsed.host_str().is_none() {
        return Err(RegistryError::Invalid(format!(
            "manager URL {url:?} must be http://HOST:PORT or https://HOST:PORT"
        )));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(RegistryError::Invalid(format!(
            "manager URL {url:?} must not have a query or fragment"
        )));
    }
    Ok(with_scheme.trim_end_matches('/').to_string())
}

impl HttpRegistry {
    /// A client of the manager at `url` (`http://host:5001`, or `host:5001`), sending
    /// `token` as a bearer token, with the default timeouts.
    pub fn new(url: &str, token: Option<String>) -> Result<Self, RegistryError> {
        Self::with_timeouts(url, token, DEFAULT_CONNECT_TIMEOUT, DEFAULT_REQUEST_TIMEOUT)
    }

    /// Like [`HttpRegistry::new`] with explicit timeouts.
    pub fn with_timeouts(
        url: &str,
        token: Option<String>,
        connect: Duration,
        request: Duration,
    ) -> Result<Self, RegistryError> {
        // reqwest is built without a default crypto provider; this process uses ring.
        // A second install fails harmlessly.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(connect)
            .timeout(request)
            .user_agent(concat!("fragnet/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| RegistryError::Invalid(format!("building the HTTP client: {e}")))?;
        Ok(HttpRegistry {
            base: normalize(url)?,
            token: token.map(Arc::from),
            client,
        })
    }

    /// The manager's base URL.
    pub fn url(&self) -> &str {
        &self.base
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
        max: usize,
    ) -> Result<(StatusCode, Vec<u8>), RegistryError> {
        let url = format!("{}{path}", self.base);
        let mut rb = self.client.request(method.clone(), &url).query(query);
        if let Some(t) = &self.token {
            rb = rb.bearer_auth(t);
        }
        if let Some(b) = body {
            rb = rb
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b);
        }
        let what = || format!("{method} {url}");
        let fail = |e: reqwest::Error| {
            let why = if e.is_timeout() {
                "timed out".to_string()
            } else if e.is_connect() {
                format!("cannot connect ({})", error_chain(&e))
            } else {
                error_chain(&e)
            };
            RegistryError::Unavailable(format!("{}: {why}", what()))
        };
        let mut resp = rb.send().await.map_err(fail)?;
        let status = resp.status();
        if resp.content_length().is_some_and(|n| n > max as u64) {
            return Err(RegistryError::Protocol(format!(
                "{}: answer of {} bytes is larger than {max}",
                what(),
                resp.content_length().unwrap_or(0)
            )));
        }
        let mut bytes = Vec::new();
        while let Some(chunk) = resp.chunk().await.map_err(fail)? {
            if bytes.len() + chunk.len() > max {
                return Err(RegistryError::Protocol(format!(
                    "{}: answer is larger than {max} bytes",
                    what()
                )));
            }
            bytes.extend_from_slice(&chunk);
        }
        if status.is_success() {
            return Ok((status, bytes));
        }
        match serde_json::from_slice::<ErrorBody>(&bytes) {
            Ok(e) => Err(e.to_registry_error()),
            Err(_) => {
                let snippet: String = String::from_utf8_lossy(&bytes).chars().take(200).collect();
                Err(match status {
                    StatusCode::UNAUTHORIZED => RegistryError::Unauthorized(snippet),
                    s if s.is_server_error() => {
                        RegistryError::Unavailable(format!("{}: {s} {snippet}", what()))
                    }
                    s => RegistryError::Protocol(format!("{}: {s} {snippet}", what())),
                })
            }
        }
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, String)],
    ) -> Result<T, RegistryError> {
        let (_, bytes) = self
            .call(Method::GET, path, query, None, MAX_ANSWER_BYTES)
            .await?;
        parse(path, &bytes)
    }

    async fn write(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, String)],
        body: Option<Vec<u8>>,
    ) -> Result<(StatusCode, Vec<u8>), RegistryError> {
        self.call(method, path, query, body, MAX_ANSWER_BYTES).await
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Health, RegistryError> {
        self.get_json("/health", &[]).await
    }

    /// `GET /nodes/{id}`: one node and its holdings.
    pub async fn node(&self, id: NodeId) -> Result<NodeDetail, RegistryError> {
        self.get_json(&format!("/nodes/{id}"), &[]).await
    }

    /// `GET /fragments`: one page of the fragment listing.
    pub async fn fragments(&self, q: &FragmentQuery) -> Result<FragmentPage, RegistryError> {
        let mut query = vec![
            ("limit", q.limit.clamp(1, MAX_PAGE).to_string()),
            ("sample", q.sample.to_string()),
        ];
        if let Some(v) = q.video {
            query.push(("video", v.to_string()));
        }
        if let Some(n) = q.node {
            query.push(("node", n.to_string()));
        }
        if let Some(c) = q.after {
            query.push(("cursor", c.to_string()));
        }
        self.get_json("/fragments", &query).await
    }

    /// Registers a manifest, checking that the manager computes the same id; returns the
    /// id and whether the video was new to the manager.
    pub async fn post_video(
        &self,
        manifest: &Manifest,
    ) -> Result<(VideoInfo, bool), RegistryError> {
        let id = manifest.video_id();
        let (status, bytes) = self
            .write(
                Method::POST,
                "/videos",
                &[("id", id.to_string())],
                Some(manifest.canonical_bytes()),
            )
            .await?;
        let info: VideoInfo = parse("/videos", &bytes)?;
        if info.id != id {
            return Err(RegistryError::Protocol(format!(
                "manager registered video {} for a manifest whose id is {id}",
                info.id
            )));
        }
        Ok((info, status == StatusCode::CREATED))
    }
}

fn parse<T: DeserializeOwned>(path: &str, bytes: &[u8]) -> Result<T, RegistryError> {
    serde_json::from_slice(bytes).map_err(|e| {
        RegistryError::Protocol(format!(
            "answer to {path} is not what this client expects: {e}"
        ))
    })
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

#[async_trait]
impl Registry for HttpRegistry {
    async fn register(&self, id: NodeId, node: &NodeRegistration) -> Result<Lease, RegistryError> {
        let body = serde_json::to_vec(node).map_err(|e| RegistryError::Invalid(e.to_string()))?;
        let (_, bytes) = self
            .write(Method::PUT, &format!("/nodes/{id}"), &[], Some(body))
            .await?;
        parse("/nodes/{id}", &bytes)
    }

    async fn deregister(&self, id: NodeId) -> Result<(), RegistryError> {
        self.write(Method::DELETE, &format!("/nodes/{id}"), &[], None)
            .await
            .map(|_| ())
    }

    async fn announce(
        &self,
        id: NodeId,
        video: VideoId,
        have: &[FragmentIndex],
    ) -> Result<(), RegistryError> {
        let body = serde_json::to_vec(&Announcement {
            video,
            have: have.to_vec(),
        })
        .map_err(|e| RegistryError::Invalid(e.to_string()))?;
        self.write(
            Method::PUT,
            &format!("/nodes/{id}/fragments"),
            &[],
            Some(body),
        )
        .await
        .map(|_| ())
    }

    async fn locate(
        &self,
        video: VideoId,
        index: FragmentIndex,
        limit: usize,
    ) -> Result<Holders, RegistryError> {
        self.get_json(
            &format!("/videos/{video}/fragments/{index}/peers"),
            &[("limit", limit.min(MAX_LOCATE).to_string())],
        )
        .await
    }

    async fn add_video(&self, manifest: &Manifest) -> Result<VideoId, RegistryError> {
        self.post_video(manifest).await.map(|(info, _)| info.id)
    }

    async fn videos(&self) -> Result<Vec<VideoInfo>, RegistryError> {
        let mut out = Vec::new();
        let mut cursor: Option<VideoId> = None;
        for _ in 0..MAX_PAGES {
            let mut q = vec![("limit", MAX_PAGE.to_string())];
            if let Some(c) = cursor {
                q.push(("cursor", c.to_string()));
            }
            let page: VideoPage = self.get_json("/videos", &q).await?;
            out.extend(page.videos);
            match page.next_cursor {
                Some(c) if Some(c) != cursor => cursor = Some(c),
                _ => return Ok(out),
            }
        }
        Err(RegistryError::Protocol(format!(
            "more than {MAX_PAGES} pages of videos"
        )))
    }

    async fn manifest(&self, video: VideoId) -> Result<Arc<Manifest>, RegistryError> {
        let path = format!("/videos/{video}");
        let (_, bytes) = self
            .call(Method::GET, &path, &[], None, MAX_MANIFEST_BYTES)
            .await?;
        let m = Manifest::from_bytes(&bytes).map_err(|e| {
            RegistryError::Protocol(format!("manifest of {video} from the manager: {e}"))
        })?;
        // Never trust the manager with content: the id is the hash of the manifest.
        if m.video_id() != video {
            return Err(RegistryError::Protocol(format!(
                "the manager's manifest for {video} hashes to {}",
                m.video_id()
            )));
        }
        Ok(Arc::new(m))
    }

    async fn nodes(&self) -> Result<Vec<NodeInfo>, RegistryError> {
        let mut out = Vec::new();
        let mut cursor: Option<NodeId> = None;
        for _ in 0..MAX_PAGES {
            let mut q = vec![("limit", MAX_PAGE.to_string())];
            if let Some(c) = cursor {
                q.push(("cursor", c.to_string()));
            }
            let page: NodePage = self.get_json("/nodes", &q).await?;
            out.extend(page.nodes);
            match page.next_cursor {
                Some(c) if Some(c) != cursor => cursor = Some(c),
                _ => return Ok(out),
            }
        }
        Err(RegistryError::Protocol(format!(
            "more than {MAX_PAGES} pages of nodes"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_normalized() {
        assert_eq!(
            normalize("localhost:5001").unwrap(),
            "http://localhost:5001"
        );
        assert_eq!(
            normalize("http://10.0.0.1:5001/").unwrap(),
            "http://10.0.0.1:5001"
        );
        assert_eq!(
            normalize("https://m.example/base/").unwrap(),
            "https://m.example/base"
        );
        for bad in ["ftp://x", "http://", "http://h:1/?q=1", "not a url at all"] {
            assert!(normalize(bad).is_err(), "{bad}");
        }
    }
}
