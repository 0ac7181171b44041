//! `table`: the router's routing table at scale, in process, on the `router` crate itself:
//! 10k routes over 10k hosts with 100k endpoints, and 100k routes with 1M endpoints. For
//! each: the cold build, one instance's change (the store's new snapshot, then the
//! router's compile against the previous table's state and the swap), the heap the table
//! and its state hold, and lookup and pick times. No peer does this the same way, so the
//! figures stand alone (the budget: a change storm must never back up).

use std::hint::black_box;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use discovery::{Health, Snapshot};
use http::{HeaderMap, Method};
use router::RouterConfig;
use router::pool::Tried;
use router::table::{Table, TableState, compile, synthetic_snapshot};
use serde::Serialize;
use stats_alloc::Region;

use crate::median;

#[derive(Serialize)]
pub struct TableRow {
    pub routes: usize,
    pub endpoints: usize,
    pub compile_cold_ms: f64,
    /// One instance's health changed: compile against the previous state, and the swap.
    pub change_ms: f64,
    /// Dropping the table the change replaced (after the swap, off the readers' way).
    pub drop_previous_ms: f64,
    /// The store's part: the next snapshot after one instance's change
    /// (`discovery::snapshot::upsert_instance` on a published snapshot's maps).
    pub snapshot_ms: f64,
    /// Heap bytes the compiled table and the state kept for the next compile hold
    /// (allocated minus freed while building them cold).
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

fn ms(started: Instant) -> f64 {
    started.elapsed().as_secs_f64() * 1000.0
}

/// The next snapshot after instance `i-3` of `service` turns `health`, as the store makes
/// it: the published snapshot's maps are shared, so the change copies what it touches.
fn one_change(previous: &Snapshot, service: &str, health: Health) -> anyhow::Result<Snapshot> {
    let mut instance = previous
        .instance(service, "i-3")
        .ok_or_else(|| anyhow::anyhow!("the synthetic snapshot has no {service}/i-3"))?
        .clone();
    instance.spec.health = health;
    let mut next = previous.clone();
    next.revision += 1;
    discovery::snapshot::upsert_instance(&mut next.services, instance);
    Ok(next)
}

pub fn scenario(quick: bool) -> anyhow::Result<Vec<TableRow>> {
    let sizes: &[(usize, usize)] = if quick {
        &[(10_000, 3), (100_000, 1)]
    } else {
        &[(10_000, 7), (100_000, 5)]
    };
    sizes
        .iter()
        .map(|&(services, rounds)| row(services, rounds))
        .collect()
}

fn row(services: usize, rounds: usize) -> anyhow::Result<TableRow> {
    let snapshot = synthetic_snapshot(services, 10);
    let config = RouterConfig::default();
    let endpoints = snapshot.instance_count();
    // A service in the middle of the map, its route on an exact host with a prefix.
    let changed = format!("svc-{}", services / 2 + 42);
    let host = format!("host-{}.example.com", services / 2 + 42);

    let mut cold = Vec::new();
    let mut change = Vec::new();
    let mut drop_previous = Vec::new();
    let mut snapshot_ms = Vec::new();
    let mut table_bytes = 0;
    let mut kept: Option<(Arc<ArcSwap<Table>>, TableState, Snapshot)> = None;
    for _ in 0..rounds {
        // Whatever the last round kept is freed first, outside the region.
        drop(kept.take());
        let region = Region::new(crate::GLOBAL);
        let started = Instant::now();
        let mut states = TableState::default();
        let first = compile(&snapshot, &config, &mut states);
        cold.push(ms(started));
        let stats = region.change();
        table_bytes = stats.bytes_allocated as i64 - stats.bytes_deallocated as i64
            + stats.bytes_reallocated as i64;
        let live = Arc::new(ArcSwap::from_pointee(first));

        // One instance's health flips, back and forth: each change is a new `Arc` for
        // that service only, as the store publishes it.
        let mut current = snapshot.clone();
        for health in [Health::Critical, Health::Passing] {
            let started = Instant::now();
            let next = one_change(&current, &changed, health)?;
            snapshot_ms.push(ms(started));
            let started = Instant::now();
            let table = compile(&next, &config, &mut states);
            let previous = live.swap(Arc::new(table));
            change.push(ms(started));
            let started = Instant::now();
            drop(previous);
            drop_previous.push(ms(started));
            current = next;
        }
        kept = Some((live, states, current));
    }
    let (live, _states, _snapshot) = kept.ok_or_else(|| anyhow::anyhow!("no round ran"))?;

    let table = live.load_full();
    let headers = HeaderMap::new();
    let get = Method::GET;
    let lookup_rounds = rounds.max(3);
    let lookup = |host: &str, path: &'static str| {
        per_call_ns(lookup_rounds, 200_000, || {
            black_box(table.route(black_box(host), black_box(path), &get, &headers));
        })
    };
    let pool = table
        .pools
        .get(changed.as_str())
        .ok_or_else(|| anyhow::anyhow!("the synthetic table has no {changed}"))?;
    let tried = Tried::default();
    Ok(TableRow {
        routes: table.route_count,
        endpoints,
        compile_cold_ms: median(&mut cold),
        change_ms: median(&mut change),
        drop_previous_ms: median(&mut drop_previous),
        snapshot_ms: median(&mut snapshot_ms),
        table_bytes,
        lookup_exact_ns: lookup(&host, "/api/users"),
        lookup_wildcard_ns: lookup("a.b.wild.example.com", "/"),
        lookup_miss_ns: lookup("nowhere.example.org", "/"),
        pick_ns: per_call_ns(lookup_rounds, 200_000, || {
            black_box(pool.pick(0, &tried, None));
        }),
    })
}

pub fn print(rows: &[TableRow]) {
    println!("\n## table (in process, medians)\n");
    println!(
        "| routes | endpoints | cold ms | one change ms (compile + swap) | change / cold | drop previous ms | store snapshot ms | table + state MiB | bytes / endpoint | lookup exact ns | lookup wildcard ns | lookup miss ns | pick ns |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {:.1} | {:.2} | {:.1} % | {:.2} | {:.2} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            r.routes,
            r.endpoints,
            r.compile_cold_ms,
            r.change_ms,
            r.change_ms * 100.0 / r.compile_cold_ms,
            r.drop_previous_ms,
            r.snapshot_ms,
            r.table_bytes as f64 / (1024.0 * 1024.0),
            r.table_bytes as f64 / r.endpoints.max(1) as f64,
            r.lookup_exact_ns,
            r.lookup_wildcard_ns,
            r.lookup_miss_ns,
            r.pick_ns
        );
    }
}
