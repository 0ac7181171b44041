//! The discovery store: one trait, two backends.
//!
//! * [`EmbeddedStore`]: single node, routes persisted under a data directory, instances in
//!   memory (they are ephemeral by definition). The default.
//! * [`ZkStore`]: real ZooKeeper; instances are ephemeral znodes of this process's session,
//!   routes persistent znodes, one persistent recursive watch for everything.
//!
//! Writers call the async methods; readers take [`Store::snapshot`] or follow
//! [`Store::watch`]. Nothing on a request or query path ever calls a store: the router and
//! DNS read tables compiled from snapshots.

mod embedded;
mod records;
mod route_log;
mod zookeeper;

use std::fmt;
use std::path::PathBuf;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use async_trait::async_trait;
use prometheus::{Histogram, HistogramOpts, IntCounter, IntGauge, IntGaugeVec, Opts, Registry};
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

pub use embedded::EmbeddedStore;
pub use zookeeper::ZkStore;

use crate::apps::{App, Deployment};
use crate::model::{Health, Instance, ModelError, Route};
use crate::snapshot::{Snapshot, State};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error(transparent)]
    Invalid(#[from] ModelError),
    #[error("{kind} `{name}` not found")]
    NotFound { kind: &'static str, name: String },
    #[error("{0}")]
    Conflict(String),
    /// The backend cannot be reached now; the write was not applied. Retry later.
    #[error("store unavailable: {0}")]
    Unavailable(String),
    #[error("storage error: {0}")]
    Storage(String),
}

/// Health of the store connection, for `/readyz`, metrics and `GET /v1/snapshot`.
#[derive(Debug, Clone, Serialize)]
pub struct StoreStatus {
    pub backend: &'static str,
    /// Connected to the backend (always true for the embedded store).
    pub connected: bool,
    /// A first snapshot has been loaded.
    pub ready: bool,
    /// How stale the snapshot in use may be: seconds since the store was last known to be
    /// in sync. 0 while connected.
    pub age_seconds: f64,
}

#[async_trait]
pub trait Store: Send + Sync + 'static {
    /// Registers (or updates) an instance, owned by this process: it vanishes when the
    /// process stops or its session with the backend expires.
    async fn register(&self, instance: Instance) -> Result<(), StoreError>;
    /// Removes an instance. `Ok(false)` when it was not registered.
    async fn deregister(&self, service: &str, id: &str) -> Result<bool, StoreError>;
    async fn set_health(&self, service: &str, id: &str, health: Health) -> Result<(), StoreError>;
    /// Creates or replaces a route. Routes are persistent.
    async fn put_route(&self, name: &str, route: Route) -> Result<(), StoreError>;
    /// `Ok(false)` when there was no such route.
    async fn delete_route(&self, name: &str) -> Result<bool, StoreError>;
    /// Creates or replaces an app's record (persistent).
    async fn put_app(&self, app: App) -> Result<(), StoreError>;
    /// `Ok(false)` when there was no such app.
    async fn delete_app(&self, name: &str) -> Result<bool, StoreError>;
    /// Creates or replaces a deployment record (persistent).
    async fn put_deployment(&self, deployment: Deployment) -> Result<(), StoreError>;
    /// `Ok(false)` when there was no such deployment.
    async fn delete_deployment(&self, app: &str, id: u64) -> Result<bool, StoreError>;
    /// Creates or replaces an admin API token's record (persistent).
    async fn put_token(&self, token: crate::tokens::TokenRecord) -> Result<(), StoreError>;
    /// `Ok(false)` when there was no such token.
    async fn delete_token(&self, id: &str) -> Result<bool, StoreError>;
    /// Takes the lock `name` for this process: `Ok(false)` when anyone holds it already
    /// (this process included). It goes with the process (with ZooKeeper, its session).
    async fn try_lock(&self, name: &str) -> Result<bool, StoreError>;
    /// Whether this process still holds `name` (a ZooKeeper session that expired lost it).
    async fn holds_lock(&self, name: &str) -> bool;
    /// Releases `name` if this process holds it.
    async fn unlock(&self, name: &str) -> Result<(), StoreError>;
    /// The newest snapshot.
    fn snapshot(&self) -> Arc<Snapshot>;
    /// Snapshots as they change; a slow consumer sees only the newest.
    fn watch(&self) -> watch::Receiver<Arc<Snapshot>>;
    fn status(&self) -> StoreStatus;
    /// Removes this process's instances and releases the backend. Idempotent.
    async fn shutdown(&self);
    /// Binary upgrade, old process: stops writing (every later write fails), releases what
    /// keeps a successor out (the embedded store's lock) and returns the instances this
    /// process owns, still registered, for the successor to adopt.
    async fn hand_over(&self) -> Result<Handover, StoreError>;
    /// Binary upgrade, new process: registers the predecessor's instances as this
    /// process's own, replacing what its session still holds.
    async fn adopt(&self, handover: Handover) -> Result<(), StoreError>;
}

/// What an upgraded process's predecessor owned in the store.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Handover {
    pub instances: Vec<Instance>,
    /// The predecessor's ZooKeeper session ids: nodes they own are replaced on adoption.
    #[serde(default)]
    pub sessions: Vec<i64>,
}

/// Which backend, parsed from `embedded` or `zk://host:port[,host:port...][/chroot]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreUrl {
    Embedded,
    ZooKeeper {
        /// `host:port,host:port` as ZooKeeper clients take it.
        hosts: String,
        /// Absolute path all of strait's znodes live under.
        chroot: String,
    },
}

impl FromStr for StoreUrl {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s == "embedded" || s == "embedded://" {
            return Ok(StoreUrl::Embedded);
        }
        let Some(rest) = s.strip_prefix("zk://") else {
            return Err(format!(
                "`{s}` is not a store URL: use `embedded` or `zk://host:port[,host:port]/chroot`"
            ));
        };
        let (hosts, chroot) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/strait"),
        };
        if hosts.is_empty() {
            return Err(format!("`{s}`: no ZooKeeper host given"));
        }
        for host in hosts.split(',') {
            let port_ok = host
                .rsplit_once(':')
                .is_some_and(|(h, p)| !h.is_empty() && p.parse::<u16>().is_ok_and(|p| p > 0));
            if !port_ok {
                return Err(format!("`{s}`: `{host}` is not host:port"));
            }
        }
        let chroot = chroot.trim_end_matches('/');
        let chroot = if chroot.is_empty() { "/strait" } else { chroot };
        for segment in chroot.split('/').skip(1) {
            crate::model::validate_id("chroot", segment).map_err(|e| format!("`{s}`: {e}"))?;
        }
        Ok(StoreUrl::ZooKeeper {
            hosts: hosts.to_string(),
            chroot: chroot.to_string(),
        })
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            StoreUrl::Embedded => f.write_str("embedded"),
            StoreUrl::ZooKeeper { hosts, chroot } => write!(f, "zk://{hosts}{chroot}"),
        }
    }
}

impl<'de> Deserialize<'de> for StoreUrl {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let s = String::deserialize(deserializer)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

impl Serialize for StoreUrl {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

fn default_data_dir() -> PathBuf {
    PathBuf::from("strait-data")
}

fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The `[store]` section of strait's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `embedded` (default) or `zk://host:port[,host:port]/chroot`.
    #[serde(default = "StoreConfig::default_url")]
    pub url: StoreUrl,
    /// Where the embedded store keeps its routes.
    #[serde(default = "default_data_dir")]
    pub data_dir: PathBuf,
    /// ZooKeeper session timeout: how long after this process stops (or is cut off)
    /// its instances vanish.
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
}

impl StoreConfig {
    fn default_url() -> StoreUrl {
        StoreUrl::Embedded
    }
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            url: StoreUrl::Embedded,
            data_dir: default_data_dir(),
            session_timeout: default_session_timeout(),
        }
    }
}

/// Opens the configured backend, reporting into `metrics`. The ZooKeeper store returns at
/// once and connects in the background (not ready until its first sync); the embedded one
/// loads its data first.
pub async fn open(
    config: &StoreConfig,
    metrics: StoreMetrics,
) -> Result<Arc<dyn Store>, StoreError> {
    Ok(match &config.url {
        StoreUrl::Embedded => Arc::new(EmbeddedStore::open(&config.data_dir, metrics).await?),
        StoreUrl::ZooKeeper { hosts, chroot } => Arc::new(ZkStore::start(
            hosts,
            chroot,
            config.session_timeout,
            metrics,
        )),
    })
}

/// Metrics every backend reports, under `strait_discovery_*`.
#[derive(Clone)]
pub struct StoreMetrics {
    revision: IntGauge,
    connected: IntGauge,
    watch_events: IntCounter,
    resyncs: IntCounter,
    propagation: Histogram,
    instances: IntGaugeVec,
    routes: IntGauge,
    snapshot_age: prometheus::Gauge,
}

impl StoreMetrics {
    pub fn new(registry: &Registry) -> Result<Self, prometheus::Error> {
        let metrics = StoreMetrics {
            revision: IntGauge::new(
                "strait_discovery_snapshot_revision",
                "Revision of the newest discovery snapshot",
            )?,
            connected: IntGauge::new(
                "strait_discovery_store_connected",
                "1 when connected to the discovery backend, 0 while serving the last snapshot (fail static)",
            )?,
            watch_events: IntCounter::new(
                "strait_discovery_watch_events_total",
                "Changes received from the store (writes applied, or ZooKeeper watch events)",
            )?,
            resyncs: IntCounter::new(
                "strait_discovery_resyncs_total",
                "Full re-reads of the backend (start, reconnect, session expiry)",
            )?,
            propagation: Histogram::with_opts(
                HistogramOpts::new(
                    "strait_discovery_propagation_seconds",
                    "Time from a store write to the snapshot that includes it being published",
                )
                .buckets(vec![
                    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25,
                    0.5, 1.0, 2.5, 5.0,
                ]),
            )?,
            instances: IntGaugeVec::new(
                Opts::new(
                    "strait_discovery_instances",
                    "Registered instances by health state",
                ),
                &["state"],
            )?,
            routes: IntGauge::new("strait_discovery_routes", "Declared routes")?,
            snapshot_age: prometheus::Gauge::new(
                "strait_discovery_snapshot_age_seconds",
                "Seconds since the snapshot in use was last known to be in sync with the store",
            )?,
        };
        registry.register(Box::new(metrics.revision.clone()))?;
        registry.register(Box::new(metrics.connected.clone()))?;
        registry.register(Box::new(metrics.watch_events.clone()))?;
        registry.register(Box::new(metrics.resyncs.clone()))?;
        registry.register(Box::new(metrics.propagation.clone()))?;
        registry.register(Box::new(metrics.instances.clone()))?;
        registry.register(Box::new(metrics.routes.clone()))?;
        registry.register(Box::new(metrics.snapshot_age.clone()))?;
        Ok(metrics)
    }

    /// Refreshes the gauges derived from the snapshot; called at scrape time so the write
    /// path does not count instances.
    pub fn observe_scrape(&self, snapshot: &Snapshot, status: &StoreStatus) {
        let counts = snapshot.health_counts();
        for health in Health::ALL {
            self.instances
                .with_label_values(&[health.as_str()])
                .set(counts[health as usize] as i64);
        }
        self.routes.set(snapshot.routes.len() as i64);
        self.snapshot_age.set(status.age_seconds);
        self.connected.set(i64::from(status.connected));
    }
}

/// Connection bookkeeping shared by a backend and its status readers.
#[derive(Debug)]
struct Link {
    connected: bool,
    ready: bool,
    /// When the store was last known in sync, if it is not now.
    stale_since: Option<Instant>,
}

/// Publishes snapshots and keeps the status and metrics every backend reports.
pub(crate) struct Publisher {
    backend: &'static str,
    sender: watch::Sender<Arc<Snapshot>>,
    link: Mutex<Link>,
    metrics: StoreMetrics,
}

impl Publisher {
    pub fn new(backend: &'static str, metrics: StoreMetrics, connected: bool) -> Self {
        let (sender, _) = watch::channel(Arc::new(Snapshot::default()));
        metrics.connected.set(i64::from(connected));
        Publisher {
            backend,
            sender,
            link: Mutex::new(Link {
                connected,
                ready: false,
                stale_since: if connected {
                    None
                } else {
                    Some(Instant::now())
                },
            }),
            metrics,
        }
    }

    /// Publishes `state` as the newest snapshot and marks the store ready.
    pub fn publish(&self, state: &State) {
        let snapshot = Arc::new(state.snapshot());
        self.metrics.revision.set(state.revision as i64);
        self.sender.send_replace(snapshot);
        self.lock_link().ready = true;
    }

    /// Records how long a change took from its write (`written`) to publication.
    pub fn observe_propagation(&self, written: SystemTime) {
        if let Ok(elapsed) = SystemTime::now().duration_since(written) {
            self.metrics.propagation.observe(elapsed.as_secs_f64());
        }
    }

    pub fn count_events(&self, n: u64) {
        self.metrics.watch_events.inc_by(n);
    }

    pub fn count_resync(&self) {
        self.metrics.resyncs.inc();
    }

    pub fn set_connected(&self, connected: bool) {
        let mut link = self.lock_link();
        if link.connected == connected {
            return;
        }
        link.connected = connected;
        link.stale_since = if connected {
            None
        } else {
            Some(Instant::now())
        };
        self.metrics.connected.set(i64::from(connected));
    }

    pub fn is_connected(&self) -> bool {
        self.lock_link().connected
    }

    pub fn snapshot(&self) -> Arc<Snapshot> {
        self.sender.borrow().clone()
    }

    pub fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.sender.subscribe()
    }

    pub fn status(&self) -> StoreStatus {
        let link = self.lock_link();
        StoreStatus {
            backend: self.backend,
            connected: link.connected,
            ready: link.ready,
            age_seconds: link
                .stale_since
                .map_or(0.0, |since| since.elapsed().as_secs_f64()),
        }
    }

    fn lock_link(&self) -> std::sync::MutexGuard<'_, Link> {
        // A panic while holding this lock cannot leave `Link` inconsistent (plain fields).
        self.link
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests;
