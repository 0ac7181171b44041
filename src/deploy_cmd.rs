//! `strait deploy` and `strait app`: thin clients of the admin API's `/v1/apps`.

use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::AdminArgs;
use crate::cli::{AdminClient, Method, parse_key_value};

#[derive(clap::Args)]
#[command(subcommand_negates_reqs = true)]
pub struct DeployArgs {
    #[command(subcommand)]
    pub command: Option<DeployCommand>,
    #[command(flatten)]
    pub start: StartArgs,
}

/// `strait deploy APP IMAGE`: a new deployment.
#[derive(clap::Args)]
pub struct StartArgs {
    /// The app (a DNS label: its instances are the service of that name).
    #[arg(required = true)]
    pub app: Option<String>,
    /// `registry/repository:tag` (resolved to its digest now) or `…@sha256:…`.
    #[arg(required = true)]
    pub image: Option<String>,
    /// Instances in all (over the agents' zones evenly), or per zone with `--zone`.
    #[arg(long)]
    pub instances: Option<u32>,
    /// Run `--instances` in this zone; repeatable.
    #[arg(long = "zone")]
    pub zones: Vec<String>,
    /// Environment KEY=VALUE for the containers; repeatable.
    #[arg(long = "env", value_parser = parse_key_value)]
    pub env: Vec<(String, String)>,
    /// The variable that carries the container's port (default PORT).
    #[arg(long)]
    pub port_env: Option<String>,
    /// Health check: GET this path (200-399 passes).
    #[arg(long, conflicts_with = "check_tcp")]
    pub check_path: Option<String>,
    /// Health check: connect to the port (the default).
    #[arg(long)]
    pub check_tcp: bool,
    #[arg(long, value_parser = humantime::parse_duration)]
    pub check_interval: Option<Duration>,
    /// Route this host to the app (the route named after it).
    #[arg(long)]
    pub host: Option<String>,
    /// All instances must pass their check within this (default 2m).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub timeout: Option<Duration>,
    /// Traffic percentages of the rollout, e.g. 10,50,100.
    #[arg(long, value_delimiter = ',')]
    pub steps: Vec<u32>,
    /// How long each step holds (default 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub pause: Option<Duration>,
    /// Roll back when the new version's 5xx share in a step is above this percent (default 5).
    #[arg(long)]
    pub max_5xx: Option<u32>,
    /// How long a replaced instance drains before it stops (default 10s).
    #[arg(long, value_parser = humantime::parse_duration)]
    pub drain: Option<Duration>,
    /// Container restarts that fail the deployment (default 3).
    #[arg(long)]
    pub max_restarts: Option<u32>,
    /// Wait until it ends; exit 0 only if it succeeded.
    #[arg(long)]
    pub wait: bool,
}

#[derive(clap::Subcommand)]
pub enum DeployCommand {
    /// The app's current deployment (or one by --id), step by step.
    Status {
        app: String,
        #[arg(long)]
        id: Option<u64>,
    },
    /// Every deployment of the app: image digest, outcome, times.
    History { app: String },
    /// Deploy the previous succeeded version again (health-gated, as any deployment).
    Rollback {
        app: String,
        #[arg(long)]
        wait: bool,
    },
    /// Cancel the app's running deployment (it is rolled back).
    Cancel {
        app: String,
        #[arg(long)]
        wait: bool,
    },
}

#[derive(clap::Subcommand)]
pub enum AppCommand {
    /// List apps: current deployment, instances, host.
    Ls,
    /// An app's spec, current deployment and instances.
    Show { app: String },
    /// Stop every container of the app and remove its records (and the route it made).
    Rm { app: String },
}

fn duration_text(d: Duration) -> String {
    humantime::format_duration(Duration::from_millis(d.as_millis() as u64)).to_string()
}

fn request_body(start: &StartArgs) -> Value {
    let mut body = json!({});
    if let Some(image) = &start.image {
        body["image"] = json!(image);
    }
    if let Some(n) = start.instances {
        body["instances"] = json!(n);
    }
    if !start.zones.is_empty() {
        body["zones"] = json!(start.zones);
    }
    if !start.env.is_empty() {
        body["env"] = start
            .env
            .iter()
            .map(|(k, v)| (k.clone(), json!(v)))
            .collect::<serde_json::Map<_, _>>()
            .into();
    }
    if let Some(port_env) = &start.port_env {
        body["port_env"] = json!(port_env);
    }
    if let Some(path) = &start.check_path {
        body["check"] = json!({"http": {"path": path}});
    } else if start.check_tcp {
        body["check"] = json!("tcp");
    }
    if let Some(interval) = start.check_interval {
        body["check_interval"] = json!(duration_text(interval));
    }
    if let Some(host) = &start.host {
        body["host"] = json!(host);
    }
    if let Some(timeout) = start.timeout {
        body["timeout"] = json!(duration_text(timeout));
    }
    let mut rollout = serde_json::Map::new();
    if !start.steps.is_empty() {
        rollout.insert("steps".into(), json!(start.steps));
    }
    if let Some(pause) = start.pause {
        rollout.insert("pause".into(), json!(duration_text(pause)));
    }
    if let Some(max) = start.max_5xx {
        rollout.insert("max_error_percent".into(), json!(max));
    }
    if let Some(drain) = start.drain {
        rollout.insert("drain".into(), json!(duration_text(drain)));
    }
    if let Some(max) = start.max_restarts {
        rollout.insert("max_restarts".into(), json!(max));
    }
    if !rollout.is_empty() {
        body["rollout"] = rollout.into();
    }
    body
}

pub fn deploy(admin: &AdminArgs, args: DeployArgs) -> anyhow::Result<()> {
    let client = AdminClient::new(admin);
    match args.command {
        None => {
            let app = args.start.app.clone().context("an app name is needed")?;
            let body = request_body(&args.start);
            let created = client.ok(Method::Post(body), &format!("/v1/apps/{app}/deployments"))?;
            follow(&client, admin, &app, &created, args.start.wait)
        }
        Some(DeployCommand::Rollback { app, wait }) => {
            let created =
                client.ok(Method::Post(json!({})), &format!("/v1/apps/{app}/rollback"))?;
            follow(&client, admin, &app, &created, wait)
        }
        Some(DeployCommand::Cancel { app, wait }) => {
            let body = client.ok(Method::Get, &format!("/v1/apps/{app}"))?;
            let Some(id) = body["in_progress"]["id"].as_u64() else {
                bail!("app `{app}` has no deployment in progress");
            };
            let cancelled =
                client.ok(Method::Delete, &format!("/v1/apps/{app}/deployments/{id}"))?;
            follow(&client, admin, &app, &cancelled, wait)
        }
        Some(DeployCommand::Status { app, id }) => {
            let deployment = match id {
                Some(id) => client.ok(Method::Get, &format!("/v1/apps/{app}/deployments/{id}"))?,
                None => {
                    let body = client.ok(Method::Get, &format!("/v1/apps/{app}/deployments"))?;
                    match body["deployments"].as_array().and_then(|d| d.first()) {
                        Some(newest) => newest.clone(),
                        None => bail!("app `{app}` has no deployment"),
                    }
                }
            };
            if admin.json {
                return print_json(&deployment);
            }
            print_status(&deployment);
            Ok(())
        }
        Some(DeployCommand::History { app }) => {
            let body = client.ok(Method::Get, &format!("/v1/apps/{app}/deployments"))?;
            if admin.json {
                return print_json(&body);
            }
            println!(
                "{:>4} {:<12} {:<19} {:<10} {:<20} {:>9}  REASON",
                "ID", "STATE", "DIGEST", "VERSION", "CREATED", "DURATION"
            );
            for d in body["deployments"].as_array().into_iter().flatten() {
                let digest = d["digest"].as_str().unwrap_or_default();
                let short = digest.get(..19).unwrap_or(digest);
                let version = image_tag(d["spec"]["image"].as_str().unwrap_or_default());
                let duration = match (
                    parse_time(&d["created"]),
                    parse_time(&d["finished"]).or_else(|| parse_time(&d["updated"])),
                ) {
                    (Some(a), Some(b)) => {
                        b.duration_since(a).map(duration_text).unwrap_or_default()
                    }
                    _ => String::new(),
                };
                println!(
                    "{:>4} {:<12} {:<19} {:<10} {:<20} {:>9}  {}",
                    d["id"].as_u64().unwrap_or_default(),
                    d["state"].as_str().unwrap_or_default(),
                    short,
                    version,
                    d["created"].as_str().unwrap_or_default(),
                    duration,
                    d["reason"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
    }
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

fn parse_time(value: &Value) -> Option<std::time::SystemTime> {
    humantime::parse_rfc3339_weak(value.as_str()?).ok()
}

fn image_tag(image: &str) -> String {
    let name = image.split('@').next().unwrap_or(image);
    let last = name.rsplit('/').next().unwrap_or(name);
    last.split_once(':')
        .map_or(String::new(), |(_, tag)| tag.to_string())
}

fn step_line(step: &Value) -> String {
    let took = match (parse_time(&step["started"]), parse_time(&step["ended"])) {
        (Some(a), Some(b)) => b.duration_since(a).map(duration_text).unwrap_or_default(),
        _ => String::new(),
    };
    let detail = step["detail"].as_str().unwrap_or_default();
    format!(
        "  {:<8} {:<40} {:>8}  {detail}",
        step["state"].as_str().unwrap_or_default(),
        step["name"].as_str().unwrap_or_default(),
        took
    )
}

fn print_status(d: &Value) {
    println!(
        "deployment {} of {}: {} (weight {}%)",
        d["id"].as_u64().unwrap_or_default(),
        d["app"].as_str().unwrap_or_default(),
        d["state"].as_str().unwrap_or_default(),
        d["weight"].as_u64().unwrap_or_default()
    );
    println!(
        "image      {}  ({})",
        d["image"].as_str().unwrap_or_default(),
        d["spec"]["image"].as_str().unwrap_or_default()
    );
    let placement: Vec<String> = d["placement"]
        .as_object()
        .into_iter()
        .flatten()
        .map(|(zone, n)| format!("{zone}: {n}"))
        .collect();
    println!(
        "placement  {}   instances {}/{} passing",
        placement.join(", "),
        d["passing"].as_u64().unwrap_or_default(),
        d["wanted"].as_u64().unwrap_or_default()
    );
    println!("steps:");
    for step in d["steps"].as_array().into_iter().flatten() {
        println!("{}", step_line(step));
    }
    if let Some(reason) = d["reason"].as_str() {
        println!("reason: {reason}");
    }
}

/// After a create, rollback or cancel: print what was accepted, and with `wait` follow it
/// to its end (the exit status says how it ended).
fn follow(
    client: &AdminClient,
    admin: &AdminArgs,
    app: &str,
    created: &Value,
    wait: bool,
) -> anyhow::Result<()> {
    let id = created["id"]
        .as_u64()
        .context("the API returned no deployment id")?;
    if !wait {
        if admin.json {
            return print_json(created);
        }
        println!(
            "deployment {id} of {app} accepted: {} (follow it with `strait deploy status {app}`)",
            created["image"].as_str().unwrap_or_default()
        );
        return Ok(());
    }
    if !admin.json {
        println!(
            "deployment {id} of {app}: {}",
            created["image"].as_str().unwrap_or_default()
        );
    }
    let path = format!("/v1/apps/{app}/deployments/{id}");
    let mut printed = 0;
    let started = Instant::now();
    loop {
        let d = client.ok(Method::Get, &path)?;
        let steps = d["steps"].as_array().cloned().unwrap_or_default();
        if !admin.json {
            // Print steps once they are over (the running one is printed when it ends).
            while printed < steps.len() && steps[printed]["state"] != "running" {
                println!("{}", step_line(&steps[printed]));
                printed += 1;
            }
        }
        let state = d["state"].as_str().unwrap_or_default().to_string();
        if !matches!(state.as_str(), "pending" | "running") {
            if admin.json {
                print_json(&d)?;
            }
            if state == "succeeded" {
                if !admin.json {
                    println!(
                        "succeeded in {}: {app} runs {}",
                        duration_text(started.elapsed()),
                        d["image"].as_str().unwrap_or_default()
                    );
                }
                return Ok(());
            }
            bail!(
                "deployment {id} of {app} {state}: {}",
                d["reason"].as_str().unwrap_or("no reason given")
            );
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

pub fn app(admin: &AdminArgs, command: AppCommand) -> anyhow::Result<()> {
    let client = AdminClient::new(admin);
    match command {
        AppCommand::Ls => {
            let body = client.ok(Method::Get, "/v1/apps")?;
            if admin.json {
                return print_json(&body);
            }
            println!(
                "{:<24} {:>7} {:>9} {:>8} {:<28} IMAGE",
                "APP", "CURRENT", "INSTANCES", "PASSING", "HOST"
            );
            for app in body["apps"].as_array().into_iter().flatten() {
                let current = app["current"]
                    .as_u64()
                    .map_or("-".to_string(), |id| id.to_string());
                let mut name = app["name"].as_str().unwrap_or_default().to_string();
                if let Some(id) = app["in_progress"].as_u64() {
                    name.push_str(&format!(" (deploying {id})"));
                }
                if app["removing"] == true {
                    name.push_str(" (removing)");
                }
                println!(
                    "{:<24} {:>7} {:>9} {:>8} {:<28} {}",
                    name,
                    current,
                    app["instances"].as_u64().unwrap_or_default(),
                    app["passing"].as_u64().unwrap_or_default(),
                    app["host"].as_str().unwrap_or("-"),
                    app["image"].as_str().unwrap_or_default()
                );
            }
            Ok(())
        }
        AppCommand::Show { app } => {
            let body = client.ok(Method::Get, &format!("/v1/apps/{app}"))?;
            if admin.json {
                return print_json(&body);
            }
            println!("app {app}");
            println!("spec: {}", serde_json::to_string(&body["spec"])?);
            for key in ["current", "in_progress"] {
                if body[key].is_object() {
                    println!("{key}:");
                    print_status(&body[key]);
                    for i in body[key]["instances"].as_array().into_iter().flatten() {
                        println!(
                            "  {:<40} {}:{} {:<12} {}",
                            i["id"].as_str().unwrap_or_default(),
                            i["address"].as_str().unwrap_or_default(),
                            i["port"].as_u64().unwrap_or_default(),
                            i["health"].as_str().unwrap_or_default(),
                            i["metadata"]["container"].as_str().unwrap_or_default()
                        );
                    }
                }
            }
            Ok(())
        }
        AppCommand::Rm { app } => {
            client.ok(Method::Delete, &format!("/v1/apps/{app}"))?;
            println!("app {app}: removing (its containers stop, then its records go)");
            Ok(())
        }
    }
}
