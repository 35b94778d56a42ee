//! What `fragnet subscribe` and `fragnet notify` do, over any [`PubSub`] plugin. The
//! binary parses flags, builds the plugin with [`PubSubKind::connect`], and calls these.

use std::io::Write;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fragnet_core::pubsub::{PubSub, PubSubError, check_message, check_topic};
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use crate::BrokerError;
use crate::client::{BrokerClientConfig, BrokerPubSub};
use crate::nats::{NatsConfig, NatsPubSub};

/// Which pub/sub plugin to use (`pubsub = "broker" | "nats" | "local"`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PubSubKind {
    /// fragnet's own broker.
    #[default]
    Broker,
    /// A NATS server.
    Nats,
    /// The in-process bus (only meaningful inside one process, e.g. `fragnet demo`).
    Local,
}

impl PubSubKind {
    /// Builds the plugin. `broker` connects lazily and is checked with a `PING`; `nats`
    /// connects now. `local` has nothing to connect to: in-process callers create one
    /// `fragnet_core::LocalPubSub` and share it.
    pub async fn connect(
        self,
        broker: &BrokerClientConfig,
        nats: &NatsConfig,
    ) -> Result<Arc<dyn PubSub>, BrokerError> {
        match self {
            PubSubKind::Broker => {
                let b = BrokerPubSub::new(broker)?;
                b.ping().await?;
                Ok(Arc::new(b))
            }
            PubSubKind::Nats => Ok(Arc::new(NatsPubSub::connect(nats).await?)),
            PubSubKind::Local => Err(BrokerError::Config("pubsub = \"local\" works only inside one process (fragnet demo); use \"broker\" or \"nats\"".into())),
        }
    }
}

/// How `subscribe` prints messages.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum OutputFormat {
    /// `[fragments] fragment_5.bin`, as the original subscriber printed, after a
    /// `[SUBSCRIBER] Subscribed to 'fragments'. Waiting for messages...` banner.
    #[default]
    Text,
    /// One JSON object per line, no banner: `{"topic":"fragments","message":"fragment_5.bin"}`.
    Json,
}

#[derive(Serialize)]
struct JsonLine<'a> {
    topic: &'a str,
    message: &'a str,
}

/// Subscribes to `topic` and prints each message to `out` (flushed per message) until
/// `cancel` fires, the subscription ends, or `out` is closed (`| head -1`). Returns the
/// number of messages printed. Lost connections are re-established by the plugin.
pub async fn subscribe(
    pubsub: &dyn PubSub,
    topic: &str,
    format: OutputFormat,
    out: &mut (dyn Write + Send),
    cancel: &CancellationToken,
) -> Result<u64, BrokerError> {
    let mut sub = tokio::select! {
        _ = cancel.cancelled() => return Ok(0),
        s = pubsub.subscribe(topic) => s?,
    };
    let write = |out: &mut (dyn Write + Send), text: &str| -> Result<bool, BrokerError> {
        match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
            Ok(()) => Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(false),
            Err(e) => Err(BrokerError::Output(e)),
        }
    };
    if format == OutputFormat::Text
        && !write(
            out,
            &format!("[SUBSCRIBER] Subscribed to '{topic}'. Waiting for messages...\n"),
        )?
    {
        return Ok(0);
    }
    let mut printed = 0;
    loop {
        let msg = tokio::select! {
            _ = cancel.cancelled() => return Ok(printed),
            m = sub.next() => match m {
                Some(m) => m,
                None => return Ok(printed),
            },
        };
        let message = String::from_utf8_lossy(&msg.payload);
        let line = match format {
            OutputFormat::Text => format!("[{}] {}\n", msg.topic, message),
            OutputFormat::Json => format!(
                "{}\n",
                serde_json::to_string(&JsonLine {
                    topic: &msg.topic,
                    message: &message
                })
                .expect("strings serialize")
            ),
        };
        if !write(out, &line)? {
            return Ok(printed);
        }
        printed += 1;
    }
}

/// Publishes `message` to `topic` and returns once the backend has taken it, or fails
/// with the reason (unreachable, refused with the broker's `ERR:` reason, no answer
/// within `timeout`). The caller exits non-zero on error.
pub async fn notify(
    pubsub: &dyn PubSub,
    topic: &str,
    message: &str,
    timeout: Duration,
) -> Result<(), BrokerError> {
    check_topic(topic)?;
    check_message(message.as_bytes())?;
    match tokio::time::timeout(
        timeout,
        pubsub.publish(topic, Bytes::copy_from_slice(message.as_bytes())),
    )
    .await
    {
        Ok(r) => Ok(r?),
        Err(_) => Err(PubSubError::Timeout {
            endpoint: pubsub.kind().to_string(),
            what: "confirmation of the publish".into(),
            after: timeout,
        }
        .into()),
    }
}
