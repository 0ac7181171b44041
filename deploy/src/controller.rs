//! The rollout controller: runs each deployment from `pending` to `succeeded`, or back.
//!
//! It lives in the `strait up` that accepted the deployment (beside the router whose
//! counters it watches) and holds the app's lock in the store for as long as it runs, so
//! two deployments of one app never run at once, in one process or across a ZooKeeper
//! ensemble. Every step is written to the deployment's record before and after it is
//! taken, so `GET …/deployments/{id}` shows where it is, and a controller that dies leaves
//! a record the next one finds: every strait process looks for deployments left running
//! with nobody holding their lock and rolls them back (nothing half-routed).
//!
//! The steps, with a previous version serving:
//!
//! 1. **pin**: the app's route (named after the app) becomes a split of the old version's
//!    subset (tag `d<old>`) at 100 % and the new one's at 0 %, so no new instance takes a
//!    request before it is told to;
//! 2. **start**: the deployment's goal becomes `run`; the agents start its containers and
//!    health-check them; all must pass within the spec's `timeout`;
//! 3. **shift**: the weight moves in the spec's steps (10 %, 50 %, 100 %), each held for
//!    `pause` while the new version's health, restarts and 5xx share (the router's own
//!    counters for the new subset) are watched;
//! 4. **drain**: the old deployment's goal becomes `drain`: its instances go to maintenance,
//!    the route becomes the app's service again, and after the drain the agents stop them.
//!
//! A failure (or a cancel) before the drain puts the weight back on the old version, stops
//! the new containers, restores the route as it was and ends `rolled_back` (`failed` when
//! there was no version to go back to). The first deployment of an app has no pin or
//! shift: once its instances pass, its route is created.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use discovery::apps::{
    App, AppSpec, CONTAINER_STATE_KEY, ContainerGoal, DeployState, DeployStep, Deployment, HISTORY,
    LAST_EXIT_KEY, RESTARTS_KEY, SLOT_KEY, StepState, validate_app_name,
};
use discovery::model::{Health, Instance, Route, RouteKind, WeightedService};
use discovery::{Snapshot, Store, StoreError};
use prometheus::{HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry};
use tracing::{info, warn};

use crate::placement::{self, PlacementError};

/// How often waits look at the store's snapshot again.
const POLL: Duration = Duration::from_millis(200);
/// How often every process looks for deployments whose controller is gone.
const RECOVER_EVERY: Duration = Duration::from_secs(5);
/// A zone of the placement without any live agent for this long fails the deployment.
const ZONE_GRACE: Duration = Duration::from_secs(15);
/// Stopped containers' instances must be gone within the drain plus this.
const STOP_GRACE: Duration = Duration::from_secs(60);
/// A rolled-back version's instances stay in maintenance at most this long.
const ROLLBACK_DRAIN: Duration = Duration::from_secs(5);
/// A record write the store refuses (unreachable) is retried for this long.
const WRITE_RETRY: Duration = Duration::from_secs(60);

/// The router's counters for one version of an app, as the controller reads them.
pub trait TrafficStats: Send + Sync + 'static {
    /// Requests answered so far through route `route` to `service`'s instances tagged
    /// `tag`: (all, 5xx).
    fn requests(&self, route: &str, service: &str, tag: &str) -> (u64, u64);
}

/// A tag resolved to the digest it names now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    /// `registry/repository@sha256:…`: what every container runs.
    pub pinned: String,
    pub digest: String,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Registry(String),
}

#[async_trait::async_trait]
pub trait ImageResolver: Send + Sync + 'static {
    async fn resolve(&self, image: &str) -> Result<ResolvedImage, ResolveError>;
}

/// Why a deployment request was refused (the API's 4xx/5xx).
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("{0}")]
    Invalid(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    /// Well-formed, but it cannot be done (no agent in a zone, no such image).
    #[error("{0}")]
    Unprocessable(String),
    /// The registry could not be asked, or refused.
    #[error("{0}")]
    Registry(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl From<discovery::ModelError> for DeployError {
    fn from(e: discovery::ModelError) -> Self {
        DeployError::Invalid(e.to_string())
    }
}

/// `strait_deploy_*`.
#[derive(Clone)]
pub struct ControllerMetrics {
    deployments: IntCounterVec,
    duration: HistogramVec,
    in_progress: IntGauge,
}

impl ControllerMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = ControllerMetrics {
            deployments: IntCounterVec::new(
                Opts::new(
                    "strait_deploy_deployments_total",
                    "Finished deployments by app and outcome (succeeded, failed, rolled_back)",
                ),
                &["app", "outcome"],
            )?,
            duration: HistogramVec::new(
                HistogramOpts::new(
                    "strait_deploy_duration_seconds",
                    "Deployment duration, accepted to finished, by outcome",
                )
                .buckets(vec![
                    5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1200.0, 3600.0,
                ]),
                &["outcome"],
            )?,
            in_progress: IntGauge::new(
                "strait_deploy_in_progress",
                "Deployments this process is running now",
            )?,
        };
        registry.register(Box::new(metrics.deployments.clone()))?;
        registry.register(Box::new(metrics.duration.clone()))?;
        registry.register(Box::new(metrics.in_progress.clone()))?;
        Ok(metrics)
    }
}

/// A deployment request: the app's spec, every field optional over the spec stored for
/// the app (`image` and `instances` are needed for an app's first deployment).
#[derive(Debug, Clone, Default, serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct DeployRequest {
    #[serde(default)]
    pub image: Option<String>,
    #[serde(default)]
    pub instances: Option<u32>,
    #[serde(default)]
    pub zones: Option<Vec<String>>,
    #[serde(default)]
    pub env: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub port_env: Option<String>,
    #[serde(default)]
    pub check: Option<discovery::apps::AppCheck>,
    #[serde(default, with = "humantime_serde")]
    #[schema(value_type = Option<String>, example = "1s")]
    pub check_interval: Option<Duration>,
    #[serde(default)]
    pub host: Option<String>,
    #[serde(default, with = "humantime_serde")]
    #[schema(value_type = Option<String>, example = "120s")]
    pub timeout: Option<Duration>,
    /// Replaces the stored rollout settings whole (missing fields take their defaults).
    #[serde(default)]
    pub rollout: Option<discovery::apps::Rollout>,
}

impl DeployRequest {
    /// The spec this request asks for, over the app's stored one.
    pub fn merge(self, stored: Option<&AppSpec>) -> Result<AppSpec, DeployError> {
        let mut spec = match stored {
            Some(spec) => spec.clone(),
            None => {
                let (Some(image), Some(instances)) = (&self.image, self.instances) else {
                    return Err(DeployError::Invalid(
                        "the app's first deployment needs `image` and `instances`".into(),
                    ));
                };
                serde_json::from_value(serde_json::json!({
                    "image": image,
                    "instances": instances,
                }))
                .map_err(|e| DeployError::Invalid(e.to_string()))?
            }
        };
        if let Some(image) = self.image {
            spec.image = image;
        }
        if let Some(instances) = self.instances {
            spec.instances = instances;
        }
        if let Some(zones) = self.zones {
            spec.zones = zones;
        }
        if let Some(env) = self.env {
            spec.env = env;
        }
        if let Some(port_env) = self.port_env {
            spec.port_env = port_env;
        }
        if let Some(check) = self.check {
            spec.check = check;
        }
        if let Some(interval) = self.check_interval {
            spec.check_interval = interval;
        }
        if let Some(host) = self.host {
            spec.host = Some(host);
        }
        if let Some(timeout) = self.timeout {
            spec.timeout = timeout;
        }
        if let Some(rollout) = self.rollout {
            spec.rollout = rollout;
        }
        spec.validate()?;
        Ok(spec)
    }
}

/// The store lock an app's deployments run under.
pub fn lock_name(app: &str) -> String {
    format!("app-{app}")
}

/// The app's live version: its newest succeeded deployment whose containers run.
pub fn current(snapshot: &Snapshot, app: &str) -> Option<Arc<Deployment>> {
    snapshot
        .deployments_of(app)
        .rev()
        .find(|d| d.state == DeployState::Succeeded && d.goal == ContainerGoal::Run)
        .cloned()
}

/// The app's deployment in progress, if any.
pub fn in_progress(snapshot: &Snapshot, app: &str) -> Option<Arc<Deployment>> {
    snapshot
        .deployments_of(app)
        .rev()
        .find(|d| !d.state.is_finished())
        .cloned()
}

/// The instances of `deployment`.
pub fn instances_of<'a>(
    snapshot: &'a Snapshot,
    deployment: &'a Deployment,
) -> impl Iterator<Item = &'a Instance> {
    snapshot
        .services
        .get(deployment.app.as_str())
        .into_iter()
        .flat_map(|s| s.instances.values())
        .filter(|i| deployment.owns(i))
}

pub struct Controller {
    store: Arc<dyn Store>,
    traffic: Arc<dyn TrafficStats>,
    resolver: Arc<dyn ImageResolver>,
    metrics: ControllerMetrics,
    /// `host:pid`, written into the records this process runs.
    me: String,
    /// Apps this process runs a deployment (or removal) of now.
    running: Mutex<HashSet<String>>,
    /// Cancels asked of deployments this process runs (no record write, so none can race
    /// the controller's own).
    cancels: Mutex<HashSet<(String, u64)>>,
}

/// Why driving a deployment stopped short.
enum Stop {
    /// Roll back, with this reason.
    Fail(String),
    /// The lock is gone (ZooKeeper session lost): leave the record to whoever takes it.
    LostLock,
}

impl From<String> for Stop {
    fn from(reason: String) -> Self {
        Stop::Fail(reason)
    }
}

fn now() -> SystemTime {
    SystemTime::now()
}

impl Controller {
    pub fn new(
        store: Arc<dyn Store>,
        traffic: Arc<dyn TrafficStats>,
        resolver: Arc<dyn ImageResolver>,
        metrics: ControllerMetrics,
    ) -> Arc<Controller> {
        let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "localhost".into());
        Arc::new(Controller {
            store,
            traffic,
            resolver,
            metrics,
            me: format!("{host}:{}", std::process::id()),
            running: Mutex::new(HashSet::new()),
            cancels: Mutex::new(HashSet::new()),
        })
    }

    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    fn running(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.running.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts the loop that takes over deployments whose controller is gone.
    pub fn start_recovery(self: &Arc<Self>) {
        let this = Arc::clone(self);
        tokio::spawn(async move {
            loop {
                this.recover_once().await;
                tokio::time::sleep(RECOVER_EVERY).await;
            }
        });
    }

    /// Sets an app's spec (the catalogue) without deploying it.
    pub async fn put_app(&self, name: &str, mut spec: AppSpec) -> Result<App, DeployError> {
        validate_app_name(name)?;
        spec.validate()?;
        if self
            .store
            .snapshot()
            .apps
            .get(name)
            .is_some_and(|a| a.removing)
        {
            return Err(DeployError::Conflict(format!(
                "app `{name}` is being removed"
            )));
        }
        let app = App {
            name: name.to_string(),
            spec,
            removing: false,
        };
        self.store.put_app(app.clone()).await?;
        Ok(app)
    }

    /// Accepts a deployment: validated, placed, its image resolved to a digest and its
    /// record written (`pending`); it then runs in the background.
    pub async fn create(
        self: &Arc<Self>,
        app: &str,
        request: DeployRequest,
    ) -> Result<Deployment, DeployError> {
        validate_app_name(app)?;
        let snapshot = self.store.snapshot();
        let stored = snapshot.apps.get(app).cloned();
        if stored.as_ref().is_some_and(|a| a.removing) {
            return Err(DeployError::Conflict(format!(
                "app `{app}` is being removed"
            )));
        }
        let spec = request.merge(stored.as_ref().map(|a| &a.spec))?;
        self.create_with(app, spec, None).await
    }

    /// Deploys the version before the current one again (a new, health-gated deployment
    /// of the same digest).
    pub async fn rollback(self: &Arc<Self>, app: &str) -> Result<Deployment, DeployError> {
        validate_app_name(app)?;
        let snapshot = self.store.snapshot();
        let current = current(&snapshot, app).ok_or_else(|| {
            DeployError::NotFound(format!("app `{app}` has no succeeded deployment"))
        })?;
        let before = snapshot
            .deployments_of(app)
            .rev()
            .find(|d| {
                d.id < current.id && d.state == DeployState::Succeeded && d.digest != current.digest
            })
            .ok_or_else(|| {
                DeployError::Unprocessable(format!(
                    "app `{app}` has no earlier succeeded version to go back to (current: deployment {})",
                    current.id
                ))
            })?
            .clone();
        let mut spec = before.spec.clone();
        // The digest it ran, not the tag (which may have moved since).
        spec.image = before.image.clone();
        self.create_with(
            app,
            spec,
            Some((before.image.clone(), before.digest.clone())),
        )
        .await
    }

    async fn create_with(
        self: &Arc<Self>,
        app: &str,
        spec: AppSpec,
        pinned: Option<(String, String)>,
    ) -> Result<Deployment, DeployError> {
        let lock = lock_name(app);
        let conflict = |snapshot: &Snapshot| {
            DeployError::Conflict(match in_progress(snapshot, app) {
                Some(d) => format!(
                    "deployment {} of `{app}` is {}; wait for it, or cancel it with DELETE /v1/apps/{app}/deployments/{}",
                    d.id,
                    d.state.as_str(),
                    d.id
                ),
                None => format!("another deployment (or removal) of `{app}` is under way"),
            })
        };
        // Reserved in this process first, so two requests here never both take the lock.
        if !self.running().insert(app.to_string()) {
            return Err(conflict(&self.store.snapshot()));
        }
        let taken = async {
            let mut locked = self.store.try_lock(&lock).await?;
            // Held by this process with no task of its own behind it: leaked by a create
            // whose answer the connection lost (ZooKeeper). Released and taken again.
            if !locked && self.store.holds_lock(&lock).await {
                warn!(app, "deploy: releasing a leaked lock of this process");
                self.store.unlock(&lock).await?;
                locked = self.store.try_lock(&lock).await?;
            }
            Ok::<bool, StoreError>(locked)
        }
        .await;
        match taken {
            Ok(true) => {}
            Ok(false) => {
                self.running().remove(app);
                return Err(conflict(&self.store.snapshot()));
            }
            Err(e) => {
                self.running().remove(app);
                return Err(e.into());
            }
        }
        match self.prepare(app, spec, pinned).await {
            Ok(deployment) => {
                let this = Arc::clone(self);
                let record = deployment.clone();
                tokio::spawn(async move { this.run(record).await });
                self.visible(app, deployment.id).await;
                Ok(deployment)
            }
            Err(e) => {
                let _ = self.store.unlock(&lock).await;
                self.running().remove(app);
                Err(e)
            }
        }
    }

    /// Waits (a few seconds at most) until this process's snapshot holds deployment `id`
    /// of `app`: the 202's `Location` then answers at once, ZooKeeper's watch having
    /// caught up with the write (read your writes; the embedded store has it already).
    async fn visible(&self, app: &str, id: u64) {
        let mut snapshots = self.store.watch();
        let _ = tokio::time::timeout(
            Duration::from_secs(5),
            snapshots.wait_for(|snapshot| snapshot.deployment(app, id).is_some()),
        )
        .await;
    }

    /// The checks and writes of `create`, under the app's lock.
    async fn prepare(
        &self,
        app: &str,
        spec: AppSpec,
        pinned: Option<(String, String)>,
    ) -> Result<Deployment, DeployError> {
        let snapshot = self.store.snapshot();
        if let Some(stale) = in_progress(&snapshot, app) {
            return Err(DeployError::Conflict(format!(
                "deployment {} of `{app}` was left {} by a strait process that stopped; it is being rolled back, try again in a few seconds",
                stale.id,
                stale.state.as_str()
            )));
        }
        if let Some(route) = snapshot.routes.get(app)
            && route.services().any(|s| s != app)
        {
            return Err(DeployError::Conflict(format!(
                "route `{app}` sends to other services than the app's ({}); a deployment manages the route named after its app: rename or delete that route first",
                route.services().collect::<Vec<_>>().join(", ")
            )));
        }
        let agents = placement::live_agents(&snapshot);
        let placement = placement::plan(&spec, &agents).map_err(|e| match e {
            PlacementError::NoAgents | PlacementError::EmptyZone { .. } => {
                DeployError::Unprocessable(e.to_string())
            }
        })?;
        let resolved = match pinned {
            Some((image, digest)) => crate::controller::ResolvedImage {
                pinned: image,
                digest,
            },
            None => self
                .resolver
                .resolve(&spec.image)
                .await
                .map_err(|e| match e {
                    ResolveError::Invalid(m) => DeployError::Invalid(m),
                    ResolveError::NotFound(m) => DeployError::Unprocessable(m),
                    ResolveError::Registry(m) => DeployError::Registry(m),
                })?,
        };
        let id = snapshot
            .deployments_of(app)
            .next_back()
            .map_or(1, |d| d.id + 1);
        let previous = current(&snapshot, app);
        let time = now();
        let deployment = Deployment {
            app: app.to_string(),
            id,
            image: resolved.pinned,
            digest: resolved.digest,
            placement,
            state: DeployState::Pending,
            goal: ContainerGoal::Stop,
            weight: 0,
            steps: Vec::new(),
            reason: None,
            previous: previous.map(|p| p.id),
            cancel: false,
            drain: None,
            route_before: snapshot.routes.get(app).map(|r| r.as_ref().clone()),
            controller: self.me.clone(),
            created: time,
            updated: time,
            finished: None,
            spec: spec.clone(),
        };
        // The stored spec becomes this one when it succeeds (a failed version must not be
        // what the next deployment merges over); a new app is listed from the start.
        if !snapshot.apps.contains_key(app) {
            self.store
                .put_app(App {
                    name: app.to_string(),
                    spec,
                    removing: false,
                })
                .await?;
        }
        self.store.put_deployment(deployment.clone()).await?;
        info!(
            app,
            deployment = id,
            image = %deployment.image,
            "deploy: accepted"
        );
        Ok(deployment)
    }

    /// Asks a running deployment to stop: it is rolled back by whoever runs it.
    pub async fn cancel(&self, app: &str, id: u64) -> Result<Deployment, DeployError> {
        validate_app_name(app)?;
        let snapshot = self.store.snapshot();
        let mut deployment = snapshot
            .deployment(app, id)
            .ok_or_else(|| DeployError::NotFound(format!("deployment {app}/{id} not found")))?
            .as_ref()
            .clone();
        if deployment.state.is_finished() {
            return Err(DeployError::Conflict(format!(
                "deployment {app}/{id} has finished ({}); nothing to cancel",
                deployment.state.as_str()
            )));
        }
        if self.running().contains(app) {
            self.cancels
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert((app.to_string(), id));
            deployment.cancel = true;
            return Ok(deployment);
        }
        // Another strait runs it: it reads the flag from the record.
        if !deployment.cancel {
            deployment.cancel = true;
            deployment.updated = now();
            self.store.put_deployment(deployment.clone()).await?;
        }
        Ok(deployment)
    }

    /// Removes an app: its containers stop, its route (if the deployments made it) and
    /// its records go. Runs in the background under the app's lock.
    pub async fn remove_app(self: &Arc<Self>, app: &str) -> Result<(), DeployError> {
        validate_app_name(app)?;
        let snapshot = self.store.snapshot();
        let record = snapshot
            .apps
            .get(app)
            .ok_or_else(|| DeployError::NotFound(format!("app `{app}` not found")))?
            .as_ref()
            .clone();
        if let Some(d) = in_progress(&snapshot, app) {
            return Err(DeployError::Conflict(format!(
                "deployment {} of `{app}` is {}; cancel it first",
                d.id,
                d.state.as_str()
            )));
        }
        let busy =
            || DeployError::Conflict(format!("a deployment (or removal) of `{app}` is under way"));
        if !self.running().insert(app.to_string()) {
            return Err(busy());
        }
        match self.store.try_lock(&lock_name(app)).await {
            Ok(true) => {}
            Ok(false) => {
                self.running().remove(app);
                return Err(busy());
            }
            Err(e) => {
                self.running().remove(app);
                return Err(e.into());
            }
        }
        let marked = App {
            removing: true,
            ..record
        };
        if let Err(e) = self.store.put_app(marked).await {
            self.release(app).await;
            return Err(e.into());
        }
        let this = Arc::clone(self);
        let app = app.to_string();
        tokio::spawn(async move {
            this.finish_removal(&app).await;
            this.release(&app).await;
        });
        Ok(())
    }

    async fn release(&self, app: &str) {
        if let Err(e) = self.store.unlock(&lock_name(app)).await {
            warn!(app, error = %e, "deploy: cannot release the app's lock");
        }
        self.running().remove(app);
    }

    /// Stops every container of a removed app, then deletes its route and records.
    async fn finish_removal(&self, app: &str) {
        info!(app, "deploy: removing the app");
        let snapshot = self.store.snapshot();
        for deployment in snapshot.deployments_of(app) {
            if deployment.goal != ContainerGoal::Stop {
                let mut d = deployment.as_ref().clone();
                d.goal = ContainerGoal::Stop;
                d.updated = now();
                self.write(&d).await;
            }
        }
        if let Some(route) = snapshot.routes.get(app)
            && route.services().all(|s| s == app)
            && let Err(e) = self.store.delete_route(app).await
        {
            warn!(app, error = %e, "deploy: cannot delete the app's route");
        }
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            let snapshot = self.store.snapshot();
            if snapshot
                .deployments_of(app)
                .all(|d| instances_of(&snapshot, d).next().is_none())
            {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let ids: Vec<u64> = self
            .store
            .snapshot()
            .deployments_of(app)
            .map(|d| d.id)
            .collect();
        for id in ids {
            if let Err(e) = self.store.delete_deployment(app, id).await {
                warn!(app, id, error = %e, "deploy: cannot delete a deployment record");
            }
        }
        match self.store.delete_app(app).await {
            Ok(_) => info!(app, "deploy: app removed"),
            Err(e) => warn!(app, error = %e, "deploy: cannot delete the app's record"),
        }
    }

    /// Writes a record, retrying while the store is unreachable (fail static: a ZooKeeper
    /// outage delays the deployment, it does not lose its state).
    async fn write(&self, deployment: &Deployment) -> bool {
        let deadline = Instant::now() + WRITE_RETRY;
        let mut deployment = deployment.clone();
        // A cancel written by another strait is never overwritten.
        deployment.cancel |= self
            .store
            .snapshot()
            .deployment(&deployment.app, deployment.id)
            .is_some_and(|d| d.cancel);
        loop {
            match self.store.put_deployment(deployment.clone()).await {
                Ok(()) => return true,
                Err(StoreError::Unavailable(e)) if Instant::now() < deadline => {
                    warn!(app = %deployment.app, id = deployment.id, error = %e, "deploy: store unavailable; retrying the write");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    warn!(app = %deployment.app, id = deployment.id, error = %e, "deploy: cannot write the deployment");
                    return false;
                }
            }
        }
    }

    /// Route writes, retried like record writes.
    async fn put_route(&self, name: &str, route: Route) -> Result<(), String> {
        let deadline = Instant::now() + WRITE_RETRY;
        loop {
            match self.store.put_route(name, route.clone()).await {
                Ok(()) => return Ok(()),
                Err(StoreError::Unavailable(e)) if Instant::now() < deadline => {
                    warn!(route = name, error = %e, "deploy: store unavailable; retrying the route write");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => return Err(format!("cannot write route `{name}`: {e}")),
            }
        }
    }

    fn begin(&self, d: &mut Deployment, name: impl Into<String>) {
        let name = name.into();
        info!(app = %d.app, deployment = d.id, step = %name, "deploy: step");
        d.steps.push(DeployStep {
            name,
            state: StepState::Running,
            started: now(),
            ended: None,
            detail: None,
        });
    }

    fn end(&self, d: &mut Deployment, state: StepState, detail: Option<String>) {
        if let Some(step) = d.steps.last_mut()
            && step.state == StepState::Running
        {
            step.state = state;
            step.ended = Some(now());
            step.detail = detail;
        }
    }

    /// Runs an accepted deployment to its end, then releases the app.
    async fn run(self: Arc<Self>, mut d: Deployment) {
        self.metrics.in_progress.inc();
        let started = Instant::now();
        let outcome = match self.drive(&mut d).await {
            Ok(()) => Some(DeployState::Succeeded),
            Err(Stop::Fail(reason)) => Some(self.roll_back(&mut d, reason).await),
            Err(Stop::LostLock) => {
                warn!(app = %d.app, deployment = d.id, "deploy: lost the app's lock; another strait process takes over");
                None
            }
        };
        if let Some(outcome) = outcome {
            self.metrics
                .deployments
                .with_label_values(&[&d.app, outcome.as_str()])
                .inc();
            self.metrics
                .duration
                .with_label_values(&[outcome.as_str()])
                .observe(started.elapsed().as_secs_f64());
            self.prune(&d.app).await;
        }
        self.metrics.in_progress.dec();
        self.cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(d.app.clone(), d.id));
        self.release(&d.app).await;
    }

    /// The managed route for the app: the one named after it (its host updated from the
    /// spec), or a new one on the spec's host. `None`: the app is not routed.
    /// During the rollout the route keeps the host it had (a `--host` that changes it takes
    /// effect once the new version has all the traffic: the old host never goes dark).
    fn managed_route(&self, d: &Deployment) -> Option<Route> {
        match (&d.route_before, &d.spec.host) {
            (Some(route), _) if route.kind == RouteKind::Http => Some(route.clone()),
            (None, Some(host)) => Some(Route::http(host, &d.app)),
            _ => None,
        }
    }

    /// The route once the deployment has succeeded: on the spec's host.
    fn final_route(&self, d: &Deployment) -> Option<Route> {
        let mut route = self.managed_route(d)?;
        if let Some(host) = &d.spec.host {
            route.host = Some(host.clone());
        }
        Some(route)
    }

    /// The managed route sending `new_percent` to the new version and the rest to `old`.
    fn split_route(&self, d: &Deployment, base: &Route, old: u64, new_percent: u32) -> Route {
        let mut route = base.clone();
        route.service = None;
        route.split = vec![
            WeightedService {
                service: d.app.clone(),
                weight: 100 - new_percent,
                tag: Some(discovery::apps::deployment_tag(old)),
            },
            WeightedService {
                service: d.app.clone(),
                weight: new_percent,
                tag: Some(d.tag()),
            },
        ];
        route
    }

    fn plain_route(&self, d: &Deployment, base: &Route) -> Route {
        let mut route = base.clone();
        route.service = Some(d.app.clone());
        route.split = Vec::new();
        route
    }

    async fn step_write(&self, d: &mut Deployment) -> Result<(), Stop> {
        d.updated = now();
        if !self.store.holds_lock(&lock_name(&d.app)).await {
            return Err(Stop::LostLock);
        }
        if !self.write(d).await {
            return Err(Stop::Fail("cannot write the deployment's record".into()));
        }
        Ok(())
    }

    async fn drive(&self, d: &mut Deployment) -> Result<(), Stop> {
        d.state = DeployState::Running;
        let previous = match d.previous {
            Some(id) => self.store.snapshot().deployment(&d.app, id).cloned(),
            None => None,
        };
        let route = self.managed_route(d);
        if let (Some(prev), Some(route)) = (&previous, &route) {
            self.begin(d, format!("pin the route to deployment {}", prev.id));
            self.step_write(d).await?;
            self.put_route(&d.app, self.split_route(d, route, prev.id, 0))
                .await?;
            self.end(d, StepState::Done, None);
        }
        let wanted = d.wanted();
        self.begin(
            d,
            format!(
                "start {wanted} instance{}",
                if wanted == 1 { "" } else { "s" }
            ),
        );
        d.goal = ContainerGoal::Run;
        self.step_write(d).await?;
        let healthy = self.wait_healthy(d).await;
        match healthy {
            Ok(detail) => self.end(d, StepState::Done, Some(detail)),
            Err(Stop::Fail(reason)) => {
                self.end(d, StepState::Failed, Some(reason.clone()));
                return Err(Stop::Fail(reason));
            }
            Err(stop) => return Err(stop),
        }
        match (&previous, &route) {
            (Some(prev), Some(route)) => {
                for percent in d.spec.rollout.steps.clone() {
                    self.begin(d, format!("shift {percent}% of the traffic"));
                    self.step_write(d).await?;
                    self.put_route(&d.app, self.split_route(d, route, prev.id, percent))
                        .await?;
                    d.weight = percent;
                    match self.watch_step(d).await {
                        Ok(detail) => self.end(d, StepState::Done, Some(detail)),
                        Err(Stop::Fail(reason)) => {
                            self.end(d, StepState::Failed, Some(reason.clone()));
                            return Err(Stop::Fail(reason));
                        }
                        Err(stop) => return Err(stop),
                    }
                }
            }
            (None, Some(_)) => {
                let route = self
                    .final_route(d)
                    .unwrap_or_else(|| Route::http("*", &d.app));
                self.begin(d, "route the app");
                self.step_write(d).await?;
                self.put_route(&d.app, self.plain_route(d, &route)).await?;
                d.weight = 100;
                self.end(d, StepState::Done, route.host.clone());
            }
            (_, None) => d.weight = 100,
        }
        // Past the point of no return: all traffic is on the new version.
        if let Some(prev) = &previous {
            self.begin(d, format!("drain deployment {}", prev.id));
            self.step_write(d).await?;
            let detail = self.retire(d, prev, self.final_route(d).as_ref()).await;
            self.end(d, StepState::Done, detail);
        }
        self.succeed(d).await;
        Ok(())
    }

    /// Records success, and the deployed spec as the app's.
    async fn succeed(&self, d: &mut Deployment) {
        d.state = DeployState::Succeeded;
        d.finished = Some(now());
        d.updated = now();
        self.write(d).await;
        let app = App {
            name: d.app.clone(),
            spec: d.spec.clone(),
            removing: false,
        };
        if let Err(e) = self.store.put_app(app).await {
            warn!(app = %d.app, error = %e, "deploy: cannot store the app's spec");
        }
        info!(app = %d.app, deployment = d.id, image = %d.image, "deploy: succeeded");
    }

    /// Drains the previous deployment and stops it; the route becomes the app's service.
    async fn retire(
        &self,
        d: &Deployment,
        prev: &Deployment,
        route: Option<&Route>,
    ) -> Option<String> {
        let mut old = prev.clone();
        old.goal = ContainerGoal::Drain;
        old.drain = Some(d.spec.rollout.drain);
        old.weight = 0;
        old.updated = now();
        self.write(&old).await;
        // Only once every old instance is out of traffic may the route take the whole
        // service again (it would reach them otherwise).
        let deadline = Instant::now() + STOP_GRACE;
        while Instant::now() < deadline {
            let snapshot = self.store.snapshot();
            if instances_of(&snapshot, &old).all(|i| i.spec.health == Health::Maintenance) {
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        let mut detail = None;
        if let Some(route) = route
            && let Err(e) = self.put_route(&d.app, self.plain_route(d, route)).await
        {
            detail = Some(e);
        }
        let deadline = Instant::now() + d.spec.rollout.drain + STOP_GRACE;
        let mut gone = false;
        while Instant::now() < deadline {
            let snapshot = self.store.snapshot();
            if instances_of(&snapshot, &old).next().is_none() {
                gone = true;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        if !gone {
            detail = Some(format!(
                "deployment {}'s instances were still registered after the drain; their agents stop them",
                old.id
            ));
        }
        old.goal = ContainerGoal::Stop;
        old.updated = now();
        self.write(&old).await;
        detail
    }

    /// Fails with the reason the deployment cannot go on, if there is one now.
    fn trouble(&self, d: &Deployment, snapshot: &Snapshot) -> Option<String> {
        let cancelled_here = self
            .cancels
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .contains(&(d.app.clone(), d.id));
        if cancelled_here || snapshot.deployment(&d.app, d.id).is_some_and(|s| s.cancel) {
            return Some("cancelled".into());
        }
        for instance in instances_of(snapshot, d) {
            let meta = &instance.spec.metadata;
            let restarts: u32 = meta
                .get(RESTARTS_KEY)
                .and_then(|r| r.parse().ok())
                .unwrap_or(0);
            let last_exit = meta.get(LAST_EXIT_KEY).map_or("", String::as_str);
            if restarts > d.spec.rollout.max_restarts {
                return Some(format!(
                    "instance {} exited {restarts} times (more than {}); last: {last_exit}",
                    instance.id, d.spec.rollout.max_restarts
                ));
            }
            if meta.get(CONTAINER_STATE_KEY).map(String::as_str) == Some("failed") {
                return Some(format!("instance {}: {last_exit}", instance.id));
            }
        }
        None
    }

    /// The slots of `d` with a passing instance.
    fn passing_slots(d: &Deployment, snapshot: &Snapshot) -> HashSet<u32> {
        instances_of(snapshot, d)
            .filter(|i| i.spec.health == Health::Passing)
            .filter_map(|i| i.spec.metadata.get(SLOT_KEY)?.parse().ok())
            .collect()
    }

    /// Waits until every slot has a passing instance, within the spec's timeout.
    async fn wait_healthy(&self, d: &Deployment) -> Result<String, Stop> {
        let started = Instant::now();
        let deadline = started + d.spec.timeout;
        let wanted = d.wanted() as usize;
        let mut zone_empty_since: BTreeMap<String, Instant> = BTreeMap::new();
        loop {
            let snapshot = self.store.snapshot();
            if let Some(reason) = self.trouble(d, &snapshot) {
                return Err(Stop::Fail(reason));
            }
            let passing = Self::passing_slots(d, &snapshot);
            if passing.len() >= wanted {
                return Ok(format!(
                    "{wanted} passing after {}",
                    humantime::format_duration(Duration::from_millis(
                        started.elapsed().as_millis() as u64
                    ))
                ));
            }
            let agents = placement::live_agents(&snapshot);
            for zone in d.placement.keys() {
                if agents.iter().any(|a| &a.zone == zone) {
                    zone_empty_since.remove(zone);
                } else {
                    let since = *zone_empty_since
                        .entry(zone.clone())
                        .or_insert_with(Instant::now);
                    if since.elapsed() > ZONE_GRACE {
                        return Err(Stop::Fail(format!(
                            "zone `{zone}` has had no live agent for {}s",
                            ZONE_GRACE.as_secs()
                        )));
                    }
                }
            }
            if Instant::now() >= deadline {
                let missing: Vec<String> = d
                    .slots()
                    .filter(|(_, slot)| !passing.contains(slot))
                    .map(|(zone, slot)| {
                        let state = instances_of(&snapshot, d)
                            .find(|i| i.spec.metadata.get(SLOT_KEY) == Some(&slot.to_string()))
                            .map_or("no instance (no agent started it)".to_string(), |i| {
                                let container = i
                                    .spec
                                    .metadata
                                    .get(CONTAINER_STATE_KEY)
                                    .map_or("?", String::as_str);
                                format!(
                                    "{} {} (container {container})",
                                    i.id,
                                    i.spec.health.as_str()
                                )
                            });
                        format!("slot {slot} in {zone}: {state}")
                    })
                    .collect();
                return Err(Stop::Fail(format!(
                    "{} of {wanted} instances passed their check ({}) within {}; {}",
                    passing.len(),
                    check_text(&d.spec),
                    humantime::format_duration(d.spec.timeout),
                    missing.join("; ")
                )));
            }
            if !self.store.holds_lock(&lock_name(&d.app)).await {
                return Err(Stop::LostLock);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Holds a traffic step for the rollout's pause, watching the new version.
    async fn watch_step(&self, d: &Deployment) -> Result<String, Stop> {
        let tag = d.tag();
        let (total0, errors0) = self.traffic.requests(&d.app, &d.app, &tag);
        let deadline = Instant::now() + d.spec.rollout.pause;
        let wanted = d.wanted() as usize;
        loop {
            let snapshot = self.store.snapshot();
            if let Some(reason) = self.trouble(d, &snapshot) {
                return Err(Stop::Fail(reason));
            }
            let passing = Self::passing_slots(d, &snapshot);
            if passing.len() < wanted {
                return Err(Stop::Fail(format!(
                    "only {} of {wanted} instances pass their check at {}% of the traffic",
                    passing.len(),
                    d.weight
                )));
            }
            let (total, errors) = self.traffic.requests(&d.app, &d.app, &tag);
            let (total, errors) = (total.saturating_sub(total0), errors.saturating_sub(errors0));
            if total >= u64::from(d.spec.rollout.min_requests)
                && errors * 100 > total * u64::from(d.spec.rollout.max_error_percent)
            {
                return Err(Stop::Fail(format!(
                    "the new version answered {errors} of {total} requests with 5xx at {}% of the traffic (the limit is {}%)",
                    d.weight, d.spec.rollout.max_error_percent
                )));
            }
            if Instant::now() >= deadline {
                return Ok(format!("{total} requests, {errors} 5xx"));
            }
            if !self.store.holds_lock(&lock_name(&d.app)).await {
                return Err(Stop::LostLock);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// Puts the traffic back on the previous version, stops the new containers and
    /// restores the route. Returns the final state.
    async fn roll_back(&self, d: &mut Deployment, reason: String) -> DeployState {
        warn!(app = %d.app, deployment = d.id, %reason, "deploy: rolling back");
        let previous = d
            .previous
            .and_then(|id| self.store.snapshot().deployment(&d.app, id).cloned())
            .filter(|p| p.goal == ContainerGoal::Run);
        self.begin(d, "roll back");
        d.reason = Some(reason);
        d.updated = now();
        self.write(d).await;
        let route = self.managed_route(d);
        let mut problems = Vec::new();
        if let (Some(prev), Some(route)) = (&previous, &route)
            && let Err(e) = self
                .put_route(&d.app, self.split_route(d, route, prev.id, 0))
                .await
        {
            problems.push(e);
        }
        if previous.is_none() && d.route_before.is_none() && route.is_some() {
            // The route this deployment made: gone before its instances are.
            if let Err(e) = self.store.delete_route(&d.app).await {
                problems.push(format!("cannot delete route `{}`: {e}", d.app));
            }
        }
        // Out of traffic first (maintenance: in-flight requests finish), then stopped.
        let drain = d.spec.rollout.drain.min(ROLLBACK_DRAIN);
        d.weight = 0;
        d.goal = ContainerGoal::Drain;
        d.drain = Some(drain);
        d.updated = now();
        self.write(d).await;
        let deadline = Instant::now() + drain + STOP_GRACE;
        let mut gone = false;
        while Instant::now() < deadline {
            if instances_of(&self.store.snapshot(), d).next().is_none() {
                gone = true;
                break;
            }
            tokio::time::sleep(POLL).await;
        }
        d.goal = ContainerGoal::Stop;
        d.updated = now();
        self.write(d).await;
        if !gone {
            problems.push("its instances were still registered a minute later".into());
        }
        if let Some(before) = &d.route_before
            && let Err(e) = self.put_route(&d.app, before.clone()).await
        {
            problems.push(e);
        }
        let state = if previous.is_some() && problems.is_empty() {
            DeployState::RolledBack
        } else {
            DeployState::Failed
        };
        let detail = match (&previous, problems.is_empty()) {
            (Some(prev), true) => Some(format!("deployment {} has the traffic", prev.id)),
            (None, true) => Some("no earlier version to go back to".into()),
            (_, false) => Some(problems.join("; ")),
        };
        self.end(
            d,
            if problems.is_empty() {
                StepState::Done
            } else {
                StepState::Failed
            },
            detail,
        );
        d.state = state;
        d.finished = Some(now());
        d.updated = now();
        self.write(d).await;
        warn!(app = %d.app, deployment = d.id, state = state.as_str(), reason = d.reason.as_deref().unwrap_or(""), "deploy: finished");
        state
    }

    /// Deletes the oldest finished deployments beyond [`HISTORY`].
    async fn prune(&self, app: &str) {
        let snapshot = self.store.snapshot();
        let finished: Vec<u64> = snapshot
            .deployments_of(app)
            .filter(|d| d.state.is_finished() && d.goal == ContainerGoal::Stop)
            .map(|d| d.id)
            .collect();
        let total = snapshot.deployments_of(app).count();
        let excess = total.saturating_sub(HISTORY);
        for id in finished.into_iter().take(excess) {
            if let Err(e) = self.store.delete_deployment(app, id).await {
                warn!(app, id, error = %e, "deploy: cannot prune a deployment record");
            }
        }
    }

    /// Takes over what a stopped controller left: deployments left running are rolled
    /// back, removals finished, drains completed.
    async fn recover_once(self: &Arc<Self>) {
        let snapshot = self.store.snapshot();
        let mut apps: Vec<String> = snapshot
            .deployments
            .iter()
            .filter(|(_, ds)| {
                ds.values()
                    .any(|d| !d.state.is_finished() || d.goal == ContainerGoal::Drain)
            })
            .map(|(app, _)| app.to_string())
            .collect();
        apps.extend(
            snapshot
                .apps
                .values()
                .filter(|a| a.removing)
                .map(|a| a.name.clone()),
        );
        apps.sort();
        apps.dedup();
        for app in apps {
            if !self.running().insert(app.clone()) {
                continue;
            }
            match self.store.try_lock(&lock_name(&app)).await {
                Ok(true) => {}
                _ => {
                    self.running().remove(&app);
                    continue;
                }
            }
            let this = Arc::clone(self);
            tokio::spawn(async move {
                this.take_over(&app).await;
                this.release(&app).await;
            });
        }
    }

    async fn take_over(&self, app: &str) {
        let snapshot = self.store.snapshot();
        if snapshot.apps.get(app).is_some_and(|a| a.removing) {
            self.finish_removal(app).await;
            return;
        }
        for deployment in snapshot.deployments_of(app) {
            let mut d = deployment.as_ref().clone();
            let previous_retired = d.previous.is_some_and(|id| {
                self.store
                    .snapshot()
                    .deployment(app, id)
                    .is_some_and(|p| p.goal != ContainerGoal::Run)
            });
            if !d.state.is_finished() && d.weight == 100 && previous_retired {
                // It had all the traffic and its predecessor was draining: finish it.
                info!(
                    app,
                    deployment = d.id,
                    "deploy: taking over a deployment past its shift; rolling it forward"
                );
                d.controller = self.me.clone();
                self.begin(&mut d, "taken over: roll forward");
                if let Some(route) = self.final_route(&d) {
                    let plain = self.plain_route(&d, &route);
                    if let Err(e) = self.put_route(app, plain).await {
                        warn!(app, error = %e, "deploy: cannot route the app");
                    }
                }
                self.end(&mut d, StepState::Done, None);
                self.succeed(&mut d).await;
                self.metrics
                    .deployments
                    .with_label_values(&[app, DeployState::Succeeded.as_str()])
                    .inc();
            } else if !d.state.is_finished() {
                let reason = format!(
                    "the strait process that ran it ({}) stopped before it finished",
                    d.controller
                );
                d.controller = self.me.clone();
                let state = self.roll_back(&mut d, reason).await;
                self.metrics
                    .deployments
                    .with_label_values(&[app, state.as_str()])
                    .inc();
            } else if d.goal == ContainerGoal::Drain {
                // A drain whose controller stopped: its containers stop after the drain
                // anyway; the record says so once they have.
                let deadline =
                    Instant::now() + d.drain.unwrap_or(d.spec.rollout.drain) + STOP_GRACE;
                while Instant::now() < deadline
                    && instances_of(&self.store.snapshot(), &d).next().is_some()
                {
                    tokio::time::sleep(POLL).await;
                }
                d.goal = ContainerGoal::Stop;
                d.updated = now();
                self.write(&d).await;
            }
        }
    }
}

fn check_text(spec: &AppSpec) -> String {
    match &spec.check {
        discovery::apps::AppCheck::Http { path } => format!("GET {path} on ${}", spec.port_env),
        discovery::apps::AppCheck::Tcp => format!("TCP connect to ${}", spec.port_env),
    }
}
