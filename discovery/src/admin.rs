//! The discovery part of the admin API (`/v1/services`, `/v1/routes`, `/v1/snapshot`,
//! `/v1/leases`). The binary mounts it next to `/metrics`, `/healthz` and `/readyz` and
//! puts authentication in front of it. Reference: `docs/admin-api.md`.
//!
//! Every error is JSON `{"error": "<code>", "message": "<what is wrong>"}` with a 4xx/5xx
//! status; bodies are parsed strictly (unknown fields are errors).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::lease::Leases;
use crate::model::{Health, Instance, InstanceSpec, Route, validate_id, validate_service_name};
use crate::snapshot::Snapshot;
use crate::store::{Store, StoreError};

#[derive(Clone)]
pub struct AdminState {
    pub store: Arc<dyn Store>,
    pub leases: Arc<Leases>,
}

/// The discovery endpoints, relative to the admin root. Each route is registered from its
/// handler's `#[utoipa::path]`, which is also its entry in the OpenAPI document.
pub fn router(state: AdminState) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_services))
        .routes(routes!(get_service))
        .routes(routes!(get_instance, register, deregister))
        .routes(routes!(set_health))
        .routes(routes!(list_routes))
        .routes(routes!(get_route, put_route, delete_route))
        .routes(routes!(snapshot))
        .routes(routes!(grant_lease))
        .routes(routes!(get_lease, revoke_lease))
        .routes(routes!(renew_lease))
        .with_state(state)
}

/// The body of every error: a stable code and a message for people.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    /// `invalid`, `not_found`, `conflict`, `unauthorized`, `unavailable`, ...
    pub error: String,
    pub message: String,
}

/// An API error: status, stable code, human message.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
        }
    }

    fn invalid(message: impl Into<String>) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "invalid", message)
    }

    fn not_found(kind: &str, name: &str) -> Self {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("{kind} `{name}` not found"),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.code.to_string(),
                message: self.message,
            }),
        )
            .into_response()
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        let (status, code) = match &e {
            StoreError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            StoreError::NotFound { .. } => (StatusCode::NOT_FOUND, "not_found"),
            StoreError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            StoreError::Unavailable(_) => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            StoreError::Storage(_) => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
        };
        ApiError::new(status, code, e.to_string())
    }
}

impl From<crate::model::ModelError> for ApiError {
    fn from(e: crate::model::ModelError) -> Self {
        ApiError::invalid(e.to_string())
    }
}

/// Parses a JSON body strictly, naming the offending field and position on error.
pub fn parse_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Err(ApiError::invalid(
            "request body is empty; expected a JSON object",
        ));
    }
    let mut deserializer = serde_json::Deserializer::from_slice(body);
    let value: T = serde_path_to_error::deserialize(&mut deserializer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if path == "." || path == "?" || path.is_empty() {
            ApiError::invalid(format!("invalid JSON body: {inner}"))
        } else {
            ApiError::invalid(format!("invalid JSON body: field `{path}`: {inner}"))
        }
    })?;
    deserializer
        .end()
        .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?;
    Ok(value)
}

#[derive(Serialize, ToSchema)]
pub struct ServiceSummary {
    pub name: String,
    pub instances: usize,
    pub passing: usize,
}

/// `GET /v1/services`.
#[derive(Serialize, ToSchema)]
pub struct ServiceList {
    pub revision: u64,
    pub services: Vec<ServiceSummary>,
}

/// Every service with its instance counts.
#[utoipa::path(get, path = "/v1/services", tag = "services",
    responses((status = 200, body = ServiceList)))]
async fn list_services(State(state): State<AdminState>) -> Json<ServiceList> {
    let snapshot = state.store.snapshot();
    let services = snapshot
        .services
        .iter()
        .map(|(name, service)| ServiceSummary {
            name: name.to_string(),
            instances: service.instances.len(),
            passing: service.count(Health::Passing),
        })
        .collect();
    Json(ServiceList {
        revision: snapshot.revision,
        services,
    })
}

/// `GET /v1/services/{service}`.
#[derive(Serialize, ToSchema)]
pub struct ServiceView<'a> {
    pub revision: u64,
    pub name: &'a str,
    #[schema(value_type = Vec<Instance>)]
    pub instances: Vec<&'a Instance>,
}

/// One service's instances.
#[utoipa::path(get, path = "/v1/services/{service}", tag = "services",
    params(("service" = String, Path, description = "Service name")),
    responses(
        (status = 200, body = ServiceView),
        (status = 400, body = ErrorBody, description = "Not a service name"),
        (status = 404, body = ErrorBody, description = "No such service"),
    ))]
async fn get_service(
    State(state): State<AdminState>,
    Path(service): Path<String>,
) -> Result<Response, ApiError> {
    validate_service_name(&service)?;
    let snapshot = state.store.snapshot();
    let entry = snapshot
        .services
        .get(service.as_str())
        .ok_or_else(|| ApiError::not_found("service", &service))?;
    let view = ServiceView {
        revision: snapshot.revision,
        name: &service,
        instances: entry.instances.values().collect(),
    };
    Ok(Json(view).into_response())
}

/// One instance.
#[utoipa::path(get, path = "/v1/services/{service}/instances/{id}", tag = "services",
    params(
        ("service" = String, Path, description = "Service name"),
        ("id" = String, Path, description = "Instance id"),
    ),
    responses(
        (status = 200, body = Instance),
        (status = 400, body = ErrorBody, description = "Not a service name or instance id"),
        (status = 404, body = ErrorBody, description = "No such instance"),
    ))]
async fn get_instance(
    State(state): State<AdminState>,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    validate_service_name(&service)?;
    validate_id("instance id", &id)?;
    let snapshot = state.store.snapshot();
    let instance = snapshot
        .instance(&service, &id)
        .ok_or_else(|| ApiError::not_found("instance", &format!("{service}/{id}")))?;
    Ok(Json(instance).into_response())
}

#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
struct RegisterQuery {
    /// A lease (`POST /v1/leases`) that owns the instance: it goes when the lease does.
    lease: Option<String>,
}

/// Registers (or replaces) an instance.
#[utoipa::path(put, path = "/v1/services/{service}/instances/{id}", tag = "services",
    params(
        ("service" = String, Path, description = "Service name"),
        ("id" = String, Path, description = "Instance id"),
        RegisterQuery,
    ),
    request_body = InstanceSpec,
    responses(
        (status = 200, body = Instance),
        (status = 400, body = ErrorBody, description = "Invalid name, id or body"),
        (status = 404, body = ErrorBody, description = "No such lease"),
        (status = 503, body = ErrorBody, description = "The store cannot be written now"),
    ))]
async fn register(
    State(state): State<AdminState>,
    Path((service, id)): Path<(String, String)>,
    Query(query): Query<RegisterQuery>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let spec: InstanceSpec = parse_body(&body)?;
    let instance = Instance::new(&service, &id, spec)?;
    state
        .leases
        .register(instance.clone(), query.lease.as_deref())
        .await?;
    Ok((StatusCode::OK, Json(instance)).into_response())
}

/// Removes an instance.
#[utoipa::path(delete, path = "/v1/services/{service}/instances/{id}", tag = "services",
    params(
        ("service" = String, Path, description = "Service name"),
        ("id" = String, Path, description = "Instance id"),
    ),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, body = ErrorBody, description = "Not a service name or instance id"),
        (status = 404, body = ErrorBody, description = "No such instance"),
        (status = 503, body = ErrorBody, description = "The store cannot be written now"),
    ))]
async fn deregister(
    State(state): State<AdminState>,
    Path((service, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    validate_service_name(&service)?;
    validate_id("instance id", &id)?;
    if state.leases.deregister(&service, &id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("instance", &format!("{service}/{id}")))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct HealthBody {
    pub health: Health,
}

/// The answer to a health change.
#[derive(Serialize, ToSchema)]
pub struct HealthView {
    pub service: String,
    pub id: String,
    pub health: Health,
}

/// Sets an instance's health (an operator's override; checks set it too).
#[utoipa::path(put, path = "/v1/services/{service}/instances/{id}/health", tag = "services",
    params(
        ("service" = String, Path, description = "Service name"),
        ("id" = String, Path, description = "Instance id"),
    ),
    request_body = HealthBody,
    responses(
        (status = 200, body = HealthView),
        (status = 400, body = ErrorBody, description = "Invalid name, id or body"),
        (status = 404, body = ErrorBody, description = "No such instance"),
        (status = 503, body = ErrorBody, description = "The store cannot be written now"),
    ))]
async fn set_health(
    State(state): State<AdminState>,
    Path((service, id)): Path<(String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    validate_service_name(&service)?;
    validate_id("instance id", &id)?;
    let HealthBody { health } = parse_body(&body)?;
    state.store.set_health(&service, &id, health).await?;
    Ok(Json(HealthView {
        service,
        id,
        health,
    })
    .into_response())
}

/// `GET /v1/routes`.
#[derive(Serialize, ToSchema)]
pub struct RouteList<'a> {
    pub revision: u64,
    #[schema(value_type = BTreeMap<String, Route>)]
    pub routes: &'a crate::snapshot::RouteMap,
}

/// Every route, by name.
#[utoipa::path(get, path = "/v1/routes", tag = "routes",
    responses((status = 200, body = RouteList)))]
async fn list_routes(State(state): State<AdminState>) -> Response {
    let snapshot = state.store.snapshot();
    Json(RouteList {
        revision: snapshot.revision,
        routes: &snapshot.routes,
    })
    .into_response()
}

/// One route.
#[utoipa::path(get, path = "/v1/routes/{name}", tag = "routes",
    params(("name" = String, Path, description = "Route name")),
    responses(
        (status = 200, body = Route),
        (status = 400, body = ErrorBody, description = "Not a route name"),
        (status = 404, body = ErrorBody, description = "No such route"),
    ))]
async fn get_route(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    validate_id("route name", &name)?;
    let snapshot = state.store.snapshot();
    let route = snapshot
        .routes
        .get(name.as_str())
        .ok_or_else(|| ApiError::not_found("route", &name))?;
    Ok(Json(route.as_ref()).into_response())
}

/// Creates or replaces a route.
#[utoipa::path(put, path = "/v1/routes/{name}", tag = "routes",
    params(("name" = String, Path, description = "Route name")),
    request_body = Route,
    responses(
        (status = 200, body = Route),
        (status = 400, body = ErrorBody, description = "Invalid name or route"),
        (status = 409, body = ErrorBody, description = "Another TCP route takes these connections"),
        (status = 503, body = ErrorBody, description = "The store cannot be written now"),
    ))]
async fn put_route(
    State(state): State<AdminState>,
    Path(name): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    validate_id("route name", &name)?;
    let mut route: Route = parse_body(&body)?;
    route
        .validate_for_write()
        .map_err(|e| ApiError::invalid(format!("route `{name}`: {e}")))?;
    // A second TCP route for the same connections would be dropped when the table is
    // built (or fail to bind): refused here, where the operator sees it.
    if let Some((other, _)) = state
        .store
        .snapshot()
        .routes
        .iter()
        .find(|(other, existing)| ***other != *name && route.tcp_overlaps(existing))
    {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "conflict",
            format!(
                "route `{name}`: route `{other}` already takes these connections (the same port on an overlapping address, and the same server name); change or delete it first"
            ),
        ));
    }
    state.store.put_route(&name, route.clone()).await?;
    Ok(Json(route).into_response())
}

/// Removes a route.
#[utoipa::path(delete, path = "/v1/routes/{name}", tag = "routes",
    params(("name" = String, Path, description = "Route name")),
    responses(
        (status = 204, description = "Removed"),
        (status = 400, body = ErrorBody, description = "Not a route name"),
        (status = 404, body = ErrorBody, description = "No such route"),
        (status = 503, body = ErrorBody, description = "The store cannot be written now"),
    ))]
async fn delete_route(
    State(state): State<AdminState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    validate_id("route name", &name)?;
    if state.store.delete_route(&name).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("route", &name))
    }
}

/// `GET /v1/snapshot`: the whole state plus how fresh it is.
#[derive(Serialize, ToSchema)]
pub struct SnapshotView<'a> {
    pub revision: u64,
    /// `embedded` or `zookeeper`.
    pub backend: &'static str,
    /// Whether the store is reachable now; when it is not, this snapshot is served as it
    /// is (fail static) and `age_seconds` grows.
    pub connected: bool,
    /// Seconds since the store last confirmed this snapshot current.
    pub age_seconds: f64,
    #[schema(value_type = BTreeMap<String, Vec<Instance>>)]
    pub services: BTreeMap<&'a str, Vec<&'a Instance>>,
    #[schema(value_type = BTreeMap<String, Route>)]
    pub routes: &'a crate::snapshot::RouteMap,
}

/// The whole state at one revision, and how fresh it is.
#[utoipa::path(get, path = "/v1/snapshot", tag = "snapshot",
    responses((status = 200, body = SnapshotView)))]
async fn snapshot(State(state): State<AdminState>) -> Response {
    let snapshot: Arc<Snapshot> = state.store.snapshot();
    let status = state.store.status();
    let view = SnapshotView {
        revision: snapshot.revision,
        backend: status.backend,
        connected: status.connected,
        age_seconds: status.age_seconds,
        services: snapshot
            .services
            .iter()
            .map(|(name, service)| (name.as_ref(), service.instances.values().collect()))
            .collect(),
        routes: &snapshot.routes,
    };
    Json(view).into_response()
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct LeaseBody {
    /// How long the lease lives without a renewal, e.g. `10s`.
    #[serde(with = "humantime_serde")]
    #[schema(value_type = String, example = "10s")]
    pub ttl: Duration,
}

/// Grants a lease: instances registered under it go when it expires.
#[utoipa::path(post, path = "/v1/leases", tag = "leases",
    request_body = LeaseBody,
    responses(
        (status = 201, body = crate::lease::LeaseInfo),
        (status = 400, body = ErrorBody, description = "Invalid body or TTL"),
    ))]
async fn grant_lease(State(state): State<AdminState>, body: Bytes) -> Result<Response, ApiError> {
    let LeaseBody { ttl } = parse_body(&body)?;
    let info = state.leases.grant(ttl).map_err(ApiError::invalid)?;
    Ok((StatusCode::CREATED, Json(info)).into_response())
}

/// One lease.
#[utoipa::path(get, path = "/v1/leases/{id}", tag = "leases",
    params(("id" = String, Path, description = "Lease id")),
    responses(
        (status = 200, body = crate::lease::LeaseInfo),
        (status = 404, body = ErrorBody, description = "No such lease"),
    ))]
async fn get_lease(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let info = state
        .leases
        .get(&id)
        .ok_or_else(|| ApiError::not_found("lease", &id))?;
    Ok(Json(info).into_response())
}

/// Renews a lease for another TTL.
#[utoipa::path(put, path = "/v1/leases/{id}/renew", tag = "leases",
    params(("id" = String, Path, description = "Lease id")),
    responses(
        (status = 200, body = crate::lease::LeaseInfo),
        (status = 404, body = ErrorBody, description = "No such lease"),
    ))]
async fn renew_lease(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let info = state
        .leases
        .renew(&id)
        .ok_or_else(|| ApiError::not_found("lease", &id))?;
    Ok(Json(info).into_response())
}

/// Revokes a lease and removes its instances.
#[utoipa::path(delete, path = "/v1/leases/{id}", tag = "leases",
    params(("id" = String, Path, description = "Lease id")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 404, body = ErrorBody, description = "No such lease"),
        (status = 503, body = ErrorBody, description = "The store cannot be written now"),
    ))]
async fn revoke_lease(
    State(state): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    if state.leases.revoke(&id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::not_found("lease", &id))
    }
}
