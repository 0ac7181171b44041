//! Header checks shared by every head: hop-by-hop names, `Connection` tokens, request
//! ids, and [`HeaderLookup`], the one view of request headers that route conditions and
//! hash keys read (a parsed head's headers or an `http::HeaderMap`).

use http::header::{HeaderMap, HeaderName, HeaderValue};

/// Whether the `Connection` headers among `headers` list `token` (case-insensitive).
pub fn connection_has(headers: &[httparse::Header<'_>], token: &str) -> bool {
    headers
        .iter()
        .filter(|h| h.name.eq_ignore_ascii_case("connection"))
        .flat_map(|h| h.value.split(|&b| b == b','))
        .any(|t| t.trim_ascii().eq_ignore_ascii_case(token.as_bytes()))
}

/// Headers that describe one connection, not the message: never forwarded (RFC 9110
/// section 7.6.1). `transfer-encoding` is not among them: bodies pass through verbatim,
/// framing included.
pub fn is_hop_by_hop(name: &str) -> bool {
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

/// Longest incoming `x-request-id` kept as is; others are replaced.
const MAX_REQUEST_ID: usize = 128;

/// Whether an incoming `x-request-id` is kept as is: printable ASCII, not too long.
pub fn is_valid_request_id(value: &[u8]) -> bool {
    !value.is_empty() && value.len() <= MAX_REQUEST_ID && value.iter().all(u8::is_ascii_graphic)
}

/// Request headers as route conditions and hash keys see them. Both a `HeaderMap`
/// (pingora's path, HTTP/2, `route explain`) and a parsed head's headers (the pump, no
/// copy) answer it.
pub trait HeaderLookup {
    /// The first value of header `name`.
    fn first(&self, name: &HeaderName) -> Option<&[u8]>;
    /// Every value of header `name` (case-insensitive), in order.
    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]>;
}

impl HeaderLookup for HeaderMap {
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        self.get(name).map(HeaderValue::as_bytes)
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.get_all(name).iter().map(HeaderValue::as_bytes)
    }
}

impl HeaderLookup for [httparse::Header<'_>] {
    fn first(&self, name: &HeaderName) -> Option<&[u8]> {
        self.iter()
            .find(|h| h.name.eq_ignore_ascii_case(name.as_str()))
            .map(|h| h.value)
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a [u8]> {
        self.iter()
            .filter(move |h| h.name.eq_ignore_ascii_case(name))
            .map(|h| h.value)
    }
}
