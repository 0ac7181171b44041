//! Building pools from a snapshot (control plane), and the state one table hands the
//! next so that a swap keeps health and balance.
//!
//! The mass-removal guard lives here too: when an update would take more than
//! `mass_removal.fraction` of a pool's routable instances out by their vanishing from
//! the store (an agent fleet's ZooKeeper sessions expiring together, a script
//! deregistering everything), the vanished ones stay in the pool, marked stale, for
//! `mass_removal.hold`, as SmartStack and Envoy operators learned to keep the last
//! known instances. Only vanishing counts: an instance still registered whose health
//! turned critical (its checks fail) or `maintenance` (a deployment draining it) leaves
//! the pool at once, and one that was not routable before it vanished (drained, then
//! deregistered) is not held.

use std::cmp::Ordering;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use discovery::Snapshot;
use discovery::model::{Health, Instance};
use discovery::snapshot::{Service, ServiceMap};
use tracing::{info, warn};

use super::balance::{Endpoint, EndpointState, Pool};
use crate::config::{RouterConfig, UpstreamProtocol};
use crate::tls::UpstreamTlsSet;

/// What one table hands the next: per service, the `Service` its pool was built from and
/// the pool. Each update diffs the snapshot's map of services against the one seen last,
/// by pointer, and rebuilds only the pools of services whose `Arc<Service>` changed (so a
/// change to one service costs one pool, not all); a rebuilt pool inherits the state of
/// endpoints with the same id and address, and the pool-wide state. Services that left
/// the snapshot are dropped, so a re-registered instance starts fresh.
/// It also carries the services' upstream TLS, loaded once at startup.
#[derive(Default)]
pub struct PoolStates {
    services: HashMap<Arc<str>, (Arc<Service>, Arc<Pool>), foldhash::fast::RandomState>,
    /// The snapshot's map of services last seen: the next one is diffed against it.
    seen: Arc<ServiceMap>,
    /// `seen`'s entries as (name, service) addresses in key order (`seen` keeps them
    /// alive, so an address is never reused for another service). A map with the same
    /// names is compared with it in one pass over contiguous memory; walking `seen`'s
    /// nodes again costs a cache miss a node (~3 ms more at 100k services).
    seen_addresses: Vec<(usize, usize)>,
    upstream_tls: UpstreamTlsSet,
    /// Instances the mass-removal guard keeps, per service, and until when.
    held: HashMap<Arc<str>, Vec<(Instance, Instant)>>,
    /// Services whose mass removal was held back since the last `take_mass_removals`.
    mass_removals: Vec<Arc<str>>,
}

/// Services whose pool an update replaced (`Some`: the new pool) or removed (`None`).
pub type PoolChanges = Vec<(Arc<str>, Option<Arc<Pool>>)>;

impl PoolStates {
    /// Pools built with these services' upstream TLS (see [`crate::tls::upstream`]).
    pub fn with_upstream_tls(upstream_tls: UpstreamTlsSet) -> Self {
        PoolStates {
            upstream_tls,
            ..PoolStates::default()
        }
    }

    /// When the next held instance's time is up (the follower rebuilds then).
    pub fn next_expiry(&self) -> Option<Instant> {
        self.held.values().flatten().map(|(_, until)| *until).min()
    }

    /// Held (stale) instances per service, for the metric.
    pub fn stale_counts(&self) -> impl Iterator<Item = (&Arc<str>, usize)> {
        self.held.iter().map(|(name, held)| (name, held.len()))
    }

    /// Services whose mass removal the guard held back since the last call.
    pub fn take_mass_removals(&mut self) -> Vec<Arc<str>> {
        std::mem::take(&mut self.mass_removals)
    }

    /// Updates the guard's held instances of `name` for its new `current` state; returns
    /// the service to build from (the snapshot's, or it with the held instances added).
    fn guard(
        &mut self,
        name: &Arc<str>,
        current: Option<&Arc<Service>>,
        config: &RouterConfig,
        now: Instant,
    ) -> Option<Arc<Service>> {
        let present = |id: &str| current.is_some_and(|s| s.instances.contains_key(id));
        // (The maps are looked into only when not empty: a cold build asks 100k times.)
        let mut held = if self.held.is_empty() {
            Vec::new()
        } else {
            self.held.remove(name).unwrap_or_default()
        };
        // Back in the store (its own registration rules again), or time is up.
        held.retain(|(instance, until)| *until > now && !present(&instance.id));
        let guard = &config.mass_removal;
        if guard.fraction < 100
            && let Some((built_from, pool)) = self.services.get(name)
        {
            let routable: Vec<&Arc<str>> = pool
                .endpoints
                .iter()
                .filter(|e| !e.stale)
                .map(|e| &e.id)
                .collect();
            let vanished: Vec<&Instance> = routable
                .iter()
                .filter(|id| !present(id))
                .filter_map(|id| built_from.instances.get(&***id))
                .collect();
            if !vanished.is_empty()
                && vanished.len() * 100 > routable.len() * guard.fraction as usize
            {
                warn!(
                    service = %name,
                    vanished = vanished.len(),
                    routable = routable.len(),
                    hold = ?guard.hold,
                    "mass removal: {} of {} routable instances left the store at once; keeping them routable (stale) for {:?}",
                    vanished.len(),
                    routable.len(),
                    guard.hold
                );
                let until = now + guard.hold;
                held.extend(vanished.into_iter().map(|i| (i.clone(), until)));
                self.mass_removals.push(Arc::clone(name));
            }
        }
        if held.is_empty() {
            return current.cloned();
        }
        let mut merged = current.map_or_else(Service::default, |s| (**s).clone());
        for (instance, _) in &held {
            merged
                .instances
                .insert(Arc::from(instance.id.as_str()), instance.clone());
        }
        self.held.insert(Arc::clone(name), held);
        Some(Arc::new(merged))
    }

    /// Brings the pools up to `snapshot`: rebuilds those of services whose `Arc<Service>`
    /// is not the one seen last (or whose held instances changed), drops those of
    /// services gone, and returns what changed. The first update builds every pool.
    pub fn update(&mut self, snapshot: &Snapshot, config: &RouterConfig) -> PoolChanges {
        let now = Instant::now();
        let mut names = self.changed_services(&snapshot.services);
        // Held instances expire, and come back, whether or not their service changed.
        if !self.held.is_empty() {
            let listed: HashSet<Arc<str>> = names.iter().map(|(n, _)| Arc::clone(n)).collect();
            let held = self.held.keys().filter(|name| !listed.contains(*name));
            let held: Vec<_> = held
                .map(|name| (Arc::clone(name), snapshot.services.get(name)))
                .collect();
            names.extend(held);
        }
        self.services
            .reserve(names.len().saturating_sub(self.services.len()));
        let mut changes = Vec::with_capacity(names.len());
        for (name, current) in names {
            let had_held = !self.held.is_empty() && self.held.contains_key(&name);
            let service = self.guard(&name, current, config, now);
            if had_held && !self.held.contains_key(&name) {
                info!(service = %name, "mass removal guard: no instance held any more");
            }
            let Some(service) = service else {
                if self.services.remove(&name).is_some() {
                    changes.push((name, None));
                }
                continue;
            };
            let previous = self.services.get(&name);
            if let Some((built_from, _)) = previous
                && Arc::ptr_eq(built_from, &service)
            {
                continue;
            }
            let held_ids: HashSet<&str> = self
                .held
                .get(&name)
                .map(|h| h.iter().map(|(i, _)| i.id.as_str()).collect())
                .unwrap_or_default();
            let mut pool = build_pool(
                &name,
                &service,
                config,
                &self.upstream_tls,
                previous.map(|(_, p)| &**p),
            );
            if !held_ids.is_empty() {
                for endpoint in &mut pool.endpoints {
                    endpoint.stale = held_ids.contains(&*endpoint.id);
                }
            }
            let pool = Arc::new(pool);
            self.services
                .insert(Arc::clone(&name), (service, Arc::clone(&pool)));
            changes.push((name, Some(pool)));
        }
        changes
    }

    /// The services of `services` that are not the same `Arc` as in the map seen last
    /// (added, replaced or removed), with their new version; `services` is seen then.
    fn changed_services<'a>(
        &mut self,
        services: &'a Arc<ServiceMap>,
    ) -> Vec<(Arc<str>, Option<&'a Arc<Service>>)> {
        let address = |(name, service): (&Arc<str>, &Arc<Service>)| {
            (
                Arc::as_ptr(name).cast::<u8>() as usize,
                Arc::as_ptr(service) as usize,
            )
        };
        let mut changed = Vec::new();
        if Arc::ptr_eq(&self.seen, services) {
            return changed;
        }
        // The same names (an instance changed, not the set of services): by position.
        if services.len() == self.seen_addresses.len() {
            let mut at = Vec::new();
            let same_names = services.iter().zip(&self.seen_addresses).enumerate().all(
                |(i, (entry, &(name, service)))| {
                    let now = address(entry);
                    if now.1 != service {
                        at.push(i);
                        changed.push((Arc::clone(entry.0), Some(entry.1)));
                    }
                    now.0 == name
                },
            );
            if same_names {
                for (i, (_, service)) in at.into_iter().zip(&changed) {
                    if let Some(service) = service {
                        self.seen_addresses[i].1 = Arc::as_ptr(service) as usize;
                    }
                }
                self.seen = Arc::clone(services);
                return changed;
            }
            changed.clear();
        }
        changed = changed_keys(&self.seen, services)
            .into_iter()
            .map(|(name, _, service)| (Arc::clone(name), service))
            .collect();
        self.seen_addresses = services.iter().map(address).collect();
        self.seen = Arc::clone(services);
        changed
    }

    /// The pool of service `name` now.
    pub fn pool(&self, name: &str) -> Option<&Arc<Pool>> {
        self.services.get(name).map(|(_, pool)| pool)
    }

    /// The pool of one (service, tag) a route split names: the service's instances with
    /// the tag (None: no such service). Its endpoints share their state (outstanding
    /// requests, ejections, checks) with the service's own pool, so a subset and the
    /// whole service see one health. Subsets are few (a rollout's two versions); the
    /// table builds one again when its service's pool changes.
    pub fn subset(
        &self,
        snapshot: &Snapshot,
        config: &RouterConfig,
        service: &str,
        tag: &str,
    ) -> Option<Arc<Pool>> {
        let (name, instances) = snapshot.services.get_key_value(service)?;
        let tagged = Service {
            instances: instances
                .instances
                .iter()
                .filter(|(_, i)| i.spec.tags.iter().any(|t| t == tag))
                .map(|(id, i)| (Arc::clone(id), i.clone()))
                .collect(),
        };
        let pool = build_pool(
            name,
            &tagged,
            config,
            &self.upstream_tls,
            self.pool(name).map(|p| &**p),
        );
        Some(Arc::new(pool))
    }
}

/// One key's value in two maps, when it is not the same `Arc` in both: (key, old, new).
pub(crate) type Changed<'k, 'o, 'n, V> = (&'k Arc<str>, Option<&'o Arc<V>>, Option<&'n Arc<V>>);

/// The entries whose value is not the same `Arc` in `old` and `new` (added, removed or
/// replaced), in one walk of both maps in key order: an entry a new snapshot shares with
/// the last one costs two pointer compares, and no key is searched for.
pub(crate) fn changed_keys<'k, 'o: 'k, 'n: 'k, V>(
    old: &'o BTreeMap<Arc<str>, Arc<V>>,
    new: &'n BTreeMap<Arc<str>, Arc<V>>,
) -> Vec<Changed<'k, 'o, 'n, V>> {
    let mut changed = Vec::new();
    if std::ptr::eq(old, new) {
        return changed;
    }
    let (mut old, mut new) = (old.iter().peekable(), new.iter().peekable());
    loop {
        let order = match (old.peek(), new.peek()) {
            (None, None) => break,
            (Some(_), None) => Ordering::Less,
            (None, Some(_)) => Ordering::Greater,
            (Some((a, _)), Some((b, _))) if Arc::ptr_eq(a, b) => Ordering::Equal,
            (Some((a, _)), Some((b, _))) => a.cmp(b),
        };
        match order {
            Ordering::Less => changed.extend(old.next().map(|(k, v)| (k, Some(v), None))),
            Ordering::Greater => changed.extend(new.next().map(|(k, v)| (k, None, Some(v)))),
            Ordering::Equal => {
                if let (Some((_, a)), Some((k, b))) = (old.next(), new.next())
                    && !Arc::ptr_eq(a, b)
                {
                    changed.push((k, Some(a), Some(b)));
                }
            }
        }
    }
    changed
}

/// Builds one service's pool, inheriting endpoint and pool state from `previous`.
fn build_pool(
    name: &Arc<str>,
    service: &Service,
    config: &RouterConfig,
    upstream_tls: &UpstreamTlsSet,
    previous: Option<&Pool>,
) -> Pool {
    let settings = config.services.get(&**name).cloned().unwrap_or_default();
    let tls = if upstream_tls.is_empty() {
        None
    } else {
        upstream_tls.get(name).cloned()
    };
    // Never fall back to cleartext: a TLS service whose settings were not loaded (a table
    // compiled without `PoolStates::with_upstream_tls`) gets no traffic at all.
    let tls_missing = settings.tls && tls.is_none();
    let inherited = previous.map(endpoint_states).unwrap_or_default();
    // Endpoints share their id with the snapshot's key, and a pool's endpoints one `Arc`
    // per zone: no string is copied per endpoint.
    let mut zones: Vec<Arc<str>> = Vec::new();
    let mut zone_of = |zone: &str| -> Arc<str> {
        if let Some(known) = zones.iter().find(|z| &***z == zone) {
            return Arc::clone(known);
        }
        let zone: Arc<str> = Arc::from(zone);
        zones.push(Arc::clone(&zone));
        zone
    };
    // Sized for every instance (a filtered `collect` would double its way up, to 16
    // slots for 10 endpoints), then trimmed when some are left out.
    let mut endpoints: Vec<Endpoint> = Vec::with_capacity(service.instances.len());
    endpoints.extend(
        service
            .instances
            .iter()
            .filter(|(_, i)| !tls_missing && receives_traffic(i.spec.health, config))
            .map(|(id, i)| {
                let addr = i.socket_addr();
                let state = inherited
                    .get(&(&**id, addr))
                    .map(|s| Arc::clone(s))
                    .unwrap_or_default();
                Endpoint {
                    id: Arc::clone(id),
                    addr,
                    zone: i.spec.zone.as_deref().map(&mut zone_of),
                    weight: u32::from(i.spec.weight),
                    state,
                    stale: false,
                }
            }),
    );
    endpoints.shrink_to_fit();
    let shared = previous.map(|p| Arc::clone(&p.shared)).unwrap_or_default();
    let mut pool = Pool::new(
        Arc::clone(name),
        endpoints,
        settings.balancer,
        settings.hash_on,
        config.zone.as_deref(),
        config.min_local_endpoints,
        shared,
    );
    pool.http2 = settings.protocol != UpstreamProtocol::Http1;
    pool.excluded = service
        .instances
        .iter()
        .filter(|(_, i)| tls_missing || !receives_traffic(i.spec.health, config))
        .map(|(id, i)| {
            let reason = if tls_missing {
                "upstream TLS settings not loaded".to_string()
            } else {
                format!("health is {}", i.spec.health.as_str())
            };
            (Arc::clone(id), reason)
        })
        .collect();
    pool.tls = tls;
    pool.health_check = settings.health_check.clone().map(Arc::new);
    // The labelled series was looked up once; a rebuilt pool keeps it.
    if let Some(histogram) = previous.and_then(|p| p.upstream_duration.get()) {
        let _ = pool.upstream_duration.set(histogram.clone());
    }
    pool
}

/// Only passing instances get traffic (and warning ones where configured).
fn receives_traffic(health: Health, config: &RouterConfig) -> bool {
    health == Health::Passing || (config.serve_warning && health == Health::Warning)
}

/// The state of each endpoint of `pool`, by id and address.
fn endpoint_states(pool: &Pool) -> HashMap<(&str, SocketAddr), &Arc<EndpointState>> {
    pool.endpoints
        .iter()
        .map(|e| ((&*e.id, e.addr), &e.state))
        .collect()
}

#[cfg(test)]
mod tests;
