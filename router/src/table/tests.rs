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
