//! The HTTP API: every endpoint of the OCI Distribution Spec v1.1.
//!
//! Routing is by hand because repository names contain slashes: the path is split into
//! segments and matched from the end (`…/manifests/<ref>`, `…/blobs/uploads/<id>`,
//! `…/blobs/<digest>`, `…/tags/list`, `…/referrers/<digest>`); what precedes is the name.
//!
//! Uploads stream to a staging file while being hashed; a blob becomes visible only after
//! its digest is verified (storage promotes it by atomic rename). Hasher state lives in
//! memory between chunks; after a restart an upload is re-hashed from its file on completion.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use futures::StreamExt;
use serde::Deserialize;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::{info, warn};

use crate::auth::{Action, Auth, Resource};
use crate::config::RegistryConfig;
use crate::error::{ApiError, Code};
use crate::manifest::{self, Descriptor, Manifest};
use crate::metrics::Metrics;
use crate::names::{self, Digest, DigestError, RepoName};
use crate::storage::Storage;

/// The most entries one page of tags or catalog holds, whatever `n` asks.
const MAX_PAGE: usize = 10_000;

/// An open upload session.
struct Upload {
    repo: RepoName,
    /// Bytes received so far.
    size: u64,
    /// sha256 of those bytes; `None` for a session found on disk after a restart.
    hasher: Option<sha2::Sha256>,
    started: Instant,
}

pub struct Registry {
    storage: Arc<dyn Storage>,
    config: RegistryConfig,
    auth: Option<Auth>,
    uploads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<Upload>>>>,
    metrics: Metrics,
    secure: bool,
}

type ApiResult = Result<Response, ApiError>;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    digest: Option<String>,
    mount: Option<String>,
    from: Option<String>,
    n: Option<String>,
    last: Option<String>,
    artifact_type: Option<String>,
}

/// What a path addresses.
#[derive(Debug, PartialEq, Eq)]
enum Endpoint<'a> {
    Base,
    Catalog,
    Tags(&'a str),
    Manifest(&'a str, &'a str),
    UploadStart(&'a str),
    Upload(&'a str, &'a str),
    Blob(&'a str, &'a str),
    Referrers(&'a str, &'a str),
}

impl Endpoint<'_> {
    fn label(&self) -> &'static str {
        match self {
            Endpoint::Base => "base",
            Endpoint::Catalog => "catalog",
            Endpoint::Tags(_) => "tags",
            Endpoint::Manifest(..) => "manifest",
            Endpoint::UploadStart(_) | Endpoint::Upload(..) => "upload",
            Endpoint::Blob(..) => "blob",
            Endpoint::Referrers(..) => "referrers",
        }
    }
}

fn route(path: &str) -> Option<Endpoint<'_>> {
    let rest = path.strip_prefix("/v2")?;
    if rest.is_empty() || rest == "/" {
        return Some(Endpoint::Base);
    }
    let rest = rest.strip_prefix('/')?;
    if rest == "_catalog" {
        return Some(Endpoint::Catalog);
    }
    // `name/<kind...>`: find the kind from the end; names never contain empty segments.
    let name_before = |suffix_len: usize| -> Option<&str> {
        let end = rest.len().checked_sub(suffix_len + 1)?;
        (rest.as_bytes().get(end) == Some(&b'/')).then(|| &rest[..end])
    };
    let segments: Vec<&str> = rest.rsplitn(4, '/').collect();
    match segments.as_slice() {
        ["list", "tags", ..] => Some(Endpoint::Tags(name_before("tags/list".len())?)),
        [reference, "manifests", ..] => Some(Endpoint::Manifest(
            name_before("manifests/".len() + reference.len())?,
            reference,
        )),
        ["", "uploads", "blobs", ..] => {
            Some(Endpoint::UploadStart(name_before("blobs/uploads/".len())?))
        }
        ["uploads", "blobs", ..] => {
            Some(Endpoint::UploadStart(name_before("blobs/uploads".len())?))
        }
        [id, "uploads", "blobs", ..] => Some(Endpoint::Upload(
            name_before("blobs/uploads/".len() + id.len())?,
            id,
        )),
        [digest, "blobs", ..] => Some(Endpoint::Blob(
            name_before("blobs/".len() + digest.len())?,
            digest,
        )),
        [digest, "referrers", ..] => Some(Endpoint::Referrers(
            name_before("referrers/".len() + digest.len())?,
            digest,
        )),
        _ => None,
    }
}

fn header_value(value: impl AsRef<str>) -> HeaderValue {
    // Every value built here is from validated names, digests and numbers.
    HeaderValue::from_str(value.as_ref()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

fn repo(name: &str) -> Result<RepoName, ApiError> {
    RepoName::parse(name).ok_or_else(|| {
        ApiError::new(
            Code::NameInvalid,
            format!("invalid repository name {:?}", truncate(name)),
        )
    })
}

fn truncate(text: &str) -> &str {
    let mut end = text.len().min(128);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

fn digest(text: &str) -> Result<Digest, ApiError> {
    Digest::parse(text).map_err(|e| {
        let message = match e {
            DigestError::Malformed => format!("invalid digest {:?}", truncate(text)),
            DigestError::Unsupported => {
                format!(
                    "unsupported digest algorithm in {:?}: use sha256",
                    truncate(text)
                )
            }
        };
        ApiError::new(Code::DigestInvalid, message)
    })
}

fn layer_key(repo: &RepoName, digest: &Digest) -> String {
    format!("{repo}/_layers/{}", digest.hex())
}
fn manifest_key(repo: &RepoName, digest: &Digest) -> String {
    format!("{repo}/_manifests/{}", digest.hex())
}
fn tag_key(repo: &RepoName, tag: &str) -> String {
    format!("{repo}/_tags/{tag}")
}
fn referrer_key(repo: &RepoName, subject: &Digest, digest: &Digest) -> String {
    format!("{repo}/_referrers/{}/{}", subject.hex(), digest.hex())
}

/// Parses `Range: bytes=a-b | a- | -n` against a blob of `size` bytes (one range only).
fn parse_range(value: &str, size: u64) -> Option<Result<(u64, u64), ()>> {
    let spec = value.trim().strip_prefix("bytes=")?;
    if spec.contains(',') {
        return None; // multiple ranges: serve the whole blob
    }
    let (start, end) = spec.split_once('-')?;
    let (start, end) = (start.trim(), end.trim());
    let range = if start.is_empty() {
        let suffix: u64 = end.parse().ok()?;
        if suffix == 0 {
            return Some(Err(()));
        }
        (size.saturating_sub(suffix), size.checked_sub(1)?)
    } else {
        let start: u64 = start.parse().ok()?;
        let end: u64 = if end.is_empty() {
            size.saturating_sub(1)
        } else {
            end.parse::<u64>().ok()?.min(size.saturating_sub(1))
        };
        if start >= size || end < start {
            return Some(Err(()));
        }
        (start, end)
    };
    Some(Ok(range))
}

/// `Content-Range` of an upload chunk: `<start>-<end>` (also `bytes <start>-<end>/<total>`).
fn parse_content_range(value: &str) -> Option<(u64, u64)> {
    let value = value.trim();
    let value = value.strip_prefix("bytes ").unwrap_or(value);
    let value = value.split('/').next()?;
    let (start, end) = value.split_once('-')?;
    let (start, end) = (start.trim().parse().ok()?, end.trim().parse().ok()?);
    (end >= start).then_some((start, end))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

impl Registry {
    pub fn new(
        storage: Arc<dyn Storage>,
        config: RegistryConfig,
        auth: Option<Auth>,
        metrics: Metrics,
    ) -> Registry {
        let secure = config.tls.is_some();
        Registry {
            storage,
            config,
            auth,
            uploads: Mutex::new(HashMap::new()),
            metrics,
            secure,
        }
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/token", axum::routing::get(token))
            .fallback(dispatch)
            .with_state(self)
    }

    async fn authorize(
        &self,
        headers: &HeaderMap,
        resource: Resource<'_>,
        action: Action,
    ) -> Result<(), ApiError> {
        match &self.auth {
            Some(auth) => auth.authorize(headers, resource, action, self.secure).await,
            None => Ok(()),
        }
    }

    async fn handle(
        &self,
        method: &Method,
        endpoint: &Endpoint<'_>,
        params: Params,
        headers: &HeaderMap,
        body: Body,
    ) -> ApiResult {
        let action = match *method {
            Method::GET | Method::HEAD => Action::Pull,
            Method::DELETE => Action::Delete,
            _ => Action::Push,
        };
        let head = *method == Method::HEAD;
        match *endpoint {
            Endpoint::Base => {
                self.authorize(headers, Resource::Base, action).await?;
                match *method {
                    Method::GET | Method::HEAD => {
                        Ok(json_response(StatusCode::OK, "{}".into(), head))
                    }
                    _ => Err(unsupported(method)),
                }
            }
            Endpoint::Catalog => {
                self.authorize(headers, Resource::Catalog, action).await?;
                match *method {
                    Method::GET | Method::HEAD => self.catalog(params, head).await,
                    _ => Err(unsupported(method)),
                }
            }
            Endpoint::Tags(name) => {
                let repo = self.open_repository(name, headers, action).await?;
                match *method {
                    Method::GET | Method::HEAD => self.tags(&repo, params, head).await,
                    _ => Err(unsupported(method)),
                }
            }
            Endpoint::Manifest(name, reference) => {
                let repo = self.open_repository(name, headers, action).await?;
                match *method {
                    Method::GET | Method::HEAD => self.get_manifest(&repo, reference, head).await,
                    Method::PUT => self.put_manifest(&repo, reference, headers, body).await,
                    Method::DELETE => self.delete_manifest(&repo, reference).await,
                    _ => Err(unsupported(method)),
                }
            }
            Endpoint::Blob(name, digest_text) => {
                let repo = self.open_repository(name, headers, action).await?;
                let digest = digest(digest_text)?;
                match *method {
                    Method::GET | Method::HEAD => {
                        self.get_blob(&repo, &digest, headers, head).await
                    }
                    Method::DELETE => self.delete_blob(&repo, &digest).await,
                    _ => Err(unsupported(method)),
                }
            }
            Endpoint::UploadStart(name) => {
                let repo = self.open_repository(name, headers, action).await?;
                match *method {
                    Method::POST => self.start_upload(&repo, params, headers, body).await,
                    _ => Err(unsupported(method)),
                }
            }
            Endpoint::Upload(name, id) => {
                // Every step of an upload, its status and its cancellation included, is
                // part of pushing.
                let repo = self.open_repository(name, headers, Action::Push).await?;
                match *method {
                    Method::GET => self.upload_status(&repo, id).await,
                    Method::PATCH => self.patch_upload(&repo, id, headers, body).await,
                    Method::PUT => self.finish_upload(&repo, id, params, headers, body).await,
                    Method::DELETE => self.cancel_upload(&repo, id).await,
                    _ => Err(unsupported(method)),
                }
            }
            Endpoint::Referrers(name, digest_text) => {
                let repo = self.open_repository(name, headers, action).await?;
                let digest = digest(digest_text)?;
                match *method {
                    Method::GET | Method::HEAD => {
                        self.referrers(&repo, &digest, params, head).await
                    }
                    _ => Err(unsupported(method)),
                }
            }
        }
    }

    /// The validated name of a repository the request may act on.
    async fn open_repository(
        &self,
        name: &str,
        headers: &HeaderMap,
        action: Action,
    ) -> Result<RepoName, ApiError> {
        let repo = repo(name)?;
        self.authorize(headers, Resource::Repository(repo.as_str()), action)
            .await?;
        Ok(repo)
    }

    async fn repository_exists(&self, repo: &RepoName) -> Result<bool, ApiError> {
        let entries = self.storage.meta_list(repo.as_str()).await?;
        Ok(entries.iter().any(|e| e == "_manifests" || e == "_layers"))
    }

    // --- catalog and tags -------------------------------------------------------------

    async fn catalog(&self, params: Params, head: bool) -> ApiResult {
        let repositories = self.storage.repositories().await?;
        let (page, next) = paginate(repositories, &params)?;
        let mut response = json_response(
            StatusCode::OK,
            serde_json::json!({ "repositories": page }).to_string(),
            head,
        );
        if let Some((n, last)) = next {
            response.headers_mut().insert(
                header::LINK,
                header_value(format!("</v2/_catalog?n={n}&last={last}>; rel=\"next\"")),
            );
        }
        Ok(response)
    }

    async fn tags(&self, repo: &RepoName, params: Params, head: bool) -> ApiResult {
        if !self.repository_exists(repo).await? {
            return Err(name_unknown(repo));
        }
        let tags = self
            .storage
            .meta_list(&format!("{repo}/_tags"))
            .await?
            .into_iter()
            .filter(|t| names::is_tag(t))
            .collect();
        let (page, next) = paginate(tags, &params)?;
        let mut response = json_response(
            StatusCode::OK,
            serde_json::json!({ "name": repo.as_str(), "tags": page }).to_string(),
            head,
        );
        if let Some((n, last)) = next {
            response.headers_mut().insert(
                header::LINK,
                header_value(format!(
                    "</v2/{repo}/tags/list?n={n}&last={last}>; rel=\"next\""
                )),
            );
        }
        Ok(response)
    }

    // --- manifests --------------------------------------------------------------------

    /// The digest a tag or digest reference names, if the repository has it.
    async fn resolve(&self, repo: &RepoName, reference: &str) -> Result<Digest, ApiError> {
        let unknown = || {
            ApiError::new(
                Code::ManifestUnknown,
                format!(
                    "manifest {:?} is not in repository {repo}",
                    truncate(reference)
                ),
            )
        };
        let digest = if reference.contains(':') {
            digest(reference)?
        } else if names::is_tag(reference) {
            let stored = self
                .storage
                .meta_get(&tag_key(repo, reference))
                .await?
                .ok_or_else(unknown)?;
            Digest::parse(String::from_utf8_lossy(&stored).trim()).map_err(|_| unknown())?
        } else {
            return Err(ApiError::new(
                Code::ManifestInvalid,
                format!("{:?} is neither a tag nor a digest", truncate(reference)),
            ));
        };
        Ok(digest)
    }

    /// The media type and bytes of a manifest in `repo`.
    async fn load_manifest(
        &self,
        repo: &RepoName,
        digest: &Digest,
    ) -> Result<Option<(String, Vec<u8>)>, ApiError> {
        let Some(media_type) = self.storage.meta_get(&manifest_key(repo, digest)).await? else {
            return Ok(None);
        };
        let Some(bytes) = self
            .storage
            .blob_read_small(digest, self.config.max_manifest_bytes)
            .await?
        else {
            return Ok(None);
        };
        Ok(Some((
            String::from_utf8_lossy(&media_type).into_owned(),
            bytes,
        )))
    }

    async fn get_manifest(&self, repo: &RepoName, reference: &str, head: bool) -> ApiResult {
        let digest = self.resolve(repo, reference).await?;
        let Some((media_type, bytes)) = self.load_manifest(repo, &digest).await? else {
            return Err(ApiError::new(
                Code::ManifestUnknown,
                format!(
                    "manifest {:?} is not in repository {repo}",
                    truncate(reference)
                ),
            ));
        };
        let builder = Response::builder()
            .status(StatusCode::OK)
            .header(header::CONTENT_TYPE, header_value(&media_type))
            .header(header::CONTENT_LENGTH, bytes.len())
            .header("Docker-Content-Digest", header_value(digest.to_string()))
            .header(header::ETAG, header_value(format!("\"{digest}\"")));
        if head {
            return Ok(builder.body(Body::empty()).unwrap_or_default());
        }
        self.metrics.bytes_sent.inc_by(bytes.len() as u64);
        Ok(builder.body(Body::from(bytes)).unwrap_or_default())
    }

    async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> ApiResult {
        let limit = self.config.max_manifest_bytes;
        let too_large = || {
            ApiError::new(
                Code::SizeInvalid,
                format!("manifest is larger than {limit} bytes"),
            )
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        };
        if content_length(headers).is_some_and(|len| len > limit) {
            return Err(too_large());
        }
        let (tag, expected) = if reference.contains(':') {
            (None, Some(digest(reference)?))
        } else if names::is_tag(reference) {
            (Some(reference), None)
        } else {
            return Err(ApiError::new(
                Code::ManifestInvalid,
                format!("{:?} is neither a tag nor a digest", truncate(reference)),
            ));
        };
        let bytes = axum::body::to_bytes(body, usize::try_from(limit).unwrap_or(usize::MAX))
            .await
            .map_err(|_| too_large())?;
        self.metrics.bytes_received.inc_by(bytes.len() as u64);
        let content_type = headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .map(|v| v.split(';').next().unwrap_or(v).trim().to_owned())
            .unwrap_or_default();
        let manifest = Manifest::parse(&content_type, &bytes)
            .map_err(|message| ApiError::new(Code::ManifestInvalid, message))?;
        let digest = Digest::of(&bytes);
        if let Some(expected) = &expected
            && *expected != digest
        {
            return Err(ApiError::new(
                Code::DigestInvalid,
                format!("manifest digest is {digest}, not {expected} as the reference says"),
            ));
        }
        for blob in &manifest.blobs {
            let linked = self
                .storage
                .meta_get(&layer_key(repo, blob))
                .await?
                .is_some();
            if !linked || self.storage.blob_size(blob).await?.is_none() {
                return Err(ApiError::new(
                    Code::ManifestBlobUnknown,
                    format!("blob {blob} is not in repository {repo}: push it first"),
                ));
            }
        }
        for child in &manifest.children {
            if self
                .storage
                .meta_get(&manifest_key(repo, child))
                .await?
                .is_none()
            {
                return Err(ApiError::new(
                    Code::ManifestBlobUnknown,
                    format!("manifest {child} is not in repository {repo}: push it first"),
                ));
            }
        }
        self.storage.blob_write_small(&digest, &bytes).await?;
        self.storage
            .meta_put(&manifest_key(repo, &digest), manifest.media_type.as_bytes())
            .await?;
        if let Some(subject) = &manifest.subject {
            let descriptor = Descriptor {
                media_type: manifest.media_type.clone(),
                digest: digest.to_string(),
                size: i64::try_from(bytes.len()).unwrap_or(i64::MAX),
                artifact_type: manifest.artifact_type.clone(),
                annotations: manifest.annotations.clone(),
                platform: None,
            };
            let json = serde_json::to_vec(&descriptor).unwrap_or_default();
            self.storage
                .meta_put(&referrer_key(repo, subject, &digest), &json)
                .await?;
        }
        if let Some(tag) = tag {
            self.storage
                .meta_put(&tag_key(repo, tag), digest.to_string().as_bytes())
                .await?;
        }
        info!(repository = %repo, %digest, reference, "manifest pushed");
        let mut response = Response::builder()
            .status(StatusCode::CREATED)
            .header(
                header::LOCATION,
                header_value(format!("/v2/{repo}/manifests/{digest}")),
            )
            .header("Docker-Content-Digest", header_value(digest.to_string()))
            .header(header::CONTENT_LENGTH, 0);
        if let Some(subject) = &manifest.subject {
            response = response.header("OCI-Subject", header_value(subject.to_string()));
        }
        Ok(response.body(Body::empty()).unwrap_or_default())
    }

    async fn delete_manifest(&self, repo: &RepoName, reference: &str) -> ApiResult {
        if !self.config.delete {
            return Err(deletes_disabled());
        }
        if !reference.contains(':') {
            if !names::is_tag(reference) {
                return Err(ApiError::new(Code::ManifestInvalid, "invalid tag"));
            }
            if !self.storage.meta_delete(&tag_key(repo, reference)).await? {
                return Err(ApiError::new(
                    Code::ManifestUnknown,
                    format!("tag {reference:?} is not in repository {repo}"),
                ));
            }
            return Ok(accepted());
        }
        let digest = digest(reference)?;
        let Some((media_type, bytes)) = self.load_manifest(repo, &digest).await? else {
            return Err(ApiError::new(
                Code::ManifestUnknown,
                format!("manifest {digest} is not in repository {repo}"),
            ));
        };
        // Tags first: a tag must never point at a manifest that is gone.
        let tags = self.storage.meta_list(&format!("{repo}/_tags")).await?;
        for tag in tags {
            let key = tag_key(repo, &tag);
            if let Some(target) = self.storage.meta_get(&key).await?
                && String::from_utf8_lossy(&target).trim() == digest.to_string()
            {
                self.storage.meta_delete(&key).await?;
            }
        }
        if let Some(subject) = Manifest::parse_stored(&media_type, &bytes).and_then(|m| m.subject) {
            self.storage
                .meta_delete(&referrer_key(repo, &subject, &digest))
                .await?;
        }
        self.storage
            .meta_delete(&manifest_key(repo, &digest))
            .await?;
        info!(repository = %repo, %digest, "manifest deleted");
        Ok(accepted())
    }

    async fn referrers(
        &self,
        repo: &RepoName,
        subject: &Digest,
        params: Params,
        head: bool,
    ) -> ApiResult {
        let prefix = format!("{repo}/_referrers/{}", subject.hex());
        let mut manifests = Vec::new();
        for entry in self.storage.meta_list(&prefix).await? {
            let Some(json) = self.storage.meta_get(&format!("{prefix}/{entry}")).await? else {
                continue;
            };
            let Ok(descriptor) = serde_json::from_slice::<Descriptor>(&json) else {
                warn!(repository = %repo, entry, "skipping an unreadable referrer entry");
                continue;
            };
            if let Some(filter) = &params.artifact_type
                && descriptor.artifact_type.as_deref() != Some(filter.as_str())
            {
                continue;
            }
            manifests.push(descriptor);
        }
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": manifest::OCI_INDEX,
            "manifests": manifests,
        });
        let mut response = json_response(StatusCode::OK, body.to_string(), head);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(manifest::OCI_INDEX),
        );
        if params.artifact_type.is_some() {
            response.headers_mut().insert(
                "OCI-Filters-Applied",
                HeaderValue::from_static("artifactType"),
            );
        }
        Ok(response)
    }

    // --- blobs ------------------------------------------------------------------------

    async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        headers: &HeaderMap,
        head: bool,
    ) -> ApiResult {
        let unknown = || {
            ApiError::new(
                Code::BlobUnknown,
                format!("blob {digest} is not in repository {repo}"),
            )
        };
        if self
            .storage
            .meta_get(&layer_key(repo, digest))
            .await?
            .is_none()
        {
            return Err(unknown());
        }
        let size = self.storage.blob_size(digest).await?.ok_or_else(unknown)?;
        let range = headers
            .get(header::RANGE)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| parse_range(v, size));
        let (status, start, end) = match range {
            None => (StatusCode::OK, 0, size),
            Some(Ok((first, last))) => (StatusCode::PARTIAL_CONTENT, first, last + 1),
            Some(Err(())) => {
                return Err(ApiError::new(Code::BlobUnknown, "range not satisfiable")
                    .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
                    .with_header(
                        header::CONTENT_RANGE,
                        header_value(format!("bytes */{size}")),
                    ));
            }
        };
        let len = end - start;
        let mut builder = Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/octet-stream")
            .header(header::CONTENT_LENGTH, len)
            .header(header::ACCEPT_RANGES, "bytes")
            .header("Docker-Content-Digest", header_value(digest.to_string()))
            .header(header::ETAG, header_value(format!("\"{digest}\"")))
            .header(header::CACHE_CONTROL, "max-age=31536000");
        if status == StatusCode::PARTIAL_CONTENT {
            builder = builder.header(
                header::CONTENT_RANGE,
                header_value(format!("bytes {start}-{}/{size}", end - 1)),
            );
        }
        if head {
            // A client told "it exists" may reference it next: keep it out of GC's reach.
            self.storage.blob_touch(digest).await?;
            return Ok(builder.body(Body::empty()).unwrap_or_default());
        }
        let reader = self.storage.blob_read(digest, start, len).await?;
        self.metrics.bytes_sent.inc_by(len);
        let stream = tokio_util::io::ReaderStream::with_capacity(reader, 256 * 1024);
        Ok(builder.body(Body::from_stream(stream)).unwrap_or_default())
    }

    async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> ApiResult {
        if !self.config.delete {
            return Err(deletes_disabled());
        }
        // The repository stops serving it; the bytes go at the next garbage collection
        // if no other repository links them.
        if !self.storage.meta_delete(&layer_key(repo, digest)).await? {
            return Err(ApiError::new(
                Code::BlobUnknown,
                format!("blob {digest} is not in repository {repo}"),
            ));
        }
        Ok(accepted())
    }

    // --- uploads ----------------------------------------------------------------------

    async fn start_upload(
        &self,
        repo: &RepoName,
        params: Params,
        headers: &HeaderMap,
        body: Body,
    ) -> ApiResult {
        if let Some(mount) = &params.mount {
            let digest = digest(mount)?;
            let source = match params.from.as_deref().map(RepoName::parse) {
                Some(Some(from)) => {
                    self.authorize(headers, Resource::Repository(from.as_str()), Action::Pull)
                        .await?;
                    self.storage
                        .meta_get(&layer_key(&from, &digest))
                        .await?
                        .is_some()
                }
                Some(None) => false,
                // No `from`: mount any blob this registry has (spec v1.1 allows it).
                None => true,
            };
            if source && self.storage.blob_size(&digest).await?.is_some() {
                self.storage.blob_touch(&digest).await?;
                self.storage
                    .meta_put(&layer_key(repo, &digest), b"")
                    .await?;
                return Ok(blob_created(repo, &digest));
            }
            // Not mountable: fall back to a new upload session, as the spec says.
        }
        let id = format!("{:032x}", rand::random::<u128>());
        self.storage.upload_create(&id, repo.as_str()).await?;
        let upload = Arc::new(tokio::sync::Mutex::new(Upload {
            repo: repo.clone(),
            size: 0,
            hasher: Some(sha2::Sha256::new()),
            started: Instant::now(),
        }));
        self.lock_uploads().insert(id.clone(), Arc::clone(&upload));
        self.metrics.uploads_in_progress.inc();
        match &params.digest {
            // Monolithic: the whole blob in this request.
            Some(expected) => {
                let expected = match digest(expected) {
                    Ok(expected) => expected,
                    Err(e) => {
                        self.discard_upload(&id).await;
                        return Err(e);
                    }
                };
                let mut upload = upload.lock().await;
                if let Err(e) = self
                    .append(&id, &mut upload, content_length(headers), body)
                    .await
                {
                    drop(upload);
                    self.discard_upload(&id).await;
                    return Err(e);
                }
                self.complete(repo, &id, &mut upload, &expected).await
            }
            None => Ok(upload_response(StatusCode::ACCEPTED, repo, &id, 0)),
        }
    }

    fn lock_uploads(
        &self,
    ) -> std::sync::MutexGuard<'_, HashMap<String, Arc<tokio::sync::Mutex<Upload>>>> {
        self.uploads.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The session `id` of `repo`: from memory, or from storage after a restart.
    async fn session(
        &self,
        repo: &RepoName,
        id: &str,
    ) -> Result<Arc<tokio::sync::Mutex<Upload>>, ApiError> {
        let unknown = || {
            ApiError::new(
                Code::BlobUploadUnknown,
                format!("no upload {:?} in repository {repo}", truncate(id)),
            )
        };
        if !names::is_upload_id(id) {
            return Err(unknown());
        }
        let existing = self.lock_uploads().get(id).cloned();
        if let Some(upload) = existing {
            if upload.lock().await.repo != *repo {
                return Err(unknown());
            }
            return Ok(upload);
        }
        // An upload from before a restart: it stays its repository's alone. One started
        // by a strait that kept no record goes to the first repository that asks.
        match self.storage.upload_repo(id).await?.ok_or_else(unknown)? {
            Some(owner) if owner == repo.as_str() => {}
            Some(_) => return Err(unknown()),
            // Only one claim can win: the record is created, never overwritten.
            None => {
                if !self.storage.upload_claim(id, repo.as_str()).await? {
                    return Err(unknown());
                }
            }
        }
        let size = self.storage.upload_size(id).await?.ok_or_else(unknown)?;
        let upload = Arc::new(tokio::sync::Mutex::new(Upload {
            repo: repo.clone(),
            size,
            hasher: None,
            started: Instant::now(),
        }));
        let (upload, inserted) = match self.lock_uploads().entry(id.to_owned()) {
            std::collections::hash_map::Entry::Occupied(entry) => (Arc::clone(entry.get()), false),
            std::collections::hash_map::Entry::Vacant(entry) => {
                // Counted again, as it will be uncounted when it ends.
                self.metrics.uploads_in_progress.inc();
                (Arc::clone(entry.insert(upload)), true)
            }
        };
        if !inserted && upload.lock().await.repo != *repo {
            return Err(unknown());
        }
        // Completed or cancelled by another request since it was looked up: the entry
        // would be left behind for an upload that no longer exists.
        if inserted && self.storage.upload_size(id).await?.is_none() {
            let mut uploads = self.lock_uploads();
            if uploads.get(id).is_some_and(|u| Arc::ptr_eq(u, &upload)) {
                uploads.remove(id);
                self.metrics.uploads_in_progress.dec();
            }
            return Err(unknown());
        }
        Ok(upload)
    }

    async fn discard_upload(&self, id: &str) {
        // Storage first: a `session` that misses the map entry and looks at storage then
        // finds the upload gone (its check after inserting relies on this order).
        if let Err(error) = self.storage.upload_delete(id).await {
            warn!(%error, id, "cannot remove an upload");
        }
        if self.lock_uploads().remove(id).is_some() {
            self.metrics.uploads_in_progress.dec();
        }
    }

    /// Appends the request body to the upload, hashing it on the way; `declared` is the
    /// length the client announced (Content-Length, or the Content-Range span). On any
    /// failure the upload is rolled back to where it was, so the client can retry the chunk.
    async fn append(
        &self,
        id: &str,
        upload: &mut Upload,
        declared: Option<u64>,
        body: Body,
    ) -> Result<(), ApiError> {
        let start_size = upload.size;
        let saved_hasher = upload.hasher.clone();
        let limit = self.config.max_blob_bytes;
        if declared.is_some_and(|len| start_size.saturating_add(len) > limit) {
            return Err(blob_too_large(limit));
        }
        // Opened on the first byte: a PUT that only completes an upload writes nothing.
        let mut writer = None;
        // Large uploads are synced to disk while they stream (one sync in flight at a
        // time), so the sync that must precede promotion finds little left to write.
        let mut unsynced = 0u64;
        let mut syncing: Option<tokio::task::JoinHandle<std::io::Result<()>>> = None;
        let mut stream = body.into_data_stream();
        let result: Result<(), ApiError> = async {
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(|e| {
                    ApiError::new(Code::BlobUploadInvalid, format!("reading the body: {e}"))
                })?;
                if chunk.is_empty() {
                    continue;
                }
                if upload.size + chunk.len() as u64 > limit {
                    return Err(blob_too_large(limit));
                }
                if let Some(hasher) = &mut upload.hasher {
                    hasher.update(&chunk);
                }
                let out = match &mut writer {
                    Some(out) => out,
                    None => writer.insert(tokio::io::BufWriter::with_capacity(
                        1 << 20,
                        self.storage.upload_append(id).await?,
                    )),
                };
                out.write_all(&chunk)
                    .await
                    .map_err(|e| ApiError::internal("writing an upload", e))?;
                upload.size += chunk.len() as u64;
                unsynced += chunk.len() as u64;
                if unsynced >= SYNC_EVERY && syncing.as_ref().is_none_or(|s| s.is_finished()) {
                    out.flush()
                        .await
                        .map_err(|e| ApiError::internal("writing an upload", e))?;
                    let storage = Arc::clone(&self.storage);
                    let id = id.to_owned();
                    syncing = Some(tokio::spawn(async move { storage.upload_sync(&id).await }));
                    unsynced = 0;
                }
            }
            if let Some(out) = &mut writer {
                out.flush()
                    .await
                    .map_err(|e| ApiError::internal("writing an upload", e))?;
            }
            if let Some(declared) = declared
                && upload.size - start_size != declared
            {
                return Err(ApiError::new(
                    Code::BlobUploadInvalid,
                    format!(
                        "received {} bytes, Content-Length said {declared}",
                        upload.size - start_size
                    ),
                ));
            }
            Ok(())
        }
        .await;
        self.metrics.bytes_received.inc_by(upload.size - start_size);
        if let Err(error) = result {
            drop(writer);
            upload.size = start_size;
            upload.hasher = saved_hasher;
            self.storage.upload_truncate(id, start_size).await?;
            return Err(error);
        }
        Ok(())
    }

    /// Verifies the digest and publishes the blob; on mismatch nothing is kept.
    async fn complete(
        &self,
        repo: &RepoName,
        id: &str,
        upload: &mut Upload,
        expected: &Digest,
    ) -> ApiResult {
        let actual = match upload.hasher.take() {
            Some(hasher) => Digest::from_hasher(hasher),
            None => self.rehash(id).await?,
        };
        if actual != *expected {
            self.discard_upload(id).await;
            return Err(ApiError::new(
                Code::DigestInvalid,
                format!("uploaded content has digest {actual}, not {expected}"),
            ));
        }
        self.storage.upload_promote(id, expected).await?;
        self.storage
            .meta_put(&layer_key(repo, expected), b"")
            .await?;
        if self.lock_uploads().remove(id).is_some() {
            self.metrics.uploads_in_progress.dec();
        }
        self.metrics
            .upload_duration
            .observe(upload.started.elapsed().as_secs_f64());
        Ok(blob_created(repo, expected))
    }

    async fn rehash(&self, id: &str) -> Result<Digest, ApiError> {
        let mut reader = self.storage.upload_read(id).await?;
        let mut hasher = sha2::Sha256::new();
        let mut buffer = vec![0; 1 << 20];
        loop {
            let n = reader.read(&mut buffer).await?;
            if n == 0 {
                break;
            }
            hasher.update(&buffer[..n]);
        }
        Ok(Digest::from_hasher(hasher))
    }

    async fn upload_status(&self, repo: &RepoName, id: &str) -> ApiResult {
        let upload = self.session(repo, id).await?;
        let size = upload.lock().await.size;
        Ok(upload_response(StatusCode::NO_CONTENT, repo, id, size))
    }

    async fn patch_upload(
        &self,
        repo: &RepoName,
        id: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> ApiResult {
        let upload = self.session(repo, id).await?;
        let mut upload = upload.lock().await;
        if let Some(value) = headers.get(header::CONTENT_RANGE) {
            let range = value.to_str().ok().and_then(parse_content_range);
            let Some((start, end)) = range else {
                return Err(ApiError::new(
                    Code::BlobUploadInvalid,
                    "Content-Range must be <start>-<end>",
                ));
            };
            if start != upload.size {
                // Read the chunk away so the client sees the 416 rather than a reset.
                drain(body, DRAIN_LIMIT).await;
                let mut error = ApiError::new(
                    Code::BlobUploadInvalid,
                    format!(
                        "chunk starts at {start}; the upload has {} bytes",
                        upload.size
                    ),
                )
                .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
                .with_header(
                    header::LOCATION,
                    header_value(format!("/v2/{repo}/blobs/uploads/{id}")),
                );
                if upload.size > 0 {
                    error = error.with_header(
                        header::RANGE,
                        header_value(format!("0-{}", upload.size - 1)),
                    );
                }
                return Err(error);
            }
            let chunk_len = end - start + 1;
            if content_length(headers).is_some_and(|len| len != chunk_len) {
                return Err(ApiError::new(
                    Code::BlobUploadInvalid,
                    "Content-Length does not match Content-Range",
                ));
            }
            self.append(id, &mut upload, Some(chunk_len), body).await?;
        } else {
            self.append(id, &mut upload, content_length(headers), body)
                .await?;
        }
        Ok(upload_response(StatusCode::ACCEPTED, repo, id, upload.size))
    }

    async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &str,
        params: Params,
        headers: &HeaderMap,
        body: Body,
    ) -> ApiResult {
        let Some(expected) = &params.digest else {
            return Err(ApiError::new(
                Code::DigestInvalid,
                "completing an upload needs ?digest=",
            ));
        };
        let expected = digest(expected)?;
        let upload = self.session(repo, id).await?;
        let mut upload = upload.lock().await;
        if let Some(value) = headers.get(header::CONTENT_RANGE) {
            let range = value.to_str().ok().and_then(parse_content_range);
            if range.is_none_or(|(start, _)| start != upload.size) {
                drain(body, DRAIN_LIMIT).await;
                return Err(ApiError::new(
                    Code::BlobUploadInvalid,
                    "the final chunk does not start where the upload ends",
                )
                .with_status(StatusCode::RANGE_NOT_SATISFIABLE));
            }
        }
        self.append(id, &mut upload, content_length(headers), body)
            .await?;
        self.complete(repo, id, &mut upload, &expected).await
    }

    async fn cancel_upload(&self, repo: &RepoName, id: &str) -> ApiResult {
        let upload = self.session(repo, id).await?;
        let _guard = upload.lock().await;
        self.discard_upload(id).await;
        Ok(Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Body::empty())
            .unwrap_or_default())
    }

    /// Removes uploads that received nothing for `upload_ttl`.
    pub async fn expire_uploads(&self) -> std::io::Result<usize> {
        let ttl = self.config.upload_ttl;
        let mut removed = 0;
        for (id, modified) in self.storage.upload_list().await? {
            if modified.elapsed().unwrap_or_default() > ttl {
                let session = self.lock_uploads().get(&id).cloned();
                if let Some(session) = session {
                    let _guard = session.lock().await;
                    self.discard_upload(&id).await;
                } else {
                    self.storage.upload_delete(&id).await?;
                }
                removed += 1;
            }
        }
        Ok(removed)
    }

    /// Rescans storage for the size gauges.
    pub async fn measure_storage(&self) -> std::io::Result<()> {
        let blobs = self.storage.blob_list().await?;
        self.metrics
            .storage_bytes
            .set(i64::try_from(blobs.iter().map(|b| b.size).sum::<u64>()).unwrap_or(i64::MAX));
        self.metrics
            .blobs
            .set(i64::try_from(blobs.len()).unwrap_or(i64::MAX));
        Ok(())
    }

    /// Background upkeep: expire stale uploads and refresh storage gauges, periodically.
    pub async fn run_upkeep(self: Arc<Self>) {
        let period =
            (self.config.upload_ttl / 4).clamp(Duration::from_secs(1), Duration::from_secs(300));
        loop {
            match self.expire_uploads().await {
                Ok(0) => {}
                Ok(n) => info!(uploads = n, "removed stale uploads"),
                Err(error) => warn!(%error, "cannot expire stale uploads"),
            }
            if let Err(error) = self.measure_storage().await {
                warn!(%error, "cannot measure registry storage");
            }
            tokio::time::sleep(period).await;
        }
    }
}

/// Bytes written to an upload between background syncs.
const SYNC_EVERY: u64 = 8 << 20;

/// How much of a refused request's body is read away so that the client, still sending,
/// gets the error response instead of a connection reset.
const DRAIN_LIMIT: u64 = 64 << 20;

async fn drain(body: Body, limit: u64) {
    let mut stream = body.into_data_stream();
    let mut read = 0u64;
    while read < limit {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(Ok(chunk))) => read += chunk.len() as u64,
            _ => break,
        }
    }
}

/// One page of a sorted listing, and the `n` and `last` of the next page if any.
type Page = (Vec<String>, Option<(usize, String)>);

fn paginate(mut entries: Vec<String>, params: &Params) -> Result<Page, ApiError> {
    entries.sort();
    if let Some(last) = &params.last {
        entries.retain(|e| e.as_str() > last.as_str());
    }
    let n = match &params.n {
        None => MAX_PAGE,
        Some(n) => n.parse::<usize>().map_err(|_| {
            ApiError::new(
                Code::SizeInvalid,
                format!("n={:?} is not a number", truncate(n)),
            )
        })?,
    };
    let n = n.min(MAX_PAGE);
    if entries.len() > n {
        entries.truncate(n);
        let next = entries.last().cloned().map(|last| (n, last));
        Ok((entries, next))
    } else {
        Ok((entries, None))
    }
}

fn json_response(status: StatusCode, body: String, head: bool) -> Response {
    let len = body.len();
    let body = if head {
        Body::empty()
    } else {
        Body::from(body)
    };
    Response::builder()
        .status(status)
        .header(header::CONTENT_TYPE, "application/json")
        .header(header::CONTENT_LENGTH, len)
        .body(body)
        .unwrap_or_default()
}

fn accepted() -> Response {
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default()
}

fn blob_created(repo: &RepoName, digest: &Digest) -> Response {
    Response::builder()
        .status(StatusCode::CREATED)
        .header(
            header::LOCATION,
            header_value(format!("/v2/{repo}/blobs/{digest}")),
        )
        .header("Docker-Content-Digest", header_value(digest.to_string()))
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default()
}

fn upload_response(status: StatusCode, repo: &RepoName, id: &str, size: u64) -> Response {
    let range = format!("0-{}", size.saturating_sub(1));
    Response::builder()
        .status(status)
        .header(
            header::LOCATION,
            header_value(format!("/v2/{repo}/blobs/uploads/{id}")),
        )
        .header(header::RANGE, header_value(range))
        .header("Docker-Upload-UUID", header_value(id))
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default()
}

fn blob_too_large(limit: u64) -> ApiError {
    ApiError::new(
        Code::SizeInvalid,
        format!("blob is larger than {limit} bytes"),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

fn name_unknown(repo: &RepoName) -> ApiError {
    ApiError::new(Code::NameUnknown, format!("repository {repo} is not known"))
}

fn deletes_disabled() -> ApiError {
    ApiError::new(Code::Unsupported, "deletes are disabled on this registry")
}

fn unsupported(method: &Method) -> ApiError {
    ApiError::new(Code::Unsupported, format!("{method} is not supported here"))
}

async fn dispatch(
    State(registry): State<Arc<Registry>>,
    method: Method,
    uri: Uri,
    params: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let started = Instant::now();
    let endpoint = route(uri.path());
    let label = endpoint.as_ref().map_or("other", Endpoint::label);
    let mut response = match (endpoint, params) {
        (None, _) => ApiError::new(Code::NameInvalid, "not a registry API path")
            .with_status(StatusCode::NOT_FOUND)
            .into_response(),
        (Some(_), Err(_)) => ApiError::new(Code::Unsupported, "malformed query string")
            .with_status(StatusCode::BAD_REQUEST)
            .into_response(),
        (Some(endpoint), Ok(Query(params))) => registry
            .handle(&method, &endpoint, params, &headers, body)
            .await
            .unwrap_or_else(IntoResponse::into_response),
    };
    response.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
    let method_label = match method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "other",
    };
    registry
        .metrics
        .requests
        .with_label_values(&[label, method_label, response.status().as_str()])
        .inc();
    registry
        .metrics
        .request_duration
        .with_label_values(&[label])
        .observe(started.elapsed().as_secs_f64());
    response
}

async fn token(State(registry): State<Arc<Registry>>, uri: Uri, headers: HeaderMap) -> Response {
    let Some(auth) = &registry.auth else {
        return ApiError::new(Code::Unsupported, "this registry has no authentication")
            .with_status(StatusCode::NOT_FOUND)
            .into_response();
    };
    // `scope` may repeat: parse the query by hand rather than into a map.
    let scopes: Vec<String> = uri
        .query()
        .unwrap_or("")
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .filter(|(key, _)| *key == "scope")
        .filter_map(|(_, value)| urlencoding_decode(value))
        .collect();
    let result = auth.issue_token(&headers, &scopes).await;
    registry
        .metrics
        .requests
        .with_label_values(&["token", "GET", if result.is_ok() { "200" } else { "401" }])
        .inc();
    match result {
        Ok(body) => axum::Json(body).into_response(),
        Err(error) => error.into_response(),
    }
}

/// Percent-decoding of a query value (`+` is a space).
fn urlencoding_decode(value: &str) -> Option<String> {
    let bytes = value.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = value.get(i + 1..i + 3)?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 2;
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes() {
        let d = "sha256:abc";
        assert_eq!(route("/v2/"), Some(Endpoint::Base));
        assert_eq!(route("/v2"), Some(Endpoint::Base));
        assert_eq!(route("/v2/_catalog"), Some(Endpoint::Catalog));
        assert_eq!(route("/v2/a/b/tags/list"), Some(Endpoint::Tags("a/b")));
        assert_eq!(
            route("/v2/a/manifests/x/manifests/latest"),
            Some(Endpoint::Manifest("a/manifests/x", "latest"))
        );
        assert_eq!(
            route("/v2/a/blobs/uploads/"),
            Some(Endpoint::UploadStart("a"))
        );
        assert_eq!(
            route("/v2/a/blobs/uploads"),
            Some(Endpoint::UploadStart("a"))
        );
        assert_eq!(
            route("/v2/a/b/blobs/uploads/123"),
            Some(Endpoint::Upload("a/b", "123"))
        );
        assert_eq!(
            route(&format!("/v2/a/blobs/{d}")),
            Some(Endpoint::Blob("a", d))
        );
        assert_eq!(
            route(&format!("/v2/a/referrers/{d}")),
            Some(Endpoint::Referrers("a", d))
        );
        assert_eq!(route("/v2/manifests/latest"), None);
        assert_eq!(route("/v2/tags/list"), None);
        assert_eq!(route("/v3/a/tags/list"), None);
        assert_eq!(route("/v2x"), None);
    }

    #[test]
    fn ranges() {
        assert_eq!(parse_range("bytes=0-9", 100), Some(Ok((0, 9))));
        assert_eq!(parse_range("bytes=90-", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=-10", 100), Some(Ok((90, 99))));
        assert_eq!(parse_range("bytes=50-500", 100), Some(Ok((50, 99))));
        assert_eq!(parse_range("bytes=100-", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=5-1", 100), Some(Err(())));
        assert_eq!(parse_range("bytes=0-1,5-6", 100), None);
        assert_eq!(parse_range("items=0-1", 100), None);
        assert_eq!(parse_content_range("0-1023"), Some((0, 1023)));
        assert_eq!(parse_content_range("bytes 10-19/*"), Some((10, 19)));
        assert_eq!(parse_content_range("9-1"), None);
    }

    #[test]
    fn pages() {
        let entries: Vec<String> = ["c", "a", "b", "d"].map(String::from).to_vec();
        let params = Params {
            n: Some("2".into()),
            ..Params::default()
        };
        let (page, next) = paginate(entries.clone(), &params).expect("page");
        assert_eq!(page, ["a", "b"]);
        assert_eq!(next, Some((2, "b".to_owned())));
        let params = Params {
            n: Some("2".into()),
            last: Some("b".into()),
            ..Params::default()
        };
        let (page, next) = paginate(entries, &params).expect("page");
        assert_eq!(page, ["c", "d"]);
        assert_eq!(next, None);
    }
}
