//! The `svc`, `route` and `config` subcommands: thin clients of the admin API.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use serde::Deserialize;
use serde_json::{Value, json};

use crate::settings::Settings;
use crate::{AdminArgs, RouteCommand, SvcCommand};

pub fn parse_key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("`{s}` is not KEY=VALUE"))
}

/// A blocking client of one strait admin API.
#[derive(Clone)]
pub(crate) struct AdminClient {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

pub(crate) enum Method {
    Get,
    Put(Value),
    Post(Value),
    Delete,
}

impl AdminClient {
    pub(crate) fn new(args: &AdminArgs) -> Self {
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(15)))
            .build()
            .into();
        AdminClient {
            base: args.admin.trim_end_matches('/').to_string(),
            token: args.token.clone(),
            agent,
        }
    }

    /// Sends a request; returns the status and the JSON body (`null` when empty).
    pub(crate) fn call(&self, method: Method, path: &str) -> anyhow::Result<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let auth = self.token.as_ref().map(|t| format!("Bearer {t}"));
        macro_rules! with_auth {
            ($builder:expr) => {{
                let builder = $builder;
                match &auth {
                    Some(value) => builder.header("authorization", value.as_str()),
                    None => builder,
                }
            }};
        }
        let response = match method {
            Method::Get => with_auth!(self.agent.get(&url)).call(),
            Method::Delete => with_auth!(self.agent.delete(&url)).call(),
            Method::Put(body) => with_auth!(self.agent.put(&url)).send_json(body),
            Method::Post(body) => with_auth!(self.agent.post(&url)).send_json(body),
        };
        let mut response = response
            .with_context(|| format!("cannot reach the strait admin API at {}", self.base))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading the response from {url}"))?;
        let value = if text.trim().is_empty() {
            Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or(Value::String(text))
        };
        Ok((status, value))
    }

    /// Like `call`, but a non-2xx status becomes an error carrying the API's message.
    pub(crate) fn ok(&self, method: Method, path: &str) -> anyhow::Result<Value> {
        let (status, body) = self.call(method, path)?;
        if (200..300).contains(&status) {
            return Ok(body);
        }
        let message = body
            .get("message")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| body.to_string());
        bail!("{message} (HTTP {status})")
    }
}

fn print_json(value: &Value) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

pub fn svc(args: &AdminArgs, command: SvcCommand) -> anyhow::Result<()> {
    let client = AdminClient::new(args);
    match command {
        SvcCommand::Register {
            service,
            id,
            addr,
            zone,
            tags,
            weight,
            ports,
            metadata,
            health,
            ttl,
        } => {
            let mut body = json!({"address": addr.ip().to_string(), "port": addr.port()});
            if let Some(zone) = zone {
                body["zone"] = json!(zone);
            }
            if !tags.is_empty() {
                body["tags"] = json!(tags);
            }
            if let Some(weight) = weight {
                body["weight"] = json!(weight);
            }
            if !ports.is_empty() {
                let ports: BTreeMap<String, u16> = ports
                    .into_iter()
                    .map(|(name, port)| {
                        port.parse()
                            .map(|p| (name.clone(), p))
                            .map_err(|_| anyhow!("--port {name}={port}: not a port number"))
                    })
                    .collect::<anyhow::Result<_>>()?;
                body["ports"] = json!(ports);
            }
            if !metadata.is_empty() {
                body["metadata"] = json!(metadata.into_iter().collect::<BTreeMap<_, _>>());
            }
            if let Some(health) = health {
                body["health"] = json!(health);
            }
            let path = format!("/v1/services/{service}/instances/{id}");
            match ttl {
                None => {
                    let instance = client.ok(Method::Put(body), &path)?;
                    if args.json {
                        return print_json(&instance);
                    }
                    println!("registered {service}/{id} at {addr}");
                    Ok(())
                }
                Some(ttl) => {
                    hold_registration(&client, &path, body, ttl, &format!("{service}/{id}"))
                }
            }
        }
        SvcCommand::Deregister { service, id } => {
            client.ok(
                Method::Delete,
                &format!("/v1/services/{service}/instances/{id}"),
            )?;
            println!("deregistered {service}/{id}");
            Ok(())
        }
        SvcCommand::Ls { service: None } => {
            let body = client.ok(Method::Get, "/v1/services")?;
            if args.json {
                return print_json(&body);
            }
            println!("{:<32} {:>9} {:>8}", "SERVICE", "INSTANCES", "PASSING");
            for service in body["services"].as_array().into_iter().flatten() {
                println!(
                    "{:<32} {:>9} {:>8}",
                    service["name"].as_str().unwrap_or_default(),
                    service["instances"].as_u64().unwrap_or_default(),
                    service["passing"].as_u64().unwrap_or_default()
                );
            }
            Ok(())
        }
        SvcCommand::Ls {
            service: Some(service),
        } => {
            let body = client.ok(Method::Get, &format!("/v1/services/{service}"))?;
            if args.json {
                return print_json(&body);
            }
            println!(
                "{:<24} {:<40} {:>5} {:<12} {:<11} TAGS",
                "ID", "ADDRESS", "PORT", "ZONE", "HEALTH"
            );
            for instance in body["instances"].as_array().into_iter().flatten() {
                let tags: Vec<&str> = instance["tags"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(Value::as_str)
                    .collect();
                println!(
                    "{:<24} {:<40} {:>5} {:<12} {:<11} {}",
                    instance["id"].as_str().unwrap_or_default(),
                    instance["address"].as_str().unwrap_or_default(),
                    instance["port"].as_u64().unwrap_or_default(),
                    instance["zone"].as_str().unwrap_or("-"),
                    instance["health"].as_str().unwrap_or_default(),
                    tags.join(",")
                );
            }
            Ok(())
        }
    }
}

/// Registers under a lease and renews it every ttl/3 until SIGINT/SIGTERM, then revokes it.
/// If this process dies instead, the lease expires and the instance vanishes.
fn hold_registration(
    client: &AdminClient,
    path: &str,
    body: Value,
    ttl: Duration,
    name: &str,
) -> anyhow::Result<()> {
    let lease = client.ok(
        Method::Post(json!({"ttl": humantime::format_duration(ttl).to_string()})),
        "/v1/leases",
    )?;
    let lease_id = lease["id"]
        .as_str()
        .ok_or_else(|| anyhow!("admin API returned a lease without an id: {lease}"))?
        .to_string();
    client.ok(Method::Put(body), &format!("{path}?lease={lease_id}"))?;
    println!(
        "registered {name} under lease {lease_id} (ttl {}); renewing until interrupted",
        humantime::format_duration(ttl)
    );
    let stop = Arc::new(AtomicBool::new(false));
    for signal in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(signal, Arc::clone(&stop))
            .context("cannot install signal handler")?;
    }
    let interval = ttl / 3;
    let mut waited = Duration::ZERO;
    while !stop.load(Ordering::SeqCst) {
        std::thread::sleep(Duration::from_millis(50));
        waited += Duration::from_millis(50);
        if waited < interval {
            continue;
        }
        waited = Duration::ZERO;
        match client.call(
            Method::Put(Value::Null),
            &format!("/v1/leases/{lease_id}/renew"),
        ) {
            Ok((200, _)) => {}
            Ok((404, _)) => bail!(
                "lease {lease_id} expired before it could be renewed; {name} was deregistered"
            ),
            Ok((status, body)) => {
                eprintln!("warning: renewing lease failed (HTTP {status}): {body}")
            }
            Err(e) => eprintln!("warning: renewing lease failed: {e:#}"),
        }
    }
    client.ok(Method::Delete, &format!("/v1/leases/{lease_id}"))?;
    println!("revoked lease {lease_id}; {name} deregistered");
    Ok(())
}

/// A routes file: `[route.<name>]` tables (TOML) or `{"<name>": {...}}` (JSON).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RoutesFile {
    route: BTreeMap<String, discovery::Route>,
}

/// The routes of a JSON routes file, which may be `{"<name>": {...}}`, the TOML file's
/// shape `{"route": {"<name>": {...}}}`, or what `GET /v1/routes` answers
/// (`{"revision": N, "routes": {...}}`, so a backup applies as it is); with the path
/// prefix that locates them, for messages.
fn json_routes(value: Value) -> (&'static str, Value) {
    // A map of routes has objects for values; a route itself has strings among them.
    let map_of_routes = |v: &Value| {
        v.as_object()
            .is_some_and(|m| m.values().all(Value::is_object))
    };
    if let Value::Object(mut top) = value {
        if top.keys().all(|k| k == "revision" || k == "routes")
            && top.get("routes").is_some_and(map_of_routes)
            && let Some(routes) = top.remove("routes")
        {
            return ("routes.", routes);
        }
        if top.len() == 1
            && top.get("route").is_some_and(map_of_routes)
            && let Some(routes) = top.remove("route")
        {
            return ("route.", routes);
        }
        return ("", Value::Object(top));
    }
    ("", value)
}

fn read_routes(file: &Path) -> anyhow::Result<BTreeMap<String, discovery::Route>> {
    let mut routes = if file == Path::new("-") {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading routes from stdin")?;
        config::parse::<RoutesFile>(config::Source::Builtin("stdin"), &text)?.route
    } else if file.extension().is_some_and(|e| e == "json") {
        let text =
            std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
        let value: Value = serde_json::from_slice(&text)
            .map_err(|e| anyhow!("{}: not JSON: {e}", file.display()))?;
        let (prefix, routes) = json_routes(value);
        serde_path_to_error::deserialize(routes).map_err(|e| {
            anyhow!(
                "{}: at `{prefix}{}`: {}",
                file.display(),
                e.path(),
                e.inner()
            )
        })?
    } else {
        config::load::<RoutesFile>(file)?.route
    };
    if routes.is_empty() {
        bail!(
            "{}: no routes in file (expected `[route.<name>]` tables)",
            file.display()
        );
    }
    for (name, route) in &mut routes {
        discovery::model::validate_id("route name", name)
            .and_then(|()| route.validate_for_write())
            .map_err(|e| anyhow!("{}: route `{name}`: {e}", file.display()))?;
    }
    // Two routes of the file for the same connections: refused before anything is
    // written (the admin API checks each against the routes already stored).
    for (i, (name, route)) in routes.iter().enumerate() {
        if let Some((other, _)) = routes
            .iter()
            .skip(i + 1)
            .find(|(_, other)| route.tcp_overlaps(other))
        {
            bail!(
                "{}: routes `{name}` and `{other}` take the same connections (the same port on an overlapping address, and the same server name)",
                file.display()
            );
        }
    }
    Ok(routes)
}

pub fn route(args: &AdminArgs, command: RouteCommand) -> anyhow::Result<()> {
    let client = AdminClient::new(args);
    match command {
        RouteCommand::Apply { file } => {
            // Validate the whole file before the first write, so a bad file changes nothing.
            let routes = read_routes(&file)?;
            // TCP routes in the state the file leads to: the stored routes it does not
            // replace, and its own.
            let stored = client.ok(Method::Get, "/v1/routes")?;
            for (name, value) in stored["routes"].as_object().into_iter().flatten() {
                let Ok(existing) = serde_json::from_value::<discovery::Route>(value.clone()) else {
                    continue;
                };
                if routes.contains_key(name) {
                    continue;
                }
                if let Some((mine, _)) = routes.iter().find(|(_, r)| r.tcp_overlaps(&existing)) {
                    bail!(
                        "{}: route `{mine}` would take the connections of the stored route `{name}` (the same port on an overlapping address, and the same server name); nothing applied",
                        file.display()
                    );
                }
            }
            // The final state has no conflict, but an order of writes may pass through one
            // (a route moving onto a port another of the file's routes leaves): order them
            // so that none does, from the stored state, before writing anything.
            let mut state: BTreeMap<String, discovery::Route> = stored["routes"]
                .as_object()
                .into_iter()
                .flatten()
                .filter_map(|(n, v)| Some((n.clone(), serde_json::from_value(v.clone()).ok()?)))
                .collect();
            let mut pending: Vec<(String, discovery::Route)> = routes.into_iter().collect();
            let mut order = Vec::with_capacity(pending.len());
            while !pending.is_empty() {
                let free = pending.iter().position(|(name, route)| {
                    !state
                        .iter()
                        .any(|(other, existing)| other != name && route.tcp_overlaps(existing))
                });
                let Some(free) = free else {
                    bail!(
                        "{}: routes {} trade connections with each other; apply them in two steps (nothing applied)",
                        file.display(),
                        pending
                            .iter()
                            .map(|(n, _)| format!("`{n}`"))
                            .collect::<Vec<_>>()
                            .join(", ")
                    );
                };
                let (name, route) = pending.remove(free);
                state.insert(name.clone(), route.clone());
                order.push((name, route));
            }
            for (name, route) in order {
                // A 409 here is a store whose snapshot has not caught up with this run's
                // earlier writes yet (ZooKeeper's is fed by watches): wait for it a little.
                let mut tries = 0;
                loop {
                    let (status, body) = client.call(
                        Method::Put(serde_json::to_value(&route)?),
                        &format!("/v1/routes/{name}"),
                    )?;
                    if (200..300).contains(&status) {
                        println!("applied route {name}");
                        break;
                    }
                    tries += 1;
                    if status != 409 || tries >= 20 {
                        let message = body["message"]
                            .as_str()
                            .map_or_else(|| body.to_string(), str::to_string);
                        bail!("applying route `{name}`: {message} (HTTP {status})");
                    }
                    std::thread::sleep(Duration::from_millis(250));
                }
            }
            Ok(())
        }
        RouteCommand::Ls => {
            let body = client.ok(Method::Get, "/v1/routes")?;
            if args.json {
                return print_json(&body);
            }
            println!("{:<24} {:<5} {:<40} TARGET", "NAME", "KIND", "MATCH");
            for (name, route) in body["routes"].as_object().into_iter().flatten() {
                let kind = route["kind"].as_str().unwrap_or("http");
                let matcher = match kind {
                    "tcp" => format!(
                        "listen {}{}",
                        route["listen"].as_str().unwrap_or("-"),
                        route["sni"]
                            .as_str()
                            .map(|s| format!(" sni {s}"))
                            .unwrap_or_default()
                    ),
                    _ => format!(
                        "{}{}",
                        route["host"].as_str().unwrap_or("*"),
                        route
                            .get("path")
                            .map(|p| format!(" {p}"))
                            .unwrap_or_default()
                    ),
                };
                let target = match route["service"].as_str() {
                    Some(service) => service.to_string(),
                    None => route["split"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|s| {
                            format!("{}={}", s["service"].as_str().unwrap_or("?"), s["weight"])
                        })
                        .collect::<Vec<_>>()
                        .join(","),
                };
                println!("{name:<24} {kind:<5} {matcher:<40} {target}");
            }
            Ok(())
        }
        RouteCommand::Explain {
            url,
            headers,
            method,
        } => {
            let mut header_map = serde_json::Map::new();
            for header in headers {
                let (name, value) = header
                    .split_once(':')
                    .ok_or_else(|| anyhow!("-H `{header}`: expected `Name: value`"))?;
                header_map.insert(name.trim().to_string(), json!(value.trim()));
            }
            let body = json!({"url": url, "method": method, "headers": header_map});
            let explanation = client.ok(Method::Post(body), "/v1/explain")?;
            if args.json {
                return print_json(&explanation);
            }
            print_explanation(&explanation);
            Ok(())
        }
        RouteCommand::Rm { name } => {
            client.ok(Method::Delete, &format!("/v1/routes/{name}"))?;
            println!("removed route {name}");
            Ok(())
        }
    }
}

fn print_explanation(e: &Value) {
    let text = |v: &Value| v.as_str().unwrap_or("-").to_string();
    println!(
        "{} {}{}  (table revision {})",
        text(&e["method"]),
        text(&e["host"]),
        text(&e["path"]),
        e["revision"]
    );
    println!("host: {}", e["host_match"].as_str().unwrap_or("no match"));
    for route in e["routes"].as_array().into_iter().flatten() {
        let mark = if route["matched"] == true {
            "MATCH"
        } else {
            "  -  "
        };
        let reason = route["reason"]
            .as_str()
            .map(|r| format!("  ({r})"))
            .unwrap_or_default();
        println!("  {mark} {}{reason}", text(&route["name"]));
    }
    for target in e["targets"].as_array().into_iter().flatten() {
        println!(
            "service {} ({}% of traffic):",
            text(&target["service"]),
            target["share"]
        );
        for ep in target["endpoints"].as_array().into_iter().flatten() {
            let state = match ep["reason"].as_str() {
                Some(reason) => format!("not eligible: {reason}"),
                None => "eligible".to_string(),
            };
            println!(
                "  {:<20} {:<24} zone {:<8} weight {:<4} in flight {:<4} {state}",
                text(&ep["id"]),
                text(&ep["address"]),
                ep["zone"].as_str().unwrap_or("-"),
                ep["weight"],
                ep["outstanding"]
            );
        }
        for ex in target["excluded"].as_array().into_iter().flatten() {
            println!(
                "  {:<20} excluded: {}",
                text(&ex["id"]),
                text(&ex["reason"])
            );
        }
    }
    println!("=> {}", text(&e["outcome"]));
}

pub fn config_check(file: &Path) -> anyhow::Result<()> {
    let settings = Settings::load(Some(file))?;
    // What `strait up` reads from other files is read the same way (as `nginx -t` does),
    // so a file that checks out also starts.
    let name = file.display();
    settings.check_teams().map_err(|e| anyhow!("{name}: {e}"))?;
    for listener in &settings.router.tls {
        router::tls::CertStore::load(listener.certificates.clone())
            .with_context(|| format!("{name}: router.tls listener {}", listener.addr))?;
    }
    router::tls::UpstreamTlsSet::load(&settings.router)
        .with_context(|| format!("{name}: router.services"))?;
    if let Some(router::config::AccessLogTarget::File(path)) = &settings.router.access_log {
        let dir = match path.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir,
            _ => Path::new("."),
        };
        if !dir.is_dir() {
            bail!(
                "{name}: router.access_log: directory {} does not exist",
                dir.display()
            );
        }
    }
    println!("{name}: ok");
    Ok(())
}
