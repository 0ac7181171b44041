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

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use discovery::Snapshot;
use discovery::model::{Health, Instance};
use discovery::snapshot::Service;
use tracing::{info, warn};

use super::balance::{Endpoint, EndpointState, Pool};
use crate::config::{RouterConfig, UpstreamProtocol};
use crate::tls::UpstreamTlsSet;

/// What one table hands the next: per service, the snapshot's `Service` it was built
/// from and the pool built. A service whose `Arc<Service>` is unchanged keeps its pool as
/// is (so a change to one service costs one pool, not all); a changed one gets a new pool
/// that inherits the state of endpoints with the same id and address, and the pool-wide
/// state. Services that left the snapshot are dropped, so a re-registered instance starts
/// fresh.
/// It also carries the services' upstream TLS, loaded once at startup.
#[derive(Default)]
pub struct PoolStates {
    services: HashMap<Arc<str>, (Arc<Service>, Arc<Pool>)>,
    upstream_tls: UpstreamTlsSet,
    /// Instances the mass-removal guard keeps, per service, and until when.
    held: HashMap<Arc<str>, Vec<(Instance, Instant)>>,
    /// Services whose mass removal was held back since the last `take_mass_removals`.
    mass_removals: Vec<Arc<str>>,
}

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
        let mut held = self.held.remove(name).unwrap_or_default();
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

    /// The pools of `snapshot`'s services, by service name: unchanged services keep their
    /// pools, changed ones get new pools carrying their endpoints' state over.
    pub fn pools(
        &mut self,
        snapshot: &Snapshot,
        config: &RouterConfig,
    ) -> HashMap<Arc<str>, Arc<Pool>> {
        let mut pools = HashMap::with_capacity(snapshot.services.len());
        let mut next = HashMap::with_capacity(snapshot.services.len());
        let now = Instant::now();
        // The snapshot's services, and those that left it (all their instances gone) or
        // whose instances the guard holds.
        let gone: Vec<Arc<str>> = self
            .services
            .keys()
            .chain(self.held.keys())
            .filter(|name| !snapshot.services.contains_key(&***name))
            .cloned()
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let names = snapshot.services.keys().cloned().chain(gone);
        for name in names {
            let current = snapshot.services.get(&*name);
            let had_held = self.held.contains_key(&name);
            let Some(service) = self.guard(&name, current, config, now) else {
                continue;
            };
            if had_held && !self.held.contains_key(&name) {
                info!(service = %name, "mass removal guard: no instance held any more");
            }
            let held_ids: HashSet<&str> = self
                .held
                .get(&name)
                .map(|h| h.iter().map(|(i, _)| i.id.as_str()).collect())
                .unwrap_or_default();
            let previous = self.services.get(&name);
            let pool = match previous {
                Some((built_from, pool)) if Arc::ptr_eq(built_from, &service) => Arc::clone(pool),
                _ => {
                    let mut pool = build_pool(
                        &name,
                        &service,
                        config,
                        &self.upstream_tls,
                        previous.map(|(_, p)| &**p),
                    );
                    for endpoint in &mut pool.endpoints {
                        endpoint.stale = held_ids.contains(&*endpoint.id);
                    }
                    Arc::new(pool)
                }
            };
            next.insert(Arc::clone(&name), (service, Arc::clone(&pool)));
            pools.insert(name, pool);
        }
        self.services = next;
        pools
    }

    /// A pool for each (service, tag) a route split names: the service's instances with
    /// the tag. Its endpoints share their state (outstanding requests, ejections, checks)
    /// with the service's own pool, so a subset and the whole service see one health.
    /// Built anew with each table: subsets are few (a rollout's two versions).
    pub fn subsets(
        &self,
        snapshot: &Snapshot,
        config: &RouterConfig,
        pools: &HashMap<Arc<str>, Arc<Pool>>,
    ) -> HashMap<(Arc<str>, Arc<str>), Arc<Pool>> {
        let mut subsets = HashMap::new();
        for route in snapshot.routes.values() {
            for target in &route.split {
                let Some(tag) = &target.tag else { continue };
                let key = (Arc::from(target.service.as_str()), Arc::from(tag.as_str()));
                if subsets.contains_key(&key) {
                    continue;
                }
                let Some((name, service)) =
                    snapshot.services.get_key_value(target.service.as_str())
                else {
                    continue;
                };
                let tagged = Service {
                    instances: service
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
                    pools.get(name.as_ref()).map(|p| &**p),
                );
                subsets.insert(key, Arc::new(pool));
            }
        }
        subsets
    }
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
    let tls = upstream_tls.get(name).cloned();
    // Never fall back to cleartext: a TLS service whose settings were not loaded (a table
    // compiled without `PoolStates::with_upstream_tls`) gets no traffic at all.
    let tls_missing = settings.tls && tls.is_none();
    let inherited = previous.map(endpoint_states).unwrap_or_default();
    let endpoints: Vec<Endpoint> = service
        .instances
        .values()
        .filter(|i| !tls_missing && receives_traffic(i.spec.health, config))
        .map(|i| {
            let addr = i.socket_addr();
            let state = inherited
                .get(&(i.id.as_str(), addr))
                .map(|s| Arc::clone(s))
                .unwrap_or_default();
            Endpoint {
                id: Arc::from(i.id.as_str()),
                addr,
                zone: i.spec.zone.as_deref().map(Arc::from),
                weight: u32::from(i.spec.weight),
                state,
                stale: false,
            }
        })
        .collect();
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
        .values()
        .filter(|i| tls_missing || !receives_traffic(i.spec.health, config))
        .map(|i| {
            let reason = if tls_missing {
                "upstream TLS settings not loaded".to_string()
            } else {
                format!("health is {}", i.spec.health.as_str())
            };
            (Arc::from(i.id.as_str()), reason)
        })
        .collect();
    pool.tls = tls;
    pool.health_check = settings.health_check.clone().map(Arc::new);
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
