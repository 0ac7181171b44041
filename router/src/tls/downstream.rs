//! TLS termination: certificates chosen by SNI, reloaded when their files change.
//!
//! rustls (via pingora's rustls backend) with its default suites: TLS 1.2 and 1.3 only,
//! forward-secret AEAD ciphers, nothing weak to turn off. The resolver keeps the loaded
//! set in an `ArcSwap`; a watcher thread polls the files' modification times and swaps
//! in a new set when one changes. A set that fails to load is logged and the old one
//! kept: a bad deploy of a certificate never takes a listener down.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use pingora::tls::ResolvesServerCert;
use pingora::tls::sign::CertifiedKey;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::server::ClientHello;
use tracing::{info, warn};

use crate::config::CertificateFiles;

#[derive(Debug, thiserror::Error)]
#[error("{path}: {message}")]
pub struct CertError {
    pub path: PathBuf,
    pub message: String,
}

struct Loaded {
    /// The leaf certificate, to match server names against its subject names.
    leaf: CertificateDer<'static>,
    key: Arc<CertifiedKey>,
    info: CertInfo,
}

/// What an operator watches of a loaded certificate: which file, which names, and when
/// it expires.
#[derive(Debug, Clone)]
pub struct CertInfo {
    pub cert: PathBuf,
    /// The leaf's DNS subject alternative names (else its common names).
    pub names: Vec<String>,
    /// The leaf's `notAfter`, in seconds since the Unix epoch.
    pub not_after: i64,
}

fn cert_info(path: &std::path::Path, leaf: &CertificateDer<'_>) -> Result<CertInfo, String> {
    let (_, cert) = x509_parser::parse_x509_certificate(leaf.as_ref())
        .map_err(|e| format!("unreadable certificate: {e}"))?;
    let mut names: Vec<String> = match cert.subject_alternative_name() {
        Ok(Some(san)) => san
            .value
            .general_names
            .iter()
            .filter_map(|name| match name {
                x509_parser::extensions::GeneralName::DNSName(name) => Some(name.to_string()),
                _ => None,
            })
            .collect(),
        _ => Vec::new(),
    };
    if names.is_empty() {
        names = cert
            .subject()
            .iter_common_name()
            .filter_map(|cn| cn.as_str().ok().map(str::to_string))
            .collect();
    }
    Ok(CertInfo {
        cert: path.to_path_buf(),
        names,
        not_after: cert.validity().not_after.timestamp(),
    })
}

/// The certificates of one TLS listener.
pub struct CertStore {
    files: Vec<CertificateFiles>,
    loaded: ArcSwap<Vec<Loaded>>,
}

impl std::fmt::Debug for CertStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertStore")
            .field("files", &self.files)
            .finish()
    }
}

fn load_one(files: &CertificateFiles) -> Result<Loaded, CertError> {
    let error = |path: &PathBuf, message: String| CertError {
        path: path.clone(),
        message,
    };
    for path in [&files.cert, &files.key] {
        std::fs::metadata(path).map_err(|e| error(path, format!("cannot read: {e}")))?;
    }
    let (Some(cert_path), Some(key_path)) = (files.cert.to_str(), files.key.to_str()) else {
        return Err(error(&files.cert, "path is not valid UTF-8".into()));
    };
    let (chain, key) = pingora::tls::load_certs_and_key_files(cert_path, key_path)
        .map_err(|e| error(&files.cert, format!("cannot load certificate and key: {e}")))?
        .ok_or_else(|| {
            error(
                &files.cert,
                "no certificate in the cert file, or no private key in the key file".into(),
            )
        })?;
    let signing_key = rustls::crypto::ring::sign::any_supported_type(&key)
        .map_err(|e| error(&files.key, format!("unsupported private key: {e}")))?;
    let leaf = chain
        .first()
        .cloned()
        .ok_or_else(|| error(&files.cert, "empty certificate chain".into()))?;
    webpki::EndEntityCert::try_from(&leaf)
        .map_err(|e| error(&files.cert, format!("unusable certificate: {e}")))?;
    let info = cert_info(&files.cert, &leaf).map_err(|e| error(&files.cert, e))?;
    let certified = CertifiedKey::new(chain, signing_key);
    certified.keys_match().map_err(|e| {
        error(
            &files.key,
            format!("key does not match the certificate: {e}"),
        )
    })?;
    Ok(Loaded {
        leaf,
        key: Arc::new(certified),
        info,
    })
}

fn load_all(files: &[CertificateFiles]) -> Result<Vec<Loaded>, CertError> {
    files.iter().map(load_one).collect()
}

fn modified(files: &[CertificateFiles]) -> Vec<Option<SystemTime>> {
    files
        .iter()
        .flat_map(|f| [&f.cert, &f.key])
        .map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
        .collect()
}

impl CertStore {
    /// Loads every certificate now; any failure is an error (at startup, refuse to run).
    pub fn load(files: Vec<CertificateFiles>) -> Result<Arc<Self>, CertError> {
        if files.is_empty() {
            return Err(CertError {
                path: PathBuf::from("router.tls.certificates"),
                message: "a TLS listener needs at least one certificate".into(),
            });
        }
        let loaded = load_all(&files)?;
        Ok(Arc::new(CertStore {
            files,
            loaded: ArcSwap::from_pointee(loaded),
        }))
    }

    /// The certificates served now (after the last successful reload), in order.
    pub fn certificates(&self) -> Vec<CertInfo> {
        self.loaded.load().iter().map(|c| c.info.clone()).collect()
    }

    /// Polls the files every `interval` and reloads the set when any changed.
    pub fn watch(self: &Arc<Self>, interval: Duration) -> std::io::Result<()> {
        let store = Arc::clone(self);
        std::thread::Builder::new()
            .name("strait-certs".into())
            .spawn(move || {
                let mut seen = modified(&store.files);
                loop {
                    std::thread::sleep(interval);
                    let now = modified(&store.files);
                    if now == seen {
                        continue;
                    }
                    seen = now;
                    match load_all(&store.files) {
                        Ok(loaded) => {
                            store.loaded.store(Arc::new(loaded));
                            info!(certificates = store.files.len(), "TLS certificates reloaded");
                        }
                        Err(e) => warn!(error = %e, "TLS certificates changed but do not load; keeping the previous ones"),
                    }
                }
            })
            .map(drop)
    }
}

impl ResolvesServerCert for CertStore {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        let loaded = self.loaded.load();
        let by_name = client_hello.server_name().and_then(|name| {
            let name = ServerName::try_from(name).ok()?;
            loaded.iter().find(|c| {
                webpki::EndEntityCert::try_from(&c.leaf)
                    .is_ok_and(|cert| cert.verify_is_valid_for_subject_name(&name).is_ok())
            })
        });
        by_name
            .or_else(|| loaded.first())
            .map(|c| Arc::clone(&c.key))
    }
}
