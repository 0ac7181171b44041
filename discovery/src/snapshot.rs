//! Snapshots: the whole discovery state at one revision, immutable and cheap to share.
//!
//! Stores keep their state as a [`State`] and publish it as `Arc<Snapshot>` through a
//! `tokio::sync::watch` channel, which coalesces: a consumer that falls behind sees only
//! the newest snapshot, never a queue of stale ones.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Serialize;

use crate::apps::{App, Deployment};
use crate::model::{Health, Instance, Route};
use crate::tokens::TokenRecord;

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
pub type AppMap = BTreeMap<Arc<str>, Arc<App>>;
/// One app's deployments by id.
pub type AppDeployments = BTreeMap<u64, Arc<Deployment>>;
pub type DeploymentMap = BTreeMap<Arc<str>, Arc<AppDeployments>>;
pub type TokenMap = BTreeMap<Arc<str>, Arc<TokenRecord>>;

/// The whole state at one monotonically increasing revision.
///
/// Maps are behind `Arc`s so that publishing a new snapshot after a change to one
/// service copies pointers, not instances.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Snapshot {
    pub revision: u64,
    pub services: Arc<ServiceMap>,
    pub routes: Arc<RouteMap>,
    /// Deployable apps (the catalogue) and their deployments (the inventory).
    pub apps: Arc<AppMap>,
    pub deployments: Arc<DeploymentMap>,
    /// Admin API tokens (hashes only; never serialised with the snapshot).
    #[serde(skip)]
    pub tokens: Arc<TokenMap>,
    /// Deployment records the store holds but this strait cannot read (written by a newer
    /// one, or invalid): their containers are left alone, never taken for strays.
    #[serde(skip)]
    pub unreadable_deployments: Arc<std::collections::BTreeSet<(Arc<str>, u64)>>,
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

    /// One app's deployments, oldest first.
    pub fn deployments_of(&self, app: &str) -> impl DoubleEndedIterator<Item = &Arc<Deployment>> {
        self.deployments
            .get(app)
            .into_iter()
            .flat_map(|deployments| deployments.values())
    }

    pub fn deployment(&self, app: &str, id: u64) -> Option<&Arc<Deployment>> {
        self.deployments.get(app)?.get(&id)
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
    pub apps: Arc<AppMap>,
    pub deployments: Arc<DeploymentMap>,
    pub tokens: Arc<TokenMap>,
    pub unreadable_deployments: Arc<std::collections::BTreeSet<(Arc<str>, u64)>>,
    pub changed_at: Option<std::time::SystemTime>,
}

impl State {
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            revision: self.revision,
            services: Arc::clone(&self.services),
            routes: Arc::clone(&self.routes),
            apps: Arc::clone(&self.apps),
            deployments: Arc::clone(&self.deployments),
            tokens: Arc::clone(&self.tokens),
            unreadable_deployments: Arc::clone(&self.unreadable_deployments),
            changed_at: self.changed_at,
        }
    }

    /// Marks a deployment record readable or not; whether that changed anything.
    pub fn set_unreadable(&mut self, app: &str, id: u64, unreadable: bool) -> bool {
        let key = (Arc::from(app), id);
        if self.unreadable_deployments.contains(&key) == unreadable {
            return false;
        }
        let set = Arc::make_mut(&mut self.unreadable_deployments);
        if unreadable {
            set.insert(key);
        } else {
            set.remove(&key);
        }
        true
    }

    pub fn upsert_token(&mut self, token: TokenRecord) -> bool {
        upsert_token(&mut self.tokens, token)
    }

    pub fn remove_token(&mut self, id: &str) -> bool {
        remove_token(&mut self.tokens, id)
    }

    pub fn upsert_app(&mut self, app: App) -> bool {
        upsert_app(&mut self.apps, app)
    }

    pub fn remove_app(&mut self, name: &str) -> bool {
        remove_app(&mut self.apps, name)
    }

    pub fn upsert_deployment(&mut self, deployment: Deployment) -> bool {
        upsert_deployment(&mut self.deployments, deployment)
    }

    pub fn remove_deployment(&mut self, app: &str, id: u64) -> bool {
        remove_deployment(&mut self.deployments, app, id)
    }

    /// Inserts or replaces an instance. Returns whether anything changed.
    pub fn upsert_instance(&mut self, instance: Instance) -> bool {
        upsert_instance(&mut self.services, instance)
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

/// Inserts or replaces an instance; false (and nothing copied) when it is already so.
/// Only the instance's service is copied, besides the map of services when a published
/// snapshot shares it.
pub fn upsert_instance(services: &mut Arc<ServiceMap>, instance: Instance) -> bool {
    let unchanged = services
        .get(instance.service.as_str())
        .and_then(|service| service.instances.get(instance.id.as_str()))
        == Some(&instance);
    if unchanged {
        // Checked before `make_mut`, which would copy maps a published snapshot shares.
        return false;
    }
    let services = Arc::make_mut(services);
    let service = services
        .entry(Arc::from(instance.service.as_str()))
        .or_default();
    Arc::make_mut(service)
        .instances
        .insert(Arc::from(instance.id.as_str()), instance);
    true
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

/// Sets app `app.name`; false (and the map not copied) when it is already so.
pub fn upsert_app(apps: &mut Arc<AppMap>, app: App) -> bool {
    if apps.get(app.name.as_str()).map(|a| a.as_ref()) == Some(&app) {
        return false;
    }
    Arc::make_mut(apps).insert(Arc::from(app.name.as_str()), Arc::new(app));
    true
}

pub fn remove_app(apps: &mut Arc<AppMap>, name: &str) -> bool {
    if !apps.contains_key(name) {
        return false;
    }
    Arc::make_mut(apps).remove(name).is_some()
}

/// Sets a deployment; false (and nothing copied) when it is already so.
pub fn upsert_deployment(deployments: &mut Arc<DeploymentMap>, deployment: Deployment) -> bool {
    let current = deployments
        .get(deployment.app.as_str())
        .and_then(|app| app.get(&deployment.id));
    if current.map(|d| d.as_ref()) == Some(&deployment) {
        return false;
    }
    let app = Arc::make_mut(deployments)
        .entry(Arc::from(deployment.app.as_str()))
        .or_default();
    Arc::make_mut(app).insert(deployment.id, Arc::new(deployment));
    true
}

/// Removes a deployment, and the app's entry once it has none.
pub fn remove_deployment(deployments: &mut Arc<DeploymentMap>, app: &str, id: u64) -> bool {
    if !deployments.get(app).is_some_and(|d| d.contains_key(&id)) {
        return false;
    }
    let map = Arc::make_mut(deployments);
    let Some(entry) = map.get_mut(app) else {
        return false;
    };
    Arc::make_mut(entry).remove(&id);
    if entry.is_empty() {
        map.remove(app);
    }
    true
}

pub fn upsert_token(tokens: &mut Arc<TokenMap>, token: TokenRecord) -> bool {
    if tokens.get(token.id.as_str()).map(|t| t.as_ref()) == Some(&token) {
        return false;
    }
    Arc::make_mut(tokens).insert(Arc::from(token.id.as_str()), Arc::new(token));
    true
}

pub fn remove_token(tokens: &mut Arc<TokenMap>, id: &str) -> bool {
    if !tokens.contains_key(id) {
        return false;
    }
    Arc::make_mut(tokens).remove(id).is_some()
}
