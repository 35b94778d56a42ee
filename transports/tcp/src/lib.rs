//! fragnet-tcp: the TCP transport plugin.
//!
//! One stream per TCP connection: a dialed [`Connection`] hands out its socket as the
//! first stream and dials a fresh socket for each further one; an accepted connection
//! yields exactly one stream. Plaintext, as in the original project; integrity comes
//! from the manifest's hashes, not from the transport. Sequential requests on one
//! stream are the peer protocol's business.

use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::Duration;

use async_trait::async_trait;
use fragnet_core::transport::{BiStream, Connection, Listener, Transport, TransportError};
use fragnet_core::{NodeId, PeerAddr};
use tokio::net::{TcpListener, TcpStream};

/// The scheme this transport handles.
pub const SCHEME: &str = "tcp";

/// TCP transport settings.
#[derive(Debug, Clone)]
pub struct Config {
    /// Time allowed to establish a connection.
    pub connect_timeout: Duration,
    /// Disable Nagle's algorithm (request frames are small and latency matters).
    pub nodelay: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            connect_timeout: Duration::from_secs(10),
            nodelay: true,
        }
    }
}

impl Config {
    /// Sets the connect timeout.
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }
}

/// The TCP transport.
#[derive(Debug, Clone, Default)]
pub struct TcpTransport {
    config: Config,
}

impl TcpTransport {
    /// A transport with these settings.
    pub fn new(config: Config) -> Self {
        TcpTransport { config }
    }
}

fn check_scheme(addr: &PeerAddr) -> Result<(), TransportError> {
    if addr.scheme == SCHEME {
        Ok(())
    } else {
        Err(TransportError::UnsupportedAddr {
            transport: SCHEME,
            addr: addr.to_string(),
        })
    }
}

fn split(stream: TcpStream) -> BiStream {
    let (r, w) = stream.into_split();
    BiStream {
        send: Box::pin(w),
        recv: Box::pin(r),
    }
}

async fn connect(addr: &PeerAddr, config: &Config) -> Result<TcpStream, TransportError> {
    let dial_err = |reason: String| TransportError::Dial {
        addr: addr.to_string(),
        reason,
    };
    let stream = tokio::time::timeout(config.connect_timeout, TcpStream::connect(addr.host_port()))
        .await
        .map_err(|_| dial_err(format!("timed out after {:?}", config.connect_timeout)))?
        .map_err(|e| dial_err(e.to_string()))?;
    stream.set_nodelay(config.nodelay).ok();
    Ok(stream)
}

#[async_trait]
impl Transport for TcpTransport {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    async fn listen(&self, addr: &PeerAddr) -> Result<Box<dyn Listener>, TransportError> {
        check_scheme(addr)?;
        let listener = TcpListener::bind(addr.host_port())
            .await
            .map_err(|source| TransportError::Listen {
                addr: addr.to_string(),
                error: source,
            })?;
        let bound = listener.local_addr()?;
        Ok(Box::new(TcpListenerHandle {
            listener,
            local: addr.with_socket(bound),
            nodelay: self.config.nodelay,
        }))
    }

    async fn dial(&self, addr: &PeerAddr) -> Result<Box<dyn Connection>, TransportError> {
        check_scheme(addr)?;
        let stream = connect(addr, &self.config).await?;
        let remote = stream.peer_addr()?;
        Ok(Box::new(TcpConnection {
            first: Mutex::new(Some(stream)),
            remote,
            redial: Some((addr.clone(), self.config.clone())),
        }))
    }
}

struct TcpListenerHandle {
    listener: TcpListener,
    local: PeerAddr,
    nodelay: bool,
}

#[async_trait]
impl Listener for TcpListenerHandle {
    fn local_addr(&self) -> PeerAddr {
        self.local.clone()
    }

    async fn accept(&self) -> Result<Box<dyn Connection>, TransportError> {
        let (stream, remote) = self.listener.accept().await?;
        stream.set_nodelay(self.nodelay).ok();
        Ok(Box::new(TcpConnection {
            first: Mutex::new(Some(stream)),
            remote,
            redial: None,
        }))
    }
}

/// A TCP "connection": the first stream is the socket itself; a dialed connection opens
/// further streams by dialing again.
struct TcpConnection {
    first: Mutex<Option<TcpStream>>,
    remote: SocketAddr,
    /// Set on the dialing side only.
    redial: Option<(PeerAddr, Config)>,
}

#[async_trait]
impl Connection for TcpConnection {
    fn remote_addr(&self) -> SocketAddr {
        self.remote
    }

    fn remote_node_id(&self) -> Option<NodeId> {
        None
    }

    async fn open_stream(&self) -> Result<BiStream, TransportError> {
        let Some((addr, config)) = &self.redial else {
            return Err(TransportError::Closed(
                "the accepting side of a TCP connection cannot open streams".into(),
            ));
        };
        let first = self.first.lock().unwrap().take();
        match first {
            Some(s) => Ok(split(s)),
            None => Ok(split(connect(addr, config).await?)),
        }
    }

    async fn accept_stream(&self) -> Result<Option<BiStream>, TransportError> {
        if self.redial.is_some() {
            return Ok(None);
        }
        Ok(self.first.lock().unwrap().take().map(split))
    }

    async fn close(&self, _code: u32, _reason: &str) {
        // Dropping the socket closes it; TCP has no close reason to carry.
        self.first.lock().unwrap().take();
    }
}
