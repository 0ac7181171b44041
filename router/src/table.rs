//! The routing table: compiled from a discovery snapshot by the control plane, read by
//! the hot path. Immutable once built; swapped whole.
//!
//! Host lookup: exact host, then the longest `*.suffix` wildcard, then `*`. No fall
//! through: once a host entry is chosen, only its routes are considered (as with Envoy
//! virtual hosts and nginx server blocks). Within a host, routes are tried in order of
//! specificity: exact path, then regex, then prefix (longest first); at equal path
//! specificity, routes with method or header conditions come first; then by name.
//! Prefixes match whole segments: `/api` matches `/api` and `/api/x`, not `/apix`.
//!
//! [`route`] holds the compiled HTTP route (matchers, targets, policies); [`tcp`] the TCP
//! routes of each listen address. Pools come from [`crate::pool`], built before the
//! routes that point at them.

pub mod route;
pub mod shards;
pub mod tcp;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::Arc;

use discovery::model::{PathMatch, RouteKind};
use discovery::snapshot::RouteMap;
use discovery::{Route, Snapshot};
use http::Method;
use tracing::warn;

pub use route::{CompiledRoute, Target, Targets};
use route::{TablePools, compile_route};
pub use shards::ShardedMap;
pub use tcp::{TcpListenerRoutes, TcpTarget};

use crate::config::RouterConfig;
use crate::pool::build::changed_keys;
use crate::pool::{Pool, PoolStates};
use crate::tls::UpstreamTlsSet;
use crate::wire::HeaderLookup;

/// The compile's own maps: keys it made itself, nothing from a client.
type Hasher = foldhash::fast::RandomState;

/// The routes of one host entry, in match order. A slice behind one `Arc`: as direct to
/// read as a `Vec`, and a table that does not touch the host shares it.
#[derive(Debug, Clone)]
pub(crate) struct HostEntry {
    pub(crate) routes: Arc<[Arc<CompiledRoute>]>,
}

/// Which host entry a request's host selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMatch<'a> {
    Exact(&'a str),
    /// The suffix, with its leading dot: `*.example.com` is `.example.com`.
    Wildcard(&'a str),
    Any,
}

/// The compiled routing table. Cloning it is cheap (its maps share their shards), which
/// is how the next table starts from this one.
#[derive(Debug, Default, Clone)]
pub struct Table {
    pub revision: u64,
    exact: ShardedMap<Arc<str>, HostEntry>,
    /// Keyed by suffix including the leading dot: `*.example.com` -> `.example.com`.
    wildcard: ShardedMap<Arc<str>, HostEntry>,
    any: Option<HostEntry>,
    pub pools: ShardedMap<Arc<str>, Arc<Pool>>,
    /// Pools of the (service, tag) subsets route splits name.
    pub subsets: ShardedMap<(Arc<str>, Arc<str>), Arc<Pool>>,
    pub route_count: usize,
    /// TCP routes by listen address.
    pub tcp: Arc<BTreeMap<SocketAddr, TcpListenerRoutes>>,
}

impl Table {
    /// The route for a request, if any. `host` must be lowercase without port.
    pub fn route(
        &self,
        host: &str,
        path: &str,
        method: &Method,
        headers: &(impl HeaderLookup + ?Sized),
    ) -> Option<&Arc<CompiledRoute>> {
        self.host_entry(host)?
            .routes
            .iter()
            .find(|r| r.matches(path, method, headers))
    }

    fn host_entry(&self, host: &str) -> Option<&HostEntry> {
        self.host_match(host).map(|(_, entry)| entry)
    }

    pub(crate) fn host_match<'h>(&self, host: &'h str) -> Option<(HostMatch<'h>, &HostEntry)> {
        if let Some(entry) = self.exact.get(host) {
            return Some((HostMatch::Exact(host), entry));
        }
        if !self.wildcard.is_empty() {
            // Longest suffix first: for a.b.example.com try .b.example.com, .example.com, .com
            let mut rest = host;
            let mut offset = 0;
            while let Some(dot) = rest.find('.') {
                let suffix = &host[offset + dot..];
                if let Some(entry) = self.wildcard.get(suffix) {
                    return Some((HostMatch::Wildcard(suffix), entry));
                }
                offset += dot + 1;
                rest = &host[offset..];
            }
        }
        self.any.as_ref().map(|entry| (HostMatch::Any, entry))
    }

    fn entry(&self, host: HostKey) -> Option<&HostEntry> {
        match host {
            HostKey::Exact(h) => self.exact.get(h),
            HostKey::Wildcard(suffix) => self.wildcard.get(suffix),
            HostKey::Any => self.any.as_ref(),
        }
    }

    fn set_entry(&mut self, host: HostKey, routes: Vec<Arc<CompiledRoute>>) {
        let entry = (!routes.is_empty()).then(|| HostEntry {
            routes: routes.into(),
        });
        let (map, key) = match host {
            HostKey::Any => {
                self.any = entry;
                return;
            }
            HostKey::Exact(host) => (&mut self.exact, host),
            HostKey::Wildcard(suffix) => (&mut self.wildcard, suffix),
        };
        match entry {
            Some(entry) => {
                map.insert(Arc::from(key), entry);
            }
            None => {
                map.remove(key);
            }
        }
    }
}

/// Where an HTTP route's host puts it: an exact host, a `*.suffix` (key: `.suffix`), or
/// any host.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum HostKey<'a> {
    Exact(&'a str),
    Wildcard(&'a str),
    Any,
}

impl<'a> HostKey<'a> {
    fn of(route: &'a Route) -> HostKey<'a> {
        match route.host.as_deref() {
            None | Some("*") => HostKey::Any,
            Some(host) => match host.strip_prefix('*') {
                Some(suffix) => HostKey::Wildcard(suffix),
                None => HostKey::Exact(host),
            },
        }
    }
}

/// What one table hands the next: the pools' state, the routes of the last snapshot
/// compiled, which routes send to which service, and the last table itself. The next
/// compile diffs the snapshot against it by pointer and rebuilds only what changed: the
/// pools of changed services, the routes that changed or send to a rebuilt pool, and the
/// host entries those routes are in; every other route, host entry and pool is the last
/// table's, shared by `Arc`. A first compile is the same code from an empty state.
#[derive(Default)]
pub struct TableState {
    pools: PoolStates,
    /// The routes of the last snapshot compiled.
    routes: Arc<RouteMap>,
    /// The routes (HTTP and TCP) that send to each service, split targets included.
    users: HashMap<Arc<str>, Vec<Arc<str>>, Hasher>,
    /// The (service, tag) subsets route splits name, and how many routes name each.
    subset_users: HashMap<(Arc<str>, Arc<str>), usize>,
    /// The TCP routes, by name (of two for one address and server name, the first wins).
    tcp_routes: BTreeSet<Arc<str>>,
    last: Table,
}

impl TableState {
    /// Pools built with these services' upstream TLS (see [`crate::tls::upstream`]).
    pub fn with_upstream_tls(upstream_tls: UpstreamTlsSet) -> Self {
        TableState {
            pools: PoolStates::with_upstream_tls(upstream_tls),
            ..TableState::default()
        }
    }

    /// The pools' state: the mass-removal guard's held instances and their expiry.
    pub fn pools(&self) -> &PoolStates {
        &self.pools
    }

    pub fn pools_mut(&mut self) -> &mut PoolStates {
        &mut self.pools
    }
}

/// The services a route sends to (a service twice in a split is named twice).
fn services_of(route: &Route) -> impl Iterator<Item = &str> {
    let split = route.split.iter().map(|target| target.service.as_str());
    route.service.as_deref().into_iter().chain(split)
}

/// The (service, tag) subsets a route's split names.
fn subsets_of(route: &Route) -> impl Iterator<Item = (Arc<str>, Arc<str>)> + '_ {
    route.split.iter().filter_map(|target| {
        let tag = target.tag.as_deref()?;
        Some((Arc::from(target.service.as_str()), Arc::from(tag)))
    })
}

/// Whether two versions of a route are the same route (only its pools may have changed).
fn same_route(old: Option<&Arc<Route>>, new: Option<&Arc<Route>>) -> bool {
    match (old, new) {
        (Some(old), Some(new)) => Arc::ptr_eq(old, new) || old == new,
        _ => false,
    }
}

/// Builds the table for `snapshot` from the last one `state` holds, carrying pool state
/// over: one code path for the first snapshot (from an empty state) and every later one.
pub fn compile(snapshot: &Snapshot, config: &RouterConfig, state: &mut TableState) -> Table {
    let mut table = state.last.clone();
    table.revision = snapshot.revision;
    let old_routes = Arc::clone(&state.routes);

    // Pools first: the routes resolve against them.
    let pool_changes = state.pools.update(snapshot, config);
    table.pools.reserve_for(snapshot.services.len());
    for (name, pool) in &pool_changes {
        match pool {
            Some(pool) => table.pools.insert(Arc::clone(name), Arc::clone(pool)),
            None => table.pools.remove(name),
        };
    }
    // A subset inherits from its service's pool: built again with it.
    if !state.subset_users.is_empty() && !pool_changes.is_empty() {
        let changed: HashSet<&str, Hasher> = pool_changes.iter().map(|(n, _)| &**n).collect();
        for (service, tag) in state.subset_users.keys() {
            if changed.contains(&**service) {
                let key = (Arc::clone(service), Arc::clone(tag));
                match state.pools.subset(snapshot, config, service, tag) {
                    Some(pool) => table.subsets.insert(key, pool),
                    None => table.subsets.remove(&key),
                };
            }
        }
    }

    // The dirty routes, each with its last and its new version: those whose `Arc`
    // changed (less those written again the same: a resync), and those sending to a
    // rebuilt pool.
    type Versions<'a> = (&'a Arc<str>, Option<&'a Arc<Route>>, Option<&'a Arc<Route>>);
    let mut dirty: Vec<Versions> = changed_keys(&old_routes, &snapshot.routes)
        .into_iter()
        .filter(|&(_, old, new)| !same_route(old, new))
        .collect();
    // Users are routes of the last snapshot (the index follows it); they may be gone
    // from this one.
    let users_of_changed = pool_changes
        .iter()
        .filter_map(|(name, _)| state.users.get(name))
        .flatten()
        .filter_map(|user| old_routes.get_key_value(user));
    let mut listed: Option<HashSet<&str, Hasher>> = None;
    for (name, old) in users_of_changed {
        let listed = listed.get_or_insert_with(|| dirty.iter().map(|(n, _, _)| &***n).collect());
        if listed.insert(name) {
            dirty.push((name, Some(old), snapshot.routes.get(name)));
        }
    }
    drop(listed);

    // Who sends where: the index of users (TCP routes'; HTTP ones' once compiled), the
    // subsets, the TCP routes.
    let mut tcp_dirty = false;
    for &(name, old, new) in &dirty {
        if same_route(old, new) {
            tcp_dirty |= new.is_some_and(|r| r.kind == RouteKind::Tcp);
            continue;
        }
        if let Some(old) = old {
            for service in services_of(old) {
                if let Some(users) = state.users.get_mut(service) {
                    users.retain(|n| n != name);
                    if users.is_empty() {
                        state.users.remove(service);
                    }
                }
            }
            for key in subsets_of(old) {
                if let Some(count) = state.subset_users.get_mut(&key) {
                    *count -= 1;
                    if *count == 0 {
                        state.subset_users.remove(&key);
                        table.subsets.remove(&key);
                    }
                }
            }
            if old.kind == RouteKind::Tcp {
                state.tcp_routes.remove(name);
                tcp_dirty = true;
            }
        }
        if let Some(new) = new {
            for key in subsets_of(new) {
                let count = state.subset_users.entry(key.clone()).or_default();
                *count += 1;
                if *count == 1
                    && let Some(pool) = state.pools.subset(snapshot, config, &key.0, &key.1)
                {
                    table.subsets.insert(key, pool);
                }
            }
            if new.kind == RouteKind::Tcp {
                for service in services_of(new) {
                    add_user(&mut state.users, &Arc::from(service), name);
                }
                state.tcp_routes.insert(Arc::clone(name));
                tcp_dirty = true;
            }
        }
    }

    // The dirty HTTP routes, compiled (or, when only their pools changed, copied with
    // their targets resolved again), by the host entry they go to.
    let mut hosts: HashMap<HostKey, Vec<Arc<CompiledRoute>>, Hasher> =
        HashMap::with_capacity_and_hasher(dirty.len(), Hasher::default());
    // The last table's routes of each host entry an unchanged route is looked up in.
    let mut previous: HashMap<HostKey, HashMap<&str, &Arc<CompiledRoute>>, Hasher> =
        HashMap::default();
    let pools = TablePools {
        services: &table.pools,
        subsets: &table.subsets,
    };
    let last = &state.last;
    for &(name, old, new) in &dirty {
        let same = same_route(old, new);
        let old = old.filter(|r| r.kind != RouteKind::Tcp);
        if let Some(old) = old {
            hosts.entry(HostKey::of(old)).or_default();
        }
        let Some(new) = new.filter(|r| r.kind != RouteKind::Tcp) else {
            continue;
        };
        let host = HostKey::of(new);
        let compiled_before = if same {
            previous
                .entry(host)
                .or_insert_with(|| {
                    last.entry(host)
                        .map(|e| e.routes.iter().map(|r| (&*r.name, r)).collect())
                        .unwrap_or_default()
                })
                .get(&**name)
                .copied()
        } else {
            None
        };
        let compiled = match compiled_before {
            Some(before) => Ok(before.retarget(&pools)),
            None => compile_route(name, new, config, &pools),
        };
        let routes = hosts.entry(host).or_default();
        match compiled {
            Ok(route) => {
                if !same {
                    for target in &route.targets.list {
                        add_user(&mut state.users, &target.service, name);
                    }
                }
                routes.push(Arc::new(route));
            }
            Err(e) => warn!(route = %name, error = %e, "skipping route that does not compile"),
        }
    }
    drop(previous);

    // Each host entry a dirty route left or joined: its other routes as they were, and
    // the dirty ones as compiled now, in match order.
    if table.exact.is_empty() {
        table.exact.reserve_for(hosts.len());
    }
    let mut dirty_names: Option<HashSet<&str, Hasher>> = None;
    for (host, added) in hosts {
        let (before, mut routes) = match table.entry(host) {
            None => (0, added),
            Some(entry) => {
                let dirty_names = dirty_names
                    .get_or_insert_with(|| dirty.iter().map(|(n, _, _)| &***n).collect());
                let mut routes: Vec<Arc<CompiledRoute>> = entry
                    .routes
                    .iter()
                    .filter(|r| !dirty_names.contains(&*r.name))
                    .cloned()
                    .collect();
                routes.extend(added);
                (entry.routes.len(), routes)
            }
        };
        routes.sort_by(|a, b| {
            let conditions = |r: &CompiledRoute| {
                usize::from(r.methods.is_empty()) + usize::from(r.headers.is_empty())
            };
            (a.path.rank(), conditions(a), &a.name).cmp(&(b.path.rank(), conditions(b), &b.name))
        });
        table.route_count = table.route_count + routes.len() - before;
        table.set_entry(host, routes);
    }

    // A TCP route changed, or sends to a rebuilt pool (it is among the dirty then).
    if tcp_dirty {
        table.tcp = Arc::new(tcp_routes(snapshot, &state.tcp_routes, &table, config));
    }
    state.routes = Arc::clone(&snapshot.routes);
    state.last = table.clone();
    table
}

/// Notes that route `name` sends to `service` (once, however many targets name it).
fn add_user(
    users: &mut HashMap<Arc<str>, Vec<Arc<str>>, Hasher>,
    service: &Arc<str>,
    name: &Arc<str>,
) {
    match users.get_mut(&**service) {
        Some(names) => {
            if names.last() != Some(name) {
                names.push(Arc::clone(name));
            }
        }
        None => {
            users.insert(Arc::clone(service), vec![Arc::clone(name)]);
        }
    }
}

/// The TCP routes by listen address, added in name order.
fn tcp_routes(
    snapshot: &Snapshot,
    names: &BTreeSet<Arc<str>>,
    table: &Table,
    config: &RouterConfig,
) -> BTreeMap<SocketAddr, TcpListenerRoutes> {
    let pools = TablePools {
        services: &table.pools,
        subsets: &table.subsets,
    };
    let mut by_address: BTreeMap<SocketAddr, TcpListenerRoutes> = BTreeMap::new();
    for (name, route) in names
        .iter()
        .filter_map(|name| snapshot.routes.get_key_value(name))
    {
        if let Some(listen) = route.listen {
            by_address
                .entry(listen)
                .or_default()
                .add(name, route, &pools, config);
        }
    }
    by_address
}

/// A large synthetic snapshot for benchmarks: `services` services of `per_service`
/// instances each, one route per service on its own host (every other one with a path
/// prefix `/api`), and a `*.wild.example.com` wildcard route.
pub fn synthetic_snapshot(services: usize, per_service: usize) -> Snapshot {
    use discovery::model::{Instance, InstanceSpec};
    let mut service_map = std::collections::BTreeMap::new();
    let mut routes = std::collections::BTreeMap::new();
    for s in 0..services {
        let name = format!("svc-{s}");
        let mut service = discovery::snapshot::Service::default();
        for i in 0..per_service {
            let address = [10, (s >> 8) as u8, s as u8, i as u8].into();
            if let Ok(instance) =
                Instance::new(&name, &format!("i-{i}"), InstanceSpec::new(address, 8080))
            {
                service
                    .instances
                    .insert(Arc::from(format!("i-{i}").as_str()), instance);
            }
        }
        service_map.insert(Arc::from(name.as_str()), Arc::new(service));
        let mut route = Route::http(&format!("host-{s}.example.com"), &name);
        if s % 2 == 0 {
            route.path = Some(PathMatch::Prefix("/api".into()));
        }
        if route.validate().is_ok() {
            routes.insert(Arc::from(format!("route-{s}").as_str()), Arc::new(route));
        }
    }
    let mut wildcard = Route::http("*.wild.example.com", "svc-0");
    if wildcard.validate().is_ok() {
        routes.insert(Arc::from("wildcard"), Arc::new(wildcard));
    }
    Snapshot {
        revision: 1,
        services: Arc::new(service_map),
        routes: Arc::new(routes),
        ..Snapshot::default()
    }
}

#[cfg(test)]
mod tests;
