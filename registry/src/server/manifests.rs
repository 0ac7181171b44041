//! Manifests by tag or digest (pushed only when everything they reference is in the
//! repository), and the referrers of a manifest.

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use oci::{Blob, Descriptor, MediaType};
use tracing::{info, warn};

use crate::error::{ApiError, ErrorCode};
use crate::manifest::Manifest;
use crate::names::{self, Digest, RepoName};
use crate::server::parts::{
    self, ApiResult, Params, accepted, content_length, deletes_disabled, header_value,
    json_response, layer_key, manifest_key, referrer_key, tag_key, truncate,
};
use crate::server::state::Registry;

impl Registry {
    /// The digest a tag or digest reference names, if the repository has it.
    async fn resolve(&self, repo: &RepoName, reference: &str) -> Result<Digest, ApiError> {
        let unknown = || {
            ApiError::new(
                ErrorCode::ManifestUnknown,
                format!(
                    "manifest {:?} is not in repository {repo}",
                    truncate(reference)
                ),
            )
        };
        let digest = if reference.contains(':') {
            parts::digest(reference)?
        } else if names::is_tag(reference) {
            let stored = self
                .storage
                .meta_get(&tag_key(repo, reference))
                .await?
                .ok_or_else(unknown)?;
            Digest::parse(String::from_utf8_lossy(&stored).trim()).map_err(|_| unknown())?
        } else {
            return Err(ApiError::new(
                ErrorCode::ManifestInvalid,
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

    pub(super) async fn get_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        head: bool,
    ) -> ApiResult {
        let digest = self.resolve(repo, reference).await?;
        let Some((media_type, bytes)) = self.load_manifest(repo, &digest).await? else {
            return Err(ApiError::new(
                ErrorCode::ManifestUnknown,
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

    pub(super) async fn put_manifest(
        &self,
        repo: &RepoName,
        reference: &str,
        headers: &HeaderMap,
        body: Body,
    ) -> ApiResult {
        let limit = self.config.max_manifest_bytes;
        let too_large = || {
            ApiError::new(
                ErrorCode::SizeInvalid,
                format!("manifest is larger than {limit} bytes"),
            )
            .with_status(StatusCode::PAYLOAD_TOO_LARGE)
        };
        if content_length(headers).is_some_and(|len| len > limit) {
            return Err(too_large());
        }
        let (tag, expected) = if reference.contains(':') {
            (None, Some(parts::digest(reference)?))
        } else if names::is_tag(reference) {
            (Some(reference), None)
        } else {
            return Err(ApiError::new(
                ErrorCode::ManifestInvalid,
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
            .map_err(|message| ApiError::new(ErrorCode::ManifestInvalid, message))?;
        let digest = Digest::of(&bytes);
        if let Some(expected) = &expected
            && *expected != digest
        {
            return Err(ApiError::new(
                ErrorCode::DigestInvalid,
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
                    ErrorCode::ManifestBlobUnknown,
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
                    ErrorCode::ManifestBlobUnknown,
                    format!("manifest {child} is not in repository {repo}: push it first"),
                ));
            }
        }
        self.storage.blob_write_small(&digest, &bytes).await?;
        self.storage
            .meta_put(
                &manifest_key(repo, &digest),
                manifest.media_type.as_ref().as_bytes(),
            )
            .await?;
        if let Some(subject) = &manifest.subject {
            let size = u64::try_from(bytes.len()).unwrap_or(u64::MAX);
            let mut descriptor =
                Blob::new(manifest.media_type.clone(), digest.clone(), size).into_descriptor();
            descriptor.set_artifact_type(manifest.artifact_type.clone());
            descriptor.set_annotations(manifest.annotations.clone());
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

    pub(super) async fn delete_manifest(&self, repo: &RepoName, reference: &str) -> ApiResult {
        if !self.config.delete {
            return Err(deletes_disabled());
        }
        if !reference.contains(':') {
            if !names::is_tag(reference) {
                return Err(ApiError::new(ErrorCode::ManifestInvalid, "invalid tag"));
            }
            if !self.storage.meta_delete(&tag_key(repo, reference)).await? {
                return Err(ApiError::new(
                    ErrorCode::ManifestUnknown,
                    format!("tag {reference:?} is not in repository {repo}"),
                ));
            }
            return Ok(accepted());
        }
        let digest = parts::digest(reference)?;
        let Some((media_type, bytes)) = self.load_manifest(repo, &digest).await? else {
            return Err(ApiError::new(
                ErrorCode::ManifestUnknown,
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

    pub(super) async fn referrers(
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
                && descriptor.artifact_type().as_ref().map(AsRef::as_ref) != Some(filter.as_str())
            {
                continue;
            }
            manifests.push(descriptor);
        }
        let body = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": MediaType::ImageIndex,
            "manifests": manifests,
        });
        let mut response = json_response(StatusCode::OK, body.to_string(), head);
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static(oci::media::OCI_INDEX),
        );
        if params.artifact_type.is_some() {
            response.headers_mut().insert(
                "OCI-Filters-Applied",
                HeaderValue::from_static("artifactType"),
            );
        }
        Ok(response)
    }
}
