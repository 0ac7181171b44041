//! Routing-table micro-benchmarks: compiling a large snapshot (10k routes over 10k hosts,
//! 100k endpoints), and looking routes up in it. `cargo bench -p router --bench table`.

use std::collections::BTreeMap;
use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use discovery::Route;
use discovery::model::{Instance, InstanceSpec, PathMatch};
use discovery::snapshot::{Service, Snapshot};
use http::{HeaderMap, Method};
use router::RouterConfig;
use router::pool::PoolStates;
use router::table::compile;

const SERVICES: usize = 10_000;
const INSTANCES_PER_SERVICE: usize = 10;

fn snapshot() -> Snapshot {
    let mut services = BTreeMap::new();
    let mut routes = BTreeMap::new();
    for s in 0..SERVICES {
        let name = format!("svc-{s}");
        let mut service = Service::default();
        for i in 0..INSTANCES_PER_SERVICE {
            let address = [10, (s >> 8) as u8, s as u8, i as u8].into();
            let instance =
                Instance::new(&name, &format!("i-{i}"), InstanceSpec::new(address, 8080))
                    .expect("valid");
            service
                .instances
                .insert(Arc::from(format!("i-{i}").as_str()), instance);
        }
        services.insert(Arc::from(name.as_str()), Arc::new(service));
        let mut route = Route::http(&format!("host-{s}.example.com"), &name);
        if s % 2 == 0 {
            route.path = Some(PathMatch::Prefix("/api".into()));
        }
        route.validate().expect("valid route");
        routes.insert(Arc::from(format!("route-{s}").as_str()), Arc::new(route));
    }
    let mut wildcard = Route::http("*.wild.example.com", "svc-0");
    wildcard.validate().expect("valid");
    routes.insert(Arc::from("wildcard"), Arc::new(wildcard));
    Snapshot {
        revision: 1,
        services: Arc::new(services),
        routes: Arc::new(routes),
        changed_at: None,
    }
}

fn bench(c: &mut Criterion) {
    let snap = snapshot();
    let config = RouterConfig::default();
    c.bench_function("compile cold: 10k routes / 100k endpoints", |b| {
        b.iter(|| black_box(compile(&snap, &config, &mut PoolStates::default())));
    });
    c.bench_function("compile after a change: 10k routes / 100k endpoints", |b| {
        // The common case: the previous table's pools are reused for unchanged services.
        let mut states = PoolStates::default();
        compile(&snap, &config, &mut states);
        b.iter(|| black_box(compile(&snap, &config, &mut states)));
    });
    let table = compile(&snap, &config, &mut PoolStates::default());
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
