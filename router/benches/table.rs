//! Routing-table micro-benchmarks: compiling a large snapshot (10k routes over 10k hosts,
//! 100k endpoints), and looking routes up in it. `cargo bench -p router --bench table`.

use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use http::{HeaderMap, Method};
use router::RouterConfig;
use router::table::{TableState, compile, synthetic_snapshot};

fn bench(c: &mut Criterion) {
    let snap = synthetic_snapshot(10_000, 10);
    let config = RouterConfig::default();
    c.bench_function("compile cold: 10k routes / 100k endpoints", |b| {
        b.iter(|| black_box(compile(&snap, &config, &mut TableState::default())));
    });
    c.bench_function("recompile unchanged: 10k routes / 100k endpoints", |b| {
        // The floor of an incremental compile (`bench table` times one real change).
        let mut states = TableState::default();
        compile(&snap, &config, &mut states);
        b.iter(|| black_box(compile(&snap, &config, &mut states)));
    });
    let table = compile(&snap, &config, &mut TableState::default());
    let headers = HeaderMap::new();
    let get = Method::GET;
    c.bench_function("lookup exact host + prefix", |b| {
        b.iter(|| {
            black_box(table.route(
                black_box("host-4242.example.com"),
                black_box("/api/users"),
                &get,
                &headers,
            ))
        })
    });
    c.bench_function("lookup wildcard host", |b| {
        b.iter(|| {
            black_box(table.route(
                black_box("a.b.wild.example.com"),
                black_box("/"),
                &get,
                &headers,
            ))
        })
    });
    c.bench_function("lookup miss", |b| {
        b.iter(|| {
            black_box(table.route(
                black_box("nowhere.example.org"),
                black_box("/"),
                &get,
                &headers,
            ))
        })
    });
    let pool = &table.pools["svc-4242"];
    let tried = router::pool::Tried::default();
    c.bench_function("pick endpoint (least request, 10 endpoints)", |b| {
        b.iter(|| black_box(pool.pick(0, &tried, None)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
