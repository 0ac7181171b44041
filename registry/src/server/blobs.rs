//! Blobs: GET (with a single byte range), HEAD and DELETE.

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;

use crate::error::{ApiError, ErrorCode};
use crate::names::{Digest, RepoName};
use crate::server::parts::{ApiResult, accepted, deletes_disabled, header_value, layer_key};
use crate::server::state::Registry;

impl Registry {
    pub(super) async fn get_blob(
        &self,
        repo: &RepoName,
        digest: &Digest,
        headers: &HeaderMap,
        head: bool,
    ) -> ApiResult {
        let unknown = || {
            ApiError::new(
                ErrorCode::BlobUnknown,
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
                return Err(
                    ApiError::new(ErrorCode::BlobUnknown, "range not satisfiable")
                        .with_status(StatusCode::RANGE_NOT_SATISFIABLE)
                        .with_header(
                            header::CONTENT_RANGE,
                            header_value(format!("bytes */{size}")),
                        ),
                );
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

    pub(super) async fn delete_blob(&self, repo: &RepoName, digest: &Digest) -> ApiResult {
        if !self.config.delete {
            return Err(deletes_disabled());
        }
        // The repository stops serving it; the bytes go at the next garbage collection
        // if no other repository links them.
        if !self.storage.meta_delete(&layer_key(repo, digest)).await? {
            return Err(ApiError::new(
                ErrorCode::BlobUnknown,
                format!("blob {digest} is not in repository {repo}"),
            ));
        }
        Ok(accepted())
    }
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

#[cfg(test)]
mod tests {
    use super::*;

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
    }
}
