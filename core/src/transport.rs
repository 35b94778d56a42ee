//! The transport plugin interface. A transport turns a [`PeerAddr`] into connections
//! that carry bidirectional byte streams; the peer protocol runs unchanged on any of
//! them. TCP carries one stream per TCP connection; QUIC carries many streams on one
//! connection and authenticates the remote node id.

use std::net::SocketAddr;
use std::pin::Pin;

use async_trait::async_trait;
use tokio::io::{AsyncRead, AsyncWrite};

use crate::addr::PeerAddr;
use crate::ids::NodeId;

/// The receiving half of a stream.
pub type RecvStream = Pin<Box<dyn AsyncRead + Send>>;
/// The sending half of a stream; `shutdown()` closes the write side.
pub type SendStream = Pin<Box<dyn AsyncWrite + Send>>;

/// One bidirectional byte stream.
pub struct BiStream {
    /// Bytes to the remote side.
    pub send: SendStream,
    /// Bytes from the remote side.
    pub recv: RecvStream,
}

impl std::fmt::Debug for BiStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BiStream")
    }
}

/// Errors a transport reports.
#[derive(Debug, thiserror::Error)]
pub enum TransportError {
    /// This transport does not handle the address's scheme; try another transport.
    #[error("transport {transport} cannot handle address {addr}")]
    UnsupportedAddr {
        /// The transport's scheme.
        transport: &'static str,
        /// The address (as written, for people).
        addr: String,
    },
    /// Binding a listen address failed.
    #[error("cannot listen on {addr}: {error}")]
    Listen {
        /// The address (as written, for people).
        addr: String,
        /// Why.
        error: std::io::Error,
    },
    /// Dialing failed (refused, unreachable, timed out, handshake failed).
    #[error("cannot connect to {addr}: {reason}")]
    Dial {
        /// The address (as written, for people).
        addr: String,
        /// Why.
        reason: String,
    },
    /// The remote node is not the one the address names.
    #[error("{addr} identified as node {actual}, expected node {expected}")]
    WrongIdentity {
        /// The address dialed (as written, for people).
        addr: String,
        /// The id the address named.
        expected: NodeId,
        /// The id the remote proved.
        actual: NodeId,
    },
    /// The connection is closed.
    #[error("connection closed: {0}")]
    Closed(String),
    /// Any other I/O failure.
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

/// A transport plugin: `tcp`, `quic`.
#[async_trait]
pub trait Transport: Send + Sync + 'static {
    /// The scheme this transport handles (`"tcp"`, `"quic"`).
    fn scheme(&self) -> &'static str;

    /// Binds `addr` (port 0 picks one) and yields incoming connections.
    async fn listen(&self, addr: &PeerAddr) -> Result<Box<dyn Listener>, TransportError>;

    /// Connects to a peer. Fails with [`TransportError::UnsupportedAddr`] for another
    /// scheme and [`TransportError::WrongIdentity`] if the peer is not the node the
    /// address names.
    async fn dial(&self, addr: &PeerAddr) -> Result<Box<dyn Connection>, TransportError>;
}

/// A bound listener.
#[async_trait]
pub trait Listener: Send + Sync {
    /// The address actually bound (with the real port when 0 was asked for).
    fn local_addr(&self) -> PeerAddr;

    /// Waits for the next incoming connection.
    async fn accept(&self) -> Result<Box<dyn Connection>, TransportError>;
}

/// A connection to one remote node, carrying bidirectional streams.
#[async_trait]
pub trait Connection: Send + Sync {
    /// The remote socket address.
    fn remote_addr(&self) -> SocketAddr;

    /// The remote node id, when the transport authenticated it (QUIC); `None` on TCP.
    fn remote_node_id(&self) -> Option<NodeId>;

    /// Opens a new stream to the remote side.
    async fn open_stream(&self) -> Result<BiStream, TransportError>;

    /// Waits for the next stream the remote side opens; `None` when the connection is
    /// closed and no more will come.
    async fn accept_stream(&self) -> Result<Option<BiStream>, TransportError>;

    /// Closes the connection with an application code and a reason.
    async fn close(&self, code: u32, reason: &str);
}

/// Transports by scheme; picks the one that handles an address.
#[derive(Clone, Default)]
pub struct Transports {
    list: Vec<std::sync::Arc<dyn Transport>>,
}

impl std::fmt::Debug for Transports {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list()
            .entries(self.list.iter().map(|t| t.scheme()))
            .finish()
    }
}

impl Transports {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a transport (replacing one with the same scheme).
    pub fn with(mut self, t: std::sync::Arc<dyn Transport>) -> Self {
        self.list.retain(|x| x.scheme() != t.scheme());
        self.list.push(t);
        self
    }

    /// The transport for a scheme.
    pub fn get(&self, scheme: &str) -> Option<&std::sync::Arc<dyn Transport>> {
        self.list.iter().find(|t| t.scheme() == scheme)
    }

    /// The schemes available.
    pub fn schemes(&self) -> Vec<&'static str> {
        self.list.iter().map(|t| t.scheme()).collect()
    }

    /// Dials with whichever transport handles the address's scheme.
    pub async fn dial(&self, addr: &PeerAddr) -> Result<Box<dyn Connection>, TransportError> {
        match self.get(&addr.scheme) {
            Some(t) => t.dial(addr).await,
            None => Err(TransportError::UnsupportedAddr {
                transport: "none configured",
                addr: addr.to_string(),
            }),
        }
    }

    /// Listens with whichever transport handles the address's scheme.
    pub async fn listen(&self, addr: &PeerAddr) -> Result<Box<dyn Listener>, TransportError> {
        match self.get(&addr.scheme) {
            Some(t) => t.listen(addr).await,
            None => Err(TransportError::UnsupportedAddr {
                transport: "none configured",
                addr: addr.to_string(),
            }),
        }
    }
}
