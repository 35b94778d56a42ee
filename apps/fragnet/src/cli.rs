//! The command line: one subcommand per role. Each subcommand that loads the
//! configuration turns its flags into [`Overrides`], the top configuration layer.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{
    BrokerOverrides, LimitsOverrides, ManagerOverrides, NatsOverrides, Overrides, PubSubKind, Role,
    TransportKind,
};

/// fragnet: peer-to-peer video distribution and streaming.
///
/// A video is split into fragments; nodes exchange verified fragments directly over
/// TCP. Configuration comes from built-in defaults, `--config FILE`, `FRAGNET_*`
/// environment variables (`__` nests: FRAGNET_LIMITS__CONCURRENCY=4) and flags, later
/// winning.
#[derive(Debug, Parser)]
#[command(name = "fragnet", version, propagate_version = true)]
pub struct Cli {
    /// More log output (-v debug, -vv trace). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Less log output (-q warnings only, -qq errors only).
    #[arg(short, long, global = true, action = clap::ArgAction::Count, conflicts_with = "verbose")]
    pub quiet: u8,
    /// A node profile: configs/NAME.toml (e.g. seeder, leecher); see `fragnet config show`.
    #[arg(long, global = true, value_name = "NAME")]
    pub profile: Option<String>,
    /// A TOML configuration file (keys as in README's configuration table); it overrides
    /// the profile.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Split a video into fragments plus a manifest (default: 10 fragments in ./fragments).
    Split(SplitArgs),
    /// Reassemble a video from its fragments and check the whole-file hash.
    Join(JoinArgs),
    /// Run a peer: serve fragments, fetch from other peers, read the console.
    Peer(PeerArgs),
    /// Download a video's missing fragments from peers, in parallel, then reassemble it.
    Fetch(FetchArgs),
    /// Watch a shared video: start a node that fetches it (and shares what it has),
    /// serve the player over HTTP, print its URL, and keep running until Ctrl-C.
    Watch(WatchArgs),
    /// Run the manager: the REST registry of who holds which fragment (Swagger UI at
    /// /apidocs).
    Manager(ManagerArgs),
    /// Run the pub/sub broker (SUB:/PUB: text lines on TCP).
    Broker(BrokerArgs),
    /// Print every message published on a topic: `[fragments] fragment_5.bin`.
    Subscribe(SubscribeArgs),
    /// Publish a message (default topic: fragments); exit 0 only once the broker took it.
    Notify(NotifyArgs),
    /// The whole system in one process, no set-up: a manager, a broker, a seeder and
    /// peers (TCP and QUIC) distributing a video; prints where to look.
    Demo(DemoArgs),
    /// Run every role a profile enables (peer, manager, broker) in one process.
    Run(RunArgs),
    /// Add a video to a running node: upload FILE to its library; the node splits it,
    /// seeds it (registers, announces, publishes events) and pins it. Prints the video
    /// id and the player URL.
    ///
    /// Writes need the node's library token (--token-file, or FRAGNET_LIBRARY__TOKEN),
    /// or, when the node has none, must come from the node's own machine.
    Add(AddArgs),
    /// Remove a video from a running node: withdrawn from the manager and the fragment
    /// topic, then its files deleted.
    Remove(RemoveArgs),
    /// Check that a service answers (exit 0) or not (exit 1): for container healthchecks.
    ///
    /// URL is http://HOST:PORT/PATH (manager, peer HTTP; 2xx is healthy), tcp://HOST:PORT
    /// or quic://HOST:PORT (a peer: protocol hello), or broker://HOST:PORT (PING → PONG).
    Health(HealthArgs),
    /// Inspect the configuration.
    #[command(subcommand)]
    Config(ConfigCommand),
}

/// `fragnet config ...`.
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Print the effective configuration and where each value came from
    /// (default, profile, --config file, FRAGNET_* environment, flags).
    Show,
}

/// `fragnet split`.
#[derive(Debug, Args)]
pub struct SplitArgs {
    /// The video file.
    pub video: PathBuf,
    /// Number of fragments.
    #[arg(long, short = 'n', default_value_t = 10)]
    pub fragments: u64,
    /// Output directory.
    #[arg(long, short, default_value = "fragments")]
    pub out: PathBuf,
    /// Chunk size, the unit of verification and resume (e.g. 1MiB, 256KiB).
    #[arg(long, default_value = "1MiB")]
    pub chunk_size: String,
    /// Replace another video's fragments in the output directory.
    #[arg(long)]
    pub force: bool,
    /// A manager to name in the printed share link (the one the seeding node registers
    /// with), e.g. http://192.0.2.7:5001.
    #[arg(long, value_name = "URL")]
    pub manager: Option<String>,
    /// A node address to name in the printed share link (the node that will seed it),
    /// e.g. quic://<node id>@192.0.2.8:6001 or tcp://192.0.2.8:6001. Repeats.
    #[arg(long, value_name = "ADDR")]
    pub peer: Vec<String>,
}

/// `fragnet join`.
#[derive(Debug, Args)]
pub struct JoinArgs {
    /// A video id or a unique prefix of it (at least 8 hex digits, e.g. 73cdffcc…),
    /// looked up in the node's store, or a directory with manifest.json.
    pub source: String,
    /// The node's data directory, for a video id.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// The reassembled file.
    #[arg(long, short)]
    pub out: PathBuf,
    /// Replace the output file if it exists.
    #[arg(long)]
    pub force: bool,
}

/// Flags shared by roles that run a node.
#[derive(Debug, Args, Default)]
pub struct NodeFlags {
    /// Data directory (store and node key). Default: one per listen port.
    #[arg(long, value_name = "DIR")]
    pub data: Option<PathBuf>,
    /// Transport for bare addresses and listen entries without a scheme.
    #[arg(long)]
    pub transport: Option<TransportKind>,
    /// Display name of this node.
    #[arg(long)]
    pub name: Option<String>,
    /// Upload limit for what this node serves, per second (e.g. 10MB, 512KiB).
    #[arg(long, value_name = "RATE")]
    pub max_upload_rate: Option<String>,
    /// Concurrent connections served.
    #[arg(long, value_name = "N")]
    pub max_connections: Option<usize>,
    /// Chunk requests in flight while fetching.
    #[arg(long, value_name = "N")]
    pub concurrency: Option<usize>,
    /// The most the store may hold (e.g. 20GB, 500MiB); downloads beyond it evict the
    /// least recently watched unpinned videos, or fail.
    #[arg(long, value_name = "SIZE")]
    pub max_disk: Option<String>,
}

/// `fragnet peer`.
#[derive(Debug, Args)]
pub struct PeerArgs {
    /// Listen address: PORT (all interfaces), HOST:PORT, tcp://HOST:PORT or quic://HOST:PORT.
    /// Repeats: a node may listen on both transports.
    #[arg(long, short, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// A peer to fetch from: HOST:PORT or tcp://HOST:PORT. Repeats.
    #[arg(long, short, value_name = "ADDR")]
    pub peer: Vec<String>,
    /// Import a split directory (from `fragnet split`) into the store on start.
    #[arg(long, value_name = "DIR")]
    pub seed: Option<PathBuf>,
    /// With --seed, import only these fragments (e.g. 0-4, or 0,2,5-7).
    #[arg(long, value_name = "LIST", requires = "seed")]
    pub have: Option<String>,
    /// The video a bare fragment name refers to (a video id).
    #[arg(long, value_name = "ID")]
    pub default_video: Option<String>,
    /// Do not read commands from stdin (daemons, containers).
    #[arg(long)]
    pub no_console: bool,
    /// The manager (registry) to register with and find peers through, e.g.
    /// http://localhost:5001.
    #[arg(long, value_name = "URL")]
    pub manager: Option<String>,
    /// The pub/sub broker for fragment events, e.g. localhost:5555.
    #[arg(long, value_name = "ADDR")]
    pub broker: Option<String>,
    /// Videos to fetch on its own as they appear: all, none, or video ids (comma
    /// separated).
    #[arg(long, value_name = "all|ID,...")]
    pub want: Option<String>,
    /// Host (or full addresses) to register instead of the bound ones (containers,
    /// 0.0.0.0). Repeats.
    #[arg(long, value_name = "HOST")]
    pub advertise: Vec<String>,
    /// Serve HTTP (player, stream, health, metrics) on PORT or HOST:PORT; 0 picks a port.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Serve /health and /metrics only (no player) on PORT or HOST:PORT (admin_listen).
    #[arg(long, value_name = "ADDR")]
    pub admin_listen: Option<String>,
    #[command(flatten)]
    pub node: NodeFlags,
}

/// `fragnet fetch`.
#[derive(Debug, Args)]
pub struct FetchArgs {
    /// A share link (fragnet://<video id>?manager=…&peer=…): the video and where to find
    /// it, as `fragnet split`, `peer` and `run` print it.
    #[arg(value_name = "LINK", conflicts_with = "video")]
    pub link: Option<String>,
    /// A peer to fetch from. Repeats; fragments come from all of them in parallel.
    #[arg(
        long,
        short,
        value_name = "ADDR",
        required_unless_present_any = ["manager", "link"]
    )]
    pub peer: Vec<String>,
    /// Find the peers through the manager instead of (or besides) --peer.
    #[arg(long, value_name = "URL")]
    pub manager: Option<String>,
    /// The video id or a unique prefix of it (at least 8 hex digits); default: the only
    /// video the peers offer.
    #[arg(long, value_name = "ID")]
    pub video: Option<String>,
    /// Which fragments (e.g. 0-9, 0,2,5-7); default: all.
    #[arg(long, value_name = "LIST")]
    pub fragments: Option<String>,
    /// Where to write the reassembled video once complete (default: ./<name>).
    #[arg(long, short, value_name = "FILE")]
    pub out: Option<PathBuf>,
    /// Overwrite --out if it exists.
    #[arg(long)]
    pub force: bool,
    #[command(flatten)]
    pub node: NodeFlags,
}

/// `fragnet watch`.
#[derive(Debug, Args)]
pub struct WatchArgs {
    /// The share link (fragnet://<video id>?manager=…&peer=…).
    #[arg(value_name = "LINK")]
    pub link: String,
    /// Serve the player on HOST:PORT (or PORT, all interfaces); 0 picks a free port.
    #[arg(long, value_name = "ADDR", default_value = "127.0.0.1:8080")]
    pub http: String,
    /// Listen for other peers on these addresses (PORT, HOST:PORT, tcp://…, quic://…),
    /// so the swarm can fetch from this node too. Default: a free TCP port on all
    /// interfaces. Repeats.
    #[arg(long, short, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// Open the player in a browser (xdg-open, sensible-browser or $BROWSER), if one is
    /// installed; without it, nothing is opened.
    #[arg(long)]
    pub open: bool,
    #[command(flatten)]
    pub node: NodeFlags,
}

/// `fragnet manager`.
#[derive(Debug, Args)]
pub struct ManagerArgs {
    /// Listen address (default 0.0.0.0:5001, the original's port).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// Where manifests are kept.
    #[arg(long, value_name = "DIR")]
    pub data: Option<std::path::PathBuf>,
    /// File holding the bearer token writes need (or FRAGNET_MANAGER__TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Seconds after its last heartbeat a node expires.
    #[arg(long, value_name = "SECS")]
    pub ttl: Option<f64>,
    /// Where the registry lives: `memory` (this process, manifests in --data) or `nats`
    /// (JetStream key-value at --nats, shared by any number of managers).
    #[arg(long, value_name = "KIND", value_parser = ["memory", "nats"])]
    pub registry: Option<String>,
    /// The NATS server for --registry nats, e.g. nats://127.0.0.1:4222.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
}

/// `fragnet broker`.
#[derive(Debug, Args)]
pub struct BrokerArgs {
    /// Listen address (default 0.0.0.0:5555).
    #[arg(long, value_name = "ADDR")]
    pub listen: Option<String>,
    /// File holding the shared token (or FRAGNET_BROKER__TOKEN); clients then send
    /// AUTH:<token> first.
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<std::path::PathBuf>,
    /// Serve /metrics and /health over HTTP on PORT or HOST:PORT
    /// (broker.metrics_listen; default: off).
    #[arg(long, value_name = "ADDR")]
    pub metrics_listen: Option<String>,
}

/// `fragnet subscribe`.
#[derive(Debug, Args)]
pub struct SubscribeArgs {
    /// The topic (default: the configured topic, `fragments`).
    pub topic: Option<String>,
    /// One JSON object per message instead of `[topic] message`.
    #[arg(long)]
    pub json: bool,
    /// The broker (default localhost:5555).
    #[arg(long, value_name = "ADDR", conflicts_with = "nats")]
    pub broker: Option<String>,
    /// A NATS server instead of the broker.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
}

/// `fragnet notify`.
#[derive(Debug, Args)]
pub struct NotifyArgs {
    /// The message, e.g. fragment_5.bin.
    pub message: String,
    /// The topic (default: the configured topic, `fragments`).
    #[arg(long)]
    pub topic: Option<String>,
    /// The broker (default localhost:5555).
    #[arg(long, value_name = "ADDR", conflicts_with = "nats")]
    pub broker: Option<String>,
    /// A NATS server instead of the broker.
    #[arg(long, value_name = "URL")]
    pub nats: Option<String>,
    /// Seconds to wait for the broker to take the message.
    #[arg(long, default_value_t = 5)]
    pub timeout: u64,
}

/// `fragnet demo`.
#[derive(Debug, Args)]
pub struct DemoArgs {
    /// The video to distribute (default: the built-in 12 s demo clip).
    pub video: Option<PathBuf>,
    /// Peers besides the seeder (TCP and QUIC alternate).
    #[arg(long, default_value_t = 4)]
    pub peers: usize,
    /// Keep everything serving after the distribution (open the player, Swagger UI),
    /// until Ctrl-C, even when stdout is not a terminal. On a terminal this is the
    /// default.
    #[arg(long, conflicts_with = "exit")]
    pub keep_running: bool,
    /// Exit right after the summary, even on a terminal (without a terminal, it does).
    #[arg(long)]
    pub exit: bool,
    /// Work directory (default: a temporary one, removed at the end).
    #[arg(long, value_name = "DIR")]
    pub dir: Option<PathBuf>,
    /// Limit the seeder's upload (e.g. 2MB) to watch fragments spread peer to peer.
    #[arg(long, value_name = "RATE")]
    pub seeder_rate: Option<String>,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout: u64,
}

/// `fragnet run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Roles to run, overriding the profile's `roles`. Repeats, or comma separated.
    #[arg(long = "role", value_name = "ROLE", value_delimiter = ',')]
    pub roles: Vec<Role>,
    /// Listen addresses of the peer role (`listen`). Repeats.
    #[arg(long, short, value_name = "ADDR")]
    pub listen: Vec<String>,
    /// The manager the peer registers with (`manager.url`), e.g. http://localhost:5001.
    #[arg(long, value_name = "URL")]
    pub manager: Option<String>,
    /// The broker the peer publishes and hears fragment events on (`broker.addr`), e.g.
    /// localhost:5555.
    #[arg(long, value_name = "ADDR")]
    pub broker: Option<String>,
    /// The peer's HTTP address (`http_listen`): PORT or HOST:PORT; 0 picks a port.
    #[arg(long, value_name = "ADDR")]
    pub http: Option<String>,
    /// Import a split directory into the peer's store on start.
    #[arg(long, value_name = "DIR")]
    pub seed: Option<std::path::PathBuf>,
    #[command(flatten)]
    pub node: NodeFlags,
}

/// `fragnet add`.
#[derive(Debug, Args)]
pub struct AddArgs {
    /// The video file.
    pub file: PathBuf,
    /// The node's HTTP address, e.g. http://localhost:8001.
    #[arg(long, value_name = "URL")]
    pub to: String,
    /// File holding the node's library token (or FRAGNET_LIBRARY__TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// Fragments to split into (default: the node's library.fragments).
    #[arg(long, short = 'n', value_name = "N")]
    pub fragments: Option<u32>,
    /// Chunk size, e.g. 1MiB, 256KiB (default 1 MiB).
    #[arg(long, value_name = "SIZE")]
    pub chunk_size: Option<String>,
    /// Seconds the whole upload and split may take.
    #[arg(long, default_value_t = 3600, value_name = "SECS")]
    pub timeout: u64,
}

/// `fragnet remove`.
#[derive(Debug, Args)]
pub struct RemoveArgs {
    /// The video id.
    pub video: String,
    /// The node's HTTP address, e.g. http://localhost:8001.
    #[arg(long, value_name = "URL")]
    pub from: String,
    /// File holding the node's library token (or FRAGNET_LIBRARY__TOKEN).
    #[arg(long, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
}

/// `fragnet health`.
#[derive(Debug, Args)]
pub struct HealthArgs {
    /// What to check.
    pub url: String,
    /// Seconds to wait for an answer.
    #[arg(long, default_value_t = 3)]
    pub timeout: u64,
}

impl NodeFlags {
    /// The configuration keys these flags set.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            data_dir: self.data.clone(),
            transport: self.transport,
            name: self.name.clone(),
            limits: LimitsOverrides {
                max_upload_rate: self.max_upload_rate.clone(),
                max_disk: self.max_disk.clone(),
                max_connections: self.max_connections,
                concurrency: self.concurrency,
            },
            ..Overrides::default()
        }
    }
}

impl PeerArgs {
    /// The configuration keys `fragnet peer`'s flags set.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            peers: self.peer.clone(),
            default_video: self.default_video.clone(),
            console: self.no_console.then_some(false),
            http_listen: self.http.clone(),
            admin_listen: self.admin_listen.clone(),
            manager: ManagerOverrides {
                url: self.manager.clone(),
                ..ManagerOverrides::default()
            },
            broker: BrokerOverrides {
                addr: self.broker.clone(),
                ..BrokerOverrides::default()
            },
            want: self.want.clone(),
            advertise: self.advertise.clone(),
            ..self.node.overrides()
        }
    }
}

impl FetchArgs {
    /// The configuration keys `fragnet fetch`'s flags set (without the link's).
    pub fn overrides(&self) -> Overrides {
        Overrides {
            peers: self.peer.clone(),
            manager: ManagerOverrides {
                url: self.manager.clone(),
                ..ManagerOverrides::default()
            },
            ..self.node.overrides()
        }
    }
}

/// The keys a share link sets on top of `flags`: its peers join the ones given, its
/// manager is used unless one was given.
pub fn link_overrides(mut flags: Overrides, link: &fragnet_core::Link) -> Overrides {
    flags.peers.extend(link.peers.iter().map(|p| p.to_string()));
    if flags.manager.url.is_none() {
        flags.manager.url = link.manager.clone();
    }
    flags
}

impl WatchArgs {
    /// The configuration keys `fragnet watch`'s flags set (without the link's).
    pub fn overrides(&self) -> Overrides {
        Overrides {
            listen: self.listen.clone(),
            http_listen: Some(self.http.clone()),
            console: Some(false),
            ..self.node.overrides()
        }
    }
}

impl ManagerArgs {
    /// The `manager.*` keys `fragnet manager`'s flags set.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            manager: ManagerOverrides {
                listen: self.listen.clone(),
                data_dir: self.data.clone(),
                token_file: self.token_file.clone(),
                ttl_secs: self.ttl,
                registry: self.registry.as_deref().map(|r| match r {
                    "nats" => fragnet_manager::ManagerBackend::Nats,
                    _ => fragnet_manager::ManagerBackend::Memory,
                }),
                ..ManagerOverrides::default()
            },
            nats: NatsOverrides {
                url: self.nats.clone(),
            },
            ..Overrides::default()
        }
    }
}

impl BrokerArgs {
    /// The `broker.*` keys `fragnet broker`'s flags set.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            broker: BrokerOverrides {
                listen: self.listen.clone(),
                token_file: self.token_file.clone(),
                metrics_listen: self.metrics_listen.clone(),
                ..BrokerOverrides::default()
            },
            ..Overrides::default()
        }
    }
}

/// `--broker ADDR` or `--nats URL` of the pub/sub clients: the server, and the plugin
/// that talks to it.
fn pubsub_client_overrides(broker: &Option<String>, nats: &Option<String>) -> Overrides {
    let pubsub = match (broker, nats) {
        (Some(_), _) => Some(PubSubKind::Broker),
        (None, Some(_)) => Some(PubSubKind::Nats),
        (None, None) => None,
    };
    Overrides {
        pubsub,
        broker: BrokerOverrides {
            addr: broker.clone(),
            ..BrokerOverrides::default()
        },
        nats: NatsOverrides { url: nats.clone() },
        ..Overrides::default()
    }
}

impl SubscribeArgs {
    /// The configuration keys `fragnet subscribe`'s flags set.
    pub fn overrides(&self) -> Overrides {
        pubsub_client_overrides(&self.broker, &self.nats)
    }
}

impl NotifyArgs {
    /// The configuration keys `fragnet notify`'s flags set.
    pub fn overrides(&self) -> Overrides {
        pubsub_client_overrides(&self.broker, &self.nats)
    }
}

impl RunArgs {
    /// The configuration keys `fragnet run`'s flags set; `run` never reads a console.
    pub fn overrides(&self) -> Overrides {
        Overrides {
            roles: self.roles.clone(),
            listen: self.listen.clone(),
            http_listen: self.http.clone(),
            manager: ManagerOverrides {
                url: self.manager.clone(),
                ..ManagerOverrides::default()
            },
            broker: BrokerOverrides {
                addr: self.broker.clone(),
                ..BrokerOverrides::default()
            },
            console: Some(false),
            ..self.node.overrides()
        }
    }
}

/// Parses `0-4`, `5`, `0,2,5-7` into a sorted list of indices.
pub fn parse_fragment_list(s: &str) -> Result<Vec<u32>, String> {
    let mut out = std::collections::BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let num = |x: &str| {
            x.trim()
                .parse::<u32>()
                .map_err(|_| format!("{x:?} in {s:?} is not a fragment index"))
        };
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (num(a)?, num(b)?);
                if a > b || b - a > 100_000 {
                    return Err(format!("bad range {part:?}"));
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(num(part)?);
            }
        }
    }
    if out.is_empty() {
        return Err(format!("{s:?} names no fragments"));
    }
    Ok(out.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragment_lists() {
        assert_eq!(parse_fragment_list("0-4").unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(parse_fragment_list("5").unwrap(), vec![5]);
        assert_eq!(
            parse_fragment_list("0,2,5-7,2").unwrap(),
            vec![0, 2, 5, 6, 7]
        );
        assert!(parse_fragment_list("4-1").is_err());
        assert!(parse_fragment_list("x").is_err());
        assert!(parse_fragment_list("").is_err());
        assert!(parse_fragment_list("-1").is_err());
    }

    fn overrides(args: &[&str]) -> Overrides {
        let cli =
            Cli::try_parse_from(std::iter::once("fragnet").chain(args.iter().copied())).unwrap();
        match cli.command {
            Command::Peer(a) => a.overrides(),
            Command::Fetch(a) => a.overrides(),
            Command::Manager(a) => a.overrides(),
            Command::Broker(a) => a.overrides(),
            Command::Subscribe(a) => a.overrides(),
            Command::Notify(a) => a.overrides(),
            Command::Run(a) => a.overrides(),
            Command::Watch(a) => a.overrides(),
            other => panic!("{other:?} sets no configuration"),
        }
    }

    #[test]
    fn flags_become_typed_overrides() {
        let o = overrides(&[
            "run",
            "--role",
            "peer,manager",
            "--role",
            "broker",
            "--transport",
            "quic",
            "--concurrency",
            "3",
        ]);
        assert_eq!(o.roles, vec![Role::Peer, Role::Manager, Role::Broker]);
        assert_eq!(o.transport, Some(TransportKind::Quic));
        assert_eq!(o.limits.concurrency, Some(3));
        assert_eq!(o.console, Some(false), "run never reads a console");
        let e = Cli::try_parse_from(["fragnet", "run", "--role", "seeder"]).unwrap_err();
        assert!(e.to_string().contains("peer, manager, broker"), "{e}");

        let o = overrides(&["peer", "--manager", "http://m:1", "-l", "7001"]);
        assert_eq!(o.manager.url.as_deref(), Some("http://m:1"));
        assert_eq!(o.listen, vec!["7001"]);
        assert_eq!(
            o.console, None,
            "a console flag not given leaves the key alone"
        );
        let o = overrides(&["manager", "--ttl", "2.5", "--listen", "127.0.0.1:0"]);
        assert_eq!(o.manager.ttl_secs, Some(2.5));
        assert_eq!(o.manager.listen.as_deref(), Some("127.0.0.1:0"));
        let o = overrides(&["notify", "x", "--nats", "nats://n:1"]);
        assert_eq!(o.pubsub, Some(PubSubKind::Nats));
        assert_eq!(o.nats.url.as_deref(), Some("nats://n:1"));
        let o = overrides(&["subscribe", "--broker", "b:1"]);
        assert_eq!(o.pubsub, Some(PubSubKind::Broker));
        assert_eq!(o.broker.addr.as_deref(), Some("b:1"));
        assert_eq!(overrides(&["subscribe"]), Overrides::default());
        let o = overrides(&["fetch", "--manager", "http://m:1"]);
        assert!(
            o.peers.is_empty(),
            "no --peer leaves `peers` to the layers below"
        );
    }

    #[test]
    fn cli_is_well_formed() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
