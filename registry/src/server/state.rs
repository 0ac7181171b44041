//! The registry itself: storage, configuration, authentication, open upload sessions and
//! metrics, and the authorization every request passes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::http::HeaderMap;

use crate::auth::{Action, Auth, Resource};
use crate::config::RegistryConfig;
use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::names::RepoName;
use crate::server::parts;
use crate::storage::Storage;

/// An open upload session.
pub(super) struct Upload {
    pub(super) repo: RepoName,
    /// Bytes received so far.
    pub(super) size: u64,
    /// sha256 of those bytes; `None` for a session found on disk after a restart.
    pub(super) hasher: Option<sha2::Sha256>,
    pub(super) started: Instant,
}

/// Open upload sessions by id.
pub(super) type Sessions = HashMap<String, Arc<tokio::sync::Mutex<Upload>>>;

pub struct Registry {
    pub(super) storage: Arc<dyn Storage>,
    pub(super) config: RegistryConfig,
    pub(super) auth: Option<Auth>,
    uploads: Mutex<Sessions>,
    pub(super) metrics: Metrics,
    secure: bool,
}

impl Registry {
    pub fn new(
        storage: Arc<dyn Storage>,
        config: RegistryConfig,
        auth: Option<Auth>,
        metrics: Metrics,
    ) -> Registry {
        let secure = config.tls.is_some();
        Registry {
            storage,
            config,
            auth,
            uploads: Mutex::new(HashMap::new()),
            metrics,
            secure,
        }
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub(super) async fn authorize(
        &self,
        headers: &HeaderMap,
        resource: Resource<'_>,
        action: Action,
    ) -> Result<(), ApiError> {
        match &self.auth {
            Some(auth) => auth.authorize(headers, resource, action, self.secure).await,
            None => Ok(()),
        }
    }

    /// The validated name of a repository the request may act on.
    pub(super) async fn open_repository(
        &self,
        name: &str,
        headers: &HeaderMap,
        action: Action,
    ) -> Result<RepoName, ApiError> {
        let repo = parts::repo(name)?;
        self.authorize(headers, Resource::Repository(repo.as_str()), action)
            .await?;
        Ok(repo)
    }

    pub(super) fn lock_uploads(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner())
    }
}
