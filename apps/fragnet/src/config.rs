//! Configuration: one path, layered by figment. Later wins:
//! built-in defaults < `--config FILE` < `FRAGNET_*` environment (`__` nests) < flags.
//! Unknown keys are errors that name the key and where it came from.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use figment::Figment;
use figment::providers::{Env, Format, Serialized, Toml};
use fragnet_core::{PeerAddr, VideoId};
use serde::{Deserialize, Deserializer, Serialize};

/// The whole configuration of a fragnet process. Every key has a default.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Display name of the node (default: host and first listen port).
    pub name: Option<String>,
    /// The node's store and key (default: `fragnet-data/node-<port>`, one per listen port).
    pub data_dir: Option<PathBuf>,
    /// `tcp` or `quic`: the scheme of bare addresses and of listen entries without one.
    pub transport: String,
    /// QUIC identity policy for addresses without a node id: `tofu` (trust on first use,
    /// then pin) or `strict` (refuse them).
    pub trust: fragnet_quic::Trust,
    /// Listen addresses: `PORT`, `HOST:PORT` or `scheme://HOST:PORT`.
    #[serde(deserialize_with = "string_or_seq")]
    pub listen: Vec<String>,
    /// Peers to dial without a registry.
    #[serde(deserialize_with = "string_or_seq")]
    pub peers: Vec<String>,
    /// The video a bare fragment name refers to.
    pub default_video: Option<VideoId>,
    /// Read the interactive console on stdin.
    pub console: bool,
    /// Rates, connections, concurrency, timeouts.
    pub limits: Limits,
    /// The peer's HTTP address (stream, player, health, metrics): `PORT` (all
    /// interfaces) or `HOST:PORT`; port 0 picks one. Unset: no HTTP.
    pub http_listen: Option<String>,
    /// `stream.*`: how the HTTP side streams to players.
    pub stream: Stream,
    /// Roles `fragnet run` starts in this process: any of `peer`, `manager`, `broker`.
    #[serde(deserialize_with = "string_or_seq")]
    pub roles: Vec<String>,
    /// Videos to fetch as they appear: `"all"` (every video the registry knows), `"none"`,
    /// or a list of video ids.
    pub want: Want,
    /// Addresses to register when the bound ones are not reachable as they are
    /// (`0.0.0.0`, containers): a host name (`peer1`, applied to every listen address
    /// with its real port) or full addresses (`quic://peer1:6001`).
    #[serde(deserialize_with = "string_or_seq")]
    pub advertise: Vec<String>,
    /// Registry plugin: `http` (the manager at `manager.url`), `memory` (the manager
    /// running in this process; `fragnet run`, `fragnet demo`), or `none`.
    pub registry: String,
    /// Pub/sub plugin: `broker` (at `broker.addr`), `nats` (at `nats.url`), `local` (in
    /// this process), or `none`.
    pub pubsub: String,
    /// The fragment-event topic.
    pub topic: String,
    /// Seconds between reconciliations with the registry (catches up on lost events).
    pub reconcile_secs: u64,
    /// `manager.*`: the manager this node talks to, and the manager role's settings.
    pub manager: ManagerSection,
    /// `broker.*`: the broker this node talks to, and the broker role's settings.
    pub broker: BrokerSection,
    /// `nats.*`: the NATS server, for `pubsub = "nats"`.
    pub nats: NatsSection,
}

pub use fragnet_core::Want;

/// `manager.*` keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ManagerSection {
    /// The manager's URL, e.g. `http://manager:5001`; unset: no registry.
    pub url: Option<String>,
    /// Bearer token for writes (secret: prefer `token_file` or `FRAGNET_MANAGER__TOKEN`).
    pub token: Option<String>,
    /// File holding the token.
    pub token_file: Option<PathBuf>,
    /// Manager role: listen address.
    pub listen: String,
    /// Manager role: where manifests are kept.
    pub data_dir: PathBuf,
    /// Manager role: seconds after its last heartbeat a node expires (nodes heartbeat
    /// every third of it).
    pub ttl_secs: f64,
    /// Manager role: bounds on what it accepts.
    pub limits: fragnet_manager::ManagerLimits,
}

impl Default for ManagerSection {
    fn default() -> Self {
        ManagerSection {
            url: None,
            token: None,
            token_file: None,
            listen: "0.0.0.0:5001".into(),
            data_dir: PathBuf::from("fragnet-data/manager"),
            ttl_secs: 15.0,
            limits: fragnet_manager::ManagerLimits::default(),
        }
    }
}

/// `broker.*` keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BrokerSection {
    /// The broker's address, e.g. `broker:5555`; unset: no broker.
    pub addr: Option<String>,
    /// Shared token (secret: prefer `token_file` or `FRAGNET_BROKER__TOKEN`).
    pub token: Option<String>,
    /// File holding the token.
    pub token_file: Option<PathBuf>,
    /// Broker role: listen address.
    pub listen: String,
    /// Broker role: per-client limits.
    pub limits: fragnet_broker::BrokerLimits,
}

impl Default for BrokerSection {
    fn default() -> Self {
        BrokerSection {
            addr: None,
            token: None,
            token_file: None,
            listen: "0.0.0.0:5555".into(),
            limits: fragnet_broker::BrokerLimits::default(),
        }
    }
}

/// `nats.*` keys.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSection {
    /// The NATS server, e.g. `nats://127.0.0.1:4222`.
    pub url: Option<String>,
    /// Token (secret: prefer `token_file` or `FRAGNET_NATS__TOKEN`).
    pub token: Option<String>,
    /// File holding the token.
    pub token_file: Option<PathBuf>,
}

/// `stream.*` keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Stream {
    /// Bytes ahead of a player's position that are fetched before anything else, e.g.
    /// `4MiB`.
    pub lookahead: String,
    /// Seconds a response waits for one missing chunk before it gives up.
    pub chunk_wait_secs: u64,
    /// Stream and event responses served at once; more get 503.
    pub max_responses: usize,
    /// Seconds an HTTP connection may make no progress before it is closed.
    pub idle_timeout_secs: u64,
}

impl Default for Stream {
    fn default() -> Self {
        Stream {
            lookahead: "4MiB".into(),
            chunk_wait_secs: 30,
            max_responses: 64,
            idle_timeout_secs: 60,
        }
    }
}

/// `limits.*` keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Upload limit for everything this node serves, e.g. `10MB` (per second); unset = none.
    pub max_upload_rate: Option<String>,
    /// Concurrent connections served.
    pub max_connections: usize,
    /// Chunk requests in flight when fetching, across peers.
    pub concurrency: usize,
    /// Chunk requests in flight to one peer.
    pub per_peer: usize,
    /// Seconds a client may stay silent before the node closes its stream.
    pub idle_timeout_secs: u64,
    /// Seconds a read or write may make no progress.
    pub io_timeout_secs: u64,
    /// Seconds in-flight transfers get to finish on shutdown.
    pub shutdown_grace_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_upload_rate: None,
            max_connections: 256,
            concurrency: 8,
            per_peer: 4,
            idle_timeout_secs: 60,
            io_timeout_secs: 20,
            shutdown_grace_secs: 5,
        }
    }
}

impl Default for Config {
    fn default() -> Self {
        Config {
            name: None,
            data_dir: None,
            transport: "tcp".into(),
            trust: fragnet_quic::Trust::Tofu,
            listen: vec!["6001".into()],
            peers: Vec::new(),
            default_video: None,
            console: true,
            limits: Limits::default(),
            http_listen: None,
            stream: Stream::default(),
            roles: vec!["peer".into()],
            want: Want::None,
            advertise: Vec::new(),
            registry: "http".into(),
            pubsub: "broker".into(),
            topic: "fragments".into(),
            reconcile_secs: 10,
            manager: ManagerSection::default(),
            broker: BrokerSection::default(),
            nats: NatsSection::default(),
        }
    }
}

/// Accepts `"6001"`, `6001`, `"a, b"` or `["a", 6001]` for list keys, so environment
/// variables (`FRAGNET_LISTEN=6001`) and TOML both read naturally.
fn string_or_seq<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Item {
        S(String),
        N(u64),
    }
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(Item),
        Many(Vec<Item>),
    }
    let items = match OneOrMany::deserialize(d)? {
        OneOrMany::One(i) => vec![i],
        OneOrMany::Many(v) => v,
    };
    Ok(items
        .into_iter()
        .flat_map(|i| match i {
            Item::S(s) => s
                .split(',')
                .map(|p| p.trim().to_string())
                .filter(|p| !p.is_empty())
                .collect::<Vec<_>>(),
            Item::N(n) => vec![n.to_string()],
        })
        .collect())
}

/// Where configuration comes from besides defaults and environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--profile NAME`: `configs/NAME.toml` (or the copy built into the binary).
    pub profile: Option<String>,
    /// `--config FILE`.
    pub file: Option<PathBuf>,
}

/// The profiles shipped in `configs/`, built into the binary so `--profile` works from
/// any directory and in containers. A `configs/NAME.toml` on disk takes precedence.
pub const BUILTIN_PROFILES: &[(&str, &str)] = &[
    ("seeder", include_str!("../../../configs/seeder.toml")),
    ("leecher", include_str!("../../../configs/leecher.toml")),
    (
        "leecher-quic",
        include_str!("../../../configs/leecher-quic.toml"),
    ),
    (
        "leecher-nats",
        include_str!("../../../configs/leecher-nats.toml"),
    ),
    ("manager", include_str!("../../../configs/manager.toml")),
    ("broker", include_str!("../../../configs/broker.toml")),
    (
        "all-in-one",
        include_str!("../../../configs/all-in-one.toml"),
    ),
];

/// Finds a profile: `./configs/NAME.toml`, `/etc/fragnet/configs/NAME.toml`, else the
/// built-in copy.
fn profile_provider(name: &str) -> Result<(figment::providers::Data<Toml>, String)> {
    if name.is_empty()
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("profile names are letters, digits, '-' and '_'; got {name:?}");
    }
    for dir in ["configs", "/etc/fragnet/configs"] {
        let p = Path::new(dir).join(format!("{name}.toml"));
        if p.is_file() {
            let shown = p.display().to_string();
            return Ok((Toml::file_exact(p), shown));
        }
    }
    match BUILTIN_PROFILES.iter().find(|(n, _)| *n == name) {
        Some((_, text)) => Ok((
            Toml::string(text),
            format!("configs/{name}.toml (built in)"),
        )),
        None => {
            let known: Vec<&str> = BUILTIN_PROFILES.iter().map(|(n, _)| *n).collect();
            bail!(
                "no profile {name:?}: no configs/{name}.toml here or in /etc/fragnet/configs, and none built in (built in: {})",
                known.join(", ")
            )
        }
    }
}

/// The layered figment: defaults < profile < file < environment < flags.
fn figment(src: &Sources, flags: serde_json::Value, env: Env) -> Result<(Figment, Option<String>)> {
    let mut fig = Figment::from(Serialized::defaults(Config::default()));
    let mut profile_shown = None;
    if let Some(name) = &src.profile {
        let (provider, shown) = profile_provider(name)?;
        fig = fig.merge(provider);
        profile_shown = Some(shown);
    }
    if let Some(path) = &src.file {
        if !path.is_file() {
            bail!("configuration file {} does not exist", path.display());
        }
        fig = fig.merge(Toml::file_exact(path));
    }
    Ok((
        fig.merge(env).merge(Serialized::defaults(flags)),
        profile_shown,
    ))
}

/// The environment layer: `FRAGNET_*`, `__` nests.
fn env() -> Env {
    Env::prefixed("FRAGNET_").split("__")
}

/// Loads the configuration: defaults < profile < `file` < environment < `flags` (a JSON
/// object of the keys the command line set).
pub fn load(src: &Sources, flags: serde_json::Value) -> Result<Config> {
    load_with_env(src, flags, env())
}

fn load_with_env(src: &Sources, flags: serde_json::Value, env: Env) -> Result<Config> {
    let (fig, profile_shown) = figment(src, flags, env)?;
    let cfg: Config = fig
        .extract()
        .map_err(|e| anyhow::anyhow!(describe(e, profile_shown.as_deref())))?;
    cfg.validate()?;
    Ok(cfg)
}

/// figment errors name the key and the source; say plainly which file when the source
/// is a built-in profile.
fn describe(e: figment::Error, profile: Option<&str>) -> String {
    let all: Vec<String> = e.into_iter().map(|e| e.to_string()).collect();
    let mut msg = format!("invalid configuration: {}", all.join("; "));
    if let Some(p) = profile {
        msg = msg.replace("TOML source string", p);
    }
    msg
}

/// The effective configuration, one `key = value` per line, each with where it came
/// from (`default`, a file, an environment variable, `command line`).
pub fn show(src: &Sources, flags: serde_json::Value) -> Result<String> {
    let (fig, profile_shown) = figment(src, flags, env())?;
    let cfg: Config = fig
        .extract()
        .map_err(|e| anyhow::anyhow!(describe(e, profile_shown.as_deref())))?;
    cfg.validate()?;
    let mut leaves = Vec::new();
    flatten("", &serde_json::to_value(&cfg)?, &mut leaves);
    let width = leaves
        .iter()
        .map(|(k, v)| k.len() + v.len())
        .max()
        .unwrap_or(0)
        + 4;
    let mut out = String::new();
    for (key, value) in leaves {
        let from = match fig.find_metadata(&key) {
            None => "default".to_string(),
            Some(md) => match (&md.source, md.name.as_ref()) {
                (Some(figment::Source::File(p)), _) => p.display().to_string(),
                (_, n) if n.contains("environment") => {
                    format!(
                        "environment FRAGNET_{}",
                        key.to_uppercase().replace('.', "__")
                    )
                }
                (_, n) if n.contains("serde_json") => "command line".to_string(),
                (_, n) if n.contains("TOML source string") => {
                    profile_shown.clone().unwrap_or_else(|| n.to_string())
                }
                _ => "default".to_string(),
            },
        };
        let line = format!("{key} = {value}");
        out.push_str(&format!("{line:<width$}# {from}\n"));
    }
    Ok(out)
}

fn flatten(prefix: &str, v: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        serde_json::Value::Null => out.push((prefix.to_string(), "(unset)".into())),
        _ if prefix.ends_with(".token") => out.push((prefix.to_string(), "(set, hidden)".into())),
        other => out.push((prefix.to_string(), other.to_string())),
    }
}

impl Config {
    fn validate(&self) -> Result<()> {
        if !crate::assemble::SCHEMES.contains(&self.transport.as_str()) {
            bail!(
                "transport = {:?} is not available; use one of {:?}",
                self.transport,
                crate::assemble::SCHEMES
            );
        }
        for l in &self.listen {
            self.addr(l).with_context(|| format!("in listen = {l:?}"))?;
        }
        for p in &self.peers {
            self.addr(p).with_context(|| format!("in peers = {p:?}"))?;
        }
        if let Some(r) = &self.limits.max_upload_rate {
            fragnet_core::ratelimit::parse_bytes(r)
                .map_err(|e| anyhow::anyhow!("limits.max_upload_rate: {e}"))?;
        }
        if let Some(h) = &self.http_listen {
            http_addr(h).with_context(|| format!("in http_listen = {h:?}"))?;
        }
        fragnet_core::ratelimit::parse_bytes(&self.stream.lookahead)
            .map_err(|e| anyhow::anyhow!("stream.lookahead: {e}"))?;
        if self.stream.chunk_wait_secs == 0
            || self.stream.max_responses == 0
            || self.stream.idle_timeout_secs == 0
        {
            bail!(
                "stream.chunk_wait_secs, stream.max_responses and stream.idle_timeout_secs must be at least 1"
            );
        }
        for r in &self.roles {
            if !["peer", "manager", "broker"].contains(&r.as_str()) {
                bail!("roles: unknown role {r:?}; use peer, manager or broker");
            }
        }
        if !["http", "memory", "none"].contains(&self.registry.as_str()) {
            bail!(
                "registry = {:?}: use \"http\", \"memory\" or \"none\"",
                self.registry
            );
        }
        if !["broker", "nats", "local", "none"].contains(&self.pubsub.as_str()) {
            bail!(
                "pubsub = {:?}: use \"broker\", \"nats\", \"local\" or \"none\"",
                self.pubsub
            );
        }
        fragnet_core::pubsub::check_topic(&self.topic)
            .map_err(|e| anyhow::anyhow!("topic: {e}"))?;
        if self.reconcile_secs == 0 {
            bail!("reconcile_secs must be at least 1");
        }
        if let Some(u) = &self.manager.url
            && !(u.starts_with("http://") || u.starts_with("https://"))
        {
            bail!("manager.url = {u:?}: expected http://HOST:PORT");
        }
        if self.limits.max_connections == 0
            || self.limits.concurrency == 0
            || self.limits.per_peer == 0
        {
            bail!(
                "limits.max_connections, limits.concurrency and limits.per_peer must be at least 1"
            );
        }
        Ok(())
    }

    /// Parses an address with this configuration's default scheme.
    pub fn addr(&self, s: &str) -> Result<PeerAddr> {
        Ok(PeerAddr::parse(s, &self.transport)?)
    }

    /// Listen addresses, parsed.
    pub fn listen_addrs(&self) -> Result<Vec<PeerAddr>> {
        self.listen.iter().map(|s| self.addr(s)).collect()
    }

    /// Peer addresses, parsed.
    pub fn peer_addrs(&self) -> Result<Vec<PeerAddr>> {
        self.peers.iter().map(|s| self.addr(s)).collect()
    }

    /// The HTTP side's configuration, when `http_listen` is set.
    pub fn http(&self) -> Result<Option<fragnet_http::HttpConfig>> {
        let Some(h) = &self.http_listen else {
            return Ok(None);
        };
        let s = &self.stream;
        Ok(Some(fragnet_http::HttpConfig {
            listen: http_addr(h).with_context(|| format!("in http_listen = {h:?}"))?,
            lookahead: fragnet_core::ratelimit::parse_bytes(&s.lookahead)
                .map_err(|e| anyhow::anyhow!("stream.lookahead: {e}"))?,
            chunk_wait: std::time::Duration::from_secs(s.chunk_wait_secs),
            max_responses: s.max_responses,
            idle_timeout: std::time::Duration::from_secs(s.idle_timeout_secs),
            ..fragnet_http::HttpConfig::default()
        }))
    }

    /// Upload limit in bytes per second, if set.
    pub fn upload_rate(&self) -> Option<u64> {
        self.limits
            .max_upload_rate
            .as_deref()
            .and_then(|r| fragnet_core::ratelimit::parse_bytes(r).ok())
    }

    /// The data directory: configured, else one per listen port so two peers started in
    /// one folder never share a store or a key.
    pub fn data_dir_or_default(&self, role: &str) -> PathBuf {
        if let Some(d) = &self.data_dir {
            return d.clone();
        }
        let port = self
            .listen_addrs()
            .ok()
            .and_then(|a| a.first().map(|a| a.port));
        match port {
            Some(0) => PathBuf::from(format!(
                "fragnet-data/{role}-ephemeral-{}",
                std::process::id()
            )),
            Some(p) => PathBuf::from(format!("fragnet-data/node-{p}")),
            None => PathBuf::from(format!("fragnet-data/{role}")),
        }
    }
}

/// `PORT` (all interfaces), `HOST:PORT` or `[V6]:PORT`, resolved (`localhost` works).
pub fn http_addr(s: &str) -> Result<std::net::SocketAddr> {
    use std::net::ToSocketAddrs;
    let s = s.trim();
    if let Ok(port) = s.parse::<u16>() {
        return Ok(std::net::SocketAddr::from(([0, 0, 0, 0], port)));
    }
    let s = s.strip_prefix("http://").unwrap_or(s);
    s.to_socket_addrs()
        .with_context(|| format!("{s:?} is not PORT or HOST:PORT"))?
        .next()
        .with_context(|| format!("{s:?} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    /// For tests that are not about the environment: figment::Jail sets FRAGNET_*
    /// variables for the whole process while it runs, and tests run in parallel.
    fn isolated_env() -> Env {
        Env::prefixed("FRAGNET_CONFIG_TEST_UNSET_").split("__")
    }

    #[test]
    fn http_is_off_by_default_and_takes_a_port_or_an_address() {
        let none = Sources::default();
        let cfg = load_with_env(&none, json!({}), isolated_env()).unwrap();
        assert!(cfg.http().unwrap().is_none());
        let cfg = load_with_env(
            &none,
            json!({"http_listen": "127.0.0.1:0", "stream": {"lookahead": "1MiB"}}),
            isolated_env(),
        )
        .unwrap();
        let h = cfg.http().unwrap().unwrap();
        assert_eq!(h.listen.to_string(), "127.0.0.1:0");
        assert_eq!(h.lookahead, 1 << 20);
        assert_eq!(h.max_responses, 64);
        assert_eq!(http_addr("8080").unwrap().to_string(), "0.0.0.0:8080");
        assert_eq!(http_addr("[::1]:9").unwrap().to_string(), "[::1]:9");
        let e = load_with_env(
            &none,
            json!({"http_listen": "nowhere:port"}),
            isolated_env(),
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("http_listen"), "{e:#}");
        let e = load_with_env(
            &none,
            json!({"stream": {"lookahead": "lots"}}),
            isolated_env(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("stream.lookahead"), "{e}");
        let e = load_with_env(
            &none,
            json!({"stream": {"max_responses": 0}}),
            isolated_env(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("stream.max_responses"), "{e}");
    }

    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure returns figment's own error type
    fn environment_sits_between_file_and_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "transport = \"tcp\"\nlisten = [7001]\n")?;
            jail.set_env("FRAGNET_LISTEN", "7002");
            jail.set_env("FRAGNET_LIMITS__CONCURRENCY", "4");
            let cfg = load_with_env(
                &Sources {
                    file: Some("c.toml".into()),
                    ..Default::default()
                },
                json!({}),
                env(),
            )
            .unwrap();
            assert_eq!(cfg.listen, vec!["7002"], "env beats the file");
            assert_eq!(cfg.limits.concurrency, 4, "__ nests");
            let cfg = load_with_env(
                &Sources {
                    file: Some("c.toml".into()),
                    ..Default::default()
                },
                json!({"listen": ["7003"]}),
                env(),
            )
            .unwrap();
            assert_eq!(cfg.listen, vec!["7003"], "flags beat env");
            jail.set_env("FRAGNET_LISTEN", "tcp://127.0.0.1:1, 2");
            let cfg = load_with_env(&Sources::default(), json!({}), env()).unwrap();
            assert_eq!(cfg.listen, vec!["tcp://127.0.0.1:1", "2"]);
            jail.set_env("FRAGNET_NOPE", "1");
            let e = load_with_env(&Sources::default(), json!({}), env())
                .unwrap_err()
                .to_string();
            assert!(e.contains("nope") || e.contains("NOPE"), "{e}");
            Ok(())
        });
    }

    #[test]
    fn layers_in_order_defaults_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "name = \"from-file\"\nlisten = [7001]\n[limits]\nconcurrency = 3\nper_peer = 2\n",
        )
        .unwrap();
        let base = load_with_env(&Sources::default(), json!({}), env()).unwrap();
        assert_eq!(base.listen, vec!["6001"]);
        assert_eq!(base.limits.concurrency, 8);
        let from_file = load_with_env(
            &Sources {
                file: Some(file.clone()),
                ..Default::default()
            },
            json!({}),
            env(),
        )
        .unwrap();
        assert_eq!(from_file.name.as_deref(), Some("from-file"));
        assert_eq!(from_file.listen, vec!["7001"]);
        assert_eq!(from_file.limits.concurrency, 3);
        let flags = load_with_env(
            &Sources {
                file: Some(file.clone()),
                ..Default::default()
            },
            json!({"name": "from-flag", "limits": {"concurrency": 5}}),
            env(),
        )
        .unwrap();
        assert_eq!(flags.name.as_deref(), Some("from-flag"));
        assert_eq!(flags.limits.concurrency, 5);
        assert_eq!(
            flags.limits.per_peer, 2,
            "a flag on one nested key keeps the file's siblings"
        );
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "transprot = \"tcp\"\n").unwrap();
        let e = load_with_env(
            &Sources {
                file: Some(file.clone()),
                ..Default::default()
            },
            json!({}),
            env(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("transprot"), "{e}");
        assert!(e.contains("bad.toml"), "{e}");
        std::fs::write(&file, "[limits]\nmax_speed = 1\n").unwrap();
        let e = load_with_env(
            &Sources {
                file: Some(file.clone()),
                ..Default::default()
            },
            json!({}),
            env(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_speed"), "{e}");
    }

    #[test]
    fn bad_values_are_clear() {
        let e = load_with_env(
            &Sources::default(),
            json!({"transport": "carrier-pigeon"}),
            env(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("carrier-pigeon"), "{e}");
        let e =
            load_with_env(&Sources::default(), json!({"listen": ["nonsense"]}), env()).unwrap_err();
        assert!(format!("{e:#}").contains("nonsense"), "{e:#}");
        let e = load_with_env(
            &Sources::default(),
            json!({"limits": {"max_upload_rate": "fast"}}),
            env(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_upload_rate"), "{e}");
        assert!(
            load_with_env(
                &Sources {
                    file: Some("/nonexistent/x.toml".into()),
                    ..Default::default()
                },
                json!({}),
                env()
            )
            .is_err()
        );
    }
}
