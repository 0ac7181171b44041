//! The embedded single-node store.
//!
//! Routes are persistent: a route write appends one checksummed record to `routes.log` in
//! the data directory and syncs it before it is applied; the log is folded into
//! `routes.json` when it outgrows it (`route_log.rs` has the formats and the crash
//! reasoning). Instances live in memory only: they are owned by this process (or by a
//! lease the admin API holds for a remote owner) and vanish with it. An exclusive lock on
//! `LOCK` keeps two processes off one data directory; on a binary upgrade the old process
//! releases it and hands its instances to the new one.

use std::collections::HashSet;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use tokio::sync::watch;

use super::records::{self, RecordMaps, RecordOp, Records};
use super::route_log::{self, RouteLog, RouteOp, storage_error};
use super::{Handover, Publisher, Store, StoreError, StoreMetrics, StoreStatus};
use crate::apps::{App, Deployment, validate_app_name, validate_lock_name};
use crate::model::{Health, Instance, Route};
use crate::snapshot::{Snapshot, State};

const LOCK_FILE: &str = "LOCK";

pub struct EmbeddedStore {
    data_dir: PathBuf,
    /// What a route write needs, shared with the blocking task that makes it: a write
    /// runs to its end (logged and applied, or neither) even if its caller goes away.
    shared: Arc<Shared>,
    /// The data directory's lock, released by `hand_over`.
    lock: Mutex<Option<File>>,
    /// Named locks (apps' rollout locks): this process is the only holder there is.
    locks: Mutex<HashSet<String>>,
}

struct Shared {
    state: Mutex<State>,
    /// The routes log. Held for a whole route write, so writes are serialised and the
    /// log and the state agree on order.
    log: Mutex<RouteLog>,
    /// The deploy records' files. Held for a whole record write, as `log` for routes.
    records: Mutex<Records>,
    publisher: Publisher,
    /// Set by `hand_over`: the successor owns the data directory now.
    handed_over: AtomicBool,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the data directory and loads its routes.
    pub async fn open(data_dir: &Path, metrics: StoreMetrics) -> Result<Self, StoreError> {
        let dir = data_dir.to_path_buf();
        let (lock, state, log, records) =
            tokio::task::spawn_blocking(move || load(&dir))
                .await
                .map_err(|e| StoreError::Storage(format!("loading task failed: {e}")))??;
        let publisher = Publisher::new("embedded", metrics, true);
        publisher.publish(&state);
        Ok(EmbeddedStore {
            data_dir: data_dir.to_path_buf(),
            shared: Arc::new(Shared {
                state: Mutex::new(state),
                log: Mutex::new(log),
                records: Mutex::new(records),
                publisher,
                handed_over: AtomicBool::new(false),
            }),
            lock: Mutex::new(Some(lock)),
            locks: Mutex::new(HashSet::new()),
        })
    }

    /// A deploy record write, on a blocking thread (it syncs its file).
    async fn write_record(&self, op: RecordOp) -> Result<bool, StoreError> {
        let written = SystemTime::now();
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || shared.write_record(op, written))
            .await
            .map_err(|e| StoreError::Storage(format!("record write task failed: {e}")))?
    }

    fn lock_locks(&self) -> MutexGuard<'_, HashSet<String>> {
        self.locks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A route write, on a blocking thread (it syncs the log); `Ok(false)`: it would
    /// change nothing, and nothing was written.
    async fn write_route(&self, op: RouteOp) -> Result<bool, StoreError> {
        let written = SystemTime::now();
        let shared = Arc::clone(&self.shared);
        tokio::task::spawn_blocking(move || shared.write_route(op, written))
            .await
            .map_err(|e| StoreError::Storage(format!("route write task failed: {e}")))?
    }
}

impl Shared {
    fn lock_state(&self) -> MutexGuard<'_, State> {
        // State mutations below are single assignments after all fallible work, so a
        // poisoned lock still guards a consistent value.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lock_records(&self) -> MutexGuard<'_, Records> {
        self.records.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes a deploy record write durable in its file, then applies it. Blocking.
    fn write_record(&self, op: RecordOp, written: SystemTime) -> Result<bool, StoreError> {
        let records = self.lock_records();
        let changes = {
            let state = self.lock_state();
            self.ensure_owner()?;
            let (mut apps, mut deployments, mut tokens) = (
                Arc::clone(&state.apps),
                Arc::clone(&state.deployments),
                Arc::clone(&state.tokens),
            );
            op.clone().apply(RecordMaps {
                apps: &mut apps,
                deployments: &mut deployments,
                tokens: &mut tokens,
            })
        };
        if !changes {
            return Ok(false);
        }
        records.write(&op)?;
        self.apply(written, |state| {
            let maps = RecordMaps {
                apps: &mut state.apps,
                deployments: &mut state.deployments,
                tokens: &mut state.tokens,
            };
            (op.apply(maps), ())
        })?;
        Ok(true)
    }

    fn lock_log(&self) -> MutexGuard<'_, RouteLog> {
        // `RouteLog` notes a failed append itself (`needs_snapshot`).
        self.log.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn ensure_owner(&self) -> Result<(), StoreError> {
        if self.handed_over.load(Ordering::Acquire) {
            return Err(StoreError::Unavailable(
                "this process handed the store to its upgrade; write to the new process".into(),
            ));
        }
        Ok(())
    }

    /// Applies `change` to the state; publishes a new revision if it changed anything.
    /// Checked under the state's lock, so no write lands after `hand_over` took the state.
    fn apply<T>(
        &self,
        written: SystemTime,
        change: impl FnOnce(&mut State) -> (bool, T),
    ) -> Result<T, StoreError> {
        let mut state = self.lock_state();
        self.ensure_owner()?;
        let (changed, result) = change(&mut state);
        if changed {
            state.revision += 1;
            state.changed_at = Some(written);
            self.publisher.count_events(1);
            self.publisher.publish(&state);
            self.publisher.observe_propagation(written);
        }
        Ok(result)
    }

    /// Makes a route write durable in the log, then applies it. Blocking.
    fn write_route(&self, op: RouteOp, written: SystemTime) -> Result<bool, StoreError> {
        let mut log = self.lock_log();
        let (routes, revision) = {
            let state = self.lock_state();
            self.ensure_owner()?;
            if !op.changes(&state.routes) {
                return Ok(false);
            }
            (Arc::clone(&state.routes), state.revision + 1)
        };
        log.append(revision, &op, &routes)?;
        log.maybe_compact(revision, &routes, &op);
        // Cannot fail: `hand_over` takes the log before it sets `handed_over`.
        self.apply(written, |state| (op.apply(&mut state.routes), ()))?;
        Ok(true)
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn register(&self, instance: Instance) -> Result<(), StoreError> {
        let written = SystemTime::now();
        self.shared
            .apply(written, |state| (state.upsert_instance(instance), ()))
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<bool, StoreError> {
        let written = SystemTime::now();
        self.shared.apply(written, |state| {
            let removed = state.remove_instance(service, id).is_some();
            (removed, removed)
        })
    }

    async fn set_health(&self, service: &str, id: &str, health: Health) -> Result<(), StoreError> {
        let written = SystemTime::now();
        self.shared.apply(written, |state| {
            let Some(mut instance) = state.snapshot().instance(service, id).cloned() else {
                return (
                    false,
                    Err(StoreError::NotFound {
                        kind: "instance",
                        name: format!("{service}/{id}"),
                    }),
                );
            };
            instance.spec.health = health;
            (state.upsert_instance(instance), Ok(()))
        })?
    }

    async fn put_route(&self, name: &str, route: Route) -> Result<(), StoreError> {
        self.write_route(RouteOp::Put {
            name: name.to_string(),
            route: Box::new(route),
        })
        .await?;
        Ok(())
    }

    async fn delete_route(&self, name: &str) -> Result<bool, StoreError> {
        self.write_route(RouteOp::Delete {
            name: name.to_string(),
        })
        .await
    }

    async fn put_app(&self, mut app: App) -> Result<(), StoreError> {
        app.validate()?;
        self.write_record(RecordOp::PutApp(Box::new(app))).await?;
        Ok(())
    }

    async fn delete_app(&self, name: &str) -> Result<bool, StoreError> {
        validate_app_name(name)?;
        self.write_record(RecordOp::DeleteApp(name.to_string()))
            .await
    }

    async fn put_deployment(&self, mut deployment: Deployment) -> Result<(), StoreError> {
        deployment.validate()?;
        self.write_record(RecordOp::PutDeployment(Box::new(deployment)))
            .await?;
        Ok(())
    }

    async fn delete_deployment(&self, app: &str, id: u64) -> Result<bool, StoreError> {
        validate_app_name(app)?;
        self.write_record(RecordOp::DeleteDeployment(app.to_string(), id))
            .await
    }

    async fn put_token(&self, token: crate::tokens::TokenRecord) -> Result<(), StoreError> {
        token.validate()?;
        self.write_record(RecordOp::PutToken(Box::new(token)))
            .await?;
        Ok(())
    }

    async fn delete_token(&self, id: &str) -> Result<bool, StoreError> {
        crate::tokens::validate_token_id(id)?;
        self.write_record(RecordOp::DeleteToken(id.to_string()))
            .await
    }

    async fn try_lock(&self, name: &str) -> Result<bool, StoreError> {
        validate_lock_name(name)?;
        self.shared.ensure_owner()?;
        Ok(self.lock_locks().insert(name.to_string()))
    }

    async fn holds_lock(&self, name: &str) -> bool {
        !self.shared.handed_over.load(Ordering::Acquire) && self.lock_locks().contains(name)
    }

    async fn unlock(&self, name: &str) -> Result<(), StoreError> {
        self.lock_locks().remove(name);
        Ok(())
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
        // Folds the log into `routes.json`, as `hand_over` does: a strait started next on
        // this directory may be an older one that reads only that file.
        let shared = Arc::clone(&self.shared);
        let _ = tokio::task::spawn_blocking(move || {
            // The log held, no route write runs; the state is not held while syncing.
            let mut log = shared.lock_log();
            let (revision, routes) = {
                let state = shared.lock_state();
                (state.revision, Arc::clone(&state.routes))
            };
            if !shared.handed_over.load(Ordering::Acquire) {
                log.fold(revision, &routes);
            }
        })
        .await;
    }

    async fn hand_over(&self) -> Result<Handover, StoreError> {
        let shared = Arc::clone(&self.shared);
        let instances = tokio::task::spawn_blocking(move || {
            // No route or record write is half done once the log and the records are
            // held, and none starts after.
            let mut log = shared.lock_log();
            let _records = shared.lock_records();
            // Set under the state's lock: a write either landed before (and is in
            // `instances`) or fails.
            let (revision, routes, instances) = {
                let state = shared.lock_state();
                shared.handed_over.store(true, Ordering::Release);
                let instances = state
                    .services
                    .values()
                    .flat_map(|service| service.instances.values().cloned())
                    .collect();
                (state.revision, Arc::clone(&state.routes), instances)
            };
            // Everything in `routes.json`, so a successor that reads only that file (an
            // older strait, rolled back to) misses nothing.
            log.fold(revision, &routes);
            instances
        })
        .await
        .map_err(|e| StoreError::Storage(format!("hand-over task failed: {e}")))?;
        // Dropping the file releases the lock for the successor.
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok(Handover {
            instances,
            sessions: Vec::new(),
        })
    }

    async fn adopt(&self, handover: Handover) -> Result<(), StoreError> {
        let written = SystemTime::now();
        if self.shared.handed_over.load(Ordering::Acquire) {
            // Taking back what this process handed over (the successor failed). Route
            // writes fail until `handed_over` is cleared below.
            let dir = self.data_dir.clone();
            // A successor that failed may still be exiting, its lock not yet released.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let lock = loop {
                let dir = dir.clone();
                match tokio::task::spawn_blocking(move || lock_data_dir(&dir))
                    .await
                    .map_err(|e| StoreError::Storage(format!("locking task failed: {e}")))?
                {
                    Ok(lock) => break lock,
                    Err(_) if std::time::Instant::now() < deadline => {
                        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    }
                    Err(e) => return Err(e),
                }
            };
            // The successor may have written routes meanwhile: read them back, and the log
            // from where it ends now. On failure the lock goes again with `lock`.
            let dir = self.data_dir.clone();
            let (loaded, records) = tokio::task::spawn_blocking(move || {
                Ok::<_, StoreError>((route_log::load(&dir)?, records::load(&dir)?))
            })
            .await
            .map_err(|e| StoreError::Storage(format!("loading task failed: {e}")))??;
            *self.lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(lock);
            let shared = &self.shared;
            *shared.lock_log() = loaded.log;
            *shared.lock_records() = records.records;
            {
                let mut state = shared.lock_state();
                // Never behind the log's revisions, or later records would be skipped on load.
                state.revision = state.revision.max(loaded.revision);
                if state.routes != loaded.routes
                    || state.apps != records.apps
                    || state.deployments != records.deployments
                    || state.tokens != records.tokens
                {
                    state.routes = loaded.routes;
                    state.apps = records.apps;
                    state.deployments = records.deployments;
                    state.tokens = records.tokens;
                    state.revision += 1;
                    state.changed_at = Some(written);
                    shared.publisher.publish(&state);
                }
            }
            shared.handed_over.store(false, Ordering::Release);
        }
        self.shared.apply(written, |state| {
            let mut changed = false;
            for instance in handover.instances {
                changed |= state.upsert_instance(instance);
            }
            (changed, ())
        })
    }
}

fn lock_data_dir(dir: &Path) -> Result<File, StoreError> {
    let lock_path = dir.join(LOCK_FILE);
    let lock = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| storage_error(&lock_path, "cannot open", e))?;
    lock.try_lock().map_err(|_| {
        StoreError::Storage(format!(
            "{}: data directory is in use by another strait process (use another --data-dir)",
            dir.display()
        ))
    })?;
    Ok(lock)
}

fn load(dir: &Path) -> Result<(File, State, RouteLog, Records), StoreError> {
    std::fs::create_dir_all(dir)
        .map_err(|e| storage_error(dir, "cannot create data directory", e))?;
    let lock = lock_data_dir(dir)?;
    let loaded = route_log::load(dir)?;
    let records = records::load(dir)?;
    let state = State {
        routes: loaded.routes,
        revision: loaded.revision,
        apps: records.apps,
        deployments: records.deployments,
        tokens: records.tokens,
        ..State::default()
    };
    Ok((lock, state, loaded.log, records.records))
}
