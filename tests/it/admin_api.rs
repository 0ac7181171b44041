//! The admin API contract: minimal bodies, every bad-input case, auth, health endpoints.

use std::time::Duration;

use expect_test::expect;

use crate::harness::{Strait, eventually, http, http_text};

#[test]
fn minimal_bodies_are_accepted_as_written() {
    let strait = Strait::builder().start();
    let (status, body) = strait.put(
        "/v1/services/web/instances/web-1",
        r#"{"address":"127.0.0.1","port":9000}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["health"], "passing", "documented default health");
    let (status, body) = strait.put(
        "/v1/routes/web",
        r#"{"host":"web.example.com","service":"web"}"#,
    );
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["kind"], "http");

    let (status, service) = strait.get("/v1/services/web");
    assert_eq!(status, 200);
    assert_eq!(service["instances"][0]["address"], "127.0.0.1");
    assert_eq!(service["instances"][0]["port"], 9000);
    assert_eq!(
        service["instances"][0]["weight"],
        serde_json::Value::Null,
        "default weight 1 is omitted"
    );

    let (_, routes) = strait.get("/v1/routes");
    assert_eq!(routes["routes"]["web"]["service"], "web");
    let (_, snapshot) = strait.get("/v1/snapshot");
    assert!(
        snapshot["revision"].as_u64().unwrap_or(0) >= 2,
        "{snapshot}"
    );
    assert_eq!(snapshot["connected"], true);
    assert_eq!(snapshot["backend"], "embedded");

    let (status, _) = strait.delete("/v1/services/web/instances/web-1");
    assert_eq!(status, 204);
    let (status, _) = strait.delete("/v1/routes/web");
    assert_eq!(status, 204);
    assert_eq!(strait.get("/v1/services/web").0, 404);
    assert_eq!(strait.get("/v1/routes/web").0, 404);
}

#[test]
fn full_instance_and_route_round_trip() {
    let strait = Strait::builder().start();
    let instance = r#"{"address":"::1","port":8443,"ports":{"grpc":9090},"zone":"eu-1","weight":5,
        "tags":["v2","canary","v2"],"metadata":{"build":"42"},"health":"warning"}"#;
    let (status, body) = strait.put("/v1/services/api/instances/api-7", instance);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["tags"],
        serde_json::json!(["canary", "v2"]),
        "tags sorted and de-duplicated"
    );
    let route = r#"{"host":"*.Example.com","path":{"prefix":"/api"},"methods":["get","POST"],
        "headers":[{"name":"X-Canary","exact":"1"}],"split":[{"service":"api","weight":90},{"service":"api-next","weight":10}],
        "timeouts":{"connect":"1s","request":"30s"},"retry":{"attempts":2,"on":["connect-failure","gateway-error"]},
        "prefix_rewrite":"/","request_headers":{"set":{"x-env":"prod"},"remove":["x-debug"]}}"#;
    let (status, body) = strait.put("/v1/routes/api", route);
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        body["host"], "*.example.com",
        "host normalised to lowercase"
    );
    assert_eq!(body["methods"], serde_json::json!(["GET", "POST"]));
    assert_eq!(body["headers"][0]["name"], "x-canary");
    let (_, stored) = strait.get("/v1/routes/api");
    assert_eq!(stored, body, "what is stored is what was returned");
    let tcp = r#"{"kind":"tcp","listen":"127.0.0.1:7000","sni":"db.example.com","service":"db"}"#;
    let (status, body) = strait.put("/v1/routes/db", tcp);
    assert_eq!(status, 200, "{body}");
    let (status, body) = strait.put(
        "/v1/services/api/instances/api-7/health",
        r#"{"health":"critical"}"#,
    );
    assert_eq!(status, 200, "{body}");
    let (_, instance) = strait.get("/v1/services/api/instances/api-7");
    assert_eq!(instance["health"], "critical");
}

/// Every bad input gets a 4xx and a JSON error saying what is wrong, and changes nothing.
#[test]
fn bad_input_gets_clear_errors() {
    let strait = Strait::builder().start();
    let cases: &[(&str, &str, Option<&str>)] = &[
        (
            "PUT",
            "/v1/services/web/instances/w1",
            Some(r#"{"address":"127.0.0.1","port":70000}"#),
        ),
        (
            "PUT",
            "/v1/services/web/instances/w1",
            Some(r#"{"address":"127.0.0.1","port":0}"#),
        ),
        (
            "PUT",
            "/v1/services/web/instances/w1",
            Some(r#"{"address":"localhost","port":80}"#),
        ),
        (
            "PUT",
            "/v1/services/web/instances/w1",
            Some(r#"{"address":"0.0.0.0","port":80}"#),
        ),
        (
            "PUT",
            "/v1/services/web/instances/w1",
            Some(r#"{"port":80}"#),
        ),
        (
            "PUT",
            "/v1/services/web/instances/w1",
            Some(r#"{"address":"127.0.0.1","port":80,"colour":"red"}"#),
        ),
        (
            "PUT",
            "/v1/services/web/instances/w1",
            Some(r#"{"address":"127.0.0.1","port":80"#),
        ),
        (
            "PUT",
            "/v1/services/web/instances/w1",
            Some(r#"{"address":"127.0.0.1","port":80} x"#),
        ),
        ("PUT", "/v1/services/web/instances/w1", Some("")),
        (
            "PUT",
            "/v1/services/web/instances/w1",
            Some(r#"{"address":"127.0.0.1","port":80,"health":"sick"}"#),
        ),
        (
            "PUT",
            "/v1/services/web/instances/w1",
            Some(r#"{"address":"127.0.0.1","port":80,"tags":["Bad Tag"]}"#),
        ),
        (
            "PUT",
            "/v1/services/web/instances/w1",
            Some(r#"{"address":"127.0.0.1","port":80,"weight":0}"#),
        ),
        (
            "PUT",
            "/v1/services/Web/instances/w1",
            Some(r#"{"address":"127.0.0.1","port":80}"#),
        ),
        (
            "PUT",
            "/v1/services/-web/instances/w1",
            Some(r#"{"address":"127.0.0.1","port":80}"#),
        ),
        (
            "PUT",
            "/v1/services/web/instances/a%2Fb",
            Some(r#"{"address":"127.0.0.1","port":80}"#),
        ),
        (
            "PUT",
            "/v1/services/web/instances/..",
            Some(r#"{"address":"127.0.0.1","port":80}"#),
        ),
        (
            "PUT",
            "/v1/services/web/instances/w1?lease=nope",
            Some(r#"{"address":"127.0.0.1","port":80}"#),
        ),
        ("PUT", "/v1/routes/web", Some(r#"{"service":"web"}"#)),
        (
            "PUT",
            "/v1/routes/web",
            Some(r#"{"host":"web.example.com"}"#),
        ),
        (
            "PUT",
            "/v1/routes/web",
            Some(
                r#"{"host":"web.example.com","service":"web","split":[{"service":"b","weight":1}]}"#,
            ),
        ),
        (
            "PUT",
            "/v1/routes/web",
            Some(r#"{"host":"web example","service":"web"}"#),
        ),
        (
            "PUT",
            "/v1/routes/web",
            Some(r#"{"host":"web.example.com:80","service":"web"}"#),
        ),
        (
            "PUT",
            "/v1/routes/web",
            Some(r#"{"host":"a.com","service":"web","path":{"regex":"("}}"#),
        ),
        (
            "PUT",
            "/v1/routes/web",
            Some(r#"{"host":"a.com","service":"web","path":{"prefix":"api"}}"#),
        ),
        (
            "PUT",
            "/v1/routes/web",
            Some(r#"{"host":"a.com","service":"web","path":{"glob":"/x"}}"#),
        ),
        (
            "PUT",
            "/v1/routes/web",
            Some(r#"{"host":"a.com","service":"web","headers":[{"name":"x"}]}"#),
        ),
        (
            "PUT",
            "/v1/routes/web",
            Some(r#"{"host":"a.com","service":"web","prefix_rewrite":"/v2"}"#),
        ),
        (
            "PUT",
            "/v1/routes/web",
            Some(r#"{"host":"a.com","service":"web","timeouts":{"connect":"soon"}}"#),
        ),
        (
            "PUT",
            "/v1/routes/web",
            Some(r#"{"host":"a.com","service":"web","request_headers":{"set":{"x":"a\r\nb"}}}"#),
        ),
        (
            "PUT",
            "/v1/routes/web",
            Some(r#"{"kind":"tcp","service":"db"}"#),
        ),
        (
            "PUT",
            "/v1/routes/web",
            Some(r#"{"kind":"tcp","listen":"127.0.0.1:7000","host":"a.com","service":"db"}"#),
        ),
        (
            "PUT",
            "/v1/routes/web",
            Some(r#"{"kind":"udp","service":"db"}"#),
        ),
        (
            "PUT",
            "/v1/routes/b%20d",
            Some(r#"{"host":"a.com","service":"web"}"#),
        ),
        (
            "PUT",
            "/v1/services/web/instances/nope/health",
            Some(r#"{"health":"critical"}"#),
        ),
        (
            "PUT",
            "/v1/services/web/instances/w1/health",
            Some(r#"{"health":"meh"}"#),
        ),
        ("POST", "/v1/leases", Some(r#"{"ttl":"10ms"}"#)),
        ("POST", "/v1/leases", Some(r#"{"ttl":"forever"}"#)),
        ("PUT", "/v1/leases/nope/renew", Some("")),
        ("DELETE", "/v1/services/web/instances/w1", None),
        ("DELETE", "/v1/routes/web", None),
        ("GET", "/v1/services/web", None),
        ("GET", "/v1/nothing", None),
    ];
    let mut report = String::new();
    for (method, path, body) in cases {
        let (status, response) = http(&strait, method, path, *body, None);
        assert!(
            (400..500).contains(&status),
            "{method} {path}: {status} {response}"
        );
        assert!(
            response["error"].is_string(),
            "{method} {path}: not a JSON error: {response}"
        );
        report.push_str(&format!(
            "{method} {path} -> {status} {}\n",
            response["message"].as_str().unwrap_or("?")
        ));
    }
    expect![[r#"
        PUT /v1/services/web/instances/w1 -> 400 invalid JSON body: field `port`: invalid value: integer `70000`, expected u16 at line 1 column 35
        PUT /v1/services/web/instances/w1 -> 400 port: must be between 1 and 65535
        PUT /v1/services/web/instances/w1 -> 400 invalid JSON body: field `address`: invalid IP address syntax at line 1 column 22
        PUT /v1/services/web/instances/w1 -> 400 address: `0.0.0.0` is unspecified; give the address peers connect to
        PUT /v1/services/web/instances/w1 -> 400 invalid JSON body: missing field `address` at line 1 column 11
        PUT /v1/services/web/instances/w1 -> 400 invalid JSON body: field `colour`: unknown field `colour`, expected one of `address`, `port`, `ports`, `zone`, `weight`, `tags`, `metadata`, `health` at line 1 column 41
        PUT /v1/services/web/instances/w1 -> 400 invalid JSON body: EOF while parsing an object at line 1 column 32
        PUT /v1/services/web/instances/w1 -> 400 invalid JSON body: trailing characters at line 1 column 35
        PUT /v1/services/web/instances/w1 -> 400 request body is empty; expected a JSON object
        PUT /v1/services/web/instances/w1 -> 400 invalid JSON body: field `health`: unknown variant `sick`, expected one of `passing`, `warning`, `critical`, `maintenance` at line 1 column 48
        PUT /v1/services/web/instances/w1 -> 400 tags: `Bad Tag` may contain only lowercase letters a-z, digits and '-'
        PUT /v1/services/web/instances/w1 -> 400 weight: must be between 1 and 65535
        PUT /v1/services/Web/instances/w1 -> 400 service: `Web` may contain only lowercase letters a-z, digits and '-'
        PUT /v1/services/-web/instances/w1 -> 400 service: `-web` must not start or end with '-'
        PUT /v1/services/web/instances/a%2Fb -> 400 a path segment decodes to `/`, NUL or bytes that are not UTF-8
        PUT /v1/services/web/instances/.. -> 400 instance id: `..` is not allowed
        PUT /v1/services/web/instances/w1?lease=nope -> 404 lease `nope` not found
        PUT /v1/routes/web -> 400 route `web`: host: an http route needs a host (`*` matches any)
        PUT /v1/routes/web -> 400 route `web`: service: a route needs `service` or a non-empty `split`
        PUT /v1/routes/web -> 400 route `web`: service: `service` and `split` are exclusive; use one
        PUT /v1/routes/web -> 400 route `web`: host: `web example` is not a host name (labels of a-z, 0-9 and '-'; a leading `*.` for any subdomain; no port)
        PUT /v1/routes/web -> 400 route `web`: host: `web.example.com:80` is not a host name (labels of a-z, 0-9 and '-'; a leading `*.` for any subdomain; no port)
        PUT /v1/routes/web -> 400 route `web`: path.regex: invalid regex: regex parse error:
            (
            ^
        error: unclosed group
        PUT /v1/routes/web -> 400 route `web`: path: `api` must start with '/'
        PUT /v1/routes/web -> 400 invalid JSON body: field `path`: unknown variant `glob`, expected one of `exact`, `prefix`, `regex` at line 1 column 46
        PUT /v1/routes/web -> 400 route `web`: headers[0]: needs exactly one of `exact`, `prefix`, `regex`, `present`
        PUT /v1/routes/web -> 400 route `web`: prefix_rewrite: needs a `prefix` path match to rewrite
        PUT /v1/routes/web -> 400 invalid JSON body: field `timeouts.connect`: invalid value: string "soon", expected a duration at line 1 column 60
        PUT /v1/routes/web -> 400 route `web`: request_headers.set.x: must not contain CR, LF or NUL
        PUT /v1/routes/web -> 400 route `web`: listen: a tcp route needs a listen address
        PUT /v1/routes/web -> 400 route `web`: kind: tcp routes match on `listen` and `sni` only; host, path, methods, headers, retry, prefix_rewrite and header rewrites are for http routes
        PUT /v1/routes/web -> 400 invalid JSON body: field `kind`: unknown variant `udp`, expected `http` or `tcp` at line 1 column 13
        PUT /v1/routes/b%20d -> 400 route name: `b d` may contain only letters, digits, '.', '_' and '-'
        PUT /v1/services/web/instances/nope/health -> 404 instance `web/nope` not found
        PUT /v1/services/web/instances/w1/health -> 400 invalid JSON body: field `health`: unknown variant `meh`, expected one of `passing`, `warning`, `critical`, `maintenance` at line 1 column 15
        POST /v1/leases -> 400 ttl 10ms is out of range: use 1s to 1day
        POST /v1/leases -> 400 invalid JSON body: field `ttl`: invalid value: string "forever", expected a duration at line 1 column 16
        PUT /v1/leases/nope/renew -> 404 lease `nope` not found
        DELETE /v1/services/web/instances/w1 -> 404 instance `web/w1` not found
        DELETE /v1/routes/web -> 404 route `web` not found
        GET /v1/services/web -> 404 service `web` not found
        GET /v1/nothing -> 404 no such admin endpoint; see docs/admin-api.md
    "#]].assert_eq(&report);
    let (_, snapshot) = strait.get("/v1/snapshot");
    assert_eq!(
        snapshot["services"],
        serde_json::json!({}),
        "bad input changed nothing"
    );
    assert_eq!(snapshot["routes"], serde_json::json!({}));
    assert_eq!(snapshot["revision"], 0);
}

#[test]
fn oversized_body_is_refused() {
    let strait = Strait::builder().start();
    let big = format!(
        r#"{{"address":"127.0.0.1","port":80,"metadata":{{"k":"{}"}}}}"#,
        "x".repeat(8 << 20)
    );
    let (status, body) = strait.put("/v1/services/web/instances/w1", &big);
    assert_eq!((status, body["error"].as_str()), (413, Some("too_large")));
    assert!(strait.instance_ids("web").is_empty());
}

/// Errors axum makes itself come in the API's JSON shape too.
#[test]
fn every_error_is_json() {
    let strait = Strait::builder().start();
    let (status, body) = http(
        &strait,
        "PUT",
        "/v1/services/web/instances/w1?leese=x",
        Some(r#"{"address":"127.0.0.1","port":80}"#),
        None,
    );
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid")),
        "{body}"
    );
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("leese")),
        "{body}"
    );
    let (status, body) = http(&strait, "POST", "/v1/routes/web", Some("{}"), None);
    assert_eq!(
        (status, body["error"].as_str()),
        (405, Some("method_not_allowed")),
        "{body}"
    );
    let (status, body) = http(&strait, "GET", "/v1/nothing", None, None);
    assert_eq!((status, body["error"].as_str()), (404, Some("not_found")));
}

#[test]
fn health_ready_and_metrics() {
    let strait = Strait::builder().start();
    assert_eq!(http_text(&strait.url("/healthz"), None).0, 200);
    assert_eq!(http_text(&strait.url("/readyz"), None).0, 200);
    strait.put(
        "/v1/services/web/instances/w1",
        r#"{"address":"127.0.0.1","port":80}"#,
    );
    strait.put(
        "/v1/services/web/instances/w2",
        r#"{"address":"127.0.0.1","port":81,"health":"critical"}"#,
    );
    strait.put(
        "/v1/routes/web",
        r#"{"host":"web.example.com","service":"web"}"#,
    );
    let text = strait.metrics_text();
    for name in [
        "strait_discovery_snapshot_revision 3",
        "strait_discovery_store_connected 1",
        "strait_discovery_watch_events_total 3",
        "strait_discovery_instances{state=\"passing\"} 1",
        "strait_discovery_instances{state=\"critical\"} 1",
        "strait_discovery_routes 1",
        "strait_discovery_snapshot_age_seconds 0",
        "strait_discovery_propagation_seconds_count 3",
    ] {
        assert!(
            text.lines().any(|l| l == name),
            "missing `{name}` in:\n{text}"
        );
    }
}

#[test]
fn token_protects_the_api() {
    let token = "s3cret-token-0123456789";
    let strait = Strait::builder().env("STRAIT_ADMIN_TOKEN", token).start();
    let (status, body) = strait.get("/v1/services");
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unauthorized");
    let (status, _) = http(
        &strait,
        "GET",
        "/v1/services",
        None,
        Some("wrong-token-0123456789"),
    );
    assert_eq!(status, 401);
    assert_eq!(http_text(&strait.url("/metrics"), None).0, 401);
    let (status, _) = http(&strait, "GET", "/v1/services", None, Some(token));
    assert_eq!(status, 200);
    assert_eq!(http_text(&strait.url("/metrics"), Some(token)).0, 200);
    // The scheme's case does not matter (RFC 9110), the token's does.
    let status_with = |authorization: String| {
        let output = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "-H"])
            .arg(authorization)
            .arg(strait.url("/v1/services"))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&output.stdout).into_owned()
    };
    assert_eq!(status_with(format!("Authorization: bearer {token}")), "200");
    assert_eq!(status_with(format!("Authorization: BEARER {token}")), "200");
    assert_eq!(
        status_with(format!("Authorization: Bearer {}", token.to_uppercase())),
        "401"
    );
    // Probes stay open for orchestrators.
    assert_eq!(http_text(&strait.url("/healthz"), None).0, 200);
    assert_eq!(http_text(&strait.url("/readyz"), None).0, 200);
}

#[test]
fn public_admin_address_requires_a_token() {
    let stderr = Strait::builder()
        .arg("--admin-addr")
        .arg("0.0.0.0:0")
        .start_expecting_failure();
    assert!(
        stderr.contains("is not loopback; set an admin token"),
        "{stderr}"
    );
}

#[test]
fn leases_expire_unless_renewed() {
    let strait = Strait::builder().start();
    let (status, lease) = http(&strait, "POST", "/v1/leases", Some(r#"{"ttl":"1s"}"#), None);
    assert_eq!(status, 201, "{lease}");
    let id = lease["id"].as_str().expect("lease id").to_string();
    let (status, body) = strait.put(
        &format!("/v1/services/web/instances/leased?lease={id}"),
        r#"{"address":"127.0.0.1","port":80}"#,
    );
    assert_eq!(status, 200, "{body}");
    strait.put(
        "/v1/services/web/instances/owned",
        r#"{"address":"127.0.0.1","port":81}"#,
    );
    // Renewing keeps it past several TTLs.
    for _ in 0..6 {
        std::thread::sleep(Duration::from_millis(300));
        let (status, _) = strait.put(&format!("/v1/leases/{id}/renew"), "");
        assert_eq!(status, 200);
    }
    assert_eq!(strait.instance_ids("web"), ["leased", "owned"]);
    // Stop renewing: the leased instance goes, the process-owned one stays.
    eventually(Duration::from_secs(5), "the lease to expire", || {
        let ids = strait.instance_ids("web");
        if ids == ["owned"] {
            Ok(())
        } else {
            Err(format!("{ids:?}"))
        }
    });
    assert_eq!(strait.put(&format!("/v1/leases/{id}/renew"), "").0, 404);
}

/// A client that never finishes its request head is cut off (slowloris), as the router
/// does it: the admin API shares the process's file descriptors with the router.
#[test]
fn an_unfinished_request_head_is_cut_off() {
    use std::io::{Read, Write};
    let strait = Strait::builder().start();
    let mut stream = std::net::TcpStream::connect(strait.admin).expect("connect");
    stream
        .write_all(b"GET /v1/routes HTTP/1.1\r\nHost: x\r\n")
        .expect("write");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    let started = std::time::Instant::now();
    let mut rest = Vec::new();
    // Closed (possibly after a 408): the read ends rather than timing out.
    let ended = stream.read_to_end(&mut rest).is_ok();
    let took = started.elapsed();
    assert!(
        ended && took < Duration::from_secs(15),
        "still open after {took:?}"
    );
    assert!(took >= Duration::from_secs(8), "cut off early: {took:?}");
    // A complete request still works on a new connection.
    assert_eq!(strait.get("/v1/routes").0, 200);
}

/// A second TCP route for the connections another already takes is refused (409), not
/// kept in the store and dropped, with a warning, at every table build.
#[test]
fn conflicting_tcp_routes_are_refused() {
    let strait = Strait::builder().start();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port();
    let tcp = |listen: &str, sni: &str| {
        format!(r#"{{"kind":"tcp","listen":"{listen}:{port}","service":"db"{sni}}}"#)
    };
    let put = |name: &str, body: &str| strait.put(&format!("/v1/routes/{name}"), body);
    assert_eq!(put("db", &tcp("127.0.0.1", "")).0, 200);
    // Rewriting the route itself is no conflict.
    assert_eq!(put("db", &tcp("127.0.0.1", "")).0, 200);
    for (name, body) in [
        ("same", tcp("127.0.0.1", "")),
        ("wildcard", tcp("0.0.0.0", r#","sni":"a.example.com""#)),
    ] {
        let (status, reply) = put(name, &body);
        assert_eq!(status, 409, "{name}: {reply}");
        assert_eq!(reply["error"], "conflict");
        assert!(
            reply["message"]
                .as_str()
                .is_some_and(|m| m.contains("route `db` already takes these connections")),
            "{reply}"
        );
    }
    // Another server name on the same address is another set of connections.
    assert_eq!(
        put("named", &tcp("127.0.0.1", r#","sni":"a.example.com""#)).0,
        200
    );
    assert_eq!(strait.get("/v1/routes/same").0, 404);
}
