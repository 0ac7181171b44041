//! The registry itself: storage, configuration, authentication, open upload sessions,
//! metrics and the audit log, and the authorization every request passes.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Instant, SystemTime};

use access::audit::{AuditLog, AuditRecord};
use axum::http::{HeaderMap, Method, StatusCode};
use tracing::warn;

use crate::auth::{Action, Auth, Refused, Requester, Resource};
use crate::config::RegistryConfig;
use crate::metrics::Metrics;
use crate::names::RepoName;
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
    /// Where pushes and deletes are recorded (the admin API's log, under `strait up`).
    audit: OnceLock<Arc<AuditLog>>,
}

/// A push or delete to record: what was asked, by whom, and how it ended.
pub(super) struct Write<'a> {
    pub(super) requester: &'a Requester,
    pub(super) method: &'a Method,
    pub(super) path: &'a str,
    /// `manifest web/app:v1`, `blob web/app@sha256:…`.
    pub(super) object: &'a str,
    pub(super) status: StatusCode,
    pub(super) message: Option<String>,
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
            audit: OnceLock::new(),
        }
    }

    /// Records every push and delete (and every refused one) in `log` from now on; a
    /// second log is ignored (false).
    pub fn set_audit_log(&self, log: Arc<AuditLog>) -> bool {
        self.audit.set(log).is_ok()
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Who the request is, if it may do `action` to `resource`. Without authentication
    /// everyone may do everything, as `anonymous`.
    pub(super) async fn authorize(
        &self,
        headers: &HeaderMap,
        resource: Resource<'_>,
        action: Action,
    ) -> Result<Requester, Refused> {
        match &self.auth {
            Some(auth) => auth.authorize(headers, resource, action, self.secure).await,
            None => Ok(Requester::anonymous()),
        }
    }

    /// Counts a push or delete by team and result, and appends it to the audit log: a
    /// 401 or 403 is `denied`, another failure `error`.
    pub(super) fn record_write(&self, write: Write<'_>) {
        let result = if write.status.is_success() {
            "ok"
        } else if matches!(
            write.status,
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN
        ) {
            "denied"
        } else {
            "error"
        };
        let team = write.requester.teams.as_str();
        self.metrics.writes.with_label_values(&[team, result]).inc();
        if result == "denied" {
            self.metrics.denied_writes.with_label_values(&[team]).inc();
            warn!(
                who = %write.requester.who,
                method = %write.method,
                path = write.path,
                reason = write.message.as_deref().unwrap_or_default(),
                "registry: write denied"
            );
        }
        let Some(log) = self.audit.get() else {
            return;
        };
        log.append(AuditRecord {
            seq: 0,
            time: SystemTime::now(),
            who: write.requester.who.clone(),
            token: None,
            teams: write.requester.teams.clone(),
            method: write.method.to_string(),
            path: write.path.to_owned(),
            object: write.object.to_owned(),
            // The registry has no store revisions.
            revision_before: 0,
            revision_after: 0,
            status: write.status.as_u16(),
            result: result.to_owned(),
            message: write.message,
        });
    }

    pub(super) fn lock_uploads(&self) -> std::sync::MutexGuard<'_, Sessions> {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner())
    }
}
