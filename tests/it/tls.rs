//! TLS termination with real certificates (made by the openssl CLI) and a real client
//! (curl): SNI selection, ALPN h2, TLS ≥ 1.2 only, hot reload, a bad reload kept out.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use crate::harness::{Strait, eventually};
use crate::http::Backend;

fn openssl(dir: &Path, args: &[&str]) {
    let output = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("run openssl");
    assert!(
        output.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
}

/// A CA named `ca` in `dir`: `ca.pem`, `ca.key`.
pub fn make_ca(dir: &Path, ca: &str) {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{ca}.key"),
            "-out",
            &format!("{ca}.pem"),
            "-days",
            "2",
            "-subj",
            &format!("/CN={ca}"),
        ],
    );
}

/// A leaf for `names`, signed by `ca`: `<leaf>.pem`, `<leaf>.key`.
pub fn make_leaf(dir: &Path, ca: &str, leaf: &str, names: &[&str]) -> (PathBuf, PathBuf) {
    let san: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    make_leaf_with_san(dir, ca, leaf, names[0], &san.join(","))
}

/// A leaf `leaf.pem`/`leaf.key` signed by `ca`, with common name `cn` and exactly the
/// subject alternative names `san` (`DNS:…`, `IP:…`, comma-separated).
pub fn make_leaf_with_san(
    dir: &Path,
    ca: &str,
    leaf: &str,
    cn: &str,
    san: &str,
) -> (PathBuf, PathBuf) {
    std::fs::write(
        dir.join(format!("{leaf}.ext")),
        format!("subjectAltName={san}\n"),
    )
    .expect("ext");
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-keyout",
            &format!("{leaf}.key.new"),
            "-out",
            &format!("{leaf}.csr"),
            "-subj",
            &format!("/CN={cn}"),
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &format!("{leaf}.csr"),
            "-CA",
            &format!("{ca}.pem"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            &format!("{leaf}.pem.new"),
            "-days",
            "2",
            "-extfile",
            &format!("{leaf}.ext"),
        ],
    );
    // Replace both files by rename, as a deploy tool would.
    let (cert, key) = (
        dir.join(format!("{leaf}.pem")),
        dir.join(format!("{leaf}.key")),
    );
    std::fs::rename(dir.join(format!("{leaf}.key.new")), &key).expect("rename key");
    std::fs::rename(dir.join(format!("{leaf}.pem.new")), &cert).expect("rename cert");
    (cert, key)
}

/// curl over TLS to `name` (resolved to the listener); returns (ok, stdout, stderr).
pub fn curl(dir: &Path, ca: &str, name: &str, port: u16, extra: &[&str]) -> (bool, String, String) {
    let output = Command::new("curl")
        .args([
            "-s",
            "-S",
            "--max-time",
            "5",
            "--cacert",
            &format!("{ca}.pem"),
            "--resolve",
        ])
        .arg(format!("{name}:{port}:127.0.0.1"))
        .args(["-w", "\n%{http_version}"])
        .args(extra)
        .arg(format!("https://{name}:{port}/"))
        .current_dir(dir)
        .output()
        .expect("run curl");
    (
        output.status.success(),
        String::from_utf8_lossy(&output.stdout).into_owned(),
        String::from_utf8_lossy(&output.stderr).into_owned(),
    )
}

#[test]
fn tls_termination_sni_alpn_and_hot_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let d = dir.path();
    make_ca(d, "ca1");
    let (a_cert, a_key) = make_leaf(d, "ca1", "a", &["a.example.com"]);
    let (b_cert, b_key) = make_leaf(d, "ca1", "b", &["*.b.example.com"]);
    let config = format!(
        "[[router.tls]]\naddr = \"127.0.0.1:0\"\ncertificates = [\n  {{ cert = {:?}, key = {:?} }},\n  {{ cert = {:?}, key = {:?} }},\n]\n",
        a_cert, a_key, b_cert, b_key
    );
    let strait = Strait::builder().config(&config).start();
    let port = strait.https.expect("TLS listener address").port();
    let backend = Backend::start("web");
    strait.put("/v1/services/web/instances/w1", &backend.instance());
    strait.put(
        "/v1/routes/a",
        r#"{"host":"a.example.com","service":"web"}"#,
    );
    strait.put(
        "/v1/routes/b",
        r#"{"host":"*.b.example.com","service":"web"}"#,
    );

    let (ok, out, err) = eventually(Duration::from_secs(10), "TLS route live", || {
        let result = curl(d, "ca1", "a.example.com", port, &["--http1.1"]);
        if result.1.contains("\"backend\":\"web\"") {
            Ok(result)
        } else {
            Err(format!("{result:?}"))
        }
    });
    assert!(ok, "{err}");
    assert!(out.contains("\"x-forwarded-proto\":\"https\""), "{out}");
    assert!(out.ends_with("\n1.1"), "{out}");

    let (ok, out, err) = curl(d, "ca1", "x.b.example.com", port, &["--http2"]);
    assert!(ok, "SNI picks the wildcard certificate: {err}");
    assert!(out.ends_with("\n2"), "ALPN negotiates h2: {out}");

    let (ok, _, err) = curl(d, "ca1", "a.example.com", port, &["--tls-max", "1.1"]);
    assert!(!ok, "TLS 1.1 must be refused: {err}");

    // Hot reload: a new certificate for a.example.com from another CA.
    make_ca(d, "ca2");
    make_leaf(d, "ca2", "a", &["a.example.com"]);
    eventually(
        Duration::from_secs(10),
        "the new certificate to be served",
        || {
            let (ok, out, err) = curl(d, "ca2", "a.example.com", port, &[]);
            if ok && out.contains("\"backend\":\"web\"") {
                Ok(())
            } else {
                Err(err)
            }
        },
    );
    // A broken deploy keeps the previous certificate.
    std::fs::write(&a_cert, "not a certificate").expect("write");
    std::thread::sleep(Duration::from_millis(2500));
    let (ok, _, err) = curl(d, "ca2", "a.example.com", port, &[]);
    assert!(ok, "still serving the last good certificate: {err}");
    assert!(strait.log_text().contains("keeping the previous ones"));
}

#[test]
fn missing_certificate_is_a_clear_startup_error() {
    let stderr = Strait::builder()
        .config("[[router.tls]]\naddr = \"127.0.0.1:0\"\ncertificates = [{ cert = \"/nonexistent/c.pem\", key = \"/nonexistent/k.pem\" }]\n")
        .start_expecting_failure();
    assert!(
        stderr.contains("/nonexistent/c.pem: cannot read"),
        "{stderr}"
    );
}
