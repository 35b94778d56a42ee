//! What every handler shares.

use std::sync::Arc;
use std::time::{Duration, Instant};

use fragnet_broker::NatsRegistry;
use fragnet_core::registry::{Lease, NodeRegistration};
use fragnet_core::{FragmentIndex, MemoryRegistry, NodeId, Registry, RegistryError, VideoId};

use crate::config::ManagerLimits;
use crate::metrics::Metrics;
use crate::persist::ManifestDir;

/// The handlers' state: the registry, where manifests are kept, and the limits.
pub type AppState = Arc<Shared>;

/// See [`AppState`].
#[derive(Debug)]
pub struct Shared {
    /// Nodes, holdings and videos, as reads see them: the registry itself (memory), or
    /// this replica's copy of the shared one (nats).
    pub registry: Arc<MemoryRegistry>,
    /// Where writes go.
    pub backend: Backend,
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

/// Where the manager's registry lives.
#[derive(Debug)]
pub enum Backend {
    /// In this process ([`Shared::registry`]); manifests persisted in the data directory.
    Memory {
        /// Where manifests are persisted.
        manifests: ManifestDir,
    },
    /// In NATS JetStream key-value buckets shared by every manager replica; this
    /// manager keeps no state of its own.
    Nats(Arc<NatsRegistry>),
}

impl Shared {
    /// The registry writes go to, as the plugin trait.
    pub fn plugin(&self) -> Arc<dyn Registry> {
        match &self.backend {
            Backend::Memory { .. } => self.registry.clone(),
            Backend::Nats(n) => n.clone(),
        }
    }

    /// Registers or refreshes a node.
    pub async fn register(
        &self,
        id: NodeId,
        node: &NodeRegistration,
    ) -> Result<Lease, RegistryError> {
        match &self.backend {
            Backend::Memory { .. } => self.registry.register_node(id, node),
            Backend::Nats(n) => n.register(id, node).await,
        }
    }

    /// Removes a node and its holdings.
    pub async fn deregister(&self, id: NodeId) -> Result<(), RegistryError> {
        match &self.backend {
            Backend::Memory { .. } => self.registry.remove_node(id),
            Backend::Nats(n) => n.deregister(id).await,
        }
    }

    /// Replaces a node's have-set for a video.
    pub async fn announce(
        &self,
        id: NodeId,
        video: VideoId,
        have: &[FragmentIndex],
    ) -> Result<(), RegistryError> {
        match &self.backend {
            Backend::Memory { .. } => self.registry.set_have(id, video, have),
            Backend::Nats(n) => n.announce(id, video, have).await,
        }
    }
}
