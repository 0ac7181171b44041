//! Operability: the first run (the built-in demo config), the API contract (schemathesis
//! against `/openapi.json`), the metrics the dashboard and the alert rules use (scraped
//! from a live strait; rules unit-tested with promtool), HTTP/2 protocol error counters,
//! and the systemd unit (systemd-analyze).

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::{Strait, eventually, http_text};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// A directory under target/ for what a test leaves to look at (reports, screenshots).
pub fn artefacts(test: &str) -> PathBuf {
    let dir = root().join("target").join("test-artefacts").join(test);
    std::fs::create_dir_all(&dir).expect("artefacts dir");
    dir
}

fn sh(command: &str) -> (bool, String) {
    let output = Command::new("sh")
        .arg("-c")
        .arg(command)
        .output()
        .unwrap_or_else(|e| panic!("sh -c {command}: {e}"));
    (
        output.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ),
    )
}

/// `strait up` with no config: the demo backend answers through the router, and the
/// commands it prints once it does work exactly as printed.
#[test]
fn demo_first_run_routes_and_prints_what_to_try() {
    let strait = Strait::builder().demo().capture_stdout().start();
    let text = eventually(Duration::from_secs(30), "the commands to try", || {
        let text = strait.stdout_text();
        if text.contains("/ui") {
            Ok(text)
        } else {
            Err(format!("stdout so far: {text:?}"))
        }
    });
    assert!(text.contains("Try:"), "{text}");
    let command = |prefix: &str| -> String {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix) || l.contains(&format!("/strait {prefix}")))
            .map(|l| l.split("   #").next().unwrap_or(l).trim().to_string())
            .unwrap_or_else(|| panic!("no `{prefix}` line in:\n{text}"))
    };
    let curl = command("curl");
    assert_eq!(
        curl,
        format!("curl http://localhost:{}/", strait.http.port()),
        "{text}"
    );
    let (ok, body) = sh(&format!("{curl} -sS --max-time 10"));
    assert!(
        ok && body.contains("Hello from strait's demo backend"),
        "{curl}: {body}"
    );
    let dig = command("dig");
    let (ok, answer) = sh(&format!("{dig} +time=2 +tries=2"));
    assert!(ok && answer.trim() == "127.0.0.1", "{dig}: {answer}");
    let svc = command("svc ls");
    let (ok, listing) = sh(&svc);
    assert!(ok && listing.contains("hello"), "{svc}: {listing}");
    let page = text
        .lines()
        .map(str::trim)
        .find(|l| l.starts_with("http://"))
        .and_then(|l| l.split_whitespace().next())
        .expect("the status page URL");
    assert_eq!(page, strait.url("/ui"));
    let (status, html) = http_text(page, None);
    assert!(status == 200 && html.contains("strait status"), "{html}");
    // The demo is registered through the agent, with a health check.
    let (_, service) = strait.get("/v1/services/hello");
    assert_eq!(service["instances"][0]["health"], "passing", "{service}");
    assert_eq!(service["instances"][0]["tags"][0], "demo", "{service}");
}

/// A configured start runs no demo and prints nothing.
#[test]
fn configured_start_prints_nothing_and_runs_no_demo() {
    let mut strait = Strait::builder().capture_stdout().start();
    let (_, services) = strait.get("/v1/services");
    assert_eq!(services["services"], serde_json::json!([]), "{services}");
    let (_, routes) = strait.get("/v1/routes");
    assert_eq!(routes["routes"], serde_json::json!({}), "{routes}");
    strait.stop();
    assert_eq!(strait.stdout_text(), "");
}

/// The admin API against its own OpenAPI document, with schemathesis (PyPI): no server
/// error, every response (status, content type, headers, body) as documented, the token
/// enforced where the document says so. Bounded: 10 examples per operation, 60 s.
/// Excluded: creating deployments and rollbacks (they resolve generated image names
/// against registries named in them, which may be anywhere), and the
/// `positive_data_acceptance` check (the API's validation is stricter than a schema can
/// say: DNS-label names, cross-field route rules).
#[test]
fn admin_api_matches_its_openapi_document() {
    let token = "schemathesis-token-0123456789";
    let strait = Strait::builder().env("STRAIT_ADMIN_TOKEN", token).start();
    let (status, spec) = http_text(&strait.url("/openapi.json"), None);
    assert_eq!(status, 200, "{spec}");
    let spec: serde_json::Value = serde_json::from_str(&spec).expect("openapi.json is JSON");
    assert_eq!(spec["openapi"], "3.1.0");
    assert!(
        spec["paths"]["/v1/services/{service}/instances/{id}"]["put"]["requestBody"].is_object()
    );
    let report = artefacts("schemathesis");
    let output = Command::new("timeout")
        .arg("300")
        .arg("schemathesis")
        .arg("run")
        .arg(strait.url("/openapi.json"))
        .args(["--checks", "all", "--exclude-checks", "positive_data_acceptance"])
        .args(["--exclude-operation-id", "create_deployment"])
        .args(["--exclude-operation-id", "rollback"])
        .args(["--header", &format!("Authorization: Bearer {token}")])
        .args(["--max-examples", "10", "--max-time", "60", "--seed", "19"])
        .args(["--request-timeout", "10", "--workers", "2"])
        .args(["--generation-database", "none", "--no-color"])
        .arg("--report-junit-path")
        .arg(report.join("junit.xml"))
        .current_dir(&report)
        .output()
        .expect("run schemathesis (pip install schemathesis; scripts/test does)");
    let text = String::from_utf8_lossy(&output.stdout);
    std::fs::write(report.join("output.txt"), text.as_bytes()).expect("write output");
    assert!(
        output.status.success(),
        "schemathesis found failures:\n{text}\n{}\nstrait log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        strait.log_text()
    );
    assert!(text.contains("Tested:"), "{text}");
}

fn h2_frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let len = payload.len();
    let mut out = vec![(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags];
    out.extend_from_slice(&stream.to_be_bytes());
    out.extend_from_slice(payload);
    out
}

/// HTTP/2 protocol errors are counted by code and by who detected them: a malformed
/// request (the router resets the stream), a client's cancel, and a frame on the wrong
/// stream (the router's GOAWAY).
#[test]
fn h2_stream_and_connection_errors_are_counted() {
    let strait = Strait::builder().start();
    let mut conn = TcpStream::connect(strait.http).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    let mut bytes = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    bytes.extend(h2_frame(0x4, 0, 0, &[])); // SETTINGS
    // Stream 1: no :method (HPACK static entries :path / and :scheme http): malformed.
    bytes.extend(h2_frame(0x1, 0x5, 1, &[0x84, 0x86]));
    // Stream 3: a whole request head, then the client cancels it.
    bytes.extend(h2_frame(
        0x1,
        0x4,
        3,
        &[0x82, 0x86, 0x84, 0x41, 0x03, b'w', b'e', b'b'],
    ));
    bytes.extend(h2_frame(0x3, 0, 3, &8u32.to_be_bytes())); // RST_STREAM CANCEL
    conn.write_all(&bytes).expect("write");
    // Wait for stream 1's reset before breaking the connection.
    eventually(Duration::from_secs(10), "the router's RST_STREAM", || {
        match strait.metric(
            "strait_router_h2_stream_errors_total{by=\"router\",code=\"PROTOCOL_ERROR\"}",
        ) {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    // DATA on stream 0 is a connection error.
    conn.write_all(&h2_frame(0x0, 0, 0, b"x")).expect("write");
    let mut rest = Vec::new();
    let _ = conn.read_to_end(&mut rest);
    for (name, what) in [
        (
            "strait_router_h2_connection_errors_total{by=\"router\",code=\"PROTOCOL_ERROR\"}",
            "the connection error",
        ),
        (
            "strait_router_h2_goaways_sent_total{code=\"PROTOCOL_ERROR\"}",
            "the GOAWAY",
        ),
        (
            "strait_router_h2_stream_errors_total{by=\"client\",code=\"CANCEL\"}",
            "the client's cancel",
        ),
    ] {
        eventually(Duration::from_secs(10), what, || match strait.metric(name) {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("{name}: {other:?}")),
        });
    }
    assert_eq!(
        strait.metric("strait_router_h2_goaways_sent_total{code=\"NO_ERROR\"}"),
        Some(0.0)
    );
}
