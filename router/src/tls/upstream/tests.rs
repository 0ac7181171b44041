use expect_test::{Expect, expect};

use super::*;

/// Loads `[router.services.svc]` from TOML and shows the error (or `ok`).
fn check(service_toml: &str, expected: Expect) {
    let settings: ServiceSettings = match toml_like(service_toml) {
        Ok(s) => s,
        Err(e) => return expected.assert_eq(&format!("parse: {e}")),
    };
    let mut config = RouterConfig::default();
    config.services.insert("svc".into(), settings);
    let shown = match UpstreamTlsSet::load(&config) {
        Ok(set) => format!("ok: {:?}", set.get("svc")),
        Err(e) => e.to_string(),
    };
    expected.assert_eq(&shown);
}

/// The service settings from JSON (the router crate has no TOML parser; serde is the same).
fn toml_like(json: &str) -> Result<ServiceSettings, serde_json::Error> {
    serde_json::from_str(json)
}

#[test]
fn settings_are_checked() {
    check(r#"{}"#, expect![[r#"ok: None"#]]);
    check(
        r#"{"tls": true, "sni": "api.internal"}"#,
        expect![[
            r#"ok: Some(UpstreamTls { sni: Some("api.internal"), verify: true, ca: None, client_cert: false, h2: false })"#
        ]],
    );
    check(
        r#"{"tls": true, "protocol": "h2", "verify": false}"#,
        expect![
            "ok: Some(UpstreamTls { sni: None, verify: false, ca: Some(1), client_cert: false, h2: true })"
        ],
    );
    check(
        r#"{"sni": "api.internal"}"#,
        expect![[r#"router.services.svc: `sni` is a TLS setting; add `tls = true` to use it"#]],
    );
    check(
        r#"{"verify": false}"#,
        expect![[r#"router.services.svc: `verify` is a TLS setting; add `tls = true` to use it"#]],
    );
    check(
        r#"{"protocol": "h2"}"#,
        expect![[
            r#"router.services.svc: protocol "h2" is HTTP/2 over TLS: add `tls = true` (or use "h2c" for cleartext)"#
        ]],
    );
    check(
        r#"{"tls": true, "protocol": "h2c"}"#,
        expect![[
            r#"router.services.svc: protocol "h2c" is cleartext HTTP/2; with `tls = true` use "h2""#
        ]],
    );
    check(
        r#"{"tls": true, "sni": "not a name"}"#,
        expect![[r#"router.services.svc: sni "not a name" is not a DNS name or an IP address"#]],
    );
    check(
        r#"{"tls": true, "cert": "/x/c.pem"}"#,
        expect![[
            r#"router.services.svc: `cert` and `key` go together (a client certificate and its private key)"#
        ]],
    );
    check(
        r#"{"tls": true, "ca": "/nonexistent/ca.pem"}"#,
        expect![[
            r#"router.services.svc: /nonexistent/ca.pem: cannot read: No such file or directory (os error 2)"#
        ]],
    );
    check(
        r#"{"tls": true, "bogus": 1}"#,
        expect![
            "parse: unknown field `bogus`, expected one of `balancer`, `hash_on`, `protocol`, `tls`, `sni`, `ca`, `verify`, `cert`, `key`, `health_check` at line 1 column 21"
        ],
    );
}

#[test]
fn a_file_that_is_not_a_ca_is_refused() {
    let dir = std::env::temp_dir().join(format!("strait-upstream-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let empty = dir.join("empty.pem");
    std::fs::write(&empty, "nothing here\n").expect("write");
    let garbage = dir.join("garbage.pem");
    std::fs::write(
        &garbage,
        "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n",
    )
    .expect("write");
    for (path, expected) in [
        (&empty, "no CERTIFICATE in the file"),
        (&garbage, "certificate 1 is not a usable CA"),
    ] {
        let mut config = RouterConfig::default();
        let settings = ServiceSettings {
            tls: true,
            ca: Some(path.clone()),
            ..ServiceSettings::default()
        };
        config.services.insert("svc".into(), settings);
        let error = UpstreamTlsSet::load(&config)
            .expect_err("must fail")
            .to_string();
        assert!(
            error.contains(&format!("{}: {expected}", path.display())),
            "{error}"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}
