//! `deploy`: seconds from `strait deploy` to 100 % of the traffic on the new version, for 4
//! instances on podman, and the requests that failed during the shift (must be 0), under a
//! keep-alive load through the router. Each round deploys the next version of a busybox
//! image built with `strait build` and pushed to strait's own registry. No peer runs here
//! (no Kubernetes or Nomad on these machines), so the figures stand alone.
//!
//! podman runs with `runc` and bounded ulimits from a `CONTAINERS_CONF` of the run's own
//! (this VM's cgroups rule out `crun`), and its own container storage, removed at the end.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::{free_port, median, require, spawn, wait_port};

#[derive(Serialize)]
pub struct DeployRow {
    pub round: usize,
    pub version: String,
    /// `strait deploy` accepted to the route at 100 % on the new version.
    pub seconds_to_full_traffic: f64,
    /// Accepted to `succeeded` (the old version drained and stopped).
    pub seconds_to_succeeded: f64,
    pub requests: u64,
    pub failed: u64,
}

const HOST: &str = "bench-deploy.test";
const INSTANCES: &str = "4";

fn podman_env(dir: &Path) -> anyhow::Result<Vec<(String, String)>> {
    std::fs::write(
        dir.join("containers.conf"),
        format!(
            "[engine]\nruntime = \"runc\"\nevents_logger = \"file\"\ntmp_dir = \"{0}/tmp\"\n\
             [containers]\ndefault_ulimits = [\"nofile=1024:1024\", \"nproc=1000:1000\"]\n",
            dir.display()
        ),
    )?;
    std::fs::write(
        dir.join("storage.conf"),
        format!(
            "[storage]\ndriver = \"overlay\"\ngraphroot = \"{0}/graph\"\nrunroot = \"{0}/run\"\n",
            dir.display()
        ),
    )?;
    Ok(vec![
        (
            "CONTAINERS_CONF".into(),
            dir.join("containers.conf").display().to_string(),
        ),
        (
            "CONTAINERS_STORAGE_CONF".into(),
            dir.join("storage.conf").display().to_string(),
        ),
    ])
}

/// Removes every container and image of the run's storage.
struct Cleanup(Vec<(String, String)>);

impl Drop for Cleanup {
    fn drop(&mut self) {
        for args in [
            &["rm", "--all", "--force", "--time=0"][..],
            &["rmi", "--all", "--force"][..],
        ] {
            let _ = Command::new("podman")
                .args(args)
                .envs(self.0.iter().cloned())
                .output();
        }
    }
}

fn build_image(strait: &Path, dir: &Path, registry: u16, version: &str) -> anyhow::Result<String> {
    let root = dir.join(version).join("root");
    std::fs::create_dir_all(root.join("bin"))?;
    std::fs::create_dir_all(root.join("www"))?;
    std::fs::copy("/bin/busybox", root.join("bin/busybox"))?;
    std::fs::write(root.join("www/index.html"), format!("{version}\n"))?;
    std::fs::write(root.join("www/healthz"), "ok\n")?;
    let file = dir.join(version).join("strait-build.toml");
    std::fs::write(
        &file,
        r#"entrypoint = ["/bin/busybox", "sh", "-c", "trap 'exit 0' TERM; /bin/busybox httpd -f -p $PORT -h /www & wait"]
[[layer]]
src = "root/"
dest = "/"
"#,
    )?;
    let reference = format!("127.0.0.1:{registry}/bench/web:{version}");
    let output = Command::new(strait)
        .arg("build")
        .arg("-f")
        .arg(&file)
        .args(["--push", &reference, "--quiet", "--cache-dir"])
        .arg(dir.join("cache"))
        .output()?;
    if !output.status.success() {
        bail!(
            "strait build {reference}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(reference)
}

/// Keep-alive GETs through the router, never retried; counts answers and failures.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Load {
    fn start(port: u16, clients: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let threads = (0..clients)
            .map(|_| {
                let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
                std::thread::spawn(move || {
                    let mut conn: Option<BufReader<TcpStream>> = None;
                    while !stop.load(Ordering::Relaxed) {
                        match get(&mut conn, port) {
                            Ok(200) => {
                                ok.fetch_add(1, Ordering::Relaxed);
                            }
                            _ => {
                                failed.fetch_add(1, Ordering::Relaxed);
                                conn = None;
                            }
                        }
                    }
                })
            })
            .collect();
        Load {
            stop,
            ok,
            failed,
            threads,
        }
    }

    fn finish(mut self) -> (u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
        (
            self.ok.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// One GET on a kept-alive connection (opened if needed); the status.
fn get(conn: &mut Option<BufReader<TcpStream>>, port: u16) -> std::io::Result<u16> {
    if conn.is_none() {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        *conn = Some(BufReader::new(stream));
    }
    let Some(c) = conn.as_mut() else {
        return Err(std::io::ErrorKind::NotConnected.into());
    };
    c.get_mut()
        .write_all(format!("GET / HTTP/1.1\r\nhost: {HOST}\r\n\r\n").as_bytes())?;
    let mut line = String::new();
    c.read_line(&mut line)?;
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or(std::io::ErrorKind::InvalidData)?;
    let mut length = 0usize;
    loop {
        let mut header = String::new();
        if c.read_line(&mut header)? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        let header = header.trim_end();
        if header.is_empty() {
            break;
        }
        if let Some((name, value)) = header.split_once(':')
            && name.eq_ignore_ascii_case("content-length")
        {
            length = value.trim().parse().unwrap_or(0);
        }
    }
    let mut body = vec![0; length];
    c.read_exact(&mut body)?;
    Ok(status)
}

fn deploy(strait: &Path, admin: &str, args: &[&str]) -> anyhow::Result<()> {
    let output = Command::new(strait)
        .args(["deploy", "--admin", admin])
        .args(args)
        .output()?;
    if !output.status.success() {
        bail!(
            "strait deploy {args:?}: {}{}",
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(())
}

pub fn scenario(quick: bool, dir: &Path, strait: &Path) -> anyhow::Result<Vec<DeployRow>> {
    require("podman", "podman")?;
    require("runc", "runc")?;
    if !Path::new("/bin/busybox").exists() {
        bail!("/bin/busybox is missing: install the Debian package `busybox-static`");
    }
    let rounds = if quick { 1 } else { 5 };
    let pause = if quick { "1s" } else { "2s" };
    let env = podman_env(dir)?;
    let _cleanup = Cleanup(env.clone());
    let (http, admin_port, dns, registry) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let mut command = Command::new(strait);
    command
        .args(["up", "--runtime", "podman", "--data-dir"])
        .arg(dir.join("data"))
        .args(["--admin-addr", &format!("127.0.0.1:{admin_port}")])
        .args(["--http-addr", &format!("127.0.0.1:{http}")])
        .args(["--dns-addr", &format!("127.0.0.1:{dns}")])
        .args(["--registry-addr", &format!("127.0.0.1:{registry}")])
        .env("RUST_LOG", "warn")
        .envs(env.iter().cloned());
    let _strait = spawn("strait", &mut command)?;
    wait_port(admin_port, "strait admin")?;
    wait_port(registry, "strait registry")?;
    let admin = format!("http://127.0.0.1:{admin_port}");
    let images: Vec<String> = (0..=rounds)
        .map(|v| build_image(strait, dir, registry, &format!("v{v}")))
        .collect::<anyhow::Result<_>>()?;
    // The agent registers a moment after the admin API listens.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let agents = ureq::get(&format!("{admin}/v1/services/strait-agent")).call();
        if agents.is_ok() {
            break;
        }
        if Instant::now() > deadline {
            bail!("the agent did not register");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    deploy(
        strait,
        &admin,
        &[
            "web",
            &images[0],
            "--instances",
            INSTANCES,
            "--host",
            HOST,
            "--check-path",
            "/healthz",
            "--check-interval",
            "250ms",
            "--pause",
            pause,
            "--drain",
            "1s",
            "--wait",
        ],
    )?;
    let mut rows = Vec::new();
    for (round, image) in images.iter().enumerate().skip(1) {
        let load = Load::start(http, 4);
        std::thread::sleep(Duration::from_millis(300));
        let started = Instant::now();
        let created: serde_json::Value = ureq::post(&format!("{admin}/v1/apps/web/deployments"))
            .send_json(serde_json::json!({ "image": image }))
            .context("creating the deployment")?
            .body_mut()
            .read_json()?;
        let id = created["id"].as_u64().context("no deployment id")?;
        let mut full = None;
        let done = loop {
            let d: serde_json::Value = ureq::get(&format!("{admin}/v1/apps/web/deployments/{id}"))
                .call()?
                .body_mut()
                .read_json()?;
            if full.is_none() && d["weight"] == 100 {
                full = Some(started.elapsed());
            }
            match d["state"].as_str() {
                Some("succeeded") => break started.elapsed(),
                Some("pending" | "running") => {}
                other => bail!("deployment {id} ended {other:?}: {}", d["reason"]),
            }
            if started.elapsed() > Duration::from_secs(300) {
                bail!("deployment {id} did not finish in 5 minutes");
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        std::thread::sleep(Duration::from_millis(300));
        let (requests, failed) = load.finish();
        rows.push(DeployRow {
            round,
            version: format!("v{round}"),
            seconds_to_full_traffic: full.unwrap_or(done).as_secs_f64(),
            seconds_to_succeeded: done.as_secs_f64(),
            requests,
            failed,
        });
    }
    Ok(rows)
}

pub fn print(rows: &[DeployRow]) {
    println!(
        "\n## deploy ({INSTANCES} instances on podman, steps 10/50/100 %, keep-alive load of 4 clients)\n"
    );
    println!("| round | to 100 % s | to succeeded s | requests | failed |\n|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.2} | {:.2} | {} | {} |",
            r.round, r.seconds_to_full_traffic, r.seconds_to_succeeded, r.requests, r.failed
        );
    }
    let mut full: Vec<f64> = rows.iter().map(|r| r.seconds_to_full_traffic).collect();
    let mut done: Vec<f64> = rows.iter().map(|r| r.seconds_to_succeeded).collect();
    let failed: u64 = rows.iter().map(|r| r.failed).sum();
    println!(
        "\nmedian: {:.2} s to 100 % of the traffic, {:.2} s to succeeded; {failed} failed requests",
        median(&mut full),
        median(&mut done)
    );
}
