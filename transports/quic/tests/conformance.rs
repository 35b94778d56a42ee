//! The transport conformance suite, over QUIC, unchanged.

use std::sync::Arc;

use fragnet_core::Transports;
use fragnet_core::identity::Identity;
use fragnet_quic::{Config, QuicTransport};

fn quic(identity: &Identity) -> Transports {
    Transports::new().with(Arc::new(
        QuicTransport::new(identity, Config::default()).unwrap(),
    ))
}

fragnet_core::transport_conformance!(quic, "quic://127.0.0.1:0");
