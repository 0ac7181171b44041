//! A blocking client of the OCI Distribution API: what the builder needs to pull a base
//! image and push the result. Plain HTTP for loopback registries (or `--insecure`), TLS
//! otherwise; Basic auth, and Bearer tokens fetched from the realm a 401 names. Blob
//! bodies are streamed from and to files, never held whole in memory.

use std::collections::BTreeSet;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine as _;
use oci::media::MANIFEST_ACCEPT;
use oci::{MediaType, Reference};
use ureq::http::Response;

use crate::cache::{BlobWriter, CacheError};
use crate::digest::Digest;

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("registry {registry}: cannot reach it: {error}")]
    Unreachable { registry: String, error: String },
    #[error("registry {registry}: its TLS certificate is not trusted ({error}){hint}")]
    Untrusted {
        registry: String,
        error: String,
        hint: &'static str,
    },
    #[error("registry {registry}: {what}: {status}{message}")]
    Status {
        registry: String,
        what: String,
        status: u16,
        message: String,
    },
    #[error("registry {registry}: authentication failed: {message}")]
    Auth { registry: String, message: String },
    #[error("registry {registry}: {message}")]
    Protocol { registry: String, message: String },
    #[error("{}: {error}", .path.display())]
    File {
        path: PathBuf,
        #[source]
        error: io::Error,
    },
    #[error(transparent)]
    Cache(#[from] CacheError),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    pub password: String,
}

impl Credentials {
    /// `user:password`.
    pub fn parse(text: &str) -> Option<Credentials> {
        let (username, password) = text.split_once(':')?;
        Some(Credentials {
            username: username.to_string(),
            password: password.to_string(),
        })
    }

    fn basic(&self) -> String {
        let raw = format!("{}:{}", self.username, self.password);
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(raw)
        )
    }
}

/// Credentials for `registry` as docker's `config.json` gives them: its credential helper
/// for that registry (`credHelpers`), else its credential store (`credsStore`), else
/// `auths`. `Ok(None)` when none of them has any.
pub fn docker_credentials(registry: &str) -> Result<Option<Credentials>, RegistryError> {
    let Some(dir) = std::env::var_os("DOCKER_CONFIG")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".docker")))
    else {
        return Ok(None);
    };
    let Ok(text) = std::fs::read_to_string(dir.join("config.json")) else {
        return Ok(None);
    };
    match docker_credential_source(&text, registry) {
        CredentialSource::Helper(helper) => run_credential_helper(&helper, registry),
        CredentialSource::Stored(credentials) => Ok(Some(credentials)),
        CredentialSource::None => Ok(None),
    }
}

/// Where docker's configuration says a registry's credentials are.
#[derive(Debug, PartialEq, Eq)]
pub enum CredentialSource {
    /// Run `docker-credential-<helper> get`.
    Helper(String),
    Stored(Credentials),
    None,
}

/// docker's host name for a registry (Docker Hub's credentials live under its v1 index).
fn docker_host(registry: &str) -> &str {
    if registry == "docker.io" {
        "index.docker.io"
    } else {
        registry
    }
}

pub fn docker_credential_source(text: &str, registry: &str) -> CredentialSource {
    let Ok(json) = serde_json::from_str::<serde_json::Value>(text) else {
        return CredentialSource::None;
    };
    let wanted = docker_host(registry);
    let helper = json
        .get("credHelpers")
        .and_then(|helpers| helpers.get(registry).or_else(|| helpers.get(wanted)))
        .or_else(|| json.get("credsStore"))
        .and_then(|h| h.as_str())
        .filter(|h| !h.is_empty());
    if let Some(helper) = helper {
        return CredentialSource::Helper(helper.to_string());
    }
    credentials_from_auths(&json, wanted).map_or(CredentialSource::None, CredentialSource::Stored)
}

fn credentials_from_auths(json: &serde_json::Value, wanted: &str) -> Option<Credentials> {
    let auths = json.get("auths")?.as_object()?;
    for (key, entry) in auths {
        let host = key
            .trim_start_matches("https://")
            .trim_start_matches("http://")
            .split('/')
            .next()
            .unwrap_or_default();
        if host != wanted {
            continue;
        }
        if let Some(auth) = entry.get("auth").and_then(|a| a.as_str()) {
            let raw = base64::engine::general_purpose::STANDARD
                .decode(auth)
                .ok()?;
            return Credentials::parse(std::str::from_utf8(&raw).ok()?);
        }
        let user = entry.get("username")?.as_str()?;
        let pass = entry.get("password")?.as_str()?;
        return Some(Credentials {
            username: user.into(),
            password: pass.into(),
        });
    }
    None
}

/// How long a credential helper may take.
const HELPER_TIMEOUT: Duration = Duration::from_secs(60);

/// docker's credential helper protocol: `docker-credential-<helper> get` reads the server
/// on stdin and prints `{"Username": ..., "Secret": ...}`.
fn run_credential_helper(
    helper: &str,
    registry: &str,
) -> Result<Option<Credentials>, RegistryError> {
    use std::io::Write as _;
    let program = format!("docker-credential-{helper}");
    let failed = |message: String| RegistryError::Auth {
        registry: registry.to_string(),
        message,
    };
    let server = if registry == "docker.io" {
        "https://index.docker.io/v1/"
    } else {
        registry
    };
    let mut child = std::process::Command::new(&program)
        .arg("get")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| {
            failed(format!(
                "docker's config.json names credential helper `{helper}`, but `{program}` cannot run: {e}"
            ))
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        // A helper that exits without reading is judged by its output below.
        let _ = stdin.write_all(server.as_bytes());
    }
    // A helper waiting on a keychain prompt must not hang the build.
    let deadline = std::time::Instant::now() + HELPER_TIMEOUT;
    while child
        .try_wait()
        .map_err(|e| failed(format!("{program} get: {e}")))?
        .is_none()
    {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            return Err(failed(format!(
                "{program} get gave no answer within {}s",
                HELPER_TIMEOUT.as_secs()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let output = child
        .wait_with_output()
        .map_err(|e| failed(format!("{program} get: {e}")))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    if !output.status.success() {
        let said = String::from_utf8_lossy(&output.stderr);
        let said = [stdout.trim(), said.trim()].join(" ");
        // docker-credential-helpers' own wording for "nothing stored for this server".
        if said.contains("credentials not found") {
            return Ok(None);
        }
        return Err(failed(format!(
            "{program} get failed ({}): {}",
            output.status,
            said.trim()
        )));
    }
    let answer: serde_json::Value = serde_json::from_str(&stdout)
        .map_err(|e| failed(format!("{program} get printed no credentials JSON: {e}")))?;
    let field = |name: &str| {
        answer
            .get(name)
            .and_then(|v| v.as_str())
            .unwrap_or_default()
    };
    let (username, secret) = (field("Username"), field("Secret"));
    if username == "<token>" {
        return Err(failed(format!(
            "{program} holds an identity token, which strait build does not use; \
             give a username and password (--user, STRAIT_REGISTRY_AUTH or docker login)"
        )));
    }
    if username.is_empty() && secret.is_empty() {
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: username.to_string(),
        password: secret.to_string(),
    }))
}

/// CA certificates to trust instead of the public roots (`--ca-cert`).
#[derive(Debug, Clone)]
pub struct Roots(std::sync::Arc<Vec<ureq::tls::Certificate<'static>>>);

impl Roots {
    /// Every certificate in the PEM files; a file without one is an error naming it.
    pub fn load(files: &[PathBuf]) -> Result<Roots, String> {
        let mut certificates = Vec::new();
        for file in files {
            let pem =
                std::fs::read(file).map_err(|e| format!("--ca-cert {}: {e}", file.display()))?;
            let before = certificates.len();
            for item in ureq::tls::parse_pem(&pem) {
                match item {
                    Ok(ureq::tls::PemItem::Certificate(certificate)) => {
                        certificates.push(certificate.to_owned());
                    }
                    Ok(_) => {}
                    Err(e) => return Err(format!("--ca-cert {}: {e}", file.display())),
                }
            }
            if certificates.len() == before {
                return Err(format!(
                    "--ca-cert {}: no PEM certificate in it",
                    file.display()
                ));
            }
        }
        Ok(Roots(std::sync::Arc::new(certificates)))
    }
}

/// How to reach registries: what `strait build` is told about them.
#[derive(Debug, Clone, Default)]
pub struct Access {
    /// `--insecure`: plain HTTP to non-loopback registries too.
    pub insecure: bool,
    /// `--ca-cert`: roots TLS to registries trusts (and TLS to loopback ones too).
    pub ca_certs: Option<Roots>,
    /// `--user`.
    pub credentials: Option<Credentials>,
    /// The only registry `credentials` go to (the one `--push` names); `None`: any.
    pub credentials_for: Option<String>,
}

impl Access {
    /// `credentials` for `registry` if they are for it, otherwise docker's config for that
    /// registry (its helper, store or `auths`).
    pub fn credentials(&self, registry: &str) -> Result<Option<Credentials>, RegistryError> {
        let explicit = self.credentials.as_ref().filter(|_| {
            self.credentials_for
                .as_deref()
                .is_none_or(|r| r == registry)
        });
        match explicit {
            Some(credentials) => Ok(Some(credentials.clone())),
            None => docker_credentials(registry),
        }
    }

    /// A client for `reference`'s registry. `--ca-cert` goes to every registry (TLS to
    /// loopback ones too); for a registry other than the one credentials are for (a base
    /// image's), the public roots stay trusted as well, so a public base still verifies.
    pub fn client(&self, reference: &Reference) -> Result<Registry, RegistryError> {
        let credentials = self.credentials(&reference.registry)?;
        let registry = Registry::new(reference, self.insecure, self.ca_certs.clone(), credentials);
        let own = self.credentials_for.as_deref() == Some(reference.registry.as_str());
        Ok(if self.ca_certs.is_some() && !own {
            registry.with_public_fallback()
        } else {
            registry
        })
    }
}

/// What a reference names on its registry: a manifest or an index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    pub digest: Digest,
    /// As the registry says (`Content-Type`); for an index, its manifests are not read.
    pub media_type: MediaType,
}

/// The digest and media type of the manifest `reference` names, asked of its registry
/// as `strait build` asks (the same TLS, credentials and token flow; OCI and docker
/// manifest types accepted). A tag is resolved by a HEAD; a registry that does not say
/// the digest there is asked for the manifest itself, which is then hashed. A digest
/// reference is checked to exist (and, when fetched, to match).
pub fn resolve(reference: &Reference, access: &Access) -> Result<Resolved, RegistryError> {
    let mut registry = access.client(reference)?;
    registry.add_scope(&reference.repository, "pull");
    registry.resolve_manifest(&reference.repository, &reference.reference())
}

#[derive(Debug, Clone)]
enum Auth {
    None,
    Basic,
    Bearer(String),
}

/// A request body that can be sent again (after an auth challenge).
pub enum Body<'a> {
    Empty,
    Bytes(&'a [u8]),
    File {
        path: &'a Path,
        size: u64,
        progress: &'a mut dyn FnMut(u64),
    },
}

/// An HTTP agent that verifies TLS against `roots`, or else the public roots.
fn agent(roots: Option<Roots>) -> ureq::Agent {
    let mut tls = ureq::tls::TlsConfig::builder();
    if let Some(roots) = roots {
        tls = tls.root_certs(ureq::tls::RootCerts::Specific(roots.0));
    }
    let config = ureq::Agent::config_builder()
        .tls_config(tls.build())
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(10)))
        .timeout_recv_response(Some(Duration::from_secs(120)))
        .user_agent("strait-builder")
        .build();
    ureq::Agent::new_with_config(config)
}

pub struct Registry {
    agent: ureq::Agent,
    /// Whether an untrusted certificate switches `agent` to the public roots once.
    public_fallback: bool,
    /// `--ca-cert` was given (for error messages).
    custom_roots: bool,
    base: String,
    name: String,
    credentials: Option<Credentials>,
    auth: Auth,
    scopes: BTreeSet<String>,
}

/// Manifests larger than this are refused.
const MAX_MANIFEST: u64 = 4 << 20;

impl Registry {
    /// Plain HTTP with `insecure`, or to a loopback registry unless `roots` are given;
    /// otherwise TLS, verified against `roots` or else the public roots.
    pub fn new(
        reference: &Reference,
        insecure: bool,
        roots: Option<Roots>,
        credentials: Option<Credentials>,
    ) -> Registry {
        let scheme = if insecure || (reference.is_loopback() && roots.is_none()) {
            "http"
        } else {
            "https"
        };
        Registry {
            custom_roots: roots.is_some(),
            agent: agent(roots),
            public_fallback: false,
            base: format!("{scheme}://{}", reference.api_host()),
            name: reference.registry.clone(),
            credentials,
            auth: Auth::None,
            scopes: BTreeSet::new(),
        }
    }

    /// A registry whose certificate the given roots do not verify is tried once more
    /// against the public roots, so `--ca-cert` adds to them for this registry (a base
    /// image from a public registry) rather than replacing them. Each handshake verifies
    /// fully against one trusted set; nothing is sent before one succeeds.
    pub fn with_public_fallback(mut self) -> Registry {
        self.public_fallback = true;
        self
    }

    /// Asks for `repository:<repo>:<actions>` in the next token.
    pub fn add_scope(&mut self, repository: &str, actions: &str) {
        self.scopes
            .insert(format!("repository:{repository}:{actions}"));
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    fn url(&self, path: &str) -> String {
        if path.starts_with("http://") || path.starts_with("https://") {
            path.to_string()
        } else {
            format!("{}{path}", self.base)
        }
    }

    fn unreachable(&self, error: impl std::fmt::Display) -> RegistryError {
        let error = error.to_string();
        // rustls' verdict, as ureq passes it on: the registry answered, but with a
        // certificate that does not verify.
        if error.contains("invalid peer certificate") {
            return RegistryError::Untrusted {
                registry: self.name.clone(),
                error: error.trim_start_matches("io: ").to_string(),
                hint: if self.custom_roots {
                    "; not by the --ca-cert certificates either"
                } else {
                    "; a private CA goes in --ca-cert"
                },
            };
        }
        RegistryError::Unreachable {
            registry: self.name.clone(),
            error,
        }
    }

    fn protocol(&self, message: impl Into<String>) -> RegistryError {
        RegistryError::Protocol {
            registry: self.name.clone(),
            message: message.into(),
        }
    }

    /// Sends a request; on a 401, answers the challenge once and sends it again.
    fn send(
        &mut self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        mut body: Body<'_>,
    ) -> Result<Response<ureq::Body>, RegistryError> {
        let url = self.url(path);
        let mut answered = false;
        loop {
            let response = match self.send_once(method, &url, headers, &mut body) {
                Err(RegistryError::Untrusted { .. }) if self.public_fallback => {
                    // The handshake failed: no byte of the body was read.
                    self.public_fallback = false;
                    self.agent = agent(None);
                    self.send_once(method, &url, headers, &mut body)?
                }
                result => result?,
            };
            if response.status().as_u16() != 401 || answered {
                if response.status().as_u16() == 401 {
                    return Err(RegistryError::Auth {
                        registry: self.name.clone(),
                        message: match &self.credentials {
                            Some(c) => format!(
                                "{method} {path}: credentials for `{}` were refused",
                                c.username
                            ),
                            None => format!(
                                "{method} {path}: the registry wants credentials (--user or ~/.docker/config.json)"
                            ),
                        },
                    });
                }
                return Ok(response);
            }
            let challenge = response
                .headers()
                .get("www-authenticate")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            self.answer(&challenge)?;
            answered = true;
        }
    }

    fn send_once(
        &mut self,
        method: &str,
        url: &str,
        headers: &[(&str, &str)],
        body: &mut Body<'_>,
    ) -> Result<Response<ureq::Body>, RegistryError> {
        let mut builder = ureq::http::Request::builder().method(method).uri(url);
        for (k, v) in headers {
            builder = builder.header(*k, *v);
        }
        match &self.auth {
            Auth::None => {}
            Auth::Basic => {
                if let Some(c) = &self.credentials {
                    builder = builder.header("authorization", c.basic());
                }
            }
            Auth::Bearer(token) => {
                builder = builder.header("authorization", format!("Bearer {token}"));
            }
        }
        let result = match body {
            Body::Empty => {
                let request = builder
                    .header("content-length", "0")
                    .body(())
                    .map_err(|e| self.protocol(e.to_string()))?;
                self.agent.run(request)
            }
            Body::Bytes(bytes) => {
                let request = builder
                    .body(bytes.to_vec())
                    .map_err(|e| self.protocol(e.to_string()))?;
                self.agent.run(request)
            }
            Body::File {
                path,
                size,
                progress,
            } => {
                let file = std::fs::File::open(&path).map_err(|error| RegistryError::File {
                    path: path.to_path_buf(),
                    error,
                })?;
                let mut reader = CountingReader {
                    inner: file.take(*size),
                    progress,
                };
                let request = builder
                    .header("content-length", size.to_string())
                    .header("content-type", "application/octet-stream")
                    .body(ureq::SendBody::from_reader(&mut reader))
                    .map_err(|e| self.protocol(e.to_string()))?;
                self.agent.run(request)
            }
        };
        result.map_err(|e| self.unreachable(e))
    }

    fn answer(&mut self, challenge: &str) -> Result<(), RegistryError> {
        let (scheme, params) = parse_challenge(challenge);
        match scheme.to_ascii_lowercase().as_str() {
            "basic" => {
                if self.credentials.is_none() {
                    return Err(RegistryError::Auth {
                        registry: self.name.clone(),
                        message: "the registry wants credentials (--user USER:PASS, STRAIT_REGISTRY_AUTH or ~/.docker/config.json)".into(),
                    });
                }
                self.auth = Auth::Basic;
                Ok(())
            }
            "bearer" => {
                let realm = params
                    .iter()
                    .find(|(k, _)| k == "realm")
                    .map(|(_, v)| v.clone())
                    .ok_or_else(|| self.protocol("a Bearer challenge without a realm"))?;
                let mut query = Vec::new();
                if let Some((_, service)) = params.iter().find(|(k, _)| k == "service") {
                    query.push(format!("service={}", encode(service)));
                }
                let mut scopes = self.scopes.clone();
                if let Some((_, scope)) = params.iter().find(|(k, _)| k == "scope") {
                    scopes.extend(scope.split(' ').map(str::to_string));
                }
                for scope in &scopes {
                    query.push(format!("scope={}", encode(scope)));
                }
                let url = if query.is_empty() {
                    realm.clone()
                } else if realm.contains('?') {
                    format!("{realm}&{}", query.join("&"))
                } else {
                    format!("{realm}?{}", query.join("&"))
                };
                let mut request = self.agent.get(&url);
                if let Some(c) = &self.credentials {
                    request = request.header("authorization", c.basic());
                }
                let mut response = request.call().map_err(|e| RegistryError::Auth {
                    registry: self.name.clone(),
                    message: format!("token service {realm}: {e}"),
                })?;
                if !response.status().is_success() {
                    return Err(RegistryError::Auth {
                        registry: self.name.clone(),
                        message: format!(
                            "token service {realm} answered {}{}",
                            response.status().as_u16(),
                            error_message(&mut response)
                        ),
                    });
                }
                let json: serde_json::Value = response
                    .body_mut()
                    .with_config()
                    .limit(1 << 20)
                    .read_json()
                    .map_err(|e| RegistryError::Auth {
                        registry: self.name.clone(),
                        message: format!("token service {realm}: {e}"),
                    })?;
                let token = json
                    .get("token")
                    .or_else(|| json.get("access_token"))
                    .and_then(|t| t.as_str())
                    .ok_or_else(|| RegistryError::Auth {
                        registry: self.name.clone(),
                        message: format!("token service {realm} returned no token"),
                    })?;
                self.auth = Auth::Bearer(token.to_string());
                Ok(())
            }
            _ => Err(RegistryError::Auth {
                registry: self.name.clone(),
                message: format!("unsupported challenge `{challenge}`"),
            }),
        }
    }

    fn status_error(&self, what: String, response: &mut Response<ureq::Body>) -> RegistryError {
        RegistryError::Status {
            registry: self.name.clone(),
            what,
            status: response.status().as_u16(),
            message: error_message(response),
        }
    }

    /// Fetches a manifest or index; returns its bytes, media type and digest (checked when
    /// the reference is a digest).
    pub fn get_manifest(
        &mut self,
        repository: &str,
        reference: &str,
    ) -> Result<(Vec<u8>, String, Digest), RegistryError> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let mut response = self.send("GET", &path, &[("accept", MANIFEST_ACCEPT)], Body::Empty)?;
        if !response.status().is_success() {
            return Err(
                self.status_error(format!("manifest {repository}:{reference}"), &mut response)
            );
        }
        let media_type = content_type(&response);
        let bytes = response
            .body_mut()
            .with_config()
            .limit(MAX_MANIFEST)
            .read_to_vec()
            .map_err(|e| self.unreachable(e))?;
        let digest = Digest::of(&bytes);
        if let Ok(expected) = Digest::parse(reference)
            && expected != digest
        {
            return Err(self.protocol(format!(
                "manifest {repository}@{expected} has digest {digest}"
            )));
        }
        Ok((bytes, media_type, digest))
    }

    /// The digest and media type of a manifest, by a HEAD if the registry says the
    /// digest there, else by fetching it.
    pub fn resolve_manifest(
        &mut self,
        repository: &str,
        reference: &str,
    ) -> Result<Resolved, RegistryError> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let mut response = self.send("HEAD", &path, &[("accept", MANIFEST_ACCEPT)], Body::Empty)?;
        if !response.status().is_success() {
            return Err(
                self.status_error(format!("manifest {repository}:{reference}"), &mut response)
            );
        }
        let said = response
            .headers()
            .get("docker-content-digest")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| Digest::parse(v.trim()).ok());
        let pinned = Digest::parse(reference).ok();
        match said {
            Some(digest) if pinned.as_ref().is_none_or(|p| *p == digest) => Ok(Resolved {
                digest,
                media_type: MediaType::from(content_type(&response).as_str()),
            }),
            _ => {
                let (_, media_type, digest) = self.get_manifest(repository, reference)?;
                Ok(Resolved {
                    digest,
                    media_type: MediaType::from(media_type.as_str()),
                })
            }
        }
    }

    pub fn blob_exists(
        &mut self,
        repository: &str,
        digest: &Digest,
    ) -> Result<bool, RegistryError> {
        let path = format!("/v2/{repository}/blobs/{digest}");
        let mut response = self.send("HEAD", &path, &[], Body::Empty)?;
        match response.status().as_u16() {
            200 => Ok(true),
            404 => Ok(false),
            _ => Err(self.status_error(format!("HEAD blob {digest}"), &mut response)),
        }
    }

    /// Downloads a blob into the cache, checking its digest.
    pub fn get_blob(
        &mut self,
        repository: &str,
        digest: &Digest,
        mut writer: BlobWriter,
        progress: &mut dyn FnMut(u64),
    ) -> Result<u64, RegistryError> {
        let path = format!("/v2/{repository}/blobs/{digest}");
        let mut response = self.send("GET", &path, &[], Body::Empty)?;
        if !response.status().is_success() {
            return Err(self.status_error(format!("blob {repository}@{digest}"), &mut response));
        }
        let mut reader = response.body_mut().as_reader();
        let mut buf = vec![0u8; 256 * 1024];
        loop {
            let n = reader.read(&mut buf).map_err(|e| self.unreachable(e))?;
            if n == 0 {
                break;
            }
            writer
                .write_all(&buf[..n])
                .map_err(|error| RegistryError::File {
                    path: PathBuf::from("<cache>"),
                    error,
                })?;
            progress(n as u64);
        }
        let (_, size) = writer.commit(Some((digest, &format!("blob {repository}@{digest}"))))?;
        Ok(size)
    }

    /// Tries a cross-repository mount; `Ok(None)` when mounted, else the upload location
    /// the registry opened instead.
    pub fn mount_blob(
        &mut self,
        repository: &str,
        digest: &Digest,
        from: &str,
    ) -> Result<Option<String>, RegistryError> {
        let path = format!(
            "/v2/{repository}/blobs/uploads/?mount={}&from={}",
            encode(digest.as_str()),
            encode(from)
        );
        let mut response = self.send("POST", &path, &[], Body::Empty)?;
        match response.status().as_u16() {
            201 => Ok(None),
            202 => Ok(Some(self.location(&response)?)),
            _ => Err(self.status_error(format!("mount {digest} from {from}"), &mut response)),
        }
    }

    fn location(&self, response: &Response<ureq::Body>) -> Result<String, RegistryError> {
        response
            .headers()
            .get("location")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| self.protocol("an upload answer without a Location"))
    }

    /// Uploads a blob from a file: POST for a session (unless one is given), then one PUT.
    pub fn upload_blob(
        &mut self,
        repository: &str,
        digest: &Digest,
        path: &Path,
        size: u64,
        location: Option<String>,
        progress: &mut dyn FnMut(u64),
    ) -> Result<(), RegistryError> {
        let location = match location {
            Some(location) => location,
            None => self.start_upload(repository, digest)?,
        };
        let body = Body::File {
            path,
            size,
            progress,
        };
        self.finish_upload(&location, digest, &[], body)
    }

    /// Uploads a small blob (a config) from memory.
    pub fn upload_bytes(
        &mut self,
        repository: &str,
        digest: &Digest,
        bytes: &[u8],
    ) -> Result<(), RegistryError> {
        let location = self.start_upload(repository, digest)?;
        let headers = [("content-type", "application/octet-stream")];
        self.finish_upload(&location, digest, &headers, Body::Bytes(bytes))
    }

    /// Opens an upload session; its location.
    fn start_upload(&mut self, repository: &str, digest: &Digest) -> Result<String, RegistryError> {
        let path = format!("/v2/{repository}/blobs/uploads/");
        let mut response = self.send("POST", &path, &[], Body::Empty)?;
        if response.status().as_u16() != 202 {
            return Err(self.status_error(format!("start upload of {digest}"), &mut response));
        }
        self.location(&response)
    }

    /// Sends the whole blob to an upload session and completes it.
    fn finish_upload(
        &mut self,
        location: &str,
        digest: &Digest,
        headers: &[(&str, &str)],
        body: Body<'_>,
    ) -> Result<(), RegistryError> {
        let separator = if location.contains('?') { '&' } else { '?' };
        let target = format!("{location}{separator}digest={}", encode(digest.as_str()));
        let mut response = self.send("PUT", &target, headers, body)?;
        if response.status().as_u16() != 201 {
            return Err(self.status_error(format!("upload {digest}"), &mut response));
        }
        Ok(())
    }

    pub fn put_manifest(
        &mut self,
        repository: &str,
        reference: &str,
        media_type: &str,
        bytes: &[u8],
    ) -> Result<(), RegistryError> {
        let path = format!("/v2/{repository}/manifests/{reference}");
        let mut response = self.send(
            "PUT",
            &path,
            &[("content-type", media_type)],
            Body::Bytes(bytes),
        )?;
        if !response.status().is_success() {
            return Err(self.status_error(
                format!("push manifest {repository}:{reference}"),
                &mut response,
            ));
        }
        Ok(())
    }
}

/// A response's media type, without parameters; empty when it names none.
fn content_type(response: &Response<ureq::Body>) -> String {
    response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .map(|v| v.split(';').next().unwrap_or(v).trim().to_string())
        .unwrap_or_default()
}

struct CountingReader<'a, R> {
    inner: R,
    progress: &'a mut dyn FnMut(u64),
}

impl<R: Read> Read for CountingReader<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.progress)(n as u64);
        Ok(n)
    }
}

/// `: <first error message>` from an OCI error body, or the start of a text body. Read as
/// plain JSON, not as oci-spec's `ErrorResponse`, which refuses codes outside the spec's
/// list; registries send others (`UNKNOWN`, strait's own 500s among them).
fn error_message(response: &mut Response<ureq::Body>) -> String {
    let Ok(text) = response
        .body_mut()
        .with_config()
        .limit(64 * 1024)
        .lossy_utf8(true)
        .read_to_string()
    else {
        return String::new();
    };
    if let Ok(json) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(first) = json.get("errors").and_then(|e| e.get(0))
    {
        let code = first.get("code").and_then(|c| c.as_str()).unwrap_or("");
        let message = first.get("message").and_then(|c| c.as_str()).unwrap_or("");
        return format!(" {code}: {message}");
    }
    let text = text.trim();
    if text.is_empty() {
        String::new()
    } else {
        format!(": {}", text.chars().take(200).collect::<String>())
    }
}

/// `Bearer realm="x",service="y"` -> ("Bearer", [(realm, x), (service, y)]).
pub fn parse_challenge(header: &str) -> (String, Vec<(String, String)>) {
    let header = header.trim();
    let (scheme, rest) = header.split_once(' ').unwrap_or((header, ""));
    let mut params = Vec::new();
    let mut chars = rest.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| *c == ',' || c.is_whitespace()) {
            chars.next();
        }
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' {
                break;
            }
            key.push(c);
            chars.next();
        }
        if chars.next().is_none() {
            break;
        }
        let mut value = String::new();
        if chars.peek() == Some(&'"') {
            chars.next();
            while let Some(c) = chars.next() {
                match c {
                    '\\' => {
                        if let Some(next) = chars.next() {
                            value.push(next);
                        }
                    }
                    '"' => break,
                    c => value.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c == ',' {
                    break;
                }
                value.push(c);
                chars.next();
            }
        }
        params.push((key.trim().to_ascii_lowercase(), value));
    }
    (scheme.to_string(), params)
}

/// What a query value keeps as it is: RFC 3986's unreserved characters, and `/` (a
/// repository name's separator, legal in a query).
const QUERY_VALUE: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/');

/// Percent-encodes a query value.
fn encode(text: &str) -> String {
    percent_encoding::utf8_percent_encode(text, QUERY_VALUE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges() {
        let (scheme, params) = parse_challenge(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(scheme, "Bearer");
        assert_eq!(
            params,
            vec![
                (
                    "realm".to_string(),
                    "https://auth.example/token".to_string()
                ),
                ("service".to_string(), "registry.example".to_string()),
                ("scope".to_string(), "repository:a/b:pull,push".to_string()),
            ]
        );
        let (scheme, params) = parse_challenge(r#"Basic realm="Registry Realm""#);
        assert_eq!(scheme, "Basic");
        assert_eq!(
            params,
            vec![("realm".to_string(), "Registry Realm".to_string())]
        );
    }

    #[test]
    fn docker_config_sources() {
        let config = r#"{"auths": {
            "https://index.docker.io/v1/": {"auth": "dXNlcjpwYXNz"},
            "127.0.0.1:5000": {"username": "u", "password": "p:q"},
            "ecr.example.com": {}
        }, "credHelpers": {"ecr.example.com": "ecr-login"}}"#;
        let stored = |username: &str, password: &str| {
            CredentialSource::Stored(Credentials {
                username: username.into(),
                password: password.into(),
            })
        };
        assert_eq!(
            docker_credential_source(config, "docker.io"),
            stored("user", "pass")
        );
        assert_eq!(
            docker_credential_source(config, "127.0.0.1:5000"),
            stored("u", "p:q")
        );
        assert_eq!(
            docker_credential_source(config, "ecr.example.com"),
            CredentialSource::Helper("ecr-login".into())
        );
        assert_eq!(
            docker_credential_source(config, "other:1"),
            CredentialSource::None
        );
        // A credential store serves every registry without a helper of its own.
        let store = r#"{"credsStore": "pass", "credHelpers": {"a.example": "gcr"}, "auths": {"b.example": {"auth": "dTpw"}}}"#;
        assert_eq!(
            docker_credential_source(store, "b.example"),
            CredentialSource::Helper("pass".into())
        );
        assert_eq!(
            docker_credential_source(store, "a.example"),
            CredentialSource::Helper("gcr".into())
        );
        assert_eq!(
            docker_credential_source("not json", "a.example"),
            CredentialSource::None
        );
    }

    #[test]
    fn query_encoding() {
        assert_eq!(encode("sha256:ab"), "sha256%3Aab");
        assert_eq!(encode("a/b"), "a/b");
        assert_eq!(
            encode("repository:a/b:pull,push"),
            "repository%3Aa/b%3Apull%2Cpush"
        );
        assert_eq!(encode("x y~é"), "x%20y~%C3%A9");
    }
}
