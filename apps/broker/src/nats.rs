//! [`NatsPubSub`]: the `nats` pub/sub plugin, for deployments that outgrow one broker.
//! Topics are NATS subjects as they are (the topic rules keep them valid subjects).
//!
//! NATS core has no publish acknowledgement, and `async_nats::Client::flush` only
//! empties the client's buffer. To keep the [`PubSub`] contract (publish returns once
//! the server has taken the message; subscribe returns once the subscription is in
//! place), each operation is followed by a round trip through a private inbox on the
//! same connection: the server handles a connection's operations in order, so when our
//! own echo comes back, everything sent before it has been routed.
//! async-nats reconnects and re-subscribes by itself; [`Subscription::reconnects`]
//! counts its reconnections (for the whole client).

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use async_nats::{ConnectErrorKind, Event};
use async_trait::async_trait;
use bytes::Bytes;
use fragnet_core::pubsub::{
    Message, PubSub, PubSubError, Subscription, SubscriptionStats, check_message, check_topic,
};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use tokio::sync::Mutex;
use tracing::{info, warn};

use crate::token::AuthToken;
use crate::{BrokerError, seconds};

/// How to reach NATS. Every field has a default.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// Server URL(s), comma-separated: `nats://HOST:PORT`. Default `nats://127.0.0.1:4222`.
    pub url: String,
    /// Token for a server that requires one (`authorization { token: ... }`). Or
    /// [`NatsConfig::token_file`]. Default: none.
    pub token: Option<AuthToken>,
    /// A file whose first line is the token. Default: none.
    pub token_file: Option<PathBuf>,
    /// Seconds to connect. Default 5.
    pub connect_timeout_secs: f64,
    /// Seconds the server has to confirm a publish or a subscribe. Default 5.
    pub reply_timeout_secs: f64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: "nats://127.0.0.1:4222".into(),
            token: None,
            token_file: None,
            connect_timeout_secs: 5.0,
            reply_timeout_secs: 5.0,
        }
    }
}

impl NatsConfig {
    /// The defaults, for the server at `url`.
    pub fn new(url: impl Into<String>) -> Self {
        NatsConfig {
            url: url.into(),
            ..Self::default()
        }
    }
}

/// The `nats` plugin. Cheap to clone; clones share the connection.
#[derive(Clone)]
pub struct NatsPubSub {
    client: async_nats::Client,
    endpoint: String,
    reply_timeout: Duration,
    /// The private inbox for round trips, and the sequence number of the last one.
    echo: Arc<Mutex<(String, async_nats::Subscriber, u64)>>,
    stats: Arc<SubscriptionStats>,
}

impl std::fmt::Debug for NatsPubSub {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsPubSub")
            .field("server", &self.endpoint)
            .finish()
    }
}

impl NatsPubSub {
    /// Connects to the server (failing if it is not there or refuses the token).
    pub async fn connect(config: &NatsConfig) -> Result<Self, BrokerError> {
        let endpoint = format!("NATS {}", config.url);
        let reply_timeout = seconds("nats.reply_timeout_secs", config.reply_timeout_secs)?;
        let stats = Arc::new(SubscriptionStats::default());
        let client = connect_client(config, stats.clone()).await?;
        let inbox = client.new_inbox();
        let echo_sub =
            client
                .subscribe(inbox.clone())
                .await
                .map_err(|e| PubSubError::Disconnected {
                    endpoint: endpoint.clone(),
                    reason: e.to_string(),
                })?;
        let this = NatsPubSub {
            client,
            endpoint,
            reply_timeout,
            echo: Arc::new(Mutex::new((inbox, echo_sub, 0))),
            stats,
        };
        this.round_trip().await?;
        Ok(this)
    }

    fn lost(&self, e: impl std::fmt::Display) -> PubSubError {
        PubSubError::Disconnected {
            endpoint: self.endpoint.clone(),
            reason: e.to_string(),
        }
    }

    /// Publishes a sequence number to our own inbox and waits for it to come back: the
    /// server has then handled everything this client sent before.
    async fn round_trip(&self) -> Result<(), PubSubError> {
        let mut echo = self.echo.lock().await;
        let (inbox, sub, seq) = &mut *echo;
        *seq += 1;
        let want = Bytes::from(seq.to_string());
        let wait = async {
            self.client
                .publish(inbox.clone(), want.clone())
                .await
                .map_err(|e| self.lost(e))?;
            loop {
                // Echoes of earlier, timed-out round trips may still be queued.
                match sub.next().await {
                    Some(m) if m.payload == want => return Ok(()),
                    Some(_) => continue,
                    None => return Err(PubSubError::Closed),
                }
            }
        };
        match tokio::time::timeout(self.reply_timeout, wait).await {
            Ok(r) => r,
            Err(_) => Err(PubSubError::Timeout {
                endpoint: self.endpoint.clone(),
                what: "confirmation".into(),
                after: self.reply_timeout,
            }),
        }
    }
}

/// Connects an async-nats client (used by the pub/sub plugin and the NATS registry):
/// token, timeout, and events logged and counted in `stats`. Fails if the server is not
/// there or refuses the token.
pub(crate) async fn connect_client(
    config: &NatsConfig,
    stats: Arc<SubscriptionStats>,
) -> Result<async_nats::Client, BrokerError> {
    let endpoint = format!("NATS {}", config.url);
    let token = AuthToken::resolve(config.token.as_ref(), config.token_file.as_deref())?;
    let connect_timeout = seconds("nats.connect_timeout_secs", config.connect_timeout_secs)?;
    let counters = stats.clone();
    let mut options = async_nats::ConnectOptions::new()
        .connection_timeout(connect_timeout)
        .event_callback(move |event| {
            let counters = counters.clone();
            async move {
                match event {
                    Event::Connected => info!("NATS connected"),
                    Event::SlowConsumer(sid) => {
                        counters.lost.fetch_add(1, Ordering::Relaxed);
                        warn!(sid, "NATS subscription fell behind; messages dropped");
                    }
                    other => warn!(event = %other, "NATS"),
                }
            }
        });
    if let Some(t) = token {
        options = options.token(t.expose().to_string());
    }
    // A cluster is several URLs, comma-separated: the client picks one and fails over.
    let servers = config
        .url
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .map(|u| {
            u.parse::<async_nats::ServerAddr>()
                .map_err(|e| BrokerError::Config(format!("nats url {u:?}: {e}")))
        })
        .collect::<Result<Vec<_>, _>>()?;
    if servers.is_empty() {
        return Err(BrokerError::Config("nats url is empty".into()));
    }
    async_nats::connect_with_options(servers, options)
        .await
        .map_err(|e| {
            let reason = e.to_string();
            match e.kind() {
                ConnectErrorKind::AuthorizationViolation | ConnectErrorKind::Authentication => {
                    PubSubError::Rejected {
                        endpoint: endpoint.clone(),
                        reason,
                    }
                }
                ConnectErrorKind::TimedOut => PubSubError::Timeout {
                    endpoint: endpoint.clone(),
                    what: "connection".into(),
                    after: connect_timeout,
                },
                ConnectErrorKind::ServerParse => {
                    return BrokerError::Config(format!("nats url {:?}: {reason}", config.url));
                }
                _ => PubSubError::Unreachable {
                    endpoint: endpoint.clone(),
                    reason,
                },
            }
            .into()
        })
}

#[async_trait]
impl PubSub for NatsPubSub {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn publish(&self, topic: &str, payload: Bytes) -> Result<(), PubSubError> {
        check_topic(topic)?;
        check_message(&payload)?;
        self.client
            .publish(topic.to_string(), payload)
            .await
            .map_err(|e| self.lost(e))?;
        self.round_trip().await
    }

    async fn subscribe(&self, topic: &str) -> Result<Subscription, PubSubError> {
        check_topic(topic)?;
        let sub = self
            .client
            .subscribe(topic.to_string())
            .await
            .map_err(|e| self.lost(e))?;
        self.round_trip().await?;
        // Reconnections come from the client's own count of connections, which it
        // bumps before it re-subscribes: current before the first message a new
        // connection delivers (its event callback runs on a task of its own, ordered
        // with nothing).
        let (connects, counters) = (self.client.statistics(), self.stats.clone());
        let stream = sub.map(move |m| {
            let reconnects = connects.connects.load(Ordering::Relaxed).saturating_sub(1);
            counters.reconnects.store(reconnects, Ordering::Relaxed);
            Message {
                topic: m.subject.to_string(),
                payload: m.payload,
            }
        });
        Ok(Subscription::new(topic, stream, self.stats.clone()))
    }
}
