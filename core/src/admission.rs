//! Admission of connections, fair per client: a bound on connections in all and a
//! smaller bound per client, so one address cannot take every slot of a listener.
//!
//! Every listener (peer, broker, manager, HTTP) admits a connection here before it
//! reads a byte. A client is an IPv4 address, or an IPv6 /64 (one host usually owns a
//! whole /64, so counting single IPv6 addresses would be no bound at all). An
//! IPv4-mapped IPv6 address counts as its IPv4 address.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

/// Who a connection is counted against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct ClientKey(IpAddr);

impl ClientKey {
    /// The key of `ip`: itself for IPv4, its /64 for IPv6.
    pub fn of(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => ClientKey(IpAddr::V4(v4)),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => ClientKey(IpAddr::V4(v4)),
                None => {
                    let s = v6.segments();
                    ClientKey(IpAddr::V6(Ipv6Addr::new(
                        s[0], s[1], s[2], s[3], 0, 0, 0, 0,
                    )))
                }
            },
        }
    }
}

impl std::fmt::Display for ClientKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(v4) => write!(f, "{v4}"),
            IpAddr::V6(v6) => write!(f, "{v6}/64"),
        }
    }
}

/// Why a connection was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    /// The listener holds its maximum number of connections.
    #[error("busy: connection limit reached, try again later")]
    Full,
    /// This client holds its share of the listener's connections.
    #[error("busy: too many connections from your address ({0} open)")]
    ClientFull(usize),
}

/// Bounds in all and per client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AdmissionLimits {
    /// Connections open at once, all clients together.
    pub max_total: usize,
    /// Connections open at once from one client.
    pub per_client: usize,
}

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_client: HashMap<ClientKey, usize>,
}

/// The admission state of one listener. Cheap to share (`Arc`).
#[derive(Debug)]
pub struct Admission {
    limits: AdmissionLimits,
    counts: Mutex<Counts>,
    /// Woken whenever a connection ends, for callers that wait for a slot.
    freed: Notify,
}

/// One admitted connection: its slot is given back when this is dropped.
#[derive(Debug)]
#[must_use = "the slot is released when the permit is dropped"]
pub struct Admit {
    admission: Arc<Admission>,
    key: ClientKey,
}

impl Admit {
    /// The client this connection is counted against.
    pub fn client(&self) -> ClientKey {
        self.key
    }
}

impl Drop for Admit {
    fn drop(&mut self) {
        let mut c = self
            .admission
            .counts
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        c.total = c.total.saturating_sub(1);
        if let Some(n) = c.by_client.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                c.by_client.remove(&self.key);
            }
        }
        drop(c);
        self.admission.freed.notify_waiters();
    }
}

impl Admission {
    /// A listener's admission with these bounds (each at least 1; `per_client` at most
    /// `max_total`).
    pub fn new(limits: AdmissionLimits) -> Arc<Self> {
        let max_total = limits.max_total.max(1);
        let per_client = limits.per_client.clamp(1, max_total);
        Arc::new(Admission {
            limits: AdmissionLimits {
                max_total,
                per_client,
            },
            counts: Mutex::new(Counts::default()),
            freed: Notify::new(),
        })
    }

    /// The bounds in force.
    pub fn limits(&self) -> AdmissionLimits {
        self.limits
    }

    /// Admits a connection from `ip` now, or says why not.
    pub fn try_admit(self: &Arc<Self>, ip: IpAddr) -> Result<Admit, Refused> {
        let key = ClientKey::of(ip);
        let mut c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        let mine = c.by_client.get(&key).copied().unwrap_or(0);
        if mine >= self.limits.per_client {
            return Err(Refused::ClientFull(mine));
        }
        if c.total >= self.limits.max_total {
            return Err(Refused::Full);
        }
        c.total += 1;
        *c.by_client.entry(key).or_insert(0) += 1;
        Ok(Admit {
            admission: Arc::clone(self),
            key,
        })
    }

    /// Admits a connection from `ip`, waiting up to `wait` for a slot while the
    /// listener is full. A client over its own share is refused at once: waiting would
    /// only let it queue more.
    pub async fn admit_within(
        self: &Arc<Self>,
        ip: IpAddr,
        wait: Duration,
    ) -> Result<Admit, Refused> {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let freed = self.freed.notified();
            match self.try_admit(ip) {
                Err(Refused::Full) if tokio::time::Instant::now() < deadline => {
                    if tokio::time::timeout_at(deadline, freed).await.is_err() {
                        return self.try_admit(ip);
                    }
                }
                other => return other,
            }
        }
    }

    /// Connections open now from `ip`'s client.
    pub fn open_from(&self, ip: IpAddr) -> usize {
        let c = self.counts.lock().unwrap_or_else(|e| e.into_inner());
        c.by_client.get(&ClientKey::of(ip)).copied().unwrap_or(0)
    }

    /// Connections open now, all clients.
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|e| e.into_inner()).total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn one_client_cannot_take_every_slot() {
        let a = Admission::new(AdmissionLimits {
            max_total: 4,
            per_client: 2,
        });
        let _p1 = a.try_admit(ip("10.0.0.1")).unwrap();
        let _p2 = a.try_admit(ip("10.0.0.1")).unwrap();
        assert_eq!(
            a.try_admit(ip("10.0.0.1")).unwrap_err(),
            Refused::ClientFull(2)
        );
        let _q1 = a.try_admit(ip("10.0.0.2")).unwrap();
        let _q2 = a.try_admit(ip("10.0.0.2")).unwrap();
        assert_eq!(a.try_admit(ip("10.0.0.3")).unwrap_err(), Refused::Full);
        assert_eq!(a.open(), 4);
    }

    #[test]
    fn a_dropped_permit_frees_its_slot() {
        let a = Admission::new(AdmissionLimits {
            max_total: 1,
            per_client: 1,
        });
        let p = a.try_admit(ip("10.0.0.1")).unwrap();
        assert!(a.try_admit(ip("10.0.0.2")).is_err());
        drop(p);
        assert_eq!(a.open(), 0);
        assert_eq!(a.open_from(ip("10.0.0.1")), 0);
        let _p = a.try_admit(ip("10.0.0.2")).unwrap();
    }

    #[test]
    fn ipv6_counts_per_64_and_mapped_ipv4_as_ipv4() {
        let a = Admission::new(AdmissionLimits {
            max_total: 10,
            per_client: 1,
        });
        let _p = a.try_admit(ip("2001:db8:1:2::1")).unwrap();
        assert!(a.try_admit(ip("2001:db8:1:2::ffff")).is_err());
        let _q = a.try_admit(ip("2001:db8:1:3::1")).unwrap();
        let _r = a.try_admit(ip("192.0.2.7")).unwrap();
        assert!(a.try_admit(ip("::ffff:192.0.2.7")).is_err());
    }

    #[tokio::test]
    async fn a_waiter_gets_the_slot_another_client_frees() {
        let a = Admission::new(AdmissionLimits {
            max_total: 1,
            per_client: 1,
        });
        let p = a.try_admit(ip("10.0.0.1")).unwrap();
        let a2 = Arc::clone(&a);
        let waiter = tokio::spawn(async move {
            a2.admit_within(ip("10.0.0.2"), Duration::from_secs(5))
                .await
                .map(|_| ())
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        drop(p);
        let got = tokio::time::timeout(Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
        assert!(got.is_ok());
        // Nobody frees a slot: the wait ends with Full.
        let _hold = a.try_admit(ip("10.0.0.3")).unwrap();
        let r = tokio::time::timeout(
            Duration::from_secs(5),
            a.admit_within(ip("10.0.0.4"), Duration::from_millis(100)),
        )
        .await
        .unwrap();
        assert_eq!(r.unwrap_err(), Refused::Full);
    }
}
