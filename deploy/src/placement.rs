//! Where a deployment's instances run: the zones (decided once, when it is created) and,
//! within a zone, which live agent runs each slot.
//!
//! No agent coordinates the others: each computes, from the same snapshot, the owner of
//! every slot by rendezvous (highest random weight) hashing over the live agents of the
//! slot's zone, and runs the slots it owns. When an agent goes (its ZooKeeper session
//! expires), only its slots move, each to the agent that scores next highest for it; when
//! it comes back they move back. The hash is FNV-1a with a 64-bit finaliser, written here
//! so every strait version and host computes the same owners.

use std::collections::BTreeMap;
use std::net::IpAddr;

use discovery::Snapshot;
use discovery::apps::{AGENT_RUNTIME_KEY, AGENT_SERVICE, AppSpec, DEFAULT_ZONE, Deployment};
use discovery::model::Health;

/// A live agent that runs containers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LiveAgent {
    pub id: String,
    pub zone: String,
    pub address: IpAddr,
}

/// The agents that run containers, from their registrations (passing instances of
/// [`AGENT_SERVICE`] with a `runtime`), sorted by id.
pub fn live_agents(snapshot: &Snapshot) -> Vec<LiveAgent> {
    let Some(service) = snapshot.services.get(AGENT_SERVICE) else {
        return Vec::new();
    };
    service
        .instances
        .values()
        .filter(|i| {
            i.spec.health == Health::Passing && i.spec.metadata.contains_key(AGENT_RUNTIME_KEY)
        })
        .map(|i| LiveAgent {
            id: i.id.clone(),
            zone: i
                .spec
                .zone
                .clone()
                .unwrap_or_else(|| DEFAULT_ZONE.to_string()),
            address: i.spec.address,
        })
        .collect()
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    #[error(
        "no agent runs containers: start `strait up --runtime podman` or `strait agent --runtime podman` on the hosts"
    )]
    NoAgents,
    #[error("zone `{zone}` has no live agent that runs containers (zones with one: {live})")]
    EmptyZone { zone: String, live: String },
}

/// Instances per zone: `instances` in each named zone, or `instances` in all spread evenly
/// over the zones that have live agents (the first zones, in name order, take the rest).
pub fn plan(spec: &AppSpec, agents: &[LiveAgent]) -> Result<BTreeMap<String, u32>, PlacementError> {
    let mut zones: Vec<&str> = agents.iter().map(|a| a.zone.as_str()).collect();
    zones.sort_unstable();
    zones.dedup();
    if zones.is_empty() {
        return Err(PlacementError::NoAgents);
    }
    if !spec.zones.is_empty() {
        let mut placement = BTreeMap::new();
        for zone in &spec.zones {
            if !zones.contains(&zone.as_str()) {
                return Err(PlacementError::EmptyZone {
                    zone: zone.clone(),
                    live: zones.join(", "),
                });
            }
            placement.insert(zone.clone(), spec.instances);
        }
        return Ok(placement);
    }
    let count = zones.len() as u32;
    let (each, rest) = (spec.instances / count, spec.instances % count);
    Ok(zones
        .iter()
        .enumerate()
        .map(|(i, zone)| (zone.to_string(), each + u32::from((i as u32) < rest)))
        .filter(|(_, n)| *n > 0)
        .collect())
}

/// FNV-1a 64 then the murmur3 finaliser: fixed, so every host agrees.
fn score(parts: &[&[u8]]) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for part in parts {
        for &byte in *part {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
        }
        // A separator, so ("ab","c") and ("a","bc") differ.
        hash ^= 0xff;
        hash = hash.wrapping_mul(0x0000_0100_0000_01b3);
    }
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xff51_afd7_ed55_8ccd);
    hash ^= hash >> 33;
    hash = hash.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    hash ^ (hash >> 33)
}

/// The agent (of `agents`, any zone) that runs slot `slot` of `deployment` in `zone`.
pub fn owner<'a>(
    deployment: &Deployment,
    zone: &str,
    slot: u32,
    agents: &'a [LiveAgent],
) -> Option<&'a LiveAgent> {
    let id = deployment.id.to_string();
    let slot = slot.to_string();
    agents.iter().filter(|a| a.zone == zone).max_by_key(|a| {
        score(&[
            deployment.app.as_bytes(),
            id.as_bytes(),
            slot.as_bytes(),
            a.id.as_bytes(),
        ])
    })
}

/// The slots of `deployment` that agent `me` runs.
pub fn share(deployment: &Deployment, me: &str, agents: &[LiveAgent]) -> Vec<u32> {
    deployment
        .slots()
        .filter(|(zone, slot)| owner(deployment, zone, *slot, agents).is_some_and(|a| a.id == me))
        .map(|(_, slot)| slot)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn agent(id: &str, zone: &str) -> LiveAgent {
        LiveAgent {
            id: id.into(),
            zone: zone.into(),
            address: IpAddr::from([127, 0, 0, 1]),
        }
    }

    fn deployment(placement: &[(&str, u32)]) -> Deployment {
        let spec: AppSpec = serde_json::from_value(serde_json::json!({
            "image": "127.0.0.1:5000/shop/web:v1",
            "instances": 1,
        }))
        .expect("spec");
        Deployment {
            app: "web".into(),
            id: 7,
            spec,
            image: "127.0.0.1:5000/shop/web@sha256:00".into(),
            digest: "sha256:00".into(),
            placement: placement.iter().map(|(z, n)| (z.to_string(), *n)).collect(),
            state: discovery::apps::DeployState::Running,
            goal: discovery::apps::ContainerGoal::Run,
            weight: 0,
            steps: Vec::new(),
            reason: None,
            previous: None,
            cancel: false,
            drain: None,
            route_before: None,
            controller: "test".into(),
            created: std::time::SystemTime::UNIX_EPOCH,
            updated: std::time::SystemTime::UNIX_EPOCH,
            finished: None,
        }
    }

    #[test]
    fn instances_spread_evenly_over_zones() {
        let agents = [
            agent("a1", "eu-1"),
            agent("a2", "eu-2"),
            agent("a3", "eu-2"),
        ];
        let mut spec = deployment(&[]).spec;
        spec.instances = 5;
        let plan = plan(&spec, &agents).expect("plan");
        assert_eq!(
            plan,
            BTreeMap::from([("eu-1".into(), 3), ("eu-2".into(), 2)])
        );
        spec.instances = 1;
        let plan = super::plan(&spec, &agents).expect("plan");
        assert_eq!(plan, BTreeMap::from([("eu-1".into(), 1)]), "no empty zone");
        spec.zones = vec!["eu-2".into()];
        spec.instances = 2;
        let plan = super::plan(&spec, &agents).expect("plan");
        assert_eq!(plan, BTreeMap::from([("eu-2".into(), 2)]));
        spec.zones = vec!["us-1".into()];
        assert_eq!(
            super::plan(&spec, &agents)
                .err()
                .map(|e| e.to_string())
                .as_deref(),
            Some("zone `us-1` has no live agent that runs containers (zones with one: eu-1, eu-2)")
        );
        assert_eq!(super::plan(&spec, &[]), Err(PlacementError::NoAgents));
    }

    #[test]
    fn each_slot_has_one_owner_in_its_zone_and_only_a_lost_agents_slots_move() {
        let d = deployment(&[("eu-1", 40), ("eu-2", 8)]);
        let agents = [
            agent("a1", "eu-1"),
            agent("a2", "eu-1"),
            agent("a3", "eu-1"),
            agent("b1", "eu-2"),
        ];
        let shares: Vec<Vec<u32>> = agents.iter().map(|a| share(&d, &a.id, &agents)).collect();
        let total: usize = shares.iter().map(Vec::len).sum();
        assert_eq!(total, 48, "every slot is run exactly once");
        assert_eq!(
            shares[3],
            (40..48).collect::<Vec<_>>(),
            "eu-2's slots stay in eu-2"
        );
        for s in &shares[..3] {
            assert!(s.len() >= 6, "roughly even: {shares:?}");
        }
        // a2 goes: its slots move to a1 and a3; theirs stay where they were.
        let fewer = [agents[0].clone(), agents[2].clone(), agents[3].clone()];
        let a1 = share(&d, "a1", &fewer);
        let a3 = share(&d, "a3", &fewer);
        assert!(shares[0].iter().all(|s| a1.contains(s)));
        assert!(shares[2].iter().all(|s| a3.contains(s)));
        assert_eq!(a1.len() + a3.len(), 40);
    }

    #[test]
    fn the_hash_is_fixed() {
        // Agents of different versions must agree: this value must never change.
        assert_eq!(score(&[b"web", b"7", b"0", b"a1"]), 0x279b_0747_2e31_1741);
    }
}
