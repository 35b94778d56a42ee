//! The manager's configuration: serde, every key defaulted, unknown keys refused.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::ManagerError;

/// How the manager runs. Defaults: listen `0.0.0.0:5001`, data in `fragnet-manager`,
/// TTL 30 s, no token (writes open).
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerConfig {
    /// Address to bind (port 0 picks one; [`crate::ManagerHandle::local_addr`] tells which).
    pub listen: SocketAddr,
    /// Directory where registered manifests are kept (`videos/<id>.json`).
    pub data_dir: PathBuf,
    /// Seconds a node stays registered after its last heartbeat; nodes are asked to
    /// heartbeat every third of it.
    pub ttl_secs: f64,
    /// Bearer token every write (PUT, POST, DELETE) must carry. Prefer `token_file` or
    /// the environment: a token on a command line is visible in `ps`.
    pub token: Option<String>,
    /// File holding the token (surrounding whitespace ignored).
    pub token_file: Option<PathBuf>,
    /// Size and count limits.
    pub limits: ManagerLimits,
    /// Where the registry lives: `memory` (this process; manifests in `data_dir`) or
    /// `nats` (JetStream key-value buckets on the NATS server at `nats.url`, shared by
    /// any number of managers, each a stateless replica).
    pub registry: ManagerBackend,
    /// The NATS server, for `registry = "nats"`.
    pub nats: fragnet_broker::NatsConfig,
    /// `registry = "nats"`: the buckets' name prefix (managers sharing it share the
    /// registry).
    pub nats_buckets: String,
    /// `registry = "nats"`: copies of each bucket in a NATS cluster (3 in a cluster of
    /// three, so that losing a server loses nothing); used when the buckets are created.
    pub nats_replicas: usize,
}

/// Where the manager's registry lives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ManagerBackend {
    /// In this process.
    #[default]
    Memory,
    /// In NATS JetStream key-value.
    Nats,
}

/// Bounds on what the manager accepts and keeps.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerLimits {
    /// Most live nodes.
    pub max_nodes: usize,
    /// Most registered videos.
    pub max_videos: usize,
    /// Largest manifest accepted by `POST /videos`, in bytes.
    pub max_manifest_bytes: usize,
    /// Largest other request body, in bytes.
    pub max_body_bytes: usize,
    /// Concurrent HTTP connections; more wait in the listen backlog.
    pub max_connections: usize,
    /// Seconds a client gets to send a request's headers (also closes idle keep-alive
    /// connections) and, separately, its body.
    pub request_timeout_secs: f64,
}

impl Default for ManagerLimits {
    fn default() -> Self {
        ManagerLimits {
            max_nodes: 10_000,
            max_videos: 10_000,
            max_manifest_bytes: 16 << 20,
            max_body_bytes: 64 << 10,
            max_connections: 1024,
            request_timeout_secs: 30.0,
        }
    }
}

impl Default for ManagerConfig {
    fn default() -> Self {
        ManagerConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], 5001)),
            data_dir: PathBuf::from("fragnet-manager"),
            ttl_secs: 30.0,
            token: None,
            token_file: None,
            limits: ManagerLimits::default(),
            registry: ManagerBackend::Memory,
            nats: fragnet_broker::NatsConfig::default(),
            nats_buckets: "fragnet".into(),
            nats_replicas: 1,
        }
    }
}

impl std::fmt::Debug for ManagerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ManagerConfig")
            .field("listen", &self.listen)
            .field("data_dir", &self.data_dir)
            .field("ttl_secs", &self.ttl_secs)
            .field("token", &self.token.as_ref().map(|_| "<redacted>"))
            .field("token_file", &self.token_file)
            .field("limits", &self.limits)
            .field("registry", &self.registry)
            .field("nats", &self.nats)
            .field("nats_buckets", &self.nats_buckets)
            .field("nats_replicas", &self.nats_replicas)
            .finish()
    }
}

fn secs(what: &str, v: f64, max: f64) -> Result<Duration, ManagerError> {
    if !(v.is_finite() && v > 0.0 && v <= max) {
        return Err(ManagerError::Config(format!(
            "{what} must be a number of seconds in (0, {max}], got {v}"
        )));
    }
    Ok(Duration::from_secs_f64(v))
}

impl ManagerConfig {
    /// A configuration for tests and embedding: `127.0.0.1:0`, the given data dir.
    pub fn local(data_dir: impl Into<PathBuf>) -> Self {
        ManagerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
            data_dir: data_dir.into(),
            ..Default::default()
        }
    }

    /// The node TTL.
    pub fn ttl(&self) -> Result<Duration, ManagerError> {
        secs("ttl_secs", self.ttl_secs, 86_400.0)
    }

    /// The header and body timeout.
    pub fn request_timeout(&self) -> Result<Duration, ManagerError> {
        secs(
            "limits.request_timeout_secs",
            self.limits.request_timeout_secs,
            3_600.0,
        )
    }

    /// The write token: `token`, else the contents of `token_file`, else none (the
    /// `fragnet` binary fills `token` from `FRAGNET_MANAGER__TOKEN` through its one
    /// configuration path). Setting both `token` and `token_file`, or an
    /// empty token, is an error.
    pub fn resolve_token(&self) -> Result<Option<String>, ManagerError> {
        let token = fragnet_core::secret::resolve(
            "manager.token",
            self.token.as_deref(),
            self.token_file.as_deref(),
        )
        .map_err(|e| ManagerError::Config(e.to_string()))?;
        match token {
            Some(t) if t.len() > 4096 || !t.bytes().all(|b| b.is_ascii_graphic()) => {
                Err(ManagerError::Config("the manager token must be at most 4096 printable ASCII characters without spaces".into()))
            }
            other => Ok(other),
        }
    }

    /// Checks every value; [`crate::spawn`] calls it.
    pub fn validate(&self) -> Result<(), ManagerError> {
        self.ttl()?;
        self.request_timeout()?;
        self.resolve_token()?;
        let l = &self.limits;
        for (name, v) in [
            ("limits.max_nodes", l.max_nodes),
            ("limits.max_videos", l.max_videos),
            ("limits.max_connections", l.max_connections),
            ("limits.max_body_bytes", l.max_body_bytes),
        ] {
            if v == 0 {
                return Err(ManagerError::Config(format!("{name} must be at least 1")));
            }
        }
        if l.max_manifest_bytes < 1024
            || l.max_manifest_bytes > fragnet_core::manifest::MAX_MANIFEST_BYTES
        {
            return Err(ManagerError::Config(format!(
                "limits.max_manifest_bytes must be within 1024..={}",
                fragnet_core::manifest::MAX_MANIFEST_BYTES
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_unknown_keys() {
        let c: ManagerConfig = serde_json::from_str("{}").unwrap();
        assert_eq!(c, ManagerConfig::default());
        assert_eq!(c.listen.to_string(), "0.0.0.0:5001");
        assert!(serde_json::from_str::<ManagerConfig>(r#"{"listn": "1.2.3.4:5"}"#).is_err());
        assert!(serde_json::from_str::<ManagerConfig>(r#"{"limits": {"max_node": 1}}"#).is_err());
        let c: ManagerConfig =
            serde_json::from_str(r#"{"ttl_secs": 0.5, "limits": {"max_nodes": 3}}"#).unwrap();
        assert_eq!(
            (c.ttl().unwrap(), c.limits.max_nodes, c.limits.max_videos),
            (Duration::from_millis(500), 3, 10_000)
        );
    }

    #[test]
    fn tokens_come_from_a_file_and_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "s3cret\n").unwrap();
        let c = ManagerConfig {
            token_file: Some(f.clone()),
            ..Default::default()
        };
        assert_eq!(c.resolve_token().unwrap().as_deref(), Some("s3cret"));
        let both = ManagerConfig {
            token: Some("x".into()),
            token_file: Some(f),
            ..Default::default()
        };
        assert!(both.resolve_token().is_err());
        let empty = ManagerConfig {
            token: Some("  ".into()),
            ..Default::default()
        };
        assert!(empty.resolve_token().is_err());
        let spaced = ManagerConfig {
            token: Some("a b".into()),
            ..Default::default()
        };
        assert!(spaced.resolve_token().is_err());
        let missing = ManagerConfig {
            token_file: Some(dir.path().join("nope")),
            ..Default::default()
        };
        assert!(
            missing
                .resolve_token()
                .unwrap_err()
                .to_string()
                .contains("nope")
        );
        assert!(
            format!(
                "{:?}",
                ManagerConfig {
                    token: Some("hidden".into()),
                    ..Default::default()
                }
            )
            .contains("redacted")
        );
    }

    #[test]
    fn bad_values_are_refused() {
        for c in [
            ManagerConfig {
                ttl_secs: 0.0,
                ..Default::default()
            },
            ManagerConfig {
                ttl_secs: f64::NAN,
                ..Default::default()
            },
            ManagerConfig {
                limits: ManagerLimits {
                    max_nodes: 0,
                    ..Default::default()
                },
                ..Default::default()
            },
            ManagerConfig {
                limits: ManagerLimits {
                    max_manifest_bytes: 10,
                    ..Default::default()
                },
                ..Default::default()
            },
        ] {
            assert!(c.validate().is_err(), "{c:?}");
        }
    }
}
