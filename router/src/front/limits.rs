//! Connection limits of the front door: open connections per listener
//! (`max_connections`) and per client address on a listener (`max_connections_per_ip`),
//! and each listener's idle keep-alive timeout. A connection over a limit is closed as
//! soon as it arrives (before a byte is read: it costs nothing more), counted in
//! `strait_router_connections_refused_total{listener,reason}` and logged at most once a
//! second.
//!
//! Counted once per connection, never per request: an atomic per listener; the
//! per-address counts (only when that limit is set) in a map sharded by address, each
//! shard behind its own lock, touched when a connection opens and when it closes.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use prometheus::IntCounter;
use tracing::warn;

use crate::metrics::RouterMetrics;

/// One listener's limits, as configured.
#[derive(Debug, Clone, Copy)]
pub struct ListenerSpec {
    pub addr: SocketAddr,
    pub max_connections: usize,
    pub idle_timeout: Duration,
}

struct Listener {
    spec: ListenerSpec,
    label: String,
    open: AtomicUsize,
    refused_full: IntCounter,
    refused_ip: IntCounter,
}

const SHARDS: usize = 16;

/// The limits of every listener of the front door.
pub struct ConnLimits {
    listeners: Vec<Listener>,
    per_ip: usize,
    by_ip: Vec<Mutex<HashMap<IpAddr, usize>>>,
    /// The last refusal logged, in seconds since the epoch.
    last_warning: AtomicU64,
    default_idle_timeout: Duration,
}

/// An admitted connection; it stops counting when dropped.
pub struct Admitted<'a> {
    limits: &'a ConnLimits,
    listener: Option<usize>,
    ip: Option<IpAddr>,
}

/// The admission of a parked connection (it has no task to borrow the limits for): the
/// counts stay taken until [`ConnLimits::readmit`] turns it back into an [`Admitted`].
pub struct AdmissionToken {
    listener: Option<usize>,
    ip: Option<IpAddr>,
}

impl Admitted<'_> {
    /// The admission without the borrow; the counts stay taken.
    pub fn into_token(mut self) -> AdmissionToken {
        AdmissionToken {
            listener: self.listener.take(),
            ip: self.ip.take(),
        }
    }

    /// The idle keep-alive timeout of the connection's listener.
    pub fn idle_timeout(&self) -> Duration {
        self.listener
            .and_then(|i| self.limits.listeners.get(i))
            .map_or(self.limits.default_idle_timeout, |l| l.spec.idle_timeout)
    }
}

impl Drop for Admitted<'_> {
    fn drop(&mut self) {
        if let Some(listener) = self.listener.and_then(|i| self.limits.listeners.get(i)) {
            listener.open.fetch_sub(1, Ordering::AcqRel);
        }
        if let Some(ip) = self.ip {
            let mut shard = self.limits.shard(ip);
            if let Some(count) = shard.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    shard.remove(&ip);
                }
            }
        }
    }
}

impl ConnLimits {
    /// `per_ip`: 0 for no per-address limit. `default_idle_timeout` serves connections of
    /// no known listener.
    pub fn new(
        listeners: &[ListenerSpec],
        per_ip: usize,
        default_idle_timeout: Duration,
        metrics: &RouterMetrics,
    ) -> ConnLimits {
        let listeners = listeners
            .iter()
            .map(|spec| {
                let label = spec.addr.to_string();
                Listener {
                    refused_full: metrics
                        .connections_refused
                        .with_label_values(&[&label, "max_connections"]),
                    refused_ip: metrics
                        .connections_refused
                        .with_label_values(&[&label, "max_connections_per_ip"]),
                    spec: *spec,
                    label,
                    open: AtomicUsize::new(0),
                }
            })
            .collect();
        ConnLimits {
            listeners,
            per_ip,
            by_ip: (0..SHARDS).map(|_| Mutex::default()).collect(),
            last_warning: AtomicU64::new(0),
            default_idle_timeout,
        }
    }

    fn shard(&self, ip: IpAddr) -> std::sync::MutexGuard<'_, HashMap<IpAddr, usize>> {
        let key = match ip {
            IpAddr::V4(v4) => u32::from(v4) as usize,
            IpAddr::V6(v6) => u128::from(v6) as usize,
        };
        let shard = &self.by_ip[key.wrapping_mul(0x9E37_79B9) % SHARDS];
        // A poisoned shard (a panic while counting) still holds usable counts.
        shard.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Admits a connection that arrived on `local` from `peer`, or refuses it (`None`:
    /// close it now).
    /// A parked connection's admission, held again (released when it drops).
    pub fn readmit(&self, token: AdmissionToken) -> Admitted<'_> {
        Admitted {
            limits: self,
            listener: token.listener,
            ip: token.ip,
        }
    }

    pub fn admit(&self, local: Option<SocketAddr>, peer: Option<IpAddr>) -> Option<Admitted<'_>> {
        let listener = local.and_then(|local| {
            self.listeners.iter().position(|l| {
                l.spec.addr.port() == local.port()
                    && (l.spec.addr.ip().is_unspecified() || l.spec.addr.ip() == local.ip())
            })
        });
        let mut admitted = Admitted {
            limits: self,
            listener: None,
            ip: None,
        };
        if let Some(index) = listener {
            let l = &self.listeners[index];
            if l.open.fetch_add(1, Ordering::AcqRel) >= l.spec.max_connections {
                l.open.fetch_sub(1, Ordering::AcqRel);
                l.refused_full.inc();
                self.warn(l, "max_connections", peer);
                return None;
            }
            admitted.listener = Some(index);
        }
        if self.per_ip > 0
            && let Some(ip) = peer
        {
            let mut shard = self.shard(ip);
            let count = shard.entry(ip).or_insert(0);
            if *count >= self.per_ip {
                drop(shard);
                if let Some(l) = listener.map(|i| &self.listeners[i]) {
                    l.refused_ip.inc();
                    self.warn(l, "max_connections_per_ip", peer);
                }
                return None; // `admitted` drops: the listener's count goes back
            }
            *count += 1;
            admitted.ip = Some(ip);
        }
        Some(admitted)
    }

    fn warn(&self, listener: &Listener, reason: &str, peer: Option<IpAddr>) {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if self.last_warning.swap(now, Ordering::Relaxed) != now {
            warn!(
                listener = %listener.label,
                reason,
                client = ?peer,
                limit = if reason == "max_connections" {
                    listener.spec.max_connections
                } else {
                    self.per_ip
                },
                "connection refused: limit reached (strait_router_connections_refused_total)"
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_per_listener_and_per_address_count_open_connections() {
        let registry = prometheus::Registry::new();
        let metrics = RouterMetrics::new(&registry).expect("metrics");
        let addr: SocketAddr = "0.0.0.0:8080".parse().expect("addr");
        let limits = ConnLimits::new(
            &[ListenerSpec {
                addr,
                max_connections: 3,
                idle_timeout: Duration::from_secs(7),
            }],
            2,
            Duration::from_secs(60),
            &metrics,
        );
        let local = Some("127.0.0.1:8080".parse().expect("addr"));
        let a: IpAddr = "10.0.0.1".parse().expect("ip");
        let b: IpAddr = "10.0.0.2".parse().expect("ip");
        let first = limits.admit(local, Some(a)).expect("first");
        assert_eq!(first.idle_timeout(), Duration::from_secs(7));
        let second = limits.admit(local, Some(a)).expect("second");
        assert!(
            limits.admit(local, Some(a)).is_none(),
            "a third from one address"
        );
        let third = limits.admit(local, Some(b)).expect("another address");
        assert!(
            limits.admit(local, Some(b)).is_none(),
            "the listener is full"
        );
        drop(first);
        let again = limits.admit(local, Some(a)).expect("room again");
        let refused = |reason: &str| {
            metrics
                .connections_refused
                .with_label_values(&["0.0.0.0:8080", reason])
                .get()
        };
        assert_eq!(refused("max_connections_per_ip"), 1);
        assert_eq!(refused("max_connections"), 1);
        // A parked connection's token keeps its counts until it is taken up and dropped.
        let token = again.into_token();
        assert!(limits.admit(local, Some(a)).is_none(), "still counted");
        let again = limits.readmit(token);
        drop((second, third, again));
        assert!(
            limits
                .by_ip
                .iter()
                .all(|s| s.lock().expect("lock").is_empty())
        );
        // A connection of no known listener is only limited per address.
        let other = limits.admit(Some("127.0.0.1:9".parse().expect("addr")), None);
        assert_eq!(
            other.expect("admitted").idle_timeout(),
            Duration::from_secs(60)
        );
    }
}
