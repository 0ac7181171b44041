//! The `[registry]` section.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegistryConfig {
    /// Whether `strait up` serves the registry.
    #[serde(default = "yes")]
    pub enabled: bool,
    #[serde(default = "default_addr")]
    pub addr: SocketAddr,
    /// Storage root. Default: `registry/` under the store's data dir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    /// Largest manifest accepted (413 beyond).
    #[serde(default = "default_max_manifest_bytes")]
    pub max_manifest_bytes: u64,
    /// Largest blob accepted (413 beyond).
    #[serde(default = "default_max_blob_bytes")]
    pub max_blob_bytes: u64,
    /// Uploads that receive nothing for this long are removed.
    #[serde(default = "default_upload_ttl", with = "humantime_serde")]
    pub upload_ttl: Duration,
    /// Whether a blob is fsynced before it becomes visible. Off, a blob is still never
    /// visible partially after a process crash (it is renamed into place when whole), but
    /// may be after a power loss; pushes then run at page-cache rather than disk speed.
    #[serde(default = "yes")]
    pub fsync: bool,
    /// Whether manifests, tags and blob links may be deleted (405 otherwise).
    #[serde(default = "yes")]
    pub delete: bool,
    /// The deadline for a request's head (slowloris).
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auth: Option<AuthConfig>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsConfig>,
}

/// Push (and optionally pull) requires credentials from an htpasswd file (bcrypt), sent
/// as Basic auth or exchanged for a bearer token at `/token`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    pub htpasswd: PathBuf,
    /// Whether pulls without credentials are allowed.
    #[serde(default = "yes")]
    pub anonymous_pull: bool,
    /// Token endpoint URL announced in `WWW-Authenticate`. Default: this registry's
    /// `/token`, on the host the client used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub realm: Option<String>,
    #[serde(default = "default_token_ttl", with = "humantime_serde")]
    pub token_ttl: Duration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: PathBuf,
    pub key: PathBuf,
}

fn yes() -> bool {
    true
}
fn default_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 5000))
}
fn default_max_manifest_bytes() -> u64 {
    4 << 20
}
fn default_max_blob_bytes() -> u64 {
    64 << 30
}
fn default_upload_ttl() -> Duration {
    Duration::from_secs(24 * 3600)
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}
fn default_token_ttl() -> Duration {
    Duration::from_secs(300)
}

impl Default for RegistryConfig {
    fn default() -> Self {
        RegistryConfig {
            enabled: true,
            addr: default_addr(),
            root: None,
            max_manifest_bytes: default_max_manifest_bytes(),
            max_blob_bytes: default_max_blob_bytes(),
            upload_ttl: default_upload_ttl(),
            delete: true,
            fsync: true,
            header_timeout: default_header_timeout(),
            auth: None,
            tls: None,
        }
    }
}

impl RegistryConfig {
    /// Without credentials anyone who can reach the registry can push: only on loopback.
    pub fn check(&self) -> Result<(), String> {
        if !self.addr.ip().is_loopback() && self.auth.is_none() {
            return Err(format!(
                "registry addr {} is not loopback; configure [registry.auth] (an htpasswd \
                 file) so pushes need credentials, or listen on 127.0.0.1",
                self.addr
            ));
        }
        Ok(())
    }
}
