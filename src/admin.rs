//! The admin HTTP server: discovery's `/v1` API plus `/metrics`, `/healthz`, `/readyz`,
//! behind authentication and the teams' authorisation (`authz.rs`) when configured;
//! `/openapi.json` (`openapi.rs`) and the status page (`ui.rs`, `status.rs`) beside them.
//!
//! Every route is registered with utoipa-axum's `routes!` from its handler's
//! `#[utoipa::path]`, which is also its OpenAPI entry: `protected` and `public` below
//! are the one list of what the API serves.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use discovery::admin::{AdminState, ApiError, ErrorBody};
use discovery::store::StoreMetrics;
use discovery::{Leases, Store};
use prometheus::{Encoder, IntCounterVec, Opts, Registry, TextEncoder};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

/// Request bodies larger than this are refused (413) before parsing.
const MAX_BODY: usize = 1 << 20;

#[derive(Clone)]
pub struct Admin {
    pub store: Arc<dyn Store>,
    pub leases: Arc<Leases>,
    pub registry: Registry,
    pub store_metrics: StoreMetrics,
    pub authz: crate::authz::Authz,
    pub router: Arc<router::Router>,
    pub agent: Option<Arc<discovery::agent::Agent>>,
    pub deploy: Arc<deploy::Controller>,
    /// No self-routing (`crate::self_routing`).
    pub own: Arc<crate::self_routing::OwnListeners>,
    requests: IntCounterVec,
}

/// What the admin API serves from, as `strait up` wires it.
pub struct AdminParts {
    pub store: Arc<dyn Store>,
    pub leases: Arc<Leases>,
    pub registry: Registry,
    pub store_metrics: StoreMetrics,
    pub authz: crate::authz::Authz,
    pub router: Arc<router::Router>,
    pub agent: Option<Arc<discovery::agent::Agent>>,
    pub deploy: Arc<deploy::Controller>,
    pub own: Arc<crate::self_routing::OwnListeners>,
}

impl Admin {
    pub fn new(parts: AdminParts) -> anyhow::Result<Self> {
        let requests = IntCounterVec::new(
            Opts::new(
                "strait_admin_requests_total",
                "Admin API requests by method and status",
            ),
            &["method", "status"],
        )?;
        parts.registry.register(Box::new(requests.clone()))?;
        Ok(Admin {
            store: parts.store,
            leases: parts.leases,
            registry: parts.registry,
            store_metrics: parts.store_metrics,
            authz: parts.authz,
            router: parts.router,
            agent: parts.agent,
            deploy: parts.deploy,
            own: parts.own,
            requests,
        })
    }

    pub fn router(self) -> axum::Router {
        let api = discovery::admin::router(AdminState {
            store: Arc::clone(&self.store),
            leases: Arc::clone(&self.leases),
        });
        // What the token guards.
        let protected = OpenApiRouter::new()
            .routes(routes!(metrics))
            .routes(routes!(explain))
            .with_state(self.clone())
            .merge(crate::status::routes(crate::status::StatusState {
                store: Arc::clone(&self.store),
                router: Arc::clone(&self.router),
                registry: self.registry.clone(),
            }))
            .merge(agent_routes(self.agent.clone()))
            .merge(deploy::api::router(Arc::clone(&self.deploy)))
            .merge(crate::tokens::routes(self.authz.clone()))
            .merge(api)
            .layer(middleware::from_fn_with_state(
                self.authz.clone(),
                crate::authz::enforce,
            ));
        // What anyone who reaches the port may read: liveness, readiness, the API's
        // description and the status page's shell (which holds no data: its script asks
        // the API, with the token).
        let spec = crate::openapi::Spec::default();
        let public = OpenApiRouter::new()
            .routes(routes!(healthz))
            .routes(routes!(readyz))
            .with_state(self.clone())
            .merge(crate::openapi::routes(Arc::clone(&spec)))
            .merge(crate::ui::routes());
        let public_paths = public.get_openapi().paths.paths.keys().cloned().collect();
        let (routes, doc) = public.merge(protected).split_for_parts();
        let doc = crate::openapi::document(doc, &public_paths);
        // (`to_json` fails only on a map with non-string keys, which the document has not.)
        let _ = spec.set(doc.to_json().unwrap_or_default());
        routes
            .fallback(|| async {
                ApiError::new(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    "no such admin endpoint; see docs/admin-api.md",
                )
            })
            .layer(DefaultBodyLimit::max(MAX_BODY))
            .layer(middleware::from_fn_with_state(
                Arc::clone(&self.own),
                crate::self_routing::guard,
            ))
            .layer(middleware::from_fn(json_errors))
            .layer(middleware::from_fn_with_state(self, count_requests))
    }
}

/// Every error is `{"error", "message"}`, also those axum makes itself (a bad query
/// string, a wrong method, a body over the limit), which come as plain text or empty.
pub async fn json_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let status = response.status();
    let is_json = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response;
    }
    let allow = response.headers().get(header::ALLOW).cloned();
    let text = axum::body::to_bytes(response.into_body(), 64 * 1024)
        .await
        .map(|b| String::from_utf8_lossy(&b).trim().to_string())
        .unwrap_or_default();
    let code = match status {
        StatusCode::BAD_REQUEST | StatusCode::UNSUPPORTED_MEDIA_TYPE => "invalid",
        StatusCode::NOT_FOUND => "not_found",
        StatusCode::METHOD_NOT_ALLOWED => "method_not_allowed",
        StatusCode::PAYLOAD_TOO_LARGE => "too_large",
        StatusCode::SERVICE_UNAVAILABLE => "unavailable",
        _ => "error",
    };
    let message = if text.is_empty() {
        status.canonical_reason().unwrap_or("error").to_string()
    } else {
        text
    };
    let mut response = ApiError::new(status, code, message).into_response();
    if let Some(allow) = allow {
        response.headers_mut().insert(header::ALLOW, allow);
    }
    response
}

async fn count_requests(State(admin): State<Admin>, request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let response = next.run(request).await;
    admin
        .requests
        .with_label_values(&[method_label(&method), response.status().as_str()])
        .inc();
    response
}

/// Known methods by name, anything else as `other`: label values must stay bounded.
fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::PUT => "PUT",
        Method::POST => "POST",
        Method::DELETE => "DELETE",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        Method::PATCH => "PATCH",
        _ => "other",
    }
}

/// Liveness: the process serves HTTP.
#[utoipa::path(get, path = "/healthz", tag = "meta",
    responses((status = 200, description = "Alive", content_type = "text/plain", body = String)))]
async fn healthz() -> &'static str {
    "ok\n"
}

/// Readiness: a snapshot has been loaded from the store.
#[utoipa::path(get, path = "/readyz", tag = "meta",
    responses(
        (status = 200, description = "Ready", content_type = "text/plain", body = String),
        (status = 503, description = "No snapshot loaded yet", content_type = "text/plain", body = String),
    ))]
async fn readyz(State(admin): State<Admin>) -> Response {
    let status = admin.store.status();
    if status.ready {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "not ready: no snapshot loaded from the store yet\n",
        )
            .into_response()
    }
}

fn no_agent() -> Response {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no agent runs here: start strait with --services FILE",
    )
    .into_response()
}

/// The agent's endpoints, for `strait up`'s admin API and the standalone `strait agent`.
pub fn agent_routes(agent: Option<Arc<discovery::agent::Agent>>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(check_pass))
        .routes(routes!(maintenance))
        .with_state(agent)
}

type AgentState = State<Option<Arc<discovery::agent::Agent>>>;

#[derive(serde::Serialize, utoipa::ToSchema)]
struct CheckPassed {
    check: String,
    /// Always `passing`.
    status: String,
}

/// A TTL check's heartbeat: it passes for another TTL.
#[utoipa::path(put, path = "/v1/agent/checks/{id}/pass", tag = "agent",
    params(("id" = String, Path, description = "Check id (its `id`, else `<instance id>:<index>`)")),
    responses(
        (status = 200, body = CheckPassed),
        (status = 404, body = ErrorBody, description = "No such check, or no agent here"),
        (status = 409, body = ErrorBody, description = "Not a TTL check"),
    ))]
async fn check_pass(
    State(agent): AgentState,
    axum::extract::Path(id): axum::extract::Path<String>,
) -> Response {
    let Some(agent) = &agent else {
        return no_agent();
    };
    match agent.pass(&id) {
        Ok(()) => axum::Json(CheckPassed {
            check: id,
            status: "passing".into(),
        })
        .into_response(),
        Err(discovery::agent::PassError::Unknown) => ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("check `{id}` not found"),
        )
        .into_response(),
        Err(discovery::agent::PassError::NotTtl) => ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!("check `{id}` is not a TTL check: only its own results pass it"),
        )
        .into_response(),
    }
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct MaintenanceBody {
    enable: bool,
}

#[derive(serde::Serialize, utoipa::ToSchema)]
struct MaintenanceView {
    service: String,
    id: String,
    maintenance: bool,
}

/// Drains a local instance (`{"enable": true}`: no new traffic) or ends its drain.
#[utoipa::path(put, path = "/v1/agent/services/{service}/{id}/maintenance", tag = "agent",
    params(
        ("service" = String, Path, description = "Service name"),
        ("id" = String, Path, description = "Instance id"),
    ),
    request_body = MaintenanceBody,
    responses(
        (status = 200, body = MaintenanceView),
        (status = 400, body = ErrorBody, description = "Invalid body"),
        (status = 404, body = ErrorBody, description = "No such local instance, or no agent here"),
    ))]
async fn maintenance(
    State(agent): AgentState,
    axum::extract::Path((service, id)): axum::extract::Path<(String, String)>,
    body: axum::body::Bytes,
) -> Response {
    let Some(agent) = &agent else {
        return no_agent();
    };
    let MaintenanceBody { enable } = match discovery::admin::parse_body(&body) {
        Ok(body) => body,
        Err(e) => return e.into_response(),
    };
    if agent.set_maintenance(&service, &id, enable) {
        axum::Json(MaintenanceView {
            service,
            id,
            maintenance: enable,
        })
        .into_response()
    } else {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("local service `{service}/{id}` not found"),
        )
        .into_response()
    }
}

#[derive(serde::Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
struct ExplainRequest {
    /// `http://host/path?query`; the scheme may be left out.
    url: String,
    #[serde(default)]
    method: Option<String>,
    #[serde(default)]
    headers: std::collections::BTreeMap<String, String>,
}

/// How the live routing table would handle a request: the host entry chosen, every
/// route's verdict, the targets and each instance's eligibility (docs/router.md).
#[utoipa::path(post, path = "/v1/explain", tag = "router",
    request_body = ExplainRequest,
    responses(
        (status = 200, body = serde_json::Value, description = "The explanation"),
        (status = 400, body = ErrorBody, description = "Invalid body, URL, method or header"),
    ))]
async fn explain(State(admin): State<Admin>, body: axum::body::Bytes) -> Response {
    let request: ExplainRequest = match discovery::admin::parse_body(&body) {
        Ok(request) => request,
        Err(e) => return e.into_response(),
    };
    let invalid = |message: String| {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message).into_response()
    };
    let url = if request.url.contains("://") {
        request.url.clone()
    } else {
        format!("http://{}", request.url)
    };
    let uri: axum::http::Uri = match url.parse() {
        Ok(uri) => uri,
        Err(e) => return invalid(format!("url `{}`: {e}", request.url)),
    };
    let Some(host) = uri.authority().map(|a| a.as_str().to_string()) else {
        return invalid(format!("url `{}` has no host", request.url));
    };
    let method =
        match axum::http::Method::from_bytes(request.method.as_deref().unwrap_or("GET").as_bytes())
        {
            Ok(method) => method,
            Err(_) => return invalid("method: not an HTTP method".into()),
        };
    let mut headers = HeaderMap::new();
    for (name, value) in &request.headers {
        let (Ok(name), Ok(value)) = (
            header::HeaderName::from_bytes(name.as_bytes()),
            header::HeaderValue::from_str(value),
        ) else {
            return invalid(format!("header `{name}` is not a valid header"));
        };
        headers.append(name, value);
    }
    let explanation = admin.router.explain(&method, &host, uri.path(), &headers);
    axum::Json(explanation).into_response()
}

/// The Prometheus text exposition (docs/operations.md lists what the dashboard uses).
#[utoipa::path(get, path = "/metrics", tag = "meta",
    responses((status = 200, description = "Prometheus text format 0.0.4", content_type = "text/plain", body = String)))]
async fn metrics(State(admin): State<Admin>) -> Response {
    admin
        .store_metrics
        .observe_scrape(&admin.store.snapshot(), &admin.store.status());
    render_metrics(&admin.registry)
}

/// The Prometheus text exposition of `registry`.
pub fn render_metrics(registry: &Registry) -> Response {
    let encoder = TextEncoder::new();
    let mut body = Vec::new();
    if let Err(e) = encoder.encode(&registry.gather(), &mut body) {
        return ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "metrics", e.to_string())
            .into_response();
    }
    (
        [(header::CONTENT_TYPE, encoder.format_type().to_string())],
        body,
    )
        .into_response()
}
