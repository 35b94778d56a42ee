//! fragnet-quic: the QUIC transport plugin (quinn 0.11, rustls 0.23 on ring, rcgen).
//!
//! - [`QuicTransport`] implements fragnet-core's [`Transport`] for `quic://` addresses.
//!   Build one per node from its [`Identity`] and a [`Config`]; put it into
//!   [`fragnet_core::Transports`] beside (or instead of) TCP.
//! - **Identity.** Every connection is TLS 1.3 with ALPN [`ALPN`] (`fragnet/1`); both
//!   sides present a self-signed certificate made from their node key, and each learns
//!   the other's node id (BLAKE3 of the SubjectPublicKeyInfo) from it. A dialer checks
//!   the id against the one the address names (`quic://<node-id>@host:port`) and fails
//!   with [`TransportError::WrongIdentity`] naming both ids on a mismatch. A bare address
//!   is trusted on first use and pinned ([`Trust::Tofu`]), or refused ([`Trust::Strict`]).
//! - **Connections.** A dialer keeps one connection per remote socket address and hands
//!   out cheap handles to it; every protocol session is one bidirectional stream on it.
//!   A connection with no open stream for [`Config::idle_timeout`] is closed, and a handle
//!   whose connection closed (idle, lost, peer restarted) dials again on its next stream.
//!   Streams beyond the peer's [`Config::max_concurrent_streams`] wait for a free slot.
//! - **Accepting.** A listener runs handshakes concurrently (at most
//!   [`Config::max_pending_handshakes`]), so a slow or hostile client cannot stall
//!   others, and yields authenticated connections whose
//!   [`Connection::remote_node_id`] is the client's node id. The accepting side only
//!   accepts streams: fragnet's protocol is client-initiated, as on TCP.
//!
//! Closing codes are in [`close_code`]. A QUIC stream becomes visible to the peer only
//! when its opener first writes; the peer protocol's client always writes its hello
//! first, so that is never a wait.

mod config;
mod conn;
mod tls;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use fragnet_core::identity::Identity;
use fragnet_core::transport::{BiStream, Connection, Listener, Transport, TransportError};
use fragnet_core::{NodeId, PeerAddr};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{Instrument, debug, info, info_span};

pub use config::{Config, Trust};
use conn::Conn;
pub use tls::ALPN;

/// The scheme this transport handles.
pub const SCHEME: &str = "quic";

/// Application error codes this transport closes connections with (the reason string
/// says more). fragnet-core's node closes with 1 when it is at its connection limit.
pub mod close_code {
    /// Nothing wrong: idle, done, or the node is shutting down.
    pub const DONE: u32 = 0;
    /// The node is at its connection limit (used by fragnet-core's node).
    pub const BUSY: u32 = 1;
    /// The dialer expected another node id.
    pub const WRONG_IDENTITY: u32 = 2;
    /// The peer presented no usable certificate.
    pub const NO_CERTIFICATE: u32 = 3;
}

/// Why a QUIC transport could not be built.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// The node's certificate could not be made from its key.
    #[error("making the node's TLS certificate: {0}")]
    Certificate(#[from] rcgen::Error),
    /// rustls refused the TLS setup.
    #[error("setting up TLS: {0}")]
    Tls(#[from] quinn::rustls::Error),
    /// A setting is out of range or inconsistent.
    #[error("invalid QUIC setting: {0}")]
    Config(String),
}

/// The QUIC transport of one node. Cheap to clone; clones share connections and pins.
#[derive(Clone)]
pub struct QuicTransport {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for QuicTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("QuicTransport")
            .field("node_id", &self.shared.node_id)
            .field("config", &self.shared.config)
            .finish_non_exhaustive()
    }
}

/// A dial slot per remote socket address: the connection, behind an async lock so that
/// concurrent dials to one peer make one connection.
type Slot = Arc<tokio::sync::Mutex<Option<Arc<Conn>>>>;

struct Shared {
    node_id: NodeId,
    config: Config,
    endpoint_config: quinn::EndpointConfig,
    server_config: quinn::ServerConfig,
    client_config: quinn::ClientConfig,
    /// Dialing endpoints, made on first use: IPv4, IPv6.
    client_endpoints: Mutex<[Option<quinn::Endpoint>; 2]>,
    dialed: Mutex<HashMap<SocketAddr, Slot>>,
    pins: Mutex<HashMap<SocketAddr, NodeId>>,
    sweeper_started: AtomicBool,
}

impl QuicTransport {
    /// A transport that authenticates as `identity` (only its key is used; the transport
    /// keeps no reference to it). Fails if `config` is invalid.
    pub fn new(identity: &Identity, config: Config) -> Result<Self, QuicError> {
        config.validate()?;
        let certified = tls::certificate(identity)?;
        // Both keys derive from the node key, so a node restarted after a crash answers its
        // old connections' packets with a valid stateless reset, and peers notice at once.
        let mut endpoint_config = quinn::EndpointConfig::new(Arc::new(tls::reset_key(identity)));
        let cid_key = tls::connection_id_key(identity);
        endpoint_config.cid_generator(move || {
            Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
        });
        endpoint_config
            .max_udp_payload_size(config.mtu_upper_bound.max(1472))
            .map_err(|e| QuicError::Config(e.to_string()))?;
        let mut server_config =
            quinn::ServerConfig::with_crypto(Arc::new(tls::server_crypto(&certified)?));
        server_config.transport_config(Arc::new(transport_config(&config, true)?));
        server_config.max_incoming(config.max_pending_handshakes);
        let mut client_config = quinn::ClientConfig::new(Arc::new(tls::client_crypto(&certified)?));
        client_config.transport_config(Arc::new(transport_config(&config, false)?));
        Ok(QuicTransport {
            shared: Arc::new(Shared {
                node_id: identity.node_id(),
                config,
                endpoint_config,
                server_config,
                client_config,
                client_endpoints: Mutex::default(),
                dialed: Mutex::default(),
                pins: Mutex::default(),
                sweeper_started: AtomicBool::new(false),
            }),
        })
    }

    /// This node's id (what peers see).
    pub fn node_id(&self) -> NodeId {
        self.shared.node_id
    }

    /// The settings.
    pub fn config(&self) -> &Config {
        &self.shared.config
    }

    /// The node id pinned for a remote socket address (first seen there, or named by the
    /// last address dialed there).
    pub fn pinned(&self, remote: SocketAddr) -> Option<NodeId> {
        self.shared.pins.lock().unwrap().get(&remote).copied()
    }

    /// Dialed connections currently open (for metrics and tests).
    pub fn open_connections(&self) -> usize {
        let slots: Vec<Slot> = self
            .shared
            .dialed
            .lock()
            .unwrap()
            .values()
            .cloned()
            .collect();
        slots
            .iter()
            .filter(|s| {
                s.try_lock()
                    .map(|g| g.as_ref().is_some_and(|c| !c.is_closed()))
                    .unwrap_or(false)
            })
            .count()
    }
}

/// quinn's transport parameters from our settings. A dialer accepts no streams from the
/// peer (the protocol is client-initiated), so its stream limits are zero.
fn transport_config(c: &Config, accepting: bool) -> Result<quinn::TransportConfig, QuicError> {
    let varint = |v: u64| quinn::VarInt::from_u64(v).map_err(|e| QuicError::Config(e.to_string()));
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(if accepting {
        c.max_concurrent_streams.into()
    } else {
        0u32.into()
    });
    t.max_concurrent_uni_streams(0u32.into());
    t.max_idle_timeout(Some(
        quinn::IdleTimeout::try_from(c.idle_timeout)
            .map_err(|e| QuicError::Config(e.to_string()))?,
    ));
    t.keep_alive_interval(c.keep_alive);
    t.stream_receive_window(varint(c.stream_receive_window)?);
    t.receive_window(varint(c.receive_window)?);
    t.send_window(c.send_window);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(c.mtu_upper_bound);
    t.mtu_discovery_config(Some(mtu));
    t.send_fairness(c.send_fairness);
    Ok(t)
}

/// A UDP socket with the configured buffer sizes; IPv6 sockets are dual-stack where the
/// system allows.
fn bind_udp(sa: SocketAddr, buffer: Option<usize>) -> std::io::Result<std::net::UdpSocket> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(sa), Type::DGRAM, Some(Protocol::UDP))?;
    if sa.is_ipv6() {
        // Not fatal: some systems forbid dual-stack sockets; IPv6 still works then.
        let _ = socket.set_only_v6(false);
    }
    if let Some(bytes) = buffer {
        // The kernel silently caps these at its maxima; a failure only costs speed.
        let _ = socket.set_recv_buffer_size(bytes);
        let _ = socket.set_send_buffer_size(bytes);
    }
    socket.bind(&sa.into())?;
    Ok(socket.into())
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

impl Shared {
    fn endpoint(
        &self,
        config: quinn::ServerConfig,
        sa: SocketAddr,
        server: bool,
    ) -> std::io::Result<quinn::Endpoint> {
        let socket = bind_udp(sa, self.config.socket_buffer)?;
        quinn::Endpoint::new(
            self.endpoint_config.clone(),
            server.then_some(config),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
    }

    /// The dialing endpoint for a remote address's family, made on first use.
    fn client_endpoint(&self, remote: SocketAddr) -> std::io::Result<quinn::Endpoint> {
        let mut eps = self.client_endpoints.lock().unwrap();
        let i = usize::from(remote.is_ipv6());
        if let Some(ep) = &eps[i] {
            return Ok(ep.clone());
        }
        let any: SocketAddr = if remote.is_ipv6() {
            "[::]:0".parse().unwrap()
        } else {
            "0.0.0.0:0".parse().unwrap()
        };
        let ep = self.endpoint(self.server_config.clone(), any, false)?;
        eps[i] = Some(ep.clone());
        Ok(ep)
    }

    /// A live, authenticated connection to `addr`: the cached one, or a new one.
    async fn connect(self: &Arc<Self>, addr: &PeerAddr) -> Result<Arc<Conn>, TransportError> {
        let dial_err = |reason: String| TransportError::Dial {
            addr: addr.to_string(),
            reason,
        };
        let timeout = self.config.connect_timeout;
        let remote = tokio::time::timeout(timeout, tokio::net::lookup_host(addr.host_port()))
            .await
            .map_err(|_| {
                dial_err(format!(
                    "resolving {} timed out after {timeout:?}",
                    addr.host
                ))
            })?
            .map_err(|e| dial_err(format!("resolving {}: {e}", addr.host)))?
            .next()
            .ok_or_else(|| dial_err(format!("{} resolves to no address", addr.host)))?;
        if addr.node_id.is_none() && self.config.trust == Trust::Strict {
            return Err(dial_err("trust = \"strict\" refuses an address without a node id; write it as quic://<node-id>@host:port".into()));
        }
        self.start_sweeper();
        let slot = self
            .dialed
            .lock()
            .unwrap()
            .entry(remote)
            .or_default()
            .clone();
        let mut slot = tokio::time::timeout(timeout, slot.lock())
            .await
            .map_err(|_| dial_err(format!("another dial to {remote} is stuck")))?;
        if let Some(conn) = slot.as_ref().filter(|c| !c.is_closed()) {
            let expected = addr
                .node_id
                .or_else(|| self.pins.lock().unwrap().get(&remote).copied());
            return match expected {
                Some(expected) if expected != conn.node_id => Err(TransportError::WrongIdentity {
                    addr: addr.to_string(),
                    expected,
                    actual: conn.node_id,
                }),
                _ => Ok(conn.clone()),
            };
        }
        let conn = tokio::time::timeout(timeout, self.handshake(remote))
            .await
            .map_err(|_| dial_err(format!("no QUIC handshake within {timeout:?}")))?
            .map_err(dial_err)?;
        let actual = conn.node_id;
        let mut pins = self.pins.lock().unwrap();
        let pinned = pins.get(&remote).copied();
        match (addr.node_id, pinned) {
            (Some(expected), _) | (None, Some(expected)) if expected != actual => {
                drop(pins);
                conn.close(
                    close_code::WRONG_IDENTITY,
                    &format!("expected node {expected}"),
                );
                return Err(TransportError::WrongIdentity {
                    addr: addr.to_string(),
                    expected,
                    actual,
                });
            }
            (None, None) => {
                info!(%remote, node = %actual, "trusting the node on first use; pinned to this address")
            }
            (Some(_), Some(old)) if old != actual => {
                info!(%remote, node = %actual, previous = %old, "the address now names another node; pin updated")
            }
            _ => {}
        }
        pins.insert(remote, actual);
        drop(pins);
        debug!(%remote, node = %actual.short(), "QUIC connection established");
        *slot = Some(conn.clone());
        Ok(conn)
    }

    async fn handshake(&self, remote: SocketAddr) -> Result<Arc<Conn>, String> {
        let endpoint = self
            .client_endpoint(remote)
            .map_err(|e| format!("binding a UDP socket to dial from: {e}"))?;
        let connecting = endpoint
            .connect_with(self.client_config.clone(), remote, tls::SERVER_NAME)
            .map_err(|e| e.to_string())?;
        let quic = connecting.await.map_err(|e| e.to_string())?;
        match tls::peer_node_id(&quic) {
            Some(id) => Ok(Conn::new(quic, id)),
            None => {
                quic.close(close_code::NO_CERTIFICATE.into(), b"no usable certificate");
                Err("the peer presented no usable certificate".into())
            }
        }
    }

    /// Closes dialed connections that have been idle too long and forgets closed ones;
    /// runs in the background while the transport lives.
    fn start_sweeper(self: &Arc<Self>) {
        if self.sweeper_started.swap(true, Ordering::SeqCst) {
            return;
        }
        let weak = Arc::downgrade(self);
        let tick =
            (self.config.idle_timeout / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(tick).await;
                // Holding only a weak reference lets the transport drop; the sweep stops then.
                let Some(shared) = weak.upgrade() else { return };
                shared.sweep();
            }
        });
    }

    fn sweep(&self) {
        let idle_timeout = self.config.idle_timeout;
        self.dialed.lock().unwrap().retain(|remote, slot| {
            // A slot being dialed is in use; leave it.
            let Ok(mut conn) = slot.try_lock() else {
                return true;
            };
            if let Some(c) = conn.as_ref() {
                if c.is_closed() {
                    *conn = None;
                } else if c.idle_for().is_some_and(|d| d >= idle_timeout) {
                    debug!(%remote, node = %c.node_id.short(), "closing idle QUIC connection");
                    c.close(close_code::DONE, "idle");
                    *conn = None;
                }
            }
            let keep = conn.is_some();
            drop(conn);
            // Only the map holds it (new clones are made under the map's lock): safe to drop.
            keep || Arc::strong_count(slot) > 1
        });
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Nothing can use these connections any more (handles hold the transport).
        for slot in self.dialed.get_mut().unwrap().values() {
            if let Ok(conn) = slot.try_lock()
                && let Some(c) = conn.as_ref()
            {
                c.close(close_code::DONE, "closing");
            }
        }
    }
}

#[async_trait]
impl Transport for QuicTransport {
    fn scheme(&self) -> &'static str {
        SCHEME
    }

    async fn listen(&self, addr: &PeerAddr) -> Result<Box<dyn Listener>, TransportError> {
        check_scheme(addr)?;
        let listen_err = |error: std::io::Error| TransportError::Listen {
            addr: addr.to_string(),
            error,
        };
        if let Some(id) = addr.node_id.filter(|id| *id != self.shared.node_id) {
            return Err(listen_err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                format!(
                    "the address names node {id}, but this node is {}",
                    self.shared.node_id
                ),
            )));
        }
        let sa = tokio::net::lookup_host(addr.host_port())
            .await
            .map_err(listen_err)?
            .next()
            .ok_or_else(|| {
                listen_err(std::io::Error::new(
                    std::io::ErrorKind::AddrNotAvailable,
                    format!("{} resolves to no address", addr.host),
                ))
            })?;
        let endpoint = self
            .shared
            .endpoint(self.shared.server_config.clone(), sa, true)
            .map_err(listen_err)?;
        let bound = endpoint.local_addr().map_err(listen_err)?;
        let (tx, rx) = mpsc::channel(16);
        let c = &self.shared.config;
        let task = tokio::spawn(
            accept_loop(
                endpoint.clone(),
                tx,
                c.connect_timeout,
                c.max_pending_handshakes,
                c.idle_timeout * 2,
            )
            .instrument(info_span!("quic_listen", %bound)),
        );
        Ok(Box::new(QuicListener {
            endpoint,
            local: addr.with_socket(bound),
            incoming: tokio::sync::Mutex::new(rx),
            task,
        }))
    }

    async fn dial(&self, addr: &PeerAddr) -> Result<Box<dyn Connection>, TransportError> {
        check_scheme(addr)?;
        let conn = self.shared.connect(addr).await?;
        Ok(Box::new(Dialed {
            shared: self.shared.clone(),
            addr: addr.clone(),
            conn: Mutex::new(conn),
        }))
    }
}

/// Takes incoming connection attempts, runs their handshakes concurrently (bounded), and
/// queues the authenticated connections for [`QuicListener::accept`].
async fn accept_loop(
    endpoint: quinn::Endpoint,
    tx: mpsc::Sender<Accepted>,
    timeout: Duration,
    max_pending: usize,
    idle_limit: Duration,
) {
    let pending = Arc::new(tokio::sync::Semaphore::new(max_pending));
    // Dropping the set (when the listener goes) abandons handshakes still running.
    let mut handshakes = JoinSet::new();
    while let Some(incoming) = endpoint.accept().await {
        while handshakes.try_join_next().is_some() {}
        let Ok(permit) = pending.clone().try_acquire_owned() else {
            debug!(remote = %incoming.remote_address(), "too many handshakes in progress; refusing");
            incoming.refuse();
            continue;
        };
        let tx = tx.clone();
        handshakes.spawn(async move {
            let _permit = permit;
            let remote = incoming.remote_address();
            let quic = match tokio::time::timeout(timeout, incoming).await {
                Ok(Ok(q)) => q,
                Ok(Err(e)) => return debug!(%remote, error = %e, "incoming QUIC handshake failed"),
                Err(_) => return debug!(%remote, "incoming QUIC handshake timed out"),
            };
            let Some(node_id) = tls::peer_node_id(&quic) else {
                quic.close(
                    close_code::NO_CERTIFICATE.into(),
                    b"no usable client certificate",
                );
                return;
            };
            debug!(%remote, node = %node_id.short(), "QUIC connection accepted");
            let accepted = Accepted {
                conn: Conn::new(quic, node_id),
                idle_limit,
            };
            // Waits while the node is at its connection limit; dropped (closed) if the
            // listener is gone.
            let _ = tx.send(accepted).await;
        });
    }
}

/// A bound QUIC listener.
struct QuicListener {
    endpoint: quinn::Endpoint,
    local: PeerAddr,
    incoming: tokio::sync::Mutex<mpsc::Receiver<Accepted>>,
    task: tokio::task::JoinHandle<()>,
}

#[async_trait]
impl Listener for QuicListener {
    fn local_addr(&self) -> PeerAddr {
        self.local.clone()
    }

    async fn accept(&self) -> Result<Box<dyn Connection>, TransportError> {
        match self.incoming.lock().await.recv().await {
            Some(c) => Ok(Box::new(c)),
            None => Err(TransportError::Closed("the QUIC listener stopped".into())),
        }
    }
}

impl Drop for QuicListener {
    fn drop(&mut self) {
        // Stop taking new connections; those already accepted go on until their handles
        // drop, and the socket closes when the last of them has.
        self.endpoint.set_server_config(None);
        self.task.abort();
    }
}

/// The accepting side of a connection.
struct Accepted {
    conn: Arc<Conn>,
    /// No stream for this long closes the connection: twice the dialer's idle timeout,
    /// so the dialer, which knows when it is done, normally closes first.
    idle_limit: Duration,
}

#[async_trait]
impl Connection for Accepted {
    fn remote_addr(&self) -> SocketAddr {
        self.conn.quic.remote_address()
    }

    fn remote_node_id(&self) -> Option<NodeId> {
        Some(self.conn.node_id)
    }

    async fn open_stream(&self) -> Result<BiStream, TransportError> {
        Err(TransportError::Closed(
            "the accepting side of a QUIC connection does not open streams; the dialer does".into(),
        ))
    }

    async fn accept_stream(&self) -> Result<Option<BiStream>, TransportError> {
        let tick = (self.idle_limit / 4).clamp(Duration::from_millis(10), Duration::from_secs(1));
        loop {
            tokio::select! {
                r = self.conn.quic.accept_bi() => return match r {
                    Ok((send, recv)) => Ok(Some(self.conn.stream(send, recv))),
                    Err(quinn::ConnectionError::ApplicationClosed(_) | quinn::ConnectionError::LocallyClosed) => Ok(None),
                    Err(e) => Err(TransportError::Closed(e.to_string())),
                },
                _ = tokio::time::sleep(tick) => {
                    if self.conn.idle_for().is_some_and(|d| d >= self.idle_limit) {
                        debug!("closing idle QUIC connection");
                        self.conn.close(close_code::DONE, "idle");
                        return Ok(None);
                    }
                }
            }
        }
    }

    async fn close(&self, code: u32, reason: &str) {
        self.conn.close(code, reason);
    }
}

impl Drop for Accepted {
    fn drop(&mut self) {
        // The accepting side owns the connection: when its handler is done, close it, but
        // only once the last responses are acknowledged.
        if self.conn.is_closed() {
            return;
        }
        let conn = self.conn.clone();
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { conn.close_when_drained(close_code::DONE, "done").await });
            }
            Err(_) => conn.close(close_code::DONE, "done"),
        }
    }
}

/// A dialer's handle on the shared connection to one peer.
struct Dialed {
    shared: Arc<Shared>,
    addr: PeerAddr,
    conn: Mutex<Arc<Conn>>,
}

impl Dialed {
    fn current(&self) -> Arc<Conn> {
        self.conn.lock().unwrap().clone()
    }
}

#[async_trait]
impl Connection for Dialed {
    fn remote_addr(&self) -> SocketAddr {
        self.current().quic.remote_address()
    }

    fn remote_node_id(&self) -> Option<NodeId> {
        Some(self.current().node_id)
    }

    /// Opens a stream, waiting for a slot if the peer's stream limit is reached. If the
    /// connection has closed (idle, lost, peer restarted), dials again first, with the
    /// same identity check.
    async fn open_stream(&self) -> Result<BiStream, TransportError> {
        let mut conn = self.current();
        let mut retried = false;
        loop {
            if conn.is_closed() {
                conn = self.shared.connect(&self.addr).await?;
                *self.conn.lock().unwrap() = conn.clone();
            }
            match conn.quic.open_bi().await {
                Ok((send, recv)) => return Ok(conn.stream(send, recv)),
                Err(e) if retried => return Err(TransportError::Closed(e.to_string())),
                // open_bi fails only once the connection closed (while we waited for a
                // slot, say): the loop dials again, once.
                Err(_) => retried = true,
            }
        }
    }

    async fn accept_stream(&self) -> Result<Option<BiStream>, TransportError> {
        // The dialing side serves no streams (as on TCP): the protocol is client-initiated.
        Ok(None)
    }

    /// Closes the shared connection to this peer (every handle's); the next stream or
    /// dial makes a new one.
    async fn close(&self, code: u32, reason: &str) {
        self.current().close(code, reason);
    }
}
