//! The request core: what every HTTP path shares (the HTTP/1 pump, HTTP/2 streams to
//! HTTP/1 services, pingora's proxy for HTTP/2 services), written once.
//!
//! Phase order of a request, on any path: `Proxy::route` (the routing prologue: load
//! the table once, find the route, pick the target and its pool, compute the hash key;
//! 400/404/503 refused here) -> `RequestCtx::start` -> per attempt
//! `RequestCtx::begin_attempt` (an endpoint picked by the path) .. the retry rules
//! (`Proxy::connect_failed`, `Proxy::retry_on_answer`, `Proxy::retry_unanswered`,
//! `Proxy::retry_after_no_answer`), which account the attempt and end it ->
//! `RequestCtx::finish` (counters).
//!
//! No locks, no awaits on discovery, no allocation: the table is an `Arc` loaded once per
//! request, and what the request routed with stays in its [`RequestCtx`], so retries use
//! the same route and pool.

use std::io::Write;
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use http::Method;
use http::header::HeaderValue;
use pingora::connectors::TransportConnector;
use pingora::prelude::HttpPeer;
use pingora::protocols::Stream;
use pingora::{Error, ErrorType, Result};
use tracing::warn;

use crate::access_log::AccessLog;
use crate::config::{HashOn, RouterConfig};
use crate::metrics::{GaugeGuard, RouterMetrics};
use crate::pool::{Clock, Endpoint, Pool, Tried, fnv1a};
use crate::table::{CompiledRoute, Table};
use crate::wire::{HeaderLookup, has_dot_segment, routing_host};

/// The state every HTTP path serves from.
pub struct Proxy {
    pub table: Arc<ArcSwap<Table>>,
    /// Connects to upstreams (TCP, TLS); the pump pools HTTP/1 connections itself.
    pub connector: TransportConnector,
    pub config: Arc<RouterConfig>,
    pub metrics: RouterMetrics,
    pub clock: Clock,
    pub access_log: Option<AccessLog>,
    /// This router's `Via` name (`strait-<64 random bits>`): added to every request it
    /// sends upstream; a request that already carries it is a loop.
    pub hop_token: Arc<str>,
}

/// A routed request: its route, which of the route's targets, that target's pool, and
/// the request's hash key (consistent hashing).
#[derive(Clone)]
pub(crate) struct Routed {
    pub(crate) route: Arc<CompiledRoute>,
    pub(crate) target: usize,
    pub(crate) pool: Arc<Pool>,
    pub(crate) hash: Option<u64>,
}

/// A request the router answers itself, before any upstream: a path with dot segments
/// (400), no route (404), no healthy instance (503).
pub(crate) struct Refused {
    pub(crate) status: u16,
    pub(crate) body: String,
    /// The route and target of a 503, for the access log.
    pub(crate) route: Option<(Arc<CompiledRoute>, usize)>,
}

impl Proxy {
    /// The routing prologue, the same for every HTTP path: refuses a path with dot
    /// segments, loads the live table once, finds the route for `host` (as sent: the port,
    /// a trailing dot and case do not matter), picks the target (weighted for a split)
    /// and checks its pool has instances, and computes the hash key. Counts what it
    /// refuses (`no_route`; a 503 under its route and service).
    pub(crate) fn route(
        &self,
        host: &str,
        path: &str,
        method: &Method,
        headers: &(impl HeaderLookup + ?Sized),
        client_ip: Option<IpAddr>,
    ) -> Result<Routed, Refused> {
        if has_dot_segment(path) {
            return Err(Refused {
                status: 400,
                body: "request path has dot segments\n".into(),
                route: None,
            });
        }
        if let Some(body) = self.routing_loop(headers) {
            self.metrics.loops.inc();
            return Err(Refused {
                status: 508,
                body: body.into(),
                route: None,
            });
        }
        let host = routing_host(host);
        // `OPTIONS *` (asterisk form) is about the host's server as a whole: it goes
        // where the host's root would.
        let path = if path == "*" { "/" } else { path };
        let table = self.table.load();
        let Some(route) = table.route(&host, path, method, headers) else {
            self.metrics.rejected("no_route");
            return Err(Refused {
                status: 404,
                body: format!("no route for host {:?}\n", &*host),
                route: None,
            });
        };
        let target = route.pick_target_index();
        let service = &route.targets.list[target];
        let Some(pool) = service.pool.as_ref().filter(|p| !p.is_empty()) else {
            self.metrics
                .count_request(route, target, 503, Duration::ZERO);
            return Err(Refused {
                status: 503,
                body: format!("no healthy instance of service {:?}\n", &*service.service),
                route: Some((Arc::clone(route), target)),
            });
        };
        let hash = pool
            .hash_on()
            .and_then(|on| hash_key(on, headers, client_ip));
        Ok(Routed {
            route: Arc::clone(route),
            target,
            pool: Arc::clone(pool),
            hash,
        })
    }
}

impl Proxy {
    /// Whether the request's `Via` entries show a loop: this router's own name (an
    /// instance that leads back to it), or more strait routers than `max_hops` (a loop
    /// through several). No allocation; nothing to do for a request without `Via`.
    fn routing_loop(&self, headers: &(impl HeaderLookup + ?Sized)) -> Option<&'static str> {
        let mut hops = 0u32;
        for value in headers.all("via") {
            for entry in value.split(|&b| b == b',') {
                let name = entry
                    .trim_ascii()
                    .rsplit(|&b| b == b' ')
                    .next()
                    .unwrap_or(b"");
                if name == self.hop_token.as_bytes() {
                    return Some("loop detected: the request came through this router already\n");
                }
                if name.starts_with(b"strait-") {
                    hops += 1;
                }
            }
        }
        (hops > self.config.max_hops)
            .then_some("loop detected: the request came through too many strait routers\n")
    }
}

/// The consistent-hashing key of a request: a header's first value, a cookie's value, or
/// the client's address as text. One function for every path, so that a client's
/// requests land on the same instance whichever way they come. No allocation.
pub(crate) fn hash_key(
    hash_on: &HashOn,
    headers: &(impl HeaderLookup + ?Sized),
    client_ip: Option<IpAddr>,
) -> Option<u64> {
    match hash_on {
        HashOn::Header(name) => headers.all(name).next().map(|v| fnv1a(&[v])),
        HashOn::Cookie(name) => headers
            .all("cookie")
            .flat_map(|v| v.split(|&b| b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let (key, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
                (key == name.as_bytes()).then(|| fnv1a(&[&value[1..]]))
            }),
        HashOn::ClientIp => client_ip.map(|ip| {
            // The address as `IpAddr`'s `Display` writes it (at most 45 bytes).
            let mut text = [0u8; 64];
            let mut out = &mut text[..];
            let _ = write!(out, "{ip}");
            let len = 64 - out.len();
            fnv1a(&[&text[..len]])
        }),
    }
}

/// Whether a request may be sent again (retried): an idempotent method, or any method
/// when the route allows it.
pub(crate) fn retryable_method(method: &Method, route: &CompiledRoute) -> bool {
    method.is_idempotent() || route.retry.as_ref().is_some_and(|r| r.non_idempotent)
}

/// The short reason in a router-made gateway error.
pub(crate) fn error_message(status: u16) -> &'static str {
    match status {
        503 => "no healthy instance available",
        504 => "upstream timed out",
        502 => "upstream unavailable",
        _ => "proxy error",
    }
}

/// Per-request state. Holds what the request routed with, so retries use the same route
/// and pool.
pub struct RequestCtx {
    pub(crate) started: Instant,
    /// The last upstream tried, for the access log.
    pub(crate) upstream: Option<SocketAddr>,
    /// pingora's path: the request id, for the access log.
    pub(crate) request_id: Option<HeaderValue>,
    pub(crate) route: Option<Arc<CompiledRoute>>,
    /// Which of the route's targets was picked.
    pub(crate) target: usize,
    pub(crate) pool: Option<Arc<Pool>>,
    /// The endpoint of the current attempt (its outstanding count is ours to release).
    pub(crate) endpoint: Option<usize>,
    pub(crate) attempt_started: Option<Instant>,
    pub(crate) tried: Tried,
    pub(crate) attempts: u32,
    pub(crate) hash: Option<u64>,
    /// The current attempt got a response head (pingora's path; the pump knows by itself).
    pub(crate) answered: bool,
    retrying: bool,
    _active: GaugeGuard,
}

impl RequestCtx {
    /// Takes what the request routed with: from now on it counts as active in its pool
    /// (the retry budget's base) until [`RequestCtx::finish`].
    pub(crate) fn start(&mut self, routed: Routed) {
        routed.pool.shared.active.fetch_add(1, Ordering::Relaxed);
        self.route = Some(routed.route);
        self.pool = Some(routed.pool);
        self.target = routed.target;
        self.hash = routed.hash;
    }

    /// Starts an attempt on `endpoint` (index `index` of the request's pool): it counts as
    /// outstanding there until `end_attempt`.
    pub(crate) fn begin_attempt(&mut self, endpoint: &Endpoint, index: usize) {
        endpoint.state.outstanding.fetch_add(1, Ordering::Relaxed);
        self.endpoint = Some(index);
        self.upstream = Some(endpoint.addr);
        self.tried.push(index);
        self.attempts += 1;
        self.answered = false;
        // The first attempt starts with the request: one clock read fewer.
        self.attempt_started = Some(if self.attempts == 1 {
            self.started
        } else {
            Instant::now()
        });
    }

    /// Ends the current attempt: releases the endpoint's outstanding slot.
    pub(crate) fn end_attempt(&mut self, metrics: &RouterMetrics) {
        if let (Some(pool), Some(index)) = (&self.pool, self.endpoint.take()) {
            if let Some(endpoint) = pool.endpoints.get(index) {
                endpoint.state.outstanding.fetch_sub(1, Ordering::Relaxed);
            }
            if let Some(started) = self.attempt_started.take() {
                metrics
                    .upstream_duration(pool)
                    .observe(started.elapsed().as_secs_f64());
            }
        }
        if self.retrying {
            self.retrying = false;
            if let Some(pool) = &self.pool {
                pool.shared.retries_active.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Ends the request with `status`: its last attempt, its place among its pool's
    /// active requests, and its counters (requests by route, service and status class;
    /// duration). Returns how long the request took.
    pub(crate) fn finish(&mut self, metrics: &RouterMetrics, status: u16) -> Duration {
        self.end_attempt(metrics);
        let elapsed = self.started.elapsed();
        if let (Some(route), Some(pool)) = (&self.route, &self.pool) {
            pool.shared.active.fetch_sub(1, Ordering::Relaxed);
            metrics.count_request(route, self.target, status, elapsed);
        }
        elapsed
    }
}

/// What the retry rules need to know of a request, on any path.
#[derive(Clone, Copy)]
pub(crate) struct RetryScope<'a> {
    pub(crate) pool: &'a Pool,
    pub(crate) route: &'a CompiledRoute,
    /// Idempotent (or the route allows retrying anything): see [`retryable_method`].
    pub(crate) retryable_method: bool,
}

impl Proxy {
    /// A new request's state (counted as in flight until dropped).
    pub(crate) fn request_ctx(&self) -> RequestCtx {
        RequestCtx {
            started: Instant::now(),
            upstream: None,
            request_id: None,
            route: None,
            target: 0,
            pool: None,
            endpoint: None,
            attempt_started: None,
            tried: Tried::default(),
            attempts: 0,
            hash: None,
            answered: false,
            retrying: false,
            _active: GaugeGuard::new(&self.metrics.active_requests),
        }
    }

    /// A connection to `addr`, an endpoint of `pool`, with `route`'s connect timeout
    /// (TLS for a TLS service).
    pub(crate) async fn connect(
        &self,
        pool: &Pool,
        addr: SocketAddr,
        route: &CompiledRoute,
    ) -> Result<Stream> {
        let peer = upstream_peer(pool, addr, route);
        self.connector.new_stream(&peer).await
    }

    /// Counts a failed upstream TLS handshake by reason, and logs it (at most once a
    /// second: a service whose certificate does not verify fails every connect).
    pub(crate) fn tls_failure(&self, pool: &Pool, index: usize, e: &Error, now_ms: u64) {
        if let Some(reason) = tls_failure_reason(e) {
            self.count_tls_failure(pool, index, reason, e, now_ms);
        }
    }

    pub(crate) fn count_tls_failure(
        &self,
        pool: &Pool,
        index: usize,
        reason: &'static str,
        e: &dyn std::fmt::Display,
        now_ms: u64,
    ) {
        self.metrics
            .upstream_tls_errors
            .with_label_values(&[&pool.service, reason])
            .inc();
        let last = pool.shared.tls_warned_ms.load(Ordering::Relaxed);
        // 0: never logged.
        if (last == 0 || now_ms.saturating_sub(last) >= 1000)
            && pool
                .shared
                .tls_warned_ms
                .compare_exchange(last, now_ms.max(1), Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            let upstream = pool.endpoints.get(index).map(|e| e.addr);
            warn!(
                service = %pool.service,
                upstream = ?upstream,
                reason,
                error = %e,
                "upstream TLS handshake failed"
            );
        }
    }

    /// Accounts a failed connect to the current attempt's endpoint (outlier detection,
    /// TLS reasons), ends the attempt, and says whether to try another instance.
    pub(crate) fn connect_failed(&self, ctx: &mut RequestCtx, e: &Error) -> bool {
        if let (Some(pool), Some(index)) = (&ctx.pool, ctx.endpoint) {
            let now = self.clock.now_ms();
            self.metrics
                .upstream_failure(pool, index, &self.config.outlier, now, true);
            if pool.tls.is_some() {
                self.tls_failure(pool, index, e, now);
            }
        }
        // Nothing reached the upstream: always safe to try another instance, and it adds
        // no load to any backend, so it is outside the retry budget (which bounds retries
        // that do reach backends). `connect_retries` bounds it.
        let retry = ctx.attempts <= self.config.connect_retries
            && ctx
                .pool
                .as_ref()
                .is_some_and(|p| ctx.tried.len() < p.endpoints.len() || p.endpoints.len() == 1);
        ctx.end_attempt(&self.metrics);
        if retry && let Some(pool) = &ctx.pool {
            self.metrics
                .retries
                .with_label_values(&[&pool.service])
                .inc();
        }
        retry
    }

    /// Whether the pool's retry budget allows one more retry now.
    pub(crate) fn retry_allowed(&self, pool: &Pool) -> bool {
        let active = pool.shared.active.load(Ordering::Relaxed);
        let retrying = pool.shared.retries_active.load(Ordering::Relaxed);
        // At least a few retries are always allowed, so a quiet service can still fail over.
        let budget = (active * self.config.retry_budget_percent / 100).max(3);
        retrying < budget
    }

    /// Ends the current attempt and, if the budget allows, reserves a retry slot that is
    /// released when the retried attempt ends. Returns whether to retry.
    pub(crate) fn try_retry(&self, ctx: &mut RequestCtx) -> bool {
        // The attempt that just failed frees its endpoint (and its own retry slot).
        ctx.end_attempt(&self.metrics);
        let Some(pool) = &ctx.pool else { return false };
        if !self.retry_allowed(pool) {
            return false;
        }
        pool.shared.retries_active.fetch_add(1, Ordering::Relaxed);
        ctx.retrying = true;
        self.metrics
            .retries
            .with_label_values(&[&pool.service])
            .inc();
        true
    }

    /// Whether to try again after an attempt that got no response head. A pooled
    /// connection the upstream had closed (`stale`) processed nothing: it goes again for a
    /// method that may be repeated, and is no failure of the instance (idle connections
    /// get closed). Anything else is [`Proxy::retry_unanswered`].
    pub(crate) fn retry_after_no_answer(
        &self,
        ctx: &mut RequestCtx,
        request: RetryScope<'_>,
        index: usize,
        stale: bool,
        timeout: bool,
        replayable: bool,
    ) -> bool {
        if stale {
            return replayable && request.retryable_method && self.try_retry(ctx);
        }
        self.retry_unanswered(ctx, request, index, timeout, replayable)
    }

    /// An attempt that got no response head (reset, closed, timed out): a failure of the
    /// instance, and retried under the route's policy for the status the client would
    /// get (502, or 504), as if the upstream had answered it (Envoy's `gateway-error`
    /// covers resets the same way). A timeout is retried only with a per-try timeout:
    /// otherwise `request` bounds the whole wait.
    pub(crate) fn retry_unanswered(
        &self,
        ctx: &mut RequestCtx,
        request: RetryScope<'_>,
        index: usize,
        timeout: bool,
        replayable: bool,
    ) -> bool {
        if timeout && request.route.per_try_timeout.is_none() {
            let now = self.clock.now_ms();
            self.metrics
                .upstream_failure(request.pool, index, &self.config.outlier, now, false);
            return false;
        }
        let status = if timeout { 504 } else { 502 };
        self.retry_on_answer(ctx, request, index, status, replayable)
    }

    /// Accounts the upstream's answer to endpoint `index` (outlier detection) and says
    /// whether to retry the request elsewhere: a retryable status under the route's
    /// policy, a method that may be repeated, a body that can be sent again, budget left.
    /// The budget is checked before the attempt ends, so a response that is passed on
    /// keeps counting against its endpoint until it is done.
    pub(crate) fn retry_on_answer(
        &self,
        ctx: &mut RequestCtx,
        request: RetryScope<'_>,
        index: usize,
        status: u16,
        replayable: bool,
    ) -> bool {
        let (pool, route) = (request.pool, request.route);
        if status >= 500 {
            let now = self.clock.now_ms();
            self.metrics
                .upstream_failure(pool, index, &self.config.outlier, now, false);
        } else {
            pool.record_success(index);
        }
        let max_attempts = 1 + route.retry.as_ref().map_or(0, |r| r.attempts);
        route.retries_on(status)
            && ctx.attempts < max_attempts
            && request.retryable_method
            && replayable
            && self.retry_allowed(pool)
            && self.try_retry(ctx)
    }
}

/// The pingora peer for `addr`, an endpoint of `pool`, with `route`'s connect timeout.
pub(crate) fn upstream_peer(pool: &Pool, addr: SocketAddr, route: &CompiledRoute) -> HttpPeer {
    let mut peer = crate::tls::peer(pool.tls.as_deref(), addr);
    peer.options.connection_timeout = Some(route.connect_timeout);
    peer.options.total_connection_timeout = Some(route.connect_timeout);
    peer
}

/// Why an upstream TLS connection failed, if it did: `certificate` (the instance's
/// certificate is not trusted, expired or not valid for the name), `handshake` (anything
/// else in the handshake), `alert` (the instance refused the connection after the client
/// finished its handshake, as a TLS 1.3 server does when a client certificate is missing
/// or not trusted: pingora sees it as a read error on the request).
fn tls_failure_reason(e: &Error) -> Option<&'static str> {
    match e.etype() {
        ErrorType::InvalidCert => Some("certificate"),
        ErrorType::TLSHandshakeFailure | ErrorType::HandshakeError => {
            // rustls: "TLS connect() failed: … invalid peer certificate: UnknownIssuer"
            let text = e.to_string();
            Some(if text.contains("invalid peer certificate") {
                "certificate"
            } else {
                "handshake"
            })
        }
        ErrorType::ReadError | ErrorType::WriteError | ErrorType::ConnectionClosed => e
            .to_string()
            .contains("received fatal alert")
            .then_some("alert"),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
