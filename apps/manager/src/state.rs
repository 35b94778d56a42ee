//! What every handler shares.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fragnet_core::MemoryRegistry;

use crate::config::ManagerLimits;
use crate::metrics::Metrics;
use crate::persist::ManifestDir;

/// The handlers' state: the registry, where manifests are kept, and the limits.
pub type AppState = Arc<Shared>;

/// See [`AppState`].
#[derive(Debug)]
pub struct Shared {
    /// Nodes, holdings and videos.
    pub registry: Arc<MemoryRegistry>,
    /// Where manifests are persisted.
    pub manifests: ManifestDir,
    /// Serializes video registration so that the capacity check, the durable write and
    /// the insertion happen as one step (reads never wait for it).
    pub video_writes: tokio::sync::Mutex<()>,
    /// Request counters.
    pub metrics: Metrics,
    /// The write token, if any.
    pub token: Option<String>,
    /// Limits.
    pub limits: ManagerLimits,
    /// Header and body timeout.
    pub request_timeout: Duration,
    /// When the manager started.
    pub started: Instant,
    /// The dashboard's live streams.
    pub dashboard: crate::dashboard::Live,
}
