//! The router through `strait up`: real backends, real clients, routes and instances
//! changed through the admin API while traffic flows.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::harness::{Strait, eventually};
use crate::http::{Backend, Client, raw};

fn register(strait: &Strait, service: &str, id: &str, backend: &Backend) {
    let (status, body) = strait.put(
        &format!("/v1/services/{service}/instances/{id}"),
        &backend.instance(),
    );
    assert_eq!(status, 200, "{body}");
}

fn route(strait: &Strait, name: &str, json: &str) {
    let (status, body) = strait.put(&format!("/v1/routes/{name}"), json);
    assert_eq!(status, 200, "{body}");
}

/// A backend named `web` behind the route `web.example.com`, live on `strait`.
fn serve_web(strait: &Strait) -> Backend {
    let backend = Backend::start("web");
    register(strait, "web", "web-1", &backend);
    route(
        strait,
        "web",
        r#"{"host":"web.example.com","service":"web"}"#,
    );
    wait_backend(strait, "web.example.com", "/", "web");
    backend
}

/// Waits until `host` + `path` is answered by `backend`.
fn wait_backend(strait: &Strait, host: &str, path: &str, backend: &str) {
    let mut client = Client::new(strait.http);
    eventually(
        Duration::from_secs(10),
        &format!("{host}{path} to reach {backend}"),
        || {
            let response = client.get(host, path).map_err(|e| e.to_string())?;
            match response.backend() {
                Some(b) if b == backend => Ok(()),
                _ => Err(format!("{} {}", response.status, response.text())),
            }
        },
    );
}

#[test]
fn routes_by_host_path_header_and_method() {
    let strait = Strait::builder().start();
    let backends: BTreeMap<&str, Backend> = ["web", "api", "canary", "wild", "any", "posts"]
        .into_iter()
        .map(|name| (name, Backend::start(name)))
        .collect();
    for (name, backend) in &backends {
        register(&strait, name, &format!("{name}-1"), backend);
    }
    route(
        &strait,
        "web",
        r#"{"host":"web.example.com","service":"web"}"#,
    );
    route(
        &strait,
        "api",
        r#"{"host":"web.example.com","path":{"prefix":"/api"},"service":"api"}"#,
    );
    route(
        &strait,
        "canary",
        r#"{"host":"web.example.com","path":{"prefix":"/api"},"headers":[{"name":"x-canary","exact":"1"}],"service":"canary"}"#,
    );
    route(
        &strait,
        "posts",
        r#"{"host":"web.example.com","path":{"exact":"/api/posts"},"methods":["POST"],"service":"posts"}"#,
    );
    route(
        &strait,
        "wild",
        r#"{"host":"*.example.com","service":"wild"}"#,
    );
    route(
        &strait,
        "any",
        r#"{"host":"*","path":{"prefix":"/only"},"service":"any"}"#,
    );
    wait_backend(&strait, "web.example.com", "/", "web");

    let mut client = Client::new(strait.http);
    let mut via = |method: &str, host: &str, path: &str, headers: &[(&str, &str)]| {
        let response = client
            .request(method, host, path, headers, b"")
            .expect("request");
        response
            .backend()
            .unwrap_or_else(|| format!("{} {}", response.status, response.text().trim()))
    };
    assert_eq!(via("GET", "web.example.com", "/", &[]), "web");
    assert_eq!(
        via("GET", "WEB.Example.COM:8080", "/index.html", &[]),
        "web",
        "host is case-insensitive, port ignored"
    );
    assert_eq!(via("GET", "web.example.com", "/api", &[]), "api");
    assert_eq!(via("GET", "web.example.com", "/api/users?x=1", &[]), "api");
    assert_eq!(
        via("GET", "web.example.com", "/apix", &[]),
        "web",
        "prefixes match whole segments"
    );
    assert_eq!(
        via("GET", "web.example.com", "/api/x", &[("x-canary", "1")]),
        "canary"
    );
    assert_eq!(
        via("GET", "web.example.com", "/api/x", &[("x-canary", "2")]),
        "api"
    );
    assert_eq!(via("POST", "web.example.com", "/api/posts", &[]), "posts");
    assert_eq!(via("GET", "web.example.com", "/api/posts", &[]), "api");
    assert_eq!(via("GET", "a.b.example.com", "/", &[]), "wild");
    assert_eq!(
        via("GET", "example.com", "/only/this", &[]),
        "any",
        "apex is not in *.example.com"
    );
    assert_eq!(via("GET", "other.org", "/only", &[]), "any");
    assert_eq!(
        via("GET", "other.org", "/", &[]),
        "404 no route for host \"other.org\""
    );
    // Counted, as Envoy's `no_route`: a bad DNS or Host rollout shows in the metrics.
    assert!(
        strait
            .metrics_text()
            .lines()
            .any(|l| l.starts_with("strait_router_rejected_requests_total{reason=\"no_route\"} ")),
        "no_route not counted"
    );
    assert_eq!(
        via("GET", "web.example.com", "/api/../admin", &[]),
        "400 request path has dot segments",
        "dot segments could escape a prefix at a normalizing backend"
    );
    assert_eq!(
        via("GET", "web.example.com", "/api/%2E%2e/admin", &[]),
        "400 request path has dot segments"
    );
    // An encoded slash (or a backslash) is a separator to many backends.
    for path in ["/api/..%2Fadmin", "/api/%2e%2e%2fadmin", "/api/..%5cadmin"] {
        assert_eq!(
            via("GET", "web.example.com", path, &[]),
            "400 request path has dot segments",
            "{path}"
        );
    }
}

#[test]
fn no_healthy_instance_is_503_and_health_changes_apply() {
    let strait = Strait::builder().start();
    let backend = Backend::start("web");
    register(&strait, "web", "web-1", &backend);
    route(
        &strait,
        "web",
        r#"{"host":"web.example.com","service":"web"}"#,
    );
    route(
        &strait,
        "ghost",
        r#"{"host":"ghost.example.com","service":"ghost"}"#,
    );
    wait_backend(&strait, "web.example.com", "/", "web");
    let mut client = Client::new(strait.http);
    let response = client.get("ghost.example.com", "/").expect("request");
    assert_eq!(response.status, 503);
    assert_eq!(
        response.text(),
        "no healthy instance of service \"ghost\"\n"
    );

    strait.put(
        "/v1/services/web/instances/web-1/health",
        r#"{"health":"critical"}"#,
    );
    eventually(
        Duration::from_secs(10),
        "critical instance to leave the pool",
        || {
            let response = client
                .get("web.example.com", "/")
                .map_err(|e| e.to_string())?;
            if response.status == 503 {
                Ok(())
            } else {
                Err(response.status.to_string())
            }
        },
    );
    strait.put(
        "/v1/services/web/instances/web-1/health",
        r#"{"health":"passing"}"#,
    );
    wait_backend(&strait, "web.example.com", "/", "web");
}

#[test]
fn weighted_split_within_tolerance() {
    let strait = Strait::builder().start();
    let stable = Backend::start("stable");
    let canary = Backend::start("canary");
    register(&strait, "stable", "s-1", &stable);
    register(&strait, "canary", "c-1", &canary);
    route(
        &strait,
        "web",
        r#"{"host":"web.example.com","split":[{"service":"stable","weight":80},{"service":"canary","weight":20}]}"#,
    );
    wait_backend(&strait, "web.example.com", "/", "stable");
    let mut client = Client::new(strait.http);
    let n = 2000;
    let canary_hits = (0..n)
        .filter(|_| {
            client
                .get("web.example.com", "/")
                .expect("request")
                .backend()
                .as_deref()
                == Some("canary")
        })
        .count();
    let share = canary_hits as f64 / n as f64;
    assert!(
        (0.16..=0.24).contains(&share),
        "canary share {share} (expected 0.20 ± 0.04)"
    );
}

#[test]
fn connect_failures_retry_elsewhere_and_eject() {
    let strait = Strait::builder().start();
    let good = Backend::start("good");
    let dead = Backend::start("dead");
    register(&strait, "web", "good", &good);
    register(&strait, "web", "dead", &dead);
    dead.kill();
    route(
        &strait,
        "web",
        r#"{"host":"web.example.com","service":"web"}"#,
    );
    wait_backend(&strait, "web.example.com", "/", "good");
    let mut client = Client::new(strait.http);
    for i in 0..200 {
        let response = client.get("web.example.com", "/").expect("request");
        assert_eq!(response.status, 200, "request {i}: {}", response.text());
    }
    let ejections = strait
        .metric("strait_router_ejections_total{service=\"web\"}")
        .unwrap_or(0.0);
    assert!(
        ejections >= 1.0,
        "the dead instance was ejected:\n{}",
        strait.metrics_text()
    );
    assert!(
        strait
            .metric("strait_router_retries_total{service=\"web\"}")
            .unwrap_or(0.0)
            >= 1.0
    );
}

/// Service `web` of a good instance and one answering `failing_status` (0: closing
/// unanswered) behind `web.example.com`, a route that retries gateway errors. Outlier
/// ejection is off, so the failing instance stays in the pool.
fn good_and_failing(failing_status: u16) -> (Strait, Backend, Backend) {
    let strait = Strait::builder()
        .config("[router.outlier]\nconsecutive_failures = 0\n")
        .start();
    let good = Backend::start("good");
    let failing = Backend::start("failing");
    failing.set_status(failing_status);
    register(&strait, "web", "good", &good);
    register(&strait, "web", "failing", &failing);
    route(
        &strait,
        "web",
        r#"{"host":"web.example.com","service":"web","retry":{"attempts":2,"on":["gateway-error"]}}"#,
    );
    wait_backend(&strait, "web.example.com", "/", "good");
    (strait, good, failing)
}

#[test]
fn gateway_errors_retry_idempotent_requests_only() {
    let (strait, _good, _bad) = good_and_failing(503);
    let mut client = Client::new(strait.http);
    for i in 0..100 {
        let response = client.get("web.example.com", "/").expect("request");
        assert_eq!(
            response.status, 200,
            "GET {i} should be retried onto the good instance"
        );
    }
    // POST is not idempotent: a 503 from the bad instance passes through.
    let statuses: Vec<u16> = (0..60)
        .map(|_| {
            client
                .request("POST", "web.example.com", "/", &[], b"x")
                .expect("post")
                .status
        })
        .collect();
    assert!(
        statuses.contains(&503),
        "POSTs must not be retried: {statuses:?}"
    );
}

/// An instance that takes requests and closes the connection unanswered (crashing on
/// them): the client would get a 502 from strait, so a route retrying gateway errors
/// retries idempotent requests elsewhere; without that policy, or for a POST, the 502
/// reaches the client.
#[test]
fn unanswered_requests_retry_like_gateway_errors() {
    let (strait, _good, crashing) = good_and_failing(0);
    route(
        &strait,
        "plain",
        r#"{"host":"plain.example.com","service":"web"}"#,
    );
    wait_backend(&strait, "plain.example.com", "/", "good");
    let mut client = Client::new(strait.http);
    for i in 0..100 {
        let response = client.get("web.example.com", "/").expect("request");
        assert_eq!(response.status, 200, "GET {i}: {}", response.text());
    }
    assert!(
        crashing.served() > 10,
        "the crashing instance got no requests"
    );
    // The same for HTTP/2 clients, one h2c request per curl (curl 7.88 fails any later
    // request on a reused prior-knowledge connection, to nginx as well).
    let url = format!("http://{}/h2", strait.http);
    let crashed_before = crashing.served();
    for i in 0..30 {
        let output = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--http2-prior-knowledge"])
            .args([
                "-H",
                "Host: web.example.com",
                "-w",
                "%{http_version} %{http_code}",
            ])
            .arg(&url)
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&output.stdout);
        assert_eq!(text, "2 200", "HTTP/2 GET {i}");
    }
    assert!(
        crashing.served() > crashed_before,
        "no HTTP/2 request reached the crashing instance"
    );
    posts_and_routes_without_a_policy_are_not_retried(&mut client, 60);
}

/// `tries` statuses of `method` requests to `host`.
fn statuses(client: &mut Client, method: &str, host: &str, tries: usize) -> Vec<u16> {
    (0..tries)
        .map(|_| {
            client
                .request(method, host, "/", &[], b"x")
                .expect("request")
                .status
        })
        .collect()
}

/// With one instance failing: POSTs on `web.example.com` (a route that retries gateway
/// errors) and GETs on `plain.example.com` (no retry policy) see its 502s.
fn posts_and_routes_without_a_policy_are_not_retried(client: &mut Client, tries: usize) {
    let posts = statuses(client, "POST", "web.example.com", tries);
    assert!(posts.contains(&502), "POSTs must not be retried: {posts:?}");
    let plain = statuses(client, "GET", "plain.example.com", tries);
    assert!(plain.contains(&502), "no retry policy, no retry: {plain:?}");
}

/// The listener's idle timeout closes a keep-alive connection that sends nothing, also
/// once it is parked without a task (after a second idle): cleanly (end of stream), a
/// little after the timeout (the parked connections are looked at every 250 ms), not
/// before; the open-connections gauge counts it until then.
#[test]
fn idle_timeout_closes_parked_keep_alive_connections() {
    use std::io::{Read, Write};
    let strait = Strait::builder()
        .config("[router]\nidle_timeout = \"2500ms\"\n")
        .start();
    let backend = Backend::start("web");
    strait.put("/v1/services/web/instances/w1", &backend.instance());
    route(
        &strait,
        "web",
        r#"{"host":"web.example.com","service":"web"}"#,
    );
    eventually(
        Duration::from_secs(10),
        "the route",
        || match Client::new(strait.http).get("web.example.com", "/") {
            Ok(r) if r.status == 200 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let mut stream = std::net::TcpStream::connect(strait.http).expect("connect");
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: web.example.com\r\n\r\n")
        .expect("request");
    let mut reader = std::io::BufReader::new(stream.try_clone().expect("clone"));
    let (response, keep) = crate::http::read_response(&mut reader).expect("response");
    assert!(response.status == 200 && keep);
    let answered = Instant::now();
    eventually(Duration::from_secs(5), "the connection parked", || {
        let parked = strait
            .metric("strait_router_parked_connections")
            .unwrap_or(0.0);
        (parked >= 1.0)
            .then_some(())
            .ok_or(format!("{parked} parked"))
    });
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut byte = [0u8; 1];
    let read = stream.read(&mut byte);
    let after = answered.elapsed();
    assert!(
        matches!(read, Ok(0)),
        "ended with {read:?}, not a clean close"
    );
    assert!(
        after >= Duration::from_millis(2400) && after < Duration::from_millis(3500),
        "closed after {after:?} (idle timeout 2.5 s)"
    );
    eventually(Duration::from_secs(5), "the gauges back to 0", || {
        let parked = strait
            .metric("strait_router_parked_connections")
            .unwrap_or(f64::MAX);
        let open = strait
            .metric("strait_router_active_connections")
            .unwrap_or(f64::MAX);
        (parked == 0.0 && open == 0.0)
            .then_some(())
            .ok_or(format!("{parked} parked, {open} open"))
    });
}

/// A route's `timeouts.idle` bounds each wait for response body bytes: an instance that
/// sends a head and part of a body and then stalls is cut off after it, not after the
/// 60 s request timeout.
#[test]
fn idle_timeout_cuts_off_a_stalled_body() {
    use std::io::{Read, Write};
    let strait = Strait::builder().start();
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nabc");
                std::thread::sleep(Duration::from_secs(5));
            });
        }
    });
    strait.put(
        "/v1/services/stall/instances/s1",
        &format!(r#"{{"address":"127.0.0.1","port":{port}}}"#),
    );
    route(
        &strait,
        "stall",
        r#"{"host":"stall.example.com","service":"stall","timeouts":{"idle":"300ms"}}"#,
    );
    eventually(Duration::from_secs(10), "the route", || {
        let mut stream = std::net::TcpStream::connect(strait.http).map_err(|e| e.to_string())?;
        stream
            .set_read_timeout(Some(Duration::from_secs(4)))
            .map_err(|e| e.to_string())?;
        stream
            .write_all(b"GET / HTTP/1.1\r\nHost: stall.example.com\r\n\r\n")
            .map_err(|e| e.to_string())?;
        let started = Instant::now();
        let mut got = Vec::new();
        let read = stream.read_to_end(&mut got);
        let text = String::from_utf8_lossy(&got).into_owned();
        if !text.starts_with("HTTP/1.1 200") {
            return Err(format!("not the stalled instance yet: {text:?}"));
        }
        assert!(read.is_ok(), "the connection was not closed: {read:?}");
        assert!(text.ends_with("abc"), "{text:?}");
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "cut off after {:?}",
            started.elapsed()
        );
        Ok(())
    });
}

#[test]
fn timeouts_refusals_and_errors() {
    let strait = Strait::builder().start();
    let slow = Backend::start("slow");
    slow.set_delay(Duration::from_millis(1500));
    let dead = Backend::start("dead");
    register(&strait, "slow", "slow-1", &slow);
    register(&strait, "dead", "dead-1", &dead);
    dead.kill();
    route(
        &strait,
        "slow",
        r#"{"host":"slow.example.com","service":"slow","timeouts":{"request":"300ms"}}"#,
    );
    route(
        &strait,
        "dead",
        r#"{"host":"dead.example.com","service":"dead"}"#,
    );
    let mut client = Client::new(strait.http);
    eventually(
        Duration::from_secs(10),
        "upstream timeout to give 504",
        || {
            let response = client
                .get("slow.example.com", "/")
                .map_err(|e| e.to_string())?;
            if response.status == 504 {
                Ok(())
            } else {
                Err(format!("{} {}", response.status, response.text()))
            }
        },
    );
    let response = Client::new(strait.http)
        .get("dead.example.com", "/")
        .expect("request");
    assert_eq!(response.status, 502, "{}", response.text());
}

#[test]
fn forwarding_headers_and_rewrites() {
    let strait = Strait::builder().start();
    let backend = Backend::start("api");
    register(&strait, "api", "api-1", &backend);
    route(
        &strait,
        "api",
        r#"{"host":"api.example.com","path":{"prefix":"/api/v1"},"service":"api","prefix_rewrite":"/",
            "request_headers":{"set":{"x-env":"prod"},"remove":["x-debug"]},
            "response_headers":{"set":{"x-served-by":"strait"},"remove":["x-internal"]}}"#,
    );
    wait_backend(&strait, "api.example.com", "/api/v1", "api");
    let mut client = Client::new(strait.http);
    let response = client
        .request(
            "GET",
            "api.example.com",
            "/api/v1/users/7?full=1",
            &[
                ("x-debug", "1"),
                ("x-forwarded-for", "10.9.8.7"),
                ("x-request-id", "abc-123"),
            ],
            b"",
        )
        .expect("request");
    assert_eq!(response.status, 200);
    let echo = response.json();
    assert_eq!(
        echo["path"], "/users/7?full=1",
        "prefix rewritten, query kept"
    );
    let headers = &echo["headers"];
    assert_eq!(headers["x-forwarded-for"], "10.9.8.7, 127.0.0.1");
    assert_eq!(headers["x-forwarded-proto"], "http");
    assert_eq!(headers["x-forwarded-host"], "api.example.com");
    assert_eq!(
        headers["forwarded"],
        "for=127.0.0.1;host=\"api.example.com\";proto=http"
    );
    assert_eq!(
        headers["x-request-id"], "abc-123",
        "a valid incoming request id is kept"
    );
    assert_eq!(headers["x-env"], "prod");
    assert!(headers["x-debug"].is_null());
    assert_eq!(
        response.headers.get("x-served-by").map(String::as_str),
        Some("strait")
    );
    assert!(!response.headers.contains_key("x-internal"));
    let generated = client
        .get("api.example.com", "/api/v1")
        .expect("request")
        .json();
    let id = generated["headers"]["x-request-id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(id.len(), 32, "a request id is generated: {generated}");
}

/// Malformed, ambiguous or oversize heads get their 4xx and never reach a backend.
#[test]
fn bad_requests_are_refused_before_any_backend() {
    let strait = Strait::builder()
        .config("[router]\nheader_timeout = \"1s\"\n")
        .start();
    let backend = serve_web(&strait);
    let served = backend.served();
    let many_headers: String = (0..101).map(|i| format!("x-h{i}: v\r\n")).collect();
    let big_header = format!("x-big: {}\r\n", "a".repeat(70 * 1024));
    let cases: Vec<(&str, Vec<u8>, u16)> = vec![
        ("CL+TE", b"POST / HTTP/1.1\r\nHost: web.example.com\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n".to_vec(), 400),
        ("duplicate CL", b"POST / HTTP/1.1\r\nHost: web.example.com\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\nhello".to_vec(), 400),
        ("bad CL", b"POST / HTTP/1.1\r\nHost: web.example.com\r\nContent-Length: +5\r\n\r\nhello".to_vec(), 400),
        ("TE not chunked", b"POST / HTTP/1.1\r\nHost: web.example.com\r\nTransfer-Encoding: gzip\r\n\r\n".to_vec(), 400),
        ("obs-fold", b"GET / HTTP/1.1\r\nHost: web.example.com\r\nX-A: 1\r\n  folded\r\n\r\n".to_vec(), 400),
        ("bare LF", b"GET / HTTP/1.1\nHost: web.example.com\n\n".to_vec(), 400),
        ("bare CR", b"GET / HTTP/1.1\r\nHost: web.example.com\rX: y\r\n\r\n".to_vec(), 400),
        ("NUL", b"GET / HTTP/1.1\r\nHost: web.example.com\r\nX: a\x00b\r\n\r\n".to_vec(), 400),
        ("space before colon", b"GET / HTTP/1.1\r\nHost: web.example.com\r\nX-A : 1\r\n\r\n".to_vec(), 400),
        ("no Host", b"GET / HTTP/1.1\r\n\r\n".to_vec(), 400),
        ("two Hosts", b"GET / HTTP/1.1\r\nHost: web.example.com\r\nHost: evil.com\r\n\r\n".to_vec(), 400),
        ("too many headers", format!("GET / HTTP/1.1\r\nHost: web.example.com\r\n{many_headers}\r\n").into_bytes(), 431),
        ("head too large", format!("GET / HTTP/1.1\r\nHost: web.example.com\r\n{big_header}\r\n").into_bytes(), 431),
        ("CONNECT", b"CONNECT evil.com:443 HTTP/1.1\r\nHost: evil.com:443\r\n\r\n".to_vec(), 405),
        ("HTTP/2.0 in a 1.1 head", b"GET / HTTP/2.0\r\nHost: web.example.com\r\n\r\n".to_vec(), 505),
        ("garbage", b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03\r\n\r\n".to_vec(), 400),
        // Request targets per RFC 9112 section 3.2, methods as case-sensitive tokens.
        ("fragment", b"GET /x#frag HTTP/1.1\r\nHost: web.example.com\r\n\r\n".to_vec(), 400),
        ("raw non-ASCII path", b"GET /caf\xc3\xa9 HTTP/1.1\r\nHost: web.example.com\r\n\r\n".to_vec(), 400),
        ("lower-case method", b"get / HTTP/1.1\r\nHost: web.example.com\r\n\r\n".to_vec(), 400),
        ("asterisk without OPTIONS", b"GET * HTTP/1.1\r\nHost: web.example.com\r\n\r\n".to_vec(), 400),
        ("absolute form without authority", b"GET http:///x HTTP/1.1\r\nHost: web.example.com\r\n\r\n".to_vec(), 400),
    ];
    for (name, bytes, expected) in &cases {
        let response = raw(strait.http, bytes).unwrap_or_else(|| panic!("{name}: no response"));
        let text: String = response.text().chars().take(200).collect();
        assert_eq!(response.status, *expected, "{name}: {text}");
        assert_eq!(
            response.headers.get("connection").map(String::as_str),
            Some("close"),
            "{name}"
        );
    }
    // Slowloris: a head dripped slower than the 1s head deadline is cut off with 408.
    let started = Instant::now();
    let mut stream = std::net::TcpStream::connect(strait.http).expect("connect");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    use std::io::{Read, Write};
    let mut closed_early = false;
    for piece in [
        "GET / HTTP/1.1\r\n",
        "Host: web",
        ".example.com\r\n",
        "X-A: 1\r\n",
    ] {
        if stream.write_all(piece.as_bytes()).is_err() {
            closed_early = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(400));
    }
    let mut answer = String::new();
    let _ = stream.read_to_string(&mut answer);
    assert!(
        closed_early || answer.starts_with("HTTP/1.1 408"),
        "slow head answer: {answer:?}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "cut off by the deadline, not by a read timeout"
    );
    assert_eq!(
        backend.served(),
        served,
        "no bad request reached the backend"
    );
    let rejected = strait
        .metric("strait_router_rejected_requests_total")
        .unwrap_or(0.0);
    assert!(rejected >= 1.0);
    // And the router still serves.
    wait_backend(&strait, "web.example.com", "/", "web");
}

/// `OPTIONS *` (asterisk form) is about the host's server: it goes to the route the
/// host's root would, here a catch-all `host = "*"` route, and the backend sees `*`.
#[test]
fn options_asterisk_goes_to_the_hosts_route() {
    let strait = Strait::builder().start();
    let backend = Backend::start("any");
    register(&strait, "any", "any-1", &backend);
    route(
        &strait,
        "any",
        r#"{"host":"*","path":{"prefix":"/"},"service":"any","prefix_rewrite":"/base/"}"#,
    );
    wait_backend(&strait, "whatever.example.com", "/", "any");
    let response = raw(
        strait.http,
        b"OPTIONS * HTTP/1.1\r\nHost: whatever.example.com\r\n\r\n",
    )
    .expect("a response");
    assert_eq!(response.status, 200, "{}", response.text());
    assert_eq!(response.backend().as_deref(), Some("any"));
    assert_eq!(response.json()["path"], "*", "{}", response.text());
}

#[test]
fn http2_prior_knowledge() {
    let strait = Strait::builder().start();
    let _backend = serve_web(&strait);
    let output = std::process::Command::new("curl")
        .args([
            "-s",
            "--http2-prior-knowledge",
            "-H",
            "Host: web.example.com",
            "-w",
            "\n%{http_version} %{http_code}",
        ])
        .arg(format!("http://{}/h2", strait.http))
        .output()
        .expect("run curl");
    let text = String::from_utf8_lossy(&output.stdout);
    assert!(text.ends_with("\n2 200"), "curl over h2c: {text}");
    assert!(text.contains("\"backend\":\"web\""), "{text}");
}

/// Table swaps 100 times a second under load, and an instance killed mid-way: with
/// retries on, no GET fails.
#[test]
fn swaps_and_a_killed_instance_under_load_fail_nothing() {
    let strait = Strait::builder().start();
    let a = Backend::start("a");
    let b = Backend::start("b");
    register(&strait, "web", "a", &a);
    register(&strait, "web", "b", &b);
    route(
        &strait,
        "web",
        r#"{"host":"web.example.com","service":"web","retry":{"attempts":2,"on":["gateway-error"]}}"#,
    );
    wait_backend(&strait, "web.example.com", "/", "a");
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let (stop, ok, failures, addr) = (
                Arc::clone(&stop),
                Arc::clone(&ok),
                Arc::clone(&failures),
                strait.http,
            );
            std::thread::spawn(move || {
                let mut client = Client::new(addr);
                while !stop.load(Ordering::SeqCst) {
                    match client.get("web.example.com", "/") {
                        Ok(r) if r.status == 200 => {
                            ok.fetch_add(1, Ordering::SeqCst);
                        }
                        Ok(r) => failures.lock().expect("lock").push(format!(
                            "{} {}",
                            r.status,
                            r.text()
                        )),
                        Err(e) => failures.lock().expect("lock").push(e.to_string()),
                    }
                }
            })
        })
        .collect();
    let revision_before = strait.metric("strait_router_table_revision").unwrap_or(0.0);
    let started = Instant::now();
    let mut swaps = 0;
    // 250 writes at up to 100 a second (slower when the machine is busy: the count, not
    // the time, is what the test needs).
    while swaps < 250 && started.elapsed() < Duration::from_secs(30) {
        let tick = Instant::now();
        route(
            &strait,
            "web",
            &format!(
                r#"{{"host":"web.example.com","service":"web","retry":{{"attempts":2,"on":["gateway-error"]}},"request_headers":{{"set":{{"x-swap":"{swaps}"}}}}}}"#
            ),
        );
        swaps += 1;
        if swaps == 150 {
            a.kill();
        }
        std::thread::sleep(Duration::from_millis(10).saturating_sub(tick.elapsed()));
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().expect("client thread");
    }
    let failures = failures.lock().expect("lock");
    let ok = ok.load(Ordering::SeqCst);
    assert!(
        failures.is_empty(),
        "{} failed of {}: {:?}",
        failures.len(),
        ok + failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(ok > 500, "only {ok} requests completed");
    let revision_after = strait.metric("strait_router_table_revision").unwrap_or(0.0);
    assert!(
        revision_after - revision_before >= 200.0,
        "{swaps} route writes, table revision {revision_before} -> {revision_after}"
    );
    eprintln!(
        "swap test: {ok} requests, {swaps} route writes in {:?}, 0 failed",
        started.elapsed()
    );
}

#[test]
fn zone_preference_and_spill_over() {
    let strait = Strait::builder()
        .config("[router]\nzone = \"eu-1\"\n")
        .start();
    let local = Backend::start("local");
    let remote = Backend::start("remote");
    let body = |b: &Backend, zone: &str| {
        format!(
            r#"{{"address":"127.0.0.1","port":{},"zone":"{zone}"}}"#,
            b.addr.port()
        )
    };
    strait.put("/v1/services/web/instances/local", &body(&local, "eu-1"));
    strait.put("/v1/services/web/instances/remote", &body(&remote, "us-1"));
    route(
        &strait,
        "web",
        r#"{"host":"web.example.com","service":"web"}"#,
    );
    wait_backend(&strait, "web.example.com", "/", "local");
    let mut client = Client::new(strait.http);
    for _ in 0..100 {
        assert_eq!(
            client
                .get("web.example.com", "/")
                .expect("request")
                .backend()
                .as_deref(),
            Some("local")
        );
    }
    strait.put(
        "/v1/services/web/instances/local/health",
        r#"{"health":"critical"}"#,
    );
    wait_backend(&strait, "web.example.com", "/", "remote");
}

#[test]
fn round_robin_and_consistent_hash_balancers() {
    let strait = Strait::builder()
        .config(
            "[router.services.rr]\nbalancer = \"round-robin\"\n\n[router.services.sticky]\nbalancer = \"consistent-hash\"\nhash_on = { header = \"x-user\" }\n",
        )
        .start();
    let backends: Vec<Backend> = (0..3).map(|i| Backend::start(&format!("b{i}"))).collect();
    for (i, b) in backends.iter().enumerate() {
        register(&strait, "rr", &format!("b{i}"), b);
        register(&strait, "sticky", &format!("b{i}"), b);
    }
    route(&strait, "rr", r#"{"host":"rr.example.com","service":"rr"}"#);
    route(
        &strait,
        "sticky",
        r#"{"host":"sticky.example.com","service":"sticky"}"#,
    );
    let mut client = Client::new(strait.http);
    eventually(Duration::from_secs(10), "routes live", || {
        let r = client
            .get("sticky.example.com", "/")
            .map_err(|e| e.to_string())?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(r.status.to_string())
        }
    });
    let mut counts = BTreeMap::new();
    for _ in 0..300 {
        let backend = client
            .get("rr.example.com", "/")
            .expect("request")
            .backend()
            .unwrap_or_default();
        *counts.entry(backend).or_insert(0) += 1;
    }
    assert_eq!(
        counts.values().copied().collect::<Vec<_>>(),
        [100, 100, 100],
        "round robin: {counts:?}"
    );
    for user in ["alice", "bob", "carol", "dave"] {
        let first = client
            .request("GET", "sticky.example.com", "/", &[("x-user", user)], b"")
            .expect("request")
            .backend();
        for _ in 0..20 {
            let again = client
                .request("GET", "sticky.example.com", "/", &[("x-user", user)], b"")
                .expect("request")
                .backend();
            assert_eq!(again, first, "user {user} sticks to one backend");
        }
    }
}

#[test]
fn router_metrics_are_exported() {
    let strait = Strait::builder().start();
    let _backend = serve_web(&strait);
    let text = strait.metrics_text();
    for needle in [
        "strait_router_requests_total{class=\"2xx\",route=\"web\",service=\"web\",subset=\"\"}",
        "strait_router_request_duration_seconds_bucket{route=\"web\"",
        "strait_router_upstream_duration_seconds_bucket{service=\"web\"",
        "strait_router_table_swaps_total",
        "strait_router_table_build_seconds_count",
        "strait_router_propagation_seconds_count",
        "strait_router_active_requests",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(strait.metric("strait_router_table_revision").unwrap_or(0.0) >= 2.0);
}

#[test]
fn route_explain_says_why() {
    let strait = Strait::builder().start();
    let good = Backend::start("good");
    let sick = Backend::start("sick");
    register(&strait, "api", "good", &good);
    register(&strait, "api", "sick", &sick);
    strait.put(
        "/v1/services/api/instances/sick/health",
        r#"{"health":"critical"}"#,
    );
    route(
        &strait,
        "api",
        r#"{"host":"a.example.com","path":{"prefix":"/api"},"service":"api"}"#,
    );
    route(
        &strait,
        "canary",
        r#"{"host":"a.example.com","path":{"prefix":"/api"},"headers":[{"name":"x-canary","exact":"1"}],"service":"api"}"#,
    );
    route(
        &strait,
        "posts",
        r#"{"host":"a.example.com","path":{"exact":"/api/posts"},"methods":["POST"],"service":"posts"}"#,
    );
    wait_backend(&strait, "a.example.com", "/api", "good");
    let admin = format!("http://{}", strait.admin);
    let (ok, stdout, stderr) = crate::harness::cli(&[
        "route",
        "explain",
        "http://a.example.com/api/posts",
        "-H",
        "x-canary: 2",
        "--admin",
        &admin,
    ]);
    assert!(ok, "{stderr}");
    let stdout = stdout
        .replace(&good.addr.to_string(), "GOOD_ADDR")
        .lines()
        .skip(1) // the first line carries the table revision
        .collect::<Vec<_>>()
        .join("\n");
    expect_test::expect![[r#"
        host: exact a.example.com
            -   posts  (method GET is not one of POST)
            -   canary  (header x-canary is not equal to "1")
          MATCH api
        service api (100.0% of traffic):
          good                 GOOD_ADDR          zone -        weight 1 in flight 0 eligible
          sick                 excluded: health is critical
        => proxied by route api to api"#]]
    .assert_eq(&stdout);
    let (status, body) = crate::harness::http(
        &strait,
        "POST",
        "/v1/explain",
        Some(r#"{"url":"nothing.example.com/","method":"GET"}"#),
        None,
    );
    assert_eq!(status, 200);
    assert_eq!(
        body["outcome"],
        "404: no route for host \"nothing.example.com\" (no exact, wildcard or `*` host)"
    );
    // What the router refuses before routing, explain refuses too.
    for (request, outcome) in [
        (
            r#"{"url":"http://web.example.com/api/..%2Fadmin"}"#,
            "400: request path has dot segments",
        ),
        (
            r#"{"url":"http://web.example.com/","method":"CONNECT"}"#,
            "405: CONNECT is not supported",
        ),
    ] {
        let (status, body) =
            crate::harness::http(&strait, "POST", "/v1/explain", Some(request), None);
        assert_eq!(status, 200, "{body}");
        let text = body["outcome"].as_str().unwrap_or_default();
        assert!(text.starts_with(outcome), "{request}: {text}");
    }
    let (status, body) = crate::harness::http(
        &strait,
        "POST",
        "/v1/explain",
        Some(r#"{"url":"http://"}"#),
        None,
    );
    assert_eq!(status, 400, "{body}");
}

#[test]
fn taken_http_address_is_a_clear_startup_error() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr").to_string();
    let stderr = Strait::builder()
        .arg("--http-addr")
        .arg(addr.clone())
        .start_expecting_failure();
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")),
        "{stderr}"
    );
}

/// SIGTERM: in-flight requests finish, then the process exits cleanly.
#[test]
fn sigterm_drains_in_flight_requests() {
    let mut strait = Strait::builder().start();
    let backend = Backend::start("slow");
    backend.set_delay(Duration::from_millis(1500));
    register(&strait, "slow", "s1", &backend);
    route(
        &strait,
        "slow",
        r#"{"host":"slow.example.com","service":"slow"}"#,
    );
    let http = strait.http;
    eventually(Duration::from_secs(10), "route live", || {
        let r = Client::new(http)
            .get("slow.example.com", "/")
            .map_err(|e| e.to_string())?;
        if r.status == 200 {
            Ok(())
        } else {
            Err(r.status.to_string())
        }
    });
    let in_flight = std::thread::spawn(move || Client::new(http).get("slow.example.com", "/"));
    std::thread::sleep(Duration::from_millis(300));
    let started = Instant::now();
    strait.stop();
    let response = in_flight
        .join()
        .expect("client thread")
        .expect("in-flight request completes");
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "drained promptly, not after the full drain timeout"
    );
    assert!(
        std::net::TcpStream::connect(http).is_err(),
        "no longer accepting"
    );
}

#[test]
fn websocket_upgrade_passes_through() {
    use std::io::{BufRead, BufReader, Read, Write};
    let strait = Strait::builder().start();
    let backend = Backend::start("ws");
    register(&strait, "ws", "ws-1", &backend);
    route(&strait, "ws", r#"{"host":"ws.example.com","service":"ws"}"#);
    // The same service behind a route with an idle timeout.
    route(
        &strait,
        "ws-idle",
        r#"{"host":"ws-idle.example.com","service":"ws","timeouts":{"idle":"1s"}}"#,
    );
    wait_backend(&strait, "ws.example.com", "/", "ws");
    wait_backend(&strait, "ws-idle.example.com", "/", "ws");
    let upgrade = |host: &str| {
        let mut stream = std::net::TcpStream::connect(strait.http).expect("connect");
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .expect("timeout");
        stream
            .write_all(
                format!(
                    "GET /chat HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
                     Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
                )
                .as_bytes(),
            )
            .expect("write");
        let mut reader = BufReader::new(stream.try_clone().expect("clone"));
        let mut status = String::new();
        reader.read_line(&mut status).expect("status line");
        assert!(status.starts_with("HTTP/1.1 101"), "{status}");
        let mut head = Vec::new();
        loop {
            let mut line = String::new();
            reader.read_line(&mut line).expect("header");
            if line == "\r\n" {
                break;
            }
            head.push(line.trim_end().to_ascii_lowercase());
        }
        // A client fails the handshake without these (RFC 6455 4.1).
        for wanted in ["upgrade: websocket", "connection: upgrade"] {
            assert!(head.iter().any(|l| l == wanted), "{wanted}: {head:?}");
        }
        assert!(
            head.iter().any(|l| l.starts_with("sec-websocket-accept: ")),
            "{head:?}"
        );
        (stream, reader)
    };
    let echo = |stream: &mut std::net::TcpStream, reader: &mut BufReader<_>, message: &str| {
        stream.write_all(message.as_bytes()).expect("send");
        let mut echo = vec![0; message.len()];
        reader.read_exact(&mut echo).expect("echo");
        assert_eq!(echo, message.as_bytes());
    };
    let (mut stream, mut reader) = upgrade("ws.example.com");
    for message in ["hello", "over the upgraded connection"] {
        echo(&mut stream, &mut reader, message);
    }
    // Without an idle timeout a quiet tunnel stays open.
    std::thread::sleep(Duration::from_millis(1000));
    echo(&mut stream, &mut reader, "still here");

    // With one, traffic keeps it open past the timeout; a quiet stretch ends it.
    let (mut stream, mut reader) = upgrade("ws-idle.example.com");
    for _ in 0..8 {
        std::thread::sleep(Duration::from_millis(200));
        echo(&mut stream, &mut reader, "ping");
    }
    std::thread::sleep(Duration::from_millis(2500));
    let mut rest = Vec::new();
    let read = reader.read_to_end(&mut rest);
    assert!(
        matches!(read, Ok(0)),
        "the idle tunnel is still open: {read:?} {rest:?}"
    );
}

#[test]
fn access_log_writes_json_lines() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("access.log");
    let strait = Strait::builder()
        .config(&format!("[router]\naccess_log = {:?}\n", log_path))
        .start();
    let backend = serve_web(&strait);
    let mut client = Client::new(strait.http);
    client
        .request(
            "GET",
            "web.example.com",
            "/logged?q=1",
            &[("x-request-id", "trace-42")],
            b"",
        )
        .expect("request");
    client.get("nowhere.example.com", "/").expect("request");
    // HTTP/2 requests are logged too, the ones strait answers itself included.
    for host in ["web.example.com", "nowhere2.example.com"] {
        let output = std::process::Command::new("curl")
            .args(["-s", "-o", "/dev/null", "--http2-prior-knowledge"])
            .args(["-H", &format!("Host: {host}")])
            .arg(format!("http://{}/h2", strait.http))
            .output()
            .expect("curl");
        assert!(output.status.success());
    }
    let lines: Vec<serde_json::Value> =
        eventually(Duration::from_secs(5), "access log lines", || {
            let text = std::fs::read_to_string(&log_path).map_err(|e| e.to_string())?;
            let lines: Vec<serde_json::Value> = text
                .lines()
                .filter_map(|l| serde_json::from_str(l).ok())
                .collect();
            let h2_lines = lines.iter().filter(|l| l["http"] == "2").count();
            if lines.iter().any(|l| l["host"] == "nowhere.example.com") && h2_lines == 2 {
                Ok(lines)
            } else {
                Err(text)
            }
        });
    let logged = lines
        .iter()
        .find(|l| l["path"] == "/logged?q=1")
        .expect("the request is logged");
    assert_eq!(logged["status"], 200);
    assert_eq!(logged["method"], "GET");
    assert_eq!(logged["route"], "web");
    assert_eq!(logged["service"], "web");
    assert_eq!(logged["upstream"], backend.addr.to_string());
    assert_eq!(logged["request_id"], "trace-42");
    assert_eq!(logged["client"], "127.0.0.1");
    assert_eq!(logged["attempts"], 1);
    let missed = lines
        .iter()
        .find(|l| l["host"] == "nowhere.example.com")
        .expect("404 logged");
    assert_eq!(missed["status"], 404);
    assert!(missed["route"].is_null());
    let h2 = |host: &str| {
        lines
            .iter()
            .find(|l| l["http"] == "2" && l["host"].as_str().is_some_and(|h| h.starts_with(host)))
            .unwrap_or_else(|| panic!("an HTTP/2 line for {host}: {lines:?}"))
            .clone()
    };
    assert_eq!(h2("web.example.com")["status"], 200);
    assert_eq!(h2("web.example.com")["route"], "web");
    assert_eq!(h2("nowhere2.example.com")["status"], 404);
}

/// `protocol = "h2c"`: strait speaks HTTP/2 to the service. The service here is a second
/// strait (which speaks h2c downstream); its access log shows the request arrived over h2.
#[test]
fn h2c_upstream() {
    let dir = tempfile::tempdir().expect("tempdir");
    let log_path = dir.path().join("inner.log");
    let inner = Strait::builder()
        .config(&format!("[router]\naccess_log = {:?}\n", log_path))
        .start();
    let _backend = serve_web(&inner);

    let outer = Strait::builder()
        .config("[router.services.inner]\nprotocol = \"h2c\"\n")
        .start();
    let (status, body) = outer.put(
        "/v1/services/inner/instances/i1",
        &format!(r#"{{"address":"127.0.0.1","port":{}}}"#, inner.http.port()),
    );
    assert_eq!(status, 200, "{body}");
    route(
        &outer,
        "web",
        r#"{"host":"web.example.com","service":"inner"}"#,
    );
    let mut client = Client::new(outer.http);
    eventually(
        Duration::from_secs(10),
        "a request through both routers",
        || {
            let response = client
                .get("web.example.com", "/through-h2c")
                .map_err(|e| e.to_string())?;
            match response.backend() {
                Some(b) if b == "web" => Ok(()),
                _ => Err(format!("{} {}", response.status, response.text())),
            }
        },
    );
    eventually(Duration::from_secs(5), "the inner access log line", || {
        let text = std::fs::read_to_string(&log_path).map_err(|e| e.to_string())?;
        let line = text
            .lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .find(|l| l["path"] == "/through-h2c")
            .ok_or_else(|| text.clone())?;
        if line["http"] == "2" {
            Ok(())
        } else {
            Err(line.to_string())
        }
    });
}

/// An HTTP/2 service instance that completes the handshake and answers no request: on
/// each request's HEADERS frame it either closes the connection (a crash mid-request) or,
/// with `refuse`, resets the stream with REFUSED_STREAM (nothing processed, RFC 9113 §8.7).
struct H2Crasher {
    port: u16,
    requests: Arc<AtomicUsize>,
}

impl H2Crasher {
    fn start(refuse: bool) -> H2Crasher {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let requests = Arc::new(AtomicUsize::new(0));
        let counter = Arc::clone(&requests);
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { continue };
                let counter = Arc::clone(&counter);
                std::thread::spawn(move || {
                    // The server preface: an empty SETTINGS frame.
                    if stream.write_all(&[0, 0, 0, 4, 0, 0, 0, 0, 0]).is_err() {
                        return;
                    }
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 4096];
                    let mut at = 24; // past the client preface
                    loop {
                        match stream.read(&mut chunk) {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                        while buf.len() >= at + 9 {
                            let frame = &buf[at..at + 9];
                            let length = usize::from(frame[0]) << 16
                                | usize::from(frame[1]) << 8
                                | usize::from(frame[2]);
                            let (kind, flags) = (frame[3], frame[4]);
                            if buf.len() < at + 9 + length {
                                break;
                            }
                            at += 9 + length;
                            if kind == 4 && flags & 1 == 0 {
                                // SETTINGS from the client: acknowledge it.
                                let _ = stream.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0]);
                            } else if kind == 1 {
                                counter.fetch_add(1, Ordering::SeqCst);
                                if !refuse {
                                    return; // closes the connection, unanswered
                                }
                                let mut reset = vec![0, 0, 4, 3, 0];
                                reset.extend_from_slice(&frame[5..9]); // the stream id
                                reset.extend_from_slice(&7u32.to_be_bytes()); // REFUSED_STREAM
                                if stream.write_all(&reset).is_err() {
                                    return;
                                }
                            }
                        }
                    }
                });
            }
        });
        H2Crasher { port, requests }
    }

    fn served(&self) -> usize {
        self.requests.load(Ordering::SeqCst)
    }
}

/// Services spoken to over HTTP/2 (pingora's proxy path) retry an unanswered request as
/// the HTTP/1 path does: as the 502 it would be, under the route's policy.
#[test]
fn h2_upstream_unanswered_requests_retry_like_gateway_errors() {
    let inner = Strait::builder().start();
    let _backend = serve_web(&inner);
    let crasher = H2Crasher::start(false);
    let refuser = H2Crasher::start(true);
    let outer = Strait::builder()
        .config(
            "[router.outlier]\nconsecutive_failures = 0\n\n[router.services.inner]\nprotocol = \"h2c\"\n\n[router.services.refusing]\nprotocol = \"h2c\"\n",
        )
        .start();
    for (service, id, port) in [
        ("inner", "good", inner.http.port()),
        ("inner", "crashing", crasher.port),
        ("refusing", "good", inner.http.port()),
        ("refusing", "refusing", refuser.port),
    ] {
        let (status, body) = outer.put(
            &format!("/v1/services/{service}/instances/{id}"),
            &format!(r#"{{"address":"127.0.0.1","port":{port}}}"#),
        );
        assert_eq!(status, 200, "{body}");
    }
    route(
        &outer,
        "web",
        r#"{"host":"web.example.com","service":"inner","retry":{"attempts":2,"on":["gateway-error"]}}"#,
    );
    route(
        &outer,
        "plain",
        r#"{"host":"plain.example.com","service":"inner"}"#,
    );
    wait_backend(&outer, "web.example.com", "/", "web");
    let mut client = Client::new(outer.http);
    for i in 0..60 {
        let response = client.get("web.example.com", "/").expect("request");
        assert_eq!(response.status, 200, "GET {i}: {}", response.text());
    }
    assert!(
        crasher.served() > 5,
        "the crashing instance got {} requests",
        crasher.served()
    );
    posts_and_routes_without_a_policy_are_not_retried(&mut client, 40);
    // A refused stream was not processed: any method goes to another instance, with or
    // without a retry policy.
    route(
        &inner,
        "refused",
        r#"{"host":"refused.example.com","service":"web"}"#,
    );
    route(
        &outer,
        "refused",
        r#"{"host":"refused.example.com","service":"refusing"}"#,
    );
    wait_backend(&outer, "refused.example.com", "/", "web");
    let refused = statuses(&mut client, "POST", "refused.example.com", 40);
    assert!(
        refused.iter().all(|&s| s == 200),
        "refused streams are retried: {refused:?}"
    );
    assert!(
        refuser.served() > 5,
        "the refusing instance got {} requests",
        refuser.served()
    );
}

/// `[router.services.<name>.health_check]`: an instance failing the router's own checks
/// leaves the pool (no request reaches it), `route explain` says why, and it comes back
/// when it passes again; an unreachable one fails a TCP check the same way.
#[test]
fn active_health_checks_take_failing_instances_out_and_back() {
    let strait = Strait::builder()
        .config(
            "[router.services.web.health_check]\npath = \"/healthz\"\ninterval = \"200ms\"\ntimeout = \"500ms\"\nunhealthy_threshold = 2\nhealthy_threshold = 1\n\n\
             [router.services.tcp.health_check]\nkind = \"tcp\"\ninterval = \"200ms\"\nunhealthy_threshold = 1\n",
        )
        .start();
    let a = Backend::start("a");
    let b = Backend::start("b");
    register(&strait, "web", "a", &a);
    register(&strait, "web", "b", &b);
    route(
        &strait,
        "web",
        r#"{"host":"web.example.com","service":"web"}"#,
    );
    wait_backend(&strait, "web.example.com", "/", "b");
    a.set_status(503);
    let mut client = Client::new(strait.http);
    // No application traffic meanwhile: the router's own checks find it out.
    let admin = format!("http://{}", strait.admin);
    eventually(Duration::from_secs(10), "a to fail its checks", || {
        let (ok, stdout, stderr) = crate::harness::cli(&[
            "route",
            "explain",
            "http://web.example.com/",
            "--admin",
            &admin,
        ]);
        if ok && stdout.contains("failing the router's active health checks") {
            Ok(())
        } else {
            Err(format!("{stdout}{stderr}"))
        }
    });
    let served_by_a = a.served();
    for _ in 0..20 {
        let response = client.get("web.example.com", "/").expect("request");
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.backend().as_deref(), Some("b"));
    }
    assert!(
        strait
            .metrics_text()
            .contains("strait_router_health_checks_total{result=\"fail\",service=\"web\"}"),
        "failed checks are counted"
    );
    assert!(a.served() - served_by_a <= 10, "only checks reached a");
    assert!(
        strait
            .log_text()
            .contains("failing health checks: out of the pool"),
        "the transition is logged"
    );
    // Passing again: back in the pool.
    a.set_status(200);
    eventually(Duration::from_secs(10), "a to come back", || {
        for _ in 0..20 {
            let response = client
                .get("web.example.com", "/")
                .map_err(|e| e.to_string())?;
            if response.backend().as_deref() == Some("a") {
                return Ok(());
            }
        }
        Err("a got no request".to_string())
    });

    // TCP check: an instance nothing listens on is out; the live one takes everything.
    let live = Backend::start("live");
    register(&strait, "tcp", "live", &live);
    let dead = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let dead_port = dead.local_addr().expect("addr").port();
    drop(dead);
    let (status, body) = strait.put(
        "/v1/services/tcp/instances/dead",
        &format!(r#"{{"address":"127.0.0.1","port":{dead_port}}}"#),
    );
    assert_eq!(status, 200, "{body}");
    route(
        &strait,
        "tcp",
        r#"{"host":"tcp.example.com","service":"tcp"}"#,
    );
    eventually(
        Duration::from_secs(10),
        "dead to fail its TCP check",
        || {
            let metrics = strait.metrics_text();
            metrics
                .contains("strait_router_health_checks_total{result=\"fail\",service=\"tcp\"}")
                .then_some(())
                .ok_or_else(|| "no failed TCP check yet".to_string())
        },
    );
    std::thread::sleep(Duration::from_millis(300));
    let connect_errors_before = strait
        .metric("strait_router_upstream_connect_errors_total")
        .unwrap_or(0.0);
    for _ in 0..20 {
        let response = client.get("tcp.example.com", "/").expect("request");
        assert_eq!(response.backend().as_deref(), Some("live"));
    }
    assert_eq!(
        strait
            .metric("strait_router_upstream_connect_errors_total")
            .unwrap_or(0.0),
        connect_errors_before,
        "no request tried the dead instance"
    );
}

#[test]
fn bad_health_check_settings_are_a_startup_error() {
    let stderr = Strait::builder()
        .config("[router.services.web.health_check]\npath = \"healthz\"\n")
        .start_expecting_failure();
    // Named by file, line and key, as a config error.
    assert!(
        stderr.contains(
            "strait.toml:1:9: key `router.services`: service `web`: health_check: path \"healthz\" must start with /"
        ),
        "{stderr}"
    );
}

/// A TCP forwarder to `to` (a hop strait cannot see through): returns its address.
fn forwarder(to: std::net::SocketAddr) -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr");
    std::thread::spawn(move || {
        for client in listener.incoming() {
            let Ok(client) = client else { continue };
            let Ok(upstream) = std::net::TcpStream::connect(to) else {
                continue;
            };
            for (mut from, mut into) in [
                (
                    client.try_clone().expect("clone"),
                    upstream.try_clone().expect("clone"),
                ),
                (upstream, client),
            ] {
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from, &mut into);
                    let _ = into.shutdown(std::net::Shutdown::Write);
                });
            }
        }
    });
    addr
}

/// No self-routing (issue 23, item 5): an instance at one of strait's own listeners is
/// refused when it is written; a route that leads back to the router anyway (through a
/// hop strait cannot see) is cut with 508 on the first return, and counted; the admin
/// API refuses a request that came through the router.
#[test]
fn self_routing_is_refused_at_write_time_and_loops_are_cut() {
    let strait = Strait::builder().start();
    for (what, addr) in [("admin API", strait.admin), ("router", strait.http)] {
        let (status, body) = strait.put(
            "/v1/services/loop/instances/l1",
            &format!(r#"{{"address":"127.0.0.1","port":{}}}"#, addr.port()),
        );
        assert_eq!(status, 400, "an instance at the {what}: {body}");
        assert!(
            body["message"]
                .as_str()
                .is_some_and(|m| m.contains("own listener")),
            "{body}"
        );
    }
    assert!(strait.instance_ids("loop").is_empty());

    // A loop through a forwarder: router -> forwarder -> router.
    let back_to_router = forwarder(strait.http);
    let (status, body) = strait.put(
        "/v1/services/loop/instances/l1",
        &format!(
            r#"{{"address":"127.0.0.1","port":{}}}"#,
            back_to_router.port()
        ),
    );
    assert_eq!(status, 200, "{body}");
    route(
        &strait,
        "loop",
        r#"{"host":"loop.example.com","service":"loop"}"#,
    );
    // The admin API through the router, by a forwarder too.
    let to_admin = forwarder(strait.admin);
    let (status, body) = strait.put(
        "/v1/services/adm/instances/a1",
        &format!(r#"{{"address":"127.0.0.1","port":{}}}"#, to_admin.port()),
    );
    assert_eq!(status, 200, "{body}");
    route(
        &strait,
        "adm",
        r#"{"host":"admin.example.com","service":"adm"}"#,
    );

    let mut client = Client::new(strait.http);
    let looped = eventually(Duration::from_secs(10), "the loop route to be live", || {
        let r = client
            .get("loop.example.com", "/")
            .map_err(|e| e.to_string())?;
        (r.status != 404)
            .then_some(r)
            .ok_or_else(|| "404".to_string())
    });
    assert_eq!(looped.status, 508, "{}", looped.text());
    assert_eq!(strait.metric("strait_router_loops_total"), Some(1.0));
    let admin = eventually(
        Duration::from_secs(10),
        "the admin route to be live",
        || {
            let r = client
                .get("admin.example.com", "/v1/snapshot")
                .map_err(|e| e.to_string())?;
            (r.status != 404)
                .then_some(r)
                .ok_or_else(|| "404".to_string())
        },
    );
    assert_eq!(admin.status, 403, "{}", admin.text());
    assert_eq!(admin.json()["error"], "forbidden", "{}", admin.text());
    let (status, _) = strait.put(
        "/v1/routes/evil",
        r#"{"host":"evil.example.com","service":"adm"}"#,
    );
    assert_eq!(status, 200, "the admin API still answers directly");
}

/// The mass-removal guard (issue 23, item 7): every instance of a pool leaving the store
/// at once does not empty it: they stay routable (stale) for the hold, then go. A
/// deployment's way of removing a version (maintenance first, then deregistration) is
/// never held back: the drained instances get no request once in maintenance, nor after.
#[test]
fn mass_removal_is_held_back_but_drained_instances_are_not() {
    let strait = Strait::builder()
        .config("[router.mass_removal]\nhold = \"3s\"\n")
        .start();
    let (b1, b2) = (Backend::start("b1"), Backend::start("b2"));
    register(&strait, "web", "b1", &b1);
    register(&strait, "web", "b2", &b2);
    route(
        &strait,
        "web",
        r#"{"host":"web.example.com","service":"web"}"#,
    );
    wait_backend(&strait, "web.example.com", "/", "b1");
    wait_backend(&strait, "web.example.com", "/", "b2");
    let mut client = Client::new(strait.http);
    let status = |client: &mut Client| client.get("web.example.com", "/").map(|r| r.status);

    // A mass removal: both instances leave the store at once.
    assert_eq!(strait.delete("/v1/services/web/instances/b1").0, 204);
    assert_eq!(strait.delete("/v1/services/web/instances/b2").0, 204);
    let removed = Instant::now();
    // Two deregistrations are two updates: the first takes half the pool (not more than
    // `fraction`), the second the rest, which is held.
    eventually(Duration::from_secs(5), "the guard to hold them", || {
        let stale = strait
            .metric("strait_router_stale_endpoints")
            .unwrap_or(0.0);
        (stale >= 1.0).then_some(()).ok_or(format!("stale {stale}"))
    });
    for _ in 0..20 {
        assert_eq!(
            status(&mut client).expect("request"),
            200,
            "held instances serve"
        );
    }
    assert!(
        strait
            .metric("strait_router_mass_removals_total")
            .unwrap_or(0.0)
            >= 1.0
    );
    assert!(
        strait.log_text().contains("mass removal:"),
        "{}",
        strait.log_text()
    );
    // Then the hold ends.
    eventually(
        Duration::from_secs(10),
        "the hold to end",
        || match status(&mut client) {
            Ok(503) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    assert!(removed.elapsed() >= Duration::from_millis(2500));
    assert_eq!(strait.metric("strait_router_stale_endpoints"), Some(0.0));

    // A deployment's removal: maintenance (drained), then deregistered.
    register(&strait, "web", "b1", &b1);
    register(&strait, "web", "b2", &b2);
    wait_backend(&strait, "web.example.com", "/", "b1");
    for id in ["b1", "b2"] {
        let (code, body) = strait.put(
            &format!("/v1/services/web/instances/{id}/health"),
            r#"{"health":"maintenance"}"#,
        );
        assert_eq!(code, 200, "{body}");
    }
    eventually(
        Duration::from_secs(5),
        "the drained instances out",
        || match status(&mut client) {
            Ok(503) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let served = b1.served() + b2.served();
    assert_eq!(strait.delete("/v1/services/web/instances/b1").0, 204);
    assert_eq!(strait.delete("/v1/services/web/instances/b2").0, 204);
    for _ in 0..20 {
        assert_eq!(status(&mut client).expect("request"), 503);
        std::thread::sleep(Duration::from_millis(25));
    }
    assert_eq!(
        b1.served() + b2.served(),
        served,
        "no request reached a drained instance"
    );
    assert_eq!(strait.metric("strait_router_stale_endpoints"), Some(0.0));
}

/// Request bodies (issue 23, item 3): a small body is read whole before an upstream is
/// chosen, so clients dripping their bodies hold no upstream connection; a client that
/// stalls mid-body gets 408 after `body_timeout`; a body over `request_buffer_bytes`
/// still streams.
#[test]
fn slow_small_bodies_hold_no_upstream_connection() {
    use std::io::{Read, Write};
    let strait = Strait::builder()
        .config("[router]\nrequest_buffer_bytes = 4096\nbody_timeout = \"1s\"\n")
        .start();
    let backend = serve_web(&strait);
    let accepted = backend.accepted();
    let head = |length: usize| {
        format!("POST /up HTTP/1.1\r\nHost: web.example.com\r\nContent-Length: {length}\r\n\r\n")
    };
    // Twenty clients sending 12-byte bodies a byte at a time.
    let mut slow: Vec<std::net::TcpStream> = (0..20)
        .map(|_| {
            let mut s = std::net::TcpStream::connect(strait.http).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(10)))
                .expect("timeout");
            s.write_all(head(12).as_bytes()).expect("head");
            s
        })
        .collect();
    for (i, byte) in b"hello, slow!".chunks(1).enumerate() {
        for s in &mut slow {
            s.write_all(byte).expect("body byte");
        }
        if i == 11 {
            break; // the bodies are whole: now they go upstream
        }
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(
            backend.accepted(),
            accepted,
            "no upstream connection while bodies are on their way (byte {:?})",
            byte
        );
    }
    for s in slow {
        let mut reader = std::io::BufReader::new(s);
        let (response, _) = crate::http::read_response(&mut reader).expect("response");
        assert_eq!(response.status, 200);
        assert_eq!(response.json()["body"], "hello, slow!");
    }
    // A client that stalls mid-body: 408 once `body_timeout` passes.
    let started = Instant::now();
    let mut stalled = std::net::TcpStream::connect(strait.http).expect("connect");
    stalled
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stalled.write_all(head(100).as_bytes()).expect("head");
    stalled.write_all(b"only part").expect("part");
    let mut answer = String::new();
    let _ = stalled.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    // A body over `request_buffer_bytes` streams, and arrives whole.
    let large = "x".repeat(20_000);
    let response = Client::new(strait.http)
        .request("POST", "web.example.com", "/up", &[], large.as_bytes())
        .expect("large upload");
    assert_eq!(response.status, 200);
    assert_eq!(response.json()["body"].as_str().map(str::len), Some(20_000));
}
