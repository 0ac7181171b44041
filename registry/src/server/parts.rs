//! What every resource of the API uses: request inputs checked (repository names,
//! digests, lengths), the storage keys of a repository's links, and the response shapes.

use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::Response;
use futures::StreamExt;
use serde::Deserialize;

use crate::error::{ApiError, ErrorCode};
use crate::names::{Digest, DigestError, RepoName};

pub(super) type ApiResult = Result<Response, ApiError>;

/// The query parameters the endpoints read (each its own).
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Params {
    pub(super) digest: Option<String>,
    pub(super) mount: Option<String>,
    pub(super) from: Option<String>,
    pub(super) n: Option<String>,
    pub(super) last: Option<String>,
    pub(super) artifact_type: Option<String>,
}

pub(super) fn header_value(value: impl AsRef<str>) -> HeaderValue {
    // Every value built here is from validated names, digests and numbers.
    HeaderValue::from_str(value.as_ref()).unwrap_or_else(|_| HeaderValue::from_static(""))
}

pub(super) fn repo(name: &str) -> Result<RepoName, ApiError> {
    RepoName::parse(name).ok_or_else(|| {
        ApiError::new(
            ErrorCode::NameInvalid,
            format!("invalid repository name {:?}", truncate(name)),
        )
    })
}

pub(super) fn truncate(text: &str) -> &str {
    let mut end = text.len().min(128);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

pub(super) fn digest(text: &str) -> Result<Digest, ApiError> {
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
        ApiError::new(ErrorCode::DigestInvalid, message)
    })
}

pub(super) fn layer_key(repo: &RepoName, digest: &Digest) -> String {
    format!("{repo}/_layers/{}", digest.hex())
}
pub(super) fn manifest_key(repo: &RepoName, digest: &Digest) -> String {
    format!("{repo}/_manifests/{}", digest.hex())
}
pub(super) fn tag_key(repo: &RepoName, tag: &str) -> String {
    format!("{repo}/_tags/{tag}")
}
pub(super) fn referrer_key(repo: &RepoName, subject: &Digest, digest: &Digest) -> String {
    format!("{repo}/_referrers/{}/{}", subject.hex(), digest.hex())
}

pub(super) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .parse()
        .ok()
}

/// How much of a refused request's body is read away so that the client, still sending,
/// gets the error response instead of a connection reset.
pub(super) const DRAIN_LIMIT: u64 = 64 << 20;

pub(super) async fn drain(body: Body, limit: u64) {
    let mut stream = body.into_data_stream();
    let mut read = 0u64;
    while read < limit {
        match tokio::time::timeout(Duration::from_secs(5), stream.next()).await {
            Ok(Some(Ok(chunk))) => read += chunk.len() as u64,
            _ => break,
        }
    }
}

pub(super) fn json_response(status: StatusCode, body: String, head: bool) -> Response {
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

pub(super) fn accepted() -> Response {
    Response::builder()
        .status(StatusCode::ACCEPTED)
        .header(header::CONTENT_LENGTH, 0)
        .body(Body::empty())
        .unwrap_or_default()
}

pub(super) fn blob_created(repo: &RepoName, digest: &Digest) -> Response {
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

pub(super) fn upload_response(
    status: StatusCode,
    repo: &RepoName,
    id: &str,
    size: u64,
) -> Response {
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

pub(super) fn blob_too_large(limit: u64) -> ApiError {
    ApiError::new(
        ErrorCode::SizeInvalid,
        format!("blob is larger than {limit} bytes"),
    )
    .with_status(StatusCode::PAYLOAD_TOO_LARGE)
}

pub(super) fn name_unknown(repo: &RepoName) -> ApiError {
    ApiError::new(
        ErrorCode::NameUnknown,
        format!("repository {repo} is not known"),
    )
}

pub(super) fn deletes_disabled() -> ApiError {
    ApiError::new(
        ErrorCode::Unsupported,
        "deletes are disabled on this registry",
    )
}

pub(super) fn unsupported(method: &Method) -> ApiError {
    ApiError::new(
        ErrorCode::Unsupported,
        format!("{method} is not supported here"),
    )
}
