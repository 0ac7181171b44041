//! The embedded single-node store.
//!
//! Routes are persistent: every route write rewrites `routes.json` in the data directory
//! (temporary file, fsync, rename, fsync of the directory), so a crash leaves either the
//! old or the new file, never a torn one. Instances live in memory only: they are owned by
//! this process (or by a lease the admin API holds for a remote owner) and vanish with it.
//! An exclusive lock on `LOCK` keeps two processes off one data directory; on a binary
//! upgrade the old process releases it and hands its instances to the new one.

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::SystemTime;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use super::{Handover, Publisher, Store, StoreError, StoreMetrics, StoreStatus};
use crate::model::{Health, Instance, Route};
use crate::snapshot::{Snapshot, State};

const ROUTES_FILE: &str = "routes.json";
const LOCK_FILE: &str = "LOCK";
const FORMAT: u32 = 1;

#[derive(Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    format: u32,
    revision: u64,
    routes: BTreeMap<String, Route>,
}

pub struct EmbeddedStore {
    data_dir: PathBuf,
    state: Mutex<State>,
    /// Serialises route writes so the file on disk and the state agree on order.
    route_writes: tokio::sync::Mutex<()>,
    publisher: Publisher,
    /// The data directory's lock, released by `hand_over`.
    lock: Mutex<Option<File>>,
    /// Set by `hand_over`: the successor owns the data directory now.
    handed_over: AtomicBool,
}

impl EmbeddedStore {
    /// Opens (creating if needed) the data directory and loads its routes.
    pub async fn open(data_dir: &Path, metrics: StoreMetrics) -> Result<Self, StoreError> {
        let dir = data_dir.to_path_buf();
        let (lock, state) = tokio::task::spawn_blocking(move || load(&dir))
            .await
            .map_err(|e| StoreError::Storage(format!("loading task failed: {e}")))??;
        let publisher = Publisher::new("embedded", metrics, true);
        publisher.publish(&state);
        Ok(EmbeddedStore {
            data_dir: data_dir.to_path_buf(),
            state: Mutex::new(state),
            route_writes: tokio::sync::Mutex::new(()),
            publisher,
            lock: Mutex::new(Some(lock)),
            handed_over: AtomicBool::new(false),
        })
    }

    fn lock_state(&self) -> MutexGuard<'_, State> {
        // State mutations below are single assignments after all fallible work, so a
        // poisoned lock still guards a consistent value.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
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

    async fn write_routes(
        &self,
        change: impl FnOnce(&mut State) -> bool,
    ) -> Result<bool, StoreError> {
        let written = SystemTime::now();
        let _serial = self.route_writes.lock().await;
        self.ensure_owner()?;
        let mut next = self.lock_state().clone();
        if !change(&mut next) {
            return Ok(false);
        }
        let file = RoutesFile {
            format: FORMAT,
            revision: next.revision + 1,
            routes: next
                .routes
                .iter()
                .map(|(name, route)| (name.to_string(), Route::clone(route)))
                .collect(),
        };
        let dir = self.data_dir.clone();
        tokio::task::spawn_blocking(move || persist(&dir, &file))
            .await
            .map_err(|e| StoreError::Storage(format!("persist task failed: {e}")))??;
        let routes = next.routes;
        self.apply(written, |state| {
            state.routes = routes;
            (true, ())
        })?;
        Ok(true)
    }
}

#[async_trait]
impl Store for EmbeddedStore {
    async fn register(&self, instance: Instance) -> Result<(), StoreError> {
        let written = SystemTime::now();
        self.apply(written, |state| (state.upsert_instance(instance), ()))
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<bool, StoreError> {
        let written = SystemTime::now();
        self.apply(written, |state| {
            let removed = state.remove_instance(service, id).is_some();
            (removed, removed)
        })
    }

    async fn set_health(&self, service: &str, id: &str, health: Health) -> Result<(), StoreError> {
        let written = SystemTime::now();
        self.apply(written, |state| {
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
        self.write_routes(|state| state.upsert_route(name, route))
            .await?;
        Ok(())
    }

    async fn delete_route(&self, name: &str) -> Result<bool, StoreError> {
        self.write_routes(|state| state.remove_route(name)).await
    }

    fn snapshot(&self) -> Arc<Snapshot> {
        self.publisher.snapshot()
    }

    fn watch(&self) -> watch::Receiver<Arc<Snapshot>> {
        self.publisher.watch()
    }

    fn status(&self) -> StoreStatus {
        self.publisher.status()
    }

    async fn shutdown(&self) {}

    async fn hand_over(&self) -> Result<Handover, StoreError> {
        // No route write is half done once this is held, and none starts after.
        let _serial = self.route_writes.lock().await;
        // Set under the state's lock: a write either landed before (and is in
        // `instances`) or fails.
        let state = self.lock_state();
        self.handed_over.store(true, Ordering::Release);
        let instances = state
            .services
            .values()
            .flat_map(|service| service.instances.values().cloned())
            .collect();
        drop(state);
        // Dropping the file releases the lock for the successor.
        self.lock.lock().unwrap_or_else(|p| p.into_inner()).take();
        Ok(Handover {
            instances,
            sessions: Vec::new(),
        })
    }

    async fn adopt(&self, handover: Handover) -> Result<(), StoreError> {
        let written = SystemTime::now();
        if self.handed_over.load(Ordering::Acquire) {
            // Taking back what this process handed over (the successor failed).
            let _serial = self.route_writes.lock().await;
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
            *self.lock.lock().unwrap_or_else(|p| p.into_inner()) = Some(lock);
            self.handed_over.store(false, Ordering::Release);
        }
        self.apply(written, |state| {
            let mut changed = false;
            for instance in handover.instances {
                changed |= state.upsert_instance(instance);
            }
            (changed, ())
        })
    }
}

fn storage_error(path: &Path, what: &str, e: impl std::fmt::Display) -> StoreError {
    StoreError::Storage(format!("{}: {what}: {e}", path.display()))
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

fn load(dir: &Path) -> Result<(File, State), StoreError> {
    fs::create_dir_all(dir).map_err(|e| storage_error(dir, "cannot create data directory", e))?;
    let lock = lock_data_dir(dir)?;
    let path = dir.join(ROUTES_FILE);
    let mut state = State::default();
    match fs::read(&path) {
        Ok(bytes) => {
            let file: RoutesFile = serde_json::from_slice(&bytes).map_err(|e| {
                storage_error(
                    &path,
                    "corrupt routes file (not replaced; fix or move it)",
                    e,
                )
            })?;
            if file.format != FORMAT {
                return Err(storage_error(&path, "unsupported format", file.format));
            }
            for (name, mut route) in file.routes {
                crate::model::validate_id("route name", &name)
                    .and_then(|()| route.validate())
                    .map_err(|e| storage_error(&path, &format!("route `{name}` is invalid"), e))?;
                state.upsert_route(&name, route);
            }
            state.revision = file.revision;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(storage_error(&path, "cannot read", e)),
    }
    // A temporary file left by a crash mid-write is garbage: the rename never happened.
    let _ = fs::remove_file(dir.join(format!("{ROUTES_FILE}.tmp")));
    Ok((lock, state))
}

fn persist(dir: &Path, file: &RoutesFile) -> Result<(), StoreError> {
    let path = dir.join(ROUTES_FILE);
    let tmp = dir.join(format!("{ROUTES_FILE}.tmp"));
    let bytes = serde_json::to_vec_pretty(file).map_err(|e| storage_error(&path, "encode", e))?;
    let mut out = File::create(&tmp).map_err(|e| storage_error(&tmp, "create", e))?;
    out.write_all(&bytes)
        .map_err(|e| storage_error(&tmp, "write", e))?;
    out.sync_all()
        .map_err(|e| storage_error(&tmp, "fsync", e))?;
    drop(out);
    fs::rename(&tmp, &path).map_err(|e| storage_error(&path, "rename", e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| storage_error(dir, "fsync directory", e))?;
    Ok(())
}
