//! The host-local agent (SmartStack's nerve, Consul's agent): registers the services
//! defined in a file as instances owned by this process, runs their health checks, and
//! writes health changes to the store, from where they reach the router and DNS through
//! the normal snapshot path.
//!
//! Checks: HTTP (GET a path, expect a status range), TCP (connect), TTL (the app calls
//! `PUT /v1/agent/checks/{id}/pass`). HTTP and TCP checks have an interval (with ±10%
//! jitter so checks do not synchronise), a timeout, and rise/fall counts: a check turns
//! passing after `rise` successes in a row and critical after `fall` failures in a row. A
//! TTL check passes on each heartbeat and turns critical when `ttl` has gone by without
//! one, as Consul's do. An instance is passing when all its checks are, critical
//! otherwise; maintenance mode overrides both. While the store is unreachable checks keep
//! running and the latest state is written when it is back; and every
//! [`ANTI_ENTROPY`] the agent compares what the store holds with what it last wrote, and
//! writes it again over any other (Consul's anti-entropy).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tracing::{info, warn};

use crate::lease::Leases;
use crate::model::{Health, Instance, InstanceSpec};
use crate::store::Store;

/// Where the agent's instances go: the store of this process (through `Leases`, owned by
/// this process's session), or a remote strait's admin API under a lease (the standalone
/// `strait agent` against an embedded store).
#[async_trait::async_trait]
pub trait Registrar: Send + Sync + 'static {
    async fn register(&self, instance: Instance) -> Result<(), String>;
    async fn deregister(&self, service: &str, id: &str) -> Result<(), String>;
    /// Whether the store still holds the instance as far as this registrar knows; `false`
    /// makes the agent publish it again (after an outage, a new session, a lost lease).
    fn holds(&self, service: &str, id: &str) -> bool;
    /// The health the store holds for the instance (`None`: it holds no such instance),
    /// for the periodic anti-entropy pass; an error skips that pass.
    async fn stored_health(&self, service: &str, id: &str) -> Result<Option<Health>, String>;
}

/// How often the agent checks that the store still holds the health it published.
pub const ANTI_ENTROPY: Duration = Duration::from_secs(5);

/// Registration in this process's own store.
pub struct LocalRegistrar {
    pub store: Arc<dyn Store>,
    pub leases: Arc<Leases>,
}

#[async_trait::async_trait]
impl Registrar for LocalRegistrar {
    async fn register(&self, instance: Instance) -> Result<(), String> {
        self.leases
            .register(instance, None)
            .await
            .map_err(|e| e.to_string())
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<(), String> {
        self.leases
            .deregister(service, id)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    fn holds(&self, service: &str, id: &str) -> bool {
        self.store.snapshot().instance(service, id).is_some()
    }

    async fn stored_health(&self, service: &str, id: &str) -> Result<Option<Health>, String> {
        Ok(self
            .store
            .snapshot()
            .instance(service, id)
            .map(|i| i.spec.health))
    }
}

fn default_interval() -> Duration {
    Duration::from_secs(5)
}
fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_rise() -> u32 {
    2
}
fn default_fall() -> u32 {
    2
}
fn default_status() -> String {
    "200-399".into()
}

/// What a check does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CheckKind {
    /// `GET http://<address>:<port><path>`; passing when the status is in range.
    Http {
        path: String,
        status: (u16, u16),
        port: Option<u16>,
    },
    /// A TCP connect to the instance (or `port`).
    Tcp { port: Option<u16> },
    /// Passing while the application calls `PUT /v1/agent/checks/{id}/pass` at least
    /// every `ttl`.
    Ttl { ttl: Duration },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CheckType {
    Http,
    Tcp,
    Ttl,
}

fn default_path() -> String {
    "/".into()
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckDefinition {
    /// Check id (for TTL passes); `<instance id>` + `:` + index by default.
    #[serde(default)]
    pub id: Option<String>,
    pub kind: CheckType,
    /// HTTP: the path to GET (default `/`).
    #[serde(default)]
    pub path: Option<String>,
    /// HTTP: passing statuses, `200-399` (default) or one status.
    #[serde(default)]
    pub status: Option<String>,
    /// HTTP and TCP: the port to check (default: the instance's port).
    #[serde(default)]
    pub port: Option<u16>,
    /// TTL: how long a pass lasts.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    #[serde(default = "default_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "default_rise")]
    pub rise: u32,
    #[serde(default = "default_fall")]
    pub fall: u32,
}

/// One local service instance (`[[service]]` in the agent file).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceDefinition {
    pub service: String,
    pub id: String,
    pub address: IpAddr,
    pub port: u16,
    #[serde(default)]
    pub ports: BTreeMap<String, u16>,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub weight: Option<u16>,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Start drained (no traffic, no DNS answers).
    #[serde(default)]
    pub maintenance: bool,
    #[serde(default, rename = "check")]
    pub checks: Vec<CheckDefinition>,
}

/// The agent file: `[[service]]` tables.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AgentFile {
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceDefinition>,
}

impl CheckDefinition {
    /// The check this definition describes, or what is wrong with it.
    pub fn kind(&self) -> Result<CheckKind, String> {
        let misplaced = |field: &str| format!("`{field}` does not apply to {:?} checks", self.kind);
        match self.kind {
            CheckType::Http => {
                if self.ttl.is_some() {
                    return Err(misplaced("ttl"));
                }
                Ok(CheckKind::Http {
                    path: self.path.clone().unwrap_or_else(default_path),
                    status: parse_status_range(
                        self.status.as_deref().unwrap_or(&default_status()),
                    )?,
                    port: self.port,
                })
            }
            CheckType::Tcp => {
                if self.ttl.is_some() || self.path.is_some() || self.status.is_some() {
                    return Err(misplaced("ttl/path/status"));
                }
                Ok(CheckKind::Tcp { port: self.port })
            }
            CheckType::Ttl => {
                if self.path.is_some() || self.status.is_some() || self.port.is_some() {
                    return Err(misplaced("path/status/port"));
                }
                let ttl = self.ttl.ok_or("a ttl check needs `ttl`")?;
                Ok(CheckKind::Ttl { ttl })
            }
        }
    }
}

impl ServiceDefinition {
    fn instance(&self, health: Health) -> Result<Instance, crate::model::ModelError> {
        let mut spec = InstanceSpec::new(self.address, self.port);
        spec.ports = self.ports.clone();
        spec.zone = self.zone.clone();
        spec.tags = self.tags.clone();
        if let Some(weight) = self.weight {
            spec.weight = weight;
        }
        spec.metadata = self.metadata.clone();
        spec.health = health;
        Instance::new(&self.service, &self.id, spec)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Config(String),
    #[error("service `{service}/{id}`: {error}")]
    Invalid {
        service: String,
        id: String,
        error: crate::model::ModelError,
    },
}

/// Parses and validates an agent file's text (errors name the file, line and key).
pub fn parse(source: &Path, text: &str) -> Result<AgentFile, AgentError> {
    let file: AgentFile = config::parse(config::Source::File(source.to_path_buf()), text)
        .map_err(|e| AgentError::Config(e.to_string()))?;
    let mut ids = std::collections::BTreeSet::new();
    for def in &file.services {
        validate_definition(def).map_err(|e| match e {
            AgentError::Config(message) => {
                AgentError::Config(format!("{}: {message}", source.display()))
            }
            invalid => invalid,
        })?;
        if !ids.insert((def.service.clone(), def.id.clone())) {
            return Err(AgentError::Config(format!(
                "{}: `{}/{}` is defined twice",
                source.display(),
                def.service,
                def.id
            )));
        }
    }
    Ok(file)
}

fn parse_status_range(s: &str) -> Result<(u16, u16), String> {
    let parse = |v: &str| {
        v.trim()
            .parse::<u16>()
            .map_err(|_| format!("`{s}` is not a status or a range like 200-399"))
    };
    match s.split_once('-') {
        Some((a, b)) => Ok((parse(a)?, parse(b)?)),
        None => parse(s).map(|v| (v, v)),
    }
}

/// State of one check.
#[derive(Debug)]
struct CheckState {
    passing: bool,
    successes: u32,
    failures: u32,
    /// TTL checks: when the app last said it is alive.
    last_pass: Option<Instant>,
    /// HTTP and TCP checks: when the next run is due.
    next_run: Instant,
}

/// An instance's key: (service, id).
type Key = (String, String);

struct Local {
    definition: ServiceDefinition,
    checks: Vec<CheckState>,
    maintenance: bool,
    /// The health the check loop last wrote successfully (`None`: not yet, or the write
    /// failed and must be retried).
    written: Option<Health>,
    /// The health last written, and when (anti-entropy compares the store with it, and
    /// leaves fresh writes alone: a watch-fed snapshot may not show them yet).
    published: Option<(Health, Instant)>,
    /// Anti-entropy found the store holding something else: write again.
    republish: bool,
}

impl Local {
    /// A new instance's state. `passing`: its checks start as passed (an adopted instance
    /// the predecessor published as passing), else they must pass `rise` times first.
    fn new(definition: ServiceDefinition, passing: bool) -> Local {
        let now = Instant::now();
        Local {
            checks: definition
                .checks
                .iter()
                .map(|check| CheckState {
                    passing,
                    successes: if passing { check.rise } else { 0 },
                    failures: 0,
                    last_pass: passing.then_some(now),
                    next_run: now,
                })
                .collect(),
            maintenance: definition.maintenance,
            written: None,
            published: None,
            republish: false,
            definition,
        }
    }

    fn health(&self) -> Health {
        if self.maintenance {
            Health::Maintenance
        } else if self.checks.iter().all(|c| c.passing) {
            Health::Passing
        } else {
            Health::Critical
        }
    }

    /// The check `check_id` names: its explicit id, or `<instance id>:<index>`.
    fn check_index(&self, check_id: &str) -> Option<usize> {
        self.definition
            .checks
            .iter()
            .enumerate()
            .position(|(c, check)| match &check.id {
                Some(id) => id == check_id,
                None => check_id
                    .strip_prefix(self.definition.id.as_str())
                    .and_then(|rest| rest.strip_prefix(':'))
                    .is_some_and(|index| index.parse() == Ok(c)),
            })
    }
}

/// Why a heartbeat was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PassError {
    /// No check has that id.
    Unknown,
    /// The check is an HTTP or TCP check: only its own results move it.
    NotTtl,
}

/// The running agent.
pub struct Agent {
    registrar: Arc<dyn Registrar>,
    locals: Mutex<BTreeMap<Key, Local>>,
    /// Held while the check loop writes and while an instance is removed, so a removal
    /// never races a write that would register the instance again.
    writing: tokio::sync::Mutex<()>,
    /// Bumped by `stop` and `resume`: a check loop of an older generation ends.
    generation: std::sync::atomic::AtomicU64,
    /// Instances a predecessor (binary upgrade) published as passing and that are not
    /// defined yet: one added later (a container the supervisor adopts) starts passing.
    adopted_passing: Mutex<std::collections::BTreeSet<Key>>,
}

/// Checks one definition as `parse` does for a file (errors name the instance).
pub fn validate_definition(def: &ServiceDefinition) -> Result<(), AgentError> {
    def.instance(Health::Passing)
        .map_err(|error| AgentError::Invalid {
            service: def.service.clone(),
            id: def.id.clone(),
            error,
        })?;
    for check in &def.checks {
        if check.rise == 0 || check.fall == 0 || check.interval.is_zero() || check.timeout.is_zero()
        {
            return Err(AgentError::Config(format!(
                "`{}/{}`: check interval, timeout, rise and fall must be greater than 0",
                def.service, def.id
            )));
        }
        check
            .kind()
            .map_err(|e| AgentError::Config(format!("`{}/{}`: check: {e}", def.service, def.id)))?;
    }
    Ok(())
}

impl Agent {
    /// Registers every defined instance and starts its checks. Instances start critical
    /// when they have checks (until the checks pass `rise` times), passing otherwise.
    pub fn start(file: AgentFile, registrar: Arc<dyn Registrar>) -> Arc<Agent> {
        Self::start_adopting(file, registrar, &[])
    }

    /// As `start`, after a binary upgrade: an instance the predecessor had published as
    /// passing starts passing (its checks go on from there), so the upgrade does not
    /// take it out of service for `rise` check intervals.
    pub fn start_adopting(
        file: AgentFile,
        registrar: Arc<dyn Registrar>,
        adopted: &[Instance],
    ) -> Arc<Agent> {
        let locals: BTreeMap<Key, Local> = file
            .services
            .into_iter()
            .map(|definition| {
                let passing = adopted.iter().any(|instance| {
                    instance.service == definition.service
                        && instance.id == definition.id
                        && instance.spec.health == Health::Passing
                });
                let key = (definition.service.clone(), definition.id.clone());
                (key, Local::new(definition, passing))
            })
            .collect();
        let adopted_passing = adopted
            .iter()
            .filter(|i| i.spec.health == Health::Passing)
            .map(|i| (i.service.clone(), i.id.clone()))
            .filter(|key| !locals.contains_key(key))
            .collect();
        let agent = Arc::new(Agent {
            registrar,
            locals: Mutex::new(locals),
            writing: tokio::sync::Mutex::new(()),
            generation: std::sync::atomic::AtomicU64::new(0),
            adopted_passing: Mutex::new(adopted_passing),
        });
        tokio::spawn(Arc::clone(&agent).run(0));
        agent
    }

    fn lock(&self) -> MutexGuard<'_, BTreeMap<Key, Local>> {
        // Updates are single assignments; a poisoned guard is still consistent.
        self.locals.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds an instance to check and publish (the supervisor's containers), or replaces
    /// the definition of one already there: its check state and maintenance carry over
    /// when its checks are the same, so a metadata change does not reset its health.
    pub fn upsert(&self, definition: ServiceDefinition) -> Result<(), AgentError> {
        validate_definition(&definition)?;
        let key = (definition.service.clone(), definition.id.clone());
        let mut locals = self.lock();
        match locals.get_mut(&key) {
            // Same checks of the same address: the check state carries over. A new port
            // (a container started again elsewhere) must pass its checks again.
            Some(local)
                if local.definition.checks == definition.checks
                    && local.definition.address == definition.address
                    && local.definition.port == definition.port =>
            {
                if local.definition != definition {
                    local.definition = definition;
                    // Written again with the new definition on the next pass.
                    local.written = None;
                }
            }
            _ => {
                let passing = self
                    .adopted_passing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&key);
                locals.insert(key, Local::new(definition, passing));
            }
        }
        Ok(())
    }

    /// Stops checking an instance and deregisters it. `false` if it was not the agent's.
    pub async fn remove(&self, service: &str, id: &str) -> Result<bool, String> {
        let _writing = self.writing.lock().await;
        let removed = self
            .lock()
            .remove(&(service.to_string(), id.to_string()))
            .is_some();
        if removed {
            self.registrar.deregister(service, id).await?;
        }
        Ok(removed)
    }

    /// The health the agent's checks give an instance now (`None`: not the agent's).
    pub fn health(&self, service: &str, id: &str) -> Option<Health> {
        self.lock()
            .get(&(service.to_string(), id.to_string()))
            .map(Local::health)
    }

    /// The service of the instance whose check `check_id` is (for authorising a heartbeat).
    pub fn check_service(&self, check_id: &str) -> Option<String> {
        self.lock()
            .values()
            .find(|local| local.check_index(check_id).is_some())
            .map(|local| local.definition.service.clone())
    }

    /// The agent's instances, as (service, id).
    pub fn instances(&self) -> Vec<(String, String)> {
        self.lock().keys().cloned().collect()
    }

    /// `PUT /v1/agent/checks/{id}/pass`: a TTL check's heartbeat. HTTP and TCP checks
    /// pass by their own results only.
    pub fn pass(&self, check_id: &str) -> Result<(), PassError> {
        let mut locals = self.lock();
        let Some((local, c)) = locals
            .values_mut()
            .find_map(|local| local.check_index(check_id).map(|c| (local, c)))
        else {
            return Err(PassError::Unknown);
        };
        if local.definition.checks.get(c).map(|d| d.kind) != Some(CheckType::Ttl) {
            return Err(PassError::NotTtl);
        }
        let Some(check) = local.checks.get_mut(c) else {
            return Err(PassError::Unknown);
        };
        // Passing now (published on the next tick), until `ttl` goes by without another.
        check.last_pass = Some(Instant::now());
        check.passing = true;
        Ok(())
    }

    /// Maintenance mode for a local instance (drain). `false` if unknown.
    pub fn set_maintenance(&self, service: &str, id: &str, enable: bool) -> bool {
        match self.lock().get_mut(&(service.to_string(), id.to_string())) {
            Some(local) => {
                local.maintenance = enable;
                true
            }
            None => false,
        }
    }

    /// Anti-entropy, in its own task so that a slow or unreachable store never delays
    /// the checks: every [`ANTI_ENTROPY`] it reads back each instance's stored health and
    /// marks for writing again those where the store holds something else than the
    /// checks say (or nothing).
    async fn anti_entropy(self: Arc<Self>, generation: u64) {
        use std::sync::atomic::Ordering;
        /// A write younger than this may not show in a watch-fed snapshot yet.
        const SETTLE: Duration = Duration::from_secs(2);
        let mut failing = false;
        loop {
            tokio::time::sleep(ANTI_ENTROPY).await;
            if self.generation.load(Ordering::Acquire) != generation {
                return;
            }
            let now = Instant::now();
            let settled: Vec<(Key, Health, Instant)> = self
                .lock()
                .iter()
                .filter_map(|(key, l)| {
                    let (health, at) = l.published?;
                    (now.saturating_duration_since(at) >= SETTLE).then(|| (key.clone(), health, at))
                })
                .collect();
            for (key, health, at) in settled {
                let (service, id) = &key;
                match self.registrar.stored_health(service, id).await {
                    Ok(stored) => {
                        if failing {
                            info!("agent: the store answers again");
                            failing = false;
                        }
                        if stored != Some(health) {
                            // Unless the check loop wrote again meanwhile, or the
                            // instance was removed.
                            if let Some(local) = self.lock().get_mut(&key)
                                && local.published.is_some_and(|(_, t)| t == at)
                            {
                                warn!(
                                    %service,
                                    %id,
                                    stored = stored.map_or("absent", Health::as_str),
                                    health = health.as_str(),
                                    "agent: the store disagrees with the checks; writing them again"
                                );
                                local.republish = true;
                            }
                        }
                    }
                    Err(error) => {
                        // Once per outage; the next pass tries again.
                        if !failing {
                            warn!(%error, "agent: cannot read the stored health; will retry");
                            failing = true;
                        }
                        break;
                    }
                }
            }
        }
    }

    /// Runs the checks and keeps the store in step with their results.
    async fn run(self: Arc<Self>, generation: u64) {
        use std::sync::atomic::Ordering;
        tokio::spawn(Arc::clone(&self).anti_entropy(generation));
        let current = || self.generation.load(Ordering::Acquire) == generation;
        let tick = Duration::from_millis(100);
        while current() {
            // Run the checks that are due, concurrently. TTL checks are not run: a
            // heartbeat passes them, and time alone fails them.
            let due: Vec<(Key, usize, ServiceDefinition, CheckDefinition)> = {
                let mut locals = self.lock();
                let now = Instant::now();
                let mut due = Vec::new();
                for (key, local) in locals.iter_mut() {
                    for (c, check) in local.definition.checks.iter().enumerate() {
                        let state = &mut local.checks[c];
                        if let Ok(CheckKind::Ttl { ttl }) = check.kind() {
                            state.passing = state
                                .last_pass
                                .is_some_and(|t| now.saturating_duration_since(t) <= ttl);
                        } else if state.next_run <= now {
                            due.push((key.clone(), c, local.definition.clone(), check.clone()));
                        }
                    }
                }
                due
            };
            let results =
                futures::future::join_all(due.into_iter().map(|(key, c, def, check)| async move {
                    let ok = run_check(&def, &check).await;
                    (key, c, check, ok)
                }))
                .await;
            {
                let mut locals = self.lock();
                for (key, c, definition, ok) in results {
                    // Removed, or redefined with other checks, while it ran.
                    let Some(local) = locals.get_mut(&key) else {
                        continue;
                    };
                    if local.definition.checks.get(c) != Some(&definition) {
                        continue;
                    }
                    let state = &mut local.checks[c];
                    if ok {
                        state.successes += 1;
                        state.failures = 0;
                        if state.successes >= definition.rise {
                            state.passing = true;
                        }
                    } else {
                        state.failures += 1;
                        state.successes = 0;
                        if state.failures >= definition.fall {
                            state.passing = false;
                        }
                    }
                    let jitter = rand::random_range(0.9..1.1);
                    state.next_run = Instant::now() + definition.interval.mul_f64(jitter);
                }
            }
            if !current() {
                return;
            }
            self.publish().await;
            tokio::time::sleep(tick).await;
        }
    }

    /// Publishes what changed, and re-publishes what the store lost (e.g. after an outage,
    /// a new ZooKeeper session or a lost lease). Only the instances that need writing are
    /// built.
    async fn publish(&self) {
        let _writing = self.writing.lock().await;
        let pending: Vec<(Key, Health, Option<Instance>)> = self
            .lock()
            .iter()
            .filter_map(|(key, local)| {
                let health = local.health();
                let def = &local.definition;
                let stored = self.registrar.holds(&def.service, &def.id);
                (local.written != Some(health) || !stored || local.republish)
                    .then(|| (key.clone(), health, def.instance(health).ok()))
            })
            .collect();
        for (key, health, instance) in pending {
            let Some(instance) = instance else { continue };
            let (service, id) = (instance.service.clone(), instance.id.clone());
            let result = self.registrar.register(instance).await;
            let mut locals = self.lock();
            let Some(local) = locals.get_mut(&key) else {
                continue;
            };
            match result {
                Ok(()) => {
                    if local.written != Some(health) {
                        info!(service = %service, id = %id, health = health.as_str(), "agent: health published");
                    }
                    local.written = Some(health);
                    local.published = Some((health, Instant::now()));
                    local.republish = false;
                }
                Err(e) => {
                    warn!(service = %service, id = %id, error = %e, "agent: cannot publish; will retry");
                    local.written = None;
                }
            }
        }
    }

    /// Stops checking and publishing, leaving the instances registered (a binary upgrade:
    /// the successor's agent takes them over).
    pub fn stop(&self) {
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
    }

    /// Checks and publishes again after `stop` (an upgrade that did not happen).
    pub fn resume(self: &Arc<Self>) {
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel)
            + 1;
        tokio::spawn(Arc::clone(self).run(generation));
    }

    /// Removes this agent's instances (on shutdown). Checking stops first, so the loop
    /// cannot publish them again.
    pub async fn shutdown(&self) {
        self.stop();
        let _writing = self.writing.lock().await;
        let ids: Vec<Key> = self.lock().keys().cloned().collect();
        for (service, id) in ids {
            if let Err(error) = self.registrar.deregister(&service, &id).await {
                warn!(%service, %id, %error, "agent: cannot deregister at shutdown");
            }
        }
    }
}

/// Runs one HTTP or TCP check. TTL checks are never run: heartbeats and time decide them.
async fn run_check(def: &ServiceDefinition, check: &CheckDefinition) -> bool {
    let port_or = |port: &Option<u16>| port.unwrap_or(def.port);
    // Validated when the file was parsed.
    let Ok(kind) = check.kind() else { return false };
    match &kind {
        CheckKind::Tcp { port } => {
            let addr = SocketAddr::new(def.address, port_or(port));
            matches!(
                tokio::time::timeout(check.timeout, TcpStream::connect(addr)).await,
                Ok(Ok(_))
            )
        }
        CheckKind::Http {
            path,
            status: (low, high),
            port,
        } => {
            let addr = SocketAddr::new(def.address, port_or(port));
            match tokio::time::timeout(check.timeout, http_status(addr, path)).await {
                Ok(Ok(code)) => (*low..=*high).contains(&code),
                _ => false,
            }
        }
        CheckKind::Ttl { .. } => false,
    }
}

/// A minimal `GET` returning the status code (health endpoints need nothing more).
async fn http_status(addr: SocketAddr, path: &str) -> std::io::Result<u16> {
    let mut stream = TcpStream::connect(addr).await?;
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUser-Agent: strait-agent\r\nConnection: close\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut head = [0u8; 64];
    let mut read = 0;
    while read < 12 {
        let n = stream.read(&mut head[read..]).await?;
        if n == 0 {
            break;
        }
        read += n;
    }
    let line = std::str::from_utf8(&head[..read]).unwrap_or("");
    line.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::InvalidData, "not an HTTP response"))
}
