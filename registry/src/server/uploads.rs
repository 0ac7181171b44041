//! The upload state machine: a session is opened (POST, or a mount that falls back to
//! one), takes chunks in order (PATCH, each where the last ended), and is completed (PUT
//! with the digest) or cancelled (DELETE). Bytes stream to a staging file while they are
//! hashed; the hasher is kept in memory between chunks (an upload found on disk after a
//! restart is re-hashed from its file); only a matching digest promotes the file into
//! the blob store. A failed chunk is rolled back, so the client can send it again.

use std::collections::hash_map::Entry;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use sha2::Digest as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::warn;

use crate::auth::{Action, Resource};
use crate::error::{ApiError, ErrorCode};
use crate::names::{self, Digest, RepoName};
use crate::server::parts::{
    self, ApiResult, DRAIN_LIMIT, Params, blob_created, blob_too_large, content_length, drain,
    header_value, layer_key, truncate, upload_response,
};
use crate::server::state::{Registry, Upload};

/// Bytes written to an upload between background syncs.
const SYNC_EVERY: u64 = 8 << 20;

impl Registry {
    pub(super) async fn start_upload(
        &self,
        repo: &RepoName,
        params: Params,
        headers: &HeaderMap,
        body: Body,
    ) -> ApiResult {
        if let Some(mount) = &params.mount {
            let digest = parts::digest(mount)?;
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
                let expected = match parts::digest(expected) {
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

    /// The session `id` of `repo`: from memory, or from storage after a restart.
    async fn session(
        &self,
        repo: &RepoName,
        id: &str,
    ) -> Result<Arc<tokio::sync::Mutex<Upload>>, ApiError> {
        let unknown = || {
            ApiError::new(
                ErrorCode::BlobUploadUnknown,
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
            Entry::Occupied(entry) => (Arc::clone(entry.get()), false),
            Entry::Vacant(entry) => {
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

    pub(super) async fn discard_upload(&self, id: &str) {
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
                    ApiError::new(
                        ErrorCode::BlobUploadInvalid,
                        format!("reading the body: {e}"),
                    )
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
                    ErrorCode::BlobUploadInvalid,
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
                ErrorCode::DigestInvalid,
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

    pub(super) async fn upload_status(&self, repo: &RepoName, id: &str) -> ApiResult {
        let upload = self.session(repo, id).await?;
        let size = upload.lock().await.size;
        Ok(upload_response(StatusCode::NO_CONTENT, repo, id, size))
    }

    pub(super) async fn patch_upload(
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
                    ErrorCode::BlobUploadInvalid,
                    "Content-Range must be <start>-<end>",
                ));
            };
            if start != upload.size {
                // Read the chunk away so the client sees the 416 rather than a reset.
                drain(body, DRAIN_LIMIT).await;
                let mut error = ApiError::new(
                    ErrorCode::BlobUploadInvalid,
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
                    ErrorCode::BlobUploadInvalid,
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

    pub(super) async fn finish_upload(
        &self,
        repo: &RepoName,
        id: &str,
        params: Params,
        headers: &HeaderMap,
        body: Body,
    ) -> ApiResult {
        let Some(expected) = &params.digest else {
            return Err(ApiError::new(
                ErrorCode::DigestInvalid,
                "completing an upload needs ?digest=",
            ));
        };
        let expected = parts::digest(expected)?;
        let upload = self.session(repo, id).await?;
        let mut upload = upload.lock().await;
        if let Some(value) = headers.get(header::CONTENT_RANGE) {
            let range = value.to_str().ok().and_then(parse_content_range);
            if range.is_none_or(|(start, _)| start != upload.size) {
                drain(body, DRAIN_LIMIT).await;
                return Err(ApiError::new(
                    ErrorCode::BlobUploadInvalid,
                    "the final chunk does not start where the upload ends",
                )
                .with_status(StatusCode::RANGE_NOT_SATISFIABLE));
            }
        }
        self.append(id, &mut upload, content_length(headers), body)
            .await?;
        self.complete(repo, id, &mut upload, &expected).await
    }

    pub(super) async fn cancel_upload(&self, repo: &RepoName, id: &str) -> ApiResult {
        let upload = self.session(repo, id).await?;
        let _guard = upload.lock().await;
        self.discard_upload(id).await;
        Ok(Response::builder()
            .status(StatusCode::NO_CONTENT)
            .body(Body::empty())
            .unwrap_or_default())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_ranges() {
        assert_eq!(parse_content_range("0-1023"), Some((0, 1023)));
        assert_eq!(parse_content_range("bytes 10-19/*"), Some((10, 19)));
        assert_eq!(parse_content_range("9-1"), None);
    }
}
