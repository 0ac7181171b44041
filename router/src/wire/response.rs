//! Upstream response heads: parsed, with the body's framing decided as RFC 9112
//! section 6.3 says.

use super::framing::Framing;
use super::headers::connection_has;

/// Header slots for an upstream response head (on the stack).
pub const RESPONSE_HEADERS: usize = 256;

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

#[cfg(test)]
mod tests;
