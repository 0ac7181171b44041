//! A service's pool: its eligible instances, how to pick among them, and the runtime
//! state (outstanding requests, failures, ejections, round-robin position) that must
//! survive table swaps.
//!
//! A `Pool` is rebuilt with every table, but its `EndpointState`s and `PoolShared` are
//! `Arc`s handed over from the previous table by [`super::PoolStates`], so a swap never resets
//! health or balance. Picking is lock-free: atomics and a thread-local RNG.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::config::{BalancerKind, HashOn, OutlierConfig};

/// Longest ejection, however often an endpoint fails.
const MAX_EJECTION: Duration = Duration::from_secs(300);
/// An endpoint not ejected for this long starts again at the base ejection time.
const EJECTION_MEMORY: Duration = Duration::from_secs(300);
/// Consistent hashing: ring points per unit of weight, and the bounded-load factor.
const RING_POINTS_PER_WEIGHT: u32 = 64;
const MAX_RING_POINTS: usize = 1 << 20;
const BOUNDED_LOAD_FACTOR: f64 = 1.25;
/// Round robin schedules longer than this are scaled down (weights keep their ratio).
const MAX_SCHEDULE: u64 = 4096;

/// Milliseconds since the router started: a cheap monotonic clock for atomics.
#[derive(Clone, Copy)]
pub struct Clock(Instant);

impl Clock {
    pub fn new() -> Self {
        Clock(Instant::now())
    }

    pub fn now_ms(&self) -> u64 {
        u64::try_from(self.0.elapsed().as_millis()).unwrap_or(u64::MAX)
    }
}

impl Default for Clock {
    fn default() -> Self {
        Clock::new()
    }
}

/// Runtime state of one endpoint, shared across tables.
#[derive(Debug, Default)]
pub struct EndpointState {
    pub outstanding: AtomicU32,
    consecutive_failures: AtomicU32,
    /// Ejected while `now_ms < ejected_until`.
    ejected_until: AtomicU64,
    ejections: AtomicU32,
    last_ejection: AtomicU64,
    /// Taken out by the router's active health checks ([`crate::paths::health`]).
    pub failing_checks: std::sync::atomic::AtomicBool,
    /// Active checks: consecutive passes and failures, the next check (ms on the
    /// router's clock), and whether one is running.
    pub(crate) check_passes: AtomicU32,
    pub(crate) check_failures: AtomicU32,
    pub(crate) next_check_ms: AtomicU64,
    pub(crate) checking: std::sync::atomic::AtomicBool,
}

impl EndpointState {
    /// Out of the pool for now: ejected by outlier detection, or failing active checks.
    pub fn is_ejected(&self, now_ms: u64) -> bool {
        self.ejected_until.load(Ordering::Relaxed) > now_ms
            || self.failing_checks.load(Ordering::Relaxed)
    }
}

/// One eligible instance in one table.
#[derive(Debug)]
pub struct Endpoint {
    pub id: Arc<str>,
    pub addr: SocketAddr,
    pub zone: Option<Arc<str>>,
    pub weight: u32,
    pub state: Arc<EndpointState>,
    /// Left the store, kept by the mass-removal guard ([`super::PoolStates`]): it serves,
    /// but a retry goes elsewhere first.
    pub stale: bool,
}

/// Per-service state shared across tables.
#[derive(Debug, Default)]
pub struct PoolShared {
    round_robin: AtomicUsize,
    /// Requests in flight to this service, and how many of them are retries.
    pub active: AtomicU32,
    pub retries_active: AtomicU32,
    /// When this service's last upstream TLS failure was logged (ms on the router's
    /// clock; 0: never): at most one line a second per service.
    pub tls_warned_ms: AtomicU64,
}

/// Which endpoints a pick may use: the local zone's, or all.
#[derive(Debug)]
struct Candidates {
    indices: Vec<u32>,
    /// Round robin: indices in smooth-weighted order.
    schedule: Vec<u32>,
    /// Consistent hash: (point, index), sorted by point.
    ring: Vec<(u64, u32)>,
    /// Weighted random: cumulative weights, parallel to `indices` (empty otherwise).
    cumulative: Vec<u64>,
}

#[derive(Debug)]
pub struct Pool {
    pub service: Arc<str>,
    pub endpoints: Vec<Endpoint>,
    kind: BalancerKind,
    hash_on: Option<HashOn>,
    local: Option<Candidates>,
    all: Candidates,
    min_local: usize,
    pub shared: Arc<PoolShared>,
    /// Registered instances left out of the pool, and why (for `route explain`).
    pub excluded: Vec<(Arc<str>, String)>,
    /// Speak HTTP/2 to this service's instances: prior knowledge (h2c) in cleartext,
    /// ALPN `h2` over TLS.
    pub http2: bool,
    /// Connect over TLS with these settings (`None`: cleartext).
    pub tls: Option<Arc<crate::tls::UpstreamTls>>,
    /// This service's upstream duration histogram (resolved on first use).
    pub(crate) upstream_duration: std::sync::OnceLock<prometheus::Histogram>,
    /// Active health checks of this service's instances, if configured.
    pub health_check: Option<Arc<crate::config::HealthCheckConfig>>,
}

/// Indices already tried by this request; retries go elsewhere when they can.
#[derive(Debug, Default, Clone, Copy)]
pub struct Tried {
    indices: [u32; 8],
    len: usize,
}

impl Tried {
    pub fn push(&mut self, index: usize) {
        if self.len < self.indices.len() {
            self.indices[self.len] = index as u32;
            self.len += 1;
        }
    }

    pub fn contains(&self, index: usize) -> bool {
        self.indices[..self.len].contains(&(index as u32))
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

impl Pool {
    pub fn new(
        service: Arc<str>,
        endpoints: Vec<Endpoint>,
        kind: BalancerKind,
        hash_on: Option<HashOn>,
        own_zone: Option<&str>,
        min_local: usize,
        shared: Arc<PoolShared>,
    ) -> Pool {
        let all: Vec<u32> = (0..endpoints.len() as u32).collect();
        let local = own_zone.map(|zone| {
            endpoints
                .iter()
                .enumerate()
                .filter(|(_, e)| e.zone.as_deref() == Some(zone))
                .map(|(i, _)| i as u32)
                .collect::<Vec<_>>()
        });
        let build = |indices: Vec<u32>| Candidates::build(indices, &endpoints, kind);
        let local = local.filter(|l| !l.is_empty()).map(build);
        let all = build(all);
        Pool {
            service,
            endpoints,
            kind,
            hash_on,
            local,
            all,
            min_local: min_local.max(1),
            shared,
            excluded: Vec::new(),
            http2: false,
            tls: None,
            upstream_duration: std::sync::OnceLock::new(),
            health_check: None,
        }
    }

    /// Whether picks use only the local zone right now (control plane / explain only).
    pub fn local_zone_in_use(&self, now_ms: u64) -> Option<bool> {
        self.local.as_ref()?;
        Some(!std::ptr::eq(self.candidates(now_ms), &self.all))
    }

    /// Whether endpoint `index` is in the local-zone candidate set.
    pub fn is_local(&self, index: usize) -> bool {
        self.local
            .as_ref()
            .is_some_and(|l| l.indices.contains(&(index as u32)))
    }

    /// Milliseconds left in the endpoint's ejection, if ejected.
    pub fn ejected_for(&self, index: usize, now_ms: u64) -> Option<u64> {
        let until = self
            .endpoints
            .get(index)?
            .state
            .ejected_until
            .load(Ordering::Relaxed);
        (until > now_ms).then(|| until - now_ms)
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }

    pub fn hash_on(&self) -> Option<&HashOn> {
        self.hash_on.as_ref()
    }

    fn usable(&self, index: u32, now_ms: u64, tried: &Tried, ignore_ejection: bool) -> bool {
        let i = index as usize;
        let endpoint = &self.endpoints[i];
        !tried.contains(i)
            && (ignore_ejection
                || !(endpoint.state.is_ejected(now_ms) || (endpoint.stale && !tried.is_empty())))
    }

    /// The candidate set: local zone while it has enough non-ejected endpoints.
    fn candidates(&self, now_ms: u64) -> &Candidates {
        if let Some(local) = &self.local {
            let available = local
                .indices
                .iter()
                .filter(|&&i| !self.endpoints[i as usize].state.is_ejected(now_ms))
                .take(self.min_local)
                .count();
            if available >= self.min_local {
                return local;
            }
        }
        &self.all
    }

    /// Picks an endpoint, avoiding `tried` and ejected ones when others exist. `hash` is
    /// the request's consistent-hash key, if the balancer uses one.
    pub fn pick(&self, now_ms: u64, tried: &Tried, hash: Option<u64>) -> Option<usize> {
        if self.endpoints.is_empty() {
            return None;
        }
        let candidates = self.candidates(now_ms);
        // Passes: normal; then ignoring ejection (never leave a pool with nothing, the
        // panic rule); then the whole pool, ignoring `tried` too.
        for ignore_ejection in [false, true] {
            if let Some(i) = self.pick_from(candidates, now_ms, tried, hash, ignore_ejection) {
                return Some(i);
            }
            if !std::ptr::eq(candidates, &self.all)
                && let Some(i) = self.pick_from(&self.all, now_ms, tried, hash, ignore_ejection)
            {
                return Some(i);
            }
        }
        self.pick_from(&self.all, now_ms, &Tried::default(), hash, true)
    }

    fn pick_from(
        &self,
        c: &Candidates,
        now_ms: u64,
        tried: &Tried,
        hash: Option<u64>,
        ignore_ejection: bool,
    ) -> Option<usize> {
        let n = c.indices.len();
        if n == 0 {
            return None;
        }
        let usable = |i: u32| self.usable(i, now_ms, tried, ignore_ejection);
        let pick = match (self.kind, hash) {
            (BalancerKind::RoundRobin, _) => {
                let len = c.schedule.len();
                let start = self.shared.round_robin.fetch_add(1, Ordering::Relaxed);
                (0..len)
                    .map(|k| c.schedule[(start + k) % len])
                    .find(|&i| usable(i))
            }
            (BalancerKind::ConsistentHash, Some(key)) => self.pick_ring(c, key, usable),
            (BalancerKind::Random, _) => {
                let total = c.cumulative.last().copied().unwrap_or(0);
                let first = if total > 0 {
                    let draw = rand::random_range(0..total);
                    let at = c.cumulative.partition_point(|&w| w <= draw);
                    c.indices.get(at).copied().filter(|&i| usable(i))
                } else {
                    None
                };
                first.or_else(|| self.scan_from_random(c, usable))
            }
            // Least request, and consistent hash without a key.
            _ => self.pick_two(c, usable),
        };
        pick.map(|i| i as usize)
    }

    /// Power of two choices: of two random usable endpoints, the one with fewer
    /// outstanding requests per unit of weight.
    fn pick_two(&self, c: &Candidates, usable: impl Fn(u32) -> bool) -> Option<u32> {
        let n = c.indices.len();
        if n == 1 {
            return Some(c.indices[0]).filter(|&i| usable(i));
        }
        let draw = || {
            (0..4)
                .map(|_| c.indices[rand::random_range(0..n)])
                .find(|&i| usable(i))
        };
        let (Some(a), b) = (draw(), draw()) else {
            return self.scan_from_random(c, &usable);
        };
        let Some(b) = b.filter(|&b| b != a) else {
            return Some(a);
        };
        let load = |i: u32| {
            let e = &self.endpoints[i as usize];
            u64::from(e.state.outstanding.load(Ordering::Relaxed))
        };
        let (wa, wb) = (
            u64::from(self.endpoints[a as usize].weight),
            u64::from(self.endpoints[b as usize].weight),
        );
        // load_a / wa vs load_b / wb, without division.
        let (la, lb) = (load(a) * wb, load(b) * wa);
        Some(if la < lb || (la == lb && wa >= wb) {
            a
        } else {
            b
        })
    }

    fn scan_from_random(&self, c: &Candidates, usable: impl Fn(u32) -> bool) -> Option<u32> {
        let n = c.indices.len();
        let start = rand::random_range(0..n);
        (0..n)
            .map(|k| c.indices[(start + k) % n])
            .find(|&i| usable(i))
    }

    /// Ring lookup with bounded load: walk clockwise past endpoints carrying more than
    /// `BOUNDED_LOAD_FACTOR` times the average load.
    fn pick_ring(&self, c: &Candidates, key: u64, usable: impl Fn(u32) -> bool) -> Option<u32> {
        if c.ring.is_empty() {
            return None;
        }
        let total: u64 = c
            .indices
            .iter()
            .map(|&i| {
                u64::from(
                    self.endpoints[i as usize]
                        .state
                        .outstanding
                        .load(Ordering::Relaxed),
                )
            })
            .sum();
        let limit =
            ((total + 1) as f64 * BOUNDED_LOAD_FACTOR / c.indices.len() as f64).ceil() as u64;
        let start = c.ring.partition_point(|&(point, _)| point < key);
        let mut fallback = None;
        for k in 0..c.ring.len() {
            let (_, i) = c.ring[(start + k) % c.ring.len()];
            if !usable(i) {
                continue;
            }
            fallback.get_or_insert(i);
            let load = u64::from(
                self.endpoints[i as usize]
                    .state
                    .outstanding
                    .load(Ordering::Relaxed),
            );
            if load < limit {
                return Some(i);
            }
        }
        fallback
    }

    /// A success resets the endpoint's failure count.
    pub fn record_success(&self, index: usize) {
        if let Some(e) = self.endpoints.get(index) {
            e.state.consecutive_failures.store(0, Ordering::Relaxed);
        }
    }

    /// Counts a connect failure or 5xx; returns true if this ejected the endpoint.
    pub fn record_failure(&self, index: usize, config: &OutlierConfig, now_ms: u64) -> bool {
        let Some(endpoint) = self.endpoints.get(index) else {
            return false;
        };
        let state = &endpoint.state;
        let failures = state.consecutive_failures.fetch_add(1, Ordering::Relaxed) + 1;
        if config.consecutive_failures == 0
            || failures < config.consecutive_failures
            || state.is_ejected(now_ms)
        {
            return false;
        }
        let ejected = self
            .endpoints
            .iter()
            .filter(|e| e.state.is_ejected(now_ms))
            .count();
        let allowed = self.endpoints.len() * config.max_ejection_percent as usize / 100;
        if ejected + 1 > allowed {
            return false;
        }
        let last = state.last_ejection.swap(now_ms, Ordering::Relaxed);
        let remembered =
            last > 0 && now_ms.saturating_sub(last) < EJECTION_MEMORY.as_millis() as u64;
        let count = if remembered {
            state.ejections.fetch_add(1, Ordering::Relaxed) + 1
        } else {
            state.ejections.store(1, Ordering::Relaxed);
            1
        };
        let duration = config
            .base_ejection
            .saturating_mul(1 << (count - 1).min(16))
            .min(MAX_EJECTION);
        state
            .ejected_until
            .store(now_ms + duration.as_millis() as u64, Ordering::Relaxed);
        state.consecutive_failures.store(0, Ordering::Relaxed);
        true
    }
}

impl Candidates {
    fn build(indices: Vec<u32>, endpoints: &[Endpoint], kind: BalancerKind) -> Candidates {
        let weight = |i: u32| u64::from(endpoints[i as usize].weight.max(1));
        let schedule = if kind == BalancerKind::RoundRobin {
            smooth_schedule(&indices, &weight)
        } else {
            Vec::new()
        };
        let ring = if kind == BalancerKind::ConsistentHash {
            // Scale weights down (keeping their ratio) so every endpoint fits on the ring.
            let total: u64 = indices.iter().map(|&i| weight(i)).sum();
            let budget = (MAX_RING_POINTS as u64 / u64::from(RING_POINTS_PER_WEIGHT)).max(1);
            let scale = total.div_ceil(budget).max(1);
            let mut ring = Vec::new();
            for &i in &indices {
                let points =
                    ((weight(i) / scale).max(1) as u32).saturating_mul(RING_POINTS_PER_WEIGHT);
                for p in 0..points {
                    let id = endpoints[i as usize].id.as_bytes();
                    ring.push((fnv1a(&[id, b"#", &p.to_le_bytes()]), i));
                }
            }
            ring.sort_unstable();
            ring
        } else {
            Vec::new()
        };
        // Only weighted random reads them: 8 bytes an endpoint the other kinds keep.
        let cumulative = if kind == BalancerKind::Random {
            indices
                .iter()
                .scan(0u64, |sum, &i| {
                    *sum += weight(i);
                    Some(*sum)
                })
                .collect()
        } else {
            Vec::new()
        };
        Candidates {
            indices,
            schedule,
            ring,
            cumulative,
        }
    }
}

/// Smooth weighted round robin (nginx's), unrolled into a schedule at build time.
fn smooth_schedule(indices: &[u32], weight: &impl Fn(u32) -> u64) -> Vec<u32> {
    if indices.is_empty() {
        return Vec::new();
    }
    let total: u64 = indices.iter().map(|&i| weight(i)).sum();
    let scale = total.div_ceil(MAX_SCHEDULE).max(1);
    let weights: Vec<i64> = indices
        .iter()
        .map(|&i| (weight(i) / scale).max(1) as i64)
        .collect();
    let total: i64 = weights.iter().sum();
    let mut current = vec![0i64; indices.len()];
    let mut schedule = Vec::with_capacity(total as usize);
    for _ in 0..total {
        for (c, w) in current.iter_mut().zip(&weights) {
            *c += w;
        }
        let (best, _) = current
            .iter()
            .enumerate()
            .max_by_key(|&(k, &c)| (c, std::cmp::Reverse(k)))
            .unwrap_or((0, &0));
        current[best] -= total;
        schedule.push(indices[best]);
    }
    schedule
}

/// FNV-1a: stable across processes and versions, so every router agrees on the ring.
pub fn fnv1a(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &b in *part {
            hash ^= u64::from(b);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    hash
}

#[cfg(test)]
mod tests;
