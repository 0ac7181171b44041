//! `cargo run -p bench --release -- <scenario>|all [--quick]`: strait next to the peers
//! users would pick instead, started here on free loopback ports with matched resources,
//! measured alternately (A B A B ...) in one run. Prints a markdown table and writes JSON
//! under `bench/results/`. Only ratios from the same run are claims.

mod alloc;
mod build;
mod conn_memory;
mod deploy;
mod registry;
mod swap;
mod table;
mod tcp;
mod tls_handshake;

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use serde::Serialize;

/// Counts allocations, for the `table` scenario's memory figure.
#[global_allocator]
static GLOBAL: &stats_alloc::StatsAlloc<std::alloc::System> = &stats_alloc::INSTRUMENTED_SYSTEM;

#[derive(Parser)]
#[command(about = "strait against its peers, side by side, in one run")]
struct Cli {
    /// `http` or `all`.
    scenario: String,
    /// Fewer and shorter rounds (a smoke run, not a claim).
    #[arg(long)]
    quick: bool,
}

/// A child process killed on drop.
struct Proc {
    name: String,
    child: Child,
}

impl Drop for Proc {
    /// SIGTERM first, so that a master process (nginx, HAProxy) takes its workers with it
    /// (SIGKILL would orphan them, and they would keep a core busy in later runs); SIGKILL
    /// after 3 s.
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(self.child.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(3);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn require(tool: &str, package: &str) -> anyhow::Result<()> {
    let found = Command::new("sh")
        .arg("-c")
        .arg(format!("command -v {tool}"))
        .stdout(Stdio::null())
        .status()?
        .success();
    if !found {
        bail!(
            "`{tool}` is missing: install the Debian package `{package}` (apt-get install {package})"
        );
    }
    Ok(())
}

fn wait_port(port: u16, what: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what} did not listen on 127.0.0.1:{port}")
}

fn spawn(name: &str, command: &mut Command) -> anyhow::Result<Proc> {
    let child = command
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("cannot start {name}"))?;
    Ok(Proc {
        name: name.to_string(),
        child,
    })
}

/// One wrk or h2load measurement.
#[derive(Debug, Clone, Default, Serialize)]
struct Sample {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    errors: u64,
    /// Requests completed in the run.
    requests: u64,
    /// Megabytes per second received (wrk's transfer rate).
    mb_s: f64,
}

/// wrk's `Transfer/sec` (`12.34MB`, `1.02GB`, `800.00KB`) in megabytes.
fn megabytes(value: &str) -> f64 {
    for (suffix, factor) in [
        ("GB", 1024.0),
        ("MB", 1.0),
        ("KB", 1.0 / 1024.0),
        ("B", 1e-6),
    ] {
        if let Some(number) = value.strip_suffix(suffix) {
            return number.parse::<f64>().unwrap_or(0.0) * factor;
        }
    }
    0.0
}

fn parse_duration_ms(s: &str) -> Option<f64> {
    let (number, factor) = if let Some(v) = s.strip_suffix("us") {
        (v, 0.001)
    } else if let Some(v) = s.strip_suffix("ms") {
        (v, 1.0)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000.0)
    } else {
        return None;
    };
    number.parse::<f64>().ok().map(|n| n * factor)
}

/// What the `http` load looks like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HttpVariant {
    /// Keep-alive, a 19-byte body.
    KeepAlive,
    /// `Connection: close`: a new client connection per request.
    NewConnection,
    /// Keep-alive, a 64 KiB body.
    Body64k,
    /// Keep-alive over TLS (ECDSA P-256, each participant terminating it).
    Tls,
    /// HTTP/2 with prior knowledge (h2c) from the client, HTTP/1.1 to the backend;
    /// `h2load`, 50 connections x 10 streams.
    H2,
    /// A new TLS 1.3 connection per request, full handshakes (`tls_handshake`).
    TlsHandshake,
    /// A new TLS 1.3 connection per request, each resuming a session ticket.
    TlsResumed,
}

impl HttpVariant {
    fn scenario(self) -> &'static str {
        match self {
            HttpVariant::KeepAlive => "http",
            HttpVariant::NewConnection => "http-close",
            HttpVariant::Body64k => "http-64k",
            HttpVariant::Tls => "http-tls",
            HttpVariant::H2 => "h2",
            HttpVariant::TlsHandshake => "tls-handshake",
            HttpVariant::TlsResumed => "tls-handshake (resumed)",
        }
    }

    fn describe(self) -> &'static str {
        match self {
            HttpVariant::KeepAlive => "wrk -t1 -c50 keep-alive, 19-byte body",
            HttpVariant::NewConnection => {
                "wrk -t1 -c50, Connection: close (a new connection per request)"
            }
            HttpVariant::Body64k => "wrk -t1 -c50 keep-alive, 64 KiB body",
            HttpVariant::Tls => "wrk -t1 -c50 keep-alive over TLS, 19-byte body",
            HttpVariant::H2 => "h2load -t1 -c50 -m10 h2c prior knowledge, 19-byte body",
            HttpVariant::TlsHandshake => {
                "16 rustls clients, a new TLS 1.3 connection per request (ECDSA P-256, X25519), full handshakes"
            }
            HttpVariant::TlsResumed => {
                "16 rustls clients, a new TLS 1.3 connection per request, each resuming a ticket"
            }
        }
    }
}

fn wrk(port: u16, seconds: u64) -> anyhow::Result<Sample> {
    wrk_variant(port, seconds, HttpVariant::KeepAlive)
}

fn wrk_variant(port: u16, seconds: u64, variant: HttpVariant) -> anyhow::Result<Sample> {
    match variant {
        HttpVariant::H2 => return h2load(port, seconds),
        HttpVariant::TlsHandshake => return tls_handshake::run(port, seconds, false),
        HttpVariant::TlsResumed => return tls_handshake::run(port, seconds, true),
        _ => {}
    }
    let mut command = Command::new("wrk");
    command.args(["-t1", "-c50", "--latency", "-H", "Host: bench.example.com"]);
    if variant == HttpVariant::NewConnection {
        command.args(["-H", "Connection: close"]);
    }
    let path = if variant == HttpVariant::Body64k {
        "/64k"
    } else {
        "/"
    };
    let scheme = if variant == HttpVariant::Tls {
        "https"
    } else {
        "http"
    };
    let output = command
        .arg(format!("-d{seconds}s"))
        .arg(format!("{scheme}://127.0.0.1:{port}{path}"))
        .output()
        .context("running wrk")?;
    parse_wrk(port, &String::from_utf8_lossy(&output.stdout))
}

/// wrk's report: req/s, transfer rate, p50/p99 (with `--latency`), errors.
fn parse_wrk(port: u16, text: &str) -> anyhow::Result<Sample> {
    let mut sample = Sample::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            ["Requests/sec:", value] => sample.rps = value.parse().unwrap_or(0.0),
            ["Transfer/sec:", value] => sample.mb_s = megabytes(value),
            [n, "requests", "in", ..] => sample.requests = n.parse().unwrap_or(0),
            ["50%", value] => sample.p50_ms = parse_duration_ms(value).unwrap_or(0.0),
            ["99%", value] => sample.p99_ms = parse_duration_ms(value).unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", n] => {
                sample.errors += n.parse::<u64>().unwrap_or(0)
            }
            [first, ..] if first.starts_with("Socket") => {
                sample.errors += fields
                    .iter()
                    .filter_map(|f| f.trim_end_matches(',').parse::<u64>().ok())
                    .sum::<u64>();
            }
            _ => {}
        }
    }
    if sample.rps == 0.0 {
        bail!("wrk against port {port} measured nothing:\n{text}");
    }
    Ok(sample)
}

/// `h2load` over h2c prior knowledge; percentiles from its per-request log.
fn h2load(port: u16, seconds: u64) -> anyhow::Result<Sample> {
    let log = tempfile::NamedTempFile::new()?;
    let output = Command::new("h2load")
        .args(["-t1", "-c50", "-m10", "-H", ":authority: bench.example.com"])
        .arg(format!("-D{seconds}"))
        .arg(format!("--log-file={}", log.path().display()))
        .arg(format!("http://127.0.0.1:{port}/"))
        .output()
        .context("running h2load")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut sample = Sample::default();
    for line in text.lines() {
        let fields: Vec<&str> = line.split_whitespace().collect();
        match fields.as_slice() {
            // finished in 5.00s, 61234.40 req/s, 4.2MB/s
            ["finished", "in", _, rps, "req/s,", ..] => {
                sample.rps = rps.parse().unwrap_or(0.0);
            }
            // requests: N total, N started, N done, N succeeded, N failed, N errored, N timeout
            [
                "requests:",
                ..,
                failed,
                "failed,",
                errored,
                "errored,",
                timeout,
                "timeout",
            ] => {
                sample.errors = [failed, errored, timeout]
                    .iter()
                    .map(|n| n.parse::<u64>().unwrap_or(0))
                    .sum();
            }
            // status codes: N 2xx, N 3xx, N 4xx, N 5xx
            ["status", "codes:", ok, "2xx,", ..] => sample.requests = ok.parse().unwrap_or(0),
            _ => {}
        }
    }
    if sample.rps == 0.0 {
        bail!("h2load against port {port} measured nothing:\n{text}");
    }
    // Columns: start (µs since the epoch), status, µs to the end of the response.
    let mut latencies: Vec<f64> = std::fs::read_to_string(log.path())?
        .lines()
        .filter_map(|l| l.split('\t').nth(2)?.parse::<f64>().ok())
        .map(|us| us / 1000.0)
        .collect();
    latencies.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        latencies
            .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0.0)
    };
    sample.p50_ms = at(0.50);
    sample.p99_ms = at(0.99);
    Ok(sample)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(|a, b| a.total_cmp(b));
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn version(command: &str, args: &[&str]) -> String {
    Command::new(command)
        .args(args)
        .output()
        .map(|o| {
            let text = if o.stdout.is_empty() {
                o.stderr
            } else {
                o.stdout
            };
            String::from_utf8_lossy(&text)
                .lines()
                .next()
                .unwrap_or("")
                .trim()
                .to_string()
        })
        .unwrap_or_default()
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// Builds the release `strait` binary and returns its path; `STRAIT_BENCH_BIN` names
/// another binary to measure instead (to compare two builds against the same peers).
fn build_strait() -> anyhow::Result<PathBuf> {
    if let Some(bin) = std::env::var_os("STRAIT_BENCH_BIN") {
        return Ok(PathBuf::from(bin));
    }
    let mut cargo = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    // What `cargo run` sets for the bench (its package's variables, the library path)
    // would make this build's units differ from a shell's `cargo build`, and the two
    // would rebuild each other's dependencies every run.
    for (key, _) in std::env::vars_os() {
        let key = key.to_string_lossy();
        if (key.starts_with("CARGO_") && key != "CARGO_HOME") || key == "LD_LIBRARY_PATH" {
            cargo.env_remove(&*key);
        }
    }
    let status = cargo
        .args(["build", "--release", "--bin", "strait"])
        .current_dir(workspace_root())
        .status()
        .context("cargo build")?;
    if !status.success() {
        bail!("building strait failed");
    }
    Ok(workspace_root().join("target/release/strait"))
}

#[derive(Serialize)]
struct Row {
    participant: String,
    median_rps: f64,
    median_p50_ms: f64,
    median_p99_ms: f64,
    errors: u64,
    samples: Vec<Sample>,
}

fn http_scenario(quick: bool, dir: &Path, variant: HttpVariant) -> anyhow::Result<Vec<Row>> {
    for (tool, package) in [
        ("nginx", "nginx-light"),
        ("haproxy", "haproxy"),
        ("wrk", "wrk"),
    ] {
        require(tool, package)?;
    }
    let h2 = variant == HttpVariant::H2;
    if h2 {
        require("h2load", "nghttp2-client")?;
    }
    // h2c prior knowledge: nginx's `http2` on a cleartext listener, HAProxy's `proto h2`.
    let (nginx_h2, haproxy_h2) = if h2 {
        (" http2", " proto h2")
    } else {
        ("", "")
    };
    let strait_bin = build_strait()?;
    let backend_port = free_port()?;
    let nginx_port = free_port()?;
    let haproxy_port = free_port()?;
    let strait_port = free_port()?;
    let admin_port = free_port()?;
    let mut procs = Vec::new();
    let body_64k = dir.join("64k.bin");
    std::fs::write(&body_64k, vec![b'x'; 64 * 1024])?;
    let tls = matches!(
        variant,
        HttpVariant::Tls | HttpVariant::TlsHandshake | HttpVariant::TlsResumed
    );
    let (cert, key) = (dir.join("bench.pem"), dir.join("bench.key"));
    let combined = dir.join("bench-combined.pem");
    if tls {
        let status = Command::new("openssl")
            .args([
                "req",
                "-x509",
                "-newkey",
                "ec",
                "-pkeyopt",
                "ec_paramgen_curve:prime256v1",
            ])
            .args(["-nodes", "-days", "2", "-subj", "/CN=bench.example.com"])
            .args(["-addext", "subjectAltName=DNS:bench.example.com", "-keyout"])
            .arg(&key)
            .arg("-out")
            .arg(&cert)
            .stderr(Stdio::null())
            .status()
            .context("running openssl")?;
        if !status.success() {
            bail!("openssl could not make the benchmark certificate");
        }
        std::fs::write(
            &combined,
            [std::fs::read(&cert)?, std::fs::read(&key)?].concat(),
        )?;
    }
    // nginx 1.22 (Debian bookworm) offers TLS 1.3 only when told to (1.23.4 made it the
    // default); strait and HAProxy offer it, and clients pick it.
    let nginx_ssl = if tls {
        format!(
            " ssl;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_certificate {};\n    ssl_certificate_key {}",
            cert.display(),
            key.display()
        )
    } else {
        String::new()
    };
    let direct_port = if tls || h2 {
        free_port()?
    } else {
        backend_port
    };
    let strait_tls_port = free_port()?;

    let nginx_conf = |name: &str, body: &str| -> anyhow::Result<PathBuf> {
        let path = dir.join(format!("{name}.conf"));
        std::fs::write(
            &path,
            format!(
                "worker_processes 1;\ndaemon off;\npid {dir}/{name}.pid;\nerror_log {dir}/{name}.err warn;\n\
                 events {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n{body}\n}}\n",
                dir = dir.display()
            ),
        )?;
        Ok(path)
    };
    let backend = nginx_conf(
        "backend",
        &format!(
            "  server {{ listen 127.0.0.1:{backend_port}; location / {{ return 200 \"hello from backend\\n\"; }}\n    \
             location = /64k {{ alias {body}; }} }}\n{direct_tls}",
            body = body_64k.display(),
            direct_tls = if tls || h2 {
                format!(
                    "  server {{ listen 127.0.0.1:{direct_port}{nginx_ssl}{nginx_h2};\n    location / {{ return 200 \"hello from backend\\n\"; }} }}"
                )
            } else {
                String::new()
            }
        ),
    )?;
    procs.push(spawn(
        "backend (nginx)",
        Command::new("nginx").arg("-c").arg(&backend),
    )?);
    let proxy = nginx_conf(
        "proxy",
        &format!(
            "  upstream b {{ server 127.0.0.1:{backend_port}; keepalive 64; }}\n  server {{ listen 127.0.0.1:{nginx_port}{nginx_ssl}{nginx_h2};\n    \
             location / {{ proxy_pass http://b; proxy_http_version 1.1; proxy_set_header Connection \"\"; proxy_set_header Host $host; }} }}"
        ),
    )?;
    procs.push(spawn("nginx", Command::new("nginx").arg("-c").arg(&proxy))?);
    let haproxy_cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &haproxy_cfg,
        format!(
            "global\n  nbthread 1\n  maxconn 4096\ndefaults\n  mode http\n  timeout connect 2s\n  timeout client 30s\n  timeout server 30s\n  \
             option http-keep-alive\nfrontend fe\n  bind 127.0.0.1:{haproxy_port}{haproxy_ssl}\n  default_backend be\nbackend be\n  http-reuse always\n  \
             server s1 127.0.0.1:{backend_port}\n",
            haproxy_ssl = if tls {
                format!(" ssl crt {}", combined.display())
            } else {
                haproxy_h2.to_string()
            }
        ),
    )?;
    procs.push(spawn(
        "haproxy",
        Command::new("haproxy").arg("-f").arg(&haproxy_cfg),
    )?);
    let mut strait = Command::new(&strait_bin);
    strait
        .args(["up", "--data-dir"])
        .arg(dir.join(format!("strait-data-{}", variant.scenario())))
        .arg("--admin-addr")
        .arg(format!("127.0.0.1:{admin_port}"))
        .arg("--http-addr")
        .arg(format!("127.0.0.1:{strait_port}"))
        .args([
            "--dns-addr",
            "127.0.0.1:0",
            "--registry-addr",
            "127.0.0.1:0",
        ])
        .env("RUST_LOG", "warn");
    if tls {
        let config = dir.join("strait-tls.toml");
        std::fs::write(
            &config,
            format!(
                "[[router.tls]]\naddr = \"127.0.0.1:{strait_tls_port}\"\ncertificates = [{{ cert = {:?}, key = {:?} }}]\n",
                cert.display().to_string(),
                key.display().to_string()
            ),
        )?;
        strait.arg("--config").arg(config);
    }
    procs.push(spawn("strait", &mut strait)?);
    if tls {
        wait_port(strait_tls_port, "strait TLS")?;
    }
    if tls || h2 {
        wait_port(direct_port, "backend TLS / h2c")?;
    }
    for (port, what) in [
        (backend_port, "backend"),
        (nginx_port, "nginx"),
        (haproxy_port, "haproxy"),
        (strait_port, "strait"),
        (admin_port, "strait admin"),
    ] {
        wait_port(port, what)?;
    }
    for proc in &mut procs {
        if let Ok(Some(status)) = proc.child.try_wait() {
            bail!(
                "{} exited at start ({status}); is its port free?",
                proc.name
            );
        }
    }
    let admin = format!("http://127.0.0.1:{admin_port}");
    ureq::put(&format!("{admin}/v1/services/bench/instances/b1"))
        .send(format!(
            r#"{{"address":"127.0.0.1","port":{backend_port}}}"#
        ))
        .context("registering the backend")?;
    ureq::put(&format!("{admin}/v1/routes/bench"))
        .send(r#"{"host":"bench.example.com","service":"bench"}"#)
        .context("declaring the route")?;
    std::thread::sleep(Duration::from_millis(300));

    let strait_port = if tls { strait_tls_port } else { strait_port };
    let participants = [
        ("direct", direct_port),
        ("strait", strait_port),
        ("nginx", nginx_port),
        ("haproxy", haproxy_port),
    ];
    // Five alternating rounds: the issue's bar for a median.
    let (rounds, seconds) = if quick { (1, 2) } else { (5, 5) };
    for (_, port) in participants {
        wrk_variant(port, 1, variant)?; // warm-up
    }
    let mut samples: BTreeMap<&str, Vec<Sample>> = BTreeMap::new();
    for round in 1..=rounds {
        for (name, port) in participants {
            let sample = wrk_variant(port, seconds, variant)?;
            eprintln!(
                "round {round} {name}: {:.0} req/s p50 {:.2} ms p99 {:.2} ms",
                sample.rps, sample.p50_ms, sample.p99_ms
            );
            samples.entry(name).or_default().push(sample);
        }
    }
    drop(procs);
    Ok(participants
        .iter()
        .map(|(name, _)| {
            let s = samples.remove(name).unwrap_or_default();
            let pick = |f: fn(&Sample) -> f64| median(&mut s.iter().map(f).collect::<Vec<_>>());
            Row {
                participant: name.to_string(),
                median_rps: pick(|s| s.rps),
                median_p50_ms: pick(|s| s.p50_ms),
                median_p99_ms: pick(|s| s.p99_ms),
                errors: s.iter().map(|s| s.errors).sum(),
                samples: s,
            }
        })
        .collect())
}

#[derive(Serialize)]
struct DnsRow {
    participant: String,
    workers: usize,
    median_qps: f64,
    lost: u64,
    qps: Vec<f64>,
}

/// One dnsperf run's figures.
struct DnsperfRun {
    qps: f64,
    lost: u64,
    completed: u64,
}

/// One dnsperf run (`-c 4 -q 200` per thread, `threads` threads) of `seconds` over the
/// `queries` file.
fn dnsperf(port: u16, queries: &Path, seconds: u64, threads: usize) -> anyhow::Result<DnsperfRun> {
    let output = Command::new("dnsperf")
        .args(["-s", "127.0.0.1", "-p", &port.to_string(), "-q", "200"])
        .arg("-c")
        .arg((4 * threads).to_string())
        .arg("-T")
        .arg(threads.to_string())
        .arg("-l")
        .arg(seconds.to_string())
        .arg("-d")
        .arg(queries)
        .output()
        .context("running dnsperf")?;
    let text = String::from_utf8_lossy(&output.stdout);
    let mut qps = 0.0;
    let mut lost = 0;
    let mut completed = 0;
    let first_number = |v: &str| v.split_whitespace().next().and_then(|n| n.parse().ok());
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("Queries completed:") {
            completed = first_number(v).unwrap_or(0);
        } else if let Some(v) = line.strip_prefix("Queries per second:") {
            qps = v.trim().parse().unwrap_or(0.0);
        } else if let Some(v) = line.strip_prefix("Queries lost:") {
            lost = first_number(v).unwrap_or(0);
        }
    }
    if qps == 0.0 {
        bail!("dnsperf against port {port} measured nothing:\n{text}");
    }
    Ok(DnsperfRun {
        qps,
        lost,
        completed,
    })
}

/// An nginx with one worker answering `return 200` on a free port: the upstream of the
/// HTTP scenarios. Returns it and its port.
fn nginx_backend(dir: &Path, name: &str) -> anyhow::Result<(Proc, u16)> {
    let port = free_port()?;
    let conf = dir.join(format!("{name}.conf"));
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\ndaemon off;\npid {d}/{name}.pid;\nerror_log {d}/{name}.err warn;\n\
             events {{ worker_connections 4096; }}\nhttp {{\n  access_log off;\n  keepalive_requests 1000000;\n  \
             server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"hello from backend\\n\"; }} }}\n}}\n",
            d = dir.display()
        ),
    )?;
    let proc = spawn(
        "backend (nginx)",
        Command::new("nginx").arg("-c").arg(&conf),
    )?;
    wait_port(port, "backend")?;
    Ok((proc, port))
}

/// `strait up` on the given HTTP, admin and DNS ports (its registry on a free one).
fn strait_up(
    bin: &Path,
    data_dir: &Path,
    http_port: u16,
    admin_port: u16,
    dns_port: u16,
) -> anyhow::Result<Proc> {
    let proc = spawn(
        "strait",
        Command::new(bin)
            .args(["up", "--data-dir"])
            .arg(data_dir)
            .arg("--admin-addr")
            .arg(format!("127.0.0.1:{admin_port}"))
            .arg("--http-addr")
            .arg(format!("127.0.0.1:{http_port}"))
            .arg("--dns-addr")
            .arg(format!("127.0.0.1:{dns_port}"))
            .args(["--registry-addr", "127.0.0.1:0"])
            .env("RUST_LOG", "warn"),
    )?;
    wait_port(http_port, "strait")?;
    wait_port(admin_port, "strait admin")?;
    Ok(proc)
}

/// Registers the backend as service `bench` behind host `bench.example.com`.
fn route_to_backend(admin: &str, backend_port: u16) -> anyhow::Result<()> {
    ureq::put(&format!("{admin}/v1/services/bench/instances/b1"))
        .send(format!(
            r#"{{"address":"127.0.0.1","port":{backend_port}}}"#
        ))
        .context("registering the backend")?;
    ureq::put(&format!("{admin}/v1/routes/bench"))
        .send(r#"{"host":"bench.example.com","service":"bench"}"#)
        .context("declaring the route")?;
    Ok(())
}

/// strait's DNS against Knot, serving the same 10 names x 3 A records, at 1 and 2 UDP
/// workers each (`dns.workers`, Knot's `udp-workers`); dnsperf gets as many threads.
fn dns_scenario(quick: bool, dir: &Path) -> anyhow::Result<Vec<DnsRow>> {
    for (tool, package) in [("knotd", "knot"), ("dnsperf", "dnsperf")] {
        require(tool, package)?;
    }
    let strait_bin = build_strait()?;
    let mut zone = String::from(
        "$ORIGIN strait.\n$TTL 5\n@ SOA ns.strait. hostmaster.strait. 1 3600 600 86400 5\n@ NS ns.strait.\nns A 127.0.0.1\n",
    );
    let mut queries = String::new();
    for s in 0..10 {
        for i in 1..=3 {
            zone.push_str(&format!("web-{s}.service A 10.0.{s}.{i}\n"));
        }
        queries.push_str(&format!("web-{s}.service.strait A\n"));
    }
    let queries_path = dir.join("queries.txt");
    std::fs::write(&queries_path, queries)?;
    let (rounds, seconds) = if quick { (1, 2) } else { (3, 5) };
    let mut rows = Vec::new();
    for workers in [1usize, 2] {
        let (knot_port, strait_dns, admin_port) = (free_port()?, free_port()?, free_port()?);
        let knot_dir = dir.join(format!("knot-{workers}"));
        std::fs::create_dir_all(&knot_dir)?;
        std::fs::write(knot_dir.join("strait.zone"), &zone)?;
        std::fs::write(
            knot_dir.join("knot.conf"),
            format!(
                "server:\n    rundir: \"{k}\"\n    listen: 127.0.0.1@{knot_port}\n    udp-workers: {workers}\n    tcp-workers: 1\n    \
                 background-workers: 1\ndatabase:\n    storage: \"{k}\"\nzone:\n  - domain: strait\n    storage: \"{k}\"\n    file: \"strait.zone\"\n",
                k = knot_dir.display()
            ),
        )?;
        let strait_config = dir.join(format!("strait-dns-{workers}.toml"));
        std::fs::write(&strait_config, format!("[dns]\nworkers = {workers}\n"))?;
        let mut procs = vec![
            spawn(
                "knot",
                Command::new("knotd")
                    .arg("-c")
                    .arg(knot_dir.join("knot.conf")),
            )?,
            spawn(
                "strait",
                Command::new(&strait_bin)
                    .args(["up", "--data-dir"])
                    .arg(dir.join(format!("strait-dns-data-{workers}")))
                    .arg("--config")
                    .arg(&strait_config)
                    .arg("--admin-addr")
                    .arg(format!("127.0.0.1:{admin_port}"))
                    .args(["--http-addr", "127.0.0.1:0"])
                    .args(["--registry-addr", "127.0.0.1:0"])
                    .arg("--dns-addr")
                    .arg(format!("127.0.0.1:{strait_dns}"))
                    .env("RUST_LOG", "warn"),
            )?,
        ];
        wait_port(admin_port, "strait admin")?;
        std::thread::sleep(Duration::from_millis(500));
        for proc in &mut procs {
            if let Ok(Some(status)) = proc.child.try_wait() {
                bail!("{} exited at start ({status})", proc.name);
            }
        }
        let admin = format!("http://127.0.0.1:{admin_port}");
        for s in 0..10 {
            for i in 1..=3 {
                ureq::put(&format!("{admin}/v1/services/web-{s}/instances/i{i}"))
                    .send(format!(r#"{{"address":"10.0.{s}.{i}","port":80}}"#))
                    .context("registering")?;
            }
        }
        std::thread::sleep(Duration::from_millis(300));
        let participants = [("knot", knot_port), ("strait", strait_dns)];
        let mut results: BTreeMap<&str, (Vec<f64>, u64)> = BTreeMap::new();
        for round in 1..=rounds {
            for (name, port) in participants {
                let DnsperfRun { qps, lost, .. } = dnsperf(port, &queries_path, seconds, workers)?;
                eprintln!("{workers} worker(s), round {round} {name}: {qps:.0} qps, {lost} lost");
                let entry = results.entry(name).or_default();
                entry.0.push(qps);
                entry.1 += lost;
            }
        }
        drop(procs);
        for (name, _) in participants {
            let (mut qps, lost) = results.remove(name).unwrap_or_default();
            rows.push(DnsRow {
                participant: name.to_string(),
                workers,
                median_qps: median(&mut qps),
                lost,
                qps,
            });
        }
    }
    Ok(rows)
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let scenarios: Vec<&str> = match cli.scenario.as_str() {
        // alloc last: it leaves target/release/strait built with alloc-stats.
        "all" => vec![
            "http",
            "http-close",
            "http-64k",
            "http-tls",
            "tls-handshake",
            "h2",
            "tcp",
            "swap",
            "table",
            "dns",
            "registry",
            "build",
            "deploy",
            "conn-memory",
            "alloc",
        ],
        "http-close" => vec!["http-close"],
        "http-64k" => vec!["http-64k"],
        "http-tls" => vec!["http-tls"],
        "tls-handshake" => vec!["tls-handshake"],
        "h2" => vec!["h2"],
        "tcp" => vec!["tcp"],
        "swap" => vec!["swap"],
        "table" => vec!["table"],
        "alloc" => vec!["alloc"],
        "http" => vec!["http"],
        "dns" => vec!["dns"],
        "registry" => vec!["registry"],
        "build" => vec!["build"],
        "deploy" => vec!["deploy"],
        "conn-memory" => vec!["conn-memory"],
        other => bail!(
            "unknown scenario `{other}`: use http, http-close, http-64k, http-tls, tls-handshake, h2, tcp, swap, table, dns, registry, build, deploy, conn-memory, alloc or all"
        ),
    };
    let dir = tempfile::tempdir()?;
    let mut report = serde_json::Map::new();
    for scenario in scenarios {
        if scenario == "build" {
            let rows = build::scenario(cli.quick, dir.path(), &build_strait()?)?;
            build::print(&rows);
            report.insert(scenario.to_string(), serde_json::to_value(&rows)?);
            continue;
        }
        if scenario == "deploy" {
            let rows = deploy::scenario(cli.quick, dir.path(), &build_strait()?)?;
            deploy::print(&rows);
            report.insert(scenario.to_string(), serde_json::to_value(&rows)?);
            continue;
        }
        if scenario == "conn-memory" {
            let rows = conn_memory::scenario(cli.quick, dir.path(), &build_strait()?)?;
            conn_memory::print(&rows);
            report.insert(scenario.to_string(), serde_json::to_value(&rows)?);
            continue;
        }
        if scenario == "alloc" {
            let rows = alloc::scenario(cli.quick, dir.path())?;
            alloc::print(&rows);
            report.insert(scenario.to_string(), serde_json::to_value(&rows)?);
            continue;
        }
        if scenario == "table" {
            let rows = table::scenario(cli.quick)?;
            table::print(&rows);
            report.insert(scenario.to_string(), serde_json::to_value(&rows)?);
            continue;
        }
        if scenario == "tcp" {
            let rows = tcp::scenario(cli.quick, dir.path(), &build_strait()?)?;
            tcp::print(&rows);
            report.insert(scenario.to_string(), serde_json::to_value(&rows)?);
            continue;
        }
        if scenario == "swap" {
            let rows = swap::scenario(cli.quick, dir.path(), &build_strait()?)?;
            swap::print(&rows);
            report.insert(scenario.to_string(), serde_json::to_value(&rows)?);
            continue;
        }
        if scenario == "registry" {
            let rows = registry::scenario(cli.quick, dir.path(), &build_strait()?)?;
            registry::print(&rows);
            report.insert(scenario.to_string(), serde_json::to_value(&rows)?);
            continue;
        }
        if scenario == "dns" {
            let rows = dns_scenario(cli.quick, dir.path())?;
            println!("\n## dns (dnsperf, medians)\n");
            println!("| participant | workers | qps | lost |\n|---|---|---|---|");
            for r in &rows {
                println!(
                    "| {} | {} | {:.0} | {} |",
                    r.participant, r.workers, r.median_qps, r.lost
                );
            }
            let qps = |name: &str, workers: usize| {
                rows.iter()
                    .find(|r| r.participant == name && r.workers == workers)
                    .map_or(0.0, |r| r.median_qps)
            };
            println!(
                "\nstrait/knot {:.2} (1 worker), {:.2} (2 workers); strait 2/1 workers {:.2}, knot 2/1 {:.2}",
                qps("strait", 1) / qps("knot", 1).max(1.0),
                qps("strait", 2) / qps("knot", 2).max(1.0),
                qps("strait", 2) / qps("strait", 1).max(1.0),
                qps("knot", 2) / qps("knot", 1).max(1.0)
            );
            report.insert(scenario.to_string(), serde_json::to_value(&rows)?);
            continue;
        }
        let variants = match scenario {
            "tls-handshake" => vec![HttpVariant::TlsHandshake, HttpVariant::TlsResumed],
            _ => [
                HttpVariant::KeepAlive,
                HttpVariant::NewConnection,
                HttpVariant::Body64k,
                HttpVariant::Tls,
                HttpVariant::H2,
            ]
            .into_iter()
            .filter(|v| v.scenario() == scenario)
            .collect(),
        };
        for variant in variants {
            let scenario = variant.scenario();
            let rows = http_scenario(cli.quick, dir.path(), variant)?;
            let value = |name: &str| {
                rows.iter()
                    .find(|r| r.participant == name)
                    .map_or(0.0, |r| r.median_rps)
            };
            println!(
                "\n## {scenario} ({}; 1 worker each, medians)\n",
                variant.describe()
            );
            println!("| participant | req/s | p50 ms | p99 ms | errors |\n|---|---|---|---|---|");
            for r in &rows {
                println!(
                    "| {} | {:.0} | {:.2} | {:.2} | {} |",
                    r.participant, r.median_rps, r.median_p50_ms, r.median_p99_ms, r.errors
                );
            }
            let strait = value("strait");
            println!(
                "\nstrait/nginx {:.2}, strait/haproxy {:.2}, strait/direct {:.2}",
                strait / value("nginx").max(1.0),
                strait / value("haproxy").max(1.0),
                strait / value("direct").max(1.0)
            );
            report.insert(scenario.to_string(), serde_json::to_value(&rows)?);
        }
    }
    report.insert(
        "machine".into(),
        serde_json::json!({
            "cpus": std::thread::available_parallelism().map_or(0, |n| n.get()),
            "kernel": version("uname", &["-r"]),
            "nginx": version("nginx", &["-v"]),
            "haproxy": version("haproxy", &["-v"]),
            "wrk": version("wrk", &["-v"]),
            "knot": version("knotd", &["-V"]),
            "dnsperf": version("dnsperf", &["-h"]),
            "skopeo": version("skopeo", &["--version"]),
            "docker-registry": version("docker-registry", &["--version"]),
            "quick": cli.quick,
        }),
    );
    let results = workspace_root().join("bench/results");
    std::fs::create_dir_all(&results)?;
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let path = results.join(format!("{stamp}.json"));
    std::fs::write(&path, serde_json::to_vec_pretty(&report)?)?;
    println!("\nJSON: {}", path.display());
    Ok(())
}
