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
pub mod tcp;

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::Arc;

use discovery::model::{PathMatch, RouteKind};
use discovery::{Route, Snapshot};
use http::Method;
use tracing::warn;

pub use route::{CompiledRoute, Target, Targets};
use route::{TablePools, compile_route};
pub use tcp::{TcpListenerRoutes, TcpTarget};

use crate::config::RouterConfig;
use crate::pool::{Pool, PoolStates};
use crate::wire::HeaderLookup;

#[derive(Debug, Default)]
pub(crate) struct HostEntry {
    pub(crate) routes: Vec<Arc<CompiledRoute>>,
}

/// Which host entry a request's host selected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostMatch<'a> {
    Exact(&'a str),
    /// The suffix, with its leading dot: `*.example.com` is `.example.com`.
    Wildcard(&'a str),
    Any,
}

/// The compiled routing table.
#[derive(Debug, Default)]
pub struct Table {
    pub revision: u64,
    exact: HashMap<Box<str>, HostEntry>,
    /// Keyed by suffix including the leading dot: `*.example.com` -> `.example.com`.
    wildcard: HashMap<Box<str>, HostEntry>,
    any: Option<HostEntry>,
    pub pools: HashMap<Arc<str>, Arc<Pool>>,
    /// Pools of the (service, tag) subsets route splits name.
    pub subsets: HashMap<(Arc<str>, Arc<str>), Arc<Pool>>,
    pub route_count: usize,
    /// TCP routes by listen address.
    pub tcp: BTreeMap<SocketAddr, TcpListenerRoutes>,
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
}

/// Builds a table from a snapshot, carrying pool state over from `states`.
pub fn compile(snapshot: &Snapshot, config: &RouterConfig, states: &mut PoolStates) -> Table {
    let pools = states.pools(snapshot, config);
    let subsets = states.subsets(snapshot, config, &pools);

    let mut table = Table {
        revision: snapshot.revision,
        pools,
        subsets,
        ..Table::default()
    };
    let mut compiled: Vec<(String, Arc<CompiledRoute>)> = Vec::new();
    for (name, route) in snapshot.routes.iter() {
        if route.kind == RouteKind::Tcp {
            add_tcp_route(&mut table, name, route, config);
            continue;
        }
        let pools = TablePools {
            services: &table.pools,
            subsets: &table.subsets,
        };
        match compile_route(name, route, config, &pools) {
            Ok(c) => compiled.push((
                route.host.clone().unwrap_or_else(|| "*".into()),
                Arc::new(c),
            )),
            Err(e) => warn!(route = %name, error = %e, "skipping route that does not compile"),
        }
    }
    table.route_count = compiled.len();
    for (host, route) in compiled {
        let entry = if host == "*" {
            table.any.get_or_insert_with(HostEntry::default)
        } else if let Some(suffix) = host.strip_prefix('*') {
            table.wildcard.entry(suffix.into()).or_default()
        } else {
            table.exact.entry(host.into_boxed_str()).or_default()
        };
        entry.routes.push(route);
    }
    let sort = |entry: &mut HostEntry| {
        entry.routes.sort_by(|a, b| {
            let conditions = |r: &CompiledRoute| {
                usize::from(r.methods.is_empty()) + usize::from(r.headers.is_empty())
            };
            (a.path.rank(), conditions(a), &a.name).cmp(&(b.path.rank(), conditions(b), &b.name))
        });
    };
    table.exact.values_mut().for_each(sort);
    table.wildcard.values_mut().for_each(sort);
    if let Some(any) = table.any.as_mut() {
        sort(any);
    }
    table
}

fn add_tcp_route(table: &mut Table, name: &Arc<str>, route: &Route, config: &RouterConfig) {
    if let Some(listen) = route.listen {
        let pools = TablePools {
            services: &table.pools,
            subsets: &table.subsets,
        };
        let routes = table.tcp.entry(listen).or_default();
        routes.add(name, route, &pools, config);
    }
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
