use std::collections::BTreeMap;
use std::sync::Arc;

use discovery::model::{Instance, InstanceSpec};
use discovery::snapshot::{Service, Snapshot};
use expect_test::expect;
use http::{HeaderMap, Method};

use super::*;
use crate::wire::normalize_host;

fn snapshot(routes: &[(&str, &str)]) -> Snapshot {
    let mut services = BTreeMap::new();
    for name in ["web", "api", "wild", "any", "canary"] {
        let instance = Instance::new(name, "i1", InstanceSpec::new([127, 0, 0, 1].into(), 9000))
            .expect("valid");
        let mut service = Service::default();
        service.instances.insert(Arc::from("i1"), instance);
        services.insert(Arc::from(name), Arc::new(service));
    }
    let routes = routes
        .iter()
        .map(|(name, json)| {
            let mut route: discovery::Route = serde_json::from_str(json).expect("route json");
            route.validate().expect("valid route");
            (Arc::from(*name), Arc::new(route))
        })
        .collect();
    Snapshot {
        revision: 7,
        services: Arc::new(services),
        routes: Arc::new(routes),
        ..Snapshot::default()
    }
}

fn lookup(table: &Table, host: &str, path: &str, method: &str, headers: &[(&str, &str)]) -> String {
    let mut map = HeaderMap::new();
    for (k, v) in headers {
        map.insert(
            http::header::HeaderName::from_bytes(k.as_bytes()).expect("name"),
            http::header::HeaderValue::from_str(v).expect("value"),
        );
    }
    let method = Method::from_bytes(method.as_bytes()).expect("method");
    table
        .route(normalize_host(host), path, &method, &map)
        .map_or("-".to_string(), |r| r.name.to_string())
}

#[test]
fn lookup_order_and_specificity() {
    let snap = snapshot(&[
        ("root", r#"{"host":"a.com","service":"web"}"#),
        (
            "api",
            r#"{"host":"a.com","path":{"prefix":"/api"},"service":"api"}"#,
        ),
        (
            "api-v2",
            r#"{"host":"a.com","path":{"prefix":"/api/v2/"},"service":"api"}"#,
        ),
        (
            "exact",
            r#"{"host":"a.com","path":{"exact":"/api/health"},"service":"web"}"#,
        ),
        (
            "regex",
            r#"{"host":"a.com","path":{"regex":"^/api/[0-9]+$"},"service":"web"}"#,
        ),
        (
            "canary",
            r#"{"host":"a.com","path":{"prefix":"/api"},"headers":[{"name":"x-canary","present":true}],"service":"canary"}"#,
        ),
        (
            "post",
            r#"{"host":"a.com","path":{"prefix":"/api"},"methods":["POST"],"service":"api"}"#,
        ),
        ("wild", r#"{"host":"*.a.com","service":"wild"}"#),
        ("deep", r#"{"host":"*.b.a.com","service":"wild"}"#),
        ("any", r#"{"host":"*","service":"any"}"#),
    ]);
    let table = compile(&snap, &RouterConfig::default(), &mut TableState::default());
    let cases = [
        ("a.com", "/", "GET", vec![]),
        ("a.com:80", "/x", "GET", vec![]),
        ("a.com.", "/x", "GET", vec![]),
        ("a.com", "/api", "GET", vec![]),
        ("a.com", "/apis", "GET", vec![]),
        ("a.com", "/api/health", "GET", vec![]),
        ("a.com", "/api/42", "GET", vec![]),
        ("a.com", "/api/v2/x", "GET", vec![]),
        ("a.com", "/api/v2", "GET", vec![]),
        ("a.com", "/api/x", "POST", vec![]),
        ("a.com", "/api/x", "GET", vec![("x-canary", "yes")]),
        ("x.a.com", "/", "GET", vec![]),
        ("x.b.a.com", "/", "GET", vec![]),
        ("b.a.com", "/", "GET", vec![]),
        ("other.com", "/", "GET", vec![]),
    ];
    let report: String = cases
        .iter()
        .map(|(host, path, method, headers)| {
            format!(
                "{method} {host}{path} -> {}\n",
                lookup(&table, host, path, method, headers)
            )
        })
        .collect();
    expect![[r#"
        GET a.com/ -> root
        GET a.com:80/x -> root
        GET a.com./x -> root
        GET a.com/api -> api
        GET a.com/apis -> root
        GET a.com/api/health -> exact
        GET a.com/api/42 -> regex
        GET a.com/api/v2/x -> api-v2
        GET a.com/api/v2 -> api
        POST a.com/api/x -> post
        GET a.com/api/x -> canary
        GET x.a.com/ -> wild
        GET x.b.a.com/ -> deep
        GET b.a.com/ -> wild
        GET other.com/ -> any
    "#]]
    .assert_eq(&report);
    assert_eq!(table.revision, 7);
    assert_eq!(table.route_count, 10);
}

#[test]
fn pool_state_survives_recompilation() {
    let snap = snapshot(&[("root", r#"{"host":"a.com","service":"web"}"#)]);
    let mut states = TableState::default();
    let first = compile(&snap, &RouterConfig::default(), &mut states);
    first.pools["web"].endpoints[0]
        .state
        .outstanding
        .store(5, std::sync::atomic::Ordering::Relaxed);
    let second = compile(&snap, &RouterConfig::default(), &mut states);
    assert!(Arc::ptr_eq(
        &first.pools["web"].endpoints[0].state,
        &second.pools["web"].endpoints[0].state
    ));
    assert!(Arc::ptr_eq(
        &first.pools["web"].shared,
        &second.pools["web"].shared
    ));
}

#[test]
fn unhealthy_instances_are_not_in_pools() {
    let mut snap = snapshot(&[]);
    let services = Arc::make_mut(&mut snap.services);
    let web = Arc::make_mut(services.get_mut("web").expect("web"));
    let mut spec = InstanceSpec::new([127, 0, 0, 1].into(), 9001);
    spec.health = discovery::Health::Warning;
    web.instances.insert(
        Arc::from("i2"),
        Instance::new("web", "i2", spec).expect("valid"),
    );
    let table = compile(&snap, &RouterConfig::default(), &mut TableState::default());
    assert_eq!(table.pools["web"].endpoints.len(), 1);
    let config = RouterConfig {
        serve_warning: true,
        ..RouterConfig::default()
    };
    let table = compile(&snap, &config, &mut TableState::default());
    assert_eq!(table.pools["web"].endpoints.len(), 2);
}

#[test]
fn a_changed_service_inherits_endpoint_state() {
    let mut snap = snapshot(&[("root", r#"{"host":"a.com","service":"web"}"#)]);
    let mut states = TableState::default();
    let first = compile(&snap, &RouterConfig::default(), &mut states);
    let services = Arc::make_mut(&mut snap.services);
    let web = Arc::make_mut(services.get_mut("web").expect("web"));
    let spec = InstanceSpec::new([127, 0, 0, 1].into(), 9002);
    web.instances.insert(
        Arc::from("i2"),
        Instance::new("web", "i2", spec).expect("valid"),
    );
    let second = compile(&snap, &RouterConfig::default(), &mut states);
    assert!(
        !Arc::ptr_eq(&first.pools["web"], &second.pools["web"]),
        "a new pool for the changed service"
    );
    assert_eq!(second.pools["web"].endpoints.len(), 2);
    let kept = second.pools["web"]
        .endpoints
        .iter()
        .find(|e| &*e.id == "i1")
        .expect("i1");
    assert!(
        Arc::ptr_eq(&first.pools["web"].endpoints[0].state, &kept.state),
        "i1 keeps its state"
    );
    assert!(Arc::ptr_eq(
        &first.pools["web"].shared,
        &second.pools["web"].shared
    ));
    assert!(
        Arc::ptr_eq(&first.pools["api"], &second.pools["api"]),
        "unchanged services keep their pool"
    );
}

/// A split target with a tag selects the service's instances with that tag, and its
/// endpoints share state with the service's own pool.
#[test]
fn split_targets_select_subsets_by_tag() {
    let mut snap = snapshot(&[(
        "web",
        r#"{"host":"web.test","split":[{"service":"web","tag":"d1","weight":90},{"service":"web","tag":"d2","weight":10}]}"#,
    )]);
    let mut service = Service::default();
    for (id, port, tag) in [
        ("old-1", 9001, "d1"),
        ("old-2", 9002, "d1"),
        ("new-1", 9003, "d2"),
    ] {
        let mut spec = InstanceSpec::new([127, 0, 0, 1].into(), port);
        spec.tags = vec![tag.into()];
        service.instances.insert(
            Arc::from(id),
            Instance::new("web", id, spec).expect("valid"),
        );
    }
    Arc::make_mut(&mut snap.services).insert(Arc::from("web"), Arc::new(service));
    let table = compile(&snap, &RouterConfig::default(), &mut TableState::default());
    let route = table
        .route("web.test", "/", &Method::GET, &HeaderMap::new())
        .expect("routed");
    let ids = |i: usize| -> Vec<String> {
        let target = &route.targets.list[i];
        let pool = target.pool.as_ref().expect("a pool");
        pool.endpoints.iter().map(|e| e.id.to_string()).collect()
    };
    assert_eq!(route.targets.list[0].tag.as_deref(), Some("d1"));
    assert_eq!(ids(0), ["old-1", "old-2"]);
    assert_eq!(ids(1), ["new-1"]);
    let whole = &table.pools["web"];
    let new_in_subset = &route.targets.list[1].pool.as_ref().expect("pool").endpoints[0];
    let new_in_whole = whole
        .endpoints
        .iter()
        .find(|e| &*e.id == "new-1")
        .expect("in the whole pool");
    assert!(
        Arc::ptr_eq(&new_in_subset.state, &new_in_whole.state),
        "one endpoint state"
    );
}

/// A store in miniature: snapshots made the way the embedded store makes them, each
/// change copying only the service or route it touches (the rest shared by `Arc`).
struct Store {
    snapshot: Snapshot,
}

impl Store {
    fn new() -> Store {
        Store {
            snapshot: Snapshot::default(),
        }
    }

    fn publish(&mut self) -> Snapshot {
        self.snapshot.revision += 1;
        self.snapshot.clone()
    }

    fn instance(
        &mut self,
        service: &str,
        id: &str,
        port: u16,
        health: discovery::Health,
        tags: &[&str],
    ) {
        let mut spec = InstanceSpec::new([127, 0, 0, 1].into(), port);
        spec.health = health;
        spec.tags = tags.iter().map(|t| t.to_string()).collect();
        let instance = Instance::new(service, id, spec).expect("valid");
        discovery::snapshot::upsert_instance(&mut self.snapshot.services, instance);
    }

    fn remove_instance(&mut self, service: &str, id: &str) {
        let services = Arc::make_mut(&mut self.snapshot.services);
        let entry = services.get_mut(service).expect("service");
        Arc::make_mut(entry).instances.remove(id);
        if entry.instances.is_empty() {
            services.remove(service);
        }
    }

    fn route(&mut self, name: &str, json: &str) {
        let mut route: discovery::Route = serde_json::from_str(json).expect("route json");
        route.validate().expect("valid route");
        discovery::snapshot::upsert_route(&mut self.snapshot.routes, name, route);
    }

    fn remove_route(&mut self, name: &str) {
        discovery::snapshot::remove_route(&mut self.snapshot.routes, name);
    }
}

/// Everything a table decides, in a stable order: each host entry's routes in match
/// order (path matcher, conditions, each target's pool), the pools, the subsets, the TCP
/// routes.
fn describe(table: &Table) -> String {
    fn pool(pool: Option<&Arc<Pool>>) -> String {
        pool.map_or("no pool".into(), |p| {
            let endpoints: Vec<String> = p
                .endpoints
                .iter()
                .map(|e| {
                    format!(
                        "{}@{}{}",
                        e.id,
                        e.addr.port(),
                        if e.stale { "*" } else { "" }
                    )
                })
                .collect();
            format!("[{}]", endpoints.join(" "))
        })
    }
    fn targets(targets: &Targets) -> String {
        let list: Vec<String> = targets
            .shares()
            .map(|(t, share)| {
                let tag = t
                    .tag
                    .as_deref()
                    .map(|t| format!("/{t}"))
                    .unwrap_or_default();
                format!("{}{tag} {share:.0}% {}", t.service, pool(t.pool.as_ref()))
            })
            .collect();
        list.join(", ")
    }
    let entry = |entry: &HostEntry| -> String {
        entry
            .routes
            .iter()
            .map(|r| {
                format!(
                    "\n    {} {:?} methods {:?} headers {} -> {}",
                    r.name,
                    r.path,
                    r.methods,
                    r.headers.len(),
                    targets(&r.targets)
                )
            })
            .collect()
    };
    let mut hosts: Vec<String> = table
        .exact
        .iter()
        .map(|(host, e)| format!("  {host}:{}", entry(e)))
        .chain(
            table
                .wildcard
                .iter()
                .map(|(suffix, e)| format!("  *{suffix}:{}", entry(e))),
        )
        .chain(table.any.iter().map(|e| format!("  any:{}", entry(e))))
        .collect();
    hosts.sort();
    let mut pools: Vec<String> = table
        .pools
        .iter()
        .map(|(name, p)| format!("  {name} {}", pool(Some(p))))
        .collect();
    pools.sort();
    let mut subsets: Vec<String> = table
        .subsets
        .iter()
        .map(|((name, tag), p)| format!("  {name}/{tag} {}", pool(Some(p))))
        .collect();
    subsets.sort();
    let mut tcp = String::new();
    for (addr, routes) in table.tcp.iter() {
        let mut names: Vec<String> = routes
            .by_sni
            .keys()
            .map(|sni| format!("sni {sni}"))
            .chain(routes.by_sni_suffix.keys().map(|s| format!("sni *{s}")))
            .collect();
        names.sort();
        for name in names {
            let target = match name.strip_prefix("sni *") {
                Some(suffix) => &routes.by_sni_suffix[suffix],
                None => &routes.by_sni[&name["sni ".len()..]],
            };
            tcp += &format!(
                "  {addr} {name}: {} -> {}\n",
                target.route,
                targets(&target.targets)
            );
        }
        if let Some(default) = &routes.default {
            tcp += &format!(
                "  {addr} default: {} -> {}\n",
                default.route,
                targets(&default.targets)
            );
        }
    }
    format!(
        "revision {} routes {}\nhosts\n{}\npools\n{}\nsubsets\n{}\ntcp\n{tcp}",
        table.revision,
        table.route_count,
        hosts.join("\n"),
        pools.join("\n"),
        subsets.join("\n"),
    )
}

/// A first table for `store`'s snapshot and one built from the last table's state agree.
fn step(store: &mut Store, state: &mut TableState, config: &RouterConfig) -> (Table, Table) {
    let snapshot = store.publish();
    let incremental = compile(&snapshot, config, state);
    let cold = compile(&snapshot, config, &mut TableState::default());
    assert_eq!(describe(&incremental), describe(&cold));
    (incremental, cold)
}

use discovery::Health::{Critical, Passing};

#[test]
fn an_incremental_compile_agrees_with_a_cold_one_through_every_kind_of_change() {
    // The mass-removal guard remembers what vanished, which a cold compile cannot:
    // off here (`pool::build`'s tests cover it across compiles).
    let mut config = RouterConfig::default();
    config.mass_removal.fraction = 100;
    let mut store = Store::new();
    let mut state = TableState::default();
    for (service, port) in [
        ("web", 9001),
        ("api", 9002),
        ("wild", 9003),
        ("any", 9004),
        ("db", 9005),
    ] {
        store.instance(service, "i1", port, Passing, &[]);
    }
    store.instance("app", "old-1", 9101, Passing, &["d1"]);
    store.instance("app", "old-2", 9102, Passing, &["d1"]);
    store.instance("app", "new-1", 9103, Passing, &["d2"]);
    store.route("root", r#"{"host":"a.com","service":"web"}"#);
    store.route(
        "api",
        r#"{"host":"a.com","path":{"prefix":"/api"},"service":"api"}"#,
    );
    store.route(
        "regex",
        r#"{"host":"a.com","path":{"regex":"^/api/[0-9]+$"},"service":"web"}"#,
    );
    store.route(
        "canary",
        r#"{"host":"a.com","path":{"prefix":"/api"},"headers":[{"name":"x-canary","present":true}],"service":"api"}"#,
    );
    store.route("wild", r#"{"host":"*.a.com","service":"wild"}"#);
    store.route("any", r#"{"host":"*","service":"any"}"#);
    store.route(
        "app",
        r#"{"host":"app.com","split":[{"service":"app","tag":"d1","weight":90},{"service":"app","tag":"d2","weight":10}]}"#,
    );
    store.route("missing", r#"{"host":"b.com","service":"later"}"#);
    store.route(
        "pg",
        r#"{"kind":"tcp","listen":"127.0.0.1:5432","service":"db"}"#,
    );
    store.route(
        "pg-sni",
        r#"{"kind":"tcp","listen":"127.0.0.1:5432","sni":"pg.a.com","service":"db"}"#,
    );
    let (first, _) = step(&mut store, &mut state, &config);
    expect![[r#"
        revision 1 routes 8
        hosts
          *.a.com:
            wild Prefix("/") methods [] headers 0 -> wild 100% [i1@9003]
          a.com:
            regex Regex(Regex("^/api/[0-9]+$")) methods [] headers 0 -> web 100% [i1@9001]
            canary Prefix("/api") methods [] headers 1 -> api 100% [i1@9002]
            api Prefix("/api") methods [] headers 0 -> api 100% [i1@9002]
            root Prefix("/") methods [] headers 0 -> web 100% [i1@9001]
          any:
            any Prefix("/") methods [] headers 0 -> any 100% [i1@9004]
          app.com:
            app Prefix("/") methods [] headers 0 -> app/d1 90% [old-1@9101 old-2@9102], app/d2 10% [new-1@9103]
          b.com:
            missing Prefix("/") methods [] headers 0 -> later 100% no pool
        pools
          any [i1@9004]
          api [i1@9002]
          app [new-1@9103 old-1@9101 old-2@9102]
          db [i1@9005]
          web [i1@9001]
          wild [i1@9003]
        subsets
          app/d1 [old-1@9101 old-2@9102]
          app/d2 [new-1@9103]
        tcp
          127.0.0.1:5432 sni pg.a.com: pg-sni -> db 100% [i1@9005]
          127.0.0.1:5432 default: pg -> db 100% [i1@9005]
    "#]]
    .assert_eq(&describe(&first));

    // Instances: added, health changed, removed; a subset's membership changed.
    store.instance("api", "i2", 9012, Passing, &[]);
    step(&mut store, &mut state, &config);
    store.instance("api", "i1", 9002, Critical, &[]);
    step(&mut store, &mut state, &config);
    store.remove_instance("web", "i1");
    step(&mut store, &mut state, &config);
    store.instance("web", "i1", 9001, Passing, &[]);
    store.instance("app", "new-2", 9104, Passing, &["d2"]);
    store.instance("app", "old-1", 9101, Passing, &["d2"]);
    step(&mut store, &mut state, &config);
    // The service a route waited for appears; a TCP route's service changes.
    store.instance("later", "i1", 9006, Passing, &[]);
    store.instance("db", "i2", 9015, Passing, &[]);
    step(&mut store, &mut state, &config);

    // Routes: added, changed in place, moved between hosts and kinds of host, removed.
    store.route(
        "v2",
        r#"{"host":"a.com","path":{"prefix":"/api/v2"},"service":"web"}"#,
    );
    step(&mut store, &mut state, &config);
    store.route(
        "api",
        r#"{"host":"a.com","path":{"exact":"/api"},"methods":["GET"],"service":"api"}"#,
    );
    step(&mut store, &mut state, &config);
    store.route("root", r#"{"host":"*.b.com","service":"web"}"#);
    step(&mut store, &mut state, &config);
    store.route("wild", r#"{"host":"c.com","service":"wild"}"#);
    store.remove_route("any");
    step(&mut store, &mut state, &config);
    store.route(
        "app",
        r#"{"host":"app.com","split":[{"service":"app","tag":"d2","weight":100}]}"#,
    );
    step(&mut store, &mut state, &config);
    store.route(
        "pg-sni",
        r#"{"kind":"tcp","listen":"127.0.0.1:5432","sni":"*.a.com","service":"db"}"#,
    );
    store.route(
        "regex",
        r#"{"kind":"tcp","listen":"127.0.0.1:6379","service":"web"}"#,
    );
    step(&mut store, &mut state, &config);
    store.remove_route("pg");
    store.route(
        "any",
        r#"{"host":"*","path":{"prefix":"/z"},"service":"any"}"#,
    );
    step(&mut store, &mut state, &config);
    // A whole service leaves, then comes back.
    store.remove_instance("db", "i1");
    store.remove_instance("db", "i2");
    step(&mut store, &mut state, &config);
    store.instance("db", "i3", 9025, Passing, &[]);
    let (last, _) = step(&mut store, &mut state, &config);
    // An unchanged snapshot, compiled again (a held instance's time is up, say).
    let again = compile(&store.snapshot, &config, &mut state);
    assert_eq!(describe(&again), describe(&last));
}

#[test]
fn an_incremental_compile_shares_what_did_not_change() {
    let config = RouterConfig::default();
    let mut store = Store::new();
    let mut state = TableState::default();
    for s in 0..300 {
        store.instance(&format!("svc-{s}"), "i1", 9000, Passing, &[]);
        store.route(
            &format!("r-{s}"),
            &format!(
                r#"{{"host":"h{s}.com","path":{{"regex":"^/x/[0-9]+$"}},"service":"svc-{s}"}}"#
            ),
        );
    }
    store.route("shared", r#"{"host":"h7.com","service":"svc-8"}"#);
    store.route(
        "tcp",
        r#"{"kind":"tcp","listen":"127.0.0.1:7000","service":"svc-9"}"#,
    );
    let before = compile(&store.publish(), &config, &mut state);
    let route = |table: &Table, host: &str, path: &str| {
        Arc::clone(
            table
                .route(host, path, &Method::GET, &HeaderMap::new())
                .expect("routed"),
        )
    };
    let regex_route = route(&before, "h7.com", "/x/1");
    // The labelled series a route resolved once are carried into the next table.
    let metric = prometheus::Histogram::with_opts(prometheus::HistogramOpts::new("t", "t"))
        .expect("histogram");
    regex_route.request_duration.set(metric).expect("unset");

    store.instance("svc-7", "i2", 9001, Passing, &[]);
    let after = compile(&store.publish(), &config, &mut state);

    assert!(!Arc::ptr_eq(&before.pools["svc-7"], &after.pools["svc-7"]));
    let shared_pools = (0..300).filter(|s| *s != 7).all(|s| {
        let name = format!("svc-{s}");
        Arc::ptr_eq(&before.pools[name.as_str()], &after.pools[name.as_str()])
    });
    assert!(shared_pools, "every other pool is the last table's");
    for s in (0..300).filter(|s| *s != 7) {
        let host = format!("h{s}.com");
        let (old, new) = (
            &before.exact.get(host.as_str()),
            &after.exact.get(host.as_str()),
        );
        let (Some(old), Some(new)) = (old, new) else {
            panic!("{host} has no entry");
        };
        assert!(
            Arc::ptr_eq(&old.routes, &new.routes),
            "{host}: the same entry"
        );
    }
    // The changed service's route is copied with its new pool, not compiled again.
    let moved = route(&after, "h7.com", "/x/1");
    assert!(!Arc::ptr_eq(&regex_route, &moved));
    assert_eq!(
        moved.targets.list[0]
            .pool
            .as_ref()
            .map(|p| p.endpoints.len()),
        Some(2)
    );
    assert!(
        moved.request_duration.get().is_some(),
        "its series carried over"
    );
    // The route on the same host to another service is shared as it is.
    let shared = |t: &Table| route(t, "h7.com", "/");
    assert!(Arc::ptr_eq(&shared(&before), &shared(&after)));
    assert!(Arc::ptr_eq(&before.tcp, &after.tcp), "TCP routes untouched");

    // A snapshot that changed nothing: everything shared.
    let again = compile(&store.publish(), &config, &mut state);
    assert!(Arc::ptr_eq(&after.tcp, &again.tcp));
    assert!(Arc::ptr_eq(
        &after.exact.get("h7.com").expect("entry").routes,
        &again.exact.get("h7.com").expect("entry").routes
    ));
    // A TCP route's service changes: the TCP routes are rebuilt.
    store.instance("svc-9", "i2", 9001, Passing, &[]);
    let tcp_changed = compile(&store.publish(), &config, &mut state);
    assert!(!Arc::ptr_eq(&again.tcp, &tcp_changed.tcp));
}

/// The mass-removal guard across compiles: the vanished instances stay in the route's
/// pool, stale, and leave it when the same snapshot is compiled again after the hold.
#[test]
fn held_instances_reach_the_routes_and_leave_them_when_the_hold_ends() {
    let mut config = RouterConfig::default();
    config.mass_removal.hold = std::time::Duration::from_millis(100);
    let mut store = Store::new();
    let mut state = TableState::default();
    for (id, port) in [("a", 9001), ("b", 9002), ("c", 9003)] {
        store.instance("web", id, port, Passing, &[]);
    }
    store.route("web", r#"{"host":"web.com","service":"web"}"#);
    compile(&store.publish(), &config, &mut state);
    store.remove_instance("web", "b");
    store.remove_instance("web", "c");
    let snapshot = store.publish();
    let endpoints = |table: &Table| -> Vec<String> {
        let route = table.route("web.com", "/", &Method::GET, &HeaderMap::new());
        let pool = route
            .and_then(|r| r.targets.list[0].pool.clone())
            .expect("a pool");
        pool.endpoints
            .iter()
            .map(|e| format!("{}{}", e.id, if e.stale { "*" } else { "" }))
            .collect()
    };
    let held = compile(&snapshot, &config, &mut state);
    assert_eq!(endpoints(&held), ["a", "b*", "c*"]);
    let expiry = state.pools().next_expiry().expect("an expiry");
    std::thread::sleep(expiry.saturating_duration_since(std::time::Instant::now()));
    let released = compile(&snapshot, &config, &mut state);
    assert_eq!(endpoints(&released), ["a"]);
    assert_eq!(
        describe(&released),
        describe(&compile(&snapshot, &config, &mut TableState::default()))
    );
}
