//! Connections and idle protocol sessions to peers, reused across requests and
//! downloads (one pool per node).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::addr::PeerAddr;
use crate::protocol::{PeerClient, ProtocolError, Timeouts};
use crate::transport::{Connection, Transports};

/// Connections and idle protocol sessions to peers, reused across requests.
pub struct PeerPool {
    transports: Transports,
    timeouts: Timeouts,
    conns: Mutex<HashMap<PeerAddr, Arc<dyn Connection>>>,
    idle: Mutex<HashMap<PeerAddr, Vec<PeerClient>>>,
}

impl std::fmt::Debug for PeerPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerPool")
            .field("transports", &self.transports)
            .finish_non_exhaustive()
    }
}

const MAX_IDLE_PER_PEER: usize = 16;

impl PeerPool {
    /// A pool dialing with `transports`.
    pub fn new(transports: Transports, timeouts: Timeouts) -> Self {
        PeerPool {
            transports,
            timeouts,
            conns: Mutex::default(),
            idle: Mutex::default(),
        }
    }

    /// The transports this pool dials with.
    pub fn transports(&self) -> &Transports {
        &self.transports
    }

    /// An idle session to `addr`, or a new one (dialing if there is no connection).
    pub async fn session(&self, addr: &PeerAddr) -> Result<PeerClient, ProtocolError> {
        if let Some(s) = self
            .idle
            .lock()
            .unwrap()
            .get_mut(addr)
            .and_then(|v| v.pop())
        {
            return Ok(s);
        }
        let cached = self.conns.lock().unwrap().get(addr).cloned();
        let conn = match cached {
            Some(c) => c,
            None => {
                let dialed = tokio::time::timeout(self.timeouts.io, self.transports.dial(addr))
                    .await
                    .map_err(|_| ProtocolError::Timeout("connecting"))??;
                let c: Arc<dyn Connection> = Arc::from(dialed);
                self.conns.lock().unwrap().insert(addr.clone(), c.clone());
                c
            }
        };
        match PeerClient::open(conn, self.timeouts).await {
            Ok(s) => Ok(s),
            Err(e) => {
                self.forget(addr);
                Err(e)
            }
        }
    }

    /// Returns a healthy session for reuse.
    pub fn put_back(&self, addr: &PeerAddr, s: PeerClient) {
        let mut idle = self.idle.lock().unwrap();
        let v = idle.entry(addr.clone()).or_default();
        if v.len() < MAX_IDLE_PER_PEER {
            v.push(s);
        }
    }

    /// Drops the connection and idle sessions to `addr` (after an error).
    pub fn forget(&self, addr: &PeerAddr) {
        self.conns.lock().unwrap().remove(addr);
        self.idle.lock().unwrap().remove(addr);
    }
}
