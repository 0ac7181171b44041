//! `strait registry serve|gc|passwd`.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Context;

use crate::RegistryCommand;
use crate::settings::Settings;

pub fn run(command: RegistryCommand) -> anyhow::Result<()> {
    match command {
        RegistryCommand::Serve {
            config,
            addr,
            root,
            htpasswd,
        } => {
            crate::up::init_logging();
            let mut settings = Settings::load(config.as_deref())?;
            if let Some(addr) = addr {
                settings.registry.addr = addr;
            }
            if let Some(root) = root {
                settings.registry.root = Some(root);
            }
            if let Some(htpasswd) = htpasswd {
                let auth =
                    settings
                        .registry
                        .auth
                        .get_or_insert_with(|| registry::config::AuthConfig {
                            htpasswd: PathBuf::new(),
                            anonymous_pull: true,
                            realm: None,
                            token_ttl: std::time::Duration::from_secs(300),
                        });
                auth.htpasswd = htpasswd;
            }
            runtime()?.block_on(serve(settings))
        }
        RegistryCommand::Gc {
            config,
            root,
            dry_run,
            grace,
        } => {
            let settings = Settings::load(config.as_deref())?;
            let root = root.unwrap_or_else(|| settings.registry_root());
            if !root.join("blobs").is_dir() {
                anyhow::bail!("{} is not a registry storage root", root.display());
            }
            let storage = registry::storage::FsStorage::open(&root)
                .with_context(|| format!("cannot open {}", root.display()))?;
            let options = registry::gc::GcOptions { dry_run, grace };
            let report = runtime()?
                .block_on(registry::gc::collect(&storage, &options))
                .context("garbage collection failed")?;
            let verb = if dry_run { "would remove" } else { "removed" };
            println!("gc ({verb}): {report}");
            Ok(())
        }
        RegistryCommand::Passwd { user } => {
            if user.is_empty() || user.contains(':') {
                anyhow::bail!("a user name must be non-empty and must not contain ':'");
            }
            let mut password = String::new();
            std::io::stdin()
                .read_to_string(&mut password)
                .context("cannot read the password from stdin")?;
            let password = password.trim_end_matches(['\n', '\r']);
            if password.is_empty() {
                anyhow::bail!("empty password on stdin");
            }
            println!("{}", registry::auth::htpasswd_line(&user, password)?);
            Ok(())
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("strait-registry")
        .build()
        .context("cannot start the async runtime")
}

async fn serve(settings: Settings) -> anyhow::Result<()> {
    let prometheus = Arc::new(prometheus::Registry::new());
    let server = registry::RegistryServer::new(
        settings.registry.clone(),
        &settings.registry_root(),
        &prometheus,
    )?;
    let listener = server.bind().await?;
    // Alone, the registry serves its own /metrics (there is no admin API).
    let metrics = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let prometheus = Arc::clone(&prometheus);
            async move { crate::admin::render_metrics(&prometheus) }
        }),
    );
    server
        .serve(listener, metrics, crate::up::shutdown_signal())
        .await;
    Ok(())
}
