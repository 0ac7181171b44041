//! From a request to its resource. Routing is by hand because repository names contain
//! slashes: the path is split into segments and matched from the end
//! (`…/manifests/<ref>`, `…/blobs/uploads/<id>`, `…/blobs/<digest>`, `…/tags/list`,
//! `…/referrers/<digest>`); what precedes is the name. Every response gets the API
//! version header and is counted; every push and delete (refused ones included) is
//! audited.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use crate::auth::{Action, Resource};
use crate::error::{ApiError, ErrorCode};
use crate::names::RepoName;
use crate::server::parts::{self, ApiResult, Params, json_response, truncate, unsupported};
use crate::server::state::{Registry, Write};
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
        path: &str,
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
        let name = match *endpoint {
            Endpoint::Base => {
                self.authorize(headers, Resource::Base, action).await?;
                return match *method {
                    Method::GET | Method::HEAD => {
                        Ok(json_response(StatusCode::OK, "{}".into(), head))
                    }
                    _ => Err(unsupported(method)),
                };
            }
            Endpoint::Catalog => {
                self.authorize(headers, Resource::Catalog, action).await?;
                return match *method {
                    Method::GET | Method::HEAD => self.catalog(params, head).await,
                    _ => Err(unsupported(method)),
                };
            }
            Endpoint::Tags(name)
            | Endpoint::Manifest(name, _)
            | Endpoint::UploadStart(name)
            | Endpoint::Upload(name, _)
            | Endpoint::Blob(name, _)
            | Endpoint::Referrers(name, _) => name,
        };
        // Every step of an upload, its status and its cancellation included, is part of
        // pushing.
        let action = match endpoint {
            Endpoint::Upload(..) => Action::Push,
            _ => action,
        };
        let repo = parts::repo(name)?;
        // Only pushes and deletes are audited: a pull names nothing.
        let object = if action == Action::Pull {
            String::new()
        } else {
            object_of(endpoint, &repo, &params)
        };
        let requester = match self
            .authorize(headers, Resource::Repository(repo.as_str()), action)
            .await
        {
            Ok(requester) => requester,
            Err(refused) => {
                // Every refused push or delete is recorded, each chunk's included.
                if action != Action::Pull {
                    self.record_write(Write {
                        requester: &refused.requester,
                        method,
                        path,
                        object: &object,
                        status: refused.error.status,
                        message: Some(refused.error.message.clone()),
                    });
                }
                return Err(refused.error);
            }
        };
        let mount_from = match endpoint {
            Endpoint::UploadStart(_) => params.from.clone(),
            _ => None,
        };
        let result = self
            .repository_request(method, endpoint, &repo, params, headers, body, head)
            .await;
        if let Some(message) = audited(method, endpoint, &result, mount_from) {
            let status = match &result {
                Ok(response) => response.status(),
                Err(error) => error.status,
            };
            self.record_write(Write {
                requester: &requester,
                method,
                path,
                object: &object,
                status,
                message,
            });
        }
        result
    }

    /// A request on a repository it may make.
    #[allow(clippy::too_many_arguments)]
    async fn repository_request(
        &self,
        method: &Method,
        endpoint: &Endpoint<'_>,
        repo: &RepoName,
        params: Params,
        headers: &HeaderMap,
        body: Body,
        head: bool,
    ) -> ApiResult {
        match *endpoint {
            Endpoint::Base | Endpoint::Catalog => Err(unsupported(method)),
            Endpoint::Tags(_) => match *method {
                Method::GET | Method::HEAD => self.tags(repo, params, head).await,
                _ => Err(unsupported(method)),
            },
            Endpoint::Manifest(_, reference) => match *method {
                Method::GET | Method::HEAD => self.get_manifest(repo, reference, head).await,
                Method::PUT => self.put_manifest(repo, reference, headers, body).await,
                Method::DELETE => self.delete_manifest(repo, reference).await,
                _ => Err(unsupported(method)),
            },
            Endpoint::Blob(_, digest_text) => {
                let digest = parts::digest(digest_text)?;
                match *method {
                    Method::GET | Method::HEAD => self.get_blob(repo, &digest, headers, head).await,
                    Method::DELETE => self.delete_blob(repo, &digest).await,
                    _ => Err(unsupported(method)),
                }
            }
            Endpoint::UploadStart(_) => match *method {
                Method::POST => self.start_upload(repo, params, headers, body).await,
                _ => Err(unsupported(method)),
            },
            Endpoint::Upload(_, id) => match *method {
                Method::GET => self.upload_status(repo, id).await,
                Method::PATCH => self.patch_upload(repo, id, headers, body).await,
                Method::PUT => self.finish_upload(repo, id, params, headers, body).await,
                Method::DELETE => self.cancel_upload(repo, id).await,
                _ => Err(unsupported(method)),
            },
            Endpoint::Referrers(_, digest_text) => {
                let digest = parts::digest(digest_text)?;
                match *method {
                    Method::GET | Method::HEAD => self.referrers(repo, &digest, params, head).await,
                    _ => Err(unsupported(method)),
                }
            }
        }
    }
}

/// What a push or delete names, for the audit log: `manifest <repository>:<tag>` or
/// `manifest <repository>@<digest>`, `blob <repository>@<digest>` (`blob <repository>`
/// for an upload whose digest is not yet given), `repository <repository>`.
fn object_of(endpoint: &Endpoint<'_>, repo: &RepoName, params: &Params) -> String {
    let blob = |digest: Option<&str>| match digest {
        Some(digest) => format!("blob {repo}@{}", truncate(digest)),
        None => format!("blob {repo}"),
    };
    match *endpoint {
        Endpoint::Manifest(_, reference) if reference.contains(':') => {
            format!("manifest {repo}@{}", truncate(reference))
        }
        Endpoint::Manifest(_, reference) => format!("manifest {repo}:{}", truncate(reference)),
        Endpoint::Blob(_, digest) => blob(Some(digest)),
        Endpoint::UploadStart(_) => blob(params.digest.as_deref().or(params.mount.as_deref())),
        Endpoint::Upload(..) => blob(params.digest.as_deref()),
        _ => format!("repository {repo}"),
    }
}

/// Whether an allowed request is audited, and the record's message: one record per
/// manifest put, completed upload (or mount) and delete; none for the chunks of an
/// upload, nor for a POST that only opens a session.
fn audited(
    method: &Method,
    endpoint: &Endpoint<'_>,
    result: &ApiResult,
    mount_from: Option<String>,
) -> Option<Option<String>> {
    let error = || result.as_ref().err().map(|e| e.message.clone());
    let pushed = || {
        result
            .as_ref()
            .ok()
            .and_then(|r| r.headers().get("Docker-Content-Digest"))
            .and_then(|v| v.to_str().ok())
            .map(|digest| format!("digest {digest}"))
    };
    match (method, endpoint) {
        (&Method::PUT, Endpoint::Manifest(..)) => Some(error().or_else(pushed)),
        (&Method::PUT, Endpoint::Upload(..))
        | (&Method::DELETE, Endpoint::Manifest(..) | Endpoint::Blob(..)) => Some(error()),
        (&Method::POST, Endpoint::UploadStart(_)) => match result {
            // A session opened (a mount that fell back to one included): its completion
            // is the record.
            Ok(response) if response.status() == StatusCode::ACCEPTED => None,
            Ok(_) => Some(mount_from.map(|from| format!("mounted from {}", truncate(&from)))),
            Err(error) => Some(Some(error.message.clone())),
        },
        _ => None,
    }
}

/// Answers a request; its endpoint's label is for the metrics.
async fn respond(
    registry: &Registry,
    method: &Method,
    uri: &Uri,
    params: Result<Query<Params>, axum::extract::rejection::QueryRejection>,
    headers: &HeaderMap,
    body: Body,
) -> Response {
    match (route(uri.path()), params) {
        (None, _) => ApiError::new(ErrorCode::NameInvalid, "not a registry API path")
            .with_status(StatusCode::NOT_FOUND)
            .into_response(),
        (Some(_), Err(_)) => ApiError::new(ErrorCode::Unsupported, "malformed query string")
            .with_status(StatusCode::BAD_REQUEST)
            .into_response(),
        (Some(endpoint), Ok(Query(params))) => registry
            .handle(method, &endpoint, uri.path(), params, headers, body)
            .await
            .unwrap_or_else(IntoResponse::into_response),
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
    let label = route(uri.path()).as_ref().map_or("other", Endpoint::label);
    let method_label = match method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "other",
    };
    let mut response = if matches!(method, Method::PUT | Method::POST | Method::DELETE) {
        // In a task of its own: a client that goes away mid-request cancels neither a
        // push or delete nor its audit record (a body cut short is an error the handler
        // sees and records).
        let registry = Arc::clone(&registry);
        let task =
            tokio::spawn(
                async move { respond(&registry, &method, &uri, params, &headers, body).await },
            );
        match task.await {
            Ok(response) => response,
            Err(_) => ApiError::new(ErrorCode::Unsupported, "the request's task failed")
                .with_status(StatusCode::INTERNAL_SERVER_ERROR)
                .into_response(),
        }
    } else {
        respond(&registry, &method, &uri, params, &headers, body).await
    };
    response.headers_mut().insert(
        "Docker-Distribution-API-Version",
        HeaderValue::from_static("registry/2.0"),
    );
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

    #[test]
    fn audited_objects() {
        let repo = RepoName::parse("web/app").expect("name");
        let d = "sha256:abc";
        let none = Params::default();
        let object = |endpoint: Endpoint<'_>, params: &Params| object_of(&endpoint, &repo, params);
        assert_eq!(
            object(Endpoint::Manifest("web/app", "v1"), &none),
            "manifest web/app:v1"
        );
        assert_eq!(
            object(Endpoint::Manifest("web/app", d), &none),
            "manifest web/app@sha256:abc"
        );
        assert_eq!(
            object(Endpoint::Blob("web/app", d), &none),
            "blob web/app@sha256:abc"
        );
        assert_eq!(
            object(Endpoint::UploadStart("web/app"), &none),
            "blob web/app"
        );
        let with_digest = Params {
            digest: Some(d.into()),
            ..Params::default()
        };
        assert_eq!(
            object(Endpoint::Upload("web/app", "1"), &with_digest),
            "blob web/app@sha256:abc"
        );
        assert_eq!(
            object(Endpoint::Tags("web/app"), &none),
            "repository web/app"
        );

        // One record per completed upload, none for a session opened or a chunk.
        let opened: ApiResult = Ok(Response::builder()
            .status(StatusCode::ACCEPTED)
            .body(Body::empty())
            .unwrap_or_default());
        let upload_start = Endpoint::UploadStart("web/app");
        assert_eq!(audited(&Method::POST, &upload_start, &opened, None), None);
        let upload = Endpoint::Upload("web/app", "1");
        assert_eq!(audited(&Method::PATCH, &upload, &opened, None), None);
        let created: ApiResult = Ok(Response::builder()
            .status(StatusCode::CREATED)
            .header("Docker-Content-Digest", d)
            .body(Body::empty())
            .unwrap_or_default());
        assert_eq!(audited(&Method::PUT, &upload, &created, None), Some(None));
        assert_eq!(
            audited(
                &Method::POST,
                &upload_start,
                &created,
                Some("api/app".into())
            ),
            Some(Some("mounted from api/app".into()))
        );
        assert_eq!(
            audited(
                &Method::PUT,
                &Endpoint::Manifest("web/app", "v1"),
                &created,
                None
            ),
            Some(Some("digest sha256:abc".into()))
        );
        let failed: ApiResult = Err(ApiError::new(ErrorCode::ManifestInvalid, "bad"));
        assert_eq!(
            audited(
                &Method::DELETE,
                &Endpoint::Blob("web/app", d),
                &failed,
                None
            ),
            Some(Some("bad".into()))
        );
    }
}
