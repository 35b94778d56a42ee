//! fragnet-core: the data model, store, peer protocol, plugin traits and node of
//! fragnet, a peer-to-peer video distribution and streaming system.
//!
//! - [`manifest`]: what a video is made of; its canonical bytes hash to the [`VideoId`].
//! - [`store`]: fragments on disk, verified chunk by chunk, resumable.
//! - [`split`]: split a file into fragments and join them back.
//! - [`identity`]: a node's key pair and [`NodeId`].
//! - [`transport`]: the [`Transport`] plugin trait (TCP, QUIC live in their own crates).
//! - [`protocol`]: the peer wire protocol; [`serve`] answers it from a store.
//! - [`discovery`]: who may hold a video: static peers, registry, events, peer exchange.
//! - [`fetch`]: parallel, verified, resumable download from several peers.
//! - [`engine`]: the node's one download engine, one download per video.
//! - [`node`]: the node's builder and handle: serving, discovery, engine, announcing.
//! - [`link`]: share links (`fragnet://<video id>?manager=…&peer=…`).
//! - [`registry`]: the [`Registry`] plugin trait (who holds what) and its in-memory implementation.
//! - [`pubsub`]: the [`PubSub`] plugin trait, the in-process bus and fragment events.
//!
//! Core opens no concrete socket and knows no HTTP framework and no CLI.

pub mod addr;
pub mod admission;
pub mod avail;
pub mod discovery;
pub mod engine;
pub mod fetch;
pub mod fsutil;
pub mod identity;
pub mod ids;
pub mod library;
pub mod link;
pub mod manifest;
pub mod metrics;
pub mod node;
pub mod protocol;
pub mod pubsub;
pub mod ratelimit;
pub mod registry;
pub mod secret;
pub mod serve;
pub mod split;
pub mod store;
pub mod transport;
pub mod tree;

#[cfg(feature = "conformance")]
pub mod conformance;

pub use addr::PeerAddr;
pub use engine::{Downloads, Want};
pub use ids::{FragmentIndex, IdPrefix, NodeId, VideoId};
pub use link::Link;
pub use manifest::Manifest;
pub use node::{Node, NodeBuilder, NodeHandle};
pub use pubsub::{FragmentEvent, LocalPubSub, PubSub, PubSubError, Subscription};
pub use registry::{MemoryRegistry, Registry, RegistryError};
pub use store::FragmentStore;
pub use transport::{Connection, Listener, Transport, Transports};
