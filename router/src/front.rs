//! The front door for plain-HTTP/1.1 connections: reads each request head itself, under a
//! whole-head deadline and size/count limits, validates its framing strictly, and only
//! then hands the connection (head bytes pushed back in front of the stream) to pingora.
//!
//! Why not leave it to pingora: pingora's only head timeout is per read (a slowloris
//! client dripping a byte every few seconds is never cut off), its limits are 1 MiB and
//! 256 headers and not configurable, and on `Content-Length` + `Transfer-Encoding` it
//! drops `Content-Length` rather than refusing the request. An edge must refuse.
//!
//! Phase order per connection: [TLS/ALPN or h2c preface -> pingora's HTTP/2] else loop
//! { wait for first byte (idle timeout) -> read head (deadline, size) -> validate -> pingora
//! proxies one request -> connection back if reusable }.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use async_trait::async_trait;
use bytes::{Buf, BytesMut};
use pingora::apps::{HttpServerApp, ServerApp};
use pingora::protocols::http::ServerSession;
use pingora::protocols::raw_connect::ProxyDigest;
use pingora::protocols::tls::TlsRef;
use pingora::protocols::{
    ALPN, GetProxyDigest, GetSocketDigest, GetTimingDigest, Peek, Shutdown, SocketDigest, Ssl,
    Stream, TimingDigest, UniqueID, UniqueIDType,
};
use pingora::server::ShutdownWatch;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::time::Instant;

use crate::h1::ClientInfo;
use crate::metrics::RouterMetrics;
use crate::pump::{ConnBuffers, Plan};

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Limits on request heads.
#[derive(Debug, Clone, Copy)]
pub struct HeadLimits {
    pub max_bytes: usize,
    pub max_headers: usize,
    pub head_timeout: Duration,
    pub idle_timeout: Duration,
}

/// Why a head was refused: the status and a short reason for the body and metrics.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rejection {
    pub status: u16,
    pub reason: &'static str,
}

const fn reject(status: u16, reason: &'static str) -> Rejection {
    Rejection { status, reason }
}

/// Finds the end of the head (an empty line); returns its length including the
/// terminator. Bare-LF heads end too, so that validation can refuse them.
fn head_end(buf: &[u8]) -> Option<usize> {
    let mut from = 0;
    while let Some(i) = buf[from..].iter().position(|&b| b == b'\n') {
        let at = from + i;
        match buf.get(at + 1) {
            Some(b'\n') => return Some(at + 2),
            Some(b'\r') if buf.get(at + 2) == Some(&b'\n') => return Some(at + 3),
            _ => from = at + 1,
        }
    }
    None
}

/// How a message body is delimited (RFC 9112 section 6).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framing {
    /// No body.
    None,
    Length(u64),
    Chunked,
    /// Responses only: the body runs until the connection closes.
    UntilClose,
}

/// Header slots parsed on the stack; larger `max_headers` settings parse into the heap.
pub const STACK_HEADERS: usize = 128;

/// A validated request head. Borrows the connection's read buffer: nothing is copied.
#[derive(Debug)]
pub struct RequestHead<'a> {
    pub method: &'a str,
    /// The request target as sent (origin, absolute or asterisk form).
    pub target: &'a str,
    /// 0 for HTTP/1.0, 1 for HTTP/1.1.
    pub minor_version: u8,
    pub headers: &'a [httparse::Header<'a>],
    /// The Host header (or an HTTP/1.0 request's absolute-form authority), as sent.
    pub host: &'a str,
    pub body: Framing,
    /// The client wants the connection kept after this request.
    pub keep_alive: bool,
    /// The `Upgrade` header of a request asking for one (`Connection: upgrade`), except
    /// `h2c`, which a proxy does not pass on.
    pub upgrade: Option<&'a [u8]>,
    pub expect_continue: bool,
}

impl<'a> RequestHead<'a> {
    /// The target in origin form (`/path?query`): an absolute-form target loses its
    /// scheme and authority, as backends expect.
    pub fn origin_target(&self) -> &'a str {
        let target = self.target;
        match target
            .strip_prefix("http://")
            .or_else(|| target.strip_prefix("https://"))
        {
            Some(rest) => match rest.find(['/', '?']) {
                Some(at) if rest.as_bytes()[at] == b'/' => &rest[at..],
                Some(at) => &rest[at..], // `?query` with no path: kept as is
                None => "/",
            },
            None => target,
        }
    }

    /// The path, without the query.
    pub fn path(&self) -> &'a str {
        let target = self.origin_target();
        target.split_once('?').map_or(target, |(path, _)| path)
    }

    /// The first value of header `name` (lowercase).
    pub fn header(&self, name: &str) -> Option<&'a [u8]> {
        self.headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }

    /// Whether the `Connection` headers list `token`.
    pub fn connection_has(&self, token: &str) -> bool {
        connection_has(self.headers, token)
    }
}

/// Whether the `Connection` headers among `headers` list `token` (case-insensitive).
pub fn connection_has(headers: &[httparse::Header<'_>], token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Validates one complete request head strictly. Never panics on any input.
pub fn validate_head(head: &[u8], limits: &HeadLimits) -> Result<(), Rejection> {
    let mut storage = vec![httparse::EMPTY_HEADER; limits.max_headers];
    parse_request(head, limits.max_headers, &mut storage).map(|_| ())
}

/// Parses and validates one complete request head strictly, with at most `max_headers`
/// headers (`storage` must hold at least that many). Never panics on any input.
pub fn parse_request<'a>(
    head: &'a [u8],
    max_headers: usize,
    storage: &'a mut [httparse::Header<'a>],
) -> Result<RequestHead<'a>, Rejection> {
    // Line endings: every LF preceded by CR, every CR followed by LF.
    for (i, &b) in head.iter().enumerate() {
        match b {
            b'\n' if i == 0 || head[i - 1] != b'\r' => {
                return Err(reject(400, "bare LF in request head"));
            }
            b'\r' if head.get(i + 1) != Some(&b'\n') => {
                return Err(reject(400, "bare CR in request head"));
            }
            0 => return Err(reject(400, "NUL in request head")),
            _ => {}
        }
    }
    // Obsolete line folding: a header line starting with space or tab.
    if head
        .windows(2)
        .any(|w| w[0] == b'\n' && (w[1] == b' ' || w[1] == b'\t'))
    {
        return Err(reject(400, "obsolete header line folding"));
    }
    let slots = max_headers.min(storage.len());
    let mut request = httparse::Request::new(&mut storage[..slots]);
    match request.parse(head) {
        Ok(httparse::Status::Complete(_)) => {}
        Ok(httparse::Status::Partial) => return Err(reject(400, "incomplete request head")),
        Err(httparse::Error::TooManyHeaders) => {
            return Err(reject(431, "too many request headers"));
        }
        Err(httparse::Error::Version) => {
            // httparse reads a space in the target (`GET /a b HTTP/1.1`) as a bad version:
            // only a request line of three parts ending in `HTTP/…` is a version problem.
            let line = head
                .split(|&b| b == b'\r' || b == b'\n')
                .next()
                .unwrap_or(b"");
            let mut parts = line.split(|&b| b == b' ');
            let shaped =
                parts.nth(2).is_some_and(|v| v.starts_with(b"HTTP/")) && parts.next().is_none();
            return Err(if shaped {
                reject(505, "unsupported HTTP version")
            } else {
                reject(400, "malformed request line")
            });
        }
        Err(_) => return Err(reject(400, "malformed request head")),
    }
    let version = request.version.unwrap_or(1);
    let method = request.method.unwrap_or_default();
    let target = request.path.unwrap_or_default();
    let headers: &'a [httparse::Header<'a>] = request.headers;
    if method == "CONNECT" {
        return Err(reject(405, "CONNECT is not supported"));
    }
    let target_ok = target.starts_with('/')
        || (target == "*" && method == "OPTIONS")
        || target.starts_with("http://")
        || target.starts_with("https://");
    if !target_ok {
        return Err(reject(400, "invalid request target"));
    }
    let (mut content_length, mut transfer_encoding, mut host) = (0usize, 0usize, 0usize);
    let mut host_value: &[u8] = b"";
    let mut length = 0u64;
    let mut expect_continue = false;
    let mut upgrade = None;
    for header in headers {
        let name = header.name;
        if name.eq_ignore_ascii_case("content-length") {
            content_length += 1;
            let value = header.value;
            if value.is_empty() || !value.iter().all(u8::is_ascii_digit) || value.len() > 18 {
                return Err(reject(400, "invalid Content-Length"));
            }
            // At most 18 digits: always fits.
            length = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
        } else if name.eq_ignore_ascii_case("transfer-encoding") {
            transfer_encoding += 1;
            if !header.value.trim_ascii().eq_ignore_ascii_case(b"chunked") {
                return Err(reject(
                    400,
                    "unsupported Transfer-Encoding (only `chunked`)",
                ));
            }
        } else if name.eq_ignore_ascii_case("host") {
            host += 1;
            host_value = header.value;
            let valid = header.value.iter().all(|&b| {
                b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
            });
            if !valid {
                return Err(reject(400, "invalid Host header"));
            }
        } else if name.eq_ignore_ascii_case("expect") {
            expect_continue = header
                .value
                .trim_ascii()
                .eq_ignore_ascii_case(b"100-continue");
        } else if name.eq_ignore_ascii_case("upgrade") {
            upgrade = Some(header.value);
        }
    }
    if content_length > 1 {
        return Err(reject(400, "duplicate Content-Length"));
    }
    if transfer_encoding > 1 {
        return Err(reject(400, "duplicate Transfer-Encoding"));
    }
    if content_length > 0 && transfer_encoding > 0 {
        return Err(reject(400, "both Content-Length and Transfer-Encoding"));
    }
    if transfer_encoding > 0 && version == 0 {
        return Err(reject(400, "Transfer-Encoding in an HTTP/1.0 request"));
    }
    if host > 1 {
        return Err(reject(400, "duplicate Host header"));
    }
    if host == 0 && version == 1 {
        return Err(reject(400, "missing Host header"));
    }
    // Absolute form: routing uses Host, backends use the target's authority; they must agree.
    let authority = target
        .strip_prefix("http://")
        .or_else(|| target.strip_prefix("https://"))
        .map(|rest| rest.split(['/', '?']).next().unwrap_or(""));
    if let Some(authority) = authority
        && host > 0
        && !authority.as_bytes().eq_ignore_ascii_case(host_value)
    {
        return Err(reject(400, "request target authority differs from Host"));
    }
    let host = if host > 0 {
        // Checked above: ASCII only.
        std::str::from_utf8(host_value).unwrap_or_default()
    } else {
        authority.unwrap_or_default()
    };
    let body = if transfer_encoding > 0 {
        Framing::Chunked
    } else if length > 0 {
        Framing::Length(length)
    } else {
        Framing::None
    };
    let keep_alive = if version == 1 {
        !connection_has(headers, "close")
    } else {
        connection_has(headers, "keep-alive") && !connection_has(headers, "close")
    };
    let upgrade = upgrade.filter(|value| {
        connection_has(headers, "upgrade") && !value.trim_ascii().eq_ignore_ascii_case(b"h2c")
    });
    Ok(RequestHead {
        method,
        target,
        minor_version: version,
        headers,
        host,
        body,
        keep_alive,
        upgrade,
        expect_continue,
    })
}

/// What reading a head produced.
enum Head {
    /// A complete head (and possibly more) is in the buffer.
    Complete,
    /// The connection is an HTTP/2 prior-knowledge (h2c) connection.
    H2c,
    /// Closed or idle before a request began: close quietly.
    Gone,
    Rejected(Rejection),
}

async fn read_head(
    stream: &mut Stream,
    buf: &mut BytesMut,
    limits: &HeadLimits,
    check_h2c: bool,
) -> Head {
    // Idle: wait for the first byte of a request.
    if buf.is_empty() {
        match tokio::time::timeout(limits.idle_timeout, stream.read_buf(buf)).await {
            Ok(Ok(n)) if n > 0 => {}
            _ => return Head::Gone,
        }
    }
    let deadline = Instant::now() + limits.head_timeout;
    loop {
        if check_h2c && buf.len() <= H2_PREFACE.len() && H2_PREFACE.starts_with(buf) {
            if buf.len() == H2_PREFACE.len() {
                return Head::H2c;
            }
        } else if check_h2c && buf.starts_with(H2_PREFACE) {
            return Head::H2c;
        } else if let Some(end) = head_end(buf) {
            if end > limits.max_bytes {
                return Head::Rejected(reject(431, "request head too large"));
            }
            return Head::Complete;
        }
        if buf.len() > limits.max_bytes {
            return Head::Rejected(reject(431, "request head too large"));
        }
        if buf.capacity() - buf.len() < 1024 {
            buf.reserve(4096);
        }
        match tokio::time::timeout_at(deadline, stream.read_buf(buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Head::Gone,
            Ok(Ok(_)) => {}
            Err(_) => return Head::Rejected(reject(408, "request head not received in time")),
        }
    }
}

async fn respond_and_close(stream: &mut Stream, rejection: Rejection) {
    let reason_phrase = match rejection.status {
        400 => "Bad Request",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        505 => "HTTP Version Not Supported",
        _ => "Error",
    };
    let response = format!(
        "HTTP/1.1 {} {reason_phrase}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{}\n",
        rejection.status,
        rejection.reason.len() + 1,
        rejection.reason
    );
    let write = async {
        let _ = stream.write_all(response.as_bytes()).await;
        let _ = stream.flush().await;
        let _ = stream.shutdown().await;
    };
    let _ = tokio::time::timeout(Duration::from_secs(2), write).await;
}

/// The front door: reads and checks each request head, then hands the request to the
/// pump ([`crate::pump`]), or to pingora's proxy (`app`) for HTTP/2 (clients, and
/// services spoken to over HTTP/2).
pub struct Front<A> {
    pub app: Arc<A>,
    /// HTTP/2 connections (ALPN h2, h2c prior knowledge).
    pub h2: Arc<crate::pump_h2::H2App>,
    pub proxy: Arc<crate::proxy::Proxy>,
    pub limits: HeadLimits,
    pub h2c: bool,
    pub metrics: RouterMetrics,
}

#[async_trait]
impl<A> ServerApp for Front<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    async fn process_new(
        self: &Arc<Self>,
        stream: Stream,
        shutdown: &ShutdownWatch,
    ) -> Option<Stream> {
        let _connection = self.metrics.connection();
        // TLS with ALPN h2: straight to pingora's HTTP/2 server.
        if matches!(stream.selected_alpn_proto(), Some(ALPN::H2)) {
            return self.h2.process_new(stream, shutdown).await;
        }
        let tls = stream.get_ssl_digest().is_some();
        let check_h2c = self.h2c && !tls;
        let client_ip = stream
            .get_socket_digest()
            .and_then(|d| d.peer_addr().and_then(|a| a.as_inet()).map(|a| a.ip()));
        let client = ClientInfo::new(client_ip, tls);
        let mut stream = stream;
        let mut buf = BytesMut::with_capacity(4096);
        let mut bufs = ConnBuffers::default();
        let mut shutting_down = shutdown.clone();
        loop {
            if *shutting_down.borrow() {
                return None;
            }
            let idle = buf.is_empty();
            let head = tokio::select! {
                head = read_head(&mut stream, &mut buf, &self.limits, check_h2c) => head,
                // Shutdown closes idle keep-alive connections at once.
                _ = shutting_down.changed(), if idle => return None,
            };
            match head {
                Head::Gone => return None,
                Head::H2c => {
                    let prefixed = Prefixed::new(buf, stream);
                    return self.h2.process_new(Box::new(prefixed), shutdown).await;
                }
                Head::Rejected(rejection) => {
                    self.metrics.rejected(rejection.reason);
                    respond_and_close(&mut stream, rejection).await;
                    return None;
                }
                Head::Complete => {}
            }
            let end = head_end(&buf).unwrap_or(buf.len());
            let closing = *shutdown.borrow();
            let keep_alive = match self
                .proxy
                .plan(&buf[..end], &self.limits, &client, &mut bufs)
            {
                Plan::Reject(rejection) => {
                    self.metrics.rejected(rejection.reason);
                    respond_and_close(&mut stream, rejection).await;
                    return None;
                }
                Plan::Local(local) => {
                    self.proxy
                        .answer_locally(&mut stream, &mut buf, local, &mut bufs, client.ip, closing)
                        .await
                }
                Plan::Forward(request) => {
                    self.proxy
                        .forward(&mut stream, &mut buf, request, &mut bufs, &client, closing)
                        .await
                }
                Plan::Pingora => {
                    let (next, reused) = self.pingora_h1(stream, buf, shutdown).await?;
                    stream = next;
                    buf = reused;
                    continue;
                }
            };
            if !keep_alive {
                return None;
            }
        }
    }
}

impl<A> Front<A>
where
    A: HttpServerApp + Send + Sync + 'static,
{
    /// One HTTP/1 request through pingora's proxy (a service spoken to over HTTP/2): the
    /// head bytes already read are pushed back in front of the stream. Returns the
    /// connection and any bytes read past the request, if it can be reused.
    async fn pingora_h1(
        &self,
        stream: Stream,
        buf: BytesMut,
        shutdown: &ShutdownWatch,
    ) -> Option<(Stream, BytesMut)> {
        let prefixed: Stream = Box::new(Prefixed::new(buf, stream));
        let mut session = ServerSession::new_http1(prefixed);
        if *shutdown.borrow() {
            session.set_keepalive(None);
        } else {
            session.set_keepalive(Some(self.limits.idle_timeout.as_secs().max(1)));
        }
        let reused = self.app.process_new_http(session, shutdown).await?;
        let (reused_stream, _settings) = reused.consume();
        // Unwrap our wrapper so connections do not nest one per request; bytes it still
        // holds (a pipelined next request) become the next head's start.
        match reused_stream.into_any().downcast::<Prefixed>() {
            Ok(prefixed) => {
                let (rest, inner) = prefixed.into_parts();
                Some((inner, rest))
            }
            Err(_) => None,
        }
    }
}

/// A stream with bytes pushed back in front of it.
pub struct Prefixed {
    prefix: BytesMut,
    inner: Stream,
}

impl Prefixed {
    pub fn new(prefix: BytesMut, inner: Stream) -> Self {
        Prefixed { prefix, inner }
    }

    pub fn into_parts(self) -> (BytesMut, Stream) {
        (self.prefix, self.inner)
    }
}

impl fmt::Debug for Prefixed {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Prefixed")
            .field("prefix", &self.prefix.len())
            .field("inner", &self.inner)
            .finish()
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if !self.prefix.is_empty() {
            let n = self.prefix.len().min(out.remaining());
            out.put_slice(&self.prefix[..n]);
            self.prefix.advance(n);
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, data)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[async_trait]
impl Shutdown for Prefixed {
    async fn shutdown(&mut self) {
        Shutdown::shutdown(self.inner.as_mut()).await
    }
}

impl UniqueID for Prefixed {
    fn id(&self) -> UniqueIDType {
        self.inner.id()
    }
}

impl Ssl for Prefixed {
    fn get_ssl(&self) -> Option<&TlsRef> {
        self.inner.get_ssl()
    }

    fn get_ssl_digest(&self) -> Option<Arc<pingora::protocols::tls::SslDigest>> {
        self.inner.get_ssl_digest()
    }

    fn selected_alpn_proto(&self) -> Option<ALPN> {
        self.inner.selected_alpn_proto()
    }
}

impl GetTimingDigest for Prefixed {
    fn get_timing_digest(&self) -> Vec<Option<TimingDigest>> {
        self.inner.get_timing_digest()
    }

    fn get_read_pending_time(&self) -> Duration {
        self.inner.get_read_pending_time()
    }

    fn get_write_pending_time(&self) -> Duration {
        self.inner.get_write_pending_time()
    }
}

impl GetProxyDigest for Prefixed {
    fn get_proxy_digest(&self) -> Option<Arc<ProxyDigest>> {
        self.inner.get_proxy_digest()
    }
}

impl GetSocketDigest for Prefixed {
    fn get_socket_digest(&self) -> Option<Arc<SocketDigest>> {
        self.inner.get_socket_digest()
    }
}

#[async_trait]
impl Peek for Prefixed {
    /// Peeking is "not supported" while bytes are pushed back, so pingora's h2c probe
    /// keeps h2c on (we only hand it connections whose preface we have already seen).
    async fn try_peek(&mut self, buf: &mut [u8]) -> std::io::Result<bool> {
        if self.prefix.is_empty() {
            self.inner.try_peek(buf).await
        } else {
            Ok(false)
        }
    }
}

#[cfg(test)]
mod tests;
