//! `strait up`: open the store, serve the admin API, run until SIGINT/SIGTERM.

use std::os::fd::AsFd;
use std::sync::Arc;

use anyhow::Context;
use discovery::Leases;
use discovery::store::StoreMetrics;
use prometheus::Registry;
use tracing::{error, info, warn};

use crate::UpArgs;
use crate::admin::Admin;
use crate::settings::Settings;
use crate::upgrade;

pub fn run(args: UpArgs) -> anyhow::Result<()> {
    init_logging();
    let mut settings = Settings::load(args.config.as_deref())?;
    if let Some(url) = args.store {
        settings.store.url = url;
    }
    if let Some(dir) = args.data_dir {
        settings.store.data_dir = dir;
    }
    if let Some(addr) = args.admin_addr {
        settings.admin.addr = addr;
    }
    if let Some(addr) = args.http_addr {
        settings.router.http_addr = addr;
    }
    if let Some(path) = args.services {
        settings.agent.services = Some(path);
    }
    if let Some(addr) = args.dns_addr {
        settings.dns.addr = addr;
    }
    if let Some(addr) = args.registry_addr {
        settings.registry.addr = addr;
    }
    if let Some(runtime) = args.runtime {
        settings.agent.runtime = Some(runtime);
    }
    if let Some(zone) = args.zone {
        discovery::model::validate_dns_label("--zone", &zone)?;
        settings.agent.zone = Some(zone);
    }
    if let Some(addr) = args.https_addr {
        let Some(listener) = settings.router.tls.first_mut() else {
            anyhow::bail!(
                "--https-addr needs a [[router.tls]] listener with certificates in the config file"
            );
        };
        listener.addr = addr;
    }
    if let Ok(token) = std::env::var("STRAIT_ADMIN_TOKEN")
        && !token.is_empty()
    {
        settings.admin.token = Some(token);
    }
    settings.admin.check().map_err(anyhow::Error::msg)?;
    settings.check_teams().map_err(anyhow::Error::msg)?;

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("strait-control")
        .build()
        .context("cannot start the async runtime")?;
    // The commands to try are printed for the built-in demo config only.
    let announce_demo = args.config.is_none() && !args.upgrade;
    runtime.block_on(serve(settings, args.upgrade, announce_demo))
}

pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn serve(settings: Settings, upgrade: bool, announce_demo: bool) -> anyhow::Result<()> {
    let mut signals = StopSignals::new().context("cannot watch for signals")?;
    let paths = upgrade::Paths::new(&settings.store.data_dir)?;
    // Everything that can fail on bad configuration fails here, before a running strait
    // is asked to hand over.
    let registry = Registry::new();
    crate::metrics::register_process_metrics(&registry)?;
    #[cfg(feature = "alloc-stats")]
    export_allocation_counts(&registry)?;
    let store_metrics = StoreMetrics::new(&registry)?;
    let router = Arc::new(router::Router::new(settings.router.clone(), &registry)?);
    crate::metrics::CertificateExpiry::register(&registry, Arc::clone(&router))?;
    crate::status::start_clock();
    let dns = discovery::dns::server::DnsServer::new(settings.dns.clone(), &registry)?;
    let agent_file = match &settings.agent.services {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            Some((path, discovery::agent::parse(path, &text)?))
        }
        None => None,
    };
    let policy = Arc::new(access::Policy::new(&settings.teams, &settings.auth));
    let ldap = settings
        .auth
        .ldap
        .clone()
        .map(|config| Arc::new(access::ldap::Ldap::new(config)));
    let registry_server = if settings.registry.enabled {
        Some(registry::RegistryServer::with_teams(
            settings.registry.clone(),
            &settings.registry_root(),
            &registry,
            Some(registry::auth::TeamAccess {
                policy: Arc::clone(&policy),
                ldap: ldap.clone(),
            }),
        )?)
    } else {
        None
    };

    // A successor first takes the running process's sockets and what it owns.
    let (transfer, mut sockets, handshake) = if upgrade {
        let successor = upgrade::Successor::signal(&paths)?;
        info!("upgrade: waiting for the running strait to hand over");
        let (transfer, sockets, handshake) =
            tokio::task::spawn_blocking(move || successor.receive(HANDOVER_TIMEOUT)).await??;
        info!(
            instances = transfer.store.instances.len(),
            leases = transfer.leases.len(),
            sockets = transfer.sockets.len(),
            "upgrade: received the running strait's sockets and registrations"
        );
        (Some(transfer), sockets, Some(handshake))
    } else {
        (None, upgrade::Sockets::default(), None)
    };

    let store = discovery::store::open(&settings.store, store_metrics.clone())
        .await
        .with_context(|| format!("cannot open the {} store", settings.store.url))?;
    info!(store = %settings.store.url, "discovery store opened");
    let leases = Leases::new(Arc::clone(&store));
    if let Some(transfer) = &transfer {
        tokio::time::timeout(SUCCESSOR_DEADLINE, store.adopt(transfer.store.clone()))
            .await
            .context("upgrade: adopting the running strait's instances took too long")?
            .context("upgrade: cannot adopt the running strait's instances")?;
        leases.adopt(transfer.leases.clone());
        router.adopt_hop_token(&transfer.hop_token);
    }
    let mut reaper = tokio::spawn(Arc::clone(&leases).run_reaper());
    router.follow(store.watch())?;
    crate::metrics::ServiceHealth::register(&registry, Arc::clone(&store))?;
    crate::metrics::follow_health_changes(&registry, store.watch())?;
    dns.follow(store.watch())?;

    // A successor serves DNS, the registry and the admin API on the handed-over sockets
    // before it confirms: once it has, only pingora's own start is left to fail.
    let dns_addr = match sockets.dns.take() {
        Some((udp, tcp)) => dns.start_inherited(discovery::dns::server::DnsSockets { udp, tcp })?,
        None => dns.start()?,
    };
    // The first-run demo: its backend, its route, and its registration through the agent.
    let demo = match &settings.demo {
        Some(config) => {
            let demo = Arc::new(crate::demo::Demo::start(config.clone()).await?);
            demo.ensure_route(store.as_ref()).await?;
            Some(demo)
        }
        None => None,
    };
    // The agent: the file's services, the demo's, and the containers when this host
    // runs them.
    let runs_containers = settings.agent.runtime.is_some();
    let agent = if agent_file.is_some() || runs_containers || demo.is_some() {
        {
            let mut file = match agent_file {
                Some((path, file)) => {
                    info!(services = file.services.len(), file = %path.display(), "agent: registering local services");
                    file
                }
                None => discovery::agent::AgentFile::default(),
            };
            if let Some(demo) = &demo {
                file.services.push(demo.definition());
            }
            let adopted = transfer
                .as_ref()
                .map_or(&[][..], |t| t.store.instances.as_slice());
            Some(discovery::agent::Agent::start_adopting(
                file,
                Arc::new(discovery::agent::LocalRegistrar {
                    store: Arc::clone(&store),
                    leases: Arc::clone(&leases),
                }),
                adopted,
            ))
        }
    } else {
        None
    };
    let mut registry_listener = match (&registry_server, sockets.registry.take()) {
        (Some(server), Some(inherited)) => Some(server.inherit(inherited)?),
        (Some(server), None) => Some(server.bind().await?),
        (None, _) => None,
    };
    // The registry as images name it: its bound address (a port 0 in the config is
    // the port picked), for the credentials of its pulls.
    let registry_bound = registry_listener.as_ref().and_then(|l| l.local_addr().ok());
    let registry_addr = registry_bound.map(|addr| addr.to_string());
    let controller = deploy::Controller::new(
        Arc::clone(&store),
        Arc::new(RouterTraffic(Arc::clone(&router))),
        Arc::new(deploy::resolve::RegistryResolver {
            credentials: std::env::var("STRAIT_REGISTRY_AUTH")
                .ok()
                .filter(|c| !c.is_empty()),
            credentials_for: registry_addr.clone(),
        }),
        deploy::ControllerMetrics::new(&registry)?,
    );
    let supervisor_metrics = if runs_containers {
        Some(deploy::SupervisorMetrics::new(&registry)?)
    } else {
        None
    };
    let audit_path = settings
        .auth
        .audit_log
        .clone()
        .unwrap_or_else(|| settings.store.data_dir.join("audit.log"));
    let audit = Arc::new(
        access::audit::AuditLog::open(&audit_path)
            .with_context(|| format!("cannot open the audit log {}", audit_path.display()))?,
    );
    // One log for the admin API's writes and the registry's pushes and deletes.
    if let Some(server) = &registry_server {
        server.registry().set_audit_log(Arc::clone(&audit));
    }
    let authz = crate::authz::Authz::new(
        Arc::clone(&policy),
        settings.admin.token.as_deref().map(Arc::from),
        Some(audit),
        Arc::clone(&store),
        Arc::clone(&leases),
        agent.clone(),
        &registry,
    )?;
    let own = crate::self_routing::OwnListeners::new(Arc::clone(&router));
    let admin = Admin::new(crate::admin::AdminParts {
        store: Arc::clone(&store),
        leases: Arc::clone(&leases),
        registry,
        store_metrics,
        authz,
        router: Arc::clone(&router),
        agent: agent.clone(),
        deploy: Arc::clone(&controller),
        own: Arc::clone(&own),
    })?
    .router();
    let mut admin_listener = match sockets.admin.take() {
        Some(inherited) => {
            inherited.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(inherited)?
        }
        None => bind_admin(&settings).await?,
    };
    if let Some(handshake) = handshake {
        // Serve no HTTP before the table holds what the predecessor served.
        let revision = store.snapshot().revision;
        let deadline = std::time::Instant::now() + SUCCESSOR_DEADLINE;
        while router.table().revision < revision && std::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        }
        paths.write_pid()?;
        tokio::task::spawn_blocking(move || handshake.confirm()).await??;
    }
    // With --upgrade this receives the HTTP and TLS listeners (pingora's hand-off).
    let router_handle = router.start_with(router::StartOptions {
        upgrade_socket: Some(paths.router_socket.clone()),
        inherit: upgrade,
        tcp_listeners: std::mem::take(&mut sockets.tcp_routes),
    })?;
    let admin_addr = admin_listener.local_addr()?;
    let mut own_addrs = router_handle.listen_addrs();
    own_addrs.extend([admin_addr, dns_addr]);
    own_addrs.extend(registry_bound);
    own.set(own_addrs);
    controller.start_recovery();
    let supervisor = match (
        &agent,
        supervisor_metrics,
        settings
            .agent
            .supervisor(admin_addr.port(), registry_addr.as_deref()),
    ) {
        (Some(agent), Some(metrics), Some(config)) => Some(
            deploy::Supervisor::start(config, Arc::clone(agent), metrics, Arc::clone(&store))
                .map_err(anyhow::Error::msg)?,
        ),
        _ => None,
    };
    // Logged last: test harnesses wait for this line.
    info!(addr = %admin_addr, "admin API listening on {admin_addr}");
    if let (Some(demo), true) = (&demo, announce_demo) {
        tokio::spawn(crate::demo::announce(
            Arc::clone(demo),
            Arc::clone(&store),
            Arc::clone(&router),
            crate::demo::Addresses {
                http: router_handle.addr(),
                dns: dns_addr,
                admin: admin_addr,
                domain: settings.dns.domain.clone(),
            },
        ));
    }
    if !upgrade {
        // (A successor wrote it before saying `ready`.)
        paths.write_pid()?;
    }

    loop {
        // Copies of the sockets a hand-over sends (the servers close theirs on stopping).
        let admin_socket = admin_listener.as_fd().try_clone_to_owned().ok();
        let registry_socket = registry_listener
            .as_ref()
            .and_then(|listener| listener.as_fd().try_clone_to_owned().ok());
        let (stop, stopped) = tokio::sync::watch::channel(false);
        let mut admin_task = {
            let mut stopped = stopped.clone();
            // The registry's listener: it bounds the request head (10 s, slowloris) and
            // the header count, as the router does; axum's own `serve` has no deadline.
            tokio::spawn(registry::http::serve(
                "admin API",
                admin_listener,
                admin.clone(),
                None,
                ADMIN_HEADER_TIMEOUT,
                async move {
                    let _ = stopped.wait_for(|stop| *stop).await;
                },
                HANDOVER_TIMEOUT,
            ))
        };
        let registry_task = match (&registry_server, registry_listener.take()) {
            (Some(server), Some(listener)) => {
                let mut stopped = stopped.clone();
                Some(tokio::spawn(server.clone().serve(
                    listener,
                    axum::Router::new(),
                    async move {
                        let _ = stopped.wait_for(|stop| *stop).await;
                    },
                )))
            }
            _ => None,
        };
        let signal = tokio::select! {
            signal = signals.next() => signal,
            ended = &mut admin_task => {
                ended.context("admin API server failed")?;
                anyhow::bail!("the admin API server stopped");
            }
        };
        let _ = stop.send(true);
        if signal == Stop::Terminate {
            let _ = admin_task.await;
            if let Some(task) = registry_task {
                let _ = task.await;
            }
            break;
        }

        // Upgrade. In-flight admin writes finish (or are cut off) before the store is
        // handed over; the registry's transfers finish while the successor serves.
        info!("upgrade: SIGQUIT received; handing over to the new process");
        if tokio::time::timeout(HANDOVER_TIMEOUT, &mut admin_task)
            .await
            .is_err()
        {
            admin_task.abort();
            let _ = (&mut admin_task).await;
        }
        let dns_sockets = dns.hand_over();
        let tcp_sockets = router_handle.hand_over_tcp();
        if let Some(agent) = &agent {
            agent.stop();
        }
        if let Some(supervisor) = &supervisor {
            supervisor.pause();
        }
        reaper.abort();
        let _ = (&mut reaper).await;
        let sockets = upgrade::Sockets {
            admin: admin_socket.map(std::net::TcpListener::from),
            registry: registry_socket.map(std::net::TcpListener::from),
            dns: dns_sockets.map(|(udp, tcp)| {
                (
                    udp.into_iter().map(std::net::UdpSocket::from).collect(),
                    std::net::TcpListener::from(tcp),
                )
            }),
            tcp_routes: tcp_sockets
                .into_iter()
                .map(|(_, socket)| std::net::TcpListener::from(socket))
                .collect(),
        };
        let store_handover = store.hand_over().await;
        let handed_leases = leases.hand_over();
        let outcome = match (&store_handover, sockets.to_send()) {
            (Ok(handover), Ok(to_send)) => {
                let transfer = upgrade::Transfer {
                    sockets: to_send.iter().map(|(kind, _)| *kind).collect(),
                    store: handover.clone(),
                    leases: handed_leases.clone(),
                    hop_token: router.hop_token().to_string(),
                };
                let paths = paths.clone();
                tokio::task::spawn_blocking(move || {
                    upgrade::hand_over(&paths, &transfer, &to_send, HANDOVER_TIMEOUT)
                })
                .await
                .map_err(anyhow::Error::from)
                .and_then(|sent| sent)
            }
            (Err(e), _) => Err(anyhow::anyhow!("the store cannot be handed over: {e}")),
            (_, Err(e)) => Err(anyhow::anyhow!("the sockets cannot be copied: {e}")),
        };
        match outcome {
            Ok(true) => {
                info!("upgrade: the new process has taken over; draining");
                // pingora's hand-off first: the successor waits for it (a few seconds at
                // most); the registry's transfers finish meanwhile.
                let registry_drained = async {
                    if let Some(task) = registry_task {
                        let _ = tokio::time::timeout(settings.router.drain_timeout, task).await;
                    }
                };
                tokio::join!(
                    router_handle.hand_over_and_drain(settings.router.drain_timeout),
                    registry_drained
                );
                // Instances were handed over: nothing of ours is left to remove.
                store.shutdown().await;
                return Ok(());
            }
            Ok(false) => warn!("upgrade: the new process failed before taking over; serving on"),
            Err(e) => warn!(error = %e, "upgrade: hand-over failed; serving on"),
        }
        // Take everything back: the sockets never closed, so nothing was lost. No step
        // here ends the process: what cannot be taken back is logged, the rest serves.
        if let Ok(handover) = store_handover
            && let Err(e) = store.adopt(handover).await
        {
            error!(error = %e, "upgrade failed and the store cannot be taken back: serving the last table; writes fail");
        }
        leases.adopt(handed_leases);
        reaper = tokio::spawn(Arc::clone(&leases).run_reaper());
        if let Some(agent) = &agent {
            agent.resume();
        }
        if let Some(supervisor) = &supervisor {
            supervisor.resume();
        }
        if let Some((udp, tcp)) = sockets.dns
            && let Err(e) = dns.start_inherited(discovery::dns::server::DnsSockets { udp, tcp })
        {
            error!(error = %e, "upgrade failed and DNS cannot be served again");
        }
        router_handle.take_back_tcp(sockets.tcp_routes);
        if let Some(task) = registry_task {
            let _ = task.await;
        }
        registry_listener = match (&registry_server, sockets.registry) {
            (Some(server), Some(listener)) => server
                .inherit(listener)
                .inspect_err(|e| error!(error = %e, "upgrade failed and the registry cannot be served again"))
                .ok(),
            _ => None,
        };
        admin_listener = match sockets.admin.map(|socket| {
            socket.set_nonblocking(true)?;
            tokio::net::TcpListener::from_std(socket)
        }) {
            Some(Ok(listener)) => listener,
            _ => bind_admin(&settings).await?,
        };
        paths.write_pid()?;
    }
    reaper.abort();
    info!("shutting down: draining the router");
    router_handle.drain(settings.router.drain_timeout).await;
    if let Some(agent) = &agent {
        agent.shutdown().await;
    }
    store.shutdown().await;
    paths.remove_pid();
    Ok(())
}

/// The router's own counters, for the deployment controller's watch of a new version.
struct RouterTraffic(Arc<router::Router>);

impl deploy::TrafficStats for RouterTraffic {
    fn requests(&self, route: &str, service: &str, tag: &str) -> (u64, u64) {
        self.0.requests_answered(route, service, tag)
    }
}

/// How long the running process waits for its successor's `ready`.
const HANDOVER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// The admin API's deadline for a whole request head, as the router's `header_timeout`.
const ADMIN_HEADER_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);
/// The successor's own deadline for being ready: well inside `HANDOVER_TIMEOUT`, so it
/// never confirms to a process that has given up on it.
const SUCCESSOR_DEADLINE: std::time::Duration = std::time::Duration::from_secs(20);

async fn bind_admin(settings: &Settings) -> anyhow::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(settings.admin.addr)
        .await
        .with_context(|| format!("cannot listen on {} for the admin API", settings.admin.addr))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    /// SIGTERM or SIGINT: drain and exit.
    Terminate,
    /// SIGQUIT: a successor started with `--upgrade` waits for our sockets.
    Upgrade,
}

/// SIGTERM, SIGINT and SIGQUIT, watched from the start: SIGQUIT's default action would
/// kill the process (with a core dump) if it came before anything watched for it.
struct StopSignals {
    interrupt: tokio::signal::unix::Signal,
    terminate: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl StopSignals {
    fn new() -> std::io::Result<StopSignals> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(StopSignals {
            interrupt: signal(SignalKind::interrupt())?,
            terminate: signal(SignalKind::terminate())?,
            quit: signal(SignalKind::quit())?,
        })
    }

    async fn next(&mut self) -> Stop {
        tokio::select! {
            _ = self.interrupt.recv() => Stop::Terminate,
            _ = self.terminate.recv() => Stop::Terminate,
            _ = self.quit.recv() => Stop::Upgrade,
        }
    }
}

pub async fn shutdown_signal() {
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = received(tokio::signal::unix::SignalKind::terminate()) => {}
    }
}

/// Resolves when `kind` arrives; never, if it cannot be watched.
async fn received(kind: tokio::signal::unix::SignalKind) {
    match tokio::signal::unix::signal(kind) {
        Ok(mut signal) => {
            signal.recv().await;
        }
        Err(_) => std::future::pending::<()>().await,
    }
}

/// Publishes the counting allocator's totals every 20 ms (`alloc-stats` builds only).
#[cfg(feature = "alloc-stats")]
fn export_allocation_counts(registry: &Registry) -> anyhow::Result<()> {
    let allocations = prometheus::IntGauge::new(
        "strait_allocations_total",
        "Heap allocations since start (alloc-stats build)",
    )?;
    let bytes = prometheus::IntGauge::new(
        "strait_allocated_bytes_total",
        "Heap bytes allocated since start (alloc-stats build)",
    )?;
    registry.register(Box::new(allocations.clone()))?;
    registry.register(Box::new(bytes.clone()))?;
    tokio::spawn(async move {
        loop {
            let stats = crate::GLOBAL.stats();
            allocations
                .set(i64::try_from(stats.allocations + stats.reallocations).unwrap_or(i64::MAX));
            bytes.set(i64::try_from(stats.bytes_allocated).unwrap_or(i64::MAX));
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    });
    Ok(())
}
