//! Snapshots: the whole discovery state at one revision, immutable and cheap to share.
//!
//! Stores keep their state as a [`State`] and publish it as `Arc<Snapshot>` through a
//! `tokio::sync::watch` channel, which coalesces: a consumer that falls behind sees only
//! the newest snapshot, never a queue of stale ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::model::{Health, Instance, Route};

/// The instances of one service, by instance id.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Service {
    pub instances: BTreeMap<Arc<str>, Instance>,
}

impl Service {
    pub fn count(&self, health: Health) -> usize {
        self.instances
            .values()
            .filter(|i| i.spec.health == health)
            .count()
    }
}

pub type ServiceMap = BTreeMap<Arc<str>, Arc<Service>>;
pub type RouteMap = BTreeMap<Arc<str>, Arc<Route>>;

/// The whole state at one monotonically increasing revision.
///
/// Maps are behind `Arc`s so that publishing a new snapshot after a change to one
/// service copies pointers, not instances.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub revision: u64,
    pub services: Arc<ServiceMap>,
    pub routes: Arc<RouteMap>,
    /// Wall-clock time of the newest write this snapshot includes, when known, so
    /// consumers can measure write-to-live propagation.
    #[serde(skip)]
    pub changed_at: Option<std::time::SystemTime>,
}

impl Snapshot {
    pub fn instance(&self, service: &str, id: &str) -> Option<&Instance> {
        self.services.get(service)?.instances.get(id)
    }

    pub fn instance_count(&self) -> usize {
        self.services.values().map(|s| s.instances.len()).sum()
    }

    /// Instance counts by health, in `Health::ALL` order.
    pub fn health_counts(&self) -> [usize; 4] {
        let mut counts = [0; 4];
        for instance in self.services.values().flat_map(|s| s.instances.values()) {
            counts[instance.spec.health as usize] += 1;
        }
        counts
    }
}

/// A store's mutable view, turned into a [`Snapshot`] on every publish.
#[derive(Debug, Clone, Default)]
pub(crate) struct State {
    pub revision: u64,
    pub services: Arc<ServiceMap>,
    pub routes: Arc<RouteMap>,
    pub changed_at: Option<std::time::SystemTime>,
}

impl State {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            revision: self.revision,
            services: Arc::clone(&self.services),
            routes: Arc::clone(&self.routes),
            changed_at: self.changed_at,
        }
    }

    /// Inserts or replaces an instance. Returns whether anything changed.
    pub fn upsert_instance(&mut self, instance: Instance) -> bool {
        let unchanged = self
            .services
            .get(instance.service.as_str())
            .and_then(|service| service.instances.get(instance.id.as_str()))
            == Some(&instance);
        if unchanged {
            // Checked before `make_mut`, which would copy maps a published snapshot shares.
            return false;
        }
        let services = Arc::make_mut(&mut self.services);
        let service = services
            .entry(Arc::from(instance.service.as_str()))
            .or_default();
        Arc::make_mut(service)
            .instances
            .insert(Arc::from(instance.id.as_str()), instance);
        true
    }

    /// Removes an instance, and its service once empty. Returns the removed instance.
    pub fn remove_instance(&mut self, service: &str, id: &str) -> Option<Instance> {
        if !self.services.get(service)?.instances.contains_key(id) {
            return None;
        }
        let services = Arc::make_mut(&mut self.services);
        let entry = services.get_mut(service)?;
        let removed = Arc::make_mut(entry).instances.remove(id);
        if entry.instances.is_empty() {
            services.remove(service);
        }
        removed
    }

    pub fn remove_service(&mut self, service: &str) -> bool {
        if !self.services.contains_key(service) {
            return false;
        }
        Arc::make_mut(&mut self.services).remove(service).is_some()
    }

    pub fn upsert_route(&mut self, name: &str, route: Route) -> bool {
        upsert_route(&mut self.routes, name, route)
    }

    pub fn remove_route(&mut self, name: &str) -> bool {
        remove_route(&mut self.routes, name)
    }
}

/// Sets route `name`; false (and the map not copied) when it is already so.
pub fn upsert_route(routes: &mut Arc<RouteMap>, name: &str, route: Route) -> bool {
    if routes.get(name).map(|r| r.as_ref()) == Some(&route) {
        return false;
    }
    Arc::make_mut(routes).insert(Arc::from(name), Arc::new(route));
    true
}

/// Removes route `name`; false (and the map not copied) when there is none.
pub fn remove_route(routes: &mut Arc<RouteMap>, name: &str) -> bool {
    if !routes.contains_key(name) {
        return false;
    }
    Arc::make_mut(routes).remove(name).is_some()
}
