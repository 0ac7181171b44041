//! `strait`: edge router and service-discovery data plane. This binary parses the command
//! line, loads configuration, wires the components and runs them; the work lives in the
//! workspace's library crates (see docs/ARCHITECTURE.md).

#![forbid(unsafe_code)]

mod admin;
mod agent_cmd;
mod authz;
mod cli;
mod demo;
mod deploy_cmd;
mod metrics;
mod openapi;
mod registry_cmd;
mod self_routing;
mod settings;
mod status;
mod token_cmd;
mod tokens;
mod ui;
mod up;
mod upgrade;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// mimalloc: the request path allocates many small, short-lived objects (pingora's
/// headers, buffers and futures); glibc malloc was ~10% of the router's CPU in profiles.
#[cfg(not(feature = "alloc-stats"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// With `--features alloc-stats`, an allocator behind counters (for `bench alloc`). It
/// wraps the system allocator (stats_alloc's wrapper can be a `static` only around it);
/// the number of allocations a request makes does not depend on the allocator.
#[cfg(feature = "alloc-stats")]
#[global_allocator]
pub static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

/// `0.1.0 (commit 0123456789ab)`: the package version and the commit built (build.rs).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("STRAIT_COMMIT"),
    ")"
);

#[derive(Parser)]
#[command(
    name = "strait",
    version = VERSION,
    about = "Edge router and service-discovery data plane"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run strait: discovery store, router and admin API (the built-in demo config by default).
    Up(UpArgs),
    /// Register, deregister and list service instances (through the admin API).
    Svc {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: SvcCommand,
    },
    /// Apply, list and remove routes (through the admin API).
    Route {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: RouteCommand,
    },
    /// Deploy an app from the registry (health-gated rollout with automatic rollback);
    /// its status, history, rollback, cancel (through the admin API).
    Deploy {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(flatten)]
        args: deploy_cmd::DeployArgs,
    },
    /// List, show and remove deployed apps (through the admin API).
    App {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: deploy_cmd::AppCommand,
    },
    /// Make, list and revoke admin API tokens for teams (the admin's; docs/security.md).
    Token {
        #[command(flatten)]
        admin: AdminArgs,
        #[command(subcommand)]
        command: token_cmd::TokenCommand,
    },
    /// The audit log of admin API writes and registry pushes and deletes (refused ones
    /// included).
    Audit {
        #[command(flatten)]
        admin: AdminArgs,
        /// Records from this time (RFC 3339) or after this sequence number.
        #[arg(long)]
        since: Option<String>,
    },
    /// Run the host-local agent alone: register local services and health-check them,
    /// and (with --runtime podman) run the deployments' containers.
    Agent(agent_cmd::AgentArgs),
    /// Build a reproducible OCI image from a small config, without a daemon.
    Build(builder::BuildArgs),
    /// The OCI image registry: serve it alone, collect its garbage, add users.
    Registry {
        #[command(subcommand)]
        command: RegistryCommand,
    },
    /// Configuration tools.
    Config {
        #[command(subcommand)]
        command: ConfigCommand,
    },
}

#[derive(Args)]
pub struct UpArgs {
    /// Configuration file (TOML). Default: the built-in demo config.
    #[arg(long, short = 'c')]
    pub config: Option<PathBuf>,
    /// Store URL: `embedded` or `zk://host:port[,host:port]/chroot`. Overrides `store.url`.
    #[arg(long)]
    pub store: Option<discovery::StoreUrl>,
    /// Data directory of the embedded store. Overrides `store.data_dir`.
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// Admin API listen address (port 0 picks a free port). Overrides `admin.addr`.
    #[arg(long)]
    pub admin_addr: Option<SocketAddr>,
    /// HTTP router listen address (port 0 picks a free port). Overrides `router.http_addr`.
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
    /// Local services to register and health-check (TOML `[[service]]` file). Overrides
    /// `agent.services`.
    #[arg(long)]
    pub services: Option<PathBuf>,
    /// DNS listen address, UDP and TCP (port 0 picks a free port). Overrides `dns.addr`.
    #[arg(long)]
    pub dns_addr: Option<SocketAddr>,
    /// Registry listen address (port 0 picks a free port). Overrides `registry.addr`.
    #[arg(long)]
    pub registry_addr: Option<SocketAddr>,
    /// HTTPS listen address: overrides the address of the first `[[router.tls]]` listener.
    #[arg(long)]
    pub https_addr: Option<SocketAddr>,
    /// Take over from the strait running on the same data directory (a new binary or
    /// configuration): its listening sockets, instances and leases, with no failed
    /// request. The old process drains and exits.
    #[arg(long)]
    pub upgrade: bool,
    /// Run deployed containers on this host with this engine. Overrides `agent.runtime`.
    #[arg(long, value_enum)]
    pub runtime: Option<settings::Runtime>,
    /// The zone this host's agent is in. Overrides `agent.zone`.
    #[arg(long)]
    pub zone: Option<String>,
}

#[derive(Args)]
pub struct AdminArgs {
    /// Admin API of the strait to talk to.
    #[arg(
        long,
        env = "STRAIT_ADMIN",
        default_value = "http://127.0.0.1:9901",
        global = true
    )]
    pub admin: String,
    /// Bearer token for an admin API that requires one.
    #[arg(
        long,
        env = "STRAIT_ADMIN_TOKEN",
        hide_env_values = true,
        global = true
    )]
    pub token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand)]
pub enum SvcCommand {
    /// Register (or update) an instance.
    Register {
        service: String,
        id: String,
        /// IP:PORT peers connect to, e.g. 127.0.0.1:9000 or [::1]:9000.
        addr: SocketAddr,
        #[arg(long)]
        zone: Option<String>,
        /// Repeatable.
        #[arg(long = "tag")]
        tags: Vec<String>,
        #[arg(long)]
        weight: Option<u16>,
        /// Named port NAME=PORT; repeatable.
        #[arg(long = "port", value_parser = cli::parse_key_value)]
        ports: Vec<(String, String)>,
        /// Metadata KEY=VALUE; repeatable.
        #[arg(long = "meta", value_parser = cli::parse_key_value)]
        metadata: Vec<(String, String)>,
        /// passing (default), warning, critical or maintenance.
        #[arg(long)]
        health: Option<String>,
        /// Hold the registration under a lease with this TTL, renewing it until this
        /// command is interrupted; then (or if this process dies) the instance vanishes.
        #[arg(long, value_parser = humantime::parse_duration)]
        ttl: Option<Duration>,
    },
    /// Remove an instance.
    Deregister { service: String, id: String },
    /// List services, or the instances of one.
    Ls { service: Option<String> },
}

#[derive(Subcommand)]
pub enum RouteCommand {
    /// Create or replace the routes in a file (TOML `[route.<name>]` tables, or JSON
    /// `{"<name>": {...}}` for *.json; `-` reads TOML from stdin).
    Apply {
        #[arg(short = 'f', long = "file")]
        file: PathBuf,
    },
    /// List routes.
    Ls,
    /// Remove a route.
    Rm { name: String },
    /// Explain how the live routing table would handle a request: which route matches
    /// and why others do not, the services chosen, and which instances are eligible.
    Explain {
        /// e.g. http://web.example.com/api/users
        url: String,
        /// Request header, `Name: value`; repeatable.
        #[arg(short = 'H', long = "header")]
        headers: Vec<String>,
        #[arg(short = 'X', long, default_value = "GET")]
        method: String,
    },
}

#[derive(Subcommand)]
pub enum RegistryCommand {
    /// Serve the registry alone (no router, DNS or store).
    Serve {
        /// Configuration file; only its `[registry]` section is used.
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// Listen address (port 0 picks a free port). Overrides `registry.addr`.
        #[arg(long)]
        addr: Option<SocketAddr>,
        /// Storage root. Overrides `registry.root`.
        #[arg(long)]
        root: Option<PathBuf>,
        /// htpasswd file (bcrypt): pushes need these credentials. Overrides
        /// `registry.auth.htpasswd`.
        #[arg(long)]
        htpasswd: Option<PathBuf>,
    },
    /// Delete untagged manifests and unreferenced blobs (safe while the registry runs).
    Gc {
        #[arg(long, short = 'c')]
        config: Option<PathBuf>,
        /// Storage root. Overrides `registry.root`.
        #[arg(long)]
        root: Option<PathBuf>,
        /// Report what would be deleted; delete nothing.
        #[arg(long)]
        dry_run: bool,
        /// Never collect what was used more recently than this.
        #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
        grace: Duration,
    },
    /// Print an htpasswd line (bcrypt) for USER; the password is read from stdin.
    Passwd { user: String },
}

#[derive(Subcommand)]
enum ConfigCommand {
    /// Check a configuration file; errors print file:line:column and the key.
    Check { file: PathBuf },
    /// Print the built-in demo configuration.
    Demo,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Up(args) => up::run(args),
        Command::Svc { admin, command } => cli::svc(&admin, command),
        Command::Route { admin, command } => cli::route(&admin, command),
        Command::Deploy { admin, args } => deploy_cmd::deploy(&admin, args),
        Command::App { admin, command } => deploy_cmd::app(&admin, command),
        Command::Token { admin, command } => token_cmd::token(&admin, command),
        Command::Audit { admin, since } => token_cmd::audit(&admin, since),
        Command::Agent(args) => agent_cmd::run(args),
        Command::Build(args) => builder::build_command(args).map_err(anyhow::Error::from),
        Command::Registry { command } => registry_cmd::run(command),
        Command::Config { command } => match command {
            ConfigCommand::Check { file } => cli::config_check(&file),
            ConfigCommand::Demo => {
                print!("{}", settings::DEMO_CONFIG);
                Ok(())
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// The error and its causes, `: `-joined, leaving out a cause whose text the message
/// already carries (library errors often include their source in their own text).
fn error_chain(error: &anyhow::Error) -> String {
    let mut message = error.to_string();
    for cause in error.chain().skip(1) {
        let cause = cause.to_string();
        if !message.contains(&cause) {
            message.push_str(": ");
            message.push_str(&cause);
        }
    }
    message
}
