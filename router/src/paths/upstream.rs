//! Talking HTTP/1.1 to an upstream, the part the HTTP/1 pump and HTTP/2 clients of
//! HTTP/1 services share: the routed request ([`Forward`]), a connection for each attempt
//! (an idle one from this thread's pool, or a new one), reading the response head, I/O
//! with time limits, and the end of the exchange (counters and the access log).

use std::net::IpAddr;
use std::sync::Arc;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use pingora::ErrorType;
use pingora::protocols::Stream;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::access_log::{Entry, unix_ms};
use crate::heads::ClientInfo;
use crate::pool::connections::{self, PoolKey};
use crate::request::{Proxy, RequestCtx, RetryScope, Routed};
use crate::wire::{Framing, RESPONSE_HEADERS, RequestHead, parse_response};

/// Largest upstream response head.
const MAX_RESPONSE_HEAD: usize = 64 * 1024;
/// Upstream read buffer: grown to this while relaying a large body.
pub(crate) const RELAY_CHUNK: usize = 16 * 1024;

/// A routed request, ready to go upstream (its head written by the path).
pub struct Forward {
    pub(crate) routed: Routed,
    /// Bytes of the client's head in the connection's read buffer (HTTP/1).
    pub(crate) head_len: usize,
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
            pool: &self.routed.pool,
            route: &self.routed.route,
            retryable_method: self.retryable_method,
        }
    }

    /// A connection to endpoint `index` of the request's pool: an idle one, or a new one.
    /// A failed connect is accounted, and retried elsewhere when the rules allow.
    pub(crate) async fn upstream(
        &self,
        proxy: &Proxy,
        ctx: &mut RequestCtx,
        index: usize,
    ) -> Upstream {
        let pool = &self.routed.pool;
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
        match Box::pin(proxy.connect(pool, endpoint.addr, &self.routed.route)).await {
            Ok(stream) => Upstream::Ready {
                stream,
                reused: false,
                key,
            },
            Err(e) if proxy.connect_failed(ctx, &e) => Upstream::Retry,
            Err(e) if matches!(e.etype(), ErrorType::ConnectTimedout) => Upstream::Failed(504),
            Err(_) => Upstream::Failed(502),
        }
    }

    /// Ends the exchange: the request's counters, and its access log line.
    pub(crate) fn finish(
        self,
        proxy: &Proxy,
        ctx: &mut RequestCtx,
        client: &ClientInfo,
        ended: &Ended,
    ) {
        let elapsed = ctx.finish(&proxy.metrics, ended.status);
        if let (Some(log), Some(fields)) = (&proxy.access_log, self.log) {
            let mut entry = entry(
                fields,
                elapsed,
                client.ip,
                ended.status,
                Some(Arc::clone(&self.routed.route.name)),
                Some(Arc::clone(&self.routed.pool.service)),
                ended.bytes_sent,
            );
            entry.upstream = ctx.upstream;
            entry.attempts = ctx.attempts;
            entry.error = ended.error.map(str::to_string);
            log.log(entry);
        }
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

/// What the access log needs of the request, copied only when the log is on.
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

/// An access log entry; the caller adds what only an upstream exchange knows.
pub(crate) fn entry(
    fields: LogFields,
    elapsed: Duration,
    client: Option<IpAddr>,
    status: u16,
    route: Option<Arc<str>>,
    service: Option<Arc<str>>,
    bytes_sent: usize,
) -> Entry {
    Entry {
        time_ms: unix_ms(std::time::SystemTime::now() - elapsed),
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

/// How an exchange ended, for metrics and the log.
pub(crate) struct Ended {
    pub(crate) status: u16,
    pub(crate) bytes_sent: usize,
    pub(crate) keep_alive: bool,
    pub(crate) error: Option<&'static str>,
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
