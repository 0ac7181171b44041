use std::collections::BTreeMap;
use std::time::Duration;

use discovery::model::InstanceSpec;

use super::*;

/// A snapshot of service `web` with instances `(id, health)` on ports 9000 + n.
fn snapshot(instances: &[(&str, Health)]) -> Snapshot {
    let mut service = Service::default();
    for (n, (id, health)) in instances.iter().enumerate() {
        let mut spec = InstanceSpec::new([127, 0, 0, 1].into(), 9000 + n as u16);
        spec.health = *health;
        let instance = Instance::new("web", id, spec).expect("valid");
        service.instances.insert(Arc::from(*id), instance);
    }
    let mut services = BTreeMap::new();
    if !instances.is_empty() {
        services.insert(Arc::from("web"), Arc::new(service));
    }
    Snapshot {
        services: Arc::new(services),
        ..Snapshot::default()
    }
}

const P: Health = Health::Passing;

/// The pool of `web`: each endpoint's id, `*` after a stale one.
fn pool_of(states: &mut PoolStates, snapshot: &Snapshot, config: &RouterConfig) -> Vec<String> {
    states.update(snapshot, config);
    states.pool("web").map_or_else(Vec::new, |pool| {
        pool.endpoints
            .iter()
            .map(|e| format!("{}{}", e.id, if e.stale { "*" } else { "" }))
            .collect()
    })
}

#[test]
fn instances_vanishing_en_masse_stay_stale_until_the_hold_ends() {
    let mut config = RouterConfig::default();
    config.mass_removal.hold = Duration::from_millis(200);
    let mut states = PoolStates::default();
    let all = snapshot(&[("a", P), ("b", P), ("c", P), ("d", P)]);
    assert_eq!(pool_of(&mut states, &all, &config), ["a", "b", "c", "d"]);
    // One of four leaving is an ordinary removal.
    let three = snapshot(&[("a", P), ("b", P), ("c", P)]);
    assert_eq!(pool_of(&mut states, &three, &config), ["a", "b", "c"]);
    assert!(states.take_mass_removals().is_empty());
    // Two of three leaving at once (67% > 50%): held, stale.
    let one = snapshot(&[("a", P)]);
    assert_eq!(pool_of(&mut states, &one, &config), ["a", "b*", "c*"]);
    assert_eq!(states.take_mass_removals(), [Arc::from("web")]);
    assert_eq!(states.stale_counts().next().map(|(_, n)| n), Some(2));
    // The last one leaving too (the service gone from the snapshot): still served.
    let none = snapshot(&[]);
    assert_eq!(pool_of(&mut states, &none, &config), ["a*", "b*", "c*"]);
    // One comes back: an ordinary instance again.
    let back = snapshot(&[("b", P)]);
    assert_eq!(pool_of(&mut states, &back, &config), ["a*", "b", "c*"]);
    let expiry = states.next_expiry().expect("an expiry");
    std::thread::sleep(expiry.saturating_duration_since(Instant::now()));
    assert_eq!(pool_of(&mut states, &back, &config), ["b"]);
    assert!(states.next_expiry().is_none());
    assert_eq!(states.stale_counts().count(), 0);
}

#[test]
fn failing_checks_and_drained_instances_are_never_held() {
    let config = RouterConfig::default();
    let mut states = PoolStates::default();
    let all = snapshot(&[("a", P), ("b", P), ("c", P), ("d", P)]);
    assert_eq!(pool_of(&mut states, &all, &config), ["a", "b", "c", "d"]);
    // Checks failing on three: they leave at once (still registered, critical).
    let critical = Health::Critical;
    let failing = snapshot(&[("a", P), ("b", critical), ("c", critical), ("d", critical)]);
    assert_eq!(pool_of(&mut states, &failing, &config), ["a"]);
    assert!(states.take_mass_removals().is_empty());

    // A deployment: the old version drained (maintenance), then deregistered.
    let mut states = PoolStates::default();
    let old_and_new = snapshot(&[("old1", P), ("old2", P), ("new1", P), ("new2", P)]);
    pool_of(&mut states, &old_and_new, &config);
    let m = Health::Maintenance;
    let drained = snapshot(&[("old1", m), ("old2", m), ("new1", P), ("new2", P)]);
    assert_eq!(pool_of(&mut states, &drained, &config), ["new1", "new2"]);
    let deregistered = snapshot(&[("new1", P), ("new2", P)]);
    assert_eq!(
        pool_of(&mut states, &deregistered, &config),
        ["new1", "new2"]
    );
    assert!(states.take_mass_removals().is_empty());
    assert!(states.next_expiry().is_none());
    // A whole service drained then deregistered: nothing held, the pool empties.
    let all_drained = snapshot(&[("new1", m), ("new2", m)]);
    assert!(pool_of(&mut states, &all_drained, &config).is_empty());
    assert!(pool_of(&mut states, &snapshot(&[]), &config).is_empty());
    assert!(states.take_mass_removals().is_empty());
}

#[test]
fn the_guard_can_be_turned_off() {
    let mut config = RouterConfig::default();
    config.mass_removal.fraction = 100;
    let mut states = PoolStates::default();
    pool_of(&mut states, &snapshot(&[("a", P), ("b", P)]), &config);
    assert!(pool_of(&mut states, &snapshot(&[]), &config).is_empty());
}
