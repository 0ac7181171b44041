//! `strait agent`: the host-local agent alone, next to apps on a host that runs no router.
//! It registers the services of its file and health-checks them, either straight into
//! ZooKeeper (`--store zk://…`: instances are ephemeral nodes of this process's session)
//! or through the admin API of a `strait up` (`--admin URL`, for the embedded store:
//! instances are held under a lease this process renews). Either way, when the agent dies
//! its instances go: at once on a clean stop, after the session timeout or lease TTL if
//! killed. It serves the agent endpoints (TTL passes, maintenance) on `--addr`.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, bail};
use discovery::agent::{Agent, LocalRegistrar, Registrar};
use discovery::model::{Health, Instance};
use serde_json::json;
use tracing::{info, warn};

use crate::AdminArgs;
use crate::cli::{AdminClient, Method};

#[derive(clap::Args)]
pub struct AgentArgs {
    /// Local services to register and health-check (TOML `[[service]]` file).
    #[arg(long, required_unless_present = "runtime")]
    pub services: Option<PathBuf>,
    /// Run the deployments' containers on this host with this engine (needs `--store`:
    /// the agent follows the store's deployments).
    #[arg(long, value_enum)]
    pub runtime: Option<crate::settings::Runtime>,
    /// This agent's id among the agents (a DNS label; default: the host name).
    #[arg(long)]
    pub id: Option<String>,
    /// The zone this host is in (default `default`).
    #[arg(long)]
    pub zone: Option<String>,
    /// The address the containers are reached at (they use the host's network).
    #[arg(long, default_value = "127.0.0.1")]
    pub advertise: std::net::IpAddr,
    /// Ports handed to containers, `low-high`.
    #[arg(long, default_value = "20000-29999")]
    pub ports: crate::settings::PortRange,
    /// The podman binary.
    #[arg(long, default_value = "podman")]
    pub podman: PathBuf,
    /// SIGTERM to SIGKILL when a container stops.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub stop_timeout: Duration,
    /// Register straight into ZooKeeper: `zk://host:port[,host:port]/chroot`. Without it the
    /// agent registers through the admin API given by `--admin`.
    #[arg(long)]
    pub store: Option<discovery::StoreUrl>,
    /// ZooKeeper session timeout (how long after a crash the instances vanish).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub session_timeout: Duration,
    /// Lease TTL when registering through the admin API (how long after a crash the
    /// instances expire).
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub lease_ttl: Duration,
    /// Where the agent endpoints listen (loopback only; port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:9902")]
    pub addr: SocketAddr,
    #[command(flatten)]
    pub admin: AdminArgs,
}

pub fn run(args: AgentArgs) -> anyhow::Result<()> {
    crate::up::init_logging();
    if !args.addr.ip().is_loopback() {
        bail!(
            "agent addr {} is not loopback: the agent endpoints have no authentication",
            args.addr
        );
    }
    let file = match &args.services {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            discovery::agent::parse(path, &text)?
        }
        None => discovery::agent::AgentFile::default(),
    };
    if args.runtime.is_some() && args.store.is_none() {
        bail!(
            "an agent that runs containers follows the store's deployments: give --store zk://… \
             (on an embedded store, run the containers in `strait up --runtime podman` itself)"
        );
    }
    let supervisor_config = crate::settings::AgentConfig {
        runtime: args.runtime,
        id: args.id.clone(),
        zone: args.zone.clone(),
        advertise: Some(args.advertise),
        ports: Some(args.ports),
        podman: Some(args.podman.clone()),
        stop_timeout: Some(args.stop_timeout),
        services: None,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .thread_name("strait-agent")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let mut store = None;
        let mut remote = None;
        let registrar: Arc<dyn Registrar> = match &args.store {
            Some(url @ discovery::StoreUrl::ZooKeeper { .. }) => {
                let config = discovery::StoreConfig {
                    url: url.clone(),
                    session_timeout: args.session_timeout,
                    ..discovery::StoreConfig::default()
                };
                let metrics = discovery::store::StoreMetrics::new(&prometheus::Registry::new())?;
                let opened = discovery::store::open(&config, metrics)
                    .await
                    .with_context(|| format!("cannot open the {url} store"))?;
                let leases = discovery::Leases::new(Arc::clone(&opened));
                store = Some(Arc::clone(&opened));
                Arc::new(LocalRegistrar {
                    store: opened,
                    leases,
                })
            }
            Some(_) => bail!(
                "an agent alone cannot use the embedded store (it lives in `strait up`): \
                 give --store zk://… or --admin URL of a strait up"
            ),
            None => {
                let registrar = Arc::new(RemoteRegistrar::new(
                    AdminClient::new(&args.admin),
                    args.lease_ttl,
                ));
                tokio::spawn(Arc::clone(&registrar).renew_forever());
                remote = Some(Arc::clone(&registrar));
                registrar
            }
        };
        if let Some(path) = &args.services {
            info!(services = file.services.len(), file = %path.display(), "agent: registering local services");
        }
        let agent = Agent::start(file, registrar);
        let metrics = prometheus::Registry::new();
        let listener = tokio::net::TcpListener::bind(args.addr)
            .await
            .with_context(|| format!("cannot listen on {}", args.addr))?;
        let addr = listener.local_addr()?;
        if let (Some(config), Some(store)) =
            (supervisor_config.supervisor(addr.port(), None), store.as_ref())
        {
            deploy::Supervisor::start(
                config,
                Arc::clone(&agent),
                deploy::SupervisorMetrics::new(&metrics)?,
                Arc::clone(store),
            )
            .map_err(anyhow::Error::msg)?;
        }
        let app = axum::Router::from(crate::admin::agent_routes(Some(Arc::clone(&agent))))
            .route("/healthz", axum::routing::get(|| async { "ok\n" }))
            .route(
                "/metrics",
                axum::routing::get(move || {
                    let metrics = metrics.clone();
                    async move { crate::admin::render_metrics(&metrics) }
                }),
            )
            .layer(axum::middleware::from_fn(crate::admin::json_errors));
        info!(addr = %addr, "agent API listening on {addr}");
        registry::http::serve(
            "agent API",
            listener,
            app,
            None,
            Duration::from_secs(10),
            crate::up::shutdown_signal(),
            Duration::from_secs(10),
        )
        .await;
        info!("shutting down: deregistering local services");
        agent.shutdown().await;
        if let Some(remote) = remote {
            remote.revoke().await;
        }
        if let Some(store) = store {
            store.shutdown().await;
        }
        Ok(())
    })
}

/// Registration through a strait's admin API, held under a lease that this process renews
/// every third of its TTL. A lease the server no longer knows (it expired, or that strait
/// restarted) makes every instance count as lost, so the agent registers them again under
/// a new lease.
struct RemoteRegistrar {
    client: AdminClient,
    ttl: Duration,
    state: Mutex<RemoteState>,
}

#[derive(Default)]
struct RemoteState {
    lease: Option<String>,
    registered: HashSet<(String, String)>,
}

impl RemoteRegistrar {
    fn new(client: AdminClient, ttl: Duration) -> RemoteRegistrar {
        RemoteRegistrar {
            client,
            ttl,
            state: Mutex::new(RemoteState::default()),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RemoteState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn lost(&self) {
        let mut state = self.lock();
        state.lease = None;
        state.registered.clear();
    }

    /// The current lease, granted if there is none (blocking).
    fn lease(&self) -> anyhow::Result<String> {
        if let Some(lease) = self.lock().lease.clone() {
            return Ok(lease);
        }
        let ttl = humantime::format_duration(self.ttl).to_string();
        let body = self
            .client
            .ok(Method::Post(json!({ "ttl": ttl })), "/v1/leases")?;
        let lease = body
            .get("id")
            .and_then(|id| id.as_str())
            .context("the lease grant returned no id")?
            .to_owned();
        info!(lease = %lease, "agent: lease granted");
        self.lock().lease = Some(lease.clone());
        Ok(lease)
    }

    fn register_blocking(&self, instance: &Instance) -> anyhow::Result<()> {
        for _ in 0..2 {
            let lease = self.lease()?;
            let path = format!(
                "/v1/services/{}/instances/{}?lease={lease}",
                instance.service, instance.id
            );
            let (status, body) = self
                .client
                .call(Method::Put(serde_json::to_value(&instance.spec)?), &path)?;
            match status {
                200..=299 => {
                    self.lock()
                        .registered
                        .insert((instance.service.clone(), instance.id.clone()));
                    return Ok(());
                }
                // The lease is gone (expired, or the server restarted): take a new one.
                404 => self.lost(),
                _ => bail!("HTTP {status}: {body}"),
            }
        }
        bail!("the admin API keeps refusing the lease")
    }

    async fn renew_forever(self: Arc<Self>) {
        let period = self.ttl / 3;
        loop {
            tokio::time::sleep(period).await;
            let Some(lease) = self.lock().lease.clone() else {
                continue;
            };
            let this = Arc::clone(&self);
            let result = tokio::task::spawn_blocking(move || {
                this.client
                    .call(Method::Put(json!({})), &format!("/v1/leases/{lease}/renew"))
            })
            .await;
            match result {
                Ok(Ok((200..=299, _))) => {}
                Ok(Ok((404, _))) => {
                    warn!("agent: the lease is gone; registering again");
                    self.lost();
                }
                Ok(Ok((status, body))) => warn!(status, %body, "agent: lease renewal refused"),
                Ok(Err(error)) => warn!(error = %error, "agent: cannot renew the lease; retrying"),
                Err(error) => warn!(error = %error, "agent: renewal task failed"),
            }
        }
    }

    async fn revoke(&self) {
        let Some(lease) = self.lock().lease.take() else {
            return;
        };
        let client = self.client.clone();
        let path = format!("/v1/leases/{lease}");
        let _ = tokio::task::spawn_blocking(move || client.call(Method::Delete, &path)).await;
    }
}

#[async_trait::async_trait]
impl Registrar for RemoteRegistrar {
    async fn register(&self, instance: Instance) -> Result<(), String> {
        // `self` is borrowed: run the blocking client on a scoped blocking section.
        tokio::task::block_in_place(|| self.register_blocking(&instance))
            .map_err(|e| format!("{e:#}"))
    }

    async fn deregister(&self, service: &str, id: &str) -> Result<(), String> {
        let path = format!("/v1/services/{service}/instances/{id}");
        let result = tokio::task::block_in_place(|| self.client.call(Method::Delete, &path));
        self.lock()
            .registered
            .remove(&(service.to_owned(), id.to_owned()));
        match result {
            Ok((200..=299 | 404, _)) => Ok(()),
            Ok((status, body)) => Err(format!("HTTP {status}: {body}")),
            Err(e) => Err(format!("{e:#}")),
        }
    }

    fn holds(&self, service: &str, id: &str) -> bool {
        let state = self.lock();
        state.lease.is_some()
            && state
                .registered
                .contains(&(service.to_owned(), id.to_owned()))
    }

    async fn stored_health(&self, service: &str, id: &str) -> Result<Option<Health>, String> {
        let path = format!("/v1/services/{service}/instances/{id}");
        let result = tokio::task::block_in_place(|| self.client.call(Method::Get, &path));
        match result {
            Ok((200, body)) => serde_json::from_value::<Health>(body["health"].clone())
                .map(Some)
                .map_err(|e| format!("the instance's health: {e}")),
            Ok((404, _)) => Ok(None),
            Ok((status, body)) => Err(format!("HTTP {status}: {body}")),
            Err(e) => Err(format!("{e:#}")),
        }
    }
}
