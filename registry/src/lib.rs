//! strait's image registry: the OCI Distribution Spec v1.1 over a content-addressed store.
//!
//! - `server`: the HTTP API (every endpoint), upload sessions, verification.
//! - `storage`: the `Storage` trait and its filesystem backend.
//! - `manifest`: the manifest kinds accepted and what they reference.
//! - `names`: validation of names, tags, digests (nothing escapes the storage root).
//! - `auth`: htpasswd (bcrypt) users, Basic auth and the bearer-token flow; who asked.
//! - `gc`: mark-and-sweep, safe while serving.
//! - `http`: the listener (HTTP/1.1, h2, TLS), with head deadlines and limits.

pub mod auth;
pub mod config;
pub mod error;
pub mod gc;
pub mod http;
pub mod manifest;
pub mod metrics;
pub mod names;
pub mod server;
pub mod storage;

use std::future::Future;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tracing::info;

pub use config::RegistryConfig;
pub use server::Registry;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Config(String),
    #[error("cannot open registry storage at {path}")]
    Storage {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "cannot listen on {addr} for the registry (choose another with --registry-addr or \
         `[registry] addr`, or turn it off with `[registry] enabled = false`)"
    )]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error(transparent)]
    Tls(#[from] http::TlsError),
    #[error(transparent)]
    Metrics(#[from] prometheus::Error),
}

/// A configured registry, ready to listen.
#[derive(Clone)]
pub struct RegistryServer {
    registry: Arc<Registry>,
    config: RegistryConfig,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl RegistryServer {
    /// Opens storage under `root`, loads credentials and certificates, registers metrics.
    pub fn new(
        config: RegistryConfig,
        root: &Path,
        prometheus: &prometheus::Registry,
    ) -> Result<RegistryServer, Error> {
        Self::with_teams(config, root, prometheus, None)
    }

    /// As `new`, pushes and deletes allowed only to the repositories of the pusher's teams
    /// (and users from LDAP), when `teams` has teams or a directory.
    pub fn with_teams(
        config: RegistryConfig,
        root: &Path,
        prometheus: &prometheus::Registry,
        teams: Option<auth::TeamAccess>,
    ) -> Result<RegistryServer, Error> {
        config.check().map_err(Error::Config)?;
        let mut storage = storage::FsStorage::open(root).map_err(|source| Error::Storage {
            path: root.to_path_buf(),
            source,
        })?;
        if !config.fsync {
            storage = storage.without_fsync();
        }
        let mut auth = config.auth.as_ref().map(auth::Auth::load).transpose()?;
        if let Some(teams) = teams.filter(|t| t.policy.has_teams() || t.ldap.is_some()) {
            auth = Some(match auth {
                Some(auth) => auth.with_teams(teams),
                None => auth::Auth::teams_only(teams),
            });
        }
        let tls = config.tls.as_ref().map(http::tls_config).transpose()?;
        let metrics = metrics::Metrics::new(prometheus)?;
        let registry = Arc::new(Registry::new(
            Arc::new(storage),
            config.clone(),
            auth,
            metrics,
        ));
        Ok(RegistryServer {
            registry,
            config,
            tls,
        })
    }

    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Binds the listener (port 0 picks a free port) and logs its address.
    pub async fn bind(&self) -> Result<tokio::net::TcpListener, Error> {
        let addr = self.config.addr;
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen { addr, source })?;
        self.listening(listener)
    }

    /// Serves a listening socket handed over by a predecessor (a binary upgrade).
    pub fn inherit(
        &self,
        listener: std::net::TcpListener,
    ) -> Result<tokio::net::TcpListener, Error> {
        let addr = self.config.addr;
        listener
            .set_nonblocking(true)
            .and_then(|()| tokio::net::TcpListener::from_std(listener))
            .map_err(|source| Error::Listen { addr, source })
            .and_then(|listener| self.listening(listener))
    }

    fn listening(
        &self,
        listener: tokio::net::TcpListener,
    ) -> Result<tokio::net::TcpListener, Error> {
        let addr = self.config.addr;
        let local = listener
            .local_addr()
            .map_err(|source| Error::Listen { addr, source })?;
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        info!(addr = %local, "registry listening on {local} ({scheme})");
        Ok(listener)
    }

    /// Serves until `shutdown`; `extra` routes (e.g. `/metrics` when serving alone) are
    /// merged in front of the registry API.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        extra: axum::Router,
        shutdown: impl Future<Output = ()>,
    ) {
        tokio::spawn(Arc::clone(&self.registry).run_upkeep());
        let app = extra.merge(Arc::clone(&self.registry).router());
        http::serve(
            "registry",
            listener,
            app,
            self.tls,
            self.config.header_timeout,
            shutdown,
            Duration::from_secs(10),
        )
        .await;
    }
}
