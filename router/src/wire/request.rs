//! Request heads: found in the read buffer, parsed and validated strictly in one pass
//! (CL/TE, duplicates, bare CR/LF, obs-fold, the target's form and authority), into a
//! [`RequestHead`] that borrows the buffer.

use std::time::Duration;

use super::framing::Framing;
use super::headers::connection_has;

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

pub const fn reject(status: u16, reason: &'static str) -> Rejection {
    Rejection { status, reason }
}

/// Finds the end of the head (an empty line); returns its length including the
/// terminator. Bare-LF heads end too, so that validation can refuse them.
pub fn head_end(buf: &[u8]) -> Option<usize> {
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
        match after_scheme(target) {
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

/// An upper-case method token: `A`-`Z`, `-` and `_`.
fn is_upper_case_method(method: &str) -> bool {
    !method.is_empty()
        && method
            .bytes()
            .all(|b| b.is_ascii_uppercase() || b == b'-' || b == b'_')
}

/// The request target's form (RFC 9112 section 3.2): origin form (`/path?query`),
/// absolute form (`http://authority/path?query`), asterisk form (`*`, `OPTIONS` only).
/// Authority form is `CONNECT`'s, refused before. Only visible ASCII, and no fragment
/// (`#` is the client's own: it is never sent).
fn check_target(method: &str, target: &str) -> Result<(), Rejection> {
    if !target.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(reject(
            400,
            "request target has bytes other than visible ASCII",
        ));
    }
    if target.contains('#') {
        return Err(reject(400, "request target has a fragment"));
    }
    if target == "*" {
        return if method == "OPTIONS" {
            Ok(())
        } else {
            Err(reject(400, "asterisk-form target without OPTIONS"))
        };
    }
    if target.starts_with('/') {
        return Ok(());
    }
    let scheme_len = if starts_with_ignore_case(target, "http://") {
        7
    } else if starts_with_ignore_case(target, "https://") {
        8
    } else {
        return Err(reject(400, "invalid request target"));
    };
    let rest = &target[scheme_len..];
    let authority = rest.split(['/', '?']).next().unwrap_or("");
    let authority_ok = !authority.is_empty()
        && authority.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        });
    if !authority_ok {
        return Err(reject(400, "invalid authority in the request target"));
    }
    Ok(())
}

fn starts_with_ignore_case(s: &str, prefix: &str) -> bool {
    s.len() >= prefix.len() && s.as_bytes()[..prefix.len()].eq_ignore_ascii_case(prefix.as_bytes())
}

/// The authority of an absolute-form target (any case of `http://` or `https://`).
fn absolute_authority(target: &str) -> Option<&str> {
    let rest = if starts_with_ignore_case(target, "http://") {
        &target[7..]
    } else if starts_with_ignore_case(target, "https://") {
        &target[8..]
    } else {
        return None;
    };
    Some(rest.split(['/', '?']).next().unwrap_or(""))
}

/// The rest of an absolute-form target after its scheme (any case).
fn after_scheme(target: &str) -> Option<&str> {
    if starts_with_ignore_case(target, "http://") {
        Some(&target[7..])
    } else if starts_with_ignore_case(target, "https://") {
        Some(&target[8..])
    } else {
        None
    }
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
    // Methods are case-sensitive tokens (RFC 9110 section 9.1): `get` is not `GET`.
    // Like nginx, strait takes only upper-case ones (letters, `-`, `_`: the registered
    // methods, WebDAV's included) and refuses the rest, rather than forward a method a
    // backend might fold into a standard one that route conditions and retry rules did
    // not see.
    if !is_upper_case_method(method) {
        return Err(reject(
            400,
            "invalid method (methods are upper-case tokens)",
        ));
    }
    if method == "CONNECT" {
        return Err(reject(405, "CONNECT is not supported"));
    }
    check_target(method, target)?;
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
    let authority = absolute_authority(target);
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

#[cfg(test)]
mod tests;
