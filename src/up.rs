//! `strait up`: open the store, serve the admin API, run until SIGINT/SIGTERM.

use std::sync::Arc;

use anyhow::Context;
use discovery::Leases;
use discovery::store::StoreMetrics;
use prometheus::Registry;
use tracing::info;

use crate::UpArgs;
use crate::admin::Admin;
use crate::settings::Settings;

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

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("strait-control")
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(serve(settings))
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

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let registry = Registry::new();
    let build_info = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("strait_build_info", "strait version"),
        &["version"],
    )?;
    build_info
        .with_label_values(&[env!("CARGO_PKG_VERSION")])
        .set(1);
    registry.register(Box::new(build_info))?;
    #[cfg(feature = "alloc-stats")]
    export_allocation_counts(&registry)?;

    let store_metrics = StoreMetrics::new(&registry)?;
    let store = discovery::store::open(&settings.store, store_metrics.clone())
        .await
        .with_context(|| format!("cannot open the {} store", settings.store.url))?;
    info!(store = %settings.store.url, "discovery store opened");

    let router = Arc::new(router::Router::new(settings.router.clone(), &registry)?);
    router.follow(store.watch())?;
    let router_handle = router.start()?;

    let dns = discovery::dns::server::DnsServer::new(settings.dns.clone(), &registry)?;
    dns.follow(store.watch())?;
    dns.start()?;

    let leases = Leases::new(Arc::clone(&store));
    tokio::spawn(Arc::clone(&leases).run_reaper());
    let agent = match &settings.agent.services {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read {}", path.display()))?;
            let file = discovery::agent::parse(path, &text)?;
            info!(services = file.services.len(), file = %path.display(), "agent: registering local services");
            Some(discovery::agent::Agent::start(
                file,
                Arc::new(discovery::agent::LocalRegistrar {
                    store: Arc::clone(&store),
                    leases: Arc::clone(&leases),
                }),
            ))
        }
        None => None,
    };

    let (stop, stopped) = tokio::sync::watch::channel(false);
    let registry_task = if settings.registry.enabled {
        let server = registry::RegistryServer::new(
            settings.registry.clone(),
            &settings.registry_root(),
            &registry,
        )?;
        let listener = server.bind().await?;
        let mut stopped = stopped.clone();
        Some(tokio::spawn(server.serve(
            listener,
            axum::Router::new(),
            async move {
                let _ = stopped.wait_for(|stop| *stop).await;
            },
        )))
    } else {
        None
    };

    let admin = Admin::new(
        Arc::clone(&store),
        leases,
        registry,
        store_metrics,
        settings.admin.token.clone(),
        router,
        agent.clone(),
    )?;
    let listener = tokio::net::TcpListener::bind(settings.admin.addr)
        .await
        .with_context(|| format!("cannot listen on {} for the admin API", settings.admin.addr))?;
    let admin_addr = listener.local_addr()?;
    info!(addr = %admin_addr, "admin API listening on {admin_addr}");

    axum::serve(listener, admin.router())
        .with_graceful_shutdown(async move {
            shutdown_signal().await;
            let _ = stop.send(true);
        })
        .await
        .context("admin API server failed")?;
    if let Some(task) = registry_task {
        let _ = task.await;
    }
    info!("shutting down: draining the router");
    router_handle.drain(settings.router.drain_timeout).await;
    if let Some(agent) = &agent {
        agent.shutdown().await;
    }
    store.shutdown().await;
    Ok(())
}

pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
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
