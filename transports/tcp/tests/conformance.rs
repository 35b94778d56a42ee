//! The transport conformance suite, over TCP.

use std::sync::Arc;

use fragnet_core::Transports;
use fragnet_core::identity::Identity;
use fragnet_tcp::TcpTransport;

fn tcp(_: &Identity) -> Transports {
    Transports::new().with(Arc::new(TcpTransport::default()))
}

fragnet_core::transport_conformance!(tcp, "tcp://127.0.0.1:0");
