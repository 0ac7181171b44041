use std::collections::BTreeMap;
use std::sync::Arc;

use discovery::model::{Instance, InstanceSpec};
use discovery::snapshot::{Service, Snapshot};
use expect_test::expect;
use http::HeaderMap;

use super::*;
use crate::config::RouterConfig;
use crate::table::TableState;
use crate::table::{Table, compile};
use crate::wire::{parse_request, parse_response};

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
        &mut TableState::default(),
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
    let id = write_upstream_head(&mut out, &head, route, client, head.expect_continue, "");
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
