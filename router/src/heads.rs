//! The HTTP/1.1 head writers: the request head sent upstream (hop-by-hop headers dropped,
//! forwarding headers, request id, the route's rewrites), the response head sent to an
//! HTTP/1 client, and the router's own short responses. Used by the HTTP/1 pump and by
//! HTTP/2 clients of HTTP/1 services. Synchronous and allocation-free: heads are written
//! into a per-connection `Vec<u8>` that is reused for every request.

use std::io::Write;
use std::net::IpAddr;
use std::ops::Range;

use crate::table::CompiledRoute;
use crate::wire::{
    RequestHead, ResponseHead, connection_has, is_hop_by_hop, is_plain_host, is_valid_request_id,
};

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

fn header_line(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.extend_from_slice(name);
    out.extend_from_slice(b": ");
    out.extend_from_slice(value);
    out.extend_from_slice(b"\r\n");
}

/// The request target (origin form) after the route's prefix rewrite (query kept),
/// written to `out`. The pump's and pingora's paths rewrite alike.
pub(crate) fn write_target(out: &mut Vec<u8>, target: &str, route: &CompiledRoute) {
    // `OPTIONS *` asks about the server, not a path: nothing to rewrite.
    let Some((prefix_len, replacement)) = route.prefix_rewrite.as_ref().filter(|_| target != "*")
    else {
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
    hop_token: &str,
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
            || connection_has(head.headers, name);
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
    // Our own `Via` entry (the earlier ones pass as sent): a request that comes back to
    // this router carries it, and is refused as a loop (`Proxy::route`).
    if !hop_token.is_empty() {
        out.extend_from_slice(b"via: 1.1 ");
        out.extend_from_slice(hop_token.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
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
            || (!switched_to && (is_hop_by_hop(name) || connection_has(response.headers, name)));
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
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        431 => "Request Header Fields Too Large",
        499 => "Client Closed Request",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        505 => "HTTP Version Not Supported",
        508 => "Loop Detected",
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

#[cfg(test)]
mod tests;
