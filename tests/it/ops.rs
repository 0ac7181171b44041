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
