//! pingora's proxy (`ProxyHttp`) over the shared [`Proxy`] state, for services spoken to
//! over HTTP/2 (gRPC, h2c or h2 over TLS): the pump and the HTTP/2 stream path hand it
//! the requests whose pool is HTTP/2. The routing prologue, retry rules and accounting
//! are the request core's ([`crate::request`]), as on the other paths.
//!
//! Phase order (pingora): `request_filter` (the routing prologue; 400/404/503 answered
//! here) -> `upstream_peer` (pick an endpoint; called again for each retry) ->
//! `fail_to_connect` (always retry elsewhere, within budget) -> `upstream_request_filter`
//! (forwarding headers, rewrites) -> `upstream_response_filter` (outlier accounting, retry
//! on gateway errors) -> `response_filter` (response header rewrites) -> `fail_to_proxy`
//! (502/504) -> `logging` (metrics, release).

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use http::Method;
use http::header::{HOST, HeaderValue};
use pingora::http::{RequestHeader, ResponseHeader};
use pingora::prelude::HttpPeer;
use pingora::proxy::{FailToProxy, ProxyHttp, Session};
use pingora::{Error, ErrorSource, ErrorType, Result};

use crate::access_log::{Entry, unix_ms};
use crate::heads::write_target;
use crate::request::{
    Proxy, RequestCtx, RetryScope, error_message, retryable_method, upstream_peer,
};
use crate::wire::{is_plain_host, is_valid_request_id};

/// Custom error for "no eligible endpoint" raised in `upstream_peer`.
const NO_ENDPOINT: ErrorType = ErrorType::HTTPStatus(503);

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

fn new_request_id() -> HeaderValue {
    let id = format!("{:032x}", rand::random::<u128>());
    // 32 hex digits are always a valid header value.
    HeaderValue::from_str(&id).unwrap_or(HeaderValue::from_static("0"))
}

/// pingora's proxy over the shared [`Proxy`] state, for requests to HTTP/2 services.
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
        let req = session.req_header();
        let client_ip = session
            .client_addr()
            .and_then(|a| a.as_inet())
            .map(|a| a.ip());
        let routed = self.route(
            request_host(req),
            req.uri.path(),
            &req.method,
            &req.headers,
            client_ip,
        );
        match routed {
            Ok(routed) => {
                ctx.start(routed);
                Ok(false)
            }
            Err(refused) => respond(session, refused.status, refused.body).await,
        }
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
        let mut peer = upstream_peer(&pool, endpoint.addr, &route);
        let options = &mut peer.options;
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
        if route.prefix_rewrite.is_some() {
            let target = upstream.uri.path_and_query().map_or("/", |p| p.as_str());
            let mut rewritten = Vec::with_capacity(target.len() + 16);
            write_target(&mut rewritten, target, route);
            let uri = http::Uri::try_from(rewritten).map_err(|e| {
                Error::because(
                    ErrorType::InternalError,
                    "prefix rewrite produced an invalid URI",
                    e,
                )
            })?;
            upstream.set_uri(uri);
        }
        upstream.append_header("via", format!("1.1 {}", self.hop_token))?;
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
        let scope = RetryScope {
            pool: &pool,
            route: &route,
            retryable_method: retryable_method(&session.req_header().method, &route),
        };
        let replayable = !session.as_ref().retry_buffer_truncated();
        if self.retry_on_answer(ctx, scope, index, status, replayable) {
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
        let retryable_method = match &ctx.route {
            Some(route) => retryable_method(method, route),
            None => method.is_idempotent(),
        };
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
                400 => "bad request",
                _ => error_message(code),
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
        let status = session.response_written().map_or(0, |r| r.status.as_u16());
        let elapsed = ctx.finish(&self.metrics, status);
        if let Some(log) = &self.access_log {
            let req = session.req_header();
            log.log(Entry {
                time_ms: unix_ms(std::time::SystemTime::now() - elapsed),
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
                duration_ms: elapsed.as_secs_f64() * 1000.0,
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
    }
}
