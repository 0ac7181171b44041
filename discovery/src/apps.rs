//! Apps and their deployments: the deploy subsystem's records in the store.
//!
//! An **app** is the catalogue entry (FIWARE's PaaS Manager's split): the spec a team
//! deploys — image, instances, environment, health check, the host it is routed on, how
//! the rollout moves traffic. A **deployment** is the inventory: one attempt to run one
//! pinned image (`repo@sha256:…`) of the app, its placement per zone, its state and steps,
//! and what the hosts' agents should do with its containers (`goal`). Both are persistent;
//! the containers' instances are ordinary (ephemeral) instances of the service named
//! after the app, tagged `d<id>` so a route split can select one deployment's instances.
//!
//! The agents that run containers are instances of [`AGENT_SERVICE`] (as Consul lists
//! its agents as `consul`): live while their process (ZooKeeper session) lives, with the
//! zone they serve and `runtime` in their metadata.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};

use crate::model::{Instance, ModelError, validate_dns_label, validate_id};

/// The service every container-running agent registers itself in.
pub const AGENT_SERVICE: &str = "strait-agent";
/// Metadata keys of an agent's own instance.
pub const AGENT_RUNTIME_KEY: &str = "runtime";
/// Metadata keys of a deployed container's instance.
pub const DEPLOYMENT_KEY: &str = "deployment";
pub const DIGEST_KEY: &str = "digest";
pub const VERSION_KEY: &str = "version";
pub const AGENT_KEY: &str = "agent";
pub const CONTAINER_STATE_KEY: &str = "container";
pub const RESTARTS_KEY: &str = "restarts";
pub const LAST_EXIT_KEY: &str = "last_exit";
pub const SLOT_KEY: &str = "slot";
/// The zone of agents that name none.
pub const DEFAULT_ZONE: &str = "default";

const MAX_INSTANCES: u32 = 1000;
const MAX_ENV: usize = 128;
const MAX_ENV_VALUE: usize = 4096;
const MAX_STEPS: usize = 10;
const MAX_ZONES: usize = 32;
const MAX_IMAGE_LEN: usize = 512;
/// Deployment records kept per app (older finished ones are deleted).
pub const HISTORY: usize = 20;

/// The subset tag a deployment's instances carry (`d7`): route splits select by it.
pub fn deployment_tag(id: u64) -> String {
    format!("d{id}")
}

/// How the agent checks a deployed container (it becomes an instance check).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default, utoipa::ToSchema)]
#[serde(rename_all = "lowercase", deny_unknown_fields)]
pub enum AppCheck {
    /// GET this path on the container's port; 200-399 passes.
    Http { path: String },
    /// Connect to the container's port (the default: the app must listen on `$PORT`).
    #[default]
    Tcp,
}

fn default_port_env() -> String {
    "PORT".into()
}
fn default_timeout() -> Duration {
    Duration::from_secs(120)
}
fn default_check_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_steps() -> Vec<u32> {
    vec![10, 50, 100]
}
fn default_pause() -> Duration {
    Duration::from_secs(10)
}
fn default_max_error_percent() -> u32 {
    5
}
fn default_min_requests() -> u32 {
    20
}
fn default_drain() -> Duration {
    Duration::from_secs(10)
}
fn default_max_restarts() -> u32 {
    3
}
fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// How traffic moves from the old version to the new one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Rollout {
    /// Percent of the route's traffic on the new version at each step, ascending, the last
    /// 100.
    #[serde(default = "default_steps")]
    pub steps: Vec<u32>,
    /// How long each step holds (and is watched) before the next.
    #[serde(default = "default_pause", with = "humantime_serde")]
    #[schema(value_type = String, example = "10s")]
    pub pause: Duration,
    /// The new version's 5xx share (of its requests in a step) above which the rollout is
    /// rolled back.
    #[serde(default = "default_max_error_percent")]
    pub max_error_percent: u32,
    /// Fewer requests than this in a step are too few to judge the 5xx share.
    #[serde(default = "default_min_requests")]
    pub min_requests: u32,
    /// How long a replaced instance stays registered in maintenance (no new requests,
    /// in-flight ones finish) before its container is stopped.
    #[serde(default = "default_drain", with = "humantime_serde")]
    #[schema(value_type = String, example = "10s")]
    pub drain: Duration,
    /// Container restarts (of any one instance) that fail the deployment.
    #[serde(default = "default_max_restarts")]
    pub max_restarts: u32,
}

impl Default for Rollout {
    fn default() -> Self {
        Rollout {
            steps: default_steps(),
            pause: default_pause(),
            max_error_percent: default_max_error_percent(),
            min_requests: default_min_requests(),
            drain: default_drain(),
            max_restarts: default_max_restarts(),
        }
    }
}

/// An app's spec: the catalogue entry, and what a deployment request carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct AppSpec {
    /// `registry/repository:tag` or `registry/repository@sha256:…`.
    pub image: String,
    /// Instances in all (spread evenly over the live agents' zones), or per zone when
    /// `zones` names them.
    pub instances: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub zones: Vec<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// The environment variable that carries the container's port.
    #[serde(default = "default_port_env")]
    pub port_env: String,
    #[serde(default)]
    pub check: AppCheck,
    #[serde(default = "default_check_interval", with = "humantime_serde")]
    #[schema(value_type = String, example = "10s")]
    pub check_interval: Duration,
    /// Routed on this host (the route named after the app) when set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// All instances must pass their check within this.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    #[schema(value_type = String, example = "10s")]
    pub timeout: Duration,
    #[serde(default, skip_serializing_if = "is_default")]
    pub rollout: Rollout,
}

impl AppSpec {
    pub fn validate(&mut self) -> Result<(), ModelError> {
        let image = self.image.trim();
        if image.is_empty() || image.len() > MAX_IMAGE_LEN || image.contains(char::is_whitespace) {
            return Err(ModelError::new(
                "image",
                format!(
                    "`{}` is not an image reference (registry/repository:tag)",
                    self.image
                ),
            ));
        }
        self.image = image.to_string();
        if !(1..=MAX_INSTANCES).contains(&self.instances) {
            return Err(ModelError::new(
                "instances",
                format!("{} is out of range: 1 to {MAX_INSTANCES}", self.instances),
            ));
        }
        if self.zones.len() > MAX_ZONES {
            return Err(ModelError::new(
                "zones",
                format!("at most {MAX_ZONES} zones"),
            ));
        }
        for zone in &self.zones {
            validate_dns_label("zones", zone)?;
        }
        self.zones.sort();
        self.zones.dedup();
        if self.env.len() > MAX_ENV {
            return Err(ModelError::new(
                "env",
                format!("at most {MAX_ENV} variables"),
            ));
        }
        for (key, value) in &self.env {
            validate_env_name(&format!("env.{key}"), key)?;
            if value.len() > MAX_ENV_VALUE || value.contains('\0') {
                return Err(ModelError::new(
                    format!("env.{key}"),
                    format!("must be at most {MAX_ENV_VALUE} bytes without NUL"),
                ));
            }
        }
        validate_env_name("port_env", &self.port_env)?;
        if self.env.contains_key(&self.port_env) {
            return Err(ModelError::new(
                format!("env.{}", self.port_env),
                "is the port variable (`port_env`); the agent sets it",
            ));
        }
        if let AppCheck::Http { path } = &self.check
            && (!path.starts_with('/') || path.bytes().any(|b| b.is_ascii_control() || b == b' '))
        {
            return Err(ModelError::new(
                "check.http.path",
                format!("`{path}` must start with '/' and have no spaces or control characters"),
            ));
        }
        if !(Duration::from_millis(100)..=Duration::from_secs(60)).contains(&self.check_interval) {
            return Err(ModelError::new("check_interval", "must be 100ms to 60s"));
        }
        if let Some(host) = &mut self.host {
            *host = host.to_ascii_lowercase();
            let mut route = crate::model::Route::http(host, "x");
            route
                .validate()
                .map_err(|e| ModelError::new("host", e.message))?;
        }
        if !(Duration::from_secs(1)..=Duration::from_secs(3600)).contains(&self.timeout) {
            return Err(ModelError::new("timeout", "must be 1s to 1h"));
        }
        let rollout = &self.rollout;
        if rollout.steps.is_empty() || rollout.steps.len() > MAX_STEPS {
            return Err(ModelError::new(
                "rollout.steps",
                format!("1 to {MAX_STEPS} percentages, the last 100"),
            ));
        }
        let ascending = rollout.steps.windows(2).all(|w| w[0] < w[1]);
        if !ascending || rollout.steps.last() != Some(&100) || rollout.steps[0] == 0 {
            return Err(ModelError::new(
                "rollout.steps",
                format!(
                    "{:?}: percentages must rise from above 0 and end at 100",
                    rollout.steps
                ),
            ));
        }
        if rollout.pause > Duration::from_secs(3600) {
            return Err(ModelError::new("rollout.pause", "at most 1h"));
        }
        if rollout.max_error_percent > 100 {
            return Err(ModelError::new("rollout.max_error_percent", "0 to 100"));
        }
        if rollout.drain > Duration::from_secs(3600) {
            return Err(ModelError::new("rollout.drain", "at most 1h"));
        }
        if rollout.max_restarts > 100 {
            return Err(ModelError::new("rollout.max_restarts", "0 to 100"));
        }
        Ok(())
    }
}

/// Environment variable names: `[A-Za-z_][A-Za-z0-9_]*`, as POSIX shells take them.
fn validate_env_name(field: &str, name: &str) -> Result<(), ModelError> {
    let mut bytes = name.bytes();
    let first_ok = bytes
        .next()
        .is_some_and(|b| b.is_ascii_alphabetic() || b == b'_');
    if !first_ok || !bytes.all(|b| b.is_ascii_alphanumeric() || b == b'_') || name.len() > 128 {
        return Err(ModelError::new(
            field,
            format!("`{name}` is not an environment variable name (letters, digits, '_')"),
        ));
    }
    Ok(())
}

/// Where a deployment is in its life.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeployState {
    /// Accepted; no container asked for yet.
    Pending,
    /// Containers starting, or traffic moving.
    Running,
    /// All traffic on this version; the one before it drained and stopped.
    Succeeded,
    /// It failed and there was no version to go back to (or going back failed).
    Failed,
    /// It failed (or was cancelled) and the previous version has the traffic again.
    RolledBack,
}

impl DeployState {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployState::Pending => "pending",
            DeployState::Running => "running",
            DeployState::Succeeded => "succeeded",
            DeployState::Failed => "failed",
            DeployState::RolledBack => "rolled_back",
        }
    }

    pub fn is_finished(self) -> bool {
        !matches!(self, DeployState::Pending | DeployState::Running)
    }
}

/// What the agents do with a deployment's containers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ContainerGoal {
    /// Keep its instances running and registered.
    Run,
    /// Take its instances out of traffic (maintenance), then stop them after the drain.
    Drain,
    /// No containers (stopped, or never started).
    Stop,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum StepState {
    Running,
    Done,
    Failed,
}

/// One step of a deployment, as `strait deploy status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
// Stored only (never an API body): a newer strait may add fields, which this one ignores.
pub struct DeployStep {
    pub name: String,
    pub state: StepState,
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "2026-01-01T00:00:00Z")]
    pub started: SystemTime,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "2026-01-01T00:00:00Z")]
    pub ended: Option<SystemTime>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

/// One deployment of an app: a pinned image, where it runs, how far it got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
// Stored only (never an API body): a newer strait may add fields, which this one ignores.
pub struct Deployment {
    pub app: String,
    pub id: u64,
    /// The spec as requested (its `image` as given, a tag perhaps).
    pub spec: AppSpec,
    /// What every container runs: the image pinned by digest, `repo@sha256:…`.
    pub image: String,
    pub digest: String,
    /// Instances wanted per zone.
    pub placement: BTreeMap<String, u32>,
    pub state: DeployState,
    pub goal: ContainerGoal,
    /// Percent of the app route's traffic on this version now.
    pub weight: u32,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub steps: Vec<DeployStep>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// The deployment this one replaces (whose instances have the traffic until it moves).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous: Option<u64>,
    /// A user asked to cancel it (the controller rolls it back).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cancel: bool,
    /// With goal `drain`: how long its instances stay in maintenance before they stop.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "10s")]
    pub drain: Option<Duration>,
    /// The app's route as it was before this deployment moved it (restored on rollback;
    /// `None`: there was none).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route_before: Option<crate::model::Route>,
    /// The strait process that runs it (`host:pid`).
    pub controller: String,
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "2026-01-01T00:00:00Z")]
    pub created: SystemTime,
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "2026-01-01T00:00:00Z")]
    pub updated: SystemTime,
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    #[schema(value_type = Option<String>, example = "2026-01-01T00:00:00Z")]
    pub finished: Option<SystemTime>,
}

impl Deployment {
    /// Checks a record read back from the store (written by another, maybe older, process).
    pub fn validate(&mut self) -> Result<(), ModelError> {
        validate_app_name(&self.app)?;
        self.spec.validate()?;
        if self.image.len() > MAX_IMAGE_LEN || !self.image.contains('@') {
            return Err(ModelError::new(
                "image",
                "must be pinned by digest (repo@sha256:…)",
            ));
        }
        if !is_sha256_digest(&self.digest) {
            return Err(ModelError::new(
                "digest",
                format!("`{}` is not a sha256 digest", self.digest),
            ));
        }
        if self.placement.len() > MAX_ZONES {
            return Err(ModelError::new(
                "placement",
                format!("at most {MAX_ZONES} zones"),
            ));
        }
        for (zone, count) in &self.placement {
            validate_dns_label("placement", zone)?;
            if *count > MAX_INSTANCES {
                return Err(ModelError::new(
                    format!("placement.{zone}"),
                    "too many instances",
                ));
            }
        }
        if self.weight > 100 {
            return Err(ModelError::new("weight", "0 to 100"));
        }
        if let Some(route) = &mut self.route_before {
            route.validate()?;
        }
        Ok(())
    }

    /// The subset tag of this deployment's instances.
    pub fn tag(&self) -> String {
        deployment_tag(self.id)
    }

    /// Instances wanted in all zones.
    pub fn wanted(&self) -> u32 {
        self.placement.values().sum()
    }

    /// The id of the instance in slot `slot` (slots are numbered across zones in zone
    /// order): `<app>-<id>-<slot>`.
    pub fn instance_id(&self, slot: u32) -> String {
        format!("{}-{}-{slot}", self.app, self.id)
    }

    /// Each zone's slots: zone order, numbered from 0 across all zones.
    pub fn slots(&self) -> impl Iterator<Item = (&str, u32)> {
        let mut next = 0;
        self.placement.iter().flat_map(move |(zone, count)| {
            let first = next;
            next += count;
            (first..first + count).map(move |slot| (zone.as_str(), slot))
        })
    }

    /// Whether `instance` is one of this deployment's.
    pub fn owns(&self, instance: &Instance) -> bool {
        instance.service == self.app
            && instance
                .spec
                .metadata
                .get(DEPLOYMENT_KEY)
                .is_some_and(|id| id.parse() == Ok(self.id))
    }
}

fn is_sha256_digest(s: &str) -> bool {
    s.strip_prefix("sha256:").is_some_and(|hex| {
        hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

/// App names are service names (DNS labels): the app's instances are that service.
pub fn validate_app_name(name: &str) -> Result<(), ModelError> {
    validate_dns_label("app", name)?;
    if name == AGENT_SERVICE {
        return Err(ModelError::new(
            "app",
            format!("`{AGENT_SERVICE}` is the agents' own service"),
        ));
    }
    Ok(())
}

/// An app's record: its spec.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
// Stored only (never an API body): a newer strait may add fields, which this one ignores.
pub struct App {
    pub name: String,
    pub spec: AppSpec,
    /// Being removed: its containers stop and its records go once they have.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub removing: bool,
}

impl App {
    pub fn validate(&mut self) -> Result<(), ModelError> {
        validate_app_name(&self.name)?;
        self.spec.validate()
    }
}

/// A lock name (an app's rollout lock): a safe znode/file name.
pub fn validate_lock_name(name: &str) -> Result<(), ModelError> {
    validate_id("lock", name)
}

#[cfg(test)]
mod tests;
