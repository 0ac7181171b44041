use expect_test::{Expect, expect};

use super::*;

fn check_route(json: &str, expected: Expect) {
    let actual = match serde_json::from_str::<Route>(json) {
        Ok(mut route) => match route.validate_for_write() {
            Ok(()) => format!("ok: {}", serde_json::to_string(&route).unwrap_or_default()),
            Err(e) => format!("invalid: {e}"),
        },
        Err(e) => format!("undecodable: {e}"),
    };
    expected.assert_eq(&actual);
}

#[test]
fn minimal_route() {
    check_route(
        r#"{"host":"web.example.com","service":"web"}"#,
        expect![[r#"ok: {"kind":"http","host":"web.example.com","service":"web"}"#]],
    );
}

#[test]
fn route_normalisation() {
    check_route(
        r#"{"host":"*.EXAMPLE.com","methods":["get"],"headers":[{"name":"X-A","present":true}],"service":"web"}"#,
        expect![[
            r#"ok: {"kind":"http","host":"*.example.com","methods":["GET"],"headers":[{"name":"x-a","present":true}],"service":"web"}"#
        ]],
    );
}

#[test]
fn route_rules() {
    check_route(
        r#"{"host":"*","service":"web"}"#,
        expect![[r#"ok: {"kind":"http","host":"*","service":"web"}"#]],
    );
    check_route(
        r#"{"host":"*.","service":"web"}"#,
        expect!["invalid: host: `*.` is not a host name"],
    );
    check_route(
        r#"{"host":"a..b","service":"web"}"#,
        expect![
            "invalid: host: `a..b` is not a host name (labels of a-z, 0-9 and '-'; a leading `*.` for any subdomain; no port)"
        ],
    );
    check_route(
        r#"{"host":"a.com","split":[{"service":"a","weight":0}]}"#,
        expect!["invalid: split: weights must not all be 0"],
    );
    check_route(
        r#"{"host":"a.com","service":"web","retry":{"attempts":11}}"#,
        expect!["invalid: retry.attempts: at most 10"],
    );
    check_route(
        r#"{"host":"a.com","service":"web","timeouts":{"request":"0s"}}"#,
        expect!["invalid: timeouts.request: must be greater than 0"],
    );
    check_route(
        r#"{"host":"a.com","service":"web","methods":["GE T"]}"#,
        expect!["invalid: methods: `GE T` is not an HTTP method token"],
    );
    check_route(
        r#"{"kind":"tcp","listen":"127.0.0.1:0","service":"db"}"#,
        expect!["invalid: listen: needs a port between 1 and 65535"],
    );
    // Framing and connection headers are the router's: a rewrite could smuggle.
    check_route(
        r#"{"host":"a.com","service":"web","request_headers":{"set":{"Content-Length":"0"}}}"#,
        expect![
            "invalid: request_headers.set.Content-Length: `Content-Length` frames the message or manages the connection; the router writes it, a route cannot rewrite it"
        ],
    );
    check_route(
        r#"{"host":"a.com","service":"web","response_headers":{"remove":["transfer-encoding"]}}"#,
        expect![
            "invalid: response_headers.remove: `transfer-encoding` frames the message or manages the connection; the router writes it, a route cannot rewrite it"
        ],
    );
    check_route(
        r#"{"host":"a.com","service":"web","response_headers":{"set":{"connection":"close"}}}"#,
        expect![
            "invalid: response_headers.set.connection: `connection` frames the message or manages the connection; the router writes it, a route cannot rewrite it"
        ],
    );
    check_route(
        r#"{"host":"a.com","service":"web","request_headers":{"remove":["Host"]}}"#,
        expect![
            "invalid: request_headers.remove: `host` cannot be removed: HTTP/1.1 requires it (set it to rewrite it)"
        ],
    );
    check_route(
        r#"{"host":"a.com","service":"web","request_headers":{"set":{"host":"a b"}}}"#,
        expect![[
            r#"invalid: request_headers.set.host: "a b" is not a host name (host or host:port)"#
        ]],
    );
    // A route stored before these rules still loads (validate); it is only refused when
    // written (validate_for_write).
    let mut stored: Route = serde_json::from_str(
        r#"{"host":"a.com","service":"web","request_headers":{"set":{"content-length":"0"}}}"#,
    )
    .expect("route");
    assert!(stored.validate().is_ok());
    assert!(stored.validate_for_write().is_err());
    check_route(
        r#"{"host":"a.com","service":"web","request_headers":{"set":{"host":"internal.svc:8080"}}}"#,
        expect![[
            r#"ok: {"kind":"http","host":"a.com","service":"web","request_headers":{"set":{"host":"internal.svc:8080"}}}"#
        ]],
    );
    check_route(
        r#"{"host":"a.com","service":"web","path":{"regex":"a{1000}{1000}"}}"#,
        expect![[r#"
            invalid: path.regex: invalid regex: Compiled regex exceeds size limit of 1048576 bytes."#]],
    );
}

#[test]
fn dns_labels() {
    assert!(validate_dns_label("service", "web-2").is_ok());
    assert!(validate_dns_label("service", &"a".repeat(63)).is_ok());
    assert_eq!(
        validate_dns_label("service", &"a".repeat(64)).map_err(|e| e.message),
        Err(format!(
            "`{}` is longer than 63 characters (a DNS label)",
            "a".repeat(64)
        ))
    );
    assert!(validate_dns_label("service", "").is_err());
    assert!(validate_dns_label("service", "web_2").is_err());
    assert!(validate_dns_label("service", "web-").is_err());
}

#[test]
fn instance_ids_are_safe_path_segments() {
    for good in ["web-1", "10.0.0.1_8080", "A.b-c_d"] {
        assert!(validate_id("instance id", good).is_ok(), "{good}");
    }
    for bad in ["", ".", "..", "a/b", "a b", "a%2f", &"x".repeat(129)] {
        assert!(validate_id("instance id", bad).is_err(), "{bad}");
    }
}

#[test]
fn instance_json_round_trips_and_ignores_unknown_fields_when_stored() {
    let spec: InstanceSpec =
        serde_json::from_str(r#"{"address":"10.0.0.1","port":80,"tags":["b","a","b"]}"#)
            .expect("valid spec");
    let instance = Instance::new("web", "w1", spec).expect("valid instance");
    assert_eq!(instance.spec.tags, ["a", "b"]);
    let json = serde_json::to_string(&instance).expect("encode");
    assert_eq!(
        json,
        r#"{"service":"web","id":"w1","address":"10.0.0.1","port":80,"tags":["a","b"],"health":"passing"}"#
    );
    // A newer strait may write fields this one does not know: stored records tolerate them.
    let newer = r#"{"service":"web","id":"w1","address":"10.0.0.1","port":80,"future":1}"#;
    let decoded: Instance = serde_json::from_str(newer).expect("tolerant decode");
    assert_eq!(decoded.spec.port, 80);
}

#[test]
fn tcp_routes_for_the_same_connections_overlap() {
    let tcp = |listen: &str, sni: Option<&str>| {
        let mut route: Route = serde_json::from_value(serde_json::json!({
            "kind": "tcp", "listen": listen, "service": "db", "sni": sni,
        }))
        .expect("route");
        route.validate().expect("valid");
        route
    };
    let plain = tcp("127.0.0.1:5432", None);
    assert!(plain.tcp_overlaps(&tcp("127.0.0.1:5432", None)));
    assert!(plain.tcp_overlaps(&tcp("0.0.0.0:5432", Some("a.example.com"))));
    assert!(
        plain.tcp_overlaps(&tcp("[::]:5432", None)),
        "[::] takes IPv4"
    );
    assert!(!plain.tcp_overlaps(&tcp("127.0.0.1:5433", None)));
    assert!(!plain.tcp_overlaps(&tcp("127.0.0.2:5432", None)));
    assert!(!plain.tcp_overlaps(&tcp("[::1]:5432", None)));
    assert!(!plain.tcp_overlaps(&tcp("127.0.0.1:5432", Some("a.example.com"))));
    let named = tcp("127.0.0.1:443", Some("a.example.com"));
    assert!(named.tcp_overlaps(&tcp("127.0.0.1:443", Some("a.example.com"))));
    assert!(!named.tcp_overlaps(&tcp("127.0.0.1:443", Some("b.example.com"))));
    let http: Route = serde_json::from_str(r#"{"host":"a.com","service":"web"}"#).expect("route");
    assert!(!plain.tcp_overlaps(&http));
}
