use std::collections::BTreeMap;
use std::sync::Arc;

use discovery::model::{Instance, InstanceSpec};
use discovery::snapshot::{Service, Snapshot};
use expect_test::{Expect, expect};
use http::HeaderMap;

use super::*;
use crate::config::RouterConfig;
use crate::front::parse_request;
use crate::pool::PoolStates;
use crate::table::{Table, compile};

/// A table with one route (`route_json`) to a service `web` with one instance.
fn table(route_json: &str) -> Table {
    let instance =
        Instance::new("web", "i1", InstanceSpec::new([127, 0, 0, 1].into(), 9000)).expect("valid");
    let mut service = Service::default();
    service.instances.insert(Arc::from("i1"), instance);
    let services = BTreeMap::from([(Arc::from("web"), Arc::new(service))]);
    let mut route: discovery::Route = serde_json::from_str(route_json).expect("route json");
    route.validate().expect("valid route");
    let snapshot = Snapshot {
        revision: 1,
        services: Arc::new(services),
        routes: Arc::new(BTreeMap::from([(Arc::from("r"), Arc::new(route))])),
        ..Snapshot::default()
    };
    compile(
        &snapshot,
        &RouterConfig::default(),
        &mut PoolStates::default(),
    )
}

fn upstream_head(route_json: &str, request: &str, client: &ClientInfo) -> String {
    let table = table(route_json);
    let mut storage = [httparse::EMPTY_HEADER; 32];
    let head = parse_request(request.as_bytes(), 32, &mut storage).expect("valid head");
    let route = table
        .route(
            head.host,
            head.path(),
            &http::Method::GET,
            &HeaderMap::new(),
        )
        .expect("routed");
    let mut out = Vec::new();
    let id = write_upstream_head(&mut out, &head, route, client, head.expect_continue);
    let mut text = String::from_utf8(out.clone()).expect("utf-8");
    // Generated ids are random: show their length instead.
    if !request.to_ascii_lowercase().contains("x-request-id: ") {
        text = text.replace(
            std::str::from_utf8(&out[id.clone()]).expect("id"),
            &format!("<{} hex digits>", id.len()),
        );
    }
    text
}

fn client_v4() -> ClientInfo {
    ClientInfo::new(Some([10, 0, 0, 9].into()), false)
}

#[test]
fn upstream_head_drops_hop_by_hop_and_adds_forwarding() {
    let text = upstream_head(
        r#"{"host":"a.com","service":"web"}"#,
        "GET /x?y=1 HTTP/1.1\r\nHost: a.com\r\nConnection: keep-alive, x-secret\r\nKeep-Alive: 5\r\nX-Secret: s\r\nTE: trailers\r\nAccept: */*\r\nX-Forwarded-For: 1.2.3.4\r\nX-Forwarded-For: 5.6.7.8\r\nX-Forwarded-Proto: gopher\r\nX-Forwarded-Host: evil\r\n\r\n",
        &client_v4(),
    );
    expect![[r#"
        GET /x?y=1 HTTP/1.1
        Host: a.com
        Accept: */*
        x-forwarded-for: 1.2.3.4, 5.6.7.8, 10.0.0.9
        forwarded: for=10.0.0.9;host="a.com";proto=http
        x-forwarded-proto: http
        x-forwarded-host: a.com
        x-request-id: <32 hex digits>

    "#]]
    .assert_eq(&text.replace("\r\n", "\n"));
}

/// A route stored before framing rewrites were refused still loads, but its rewrites of
/// framing headers (and a removal of `Host`) are ignored: the body keeps its framing.
#[test]
fn stored_framing_rewrites_are_ignored() {
    let text = upstream_head(
        r#"{"host":"a.com","service":"web",
            "request_headers":{"set":{"content-length":"0","x-env":"prod"},"remove":["host","transfer-encoding"]}}"#,
        "POST / HTTP/1.1\r\nHost: a.com\r\nContent-Length: 5\r\n\r\n",
        &client_v4(),
    );
    let text = text.replace("\r\n", "\n");
    assert!(text.contains("\nHost: a.com\n"), "{text}");
    assert!(text.contains("\nContent-Length: 5\n"), "{text}");
    assert!(!text.contains("content-length: 0"), "{text}");
    assert!(text.contains("\nx-env: prod\n"), "{text}");
}

#[test]
fn upstream_head_rewrites_and_route_headers() {
    let text = upstream_head(
        r#"{"host":"a.com","path":{"prefix":"/api/v1"},"service":"web","prefix_rewrite":"/",
            "request_headers":{"set":{"x-env":"prod"},"remove":["x-debug"]}}"#,
        "POST http://a.com/api/v1/users?q=2 HTTP/1.1\r\nHost: a.com\r\nX-Debug: 1\r\nX-Env: dev\r\nX-Request-Id: abc\r\nForwarded: for=1.1.1.1\r\nContent-Length: 0\r\nExpect: 100-continue\r\n\r\n",
        &ClientInfo::new(Some("::1".parse().expect("ip")), true),
    );
    expect![[r#"
        POST /users?q=2 HTTP/1.1
        Host: a.com
        Content-Length: 0
        x-forwarded-for: ::1
        forwarded: for=1.1.1.1, for="[::1]";host="a.com";proto=https
        x-forwarded-proto: https
        x-forwarded-host: a.com
        x-request-id: abc
        x-env: prod

    "#]]
    .assert_eq(&text.replace("\r\n", "\n"));
}

#[test]
fn upstream_head_passes_websocket_upgrades_but_not_h2c() {
    let route = r#"{"host":"a.com","service":"web"}"#;
    let websocket = upstream_head(
        route,
        "GET /ws HTTP/1.1\r\nHost: a.com\r\nConnection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n",
        &ClientInfo::new(None, false),
    );
    expect![[r#"
        GET /ws HTTP/1.1
        Host: a.com
        Sec-WebSocket-Key: k
        x-forwarded-proto: http
        x-forwarded-host: a.com
        x-request-id: <32 hex digits>
        connection: upgrade
        upgrade: websocket

    "#]]
    .assert_eq(&websocket.replace("\r\n", "\n"));
    let h2c = upstream_head(
        route,
        "GET / HTTP/1.1\r\nHost: a.com\r\nConnection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\n\r\n",
        &ClientInfo::new(None, false),
    );
    assert!(!h2c.to_ascii_lowercase().contains("upgrade"), "{h2c}");
    assert!(
        !h2c.to_ascii_lowercase().contains("http2-settings"),
        "{h2c}"
    );
}

fn response(text: &str, head_request: bool) -> String {
    let mut storage = [httparse::EMPTY_HEADER; 16];
    match parse_response(text.as_bytes(), &mut storage, head_request) {
        Ok(Some(r)) => format!(
            "{} {:?} keep-alive={} len={}",
            r.status, r.body, r.keep_alive, r.len
        ),
        Ok(None) => "partial".into(),
        Err(e) => format!("{e:?}"),
    }
}

#[test]
fn response_framing() {
    let check = |text: &str, head: bool, expected: Expect| {
        expected.assert_eq(&response(text, head));
    };
    check(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello",
        false,
        expect!["200 Length(5) keep-alive=true len=38"],
    );
    check(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
        true,
        expect!["200 None keep-alive=true len=38"],
    );
    check(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
        false,
        expect!["200 Chunked keep-alive=true len=47"],
    );
    check(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
        false,
        expect!["200 Chunked keep-alive=false len=66"],
    );
    check(
        "HTTP/1.1 200 OK\r\n\r\n",
        false,
        expect!["200 UntilClose keep-alive=false len=19"],
    );
    check(
        "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\n",
        false,
        expect!["200 Length(1) keep-alive=false len=38"],
    );
    check(
        "HTTP/1.1 204 No Content\r\n\r\n",
        false,
        expect!["204 None keep-alive=true len=27"],
    );
    check(
        "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
        false,
        expect!["304 None keep-alive=true len=48"],
    );
    check(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
        false,
        expect!["Length"],
    );
    check(
        "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        false,
        expect!["Length"],
    );
    check("HTTP/1.1 200 OK\r\nContent-Le", false, expect!["partial"]);
    check("SSH-2.0-OpenSSH\r\n\r\n", false, expect!["Malformed"]);
}

/// The head the client gets for `upstream`'s, with CRLF shown as LF.
fn downstream_head(upstream: &str, route: &CompiledRoute, shape: ResponseShape) -> String {
    let mut storage = [httparse::EMPTY_HEADER; 16];
    let parsed = parse_response(upstream.as_bytes(), &mut storage, false)
        .expect("valid")
        .expect("complete");
    let mut out = Vec::new();
    write_downstream_head(&mut out, &parsed, route, shape);
    String::from_utf8(out).expect("utf-8").replace("\r\n", "\n")
}

#[test]
fn downstream_head_drops_a_length_beside_transfer_encoding_and_keeps_a_101_upgrade() {
    let table = table(r#"{"host":"a.com","service":"web"}"#);
    let route = table
        .route("a.com", "/", &http::Method::GET, &HeaderMap::new())
        .expect("routed");
    let shape = ResponseShape {
        close: false,
        keep_alive_10: false,
        dechunk: false,
    };
    let render = |upstream: &str| downstream_head(upstream, route, shape);
    expect![[r#"
        HTTP/1.1 200 OK
        Transfer-Encoding: chunked

    "#]]
    .assert_eq(&render(
        "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n",
    ));
    expect![[r#"
        HTTP/1.1 101 Switching Protocols
        Upgrade: websocket
        Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=
        connection: upgrade

    "#]]
    .assert_eq(&render(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n\r\n",
    ));
}

#[test]
fn downstream_head_applies_route_headers_and_shape() {
    let table = table(
        r#"{"host":"a.com","service":"web","response_headers":{"set":{"x-served-by":"strait"},"remove":["x-internal"]}}"#,
    );
    let route = table
        .route("a.com", "/", &http::Method::GET, &HeaderMap::new())
        .expect("routed");
    let upstream = "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nConnection: keep-alive\r\nKeep-Alive: timeout=5\r\nX-Internal: 1\r\nX-Served-By: backend\r\nContent-Type: text/plain\r\n\r\n";
    let render = |shape: ResponseShape| downstream_head(upstream, route, shape);
    expect![[r#"
        HTTP/1.1 200 OK
        Transfer-Encoding: chunked
        Content-Type: text/plain
        x-served-by: strait

    "#]]
    .assert_eq(&render(ResponseShape {
        close: false,
        keep_alive_10: false,
        dechunk: false,
    }));
    expect![[r#"
        HTTP/1.1 200 OK
        Content-Type: text/plain
        x-served-by: strait
        connection: close

    "#]]
    .assert_eq(&render(ResponseShape {
        close: true,
        keep_alive_10: false,
        dechunk: true,
    }));
}

/// Runs `input` through a tracker in pieces of `step` bytes; returns the data and the
/// bytes consumed, or the error.
fn dechunk(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), BadChunk> {
    let mut chunked = Chunked::new();
    let mut data = Vec::new();
    let mut consumed = 0;
    for piece in input.chunks(step) {
        let n = chunked.advance(piece, |r| data.extend_from_slice(&piece[r]))?;
        consumed += n;
        if chunked.is_done() {
            break;
        }
    }
    Ok((data, consumed))
}

#[test]
fn chunked_bodies_end_where_they_should_in_any_split() {
    let body = b"5\r\nhello\r\n6;ext=1\r\n world\r\n0\r\nTrailer: x\r\n\r\nNEXT";
    for step in 1..=body.len() {
        let (data, consumed) = dechunk(body, step).expect("valid");
        assert_eq!(data, b"hello world", "step {step}");
        assert_eq!(
            consumed,
            body.len() - 4,
            "step {step}: stops before the next message"
        );
    }
}

#[test]
fn chunked_framing_errors() {
    let check = |input: &[u8], expected: Expect| {
        let actual = match dechunk(input, input.len()) {
            Ok((_, n)) => format!("ok {n}"),
            Err(BadChunk(reason)) => reason.to_string(),
        };
        expected.assert_eq(&actual);
    };
    check(b"0\r\n\r\n", expect!["ok 5"]);
    check(b"x\r\n", expect!["invalid chunk size"]);
    check(b"\r\n", expect!["invalid chunk size"]);
    check(b"5\nhello\r\n", expect!["invalid chunk size"]);
    check(
        b"3\r\nhello\r\n",
        expect!["chunk data longer than its size"],
    );
    check(b"10000000000000000\r\n", expect!["chunk size too large"]);
    check(b"0\r\nX: y\n\r\n", expect!["invalid trailer"]);
    check(b"0\r\n\rX", expect!["bare CR after last chunk"]);
    let long_extension = [b"1;".as_slice(), &[b'a'; 5000]].concat();
    check(&long_extension, expect!["chunk extension too long"]);
}

#[test]
fn arbitrary_chunked_input_never_panics() {
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..2000 {
        let len = (seed % 64) as usize;
        let bytes: Vec<u8> = (0..len)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                let alphabet = b"0123456789abcdefABCDEF;\r\n \tXYZ:";
                alphabet[(seed % alphabet.len() as u64) as usize]
            })
            .collect();
        let _ = dechunk(&bytes, 1 + (seed % 7) as usize);
    }
}

#[test]
fn dot_segments() {
    for path in [
        "/a/../b",
        "/..",
        "/a/./b",
        "/%2e%2E/x",
        "/.%2e",
        "/a/%2E",
        // Separators a backend may decode or normalise: %2f, backslash, %5c.
        "/public/%2e%2e%2fsecret",
        "/public/..%2Fsecret",
        "/public/x%2f..%2f..%2fsecret",
        "/public/..\\secret",
        "/public/x%5C..%5csecret",
        "/a%2f.",
        // Path parameters (Tomcat, Spring) and double encoding.
        "/public/..;/secret",
        "/public/..;x/secret",
        "/public/%252e%252e%252fsecret",
        "/public/..%252Fsecret",
    ] {
        assert!(has_dot_segment(path), "{path}");
    }
    for path in [
        "",
        "/",
        "//",
        "/a/b",
        "/...",
        "/a.b/c",
        "/.well-known/x",
        "/%2e%2e%2e",
        "/a%2fb/c",
        "/a%2f...%2fb",
        "/%",
        "/%2",
        "/x%2",
        "/100%",
        "/a;b/c",
        "/x..;/y",
        "/%25/%252",
        "/%252e%252e%252e",
    ] {
        assert!(!has_dot_segment(path), "{path}");
    }
}
