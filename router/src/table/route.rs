//! A compiled HTTP route: its path, method and header conditions, the services it sends
//! to (one, or a weighted split), timeouts, retry policy and header rewrites. Compiled
//! once per table from a discovery `Route` (control plane), matched per request.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use discovery::Route;
use discovery::model::{PathMatch, RetryOn, RetryPolicy};
use http::Method;
use http::header::{HeaderName, HeaderValue};
use prometheus::{Histogram, IntCounter};
use tracing::warn;

use super::shards::ShardedMap;
use crate::config::RouterConfig;
use crate::pool::Pool;
use crate::wire::HeaderLookup;

#[derive(Debug, Clone)]
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
    pub(super) fn rank(&self) -> (u8, usize) {
        match self {
            PathMatcher::Exact(_) => (0, 0),
            PathMatcher::Regex(_) => (1, 0),
            PathMatcher::Prefix(p) => (2, usize::MAX - p.len()),
        }
    }
}

#[derive(Debug, Clone)]
pub(crate) enum ValueMatcher {
    Exact(Box<[u8]>),
    Prefix(Box<[u8]>),
    Regex(regex::Regex),
    Present(bool),
}

#[derive(Debug, Clone)]
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

/// The pools route targets resolve against: one per service, and one per (service, tag)
/// subset a split names.
pub(crate) struct TablePools<'a> {
    pub(crate) services: &'a ShardedMap<Arc<str>, Arc<Pool>>,
    pub(crate) subsets: &'a ShardedMap<(Arc<str>, Arc<str>), Arc<Pool>>,
}

impl TablePools<'_> {
    fn get(&self, service: &str, tag: Option<&str>) -> Option<Arc<Pool>> {
        match tag {
            None => self.services.get(service).cloned(),
            Some(tag) => self
                .subsets
                .get(&(Arc::from(service), Arc::from(tag)))
                .cloned(),
        }
    }
}

impl Targets {
    pub(super) fn of(route: &Route, pools: &TablePools) -> Targets {
        let target = |service: &str, tag: Option<&str>| {
            let pool = pools.get(service, tag);
            Target {
                // The pool's name when there is one: no copy of it per route.
                service: pool
                    .as_ref()
                    .map_or_else(|| Arc::from(service), |p| Arc::clone(&p.service)),
                tag: tag.map(Arc::from),
                pool,
                requests: Default::default(),
            }
        };
        match &route.service {
            Some(service) => Targets {
                list: vec![target(service, None)],
                cumulative: Vec::new(),
            },
            None => Targets {
                list: route
                    .split
                    .iter()
                    .map(|s| target(&s.service, s.tag.as_deref()))
                    .collect(),
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

    /// The same targets resolved against the pools of a newer table (the route unchanged,
    /// a pool it sends to rebuilt). The labelled series already looked up are kept.
    fn retarget(&self, pools: &TablePools) -> Targets {
        Targets {
            list: self
                .list
                .iter()
                .map(|t| Target {
                    service: Arc::clone(&t.service),
                    tag: t.tag.clone(),
                    pool: pools.get(&t.service, t.tag.as_deref()),
                    requests: std::array::from_fn(|i| carried(&t.requests[i])),
                })
                .collect(),
            cumulative: self.cumulative.clone(),
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
    /// A split target's subset: only the service's instances with this tag.
    pub tag: Option<Arc<str>>,
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
    pub(super) fn matches(
        &self,
        path: &str,
        method: &Method,
        headers: &(impl HeaderLookup + ?Sized),
    ) -> bool {
        self.path.matches(path)
            && (self.methods.is_empty() || self.methods.contains(method))
            && self.headers.iter().all(|h| h.matches(headers))
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

    /// This route against the pools of a newer table: the matchers (compiled regexes
    /// included) and policies copied, the targets resolved again.
    pub(super) fn retarget(&self, pools: &TablePools) -> CompiledRoute {
        CompiledRoute {
            name: Arc::clone(&self.name),
            path: self.path.clone(),
            methods: self.methods.clone(),
            headers: self.headers.clone(),
            targets: self.targets.retarget(pools),
            connect_timeout: self.connect_timeout,
            request_timeout: self.request_timeout,
            per_try_timeout: self.per_try_timeout,
            idle_timeout: self.idle_timeout,
            retry: self.retry.clone(),
            prefix_rewrite: self.prefix_rewrite.clone(),
            request_set: self.request_set.clone(),
            request_remove: self.request_remove.clone(),
            response_set: self.response_set.clone(),
            response_remove: self.response_remove.clone(),
            request_duration: carried(&self.request_duration),
        }
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

/// A lazily resolved metric series, carried into a newer table as it is.
fn carried<T: Clone>(cell: &OnceLock<T>) -> OnceLock<T> {
    let next = OnceLock::new();
    if let Some(value) = cell.get() {
        let _ = next.set(value.clone());
    }
    next
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

pub(super) fn compile_route(
    name: &Arc<str>,
    route: &Route,
    config: &RouterConfig,
    pools: &TablePools,
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
        name: Arc::clone(name),
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
