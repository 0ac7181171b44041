use std::collections::BTreeMap;

use super::*;

fn pool(kind: BalancerKind, weights: &[(u32, Option<&str>)], zone: Option<&str>) -> Pool {
    let endpoints = weights
        .iter()
        .enumerate()
        .map(|(i, (weight, zone))| Endpoint {
            id: Arc::from(format!("e{i}").as_str()),
            addr: SocketAddr::from(([127, 0, 0, 1], 9000 + i as u16)),
            zone: zone.map(Arc::from),
            weight: *weight,
            state: Arc::default(),
            stale: false,
        })
        .collect();
    Pool::new(
        Arc::from("svc"),
        endpoints,
        kind,
        None,
        zone,
        1,
        Arc::default(),
    )
}

fn counts(pool: &Pool, n: usize, hash: Option<u64>) -> BTreeMap<usize, usize> {
    let mut counts = BTreeMap::new();
    for _ in 0..n {
        let i = pool.pick(0, &Tried::default(), hash).expect("pick");
        *counts.entry(i).or_insert(0) += 1;
    }
    counts
}

#[test]
fn smooth_round_robin_respects_weights_and_interleaves() {
    let p = pool(
        BalancerKind::RoundRobin,
        &[(5, None), (1, None), (1, None)],
        None,
    );
    assert_eq!(
        counts(&p, 700, None),
        BTreeMap::from([(0, 500), (1, 100), (2, 100)])
    );
    let schedule = &p.all.schedule;
    assert_eq!(schedule, &[0, 0, 1, 0, 2, 0, 0], "nginx's smooth order");
}

#[test]
fn least_request_prefers_idle_endpoints() {
    let p = pool(BalancerKind::LeastRequest, &[(1, None), (1, None)], None);
    p.endpoints[0]
        .state
        .outstanding
        .store(100, Ordering::Relaxed);
    let c = counts(&p, 1000, None);
    // Whenever both are drawn, the idle one wins; the busy one only when drawn twice.
    assert!(c.get(&1).copied().unwrap_or(0) > 700, "{c:?}");
}

#[test]
fn random_is_weighted() {
    let p = pool(BalancerKind::Random, &[(3, None), (1, None)], None);
    let c = counts(&p, 4000, None);
    let share = c[&0] as f64 / 4000.0;
    assert!((0.70..0.80).contains(&share), "{c:?}");
}

#[test]
fn consistent_hash_is_stable_and_spreads() {
    let p = pool(
        BalancerKind::ConsistentHash,
        &[(1, None), (1, None), (1, None)],
        None,
    );
    let mut seen = std::collections::BTreeSet::new();
    for key in 0..200u64 {
        let hash = fnv1a(&[&key.to_le_bytes()]);
        let first = p.pick(0, &Tried::default(), Some(hash));
        assert_eq!(p.pick(0, &Tried::default(), Some(hash)), first);
        seen.insert(first);
    }
    assert_eq!(seen.len(), 3, "keys spread over all endpoints");
}

#[test]
fn tried_and_ejected_endpoints_are_avoided_but_never_leave_nothing() {
    let p = pool(BalancerKind::RoundRobin, &[(1, None), (1, None)], None);
    let mut tried = Tried::default();
    tried.push(0);
    for _ in 0..10 {
        assert_eq!(p.pick(0, &tried, None), Some(1));
    }
    tried.push(1);
    assert!(
        p.pick(0, &tried, None).is_some(),
        "all tried: still pick something"
    );
    p.endpoints[1]
        .state
        .ejected_until
        .store(10_000, Ordering::Relaxed);
    for _ in 0..10 {
        assert_eq!(p.pick(5_000, &Tried::default(), None), Some(0));
    }
    p.endpoints[0]
        .state
        .ejected_until
        .store(10_000, Ordering::Relaxed);
    assert!(
        p.pick(5_000, &Tried::default(), None).is_some(),
        "panic mode: all ejected still serves"
    );
}

#[test]
fn ejection_backs_off_and_respects_the_cap() {
    let config = OutlierConfig {
        consecutive_failures: 3,
        base_ejection: Duration::from_secs(1),
        max_ejection_percent: 50,
    };
    let p = pool(
        BalancerKind::LeastRequest,
        &[(1, None), (1, None), (1, None), (1, None)],
        None,
    );
    assert!(!p.record_failure(0, &config, 1000));
    assert!(!p.record_failure(0, &config, 1000));
    assert!(
        p.record_failure(0, &config, 1000),
        "third consecutive failure ejects"
    );
    assert!(p.endpoints[0].state.is_ejected(1999));
    assert!(!p.endpoints[0].state.is_ejected(2000));
    for _ in 0..3 {
        p.record_failure(0, &config, 3000);
    }
    assert!(
        p.endpoints[0].state.is_ejected(4999),
        "second ejection lasts twice as long"
    );
    // A success resets the count.
    p.record_failure(1, &config, 3000);
    p.record_failure(1, &config, 3000);
    p.record_success(1);
    assert!(!p.record_failure(1, &config, 3000));
    // At most 50% of 4 endpoints: a second one may go, a third may not.
    for _ in 0..3 {
        p.record_failure(2, &config, 3000);
    }
    assert!(p.endpoints[2].state.is_ejected(3001));
    let mut third = false;
    for _ in 0..6 {
        third |= p.record_failure(3, &config, 3000);
    }
    assert!(!third, "never eject more than max_ejection_percent");
}

#[test]
fn local_zone_preferred_until_too_few() {
    let p = pool(
        BalancerKind::RoundRobin,
        &[(1, Some("eu")), (1, Some("us")), (1, Some("us"))],
        Some("eu"),
    );
    assert_eq!(counts(&p, 30, None), BTreeMap::from([(0, 30)]));
    p.endpoints[0]
        .state
        .ejected_until
        .store(u64::MAX, Ordering::Relaxed);
    let c = counts(&p, 30, None);
    assert!(
        !c.contains_key(&0) && c.len() == 2,
        "spill over to other zones: {c:?}"
    );
}
