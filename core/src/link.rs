//! Share links: everything a stranger needs to fetch or watch one video, in one line.
//!
//! ```text
//! fragnet://<video id>?manager=<url>&peer=<addr>&peer=<addr>
//! fragnet://9f2c…(64 hex)?manager=http://192.0.2.7:5001&peer=quic://<node id>@192.0.2.8:6001
//! ```
//!
//! - The video id is the full 64 lowercase hex: it is the manifest's BLAKE3, so the
//!   fetcher verifies everything it receives against it, whoever serves it.
//! - `manager` (at most one): an `http://` or `https://` URL of a manager that knows
//!   the video and its holders.
//! - `peer` (up to [`MAX_PEERS`]): a transport address with its scheme. A QUIC address
//!   should carry the node id (`quic://<node id>@host:port`): the fetcher then checks
//!   it reached that node. A TCP address cannot be verified (TCP is plaintext); the
//!   video's bytes are still checked against the manifest.
//! - At least one of them; values are percent-encoded where they contain `%`, `&`,
//!   `#`, `+`, `=`, spaces or non-ASCII; any other parameter is refused; the whole link
//!   is at most [`MAX_LINK_LEN`] bytes.
//!
//! Parsing is strict: a malformed link is a [`BadLink`] that names what is wrong.

use std::fmt;
use std::str::FromStr;

use crate::addr::PeerAddr;
use crate::discovery::dialable;
use crate::ids::VideoId;

/// The scheme of a share link.
pub const SCHEME: &str = "fragnet://";
/// The longest link accepted or made, in bytes: fits a chat message and a URL bar.
pub const MAX_LINK_LEN: usize = 2048;
/// The most peer addresses a link carries.
pub const MAX_PEERS: usize = 8;

/// A video and where to find it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The video.
    pub video: VideoId,
    /// A manager that knows the video (`http(s)://host:port`).
    pub manager: Option<String>,
    /// Nodes that hold (part of) it, each with its scheme.
    pub peers: Vec<PeerAddr>,
}

/// Why a string is not a share link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadLink {
    /// Longer than [`MAX_LINK_LEN`].
    #[error("the link is {0} bytes long; at most {MAX_LINK_LEN} are accepted")]
    TooLong(usize),
    /// Does not start with `fragnet://`.
    #[error("a share link starts with fragnet://")]
    Scheme,
    /// The part before `?` is not a 64-hex video id.
    #[error("{0:?} is not a video id (expected 64 lowercase hex characters after fragnet://)")]
    VideoId(String),
    /// A parameter other than `manager` and `peer`.
    #[error("unknown parameter {0:?} (a link has only manager= and peer=)")]
    UnknownParam(String),
    /// `name` without `=value`, or an empty value.
    #[error("parameter {0:?} has no value")]
    EmptyParam(String),
    /// A `%` not followed by two hex digits, or bytes that are not UTF-8.
    #[error("bad percent-encoding in {0:?}")]
    Encoding(String),
    /// Two `manager=` parameters.
    #[error("more than one manager= parameter")]
    TwoManagers,
    /// The manager is not an http(s) URL with a host.
    #[error("manager {0:?} is not an http:// or https:// URL with a host")]
    Manager(String),
    /// More than [`MAX_PEERS`] peers.
    #[error("more than {MAX_PEERS} peer= parameters")]
    TooManyPeers,
    /// A peer address that does not parse, has no scheme, or cannot be dialed.
    #[error("peer {input:?}: {reason}")]
    Peer {
        /// What was given.
        input: String,
        /// What is wrong with it.
        reason: String,
    },
    /// Neither a manager nor a peer: nowhere to look.
    #[error("the link says nowhere to find the video (no manager= and no peer=)")]
    NoLocation,
}

impl Link {
    /// A link to `video` held by a node advertising `advertised`, optionally through
    /// `manager`: keeps the addresses another machine can dial (no wildcard host, no
    /// port 0), QUIC first (it proves the node's identity), at most [`MAX_PEERS`].
    /// `fragnet split`, `peer`, `run` and `add` print this.
    pub fn for_node(video: VideoId, advertised: &[PeerAddr], manager: Option<&str>) -> Link {
        let mut peers: Vec<PeerAddr> = advertised.iter().filter(|a| dialable(a)).cloned().collect();
        peers.sort_by_key(|a| a.scheme != "quic");
        peers.dedup();
        peers.truncate(MAX_PEERS);
        Link {
            video,
            manager: manager.map(|m| m.trim_end_matches('/').to_string()),
            peers,
        }
    }

    /// Whether the link says where to look.
    pub fn has_location(&self) -> bool {
        self.manager.is_some() || !self.peers.is_empty()
    }

    /// Parses a link strictly (see the module docs for the format).
    pub fn parse(input: &str) -> Result<Link, BadLink> {
        let s = input.trim();
        if s.len() > MAX_LINK_LEN {
            return Err(BadLink::TooLong(s.len()));
        }
        let rest = s
            .get(..SCHEME.len())
            .filter(|p| p.eq_ignore_ascii_case(SCHEME))
            .map(|_| &s[SCHEME.len()..])
            .ok_or(BadLink::Scheme)?;
        let (id, query) = rest.split_once('?').unwrap_or((rest, ""));
        // `fragnet://<id>/?...` is what some chat apps make of a link: accept the slash.
        let id = id.strip_suffix('/').unwrap_or(id);
        let video: VideoId = id
            .parse()
            .map_err(|_| BadLink::VideoId(id.chars().take(80).collect()))?;
        let mut link = Link {
            video,
            manager: None,
            peers: Vec::new(),
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, raw) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(raw)?;
            if value.is_empty() {
                return Err(BadLink::EmptyParam(key.chars().take(40).collect()));
            }
            match key {
                "manager" => {
                    if link.manager.is_some() {
                        return Err(BadLink::TwoManagers);
                    }
                    link.manager = Some(check_manager(&value)?);
                }
                "peer" => {
                    if link.peers.len() == MAX_PEERS {
                        return Err(BadLink::TooManyPeers);
                    }
                    link.peers.push(check_peer(&value)?);
                }
                other => return Err(BadLink::UnknownParam(other.chars().take(40).collect())),
            }
        }
        if !link.has_location() {
            return Err(BadLink::NoLocation);
        }
        Ok(link)
    }
}

/// `http://host[:port][/path]` or `https://…`, with a host; a trailing `/` dropped.
fn check_manager(v: &str) -> Result<String, BadLink> {
    let bad = || BadLink::Manager(v.chars().take(120).collect());
    let rest = v
        .strip_prefix("http://")
        .or_else(|| v.strip_prefix("https://"))
        .ok_or_else(bad)?;
    let authority = rest.split('/').next().unwrap_or("");
    if authority.is_empty()
        || authority.starts_with(':')
        || authority.contains('@')
        || v.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(bad());
    }
    Ok(v.trim_end_matches('/').to_string())
}

/// A peer address that names its scheme and can be dialed from elsewhere.
fn check_peer(v: &str) -> Result<PeerAddr, BadLink> {
    let bad = |reason: &str| BadLink::Peer {
        input: v.chars().take(120).collect(),
        reason: reason.to_string(),
    };
    if !v.contains("://") {
        return Err(bad(
            "no scheme (write tcp://HOST:PORT or quic://ID@HOST:PORT)",
        ));
    }
    let a = PeerAddr::parse(v, "tcp").map_err(|e| bad(&e.reason))?;
    if !dialable(&a) {
        return Err(bad(
            "not dialable from elsewhere (port 0 or a wildcard host)",
        ));
    }
    Ok(a)
}

/// Bytes written as they are in a value; every other byte is `%XX`. `:`, `/`, `@`,
/// `[`, `]` stay readable: addresses and URLs look like themselves.
fn plain(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~:/@[]!$'()*,;".contains(&b)
}

fn encode(s: &str, out: &mut fmt::Formatter<'_>) -> fmt::Result {
    for &b in s.as_bytes() {
        if plain(b) {
            write!(out, "{}", b as char)?;
        } else {
            write!(out, "%{b:02X}")?;
        }
    }
    Ok(())
}

fn decode(v: &str) -> Result<String, BadLink> {
    let bad = || BadLink::Encoding(v.chars().take(120).collect());
    let bytes = v.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3).ok_or_else(bad)?;
            let hex = std::str::from_utf8(hex).map_err(|_| bad())?;
            out.push(u8::from_str_radix(hex, 16).map_err(|_| bad())?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| bad())
}

impl fmt::Display for Link {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{SCHEME}{}", self.video)?;
        let mut sep = '?';
        if let Some(m) = &self.manager {
            write!(f, "{sep}manager=")?;
            encode(m, f)?;
            sep = '&';
        }
        for p in &self.peers {
            write!(f, "{sep}peer=")?;
            encode(&p.to_string(), f)?;
            sep = '&';
        }
        Ok(())
    }
}

impl FromStr for Link {
    type Err = BadLink;
    fn from_str(s: &str) -> Result<Link, BadLink> {
        Link::parse(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn video() -> VideoId {
        VideoId(crate::ids::Digest::of(b"a video"))
    }

    fn node() -> String {
        "ab".repeat(32)
    }

    #[test]
    fn round_trip() {
        let link = Link {
            video: video(),
            manager: Some("http://192.0.2.7:5001".into()),
            peers: vec![
                format!("quic://{}@192.0.2.8:6001", node()).parse().unwrap(),
                "tcp://[2001:db8::1]:6002".parse().unwrap(),
                "tcp://peer.example:6003".parse().unwrap(),
            ],
        };
        let text = link.to_string();
        assert_eq!(
            text,
            format!(
                "fragnet://{}?manager=http://192.0.2.7:5001&peer=quic://{}@192.0.2.8:6001&peer=tcp://[2001:db8::1]:6002&peer=tcp://peer.example:6003",
                video(),
                node()
            )
        );
        assert_eq!(Link::parse(&text).unwrap(), link);
        // Only a manager, only a peer.
        for l in [
            Link {
                peers: vec![],
                ..link.clone()
            },
            Link {
                manager: None,
                ..link.clone()
            },
        ] {
            assert_eq!(Link::parse(&l.to_string()).unwrap(), l);
        }
    }

    #[test]
    fn values_with_reserved_characters_are_encoded() {
        let link = Link {
            video: video(),
            manager: Some("https://m.example/fragnet?a=1&b=2+c#x%41".into()),
            peers: vec![],
        };
        let text = link.to_string();
        assert!(
            text.matches('&').count() == 0 && !text.contains('#'),
            "{text}"
        );
        assert_eq!(Link::parse(&text).unwrap(), link);
    }

    #[test]
    fn for_node_keeps_what_others_can_dial_quic_first() {
        let id = node();
        let advertised: Vec<PeerAddr> = [
            "tcp://192.0.2.8:6001".to_string(),
            format!("quic://{id}@192.0.2.8:6001"),
            "tcp://0.0.0.0:6002".to_string(),
            "tcp://192.0.2.8:0".to_string(),
        ]
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
        let l = Link::for_node(video(), &advertised, Some("http://m:5001/"));
        assert_eq!(l.manager.as_deref(), Some("http://m:5001"));
        let peers: Vec<String> = l.peers.iter().map(|p| p.to_string()).collect();
        assert_eq!(
            peers,
            vec![
                format!("quic://{id}@192.0.2.8:6001"),
                "tcp://192.0.2.8:6001".to_string()
            ]
        );
        let many: Vec<PeerAddr> = (1..30)
            .map(|p| format!("tcp://10.0.0.1:{p}").parse().unwrap())
            .collect();
        let l = Link::for_node(video(), &many, None);
        assert_eq!(l.peers.len(), MAX_PEERS);
        assert!(l.to_string().len() <= MAX_LINK_LEN);
        assert!(Link::parse(&l.to_string()).is_ok());
    }

    #[test]
    fn malformed_links_say_what_is_wrong() {
        let v = video().to_string();
        let cases: Vec<(String, BadLink)> = vec![
            (format!("http://{v}?peer=tcp://h:1"), BadLink::Scheme),
            ("fragnet:/x".into(), BadLink::Scheme),
            ("".into(), BadLink::Scheme),
            (
                "fragnet://73cdffcc?peer=tcp://h:1".into(),
                BadLink::VideoId("73cdffcc".into()),
            ),
            (
                format!("fragnet://{}?peer=tcp://h:1", v.to_uppercase()),
                BadLink::VideoId(v.to_uppercase()),
            ),
            (format!("fragnet://{v}"), BadLink::NoLocation),
            (format!("fragnet://{v}?"), BadLink::NoLocation),
            (
                format!("fragnet://{v}?tracker=http://t:1"),
                BadLink::UnknownParam("tracker".into()),
            ),
            (
                format!("fragnet://{v}?peer="),
                BadLink::EmptyParam("peer".into()),
            ),
            (
                format!("fragnet://{v}?manager"),
                BadLink::EmptyParam("manager".into()),
            ),
            (
                format!("fragnet://{v}?manager=http://a:1&manager=http://b:1"),
                BadLink::TwoManagers,
            ),
            (
                format!("fragnet://{v}?manager=ftp://a:1"),
                BadLink::Manager("ftp://a:1".into()),
            ),
            (
                format!("fragnet://{v}?manager=http://"),
                BadLink::Manager("http://".into()),
            ),
            (
                format!("fragnet://{v}?peer=%zz"),
                BadLink::Encoding("%zz".into()),
            ),
            (
                format!("fragnet://{v}?peer=%4"),
                BadLink::Encoding("%4".into()),
            ),
            (
                format!("fragnet://{v}?peer=%FF%FE"),
                BadLink::Encoding("%FF%FE".into()),
            ),
        ];
        for (input, want) in cases {
            assert_eq!(Link::parse(&input), Err(want), "{input:?}");
        }
        for bad_peer in [
            "h:1",
            "tcp://h",
            "tcp://h:99999",
            "tcp://0.0.0.0:6001",
            "tcp://h:0",
            "quic://zz@h:1",
        ] {
            let input = format!("fragnet://{v}?peer={bad_peer}");
            match Link::parse(&input) {
                Err(BadLink::Peer { input, reason }) => {
                    assert_eq!(input, bad_peer);
                    assert!(!reason.is_empty());
                }
                other => panic!("{bad_peer:?}: {other:?}"),
            }
        }
        let nine = (1..=9)
            .map(|p| format!("peer=tcp://h:{p}"))
            .collect::<Vec<_>>()
            .join("&");
        assert_eq!(
            Link::parse(&format!("fragnet://{v}?{nine}")),
            Err(BadLink::TooManyPeers)
        );
    }

    #[test]
    fn size_is_bounded() {
        let v = video().to_string();
        let long = format!("fragnet://{v}?manager=http://{}", "a".repeat(MAX_LINK_LEN));
        assert_eq!(Link::parse(&long), Err(BadLink::TooLong(long.len())));
        let exact = format!("fragnet://{v}?manager=http://");
        let exact = format!("{exact}{}", "a".repeat(MAX_LINK_LEN - exact.len()));
        assert_eq!(exact.len(), MAX_LINK_LEN);
        assert!(Link::parse(&exact).is_ok());
        // Every error message is short, whatever the input.
        let junk = format!("fragnet://{}", "z".repeat(MAX_LINK_LEN - 10));
        assert!(Link::parse(&junk).unwrap_err().to_string().len() < 200);
    }

    #[test]
    fn tolerates_what_people_do_to_links() {
        let v = video();
        let l = Link::parse(&format!("  FRAGNET://{v}/?peer=tcp://h:1\n")).unwrap();
        assert_eq!(l.video, v);
        assert_eq!(l.peers[0].to_string(), "tcp://h:1");
    }
}
