//! TLS to upstream services (`tls = true` in `[router.services.<name>]`) against real TLS
//! servers: `openssl s_server` (certificates by SNI with `-servername`/`-cert2`, client
//! certificates with `-Verify`) and a second strait terminating TLS (for ALPN h2).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::harness::{Strait, eventually, free_port};
use crate::http::{Backend, Client, Response};
use crate::tls::{make_ca, make_leaf, make_leaf_with_san};

/// `openssl s_server -www` on a free loopback port: answers each `GET` with an HTTP/1.0
/// status page (which shows the client certificate, if one was sent). Killed on drop.
struct SServer {
    child: Child,
    port: u16,
}

impl SServer {
    fn start(dir: &Path, args: &[&str]) -> SServer {
        let port = free_port();
        let child = Command::new("openssl")
            .arg("s_server")
            .arg("-accept")
            .arg(format!("127.0.0.1:{port}"))
            .args(["-www", "-quiet"])
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start openssl s_server");
        let server = SServer { child, port };
        eventually(Duration::from_secs(10), "s_server to listen", || {
            std::net::TcpStream::connect(("127.0.0.1", port))
                .map(drop)
                .map_err(|e| e.to_string())
        });
        server
    }

    fn instance(&self) -> String {
        format!(r#"{{"address":"127.0.0.1","port":{}}}"#, self.port)
    }
}

impl Drop for SServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn put(strait: &Strait, path: &str, body: &str) {
    let (status, reply) = strait.put(path, body);
    assert_eq!(status, 200, "{path}: {reply}");
}

/// Routes `<service>.example.com` to `service`, with one instance.
fn serve(strait: &Strait, service: &str, instance: &str) {
    put(
        strait,
        &format!("/v1/services/{service}/instances/{service}-1"),
        instance,
    );
    put(
        strait,
        &format!("/v1/routes/{service}"),
        &format!(r#"{{"host":"{service}.example.com","service":"{service}"}}"#),
    );
}

/// GETs `/` on `<service>.example.com` until the route is live (not 404/503).
fn get(strait: &Strait, service: &str) -> Response {
    let mut client = Client::new(strait.http);
    let host = format!("{service}.example.com");
    eventually(Duration::from_secs(10), &format!("{host} routed"), || {
        let response = client.get(&host, "/").map_err(|e| e.to_string())?;
        match response.status {
            404 | 503 => Err(format!("{} {}", response.status, response.text())),
            _ => Ok(response),
        }
    })
}

fn service_toml(name: &str, lines: &[String]) -> String {
    format!(
        "[router.services.{name}]\ntls = true\n{}\n",
        lines.join("\n")
    )
}

#[test]
fn upstream_tls_verifies_the_ca_and_the_configured_name() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    make_ca(d, "upca");
    make_ca(d, "other");
    // s_server presents `up` to clients whose SNI is up.internal, `default` (valid for
    // 127.0.0.1 only) to the others and to clients that send no SNI.
    make_leaf(d, "upca", "up", &["up.internal"]);
    make_leaf_with_san(
        d,
        "upca",
        "default",
        "default",
        "IP:127.0.0.1,DNS:default.internal",
    );
    let server = SServer::start(
        d,
        &[
            "-cert",
            "default.pem",
            "-key",
            "default.key",
            "-servername",
            "up.internal",
            "-cert2",
            "up.pem",
            "-key2",
            "up.key",
        ],
    );
    // Another instance whose certificate nothing here trusts.
    make_leaf(d, "other", "untrusted", &["up.internal"]);
    let untrusted = SServer::start(d, &["-cert", "untrusted.pem", "-key", "untrusted.key"]);
    let ca = |name: &str| format!("ca = {:?}", d.join(format!("{name}.pem")));
    let sni = |name: &str| format!("sni = {name:?}");
    let config = [
        service_toml("good", &[sni("up.internal"), ca("upca")]),
        service_toml("wrongca", &[sni("up.internal"), ca("other")]),
        service_toml("wrongsni", &[sni("other.internal"), ca("upca")]),
        service_toml("byip", &[ca("upca")]),
        service_toml("systemroots", &[sni("up.internal")]),
        service_toml("noverify", &["verify = false".to_string()]),
        service_toml("mixed", &[sni("up.internal"), ca("upca")]),
    ]
    .concat();
    let strait = Strait::builder().config(&config).start();
    put(
        &strait,
        "/v1/services/mixed/instances/mixed-2",
        &untrusted.instance(),
    );
    for service in [
        "good",
        "wrongca",
        "wrongsni",
        "byip",
        "systemroots",
        "noverify",
        "mixed",
    ] {
        serve(&strait, service, &server.instance());
    }

    // SNI up.internal gets the `up` certificate, which verifies against upca.
    let response = get(&strait, "good");
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        response.text().contains("s_server"),
        "the body is s_server's page: {}",
        response.text()
    );

    // No `sni`: the instance's address is verified (against the IP SAN), no SNI is sent.
    let response = get(&strait, "byip");
    assert_eq!(response.status, 200, "{}", response.text());

    // verify = false accepts a certificate nothing trusts.
    let response = get(&strait, "noverify");
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        strait
            .log_text()
            .contains("upstream TLS certificate verification is OFF for service noverify"),
        "{}",
        strait.log_text()
    );

    // An untrusted issuer, a name the certificate does not cover, and the system roots
    // (which do not hold our CA): 502 after the connect retries.
    for service in ["wrongca", "wrongsni", "systemroots"] {
        let response = get(&strait, service);
        assert_eq!(response.status, 502, "{service}: {}", response.text());
        assert!(
            response.text().contains(service),
            "{service}: {}",
            response.text()
        );
    }
    let metrics = strait.metrics_text();
    for service in ["wrongca", "wrongsni", "systemroots"] {
        let sample = format!(
            "strait_router_upstream_tls_errors_total{{reason=\"certificate\",service=\"{service}\"}}"
        );
        assert!(metrics.contains(&sample), "{sample} in:\n{metrics}");
    }
    assert!(
        !metrics.contains(
            "strait_router_upstream_tls_errors_total{reason=\"certificate\",service=\"good\"}"
        ),
        "{metrics}"
    );
    let log = strait.log_text();
    assert!(log.contains("upstream TLS handshake failed"), "{log}");

    // A handshake failure is a connect failure: retried on another instance.
    assert_eq!(get(&strait, "mixed").status, 200);
    let mut client = Client::new(strait.http);
    for _ in 0..20 {
        let response = client.get("mixed.example.com", "/").expect("request");
        assert_eq!(response.status, 200, "{}", response.text());
    }
    assert!(
        strait.metrics_text().contains(
            "strait_router_upstream_tls_errors_total{reason=\"certificate\",service=\"mixed\"}"
        ),
        "the untrusted instance was tried"
    );
    assert!(log.contains("UnknownIssuer"), "{log}");
    assert!(
        log.contains("not valid for name \"other.internal\""),
        "{log}"
    );
}

#[test]
fn upstream_client_certificate_and_h2() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    make_ca(d, "upca");
    make_ca(d, "clientca");
    let (up_cert, up_key) = make_leaf(d, "upca", "up", &["up.internal"]);
    let (client_cert, client_key) = make_leaf(d, "clientca", "client", &["client.internal"]);

    // mTLS: s_server requires a client certificate from clientca.
    let mtls = SServer::start(
        d,
        &[
            "-cert",
            "up.pem",
            "-key",
            "up.key",
            "-Verify",
            "1",
            "-CAfile",
            "clientca.pem",
        ],
    );
    // h2: a strait terminating TLS (ALPN h2 and http/1.1) in front of a plain backend.
    let tls_backend = Strait::builder()
        .config(&format!(
            "[router]\naccess_log = \"stderr\"\n[[router.tls]]\naddr = \"127.0.0.1:0\"\ncertificates = [{{ cert = {up_cert:?}, key = {up_key:?} }}]\n"
        ))
        .start();
    let web = Backend::start("web");
    put(
        &tls_backend,
        "/v1/services/web/instances/w1",
        &web.instance(),
    );
    put(
        &tls_backend,
        "/v1/routes/any",
        r#"{"host":"*","service":"web"}"#,
    );
    let https = tls_backend.https.expect("TLS listener");

    let ca = format!("ca = {:?}", d.join("upca.pem"));
    let sni = "sni = \"up.internal\"".to_string();
    let config = [
        service_toml(
            "mtls",
            &[
                sni.clone(),
                ca.clone(),
                format!("cert = {client_cert:?}"),
                format!("key = {client_key:?}"),
            ],
        ),
        service_toml("nocert", &[sni.clone(), ca.clone()]),
        service_toml(
            "grpc",
            &[sni.clone(), ca.clone(), "protocol = \"h2\"".to_string()],
        ),
        service_toml("h1", &[sni, ca]),
    ]
    .concat();
    let strait = Strait::builder().config(&config).start();
    serve(&strait, "mtls", &mtls.instance());
    serve(&strait, "nocert", &mtls.instance());
    let instance = format!(r#"{{"address":"127.0.0.1","port":{}}}"#, https.port());
    serve(&strait, "grpc", &instance);
    serve(&strait, "h1", &instance);

    let response = get(&strait, "mtls");
    assert_eq!(response.status, 200, "{}", response.text());
    assert!(
        response.text().contains("CN=client.internal"),
        "s_server saw our client certificate: {}",
        response.text()
    );
    let response = get(&strait, "nocert");
    assert_eq!(
        response.status,
        502,
        "no client certificate: {}",
        response.text()
    );

    // TLS 1.3: the server's refusal arrives after the client's handshake, as an alert.
    let sample = "strait_router_upstream_tls_errors_total{reason=\"alert\",service=\"nocert\"}";
    assert!(
        strait.metrics_text().contains(sample),
        "{}",
        strait.metrics_text()
    );

    // protocol = "h2" over TLS: ALPN h2, several requests on the pooled connection.
    for _ in 0..3 {
        let response = get(&strait, "grpc");
        assert_eq!(response.status, 200, "{}", response.text());
        assert_eq!(response.backend().as_deref(), Some("web"));
    }
    let response = get(&strait, "h1");
    assert_eq!(response.status, 200, "{}", response.text());
    eventually(
        Duration::from_secs(5),
        "the TLS backend's access log",
        || {
            let log = tls_backend.log_text();
            let lines = |host: &str, http: &str| {
                log.lines()
                    .filter(|l| {
                        l.contains(&format!("\"host\":\"{host}\""))
                            && l.contains(&format!("\"http\":\"{http}\""))
                    })
                    .count()
            };
            if lines("grpc.example.com", "2") >= 3 && lines("h1.example.com", "1.1") >= 1 {
                Ok(())
            } else {
                Err(log)
            }
        },
    );
}

#[test]
fn a_bad_upstream_ca_file_is_a_startup_error() {
    let stderr = Strait::builder()
        .config("[router.services.web]\ntls = true\nca = \"/nonexistent/upstream-ca.pem\"\n")
        .start_expecting_failure();
    assert!(
        stderr.contains("router.services.web: /nonexistent/upstream-ca.pem: cannot read"),
        "{stderr}"
    );
    let stderr = Strait::builder()
        .config("[router.services.web]\nsni = \"web.internal\"\n")
        .start_expecting_failure();
    assert!(stderr.contains("add `tls = true`"), "{stderr}");
}

#[test]
fn verify_false_works_without_system_roots() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    make_ca(d, "upca");
    make_leaf(d, "upca", "up", &["up.internal"]);
    std::fs::write(d.join("empty.pem"), "").expect("write");
    let server = SServer::start(d, &["-cert", "up.pem", "-key", "up.key"]);
    // An empty system store (rustls-native-certs reads only these).
    let strait = Strait::builder()
        .env("SSL_CERT_FILE", d.join("empty.pem").to_str().expect("utf8"))
        .env("SSL_CERT_DIR", d.to_str().expect("utf8"))
        .config(&service_toml("noverify", &["verify = false".to_string()]))
        .start();
    serve(&strait, "noverify", &server.instance());
    let response = get(&strait, "noverify");
    assert_eq!(response.status, 200, "{}", response.text());
}
