//! `tcp`: layer-4 proxying. strait's TCP route, nginx's `stream` proxy and HAProxy in
//! `mode tcp` (one worker each) in front of the same nginx backend, and the backend
//! directly. Two loads through each: small keep-alive requests (`wrk -c50`, 19-byte
//! bodies: per-message relay cost) and bulk (`wrk -c8`, 1 MiB bodies: bytes per second,
//! where copying costs most).

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use serde::Serialize;

use crate::{Proc, Sample, free_port, median, parse_wrk, require, spawn, strait_up, wait_port};

#[derive(Serialize)]
pub struct TcpRow {
    pub participant: String,
    pub load: &'static str,
    pub median_rps: f64,
    /// Megabytes per second of response bodies and headers (wrk's transfer rate).
    pub median_mb_s: f64,
    pub median_p99_ms: f64,
    pub errors: u64,
}

const LOADS: [(&str, &str, u32); 2] = [("small", "/", 50), ("1MiB", "/1m", 8)];

fn wrk(port: u16, path: &str, connections: u32, seconds: u64) -> anyhow::Result<Sample> {
    let output = Command::new("wrk")
        .args(["-t1", "--latency"])
        .arg(format!("-c{connections}"))
        .arg(format!("-d{seconds}s"))
        .arg(format!("http://127.0.0.1:{port}{path}"))
        .output()
        .context("running wrk")?;
    parse_wrk(port, &String::from_utf8_lossy(&output.stdout))
}

pub fn scenario(quick: bool, dir: &Path, strait_bin: &Path) -> anyhow::Result<Vec<TcpRow>> {
    for (tool, package) in [
        ("nginx", "nginx-light"),
        ("haproxy", "haproxy"),
        ("wrk", "wrk"),
    ] {
        require(tool, package)?;
    }
    let stream_module = Path::new("/usr/lib/nginx/modules/ngx_stream_module.so");
    if !stream_module.exists() {
        bail!("nginx's stream module is missing: apt-get install libnginx-mod-stream");
    }
    let (backend_port, nginx_port, haproxy_port, strait_port) =
        (free_port()?, free_port()?, free_port()?, free_port()?);
    let (http_port, admin_port, dns_port) = (free_port()?, free_port()?, free_port()?);
    let body = dir.join("1m.bin");
    std::fs::write(&body, vec![b'x'; 1 << 20])?;
    let nginx = |name: &str, top: &str, body: &str| -> anyhow::Result<std::path::PathBuf> {
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(
            &path,
            format!(
                "{top}worker_processes 1;\ndaemon off;\npid {d}/{name}.pid;\nerror_log {d}/{name}.err warn;\n\
                 events {{ worker_connections 4096; }}\n{body}\n",
                d = dir.display()
            ),
        )?;
        Ok(path)
    };
    let mut procs: Vec<Proc> = Vec::new();
    let backend = nginx(
        "tcp-backend",
        "",
        &format!(
            "http {{\n  access_log off;\n  keepalive_requests 1000000;\n  server {{ listen 127.0.0.1:{backend_port};\n    \
             location / {{ return 200 \"hello from backend\\n\"; }}\n    location = /1m {{ alias {}; }} }}\n}}",
            body.display()
        ),
    )?;
    procs.push(spawn(
        "backend (nginx)",
        Command::new("nginx").arg("-c").arg(&backend),
    )?);
    let stream = nginx(
        "tcp-nginx",
        &format!("load_module {};\n", stream_module.display()),
        &format!(
            "stream {{ server {{ listen 127.0.0.1:{nginx_port}; proxy_pass 127.0.0.1:{backend_port}; }} }}"
        ),
    )?;
    procs.push(spawn(
        "nginx stream",
        Command::new("nginx").arg("-c").arg(&stream),
    )?);
    let haproxy_cfg = dir.join("tcp-haproxy.cfg");
    std::fs::write(
        &haproxy_cfg,
        format!(
            "global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode tcp\n  option splice-auto\n  timeout connect 2s\n  timeout client 30s\n  \
             timeout server 30s\nfrontend fe\n  bind 127.0.0.1:{haproxy_port}\n  default_backend be\nbackend be\n  \
             server s1 127.0.0.1:{backend_port}\n"
        ),
    )?;
    procs.push(spawn(
        "haproxy",
        Command::new("haproxy").arg("-f").arg(&haproxy_cfg),
    )?);
    procs.push(strait_up(
        strait_bin,
        &dir.join("strait-data-tcp"),
        http_port,
        admin_port,
        dns_port,
    )?);
    let admin = format!("http://127.0.0.1:{admin_port}");
    ureq::put(&format!("{admin}/v1/services/bench/instances/b1"))
        .send(format!(
            r#"{{"address":"127.0.0.1","port":{backend_port}}}"#
        ))
        .context("registering the backend")?;
    ureq::put(&format!("{admin}/v1/routes/tcp-bench"))
        .send(format!(
            r#"{{"kind":"tcp","listen":"127.0.0.1:{strait_port}","service":"bench"}}"#
        ))
        .context("declaring the TCP route")?;
    for (port, what) in [
        (backend_port, "backend"),
        (nginx_port, "nginx stream"),
        (haproxy_port, "haproxy"),
        (strait_port, "strait TCP route"),
    ] {
        wait_port(port, what)?;
    }
    std::thread::sleep(Duration::from_millis(300));

    let participants = [
        ("direct", backend_port),
        ("strait", strait_port),
        ("nginx", nginx_port),
        ("haproxy", haproxy_port),
    ];
    let (rounds, seconds) = if quick { (1, 2) } else { (3, 5) };
    let mut rows = Vec::new();
    for (load, path, connections) in LOADS {
        for (_, port) in participants {
            wrk(port, path, connections, 1)?; // warm-up
        }
        let mut runs: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
        for round in 1..=rounds {
            for (name, port) in participants {
                let run = wrk(port, path, connections, seconds)?;
                eprintln!(
                    "round {round} {load} {name}: {:.0} req/s {:.0} MB/s p99 {:.2} ms",
                    run.rps, run.mb_s, run.p99_ms
                );
                runs.entry(name).or_default().push(run);
            }
        }
        for (name, _) in participants {
            let runs = runs.remove(name).unwrap_or_default();
            let pick = |f: fn(&Sample) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
            rows.push(TcpRow {
                participant: name.to_string(),
                load,
                median_rps: pick(|r| r.rps),
                median_mb_s: pick(|r| r.mb_s),
                median_p99_ms: pick(|r| r.p99_ms),
                errors: runs.iter().map(|r| r.errors).sum(),
            });
        }
    }
    drop(procs);
    Ok(rows)
}

pub fn print(rows: &[TcpRow]) {
    println!("\n## tcp (TCP proxying, 1 worker each, medians)\n");
    println!("| load | participant | req/s | MB/s | p99 ms | errors |\n|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.0} | {:.0} | {:.2} | {} |",
            r.load, r.participant, r.median_rps, r.median_mb_s, r.median_p99_ms, r.errors
        );
    }
    for (load, _, _) in LOADS {
        let value = |name: &str| {
            rows.iter()
                .find(|r| r.load == load && r.participant == name)
                .map_or(0.0, |r| r.median_mb_s)
        };
        let strait = value("strait");
        println!(
            "{load}: strait/nginx {:.2}, strait/haproxy {:.2}, strait/direct {:.2} (bytes per second)",
            strait / value("nginx").max(1e-9),
            strait / value("haproxy").max(1e-9),
            strait / value("direct").max(1e-9)
        );
    }
}
