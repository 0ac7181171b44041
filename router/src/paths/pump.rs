//! The HTTP/1 request pump: strait's own hot path for HTTP/1.1 clients.
//!
//! pingora-proxy's generic machinery (a boxed session per request, a cloned request
//! header, two channels and two joined tasks, a boxed future per filter, its module
//! chain) cost more than half of each request here: a minimal pingora proxy ran at ~0.4×
//! nginx (docs/performance.md). The pump keeps pingora's listeners, TLS, connector and
//! server, and replaces `HttpProxy` for HTTP/1 upstreams with one straight pass per
//! request on the connection's own task:
//!
//! [`Pump::plan`] (sync: parse and validate the head, the routing prologue
//! `Proxy::route`, write the upstream head into a reused buffer) -> [`Pump::forward`]
//! (attempts: pick an endpoint, take an idle connection or connect, send, read the
//! response head; retry on connect failure, a stale pooled connection, or a retryable
//! status; then relay the response with its framing, and pool the upstream connection).
//!
//! Routing, balancing, retries, outlier accounting and metrics are the request core's
//! ([`crate::request`]), shared with the other paths; requests to HTTP/2 services go to
//! pingora's proxy ([`super::pingora_proxy`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::Method;
use pingora::protocols::Stream;

use super::upstream::{
    AttemptError, Ended, Forward, HeadState, LogFields, RELAY_CHUNK, Upstream, classify_response,
    entry, read_head_more, read_more, upstream_error, write_flush,
};
use crate::heads::{
    ClientInfo, ResponseShape, write_downstream_head, write_local_response, write_upstream_head,
};
use crate::pool::Pool;
use crate::pool::connections;
use crate::request::{Proxy, RequestCtx, error_message, retryable_method};
use crate::table::CompiledRoute;
use crate::wire::{
    BadChunk, Chunked, Framing, HeadLimits, RESPONSE_HEADERS, Rejection, RequestHead,
    STACK_HEADERS, parse_request, parse_response,
};

/// The HTTP/1 pump over the shared [`Proxy`] state; the front door calls it for each
/// request head of an HTTP/1 connection.
pub struct Pump {
    proxy: Arc<Proxy>,
}

/// Buffers of one client connection, reused for each of its requests.
#[derive(Default)]
pub struct ConnBuffers {
    /// The upstream request head, and the body when it came whole with the head.
    request: Vec<u8>,
    /// Response heads (and small bodies) written to the client.
    response: Vec<u8>,
    /// Bytes read from the upstream.
    upstream: BytesMut,
}

/// What to do with a request head.
pub enum Plan {
    /// Refuse and close (malformed or ambiguous head).
    Reject(Rejection),
    /// Answer it here (no route, nothing healthy, a bad path).
    Local(Local),
    /// An HTTP/2 upstream: pingora's proxy serves it.
    Pingora,
    // Not boxed: that would be the one allocation left per proxied request.
    #[allow(clippy::large_enum_variant)]
    Forward(Forward),
}

/// A request the router answers itself (a bad path, no route, no healthy instance).
pub struct Local {
    pub status: u16,
    pub body: String,
    pub head_len: usize,
    pub framing: Framing,
    pub keep_alive: bool,
    /// For the log: the route and the target index (a 503).
    pub route: Option<(Arc<CompiledRoute>, usize)>,
    log: Option<LogFields>,
    started: Instant,
}

/// The upstream's chunked body was malformed before any byte of the response was sent.
const BAD_CHUNKS_UNSENT: &str = "bad chunked response (nothing sent)";

fn bad_chunks(head_pending: bool) -> &'static str {
    if head_pending {
        BAD_CHUNKS_UNSENT
    } else {
        "bad chunked response"
    }
}

fn http_version(head: &RequestHead<'_>) -> &'static str {
    if head.minor_version == 0 {
        "1.0"
    } else {
        "1.1"
    }
}

/// The length of a request body that is all in `buf` already (`None`: more is to come).
fn whole_body(framing: Framing, buf: &[u8]) -> Result<Option<usize>, BadChunk> {
    Ok(match framing {
        Framing::None | Framing::UntilClose => Some(0),
        Framing::Length(n) => usize::try_from(n).ok().filter(|&n| n <= buf.len()),
        Framing::Chunked => {
            let mut chunked = Chunked::new();
            let n = chunked.advance(buf, |_| {})?;
            chunked.is_done().then_some(n)
        }
    })
}

/// How buffering a request body ended.
enum Buffered {
    /// All of it is in the buffer: this many bytes.
    Whole(usize),
    /// Larger than `request_buffer_bytes` (or of no framing to buffer): it streams.
    TooLarge,
    TimedOut,
    Closed,
    Bad,
}

/// The final response head, as relayed.
struct Response {
    status: u16,
    framing: Framing,
    upstream_keep_alive: bool,
    head_len: usize,
    close: bool,
    dechunk: bool,
}

/// Parses the final response head at the start of `upstream` and writes the client's
/// head into `out`.
fn prepare_response(
    upstream: &[u8],
    out: &mut Vec<u8>,
    request: &Forward,
    closing: bool,
) -> Option<Response> {
    let mut storage = [httparse::EMPTY_HEADER; RESPONSE_HEADERS];
    let parsed = parse_response(upstream, &mut storage, request.head_request).ok()??;
    let dechunk = request.http10 && parsed.body == Framing::Chunked;
    let close = closing || !request.keep_alive || parsed.body == Framing::UntilClose || dechunk;
    let shape = ResponseShape {
        close,
        keep_alive_10: request.http10 && !close,
        dechunk,
    };
    out.clear();
    write_downstream_head(out, &parsed, &request.routed.route, shape);
    Some(Response {
        status: parsed.status,
        framing: parsed.body,
        upstream_keep_alive: parsed.keep_alive,
        head_len: parsed.len,
        close,
        dechunk,
    })
}

impl Pump {
    pub fn new(proxy: Arc<Proxy>) -> Pump {
        Pump { proxy }
    }

    fn local(&self, status: u16, body: String, head: &RequestHead<'_>, head_len: usize) -> Plan {
        Plan::Local(Local {
            status,
            body,
            head_len,
            framing: head.body,
            keep_alive: head.keep_alive,
            route: None,
            log: self
                .proxy
                .access_log
                .as_ref()
                .map(|_| LogFields::of(head, http_version(head))),
            started: Instant::now(),
        })
    }

    /// Parses, validates and routes one request head, and writes the upstream request
    /// head into `bufs`. Synchronous: nothing here waits.
    pub fn plan(
        &self,
        head_bytes: &[u8],
        limits: &HeadLimits,
        client: &ClientInfo,
        bufs: &mut ConnBuffers,
    ) -> Plan {
        let mut stack = [httparse::EMPTY_HEADER; STACK_HEADERS];
        let mut heap;
        let storage: &mut [httparse::Header<'_>] = if limits.max_headers <= STACK_HEADERS {
            &mut stack
        } else {
            heap = vec![httparse::EMPTY_HEADER; limits.max_headers];
            &mut heap
        };
        let head = match parse_request(head_bytes, limits.max_headers, storage) {
            Ok(head) => head,
            Err(rejection) => return Plan::Reject(rejection),
        };
        let head_len = head_bytes.len();
        let Ok(method) = Method::from_bytes(head.method.as_bytes()) else {
            return Plan::Reject(Rejection {
                status: 400,
                reason: "malformed request head",
            });
        };
        let routed =
            match self
                .proxy
                .route(head.host, head.path(), &method, head.headers, client.ip)
            {
                Ok(routed) => routed,
                Err(refused) => {
                    let mut plan = self.local(refused.status, refused.body, &head, head_len);
                    if let Plan::Local(local) = &mut plan {
                        local.route = refused.route;
                    }
                    return plan;
                }
            };
        if routed.pool.http2 {
            return Plan::Pingora;
        }
        let http10 = head.minor_version == 0;
        let expect_continue = head.expect_continue && !http10;
        bufs.request.clear();
        let route = &routed.route;
        let id = write_upstream_head(
            &mut bufs.request,
            &head,
            route,
            client,
            expect_continue,
            &self.proxy.hop_token,
        );
        let log = self.proxy.access_log.as_ref().map(|_| LogFields {
            request_id: Some(String::from_utf8_lossy(&bufs.request[id]).into_owned()),
            ..LogFields::of(&head, http_version(&head))
        });
        let retryable_method = retryable_method(&method, route);
        Plan::Forward(Forward {
            routed,
            head_len,
            body: head.body,
            keep_alive: head.keep_alive,
            http10,
            upgrade: head.upgrade.is_some(),
            head_request: method == Method::HEAD,
            retryable_method,
            expect_continue,
            log,
        })
    }

    /// Answers a request locally; returns whether the connection stays open.
    pub async fn answer_locally(
        &self,
        down: &mut Stream,
        buf: &mut BytesMut,
        local: Local,
        bufs: &mut ConnBuffers,
        client_ip: Option<std::net::IpAddr>,
        closing: bool,
    ) -> bool {
        buf.advance(local.head_len.min(buf.len()));
        // The body was not read: the connection is reusable only if it is all here.
        let body_here = whole_body(local.framing, buf).ok().flatten();
        let keep_alive = local.keep_alive && !closing && body_here.is_some();
        if let Some(n) = body_here {
            buf.advance(n);
        }
        bufs.response.clear();
        write_local_response(
            &mut bufs.response,
            local.status,
            local.body.as_bytes(),
            !keep_alive,
        );
        if let (Some(log), Some(fields)) = (&self.proxy.access_log, local.log) {
            let (route, service) = match &local.route {
                Some((route, target)) => (
                    Some(Arc::clone(&route.name)),
                    route
                        .targets
                        .list
                        .get(*target)
                        .map(|t| Arc::clone(&t.service)),
                ),
                None => (None, None),
            };
            log.log(entry(
                fields,
                local.started.elapsed(),
                client_ip,
                local.status,
                route,
                service,
                local.body.len(),
            ));
        }
        let written = write_flush(down, &bufs.response, self.proxy.config.idle_timeout).await;
        if written.is_ok() && body_here.is_none() {
            // The body we did not read may still be arriving.
            crate::io::linger::linger(down).await;
        }
        keep_alive && written.is_ok()
    }

    /// Proxies one routed request and its response; returns whether the client
    /// connection stays open for another request.
    pub async fn forward(
        &self,
        down: &mut Stream,
        buf: &mut BytesMut,
        request: Forward,
        bufs: &mut ConnBuffers,
        client: &ClientInfo,
        closing: bool,
    ) -> bool {
        let mut ctx = self.proxy.request_ctx();
        ctx.start(request.routed.clone());
        buf.advance(request.head_len.min(buf.len()));
        let ended = self
            .exchange(down, buf, &request, bufs, &mut ctx, closing)
            .await;
        request.finish(&self.proxy, &mut ctx, client, &ended);
        ended.keep_alive
    }

    /// The attempts of one request and the relay of its response.
    async fn exchange(
        &self,
        down: &mut Stream,
        buf: &mut BytesMut,
        request: &Forward,
        bufs: &mut ConnBuffers,
        ctx: &mut RequestCtx,
        closing: bool,
    ) -> Ended {
        let route = &request.routed.route;
        let pool = &request.routed.pool;
        let read_timeout = route.per_try_timeout.unwrap_or(route.request_timeout);
        let client_timeout = self.proxy.config.idle_timeout;
        // A body that came whole with the head goes out with it, and can be sent again.
        let Ok(mut whole_body) = whole_body(request.body, buf) else {
            return self.local_error(down, bufs, 400, "bad chunked body").await;
        };
        if whole_body.is_none() && request.expect_continue && buf.is_empty() {
            // The client waits for this before sending its body; the upstream is not
            // asked (its `Expect` was removed), as nginx does.
            if write_flush(down, b"HTTP/1.1 100 Continue\r\n\r\n", client_timeout)
                .await
                .is_err()
            {
                return ended(499, false, Some("client closed"));
            }
        }
        if whole_body.is_none() && !request.upgrade {
            // A small body is read whole before any upstream is chosen: a slow client
            // holds only its own connection, never an upstream one.
            match self.buffer_body(down, buf, request.body).await {
                Buffered::Whole(n) => whole_body = Some(n),
                Buffered::TooLarge => {}
                Buffered::TimedOut => {
                    self.proxy.metrics.rejected("slow request body");
                    return self
                        .local_error(down, bufs, 408, "request body not received in time")
                        .await;
                }
                Buffered::Closed => return ended(499, false, Some("client closed")),
                Buffered::Bad => {
                    return self.local_error(down, bufs, 400, "bad chunked body").await;
                }
            }
        }
        if let Some(n) = whole_body {
            bufs.request.extend_from_slice(&buf[..n]);
            buf.advance(n);
        }
        let replayable = whole_body.is_some();
        loop {
            let now = self.proxy.clock.now_ms();
            let Some(index) = pool.pick(now, &ctx.tried, ctx.hash) else {
                return self
                    .local_error_body(
                        down,
                        bufs,
                        503,
                        pool,
                        replayable && request.keep_alive && !closing,
                    )
                    .await;
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
                Upstream::Failed(status) => {
                    return self
                        .local_error_body(
                            down,
                            bufs,
                            status,
                            pool,
                            replayable && request.keep_alive && !closing,
                        )
                        .await;
                }
            };
            match self
                .attempt(
                    down,
                    buf,
                    &mut up,
                    request,
                    bufs,
                    whole_body.is_none(),
                    read_timeout,
                )
                .await
            {
                Ok(()) => {}
                Err(AttemptError::Client(400)) => {
                    ctx.end_attempt(&self.proxy.metrics);
                    return self.local_error(down, bufs, 400, "bad chunked body").await;
                }
                Err(AttemptError::Client(status)) => {
                    return ended(status, false, Some("client request failed"));
                }
                Err(AttemptError::Upstream { timeout, alert }) => {
                    if alert && pool.tls.is_some() {
                        // A TLS 1.3 server refusing our certificate says so only now.
                        self.proxy.count_tls_failure(
                            pool,
                            index,
                            "alert",
                            &"received fatal alert",
                            self.proxy.clock.now_ms(),
                        );
                    }
                    // A pooled connection the upstream had closed: nothing was processed.
                    let stale = reused && !timeout && bufs.upstream.is_empty();
                    if self.proxy.retry_after_no_answer(
                        ctx,
                        request.retry_scope(),
                        index,
                        stale,
                        timeout,
                        replayable,
                    ) {
                        bufs.upstream.clear();
                        continue;
                    }
                    let status = if timeout { 504 } else { 502 };
                    ctx.end_attempt(&self.proxy.metrics);
                    return self.local_error_body(down, bufs, status, pool, false).await;
                }
            }
            // A complete response head is at the start of `bufs.upstream`.
            let Some(response) =
                prepare_response(&bufs.upstream, &mut bufs.response, request, closing)
            else {
                ctx.end_attempt(&self.proxy.metrics);
                return self.local_error_body(down, bufs, 502, pool, false).await;
            };
            let status = response.status;
            if self
                .proxy
                .retry_on_answer(ctx, request.retry_scope(), index, status, replayable)
            {
                bufs.upstream.clear();
                continue;
            }
            if status == 101 && !request.upgrade {
                ctx.end_attempt(&self.proxy.metrics);
                return self.local_error_body(down, bufs, 502, pool, false).await;
            }
            bufs.upstream.advance(response.head_len);
            if status == 101 {
                let idle = request.routed.route.idle_timeout;
                // Boxed: rare, and inline its state would enlarge every connection's future.
                return Box::pin(self.tunnel(down, buf, up, bufs, client_timeout, idle)).await;
            }
            let (framing, dechunk, close) = (response.framing, response.dechunk, response.close);
            let upstream_keep_alive = response.upstream_keep_alive;
            // Once the head is in, each wait for body bytes is bounded by the route's idle
            // timeout when it has one.
            let body_timeout = route
                .idle_timeout
                .map_or(read_timeout, |idle| idle.min(read_timeout));
            let relayed = self
                .relay(
                    down,
                    &mut up,
                    bufs,
                    framing,
                    dechunk,
                    body_timeout,
                    client_timeout,
                )
                .await;
            return match relayed {
                // Nothing reached the client yet: it gets a 502, not a cut-off 200.
                Err(BAD_CHUNKS_UNSENT) => {
                    ctx.end_attempt(&self.proxy.metrics);
                    self.local_error_body(down, bufs, 502, pool, false).await
                }
                Ok(bytes_sent) => {
                    if upstream_keep_alive && bufs.upstream.is_empty() {
                        connections::put(key, up);
                    }
                    bufs.upstream.clear();
                    Ended {
                        status,
                        bytes_sent,
                        keep_alive: !close,
                        error: None,
                    }
                }
                Err(error) => {
                    bufs.upstream.clear();
                    ended(status, false, Some(error))
                }
            };
        }
    }

    /// Sends the request (and streams its body when it did not come whole) and reads
    /// the response head into `bufs.upstream`. Interim (1xx) responses other than 101 are
    /// passed to an HTTP/1.1 client as they come.
    #[allow(clippy::too_many_arguments)]
    async fn attempt(
        &self,
        down: &mut Stream,
        buf: &mut BytesMut,
        up: &mut Stream,
        request: &Forward,
        bufs: &mut ConnBuffers,
        stream_body: bool,
        read_timeout: Duration,
    ) -> Result<(), AttemptError> {
        bufs.upstream.clear();
        write_flush(up, &bufs.request, read_timeout)
            .await
            .map_err(upstream_error)?;
        if stream_body {
            self.stream_request_body(down, buf, up, request.body, read_timeout)
                .await?;
        }
        let deadline = tokio::time::Instant::now() + read_timeout;
        loop {
            match classify_response(&bufs.upstream, request.head_request) {
                HeadState::Final => return Ok(()),
                HeadState::Bad => {
                    return Err(AttemptError::Upstream {
                        timeout: false,
                        alert: false,
                    });
                }
                HeadState::Interim(len) => {
                    let interim = bufs.upstream.split_to(len);
                    // An HTTP/1.0 client knows no interim responses.
                    if !request.http10 {
                        write_flush(down, &interim, self.proxy.config.idle_timeout)
                            .await
                            .map_err(|_| AttemptError::Client(499))?;
                    }
                    continue;
                }
                HeadState::Partial => {}
            }
            read_head_more(up, &mut bufs.upstream, deadline).await?;
        }
    }

    /// Reads a request body into `buf` until it is whole, if it fits in
    /// `request_buffer_bytes`; each read must bring bytes within `body_timeout`.
    async fn buffer_body(
        &self,
        down: &mut Stream,
        buf: &mut BytesMut,
        framing: Framing,
    ) -> Buffered {
        let limit = self.proxy.config.request_buffer_bytes;
        let fits = match framing {
            Framing::Length(n) => n <= limit as u64,
            Framing::Chunked => limit > 0,
            Framing::None | Framing::UntilClose => false,
        };
        if !fits {
            return Buffered::TooLarge;
        }
        if let Framing::Length(n) = framing {
            // Known length: room for it all at once.
            buf.reserve(usize::try_from(n).unwrap_or(0).saturating_sub(buf.len()));
        }
        loop {
            match whole_body(framing, buf) {
                Ok(Some(n)) => return Buffered::Whole(n),
                Ok(None) if buf.len() >= limit => return Buffered::TooLarge,
                Ok(None) => {}
                Err(_) => return Buffered::Bad,
            }
            match read_more(down, buf, self.proxy.config.body_timeout).await {
                Ok(0) => return Buffered::Closed,
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => return Buffered::TimedOut,
                Err(_) => return Buffered::Closed,
            }
        }
    }

    /// Streams a request body that did not come whole with the head, with its framing.
    async fn stream_request_body(
        &self,
        down: &mut Stream,
        buf: &mut BytesMut,
        up: &mut Stream,
        framing: Framing,
        upstream_timeout: Duration,
    ) -> Result<(), AttemptError> {
        // Each read of the body must bring bytes within `body_timeout`: a client that
        // stalls mid-upload does not hold the upstream connection for long.
        let client_timeout = self.proxy.config.body_timeout;
        let mut remaining = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut chunked = Chunked::new();
        loop {
            let take = match framing {
                Framing::Length(_) => usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(buf.len()),
                Framing::Chunked => chunked
                    .advance(buf, |_| {})
                    .map_err(|_| AttemptError::Client(400))?,
                Framing::None | Framing::UntilClose => 0,
            };
            if take > 0 {
                write_flush(up, &buf[..take], upstream_timeout)
                    .await
                    .map_err(upstream_error)?;
                buf.advance(take);
                if let Framing::Length(_) = framing {
                    remaining -= take as u64;
                }
            }
            let done = match framing {
                Framing::Length(_) => remaining == 0,
                Framing::Chunked => chunked.is_done(),
                Framing::None | Framing::UntilClose => true,
            };
            if done {
                return Ok(());
            }
            match read_more(down, buf, client_timeout).await {
                Ok(0) | Err(_) => return Err(AttemptError::Client(499)),
                Ok(_) => {}
            }
        }
    }

    /// Relays the response body after the head in `bufs.response`; returns the body
    /// bytes sent. Small responses go out in one write, head and body together. A body
    /// malformed before anything was written is [`BAD_CHUNKS_UNSENT`].
    #[allow(clippy::too_many_arguments)]
    async fn relay(
        &self,
        down: &mut Stream,
        up: &mut Stream,
        bufs: &mut ConnBuffers,
        framing: Framing,
        dechunk: bool,
        upstream_timeout: Duration,
        client_timeout: Duration,
    ) -> Result<usize, &'static str> {
        let mut remaining = match framing {
            Framing::Length(n) => n,
            _ => 0,
        };
        let mut chunked = Chunked::new();
        let mut head_pending = true;
        let mut sent = 0usize;
        loop {
            let available = &bufs.upstream[..];
            let take = match framing {
                Framing::None => 0,
                Framing::Length(_) => usize::try_from(remaining)
                    .unwrap_or(usize::MAX)
                    .min(available.len()),
                Framing::UntilClose => available.len(),
                Framing::Chunked if dechunk => {
                    let out = &mut bufs.response;
                    let before = out.len();
                    let n = chunked
                        .advance(available, |range| out.extend_from_slice(&available[range]))
                        .map_err(|_| bad_chunks(head_pending))?;
                    sent += out.len() - before;
                    n
                }
                Framing::Chunked => chunked
                    .advance(available, |_| {})
                    .map_err(|_| bad_chunks(head_pending))?,
            };
            remaining -= match framing {
                Framing::Length(_) => take as u64,
                _ => 0,
            };
            let done = match framing {
                Framing::None => true,
                Framing::Length(_) => remaining == 0,
                Framing::Chunked => chunked.is_done(),
                Framing::UntilClose => false,
            };
            if dechunk {
                // Data was copied into `bufs.response` above.
                if done || bufs.response.len() >= RELAY_CHUNK || head_pending {
                    write_flush(down, &bufs.response, client_timeout)
                        .await
                        .map_err(|_| "client write failed")?;
                    bufs.response.clear();
                    head_pending = false;
                }
            } else if head_pending {
                bufs.response.extend_from_slice(&available[..take]);
                write_flush(down, &bufs.response, client_timeout)
                    .await
                    .map_err(|_| "client write failed")?;
                sent += take;
                head_pending = false;
            } else if take > 0 {
                write_flush(down, &available[..take], client_timeout)
                    .await
                    .map_err(|_| "client write failed")?;
                sent += take;
            }
            bufs.upstream.advance(take);
            if done {
                return Ok(sent);
            }
            if bufs.upstream.is_empty() {
                bufs.upstream.clear();
            }
            match read_more(up, &mut bufs.upstream, upstream_timeout).await {
                Ok(0) if framing == Framing::UntilClose => {
                    if dechunk && !bufs.response.is_empty() {
                        let _ = write_flush(down, &bufs.response, client_timeout).await;
                    }
                    return Ok(sent);
                }
                Ok(0) => return Err("upstream closed mid-body"),
                Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {
                    return Err("upstream timed out mid-body");
                }
                Err(_) => return Err("upstream failed mid-body"),
                Ok(_) => {}
            }
        }
    }

    /// After a 101: the response head, then bytes both ways until either side is done.
    async fn tunnel(
        &self,
        down: &mut Stream,
        buf: &mut BytesMut,
        mut up: Stream,
        bufs: &mut ConnBuffers,
        client_timeout: Duration,
        idle: Option<Duration>,
    ) -> Ended {
        bufs.response.extend_from_slice(&bufs.upstream);
        bufs.upstream.clear();
        if write_flush(down, &bufs.response, client_timeout)
            .await
            .is_err()
        {
            return ended(101, false, Some("client write failed"));
        }
        if !buf.is_empty() {
            if write_flush(&mut up, buf, client_timeout).await.is_err() {
                return ended(101, false, Some("upstream write failed"));
            }
            buf.clear();
        }
        let Some(idle) = idle else {
            let copied = tokio::io::copy_bidirectional(down, &mut up).await;
            let sent = copied.map_or(0, |(_, to_client)| usize::try_from(to_client).unwrap_or(0));
            return ended_tunnel(sent, None);
        };
        let activity = crate::io::idle::Activity::new();
        let mut down = crate::io::idle::Tracked::new(down, &activity);
        let mut up = crate::io::idle::Tracked::new(&mut up, &activity);
        let relay = tokio::io::copy_bidirectional(&mut down, &mut up);
        let result = crate::io::idle::bounded(&activity, Some(idle), relay).await;
        let timed_out = result
            .as_ref()
            .is_err_and(|e| e.kind() == std::io::ErrorKind::TimedOut);
        let sent = usize::try_from(down.written).unwrap_or(usize::MAX);
        ended_tunnel(sent, timed_out.then_some("idle timeout"))
    }

    /// A router-made error response naming the service (502, 503, 504).
    async fn local_error_body(
        &self,
        down: &mut Stream,
        bufs: &mut ConnBuffers,
        status: u16,
        pool: &Pool,
        keep_alive: bool,
    ) -> Ended {
        let message = error_message(status);
        bufs.response.clear();
        let body = format!("{message} ({})\n", pool.service);
        write_local_response(&mut bufs.response, status, body.as_bytes(), !keep_alive);
        let written = write_flush(down, &bufs.response, self.proxy.config.idle_timeout).await;
        Ended {
            status,
            bytes_sent: body.len(),
            keep_alive: keep_alive && written.is_ok(),
            error: Some(message),
        }
    }

    async fn local_error(
        &self,
        down: &mut Stream,
        bufs: &mut ConnBuffers,
        status: u16,
        reason: &'static str,
    ) -> Ended {
        bufs.response.clear();
        let body = format!("{reason}\n");
        write_local_response(&mut bufs.response, status, body.as_bytes(), true);
        let _ = write_flush(down, &bufs.response, self.proxy.config.idle_timeout).await;
        ended(status, false, Some(reason))
    }
}

fn ended(status: u16, keep_alive: bool, error: Option<&'static str>) -> Ended {
    Ended {
        status,
        bytes_sent: 0,
        keep_alive,
        error,
    }
}

fn ended_tunnel(bytes_sent: usize, error: Option<&'static str>) -> Ended {
    Ended {
        status: 101,
        bytes_sent,
        keep_alive: false,
        error,
    }
}
