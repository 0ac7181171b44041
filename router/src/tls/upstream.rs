//! TLS to upstream services (`tls = true` in `[router.services.<name>]`): the settings of
//! each service, loaded and checked once at startup, and applied to each `HttpPeer`.
//!
//! pingora's rustls connector does the handshakes. What it takes per peer, and how it
//! behaves (pingora 0.9, `connectors/tls/rustls`):
//!
//! * roots: the connector's own store is the system's (`rustls-native-certs`: the OS
//!   store, `SSL_CERT_FILE` / `SSL_CERT_DIR` honoured; not `webpki-roots`). A service's
//!   `ca` replaces it through `PeerOptions::ca`, from which pingora builds a root store and
//!   a rustls `ClientConfig` for every new connection (pooled connections are reused).
//! * the server name is `HttpPeer::sni`. **An empty name turns verification off** in
//!   pingora (nginx's behaviour), so strait never passes one: without `sni` the
//!   instance's IP address is used, which rustls verifies against the certificate's IP
//!   subject names and does not send as SNI.
//! * `verify = false` sets `verify_cert` and `verify_hostname` off (pingora's verifier
//!   then accepts any certificate; handshake signatures are still checked). pingora still
//!   builds a webpki verifier from the roots first and fails every connect when there are
//!   none (a machine without system roots), so a service without `ca` gets a placeholder
//!   root that trusts nothing.
//! * client certificates go in `HttpPeer::client_cert_key`; pingora converts the key
//!   with an `unwrap()`, so the same conversion is checked here first.
//! * pingora leaves `ca` out of its connection-reuse hash, so each service with its own
//!   roots gets its own `group_key`: a connection verified against one service's CA is
//!   never handed to another service that trusts a different one.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use pingora::protocols::tls::CaType;
use pingora::upstreams::peer::HttpPeer;
use pingora::utils::tls::{CertKey, WrappedX509, parse_x509};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tracing::warn;

use crate::config::{RouterConfig, ServiceSettings, UpstreamProtocol};

/// A service's upstream TLS settings that cannot be used; names the file when there is one.
#[derive(Debug, thiserror::Error)]
#[error("router.services.{service}: {}{message}", path.as_ref().map(|p| format!("{}: ", p.display())).unwrap_or_default())]
pub struct UpstreamTlsError {
    pub service: String,
    pub path: Option<PathBuf>,
    pub message: String,
}

/// One service's upstream TLS, ready to put on peers.
pub struct UpstreamTls {
    /// The server name sent and verified; `None`: the instance's IP address.
    pub sni: Option<String>,
    pub verify: bool,
    /// Roots replacing the system's.
    pub ca: Option<Arc<CaType>>,
    pub client_cert: Option<Arc<CertKey>>,
    /// Separates pooled connections of services whose roots differ.
    pub group_key: u64,
    /// ALPN `h2` (else `http/1.1`).
    pub h2: bool,
}

impl std::fmt::Debug for UpstreamTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UpstreamTls")
            .field("sni", &self.sni)
            .field("verify", &self.verify)
            .field("ca", &self.ca.as_ref().map(|c| c.len()))
            .field("client_cert", &self.client_cert.is_some())
            .field("h2", &self.h2)
            .finish()
    }
}

/// The pingora peer for an instance at `addr`: over TLS with its service's settings, or in
/// cleartext.
pub fn peer(tls: Option<&UpstreamTls>, addr: std::net::SocketAddr) -> HttpPeer {
    match tls {
        Some(tls) => tls.peer(addr),
        None => HttpPeer::new(addr, false, String::new()),
    }
}

impl UpstreamTls {
    /// A TLS peer for `addr` with these settings (hot path: no I/O, a few `Arc` clones).
    pub fn peer(&self, addr: std::net::SocketAddr) -> HttpPeer {
        let sni = match &self.sni {
            Some(name) => name.clone(),
            None => addr.ip().to_string(),
        };
        let mut peer = HttpPeer::new(addr, true, sni);
        peer.options.verify_cert = self.verify;
        peer.options.verify_hostname = self.verify;
        peer.options.ca = self.ca.clone();
        peer.client_cert_key = self.client_cert.clone();
        peer.group_key = self.group_key;
        peer
    }
}

/// The upstream TLS of every service that has it, by service name.
#[derive(Debug, Default, Clone)]
pub struct UpstreamTlsSet {
    services: HashMap<String, Arc<UpstreamTls>>,
}

impl UpstreamTlsSet {
    /// Checks every service's TLS settings and loads their files. Any error refuses the
    /// whole configuration (at startup). `verify = false` is logged loudly.
    pub fn load(config: &RouterConfig) -> Result<Self, UpstreamTlsError> {
        let mut services = HashMap::new();
        for (name, settings) in &config.services {
            if let Some(tls) = load_service(name, settings)? {
                services.insert(name.clone(), Arc::new(tls));
            }
        }
        Ok(UpstreamTlsSet { services })
    }

    pub fn get(&self, service: &str) -> Option<&Arc<UpstreamTls>> {
        self.services.get(service)
    }

    pub fn is_empty(&self) -> bool {
        self.services.is_empty()
    }
}

fn load_service(
    name: &str,
    settings: &ServiceSettings,
) -> Result<Option<UpstreamTls>, UpstreamTlsError> {
    let error = |path: Option<&Path>, message: String| UpstreamTlsError {
        service: name.to_string(),
        path: path.map(Path::to_path_buf),
        message,
    };
    if !settings.tls {
        let set = [
            ("sni", settings.sni.is_some()),
            ("ca", settings.ca.is_some()),
            ("verify", !settings.verify),
            ("cert", settings.cert.is_some()),
            ("key", settings.key.is_some()),
        ];
        if let Some((key, _)) = set.iter().find(|(_, set)| *set) {
            return Err(error(
                None,
                format!("`{key}` is a TLS setting; add `tls = true` to use it"),
            ));
        }
        if settings.protocol == UpstreamProtocol::H2 {
            return Err(error(
                None,
                "protocol \"h2\" is HTTP/2 over TLS: add `tls = true` (or use \"h2c\" for cleartext)"
                    .into(),
            ));
        }
        return Ok(None);
    }
    if settings.protocol == UpstreamProtocol::H2c {
        return Err(error(
            None,
            "protocol \"h2c\" is cleartext HTTP/2; with `tls = true` use \"h2\"".into(),
        ));
    }
    if let Some(sni) = &settings.sni
        && ServerName::try_from(sni.as_str()).is_err()
    {
        return Err(error(
            None,
            format!("sni {sni:?} is not a DNS name or an IP address"),
        ));
    }
    let ca = match (&settings.ca, settings.verify) {
        (Some(path), _) => Some(load_ca(path).map_err(|m| error(Some(path), m))?),
        (None, true) => None,
        // pingora builds a verifier from the roots even when it then skips verification,
        // and fails every connect when there are none (no system roots): give it one.
        (None, false) => Some(
            parse_ca(PLACEHOLDER_ROOT.as_bytes())
                .map_err(|m| error(None, format!("placeholder root: {m}")))?,
        ),
    };
    let client_cert = match (&settings.cert, &settings.key) {
        (Some(cert), Some(key)) => {
            Some(load_client_cert(cert, key).map_err(|(p, m)| error(Some(p), m))?)
        }
        (None, None) => None,
        _ => {
            return Err(error(
                None,
                "`cert` and `key` go together (a client certificate and its private key)".into(),
            ));
        }
    };
    if !settings.verify {
        warn!(
            service = %name,
            "upstream TLS certificate verification is OFF for service {name} (verify = false): \
             any certificate is accepted, for testing only"
        );
    }
    let group_key = settings.ca.as_ref().map_or(0, |path| {
        let mut hasher = std::collections::hash_map::DefaultHasher::new();
        ("upstream-tls-ca", path).hash(&mut hasher);
        hasher.finish()
    });
    Ok(Some(UpstreamTls {
        sni: settings.sni.clone(),
        verify: settings.verify,
        ca,
        client_cert,
        group_key,
        h2: settings.protocol == UpstreamProtocol::H2,
    }))
}

/// pingora's certificate wrapper parses with `x509-parser` and panics on what it cannot
/// parse; the certificates were checked with webpki first, so this only guards against
/// the two parsers disagreeing (at startup, never per request).
fn wrap(der: &CertificateDer<'_>) -> Result<WrappedX509, String> {
    let raw = der.as_ref().to_vec();
    std::panic::catch_unwind(move || WrappedX509::new(raw, parse_x509))
        .map_err(|_| "certificate cannot be parsed by pingora (x509-parser)".to_string())
}

fn read(path: &Path) -> Result<Vec<u8>, String> {
    std::fs::read(path).map_err(|e| format!("cannot read: {e}"))
}

/// A self-signed root whose private key was discarded when it was made: trusting it
/// trusts nothing. Only for `verify = false` without `ca` (see `load_service`).
const PLACEHOLDER_ROOT: &str = "\
-----BEGIN CERTIFICATE-----
MIIB2TCCAX+gAwIBAgIUf2dGofkb66DnTYjVTPCDO8Lj8JswCgYIKoZIzj0EAwIw
QTE/MD0GA1UEAww2c3RyYWl0IHBsYWNlaG9sZGVyIHJvb3QsIGtleSBkaXNjYXJk
ZWQsIHRydXN0cyBub3RoaW5nMCAXDTI2MTEyNDAyMTYwNloYDzIxMjYxMDMxMDIx
NjA2WjBBMT8wPQYDVQQDDDZzdHJhaXQgcGxhY2Vob2xkZXIgcm9vdCwga2V5IGRp
c2NhcmRlZCwgdHJ1c3RzIG5vdGhpbmcwWTATBgcqhkjOPQIBBggqhkjOPQMBBwNC
AASocoH13klnXjAJCOVnhlAHCsQkrBNSt383dT31lpZ9RF11OVFDroCJjfkwFMJE
k32ym3llLW+xuYseSPjqQVslo1MwUTAdBgNVHQ4EFgQUBJs/3FQUB9sfc830RuMX
JPP0q8cwHwYDVR0jBBgwFoAUBJs/3FQUB9sfc830RuMXJPP0q8cwDwYDVR0TAQH/
BAUwAwEB/zAKBggqhkjOPQQDAgNIADBFAiA/BLjNp4Na1XqLHokRMlyK79GX1MG5
DSJoHkkR/zsGrgIhAIJZfXaMAwHMLe5DD4lS5QC9RcA0MpfrL32je4ecJ7Cb
-----END CERTIFICATE-----
";

fn load_ca(path: &Path) -> Result<Arc<CaType>, String> {
    parse_ca(&read(path)?)
}

fn parse_ca(pem: &[u8]) -> Result<Arc<CaType>, String> {
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("not a PEM certificate file: {e}"))?;
    if certs.is_empty() {
        return Err("no CERTIFICATE in the file".into());
    }
    let mut roots = rustls::RootCertStore::empty();
    let mut wrapped = Vec::with_capacity(certs.len());
    for (i, cert) in certs.iter().enumerate() {
        roots
            .add(cert.clone())
            .map_err(|e| format!("certificate {} is not a usable CA: {e}", i + 1))?;
        wrapped.push(wrap(cert)?);
    }
    Ok(Arc::from(wrapped.into_boxed_slice()))
}

fn load_client_cert<'a>(
    cert_path: &'a Path,
    key_path: &'a Path,
) -> Result<Arc<CertKey>, (&'a Path, String)> {
    let pem = read(cert_path).map_err(|m| (cert_path, m))?;
    let chain = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| (cert_path, format!("not a PEM certificate file: {e}")))?;
    let Some(leaf) = chain.first() else {
        return Err((cert_path, "no CERTIFICATE in the file".into()));
    };
    webpki::EndEntityCert::try_from(leaf)
        .map_err(|e| (cert_path, format!("unusable certificate: {e}")))?;
    let key_pem = read(key_path).map_err(|m| (key_path, m))?;
    let key = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| (key_path, format!("no usable private key: {e}")))?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| (key_path, format!("unsupported private key: {e}")))?;
    rustls::sign::CertifiedKey::new(chain.clone(), signing_key)
        .keys_match()
        .map_err(|e| (key_path, format!("key does not match the certificate: {e}")))?;
    // pingora turns the key's bytes back into a `PrivateKeyDer` by guessing its format,
    // with `unwrap()`: the guess must work and agree with the PEM label.
    let der = key.secret_der().to_vec();
    let guessed = PrivateKeyDer::try_from(der.clone())
        .map_err(|e| (key_path, format!("private key format not recognised: {e}")))?;
    if std::mem::discriminant(&guessed) != std::mem::discriminant(&key) {
        return Err((
            key_path,
            "private key format is ambiguous; convert it to PKCS#8 (`openssl pkcs8 -topk8 -nocrypt`)"
                .into(),
        ));
    }
    for cert in &chain {
        wrap(cert).map_err(|m| (cert_path, m))?;
    }
    let certs: Vec<Vec<u8>> = chain.iter().map(|c| c.as_ref().to_vec()).collect();
    std::panic::catch_unwind(move || CertKey::new(certs, der))
        .map(Arc::new)
        .map_err(|_| {
            (
                cert_path,
                "certificate cannot be parsed by pingora".to_string(),
            )
        })
}

#[cfg(test)]
mod tests;
