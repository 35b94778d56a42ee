//! Configuration: one path, layered by figment. Later wins:
//! built-in defaults < `--profile NAME` < `--config FILE` < `FRAGNET_*` environment
//! (`__` nests) < flags ([`Overrides`]).
//! Unknown keys and values outside a key's choices are errors that name the key, the
//! value and where it came from, raised once at load.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use figment::providers::{Env, Format, Serialized, Toml};
use figment::value::{Dict, Map};
use figment::{Figment, Metadata, Profile, Provider};
use fragnet_core::{PeerAddr, VideoId};
use serde::de::{DeserializeOwned, IntoDeserializer};
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
    pub transport: TransportKind,
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
    /// The peer's admin address (`/health` and `/metrics` only, with or without the
    /// player): `PORT` or `HOST:PORT`. Unset: none.
    pub admin_listen: Option<String>,
    /// `stream.*`: how the HTTP side streams to players.
    pub stream: Stream,
    /// `library.*`: the node's library API (add, remove, pin over HTTP).
    pub library: LibrarySection,
    /// Roles `fragnet run` starts in this process: any of `peer`, `manager`, `broker`,
    /// as a list or a comma-separated string (`FRAGNET_ROLES=peer,manager`).
    #[serde(deserialize_with = "enum_list")]
    pub roles: Vec<Role>,
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
    pub registry: RegistryKind,
    /// Pub/sub plugin: `broker` (at `broker.addr`), `nats` (at `nats.url`), `local` (in
    /// this process), or `none`.
    pub pubsub: PubSubKind,
    /// The fragment-event topic.
    pub topic: String,
    /// Seconds between reconciliations with the registry (catches up on lost events).
    pub reconcile_secs: u64,
    /// Super-seed videos held whole: send every chunk once before any twice, so the
    /// leechers spread the copies (BitTorrent super-seeding). A player's bytes are
    /// never held back.
    pub super_seed: bool,
    /// `manager.*`: the manager this node talks to, and the manager role's settings.
    pub manager: ManagerSection,
    /// `broker.*`: the broker this node talks to, and the broker role's settings.
    pub broker: BrokerSection,
    /// `nats.*`: the NATS server, for `pubsub = "nats"`.
    pub nats: NatsSection,
}

/// The transport of bare addresses and of listen entries without a scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// `tcp`: fragnet-tcp.
    Tcp,
    /// `quic`: fragnet-quic, authenticated by node key.
    Quic,
}

impl TransportKind {
    /// The address scheme: `tcp` or `quic`.
    pub const fn as_str(self) -> &'static str {
        match self {
            TransportKind::Tcp => "tcp",
            TransportKind::Quic => "quic",
        }
    }
}

impl std::fmt::Display for TransportKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where a node registers and finds peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RegistryKind {
    /// `http`: the manager at `manager.url`.
    Http,
    /// `memory`: the manager running in this process (`fragnet run`, `fragnet demo`).
    Memory,
    /// `none`: static peers only.
    None,
    /// `nats`: the registry in NATS JetStream key-value at `nats.url`, directly (the
    /// same buckets NATS-backed managers serve).
    Nats,
}

impl RegistryKind {
    /// The configuration value: `http`, `memory`, `nats` or `none`.
    pub const fn as_str(self) -> &'static str {
        match self {
            RegistryKind::Http => "http",
            RegistryKind::Memory => "memory",
            RegistryKind::Nats => "nats",
            RegistryKind::None => "none",
        }
    }
}

impl std::fmt::Display for RegistryKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where fragment events travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PubSubKind {
    /// `broker`: fragnet's broker at `broker.addr`.
    Broker,
    /// `nats`: a NATS server at `nats.url`.
    Nats,
    /// `local`: the bus inside this process.
    Local,
    /// `none`: no events; reconciliation alone finds new fragments.
    None,
}

impl PubSubKind {
    /// The configuration value: `broker`, `nats`, `local` or `none`.
    pub const fn as_str(self) -> &'static str {
        match self {
            PubSubKind::Broker => "broker",
            PubSubKind::Nats => "nats",
            PubSubKind::Local => "local",
            PubSubKind::None => "none",
        }
    }
}

impl std::fmt::Display for PubSubKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A role `fragnet run` can start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// A peer node.
    Peer,
    /// The manager (registry).
    Manager,
    /// The pub/sub broker.
    Broker,
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
    /// Manager role: where the registry lives, `memory` (this process) or `nats`
    /// (JetStream key-value at `nats.url`, shared by every manager replica).
    pub registry: fragnet_manager::ManagerBackend,
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
            registry: fragnet_manager::ManagerBackend::Memory,
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
    /// Broker role: `/metrics` and `/health` over HTTP on `PORT` or `HOST:PORT`; unset
    /// (the default): no HTTP listener.
    pub metrics_listen: Option<String>,
}

impl Default for BrokerSection {
    fn default() -> Self {
        BrokerSection {
            addr: None,
            token: None,
            token_file: None,
            listen: "0.0.0.0:5555".into(),
            limits: fragnet_broker::BrokerLimits::default(),
            metrics_listen: None,
        }
    }
}

/// `nats.*` keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsSection {
    /// The NATS server(s), e.g. `nats://127.0.0.1:4222` (comma-separated for a cluster).
    pub url: Option<String>,
    /// Token (secret: prefer `token_file` or `FRAGNET_NATS__TOKEN`).
    pub token: Option<String>,
    /// File holding the token.
    pub token_file: Option<PathBuf>,
    /// The registry's bucket name prefix (`registry = "nats"`, `manager.registry =
    /// "nats"`): everything sharing it shares the registry. Default `fragnet`.
    pub buckets: String,
    /// Copies of each registry bucket in a NATS cluster, used when the buckets are
    /// created (3 in a cluster of three: losing a server loses nothing). Default 1.
    pub replicas: usize,
}

impl Default for NatsSection {
    fn default() -> Self {
        NatsSection {
            url: None,
            token: None,
            token_file: None,
            buckets: "fragnet".into(),
            replicas: 1,
        }
    }
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

/// `library.*` keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LibrarySection {
    /// Bearer token library writes over HTTP need (secret: prefer `token_file` or
    /// `FRAGNET_LIBRARY__TOKEN`). Unset: writes only from loopback.
    pub token: Option<String>,
    /// File holding the token.
    pub token_file: Option<PathBuf>,
    /// Largest upload `POST /library` takes, e.g. `4GiB`.
    pub max_upload: String,
    /// Fragments an added video is split into.
    pub fragments: u32,
}

impl Default for LibrarySection {
    fn default() -> Self {
        LibrarySection {
            token: None,
            token_file: None,
            max_upload: "4GiB".into(),
            fragments: fragnet_core::manifest::DEFAULT_FRAGMENTS,
        }
    }
}

/// `limits.*` keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Upload limit for everything this node serves, e.g. `10MB` (per second); unset = none.
    pub max_upload_rate: Option<String>,
    /// The most bytes the store may hold, e.g. `20GB`; unset = no bound. Downloads that
    /// would exceed it evict the least recently watched unpinned videos, or fail.
    pub max_disk: Option<String>,
    /// Concurrent connections served.
    pub max_connections: usize,
    /// Chunk requests in flight when fetching, across peers.
    pub concurrency: usize,
    /// Chunk requests in flight to one peer.
    pub per_peer: usize,
    /// Chunk transfers served at once; more wait up to 1 s, then are told to ask
    /// another peer. 0: no bound.
    pub upload_slots: usize,
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
            max_disk: None,
            max_connections: 256,
            concurrency: 8,
            per_peer: 4,
            upload_slots: fragnet_core::node::DEFAULT_UPLOAD_SLOTS,
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
            transport: TransportKind::Tcp,
            trust: fragnet_quic::Trust::Tofu,
            listen: vec!["6001".into()],
            peers: Vec::new(),
            default_video: None,
            console: true,
            limits: Limits::default(),
            http_listen: None,
            admin_listen: None,
            stream: Stream::default(),
            library: LibrarySection::default(),
            roles: vec![Role::Peer],
            want: Want::None,
            advertise: Vec::new(),
            registry: RegistryKind::Http,
            pubsub: PubSubKind::Broker,
            topic: "fragments".into(),
            reconcile_secs: 10,
            super_seed: true,
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

/// A list key of enum values, written as [`string_or_seq`] accepts. A wrong value is
/// serde's "unknown variant" error, which figment completes with the key and source.
fn enum_list<'de, D: Deserializer<'de>, T: DeserializeOwned>(d: D) -> Result<Vec<T>, D::Error> {
    string_or_seq(d)?
        .into_iter()
        .map(|s| T::deserialize(s.into_deserializer()))
        .collect()
}

/// Where configuration comes from besides defaults and environment.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    /// `--profile NAME`: `configs/NAME.toml` (or the copy built into the binary).
    pub profile: Option<String>,
    /// `--config FILE`.
    pub file: Option<PathBuf>,
}

/// What `config show` calls the flag layer, and the name figment gives it in errors
/// ("for key `want` in command line").
const COMMAND_LINE: &str = "command line";

fn is_default<T: Default + PartialEq>(t: &T) -> bool {
    *t == T::default()
}

/// The keys the command line set: the top configuration layer. Field names are config
/// keys; an unset field leaves the layers below alone. Only keys some flag sets are here:
/// give a new flag its field rather than a hand-built map.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Overrides {
    /// `name`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `data_dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `transport`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transport: Option<TransportKind>,
    /// `listen`; empty: not set.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub listen: Vec<String>,
    /// `peers`; empty: not set.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub peers: Vec<String>,
    /// `default_video` (checked as a video id at load).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub default_video: Option<String>,
    /// `console`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub console: Option<bool>,
    /// `limits.*`.
    #[serde(skip_serializing_if = "is_default")]
    pub limits: LimitsOverrides,
    /// `http_listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http_listen: Option<String>,
    /// `admin_listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub admin_listen: Option<String>,
    /// `roles`; empty: not set.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<Role>,
    /// `want`: `all`, `none` or video ids, comma separated (checked at load).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub want: Option<String>,
    /// `advertise`; empty: not set.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub advertise: Vec<String>,
    /// `pubsub`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pubsub: Option<PubSubKind>,
    /// `manager.*`.
    #[serde(skip_serializing_if = "is_default")]
    pub manager: ManagerOverrides,
    /// `broker.*`.
    #[serde(skip_serializing_if = "is_default")]
    pub broker: BrokerOverrides,
    /// `nats.*`.
    #[serde(skip_serializing_if = "is_default")]
    pub nats: NatsOverrides,
}

/// `limits.*` keys the command line set.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct LimitsOverrides {
    /// `limits.max_upload_rate`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_upload_rate: Option<String>,
    /// `limits.max_disk`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_disk: Option<String>,
    /// `limits.max_connections`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_connections: Option<usize>,
    /// `limits.concurrency`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<usize>,
}

/// `manager.*` keys the command line set.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct ManagerOverrides {
    /// `manager.url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    /// `manager.token_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// `manager.listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `manager.data_dir`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
    /// `manager.ttl_secs`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<f64>,
    /// `manager.registry`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub registry: Option<fragnet_manager::ManagerBackend>,
}

/// `broker.*` keys the command line set.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct BrokerOverrides {
    /// `broker.addr`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    /// `broker.token_file`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub token_file: Option<PathBuf>,
    /// `broker.listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub listen: Option<String>,
    /// `broker.metrics_listen`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metrics_listen: Option<String>,
}

/// `nats.*` keys the command line set.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct NatsOverrides {
    /// `nats.url`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
}

/// The flag layer is figment's `Serialized` provider under its own name, so errors and
/// `config show` say "command line" rather than a Rust type name.
impl Provider for Overrides {
    fn metadata(&self) -> Metadata {
        Metadata::named(COMMAND_LINE)
    }

    fn data(&self) -> std::result::Result<Map<Profile, Dict>, figment::Error> {
        Serialized::defaults(self).data()
    }
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
    (
        "manager-nats",
        include_str!("../../../configs/manager-nats.toml"),
    ),
    ("peer-nats", include_str!("../../../configs/peer-nats.toml")),
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
fn figment(src: &Sources, flags: &Overrides, env: Env) -> Result<(Figment, Option<String>)> {
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
    Ok((fig.merge(env).merge(flags.clone()), profile_shown))
}

/// The environment layer: `FRAGNET_*`, `__` nests.
fn env() -> Env {
    Env::prefixed("FRAGNET_").split("__")
}

/// Loads the configuration: defaults < profile < `file` < environment < `flags` (the
/// keys the command line set).
pub fn load(src: &Sources, flags: &Overrides) -> Result<Config> {
    load_with_env(src, flags, env())
}

fn load_with_env(src: &Sources, flags: &Overrides, env: Env) -> Result<Config> {
    extract(src, flags, env).map(|(cfg, _, _)| cfg)
}

/// The figment, the checked configuration it gives, and the profile's shown name.
fn extract(
    src: &Sources,
    flags: &Overrides,
    env: Env,
) -> Result<(Config, Figment, Option<String>)> {
    let (fig, profile_shown) = figment(src, flags, env)?;
    let cfg: Config = fig
        .extract()
        .map_err(|e| anyhow::anyhow!(describe(e, profile_shown.as_deref())))?;
    cfg.validate()?;
    Ok((cfg, fig, profile_shown))
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
pub fn show(src: &Sources, flags: &Overrides) -> Result<String> {
    show_with_env(src, flags, env())
}

fn show_with_env(src: &Sources, flags: &Overrides, env: Env) -> Result<String> {
    let (cfg, fig, profile_shown) = extract(src, flags, env)?;
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
                (_, n) if n == COMMAND_LINE => COMMAND_LINE.to_string(),
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
    /// Checks what the types cannot: addresses, sizes, ranges. The enum keys
    /// (`transport`, `registry`, `pubsub`, `roles`) were checked by deserializing them.
    fn validate(&self) -> Result<()> {
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
        if let Some(h) = &self.admin_listen {
            http_addr(h).with_context(|| format!("in admin_listen = {h:?}"))?;
        }
        if let Some(h) = &self.broker.metrics_listen {
            http_addr(h).with_context(|| format!("in broker.metrics_listen = {h:?}"))?;
        }
        self.max_disk()?;
        fragnet_core::ratelimit::parse_bytes(&self.library.max_upload)
            .map_err(|e| anyhow::anyhow!("library.max_upload: {e}"))?;
        if self.library.fragments == 0
            || self.library.fragments > fragnet_core::manifest::MAX_FRAGMENTS
        {
            bail!(
                "library.fragments must be between 1 and {}",
                fragnet_core::manifest::MAX_FRAGMENTS
            );
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
        fragnet_core::pubsub::check_event_topic(&self.topic)
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
        Ok(PeerAddr::parse(s, self.transport.as_str())?)
    }

    /// The token for the manager (`manager.token` or `manager.token_file`), if any.
    pub fn manager_token(&self) -> Result<Option<String>> {
        let m = &self.manager;
        resolve_secret("manager", m.token.as_deref(), m.token_file.as_deref())
    }

    /// The token for the broker (`broker.token` or `broker.token_file`), if any.
    pub fn broker_token(&self) -> Result<Option<String>> {
        let b = &self.broker;
        resolve_secret("broker", b.token.as_deref(), b.token_file.as_deref())
    }

    /// How to reach NATS (`nats.url` and its token); `why` names what needs it.
    pub fn nats_config(&self, why: &str) -> Result<fragnet_broker::NatsConfig> {
        let url =
            self.nats.url.clone().ok_or_else(|| {
                anyhow::anyhow!("{why} needs nats.url (e.g. nats://127.0.0.1:4222)")
            })?;
        let mut nc = fragnet_broker::NatsConfig::new(url);
        if let Some(t) = self.nats_token()? {
            nc.token = Some(
                fragnet_broker::AuthToken::new(&t)
                    .map_err(|e| anyhow::anyhow!("nats token: {e}"))?,
            );
        }
        Ok(nc)
    }

    /// The token for NATS (`nats.token` or `nats.token_file`), if any.
    pub fn nats_token(&self) -> Result<Option<String>> {
        let n = &self.nats;
        resolve_secret("nats", n.token.as_deref(), n.token_file.as_deref())
    }

    /// Listen addresses, parsed.
    pub fn listen_addrs(&self) -> Result<Vec<PeerAddr>> {
        self.listen.iter().map(|s| self.addr(s)).collect()
    }

    /// Peer addresses, parsed.
    pub fn peer_addrs(&self) -> Result<Vec<PeerAddr>> {
        self.peers.iter().map(|s| self.addr(s)).collect()
    }

    /// The disk quota in bytes (`limits.max_disk`), if set.
    pub fn max_disk(&self) -> Result<Option<u64>> {
        self.limits
            .max_disk
            .as_deref()
            .map(|d| {
                fragnet_core::ratelimit::parse_bytes(d)
                    .map_err(|e| anyhow::anyhow!("limits.max_disk: {e}"))
            })
            .transpose()
    }

    /// The token library writes need (`library.token` or `library.token_file`), if any.
    pub fn library_token(&self) -> Result<Option<String>> {
        let l = &self.library;
        resolve_secret("library", l.token.as_deref(), l.token_file.as_deref())
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
            library_token: self.library_token()?,
            max_upload: fragnet_core::ratelimit::parse_bytes(&self.library.max_upload)
                .map_err(|e| anyhow::anyhow!("library.max_upload: {e}"))?,
            fragments: self.library.fragments,
            share_manager: crate::share::manager_url(self).map(str::to_string),
            ..fragnet_http::HttpConfig::default()
        }))
    }

    /// The admin listener's address, when `admin_listen` is set.
    pub fn admin_addr(&self) -> Result<Option<std::net::SocketAddr>> {
        let Some(h) = &self.admin_listen else {
            return Ok(None);
        };
        Ok(Some(
            http_addr(h).with_context(|| format!("in admin_listen = {h:?}"))?,
        ))
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

/// The secret of a `section.*`: `token` as given, or the first line of `token_file`,
/// trimmed; both set, or an empty one, is an error naming the keys.
fn resolve_secret(
    section: &str,
    inline: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<String>> {
    fragnet_core::secret::resolve(&format!("{section}.token"), inline, file)
        .map_err(|e| anyhow::anyhow!("{e}"))
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

    /// The environment layer for every test but the one about the environment:
    /// figment::Jail sets FRAGNET_* variables for the whole process while it runs, and
    /// tests run in parallel, so a test reading the real `FRAGNET_*` would see them.
    fn isolated_env() -> Env {
        Env::prefixed("FRAGNET_CONFIG_TEST_UNSET_").split("__")
    }

    /// Loads with `flags` and no environment.
    fn load(src: &Sources, flags: &Overrides) -> Result<Config> {
        load_with_env(src, flags, isolated_env())
    }

    /// A `--config` file holding `toml`, in `dir`.
    fn file(dir: &tempfile::TempDir, toml: &str) -> Sources {
        let path = dir.path().join("c.toml");
        std::fs::write(&path, toml).unwrap();
        Sources {
            file: Some(path),
            ..Sources::default()
        }
    }

    fn none() -> Sources {
        Sources::default()
    }

    #[test]
    fn http_is_off_by_default_and_takes_a_port_or_an_address() {
        let cfg = load(&none(), &Overrides::default()).unwrap();
        assert!(cfg.http().unwrap().is_none());
        let dir = tempfile::tempdir().unwrap();
        let cfg = load(
            &file(&dir, "[stream]\nlookahead = \"1MiB\"\n"),
            &Overrides {
                http_listen: Some("127.0.0.1:0".into()),
                ..Overrides::default()
            },
        )
        .unwrap();
        let h = cfg.http().unwrap().unwrap();
        assert_eq!(h.listen.to_string(), "127.0.0.1:0");
        assert_eq!(h.lookahead, 1 << 20);
        assert_eq!(h.max_responses, 64);
        assert_eq!(http_addr("8080").unwrap().to_string(), "0.0.0.0:8080");
        assert_eq!(http_addr("[::1]:9").unwrap().to_string(), "[::1]:9");
        let e = load(
            &none(),
            &Overrides {
                http_listen: Some("nowhere:port".into()),
                ..Overrides::default()
            },
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("http_listen"), "{e:#}");
        let e = load(
            &file(&dir, "[stream]\nlookahead = \"lots\"\n"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("stream.lookahead"), "{e}");
        let e = load(
            &file(&dir, "[stream]\nmax_responses = 0\n"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("stream.max_responses"), "{e}");
    }

    /// The only test that reads the real environment (inside the Jail).
    #[test]
    #[allow(clippy::result_large_err)] // figment::Jail's closure returns figment's own error type
    fn environment_sits_between_file_and_flags() {
        figment::Jail::expect_with(|jail| {
            jail.create_file("c.toml", "transport = \"tcp\"\nlisten = [7001]\n")?;
            let c_toml = Sources {
                file: Some("c.toml".into()),
                ..Sources::default()
            };
            jail.set_env("FRAGNET_LISTEN", "7002");
            jail.set_env("FRAGNET_LIMITS__CONCURRENCY", "4");
            jail.set_env("FRAGNET_MANAGER__URL", "http://from-env:5001");
            let cfg = load_with_env(&c_toml, &Overrides::default(), env()).unwrap();
            assert_eq!(cfg.listen, vec!["7002"], "env beats the file");
            assert_eq!(cfg.limits.concurrency, 4, "__ nests");
            assert_eq!(cfg.manager.url.as_deref(), Some("http://from-env:5001"));
            let flags = Overrides {
                listen: vec!["7003".into()],
                limits: LimitsOverrides {
                    concurrency: Some(5),
                    ..LimitsOverrides::default()
                },
                manager: ManagerOverrides {
                    url: Some("http://from-flag:5001".into()),
                    ..ManagerOverrides::default()
                },
                ..Overrides::default()
            };
            let cfg = load_with_env(&c_toml, &flags, env()).unwrap();
            assert_eq!(cfg.listen, vec!["7003"], "flags beat env");
            assert_eq!(cfg.limits.concurrency, 5, "a nested flag beats its env var");
            assert_eq!(cfg.manager.url.as_deref(), Some("http://from-flag:5001"));
            jail.set_env("FRAGNET_LISTEN", "tcp://127.0.0.1:1, 2");
            jail.set_env("FRAGNET_ROLES", "peer,manager");
            jail.set_env("FRAGNET_TRANSPORT", "quic");
            jail.set_env("FRAGNET_PUBSUB", "nats");
            let cfg = load_with_env(&none(), &Overrides::default(), env()).unwrap();
            assert_eq!(cfg.listen, vec!["tcp://127.0.0.1:1", "2"]);
            assert_eq!(cfg.roles, vec![Role::Peer, Role::Manager]);
            assert_eq!(cfg.transport, TransportKind::Quic);
            assert_eq!(cfg.pubsub, PubSubKind::Nats);
            jail.set_env("FRAGNET_ROLES", "peer,seeder");
            let e = load_with_env(&none(), &Overrides::default(), env())
                .unwrap_err()
                .to_string();
            // figment names an environment key by its variable, without the prefix.
            assert!(
                e.contains(
                    "unknown variant: found `seeder`, expected `one of `peer`, `manager`, `broker``"
                ) && e.contains("for key \"ROLES\" in `FRAGNET_` environment variable(s)"),
                "{e}"
            );
            jail.set_env("FRAGNET_ROLES", "peer");
            jail.set_env("FRAGNET_NOPE", "1");
            let e = load_with_env(&none(), &Overrides::default(), env())
                .unwrap_err()
                .to_string();
            assert!(e.contains("nope") || e.contains("NOPE"), "{e}");

            // `fragnet run`'s own flags: flag > env > file, key by key.
            jail.clear_env();
            jail.create_file(
                "run.toml",
                "listen = [7101]\nhttp_listen = \"127.0.0.1:8101\"\n[manager]\nurl = \"http://from-file:1\"\n[broker]\naddr = \"from-file:1\"\n",
            )?;
            let run_toml = Sources {
                file: Some("run.toml".into()),
                ..Sources::default()
            };
            let run_flags = |args: &[&str]| {
                use clap::Parser;
                let cli = crate::cli::Cli::try_parse_from(
                    ["fragnet", "run"].iter().chain(args.iter()).copied(),
                )
                .unwrap();
                match cli.command {
                    crate::cli::Command::Run(a) => a.overrides(),
                    _ => unreachable!(),
                }
            };
            let cfg = load_with_env(&run_toml, &run_flags(&[]), env()).unwrap();
            assert_eq!(cfg.manager.url.as_deref(), Some("http://from-file:1"));
            assert_eq!(cfg.broker.addr.as_deref(), Some("from-file:1"));
            assert_eq!(cfg.http_listen.as_deref(), Some("127.0.0.1:8101"));
            jail.set_env("FRAGNET_LISTEN", "7102");
            jail.set_env("FRAGNET_MANAGER__URL", "http://from-env:2");
            jail.set_env("FRAGNET_BROKER__ADDR", "from-env:2");
            jail.set_env("FRAGNET_HTTP_LISTEN", "127.0.0.1:8102");
            let cfg = load_with_env(&run_toml, &run_flags(&[]), env()).unwrap();
            assert_eq!(cfg.listen, vec!["7102"], "env beats the file");
            assert_eq!(cfg.manager.url.as_deref(), Some("http://from-env:2"));
            assert_eq!(cfg.broker.addr.as_deref(), Some("from-env:2"));
            assert_eq!(cfg.http_listen.as_deref(), Some("127.0.0.1:8102"));
            let cfg = load_with_env(
                &run_toml,
                &run_flags(&[
                    "--listen",
                    "7103",
                    "--manager",
                    "http://from-flag:3",
                    "--broker",
                    "from-flag:3",
                    "--http",
                    "127.0.0.1:8103",
                ]),
                env(),
            )
            .unwrap();
            assert_eq!(cfg.listen, vec!["7103"], "flags beat env");
            assert_eq!(cfg.manager.url.as_deref(), Some("http://from-flag:3"));
            assert_eq!(cfg.broker.addr.as_deref(), Some("from-flag:3"));
            assert_eq!(cfg.http_listen.as_deref(), Some("127.0.0.1:8103"));
            Ok(())
        });
    }

    #[test]
    fn layers_in_order_defaults_file_env_flags() {
        let dir = tempfile::tempdir().unwrap();
        let src = file(
            &dir,
            "name = \"from-file\"\nlisten = [7001]\n[limits]\nconcurrency = 3\nper_peer = 2\n",
        );
        let base = load(&none(), &Overrides::default()).unwrap();
        assert_eq!(base.listen, vec!["6001"]);
        assert_eq!(base.limits.concurrency, 8);
        assert_eq!(base.roles, vec![Role::Peer]);
        let from_file = load(&src, &Overrides::default()).unwrap();
        assert_eq!(from_file.name.as_deref(), Some("from-file"));
        assert_eq!(from_file.listen, vec!["7001"]);
        assert_eq!(from_file.limits.concurrency, 3);
        let flags = load(
            &src,
            &Overrides {
                name: Some("from-flag".into()),
                limits: LimitsOverrides {
                    concurrency: Some(5),
                    ..LimitsOverrides::default()
                },
                ..Overrides::default()
            },
        )
        .unwrap();
        assert_eq!(flags.name.as_deref(), Some("from-flag"));
        assert_eq!(flags.limits.concurrency, 5);
        assert_eq!(
            flags.limits.per_peer, 2,
            "a flag on one nested key keeps the file's siblings"
        );
        assert_eq!(
            flags.listen,
            vec!["7001"],
            "an unset flag keeps the file's value"
        );
    }

    #[test]
    fn the_topic_leaves_room_for_per_video_subjects_and_listeners_are_checked() {
        let dir = tempfile::tempdir().unwrap();
        let long = "t".repeat(fragnet_core::pubsub::MAX_EVENT_TOPIC_LEN + 1);
        let e = format!(
            "{:#}",
            load(
                &file(&dir, &format!("topic = \"{long}\"\n")),
                &Overrides::default()
            )
            .unwrap_err()
        );
        assert!(
            e.contains("topic") && e.contains("per-video subject"),
            "{e}"
        );
        let ok = "t".repeat(fragnet_core::pubsub::MAX_EVENT_TOPIC_LEN);
        load(
            &file(&dir, &format!("topic = \"{ok}\"\n")),
            &Overrides::default(),
        )
        .unwrap();
        for (toml, key) in [
            ("admin_listen = \"nowhere:x\"\n", "admin_listen"),
            (
                "[broker]\nmetrics_listen = \"nowhere:x\"\n",
                "broker.metrics_listen",
            ),
        ] {
            let e = format!(
                "{:#}",
                load(&file(&dir, toml), &Overrides::default()).unwrap_err()
            );
            assert!(e.contains(key), "{e}");
        }
    }

    /// Every field of `Overrides` is a config key: a misspelt one would be an unknown
    /// key here (deny_unknown_fields), and a value that did not land would differ.
    #[test]
    fn every_override_lands_on_its_key() {
        let dir = tempfile::tempdir().unwrap();
        let video = "11".repeat(32);
        let all = Overrides {
            name: Some("n".into()),
            data_dir: Some(dir.path().join("d")),
            transport: Some(TransportKind::Quic),
            listen: vec!["7001".into()],
            peers: vec!["tcp://127.0.0.1:7002".into()],
            default_video: Some(video.clone()),
            console: Some(false),
            limits: LimitsOverrides {
                max_upload_rate: Some("1MB".into()),
                max_disk: Some("500MiB".into()),
                max_connections: Some(3),
                concurrency: Some(2),
            },
            http_listen: Some("127.0.0.1:0".into()),
            admin_listen: Some("127.0.0.1:9601".into()),
            roles: vec![Role::Broker, Role::Manager],
            want: Some("all".into()),
            advertise: vec!["peer1".into()],
            pubsub: Some(PubSubKind::Local),
            manager: ManagerOverrides {
                url: Some("http://m:1".into()),
                token_file: Some(dir.path().join("mt")),
                listen: Some("127.0.0.1:0".into()),
                data_dir: Some(dir.path().join("m")),
                ttl_secs: Some(2.5),
                registry: Some(fragnet_manager::ManagerBackend::Nats),
            },
            broker: BrokerOverrides {
                addr: Some("b:1".into()),
                token_file: Some(dir.path().join("bt")),
                listen: Some("127.0.0.1:1".into()),
                metrics_listen: Some("127.0.0.1:9555".into()),
            },
            nats: NatsOverrides {
                url: Some("nats://n:1".into()),
            },
        };
        let c = load(&none(), &all).unwrap();
        assert_eq!(c.name.as_deref(), Some("n"));
        assert_eq!(c.data_dir, Some(dir.path().join("d")));
        assert_eq!(c.transport, TransportKind::Quic);
        assert_eq!(c.listen, vec!["7001"]);
        assert_eq!(c.peers, vec!["tcp://127.0.0.1:7002"]);
        assert_eq!(c.default_video, Some(video.parse().unwrap()));
        assert!(!c.console);
        assert_eq!(c.limits.max_upload_rate.as_deref(), Some("1MB"));
        assert_eq!(c.limits.max_connections, 3);
        assert_eq!(c.limits.concurrency, 2);
        assert_eq!(c.max_disk().unwrap(), Some(500 * 1024 * 1024));
        assert_eq!(c.http_listen.as_deref(), Some("127.0.0.1:0"));
        assert_eq!(c.roles, vec![Role::Broker, Role::Manager]);
        assert_eq!(c.want, Want::All);
        assert_eq!(c.advertise, vec!["peer1"]);
        assert_eq!(c.pubsub, PubSubKind::Local);
        assert_eq!(c.manager.url.as_deref(), Some("http://m:1"));
        assert_eq!(c.manager.token_file, Some(dir.path().join("mt")));
        assert_eq!(c.manager.listen, "127.0.0.1:0");
        assert_eq!(c.manager.data_dir, dir.path().join("m"));
        assert_eq!(c.manager.ttl_secs, 2.5);
        assert_eq!(c.manager.registry, fragnet_manager::ManagerBackend::Nats);
        assert_eq!(c.broker.addr.as_deref(), Some("b:1"));
        assert_eq!(c.broker.token_file, Some(dir.path().join("bt")));
        assert_eq!(c.broker.listen, "127.0.0.1:1");
        assert_eq!(c.broker.metrics_listen.as_deref(), Some("127.0.0.1:9555"));
        assert_eq!(c.admin_listen.as_deref(), Some("127.0.0.1:9601"));
        assert_eq!(c.nats.url.as_deref(), Some("nats://n:1"));
    }

    #[test]
    fn show_names_the_command_line_for_flag_set_keys() {
        let dir = tempfile::tempdir().unwrap();
        let src = file(&dir, "name = \"from-file\"\n[limits]\nper_peer = 2\n");
        let out = show_with_env(
            &src,
            &Overrides {
                transport: Some(TransportKind::Quic),
                limits: LimitsOverrides {
                    concurrency: Some(5),
                    ..LimitsOverrides::default()
                },
                ..Overrides::default()
            },
            isolated_env(),
        )
        .unwrap();
        let from = |key: &str| {
            let line = out
                .lines()
                .find(|l| l.starts_with(&format!("{key} = ")))
                .unwrap_or_else(|| panic!("no {key} in\n{out}"));
            line.rsplit_once("# ").unwrap().1.to_string()
        };
        assert_eq!(from("transport"), "command line", "{out}");
        assert_eq!(from("limits.concurrency"), "command line", "{out}");
        assert_eq!(
            from("limits.per_peer"),
            src.file.unwrap().display().to_string()
        );
        assert_eq!(from("limits.max_connections"), "default", "{out}");
        assert!(out.contains("transport = \"quic\""), "{out}");
        assert!(out.contains("roles = [\"peer\"]"), "{out}");
    }

    #[test]
    fn unknown_keys_are_errors_naming_the_key_and_file() {
        let dir = tempfile::tempdir().unwrap();
        let e = load(&file(&dir, "transprot = \"tcp\"\n"), &Overrides::default())
            .unwrap_err()
            .to_string();
        assert!(e.contains("transprot"), "{e}");
        assert!(e.contains("c.toml"), "{e}");
        let e = load(
            &file(&dir, "[limits]\nmax_speed = 1\n"),
            &Overrides::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_speed"), "{e}");
    }

    /// A value outside an enum key's choices names the key, the value, every allowed
    /// value and the file, whether the key is a string or (roles) a list or a
    /// comma-separated string. The text is figment's: it quotes the expected values
    /// twice and prefixes the key with figment's profile, `default`.
    #[test]
    fn wrong_choices_name_key_value_and_allowed_values() {
        let dir = tempfile::tempdir().unwrap();
        for (toml, key, value, allowed) in [
            (
                "transport = \"carrier-pigeon\"",
                "transport",
                "carrier-pigeon",
                "`tcp` or `quic`",
            ),
            (
                "registry = \"etcd\"",
                "registry",
                "etcd",
                "one of `http`, `memory`, `none`, `nats`",
            ),
            (
                "pubsub = \"kafka\"",
                "pubsub",
                "kafka",
                "one of `broker`, `nats`, `local`, `none`",
            ),
            (
                "roles = [\"peer\", \"seeder\"]",
                "roles",
                "seeder",
                "one of `peer`, `manager`, `broker`",
            ),
            (
                "roles = \"manager, tracker\"",
                "roles",
                "tracker",
                "one of `peer`, `manager`, `broker`",
            ),
        ] {
            let e = load(&file(&dir, toml), &Overrides::default())
                .unwrap_err()
                .to_string();
            assert!(
                e.contains(&format!(
                    "unknown variant: found `{value}`, expected `{allowed}` for key \"default.{key}\" in "
                )) && e.contains("c.toml TOML file"),
                "{toml}: {e}"
            );
        }
        let c = load(
            &file(&dir, "roles = \"manager, broker\"\nregistry = \"memory\""),
            &Overrides::default(),
        )
        .unwrap();
        assert_eq!(c.roles, vec![Role::Manager, Role::Broker]);
        assert_eq!(c.registry, RegistryKind::Memory);
    }

    #[test]
    fn bad_values_are_clear() {
        let e = load(
            &none(),
            &Overrides {
                listen: vec!["nonsense".into()],
                ..Overrides::default()
            },
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("nonsense"), "{e:#}");
        let e = load(
            &none(),
            &Overrides {
                limits: LimitsOverrides {
                    max_upload_rate: Some("fast".into()),
                    ..LimitsOverrides::default()
                },
                ..Overrides::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("max_upload_rate"), "{e}");
        let e = load(
            &none(),
            &Overrides {
                limits: LimitsOverrides {
                    max_disk: Some("20 parsecs".into()),
                    ..LimitsOverrides::default()
                },
                ..Overrides::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("limits.max_disk"), "{e}");
        let e = load(
            &none(),
            &Overrides {
                want: Some("everything".into()),
                ..Overrides::default()
            },
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("for key \"default.want\" in command line"),
            "a bad flag value says it came from the command line: {e}"
        );
        assert!(
            load(
                &Sources {
                    file: Some("/nonexistent/x.toml".into()),
                    ..Sources::default()
                },
                &Overrides::default(),
            )
            .is_err()
        );
    }

    #[test]
    fn schemes_are_the_transport_kinds() {
        use clap::ValueEnum;
        let mut kinds: Vec<&str> = TransportKind::value_variants()
            .iter()
            .map(|t| t.as_str())
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let id = std::sync::Arc::new(
            fragnet_core::identity::Identity::load_or_create(dir.path()).unwrap(),
        );
        let _ = rustls::crypto::ring::default_provider().install_default();
        let mut built = crate::assemble::transports(&id, &Config::default())
            .unwrap()
            .schemes();
        kinds.sort();
        built.sort();
        assert_eq!(kinds, built, "every transport kind is built, and no other");
        for t in TransportKind::value_variants() {
            assert_eq!(t.to_possible_value().unwrap().get_name(), t.as_str());
            assert_eq!(serde_json::to_value(t).unwrap(), t.as_str());
        }
    }

    #[test]
    fn secrets_come_inline_or_from_the_first_line_of_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("token");
        std::fs::write(&f, "  s3cret  \nsecond line\n").unwrap();
        assert_eq!(resolve_secret("broker", None, None).unwrap(), None);
        assert_eq!(
            resolve_secret("broker", Some(" inline\n"), None).unwrap(),
            Some("inline".into())
        );
        assert_eq!(
            resolve_secret("broker", None, Some(&f)).unwrap(),
            Some("s3cret".into())
        );
        let e = resolve_secret("nats", Some("x"), Some(&f))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("nats.token and nats.token_file") && e.contains("both"),
            "{e}"
        );
        let e = format!(
            "{:#}",
            resolve_secret("manager", None, Some(&dir.path().join("missing"))).unwrap_err()
        );
        assert!(
            e.contains("manager.token_file") && e.contains("missing"),
            "{e}"
        );
        std::fs::write(&f, "\n").unwrap();
        let e = resolve_secret("manager", None, Some(&f))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("manager.token_file") && e.contains("empty"),
            "{e}"
        );
        let e = resolve_secret("manager", Some(" "), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("manager.token is empty"), "{e}");

        // Each section's accessor reads its own keys.
        std::fs::write(&f, "from-file\n").unwrap();
        let mut c = Config::default();
        c.manager.token = Some("m".into());
        c.broker.token_file = Some(f.clone());
        assert_eq!(c.manager_token().unwrap().as_deref(), Some("m"));
        assert_eq!(c.broker_token().unwrap().as_deref(), Some("from-file"));
        assert_eq!(c.nats_token().unwrap(), None);
    }
}
