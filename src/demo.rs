//! The first-run demo (`[demo]`, in the built-in config only): a small HTTP backend
//! strait serves itself on loopback, registered through the agent as service `hello`
//! with an HTTP health check, and a route for `localhost` to it, so that the first
//! `curl localhost:8080` after `strait up` answers. Once it does, `strait up` prints the
//! commands to try (on stdout, for the built-in config only).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use discovery::Store;
use discovery::agent::{CheckDefinition, CheckType, ServiceDefinition};
use discovery::model::{Health, Route};
use serde::{Deserialize, Serialize};
use tracing::{info, warn};

/// The `[demo]` section.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DemoConfig {
    /// Where the demo backend listens (loopback; port 0 picks a free one).
    #[serde(default = "default_backend")]
    pub backend: SocketAddr,
    /// The service it registers as (also the route's name).
    #[serde(default = "default_service", deserialize_with = "service_name")]
    pub service: String,
    /// The host the route matches.
    #[serde(default = "default_host")]
    pub host: String,
}

fn default_backend() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

fn default_service() -> String {
    "hello".into()
}

fn default_host() -> String {
    "localhost".into()
}

fn service_name<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    let name = String::deserialize(d)?;
    discovery::model::validate_service_name(&name).map_err(serde::de::Error::custom)?;
    Ok(name)
}

/// The running demo backend.
pub struct Demo {
    pub config: DemoConfig,
    pub addr: SocketAddr,
}

impl Demo {
    /// Binds and serves the backend (until the runtime ends).
    pub async fn start(config: DemoConfig) -> anyhow::Result<Demo> {
        anyhow::ensure!(
            config.backend.ip().is_loopback(),
            "demo.backend {} is not a loopback address",
            config.backend
        );
        let listener = tokio::net::TcpListener::bind(config.backend)
            .await
            .with_context(|| format!("cannot listen on {} for the demo backend", config.backend))?;
        let addr = listener.local_addr()?;
        let greeting: Arc<str> = Arc::from(format!(
            "Hello from strait's demo backend (service `{}`, {addr}), reached through the router.\n",
            config.service
        ));
        let app = axum::Router::new()
            .route(
                "/",
                axum::routing::get(move || {
                    let greeting = Arc::clone(&greeting);
                    async move { greeting.to_string() }
                }),
            )
            .route("/healthz", axum::routing::get(|| async { "ok\n" }));
        tokio::spawn(async move {
            if let Err(e) = axum::serve(listener, app).await {
                warn!(error = %e, "the demo backend stopped");
            }
        });
        info!(addr = %addr, service = %config.service, "demo backend listening on {addr}");
        Ok(Demo { config, addr })
    }

    /// Its registration, for the agent: health-checked over HTTP every second.
    pub fn definition(&self) -> ServiceDefinition {
        ServiceDefinition {
            service: self.config.service.clone(),
            id: format!("{}-1", self.config.service),
            address: self.addr.ip(),
            port: self.addr.port(),
            ports: Default::default(),
            zone: None,
            tags: vec!["demo".into()],
            weight: None,
            metadata: Default::default(),
            maintenance: false,
            checks: vec![CheckDefinition {
                id: None,
                kind: CheckType::Http,
                path: Some("/healthz".into()),
                status: None,
                port: None,
                ttl: None,
                interval: Duration::from_secs(1),
                timeout: Duration::from_secs(1),
                rise: 1,
                fall: 2,
            }],
        }
    }

    /// The route to it, unless one of that name is there already (an operator's change
    /// to it survives restarts, as routes do).
    pub async fn ensure_route(&self, store: &dyn Store) -> anyhow::Result<()> {
        if store
            .snapshot()
            .routes
            .contains_key(self.config.service.as_str())
        {
            return Ok(());
        }
        store
            .put_route(
                &self.config.service,
                Route::http(&self.config.host, &self.config.service),
            )
            .await
            .context("cannot put the demo route")?;
        Ok(())
    }

    /// Whether the instance passes and the router's table has the route to it.
    fn ready(&self, store: &dyn Store, router: &router::Router) -> bool {
        let snapshot = store.snapshot();
        let passing = snapshot
            .services
            .get(self.config.service.as_str())
            .is_some_and(|s| s.count(Health::Passing) > 0);
        passing && router.table().revision >= snapshot.revision
    }
}

/// Where the commands to try should point.
pub struct Addresses {
    pub http: SocketAddr,
    pub dns: SocketAddr,
    pub admin: SocketAddr,
    pub domain: String,
}

/// Waits (up to 30 s) for the demo to route, then prints what to try on stdout.
pub async fn announce(
    demo: Arc<Demo>,
    store: Arc<dyn Store>,
    router: Arc<router::Router>,
    at: Addresses,
) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !demo.ready(store.as_ref(), &router) {
        if Instant::now() > deadline {
            warn!(service = %demo.config.service, "the demo service is not routed yet; see /ui");
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("{}", try_this(&demo.config, &at, &strait_command()));
}

/// `strait` if the running binary is the one on the PATH, else its path.
fn strait_command() -> String {
    let Ok(exe) = std::env::current_exe() else {
        return "strait".into();
    };
    let on_path = std::env::var_os("PATH").is_some_and(|path| {
        std::env::split_paths(&path).any(|dir| {
            std::fs::canonicalize(dir.join("strait"))
                .is_ok_and(|found| std::fs::canonicalize(&exe).is_ok_and(|exe| exe == found))
        })
    });
    if on_path {
        "strait".into()
    } else {
        exe.display().to_string()
    }
}

/// `localhost:PORT` for a loopback or wildcard listener, else the address.
fn reach(addr: SocketAddr) -> String {
    if addr.ip().is_loopback() || addr.ip().is_unspecified() {
        format!("localhost:{}", addr.port())
    } else {
        addr.to_string()
    }
}

fn loopback_if_unspecified(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::from(([127, 0, 0, 1], addr.port()))
    } else {
        addr
    }
}

/// The commands printed once the demo routes.
pub fn try_this(config: &DemoConfig, at: &Addresses, strait: &str) -> String {
    let curl = if config.host == "localhost" {
        format!("curl http://{}/", reach(at.http))
    } else {
        format!(
            "curl -H 'Host: {}' http://{}/",
            config.host,
            loopback_if_unspecified(at.http)
        )
    };
    let dns = loopback_if_unspecified(at.dns);
    let admin = loopback_if_unspecified(at.admin);
    let admin_flag = if admin == SocketAddr::from(([127, 0, 0, 1], 9901)) {
        String::new()
    } else {
        format!(" --admin http://{admin}")
    };
    let lines = [
        (
            curl,
            format!(
                "through the router to the demo backend (service `{}`)",
                config.service
            ),
        ),
        (
            format!(
                "dig @{} -p {} {}.service.{} +short",
                dns.ip(),
                dns.port(),
                config.service,
                at.domain
            ),
            "the service in DNS".to_string(),
        ),
        (
            format!("{strait} svc ls{admin_flag}"),
            "the registered services".to_string(),
        ),
        (
            format!("http://{admin}/ui"),
            "the status page (open it in a browser)".to_string(),
        ),
    ];
    let width = lines.iter().map(|(c, _)| c.len()).max().unwrap_or(0);
    let mut text = String::from("strait is up with its built-in demo config. Try:\n\n");
    for (command, what) in &lines {
        text.push_str(&format!("  {command:width$}   # {what}\n"));
    }
    text.push_str(
        "\nA start with --config FILE runs no demo unless the file has a [demo] section \
         (etc/strait.toml is the demo config; docs/operations.md).",
    );
    text
}

#[cfg(test)]
mod tests {
    use expect_test::expect;

    use super::*;

    #[test]
    fn commands_to_try() {
        let config = DemoConfig {
            backend: default_backend(),
            service: default_service(),
            host: default_host(),
        };
        let at = Addresses {
            http: "127.0.0.1:8080".parse().expect("addr"),
            dns: "127.0.0.1:8600".parse().expect("addr"),
            admin: "127.0.0.1:9901".parse().expect("addr"),
            domain: "strait".into(),
        };
        expect![[r#"
            strait is up with its built-in demo config. Try:

              curl http://localhost:8080/                          # through the router to the demo backend (service `hello`)
              dig @127.0.0.1 -p 8600 hello.service.strait +short   # the service in DNS
              strait svc ls                                        # the registered services
              http://127.0.0.1:9901/ui                             # the status page (open it in a browser)

            A start with --config FILE runs no demo unless the file has a [demo] section (etc/strait.toml is the demo config; docs/operations.md)."#]]
        .assert_eq(&try_this(&config, &at, "strait"));
    }
}
