//! Peer addresses with their transport scheme: `tcp://host:port`, `quic://host:port`,
//! `quic://<node-id>@host:port`; a bare `host:port` or `port` takes a default scheme.

use std::fmt;

use crate::ids::NodeId;

/// Where to reach a peer, and over which transport.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PeerAddr {
    /// Transport scheme, lowercase: `tcp`, `quic`.
    pub scheme: String,
    /// The node id the dialer expects, when known (`quic://<id>@host:port`).
    pub node_id: Option<NodeId>,
    /// Host name or IP literal (IPv6 without brackets).
    pub host: String,
    /// Port; 0 in a listen address means "pick one".
    pub port: u16,
}

/// Why a string is not a peer address.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid peer address {input:?}: {reason} (expected PORT, HOST:PORT or SCHEME://HOST:PORT)"
)]
pub struct BadAddr {
    /// What was given.
    pub input: String,
    /// What is wrong with it.
    pub reason: String,
}

impl PeerAddr {
    /// Parses `PORT`, `HOST:PORT`, `[V6]:PORT` or `scheme://[node-id@]HOST:PORT`.
    /// `default_scheme` applies when none is written; a bare `PORT` binds all interfaces.
    pub fn parse(input: &str, default_scheme: &str) -> Result<Self, BadAddr> {
        let bad = |reason: &str| BadAddr {
            input: input.to_string(),
            reason: reason.to_string(),
        };
        let s = input.trim();
        let (scheme, rest) = match s.split_once("://") {
            Some((scheme, rest)) => (scheme.to_ascii_lowercase(), rest),
            None => (default_scheme.to_ascii_lowercase(), s),
        };
        if scheme.is_empty() || !scheme.chars().all(|c| c.is_ascii_alphanumeric()) {
            return Err(bad("bad scheme"));
        }
        let (node_id, hostport) = match rest.split_once('@') {
            Some((id, hp)) => (
                Some(id.parse::<NodeId>().map_err(|e| bad(&e.to_string()))?),
                hp,
            ),
            None => (None, rest),
        };
        if let Ok(port) = hostport.parse::<u16>() {
            return Ok(PeerAddr {
                scheme,
                node_id,
                host: "0.0.0.0".into(),
                port,
            });
        }
        let (host, port) = if let Some(v6) = hostport.strip_prefix('[') {
            let (h, p) = v6
                .split_once("]:")
                .ok_or_else(|| bad("unterminated IPv6 literal"))?;
            (h, p)
        } else {
            hostport
                .rsplit_once(':')
                .ok_or_else(|| bad("missing port"))?
        };
        if host.is_empty() || host.contains(['/', ' ', '@']) {
            return Err(bad("bad host"));
        }
        let port = port.parse::<u16>().map_err(|_| bad("bad port"))?;
        Ok(PeerAddr {
            scheme,
            node_id,
            host: host.to_string(),
            port,
        })
    }

    /// `host:port` as a socket address string (brackets around IPv6).
    pub fn host_port(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// The same address with another host and port (e.g. the one actually bound).
    pub fn with_socket(&self, sa: std::net::SocketAddr) -> Self {
        PeerAddr {
            host: sa.ip().to_string(),
            port: sa.port(),
            ..self.clone()
        }
    }
}

impl fmt::Display for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://", self.scheme)?;
        if let Some(id) = &self.node_id {
            write!(f, "{id}@")?;
        }
        f.write_str(&self.host_port())
    }
}

impl fmt::Debug for PeerAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl std::str::FromStr for PeerAddr {
    type Err = BadAddr;
    /// Parses an address that names its scheme; a bare one means TCP.
    fn from_str(s: &str) -> Result<Self, BadAddr> {
        PeerAddr::parse(s, "tcp")
    }
}

impl serde::Serialize for PeerAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for PeerAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A regular expression for the addresses [`PeerAddr`] parses that name a scheme and a
/// dialable port (what the registry stores), used in the OpenAPI schema.
pub const PEER_ADDR_PATTERN: &str = concat!(
    "^[a-z][a-z0-9]{0,15}://([0-9a-f]{64}@)?",
    "([A-Za-z0-9][A-Za-z0-9.-]{0,252}|\\[[0-9A-Fa-f:.]{2,45}\\]):",
    "([1-9][0-9]{0,3}|[1-5][0-9]{4}|6[0-4][0-9]{3}|65[0-4][0-9]{2}|655[0-2][0-9]|6553[0-5])$"
);

#[cfg(feature = "openapi")]
impl utoipa::PartialSchema for PeerAddr {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        utoipa::openapi::schema::ObjectBuilder::new()
            .schema_type(utoipa::openapi::schema::Type::String)
            .pattern(Some(PEER_ADDR_PATTERN))
            .max_length(Some(340))
            .description(Some("A transport address with its scheme: `tcp://host:port`, `quic://host:port` or `quic://<node-id>@host:port`."))
            .examples(["tcp://192.0.2.10:6001"])
            .into()
    }
}

#[cfg(feature = "openapi")]
impl utoipa::ToSchema for PeerAddr {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_form() {
        let a = PeerAddr::parse("6001", "tcp").unwrap();
        assert_eq!(
            (a.scheme.as_str(), a.host.as_str(), a.port),
            ("tcp", "0.0.0.0", 6001)
        );
        let a = PeerAddr::parse("localhost:6002", "quic").unwrap();
        assert_eq!(a.to_string(), "quic://localhost:6002");
        let a = PeerAddr::parse("tcp://127.0.0.1:0", "quic").unwrap();
        assert_eq!(a.to_string(), "tcp://127.0.0.1:0");
        let a = PeerAddr::parse("tcp://[::1]:7", "tcp").unwrap();
        assert_eq!(
            (a.host.as_str(), a.host_port()),
            ("::1", "[::1]:7".to_string())
        );
        let id = "ab".repeat(32);
        let a = PeerAddr::parse(&format!("quic://{id}@h:1"), "tcp").unwrap();
        assert_eq!(a.node_id.unwrap().to_string(), id);
        assert_eq!(a.to_string(), format!("quic://{id}@h:1"));
    }

    #[test]
    fn rejects_garbage() {
        for s in [
            "",
            "host",
            "host:99999",
            "tcp://:5",
            "x y:1",
            "quic://zz@h:1",
            "ht!p://h:1",
        ] {
            assert!(
                PeerAddr::parse(s, "tcp").is_err(),
                "{s:?} should be refused"
            );
        }
    }
}
