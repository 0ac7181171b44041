//! `table`: the router's routing table at scale (10k routes over 10k hosts, 100k
//! endpoints): compile time cold and after a change, the table's memory, and lookup and
//! pick times. In process, on the `router` crate itself; no peer does this the same way,
//! so the figures stand alone (the budget: a change storm must never back up).

use std::hint::black_box;
use std::time::Instant;

use http::{HeaderMap, Method};
use router::RouterConfig;
use router::pool::{PoolStates, Tried};
use router::table::{compile, synthetic_snapshot};
use serde::Serialize;
use stats_alloc::Region;

use crate::median;

#[derive(Serialize)]
pub struct TableRow {
    pub routes: usize,
    pub endpoints: usize,
    pub compile_cold_ms: f64,
    pub compile_after_change_ms: f64,
    /// Heap bytes the compiled table holds (allocated minus freed while building it).
    pub table_bytes: i64,
    pub lookup_exact_ns: f64,
    pub lookup_wildcard_ns: f64,
    pub lookup_miss_ns: f64,
    pub pick_ns: f64,
}

/// Nanoseconds per call of `f`, the median of `rounds` timed batches.
fn per_call_ns(rounds: usize, batch: u32, mut f: impl FnMut()) -> f64 {
    let mut samples: Vec<f64> = (0..rounds)
        .map(|_| {
            let started = Instant::now();
            for _ in 0..batch {
                f();
            }
            started.elapsed().as_nanos() as f64 / f64::from(batch)
        })
        .collect();
    median(&mut samples)
}

pub fn scenario(quick: bool) -> anyhow::Result<Vec<TableRow>> {
    let rounds = if quick { 3 } else { 7 };
    let snapshot = synthetic_snapshot(10_000, 10);
    let config = RouterConfig::default();
    let endpoints = snapshot.services.values().map(|s| s.instances.len()).sum();

    let mut cold = Vec::new();
    let mut after_change = Vec::new();
    let mut table_bytes = 0;
    for _ in 0..rounds {
        let region = Region::new(crate::GLOBAL);
        let started = Instant::now();
        let table = compile(&snapshot, &config, &mut PoolStates::default());
        cold.push(started.elapsed().as_secs_f64() * 1000.0);
        let stats = region.change();
        table_bytes = stats.bytes_allocated as i64 - stats.bytes_deallocated as i64
            + stats.bytes_reallocated as i64;
        black_box(&table);
        // After a change: the previous table's pools are reused for unchanged services.
        let mut states = PoolStates::default();
        compile(&snapshot, &config, &mut states);
        let started = Instant::now();
        black_box(compile(&snapshot, &config, &mut states));
        after_change.push(started.elapsed().as_secs_f64() * 1000.0);
    }

    let table = compile(&snapshot, &config, &mut PoolStates::default());
    let headers = HeaderMap::new();
    let get = Method::GET;
    let lookup = |host: &'static str, path: &'static str| {
        per_call_ns(rounds, 200_000, || {
            black_box(table.route(black_box(host), black_box(path), &get, &headers));
        })
    };
    let pool = table
        .pools
        .get("svc-4242")
        .ok_or_else(|| anyhow::anyhow!("the synthetic table has no svc-4242"))?;
    let tried = Tried::default();
    Ok(vec![TableRow {
        routes: table.route_count,
        endpoints,
        compile_cold_ms: median(&mut cold),
        compile_after_change_ms: median(&mut after_change),
        table_bytes,
        lookup_exact_ns: lookup("host-4242.example.com", "/api/users"),
        lookup_wildcard_ns: lookup("a.b.wild.example.com", "/"),
        lookup_miss_ns: lookup("nowhere.example.org", "/"),
        pick_ns: per_call_ns(rounds, 200_000, || {
            black_box(pool.pick(0, &tried, None));
        }),
    }])
}

pub fn print(rows: &[TableRow]) {
    println!("\n## table (in process, medians)\n");
    println!(
        "| routes | endpoints | compile cold ms | compile after a change ms | table MiB | lookup exact ns | lookup wildcard ns | lookup miss ns | pick ns |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} | {:.1} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.routes,
            r.endpoints,
            r.compile_cold_ms,
            r.compile_after_change_ms,
            r.table_bytes as f64 / (1024.0 * 1024.0),
            r.lookup_exact_ns,
            r.lookup_wildcard_ns,
            r.lookup_miss_ns,
            r.pick_ns
        );
    }
}
