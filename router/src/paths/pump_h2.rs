//! HTTP/2 clients of HTTP/1 services: pingora's HTTP/2 server (connection, streams, flow
//! control, the rapid-reset limits) hands each stream to [`H2App`], which routes it with
//! the request core's prologue (`Proxy::route`) and talks to the upstream the way the
//! HTTP/1 pump does ([`super::upstream`]): the same upstream head writer, per-thread
//! connection pool, attempts, retries and accounting. Only the client side
//! differs: the request comes as pingora's `RequestHeader` and body frames, the response
//! goes back as a `ResponseHeader` and data frames (a chunked upstream body de-chunked).
//! Streams for services spoken to over HTTP/2 (gRPC) go to pingora's `HttpProxy`.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, Bytes, BytesMut};
use http::HeaderMap;
use http::header::{HOST, HeaderName};
use pingora::apps::{HttpServerApp, HttpServerOptions, ReusedHttpStream};
use pingora::http::ResponseHeader;
use pingora::protocols::Stream;
use pingora::protocols::http::ServerSession;
use pingora::protocols::http::v2::server::H2Options;
use pingora::proxy::HttpProxy;
use pingora::server::ShutdownWatch;

use super::pingora_proxy::PingoraProxy;
use super::upstream::{
    AttemptError, Ended, Forward, HeadState, LogFields, Upstream, classify_response, entry,
    read_head_more, read_more, upstream_error, write_flush,
};
use crate::heads::{ClientInfo, write_upstream_head};
use crate::pool::{Pool, connections};
use crate::request::{Proxy, RequestCtx, error_message, retryable_method};
use crate::wire::{
    Chunked, Framing, HeaderLookup, RESPONSE_HEADERS, RequestHead, is_hop_by_hop, parse_response,
};

/// pingora's HTTP app for HTTP/2 connections.
pub struct H2App {
    pub proxy: Arc<Proxy>,
    /// For streams to HTTP/2 services.
    pub fallback: Arc<HttpProxy<PingoraProxy>>,
    pub h2_options: H2Options,
    pub server_options: HttpServerOptions,
}

enum H2Plan {
    Local { status: u16, body: String },
    Pingora,
    Forward(Forward),
}

/// What the upstream's response head said, as relayed.
struct H2Response {
    status: u16,
    framing: Framing,
    upstream_keep_alive: bool,
}

/// An HTTP/2 request's headers as the routing prologue reads them: route conditions see
/// them as sent; the hash key sees them as the upstream head carries them (`host` from
/// `:authority`, the cookie crumbs joined).
struct H2Headers<'a, 'h> {
    sent: &'a HeaderMap,
    upstream: &'a [httparse::Header<'h>],
}

impl HeaderLookup for H2Headers<'_, '_> {
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        self.sent.first(name)
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.upstream.all(name)
    }
}

#[async_trait]
impl HttpServerApp for H2App {
    async fn process_new_http(
        self: &Arc<Self>,
        mut session: ServerSession,
        shutdown: &ShutdownWatch,
    ) -> Option<ReusedHttpStream> {
        if !session.is_http2() {
            return self.fallback.process_new_http(session, shutdown).await;
        }
        match session.read_request().await {
            Ok(true) => {}
            _ => return None,
        }
        let client = client_info(&session);
        // A client that stops reading (a closed flow-control window) does not hold the
        // stream and its upstream connection for ever.
        session.set_write_timeout(Some(self.proxy.config.idle_timeout));
        let started = std::time::Instant::now();
        let mut request_head = Vec::new();
        match self.plan(&mut session, &client, &mut request_head) {
            H2Plan::Pingora => self.fallback.process_new_http(session, shutdown).await,
            H2Plan::Local { status, body } => {
                let sent = body.len();
                let _ = Box::pin(session.respond_error_with_body(status, Bytes::from(body))).await;
                if let Some(log) = &self.proxy.access_log {
                    let req = session.req_header();
                    let fields = LogFields {
                        method: req.method.to_string(),
                        http: "2",
                        host: req
                            .uri
                            .authority()
                            .map_or_else(String::new, |a| a.to_string()),
                        path: req
                            .uri
                            .path_and_query()
                            .map_or("/", |p| p.as_str())
                            .to_string(),
                        request_id: None,
                    };
                    log.log(entry(
                        fields,
                        started.elapsed(),
                        client.ip,
                        status,
                        None,
                        None,
                        sent,
                    ));
                }
                None
            }
            H2Plan::Forward(forward) => {
                self.forward(&mut session, forward, request_head, &client)
                    .await;
                None
            }
        }
    }

    fn h2_options(&self) -> Option<H2Options> {
        Some(self.h2_options.clone())
    }

    fn server_options(&self) -> Option<&HttpServerOptions> {
        Some(&self.server_options)
    }
}

fn client_info(session: &ServerSession) -> ClientInfo {
    let ip = session
        .client_addr()
        .and_then(|a| a.as_inet())
        .map(|a| a.ip());
    let tls = session.digest().is_some_and(|d| d.ssl_digest.is_some());
    ClientInfo::new(ip, tls)
}

impl H2App {
    /// Routes an HTTP/2 request and writes its upstream HTTP/1.1 head into `out`.
    fn plan(&self, session: &mut ServerSession, client: &ClientInfo, out: &mut Vec<u8>) -> H2Plan {
        let no_body = session.is_body_empty();
        let req = session.req_header();
        let authority = req
            .headers
            .get(HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| req.uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        // The head as an HTTP/1.1 client would have sent it: `Host` from `:authority`,
        // the cookie crumbs of HTTP/2 joined into one header (RFC 9113 8.2.3).
        let mut cookie = Vec::new();
        let mut headers: Vec<httparse::Header<'_>> = Vec::with_capacity(req.headers.len() + 2);
        let mut has_host = false;
        for (name, value) in &req.headers {
            if name == http::header::COOKIE {
                if !cookie.is_empty() {
                    cookie.extend_from_slice(b"; ");
                }
                cookie.extend_from_slice(value.as_bytes());
                continue;
            }
            has_host |= name == HOST;
            headers.push(httparse::Header {
                name: name.as_str(),
                value: value.as_bytes(),
            });
        }
        if !has_host && !authority.is_empty() {
            headers.push(httparse::Header {
                name: "host",
                value: authority.as_bytes(),
            });
        }
        if !cookie.is_empty() {
            headers.push(httparse::Header {
                name: "cookie",
                value: &cookie,
            });
        }
        let lookup = H2Headers {
            sent: &req.headers,
            upstream: &headers,
        };
        let routed =
            match self
                .proxy
                .route(authority, req.uri.path(), &req.method, &lookup, client.ip)
            {
                Ok(routed) => routed,
                Err(refused) => {
                    return H2Plan::Local {
                        status: refused.status,
                        body: refused.body,
                    };
                }
            };
        if routed.pool.http2 {
            return H2Plan::Pingora;
        }
        let length = req
            .headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        let body = match length {
            Some(0) => Framing::None,
            Some(n) => Framing::Length(n),
            None if no_body => Framing::None,
            None => Framing::Chunked,
        };
        let target_uri = req.uri.path_and_query().map_or("/", |p| p.as_str());
        let head = RequestHead {
            method: req.method.as_str(),
            target: target_uri,
            minor_version: 1,
            headers: &headers,
            host: authority,
            body,
            keep_alive: true,
            upgrade: None,
            expect_continue: false,
        };
        let route = &routed.route;
        out.clear();
        let id = write_upstream_head(out, &head, route, client, false, &self.proxy.hop_token);
        if body == Framing::Chunked {
            // The upstream head says how the body comes: in chunks, as the frames arrive.
            let end = out.len() - 2;
            out.truncate(end);
            out.extend_from_slice(b"transfer-encoding: chunked\r\n\r\n");
        }
        let log = self.proxy.access_log.as_ref().map(|_| LogFields {
            request_id: Some(String::from_utf8_lossy(&out[id]).into_owned()),
            ..LogFields::of(&head, "2")
        });
        let retryable_method = retryable_method(&req.method, route);
        H2Plan::Forward(Forward {
            routed,
            head_len: 0,
            body,
            keep_alive: true,
            http10: false,
            upgrade: false,
            head_request: req.method == http::Method::HEAD,
            retryable_method,
            expect_continue: false,
            log,
        })
    }

    async fn forward(
        &self,
        session: &mut ServerSession,
        request: Forward,
        head: Vec<u8>,
        client: &ClientInfo,
    ) {
        let mut ctx = self.proxy.request_ctx();
        ctx.start(request.routed.clone());
        let ended = self.exchange(session, &request, head, &mut ctx).await;
        request.finish(&self.proxy, &mut ctx, client, &ended);
    }

    async fn exchange(
        &self,
        session: &mut ServerSession,
        request: &Forward,
        head: Vec<u8>,
        ctx: &mut RequestCtx,
    ) -> Ended {
        let route = &request.routed.route;
        let pool = &request.routed.pool;
        let read_timeout = route.per_try_timeout.unwrap_or(route.request_timeout);
        // A small body is read whole before any upstream is chosen, as on HTTP/1: a
        // slow client holds no upstream connection, and the body can be sent again.
        let mut body = Vec::new();
        let mut body_done = request.body == Framing::None;
        let limit = self.proxy.config.request_buffer_bytes;
        let fits = match request.body {
            Framing::Length(n) => n <= limit as u64,
            Framing::Chunked => limit > 0,
            Framing::None | Framing::UntilClose => false,
        };
        if !body_done && fits {
            while body.len() <= limit {
                let data = tokio::time::timeout(
                    self.proxy.config.body_timeout,
                    session.read_request_body(),
                )
                .await;
                match data {
                    Err(_) => {
                        self.proxy.metrics.rejected("slow request body");
                        return local_h2(session, 408, pool).await;
                    }
                    Ok(Err(_)) => return ended_h2(499, 0, Some("client request failed")),
                    Ok(Ok(None)) => {
                        body_done = true;
                        break;
                    }
                    Ok(Ok(Some(data))) => body.extend_from_slice(&data),
                }
            }
        }
        let replayable = body_done;
        let mut upstream = BytesMut::with_capacity(4096);
        loop {
            let Some(index) = pool.pick(self.proxy.clock.now_ms(), &ctx.tried, ctx.hash) else {
                return local_h2(session, 503, pool).await;
            };
            let endpoint = &pool.endpoints[index];
            ctx.begin_attempt(endpoint, index);
            let (mut up, reused, key) = match request.upstream(&self.proxy, ctx, index).await {
                Upstream::Ready {
                    stream,
                    reused,
                    key,
                } => (stream, reused, key),
                Upstream::Retry => continue,
                Upstream::Failed(status) => return local_h2(session, status, pool).await,
            };
            upstream.clear();
            match self
                .attempt(
                    session,
                    &mut up,
                    request,
                    (&head, &body, body_done),
                    &mut upstream,
                    read_timeout,
                )
                .await
            {
                Ok(()) => {}
                Err(AttemptError::Client(status)) => {
                    return Ended {
                        status,
                        bytes_sent: 0,
                        keep_alive: false,
                        error: Some("client request failed"),
                    };
                }
                Err(AttemptError::Upstream { timeout, .. }) => {
                    // A pooled connection the upstream had closed: nothing was processed.
                    let stale = reused && !timeout && upstream.is_empty();
                    if self.proxy.retry_after_no_answer(
                        ctx,
                        request.retry_scope(),
                        index,
                        stale,
                        timeout,
                        replayable,
                    ) {
                        continue;
                    }
                    let status = if timeout { 504 } else { 502 };
                    ctx.end_attempt(&self.proxy.metrics);
                    return local_h2(session, status, pool).await;
                }
            }
            let Some((response, header, head_len)) = h2_response(&upstream, request) else {
                ctx.end_attempt(&self.proxy.metrics);
                return local_h2(session, 502, pool).await;
            };
            let status = response.status;
            if self
                .proxy
                .retry_on_answer(ctx, request.retry_scope(), index, status, replayable)
            {
                continue;
            }
            upstream.advance(head_len);
            if session
                .write_response_header(Box::new(header))
                .await
                .is_err()
            {
                return ended_h2(status, 0, Some("client write failed"));
            }
            // As for HTTP/1 clients: the route's idle timeout bounds each body wait.
            let body_timeout = route
                .idle_timeout
                .map_or(read_timeout, |idle| idle.min(read_timeout));
            return match relay_h2(
                session,
                &mut up,
                &mut upstream,
                response.framing,
                body_timeout,
            )
            .await
            {
                Ok(sent) => {
                    if response.upstream_keep_alive && upstream.is_empty() {
                        connections::put(key, up);
                    }
                    ended_h2(status, sent, None)
                }
                Err(error) => ended_h2(status, 0, Some(error)),
            };
        }
    }

    /// Sends the head and the body (chunked when its length is unknown), and reads the
    /// final response head into `upstream` (interim responses are dropped: pingora's
    /// HTTP/2 side sends none).
    async fn attempt(
        &self,
        session: &mut ServerSession,
        up: &mut Stream,
        request: &Forward,
        (head, buffered, body_done): (&[u8], &[u8], bool),
        upstream: &mut BytesMut,
        read_timeout: Duration,
    ) -> Result<(), AttemptError> {
        write_flush(up, head, read_timeout)
            .await
            .map_err(upstream_error)?;
        if request.body != Framing::None {
            let chunked = request.body == Framing::Chunked;
            // What was read ahead, then (when it was not all) the rest as it comes, each
            // read bounded by `body_timeout`.
            let mut next: Option<Bytes> =
                (!buffered.is_empty()).then(|| Bytes::copy_from_slice(buffered));
            let mut more = !body_done;
            loop {
                let data = match next.take() {
                    Some(data) => data,
                    None if more => {
                        let read = tokio::time::timeout(
                            self.proxy.config.body_timeout,
                            session.read_request_body(),
                        )
                        .await
                        .map_err(|_| AttemptError::Client(408))?
                        .map_err(|_| AttemptError::Client(499))?;
                        match read {
                            Some(data) => data,
                            None => {
                                more = false;
                                continue;
                            }
                        }
                    }
                    None => break,
                };
                if data.is_empty() {
                    continue;
                }
                if chunked {
                    let size = format!("{:x}\r\n", data.len());
                    write_flush(up, size.as_bytes(), read_timeout)
                        .await
                        .map_err(upstream_error)?;
                }
                write_flush(up, &data, read_timeout)
                    .await
                    .map_err(upstream_error)?;
                if chunked {
                    write_flush(up, b"\r\n", read_timeout)
                        .await
                        .map_err(upstream_error)?;
                }
            }
            if chunked {
                write_flush(up, b"0\r\n\r\n", read_timeout)
                    .await
                    .map_err(upstream_error)?;
            }
        }
        let deadline = tokio::time::Instant::now() + read_timeout;
        loop {
            match classify_response(upstream, request.head_request) {
                HeadState::Final => return Ok(()),
                HeadState::Interim(len) => {
                    upstream.advance(len);
                    continue;
                }
                HeadState::Bad => {
                    return Err(AttemptError::Upstream {
                        timeout: false,
                        alert: false,
                    });
                }
                HeadState::Partial => {}
            }
            read_head_more(up, upstream, deadline).await?;
        }
    }
}

/// The final response head at the start of `upstream`, as an HTTP/2 response: without
/// the connection-specific headers HTTP/2 forbids, with the route's header changes.
fn h2_response(upstream: &[u8], request: &Forward) -> Option<(H2Response, ResponseHeader, usize)> {
    let mut storage = [httparse::EMPTY_HEADER; RESPONSE_HEADERS];
    let parsed = parse_response(upstream, &mut storage, request.head_request).ok()??;
    let route = &request.routed.route;
    // HTTP/2 names are lower case on the wire: no case map to keep (pingora's advice).
    let mut header =
        ResponseHeader::build_no_case(parsed.status, Some(parsed.headers.len())).ok()?;
    let bodiless = parsed.status < 200 || parsed.status == 204;
    let mut length_sent = false;
    for h in parsed.headers {
        let name = h.name;
        let length = name.eq_ignore_ascii_case("content-length");
        let skip = (length
            && (bodiless || parsed.transfer_encoded || std::mem::replace(&mut length_sent, true)))
            || is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("transfer-encoding")
            || route.replaces_response_header(name);
        if !skip {
            // Names and values already passed httparse's checks; one that `http` still
            // refuses is dropped rather than failing the response. A `HeaderName` of a
            // standard header allocates nothing (a `String` per header did).
            if let Ok(name) = http::HeaderName::from_bytes(name.as_bytes()) {
                let _ = header.append_header(name, h.value);
            }
        }
    }
    for (name, value) in &route.response_set {
        let _ = header.insert_header(name.clone(), value.clone());
    }
    Some((
        H2Response {
            status: parsed.status,
            framing: parsed.body,
            upstream_keep_alive: parsed.keep_alive,
        },
        header,
        parsed.len,
    ))
}

/// Relays the response body as data frames; returns the bytes sent.
async fn relay_h2(
    session: &mut ServerSession,
    up: &mut Stream,
    upstream: &mut BytesMut,
    framing: Framing,
    read_timeout: Duration,
) -> Result<usize, &'static str> {
    let mut remaining = match framing {
        Framing::Length(n) => n,
        _ => 0,
    };
    let mut chunked = Chunked::new();
    let mut sent = 0;
    loop {
        let (data, consumed, done) = match framing {
            Framing::None => (Bytes::new(), 0, true),
            Framing::Length(_) => {
                let take = usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(upstream.len());
                remaining -= take as u64;
                (upstream.split_to(take).freeze(), 0, remaining == 0)
            }
            Framing::UntilClose => (upstream.split().freeze(), 0, false),
            Framing::Chunked => {
                let mut data = BytesMut::new();
                let n = chunked
                    .advance(upstream, |range| data.extend_from_slice(&upstream[range]))
                    .map_err(|_| "bad chunked response")?;
                (data.freeze(), n, chunked.is_done())
            }
        };
        upstream.advance(consumed);
        sent += data.len();
        if !data.is_empty() || done {
            session
                .write_response_body(data, done)
                .await
                .map_err(|_| "client write failed")?;
        }
        if done {
            return Ok(sent);
        }
        match read_more(up, upstream, read_timeout).await {
            Ok(0) if framing == Framing::UntilClose => {
                session
                    .write_response_body(Bytes::new(), true)
                    .await
                    .map_err(|_| "client write failed")?;
                return Ok(sent);
            }
            Ok(0) => return Err("upstream closed mid-body"),
            Err(_) => return Err("upstream failed mid-body"),
            Ok(_) => {}
        }
    }
}

async fn local_h2(session: &mut ServerSession, status: u16, pool: &Pool) -> Ended {
    let message = error_message(status);
    let body = format!("{message} ({})\n", pool.service);
    let bytes = body.len();
    // Boxed, as the connect in `upstream_for` is: pingora's future is ~1.3 KB, and every
    // stream's future would carry it for a rare error.
    let _ = Box::pin(session.respond_error_with_body(status, Bytes::from(body))).await;
    ended_h2(status, bytes, Some(message))
}

fn ended_h2(status: u16, bytes_sent: usize, error: Option<&'static str>) -> Ended {
    Ended {
        status,
        bytes_sent,
        keep_alive: false,
        error,
    }
}

#[cfg(test)]
mod tests;
