//! Settings of the QUIC transport: [`Config`] and the identity policy [`Trust`].

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use crate::QuicError;

/// What a dialer does with an address that does not name the node it expects
/// (`quic://host:port` rather than `quic://<node-id>@host:port`).
///
/// An address that names a node id is always checked against the id the remote proves,
/// whatever the policy.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Trust {
    /// Trust on first use: accept the node id seen on the first connection to an address,
    /// log it, and pin it; a later connection to the same address that proves another id
    /// is refused with [`fragnet_core::transport::TransportError::WrongIdentity`].
    /// Pins live as long as the transport (the process).
    #[default]
    Tofu,
    /// Refuse to dial an address that does not name the node id to expect.
    Strict,
}

impl FromStr for Trust {
    type Err = QuicError;
    /// Parses `tofu` or `strict` (the `trust` configuration key).
    fn from_str(s: &str) -> Result<Self, QuicError> {
        match s.trim().to_ascii_lowercase().as_str() {
            "tofu" => Ok(Trust::Tofu),
            "strict" => Ok(Trust::Strict),
            other => Err(QuicError::Config(format!(
                "trust must be \"tofu\" or \"strict\", not {other:?}"
            ))),
        }
    }
}

impl fmt::Display for Trust {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Trust::Tofu => "tofu",
            Trust::Strict => "strict",
        })
    }
}

/// QUIC transport settings. Every field has a default ([`Config::default`]); the setters
/// chain: `Config::default().trust(Trust::Strict).idle_timeout(Duration::from_secs(10))`.
///
/// Defaults are tuned for loopback and LAN transfers of 1 MiB chunks with a handful of
/// requests in flight per peer; see `docs/quic.md` for the reasoning and measurements.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// A connection with no open stream for this long is closed (code 0, reason
    /// `idle`); the next dial makes a new one. QUIC's own idle timeout (a peer silent for
    /// this long is taken for gone) is set to the same value. Default 30 s.
    pub idle_timeout: Duration,
    /// Interval of keep-alive packets on an open connection, so that a connection waiting
    /// on a slow stream is not taken for a vanished peer and NAT bindings stay open.
    /// `None` disables them. Must be shorter than `idle_timeout`. Default 5 s.
    pub keep_alive: Option<Duration>,
    /// Time allowed for resolving, the handshake and the identity check of a dial, and for
    /// an incoming handshake. Default 10 s.
    pub connect_timeout: Duration,
    /// Streams a peer may have open at once on one incoming connection; further streams
    /// wait (the opener's `open_stream` blocks) until one ends. Default 256.
    pub max_concurrent_streams: u32,
    /// What to do with addresses that do not name a node id. Default [`Trust::Tofu`].
    pub trust: Trust,
    /// Bytes one stream may have in flight unread by the receiver (per-stream flow-control
    /// window). Default 2 MiB: more than one default chunk, so a 1 MiB `get` never waits
    /// for a window update.
    pub stream_receive_window: u64,
    /// Bytes all streams of one connection together may have in flight unread by the
    /// receiver (connection flow-control window); bounds the memory a peer can make this
    /// node buffer. Default 16 MiB.
    pub receive_window: u64,
    /// Bytes this side keeps buffered, sent but not yet acknowledged, per connection.
    /// Default 8 MiB.
    pub send_window: u64,
    /// Largest UDP payload MTU discovery may probe for. The default, 1452, fits any
    /// Ethernet path; jumbo-frame LANs and loopback benefit from larger values (up to
    /// 65527), at the cost of larger receive buffers.
    pub mtu_upper_bound: u16,
    /// `SO_RCVBUF`/`SO_SNDBUF` of the UDP sockets, in bytes; `None` keeps the OS default.
    /// The kernel caps it at `net.core.rmem_max`/`wmem_max`. Default 4 MiB.
    pub socket_buffer: Option<usize>,
    /// Incoming handshakes in progress at once; more are refused so a flood of
    /// handshakes cannot exhaust the node. Default 64.
    pub max_pending_handshakes: usize,
    /// Interleave the streams of a connection when sending (round robin). Off by
    /// default: the sender finishes one response before the next, so the receiver gets
    /// each chunk whole sooner and can verify and store it while the next arrives. In
    /// the benchmark (1 MiB chunks, 4 requests in flight, a loaded 2-core machine) off
    /// cost between the same and a third less CPU per byte than on, depending on the
    /// run. A small response queued behind large ones waits for them (a few
    /// milliseconds at 1 MiB chunks).
    pub send_fairness: bool,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            idle_timeout: Duration::from_secs(30),
            keep_alive: Some(Duration::from_secs(5)),
            connect_timeout: Duration::from_secs(10),
            max_concurrent_streams: 256,
            trust: Trust::Tofu,
            stream_receive_window: 2 << 20,
            receive_window: 16 << 20,
            send_window: 8 << 20,
            mtu_upper_bound: 1452,
            socket_buffer: Some(4 << 20),
            max_pending_handshakes: 64,
            send_fairness: false,
        }
    }
}

impl Config {
    /// Sets [`Config::idle_timeout`].
    pub fn idle_timeout(mut self, d: Duration) -> Self {
        self.idle_timeout = d;
        self
    }

    /// Sets [`Config::keep_alive`].
    pub fn keep_alive(mut self, interval: Option<Duration>) -> Self {
        self.keep_alive = interval;
        self
    }

    /// Sets [`Config::connect_timeout`].
    pub fn connect_timeout(mut self, d: Duration) -> Self {
        self.connect_timeout = d;
        self
    }

    /// Sets [`Config::max_concurrent_streams`].
    pub fn max_concurrent_streams(mut self, n: u32) -> Self {
        self.max_concurrent_streams = n;
        self
    }

    /// Sets [`Config::trust`].
    pub fn trust(mut self, trust: Trust) -> Self {
        self.trust = trust;
        self
    }

    /// Sets [`Config::stream_receive_window`].
    pub fn stream_receive_window(mut self, bytes: u64) -> Self {
        self.stream_receive_window = bytes;
        self
    }

    /// Sets [`Config::receive_window`].
    pub fn receive_window(mut self, bytes: u64) -> Self {
        self.receive_window = bytes;
        self
    }

    /// Sets [`Config::send_window`].
    pub fn send_window(mut self, bytes: u64) -> Self {
        self.send_window = bytes;
        self
    }

    /// Sets [`Config::mtu_upper_bound`].
    pub fn mtu_upper_bound(mut self, bytes: u16) -> Self {
        self.mtu_upper_bound = bytes;
        self
    }

    /// Sets [`Config::socket_buffer`].
    pub fn socket_buffer(mut self, bytes: Option<usize>) -> Self {
        self.socket_buffer = bytes;
        self
    }

    /// Sets [`Config::max_pending_handshakes`].
    pub fn max_pending_handshakes(mut self, n: usize) -> Self {
        self.max_pending_handshakes = n;
        self
    }

    /// Sets [`Config::send_fairness`].
    pub fn send_fairness(mut self, on: bool) -> Self {
        self.send_fairness = on;
        self
    }

    /// Checks the settings against each other and against QUIC's limits.
    pub fn validate(&self) -> Result<(), QuicError> {
        let bad = |m: String| Err(QuicError::Config(m));
        if self.idle_timeout.is_zero() || self.idle_timeout > Duration::from_secs(3600) {
            return bad(format!(
                "idle_timeout must be between 1 ms and 1 h, not {:?}",
                self.idle_timeout
            ));
        }
        if let Some(k) = self.keep_alive
            && (k.is_zero() || k >= self.idle_timeout)
        {
            return bad(format!(
                "keep_alive ({k:?}) must be non-zero and shorter than idle_timeout ({:?})",
                self.idle_timeout
            ));
        }
        if self.connect_timeout.is_zero() {
            return bad("connect_timeout must not be zero".into());
        }
        if self.max_concurrent_streams == 0 {
            return bad("max_concurrent_streams must be at least 1".into());
        }
        const VARINT_MAX: u64 = (1 << 62) - 1;
        for (name, v) in [
            ("stream_receive_window", self.stream_receive_window),
            ("receive_window", self.receive_window),
            ("send_window", self.send_window),
        ] {
            if !(1200..=VARINT_MAX).contains(&v) {
                return bad(format!(
                    "{name} must be between 1200 bytes and 2^62-1, not {v}"
                ));
            }
        }
        if self.receive_window < self.stream_receive_window {
            return bad(format!(
                "receive_window ({}) must be at least stream_receive_window ({})",
                self.receive_window, self.stream_receive_window
            ));
        }
        if !(1200..=65527).contains(&self.mtu_upper_bound) {
            return bad(format!(
                "mtu_upper_bound must be between 1200 and 65527, not {}",
                self.mtu_upper_bound
            ));
        }
        if self.max_pending_handshakes == 0 {
            return bad("max_pending_handshakes must be at least 1".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trust_parses_config_values() {
        assert_eq!("tofu".parse::<Trust>().unwrap(), Trust::Tofu);
        assert_eq!(" Strict ".parse::<Trust>().unwrap(), Trust::Strict);
        let e = "maybe".parse::<Trust>().unwrap_err().to_string();
        assert!(e.contains("\"tofu\" or \"strict\""), "{e}");
        assert_eq!(Trust::Strict.to_string(), "strict");
    }

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        Config::default().validate().unwrap();
        let cases = [
            (
                Config::default().keep_alive(Some(Duration::from_secs(60))),
                "keep_alive",
            ),
            (
                Config::default().max_concurrent_streams(0),
                "max_concurrent_streams",
            ),
            (
                Config::default().stream_receive_window(100),
                "stream_receive_window",
            ),
            (Config::default().receive_window(1 << 20), "receive_window"),
            (Config::default().mtu_upper_bound(70), "mtu_upper_bound"),
            (
                Config::default().idle_timeout(Duration::ZERO),
                "idle_timeout",
            ),
        ];
        for (c, name) in cases {
            let e = c.validate().unwrap_err().to_string();
            assert!(e.contains(name), "{name}: {e}");
        }
    }
}
