//! Host checks: what may go into forwarding headers, and the host a request is routed by.

/// `host[:port]` or `[v6]:port` made of the characters such names have.
pub fn is_plain_host(host: &str) -> bool {
    !host.is_empty()
        && host.len() <= 255
        && host.bytes().all(|b| {
            b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b':' | b'[' | b']' | b'_')
        })
}

/// Strips the port and a trailing dot.
pub fn normalize_host(host: &str) -> &str {
    let host = if host.starts_with('[') {
        // IPv6 literal: keep the brackets, drop the port.
        host.find(']').map_or(host, |end| &host[..=end])
    } else {
        host.rsplit_once(':').map_or(host, |(h, _)| h)
    };
    host.strip_suffix('.').unwrap_or(host)
}

/// The host a request is routed by: without port or trailing dot, lowercase (copied only
/// when it has uppercase letters).
pub fn routing_host(host: &str) -> std::borrow::Cow<'_, str> {
    let host = normalize_host(host);
    if host.bytes().any(|b| b.is_ascii_uppercase()) {
        std::borrow::Cow::Owned(host.to_ascii_lowercase())
    } else {
        std::borrow::Cow::Borrowed(host)
    }
}
