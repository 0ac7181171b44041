//! `alloc`: heap allocations per proxied HTTP request and per DNS query, counted by a
//! `strait` built with `--features alloc-stats` (a counting global allocator exported as
//! `strait_allocations_total`). The process's idle allocation rate, measured first, is
//! subtracted. The DNS query path is meant to allocate nothing; the router's figure must
//! not grow unnoticed.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde::Serialize;

use crate::{
    dnsperf, free_port, nginx_backend, require, route_to_backend, strait_up, workspace_root, wrk,
};

#[derive(Serialize)]
pub struct AllocRow {
    pub path: String,
    pub operations: u64,
    pub allocations_per_op: f64,
    pub bytes_per_op: f64,
}

fn build_counting_strait() -> anyhow::Result<PathBuf> {
    let status = Command::new("cargo")
        .args([
            "build",
            "--release",
            "--bin",
            "strait",
            "--features",
            "alloc-stats",
        ])
        .current_dir(workspace_root())
        .status()
        .context("building strait with alloc-stats")?;
    if !status.success() {
        bail!("cargo build --features alloc-stats failed");
    }
    Ok(workspace_root().join("target/release/strait"))
}

/// (allocations, bytes) so far, from the admin API's metrics.
fn counters(admin: &str) -> anyhow::Result<(f64, f64)> {
    // Let the exporter (every 20 ms) catch up with what just happened.
    std::thread::sleep(Duration::from_millis(100));
    let text = ureq::get(&format!("{admin}/metrics"))
        .call()?
        .body_mut()
        .read_to_string()?;
    let value = |name: &str| {
        text.lines().find_map(|l| {
            l.strip_prefix(name)?
                .strip_prefix(' ')?
                .trim()
                .parse::<f64>()
                .ok()
        })
    };
    match (
        value("strait_allocations_total"),
        value("strait_allocated_bytes_total"),
    ) {
        (Some(a), Some(b)) => Ok((a, b)),
        _ => bail!("strait_allocations_total missing: is this an alloc-stats build?"),
    }
}

pub fn scenario(quick: bool, dir: &Path) -> anyhow::Result<Vec<AllocRow>> {
    for (tool, package) in [
        ("nginx", "nginx-light"),
        ("wrk", "wrk"),
        ("dnsperf", "dnsperf"),
    ] {
        require(tool, package)?;
    }
    let strait_bin = build_counting_strait()?;
    let (_backend, backend_port) = nginx_backend(dir, "alloc-backend")?;
    let (strait_port, admin_port, dns_port) = (free_port()?, free_port()?, free_port()?);
    let _strait = strait_up(
        &strait_bin,
        &dir.join("alloc-strait-data"),
        strait_port,
        admin_port,
        dns_port,
    )?;
    let admin = format!("http://127.0.0.1:{admin_port}");
    route_to_backend(&admin, backend_port)?;
    let mut queries = String::new();
    for s in 0..10 {
        for i in 1..=3 {
            ureq::put(&format!("{admin}/v1/services/web-{s}/instances/i{i}"))
                .send(format!(r#"{{"address":"10.0.{s}.{i}","port":80}}"#))?;
        }
        queries.push_str(&format!("web-{s}.service.strait A\n"));
    }
    let queries_path = dir.join("alloc-queries.txt");
    std::fs::write(&queries_path, queries)?;
    std::thread::sleep(Duration::from_millis(500));
    // Warm up both paths (pools, buffers, lazy statics), then measure the idle rate.
    wrk(strait_port, 1)?;
    dnsperf(dns_port, &queries_path, 1, 1)?;
    let seconds = if quick { 2 } else { 5 };
    let (a0, _) = counters(&admin)?;
    let idle_start = Instant::now();
    std::thread::sleep(Duration::from_secs(2));
    let (a1, _) = counters(&admin)?;
    let idle_per_s = (a1 - a0) / idle_start.elapsed().as_secs_f64();

    let mut rows = Vec::new();
    for path in ["HTTP request (proxied)", "DNS query (UDP)"] {
        let (allocations_before, bytes_before) = counters(&admin)?;
        let started = Instant::now();
        let operations = if path.starts_with("HTTP") {
            wrk(strait_port, seconds)?.requests
        } else {
            dnsperf(dns_port, &queries_path, seconds, 1)?.completed
        };
        let (allocations_after, bytes_after) = counters(&admin)?;
        let idle = idle_per_s * started.elapsed().as_secs_f64();
        let ops = operations.max(1) as f64;
        let row = AllocRow {
            path: path.to_string(),
            operations,
            allocations_per_op: ((allocations_after - allocations_before - idle) / ops).max(0.0),
            bytes_per_op: (bytes_after - bytes_before) / ops,
        };
        eprintln!(
            "{path}: {operations} ops, {:.2} allocations/op, {:.0} bytes/op (idle {idle_per_s:.0} allocations/s subtracted)",
            row.allocations_per_op, row.bytes_per_op
        );
        rows.push(row);
    }
    Ok(rows)
}

pub fn print(rows: &[AllocRow]) {
    println!("\n## alloc (strait built with --features alloc-stats; idle rate subtracted)\n");
    println!("| path | operations | allocations/op | bytes/op |\n|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.2} | {:.0} |",
            r.path, r.operations, r.allocations_per_op, r.bytes_per_op
        );
    }
}
