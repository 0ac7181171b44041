//! HTTP/1.1 wire pieces of the request pump ([`crate::pump`]): the upstream request head
//! and downstream response head writers, response head parsing, and a chunked-body
//! tracker. Synchronous and allocation-free: heads are written into a per-connection
//! `Vec<u8>` that is reused for every request.

use std::io::Write;
use std::net::IpAddr;
use std::ops::Range;

use crate::front::{Framing, RequestHead, connection_has};
use crate::table::CompiledRoute;

/// Longest incoming `x-request-id` kept as is; others are replaced.
const MAX_REQUEST_ID: usize = 128;
/// Header slots for an upstream response head (on the stack).
pub const RESPONSE_HEADERS: usize = 256;

/// What the router knows about the downstream connection, computed once per connection.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    pub ip: Option<IpAddr>,
    /// `ip` as text, for the forwarding headers and client-IP hashing.
    pub ip_text: String,
    /// `https` over a TLS listener, else `http`.
    pub proto: &'static str,
}

impl ClientInfo {
    pub fn new(ip: Option<IpAddr>, tls: bool) -> ClientInfo {
        ClientInfo {
            ip,
            ip_text: ip.map(|ip| ip.to_string()).unwrap_or_default(),
            proto: if tls { "https" } else { "http" },
        }
    }
}

/// Headers that describe one connection, not the message: never forwarded (RFC 9110
/// section 7.6.1). `transfer-encoding` is not among them: bodies pass through verbatim,
/// framing included.
pub(crate) fn is_hop_by_hop(name: &str) -> bool {
    [
        "connection",
        "keep-alive",
        "proxy-connection",
        "te",
        "upgrade",
        "http2-settings",
    ]
    .iter()
    .any(|h| name.eq_ignore_ascii_case(h))
}

/// Named by the message's own `Connection` header: hop-by-hop too.
fn named_by_connection(headers: &[httparse::Header<'_>], name: &str) -> bool {
    connection_has(headers, name)
}

/// `host[:port]` or `[v6]:port` made of the characters such names have.
pub fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        })
}

/// Whether a request path has `.` or `..` segments (also percent-encoded): refused, so a
/// prefix match and rewrite cannot be escaped by a backend that normalizes paths. Segments
/// end at `/` and at what such a backend may take for one: `%2f`, `\` and `%5c`, also
/// encoded twice (`%252f`); dots before a `;` path parameter (`..;x`) count too.
pub fn has_dot_segment(path: &str) -> bool {
    let bytes = path.as_bytes();
    // Dots in the current segment, and whether it held anything else.
    let (mut dots, mut only_dots) = (0u32, true);
    let mut i = 0;
    loop {
        let (byte, width) = match bytes.get(i) {
            None => (b'/', 1),
            Some(b'%') => match bytes.get(i + 1..i + 3) {
                Some([b'2', c]) if c | 0x20 == b'e' => (b'.', 3),
                Some([b'2', c]) if c | 0x20 == b'f' => (b'/', 3),
                Some([b'5', c]) if c | 0x20 == b'c' => (b'/', 3),
                // Encoded twice (`%252e`): a backend that decodes twice sees a dot.
                Some(b"25") => match bytes.get(i + 3..i + 5) {
                    Some([b'2', c]) if c | 0x20 == b'e' => (b'.', 5),
                    Some([b'2', c]) if c | 0x20 == b'f' => (b'/', 5),
                    Some([b'5', c]) if c | 0x20 == b'c' => (b'/', 5),
                    _ => (b'%', 1),
                },
                _ => (b'%', 1),
            },
            Some(b'\\') => (b'/', 1),
            Some(&other) => (other, 1),
        };
        match byte {
            // `..;x` is `..` with a path parameter to Tomcat and Spring.
            b'/' | b';' => {
                if only_dots && (dots == 1 || dots == 2) {
                    return true;
                }
                if byte == b';' {
                    only_dots = false;
                    i += width;
                    continue;
                }
                if i >= bytes.len() {
                    return false;
                }
                (dots, only_dots) = (0, true);
            }
            b'.' => dots += 1,
            _ => only_dots = false,
        }
        i += width;
    }
}

pub fn is_valid_request_id(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= MAX_REQUEST_ID && value.iter().all(u8::is_ascii_graphic)
}

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The request path after the route's prefix rewrite (query kept), written to `out`.
fn write_target(out: &mut Vec<u8>, target: &str, route: &CompiledRoute) {
    let Some((prefix_len, replacement)) = &route.prefix_rewrite else {
        out.extend_from_slice(target.as_bytes());
        return;
    };
    let (path, query) = match target.split_once('?') {
        Some((path, query)) => (path, Some(query)),
        None => (target, None),
    };
    let rest = path.get(*prefix_len..).unwrap_or("");
    out.extend_from_slice(replacement.as_bytes());
    if replacement.ends_with('/') && rest.starts_with('/') {
        out.extend_from_slice(&rest.as_bytes()[1..]);
    } else if !replacement.ends_with('/') && !rest.is_empty() && !rest.starts_with('/') {
        out.push(b'/');
        out.extend_from_slice(rest.as_bytes());
    } else {
        out.extend_from_slice(rest.as_bytes());
    }
    if let Some(query) = query {
        out.push(b'?');
        out.extend_from_slice(query.as_bytes());
    }
}

/// Writes the request head sent upstream: the request line in origin form with the
/// route's prefix rewrite, the client's headers minus hop-by-hop ones and those the route
/// removes, the forwarding headers (`X-Forwarded-For/-Proto/-Host`, `Forwarded`), the
/// request id and the route's own headers. `Expect` is left out when `drop_expect` (the
/// router answers `100 Continue` itself). Returns where the request id is in `out`.
pub fn write_upstream_head(
    out: &mut Vec<u8>,
    head: &RequestHead<'_>,
    route: &CompiledRoute,
    client: &ClientInfo,
    drop_expect: bool,
) -> Range<usize> {
    out.extend_from_slice(head.method.as_bytes());
    out.push(b' ');
    write_target(out, head.origin_target(), route);
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let mut request_id = None;
    let (mut forwarded_for, mut forwarded) = (false, false);
    for header in head.headers {
        let name = header.name;
        if name.eq_ignore_ascii_case("x-forwarded-for") {
            forwarded_for = true;
            continue;
        }
        if name.eq_ignore_ascii_case("forwarded") {
            forwarded = true;
            continue;
        }
        if name.eq_ignore_ascii_case("x-request-id") {
            if request_id.is_none() && is_valid_request_id(header.value) {
                request_id = Some(header.value);
            }
            continue;
        }
        let skip = is_hop_by_hop(name)
            || name.eq_ignore_ascii_case("x-forwarded-proto")
            || name.eq_ignore_ascii_case("x-forwarded-host")
            || (drop_expect && name.eq_ignore_ascii_case("expect"))
            || route.replaces_request_header(name)
            || named_by_connection(head.headers, name);
        if !skip {
            header_line(out, name.as_bytes(), header.value);
        }
    }
    let host = if is_plain_host(head.host) {
        head.host
    } else {
        ""
    };
    if let Some(ip) = client.ip {
        // Earlier proxies' entries first, all of them, then ours.
        let join = |out: &mut Vec<u8>, wanted: &str, present: bool| {
            if present {
                for header in head.headers {
                    if header.name.eq_ignore_ascii_case(wanted) {
                        out.extend_from_slice(header.value);
                        out.extend_from_slice(b", ");
                    }
                }
            }
        };
        out.extend_from_slice(b"x-forwarded-for: ");
        join(out, "x-forwarded-for", forwarded_for);
        out.extend_from_slice(client.ip_text.as_bytes());
        out.extend_from_slice(b"\r\nforwarded: ");
        join(out, "forwarded", forwarded);
        // Only a well-formed host goes into `Forwarded`: anything else could smuggle
        // extra elements (`host="a",for=6.6.6.6`) past a backend that trusts it.
        let _ = match (ip, host.is_empty()) {
            (IpAddr::V6(_), true) => write!(out, "for=\"[{}]\"", client.ip_text),
            (IpAddr::V6(_), false) => write!(out, "for=\"[{}]\";host=\"{host}\"", client.ip_text),
            (IpAddr::V4(_), true) => write!(out, "for={}", client.ip_text),
            (IpAddr::V4(_), false) => write!(out, "for={};host=\"{host}\"", client.ip_text),
        };
        out.extend_from_slice(b";proto=");
        out.extend_from_slice(client.proto.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    header_line(out, b"x-forwarded-proto", client.proto.as_bytes());
    if !host.is_empty() {
        header_line(out, b"x-forwarded-host", host.as_bytes());
    }
    out.extend_from_slice(b"x-request-id: ");
    let id_start = out.len();
    match request_id {
        Some(id) => out.extend_from_slice(id),
        None => {
            let id = rand::random::<u128>();
            out.extend(
                (0..32)
                    .rev()
                    .map(|i| b"0123456789abcdef"[(id >> (i * 4)) as usize & 15]),
            );
        }
    }
    let id = id_start..out.len();
    out.extend_from_slice(b"\r\n");
    for (name, value) in &route.request_set {
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if let Some(upgrade) = head.upgrade {
        header_line(out, b"connection", b"upgrade");
        header_line(out, b"upgrade", upgrade);
    }
    out.extend_from_slice(b"\r\n");
    id
}

/// Why an upstream response head is unusable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BadResponse {
    Malformed,
    TooManyHeaders,
    /// Conflicting or invalid `Content-Length`.
    Length,
}

/// A parsed upstream response head.
#[derive(Debug)]
pub struct ResponseHead<'a> {
    pub status: u16,
    pub reason: &'a str,
    pub headers: &'a [httparse::Header<'a>],
    pub body: Framing,
    /// A `Transfer-Encoding` came: it overrides any `Content-Length`, which is then not
    /// passed on (RFC 9112 6.3: a downstream hop trusting it would be desynchronised).
    pub transfer_encoded: bool,
    /// The upstream keeps the connection open after this response.
    pub keep_alive: bool,
    /// Bytes of the head, terminator included.
    pub len: usize,
}

/// Parses an upstream response head at the start of `buf`; `Ok(None)` until it is
/// complete. `head_request`: the request was `HEAD` (no body, whatever the headers say).
pub fn parse_response<'a>(
    buf: &'a [u8],
    storage: &'a mut [httparse::Header<'a>],
    head_request: bool,
) -> Result<Option<ResponseHead<'a>>, BadResponse> {
    let mut response = httparse::Response::new(storage);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(httparse::Error::TooManyHeaders) => return Err(BadResponse::TooManyHeaders),
        Err(_) => return Err(BadResponse::Malformed),
    };
    let status = response.code.unwrap_or(0);
    let reason = response.reason.unwrap_or("");
    let version = response.version.unwrap_or(1);
    let headers: &'a [httparse::Header<'a>] = response.headers;
    let mut length: Option<u64> = None;
    let mut chunked = None;
    for header in headers {
        if header.name.eq_ignore_ascii_case("content-length") {
            let value = header.value.trim_ascii();
            if value.is_empty() || value.len() > 18 || !value.iter().all(u8::is_ascii_digit) {
                return Err(BadResponse::Length);
            }
            let n = value.iter().fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
            if length.is_some_and(|l| l != n) {
                return Err(BadResponse::Length);
            }
            length = Some(n);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // The final coding decides: chunked, or the body runs to the close.
            let last = header.value.rsplit(|&b| b == b',').next().unwrap_or(b"");
            chunked = Some(last.trim_ascii().eq_ignore_ascii_case(b"chunked"));
        }
    }
    let mut keep_alive = if version == 1 {
        !connection_has(headers, "close")
    } else {
        connection_has(headers, "keep-alive") && !connection_has(headers, "close")
    };
    let body = if head_request || (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::None
    } else {
        match (chunked, length) {
            (Some(true), None) => Framing::Chunked,
            (Some(true), Some(_)) => {
                // Both: chunked wins (RFC 9112 6.3), and the connection is not reused.
                keep_alive = false;
                Framing::Chunked
            }
            (Some(false), _) => {
                keep_alive = false;
                Framing::UntilClose
            }
            (None, Some(0)) => Framing::None,
            (None, Some(n)) => Framing::Length(n),
            (None, None) => {
                keep_alive = false;
                Framing::UntilClose
            }
        }
    };
    Ok(Some(ResponseHead {
        status,
        reason,
        headers,
        body,
        transfer_encoded: chunked.is_some(),
        keep_alive,
        len,
    }))
}

/// How the response goes to the client.
#[derive(Debug, Clone, Copy)]
pub struct ResponseShape {
    /// Close the client connection after this response (`Connection: close`).
    pub close: bool,
    /// An HTTP/1.0 client kept alive: say so (`Connection: keep-alive`).
    pub keep_alive_10: bool,
    /// Remove the chunked framing (an HTTP/1.0 client); the body then ends with the
    /// connection.
    pub dechunk: bool,
}

/// Writes the response head sent to the client: the upstream's status and headers minus
/// hop-by-hop ones and those the route removes, plus the route's own.
pub fn write_downstream_head(
    out: &mut Vec<u8>,
    response: &ResponseHead<'_>,
    route: &CompiledRoute,
    shape: ResponseShape,
) {
    let _ = write!(out, "HTTP/1.1 {} ", response.status);
    out.extend_from_slice(response.reason.as_bytes());
    out.extend_from_slice(b"\r\n");
    let switching = response.status == 101;
    // 1xx and 204 have no body and must not say they do (RFC 9110 8.6); identical
    // repeated lengths (accepted from the upstream) go out once.
    let bodiless = response.status < 200 || response.status == 204;
    let mut length_sent = false;
    for header in response.headers {
        let name = header.name;
        let length = name.eq_ignore_ascii_case("content-length");
        // A 101's `Upgrade` names the protocol switched to: the client needs it (RFC 6455
        // 4.1), though `Connection: upgrade` names it as hop-by-hop.
        let switched_to = switching && name.eq_ignore_ascii_case("upgrade");
        let skip = (length
            && (bodiless
                || response.transfer_encoded
                || std::mem::replace(&mut length_sent, true)))
            || (bodiless && name.eq_ignore_ascii_case("transfer-encoding"))
            || (shape.dechunk && name.eq_ignore_ascii_case("transfer-encoding"))
            || route.replaces_response_header(name)
            || (!switched_to
                && (is_hop_by_hop(name) || named_by_connection(response.headers, name)));
        if !skip {
            header_line(out, name.as_bytes(), header.value);
        }
    }
    for (name, value) in &route.response_set {
        header_line(out, name.as_str().as_bytes(), value.as_bytes());
    }
    if switching {
        header_line(out, b"connection", b"upgrade");
    } else if shape.close {
        header_line(out, b"connection", b"close");
    } else if shape.keep_alive_10 {
        header_line(out, b"connection", b"keep-alive");
    }
    out.extend_from_slice(b"\r\n");
}

/// Writes a short plain-text response made by the router itself.
pub fn write_local_response(out: &mut Vec<u8>, status: u16, body: &[u8], close: bool) {
    let reason = match status {
        400 => "Bad Request",
        404 => "Not Found",
        408 => "Request Timeout",
        499 => "Client Closed Request",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Error",
    };
    let _ = write!(
        out,
        "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n",
        body.len()
    );
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
}

/// Bad chunked framing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BadChunk(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    Size,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    TrailerStart,
    Trailer,
    TrailerLf,
    EndLf,
    Done,
}

/// Longest chunk extension, and all trailers together.
const MAX_EXTENSION: usize = 4096;
const MAX_TRAILERS: usize = 16 * 1024;

/// Follows chunked framing over a body passing through, to find where it ends and, for
/// an HTTP/1.0 client, which bytes are data. Strict: sizes of at most 16 hex digits, CRLF
/// line ends, bounded extensions and trailers.
#[derive(Debug, Clone)]
pub struct Chunked {
    state: ChunkState,
    size: u64,
    digits: u8,
    /// Bytes of extension or trailer seen (bounded).
    extra: usize,
}

impl Default for Chunked {
    fn default() -> Self {
        Chunked::new()
    }
}

impl Chunked {
    pub fn new() -> Chunked {
        Chunked {
            state: ChunkState::Size,
            size: 0,
            digits: 0,
            extra: 0,
        }
    }

    pub fn is_done(&self) -> bool {
        self.state == ChunkState::Done
    }

    /// Advances over `input`, calling `data` with each range of chunk data in it. Returns
    /// how many bytes belong to the body: all of `input` unless the body ends inside it.
    pub fn advance(
        &mut self,
        input: &[u8],
        mut data: impl FnMut(Range<usize>),
    ) -> Result<usize, BadChunk> {
        let mut at = 0;
        while at < input.len() {
            let byte = input[at];
            match self.state {
                ChunkState::Done => return Ok(at),
                ChunkState::Data => {
                    let take = usize::try_from(self.size)
                        .unwrap_or(usize::MAX)
                        .min(input.len() - at);
                    data(at..at + take);
                    at += take;
                    self.size -= take as u64;
                    if self.size == 0 {
                        self.state = ChunkState::DataCr;
                    }
                    continue;
                }
                ChunkState::Size => match byte {
                    b'0'..=b'9' | b'a'..=b'f' | b'A'..=b'F' => {
                        if self.digits == 16 {
                            return Err(BadChunk("chunk size too large"));
                        }
                        let digit = (byte as char).to_digit(16).unwrap_or(0);
                        self.size = (self.size << 4) | u64::from(digit);
                        self.digits += 1;
                    }
                    b';' | b' ' | b'\t' if self.digits > 0 => {
                        self.state = ChunkState::Extension;
                        self.extra = 0;
                    }
                    b'\r' if self.digits > 0 => self.state = ChunkState::SizeLf,
                    _ => return Err(BadChunk("invalid chunk size")),
                },
                ChunkState::Extension => match byte {
                    b'\r' => self.state = ChunkState::SizeLf,
                    b'\n' | 0 => return Err(BadChunk("invalid chunk extension")),
                    _ => {
                        self.extra += 1;
                        if self.extra > MAX_EXTENSION {
                            return Err(BadChunk("chunk extension too long"));
                        }
                    }
                },
                ChunkState::SizeLf => {
                    if byte != b'\n' {
                        return Err(BadChunk("bare CR after chunk size"));
                    }
                    self.digits = 0;
                    if self.size == 0 {
                        self.state = ChunkState::TrailerStart;
                        self.extra = 0;
                    } else {
                        self.state = ChunkState::Data;
                    }
                }
                ChunkState::DataCr => {
                    if byte != b'\r' {
                        return Err(BadChunk("chunk data longer than its size"));
                    }
                    self.state = ChunkState::DataLf;
                }
                ChunkState::DataLf => {
                    if byte != b'\n' {
                        return Err(BadChunk("bare CR after chunk data"));
                    }
                    self.state = ChunkState::Size;
                }
                ChunkState::TrailerStart => match byte {
                    b'\r' => self.state = ChunkState::EndLf,
                    b'\n' | b' ' | b'\t' | 0 => return Err(BadChunk("invalid trailer")),
                    _ => self.state = ChunkState::Trailer,
                },
                ChunkState::Trailer => match byte {
                    b'\r' => self.state = ChunkState::TrailerLf,
                    b'\n' | 0 => return Err(BadChunk("invalid trailer")),
                    _ => {}
                },
                ChunkState::TrailerLf => {
                    if byte != b'\n' {
                        return Err(BadChunk("bare CR in trailer"));
                    }
                    self.state = ChunkState::TrailerStart;
                }
                ChunkState::EndLf => {
                    if byte != b'\n' {
                        return Err(BadChunk("bare CR after last chunk"));
                    }
                    self.state = ChunkState::Done;
                }
            }
            if matches!(
                self.state,
                ChunkState::Trailer | ChunkState::TrailerLf | ChunkState::TrailerStart
            ) {
                self.extra += 1;
                if self.extra > MAX_TRAILERS {
                    return Err(BadChunk("trailers too long"));
                }
            }
            at += 1;
        }
        Ok(at)
    }
}

#[cfg(test)]
mod tests;
