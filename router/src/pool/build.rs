//! Building pools from a snapshot (control plane), and the state one table hands the
//! next so that a swap keeps health and balance.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use discovery::Snapshot;
use discovery::model::Health;
use discovery::snapshot::Service;

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
}

impl PoolStates {
    /// Pools built with these services' upstream TLS (see [`crate::tls::upstream`]).
    pub fn with_upstream_tls(upstream_tls: UpstreamTlsSet) -> Self {
        PoolStates {
            services: HashMap::new(),
            upstream_tls,
        }
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
        for (name, service) in snapshot.services.iter() {
            let previous = self.services.get(name);
            let pool = match previous {
                Some((built_from, pool)) if Arc::ptr_eq(built_from, service) => Arc::clone(pool),
                _ => Arc::new(build_pool(
                    name,
                    service,
                    config,
                    &self.upstream_tls,
                    previous.map(|(_, p)| &**p),
                )),
            };
            next.insert(Arc::clone(name), (Arc::clone(service), Arc::clone(&pool)));
            pools.insert(Arc::clone(name), pool);
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
