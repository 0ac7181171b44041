//! The HTTP/1 request pump: strait's own hot path for HTTP/1.1 clients.
//!
//! pingora-proxy's generic machinery (a boxed session per request, a cloned request
//! header, two channels and two joined tasks, a boxed future per filter, its module
//! chain) cost more than half of each request here: a minimal pingora proxy ran at ~0.4×
//! nginx (docs/performance.md). The pump keeps pingora's listeners, TLS, connector and
//! server, and replaces `HttpProxy` for HTTP/1 upstreams with one straight pass per
//! request on the connection's own task:
//!
//! [`Proxy::plan`] (sync: parse and validate the head, route on the live table, pick the
//! service, write the upstream head into a reused buffer) -> [`Proxy::forward`] (attempts:
//! pick an endpoint, take an idle connection or connect, send, read the response head;
//! retry on connect failure, a stale pooled connection, or a retryable status; then relay
//! the response with its framing, and pool the upstream connection).
//!
//! Routing, balancing, retries, outlier accounting and metrics are the same code the
//! pingora path uses ([`crate::proxy`]); HTTP/2 clients and HTTP/2 upstreams go that way.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::Poll;
use std::time::{Duration, Instant};

use bytes::{Buf, BytesMut};
use http::Method;
use pingora::protocols::Stream;
use pingora::{ErrorType, Result};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::config::HashOn;
use crate::heads::{
    ClientInfo, ResponseShape, write_downstream_head, write_local_response, write_upstream_head,
};
use crate::pool::connections::{self, PoolKey};
use crate::pool::{Pool, fnv1a};
use crate::proxy::{Proxy, RequestCtx};
use crate::table::CompiledRoute;
use crate::wire::{
    BadChunk, Chunked, Framing, HeadLimits, RESPONSE_HEADERS, Rejection, RequestHead,
    STACK_HEADERS, has_dot_segment, parse_request, parse_response, routing_host,
};

/// Largest upstream response head.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Upstream read buffer: grown to this while relaying a large body.
pub(crate) const RELAY_CHUNK: usize = 16 * 1024;

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

pub struct Local {
    pub status: u16,
    pub body: String,
    pub head_len: usize,
    pub framing: Framing,
    pub keep_alive: bool,
    /// For the request counter and the log: the route and the target index.
    pub counted: Option<(Arc<CompiledRoute>, usize)>,
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

/// A routed request, ready to go upstream (its head is in `ConnBuffers::request`).
pub struct Forward {
    pub(crate) head_len: usize,
    pub(crate) route: Arc<CompiledRoute>,
    pub(crate) target: usize,
    pub(crate) pool: Arc<Pool>,
    pub(crate) hash: Option<u64>,
    pub(crate) body: Framing,
    pub(crate) keep_alive: bool,
    pub(crate) http10: bool,
    pub(crate) upgrade: bool,
    pub(crate) head_request: bool,
    /// Idempotent (or the route allows retrying anything).
    pub(crate) retryable_method: bool,
    pub(crate) expect_continue: bool,
    pub(crate) log: Option<LogFields>,
}

impl Forward {
    pub(crate) fn retry_scope(&self) -> RetryScope<'_> {
        RetryScope {
            pool: &self.pool,
            route: &self.route,
            retryable_method: self.retryable_method,
        }
    }
}

/// What the retry rules need to know of a request, on either proxy path.
#[derive(Clone, Copy)]
pub(crate) struct RetryScope<'a> {
    pub(crate) pool: &'a Pool,
    pub(crate) route: &'a CompiledRoute,
    /// Idempotent (or the route allows retrying anything).
    pub(crate) retryable_method: bool,
}

pub(crate) struct LogFields {
    pub(crate) method: String,
    /// The client's protocol: `1.0`, `1.1` or `2`.
    pub(crate) http: &'static str,
    pub(crate) host: String,
    pub(crate) path: String,
    pub(crate) request_id: Option<String>,
}

impl LogFields {
    pub(crate) fn of(head: &RequestHead<'_>, http: &'static str) -> LogFields {
        LogFields {
            method: head.method.to_string(),
            http,
            host: head.host.to_string(),
            path: head.origin_target().to_string(),
            request_id: None,
        }
    }
}

/// How an exchange ended, for metrics and the log.
pub(crate) struct Ended {
    pub(crate) status: u16,
    pub(crate) bytes_sent: usize,
    pub(crate) keep_alive: bool,
    pub(crate) error: Option<&'static str>,
}

/// Looks headers up among a parsed head's, for route header conditions.
pub(crate) fn hash_key(
    hash_on: &HashOn,
    head: &RequestHead<'_>,
    client: &ClientInfo,
) -> Option<u64> {
    match hash_on {
        HashOn::Header(name) => head.header(name).map(|v| fnv1a(&[v])),
        HashOn::Cookie(name) => head
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case("cookie"))
            .flat_map(|h| h.value.split(|&b| b == b';'))
            .find_map(|pair| {
                let pair = pair.trim_ascii();
                let (key, value) = pair.split_at(pair.iter().position(|&b| b == b'=')?);
                (key == name.as_bytes()).then(|| fnv1a(&[&value[1..]]))
            }),
        HashOn::ClientIp => client.ip.map(|_| fnv1a(&[client.ip_text.as_bytes()])),
    }
}

impl Proxy {
    fn local(&self, status: u16, body: String, head: &RequestHead<'_>, head_len: usize) -> Plan {
        Plan::Local(Local {
            status,
            body,
            head_len,
            framing: head.body,
            keep_alive: head.keep_alive,
            counted: None,
            log: self
                .access_log
                .as_ref()
                .map(|_| LogFields::of(head, http_version(head))),
            started: Instant::now(),
        })
    }
}

fn http_version(head: &RequestHead<'_>) -> &'static str {
    if head.minor_version == 0 {
        "1.0"
    } else {
        "1.1"
    }
}

pub(crate) enum AttemptError {
    /// Nothing usable came back: 502, or 504 when it timed out. `alert`: the upstream's
    /// TLS refused the connection after the handshake (e.g. our client certificate).
    Upstream { timeout: bool, alert: bool },
    /// The client went away or sent a bad body.
    Client(u16),
}

/// Reads more of an upstream response head into `buf`, by `deadline`; a close before
/// the head is whole is an upstream failure.
pub(crate) async fn read_head_more<S: AsyncRead + Unpin>(
    up: &mut S,
    buf: &mut BytesMut,
    deadline: tokio::time::Instant,
) -> Result<(), AttemptError> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    match tokio::time::timeout_at(deadline, up.read_buf(buf)).await {
        Err(_) => Err(AttemptError::Upstream {
            timeout: true,
            alert: false,
        }),
        Ok(Ok(0)) => Err(AttemptError::Upstream {
            timeout: false,
            alert: false,
        }),
        Ok(Err(e)) => Err(upstream_error(e)),
        Ok(Ok(_)) => Ok(()),
    }
}

pub(crate) fn upstream_error(e: std::io::Error) -> AttemptError {
    AttemptError::Upstream {
        timeout: e.kind() == std::io::ErrorKind::TimedOut,
        alert: e.to_string().contains("received fatal alert"),
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

/// Where a response head being read stands.
pub(crate) enum HeadState {
    Partial,
    /// A 1xx (not 101) head of this many bytes, to pass on; another head follows.
    Interim(usize),
    Final,
    Bad,
}

pub(crate) fn classify_response(buf: &[u8], head_request: bool) -> HeadState {
    if buf.is_empty() {
        return HeadState::Partial;
    }
    let mut storage = [httparse::EMPTY_HEADER; RESPONSE_HEADERS];
    match parse_response(buf, &mut storage, head_request) {
        Ok(None) if buf.len() > MAX_RESPONSE_HEAD => HeadState::Bad,
        Ok(None) => HeadState::Partial,
        Ok(Some(head)) if (100..200).contains(&head.status) && head.status != 101 => {
            HeadState::Interim(head.len)
        }
        Ok(Some(_)) => HeadState::Final,
        Err(_) => HeadState::Bad,
    }
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
    write_downstream_head(out, &parsed, &request.route, shape);
    Some(Response {
        status: parsed.status,
        framing: parsed.body,
        upstream_keep_alive: parsed.keep_alive,
        head_len: parsed.len,
        close,
        dechunk,
    })
}

/// Runs `io` with a time limit. The timer is only armed when `io` cannot finish at once
/// (most writes can): arming one costs a clock read and a timer-wheel entry.
async fn with_timeout<T>(
    limit: Duration,
    io: impl Future<Output = std::io::Result<T>>,
) -> std::io::Result<T> {
    let mut io = std::pin::pin!(io);
    if let Poll::Ready(result) = std::future::poll_fn(|cx| Poll::Ready(io.as_mut().poll(cx))).await
    {
        return result;
    }
    match tokio::time::timeout(limit, io).await {
        Ok(result) => result,
        Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
    }
}

pub(crate) async fn write_flush<S: AsyncWrite + Unpin + ?Sized>(
    stream: &mut S,
    data: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    with_timeout(limit, async {
        stream.write_all(data).await?;
        stream.flush().await
    })
    .await
}

/// Reads more into `buf` (at least `RELAY_CHUNK` free); Ok(0) at the end of the stream.
pub(crate) async fn read_more<S: AsyncRead + Unpin + ?Sized>(
    stream: &mut S,
    buf: &mut BytesMut,
    limit: Duration,
) -> std::io::Result<usize> {
    if buf.capacity() - buf.len() < RELAY_CHUNK / 4 {
        buf.reserve(RELAY_CHUNK);
    }
    with_timeout(limit, stream.read_buf(buf)).await
}

impl Proxy {
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
        let path = head.path();
        if has_dot_segment(path) {
            return self.local(
                400,
                "request path has dot segments\n".into(),
                &head,
                head_len,
            );
        }
        let host = routing_host(head.host);
        let host = &*host;
        let table = self.table.load();
        let Some(route) = table.route(host, path, &method, head.headers) else {
            self.metrics.rejected("no_route");
            return self.local(
                404,
                format!("no route for host {host:?}\n"),
                &head,
                head_len,
            );
        };
        let target_index = route.pick_target_index();
        let target = &route.targets.list[target_index];
        let Some(pool) = target.pool.as_ref().filter(|p| !p.is_empty()) else {
            let body = format!("no healthy instance of service {:?}\n", &*target.service);
            let mut plan = self.local(503, body, &head, head_len);
            if let Plan::Local(local) = &mut plan {
                local.counted = Some((Arc::clone(route), target_index));
            }
            return plan;
        };
        if pool.http2 {
            return Plan::Pingora;
        }
        let hash = pool.hash_on().and_then(|h| hash_key(h, &head, client));
        let http10 = head.minor_version == 0;
        let expect_continue = head.expect_continue && !http10;
        bufs.request.clear();
        let id = write_upstream_head(&mut bufs.request, &head, route, client, expect_continue);
        let log = self.access_log.as_ref().map(|_| LogFields {
            request_id: Some(String::from_utf8_lossy(&bufs.request[id]).into_owned()),
            ..LogFields::of(&head, http_version(&head))
        });
        Plan::Forward(Forward {
            head_len,
            route: Arc::clone(route),
            target: target_index,
            pool: Arc::clone(pool),
            hash,
            body: head.body,
            keep_alive: head.keep_alive,
            http10,
            upgrade: head.upgrade.is_some(),
            head_request: method == Method::HEAD,
            retryable_method: method.is_idempotent()
                || route.retry.as_ref().is_some_and(|r| r.non_idempotent),
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
        if let Some((route, target)) = &local.counted {
            self.metrics
                .count_request(route, *target, local.status, Duration::ZERO);
        }
        if let (Some(log), Some(fields)) = (&self.access_log, local.log) {
            let (route, service) = match &local.counted {
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
        let written = write_flush(down, &bufs.response, self.config.idle_timeout).await;
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
        let mut ctx = self.request_ctx();
        request.pool.shared.active.fetch_add(1, Ordering::Relaxed);
        ctx.route = Some(Arc::clone(&request.route));
        ctx.pool = Some(Arc::clone(&request.pool));
        ctx.target = request.target;
        ctx.hash = request.hash;
        buf.advance(request.head_len.min(buf.len()));
        let ended = self
            .exchange(down, buf, &request, bufs, &mut ctx, closing)
            .await;
        self.finish(&mut ctx, request, client, &ended);
        ended.keep_alive
    }

    pub(crate) fn finish(
        &self,
        ctx: &mut RequestCtx,
        request: Forward,
        client: &ClientInfo,
        ended: &Ended,
    ) {
        ctx.end_attempt(&self.metrics);
        request.pool.shared.active.fetch_sub(1, Ordering::Relaxed);
        let elapsed = ctx.started.elapsed();
        self.metrics
            .count_request(&request.route, request.target, ended.status, elapsed);
        if let (Some(log), Some(fields)) = (&self.access_log, request.log) {
            let mut entry = entry(
                fields,
                elapsed,
                client.ip,
                ended.status,
                Some(Arc::clone(&request.route.name)),
                Some(Arc::clone(&request.pool.service)),
                ended.bytes_sent,
            );
            entry.upstream = ctx.upstream;
            entry.attempts = ctx.attempts;
            entry.error = ended.error.map(str::to_string);
            log.log(entry);
        }
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
        let route = &request.route;
        let pool = &request.pool;
        let read_timeout = route.per_try_timeout.unwrap_or(route.request_timeout);
        let client_timeout = self.config.idle_timeout;
        // A body that came whole with the head goes out with it, and can be sent again.
        let Ok(whole_body) = whole_body(request.body, buf) else {
            return self.local_error(down, bufs, 400, "bad chunked body").await;
        };
        if let Some(n) = whole_body {
            bufs.request.extend_from_slice(&buf[..n]);
            buf.advance(n);
        } else if request.expect_continue && buf.is_empty() {
            // The client waits for this before sending its body; the upstream is not
            // asked (its `Expect` was removed), as nginx does.
            if write_flush(down, b"HTTP/1.1 100 Continue\r\n\r\n", client_timeout)
                .await
                .is_err()
            {
                return ended(499, false, Some("client closed"));
            }
        }
        let replayable = whole_body.is_some();
        loop {
            let now = self.clock.now_ms();
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
            let (mut up, reused, key) = match self.upstream_for(ctx, request, index).await {
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
                    ctx.end_attempt(&self.metrics);
                    return self.local_error(down, bufs, 400, "bad chunked body").await;
                }
                Err(AttemptError::Client(status)) => {
                    return ended(status, false, Some("client request failed"));
                }
                Err(AttemptError::Upstream { timeout, alert }) => {
                    if alert && pool.tls.is_some() {
                        // A TLS 1.3 server refusing our certificate says so only now.
                        self.count_tls_failure(
                            pool,
                            index,
                            "alert",
                            &"received fatal alert",
                            self.clock.now_ms(),
                        );
                    }
                    // A pooled connection the upstream had closed: nothing was processed.
                    let stale = reused && !timeout && bufs.upstream.is_empty();
                    if self.retry_after_no_answer(ctx, request, index, stale, timeout, replayable) {
                        bufs.upstream.clear();
                        continue;
                    }
                    let status = if timeout { 504 } else { 502 };
                    ctx.end_attempt(&self.metrics);
                    return self.local_error_body(down, bufs, status, pool, false).await;
                }
            }
            // A complete response head is at the start of `bufs.upstream`.
            let Some(response) =
                prepare_response(&bufs.upstream, &mut bufs.response, request, closing)
            else {
                ctx.end_attempt(&self.metrics);
                return self.local_error_body(down, bufs, 502, pool, false).await;
            };
            let status = response.status;
            if self.retry_on_answer(ctx, request.retry_scope(), index, status, replayable) {
                bufs.upstream.clear();
                continue;
            }
            if status == 101 && !request.upgrade {
                ctx.end_attempt(&self.metrics);
                return self.local_error_body(down, bufs, 502, pool, false).await;
            }
            bufs.upstream.advance(response.head_len);
            if status == 101 {
                let idle = request.route.idle_timeout;
                // Boxed: rare, and inline its state would enlarge every connection's future.
                return Box::pin(self.tunnel(down, buf, up, bufs, client_timeout, idle)).await;
            }
            let (framing, dechunk, close) = (response.framing, response.dechunk, response.close);
            let upstream_keep_alive = response.upstream_keep_alive;
            // Once the head is in, each wait for body bytes is bounded by the route's idle
            // timeout when it has one.
            let body_timeout = request
                .route
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
                    ctx.end_attempt(&self.metrics);
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
                        write_flush(down, &interim, self.config.idle_timeout)
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

    /// Streams a request body that did not come whole with the head, with its framing.
    async fn stream_request_body(
        &self,
        down: &mut Stream,
        buf: &mut BytesMut,
        up: &mut Stream,
        framing: Framing,
        upstream_timeout: Duration,
    ) -> Result<(), AttemptError> {
        let client_timeout = self.config.idle_timeout;
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

    /// A connection to endpoint `index` of the request's pool: an idle one, or a new one.
    /// A failed connect is accounted, and retried elsewhere when the rules allow.
    pub(crate) async fn upstream_for(
        &self,
        ctx: &mut RequestCtx,
        request: &Forward,
        index: usize,
    ) -> Upstream {
        let pool = &request.pool;
        let endpoint = &pool.endpoints[index];
        let key = PoolKey::new(endpoint.addr, pool.tls.as_ref());
        if let Some(stream) = connections::take(&key) {
            return Upstream::Ready {
                stream,
                reused: true,
                key,
            };
        }
        // Boxed: pingora's connect future is ~9 KB, and inline it would make every
        // request's future that size (copied whole when an HTTP/2 stream's task is
        // spawned). Connecting is rare on a warm pool and costs far more than a box.
        match Box::pin(self.connect(pool, endpoint.addr, &request.route)).await {
            Ok(stream) => Upstream::Ready {
                stream,
                reused: false,
                key,
            },
            Err(e) if self.connect_failed(ctx, &e) => Upstream::Retry,
            Err(e) if matches!(e.etype(), ErrorType::ConnectTimedout) => Upstream::Failed(504),
            Err(_) => Upstream::Failed(502),
        }
    }

    /// Whether to try again after an attempt that got no response head. A pooled
    /// connection the upstream had closed (`stale`) processed nothing: it goes again for a
    /// method that may be repeated, and is no failure of the instance (idle connections
    /// get closed). Anything else is [`Proxy::retry_unanswered`].
    pub(crate) fn retry_after_no_answer(
        &self,
        ctx: &mut RequestCtx,
        request: &Forward,
        index: usize,
        stale: bool,
        timeout: bool,
        replayable: bool,
    ) -> bool {
        if stale {
            return replayable && request.retryable_method && self.try_retry(ctx);
        }
        self.retry_unanswered(ctx, request.retry_scope(), index, timeout, replayable)
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

    pub(crate) async fn connect(
        &self,
        pool: &Pool,
        addr: std::net::SocketAddr,
        route: &CompiledRoute,
    ) -> Result<Stream> {
        let mut peer = crate::tls::peer(pool.tls.as_deref(), addr);
        peer.options.connection_timeout = Some(route.connect_timeout);
        peer.options.total_connection_timeout = Some(route.connect_timeout);
        self.connector.new_stream(&peer).await
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
        let written = write_flush(down, &bufs.response, self.config.idle_timeout).await;
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
        let _ = write_flush(down, &bufs.response, self.config.idle_timeout).await;
        ended(status, false, Some(reason))
    }
}

/// An upstream connection for an attempt, or what to do instead.
pub(crate) enum Upstream {
    Ready {
        stream: Stream,
        reused: bool,
        key: PoolKey,
    },
    /// The connect failed; try another instance.
    Retry,
    /// The connect failed for good: answer with this status.
    Failed(u16),
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

/// An access log entry; the caller adds what only an upstream exchange knows.
pub(crate) fn entry(
    fields: LogFields,
    elapsed: Duration,
    client: Option<std::net::IpAddr>,
    status: u16,
    route: Option<Arc<str>>,
    service: Option<Arc<str>>,
    bytes_sent: usize,
) -> crate::access_log::Entry {
    crate::access_log::Entry {
        time_ms: crate::access_log::unix_ms(std::time::SystemTime::now() - elapsed),
        client,
        method: fields.method,
        http: fields.http,
        host: fields.host,
        path: fields.path,
        status,
        duration_ms: elapsed.as_secs_f64() * 1000.0,
        route,
        service,
        upstream: None,
        attempts: 0,
        request_id: fields.request_id,
        bytes_sent,
        error: None,
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
