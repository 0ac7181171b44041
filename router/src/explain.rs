//! `route explain`: on the live table, which route a request would take and why the
//! others would not, the service(s) it would go to, and which instances are eligible.
//! Control plane only (admin API); it walks the same matchers the hot path uses.

use http::{HeaderMap, Method};
use serde::Serialize;

use crate::pool::Pool;
use crate::table::route::{PathMatcher, ValueMatcher};
use crate::table::{CompiledRoute, HostMatch, Table};
use crate::wire::{has_dot_segment, normalize_host};

#[derive(Debug, Serialize)]
pub struct Explanation {
    pub revision: u64,
    pub method: String,
    pub host: String,
    pub path: String,
    /// The host entry chosen: `exact a.com`, `wildcard *.a.com`, `catch-all *`, or none.
    pub host_match: Option<String>,
    /// Every route of that host entry, in evaluation order.
    pub routes: Vec<RouteVerdict>,
    pub route: Option<String>,
    pub targets: Vec<TargetView>,
    /// What the router would answer.
    pub outcome: String,
}

#[derive(Debug, Serialize)]
pub struct RouteVerdict {
    pub name: String,
    pub matched: bool,
    /// Why it did not match (or was not reached).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct TargetView {
    pub service: String,
    /// Share of the route's traffic, in percent.
    pub share: f64,
    pub endpoints: Vec<EndpointView>,
    pub excluded: Vec<ExcludedView>,
}

#[derive(Debug, Serialize)]
pub struct EndpointView {
    pub id: String,
    pub address: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    pub weight: u32,
    pub outstanding: u32,
    pub eligible: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct ExcludedView {
    pub id: String,
    pub reason: String,
}

fn path_mismatch(matcher: &PathMatcher, path: &str) -> Option<String> {
    if matcher.matches(path) {
        return None;
    }
    Some(match matcher {
        PathMatcher::Exact(p) => format!("path {path} is not exactly {p}"),
        PathMatcher::Prefix(p) => format!("path {path} is not under prefix {p}"),
        PathMatcher::Regex(r) => format!("path {path} does not match regex {}", r.as_str()),
    })
}

fn mismatch(
    route: &CompiledRoute,
    path: &str,
    method: &Method,
    headers: &HeaderMap,
) -> Option<String> {
    if let Some(reason) = path_mismatch(&route.path, path) {
        return Some(reason);
    }
    if !route.methods.is_empty() && !route.methods.contains(method) {
        let allowed: Vec<&str> = route.methods.iter().map(Method::as_str).collect();
        return Some(format!(
            "method {method} is not one of {}",
            allowed.join(", ")
        ));
    }
    route.headers.iter().find(|h| !h.matches(headers)).map(|h| {
        let want = match &h.value {
            ValueMatcher::Exact(v) => format!("equal to {:?}", String::from_utf8_lossy(v)),
            ValueMatcher::Prefix(v) => format!("starting with {:?}", String::from_utf8_lossy(v)),
            ValueMatcher::Regex(r) => format!("matching {}", r.as_str()),
            ValueMatcher::Present(true) => "present".to_string(),
            ValueMatcher::Present(false) => "absent".to_string(),
        };
        let not = if h.invert { "not " } else { "" };
        format!("header {} is not {not}{want}", h.name)
    })
}

fn target_view(service: &str, share: f64, pool: Option<&Pool>, now_ms: u64) -> TargetView {
    let Some(pool) = pool else {
        return TargetView {
            service: service.to_string(),
            share,
            endpoints: Vec::new(),
            excluded: Vec::new(),
        };
    };
    let local_only = pool.local_zone_in_use(now_ms) == Some(true);
    let endpoints = pool
        .endpoints
        .iter()
        .enumerate()
        .map(|(i, e)| {
            let failing_checks = e
                .state
                .failing_checks
                .load(std::sync::atomic::Ordering::Relaxed);
            let reason = if failing_checks {
                Some("failing the router's active health checks".to_string())
            } else if let Some(ms) = pool.ejected_for(i, now_ms) {
                Some(format!(
                    "ejected by outlier detection for {:.1}s more",
                    ms as f64 / 1000.0
                ))
            } else if local_only && !pool.is_local(i) {
                Some(
                    "outside the router's zone while the local zone has enough instances"
                        .to_string(),
                )
            } else {
                None
            };
            EndpointView {
                id: e.id.to_string(),
                address: e.addr.to_string(),
                zone: e.zone.as_deref().map(str::to_string),
                weight: e.weight,
                outstanding: e
                    .state
                    .outstanding
                    .load(std::sync::atomic::Ordering::Relaxed),
                eligible: reason.is_none(),
                reason,
            }
        })
        .collect();
    TargetView {
        service: service.to_string(),
        share,
        endpoints,
        excluded: pool
            .excluded
            .iter()
            .map(|(id, reason)| ExcludedView {
                id: id.to_string(),
                reason: reason.clone(),
            })
            .collect(),
    }
}

impl Table {
    /// Explains how a request would be routed. `now_ms` is the router clock (ejections).
    pub fn explain(
        &self,
        method: &Method,
        host: &str,
        path: &str,
        headers: &HeaderMap,
        now_ms: u64,
    ) -> Explanation {
        let host = normalize_host(host).to_ascii_lowercase();
        let mut explanation = Explanation {
            revision: self.revision,
            method: method.to_string(),
            host: host.clone(),
            path: path.to_string(),
            host_match: None,
            routes: Vec::new(),
            route: None,
            targets: Vec::new(),
            outcome: String::new(),
        };
        // What the front refuses before routing, as it does.
        if method == Method::CONNECT {
            explanation.outcome = "405: CONNECT is not supported".to_string();
            return explanation;
        }
        if has_dot_segment(path) {
            explanation.outcome = "400: request path has dot segments (a prefix could be escaped at a backend that normalizes paths)".to_string();
            return explanation;
        }
        let Some((host_match, entry)) = self.host_match(&host) else {
            explanation.outcome =
                format!("404: no route for host {host:?} (no exact, wildcard or `*` host)");
            return explanation;
        };
        explanation.host_match = Some(match host_match {
            HostMatch::Exact(h) => format!("exact {h}"),
            HostMatch::Wildcard(suffix) => format!("wildcard *{suffix}"),
            HostMatch::Any => "catch-all *".to_string(),
        });
        let mut chosen = None;
        for route in entry.routes.iter() {
            if chosen.is_some() {
                explanation.routes.push(RouteVerdict {
                    name: route.name.to_string(),
                    matched: false,
                    reason: Some("not reached: a more specific route matched first".into()),
                });
                continue;
            }
            let reason = mismatch(route, path, method, headers);
            if reason.is_none() {
                chosen = Some(route);
            }
            explanation.routes.push(RouteVerdict {
                name: route.name.to_string(),
                matched: reason.is_none(),
                reason,
            });
        }
        let Some(route) = chosen else {
            explanation.outcome = format!("404: no route of host {host:?} matches this request");
            return explanation;
        };
        explanation.route = Some(route.name.to_string());
        for (target, share) in route.targets.shares() {
            explanation.targets.push(target_view(
                &target.service,
                share,
                target.pool.as_deref(),
                now_ms,
            ));
        }
        let usable: Vec<&TargetView> = explanation
            .targets
            .iter()
            .filter(|t| t.endpoints.iter().any(|e| e.eligible))
            .collect();
        explanation.outcome = if usable.is_empty() {
            let services: Vec<&str> = explanation
                .targets
                .iter()
                .map(|t| t.service.as_str())
                .collect();
            format!("503: no healthy instance of {}", services.join(", "))
        } else {
            let services: Vec<&str> = usable.iter().map(|t| t.service.as_str()).collect();
            format!("proxied by route {} to {}", route.name, services.join(", "))
        };
        explanation
    }
}
