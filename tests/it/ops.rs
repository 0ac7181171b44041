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
