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
/// Deployments and rollbacks are in: no agent runs containers in this strait, so a
/// deployment is refused (422) at placement, before any generated image name could be
/// resolved against a registry off this host. Excluded: the `positive_data_acceptance`
/// check (the API's validation is stricter than a schema can
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
        .args([
            "--checks",
            "all",
            "--exclude-checks",
            "positive_data_acceptance",
        ])
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
    eventually(
        Duration::from_secs(10),
        "the router's RST_STREAM",
        || match strait
            .metric("strait_router_h2_stream_errors_total{by=\"router\",code=\"PROTOCOL_ERROR\"}")
        {
            Some(n) if n >= 1.0 => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
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
        eventually(Duration::from_secs(10), what, || {
            match strait.metric(name) {
                Some(n) if n >= 1.0 => Ok(()),
                other => Err(format!("{name}: {other:?}")),
            }
        });
    }
    assert_eq!(
        strait.metric("strait_router_h2_goaways_sent_total{code=\"NO_ERROR\"}"),
        Some(0.0)
    );
    // And in the log, with the client and the code.
    let log = strait.log_text();
    let line = log
        .lines()
        .find(|l| l.contains("HTTP/2 connection error: GOAWAY sent"))
        .unwrap_or_else(|| panic!("no log line for the connection error:\n{log}"));
    assert!(
        line.contains("code=\"PROTOCOL_ERROR\"") && line.contains("client=\"127.0.0.1:"),
        "{line}"
    );
}

/// The metric names an expression text uses: `strait_*` and `process_*` tokens.
fn metric_names(text: &str) -> BTreeSet<String> {
    text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
        .filter(|t| t.starts_with("strait_") || t.starts_with("process_"))
        .map(str::to_string)
        .collect()
}

/// Every expression of the dashboard's panels.
fn dashboard_exprs() -> Vec<String> {
    let text = std::fs::read_to_string(root().join("etc/grafana/strait.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    dashboard["panels"]
        .as_array()
        .expect("panels")
        .iter()
        .flat_map(|p| p["targets"].as_array().cloned().unwrap_or_default())
        .filter_map(|t| t["expr"].as_str().map(str::to_string))
        .collect()
}

/// The dashboard is a Grafana dashboard with the panels docs/operations.md lists, each
/// with a query, on the datasource variable; and docs/operations.md names every panel.
#[test]
fn dashboard_has_the_panels_operations_lists() {
    let text = std::fs::read_to_string(root().join("etc/grafana/strait.json")).expect("dashboard");
    let dashboard: serde_json::Value = serde_json::from_str(&text).expect("dashboard is JSON");
    assert_eq!(dashboard["uid"], "strait");
    let docs = std::fs::read_to_string(root().join("docs/operations.md")).expect("operations.md");
    let mut ids = BTreeSet::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().expect("a title");
        assert!(
            ids.insert(panel["id"].as_u64().expect("an id")),
            "duplicate id: {title}"
        );
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{title}");
        let targets = panel["targets"].as_array().expect("targets");
        assert!(!targets.is_empty(), "{title} has no query");
        for target in targets {
            assert!(
                target["expr"].as_str().is_some_and(|e| !e.is_empty()),
                "{title}"
            );
        }
        assert!(
            docs.contains(&format!("**{title}**")),
            "docs/operations.md does not describe panel `{title}`"
        );
    }
    let all = dashboard_exprs().join("\n");
    for needed in [
        "strait_router_requests_total",
        "strait_router_request_duration_seconds_bucket",
        "strait_discovery_service_instances",
        "strait_router_ejections_total",
        "strait_router_propagation_seconds_bucket",
        "strait_discovery_snapshot_age_seconds",
        "strait_discovery_store_connected",
        "strait_dns_queries_total",
        "strait_registry_requests_total",
        "strait_router_certificate_expiry_timestamp_seconds",
    ] {
        assert!(all.contains(needed), "no panel uses {needed}");
    }
}

/// `promtool check rules` and `promtool test rules`, and every alert has a unit test and
/// a section in docs/operations.md.
#[test]
fn alert_rules_check_and_pass_their_unit_tests() {
    let dir = root().join("etc/prometheus");
    for args in [
        &["check", "rules", "strait-alerts.yml"][..],
        &["test", "rules", "strait-alerts.test.yml"][..],
    ] {
        let output = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("run promtool (Debian package prometheus; scripts/test installs it)");
        assert!(
            output.status.success(),
            "promtool {args:?}:\n{}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let rules = std::fs::read_to_string(dir.join("strait-alerts.yml")).expect("rules");
    let tests = std::fs::read_to_string(dir.join("strait-alerts.test.yml")).expect("tests");
    let docs = std::fs::read_to_string(root().join("docs/operations.md")).expect("operations.md");
    let alerts: Vec<&str> = rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .collect();
    assert!(alerts.len() >= 8, "{alerts:?}");
    for alert in alerts {
        assert!(
            tests.contains(&format!("alertname: {alert}\n")),
            "alert {alert} has no promtool unit test"
        );
        assert!(
            docs.contains(&format!("### {alert}")),
            "docs/operations.md has no section for alert {alert}"
        );
    }
}

/// A live strait exports every metric the dashboard and the alert rules use, once it
/// has served what they measure (the demo route, a dead service, DNS, the registry, a
/// TLS listener, a health change).
#[test]
fn dashboard_and_alerts_use_only_exported_metrics() {
    let dir = tempfile::tempdir().expect("tempdir");
    crate::tls::make_ca(dir.path(), "ca");
    let (cert, key) = crate::tls::make_leaf(dir.path(), "ca", "site", &["site.example"]);
    let strait = Strait::builder()
        .config(&format!(
            "[[router.tls]]\naddr = \"127.0.0.1:0\"\ncertificates = [{{ cert = \"{}\", key = \"{}\" }}]\n\n\
             [router.outlier]\nconsecutive_failures = 1\nmax_ejection_percent = 100\n\n[demo]\n",
            cert.display(),
            key.display()
        ))
        .start();
    eventually(Duration::from_secs(30), "the demo service passing", || {
        let (_, service) = strait.get("/v1/services/hello");
        (service["instances"][0]["health"] == "passing")
            .then_some(())
            .ok_or_else(|| service.to_string())
    });
    let closed = crate::harness::free_port();
    let (status, _) = strait.put(
        "/v1/services/dead/instances/d1",
        &format!(r#"{{"address": "127.0.0.1", "port": {closed}}}"#),
    );
    assert_eq!(status, 200);
    let (status, _) = strait.put(
        "/v1/routes/dead",
        r#"{"host": "dead.example", "service": "dead"}"#,
    );
    assert_eq!(status, 200);
    for host in ["localhost", "dead.example"] {
        eventually(
            Duration::from_secs(10),
            "an answer through the router",
            || {
                let (ok, out) = sh(&format!(
                    "curl -s -o /dev/null -w '%{{http_code}}' --max-time 5 -H 'Host: {host}' http://{}/",
                    strait.http
                ));
                match out.as_str() {
                    "200" if host == "localhost" => Ok(()),
                    "502" | "503" if host != "localhost" => Ok(()),
                    _ => Err(format!("{host}: {ok} {out}")),
                }
            },
        );
    }
    let (ok, answer) = sh(&format!(
        "dig @127.0.0.1 -p {} hello.service.strait +short +time=2",
        strait.dns.port()
    ));
    assert!(ok && answer.contains("127.0.0.1"), "{answer}");
    let registry = strait.registry.expect("the registry");
    let _ = http_text(&format!("http://{registry}/v2/"), None);
    let (status, _) = strait.put(
        "/v1/services/dead/instances/d1/health",
        r#"{"health": "critical"}"#,
    );
    assert_eq!(status, 200);

    let rules =
        std::fs::read_to_string(root().join("etc/prometheus/strait-alerts.yml")).expect("rules");
    let mut used = metric_names(&rules);
    used.extend(metric_names(&dashboard_exprs().join("\n")));
    assert!(used.len() > 15, "{used:?}");
    eventually(
        Duration::from_secs(30),
        "every metric used to be exported",
        || {
            let exported: BTreeSet<String> = strait
                .metrics_text()
                .lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| l.split(['{', ' ']).next())
                .map(str::to_string)
                .collect();
            let missing: Vec<&String> = used.difference(&exported).collect();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(format!("not exported: {missing:?}"))
            }
        },
    );
    // The build info names this binary: the package version and the commit that
    // `strait --version` reports.
    let (ok, version, _) = crate::harness::cli(&["--version"]);
    assert!(ok, "{version}");
    let commit = version
        .split("(commit ")
        .nth(1)
        .and_then(|rest| rest.split(')').next())
        .unwrap_or_else(|| panic!("no commit in {version:?}"));
    assert!(!commit.is_empty() && commit != "unknown", "{version}");
    let expected = format!(
        "strait_build_info{{commit=\"{commit}\",version=\"{}\"}} 1",
        env!("CARGO_PKG_VERSION")
    );
    let text = strait.metrics_text();
    assert!(
        text.lines().any(|l| l == expected),
        "no `{expected}` in:\n{}",
        text.lines()
            .filter(|l| l.contains("build_info"))
            .collect::<Vec<_>>()
            .join("\n")
    );
}

/// The systemd unit passes `systemd-analyze verify` (its binary path pointed at the
/// built one), keeps its hardening, and `systemd-analyze security` rates its exposure
/// at most 2.5 of 10 (1.7 now).
#[test]
fn systemd_unit_verifies() {
    let unit = std::fs::read_to_string(root().join("etc/systemd/strait.service")).expect("unit");
    for setting in [
        "DynamicUser=yes",
        "StateDirectory=strait",
        "ProtectSystem=strict",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE",
        "AmbientCapabilities=CAP_NET_BIND_SERVICE",
        "NoNewPrivileges=yes",
    ] {
        assert!(
            unit.lines().any(|l| l.trim() == setting),
            "the unit lost {setting}"
        );
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("strait.service");
    std::fs::write(
        &path,
        unit.replace("/usr/local/bin/strait", crate::harness::STRAIT),
    )
    .expect("write unit");
    let output = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&path)
        .env("SYSTEMD_LOG_LEVEL", "notice")
        .output()
        .expect("run systemd-analyze (Debian package systemd; scripts/test installs it)");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    // Lines about other units on this machine are not ours to judge.
    let ours: Vec<&str> = text.lines().filter(|l| l.contains("strait")).collect();
    assert!(
        output.status.success() && ours.is_empty(),
        "systemd-analyze verify:\n{text}"
    );
    let security = Command::new("systemd-analyze")
        // The threshold is in tenths.
        .args(["security", "--offline=true", "--threshold=25"])
        .arg(&path)
        .output()
        .expect("run systemd-analyze security");
    assert!(
        security.status.success(),
        "exposure above 2.5 (of 10):\n{}{}",
        String::from_utf8_lossy(&security.stdout),
        String::from_utf8_lossy(&security.stderr)
    );
}
