//! The wire: HTTP/1 request and response heads, body framing, header, host and path
//! checks, the TLS ClientHello's server name, and HTTP/2's GOAWAY and RST_STREAM frames.
//! Synchronous, strict and never panicking
//! on any input; heads are parsed in place, borrowing the read buffer. The bottom layer
//! of the router: it imports nothing of the crate, so every layer above can use it and it
//! can be fuzzed alone (`fuzz/`).

pub mod client_hello;
pub mod framing;
pub mod h2_frames;
pub mod headers;
pub mod host;
pub mod path;
pub mod request;
pub mod response;

pub use framing::{BadChunk, Chunked, Framing};
pub use h2_frames::{ERROR_CODES, FrameScanner, H2Event, error_code_index};
pub use headers::{HeaderLookup, connection_has, is_hop_by_hop, is_valid_request_id};
pub use host::{is_plain_host, normalize_host, routing_host};
pub use path::has_dot_segment;
pub use request::{
    HeadLimits, Rejection, RequestHead, STACK_HEADERS, head_end, parse_request, validate_head,
};
pub use response::{BadResponse, RESPONSE_HEADERS, ResponseHead, parse_response};
