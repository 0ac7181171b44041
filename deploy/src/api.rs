//! `/v1/apps…` on the admin API: the catalogue (apps and their specs) and the inventory
//! (deployments and their instances) as separate resources, as FIWARE's PaaS Manager has
//! them. Creating a deployment answers `202 Accepted` with a `Location` to poll; errors are
//! the admin API's JSON shape. Reference: `docs/deploy.md`.

use std::sync::Arc;

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use discovery::Snapshot;
use discovery::admin::{ApiError, ErrorBody, parse_body};
use discovery::apps::{App, AppSpec, Deployment, validate_app_name};
use discovery::model::{Health, Instance};
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::controller::{
    Controller, DeployError, DeployRequest, current, in_progress, instances_of,
};

impl From<DeployError> for ApiError {
    fn from(e: DeployError) -> Self {
        let (status, code) = match &e {
            DeployError::Invalid(_) => (StatusCode::BAD_REQUEST, "invalid"),
            DeployError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            DeployError::Conflict(_) => (StatusCode::CONFLICT, "conflict"),
            DeployError::Unprocessable(_) => (StatusCode::UNPROCESSABLE_ENTITY, "unprocessable"),
            DeployError::Registry(_) => (StatusCode::BAD_GATEWAY, "registry"),
            DeployError::Store(_) => match e {
                DeployError::Store(e) => return ApiError::from(e),
                _ => (StatusCode::INTERNAL_SERVER_ERROR, "storage"),
            },
        };
        ApiError::new(status, code, e.to_string())
    }
}

/// The apps endpoints, relative to the admin root; each route registered from its
/// handler's `#[utoipa::path]` (its OpenAPI entry).
pub fn router(controller: Arc<Controller>) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list_apps))
        .routes(routes!(get_app, put_app, delete_app))
        .routes(routes!(list_deployments, create_deployment))
        .routes(routes!(get_deployment, cancel_deployment))
        .routes(routes!(rollback))
        .with_state(controller)
}

/// A deployment with its instances, as the API shows it.
#[derive(Serialize, ToSchema)]
pub struct DeploymentView<'a> {
    #[serde(flatten)]
    #[schema(value_type = Deployment)]
    pub deployment: &'a Deployment,
    /// Instances wanted in all.
    pub wanted: u32,
    pub passing: usize,
    #[schema(value_type = Vec<Instance>)]
    pub instances: Vec<&'a Instance>,
}

/// One app in `GET /v1/apps`.
#[derive(Serialize, ToSchema)]
pub struct AppSummary<'a> {
    pub name: &'a str,
    /// The image the current deployment runs (else the spec's).
    pub image: String,
    pub instances: u32,
    pub passing: usize,
    /// The deployment that has the traffic.
    pub current: Option<u64>,
    /// A deployment under way, if any.
    pub in_progress: Option<u64>,
    pub host: Option<&'a str>,
    pub removing: bool,
}

/// `GET /v1/apps`.
#[derive(Serialize, ToSchema)]
pub struct AppList<'a> {
    pub revision: u64,
    pub apps: Vec<AppSummary<'a>>,
}

/// `GET /v1/apps/{app}`.
#[derive(Serialize, ToSchema)]
pub struct AppView<'a> {
    pub revision: u64,
    pub name: &'a str,
    #[schema(value_type = AppSpec)]
    pub spec: &'a AppSpec,
    pub removing: bool,
    pub current: Option<DeploymentView<'a>>,
    pub in_progress: Option<DeploymentView<'a>>,
}

/// `DELETE /v1/apps/{app}`'s answer: the app goes once its containers have.
#[derive(Serialize, ToSchema)]
pub struct AppRemoving {
    pub app: String,
    pub removing: bool,
}

/// `GET /v1/apps/{app}/deployments`, newest first.
#[derive(Serialize, ToSchema)]
pub struct DeploymentList<'a> {
    pub app: &'a str,
    pub deployments: Vec<DeploymentView<'a>>,
}

fn view<'a>(snapshot: &'a Snapshot, deployment: &'a Deployment) -> DeploymentView<'a> {
    let instances: Vec<&Instance> = instances_of(snapshot, deployment).collect();
    DeploymentView {
        deployment,
        wanted: deployment.wanted(),
        passing: instances
            .iter()
            .filter(|i| i.spec.health == Health::Passing)
            .count(),
        instances,
    }
}

fn parse_id(app: &str, id: &str) -> Result<u64, ApiError> {
    validate_app_name(app)?;
    id.parse().map_err(|_| {
        ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!("deployment id `{id}` is not a number"),
        )
    })
}

fn accepted(deployment: &Deployment, snapshot: &Snapshot) -> Response {
    let location = format!("/v1/apps/{}/deployments/{}", deployment.app, deployment.id);
    (
        StatusCode::ACCEPTED,
        [(header::LOCATION, location)],
        Json(view(snapshot, deployment)),
    )
        .into_response()
}

/// Every app, with its current and in-progress deployments.
#[utoipa::path(get, path = "/v1/apps", tag = "apps",
    responses((status = 200, body = AppList)))]
async fn list_apps(State(controller): State<Arc<Controller>>) -> Response {
    let snapshot = controller.store().snapshot();
    let apps: Vec<_> = snapshot
        .apps
        .values()
        .map(|app| {
            let current = current(&snapshot, &app.name);
            let running = in_progress(&snapshot, &app.name);
            let passing = current.as_ref().map_or(0, |d| view(&snapshot, d).passing);
            AppSummary {
                name: &app.name,
                image: current
                    .as_ref()
                    .map_or(app.spec.image.as_str(), |d| d.image.as_str())
                    .to_string(),
                instances: current.as_ref().map_or(0, |d| d.wanted()),
                passing,
                current: current.as_ref().map(|d| d.id),
                in_progress: running.as_ref().map(|d| d.id),
                host: app.spec.host.as_deref(),
                removing: app.removing,
            }
        })
        .collect();
    Json(AppList {
        revision: snapshot.revision,
        apps,
    })
    .into_response()
}

/// One app: its spec and its current and in-progress deployments.
#[utoipa::path(get, path = "/v1/apps/{app}", tag = "apps",
    params(("app" = String, Path, description = "App name")),
    responses(
        (status = 200, body = AppView),
        (status = 400, body = ErrorBody, description = "Not an app name"),
        (status = 404, body = ErrorBody, description = "No such app"),
    ))]
async fn get_app(
    State(controller): State<Arc<Controller>>,
    Path(app): Path<String>,
) -> Result<Response, ApiError> {
    validate_app_name(&app)?;
    let snapshot = controller.store().snapshot();
    let record = snapshot.apps.get(app.as_str()).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("app `{app}` not found"),
        )
    })?;
    let current = current(&snapshot, &app);
    let running = in_progress(&snapshot, &app);
    Ok(Json(AppView {
        revision: snapshot.revision,
        name: &record.name,
        spec: &record.spec,
        removing: record.removing,
        current: current.as_deref().map(|d| view(&snapshot, d)),
        in_progress: running.as_deref().map(|d| view(&snapshot, d)),
    })
    .into_response())
}

/// Creates or replaces an app's spec (deploys nothing).
#[utoipa::path(put, path = "/v1/apps/{app}", tag = "apps",
    params(("app" = String, Path, description = "App name")),
    request_body = AppSpec,
    responses(
        (status = 200, body = App),
        (status = 400, body = ErrorBody, description = "Invalid name or spec"),
        (status = 409, body = ErrorBody, description = "The app is being removed"),
        (status = 503, body = ErrorBody, description = "The store cannot be written now"),
    ))]
async fn put_app(
    State(controller): State<Arc<Controller>>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    validate_app_name(&app)?;
    let spec: AppSpec = parse_body(&body)?;
    let record = controller.put_app(&app, spec).await?;
    Ok(Json(record).into_response())
}

/// Removes an app: its containers are drained and stopped, then its records go.
#[utoipa::path(delete, path = "/v1/apps/{app}", tag = "apps",
    params(("app" = String, Path, description = "App name")),
    responses(
        (status = 202, body = AppRemoving),
        (status = 400, body = ErrorBody, description = "Not an app name"),
        (status = 404, body = ErrorBody, description = "No such app"),
        (status = 409, body = ErrorBody, description = "A deployment is under way"),
        (status = 503, body = ErrorBody, description = "The store cannot be written now"),
    ))]
async fn delete_app(
    State(controller): State<Arc<Controller>>,
    Path(app): Path<String>,
) -> Result<Response, ApiError> {
    controller.remove_app(&app).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(AppRemoving {
            app,
            removing: true,
        }),
    )
        .into_response())
}

/// An app's deployments, newest first.
#[utoipa::path(get, path = "/v1/apps/{app}/deployments", tag = "apps",
    params(("app" = String, Path, description = "App name")),
    responses(
        (status = 200, body = DeploymentList),
        (status = 400, body = ErrorBody, description = "Not an app name"),
        (status = 404, body = ErrorBody, description = "No such app"),
    ))]
async fn list_deployments(
    State(controller): State<Arc<Controller>>,
    Path(app): Path<String>,
) -> Result<Response, ApiError> {
    validate_app_name(&app)?;
    let snapshot = controller.store().snapshot();
    if !snapshot.apps.contains_key(app.as_str()) && snapshot.deployments_of(&app).next().is_none() {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("app `{app}` not found"),
        ));
    }
    let deployments: Vec<_> = snapshot
        .deployments_of(&app)
        .rev()
        .map(|d| view(&snapshot, d))
        .collect();
    Ok(Json(DeploymentList {
        app: &app,
        deployments,
    })
    .into_response())
}

/// Starts a deployment (the image resolved to a digest now); poll its `Location`.
#[utoipa::path(post, path = "/v1/apps/{app}/deployments", tag = "apps",
    params(("app" = String, Path, description = "App name")),
    request_body = DeployRequest,
    responses(
        (status = 202, body = DeploymentView, headers(("location" = String, description = "The deployment"))),
        (status = 400, body = ErrorBody, description = "Invalid name or request"),
        (status = 404, body = ErrorBody, description = "No such app, or image"),
        (status = 409, body = ErrorBody, description = "A deployment is under way"),
        (status = 422, body = ErrorBody, description = "Cannot be placed (no live agents in a zone)"),
        (status = 502, body = ErrorBody, description = "The registry refused or failed"),
        (status = 503, body = ErrorBody, description = "The store cannot be written now"),
    ))]
async fn create_deployment(
    State(controller): State<Arc<Controller>>,
    Path(app): Path<String>,
    body: Bytes,
) -> Result<Response, ApiError> {
    validate_app_name(&app)?;
    let request: DeployRequest = parse_body(&body)?;
    let deployment = controller.create(&app, request).await?;
    Ok(accepted(&deployment, &controller.store().snapshot()))
}

/// Deploys the previous version again.
#[utoipa::path(post, path = "/v1/apps/{app}/rollback", tag = "apps",
    params(("app" = String, Path, description = "App name")),
    responses(
        (status = 202, body = DeploymentView, headers(("location" = String, description = "The deployment"))),
        (status = 400, body = ErrorBody, description = "Not an app name"),
        (status = 404, body = ErrorBody, description = "No such app, or no previous version"),
        (status = 409, body = ErrorBody, description = "A deployment is under way"),
        (status = 422, body = ErrorBody, description = "Cannot be placed"),
        (status = 503, body = ErrorBody, description = "The store cannot be written now"),
    ))]
async fn rollback(
    State(controller): State<Arc<Controller>>,
    Path(app): Path<String>,
) -> Result<Response, ApiError> {
    let deployment = controller.rollback(&app).await?;
    Ok(accepted(&deployment, &controller.store().snapshot()))
}

/// One deployment: its steps and instances.
#[utoipa::path(get, path = "/v1/apps/{app}/deployments/{id}", tag = "apps",
    params(
        ("app" = String, Path, description = "App name"),
        ("id" = String, Path, description = "Deployment id (a number)"),
    ),
    responses(
        (status = 200, body = DeploymentView),
        (status = 400, body = ErrorBody, description = "Not an app name or deployment id"),
        (status = 404, body = ErrorBody, description = "No such deployment"),
    ))]
async fn get_deployment(
    State(controller): State<Arc<Controller>>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = parse_id(&app, &id)?;
    let snapshot = controller.store().snapshot();
    let deployment = snapshot.deployment(&app, id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("deployment {app}/{id} not found"),
        )
    })?;
    Ok(Json(view(&snapshot, deployment)).into_response())
}

/// Cancels a deployment under way: the controller rolls it back.
#[utoipa::path(delete, path = "/v1/apps/{app}/deployments/{id}", tag = "apps",
    params(
        ("app" = String, Path, description = "App name"),
        ("id" = String, Path, description = "Deployment id (a number)"),
    ),
    responses(
        (status = 202, body = DeploymentView, headers(("location" = String, description = "The deployment"))),
        (status = 400, body = ErrorBody, description = "Not an app name or deployment id"),
        (status = 404, body = ErrorBody, description = "No such deployment"),
        (status = 409, body = ErrorBody, description = "It has finished"),
        (status = 503, body = ErrorBody, description = "The store cannot be written now"),
    ))]
async fn cancel_deployment(
    State(controller): State<Arc<Controller>>,
    Path((app, id)): Path<(String, String)>,
) -> Result<Response, ApiError> {
    let id = parse_id(&app, &id)?;
    let deployment = controller.cancel(&app, id).await?;
    Ok(accepted(&deployment, &controller.store().snapshot()))
}
