//! HTTP/2 abuse, on the wire: raw frames written to the router's h2c listener, the
//! router's GOAWAY or RST_STREAM read back with its error code (RFC 9113). Rapid reset
//! (CVE-2023-44487), a CONTINUATION flood, a window past 2^31-1, requests that break the
//! pseudo-header and field rules, and field blocks that do not decompress. After each,
//! the router still serves a new connection.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use crate::harness::{Strait, http_text};

const DATA: u8 = 0x0;
const HEADERS: u8 = 0x1;
const RST_STREAM: u8 = 0x3;
const SETTINGS: u8 = 0x4;
const GOAWAY: u8 = 0x7;
const WINDOW_UPDATE: u8 = 0x8;
const CONTINUATION: u8 = 0x9;

const END_STREAM: u8 = 0x1;
const END_HEADERS: u8 = 0x4;

const PROTOCOL_ERROR: u32 = 0x1;
const FLOW_CONTROL_ERROR: u32 = 0x3;
const CANCEL: u32 = 0x8;
const COMPRESSION_ERROR: u32 = 0x9;
const ENHANCE_YOUR_CALM: u32 = 0xb;

/// `GET / HTTP/2` for host `web`: HPACK static entries :method GET, :scheme http,
/// :path /, and a literal :authority.
const GET_HEAD: &[u8] = &[0x82, 0x86, 0x84, 0x41, 0x03, b'w', b'e', b'b'];

fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// What the router said to end a stream or the connection.
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    GoAway(u32),
    Reset {
        stream: u32,
        code: u32,
    },
    /// The connection closed (or went quiet) without either.
    Silent,
}

/// A connection with the client preface and an empty SETTINGS written.
fn connect(strait: &Strait) -> TcpStream {
    let mut conn = TcpStream::connect(strait.http).expect("connect");
    conn.set_read_timeout(Some(Duration::from_millis(500)))
        .expect("read timeout");
    let mut preface = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    preface.extend(frame(SETTINGS, 0, 0, &[]));
    conn.write_all(&preface).expect("preface");
    conn
}

/// The frames a connection reads, one at a time.
struct Frames<'c> {
    conn: &'c mut TcpStream,
    buf: Vec<u8>,
    deadline: Instant,
}

impl<'c> Frames<'c> {
    fn new(conn: &'c mut TcpStream) -> Self {
        Frames {
            conn,
            buf: Vec::new(),
            deadline: Instant::now() + Duration::from_secs(10),
        }
    }

    /// The next frame's type, stream and payload; `None` when the connection closes or
    /// 10 s pass.
    fn next(&mut self) -> Option<(u8, u32, Vec<u8>)> {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            if self.buf.len() >= 9 {
                let b = &self.buf;
                let len = (usize::from(b[0]) << 16) | (usize::from(b[1]) << 8) | usize::from(b[2]);
                if b.len() >= 9 + len {
                    let kind = b[3];
                    let stream = u32::from_be_bytes([b[5], b[6], b[7], b[8]]) & 0x7fff_ffff;
                    let payload = b[9..9 + len].to_vec();
                    self.buf.drain(..9 + len);
                    return Some((kind, stream, payload));
                }
            }
            if Instant::now() > self.deadline {
                return None;
            }
            match self.conn.read(&mut chunk) {
                Ok(0) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
                // A reset after the GOAWAY was sent but before it was read.
                Err(_) => return None,
            }
        }
    }
}

fn code(payload: &[u8]) -> u32 {
    u32::from_be_bytes([payload[0], payload[1], payload[2], payload[3]])
}

/// Reads frames until a GOAWAY, or an RST_STREAM when `stop_at_reset`.
fn verdict(conn: &mut TcpStream, stop_at_reset: bool) -> Verdict {
    let mut frames = Frames::new(conn);
    while let Some((kind, stream, payload)) = frames.next() {
        match kind {
            GOAWAY if payload.len() >= 8 => return Verdict::GoAway(code(&payload[4..])),
            RST_STREAM if stop_at_reset && payload.len() == 4 => {
                return Verdict::Reset {
                    stream,
                    code: code(&payload),
                };
            }
            _ => {}
        }
    }
    Verdict::Silent
}

/// The router still answers a fresh connection (any HTTP answer will do: no route is
/// configured, so 404).
fn still_serving(strait: &Strait) {
    let (status, body) = http_text(&format!("http://{}/", strait.http), None);
    assert_eq!(status, 404, "the router after the abuse: {body}");
}

/// RFC 9113 §4.3: a field block that does not decompress is a connection error of type
/// COMPRESSION_ERROR (h2 as released says PROTOCOL_ERROR; vendor/README.md).
#[test]
fn hpack_decoding_errors_are_compression_errors() {
    let strait = Strait::builder().start();
    let cases: [(&str, &[u8]); 3] = [
        // RFC 7541 §6.1: index 0 is a decoding error.
        ("indexed field 0", &[0x80]),
        // §2.3.3: past the static table (61) with an empty dynamic table.
        ("index 100", &[0x82, 0x86, 0x80 | 100]),
        // §5.1: an integer that never ends (a literal name's length).
        (
            "endless integer",
            &[0x40, 0x7f, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff],
        ),
    ];
    for (what, block) in cases {
        let mut conn = connect(&strait);
        conn.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
            .expect("write");
        assert_eq!(
            verdict(&mut conn, false),
            Verdict::GoAway(COMPRESSION_ERROR),
            "{what}"
        );
    }
    still_serving(&strait);
}

/// CVE-2023-44487: streams opened and reset at once, a thousand in one write. The router
/// ends the connection with ENHANCE_YOUR_CALM long before it has served them all.
#[test]
fn rapid_reset_gets_enhance_your_calm() {
    let strait = Strait::builder().start();
    let mut conn = connect(&strait);
    let mut flood = Vec::new();
    for i in 0..1000u32 {
        let stream = 1 + 2 * i;
        flood.extend(frame(HEADERS, END_HEADERS | END_STREAM, stream, GET_HEAD));
        flood.extend(frame(RST_STREAM, 0, stream, &CANCEL.to_be_bytes()));
    }
    // The router may close while the flood is still being written.
    let _ = conn.write_all(&flood);
    assert_eq!(
        verdict(&mut conn, false),
        Verdict::GoAway(ENHANCE_YOUR_CALM)
    );
    still_serving(&strait);
}

/// A header block that never ends: empty CONTINUATION frames cost the sender nothing;
/// the router counts them and gives up.
#[test]
fn continuation_flood_gets_enhance_your_calm() {
    let strait = Strait::builder().start();
    let mut conn = connect(&strait);
    let mut flood = frame(HEADERS, END_STREAM, 1, &GET_HEAD[..3]);
    for _ in 0..10_000 {
        flood.extend(frame(CONTINUATION, 0, 1, &[]));
    }
    let _ = conn.write_all(&flood);
    assert_eq!(
        verdict(&mut conn, false),
        Verdict::GoAway(ENHANCE_YOUR_CALM)
    );
    still_serving(&strait);
}

/// RFC 9113 §6.9.1: a window past 2^31-1 is a FLOW_CONTROL_ERROR, a connection error on
/// stream 0 and a stream error on a stream.
#[test]
fn window_overflow_is_a_flow_control_error() {
    let strait = Strait::builder().start();
    let max_increment = 0x7fff_ffffu32.to_be_bytes();

    let mut conn = connect(&strait);
    conn.write_all(&frame(WINDOW_UPDATE, 0, 0, &max_increment))
        .expect("write");
    assert_eq!(
        verdict(&mut conn, false),
        Verdict::GoAway(FLOW_CONTROL_ERROR)
    );

    let mut conn = connect(&strait);
    let mut bytes = frame(HEADERS, END_HEADERS, 1, GET_HEAD);
    bytes.extend(frame(WINDOW_UPDATE, 0, 1, &max_increment));
    conn.write_all(&bytes).expect("write");
    assert_eq!(
        verdict(&mut conn, true),
        Verdict::Reset {
            stream: 1,
            code: FLOW_CONTROL_ERROR
        }
    );
    // DATA on a stream the client itself closed: a stream error too (§5.1).
    let mut conn = connect(&strait);
    let mut bytes = frame(HEADERS, END_HEADERS | END_STREAM, 1, GET_HEAD);
    bytes.extend(frame(DATA, 0, 1, b"late"));
    conn.write_all(&bytes).expect("write");
    let late = verdict(&mut conn, true);
    assert!(
        matches!(
            late,
            Verdict::Reset { stream: 1, .. } | Verdict::GoAway(PROTOCOL_ERROR)
        ),
        "DATA after END_STREAM: {late:?}"
    );
    still_serving(&strait);
}

/// RFC 9113 §8.1.1, §8.2 and §8.3: malformed requests are PROTOCOL_ERROR. Those the
/// request layer sees are stream errors and the connection lives on; fields the HPACK
/// decoder itself refuses (an upper-case name, an unknown pseudo-header) end the
/// connection, as §5.4.1 allows, because the decoder stopped mid-block.
#[test]
fn malformed_requests_are_protocol_errors() {
    let strait = Strait::builder().start();
    // Literal field without indexing, new name: 0x00, name length, name, value length,
    // value.
    fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
        let mut out = vec![0x00, name.len() as u8];
        out.extend_from_slice(name);
        out.push(value.len() as u8);
        out.extend_from_slice(value);
        out
    }
    let with = |extra: Vec<u8>| [GET_HEAD, &extra].concat();
    let stream_error = Verdict::Reset {
        stream: 1,
        code: PROTOCOL_ERROR,
    };
    let connection_error = Verdict::GoAway(PROTOCOL_ERROR);
    let cases: Vec<(&str, Vec<u8>, &Verdict)> = vec![
        (
            "no :method",
            vec![0x86, 0x84, 0x41, 0x03, b'w', b'e', b'b'],
            &stream_error,
        ),
        (
            "a connection-specific field",
            with(literal(b"connection", b"keep-alive")),
            &stream_error,
        ),
        (
            "te other than trailers",
            with(literal(b"te", b"gzip")),
            &stream_error,
        ),
        (
            // :scheme https, late.
            "a pseudo-header after a regular field",
            with([literal(b"x-a", b"1"), vec![0x87]].concat()),
            &stream_error,
        ),
        ("a duplicated :path", with(vec![0x84]), &stream_error),
        (
            "an upper-case field name",
            with(literal(b"X-Big", b"1")),
            &connection_error,
        ),
        (
            "an unknown pseudo-header",
            with(literal(b":colour", b"red")),
            &connection_error,
        ),
    ];
    for (what, block, expected) in &cases {
        let mut conn = connect(&strait);
        conn.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 1, block))
            .expect("write");
        assert_eq!(&verdict(&mut conn, true), *expected, "{what}");
        if **expected == stream_error {
            // The connection lives on: a good request on it gets its answer (404, no
            // route), a HEADERS frame on stream 3.
            conn.write_all(&frame(HEADERS, END_HEADERS | END_STREAM, 3, GET_HEAD))
                .expect("write");
            assert!(answered(&mut conn, 3), "{what}: no answer after the reset");
        }
    }
    still_serving(&strait);
}

/// Whether a HEADERS frame comes back on `stream`.
fn answered(conn: &mut TcpStream, stream: u32) -> bool {
    let mut frames = Frames::new(conn);
    while let Some((kind, id, _)) = frames.next() {
        if kind == HEADERS && id == stream {
            return true;
        }
    }
    false
}
