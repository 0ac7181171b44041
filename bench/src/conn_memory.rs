//! `conn-memory`: what an idle client connection costs strait and nginx, in resident
//! memory. For HTTP/1 keep-alive, h2c (prior knowledge) and TLS (HTTP/1.1 over TLS 1.3),
//! `connections` clients (10k; 2k with `--quick`) each open a connection, send one request
//! through the proxy, read the answer, and stay open. After a settling pause (strait
//! releases an idle connection's buffers after 1 s), the proxy's RSS (nginx: master and
//! worker) is read again, 12 s later; bytes per connection = the growth / connections.
//! One worker
//! each; the backend is another nginx, not counted.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use base64::Engine;
use serde::Serialize;

use crate::{Proc, free_port, nginx_backend, require, route_to_backend, spawn, wait_port};

#[derive(Serialize)]
pub struct MemRow {
    pub participant: String,
    pub protocol: String,
    pub connections: usize,
    pub rss_before_kib: u64,
    pub rss_after_kib: u64,
    pub bytes_per_connection: f64,
}

#[derive(Clone, Copy, PartialEq)]
enum Protocol {
    Http1,
    H2c,
    Tls,
}

impl Protocol {
    fn name(self) -> &'static str {
        match self {
            Protocol::Http1 => "HTTP/1.1",
            Protocol::H2c => "h2c",
            Protocol::Tls => "TLS (HTTP/1.1)",
        }
    }
}

/// Resident KiB of `pid` and its children (nginx's workers).
fn rss_kib(pid: u32) -> u64 {
    let own = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .unwrap_or(0);
    let children =
        std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).unwrap_or_default();
    own + children
        .split_whitespace()
        .filter_map(|c| c.parse::<u32>().ok())
        .map(rss_kib)
        .sum::<u64>()
}

/// A connection held open (never read again: what it costs the proxy is the point).
#[allow(dead_code)]
enum Conn {
    Plain(TcpStream),
    Tls(Box<rustls::StreamOwned<rustls::ClientConnection, TcpStream>>),
}

const REQUEST: &[u8] = b"GET / HTTP/1.1\r\nHost: bench.example.com\r\n\r\n";

/// Reads one small HTTP/1.1 response (headers + a `Content-Length` body).
fn read_h1(stream: &mut impl Read) -> anyhow::Result<()> {
    let mut got = Vec::with_capacity(512);
    let mut buf = [0u8; 512];
    loop {
        let n = stream.read(&mut buf)?;
        if n == 0 {
            bail!("closed before a response");
        }
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        if let Some(end) = text.find("\r\n\r\n") {
            let length = text[..end]
                .lines()
                .find_map(|l| {
                    let (k, v) = l.split_once(':')?;
                    k.eq_ignore_ascii_case("content-length")
                        .then(|| v.trim().parse::<usize>().ok())?
                })
                .unwrap_or(0);
            if got.len() >= end + 4 + length {
                if !text.starts_with("HTTP/1.1 200") {
                    bail!("answered {}", text.lines().next().unwrap_or(""));
                }
                return Ok(());
            }
        }
    }
}

/// An h2c exchange by hand: preface, empty SETTINGS, one GET on stream 1 (HPACK static
/// table entries, the authority a literal), read frames until stream 1 ends.
fn h2c_request(stream: &mut TcpStream) -> anyhow::Result<()> {
    let authority = b"bench.example.com";
    let mut block = vec![0x82, 0x86, 0x84, 0x41, authority.len() as u8];
    block.extend_from_slice(authority);
    let mut out = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n".to_vec();
    out.extend_from_slice(&[0, 0, 0, 4, 0, 0, 0, 0, 0]);
    let len = block.len();
    out.extend_from_slice(&[
        (len >> 16) as u8,
        (len >> 8) as u8,
        len as u8,
        1,
        0x05,
        0,
        0,
        0,
        1,
    ]);
    out.extend_from_slice(&block);
    stream.write_all(&out)?;
    let mut acked = false;
    loop {
        let mut head = [0u8; 9];
        stream.read_exact(&mut head)?;
        let len = (usize::from(head[0]) << 16) | (usize::from(head[1]) << 8) | usize::from(head[2]);
        let (kind, flags) = (head[3], head[4]);
        let id = u32::from_be_bytes([head[5] & 0x7f, head[6], head[7], head[8]]);
        let mut payload = vec![0u8; len];
        stream.read_exact(&mut payload)?;
        if kind == 4 && flags & 1 == 0 && !acked {
            stream.write_all(&[0, 0, 0, 4, 1, 0, 0, 0, 0])?;
            acked = true;
        }
        if id == 1 && (kind == 0 || kind == 1) && flags & 1 == 1 {
            return Ok(());
        }
        if kind == 7 || kind == 3 {
            bail!("h2 GOAWAY or RST_STREAM");
        }
    }
}

fn open(
    protocol: Protocol,
    port: u16,
    tls: &Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<Conn> {
    let mut stream = TcpStream::connect(("127.0.0.1", port))?;
    stream.set_read_timeout(Some(Duration::from_secs(10)))?;
    match protocol {
        Protocol::Http1 => {
            stream.write_all(REQUEST)?;
            read_h1(&mut stream)?;
            Ok(Conn::Plain(stream))
        }
        Protocol::H2c => {
            h2c_request(&mut stream)?;
            Ok(Conn::Plain(stream))
        }
        Protocol::Tls => {
            let config = tls.clone().context("no TLS config")?;
            let name = rustls::pki_types::ServerName::try_from("bench.example.com")?;
            let conn = rustls::ClientConnection::new(config, name)?;
            let mut tls = rustls::StreamOwned::new(conn, stream);
            tls.write_all(REQUEST)?;
            read_h1(&mut tls)?;
            Ok(Conn::Tls(Box::new(tls)))
        }
    }
}

fn measure(
    participant: &str,
    pid: u32,
    protocol: Protocol,
    port: u16,
    connections: usize,
    tls: &Option<Arc<rustls::ClientConfig>>,
) -> anyhow::Result<MemRow> {
    // Warm up (first allocations, upstream connections), then settle.
    for _ in 0..20 {
        drop(open(protocol, port, tls)?);
    }
    std::thread::sleep(Duration::from_secs(2));
    let before = rss_kib(pid);
    let mut open_conns = Vec::with_capacity(connections);
    for i in 0..connections {
        open_conns.push(
            open(protocol, port, tls)
                .with_context(|| format!("{participant} {}: connection {i}", protocol.name()))?,
        );
    }
    // mimalloc gives freed pages back lazily: a few seconds after strait released the
    // connections' buffers (1 s idle) the resident set still holds them.
    std::thread::sleep(Duration::from_secs(12));
    let after = rss_kib(pid);
    drop(open_conns);
    std::thread::sleep(Duration::from_secs(12));
    Ok(MemRow {
        participant: participant.to_string(),
        protocol: protocol.name().to_string(),
        connections,
        rss_before_kib: before,
        rss_after_kib: after,
        bytes_per_connection: after.saturating_sub(before) as f64 * 1024.0 / connections as f64,
    })
}

fn certificate(dir: &Path) -> anyhow::Result<(PathBuf, PathBuf, Arc<rustls::ClientConfig>)> {
    let (cert, key) = (dir.join("mem.pem"), dir.join("mem.key"));
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
        .args(["-addext", "subjectAltName=DNS:bench.example.com"])
        // Its own trust anchor, and an end entity (webpki refuses a CA as one).
        .args(["-addext", "basicConstraints=critical,CA:FALSE", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .stderr(std::process::Stdio::null())
        .status()
        .context("running openssl")?;
    if !status.success() {
        bail!("openssl could not make the benchmark certificate");
    }
    let pem = std::fs::read_to_string(&cert)?;
    let b64: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    let der = base64::engine::general_purpose::STANDARD.decode(b64)?;
    let mut roots = rustls::RootCertStore::empty();
    roots.add(rustls::pki_types::CertificateDer::from(der))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok((cert, key, Arc::new(config)))
}

pub fn scenario(quick: bool, dir: &Path, strait_bin: &Path) -> anyhow::Result<Vec<MemRow>> {
    require("nginx", "nginx-light")?;
    require("openssl", "openssl")?;
    let connections = if quick { 2_000 } else { 10_000 };
    let (_backend, backend_port) = nginx_backend(dir, "mem-backend")?;
    let (cert, key, tls) = certificate(dir)?;
    let tls = Some(tls);
    let (n_http, n_h2c, n_tls) = (free_port()?, free_port()?, free_port()?);
    let conf = dir.join("mem-nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 1;\nworker_rlimit_nofile 20000;\ndaemon off;\npid {d}/mem-nginx.pid;\n\
             error_log {d}/mem-nginx.err warn;\nevents {{ worker_connections 19000; }}\nhttp {{\n  \
             access_log off;\n  keepalive_timeout 300s;\n  keepalive_requests 1000000;\n  \
             upstream b {{ server 127.0.0.1:{backend_port}; keepalive 16; }}\n  \
             server {{\n    listen 127.0.0.1:{n_http};\n    listen 127.0.0.1:{n_h2c} http2;\n    \
             listen 127.0.0.1:{n_tls} ssl;\n    ssl_certificate {cert};\n    ssl_certificate_key {key};\n    \
             http2_idle_timeout 300s;\n    location / {{ proxy_pass http://b; proxy_http_version 1.1; \
             proxy_set_header Connection \"\"; }}\n  }}\n}}\n",
            d = dir.display(),
            cert = cert.display(),
            key = key.display(),
        ),
    )?;
    let (s_http, s_tls, s_admin) = (free_port()?, free_port()?, free_port()?);
    let strait_conf = dir.join("mem-strait.toml");
    std::fs::write(
        &strait_conf,
        format!(
            "[router]\nidle_timeout = \"300s\"\n\n[[router.tls]]\naddr = \"127.0.0.1:{s_tls}\"\n\
             certificates = [{{ cert = \"{}\", key = \"{}\" }}]\n",
            cert.display(),
            key.display()
        ),
    )?;
    // A fresh process for each protocol: memory one run freed may not be back with the
    // OS by the next.
    let mut rows = Vec::new();
    for (protocol, port) in [
        (Protocol::Http1, n_http),
        (Protocol::H2c, n_h2c),
        (Protocol::Tls, n_tls),
    ] {
        let _ = std::fs::remove_file(dir.join("mem-nginx.pid"));
        let nginx = spawn("nginx", Command::new("nginx").arg("-c").arg(&conf))?;
        wait_port(port, "nginx")?;
        rows.push(measure(
            "nginx",
            nginx.child.id(),
            protocol,
            port,
            connections,
            &tls,
        )?);
    }
    for (n, (protocol, tls_port)) in [
        (Protocol::Http1, false),
        (Protocol::H2c, false),
        (Protocol::Tls, true),
    ]
    .into_iter()
    .enumerate()
    {
        let strait: Proc = spawn(
            "strait",
            Command::new(strait_bin)
                .args(["up", "--data-dir"])
                .arg(dir.join(format!("mem-data-{n}")))
                .arg("--config")
                .arg(&strait_conf)
                .arg("--admin-addr")
                .arg(format!("127.0.0.1:{s_admin}"))
                .arg("--http-addr")
                .arg(format!("127.0.0.1:{s_http}"))
                .args([
                    "--dns-addr",
                    "127.0.0.1:0",
                    "--registry-addr",
                    "127.0.0.1:0",
                ])
                .env("RUST_LOG", "warn"),
        )?;
        wait_port(s_http, "strait")?;
        wait_port(s_admin, "strait admin")?;
        route_to_backend(&format!("http://127.0.0.1:{s_admin}"), backend_port)?;
        // The route is live once a request through it is answered.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while open(Protocol::Http1, s_http, &tls).is_err() {
            if std::time::Instant::now() > deadline {
                bail!("strait never served the benchmark route");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let port = if tls_port { s_tls } else { s_http };
        rows.push(measure(
            "strait",
            strait.child.id(),
            protocol,
            port,
            connections,
            &tls,
        )?);
        drop(strait);
        // Its ports free again for the next one.
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(rows)
}

pub fn print(rows: &[MemRow]) {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    println!(
        "\n## conn-memory (idle connections after one request each; load average {})\n",
        load.split_whitespace()
            .take(3)
            .collect::<Vec<_>>()
            .join(" ")
    );
    println!(
        "| participant | protocol | connections | RSS before | RSS after | bytes per connection |"
    );
    println!("|---|---|---|---|---|---|");
    for r in rows {
        println!(
            "| {} | {} | {} | {} MiB | {} MiB | {:.0} |",
            r.participant,
            r.protocol,
            r.connections,
            r.rss_before_kib / 1024,
            r.rss_after_kib / 1024,
            r.bytes_per_connection
        );
    }
}
