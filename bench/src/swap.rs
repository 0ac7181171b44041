//! `swap`: the `http` load (wrk -t1 -c50 through strait to an nginx backend) while the
//! route table changes 100 times a second through the admin API, against the same load
//! with no changes, alternating. Each change is a route PUT, so each is a new snapshot, a
//! table compile and an `ArcSwap` store in the router. Reports the req/s ratio and every
//! failed request (must be 0).

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;

use crate::{Sample, free_port, median, nginx_backend, require, route_to_backend, strait_up, wrk};

#[derive(Serialize)]
pub struct SwapRow {
    pub mode: String,
    pub median_rps: f64,
    pub median_p99_ms: f64,
    pub errors: u64,
    /// Route writes per second actually achieved (0 without swaps).
    pub writes_per_s: f64,
    pub samples: Vec<Sample>,
}

/// Writes routes at `rate` per second until `stop`; counts writes and failures.
fn churn(
    admin: String,
    rate: u32,
    stop: Arc<AtomicBool>,
    writes: Arc<AtomicU64>,
) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let period = Duration::from_secs(1) / rate;
    let mut next = Instant::now();
    let mut i = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // 50 churn routes, rewritten in turn with a changing host: every write changes
        // the compiled table (and the bench route itself is never touched).
        let body = format!(r#"{{"host":"churn-{i}.example.com","service":"bench"}}"#);
        agent
            .put(&format!("{admin}/v1/routes/churn-{}", i % 50))
            .send(body)
            .context("writing a route")?;
        writes.fetch_add(1, Ordering::Relaxed);
        i += 1;
        next += period;
        if let Some(wait) = next.checked_duration_since(Instant::now()) {
            std::thread::sleep(wait);
        }
    }
    Ok(())
}

pub fn scenario(quick: bool, dir: &Path, strait_bin: &Path) -> anyhow::Result<Vec<SwapRow>> {
    for (tool, package) in [("nginx", "nginx-light"), ("wrk", "wrk")] {
        require(tool, package)?;
    }
    let (backend, backend_port) = nginx_backend(dir, "swap-backend")?;
    let (strait_port, admin_port) = (free_port()?, free_port()?);
    let strait = strait_up(
        strait_bin,
        &dir.join("swap-strait-data"),
        strait_port,
        admin_port,
        free_port()?,
    )?;
    let admin = format!("http://127.0.0.1:{admin_port}");
    route_to_backend(&admin, backend_port)?;
    std::thread::sleep(Duration::from_millis(300));
    wrk(strait_port, 1)?; // warm-up

    let (rounds, seconds) = if quick { (1, 2) } else { (3, 5) };
    let mut samples: BTreeMap<&str, Vec<(Sample, f64)>> = BTreeMap::new();
    for round in 1..=rounds {
        for mode in ["steady", "100 swaps/s"] {
            let stop = Arc::new(AtomicBool::new(false));
            let writes = Arc::new(AtomicU64::new(0));
            let churner = (mode != "steady").then(|| {
                let (admin, stop, writes) = (admin.clone(), Arc::clone(&stop), Arc::clone(&writes));
                std::thread::spawn(move || churn(admin, 100, stop, writes))
            });
            let started = Instant::now();
            let sample = wrk(strait_port, seconds);
            let elapsed = started.elapsed().as_secs_f64();
            stop.store(true, Ordering::Relaxed);
            if let Some(churner) = churner {
                churner
                    .join()
                    .map_err(|_| anyhow::anyhow!("churn thread panicked"))??;
            }
            let sample = sample?;
            let rate = writes.load(Ordering::Relaxed) as f64 / elapsed;
            eprintln!(
                "round {round} {mode}: {:.0} req/s p99 {:.2} ms, {} errors, {rate:.0} route writes/s",
                sample.rps, sample.p99_ms, sample.errors
            );
            samples.entry(mode).or_default().push((sample, rate));
        }
    }
    drop((strait, backend));
    Ok(["steady", "100 swaps/s"]
        .iter()
        .map(|mode| {
            let runs = samples.remove(mode).unwrap_or_default();
            let pick =
                |f: fn(&(Sample, f64)) -> f64| median(&mut runs.iter().map(f).collect::<Vec<_>>());
            SwapRow {
                mode: mode.to_string(),
                median_rps: pick(|(s, _)| s.rps),
                median_p99_ms: pick(|(s, _)| s.p99_ms),
                errors: runs.iter().map(|(s, _)| s.errors).sum(),
                writes_per_s: pick(|(_, w)| *w),
                samples: runs.into_iter().map(|(s, _)| s).collect(),
            }
        })
        .collect())
}

pub fn print(rows: &[SwapRow]) {
    println!(
        "\n## swap (wrk -t1 -c50 through strait; route writes through the admin API; medians)\n"
    );
    println!("| mode | req/s | p99 ms | errors | route writes/s |\n|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {:.0} | {:.2} | {} | {:.0} |",
            r.mode, r.median_rps, r.median_p99_ms, r.errors, r.writes_per_s
        );
    }
    if let [steady, swapping] = rows {
        println!(
            "\nswaps/steady {:.3} ({:+.1}%), failed requests {}",
            swapping.median_rps / steady.median_rps.max(1.0),
            (swapping.median_rps / steady.median_rps.max(1.0) - 1.0) * 100.0,
            steady.errors + swapping.errors
        );
    }
}
