//! From a request to its resource. Routing is by hand because repository names contain
//! slashes: the path is split into segments and matched from the end
//! (`…/manifests/<ref>`, `…/blobs/uploads/<id>`, `…/blobs/<digest>`, `…/tags/list`,
//! `…/referrers/<digest>`); what precedes is the name. Every response gets the API
//! version header and is counted.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::auth::{Action, Resource};
use crate::error::{ApiError, ErrorCode};
use crate::server::parts::{self, ApiResult, Params, json_response, unsupported};
use crate::server::state::Registry;
use crate::server::token::token;

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

impl Registry {
    pub fn router(self: Arc<Self>) -> axum::Router {
        axum::Router::new()
            .route("/token", axum::routing::get(token))
            .fallback(dispatch)
            .with_state(self)
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
                let digest = parts::digest(digest_text)?;
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
                let digest = parts::digest(digest_text)?;
                match *method {
                    Method::GET | Method::HEAD => {
                        self.referrers(&repo, &digest, params, head).await
                    }
                    _ => Err(unsupported(method)),
                }
            }
        }
    }
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
        (None, _) => ApiError::new(ErrorCode::NameInvalid, "not a registry API path")
            .with_status(StatusCode::NOT_FOUND)
            .into_response(),
        (Some(_), Err(_)) => ApiError::new(ErrorCode::Unsupported, "malformed query string")
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
}
