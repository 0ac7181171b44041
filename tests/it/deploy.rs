//! Deployments on the real parts: images built with `strait build` (a static busybox
//! serving its version), pushed to strait's own registry, run by podman under the agent's
//! supervisor, routed by the router, with a real load through it.
//!
//! podman here runs with `runc` (this VM's hybrid cgroups and missing CAP_SYS_RESOURCE rule
//! out `crun`) and bounded ulimits, from a `CONTAINERS_CONF` of the test's own; each test
//! has its own container storage, removed at the end with every container in it.

use std::io::{BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use serde_json::Value;

use crate::harness::{
    Process, STRAIT, Strait, StraitBuilder, ZooKeeper, cli, dig, eventually, free_port, http,
};
use crate::http::read_response;

const BUSYBOX: &str = "/bin/busybox";

/// A podman set-up of the test's own: config, storage, and cleanup.
struct Podman {
    dir: tempfile::TempDir,
}

impl Podman {
    fn new() -> Podman {
        for tool in ["podman", "runc"] {
            assert!(
                Command::new(tool).arg("--version").output().is_ok(),
                "`{tool}` is missing: install Debian's podman and runc (scripts/test does)"
            );
        }
        assert!(
            Path::new(BUSYBOX).exists(),
            "{BUSYBOX} is missing: install Debian's busybox-static (scripts/test does)"
        );
        let dir = tempfile::tempdir().expect("tempdir");
        std::fs::write(
            dir.path().join("containers.conf"),
            format!(
                "[engine]\nruntime = \"runc\"\nevents_logger = \"file\"\ntmp_dir = \"{0}/tmp\"\n\
                 [containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1000:1000\"]\n",
                dir.path().display()
            ),
        )
        .expect("containers.conf");
        std::fs::write(
            dir.path().join("storage.conf"),
            format!(
                "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n",
                dir.path().display()
            ),
        )
        .expect("storage.conf");
        Podman { dir }
    }

    fn env(&self) -> [(&'static str, String); 2] {
        [
            (
                "CONTAINERS_CONF",
                self.dir
                    .path()
                    .join("containers.conf")
                    .display()
                    .to_string(),
            ),
            (
                "CONTAINERS_STORAGE_CONF",
                self.dir.path().join("storage.conf").display().to_string(),
            ),
        ]
    }

    fn command(&self, args: &[&str]) -> (bool, String) {
        let output = Command::new("podman")
            .args(args)
            .envs(self.env())
            .output()
            .expect("podman");
        (
            output.status.success(),
            format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            ),
        )
    }

    /// Names of the containers in this storage, running or not, with their state.
    fn containers(&self) -> Vec<(String, String)> {
        let output = Command::new("podman")
            .args(["ps", "--all", "--format", "json"])
            .envs(self.env())
            .output()
            .expect("podman");
        assert!(output.status.success(), "podman ps: {output:?}");
        let entries: Vec<Value> = serde_json::from_slice(&output.stdout).unwrap_or_default();
        let mut list: Vec<(String, String)> = entries
            .iter()
            .filter_map(|c| {
                Some((
                    c["Names"][0].as_str()?.to_string(),
                    c["State"].as_str()?.to_string(),
                ))
            })
            .collect();
        list.sort();
        list
    }

    fn running(&self) -> Vec<String> {
        self.containers()
            .into_iter()
            .filter(|(_, state)| state == "running")
            .map(|(name, _)| name)
            .collect()
    }
}

impl Drop for Podman {
    fn drop(&mut self) {
        let _ = self.command(&["rm", "--all", "--force", "--time=0"]);
        let _ = self.command(&["rmi", "--all", "--force"]);
    }
}

/// Builds the test image of `version`: busybox httpd on `$PORT` serving `/` (the version)
/// and `/healthz` (unless `healthy` is false), stopping at once on SIGTERM. Pushed to
/// `registry` as `shop/web:<version>`; returns the reference.
fn build_image(registry: SocketAddr, version: &str, healthy: bool) -> String {
    build_serving(registry, version, version, healthy, None)
}

/// As [`build_image`], serving `version` under the tag `tag`, pushed with `auth`
/// (`user:password`, as `STRAIT_REGISTRY_AUTH`) when given.
fn build_serving(
    registry: SocketAddr,
    tag: &str,
    version: &str,
    healthy: bool,
    auth: Option<&str>,
) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("bin")).expect("bin");
    std::fs::create_dir_all(root.join("www")).expect("www");
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("busybox");
    std::fs::write(root.join("www/index.html"), format!("{version}\n")).expect("index");
    if healthy {
        std::fs::write(root.join("www/healthz"), "ok\n").expect("healthz");
    }
    std::fs::write(
        dir.path().join("strait-build.toml"),
        r#"entrypoint = ["/bin/busybox", "sh", "-c", "echo \"$GREETING\" > /www/greeting; trap 'exit 0' TERM; /bin/busybox httpd -f -p $PORT -h /www & wait"]
[[layer]]
src = "root/"
dest = "/"
"#,
    )
    .expect("build file");
    push_as(dir.path(), registry, tag, auth)
}

/// An image whose entrypoint exits at once (code 3).
fn build_crashing_image(registry: SocketAddr, version: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("bin")).expect("bin");
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("busybox");
    std::fs::write(
        dir.path().join("strait-build.toml"),
        r#"entrypoint = ["/bin/busybox", "sh", "-c", "echo no config found >&2; exit 3"]
[[layer]]
src = "root/"
dest = "/"
"#,
    )
    .expect("build file");
    push(dir.path(), registry, version)
}

/// An image whose `/healthz` passes but whose `/` answers 500 (a busybox CGI: httpd runs
/// `cgi-bin/index.cgi` for a directory without `index.html`).
fn build_erroring_image(registry: SocketAddr, version: &str) -> String {
    let dir = tempfile::tempdir().expect("tempdir");
    let root = dir.path().join("root");
    std::fs::create_dir_all(root.join("bin")).expect("bin");
    std::fs::create_dir_all(root.join("www/cgi-bin")).expect("cgi-bin");
    std::fs::copy(BUSYBOX, root.join("bin/busybox")).expect("busybox");
    std::fs::write(root.join("www/healthz"), "ok\n").expect("healthz");
    let cgi = root.join("www/cgi-bin/index.cgi");
    std::fs::write(
        &cgi,
        format!(
            "#!/bin/busybox sh\nprintf 'HTTP/1.1 500 Internal Server Error\\r\\ncontent-type: text/plain\\r\\n\\r\\n{version} is broken\\n'\n"
        ),
    )
    .expect("index.cgi");
    std::fs::set_permissions(&cgi, std::os::unix::fs::PermissionsExt::from_mode(0o755))
        .expect("chmod");
    std::fs::write(
        dir.path().join("strait-build.toml"),
        r#"entrypoint = ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM; /bin/busybox httpd -f -p $PORT -h /www & wait"]
[[layer]]
src = "root/"
dest = "/"
"#,
    )
    .expect("build file");
    push(dir.path(), registry, version)
}

fn push(dir: &Path, registry: SocketAddr, version: &str) -> String {
    push_as(dir, registry, version, None)
}

/// `strait build --push` of the build file in `dir` as `shop/web:<tag>`, with `auth` in
/// `STRAIT_REGISTRY_AUTH` when given.
fn push_as(dir: &Path, registry: SocketAddr, tag: &str, auth: Option<&str>) -> String {
    let reference = format!("{registry}/shop/web:{tag}");
    let cache = dir.join("cache");
    let file = dir.join("strait-build.toml");
    let output = Command::new(STRAIT)
        .args([
            "build",
            "-f",
            file.to_str().expect("utf-8"),
            "--push",
            &reference,
            "--cache-dir",
            cache.to_str().expect("utf-8"),
            "--quiet",
        ])
        .envs(auth.map(|auth| ("STRAIT_REGISTRY_AUTH", auth)))
        .output()
        .expect("run strait build");
    assert!(
        output.status.success(),
        "strait build {reference}: {}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    reference
}

fn admin_env(strait: &Strait) -> String {
    format!("http://{}", strait.admin)
}

/// `strait deploy …` against `strait`; returns (success, stdout + stderr).
fn deploy(strait: &Strait, args: &[&str]) -> (bool, String) {
    let admin = admin_env(strait);
    let mut all = vec!["deploy", "--admin", admin.as_str()];
    all.extend_from_slice(args);
    let (ok, out, err) = cli(&all);
    (ok, format!("{out}{err}"))
}

/// A strait with the podman runtime, the registry, and this test's podman set-up.
fn start_strait(podman: &Podman, data_dir: Option<&Path>, zone: &str) -> Strait {
    start_strait_with(podman, data_dir, zone, |builder| builder)
}

/// [`start_strait`], the builder first passed through `more` (config, env, flags).
fn start_strait_with(
    podman: &Podman,
    data_dir: Option<&Path>,
    zone: &str,
    more: impl FnOnce(StraitBuilder) -> StraitBuilder,
) -> Strait {
    let mut builder = more(Strait::builder())
        .arg("--runtime")
        .arg("podman")
        .arg("--zone")
        .arg(zone);
    for (key, value) in podman.env() {
        builder = builder.env(key, &value);
    }
    if let Some(dir) = data_dir {
        builder = builder.data_dir(dir);
    }
    let strait = builder.start();
    eventually(Duration::from_secs(10), "the agent to register", || {
        let (_, body) = strait.get("/v1/services/strait-agent");
        match body["instances"].as_array().map(Vec::len) {
            Some(1) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    strait
}

/// A bounded load through the router: keep-alive GETs, a few ms apart, never retried.
/// Counts failures (an I/O error or any status but 200) and the versions it saw.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    seen: Arc<std::sync::Mutex<Vec<String>>>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(router: SocketAddr, host: &str, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed, seen) = (
                    Arc::clone(&stop),
                    Arc::clone(&ok),
                    Arc::clone(&failed),
                    Arc::clone(&seen),
                );
                let host = host.to_string();
                std::thread::spawn(move || {
                    let mut conn: Option<BufReader<TcpStream>> = None;
                    while !stop.load(Ordering::Relaxed) {
                        let result = (|| -> std::io::Result<(u16, String, bool)> {
                            if conn.is_none() {
                                let stream = TcpStream::connect(router)?;
                                stream.set_read_timeout(Some(Duration::from_secs(10)))?;
                                conn = Some(BufReader::new(stream));
                            }
                            let c = conn.as_mut().expect("connected");
                            c.get_mut().write_all(
                                format!("GET / HTTP/1.1\r\nhost: {host}\r\n\r\n").as_bytes(),
                            )?;
                            let (response, keep) = read_response(c)?;
                            Ok((response.status, response.text().trim().to_string(), keep))
                        })();
                        match result {
                            Ok((200, body, keep)) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                                let mut seen = seen.lock().expect("seen");
                                if seen.last() != Some(&body) {
                                    seen.push(body);
                                }
                                if !keep {
                                    conn = None;
                                }
                            }
                            Ok((status, body, _)) => {
                                failed
                                    .lock()
                                    .expect("failed")
                                    .push(format!("{status} {body}"));
                                conn = None;
                            }
                            Err(e) => {
                                failed.lock().expect("failed").push(e.to_string());
                                conn = None;
                            }
                        }
                        std::thread::sleep(Duration::from_millis(5));
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            seen,
            threads,
        }
    }

    /// Stops the clients; returns (requests answered 200, failures, versions seen in order).
    fn finish(mut self) -> (u64, Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        let failed = self.failed.lock().expect("failed").clone();
        let mut seen = self.seen.lock().expect("seen").clone();
        seen.dedup();
        (self.ok.load(Ordering::Relaxed), failed, seen)
    }
}

/// What the router answers for `host` now.
fn version_served(router: SocketAddr, host: &str) -> Result<String, String> {
    path_served(router, host, "/")
}

fn path_served(router: SocketAddr, host: &str, path: &str) -> Result<String, String> {
    let mut stream = TcpStream::connect(router).map_err(|e| e.to_string())?;
    stream
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    stream
        .write_all(
            format!("GET {path} HTTP/1.1\r\nhost: {host}\r\nconnection: close\r\n\r\n").as_bytes(),
        )
        .map_err(|e| e.to_string())?;
    let (response, _) = read_response(&mut BufReader::new(stream)).map_err(|e| e.to_string())?;
    match response.status {
        200 => Ok(response.text().trim().to_string()),
        status => Err(format!("{status} {}", response.text())),
    }
}

/// `POST path` on the admin API, raw: (status, `Location` header, JSON body).
fn post_raw(strait: &Strait, path: &str, body: &str) -> (u16, Option<String>, Value) {
    let mut stream = TcpStream::connect(strait.admin).expect("connect to the admin API");
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .expect("timeout");
    stream
        .write_all(
            format!(
                "POST {path} HTTP/1.1\r\nhost: {}\r\ncontent-type: application/json\r\n\
                 content-length: {}\r\nconnection: close\r\n\r\n{body}",
                strait.admin,
                body.len()
            )
            .as_bytes(),
        )
        .expect("write");
    let (response, _) = read_response(&mut BufReader::new(stream)).expect("a response");
    (
        response.status,
        response.headers.get("location").cloned(),
        response.json(),
    )
}

/// `dig … SRV +short` for `name`, sorted, as (port, target) pairs.
fn srv_records(strait: &Strait, name: &str) -> Vec<(u16, String)> {
    let mut records: Vec<(u16, String)> = dig(strait.dns, &[name, "SRV", "+short"])
        .lines()
        .filter_map(|l| {
            let fields: Vec<&str> = l.split_whitespace().collect();
            match fields[..] {
                [_, _, port, target] => Some((port.parse().ok()?, target.to_string())),
                _ => None,
            }
        })
        .collect();
    records.sort();
    records
}

/// The SRV records the instances of `deployment` (passing ones) should have.
fn srv_expected(strait: &Strait, app: &str, deployment: u64) -> Vec<(u16, String)> {
    let (_, d) = strait.get(&format!("/v1/apps/{app}/deployments/{deployment}"));
    let mut records: Vec<(u16, String)> = d["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|i| i["health"] == "passing")
        .filter_map(|i| {
            Some((
                u16::try_from(i["port"].as_u64()?).ok()?,
                format!("{}.{app}.instance.strait.", i["id"].as_str()?),
            ))
        })
        .collect();
    records.sort();
    records
}

fn deployment(strait: &Strait, app: &str, id: u64) -> Value {
    let (status, body) = strait.get(&format!("/v1/apps/{app}/deployments/{id}"));
    assert_eq!(status, 200, "{body}");
    body
}

#[test]
fn deploys_shift_traffic_with_no_failed_request_roll_back_a_bad_version_and_survive_restarts() {
    let podman = Podman::new();
    let data = tempfile::tempdir().expect("tempdir");
    let mut strait = start_strait(&podman, Some(data.path()), "z1");
    let registry = strait.registry.expect("the registry listens");
    let v1 = build_image(registry, "v1", true);
    let v2 = build_image(registry, "v2", true);
    let v3 = build_image(registry, "v3", false);
    let host = "web.deploy.test";

    // v1: the app's first deployment creates its route once its instances pass.
    let (ok, out) = deploy(
        &strait,
        &[
            "web",
            &v1,
            "--instances",
            "2",
            "--host",
            host,
            "--check-path",
            "/healthz",
            "--check-interval",
            "200ms",
            "--pause",
            "1s",
            "--drain",
            "1s",
            "--env",
            "GREETING=hello from v1",
            "--wait",
        ],
    );
    assert!(ok, "{out}\n{}", strait.log_text());
    assert!(out.contains("succeeded"), "{out}");
    assert_eq!(version_served(strait.http, host), Ok("v1".into()));
    assert_eq!(
        path_served(strait.http, host, "/greeting"),
        Ok("hello from v1".into()),
        "--env reaches the containers"
    );
    assert_eq!(podman.running().len(), 2, "{:?}", podman.containers());

    // DNS answers the deployed instances: an SRV record each (its port, its instance id),
    // also by the deployment's tag, and their address.
    let expected = srv_expected(&strait, "web", 1);
    assert_eq!(expected.len(), 2, "{:?}", deployment(&strait, "web", 1));
    eventually(
        Duration::from_secs(10),
        "SRV records of v1's instances",
        || {
            let srv = srv_records(&strait, "web.service.strait");
            if srv == expected {
                Ok(())
            } else {
                Err(format!("{srv:?}, wanted {expected:?}"))
            }
        },
    );
    assert_eq!(srv_records(&strait, "d1.web.service.strait"), expected);
    let mut addresses: Vec<String> = dig(strait.dns, &["web.service.strait", "A", "+short"])
        .lines()
        .map(str::to_string)
        .collect();
    addresses.dedup();
    assert_eq!(
        addresses,
        [deployment(&strait, "web", 1)["instances"][0]["address"]
            .as_str()
            .expect("an address")],
        "the agent's address"
    );

    // v2 under load: not one failed request across the shift.
    let load = Load::start(strait.http, host, 4);
    std::thread::sleep(Duration::from_millis(500));
    let (ok, out) = deploy(&strait, &["web", &v2, "--wait"]);
    assert!(ok, "{out}\n{}", strait.log_text());
    std::thread::sleep(Duration::from_millis(500));
    let (answered, failed, seen) = load.finish();
    assert!(
        failed.is_empty(),
        "{} failed of {answered}: {failed:?}",
        failed.len()
    );
    assert!(answered > 200, "a real load: {answered} requests");
    assert_eq!(seen.first().map(String::as_str), Some("v1"), "{seen:?}");
    assert_eq!(seen.last().map(String::as_str), Some("v2"), "{seen:?}");
    for step in [
        "pin the route",
        "shift 10%",
        "shift 50%",
        "shift 100%",
        "drain deployment 1",
    ] {
        assert!(out.contains(step), "{step}: {out}");
    }
    let d2 = deployment(&strait, "web", 2);
    assert_eq!(d2["state"], "succeeded");
    assert_eq!(d2["weight"], 100);
    assert!(
        d2["image"].as_str().is_some_and(|i| i.contains("@sha256:")),
        "{d2}"
    );
    assert_eq!(deployment(&strait, "web", 1)["goal"], "stop");
    eventually(Duration::from_secs(15), "v1's containers to stop", || {
        let running = podman.running();
        if running.len() == 2 && running.iter().all(|n| n.contains("-web-2-")) {
            Ok(())
        } else {
            Err(format!("{:?}", podman.containers()))
        }
    });
    // The route is the app's service again, not a split.
    let (_, route) = strait.get("/v1/routes/web");
    assert_eq!(route["service"], "web", "{route}");
    assert!(route.get("split").is_none(), "{route}");

    // v3's check never passes: rolled back, v2 serving throughout.
    let load = Load::start(strait.http, host, 2);
    let (ok, out) = deploy(&strait, &["web", &v3, "--timeout", "4s", "--wait"]);
    let (answered, failed, seen) = load.finish();
    assert!(!ok, "a version that never passes its check fails: {out}");
    assert!(
        out.contains("rolled_back") && out.contains("passed their check"),
        "{out}"
    );
    assert!(
        failed.is_empty(),
        "{} failed of {answered}: {failed:?}",
        failed.len()
    );
    assert_eq!(seen, ["v2"], "only v2 answered");
    let d3 = deployment(&strait, "web", 3);
    assert_eq!(d3["state"], "rolled_back");
    assert_eq!(d3["goal"], "stop");
    assert!(
        d3["reason"]
            .as_str()
            .is_some_and(|r| r.contains("0 of 2 instances")),
        "{d3}"
    );
    eventually(Duration::from_secs(20), "v3's containers to go", || {
        let names: Vec<_> = podman.containers().into_iter().map(|(n, _)| n).collect();
        if names.iter().any(|n| n.contains("-web-3-")) {
            Err(format!("{names:?}"))
        } else {
            Ok(())
        }
    });
    let (_, route) = strait.get("/v1/routes/web");
    assert_eq!(route["service"], "web", "restored: {route}");

    // v4 passes its check but answers 500 to real requests: the 5xx gate rolls it back
    // at its first step, and v2 keeps serving.
    let v4 = build_erroring_image(registry, "v4");
    let load = Load::start(strait.http, host, 4);
    let (ok, out) = deploy(
        &strait,
        &[
            "web",
            &v4,
            "--steps",
            "50,100",
            "--pause",
            "5s",
            "--max-5xx",
            "10",
            "--drain",
            "1s",
            "--wait",
        ],
    );
    std::thread::sleep(Duration::from_millis(300));
    let (answered, failed, seen) = load.finish();
    assert!(!ok, "a version answering 500 fails: {out}");
    assert!(
        out.contains("deployment 4 of web rolled_back")
            && out.contains("with 5xx at 50% of the traffic (the limit is 10%)"),
        "{out}"
    );
    assert!(
        failed.len() >= 20 && failed.iter().all(|f| f == "500 v4 is broken"),
        "only v4's own answers failed, enough of them to judge: {failed:?}"
    );
    assert_eq!(seen, ["v2"], "{answered} answered 200");
    assert_eq!(version_served(strait.http, host), Ok("v2".into()));
    let d4 = deployment(&strait, "web", 4);
    assert_eq!(
        (&d4["state"], &d4["weight"]),
        (&"rolled_back".into(), &0.into()),
        "{d4}"
    );
    assert!(
        d4["reason"].as_str().is_some_and(|r| {
            r.starts_with("the new version answered ") && r.contains("requests with 5xx")
        }),
        "{d4}"
    );
    let (_, route) = strait.get("/v1/routes/web");
    assert_eq!(route["service"], "web", "restored: {route}");

    // `strait deploy status`: the newest deployment, step by step.
    let (ok, out) = deploy(&strait, &["status", "web"]);
    assert!(ok, "{out}");
    assert!(
        out.starts_with("deployment 4 of web: rolled_back (weight 0%)"),
        "{out}"
    );
    for line in [
        "pin the route to deployment 2",
        "start 2 instances",
        "roll back",
        "deployment 2 has the traffic",
        "reason: the new version answered ",
    ] {
        assert!(out.contains(line), "{line}: {out}");
    }
    assert!(
        out.lines()
            .any(|l| l.trim_start().starts_with("failed") && l.contains("shift 50% of the traffic")),
        "{out}"
    );
    assert!(!out.contains("shift 100%"), "it stopped at 50%: {out}");
    let (ok, out) = deploy(&strait, &["status", "web", "--id", "2"]);
    assert!(
        ok && out.starts_with("deployment 2 of web: succeeded"),
        "{out}"
    );

    // `strait deploy cancel` of a deployment under way: rolled back, v2 serving.
    let (ok, out) = deploy(&strait, &["web", &v3, "--timeout", "60s"]);
    assert!(ok && out.contains("deployment 5 of web accepted"), "{out}");
    let (ok, out) = deploy(&strait, &["cancel", "web", "--wait"]);
    assert!(!ok, "a cancelled deployment does not succeed: {out}");
    assert!(
        out.contains("deployment 5 of web rolled_back: cancelled"),
        "{out}"
    );
    assert_eq!(deployment(&strait, "web", 5)["state"], "rolled_back");
    assert_eq!(version_served(strait.http, host), Ok("v2".into()));
    let (ok, out) = deploy(&strait, &["cancel", "web"]);
    assert!(
        !ok && out.contains("app `web` has no deployment in progress"),
        "{out}"
    );

    // `strait deploy rollback`: back to the previous succeeded version (v1, by digest).
    let d1 = deployment(&strait, "web", 1);
    let d2 = deployment(&strait, "web", 2);
    let (ok, out) = deploy(&strait, &["rollback", "web", "--wait"]);
    assert!(ok, "{out}\n{}", strait.log_text());
    assert!(
        out.contains(&format!(
            "deployment 6 of web: {}",
            d1["image"].as_str().expect("image")
        )) && out.contains("succeeded in"),
        "{out}"
    );
    assert_eq!(version_served(strait.http, host), Ok("v1".into()));
    let d6 = deployment(&strait, "web", 6);
    assert_eq!(d6["state"], "succeeded", "{d6}");
    assert_eq!((&d6["image"], &d6["digest"]), (&d1["image"], &d1["digest"]));
    assert_eq!(d6["previous"], 2, "{d6}");
    assert_eq!(
        path_served(strait.http, host, "/greeting"),
        Ok("hello from v1".into()),
        "v1's spec (its env) came back with it"
    );

    // POST /v1/apps/web/rollback: back again, past the rolled-back ones, to v2.
    let (status, location, body) = post_raw(&strait, "/v1/apps/web/rollback", "");
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["id"], 7, "{body}");
    assert_eq!(location.as_deref(), Some("/v1/apps/web/deployments/7"));
    let d7 = eventually(Duration::from_secs(60), "the rollback to v2", || {
        let d = deployment(&strait, "web", 7);
        match d["state"].as_str() {
            Some("succeeded") => Ok(d),
            Some("pending" | "running") => Err(format!("{d}")),
            _ => panic!("the rollback did not succeed: {d}"),
        }
    });
    assert_eq!((&d7["image"], &d7["digest"]), (&d2["image"], &d2["digest"]));
    assert_eq!(d7["previous"], 6, "{d7}");
    assert_eq!(version_served(strait.http, host), Ok("v2".into()));
    let (status, body) = http(&strait, "POST", "/v1/apps/nope/rollback", None, None);
    assert_eq!(status, 404, "an app without deployments: {body}");

    // History through the CLI: every deployment, newest first, with its digest.
    let (ok, out) = deploy(&strait, &["history", "web"]);
    assert!(ok, "{out}");
    let rows: Vec<Vec<&str>> = out
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect())
        .collect();
    let states: Vec<(&str, &str)> = rows.iter().map(|r| (r[0], r[1])).collect();
    assert_eq!(
        states,
        [
            ("7", "succeeded"),
            ("6", "succeeded"),
            ("5", "rolled_back"),
            ("4", "rolled_back"),
            ("3", "rolled_back"),
            ("2", "succeeded"),
            ("1", "succeeded")
        ],
        "{out}"
    );
    let short = |d: &Value| d["digest"].as_str().expect("digest")[..19].to_string();
    assert_eq!(
        rows[1][2],
        short(&d1),
        "the rollback ran v1's digest: {out}"
    );
    assert_eq!(rows[0][2], short(&d2), "{out}");
    assert_eq!(rows[6][3], "v1", "{out}");

    // `strait app ls`: the app, its current deployment, its instances and host.
    let admin = admin_env(&strait);
    let (ok, out, err) = cli(&["app", "--admin", &admin, "ls"]);
    assert!(ok, "{out}{err}");
    let lines: Vec<Vec<&str>> = out
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    assert_eq!(
        lines,
        [
            vec!["APP", "CURRENT", "INSTANCES", "PASSING", "HOST", "IMAGE"],
            vec![
                "web",
                "7",
                "2",
                "2",
                host,
                d2["image"].as_str().expect("image")
            ],
        ],
        "{out}"
    );

    eventually(
        Duration::from_secs(20),
        "v1's rollback containers to stop",
        || {
            let running = podman.running();
            if running.len() == 2 && running.iter().all(|n| n.contains("-web-7-")) {
                Ok(())
            } else {
                Err(format!("{:?}", podman.containers()))
            }
        },
    );

    // A container killed: restarted with back-off, its restarts in its metadata.
    let victim = podman.running().into_iter().next().expect("a container");
    let (killed, out) = podman.command(&["kill", &victim]);
    assert!(killed, "{out}");
    eventually(
        Duration::from_secs(20),
        "the killed container to run again",
        || {
            let (_, service) = strait.get("/v1/services/web");
            let instances = service["instances"].as_array().cloned().unwrap_or_default();
            let restarted = instances.iter().any(|i| i["metadata"]["restarts"] == "1");
            let passing = instances
                .iter()
                .filter(|i| i["health"] == "passing")
                .count();
            if restarted && passing == 2 && podman.running().contains(&victim) {
                Ok(())
            } else {
                Err(format!("{service}"))
            }
        },
    );
    assert!(
        strait.metric("strait_agent_container_restarts_total{app=\"web\"}") >= Some(1.0),
        "{}",
        strait.metrics_text()
    );

    // Metrics of the deployments this process ran and of its agent's containers.
    let metric = |name: &str| strait.metric(name).unwrap_or(-1.0);
    assert_eq!(
        (
            metric("strait_deploy_deployments_total{app=\"web\",outcome=\"succeeded\"}"),
            metric("strait_deploy_deployments_total{app=\"web\",outcome=\"rolled_back\"}"),
            metric("strait_deploy_in_progress"),
        ),
        (4.0, 3.0, 0.0),
        "{}",
        strait.metrics_text()
    );
    assert!(
        metric("strait_deploy_duration_seconds_count{outcome=\"rolled_back\"}") == 3.0,
        "{}",
        strait.metrics_text()
    );
    eventually(Duration::from_secs(20), "the containers gauge", || {
        match (
            metric("strait_agent_containers{state=\"running\"}"),
            metric("strait_agent_containers{state=\"draining\"}"),
        ) {
            (2.0, 0.0) => Ok(()),
            other => Err(format!("{other:?}: {:?}", podman.containers())),
        }
    });
    // v1, v2, v3, v4 and both rollbacks: two each (the cancelled one may not have begun).
    assert!(
        metric("strait_agent_container_starts_total{app=\"web\",result=\"ok\"}") >= 12.0,
        "{}",
        strait.metrics_text()
    );
    assert_eq!(
        metric("strait_agent_container_starts_total{app=\"web\",result=\"pull_failed\"}"),
        -1.0,
        "no failed pull"
    );

    // The agent (here strait itself) restarts: it adopts the running containers.
    let before = podman.running();
    strait.stop();
    assert_eq!(podman.running(), before, "containers outlive their agent");
    let strait = start_strait(&podman, Some(data.path()), "z1");
    eventually(
        Duration::from_secs(20),
        "the adopted instances to pass",
        || {
            let (_, service) = strait.get("/v1/services/web");
            let passing = service["instances"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|i| i["health"] == "passing")
                .count();
            if passing == 2 {
                Ok(())
            } else {
                Err(format!("{service}"))
            }
        },
    );
    assert_eq!(podman.running(), before, "adopted, not started again");
    assert!(strait.log_text().contains("adopting a running container"));
    eventually(Duration::from_secs(10), "v2 to be served again", || {
        version_served(strait.http, host)
    });
    assert_eq!(version_served(strait.http, host), Ok("v2".into()));
    assert!(
        strait
            .metric("strait_deploy_deployments_total{app=\"web\",outcome=\"succeeded\"}")
            .is_none(),
        "counted by the process that ran them"
    );

    // Removing the app stops its containers and its route.
    let (status, body) = http(&strait, "DELETE", "/v1/apps/web", None, None);
    assert_eq!(status, 202, "{body}");
    eventually(Duration::from_secs(30), "the app to be removed", || {
        let (status, _) = strait.get("/v1/apps/web");
        let containers = podman.containers();
        if status == 404 && containers.is_empty() {
            Ok(())
        } else {
            Err(format!("{status} {containers:?}"))
        }
    });
    assert_eq!(strait.get("/v1/routes/web").0, 404);
}

#[test]
fn deployments_refuse_bad_input_and_end_clearly() {
    let podman = Podman::new();
    let strait = start_strait(&podman, None, "z1");
    let registry = strait.registry.expect("the registry listens");
    let v1 = build_image(registry, "v1", true);
    let post = |app: &str, body: &str| {
        http(
            &strait,
            "POST",
            &format!("/v1/apps/{app}/deployments"),
            Some(body),
            None,
        )
    };

    let (status, body) = post("Web", &format!(r#"{{"image": "{v1}", "instances": 1}}"#));
    assert_eq!(
        (status, body["error"].as_str()),
        (400, Some("invalid")),
        "{body}"
    );
    let (status, body) = post("web", &format!(r#"{{"image": "{v1}", "instances": 0}}"#));
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("instances")),
        "{body}"
    );
    let (status, body) = post("web", r#"{"image": "x"}"#);
    assert_eq!(status, 400, "first deployment without instances: {body}");
    let (status, body) = post(
        "web",
        &format!(r#"{{"image": "{registry}/shop/web:nope", "instances": 1}}"#),
    );
    assert_eq!(status, 422, "a tag that does not exist: {body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("no such manifest")),
        "{body}"
    );
    let (status, body) = post(
        "web",
        r#"{"image": "127.0.0.1:1/shop/web:v1", "instances": 1}"#,
    );
    assert_eq!(status, 502, "a registry that cannot be reached: {body}");
    let (status, body) = post(
        "web",
        &format!(r#"{{"image": "{v1}", "instances": 1, "zones": ["mars"]}}"#),
    );
    assert_eq!(status, 422, "a zone without agents: {body}");
    assert!(
        body["message"].as_str().is_some_and(|m| m.contains("mars")),
        "{body}"
    );
    assert_eq!(
        strait.get("/v1/apps").1["apps"].as_array().map(Vec::len),
        Some(0),
        "nothing refused was recorded"
    );

    // An entrypoint that exits at once: restarted, then the deployment fails.
    let crash = build_crashing_image(registry, "crash");
    let (ok, out) = deploy(
        &strait,
        &[
            "crash",
            &crash,
            "--instances",
            "1",
            "--max-restarts",
            "1",
            "--timeout",
            "60s",
            "--wait",
        ],
    );
    assert!(!ok, "{out}");
    assert!(out.contains("failed") && out.contains("exited"), "{out}");
    let d = deployment(&strait, "crash", 1);
    assert_eq!(d["state"], "failed", "no earlier version: {d}");
    assert!(
        d["reason"]
            .as_str()
            .is_some_and(|r| r.contains("exit code 3") && r.contains("no config found")),
        "the container's own words: {d}"
    );

    // A second deployment while one runs: 409; cancelling the first rolls it back.
    let slow = build_image(registry, "slow", false);
    let (status, location, body) = post_raw(
        &strait,
        "/v1/apps/web/deployments",
        &format!(
            r#"{{"image": "{slow}", "instances": 1, "check": {{"http": {{"path": "/healthz"}}}}, "timeout": "60s"}}"#
        ),
    );
    assert_eq!(status, 202, "{body}");
    // The 202's `Location` is the deployment's own URL, which GETs it.
    let location = location.expect("a Location header");
    assert_eq!(location, "/v1/apps/web/deployments/1");
    let (status, polled) = strait.get(&location);
    assert_eq!(status, 200, "{polled}");
    assert_eq!(
        (&polled["app"], &polled["id"], &polled["image"]),
        (&body["app"], &body["id"], &body["image"]),
        "{polled}"
    );
    assert!(
        matches!(polled["state"].as_str(), Some("pending" | "running")),
        "{polled}"
    );
    let (status, body) = post("web", &format!(r#"{{"image": "{v1}"}}"#));
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("deployment 1")),
        "{body}"
    );
    let (status, body) = http(&strait, "DELETE", "/v1/apps/web/deployments/1", None, None);
    assert_eq!(status, 202, "{body}");
    eventually(
        Duration::from_secs(30),
        "the cancelled deployment to end",
        || {
            let d = deployment(&strait, "web", 1);
            match d["state"].as_str() {
                Some("failed") => Ok(d),
                other => Err(format!("{other:?}")),
            }
        },
    );
    let d = deployment(&strait, "web", 1);
    assert_eq!(d["reason"], "cancelled", "{d}");
    let (status, _) = http(&strait, "DELETE", "/v1/apps/web/deployments/1", None, None);
    assert_eq!(status, 409, "a finished deployment cannot be cancelled");
    let (status, _) = strait.get("/v1/apps/web/deployments/x");
    assert_eq!(status, 400);
    let (status, _) = strait.get("/v1/apps/web/deployments/99");
    assert_eq!(status, 404);
}

/// `GET /v2/shop/web/manifests/<tag>` on `registry`, with `auth` as Basic credentials:
/// (status, `Docker-Content-Digest`).
fn tag_digest(registry: SocketAddr, tag: &str, auth: Option<&str>) -> (u16, Option<String>) {
    use base64::Engine as _;
    let authorization = auth.map_or(String::new(), |auth| {
        format!(
            "authorization: Basic {}\r\n",
            base64::engine::general_purpose::STANDARD.encode(auth)
        )
    });
    let mut stream = TcpStream::connect(registry).expect("connect to the registry");
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    stream
        .write_all(
            format!(
                "GET /v2/shop/web/manifests/{tag} HTTP/1.1\r\nhost: {registry}\r\n{authorization}\
                 accept: application/vnd.oci.image.manifest.v1+json, \
                 application/vnd.oci.image.index.v1+json, \
                 application/vnd.docker.distribution.manifest.v2+json\r\n\
                 connection: close\r\n\r\n"
            )
            .as_bytes(),
        )
        .expect("write");
    let (response, _) = read_response(&mut BufReader::new(stream)).expect("a response");
    (
        response.status,
        response.headers.get("docker-content-digest").cloned(),
    )
}

#[test]
fn a_registry_refusing_anonymous_pulls_needs_credentials_and_a_moved_tag_changes_nothing() {
    const AUTH: &str = "deployer:deployer-pass";
    let podman = Podman::new();
    let data = tempfile::tempdir().expect("tempdir");
    let etc = tempfile::tempdir().expect("tempdir");
    let htpasswd = etc.path().join("htpasswd");
    std::fs::write(
        &htpasswd,
        registry::auth::htpasswd_line("deployer", "deployer-pass").expect("bcrypt") + "\n",
    )
    .expect("htpasswd");
    let config = format!(
        "[registry.auth]\nhtpasswd = \"{}\"\nanonymous_pull = false\n",
        htpasswd.display()
    );
    // One registry address across the restarts: the images stay where they were pushed.
    let registry = SocketAddr::from(([127, 0, 0, 1], free_port()));
    let start = |env: &[(&str, &str)]| {
        let strait = start_strait_with(&podman, Some(data.path()), "z1", |mut builder| {
            builder = builder
                .config(&config)
                .arg("--registry-addr")
                .arg(registry.to_string());
            for (key, value) in env {
                builder = builder.env(key, value);
            }
            builder
        });
        assert_eq!(strait.registry, Some(registry));
        strait
    };
    let host = "auth.deploy.test";
    let request = |image: &str| {
        format!(
            r#"{{"image": "{image}", "instances": 1, "host": "{host}", "check": {{"http": {{"path": "/healthz"}}}}, "check_interval": "200ms", "timeout": "30s"}}"#
        )
    };

    // Without credentials strait cannot resolve the tag: refused at once, nothing recorded.
    let mut strait = start(&[]);
    let v1 = build_serving(registry, "v1", "v1", true, Some(AUTH));
    let (status, original) = tag_digest(registry, "v1", Some(AUTH));
    let original = original.expect("the pushed tag's digest");
    assert_eq!(status, 200);
    assert_eq!(
        tag_digest(registry, "v1", None).0,
        401,
        "anonymous pulls are refused"
    );
    let (status, _, body) = post_raw(&strait, "/v1/apps/web/deployments", &request(&v1));
    assert_eq!(status, 502, "{body}");
    assert_eq!(body["error"], "registry", "{body}");
    let message = body["message"].as_str().unwrap_or_default();
    assert!(
        message.starts_with(&format!("image {v1}: the registry refused: ")),
        "{body}"
    );
    assert!(
        message.contains("wants credentials") && message.contains("STRAIT_REGISTRY_AUTH="),
        "says what to give strait: {body}"
    );
    assert_eq!(
        strait.get("/v1/apps").1["apps"].as_array().map(Vec::len),
        Some(0),
        "nothing refused was recorded"
    );
    strait.stop();

    // strait has the credentials but its agent's are for another registry: the tag
    // resolves, the agent's pull is refused, and the deployment fails saying so.
    let mut strait = start(&[
        ("STRAIT_REGISTRY_AUTH", AUTH),
        ("STRAIT_REGISTRY", "127.0.0.1:1"),
    ]);
    let (status, _, body) = post_raw(&strait, "/v1/apps/web/deployments", &request(&v1));
    assert_eq!(status, 202, "{body}");
    let pinned = format!("{registry}/shop/web@{original}");
    assert_eq!(body["image"], pinned.as_str(), "{body}");
    let d1 = eventually(Duration::from_secs(30), "deployment 1 to fail", || {
        let d = deployment(&strait, "web", 1);
        match d["state"].as_str() {
            Some("failed") => Ok(d),
            other => Err(format!("{other:?}: {d}")),
        }
    });
    let reason = d1["reason"].as_str().unwrap_or_default();
    assert!(
        reason.starts_with("instance web-1-0-")
            && reason.contains(&format!("cannot pull {pinned}: ")),
        "{d1}"
    );
    assert!(
        reason.contains(": denied: "),
        "the registry's refusal, in podman's words: {d1}"
    );
    assert!(
        strait.metric("strait_agent_container_starts_total{app=\"web\",result=\"pull_failed\"}")
            >= Some(1.0),
        "{}",
        strait.metrics_text()
    );
    assert!(podman.containers().is_empty(), "{:?}", podman.containers());
    strait.stop();

    // With the credentials for strait's own registry on both sides: podman pulls, the
    // app answers through the router.
    let strait = start(&[("STRAIT_REGISTRY_AUTH", AUTH)]);
    let (ok, out) = deploy(
        &strait,
        &[
            "web",
            &v1,
            "--instances",
            "1",
            "--host",
            host,
            "--check-path",
            "/healthz",
            "--check-interval",
            "200ms",
            "--wait",
        ],
    );
    assert!(ok, "{out}\n{}", strait.log_text());
    assert!(
        out.contains(&format!("deployment 2 of web: {pinned}")) && out.contains("succeeded in "),
        "{out}"
    );
    assert_eq!(version_served(strait.http, host), Ok("v1".into()));
    let d2 = deployment(&strait, "web", 2);
    assert_eq!(
        (&d2["image"], &d2["digest"]),
        (&pinned.as_str().into(), &original.as_str().into()),
        "{d2}"
    );

    // The tag moves to another image after the deployment: a container killed and
    // restarted still runs the digest resolved when the deployment was accepted.
    build_serving(registry, "v1", "v1-moved", true, Some(AUTH));
    let (_, moved) = tag_digest(registry, "v1", Some(AUTH));
    assert_ne!(moved.as_deref(), Some(original.as_str()), "the tag moved");
    let victim = podman.running().into_iter().next().expect("a container");
    let (killed, out) = podman.command(&["kill", &victim]);
    assert!(killed, "{out}");
    eventually(
        Duration::from_secs(20),
        "the killed container to run again",
        || {
            let (_, service) = strait.get("/v1/services/web");
            let instance = &service["instances"][0];
            let served = version_served(strait.http, host);
            if instance["metadata"]["restarts"] == "1"
                && instance["health"] == "passing"
                && podman.running() == [victim.clone()]
                && served.as_deref() == Ok("v1")
            {
                Ok(())
            } else {
                Err(format!("{served:?} {service}"))
            }
        },
    );
    assert_eq!(version_served(strait.http, host), Ok("v1".into()));
    let (_, image) = podman.command(&["inspect", "--format", "{{.ImageName}}", &victim]);
    assert_eq!(image.trim(), pinned, "the container runs the digest");
    let (_, service) = strait.get("/v1/services/web");
    assert_eq!(
        service["instances"][0]["metadata"]["digest"],
        original.as_str(),
        "{service}"
    );

    // Its container and image removed behind the agent's back: pulled again, by digest,
    // into a new container that still serves the original.
    let id_of = |name: &str| podman.command(&["inspect", "--format", "{{.Id}}", name]);
    let (_, old_id) = id_of(&victim);
    let (removed, out) = podman.command(&["rm", "--force", "--time=0", &victim]);
    assert!(removed, "{out}");
    let (removed, out) = podman.command(&["rmi", "--force", &pinned]);
    assert!(removed, "{out}");
    eventually(Duration::from_secs(30), "a new container to serve", || {
        let (exists, id) = id_of(&victim);
        let served = version_served(strait.http, host);
        if exists && id != old_id && served.as_deref() == Ok("v1") {
            Ok(())
        } else {
            Err(format!("{id} {served:?}"))
        }
    });
    assert_eq!(version_served(strait.http, host), Ok("v1".into()));
    let (_, image) = podman.command(&["inspect", "--format", "{{.ImageName}}", &victim]);
    assert_eq!(image.trim(), pinned, "the new container runs the digest");
    assert_eq!(deployment(&strait, "web", 2)["image"], pinned.as_str());
    let metric = |result: &str| {
        strait.metric(&format!(
            "strait_agent_container_starts_total{{app=\"web\",result=\"{result}\"}}"
        ))
    };
    assert_eq!(
        (metric("ok"), metric("pull_failed")),
        (Some(2.0), None),
        "pulled twice with the credentials: {}",
        strait.metrics_text()
    );
}

#[test]
fn without_agents_a_deployment_is_refused() {
    let strait = Strait::builder().start();
    let (status, body) = http(
        &strait,
        "POST",
        "/v1/apps/web/deployments",
        Some(r#"{"image": "127.0.0.1:5000/shop/web:v1", "instances": 1}"#),
        None,
    );
    assert_eq!(status, 422, "{body}");
    assert!(
        body["message"]
            .as_str()
            .is_some_and(|m| m.contains("--runtime podman")),
        "{body}"
    );
}

/// A standalone `strait agent --runtime podman` on ZooKeeper, handing out ports from a
/// range of its own (`range` picks one of a few per test process).
fn start_agent(podman: &Podman, zk: &str, id: &str, zone: &str, range: u16) -> Process {
    let low = 30000 + (std::process::id() % 50) as u16 * 400 + range * 100;
    let ports = format!("{low}-{}", low + 99);
    let args = [
        "agent",
        "--runtime",
        "podman",
        "--store",
        zk,
        "--id",
        id,
        "--zone",
        zone,
        "--session-timeout",
        "2s",
        "--addr",
        "127.0.0.1:0",
        "--stop-timeout",
        "2s",
        "--ports",
        &ports,
    ];
    Process::start_with_env(&args, "agent API listening on ", &podman.env())
}

#[test]
fn on_zookeeper_agents_in_two_zones_run_a_deployment_and_one_killed_mid_deployment_rolls_it_back() {
    let podman = Podman::new();
    let zk = ZooKeeper::shared();
    let url = zk.url("deploy-two-zones");
    // The controller and router: no containers of its own.
    let strait = Strait::builder().store(&url).start();
    let registry = strait.registry.expect("the registry listens");
    let a = start_agent(&podman, &url, "agent-a", "z1", 0);
    let mut b = start_agent(&podman, &url, "agent-b", "z2", 1);
    eventually(Duration::from_secs(15), "both agents to register", || {
        let (_, body) = strait.get("/v1/services/strait-agent");
        match body["instances"].as_array().map(Vec::len) {
            Some(2) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    });
    let v1 = build_image(registry, "v1", true);
    let v2 = build_image(registry, "v2", false);
    let host = "web.zk.test";

    // Two instances over the agents' two zones: one each.
    let (ok, out) = deploy(
        &strait,
        &[
            "web",
            &v1,
            "--instances",
            "2",
            "--host",
            host,
            "--check-path",
            "/healthz",
            "--check-interval",
            "200ms",
            "--pause",
            "1s",
            "--drain",
            "1s",
            "--wait",
        ],
    );
    assert!(ok, "{out}\n{}\n{}", a.log_text(), b.log_text());
    let d1 = deployment(&strait, "web", 1);
    assert_eq!(
        d1["placement"],
        serde_json::json!({"z1": 1, "z2": 1}),
        "{d1}"
    );
    let agents: Vec<&str> = d1["instances"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|i| i["metadata"]["agent"].as_str())
        .collect();
    assert_eq!(agents.len(), 2);
    assert!(
        agents.contains(&"agent-a") && agents.contains(&"agent-b"),
        "{agents:?}"
    );
    eventually(Duration::from_secs(10), "v1 to be served", || {
        version_served(strait.http, host)
    });

    // v2 (whose check never passes, so it waits), and agent B dies in the middle: its
    // zone has nobody left to run it, and the deployment is rolled back to v1.
    let (status, body) = http(
        &strait,
        "POST",
        "/v1/apps/web/deployments",
        Some(&format!(r#"{{"image": "{v2}", "timeout": "90s"}}"#)),
        None,
    );
    assert_eq!(status, 202, "{body}");
    eventually(Duration::from_secs(20), "v2's containers to start", || {
        let running = podman.running();
        if running.iter().filter(|n| n.contains("-web-2-")).count() == 2 {
            Ok(())
        } else {
            Err(format!("{running:?}"))
        }
    });
    b.kill();
    let d2 = eventually(Duration::from_secs(60), "deployment 2 to end", || {
        let d = deployment(&strait, "web", 2);
        match d["state"].as_str() {
            Some("rolled_back") => Ok(d),
            other => Err(format!("{other:?}: {d}")),
        }
    });
    assert!(
        d2["reason"]
            .as_str()
            .is_some_and(|r| r.contains("zone `z2` has had no live agent")),
        "{d2}"
    );
    assert_eq!(version_served(strait.http, host), Ok("v1".into()));

    // B comes back: it adopts its v1 container and removes its v2 stray.
    let b = start_agent(&podman, &url, "agent-b", "z2", 1);
    eventually(Duration::from_secs(30), "B to adopt v1 and drop v2", || {
        let running = podman.running();
        let v1_count = running.iter().filter(|n| n.contains("-web-1-")).count();
        let v2_count = running.iter().filter(|n| n.contains("-web-2-")).count();
        let (_, service) = strait.get("/v1/services/web");
        let passing = service["instances"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|i| i["health"] == "passing")
            .count();
        if v1_count == 2 && v2_count == 0 && passing == 2 {
            Ok(())
        } else {
            Err(format!("{running:?} {service}"))
        }
    });
    assert!(
        b.log_text().contains("adopting a running container"),
        "{}",
        b.log_text()
    );
    drop(a);
}

#[test]
fn a_strait_killed_while_the_old_version_drains_rolls_the_deployment_forward() {
    let podman = Podman::new();
    let data = tempfile::tempdir().expect("tempdir");
    let mut strait = start_strait(&podman, Some(data.path()), "z1");
    let registry = strait.registry.expect("the registry listens");
    let v1 = build_image(registry, "v1", true);
    let v2 = build_image(registry, "v2", true);
    let host = "forward.deploy.test";
    let (ok, out) = deploy(
        &strait,
        &[
            "web",
            &v1,
            "--instances",
            "1",
            "--host",
            host,
            "--check-path",
            "/healthz",
            "--check-interval",
            "200ms",
            "--wait",
        ],
    );
    assert!(ok, "{out}");
    let (status, body) = http(
        &strait,
        "POST",
        "/v1/apps/web/deployments",
        Some(&format!(
            r#"{{"image": "{v2}", "rollout": {{"steps": [100], "pause": "500ms", "drain": "8s"}}}}"#
        )),
        None,
    );
    assert_eq!(status, 202, "{body}");
    eventually(Duration::from_secs(30), "the drain step", || {
        let d = deployment(&strait, "web", 2);
        let draining = d["steps"].as_array().into_iter().flatten().any(|s| {
            s["name"].as_str().is_some_and(|n| n.starts_with("drain")) && s["state"] == "running"
        });
        if draining {
            Ok(())
        } else {
            Err(format!("{d}"))
        }
    });
    strait.kill();
    let strait = start_strait(&podman, Some(data.path()), "z1");
    let d2 = eventually(
        Duration::from_secs(30),
        "deployment 2 to be rolled forward",
        || {
            let d = deployment(&strait, "web", 2);
            match d["state"].as_str() {
                Some("succeeded") => Ok(d),
                other => Err(format!("{other:?}: {d}")),
            }
        },
    );
    assert!(
        d2["steps"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|s| s["name"] == "taken over: roll forward"),
        "{d2}"
    );
    eventually(
        Duration::from_secs(20),
        "v2 to serve",
        || match version_served(strait.http, host) {
            Ok(v) if v == "v2" => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    eventually(
        Duration::from_secs(30),
        "v1's container to stop after its drain",
        || {
            let running = podman.running();
            if running.iter().all(|n| n.contains("-web-2-")) && running.len() == 1 {
                Ok(())
            } else {
                Err(format!("{:?}", podman.containers()))
            }
        },
    );
}
