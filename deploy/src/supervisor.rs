//! The supervisor: the agent's half of a deployment, on every host that runs containers.
//!
//! It follows the store's snapshots and, every second or on each change, reconciles this
//! host's containers with what the deployments want of it (Kubernetes' kubelet loop, on
//! podman):
//!
//! * **wanted**: the slots of deployments whose goal is `run` that this agent owns
//!   ([`placement::share`]), plus the containers it already has of deployments that drain;
//! * **have**: the containers labelled with this agent's id (`podman ps`), so an agent
//!   that restarts adopts what it left running and removes its strays.
//!
//! A wanted slot without a container gets one (image pulled by digest, a free port from
//! the configured range in `$PORT`, host networking); each container is an instance of the
//! app's service, health-checked by the [`Agent`] (so it takes traffic only once it
//! passes), tagged with its deployment (`d<id>`) for the router's subsets. A container that
//! exits is restarted with back-off (1 s doubling to 30 s) and its restarts are published
//! in its instance's metadata for the controller to judge. A draining deployment's
//! instances go to maintenance (no new requests), and after the drain are deregistered
//! before their containers are stopped. When a slot moves to another agent, this one keeps
//! its container until the new owner's instance passes (make before break).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use discovery::agent::{Agent, CheckDefinition, CheckType, ServiceDefinition};
use discovery::apps::{
    AGENT_KEY, AGENT_RUNTIME_KEY, AGENT_SERVICE, AppCheck, CONTAINER_STATE_KEY, ContainerGoal,
    DEPLOYMENT_KEY, DIGEST_KEY, Deployment, LAST_EXIT_KEY, RESTARTS_KEY, SLOT_KEY, VERSION_KEY,
};
use discovery::model::{Health, validate_dns_label};
use discovery::{Snapshot, Store};
use prometheus::{IntCounterVec, IntGaugeVec, Opts, Registry};
use tracing::{info, warn};

use crate::placement::{self, LiveAgent};
use crate::podman::{
    Container, ContainerState, LABEL_AGENT, LABEL_APP, LABEL_DEPLOYMENT, LABEL_INSTANCE,
    LABEL_PORT, LABEL_SLOT, Podman, RunSpec,
};

/// How often the supervisor looks at its containers when nothing changes.
const RECONCILE_EVERY: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(30);
/// A container that ran this long since its last restart starts its back-off afresh.
const BACKOFF_RESET: Duration = Duration::from_secs(60);
/// A failed pull or start is tried again after this.
const START_RETRY: Duration = Duration::from_secs(5);
/// Agent ids are DNS labels of at most this many characters (they are part of instance ids).
pub const MAX_AGENT_ID: usize = 32;

/// How an agent runs containers.
#[derive(Debug, Clone)]
pub struct SupervisorConfig {
    /// This agent's id: unique among the agents (the host name by default).
    pub id: String,
    pub zone: String,
    /// The address the containers are reached at (they use the host's network).
    pub advertise: IpAddr,
    /// Ports handed to containers, inclusive.
    pub ports: (u16, u16),
    pub podman: PathBuf,
    /// SIGTERM to SIGKILL when a container is stopped.
    pub stop_timeout: Duration,
    /// The port of this agent's own API (its registration in `strait-agent`).
    pub api_port: u16,
    /// `user:password` for pulls from `registry_credentials_for` only (else podman's own
    /// auth file): never sent to a registry a deployment merely names.
    pub registry_credentials: Option<String>,
    pub registry_credentials_for: Option<String>,
}

impl SupervisorConfig {
    pub fn validate(&self) -> Result<(), String> {
        validate_agent_id(&self.id)?;
        validate_dns_label("agent.zone", &self.zone).map_err(|e| e.to_string())?;
        if self.ports.0 == 0 || self.ports.0 > self.ports.1 {
            return Err(format!(
                "agent.ports: `{}-{}` is not a port range (low-high, from 1)",
                self.ports.0, self.ports.1
            ));
        }
        if self.advertise.is_unspecified() {
            return Err(format!(
                "agent.advertise: `{}` is unspecified; give the address peers reach this host at",
                self.advertise
            ));
        }
        Ok(())
    }
}

/// Agent ids: DNS labels of at most [`MAX_AGENT_ID`] characters.
pub fn validate_agent_id(id: &str) -> Result<(), String> {
    validate_dns_label("agent.id", id).map_err(|e| e.to_string())?;
    if id.len() > MAX_AGENT_ID {
        return Err(format!(
            "agent.id: `{id}` is longer than {MAX_AGENT_ID} characters"
        ));
    }
    Ok(())
}

/// The default agent id: this host's name, made a DNS label.
pub fn default_agent_id() -> String {
    let name = rustix_hostname();
    let label: String = name
        .split('.')
        .next()
        .unwrap_or("")
        .to_ascii_lowercase()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(MAX_AGENT_ID)
        .collect();
    let label = label.trim_matches('-').to_string();
    if label.is_empty() {
        "agent".into()
    } else {
        label
    }
}

fn rustix_hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `strait_agent_*`: what a supervisor does.
#[derive(Clone)]
pub struct SupervisorMetrics {
    containers: IntGaugeVec,
    restarts: IntCounterVec,
    starts: IntCounterVec,
}

impl SupervisorMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = SupervisorMetrics {
            containers: IntGaugeVec::new(
                Opts::new(
                    "strait_agent_containers",
                    "This agent's containers by state (running, stopped, draining, failed)",
                ),
                &["state"],
            )?,
            restarts: IntCounterVec::new(
                Opts::new(
                    "strait_agent_container_restarts_total",
                    "Containers restarted after they exited, by app",
                ),
                &["app"],
            )?,
            starts: IntCounterVec::new(
                Opts::new(
                    "strait_agent_container_starts_total",
                    "Containers started, by app and result (ok, pull_failed, start_failed)",
                ),
                &["app", "result"],
            )?,
        };
        registry.register(Box::new(metrics.containers.clone()))?;
        registry.register(Box::new(metrics.restarts.clone()))?;
        registry.register(Box::new(metrics.starts.clone()))?;
        Ok(metrics)
    }
}

/// (app, deployment, slot).
type SlotKey = (String, u64, u32);

/// What this agent knows of one of its slots.
#[derive(Debug)]
struct Slot {
    port: u16,
    /// Restarts since the container was started (published in metadata).
    restarts: u32,
    /// Restarts in a row without a long run in between (the back-off exponent).
    streak: u32,
    last_start: Instant,
    /// Exited: restart at this time.
    restart_at: Option<Instant>,
    last_exit: Option<String>,
    /// Draining since.
    draining_since: Option<Instant>,
}

/// A slot that could not be started (pull or start failed): tried again later.
#[derive(Debug)]
struct Failure {
    error: String,
    port: u16,
    retry_at: Instant,
}

pub struct Supervisor {
    config: SupervisorConfig,
    agent: Arc<Agent>,
    podman: Podman,
    metrics: SupervisorMetrics,
    state: Mutex<SupervisorState>,
    /// Set during a binary upgrade's hand-over: the successor's supervisor takes over
    /// the same containers, so this one must not touch them.
    paused: std::sync::atomic::AtomicBool,
}

#[derive(Default)]
struct SupervisorState {
    slots: HashMap<SlotKey, Slot>,
    /// Slots with a slow action (a pull and start, a stop) running in a task of its own.
    busy: HashSet<SlotKey>,
    failures: HashMap<SlotKey, Failure>,
    pulled: HashSet<String>,
    /// Images of finished deployments already removed.
    images_removed: HashSet<String>,
}

impl Supervisor {
    /// Registers this agent in [`AGENT_SERVICE`] and starts following `snapshots`.
    pub fn start(
        config: SupervisorConfig,
        agent: Arc<Agent>,
        metrics: SupervisorMetrics,
        store: Arc<dyn Store>,
    ) -> Result<Arc<Supervisor>, String> {
        config.validate()?;
        agent
            .upsert(ServiceDefinition {
                service: AGENT_SERVICE.into(),
                id: config.id.clone(),
                address: config.advertise,
                port: config.api_port,
                ports: BTreeMap::new(),
                zone: Some(config.zone.clone()),
                tags: Vec::new(),
                weight: None,
                metadata: BTreeMap::from([
                    (AGENT_RUNTIME_KEY.into(), "podman".into()),
                    ("version".into(), env!("CARGO_PKG_VERSION").into()),
                ]),
                maintenance: false,
                checks: Vec::new(),
            })
            .map_err(|e| e.to_string())?;
        let supervisor = Arc::new(Supervisor {
            podman: Podman::new(config.podman.clone()),
            config,
            agent,
            metrics,
            state: Mutex::new(SupervisorState::default()),
            paused: std::sync::atomic::AtomicBool::new(false),
        });
        info!(
            agent = %supervisor.config.id,
            zone = %supervisor.config.zone,
            "supervisor: running containers with podman"
        );
        tokio::spawn(Arc::clone(&supervisor).run(store));
        Ok(supervisor)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, SupervisorState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Stops acting on containers (a binary upgrade hands them to the successor; the
    /// agent stops publishing at the same time).
    pub fn pause(&self) {
        self.paused
            .store(true, std::sync::atomic::Ordering::Release);
    }

    /// Acts again after `pause` (an upgrade that did not happen).
    pub fn resume(&self) {
        self.paused
            .store(false, std::sync::atomic::Ordering::Release);
    }

    async fn run(self: Arc<Self>, store: Arc<dyn Store>) {
        let mut snapshots = store.watch();
        let mut podman_failing = false;
        loop {
            let snapshot = snapshots.borrow_and_update().clone();
            // Only a snapshot known to be whole and current says what to stop: before the
            // first sync (or while ZooKeeper is away) every container would look a stray.
            let status = store.status();
            let paused = self.paused.load(std::sync::atomic::Ordering::Acquire);
            if !status.ready || !status.connected || paused {
                tokio::select! {
                    changed = snapshots.changed() => if changed.is_err() { return },
                    () = tokio::time::sleep(RECONCILE_EVERY) => {}
                }
                continue;
            }
            match Self::reconcile(&self, &snapshot).await {
                Ok(()) => {
                    if podman_failing {
                        info!("supervisor: podman answers again");
                        podman_failing = false;
                    }
                }
                Err(error) => {
                    if !podman_failing {
                        warn!(%error, "supervisor: cannot list containers; retrying");
                        podman_failing = true;
                    }
                }
            }
            tokio::select! {
                changed = snapshots.changed() => if changed.is_err() { return },
                () = tokio::time::sleep(RECONCILE_EVERY) => {}
            }
        }
    }

    fn instance_id(&self, deployment: &Deployment, slot: u32) -> String {
        format!("{}-{}", deployment.instance_id(slot), self.config.id)
    }

    /// One pass: make this host's containers what the snapshot wants of it.
    async fn reconcile(
        self: &Arc<Self>,
        snapshot: &Snapshot,
    ) -> Result<(), crate::podman::PodmanError> {
        let me = self.config.id.as_str();
        let mut agents = placement::live_agents(snapshot);
        if !agents.iter().any(|a| a.id == me) {
            // Not (yet) in the snapshot: still ours to run.
            agents.push(LiveAgent {
                id: me.to_string(),
                zone: self.config.zone.clone(),
                address: self.config.advertise,
            });
        }
        // Read before listing: a start that ends in between is then seen as busy (its
        // container may be missing from the list), never as a slot to start again.
        let busy = self.lock().busy.clone();
        let containers = self.podman.list(me).await?;
        let mut have: HashMap<SlotKey, Container> = HashMap::new();
        for container in containers {
            match slot_of(&container) {
                Some(key) => {
                    have.insert(key, container);
                }
                None => {
                    warn!(container = %container.name, "supervisor: removing a container with unreadable labels");
                    let _ = self
                        .podman
                        .remove(&container.name, self.config.stop_timeout)
                        .await;
                }
            }
        }

        // What is wanted of this agent, and what it runs now.
        let mut wanted: HashMap<SlotKey, Arc<Deployment>> = HashMap::new();
        let mut draining: HashMap<SlotKey, Arc<Deployment>> = HashMap::new();
        for deployment in snapshot.deployments.values().flat_map(|d| d.values()) {
            match deployment.goal {
                ContainerGoal::Run => {
                    for slot in placement::share(deployment, me, &agents) {
                        let key = (deployment.app.clone(), deployment.id, slot);
                        wanted.insert(key, Arc::clone(deployment));
                    }
                }
                ContainerGoal::Drain => {
                    for key in have
                        .keys()
                        .filter(|(app, id, _)| *app == deployment.app && *id == deployment.id)
                    {
                        draining.insert(key.clone(), Arc::clone(deployment));
                    }
                }
                ContainerGoal::Stop => {}
            }
        }

        let mut counts: BTreeMap<&'static str, i64> = BTreeMap::new();
        // Containers this agent has.
        for (key, container) in &have {
            if busy.contains(key) {
                *counts.entry("busy").or_default() += 1;
                continue;
            }
            // A record this strait cannot read (a newer one wrote it): not a stray.
            if snapshot
                .unreadable_deployments
                .contains(&(std::sync::Arc::from(key.0.as_str()), key.1))
            {
                *counts.entry("unknown").or_default() += 1;
                continue;
            }
            if let Some(deployment) = wanted.get(key) {
                let state = self.keep_running(key, container, deployment).await;
                *counts.entry(state).or_default() += 1;
            } else if let Some(deployment) = draining.get(key) {
                *counts.entry("draining").or_default() += 1;
                if self.drained(key, container, deployment) {
                    info!(container = %container.name, "supervisor: drained; stopping the container");
                    self.stop_in_background(key, &container.name, deployment);
                }
            } else if let Some(deployment) = self.moved_away(snapshot, key) {
                // Its slot moved to another agent: keep serving until that one's passes.
                if self.successor_passing(snapshot, &deployment, key.2) {
                    info!(container = %container.name, "supervisor: slot moved to another agent; stopping here");
                    self.stop_in_background(key, &container.name, &deployment);
                } else {
                    let state = self.keep_running(key, container, &deployment).await;
                    *counts.entry(state).or_default() += 1;
                }
            } else {
                info!(container = %container.name, "supervisor: removing a container no deployment wants");
                let instance = format!("{}-{}-{}-{me}", key.0, key.1, key.2);
                self.remove_in_background(key, &container.name, &key.0, &instance);
            }
        }
        // Wanted slots without a container.
        for (key, deployment) in &wanted {
            if have.contains_key(key) || busy.contains(key) {
                continue;
            }
            let state = self.start_in_background(key, deployment);
            *counts.entry(state).or_default() += 1;
        }
        // Instances left registered for containers that are gone.
        let known: HashSet<String> = have
            .keys()
            .chain(wanted.keys())
            .chain(busy.iter())
            .map(|(app, id, slot)| format!("{app}-{id}-{slot}-{me}"))
            .collect();
        for (service, id) in self.agent.instances() {
            if service != AGENT_SERVICE
                && id.ends_with(&format!("-{me}"))
                && !known.contains(&id)
                && is_deployed_instance(snapshot, &service, &id)
            {
                self.deregister(&service, &id).await;
            }
        }
        {
            let mut state = self.lock();
            let SupervisorState { slots, busy, .. } = &mut *state;
            slots.retain(|key, _| {
                have.contains_key(key) || wanted.contains_key(key) || busy.contains(key)
            });
            state.failures.retain(|key, _| wanted.contains_key(key));
        }
        for name in [
            "running", "stopped", "draining", "failed", "starting", "busy", "unknown",
        ] {
            self.metrics
                .containers
                .with_label_values(&[name])
                .set(counts.get(name).copied().unwrap_or(0));
        }
        self.remove_unused_images(snapshot, &have).await;
        Ok(())
    }

    /// The deployment of a slot this agent has a container for but no longer owns (another
    /// agent does), if the deployment still runs.
    fn moved_away(&self, snapshot: &Snapshot, key: &SlotKey) -> Option<Arc<Deployment>> {
        let deployment = snapshot.deployment(&key.0, key.1)?;
        (deployment.goal == ContainerGoal::Run && deployment.slots().any(|(_, s)| s == key.2))
            .then(|| Arc::clone(deployment))
    }

    /// Whether another agent's instance of this slot passes.
    fn successor_passing(&self, snapshot: &Snapshot, deployment: &Deployment, slot: u32) -> bool {
        let slot = slot.to_string();
        snapshot
            .services
            .get(deployment.app.as_str())
            .is_some_and(|service| {
                service.instances.values().any(|i| {
                    deployment.owns(i)
                        && i.spec.health == Health::Passing
                        && i.spec.metadata.get(SLOT_KEY) == Some(&slot)
                        && i.spec.metadata.get(AGENT_KEY) != Some(&self.config.id)
                })
            })
    }

    /// A wanted container that exists: adopt it, restart it when it exited, keep its
    /// instance registered. Returns its state for the gauge.
    async fn keep_running(
        &self,
        key: &SlotKey,
        container: &Container,
        deployment: &Deployment,
    ) -> &'static str {
        let now = Instant::now();
        let port = container
            .labels
            .get(LABEL_PORT)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let mut restart = false;
        let (state_name, restarts, last_exit) = {
            let mut state = self.lock();
            let slot = state.slots.entry(key.clone()).or_insert_with(|| {
                info!(container = %container.name, "supervisor: adopting a running container");
                Slot {
                    port,
                    restarts: 0,
                    streak: 0,
                    last_start: now,
                    restart_at: None,
                    last_exit: None,
                    draining_since: None,
                }
            });
            slot.draining_since = None;
            let name = match container.state {
                ContainerState::Running => {
                    if now.saturating_duration_since(slot.last_start) > BACKOFF_RESET {
                        slot.streak = 0;
                    }
                    "running"
                }
                ContainerState::Stopped => {
                    match slot.restart_at {
                        None => {
                            slot.restarts += 1;
                            slot.streak += 1;
                            let backoff = Duration::from_secs(1)
                                .saturating_mul(1 << slot.streak.saturating_sub(1).min(5))
                                .min(MAX_BACKOFF);
                            slot.restart_at = Some(now + backoff);
                            slot.last_exit = Some(format!("exit code {}", container.exit_code));
                            self.metrics.restarts.with_label_values(&[&key.0]).inc();
                            warn!(
                                container = %container.name,
                                exit_code = container.exit_code,
                                restarts = slot.restarts,
                                backoff = %humantime::format_duration(backoff),
                                "supervisor: container exited; restarting after back-off"
                            );
                        }
                        Some(at) if at <= now => {
                            slot.restart_at = None;
                            slot.last_start = now;
                            restart = true;
                        }
                        Some(_) => {}
                    }
                    "stopped"
                }
                ContainerState::Other => "running",
            };
            (name, slot.restarts, slot.last_exit.clone())
        };
        if restart && let Err(e) = self.podman.restart(&container.name).await {
            warn!(container = %container.name, error = %e, "supervisor: cannot restart the container");
        }
        if restarts > 0 && last_exit.as_deref().is_some_and(|e| !e.contains(':')) {
            // The container's last words, once, for the deployment's reason.
            let tail = self.podman.logs_tail(&container.name, 3).await;
            if !tail.is_empty()
                && let Some(slot) = self.lock().slots.get_mut(key)
            {
                let text: String = tail.chars().take(200).collect();
                slot.last_exit = Some(format!("exit code {}: {text}", container.exit_code));
            }
        }
        let container_state = if state_name == "stopped" {
            "exited"
        } else {
            "running"
        };
        self.register(deployment, key.2, port, container_state, false);
        state_name
    }

    /// A draining deployment's container: in maintenance until the drain is over (then
    /// `true`: stop it).
    fn drained(&self, key: &SlotKey, container: &Container, deployment: &Deployment) -> bool {
        let now = Instant::now();
        let port = container
            .labels
            .get(LABEL_PORT)
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        let since = {
            let mut state = self.lock();
            let slot = state.slots.entry(key.clone()).or_insert_with(|| Slot {
                port,
                restarts: 0,
                streak: 0,
                last_start: now,
                restart_at: None,
                last_exit: None,
                draining_since: None,
            });
            *slot.draining_since.get_or_insert(now)
        };
        let drain = deployment.drain.unwrap_or(deployment.spec.rollout.drain);
        if now.saturating_duration_since(since) < drain {
            self.register(deployment, key.2, port, "draining", true);
            return false;
        }
        true
    }

    /// Marks a slot busy; `false` if it already is.
    fn begin_busy(&self, key: &SlotKey) -> bool {
        self.lock().busy.insert(key.clone())
    }

    fn end_busy(&self, key: &SlotKey) {
        self.lock().busy.remove(key);
    }

    /// `stop`, in a task of its own: a container slow to stop holds up no other.
    fn stop_in_background(
        self: &Arc<Self>,
        key: &SlotKey,
        container: &str,
        deployment: &Deployment,
    ) {
        if !self.begin_busy(key) {
            return;
        }
        let (this, key, container) = (Arc::clone(self), key.clone(), container.to_string());
        let deployment = deployment.clone();
        tokio::spawn(async move {
            this.stop(&key, &container, &deployment).await;
            this.end_busy(&key);
        });
    }

    /// A stray (no deployment wants it): deregistered, stopped and removed, in a task.
    fn remove_in_background(
        self: &Arc<Self>,
        key: &SlotKey,
        container: &str,
        service: &str,
        instance: &str,
    ) {
        if !self.begin_busy(key) {
            return;
        }
        let (this, key, container) = (Arc::clone(self), key.clone(), container.to_string());
        let (service, instance) = (service.to_string(), instance.to_string());
        tokio::spawn(async move {
            this.deregister(&service, &instance).await;
            if let Err(e) = this
                .podman
                .remove(&container, this.config.stop_timeout)
                .await
            {
                warn!(%container, error = %e, "supervisor: cannot remove a stray container");
            }
            this.lock().slots.remove(&key);
            this.end_busy(&key);
        });
    }

    /// `start_slot`, in a task of its own (a pull can take minutes). Returns the gauge state.
    fn start_in_background(
        self: &Arc<Self>,
        key: &SlotKey,
        deployment: &Arc<Deployment>,
    ) -> &'static str {
        // Copied out first: the guard of an `if let` scrutinee lives through its body, and
        // `register_failed` takes the lock again.
        let waiting = self
            .lock()
            .failures
            .get(key)
            .filter(|failure| failure.retry_at > Instant::now())
            .map(|failure| (failure.error.clone(), failure.port));
        if let Some((error, port)) = waiting {
            self.register_failed(deployment, key.2, port, &error);
            return "failed";
        }
        if !self.begin_busy(key) {
            return "starting";
        }
        let (this, key, deployment) = (Arc::clone(self), key.clone(), Arc::clone(deployment));
        tokio::spawn(async move {
            this.start_slot(&key, &deployment).await;
            this.end_busy(&key);
        });
        "starting"
    }

    /// Deregisters a slot's instance, then stops and removes its container.
    async fn stop(&self, key: &SlotKey, container: &str, deployment: &Deployment) {
        let instance = self.instance_id(deployment, key.2);
        self.deregister(&deployment.app, &instance).await;
        if let Err(e) = self
            .podman
            .remove(container, self.config.stop_timeout)
            .await
        {
            warn!(%container, error = %e, "supervisor: cannot stop the container");
            return;
        }
        self.lock().slots.remove(key);
    }

    async fn deregister(&self, service: &str, id: &str) {
        if let Err(error) = self.agent.remove(service, id).await {
            warn!(%service, %id, %error, "supervisor: cannot deregister");
        }
    }

    /// Pulls and starts a wanted slot's container. Returns its state for the gauge.
    async fn start_slot(&self, key: &SlotKey, deployment: &Deployment) -> &'static str {
        let now = Instant::now();
        let retry_port = self.lock().failures.get(key).map(|f| f.port);
        let Some(port) = retry_port.or_else(|| self.free_port()) else {
            self.record_failure(
                key,
                deployment,
                0,
                "no free port left in agent.ports".into(),
            );
            return "failed";
        };
        let pulled = self.lock().pulled.contains(&deployment.image);
        if !pulled {
            info!(image = %deployment.image, "supervisor: pulling");
            let tls_verify = !is_loopback_registry(&deployment.image);
            if let Err(e) = self
                .podman
                .pull(
                    &deployment.image,
                    tls_verify,
                    self.credentials_for(&deployment.image),
                )
                .await
            {
                self.metrics
                    .starts
                    .with_label_values(&[&deployment.app, "pull_failed"])
                    .inc();
                self.record_failure(
                    key,
                    deployment,
                    port,
                    format!("cannot pull {}: {e}", deployment.image),
                );
                return "failed";
            }
            self.lock().pulled.insert(deployment.image.clone());
        }
        let name = format!(
            "strait-{}-{}-{}-{}",
            self.config.id, deployment.app, deployment.id, key.2
        );
        let instance = self.instance_id(deployment, key.2);
        let mut env = deployment.spec.env.clone();
        env.insert(deployment.spec.port_env.clone(), port.to_string());
        let spec = RunSpec {
            name: name.clone(),
            image: deployment.image.clone(),
            env,
            labels: BTreeMap::from([
                (LABEL_AGENT.into(), self.config.id.clone()),
                (LABEL_APP.into(), deployment.app.clone()),
                (LABEL_DEPLOYMENT.into(), deployment.id.to_string()),
                (LABEL_SLOT.into(), key.2.to_string()),
                (LABEL_INSTANCE.into(), instance),
                (LABEL_PORT.into(), port.to_string()),
            ]),
        };
        // A container of that name left behind (created, never listed as ours).
        let _ = self.podman.remove(&name, Duration::from_secs(1)).await;
        if let Err(e) = self.podman.start_new(&spec).await {
            // The image may be gone (`podman rmi`, a prune): the next try pulls it again
            // (by digest) instead of failing on `--pull=never` for ever.
            self.lock().pulled.remove(&deployment.image);
            self.metrics
                .starts
                .with_label_values(&[&deployment.app, "start_failed"])
                .inc();
            self.record_failure(
                key,
                deployment,
                port,
                format!("cannot start the container: {e}"),
            );
            return "failed";
        }
        self.metrics
            .starts
            .with_label_values(&[&deployment.app, "ok"])
            .inc();
        info!(
            app = %deployment.app,
            deployment = deployment.id,
            slot = key.2,
            port,
            container = %name,
            "supervisor: container started"
        );
        {
            let mut state = self.lock();
            state.failures.remove(key);
            state.slots.insert(
                key.clone(),
                Slot {
                    port,
                    restarts: 0,
                    streak: 0,
                    last_start: now,
                    restart_at: None,
                    last_exit: None,
                    draining_since: None,
                },
            );
        }
        self.register(deployment, key.2, port, "running", false);
        "starting"
    }

    fn record_failure(&self, key: &SlotKey, deployment: &Deployment, port: u16, error: String) {
        warn!(app = %deployment.app, deployment = deployment.id, slot = key.2, %error, "supervisor: cannot start a container; will retry");
        self.lock().failures.insert(
            key.clone(),
            Failure {
                error: error.clone(),
                port,
                retry_at: Instant::now() + START_RETRY,
            },
        );
        self.register_failed(deployment, key.2, port, &error);
    }

    /// The configured credentials, if `image` is on the registry they are for.
    fn credentials_for(&self, image: &str) -> Option<(&str, &str)> {
        let registry = self.config.registry_credentials_for.as_deref()?;
        let credentials = self.config.registry_credentials.as_deref()?;
        (image.split('/').next() == Some(registry)).then_some((registry, credentials))
    }

    /// A port of the range no slot of this agent's uses and nothing listens on now.
    fn free_port(&self) -> Option<u16> {
        let used: HashSet<u16> = {
            let state = self.lock();
            state
                .slots
                .values()
                .map(|s| s.port)
                .chain(state.failures.values().map(|f| f.port))
                .collect()
        };
        let (low, high) = self.config.ports;
        let span = u32::from(high - low) + 1;
        let offset = rand_offset(span);
        (0..span)
            .map(|i| low + ((offset + i) % span) as u16)
            .filter(|port| !used.contains(port))
            .find(|port| std::net::TcpListener::bind((self.config.advertise, *port)).is_ok())
    }

    /// The instance of a slot, as the agent checks and publishes it.
    fn definition(
        &self,
        deployment: &Deployment,
        slot: u32,
        port: u16,
        container_state: &str,
        maintenance: bool,
    ) -> ServiceDefinition {
        let spec = &deployment.spec;
        let check = match &spec.check {
            AppCheck::Http { path } => CheckDefinition {
                id: None,
                kind: CheckType::Http,
                path: Some(path.clone()),
                status: None,
                port: None,
                ttl: None,
                interval: spec.check_interval,
                timeout: spec.check_interval.min(Duration::from_secs(2)),
                rise: 2,
                fall: 2,
            },
            AppCheck::Tcp => CheckDefinition {
                id: None,
                kind: CheckType::Tcp,
                path: None,
                status: None,
                port: None,
                ttl: None,
                interval: spec.check_interval,
                timeout: spec.check_interval.min(Duration::from_secs(2)),
                rise: 2,
                fall: 2,
            },
        };
        let (restarts, last_exit) = self
            .lock()
            .slots
            .get(&(deployment.app.clone(), deployment.id, slot))
            .map(|s| (s.restarts, s.last_exit.clone()))
            .unwrap_or_default();
        let mut metadata = BTreeMap::from([
            (DEPLOYMENT_KEY.to_string(), deployment.id.to_string()),
            (SLOT_KEY.to_string(), slot.to_string()),
            (AGENT_KEY.to_string(), self.config.id.clone()),
            (DIGEST_KEY.to_string(), deployment.digest.clone()),
            (CONTAINER_STATE_KEY.to_string(), container_state.to_string()),
            (RESTARTS_KEY.to_string(), restarts.to_string()),
        ]);
        if let Some(version) = version_of(&deployment.spec.image) {
            metadata.insert(VERSION_KEY.to_string(), version);
        }
        if let Some(exit) = last_exit {
            metadata.insert(LAST_EXIT_KEY.to_string(), truncate(&exit, 500));
        }
        ServiceDefinition {
            service: deployment.app.clone(),
            id: self.instance_id(deployment, slot),
            address: self.config.advertise,
            port: port.max(1),
            ports: BTreeMap::new(),
            zone: Some(self.config.zone.clone()),
            tags: vec![deployment.tag()],
            weight: None,
            metadata,
            maintenance,
            checks: vec![check],
        }
    }

    fn register(
        &self,
        deployment: &Deployment,
        slot: u32,
        port: u16,
        container_state: &str,
        maintenance: bool,
    ) {
        let definition = self.definition(deployment, slot, port, container_state, maintenance);
        let id = definition.id.clone();
        if let Err(e) = self.agent.upsert(definition) {
            warn!(%id, error = %e, "supervisor: cannot register the instance");
            return;
        }
        self.agent
            .set_maintenance(&deployment.app, &id, maintenance);
    }

    /// A slot that could not start: registered critical with the error, so the controller
    /// (and `strait svc ls`) can say why.
    fn register_failed(&self, deployment: &Deployment, slot: u32, port: u16, error: &str) {
        let mut definition = self.definition(deployment, slot, port, "failed", false);
        definition
            .metadata
            .insert(LAST_EXIT_KEY.to_string(), truncate(error, 500));
        let id = definition.id.clone();
        if let Err(e) = self.agent.upsert(definition) {
            warn!(%id, error = %e, "supervisor: cannot register the failed instance");
        }
    }

    /// Images of finished deployments that no container of this agent's uses.
    async fn remove_unused_images(&self, snapshot: &Snapshot, have: &HashMap<SlotKey, Container>) {
        let in_use: HashSet<&str> = snapshot
            .deployments
            .values()
            .flat_map(|d| d.values())
            .filter(|d| d.goal != ContainerGoal::Stop)
            .map(|d| d.image.as_str())
            .collect();
        let mut unused = Vec::new();
        {
            let state = self.lock();
            for deployment in snapshot.deployments.values().flat_map(|d| d.values()) {
                let image = deployment.image.as_str();
                let running_here = have
                    .keys()
                    .any(|(app, id, _)| *app == deployment.app && *id == deployment.id);
                if deployment.goal == ContainerGoal::Stop
                    && !in_use.contains(image)
                    && !running_here
                    && state.pulled.contains(image)
                    && !state.images_removed.contains(image)
                {
                    unused.push(image.to_string());
                }
            }
        }
        for image in unused {
            if self.podman.remove_image(&image).await.is_ok() {
                let mut state = self.lock();
                state.pulled.remove(&image);
                state.images_removed.insert(image);
            }
        }
    }
}

/// (app, deployment, slot) from a container's labels.
fn slot_of(container: &Container) -> Option<SlotKey> {
    let labels = &container.labels;
    Some((
        labels.get(LABEL_APP)?.clone(),
        labels.get(LABEL_DEPLOYMENT)?.parse().ok()?,
        labels.get(LABEL_SLOT)?.parse().ok()?,
    ))
}

/// Whether `service/id` is a deployed container's instance (not a `[[service]]` of the
/// agent's file that happens to end like one).
fn is_deployed_instance(snapshot: &Snapshot, service: &str, id: &str) -> bool {
    snapshot
        .instance(service, id)
        .is_some_and(|i| i.spec.metadata.contains_key(DEPLOYMENT_KEY))
}

/// The tag of `registry/repo:tag` (what `version` metadata shows), if it has one.
fn version_of(image: &str) -> Option<String> {
    let name = image.split('@').next()?;
    let last = name.rsplit('/').next()?;
    let (_, tag) = last.split_once(':')?;
    (!tag.is_empty()).then(|| tag.to_string())
}

fn truncate(text: &str, max: usize) -> String {
    text.chars().take(max).collect()
}

/// Loopback registries speak plain HTTP (as docker and `strait build` treat them).
fn is_loopback_registry(image: &str) -> bool {
    let host = image.split('/').next().unwrap_or("");
    let host = host.rsplit_once(':').map_or(host, |(h, port)| {
        if port.bytes().all(|b| b.is_ascii_digit()) {
            h
        } else {
            host
        }
    });
    host == "localhost"
        || host
            .trim_start_matches('[')
            .trim_end_matches(']')
            .parse::<IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

fn rand_offset(span: u32) -> u32 {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos());
    (nanos ^ std::process::id()) % span
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn registries_on_loopback_are_plain_http() {
        assert!(is_loopback_registry("127.0.0.1:5000/shop/web@sha256:00"));
        assert!(is_loopback_registry("localhost/web@sha256:00"));
        assert!(is_loopback_registry("[::1]:5000/web@sha256:00"));
        assert!(!is_loopback_registry("registry.example.com/web@sha256:00"));
        assert!(!is_loopback_registry("10.0.0.1:5000/web@sha256:00"));
    }

    #[test]
    fn versions_come_from_tags() {
        assert_eq!(
            version_of("127.0.0.1:5000/shop/web:v2").as_deref(),
            Some("v2")
        );
        assert_eq!(version_of("127.0.0.1:5000/shop/web@sha256:00"), None);
        assert_eq!(version_of("web:1.2@sha256:00").as_deref(), Some("1.2"));
    }

    #[test]
    fn agent_ids() {
        assert!(validate_agent_id("host-1").is_ok());
        assert!(validate_agent_id("Host").is_err());
        assert!(validate_agent_id(&"a".repeat(33)).is_err());
        let id = default_agent_id();
        assert!(validate_agent_id(&id).is_ok(), "{id}");
    }
}
