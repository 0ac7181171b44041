//! The HTTP/1 pump's framing through `strait up`: chunked bodies both ways, HTTP/1.0
//! clients, `Expect: 100-continue`, pipelining, bodies that end with the connection, large
//! bodies, and backends that close pooled connections without saying so. The backends
//! here are scripted over raw sockets, so each one speaks exactly the framing under test.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use crate::harness::{Strait, eventually};
use crate::http::{Client, read_response};

/// A request as a scripted backend saw it, body de-chunked.
struct Seen {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(reader: &mut BufReader<TcpStream>) -> Option<Seen> {
    let mut line = String::new();
    if reader.read_line(&mut line).ok()? == 0 {
        return None;
    }
    let mut parts = line.split_whitespace();
    let (method, path) = (parts.next()?.to_string(), parts.next()?.to_string());
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).ok()?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':')?;
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let mut seen = Seen {
        method,
        path,
        headers,
        body: Vec::new(),
    };
    if seen
        .header("transfer-encoding")
        .is_some_and(|v| v.eq_ignore_ascii_case("chunked"))
    {
        loop {
            let mut size = String::new();
            reader.read_line(&mut size).ok()?;
            let size = usize::from_str_radix(size.trim().split(';').next()?, 16).ok()?;
            let mut chunk = vec![0; size + 2];
            reader.read_exact(&mut chunk).ok()?;
            if size == 0 {
                break;
            }
            seen.body.extend_from_slice(&chunk[..size]);
        }
    } else if let Some(length) = seen.header("content-length") {
        let mut body = vec![0; length.parse().ok()?];
        reader.read_exact(&mut body).ok()?;
        seen.body = body;
    }
    Some(seen)
}

/// A backend that answers each request with the bytes `answer` returns; when it returns
/// `close`, the connection is closed after the answer (without a `Connection: close`
/// unless the answer has one).
struct Scripted {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
}

impl Scripted {
    fn start(answer: fn(&Seen) -> (Vec<u8>, bool)) -> Scripted {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let addr = listener.local_addr().expect("addr");
        let connections = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&connections);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                counter.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let mut writer = stream.try_clone().expect("clone");
                    let mut reader = BufReader::new(stream);
                    while let Some(seen) = read_request(&mut reader) {
                        let (bytes, close) = answer(&seen);
                        if writer.write_all(&bytes).is_err() || close {
                            return;
                        }
                    }
                });
            }
        });
        Scripted { addr, connections }
    }
}

/// Declares service `<first label of host>` with the scripted backend as its one
/// instance, and a route for `host` to it; returns the service name.
fn declare<'h>(strait: &Strait, host: &'h str, backend: &Scripted) -> &'h str {
    let service = host.split('.').next().unwrap_or("svc");
    let (status, body) = strait.put(
        &format!("/v1/services/{service}/instances/{service}-1"),
        &format!(
            r#"{{"address":"127.0.0.1","port":{}}}"#,
            backend.addr.port()
        ),
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = strait.put(
        &format!("/v1/routes/{service}"),
        &format!(r#"{{"host":"{host}","service":"{service}"}}"#),
    );
    assert_eq!(status, 200, "{body}");
    service
}

/// Routes `host` to a scripted backend and waits until the route is live.
fn route_to(strait: &Strait, host: &str, backend: &Scripted) {
    declare(strait, host, backend);
    let mut client = Client::new(strait.http);
    eventually(
        Duration::from_secs(10),
        "the route to go live",
        || match client.get(host, "/ready") {
            Ok(r) if r.status != 404 && r.status != 503 => Ok(()),
            Ok(r) => Err(format!("{} {}", r.status, r.text())),
            Err(e) => Err(e.to_string()),
        },
    );
}

/// Echoes the de-chunked request body back as a chunked response, in 3-byte chunks.
fn chunked_echo(seen: &Seen) -> (Vec<u8>, bool) {
    let mut out = b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n".to_vec();
    out.extend_from_slice(format!("x-method: {}\r\n\r\n", seen.method).as_bytes());
    for chunk in seen.body.chunks(3) {
        out.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        out.extend_from_slice(chunk);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"0\r\n\r\n");
    (out, false)
}

fn connect(strait: &Strait) -> (TcpStream, BufReader<TcpStream>) {
    let stream = TcpStream::connect(strait.http).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let reader = BufReader::new(stream.try_clone().expect("clone"));
    (stream, reader)
}

#[test]
fn chunked_bodies_both_ways_streamed_and_for_http10_clients() {
    let strait = Strait::builder().start();
    let backend = Scripted::start(chunked_echo);
    route_to(&strait, "echo.example.com", &backend);

    // A chunked request body sent in pieces, with pauses: streamed upstream as it comes.
    let (mut stream, mut reader) = connect(&strait);
    stream
        .write_all(
            b"POST /up HTTP/1.1\r\nHost: echo.example.com\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n",
        )
        .expect("write");
    for piece in [&b"7;note=x\r\n, world\r\n"[..], b"1\r\n!\r\n", b"0\r\n\r\n"] {
        std::thread::sleep(Duration::from_millis(100));
        stream.write_all(piece).expect("write");
    }
    let (response, keep) = read_response(&mut reader).expect("response");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.text(), "hello, world!");
    assert_eq!(
        response
            .headers
            .get("transfer-encoding")
            .map(String::as_str),
        Some("chunked"),
        "the chunked response passes through"
    );
    assert!(keep, "the connection stays open");

    // The same connection again, the whole body in the first packet.
    stream
        .write_all(b"PUT /again HTTP/1.1\r\nHost: echo.example.com\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n")
        .expect("write");
    let (response, _) = read_response(&mut reader).expect("response");
    assert_eq!(response.text(), "abc");
    assert_eq!(
        response.headers.get("x-method").map(String::as_str),
        Some("PUT")
    );

    // An HTTP/1.0 client knows no chunked framing: it gets the data, ended by the close.
    let (mut stream, mut reader) = connect(&strait);
    stream
        .write_all(
            b"POST /old HTTP/1.0\r\nHost: echo.example.com\r\nContent-Length: 10\r\n\r\n0123456789",
        )
        .expect("write");
    let mut raw = String::new();
    reader.read_to_string(&mut raw).expect("read to close");
    let (head, body) = raw.split_once("\r\n\r\n").expect("a head");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        !head.to_ascii_lowercase().contains("transfer-encoding"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase().contains("connection: close"),
        "{head}"
    );
    assert_eq!(body, "0123456789");

    // Bad chunked framing from the client: 400, and the connection is closed.
    let (mut stream, mut reader) = connect(&strait);
    stream
        .write_all(b"POST / HTTP/1.1\r\nHost: echo.example.com\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n")
        .expect("write");
    let (response, keep) = read_response(&mut reader).expect("response");
    assert_eq!(response.status, 400, "{}", response.text());
    assert!(!keep);
}

#[test]
fn expect_continue_pipelining_and_large_bodies() {
    let strait = Strait::builder().start();
    let backend = Scripted::start(|seen| {
        let body: Vec<u8> = match seen.path.strip_prefix("/bytes/") {
            // A large body with a pattern the client can check.
            Some(n) => (0..n.parse::<usize>().unwrap_or(0))
                .map(|i| (i % 251) as u8)
                .collect(),
            None => format!("{} {} {}", seen.method, seen.path, seen.body.len()).into_bytes(),
        };
        let mut out = format!(
            "HTTP/1.1 200 OK\r\ncontent-length: {}\r\nx-expect: {}\r\n\r\n",
            body.len(),
            seen.header("expect").unwrap_or("none")
        )
        .into_bytes();
        out.extend_from_slice(&body);
        (out, false)
    });
    route_to(&strait, "big.example.com", &backend);

    // Expect: 100-continue: the router says continue, then forwards the body (without
    // asking the backend, which sees no Expect).
    let (mut stream, mut reader) = connect(&strait);
    stream
        .write_all(b"POST /upload HTTP/1.1\r\nHost: big.example.com\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
        .expect("write");
    let mut interim = String::new();
    reader.read_line(&mut interim).expect("interim line");
    assert_eq!(interim.trim_end(), "HTTP/1.1 100 Continue");
    let mut blank = String::new();
    reader.read_line(&mut blank).expect("blank");
    stream.write_all(b"12345").expect("body");
    let (response, _) = read_response(&mut reader).expect("response");
    assert_eq!(response.text(), "POST /upload 5");
    assert_eq!(
        response.headers.get("x-expect").map(String::as_str),
        Some("none")
    );

    // Three pipelined requests in one write: three answers, in order.
    stream
        .write_all(
            b"GET /one HTTP/1.1\r\nHost: big.example.com\r\n\r\nPOST /two HTTP/1.1\r\nHost: big.example.com\r\nContent-Length: 3\r\n\r\nabcGET /three HTTP/1.1\r\nHost: big.example.com\r\n\r\n",
        )
        .expect("write");
    for expected in ["GET /one 0", "POST /two 3", "GET /three 0"] {
        let (response, _) = read_response(&mut reader).expect("response");
        assert_eq!(response.text(), expected);
    }

    // A 4 MiB body, relayed in pieces, arrives intact; so does a 3 MiB upload.
    let (response, _) = {
        stream
            .write_all(b"GET /bytes/4194304 HTTP/1.1\r\nHost: big.example.com\r\n\r\n")
            .expect("write");
        read_response(&mut reader).expect("response")
    };
    assert_eq!(response.body.len(), 4 << 20);
    assert!(
        response
            .body
            .iter()
            .enumerate()
            .all(|(i, &b)| b == (i % 251) as u8),
        "the body is intact"
    );
    let upload = vec![7u8; 3 << 20];
    stream
        .write_all(
            format!(
                "PUT /blob HTTP/1.1\r\nHost: big.example.com\r\nContent-Length: {}\r\n\r\n",
                upload.len()
            )
            .as_bytes(),
        )
        .expect("write");
    stream.write_all(&upload).expect("upload");
    let (response, _) = read_response(&mut reader).expect("response");
    assert_eq!(response.text(), format!("PUT /blob {}", upload.len()));
}

#[test]
fn backends_that_close_connections_lose_no_request() {
    let strait = Strait::builder().start();
    // Says nothing about closing, then closes after every response: the router pools
    // the connection, finds it closed (or fails on it) and must use a fresh one.
    let closing = Scripted::start(|seen| {
        let body = format!("served {}", seen.path);
        (
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
            true,
        )
    });
    route_to(&strait, "flaky.example.com", &closing);
    let mut client = Client::new(strait.http);
    for i in 0..50 {
        let path = format!("/r{i}");
        let response = client.get("flaky.example.com", &path).expect("request");
        assert_eq!(response.status, 200, "request {i}: {}", response.text());
        assert_eq!(response.text(), format!("served {path}"));
    }
    assert!(
        closing.connections.load(Ordering::SeqCst) >= 50,
        "one connection per request"
    );

    // A response without length ends with the connection: passed on, then closed.
    let until_close = Scripted::start(|_| {
        (
            b"HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\n\r\nall of it".to_vec(),
            true,
        )
    });
    route_to(&strait, "stream.example.com", &until_close);
    let response = Client::new(strait.http)
        .get("stream.example.com", "/")
        .expect("request");
    assert_eq!(response.text(), "all of it");
    assert_eq!(
        response.headers.get("connection").map(String::as_str),
        Some("close")
    );

    // A backend that answers garbage, or closes before answering: 502, never a hang.
    let garbage = Scripted::start(|_| (b"NOT HTTP AT ALL\r\n\r\n".to_vec(), true));
    route_to_expecting(&strait, "garbage.example.com", &garbage, 502);
    let silent = Scripted::start(|_| (Vec::new(), true));
    route_to_expecting(&strait, "silent.example.com", &silent, 502);
}

/// Routes `host` to `backend` and waits until the route answers `status`.
fn route_to_expecting(strait: &Strait, host: &str, backend: &Scripted, status: u16) {
    let service = declare(strait, host, backend);
    let mut client = Client::new(strait.http);
    let response = eventually(
        Duration::from_secs(10),
        "the route to go live",
        || match client.get(host, "/") {
            Ok(r) if r.status == status => Ok(r),
            Ok(r) => Err(format!("{} {}", r.status, r.text())),
            Err(e) => Err(e.to_string()),
        },
    );
    assert!(response.text().contains(service), "{}", response.text());
}

/// Runs curl over h2c prior knowledge; returns (status, body).
fn curl_h2(args: &[&str], stdin: Option<&[u8]>) -> (String, Vec<u8>) {
    use std::process::{Command, Stdio};
    let mut child = Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-o",
            "-",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run curl");
    if let (Some(mut input), Some(bytes)) = (child.stdin.take(), stdin) {
        input.write_all(bytes).expect("stdin");
    }
    let output = child.wait_with_output().expect("curl output");
    let text = output.stdout;
    let split = text
        .iter()
        .rposition(|&b| b == b'\n')
        .expect("curl's status line");
    let status = String::from_utf8_lossy(&text[split + 1..]).to_string();
    (status, text[..split].to_vec())
}

/// HTTP/2 clients of HTTP/1 services: bodies with and without a length go up (the
/// latter chunked), chunked and large responses come back as data frames, intact.
#[test]
fn http2_clients_of_http1_services() {
    let strait = Strait::builder().start();
    let echo = Scripted::start(chunked_echo);
    route_to(&strait, "echo.example.com", &echo);
    let url = format!("http://{}/up", strait.http);

    // A body with a length.
    let (status, body) = curl_h2(
        &[
            "-H",
            "Host: echo.example.com",
            "--data-binary",
            "hello over h2",
            &url,
        ],
        None,
    );
    assert_eq!(status, "2 200");
    assert_eq!(body, b"hello over h2", "the chunked response is de-chunked");

    // A body of unknown length (from stdin): chunked upstream.
    let upload: Vec<u8> = (0..200_000u32).map(|i| (i % 253) as u8).collect();
    let (status, body) = curl_h2(
        &["-H", "Host: echo.example.com", "-T", "-", &url],
        Some(&upload),
    );
    assert_eq!(status, "2 200");
    assert_eq!(body.len(), upload.len());
    assert!(body == upload, "the streamed upload came back intact");

    // A large response with a length.
    let big = Scripted::start(|seen| {
        let n: usize = seen.path.trim_start_matches("/bytes/").parse().unwrap_or(0);
        let mut out = format!("HTTP/1.1 200 OK\r\ncontent-length: {n}\r\nconnection: keep-alive\r\nx-kind: big\r\n\r\n").into_bytes();
        out.extend((0..n).map(|i| (i % 251) as u8));
        (out, false)
    });
    route_to(&strait, "big.example.com", &big);
    let big_url = format!("http://{}/bytes/3000000", strait.http);
    let (status, body) = curl_h2(&["-H", "Host: big.example.com", &big_url], None);
    assert_eq!(status, "2 200");
    assert_eq!(body.len(), 3_000_000);
    assert!(
        body.iter().enumerate().all(|(i, &b)| b == (i % 251) as u8),
        "the body is intact"
    );
    // HTTP/2 cookie crumbs reach an HTTP/1.1 backend as one header (RFC 9113 8.2.3),
    // with the `Host` taken from `:authority`.
    let headers = Scripted::start(|seen| {
        let cookies: Vec<&str> = seen
            .headers
            .iter()
            .filter(|(k, _)| k.eq_ignore_ascii_case("cookie"))
            .map(|(_, v)| v.as_str())
            .collect();
        let body = format!(
            "cookies={cookies:?} host={:?}",
            seen.header("host").unwrap_or("")
        );
        (
            format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            )
            .into_bytes(),
            false,
        )
    });
    route_to(&strait, "headers.example.com", &headers);
    let (status, body) = curl_h2(
        &[
            "-H",
            "Host: headers.example.com",
            "-H",
            "cookie: a=1",
            "-H",
            "cookie: b=2",
            &format!("http://{}/", strait.http),
        ],
        None,
    );
    assert_eq!(status, "2 200");
    assert_eq!(
        String::from_utf8_lossy(&body),
        r#"cookies=["a=1; b=2"] host="headers.example.com""#
    );

    // Connection-specific headers are not passed to an HTTP/2 client.
    let output = std::process::Command::new("curl")
        .args([
            "-s",
            "-D",
            "-",
            "-o",
            "/dev/null",
            "--http2-prior-knowledge",
        ])
        .args(["-H", "Host: big.example.com"])
        .arg(format!("http://{}/bytes/10", strait.http))
        .output()
        .expect("curl");
    let head = String::from_utf8_lossy(&output.stdout).to_ascii_lowercase();
    assert!(head.starts_with("http/2 200"), "{head}");
    assert!(head.contains("x-kind: big"), "{head}");
    assert!(!head.contains("connection:"), "{head}");
}

/// Upstream responses are network input too: a backend answering with malformed,
/// truncated or contradictory framing, over and over, never panics the router, and the
/// router keeps serving.
#[test]
fn hostile_upstream_responses_never_panic_the_router() {
    let strait = Strait::builder().start();
    static CASE: AtomicUsize = AtomicUsize::new(0);
    let hostile = Scripted::start(|_| {
        let case = CASE.fetch_add(1, Ordering::SeqCst);
        // A small deterministic generator over pieces of response syntax.
        let mut seed = (case as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
        let mut next = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            (seed % n) as usize
        };
        let status = [
            "HTTP/1.1 200 OK",
            "HTTP/1.1 101 Switching",
            "HTTP/1.1 100 Continue",
            "HTTP/1.0 204 x",
            "HTTP/1.1 999 x",
            "HTTP/2 200",
            "HTTP/1.1 200",
            "garbage",
        ];
        let headers = [
            "content-length: 5",
            "content-length: 99999999",
            "content-length: -1",
            "content-length: 5\r\ncontent-length: 6",
            "transfer-encoding: chunked",
            "transfer-encoding: gzip, chunked",
            "transfer-encoding: identity",
            "connection: close",
            "x: \u{1}",
            "bad header line",
            "",
        ];
        let bodies = [
            "hello",
            "5\r\nhello\r\n0\r\n\r\n",
            "ffffffffffffffffff\r\n",
            "5\r\nhel",
            "0\r\nx: y\r\n\r\n",
            "",
            "HTTP/1.1 200 OK\r\ncontent-length: 0\r\n\r\n",
        ];
        let mut out = String::from(status[next(status.len() as u64)]);
        out.push_str("\r\n");
        for _ in 0..next(4) {
            out.push_str(headers[next(headers.len() as u64)]);
            out.push_str("\r\n");
        }
        if next(5) > 0 {
            out.push_str("\r\n");
        }
        out.push_str(bodies[next(bodies.len() as u64)]);
        let mut bytes = out.into_bytes();
        bytes.truncate(bytes.len().saturating_sub(next(3)));
        (bytes, true)
    });
    route_to_expecting_any(&strait, "hostile.example.com", &hostile);
    let started = std::time::Instant::now();
    for i in 0..150 {
        // Any answer or a closed connection will do; what matters is what follows. The
        // router closes the connection after each answer (`Connection: close`).
        let (mut stream, mut reader) = connect(&strait);
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        let request =
            format!("GET /{i} HTTP/1.1\r\nHost: hostile.example.com\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).expect("write");
        let mut answer = Vec::new();
        let _ = reader.read_to_end(&mut answer);
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "the router answered or closed promptly: {:?}",
        started.elapsed()
    );
    // Still serving, and nothing panicked.
    let echo = Scripted::start(chunked_echo);
    route_to(&strait, "echo.example.com", &echo);
    let log = strait.log_text();
    assert!(!log.contains("panicked"), "{log}");
}

/// Routes `host` to `backend` without waiting for any particular answer.
fn route_to_expecting_any(strait: &Strait, host: &str, backend: &Scripted) {
    declare(strait, host, backend);
    let mut client = Client::new(strait.http);
    eventually(
        Duration::from_secs(10),
        "the route to go live",
        || match client.get(host, "/probe") {
            Ok(r) if r.status == 404 => Err("no route yet".to_string()),
            _ => Ok(()),
        },
    );
}

/// A response whose chunked body is malformed from its first bytes: nothing has reached
/// the client yet, so it gets a 502 (not an empty reply, logged as a 200).
#[test]
fn a_malformed_body_before_any_byte_is_sent_is_a_502() {
    let strait = Strait::builder().start();
    let broken = Scripted::start(|_| {
        (
            b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\nzz\r\nhello\r\n".to_vec(),
            true,
        )
    });
    route_to_expecting(&strait, "broken.example.com", &broken, 502);
    let mut client = Client::new(strait.http);
    let response = client.get("broken.example.com", "/").expect("an answer");
    assert_eq!(response.status, 502, "{}", response.text());
}

/// A client that writes its whole request body before reading (as many do) gets the
/// answer the router sent without reading the body: the connection lingers, draining what
/// comes, instead of closing on unread bytes (which resets it and loses the response).
#[test]
fn early_answers_reach_clients_still_sending_their_body() {
    let strait = Strait::builder().start();
    let body = vec![b'x'; 8 << 20];
    for (what, head, status) in [
        (
            "no route for the host",
            format!(
                "POST /upload HTTP/1.1\r\nHost: nowhere.example\r\nContent-Length: {}\r\n\r\n",
                body.len()
            ),
            "HTTP/1.1 404",
        ),
        (
            "a length beside chunked framing",
            format!(
                "POST /upload HTTP/1.1\r\nHost: nowhere.example\r\nContent-Length: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
                body.len()
            ),
            "HTTP/1.1 400",
        ),
    ] {
        let mut conn = TcpStream::connect(strait.http).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(10)))
            .expect("timeout");
        conn.write_all(head.as_bytes()).expect("head");
        conn.write_all(&body)
            .unwrap_or_else(|e| panic!("{what}: the body could not be sent: {e}"));
        let mut response = Vec::new();
        let _ = conn.read_to_end(&mut response);
        let text = String::from_utf8_lossy(&response);
        assert!(text.starts_with(status), "{what}: {text:?}");
    }
}
