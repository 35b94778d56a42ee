//! Peers whose bytes failed verification, banned for the node's life: every later
//! download skips them, by address and, where the transport authenticates it (QUIC),
//! by node id, so a liar that comes back on another address stays banned.

use std::collections::HashSet;
use std::sync::Mutex;

use crate::addr::PeerAddr;
use crate::ids::NodeId;

/// Most addresses and node ids kept; the oldest bans go first beyond this.
const MAX_BANS: usize = 4096;

/// The node's bans.
#[derive(Debug, Default)]
pub struct Bans {
    addrs: Mutex<indexmap::IndexSet<(String, String, u16)>>,
    nodes: Mutex<HashSet<NodeId>>,
}

fn key(a: &PeerAddr) -> (String, String, u16) {
    (a.scheme.clone(), a.host.clone(), a.port)
}

impl Bans {
    /// Bans `addr`, and `node` when known (an address may name one, or the transport
    /// authenticated one).
    pub fn ban(&self, addr: &PeerAddr, node: Option<NodeId>) {
        let mut addrs = self.addrs.lock().unwrap();
        addrs.insert(key(addr));
        while addrs.len() > MAX_BANS {
            addrs.shift_remove_index(0);
        }
        if let Some(n) = node.or(addr.node_id) {
            let mut nodes = self.nodes.lock().unwrap();
            if nodes.len() < MAX_BANS {
                nodes.insert(n);
            }
        }
    }

    /// Whether `addr` (or the node it names) is banned.
    pub fn is_banned(&self, addr: &PeerAddr) -> bool {
        self.addrs.lock().unwrap().contains(&key(addr))
            || addr.node_id.is_some_and(|n| self.is_banned_node(n))
    }

    /// Whether node `n` is banned.
    pub fn is_banned_node(&self, n: NodeId) -> bool {
        self.nodes.lock().unwrap().contains(&n)
    }

    /// How many addresses are banned.
    pub fn len(&self) -> usize {
        self.addrs.lock().unwrap().len()
    }

    /// Whether nothing is banned.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
