//! The embedded store's deploy records on disk: one JSON file per app and per deployment.
//!
//! ```text
//! apps/<app>.json                  App
//! deployments/<app>/<id>.json      Deployment
//! tokens/<id>.json                 TokenRecord (a secret's hash, never the secret)
//! ```
//!
//! A write replaces its file atomically (temporary file, fsync, rename, fsync of the
//! directory) before it is applied, so an acknowledged write survives a crash and a crash
//! never leaves half a record. These records change a few times per deployment, so one
//! file each costs little and keeps every record readable with `cat`. Loading refuses a
//! file that does not decode or validate (naming it), as the routes log does: the operator
//! decides, nothing is silently dropped.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::StoreError;
use super::route_log::storage_error;
use crate::apps::{App, Deployment};
use crate::snapshot::{self, AppMap, DeploymentMap, TokenMap};
use crate::tokens::TokenRecord;

const APPS_DIR: &str = "apps";
const DEPLOYMENTS_DIR: &str = "deployments";
const TOKENS_DIR: &str = "tokens";

/// A deploy record write.
#[derive(Debug, Clone)]
pub enum RecordOp {
    PutApp(Box<App>),
    DeleteApp(String),
    PutDeployment(Box<Deployment>),
    DeleteDeployment(String, u64),
    PutToken(Box<TokenRecord>),
    DeleteToken(String),
}

/// The maps records live in.
pub struct RecordMaps<'a> {
    pub apps: &'a mut Arc<AppMap>,
    pub deployments: &'a mut Arc<DeploymentMap>,
    pub tokens: &'a mut Arc<TokenMap>,
}

impl RecordOp {
    /// Applies the write to the maps; false when it changes nothing.
    pub fn apply(self, maps: RecordMaps<'_>) -> bool {
        match self {
            RecordOp::PutApp(app) => snapshot::upsert_app(maps.apps, *app),
            RecordOp::DeleteApp(name) => snapshot::remove_app(maps.apps, &name),
            RecordOp::PutDeployment(deployment) => {
                snapshot::upsert_deployment(maps.deployments, *deployment)
            }
            RecordOp::DeleteDeployment(app, id) => {
                snapshot::remove_deployment(maps.deployments, &app, id)
            }
            RecordOp::PutToken(token) => snapshot::upsert_token(maps.tokens, *token),
            RecordOp::DeleteToken(id) => snapshot::remove_token(maps.tokens, &id),
        }
    }
}

pub struct Records {
    dir: PathBuf,
}

pub struct LoadedRecords {
    pub apps: Arc<AppMap>,
    pub deployments: Arc<DeploymentMap>,
    pub tokens: Arc<TokenMap>,
    pub records: Records,
}

impl Records {
    fn app_path(&self, name: &str) -> PathBuf {
        self.dir.join(APPS_DIR).join(format!("{name}.json"))
    }

    fn deployment_path(&self, app: &str, id: u64) -> PathBuf {
        self.dir
            .join(DEPLOYMENTS_DIR)
            .join(app)
            .join(format!("{id}.json"))
    }

    fn token_path(&self, id: &str) -> PathBuf {
        self.dir.join(TOKENS_DIR).join(format!("{id}.json"))
    }

    /// Makes `op` durable. Names were validated by the caller (they are path segments).
    pub fn write(&self, op: &RecordOp) -> Result<(), StoreError> {
        match op {
            RecordOp::PutApp(app) => write_json(&self.app_path(&app.name), app.as_ref()),
            RecordOp::DeleteApp(name) => remove(&self.app_path(name)),
            RecordOp::PutDeployment(deployment) => write_json(
                &self.deployment_path(&deployment.app, deployment.id),
                deployment.as_ref(),
            ),
            RecordOp::DeleteDeployment(app, id) => {
                remove(&self.deployment_path(app, *id))?;
                // The app's directory goes with its last deployment.
                let dir = self.dir.join(DEPLOYMENTS_DIR).join(app);
                if fs::remove_dir(&dir).is_ok() {
                    sync_dir(&self.dir.join(DEPLOYMENTS_DIR))?;
                }
                Ok(())
            }
            RecordOp::PutToken(token) => write_json(&self.token_path(&token.id), token.as_ref()),
            RecordOp::DeleteToken(id) => remove(&self.token_path(id)),
        }
    }
}

fn sync_dir(dir: &Path) -> Result<(), StoreError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| storage_error(dir, "fsync directory", e))
}

fn write_json<T: serde::Serialize>(path: &Path, value: &T) -> Result<(), StoreError> {
    let dir = path
        .parent()
        .ok_or_else(|| storage_error(path, "no parent directory", "?"))?;
    if !dir.exists() {
        fs::create_dir_all(dir).map_err(|e| storage_error(dir, "cannot create", e))?;
        if let Some(parent) = dir.parent() {
            sync_dir(parent)?;
        }
    }
    let bytes = serde_json::to_vec_pretty(value).map_err(|e| storage_error(path, "encode", e))?;
    let tmp = path.with_extension("json.tmp");
    let mut out = File::create(&tmp).map_err(|e| storage_error(&tmp, "create", e))?;
    out.write_all(&bytes)
        .and_then(|()| out.sync_all())
        .map_err(|e| storage_error(&tmp, "write", e))?;
    drop(out);
    fs::rename(&tmp, path).map_err(|e| storage_error(path, "rename", e))?;
    sync_dir(dir)
}

fn remove(path: &Path) -> Result<(), StoreError> {
    match fs::remove_file(path) {
        Ok(()) => path.parent().map_or(Ok(()), sync_dir),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(storage_error(path, "cannot remove", e)),
    }
}

/// The `.json` files of `dir` (leftover temporary files are removed), sorted.
fn json_files(dir: &Path) -> Result<Vec<(String, PathBuf)>, StoreError> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(storage_error(dir, "cannot list", e)),
    };
    let mut files = Vec::new();
    for entry in entries {
        let entry = entry.map_err(|e| storage_error(dir, "cannot list", e))?;
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json.tmp") {
            // A crash mid-write: the rename never happened, the record is the old one.
            let _ = fs::remove_file(&path);
        } else if let Some(stem) = name.strip_suffix(".json") {
            files.push((stem.to_string(), path));
        }
    }
    files.sort();
    Ok(files)
}

fn read_json<T: serde::de::DeserializeOwned>(path: &Path) -> Result<T, StoreError> {
    let bytes = fs::read(path).map_err(|e| storage_error(path, "cannot read", e))?;
    serde_json::from_slice(&bytes)
        .map_err(|e| storage_error(path, "corrupt record (not replaced; fix or move it)", e))
}

/// Reads every record under `dir`.
pub fn load(dir: &Path) -> Result<LoadedRecords, StoreError> {
    let mut apps = AppMap::new();
    for (name, path) in json_files(&dir.join(APPS_DIR))? {
        let mut app: App = read_json(&path)?;
        if app.name != name {
            return Err(storage_error(
                &path,
                "invalid record",
                format!("names app `{}`", app.name),
            ));
        }
        app.validate()
            .map_err(|e| storage_error(&path, "invalid record", e))?;
        apps.insert(Arc::from(name.as_str()), Arc::new(app));
    }
    let mut deployments = Arc::new(DeploymentMap::new());
    let root = dir.join(DEPLOYMENTS_DIR);
    let app_dirs = match fs::read_dir(&root) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect::<Vec<_>>(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(e) => return Err(storage_error(&root, "cannot list", e)),
    };
    for app_dir in app_dirs {
        let app = app_dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        for (stem, path) in json_files(&app_dir)? {
            let mut deployment: Deployment = read_json(&path)?;
            if deployment.app != app || stem.parse() != Ok(deployment.id) {
                return Err(storage_error(
                    &path,
                    "invalid record",
                    format!("names deployment {}/{}", deployment.app, deployment.id),
                ));
            }
            deployment
                .validate()
                .map_err(|e| storage_error(&path, "invalid record", e))?;
            snapshot::upsert_deployment(&mut deployments, deployment);
        }
    }
    let mut tokens = TokenMap::new();
    for (id, path) in json_files(&dir.join(TOKENS_DIR))? {
        let token: TokenRecord = read_json(&path)?;
        if token.id != id {
            return Err(storage_error(
                &path,
                "invalid record",
                format!("names token `{}`", token.id),
            ));
        }
        token
            .validate()
            .map_err(|e| storage_error(&path, "invalid record", e))?;
        tokens.insert(Arc::from(id.as_str()), Arc::new(token));
    }
    Ok(LoadedRecords {
        apps: Arc::new(apps),
        deployments,
        tokens: Arc::new(tokens),
        records: Records {
            dir: dir.to_path_buf(),
        },
    })
}
