//! Teams on the real parts: two teams with their tokens against the admin API, skopeo
//! against the registry, a real slapd for LDAP groups (stopped mid-test), the audit log.

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{Strait, cli, eventually, free_port, http};
use crate::registry::make_image;

const ADMIN_TOKEN: &str = "admin-token-0123456789";

fn config(htpasswd: &Path, extra: &str) -> String {
    format!(
        r#"
[admin]
token = "{ADMIN_TOKEN}"

[registry.auth]
htpasswd = "{htpasswd}"

[auth]
admins = ["carol"]
{extra}

[[team]]
name = "web"
members = ["alice"]
ldap_group = "web-devs"
[team.owns]
services = ["web", "web-*"]
hosts = ["web.test", "*.web.test"]
repositories = ["web/*"]

[[team]]
name = "api"
members = ["bob"]
[team.owns]
services = ["api"]
hosts = ["api.test", "*.api.test"]
repositories = ["api/*"]
"#,
        htpasswd = htpasswd.display()
    )
}

fn htpasswd(dir: &Path) -> std::path::PathBuf {
    let path = dir.join("htpasswd");
    let lines: Vec<String> = [
        ("alice", "alice-pass"),
        ("bob", "bob-pass"),
        ("carol", "carol-pass"),
    ]
    .iter()
    .map(|(u, p)| registry::auth::htpasswd_line(u, p).expect("bcrypt"))
    .collect();
    std::fs::write(&path, lines.join("\n") + "\n").expect("htpasswd");
    path
}

/// `strait token create` as the admin; returns (id, secret).
fn make_token(strait: &Strait, team: &str) -> (String, String) {
    let admin = format!("http://{}", strait.admin);
    let (ok, out, err) = cli(&[
        "token",
        "create",
        "--team",
        team,
        "--admin",
        &admin,
        "--token",
        ADMIN_TOKEN,
    ]);
    assert!(ok, "{out}{err}");
    let secret = out.trim().to_string();
    let id = secret
        .split('_')
        .nth(1)
        .expect("strait_<id>_<secret>")
        .to_string();
    assert!(err.contains("shown once"), "{err}");
    (id, secret)
}

fn put(strait: &Strait, path: &str, body: &str, token: &str) -> (u16, Value) {
    http(strait, "PUT", path, Some(body), Some(token))
}

fn skopeo_push(src: &str, registry: SocketAddr, repo: &str, creds: Option<&str>) -> (bool, String) {
    let dest = format!("docker://{registry}/{repo}:v1");
    let mut args = vec!["copy", "--dest-tls-verify=false"];
    if let Some(creds) = creds {
        args.extend(["--dest-creds", creds]);
    }
    args.extend([src, dest.as_str()]);
    let output = Command::new("skopeo").args(&args).output().expect("skopeo");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

fn audit(strait: &Strait) -> Vec<Value> {
    audit_query(strait, "")
}

/// `GET /v1/audit<query>` as the admin.
fn audit_query(strait: &Strait, query: &str) -> Vec<Value> {
    let (status, body) = http(
        strait,
        "GET",
        &format!("/v1/audit{query}"),
        None,
        Some(ADMIN_TOKEN),
    );
    assert_eq!(status, 200, "{body}");
    body["records"].as_array().cloned().unwrap_or_default()
}

fn skopeo_delete(registry: SocketAddr, image: &str, creds: &str) -> (bool, String) {
    let output = Command::new("skopeo")
        .args(["delete", "--tls-verify=false", "--creds", creds])
        .arg(format!("docker://{registry}/{image}"))
        .output()
        .expect("skopeo");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

/// A Distribution API request with Basic auth: (status, body).
fn registry_request(
    registry: SocketAddr,
    method: &str,
    path: &str,
    creds: Option<&str>,
) -> (u16, String) {
    use base64::Engine as _;
    let url = format!("http://{registry}{path}");
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_global(Some(Duration::from_secs(20)))
        .build()
        .into();
    let request = match method {
        "DELETE" => agent.delete(&url),
        "HEAD" => agent.head(&url),
        _ => agent.get(&url),
    };
    let request = match creds {
        Some(creds) => request.header(
            "authorization",
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(creds)
            ),
        ),
        None => request,
    };
    let mut response = request
        .call()
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    (
        response.status().as_u16(),
        response.body_mut().read_to_string().unwrap_or_default(),
    )
}

/// The value of the sample of `name` with all of `labels` in a Prometheus text page.
fn sample(metrics: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter(|l| {
            l.strip_prefix(name)
                .is_some_and(|rest| rest.starts_with([' ', '{']))
        })
        .find(|l| {
            labels
                .iter()
                .all(|(k, v)| l.contains(&format!("{k}=\"{v}\"")))
        })
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// The records matching every `(field, value)`; a value ending in `*` is a prefix.
fn matching<'a>(records: &'a [Value], fields: &[(&str, &str)]) -> Vec<&'a Value> {
    records
        .iter()
        .filter(|r| {
            fields.iter().all(|(k, v)| {
                let actual = match &r[*k] {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                match v.strip_suffix('*') {
                    Some(prefix) => actual.starts_with(prefix),
                    None => actual == *v,
                }
            })
        })
        .collect()
}

#[test]
fn teams_change_only_what_they_own_and_every_attempt_is_audited() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let htpasswd = htpasswd(tmp.path());
    let audit_log = tmp.path().join("audit.log");
    let strait = Strait::builder()
        .config(&config(
            &htpasswd,
            &format!("audit_log = \"{}\"", audit_log.display()),
        ))
        .start();
    let (web_id, web) = make_token(&strait, "web");
    let (api_id, api) = make_token(&strait, "api");

    // Team web routes its host and registers its instances.
    let (status, body) = put(
        &strait,
        "/v1/routes/web",
        r#"{"host":"web.test","service":"web"}"#,
        &web,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = put(
        &strait,
        "/v1/services/web/instances/w1",
        r#"{"address":"127.0.0.1","port":9000}"#,
        &web,
    );
    assert_eq!(status, 200, "{body}");

    // Team api cannot take web's host, a wildcard over it, web's instances or web's app.
    let (status, body) = put(
        &strait,
        "/v1/routes/steal",
        r#"{"host":"web.test","service":"api"}"#,
        &api,
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("team `web`")),
        "{body}"
    );
    let (status, body) = put(
        &strait,
        "/v1/routes/wide",
        r#"{"host":"*.test","service":"api"}"#,
        &api,
    );
    assert_eq!(status, 403, "a wildcard that merely overlaps: {body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("route `web` of team `web`")),
        "{body}"
    );
    let (status, body) = http(
        &strait,
        "DELETE",
        "/v1/services/web/instances/w1",
        None,
        Some(&api),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = http(
        &strait,
        "POST",
        "/v1/apps/web/deployments",
        Some(r#"{"image":"127.0.0.1:1/web/app:v1","instances":1}"#),
        Some(&api),
    );
    assert_eq!(status, 403, "{body}");
    let (status, body) = http(&strait, "DELETE", "/v1/routes/web", None, Some(&api));
    assert_eq!(status, 403, "{body}");
    let (status, body) = put(
        &strait,
        "/v1/routes/api",
        r#"{"host":"api.test","service":"web"}"#,
        &api,
    );
    assert_eq!(
        status, 403,
        "a team routes only to its own services: {body}"
    );
    // Its own host is fine.
    let (status, body) = put(
        &strait,
        "/v1/routes/api",
        r#"{"host":"*.api.test","service":"api"}"#,
        &api,
    );
    assert_eq!(status, 200, "{body}");
    // The admin can do anything; a team cannot make tokens.
    let (status, body) = put(
        &strait,
        "/v1/routes/misc",
        r#"{"host":"misc.test","service":"web"}"#,
        ADMIN_TOKEN,
    );
    assert_eq!(status, 200, "{body}");
    let (status, _) = http(
        &strait,
        "POST",
        "/v1/tokens",
        Some(r#"{"teams":["api"]}"#),
        Some(&api),
    );
    assert_eq!(status, 403);
    let (status, body) = http(
        &strait,
        "POST",
        "/v1/tokens",
        Some(r#"{"teams":["nope"]}"#),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("unknown team `nope`")),
        "{body}"
    );

    // Percent-encoded names are the names the handlers see (`%77eb` is `web`).
    let (status, body) = http(&strait, "DELETE", "/v1/routes/%77eb", None, Some(&api));
    assert_eq!(status, 403, "{body}");
    let (status, body) = put(
        &strait,
        "/v1/routes/%77eb",
        r#"{"host":"*.api.test","service":"api"}"#,
        &api,
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        http(&strait, "GET", "/v1/routes/web", None, Some(ADMIN_TOKEN)).0,
        200,
        "web's route is still there"
    );
    // A deployment manages the route named after its app: it must be the team's.
    let (status, body) = put(
        &strait,
        "/v1/routes/web-x",
        r#"{"host":"x.api.test","service":"api"}"#,
        ADMIN_TOKEN,
    );
    assert_eq!(status, 200, "{body}");
    let (status, body) = http(
        &strait,
        "POST",
        "/v1/apps/web-x/deployments",
        Some(r#"{"image":"127.0.0.1:1/web/app:v1","instances":1}"#),
        Some(&web),
    );
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("route `web-x` belongs to team `api`")),
        "{body}"
    );
    // A lease is its grantor's.
    let (status, lease) = http(
        &strait,
        "POST",
        "/v1/leases",
        Some(r#"{"ttl":"30s"}"#),
        Some(&web),
    );
    assert_eq!(status, 201, "{lease}");
    let lease = lease["id"].as_str().expect("lease id").to_string();
    let (status, body) = put(&strait, &format!("/v1/leases/{lease}/renew"), "{}", &api);
    assert_eq!(status, 403, "{body}");
    let (status, body) = put(&strait, &format!("/v1/leases/{lease}/renew"), "{}", &web);
    assert_eq!(status, 200, "{body}");

    // Every attempt is in the audit log, refused ones with who and why.
    let records = audit(&strait);
    let denied: Vec<&Value> = records.iter().filter(|r| r["result"] == "denied").collect();
    assert_eq!(denied.len(), 11, "{records:#?}");
    assert!(
        denied
            .iter()
            .all(|r| r["token"] == api_id.as_str() || r["path"] == "/v1/apps/web-x/deployments")
    );
    let first = records
        .iter()
        .find(|r| r["path"] == "/v1/routes/web" && r["method"] == "PUT")
        .expect("web's route write");
    assert_eq!(first["who"], format!("token:{web_id}"));
    assert_eq!(first["teams"], "web");
    assert_eq!(first["result"], "ok");
    assert!(
        first["revision_after"].as_u64() > first["revision_before"].as_u64(),
        "{first}"
    );
    let (_, web_view) = http(&strait, "GET", "/v1/audit", None, Some(&web));
    assert!(
        web_view["records"]
            .as_array()
            .is_some_and(|r| r.iter().all(|r| r["teams"] == "web")),
        "a team sees its own records: {web_view}"
    );
    let (_, metrics) = crate::harness::http_text(&strait.url("/metrics"), Some(ADMIN_TOKEN));
    assert!(
        metrics.contains("strait_admin_denied_writes_total{team=\"api\"} 10"),
        "{metrics}"
    );
    // Writes by team and result: web's route, instance, lease and renewal, and its refused
    // deployment; api's own route and its ten refusals; the admin's unknown team.
    for (team, result, count) in [
        ("web", "ok", 4.0),
        ("web", "denied", 1.0),
        ("api", "ok", 1.0),
        ("api", "denied", 10.0),
        ("admin", "error", 1.0),
    ] {
        assert_eq!(
            sample(
                &metrics,
                "strait_admin_writes_total",
                &[("team", team), ("result", result)]
            ),
            Some(count),
            "strait_admin_writes_total{{team={team},result={result}}}: {metrics}"
        );
        let records = matching(&records, &[("teams", team), ("result", result)]);
        assert_eq!(records.len() as f64, count, "{records:#?}");
    }
    let lines = std::fs::read_to_string(&audit_log).unwrap_or_default();
    assert!(
        lines.lines().count() >= records.len(),
        "written as JSON lines"
    );

    // Tokens: never in a URL, revocable, expiring.
    let (status, _) = http(
        &strait,
        "GET",
        &format!("/v1/routes?token={web}"),
        None,
        None,
    );
    assert_eq!(status, 400);
    let (status, _) = http(&strait, "GET", "/v1/routes", None, None);
    assert_eq!(status, 401);
    let (status, _) = http(
        &strait,
        "DELETE",
        &format!("/v1/tokens/{api_id}"),
        None,
        Some(ADMIN_TOKEN),
    );
    assert_eq!(status, 204);
    let (status, body) = http(&strait, "GET", "/v1/routes", None, Some(&api));
    assert_eq!(status, 401, "revoked: {body}");
    let (status, body) = http(
        &strait,
        "POST",
        "/v1/tokens",
        Some(r#"{"teams":["web"],"ttl":"1m"}"#),
        Some(ADMIN_TOKEN),
    );
    assert_eq!(status, 201, "{body}");
    assert!(body["expires"].is_string());
    let (status, body) = http(&strait, "GET", "/v1/tokens", None, Some(ADMIN_TOKEN));
    assert_eq!(status, 200);
    assert!(
        !body.to_string().contains(&web[30..]),
        "no secret is listed"
    );

    // The registry: pushes only to the team's repositories; anonymous pull stays.
    let before_registry = audit(&strait)
        .last()
        .and_then(|r| r["seq"].as_u64())
        .expect("records");
    // A second between the two parts, so `since=<time>` below tells them apart.
    std::thread::sleep(Duration::from_millis(1100));
    let registry = strait.registry.expect("registry");
    let source = tmp.path().join("image");
    make_image(&source, "v1", "amd64", &[("f", b"team image".to_vec())]);
    let src = format!("oci:{}:v1", source.display());
    let (ok, err) = skopeo_push(&src, registry, "web/app", Some("alice:alice-pass"));
    assert!(ok, "{err}");
    let (ok, err) = skopeo_push(&src, registry, "api/app", Some("alice:alice-pass"));
    assert!(!ok, "alice pushed to api's repository");
    assert!(err.contains("denied") || err.contains("DENIED"), "{err}");
    let (ok, err) = skopeo_push(&src, registry, "api/app", Some("bob:bob-pass"));
    assert!(ok, "{err}");
    let (ok, _) = skopeo_push(&src, registry, "web/other", None);
    assert!(!ok, "anonymous push with teams");
    let (ok, err) = skopeo_push(&src, registry, "api/by-admin", Some("carol:carol-pass"));
    assert!(ok, "an admin user pushes anywhere: {err}");
    let inspect = Command::new("skopeo")
        .args([
            "inspect",
            "--tls-verify=false",
            &format!("docker://{registry}/web/app:v1"),
        ])
        .output()
        .expect("skopeo");
    assert!(inspect.status.success(), "anonymous pull");

    // Deletes: only from the team's repositories (skopeo's token flow, and Basic auth).
    let (ok, err) = skopeo_delete(registry, "web/app:v1", "alice:alice-pass");
    assert!(ok, "alice deletes from web's repository: {err}");
    let (ok, err) = skopeo_delete(registry, "api/app:v1", "alice:alice-pass");
    assert!(!ok, "alice deleted from api's repository");
    assert!(err.contains("denied") || err.contains("DENIED"), "{err}");
    let (status, body) = registry_request(
        registry,
        "DELETE",
        "/v2/api/app/manifests/v1",
        Some("alice:alice-pass"),
    );
    assert_eq!(status, 403, "{body}");
    assert!(body.contains("DENIED"), "{body}");
    assert!(
        body.contains("repository `api/app` belongs to team `api`; user:alice may not change it"),
        "{body}"
    );
    let (status, body) = registry_request(
        registry,
        "DELETE",
        "/v2/api/app/manifests/v1",
        Some("bob:bob-pass"),
    );
    assert_eq!(status, 202, "bob deletes api's tag: {body}");
    let (status, _) = registry_request(registry, "HEAD", "/v2/api/app/manifests/v1", None);
    assert_eq!(status, 404, "the tag is gone");

    // Every push and delete is in the same audit log, refused ones with who and why: one
    // record per completed upload, manifest and delete, none per chunk nor per read.
    let records = audit_query(&strait, &format!("?since={before_registry}"));
    assert!(
        records.iter().all(
            |r| r["path"].as_str().is_some_and(|p| p.starts_with("/v2/"))
                && r["seq"].as_u64() > Some(before_registry)
        ),
        "{records:#?}"
    );
    for method in ["GET", "HEAD", "PATCH"] {
        assert!(
            matching(&records, &[("method", method)]).is_empty(),
            "{records:#?}"
        );
    }
    let pushed = matching(
        &records,
        &[
            ("who", "user:alice"),
            ("teams", "web"),
            ("method", "PUT"),
            ("object", "manifest web/app:v1"),
            ("status", "201"),
            ("result", "ok"),
            ("message", "digest sha256:*"),
        ],
    );
    assert_eq!(pushed.len(), 1, "alice's push: {records:#?}");
    assert!(pushed[0]["token"].is_null(), "{}", pushed[0]);
    let blobs = matching(
        &records,
        &[
            ("who", "user:alice"),
            ("object", "blob web/app@sha256:*"),
            ("result", "ok"),
        ],
    );
    assert_eq!(blobs.len(), 2, "a layer and a config: {records:#?}");
    let refused: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["who"] == "user:alice"
                && r["teams"] == "web"
                && r["method"] != "DELETE"
                && r["result"] == "denied"
                && r["status"] == 401
                && r["object"].as_str().is_some_and(|o| o.contains(" api/app"))
                && r["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("repository `api/app` belongs to team `api`"))
        })
        .collect();
    assert!(!refused.is_empty(), "alice's refused push: {records:#?}");
    let anonymous: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["who"] == "anonymous"
                && r["teams"] == "anonymous"
                && r["result"] == "denied"
                && r["status"] == 401
                && r["object"]
                    .as_str()
                    .is_some_and(|o| o.contains(" web/other"))
        })
        .collect();
    assert!(!anonymous.is_empty(), "the anonymous push: {records:#?}");
    assert_eq!(
        matching(
            &records,
            &[
                ("who", "user:bob"),
                ("teams", "api"),
                ("method", "PUT"),
                ("object", "manifest api/app:v1"),
                ("result", "ok"),
            ],
        )
        .len(),
        1,
        "{records:#?}"
    );
    assert_eq!(
        matching(
            &records,
            &[
                ("who", "user:carol"),
                ("teams", "admin"),
                ("object", "manifest api/by-admin:v1"),
                ("result", "ok"),
            ],
        )
        .len(),
        1,
        "{records:#?}"
    );
    let deleted = matching(
        &records,
        &[
            ("who", "user:alice"),
            ("method", "DELETE"),
            ("object", "manifest web/app@sha256:*"),
            ("status", "202"),
            ("result", "ok"),
        ],
    );
    assert_eq!(deleted.len(), 1, "alice's delete: {records:#?}");
    let delete_refused: Vec<&Value> = records
        .iter()
        .filter(|r| {
            r["who"] == "user:alice"
                && r["method"] == "DELETE"
                && r["result"] == "denied"
                && r["object"]
                    .as_str()
                    .is_some_and(|o| o.starts_with("manifest api/app"))
        })
        .collect();
    assert!(
        delete_refused.iter().any(|r| r["status"] == 403
            && r["object"] == "manifest api/app:v1"
            && r["message"]
                == "repository `api/app` belongs to team `api`; user:alice may not change it"),
        "{records:#?}"
    );
    assert!(
        delete_refused.iter().any(|r| r["status"] == 401),
        "skopeo's refused delete: {records:#?}"
    );
    assert_eq!(
        matching(
            &records,
            &[
                ("who", "user:bob"),
                ("method", "DELETE"),
                ("object", "manifest api/app:v1"),
                ("status", "202"),
                ("result", "ok"),
            ],
        )
        .len(),
        1,
        "{records:#?}"
    );

    // `since` as an RFC 3339 time: the same records (the admin API's are a second older).
    let first_time = records[0]["time"].as_str().expect("time");
    let by_time = audit_query(&strait, &format!("?since={first_time}"));
    let seqs = |records: &[Value]| -> Vec<u64> {
        records.iter().filter_map(|r| r["seq"].as_u64()).collect()
    };
    assert_eq!(seqs(&by_time), seqs(&records));
    let (status, body) = http(
        &strait,
        "GET",
        "/v1/audit?since=yesterday",
        None,
        Some(ADMIN_TOKEN),
    );
    assert_eq!(status, 400, "{body}");

    // The JSON lines file has them too.
    let lines = std::fs::read_to_string(&audit_log).unwrap_or_default();
    let registry_lines: Vec<Value> = lines
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["path"].as_str().is_some_and(|p| p.starts_with("/v2/")))
        .collect();
    assert_eq!(registry_lines, records);

    // `strait audit --since`, by sequence number and by time.
    let admin = format!("http://{}", strait.admin);
    for since in [before_registry.to_string(), first_time.to_string()] {
        let (ok, out, err) = cli(&[
            "audit",
            "--since",
            &since,
            "--admin",
            &admin,
            "--token",
            ADMIN_TOKEN,
        ]);
        assert!(ok, "{out}{err}");
        assert_eq!(out.lines().count(), records.len(), "{out}");
        assert!(
            out.lines().any(|l| l.contains("user:alice")
                && l.contains(" PUT ")
                && l.contains("manifest web/app:v1")
                && l.contains(" 201 ok")),
            "{out}"
        );
        assert!(
            out.lines().any(|l| l.contains("user:alice")
                && l.contains(" DELETE ")
                && l.contains(" 403 denied: repository `api/app` belongs to team `api`")),
            "{out}"
        );
        assert!(
            out.lines()
                .any(|l| l.contains("anonymous") && l.contains(" 401 denied: ")),
            "{out}"
        );
    }

    // Registry writes by team and result, and refusals by team, as the records say.
    let (_, metrics) = crate::harness::http_text(&strait.url("/metrics"), Some(ADMIN_TOKEN));
    for team in ["web", "api", "admin", "anonymous"] {
        for result in ["ok", "denied", "error"] {
            let count = matching(&records, &[("teams", team), ("result", result)]).len();
            let metric = sample(
                &metrics,
                "strait_registry_writes_total",
                &[("team", team), ("result", result)],
            );
            assert_eq!(
                metric.unwrap_or(0.0),
                count as f64,
                "strait_registry_writes_total{{team={team},result={result}}}: {metrics}"
            );
        }
    }
    assert_eq!(
        sample(
            &metrics,
            "strait_registry_denied_writes_total",
            &[("team", "web")]
        ),
        Some((refused.len() + delete_refused.len()) as f64),
        "{metrics}"
    );
    assert_eq!(
        sample(
            &metrics,
            "strait_registry_denied_writes_total",
            &[("team", "anonymous")]
        ),
        Some(anonymous.len() as f64),
        "{metrics}"
    );
}

#[test]
fn tokens_are_listed_revoked_and_expire_from_the_cli() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let htpasswd = htpasswd(tmp.path());
    let strait = Strait::builder().config(&config(&htpasswd, "")).start();
    let admin = format!("http://{}", strait.admin);
    let strait_cli = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--admin", &admin, "--token", ADMIN_TOKEN]);
        cli(&all)
    };

    // A token that lives a few seconds; the API takes 1s to 3y.
    let (ok, out, err) = strait_cli(&[
        "token",
        "create",
        "--team",
        "web",
        "--ttl",
        "3s",
        "--description",
        "short-lived",
    ]);
    assert!(ok, "{out}{err}");
    let short = out.trim().to_string();
    let short_id = short
        .split('_')
        .nth(1)
        .expect("strait_<id>_<secret>")
        .to_string();
    assert!(err.contains(", expires 20"), "{err}");
    let made = std::time::Instant::now();
    let (ok, out, err) = strait_cli(&["token", "create", "--team", "web", "--ttl", "500ms"]);
    assert!(!ok, "{out}");
    assert!(err.contains("ttl must be 1s to 3y"), "{err}");
    let (long_id, long) = make_token(&strait, "api");
    let (status, body) = http(&strait, "GET", "/v1/routes", None, Some(&short));
    assert_eq!(status, 200, "not expired yet: {body}");

    // `strait token ls`: ids, teams, expiry, description; never a secret.
    let (ok, out, err) = strait_cli(&["token", "ls"]);
    assert!(ok, "{out}{err}");
    let mut lines = out.lines();
    let header: Vec<&str> = lines
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        header,
        ["ID", "FOR", "CREATED", "EXPIRES", "DESCRIPTION"],
        "{out}"
    );
    let rows: Vec<Vec<&str>> = lines.map(|l| l.split_whitespace().collect()).collect();
    assert_eq!(rows.len(), 2, "{out}");
    let row = |id: &str| -> Vec<&str> {
        rows.iter()
            .find(|r| r.first() == Some(&id))
            .cloned()
            .unwrap_or_else(|| panic!("token {id} is not listed: {out}"))
    };
    let short_row = row(&short_id);
    assert_eq!(short_row[1], "web", "{out}");
    assert!(
        short_row[3].starts_with("20") && short_row[3].ends_with('Z'),
        "{out}"
    );
    assert_eq!(short_row.get(4), Some(&"short-lived"), "{out}");
    let long_row = row(&long_id);
    assert_eq!(long_row[1], "api", "{out}");
    assert_eq!(long_row[3], "never", "{out}");
    assert!(
        !out.contains(&short[22..]) && !out.contains(&long[22..]),
        "{out}"
    );

    // Past its ttl: 401 saying so.
    std::thread::sleep(
        Duration::from_secs(3).saturating_sub(made.elapsed()) + Duration::from_millis(1100),
    );
    let (status, body) = http(&strait, "GET", "/v1/routes", None, Some(&short));
    assert_eq!(status, 401, "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!("token {short_id} expired at 20")),
        "{body}"
    );
    let (ok, out, err) = cli(&["svc", "ls", "--admin", &admin, "--token", &short]);
    assert!(!ok, "{out}");
    assert!(err.contains("expired at"), "the CLI says why: {err}");

    // `strait token revoke`: gone from the list, and refused.
    let (ok, out, err) = strait_cli(&["token", "revoke", &long_id]);
    assert!(ok, "{out}{err}");
    assert_eq!(out.trim(), format!("token {long_id} revoked"));
    let (status, body) = http(&strait, "GET", "/v1/routes", None, Some(&long));
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["message"], "unknown or revoked token", "{body}");
    let (ok, out, _) = strait_cli(&["token", "ls"]);
    assert!(ok);
    assert!(!out.contains(&long_id) && out.contains(&short_id), "{out}");
    let (ok, _, err) = strait_cli(&["token", "revoke", &long_id]);
    assert!(!ok);
    assert!(
        err.contains(&format!("token `{long_id}` not found")),
        "{err}"
    );
}

#[test]
fn overlapping_teams_and_teams_without_an_admin_token_are_refused() {
    let text = r#"
[admin]
token = "admin-token-0123456789"
[[team]]
name = "web"
owns = { hosts = ["*.example.com"] }
[[team]]
name = "api"
owns = { hosts = ["api.example.com"] }
"#;
    let error = Strait::builder().config(text).start_expecting_failure();
    assert!(
        error
            .contains("teams `web` and `api` both own hosts `*.example.com` and `api.example.com`"),
        "{error}"
    );
    let text = r#"
[[team]]
name = "web"
"#;
    let error = Strait::builder().config(text).start_expecting_failure();
    assert!(error.contains("`admin.token` is not"), "{error}");
}

/// A real slapd (Debian's), on a free loopback port, with a test directory.
struct Slapd {
    child: Option<Child>,
    dir: tempfile::TempDir,
    port: u16,
}

impl Slapd {
    fn start() -> Slapd {
        let slapd = ["/usr/sbin/slapd", "/usr/sbin/slapadd"];
        for tool in slapd {
            assert!(
                Path::new(tool).exists(),
                "{tool} is missing: install Debian's slapd (scripts/test does)"
            );
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let d = dir.path();
        std::fs::create_dir_all(d.join("db")).expect("db");
        std::fs::write(
            d.join("slapd.conf"),
            format!(
                "include /etc/ldap/schema/core.schema\ninclude /etc/ldap/schema/cosine.schema\n\
                 include /etc/ldap/schema/inetorgperson.schema\nmodulepath /usr/lib/ldap\n\
                 moduleload back_mdb\npidfile {0}/slapd.pid\ndatabase mdb\n\
                 suffix \"dc=example,dc=com\"\nrootdn \"cn=admin,dc=example,dc=com\"\n\
                 rootpw admin-secret\ndirectory {0}/db\n\
                 access to attrs=userPassword by anonymous auth by self read by * none\n\
                 access to * by * read\n",
                d.display()
            ),
        )
        .expect("slapd.conf");
        std::fs::write(
            d.join("data.ldif"),
            "dn: dc=example,dc=com\nobjectClass: dcObject\nobjectClass: organization\no: Example\ndc: example\n\n\
             dn: ou=people,dc=example,dc=com\nobjectClass: organizationalUnit\nou: people\n\n\
             dn: ou=groups,dc=example,dc=com\nobjectClass: organizationalUnit\nou: groups\n\n\
             dn: uid=dave,ou=people,dc=example,dc=com\nobjectClass: inetOrgPerson\nuid: dave\ncn: Dave\nsn: Dave\nuserPassword: dave-pass\n\n\
             dn: uid=erin,ou=people,dc=example,dc=com\nobjectClass: inetOrgPerson\nuid: erin\ncn: Erin\nsn: Erin\nuserPassword: erin-pass\n\n\
             dn: cn=web-devs,ou=groups,dc=example,dc=com\nobjectClass: groupOfNames\ncn: web-devs\nmember: uid=dave,ou=people,dc=example,dc=com\nmember: uid=erin,ou=people,dc=example,dc=com\n",
        )
        .expect("ldif");
        let out = Command::new("/usr/sbin/slapadd")
            .arg("-f")
            .arg(d.join("slapd.conf"))
            .arg("-l")
            .arg(d.join("data.ldif"))
            .output()
            .expect("slapadd");
        assert!(
            out.status.success(),
            "slapadd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let mut slapd = Slapd {
            child: None,
            dir,
            port: free_port(),
        };
        slapd.run();
        slapd
    }

    fn run(&mut self) {
        let child = Command::new("/usr/sbin/slapd")
            .arg("-f")
            .arg(self.dir.path().join("slapd.conf"))
            .arg("-h")
            .arg(format!("ldap://127.0.0.1:{}/", self.port))
            // In the foreground, so this handle is the server.
            .args(["-d", "0"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("slapd");
        self.child = Some(child);
        let port = self.port;
        eventually(Duration::from_secs(10), "slapd to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .map(drop)
                .map_err(|e| e.to_string())
        });
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Slapd {
    fn drop(&mut self) {
        self.stop();
    }
}

#[test]
fn ldap_groups_name_teams_and_an_unreachable_directory_fails_closed() {
    let mut slapd = Slapd::start();
    let tmp = tempfile::tempdir().expect("tempdir");
    let htpasswd = htpasswd(tmp.path());
    let ldap = format!(
        r#"
[auth.ldap]
url = "ldap://127.0.0.1:{}"
user_dn = "uid={{user}},ou=people,dc=example,dc=com"
group_base = "ou=groups,dc=example,dc=com"
cache_ttl = "4s"
timeout = "2s"
"#,
        slapd.port
    );
    let strait = Strait::builder().config(&config(&htpasswd, &ldap)).start();
    let registry = strait.registry.expect("registry");
    let source = tmp.path().join("image");
    make_image(&source, "v1", "amd64", &[("f", b"ldap image".to_vec())]);
    let src = format!("oci:{}:v1", source.display());

    // dave is in web-devs, so in team web.
    let (ok, err) = skopeo_push(&src, registry, "web/ldap", Some("dave:dave-pass"));
    assert!(ok, "{err}");
    let (ok, err) = skopeo_push(&src, registry, "api/ldap", Some("dave:dave-pass"));
    assert!(
        !ok && (err.contains("denied") || err.contains("DENIED")),
        "{err}"
    );
    let (ok, _) = skopeo_push(&src, registry, "web/ldap", Some("dave:wrong"));
    assert!(!ok, "a wrong password");

    // The directory goes down: dave's recent login is remembered for a bounded time,
    // erin (never seen) is refused with the reason.
    slapd.stop();
    let (ok, err) = skopeo_push(&src, registry, "web/ldap2", Some("dave:dave-pass"));
    assert!(ok, "cached membership: {err}");
    let (ok, err) = skopeo_push(&src, registry, "web/ldap3", Some("erin:erin-pass"));
    assert!(!ok, "fail closed");
    assert!(err.contains("LDAP"), "a clear error: {err}");
    std::thread::sleep(Duration::from_secs(4));
    let (ok, err) = skopeo_push(&src, registry, "web/ldap4", Some("dave:dave-pass"));
    assert!(!ok && err.contains("LDAP"), "the cache is bounded: {err}");

    // Back up: logins work again.
    slapd.run();
    let (ok, err) = skopeo_push(&src, registry, "web/ldap5", Some("erin:erin-pass"));
    assert!(ok, "{err}");
}

#[test]
fn with_read_own_teams_see_only_what_they_own() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let htpasswd = htpasswd(tmp.path());
    let strait = Strait::builder()
        .config(&config(&htpasswd, "read = \"own\""))
        .start();
    let (_, web) = make_token(&strait, "web");
    let (_, api) = make_token(&strait, "api");
    for (name, host, service, token) in [
        ("web", "web.test", "web", &web),
        ("api", "api.test", "api", &api),
    ] {
        let (status, body) = put(
            &strait,
            &format!("/v1/routes/{name}"),
            &format!(r#"{{"host":"{host}","service":"{service}"}}"#),
            token,
        );
        assert_eq!(status, 200, "{body}");
    }
    let (status, body) = http(&strait, "GET", "/v1/routes", None, Some(&api));
    assert_eq!(status, 200);
    let names: Vec<&String> = body["routes"].as_object().expect("routes").keys().collect();
    assert_eq!(names, ["api"], "{body}");
    let (status, _) = http(&strait, "GET", "/v1/routes/web", None, Some(&api));
    assert_eq!(status, 403);
    let (status, body) = http(&strait, "GET", "/v1/routes", None, Some(ADMIN_TOKEN));
    assert_eq!(status, 200);
    assert_eq!(
        body["routes"].as_object().map(|r| r.len()),
        Some(2),
        "the admin sees all"
    );
}

/// [`config`] with TCP listen addresses: web owns `127.0.0.1:<web_port>`, api every
/// address on `<api_port>`.
fn config_with_tcp(htpasswd: &Path, web_port: u16, api_port: u16) -> String {
    let text = config(htpasswd, "");
    let web = r#"repositories = ["web/*"]"#;
    let api = r#"repositories = ["api/*"]"#;
    assert!(text.contains(web) && text.contains(api));
    text.replace(web, &format!("{web}\ntcp = [\"127.0.0.1:{web_port}\"]"))
        .replace(api, &format!("{api}\ntcp = [\"*:{api_port}\"]"))
}

#[test]
fn teams_listen_and_drain_only_what_they_own_and_every_attempt_is_audited() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let htpasswd = htpasswd(tmp.path());
    let mut ports: Vec<u16> = Vec::new();
    while ports.len() < 3 {
        let port = free_port();
        if !ports.contains(&port) {
            ports.push(port);
        }
    }
    let (web_port, api_port, unowned) = (ports[0], ports[1], ports[2]);
    let services = tmp.path().join("services.toml");
    std::fs::write(
        &services,
        "[[service]]\nservice = \"web\"\nid = \"web-1\"\naddress = \"127.0.0.1\"\nport = 7001\n\n\
         [[service]]\nservice = \"api\"\nid = \"api-1\"\naddress = \"127.0.0.1\"\nport = 7002\n",
    )
    .expect("services file");
    let strait = Strait::builder()
        .config(&config_with_tcp(&htpasswd, web_port, api_port))
        .arg("--services")
        .arg(services.display().to_string())
        .start();
    let (web_id, web) = make_token(&strait, "web");
    let (api_id, api) = make_token(&strait, "api");
    let (web_who, api_who) = (format!("token:{web_id}"), format!("token:{api_id}"));
    let tcp = |listen: &str, service: &str| {
        format!(r#"{{"kind":"tcp","listen":"{listen}","service":"{service}"}}"#)
    };
    let listening = |addr: &str| {
        eventually(
            Duration::from_secs(10),
            &format!("a listener on {addr}"),
            || {
                std::net::TcpStream::connect(addr)
                    .map(drop)
                    .map_err(|e| e.to_string())
            },
        )
    };
    // Every write below, in order: (who, path, result, what a refusal names).
    let mut expected: Vec<(String, String, &str, String)> = Vec::new();
    let mut attempt = |who: &str, token: &str, path: &str, body: &str, status: u16, names: &str| {
        let (got, answer) = put(&strait, path, body, token);
        assert_eq!(got, status, "{who} PUT {path} {body}: {answer}");
        if status == 403 {
            assert_eq!(answer["error"], "forbidden", "{answer}");
            let message = answer["message"].as_str().unwrap_or_default();
            assert!(message.contains(names), "`{names}` in {answer}");
        }
        let result = if status == 403 { "denied" } else { "ok" };
        expected.push((who.to_string(), path.to_string(), result, names.to_string()));
        answer
    };

    // TCP routes: a team listens only on the addresses it owns, for its own services.
    let web_addr = format!("127.0.0.1:{web_port}");
    let api_addr = format!("127.0.0.1:{api_port}");
    let unowned_addr = format!("127.0.0.1:{unowned}");
    attempt(
        &web_who,
        &web,
        "/v1/routes/web-db",
        &tcp(&web_addr, "web"),
        200,
        "",
    );
    listening(&web_addr);
    attempt(
        &api_who,
        &api,
        "/v1/routes/api-db",
        &tcp(&web_addr, "api"),
        403,
        &format!("listen address `{web_addr}` belongs to team `web`"),
    );
    attempt(
        &api_who,
        &api,
        "/v1/routes/api-db",
        &tcp(&format!("0.0.0.0:{web_port}"), "api"),
        403,
        &format!(
            "listen address `0.0.0.0:{web_port}` overlaps `{web_addr}`, which team `web` owns"
        ),
    );
    attempt(
        &api_who,
        &api,
        "/v1/routes/api-db",
        &tcp(&api_addr, "web"),
        403,
        "service `web` belongs to team `web`",
    );
    attempt(
        &api_who,
        &api,
        "/v1/routes/web-db",
        &tcp(&api_addr, "api"),
        403,
        "route `web-db` belongs to team `web`",
    );
    attempt(
        &api_who,
        &api,
        "/v1/routes/api-db",
        &tcp(&unowned_addr, "api"),
        403,
        &format!("listen address `{unowned_addr}` belongs to no team"),
    );
    attempt(
        &web_who,
        &web,
        "/v1/routes/web-wide",
        &tcp(&format!("0.0.0.0:{api_port}"), "web"),
        403,
        &format!("listen address `0.0.0.0:{api_port}` belongs to team `api`"),
    );
    attempt(
        &api_who,
        &api,
        "/v1/routes/api-db",
        &tcp(&api_addr, "api"),
        200,
        "",
    );
    // The admin listens anywhere.
    attempt(
        "admin-token",
        ADMIN_TOKEN,
        "/v1/routes/admin-db",
        &tcp(&unowned_addr, "api"),
        200,
        "",
    );
    listening(&api_addr);
    listening(&unowned_addr);
    let (status, body) = http(&strait, "GET", "/v1/routes", None, Some(ADMIN_TOKEN));
    assert_eq!(status, 200, "{body}");
    let routes = body["routes"].as_object().expect("routes");
    let summary: Vec<(&str, &str, &str)> = routes
        .iter()
        .map(|(name, r)| {
            (
                name.as_str(),
                r["listen"].as_str().unwrap_or_default(),
                r["service"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("admin-db", unowned_addr.as_str(), "api"),
            ("api-db", api_addr.as_str(), "api"),
            ("web-db", web_addr.as_str(), "web"),
        ],
        "refused writes changed nothing: {body}"
    );

    // Drains: a team puts only its own service's instances in maintenance (the agent's
    // endpoint, and the stored health); the other team's instance stays as it was.
    let health = |service: &str, id: &str| -> String {
        let (status, body) = http(
            &strait,
            "GET",
            &format!("/v1/services/{service}/instances/{id}"),
            None,
            Some(ADMIN_TOKEN),
        );
        assert_eq!(status, 200, "{body}");
        body["health"].as_str().unwrap_or_default().to_string()
    };
    let becomes = |service: &str, id: &str, want: &str| {
        eventually(
            Duration::from_secs(10),
            &format!("{service}/{id} {want}"),
            || match health(service, id) {
                h if h == want => Ok(()),
                h => Err(h),
            },
        )
    };
    becomes("web", "web-1", "passing");
    becomes("api", "api-1", "passing");
    let on = r#"{"enable":true}"#;
    let off = r#"{"enable":false}"#;
    let api_drain = "/v1/agent/services/api/api-1/maintenance";
    let web_drain = "/v1/agent/services/web/web-1/maintenance";
    let owned_by_api = "service `api` belongs to team `api`";
    attempt(&web_who, &web, api_drain, on, 403, owned_by_api);
    // Names are judged as the handler reads them: `%61pi` is `api`.
    attempt(
        &web_who,
        &web,
        "/v1/agent/services/%61pi/api-1/maintenance",
        on,
        403,
        owned_by_api,
    );
    attempt(
        &web_who,
        &web,
        "/v1/services/api/instances/api-1/health",
        r#"{"health":"maintenance"}"#,
        403,
        owned_by_api,
    );
    assert_eq!(health("api", "api-1"), "passing");
    let answer = attempt(&web_who, &web, web_drain, on, 200, "");
    assert_eq!(answer["maintenance"], true, "{answer}");
    becomes("web", "web-1", "maintenance");
    // The agent has published since the refused drains: api-1 is untouched.
    assert_eq!(
        health("api", "api-1"),
        "passing",
        "a refused drain changed it"
    );
    attempt(&web_who, &web, web_drain, off, 200, "");
    becomes("web", "web-1", "passing");
    // The admin drains anyone's; the owning team ends it.
    attempt("admin-token", ADMIN_TOKEN, api_drain, on, 200, "");
    becomes("api", "api-1", "maintenance");
    attempt(&web_who, &web, api_drain, off, 403, owned_by_api);
    assert_eq!(health("api", "api-1"), "maintenance");
    attempt(&api_who, &api, api_drain, off, 200, "");
    becomes("api", "api-1", "passing");

    // Every attempt is in the audit log, in order, with who, the result and the owner.
    let records = audit(&strait);
    let writes: Vec<&Value> = records
        .iter()
        .filter(|r| r["path"] != "/v1/tokens")
        .collect();
    let got: Vec<(String, String, &str)> = writes
        .iter()
        .map(|r| {
            (
                r["who"].as_str().unwrap_or_default().to_string(),
                r["path"].as_str().unwrap_or_default().to_string(),
                r["result"].as_str().unwrap_or_default(),
            )
        })
        .collect();
    let want: Vec<(String, String, &str)> = expected
        .iter()
        .map(|(who, path, result, _)| (who.clone(), path.clone(), *result))
        .collect();
    assert_eq!(got, want, "{records:#?}");
    for (record, (_, _, result, names)) in writes.iter().zip(&expected) {
        assert_eq!(record["method"], "PUT", "{record}");
        let status = if *result == "denied" { 403 } else { 200 };
        assert_eq!(record["status"], status, "{record}");
        if *result == "denied" {
            assert!(
                record["message"]
                    .as_str()
                    .is_some_and(|m| m.contains(names.as_str())),
                "{record}"
            );
            assert_eq!(
                record["revision_after"], record["revision_before"],
                "{record}"
            );
        }
    }
    let objects = |path: &str| -> Vec<&str> {
        writes
            .iter()
            .filter(|r| r["path"].as_str() == Some(path))
            .filter_map(|r| r["object"].as_str())
            .collect()
    };
    assert_eq!(objects("/v1/routes/web-db"), ["route web-db"; 2]);
    assert_eq!(
        objects("/v1/agent/services/%61pi/api-1/maintenance"),
        ["instance api/api-1"]
    );
    let (_, metrics) = crate::harness::http_text(&strait.url("/metrics"), Some(ADMIN_TOKEN));
    for (team, denied) in [("web", 5.0), ("api", 5.0)] {
        assert_eq!(
            sample(
                &metrics,
                "strait_admin_denied_writes_total",
                &[("team", team)]
            ),
            Some(denied),
            "{metrics}"
        );
    }
}
