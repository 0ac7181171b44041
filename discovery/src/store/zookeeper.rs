//! The ZooKeeper store.
//!
//! Znode layout under the chroot (default `/strait`):
//!
//! ```text
//! /services/<service>        container node (ZooKeeper deletes it once empty)
//! /services/<service>/<id>   ephemeral, JSON `Instance`, owned by the registering session
//! /routes/<name>             persistent, JSON `Route`
//! /apps/<app>                persistent, JSON `App`
//! /deployments/<app>         container node
//! /deployments/<app>/<id>    persistent, JSON `Deployment`
//! /tokens/<id>               persistent, JSON `TokenRecord` (a hash, never a secret)
//! /locks/<name>              ephemeral, owned by the holder's session (not in snapshots)
//! ```
//!
//! One persistent recursive watch on the chroot delivers every change (no watch per node,
//! so 10k instances are one watch). Each event names a path; the sync task re-reads that
//! path, so the cache converges to the newest data even when events are coalesced.
//!
//! Failure handling:
//! * Disconnected: keep serving the last snapshot (fail static), report `connected = 0`
//!   and a growing snapshot age; writes fail with `Unavailable`.
//! * Reconnected within the session: full resync (events during connection loss can be
//!   lost, ZOOKEEPER-4698).
//! * Session expired: new session, re-create this process's own ephemeral instances
//!   (kept in `owned`), re-watch, full resync.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use futures::FutureExt;
use futures::future::join_all;
use tokio::sync::{Notify, watch};
use tracing::{debug, info, warn};
use zookeeper_client as zk;

use super::{Handover, Publisher, Store, StoreError, StoreMetrics, StoreStatus};
use crate::apps::{App, Deployment, validate_app_name, validate_lock_name};
use crate::model::{Health, Instance, Route};
use crate::snapshot::{Snapshot, State};

const SERVICES: &str = "/services";
const ROUTES: &str = "/routes";
const APPS: &str = "/apps";
const DEPLOYMENTS: &str = "/deployments";
const LOCKS: &str = "/locks";
const TOKENS: &str = "/tokens";
/// Write retries when a concurrent change (container reaped, version moved) gets in the way.
const WRITE_ATTEMPTS: usize = 5;

pub struct ZkStore {
    shared: Arc<Shared>,
}

struct Shared {
    hosts: String,
    chroot: String,
    session_timeout: Duration,
    /// The client of the current session, once connected.
    client: Mutex<Option<zk::Client>>,
    /// Instances this process registered, re-created after a session expiry.
    owned: Mutex<BTreeMap<(String, String), Instance>>,
    /// This process's earlier ZooKeeper session ids.
    previous_sessions: Mutex<Vec<i64>>,
    publisher: Publisher,
    stop: Notify,
    stopped: std::sync::atomic::AtomicBool,
    /// Set by `hand_over`: the upgraded process writes now; the session lives on (its
    /// nodes with it) until the successor has replaced them or this process exits.
    handed_over: std::sync::atomic::AtomicBool,
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    // Every critical section here is a single insert/remove/replace: never half-done.
    mutex.lock().unwrap_or_else(|p| p.into_inner())
}

fn unavailable(e: zk::Error) -> StoreError {
    StoreError::Unavailable(format!("ZooKeeper: {e}"))
}

fn instance_path(service: &str, id: &str) -> String {
    format!("{SERVICES}/{service}/{id}")
}

fn route_path(name: &str) -> String {
    format!("{ROUTES}/{name}")
}

fn app_path(name: &str) -> String {
    format!("{APPS}/{name}")
}

fn deployment_path(app: &str, id: u64) -> String {
    format!("{DEPLOYMENTS}/{app}/{id}")
}

fn token_path(id: &str) -> String {
    format!("{TOKENS}/{id}")
}

fn lock_path(name: &str) -> String {
    format!("{LOCKS}/{name}")
}

/// Creates or replaces the persistent node `path`; `parent`: a container node to create
/// first when missing (ZooKeeper deletes it once empty).
async fn put_persistent(
    client: &zk::Client,
    path: &str,
    data: &[u8],
    parent: Option<&str>,
) -> Result<(), StoreError> {
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    let container = zk::CreateMode::Container.with_acls(zk::Acls::anyone_all());
    for _ in 0..WRITE_ATTEMPTS {
        match client.set_data(path, data, None).await {
            Ok(_) => return Ok(()),
            Err(zk::Error::NoNode) => match client.create(path, data, &persistent).await {
                Ok(_) => return Ok(()),
                Err(zk::Error::NodeExists) => continue,
                Err(zk::Error::NoNode) if parent.is_some() => {
                    let parent = parent.unwrap_or_default();
                    match client.create(parent, &[], &container).await {
                        Ok(_) | Err(zk::Error::NodeExists) => continue,
                        Err(e) => return Err(unavailable(e)),
                    }
                }
                Err(e) => return Err(unavailable(e)),
            },
            Err(e) => return Err(unavailable(e)),
        }
    }
    Err(StoreError::Unavailable(format!(
        "{path}: too many concurrent updates"
    )))
}

async fn delete_node(client: &zk::Client, path: &str) -> Result<bool, StoreError> {
    match client.delete(path, None).await {
        Ok(()) => Ok(true),
        Err(zk::Error::NoNode) => Ok(false),
        Err(e) => Err(unavailable(e)),
    }
}

impl ZkStore {
    /// Starts the background session task and returns at once; the store becomes ready
    /// after its first full sync.
    pub fn start(
        hosts: &str,
        chroot: &str,
        session_timeout: Duration,
        metrics: StoreMetrics,
    ) -> Self {
        let shared = Arc::new(Shared {
            hosts: hosts.to_string(),
            chroot: chroot.to_string(),
            session_timeout,
            client: Mutex::new(None),
            owned: Mutex::new(BTreeMap::new()),
            previous_sessions: Mutex::new(Vec::new()),
            publisher: Publisher::new("zookeeper", metrics, false),
            stop: Notify::new(),
            stopped: std::sync::atomic::AtomicBool::new(false),
            handed_over: std::sync::atomic::AtomicBool::new(false),
        });
        tokio::spawn(run(Arc::clone(&shared)));
        ZkStore { shared }
    }

    /// The client to write with, if the session is usable now.
    fn client(&self) -> Result<zk::Client, StoreError> {
        if self
            .shared
            .handed_over
            .load(std::sync::atomic::Ordering::Acquire)
        {
            return Err(StoreError::Unavailable(
                "this process handed the store to its upgrade; write to the new process".into(),
            ));
        }
        let client = lock(&self.shared.client).clone();
        match client {
            Some(client) if self.shared.publisher.is_connected() => Ok(client),
            _ => Err(StoreError::Unavailable(format!(
                "not connected to ZooKeeper at {}",
                self.shared.hosts
            ))),
        }
    }
}

/// Creates or updates `instance` as an ephemeral node of `client`'s session.
/// `previous`: this process's earlier session ids. A node one of them still owns is ours
/// (that session has not expired on the server yet): it is replaced, not a conflict.
async fn put_ephemeral(
    client: &zk::Client,
    instance: &Instance,
    previous: &[i64],
) -> Result<(), StoreError> {
    let path = instance_path(&instance.service, &instance.id);
    let data = serde_json::to_vec(instance).map_err(|e| StoreError::Storage(e.to_string()))?;
    let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
    let container = zk::CreateMode::Container.with_acls(zk::Acls::anyone_all());
    for _ in 0..WRITE_ATTEMPTS {
        match client.create(&path, &data, &ephemeral).await {
            Ok(_) => return Ok(()),
            Err(zk::Error::NoNode) => {
                match client
                    .create(&format!("{SERVICES}/{}", instance.service), &[], &container)
                    .await
                {
                    Ok(_) | Err(zk::Error::NodeExists) => continue,
                    Err(e) => return Err(unavailable(e)),
                }
            }
            Err(zk::Error::NodeExists) => {
                let Some(stat) = client.check_stat(&path).await.map_err(unavailable)? else {
                    continue;
                };
                if previous.contains(&stat.ephemeral_owner) {
                    // Replaced in one transaction: watchers never see the instance missing.
                    let mut replace = client.new_multi_writer();
                    replace
                        .add_delete(&path, Some(stat.version))
                        .and_then(|()| replace.add_create(&path, &data, &ephemeral))
                        .map_err(unavailable)?;
                    match replace.commit().await {
                        Ok(_) => return Ok(()),
                        Err(zk::MultiWriteError::OperationFailed {
                            source:
                                zk::Error::NoNode | zk::Error::BadVersion | zk::Error::NodeExists,
                            ..
                        }) => continue,
                        Err(
                            zk::MultiWriteError::OperationFailed { source, .. }
                            | zk::MultiWriteError::RequestFailed { source },
                        ) => return Err(unavailable(source)),
                    }
                }
                if stat.ephemeral_owner != client.session_id().0 {
                    return Err(StoreError::Conflict(format!(
                        "instance `{}/{}` is registered by another strait process \
                         (ZooKeeper session {:#x}); deregister it there or wait for it to expire",
                        instance.service, instance.id, stat.ephemeral_owner
                    )));
                }
                match client.set_data(&path, &data, Some(stat.version)).await {
                    Ok(_) => return Ok(()),
                    Err(zk::Error::NoNode | zk::Error::BadVersion) => continue,
                    Err(e) => return Err(unavailable(e)),
                }
            }
            Err(e) => return Err(unavailable(e)),
        }
    }
    Err(StoreError::Unavailable(format!(
        "{path}: gave up after {WRITE_ATTEMPTS} concurrent changes"
    )))
}

#[async_trait]
impl Store for ZkStore {
    async fn register(&self, instance: Instance) -> Result<(), StoreError> {
        let client = self.client()?;
        let previous = lock(&self.shared.previous_sessions).clone();
        put_ephemeral(&client, &instance, &previous).await?;
        lock(&self.shared.owned).insert((instance.service.clone(), instance.id.clone()), instance);
        Ok(())
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<bool, StoreError> {
        let client = self.client()?;
        // Out of `owned` before the delete, so the watch does not take the delete for
        // another process's; back in if the delete fails.
        let key = (service.to_string(), id.to_string());
        let own = lock(&self.shared.owned).remove(&key);
        let removed = match client.delete(&instance_path(service, id), None).await {
            Ok(()) => true,
            Err(zk::Error::NoNode) => false,
            Err(e) => {
                if let Some(own) = own {
                    lock(&self.shared.owned).insert(key, own);
                }
                return Err(unavailable(e));
            }
        };
        Ok(removed)
    }

    async fn set_health(&self, service: &str, id: &str, health: Health) -> Result<(), StoreError> {
        let client = self.client()?;
        let path = instance_path(service, id);
        for _ in 0..WRITE_ATTEMPTS {
            let (data, stat) = match client.get_data(&path).await {
                Ok(found) => found,
                Err(zk::Error::NoNode) => {
                    return Err(StoreError::NotFound {
                        kind: "instance",
                        name: format!("{service}/{id}"),
                    });
                }
                Err(e) => return Err(unavailable(e)),
            };
            let mut instance: Instance = serde_json::from_slice(&data)
                .map_err(|e| StoreError::Storage(format!("{path}: undecodable instance: {e}")))?;
            instance.spec.health = health;
            let data =
                serde_json::to_vec(&instance).map_err(|e| StoreError::Storage(e.to_string()))?;
            match client.set_data(&path, &data, Some(stat.version)).await {
                Ok(_) => {
                    if let Some(own) =
                        lock(&self.shared.owned).get_mut(&(service.to_string(), id.to_string()))
                    {
                        own.spec.health = health;
                    }
                    return Ok(());
                }
                Err(zk::Error::BadVersion) => continue,
                Err(zk::Error::NoNode) => {
                    return Err(StoreError::NotFound {
                        kind: "instance",
                        name: format!("{service}/{id}"),
                    });
                }
                Err(e) => return Err(unavailable(e)),
            }
        }
        Err(StoreError::Unavailable(format!(
            "{path}: too many concurrent updates"
        )))
    }

    async fn put_route(&self, name: &str, route: Route) -> Result<(), StoreError> {
        let client = self.client()?;
        let data = serde_json::to_vec(&route).map_err(|e| StoreError::Storage(e.to_string()))?;
        put_persistent(&client, &route_path(name), &data, None).await
    }

    async fn delete_route(&self, name: &str) -> Result<bool, StoreError> {
        let client = self.client()?;
        delete_node(&client, &route_path(name)).await
    }

    async fn put_app(&self, mut app: App) -> Result<(), StoreError> {
        app.validate()?;
        let client = self.client()?;
        let data = serde_json::to_vec(&app).map_err(|e| StoreError::Storage(e.to_string()))?;
        put_persistent(&client, &app_path(&app.name), &data, None).await
    }

    async fn delete_app(&self, name: &str) -> Result<bool, StoreError> {
        validate_app_name(name)?;
        let client = self.client()?;
        delete_node(&client, &app_path(name)).await
    }

    async fn put_deployment(&self, mut deployment: Deployment) -> Result<(), StoreError> {
        deployment.validate()?;
        let client = self.client()?;
        let data =
            serde_json::to_vec(&deployment).map_err(|e| StoreError::Storage(e.to_string()))?;
        let parent = format!("{DEPLOYMENTS}/{}", deployment.app);
        put_persistent(
            &client,
            &deployment_path(&deployment.app, deployment.id),
            &data,
            Some(&parent),
        )
        .await
    }

    async fn delete_deployment(&self, app: &str, id: u64) -> Result<bool, StoreError> {
        validate_app_name(app)?;
        let client = self.client()?;
        delete_node(&client, &deployment_path(app, id)).await
    }

    async fn put_token(&self, token: crate::tokens::TokenRecord) -> Result<(), StoreError> {
        token.validate()?;
        let client = self.client()?;
        let data = serde_json::to_vec(&token).map_err(|e| StoreError::Storage(e.to_string()))?;
        put_persistent(&client, &token_path(&token.id), &data, None).await
    }

    async fn delete_token(&self, id: &str) -> Result<bool, StoreError> {
        crate::tokens::validate_token_id(id)?;
        let client = self.client()?;
        delete_node(&client, &token_path(id)).await
    }

    async fn try_lock(&self, name: &str) -> Result<bool, StoreError> {
        validate_lock_name(name)?;
        let client = self.client()?;
        let ephemeral = zk::CreateMode::Ephemeral.with_acls(zk::Acls::anyone_all());
        let owner = format!("{}:{}", hostname(), std::process::id());
        match client
            .create(&lock_path(name), owner.as_bytes(), &ephemeral)
            .await
        {
            Ok(_) => Ok(true),
            Err(zk::Error::NodeExists) => Ok(false),
            Err(e) => Err(unavailable(e)),
        }
    }

    async fn holds_lock(&self, name: &str) -> bool {
        let Ok(client) = self.client() else {
            return false;
        };
        matches!(
            client.check_stat(&lock_path(name)).await,
            Ok(Some(stat)) if stat.ephemeral_owner == client.session_id().0
        )
    }

    async fn unlock(&self, name: &str) -> Result<(), StoreError> {
        let client = self.client()?;
        let path = lock_path(name);
        match client.check_stat(&path).await {
            Ok(Some(stat)) if stat.ephemeral_owner == client.session_id().0 => {
                match client.delete(&path, Some(stat.version)).await {
                    Ok(()) | Err(zk::Error::NoNode) => Ok(()),
                    Err(e) => Err(unavailable(e)),
                }
            }
            Ok(_) => Ok(()),
            Err(e) => Err(unavailable(e)),
        }
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.shared.publisher.snapshot()
    }

    fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.shared.publisher.watch()
    }

    fn status(&self) -> StoreStatus {
        self.shared.publisher.status()
    }

    async fn shutdown(&self) {
        use std::sync::atomic::Ordering;
        if self.shared.stopped.swap(true, Ordering::SeqCst) {
            return;
        }
        // Delete our instances explicitly so peers see them go now, not after the session
        // timeout; dropping the last client then closes the session.
        if let Ok(client) = self.client() {
            let owned: Vec<_> = lock(&self.shared.owned).keys().cloned().collect();
            let deletes = owned
                .iter()
                .map(|(service, id)| client.delete(&instance_path(service, id), None));
            let _ = tokio::time::timeout(Duration::from_secs(2), join_all(deletes)).await;
        }
        lock(&self.shared.owned).clear();
        lock(&self.shared.client).take();
        self.shared.stop.notify_one();
    }

    async fn hand_over(&self) -> Result<Handover, StoreError> {
        self.shared
            .handed_over
            .store(true, std::sync::atomic::Ordering::Release);
        let instances = std::mem::take(&mut *lock(&self.shared.owned))
            .into_values()
            .collect();
        let mut sessions = lock(&self.shared.previous_sessions).clone();
        if let Some(client) = lock(&self.shared.client).as_ref() {
            sessions.push(client.session_id().0);
        }
        Ok(Handover {
            instances,
            sessions,
        })
    }

    async fn adopt(&self, handover: Handover) -> Result<(), StoreError> {
        // Also how a process takes back what it handed over (the successor failed):
        // then a node the successor already re-created under its session is ours again.
        let taking_back = self
            .shared
            .handed_over
            .swap(false, std::sync::atomic::Ordering::AcqRel);
        lock(&self.shared.previous_sessions).extend(handover.sessions);
        // A new store syncs in the background: give it its session timeout to connect.
        let deadline = tokio::time::Instant::now() + self.shared.session_timeout;
        for instance in handover.instances {
            let mut replaced = false;
            loop {
                match self.register(instance.clone()).await {
                    Ok(()) => break,
                    Err(StoreError::Conflict(_)) if taking_back && !replaced => {
                        replaced = true;
                        let client = self.client()?;
                        match client
                            .delete(&instance_path(&instance.service, &instance.id), None)
                            .await
                        {
                            Ok(()) | Err(zk::Error::NoNode) => {}
                            Err(e) => return Err(unavailable(e)),
                        }
                    }
                    Err(StoreError::Unavailable(_)) if tokio::time::Instant::now() < deadline => {
                        tokio::time::sleep(Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        Ok(())
    }
}

/// What ended one session's event loop.
enum SessionEnd {
    Expired,
    Stopped,
}

async fn run(shared: Arc<Shared>) {
    let mut state = State::default();
    let mut backoff = Duration::from_millis(100);
    loop {
        if shared.stopped.load(std::sync::atomic::Ordering::SeqCst) {
            return;
        }
        let session = tokio::select! {
            session = start_session(&shared, &mut state) => session,
            () = shared.stop.notified() => return,
        };
        match session {
            Ok(watcher) => {
                backoff = Duration::from_millis(100);
                match follow(&shared, &mut state, watcher).await {
                    SessionEnd::Stopped => return,
                    SessionEnd::Expired => {
                        warn!(hosts = %shared.hosts, "ZooKeeper session ended; starting a new one");
                    }
                }
            }
            Err(e) => {
                debug!(hosts = %shared.hosts, error = %e, "cannot start ZooKeeper session");
            }
        }
        if let Some(old) = lock(&shared.client).take() {
            let mut previous = lock(&shared.previous_sessions);
            previous.push(old.session_id().0);
            // A few suffice: an old session is gone once its timeout has passed.
            if previous.len() > 8 {
                previous.remove(0);
            }
        }
        shared.publisher.set_connected(false);
        tokio::select! {
            () = tokio::time::sleep(backoff) => {}
            () = shared.stop.notified() => return,
        }
        backoff = (backoff * 2).min(Duration::from_secs(2));
    }
}

/// Connects, lays out the chroot, watches it, re-creates owned instances, and syncs fully.
async fn start_session(
    shared: &Shared,
    state: &mut State,
) -> Result<zk::PersistentWatcher, zk::Error> {
    let connect = zk::Client::connector()
        .with_session_timeout(shared.session_timeout)
        .with_connection_timeout(Duration::from_secs(2))
        .connect(&shared.hosts);
    let root = tokio::time::timeout(shared.session_timeout.max(Duration::from_secs(2)), connect)
        .await
        .map_err(|_| zk::Error::Timeout)??;
    let persistent = zk::CreateMode::Persistent.with_acls(zk::Acls::anyone_all());
    for dir in [SERVICES, ROUTES, APPS, DEPLOYMENTS, LOCKS, TOKENS] {
        root.mkdir(&format!("{}{dir}", shared.chroot), &persistent)
            .await?;
    }
    let client = root
        .chroot(shared.chroot.as_str())
        .map_err(|_| zk::Error::BadArguments(&"invalid chroot"))?;
    let watcher = client
        .watch("/", zk::AddWatchMode::PersistentRecursive)
        .await?;
    let owned: Vec<Instance> = lock(&shared.owned).values().cloned().collect();
    for instance in &owned {
        let previous = lock(&shared.previous_sessions).clone();
        if let Err(e) = put_ephemeral(&client, instance, &previous).await {
            warn!(service = %instance.service, id = %instance.id, error = %e, "cannot re-create own instance");
        }
    }
    resync(&client, state).await?;
    shared.publisher.count_resync();
    shared.publisher.publish(state);
    *lock(&shared.client) = Some(client);
    shared.publisher.set_connected(true);
    info!(
        hosts = %shared.hosts,
        chroot = %shared.chroot,
        revision = state.revision,
        instances = state.snapshot().instance_count(),
        "ZooKeeper session established; synced"
    );
    Ok(watcher)
}

/// Follows watch events until the session ends or the store stops.
async fn follow(
    shared: &Shared,
    state: &mut State,
    mut watcher: zk::PersistentWatcher,
) -> SessionEnd {
    loop {
        let first = tokio::select! {
            event = watcher.changed() => event,
            () = shared.stop.notified() => return SessionEnd::Stopped,
        };
        // Coalesce everything already queued into one batch and one snapshot.
        let mut paths = BTreeSet::new();
        let mut session_event = None;
        let mut next = Some(first);
        while let Some(event) = next.take() {
            if event.event_type == zk::EventType::Session {
                session_event = Some(event.session_state);
                break;
            }
            paths.insert(event.path);
            next = watcher.changed().now_or_never();
        }
        if !paths.is_empty() {
            shared.publisher.count_events(paths.len() as u64);
            let client = lock(&shared.client).clone();
            if let Some(client) = client
                && apply_paths(shared, &client, state, &paths).await
            {
                state.revision += 1;
                shared.publisher.publish(state);
            }
        }
        match session_event {
            None => {}
            Some(zk::SessionState::Disconnected) => {
                warn!(hosts = %shared.hosts, "disconnected from ZooKeeper; serving the last snapshot");
                shared.publisher.set_connected(false);
            }
            Some(zk::SessionState::SyncConnected | zk::SessionState::ConnectedReadOnly) => {
                let client = lock(&shared.client).clone();
                if let Some(client) = client {
                    // The server dropped our watch with the old connection, and
                    // zookeeper-client 0.11.2 does not resend persistent watches
                    // (`resend_watches` never raises its SetWatches2 index), so add it
                    // again before resyncing: no change can fall between the two.
                    match client
                        .watch("/", zk::AddWatchMode::PersistentRecursive)
                        .await
                    {
                        Ok(renewed) => watcher = renewed,
                        Err(e) => {
                            warn!(error = %e, "cannot re-add the watch after reconnecting; starting a new session");
                            shared.publisher.set_connected(false);
                            return SessionEnd::Expired;
                        }
                    }
                    match resync(&client, state).await {
                        Ok(()) => {
                            shared.publisher.count_resync();
                            shared.publisher.publish(state);
                            shared.publisher.set_connected(true);
                            info!(hosts = %shared.hosts, revision = state.revision, "reconnected to ZooKeeper; resynced");
                        }
                        Err(e) => {
                            // Without a resync the cache may miss changes made while we
                            // were away; start over with a fresh session.
                            warn!(error = %e, "resync after reconnect failed; starting a new session");
                            shared.publisher.set_connected(false);
                            return SessionEnd::Expired;
                        }
                    }
                }
            }
            Some(terminal) => {
                shared.publisher.set_connected(false);
                debug!(state = ?terminal, "ZooKeeper session terminated");
                return SessionEnd::Expired;
            }
        }
    }
}

/// What a znode path means in our layout.
enum Node<'a> {
    Service(&'a str),
    Instance(&'a str, &'a str),
    Route(&'a str),
    App(&'a str),
    /// An app's container of deployments.
    Deployments(&'a str),
    Deployment(&'a str, &'a str),
    Token(&'a str),
    Other,
}

fn classify(path: &str) -> Node<'_> {
    let mut parts = path.trim_start_matches('/').split('/');
    match (parts.next(), parts.next(), parts.next(), parts.next()) {
        (Some("services"), Some(service), None, None) => Node::Service(service),
        (Some("services"), Some(service), Some(id), None) => Node::Instance(service, id),
        (Some("routes"), Some(name), None, None) => Node::Route(name),
        (Some("apps"), Some(name), None, None) => Node::App(name),
        (Some("deployments"), Some(app), None, None) => Node::Deployments(app),
        (Some("deployments"), Some(app), Some(id), None) => Node::Deployment(app, id),
        (Some("tokens"), Some(id), None, None) => Node::Token(id),
        _ => Node::Other,
    }
}

/// The result of re-reading one path after a watch event.
enum Read {
    Data(Result<(Vec<u8>, zk::Stat), zk::Error>),
    Exists(Result<Option<zk::Stat>, zk::Error>),
}

/// Re-reads every path in `paths` and applies what it finds. Returns whether the state changed.
async fn apply_paths(
    shared: &Shared,
    client: &zk::Client,
    state: &mut State,
    paths: &BTreeSet<String>,
) -> bool {
    let reads = paths.iter().map(|path| async move {
        let read = match classify(path) {
            Node::Instance(..)
            | Node::Route(_)
            | Node::App(_)
            | Node::Deployment(..)
            | Node::Token(_) => Some(Read::Data(client.get_data(path).await)),
            Node::Service(_) | Node::Deployments(_) => {
                Some(Read::Exists(client.check_stat(path).await))
            }
            Node::Other => None,
        };
        (path, read)
    });
    let mut changed = false;
    let now_ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX));
    // The write time of this batch's changes only: a deletion has no mtime to read, and
    // an earlier write's time would make it look as old as that write.
    state.changed_at = None;
    for (path, read) in join_all(reads).await {
        match (classify(path), read) {
            // Only a deleted service node matters: it takes its instances with it.
            (Node::Service(service), Some(Read::Exists(Ok(None)))) => {
                changed |= state.remove_service(service);
            }
            (Node::Instance(service, id), Some(Read::Data(Ok((data, stat))))) => {
                match decode_instance(path, service, id, &data) {
                    Some(instance) => {
                        // One of ours changed by another process (a health set through its
                        // admin API): a new session re-creates it as it now is.
                        if let Some(own) =
                            lock(&shared.owned).get_mut(&(service.to_string(), id.to_string()))
                            && *own != instance
                        {
                            *own = instance.clone();
                        }
                        if state.upsert_instance(instance) {
                            changed = true;
                            observe_mtime(shared, state, now_ms, stat.mtime);
                        }
                    }
                    None => changed |= state.remove_instance(service, id).is_some(),
                }
            }
            (Node::Route(name), Some(Read::Data(Ok((data, stat))))) => {
                match decode_route(path, name, &data) {
                    Some(route) => {
                        if state.upsert_route(name, route) {
                            changed = true;
                            observe_mtime(shared, state, now_ms, stat.mtime);
                        }
                    }
                    None => changed |= state.remove_route(name),
                }
            }
            (Node::Instance(service, id), Some(Read::Data(Err(zk::Error::NoNode)))) => {
                // One of ours deleted by another process while our session lives (its own
                // expiry deletes nothing we see): a new session must not bring it back.
                if lock(&shared.owned)
                    .remove(&(service.to_string(), id.to_string()))
                    .is_some()
                {
                    info!(service = %service, id = %id, "own instance deleted through another process; it will not be re-created");
                }
                changed |= state.remove_instance(service, id).is_some();
            }
            (Node::Route(name), Some(Read::Data(Err(zk::Error::NoNode)))) => {
                changed |= state.remove_route(name);
            }
            (Node::App(name), Some(Read::Data(Ok((data, stat))))) => {
                match decode_app(path, name, &data) {
                    Some(app) => {
                        if state.upsert_app(app) {
                            changed = true;
                            observe_mtime(shared, state, now_ms, stat.mtime);
                        }
                    }
                    None => changed |= state.remove_app(name),
                }
            }
            (Node::App(name), Some(Read::Data(Err(zk::Error::NoNode)))) => {
                changed |= state.remove_app(name);
            }
            (Node::Deployments(app), Some(Read::Exists(Ok(None)))) => {
                let ids: Vec<u64> = state
                    .deployments
                    .get(app)
                    .map(|d| d.keys().copied().collect())
                    .unwrap_or_default();
                for id in ids {
                    changed |= state.remove_deployment(app, id);
                }
            }
            (Node::Deployment(app, id), Some(Read::Data(Ok((data, stat))))) => {
                match decode_deployment(path, app, id, &data) {
                    Some(deployment) => {
                        changed |= state.set_unreadable(app, deployment.id, false);
                        if state.upsert_deployment(deployment) {
                            changed = true;
                            observe_mtime(shared, state, now_ms, stat.mtime);
                        }
                    }
                    None => {
                        if let Ok(id) = id.parse() {
                            changed |= state.remove_deployment(app, id);
                            changed |= state.set_unreadable(app, id, true);
                        }
                    }
                }
            }
            (Node::Token(id), Some(Read::Data(Ok((data, _))))) => {
                match decode_token(path, id, &data) {
                    Some(token) => changed |= state.upsert_token(token),
                    None => changed |= state.remove_token(id),
                }
            }
            (Node::Token(id), Some(Read::Data(Err(zk::Error::NoNode)))) => {
                changed |= state.remove_token(id);
            }
            (Node::Deployment(app, id), Some(Read::Data(Err(zk::Error::NoNode)))) => {
                if let Ok(id) = id.parse() {
                    changed |= state.remove_deployment(app, id);
                    changed |= state.set_unreadable(app, id, false);
                }
            }
            (_, Some(Read::Data(Err(e)) | Read::Exists(Err(e)))) => {
                // The next reconnect resyncs everything; nothing is lost by skipping now.
                debug!(path, error = %e, "read after watch event failed");
            }
            _ => {}
        }
    }
    changed
}

/// ZooKeeper's mtime is the server's wall clock in ms; on one host (or NTP-synced hosts)
/// `now - mtime` is the write-to-publish latency.
fn observe_mtime(shared: &Shared, state: &mut State, now_ms: i64, mtime_ms: i64) {
    if mtime_ms > 0 && now_ms >= mtime_ms {
        let written = UNIX_EPOCH + Duration::from_millis(mtime_ms as u64);
        shared.publisher.observe_propagation(written);
        if state.changed_at.is_none_or(|t| t < written) {
            state.changed_at = Some(written);
        }
    }
}

fn decode_instance(path: &str, service: &str, id: &str, data: &[u8]) -> Option<Instance> {
    let mut instance: Instance = match serde_json::from_slice(data) {
        Ok(instance) => instance,
        Err(e) => {
            warn!(path, error = %e, "ignoring undecodable instance znode");
            return None;
        }
    };
    if instance.service != service || instance.id != id {
        warn!(
            path,
            "ignoring instance znode whose body names another service or id"
        );
        return None;
    }
    match Instance::new(service, id, instance.spec.clone()) {
        Ok(valid) => instance = valid,
        Err(e) => {
            warn!(path, error = %e, "ignoring invalid instance znode");
            return None;
        }
    }
    Some(instance)
}

fn decode_route(path: &str, name: &str, data: &[u8]) -> Option<Route> {
    let mut route: Route = match serde_json::from_slice(data) {
        Ok(route) => route,
        Err(e) => {
            warn!(path, error = %e, "ignoring undecodable route znode");
            return None;
        }
    };
    if let Err(e) = crate::model::validate_id("route name", name).and_then(|()| route.validate()) {
        warn!(path, error = %e, "ignoring invalid route znode");
        return None;
    }
    Some(route)
}

fn decode_app(path: &str, name: &str, data: &[u8]) -> Option<App> {
    let mut app: App = match serde_json::from_slice(data) {
        Ok(app) => app,
        Err(e) => {
            warn!(path, error = %e, "ignoring undecodable app znode");
            return None;
        }
    };
    if app.name != name {
        warn!(path, "ignoring app znode whose body names another app");
        return None;
    }
    if let Err(e) = app.validate() {
        warn!(path, error = %e, "ignoring invalid app znode");
        return None;
    }
    Some(app)
}

fn decode_deployment(path: &str, app: &str, id: &str, data: &[u8]) -> Option<Deployment> {
    let mut deployment: Deployment = match serde_json::from_slice(data) {
        Ok(deployment) => deployment,
        Err(e) => {
            warn!(path, error = %e, "ignoring undecodable deployment znode");
            return None;
        }
    };
    if deployment.app != app || id.parse() != Ok(deployment.id) {
        warn!(
            path,
            "ignoring deployment znode whose body names another deployment"
        );
        return None;
    }
    if let Err(e) = deployment.validate() {
        warn!(path, error = %e, "ignoring invalid deployment znode");
        return None;
    }
    Some(deployment)
}

fn decode_token(path: &str, id: &str, data: &[u8]) -> Option<crate::tokens::TokenRecord> {
    let token: crate::tokens::TokenRecord = match serde_json::from_slice(data) {
        Ok(token) => token,
        Err(e) => {
            warn!(path, error = %e, "ignoring undecodable token znode");
            return None;
        }
    };
    if token.id != id {
        warn!(path, "ignoring token znode whose body names another token");
        return None;
    }
    if let Err(e) = token.validate() {
        warn!(path, error = %e, "ignoring invalid token znode");
        return None;
    }
    Some(token)
}

/// This host's name, for lock owners (`host:pid`).
fn hostname() -> String {
    rustix::system::uname()
        .nodename()
        .to_string_lossy()
        .into_owned()
}

/// Reads the whole layout and replaces `state` with it (bumping the revision if it differs).
async fn resync(client: &zk::Client, state: &mut State) -> Result<(), zk::Error> {
    let services = client.list_children(SERVICES).await?;
    let listings = join_all(services.iter().map(|service| async move {
        let path = format!("{SERVICES}/{service}");
        (service, client.list_children(&path).await)
    }))
    .await;
    let mut instance_paths = Vec::new();
    for (service, listing) in listings {
        match listing {
            Ok(ids) => instance_paths.extend(ids.into_iter().map(|id| (service.clone(), id))),
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    let reads = join_all(instance_paths.iter().map(|(service, id)| {
        let path = instance_path(service, id);
        async move { (client.get_data(&path).await, path) }
    }))
    .await;
    let mut next = State::default();
    for ((service, id), (result, path)) in instance_paths.iter().zip(reads) {
        match result {
            Ok((data, _)) => {
                if let Some(instance) = decode_instance(&path, service, id, &data) {
                    next.upsert_instance(instance);
                }
            }
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    let names = client.list_children(ROUTES).await?;
    let reads = join_all(names.iter().map(|name| {
        let path = route_path(name);
        async move { (client.get_data(&path).await, path) }
    }))
    .await;
    for (name, (result, path)) in names.iter().zip(reads) {
        match result {
            Ok((data, _)) => {
                if let Some(route) = decode_route(&path, name, &data) {
                    next.upsert_route(name, route);
                }
            }
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    let names = client.list_children(APPS).await?;
    let reads = join_all(names.iter().map(|name| {
        let path = app_path(name);
        async move { (client.get_data(&path).await, path) }
    }))
    .await;
    for (name, (result, path)) in names.iter().zip(reads) {
        match result {
            Ok((data, _)) => {
                if let Some(app) = decode_app(&path, name, &data) {
                    next.upsert_app(app);
                }
            }
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    let apps = client.list_children(DEPLOYMENTS).await?;
    for app in &apps {
        let ids = match client.list_children(&format!("{DEPLOYMENTS}/{app}")).await {
            Ok(ids) => ids,
            Err(zk::Error::NoNode) => continue,
            Err(e) => return Err(e),
        };
        let reads = join_all(ids.iter().map(|id| {
            let path = format!("{DEPLOYMENTS}/{app}/{id}");
            async move { (client.get_data(&path).await, path) }
        }))
        .await;
        for (id, (result, path)) in ids.iter().zip(reads) {
            match result {
                Ok((data, _)) => match decode_deployment(&path, app, id, &data) {
                    Some(deployment) => {
                        next.upsert_deployment(deployment);
                    }
                    None => {
                        if let Ok(id) = id.parse() {
                            next.set_unreadable(app, id, true);
                        }
                    }
                },
                Err(zk::Error::NoNode) => {}
                Err(e) => return Err(e),
            }
        }
    }
    let ids = client.list_children(TOKENS).await?;
    let reads = join_all(ids.iter().map(|id| {
        let path = token_path(id);
        async move { (client.get_data(&path).await, path) }
    }))
    .await;
    for (id, (result, path)) in ids.iter().zip(reads) {
        match result {
            Ok((data, _)) => {
                if let Some(token) = decode_token(&path, id, &data) {
                    next.upsert_token(token);
                }
            }
            Err(zk::Error::NoNode) => {}
            Err(e) => return Err(e),
        }
    }
    if next.services != state.services
        || next.routes != state.routes
        || next.apps != state.apps
        || next.deployments != state.deployments
        || next.tokens != state.tokens
        || next.unreadable_deployments != state.unreadable_deployments
        || state.revision == 0
    {
        // A resync's changes have no single write time.
        next.changed_at = None;
        next.revision = state.revision + 1;
        *state = next;
    }
    Ok(())
}
