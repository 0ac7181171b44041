//! The request hot path: pingora's `ProxyHttp` phases over the current routing table.
//!
//! Phase order (pingora): `request_filter` (load the table once, route, choose the target
//! service; 404/503 answered here) -> `upstream_peer` (pick an endpoint; called again for
//! each retry) -> `fail_to_connect` (always retry elsewhere, within budget) ->
//! `upstream_request_filter` (forwarding headers, rewrites) -> `upstream_response_filter`
//! (outlier accounting, retry on gateway errors) -> `response_filter` (response header
//! rewrites) -> `fail_to_proxy` (502/504) -> `logging` (metrics, release).
//!
//! No locks, no awaits on discovery: the table is an `Arc` loaded once per request.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use http::header::{HOST, HeaderValue};
use pingora::connectors::TransportConnector;
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};
use tracing::warn;

use crate::config::{HashOn, RouterConfig};
use crate::metrics::{GaugeGuard, RouterMetrics};
use crate::pool::{Clock, Pool, Tried, fnv1a};
use crate::pump::RetryScope;
use crate::table::{CompiledRoute, Table};
use crate::wire::{has_dot_segment, is_plain_host, is_valid_request_id, routing_host};

/// Custom error for "no eligible endpoint" raised in `upstream_peer`.
const NO_ENDPOINT: ErrorType = ErrorType::HTTPStatus(503);

pub struct Proxy {
    pub table: Arc<ArcSwap<Table>>,
    /// Connects to upstreams (TCP, TLS); the pump pools HTTP/1 connections itself.
    pub connector: TransportConnector,
    pub config: Arc<RouterConfig>,
    pub metrics: RouterMetrics,
    pub clock: Clock,
    pub access_log: Option<crate::access_log::AccessLog>,
}

/// Per-request state. Holds the table it routed with, so retries use the same one.
pub struct RequestCtx {
    pub(crate) started: Instant,
    /// The last upstream tried, for the access log.
    pub(crate) upstream: Option<std::net::SocketAddr>,
    request_id: Option<HeaderValue>,
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
    answered: bool,
    retrying: bool,
    _active: GaugeGuard,
}

impl RequestCtx {
    /// Starts an attempt on `endpoint` (index `index` of the request's pool): it counts as
    /// outstanding there until `end_attempt`.
    pub(crate) fn begin_attempt(&mut self, endpoint: &crate::pool::Endpoint, index: usize) {
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

    pub(crate) fn retry_allowed_for(&self, pool: &Option<Arc<Pool>>) -> bool {
        pool.as_ref().is_some_and(|p| self.retry_allowed(p))
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

/// Writes a small plain-text response, keeping the connection alive.
async fn respond(session: &mut Session, status: u16, body: String) -> Result<bool> {
    let mut header = ResponseHeader::build(status, Some(3))?;
    header.insert_header("content-type", "text/plain")?;
    header.insert_header("content-length", body.len().to_string())?;
    session
        .write_response_header(Box::new(header), false)
        .await?;
    session
        .write_response_body(Some(Bytes::from(body)), true)
        .await?;
    Ok(true)
}

fn request_host(req: &RequestHeader) -> &str {
    req.headers
        .get(HOST)
        .and_then(|h| h.to_str().ok())
        .or_else(|| req.uri.host())
        .unwrap_or("")
}

fn hash_key(hash_on: &HashOn, session: &Session) -> Option<u64> {
    let req = session.req_header();
    match hash_on {
        HashOn::Header(name) => req
            .headers
            .get(name.as_str())
            .map(|v| fnv1a(&[v.as_bytes()])),
        HashOn::Cookie(name) => req
            .headers
            .get_all(http::header::COOKIE)
            .iter()
            .flat_map(|v| v.as_bytes().split(|&b| b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let (key, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
                (key == name.as_bytes()).then(|| fnv1a(&[&value[1..]]))
            }),
        HashOn::ClientIp => session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| fnv1a(&[a.ip().to_string().as_bytes()])),
    }
}

fn new_request_id() -> HeaderValue {
    let id = format!("{:032x}", rand::random::<u128>());
    // 32 hex digits are always a valid header value.
    HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("0"))
}

/// pingora's proxy over the same [`Proxy`] state: it serves HTTP/2 clients and HTTP/2
/// upstreams (the pump, [`crate::pump`], serves HTTP/1 to HTTP/1).
pub struct PingoraProxy(pub Arc<Proxy>);

impl std::ops::Deref for PingoraProxy {
    type Target = Proxy;

    fn deref(&self) -> &Proxy {
        &self.0
    }
}

#[async_trait]
impl ProxyHttp for PingoraProxy {
    type CTX = RequestCtx;

    fn new_ctx(&self) -> RequestCtx {
        self.request_ctx()
    }

    async fn request_filter(&self, session: &mut Session, ctx: &mut RequestCtx) -> Result<bool> {
        let table = self.table.load();
        let req = session.req_header();
        let host = routing_host(request_host(req));
        let host = &*host;
        if has_dot_segment(req.uri.path()) {
            return respond(session, 400, "request path has dot segments\n".to_string()).await;
        }
        let Some(route) = table.route(host, req.uri.path(), &req.method, &req.headers) else {
            self.metrics.rejected("no_route");
            let body = format!("no route for host {host:?}\n");
            return respond(session, 404, body).await;
        };
        let route = Arc::clone(route);
        let target_index = route.pick_target_index();
        let target = &route.targets.list[target_index];
        let Some(pool) = target.pool.clone().filter(|p| !p.is_empty()) else {
            let body = format!("no healthy instance of service {:?}\n", &*target.service);
            self.metrics
                .count_request(&route, target_index, 503, Duration::ZERO);
            return respond(session, 503, body).await;
        };
        ctx.target = target_index;
        ctx.hash = pool.hash_on().and_then(|h| hash_key(h, session));
        pool.shared.active.fetch_add(1, Ordering::Relaxed);
        ctx.pool = Some(pool);
        ctx.route = Some(route);
        Ok(false)
    }

    async fn upstream_peer(
        &self,
        _session: &mut Session,
        ctx: &mut RequestCtx,
    ) -> Result<Box<HttpPeer>> {
        // Every path back here (a retry) has ended the previous attempt already; ending it
        // here would release the retry's budget slot before the retry even runs.
        debug_assert!(ctx.endpoint.is_none());
        let (Some(pool), Some(route)) = (ctx.pool.clone(), ctx.route.clone()) else {
            return Err(Error::explain(NO_ENDPOINT, "no route selected"));
        };
        let Some(index) = pool.pick(self.clock.now_ms(), &ctx.tried, ctx.hash) else {
            return Err(Error::explain(NO_ENDPOINT, "no eligible endpoint"));
        };
        let endpoint = &pool.endpoints[index];
        ctx.begin_attempt(endpoint, index);
        let mut peer = crate::tls::peer(pool.tls.as_deref(), endpoint.addr);
        let options = &mut peer.options;
        options.connection_timeout = Some(route.connect_timeout);
        options.total_connection_timeout = Some(route.connect_timeout);
        // pingora applies one timeout to every read, head and body alike: with an idle
        // timeout, the smaller bounds both.
        let read = route.per_try_timeout.unwrap_or(route.request_timeout);
        let read = route.idle_timeout.map_or(read, |idle| idle.min(read));
        options.read_timeout = Some(read);
        options.write_timeout = Some(read);
        options.idle_timeout = Some(Duration::from_secs(60));
        if pool.http2 {
            // min 2: over cleartext prior knowledge (h2c), over TLS ALPN offers only `h2`;
            // many streams per connection.
            options.set_http_version(2, 2);
            options.max_h2_streams = 100;
        }
        Ok(Box::new(peer))
    }

    fn fail_to_connect(
        &self,
        _session: &mut Session,
        _peer: &HttpPeer,
        ctx: &mut RequestCtx,
        mut e: Box<Error>,
    ) -> Box<Error> {
        let retry = self.connect_failed(ctx, &e);
        e.set_retry(retry);
        e
    }

    async fn upstream_request_filter(
        &self,
        session: &mut Session,
        upstream: &mut RequestHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let proto = if session.digest().is_some_and(|d| d.ssl_digest.is_some()) {
            "https"
        } else {
            "http"
        };
        if let Some(ip) = client_ip {
            let ip = ip.to_string();
            let xff = match upstream
                .headers
                .get("x-forwarded-for")
                .and_then(|v| v.to_str().ok())
            {
                Some(previous) => format!("{previous}, {ip}"),
                None => ip.clone(),
            };
            upstream.insert_header("x-forwarded-for", xff)?;
            // Only a well-formed host goes into `Forwarded`: anything else could smuggle
            // extra elements (`host="a",for=6.6.6.6`) past a backend that trusts it.
            let host = request_host(session.req_header());
            let host = if is_plain_host(host) { host } else { "" };
            let node = if ip.contains(':') {
                format!("\"[{ip}]\"")
            } else {
                ip
            };
            let element = if host.is_empty() {
                format!("for={node};proto={proto}")
            } else {
                format!("for={node};host=\"{host}\";proto={proto}")
            };
            let forwarded = match upstream
                .headers
                .get("forwarded")
                .and_then(|v| v.to_str().ok())
            {
                Some(previous) => format!("{previous}, {element}"),
                None => element,
            };
            upstream.insert_header("forwarded", forwarded)?;
        }
        upstream.insert_header("x-forwarded-proto", proto)?;
        let host = request_host(session.req_header());
        if is_plain_host(host) {
            upstream.insert_header("x-forwarded-host", host)?;
        }
        let incoming_id = upstream
            .headers
            .get("x-request-id")
            .filter(|v| is_valid_request_id(v.as_bytes()))
            .cloned();
        let request_id = match incoming_id {
            Some(id) => id,
            None => {
                let id = new_request_id();
                upstream.insert_header("x-request-id", id.clone())?;
                id
            }
        };
        if self.access_log.is_some() {
            ctx.request_id = Some(request_id);
        }
        let Some(route) = &ctx.route else {
            return Ok(());
        };
        if let Some((prefix_len, replacement)) = &route.prefix_rewrite {
            let path = upstream.uri.path();
            let rest = path.get(*prefix_len..).unwrap_or("");
            let mut new_path = String::with_capacity(replacement.len() + rest.len() + 1);
            new_path.push_str(replacement);
            if new_path.ends_with('/') && rest.starts_with('/') {
                new_path.push_str(&rest[1..]);
            } else if !new_path.ends_with('/') && !rest.is_empty() && !rest.starts_with('/') {
                new_path.push('/');
                new_path.push_str(rest);
            } else {
                new_path.push_str(rest);
            }
            let uri = match upstream.uri.query() {
                Some(query) => format!("{new_path}?{query}"),
                None => new_path,
            };
            let uri = http::Uri::try_from(uri).map_err(|e| {
                Error::because(
                    ErrorType::InternalError,
                    "prefix rewrite produced an invalid URI",
                    e,
                )
            })?;
            upstream.set_uri(uri);
        }
        for name in &route.request_remove {
            upstream.remove_header(name);
        }
        for (name, value) in &route.request_set {
            upstream.insert_header(name.clone(), value.clone())?;
        }
        Ok(())
    }

    async fn upstream_response_filter(
        &self,
        session: &mut Session,
        upstream: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        let status = upstream.status.as_u16();
        ctx.answered = true;
        let (Some(pool), Some(route)) = (ctx.pool.clone(), ctx.route.clone()) else {
            return Ok(());
        };
        let Some(index) = ctx.endpoint else {
            return Ok(());
        };
        if status >= 500 {
            let now = self.clock.now_ms();
            self.metrics
                .upstream_failure(&pool, index, &self.config.outlier, now, false);
        } else {
            pool.record_success(index);
        }
        let max_attempts = 1 + route.retry.as_ref().map_or(0, |r| r.attempts);
        let method = &session.req_header().method;
        let idempotent =
            method.is_idempotent() || route.retry.as_ref().is_some_and(|r| r.non_idempotent);
        // The budget is checked before the attempt ends, so a response that is passed on
        // keeps counting against its endpoint until it is done.
        if route.retries_on(status)
            && ctx.attempts < max_attempts
            && idempotent
            && !session.as_ref().retry_buffer_truncated()
            && self.retry_allowed_for(&ctx.pool)
            && self.try_retry(ctx)
        {
            let mut e = Error::explain(
                ErrorType::HTTPStatus(status),
                "upstream answered a retryable status",
            );
            e.set_retry(true);
            return Err(e);
        }
        Ok(())
    }

    async fn response_filter(
        &self,
        _session: &mut Session,
        response: &mut ResponseHeader,
        ctx: &mut RequestCtx,
    ) -> Result<()> {
        if let Some(route) = &ctx.route {
            for name in &route.response_remove {
                response.remove_header(name);
            }
            for (name, value) in &route.response_set {
                response.insert_header(name.clone(), value.clone())?;
            }
        }
        Ok(())
    }

    fn error_while_proxy(
        &self,
        peer: &HttpPeer,
        session: &mut Session,
        e: Box<Error>,
        ctx: &mut RequestCtx,
        client_reused: bool,
    ) -> Box<Error> {
        // A retry decided in `upstream_response_filter` stands. (`e.retry()` panics while
        // the retry is still `ReusedOnly`, as for a pooled connection the upstream closed,
        // so look at the field itself.)
        if matches!(e.retry, pingora::RetryType::Decided(true))
            && matches!(e.etype(), ErrorType::HTTPStatus(_))
        {
            return e;
        }
        if let (Some(pool), Some(index)) = (&ctx.pool, ctx.endpoint)
            && pool.tls.is_some()
        {
            self.tls_failure(pool, index, &e, self.clock.now_ms());
        }
        let mut e = e.more_context(format!("peer {peer}"));
        let method: &Method = &session.req_header().method;
        let replayable = !session.as_ref().retry_buffer_truncated();
        let retryable_method = method.is_idempotent()
            || ctx
                .route
                .as_ref()
                .and_then(|r| r.retry.as_ref())
                .is_some_and(|r| r.non_idempotent);
        // Nothing was processed: a pooled connection the upstream had closed under us, or
        // an HTTP/2 stream it refused (REFUSED_STREAM, or GOAWAY before the stream). Not a
        // failure of the instance.
        let refused = matches!(e.retry, pingora::RetryType::Decided(true));
        let stale = matches!(e.retry, pingora::RetryType::ReusedOnly) && client_reused;
        if refused || stale {
            let retry = replayable && (refused || retryable_method) && self.try_retry(ctx);
            if !retry {
                ctx.end_attempt(&self.metrics);
            }
            e.set_retry(retry);
            return e;
        }
        // Reset, closed or timed out before a response head: as the pump does, a failure
        // of the instance, retried under the route's policy as the 502 (or 504) the
        // client would get.
        let unanswered = !ctx.answered
            && session.response_written().is_none()
            && *e.esource() == ErrorSource::Upstream;
        if unanswered
            && let (Some(pool), Some(route), Some(index)) =
                (ctx.pool.clone(), ctx.route.clone(), ctx.endpoint)
        {
            let timeout = matches!(
                e.etype(),
                ErrorType::ReadTimedout | ErrorType::WriteTimedout
            );
            let scope = RetryScope {
                pool: &pool,
                route: &route,
                retryable_method,
            };
            if self.retry_unanswered(ctx, scope, index, timeout, replayable) {
                e.set_retry(true);
                return e;
            }
        }
        e.set_retry(false);
        ctx.end_attempt(&self.metrics);
        e
    }

    async fn fail_to_proxy(
        &self,
        session: &mut Session,
        e: &Error,
        ctx: &mut RequestCtx,
    ) -> FailToProxy {
        let code = match e.etype() {
            ErrorType::HTTPStatus(code) => *code,
            ErrorType::ConnectTimedout | ErrorType::ReadTimedout | ErrorType::WriteTimedout => 504,
            _ => match e.esource() {
                ErrorSource::Upstream => 502,
                ErrorSource::Downstream => match e.etype() {
                    ErrorType::WriteError | ErrorType::ReadError | ErrorType::ConnectionClosed => 0,
                    _ => 400,
                },
                ErrorSource::Internal | ErrorSource::Unset => 500,
            },
        };
        if code > 0 && session.response_written().is_none() {
            let message = match code {
                503 => "no healthy instance available",
                504 => "upstream timed out",
                502 => "upstream unavailable",
                400 => "bad request",
                _ => "proxy error",
            };
            let service = ctx.pool.as_ref().map_or("", |p| &p.service);
            let body = Bytes::from(format!("{message} ({service})\n"));
            let _ = session.respond_error_with_body(code, body).await;
        }
        FailToProxy {
            error_code: code,
            can_reuse_downstream: false,
        }
    }

    async fn logging(&self, session: &mut Session, e: Option<&Error>, ctx: &mut RequestCtx) {
        ctx.end_attempt(&self.metrics);
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        if let Some(log) = &self.access_log {
            let req = session.req_header();
            log.log(crate::access_log::Entry {
                time_ms: crate::access_log::unix_ms(
                    std::time::SystemTime::now() - ctx.started.elapsed(),
                ),
                client: session
                    .client_addr()
                    .and_then(|a| a.as_inet())
                    .map(|a| a.ip()),
                method: req.method.to_string(),
                http: if session.is_http2() { "2" } else { "1.1" },
                host: request_host(req).to_string(),
                path: req
                    .uri
                    .path_and_query()
                    .map_or_else(|| "/".to_string(), |p| p.to_string()),
                status,
                duration_ms: ctx.started.elapsed().as_secs_f64() * 1000.0,
                route: ctx.route.as_ref().map(|r| Arc::clone(&r.name)),
                service: ctx.pool.as_ref().map(|p| Arc::clone(&p.service)),
                upstream: ctx.upstream,
                attempts: ctx.attempts,
                request_id: ctx
                    .request_id
                    .as_ref()
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_string),
                bytes_sent: session.body_bytes_sent(),
                error: e.map(|e| e.etype().as_str().to_string()),
            });
        }
        if let (Some(route), Some(pool)) = (&ctx.route, &ctx.pool) {
            pool.shared.active.fetch_sub(1, Ordering::Relaxed);
            self.metrics
                .count_request(route, ctx.target, status, ctx.started.elapsed());
        }
    }
}
