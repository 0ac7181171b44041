//! The routing table: compiled from a discovery snapshot by the control plane, read by
//! the hot path. Immutable once built; swapped whole.
//!
//! Host lookup: exact host, then the longest `*.suffix` wildcard, then `*`. No fall
//! through: once a host entry is chosen, only its routes are considered (as with Envoy
//! virtual hosts and nginx server blocks). Within a host, routes are tried in order of
//! specificity: exact path, then regex, then prefix (longest first); at equal path
//! specificity, routes with method or header conditions come first; then by name.
//! Prefixes match whole segments: `/api` matches `/api` and `/api/x`, not `/apix`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use discovery::model::{PathMatch, RetryOn, RetryPolicy, RouteKind};
use discovery::{Route, Snapshot};
use http::Method;
use http::header::{HeaderName, HeaderValue};
use prometheus::{Histogram, IntCounter};
use tracing::warn;

use crate::config::RouterConfig;
use crate::pool::{Pool, PoolStates};
use crate::wire::HeaderLookup;

#[derive(Debug)]
pub(crate) enum PathMatcher {
    Exact(Box<str>),
    Prefix(Box<str>),
    Regex(regex::Regex),
}

impl PathMatcher {
    pub(crate) fn matches(&self, path: &str) -> bool {
        match self {
            PathMatcher::Exact(p) => path == &**p,
            PathMatcher::Prefix(p) => {
                path.starts_with(&**p)
                    && (p.ends_with('/')
                        || path.len() == p.len()
                        || path.as_bytes()[p.len()] == b'/')
            }
            PathMatcher::Regex(r) => r.is_match(path),
        }
    }

    /// Sort key: lower sorts first.
    fn rank(&self) -> (u8, usize) {
        match self {
            PathMatcher::Exact(_) => (0, 0),
            PathMatcher::Regex(_) => (1, 0),
            PathMatcher::Prefix(p) => (2, usize::MAX - p.len()),
        }
    }
}

#[derive(Debug)]
pub(crate) enum ValueMatcher {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Regex(regex::Regex),
    Present(bool),
}

#[derive(Debug)]
pub(crate) struct HeaderMatcher {
    pub(crate) name: HeaderName,
    pub(crate) value: ValueMatcher,
    pub(crate) invert: bool,
}

impl HeaderMatcher {
    pub(crate) fn matches(&self, headers: &(impl HeaderLookup + ?Sized)) -> bool {
        let value = headers.first(&self.name);
        let hit = match (&self.value, value) {
            (ValueMatcher::Present(present), v) => v.is_some() == *present,
            (_, None) => false,
            (ValueMatcher::Exact(e), Some(v)) => v == &**e,
            (ValueMatcher::Prefix(p), Some(v)) => v.starts_with(p),
            (ValueMatcher::Regex(r), Some(v)) => {
                std::str::from_utf8(v).is_ok_and(|s| r.is_match(s))
            }
        };
        hit != self.invert
    }
}

/// The services a route sends to: one, or a weighted split.
#[derive(Debug)]
pub struct Targets {
    pub list: Vec<Target>,
    /// Cumulative split weights, parallel to `list` (empty for a single service).
    cumulative: Vec<u64>,
}

impl Targets {
    fn of(route: &Route, pools: &HashMap<Arc<str>, Arc<Pool>>) -> Targets {
        let target = |service: &str| Target {
            service: Arc::from(service),
            pool: pools.get(service).cloned(),
            requests: Default::default(),
        };
        match &route.service {
            Some(service) => Targets {
                list: vec![target(service)],
                cumulative: Vec::new(),
            },
            None => Targets {
                list: route.split.iter().map(|s| target(&s.service)).collect(),
                cumulative: route
                    .split
                    .iter()
                    .scan(0u64, |sum, s| {
                        *sum += u64::from(s.weight);
                        Some(*sum)
                    })
                    .collect(),
            },
        }
    }

    /// Picks the target for one request or connection (weighted for a split).
    pub fn pick(&self) -> &Target {
        &self.list[self.pick_index()]
    }

    /// The index in `list` of the target picked for one request.
    pub fn pick_index(&self) -> usize {
        if self.list.len() > 1
            && let Some(&total) = self.cumulative.last()
            && total > 0
        {
            let draw = rand::random_range(0..total);
            let at = self.cumulative.partition_point(|&w| w <= draw);
            if at < self.list.len() {
                return at;
            }
        }
        0
    }

    /// Each target's share of the traffic, in percent.
    pub fn shares(&self) -> impl Iterator<Item = (&Target, f64)> {
        let total = self.cumulative.last().copied().unwrap_or(0);
        let mut previous = 0;
        self.list.iter().enumerate().map(move |(i, target)| {
            let share = match self.cumulative.get(i) {
                Some(&c) if total > 0 => {
                    let share = (c - previous) as f64 * 100.0 / total as f64;
                    previous = c;
                    share
                }
                _ => 100.0,
            };
            (target, share)
        })
    }
}

/// A service a route sends to, with its pool (None: no eligible instance right now).
#[derive(Debug)]
pub struct Target {
    pub service: Arc<str>,
    pub pool: Option<Arc<Pool>>,
    /// This route's request counters for this service, by status class (resolved on
    /// first use: see `RouterMetrics::count_request`).
    pub(crate) requests: [OnceLock<IntCounter>; 5],
}

#[derive(Debug)]
pub struct CompiledRoute {
    pub name: Arc<str>,
    pub(crate) path: PathMatcher,
    pub(crate) methods: Vec<Method>,
    pub(crate) headers: Vec<HeaderMatcher>,
    pub targets: Targets,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub per_try_timeout: Option<Duration>,
    /// The route's `timeouts.idle`: bounds each wait for response body bytes (instead of
    /// `request_timeout`) and ends a WebSocket tunnel quiet for that long.
    pub idle_timeout: Option<Duration>,
    pub retry: Option<RetryPolicy>,
    /// (length of the matched prefix, replacement)
    pub prefix_rewrite: Option<(usize, Box<str>)>,
    pub request_set: Vec<(HeaderName, HeaderValue)>,
    pub request_remove: Vec<HeaderName>,
    pub response_set: Vec<(HeaderName, HeaderValue)>,
    pub response_remove: Vec<HeaderName>,
    /// This route's request duration histogram (resolved on first use).
    pub(crate) request_duration: OnceLock<Histogram>,
}

impl CompiledRoute {
    fn matches(&self, path: &str, method: &Method, headers: &(impl HeaderLookup + ?Sized)) -> bool {
        self.path.matches(path)
            && (self.methods.is_empty() || self.methods.contains(method))
            && self.headers.iter().all(|h| h.matches(headers))
    }

    /// Picks the target for one request (weighted for a split).
    pub fn pick_target(&self) -> &Target {
        self.targets.pick()
    }

    /// Whether the route removes or sets response header `name` (either way, the
    /// upstream's own value is not passed on).
    pub fn replaces_response_header(&self, name: &str) -> bool {
        self.response_remove
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_str()))
            || self
                .response_set
                .iter()
                .any(|(n, _)| name.eq_ignore_ascii_case(n.as_str()))
    }

    /// The same for request headers.
    pub fn replaces_request_header(&self, name: &str) -> bool {
        self.request_remove
            .iter()
            .any(|n| name.eq_ignore_ascii_case(n.as_str()))
            || self
                .request_set
                .iter()
                .any(|(n, _)| name.eq_ignore_ascii_case(n.as_str()))
    }

    /// The index (in `targets.list`) of the target picked for one request.
    pub fn pick_target_index(&self) -> usize {
        self.targets.pick_index()
    }

    pub fn retries_on(&self, status: u16) -> bool {
        self.retry.as_ref().is_some_and(|r| {
            r.on.iter().any(|on| match on {
                RetryOn::ConnectFailure => false,
                RetryOn::GatewayError => matches!(status, 502..=504),
                RetryOn::ServerError => (500..=599).contains(&status),
            })
        })
    }
}

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
    pub route_count: usize,
    /// TCP routes by listen address.
    pub tcp: std::collections::BTreeMap<std::net::SocketAddr, crate::tcp::TcpListenerRoutes>,
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

    let mut table = Table {
        revision: snapshot.revision,
        pools,
        ..Table::default()
    };
    let mut compiled: Vec<(String, Arc<CompiledRoute>)> = Vec::new();
    for (name, route) in snapshot.routes.iter() {
        if route.kind == RouteKind::Tcp {
            add_tcp_route(&mut table, name, route, config);
            continue;
        }
        match compile_route(name, route, config, &table.pools) {
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
    let Some(listen) = route.listen else { return };
    let target = crate::tcp::TcpTarget {
        route: Arc::clone(name),
        targets: Targets::of(route, &table.pools),
        connect_timeout: route.timeouts.connect.unwrap_or(config.connect_timeout),
        idle_timeout: route.timeouts.idle,
    };
    let routes = table.tcp.entry(listen).or_default();
    let slot = match route.sni.as_deref() {
        None => &mut routes.default,
        Some(sni) => {
            let map = if let Some(suffix) = sni.strip_prefix('*') {
                routes.by_sni_suffix.entry(suffix.into())
            } else {
                routes.by_sni.entry(sni.into())
            };
            match map {
                std::collections::hash_map::Entry::Occupied(existing) => {
                    warn!(route = %name, other = %existing.get().route, "two TCP routes for one listen address and server name; keeping the first");
                    return;
                }
                std::collections::hash_map::Entry::Vacant(slot) => {
                    slot.insert(target);
                    return;
                }
            }
        }
    };
    match slot {
        Some(existing) => {
            warn!(route = %name, other = %existing.route, "two default TCP routes for one listen address; keeping the first");
        }
        None => *slot = Some(target),
    }
}

fn compile_regex(pattern: &str) -> Result<regex::Regex, String> {
    regex::RegexBuilder::new(pattern)
        .size_limit(1 << 20)
        .build()
        .map_err(|e| e.to_string())
}

/// Whether a stored rewrite of header `name` by `route` is left out: framing headers are
/// the router's, and a route stored before the admin API refused them may not touch
/// them. Said once per route and header, not at every table build.
fn framing_rewrite(route: &str, name: &str) -> bool {
    static WARNED: std::sync::Mutex<std::collections::BTreeSet<(String, String)>> =
        std::sync::Mutex::new(std::collections::BTreeSet::new());
    let framing = discovery::model::is_framing_header(name);
    if framing
        && WARNED
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert((route.to_string(), name.to_ascii_lowercase()))
    {
        warn!(
            route,
            header = name,
            "route rewrite of a framing header ignored (write the route again without it)"
        );
    }
    framing
}

fn header_pairs(
    route: &str,
    set: &std::collections::BTreeMap<String, String>,
) -> Result<Vec<(HeaderName, HeaderValue)>, String> {
    set.iter()
        .filter(|(name, _)| !framing_rewrite(route, name))
        .map(|(name, value)| {
            let name =
                HeaderName::from_bytes(name.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
            let value =
                HeaderValue::from_bytes(value.as_bytes()).map_err(|e| format!("{name}: {e}"))?;
            Ok((name, value))
        })
        .collect()
}

fn header_names(route: &str, names: &[String]) -> Result<Vec<HeaderName>, String> {
    names
        .iter()
        .filter(|name| !framing_rewrite(route, name) && !name.eq_ignore_ascii_case("host"))
        .map(|n| HeaderName::from_bytes(n.as_bytes()).map_err(|e| format!("{n}: {e}")))
        .collect()
}

fn compile_route(
    name: &str,
    route: &Route,
    config: &RouterConfig,
    pools: &HashMap<Arc<str>, Arc<Pool>>,
) -> Result<CompiledRoute, String> {
    let path = match &route.path {
        None => PathMatcher::Prefix("/".into()),
        Some(PathMatch::Exact(p)) => PathMatcher::Exact(p.as_str().into()),
        Some(PathMatch::Prefix(p)) => PathMatcher::Prefix(p.as_str().into()),
        Some(PathMatch::Regex(r)) => PathMatcher::Regex(compile_regex(r)?),
    };
    let methods = route
        .methods
        .iter()
        .map(|m| Method::from_bytes(m.as_bytes()).map_err(|e| format!("method {m}: {e}")))
        .collect::<Result<_, _>>()?;
    let headers = route
        .headers
        .iter()
        .map(|h| {
            let value = if let Some(e) = &h.exact {
                ValueMatcher::Exact(e.as_bytes().into())
            } else if let Some(p) = &h.prefix {
                ValueMatcher::Prefix(p.as_bytes().into())
            } else if let Some(r) = &h.regex {
                ValueMatcher::Regex(compile_regex(r)?)
            } else {
                ValueMatcher::Present(h.present.unwrap_or(true))
            };
            Ok(HeaderMatcher {
                name: HeaderName::from_bytes(h.name.as_bytes())
                    .map_err(|e| format!("header {}: {e}", h.name))?,
                value,
                invert: h.invert,
            })
        })
        .collect::<Result<_, String>>()?;
    let targets = Targets::of(route, pools);
    let prefix_rewrite = match (&route.prefix_rewrite, &route.path) {
        (Some(rewrite), Some(PathMatch::Prefix(p))) => Some((p.len(), rewrite.as_str().into())),
        _ => None,
    };
    Ok(CompiledRoute {
        name: Arc::from(name),
        path,
        methods,
        headers,
        targets,
        connect_timeout: route.timeouts.connect.unwrap_or(config.connect_timeout),
        request_timeout: route.timeouts.request.unwrap_or(config.request_timeout),
        per_try_timeout: route.retry.as_ref().and_then(|r| r.per_try_timeout),
        idle_timeout: route.timeouts.idle,
        retry: route.retry.clone(),
        prefix_rewrite,
        request_set: header_pairs(name, &route.request_headers.set)?,
        request_remove: header_names(name, &route.request_headers.remove)?,
        response_set: header_pairs(name, &route.response_headers.set)?,
        response_remove: header_names(name, &route.response_headers.remove)?,
        request_duration: OnceLock::new(),
    })
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
        changed_at: None,
    }
}

#[cfg(test)]
mod tests;
