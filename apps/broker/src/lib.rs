//! fragnet-broker: fragnet's pub/sub broker server and its pub/sub clients.
//!
//! - [`server`]: the broker (`fragnet broker`): TCP, the text-line protocol of [`wire`],
//!   bounded per-subscriber queues, slow consumers cut off, counters, optional token.
//!   [`server::spawn`] returns a [`BrokerHandle`].
//! - [`client`]: [`BrokerPubSub`], the [`PubSub`](fragnet_core::PubSub) plugin `broker`:
//!   publish waits for the broker's `PONG`, subscriptions reconnect and re-subscribe.
//! - [`nats`]: [`NatsPubSub`], the plugin `nats`, for a real NATS server.
//! - [`nats_registry`]: [`NatsRegistry`], the registry plugin `nats` (JetStream
//!   key-value), which the manager can also serve from as a stateless replica.
//! - [`commands`]: what `fragnet subscribe` and `fragnet notify` do, over any plugin.
//! - [`token`]: the shared secret, from the environment or a file.
//!
//! The in-process plugin `local` and the trait itself live in `fragnet_core::pubsub`.

pub mod client;
pub mod commands;
pub mod nats;
pub mod nats_registry;
pub mod server;
pub mod token;
pub mod wire;

pub use client::{BrokerClientConfig, BrokerPubSub};
pub use commands::{OutputFormat, PubSubKind, notify, subscribe};
pub use nats::{NatsConfig, NatsPubSub};
pub use nats_registry::{NatsRegistry, NatsRegistryConfig};
pub use server::{BrokerCollector, BrokerConfig, BrokerHandle, BrokerLimits, BrokerStats, spawn};
pub use token::AuthToken;

use fragnet_core::PubSubError;

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// A setting is invalid; the message names it.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The listen address could not be bound.
    #[error("cannot listen on {addr}: {source}{}", bind_hint(source))]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The token is missing, unreadable or malformed.
    #[error("{0}")]
    Token(String),
    /// A pub/sub operation failed.
    #[error(transparent)]
    PubSub(#[from] PubSubError),
    /// Writing the output (stdout) failed.
    #[error("cannot write the output: {0}")]
    Output(#[source] std::io::Error),
}

/// A `*_secs` setting as a duration: finite, above zero, at most a day.
pub(crate) fn seconds(key: &str, value: f64) -> Result<std::time::Duration, BrokerError> {
    if !(value > 0.0 && value <= 86_400.0) {
        return Err(BrokerError::Config(format!(
            "{key} must be a number of seconds above 0 and at most 86400, not {value}"
        )));
    }
    Ok(std::time::Duration::from_secs_f64(value))
}

fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another broker may be running there; choose another port with --listen)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (ports below 1024 need privileges; use 5555 or higher)"
        }
        std::io::ErrorKind::AddrNotAvailable => {
            " (that address is not on this machine; use 0.0.0.0 or 127.0.0.1)"
        }
        _ => "",
    }
}
