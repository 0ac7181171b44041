//! `/v1/tokens` (the admin's: make, list, revoke team and admin tokens) and `/v1/audit`
//! (the audit log; a team's tokens see their teams' records).

use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use discovery::admin::{ApiError, ErrorBody, parse_body};
use discovery::tokens::{TokenRecord, validate_token_id};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use crate::authz::{Authz, Caller};

const MAX_TTL: Duration = Duration::from_secs(3 * 365 * 24 * 3600);

pub fn routes(authz: Authz) -> OpenApiRouter {
    OpenApiRouter::new()
        .routes(routes!(list, create))
        .routes(routes!(revoke))
        .routes(routes!(audit))
        .with_state(authz)
}

/// A token as listed (never its secret).
#[derive(Serialize, ToSchema)]
struct TokenView {
    id: String,
    teams: Vec<String>,
    admin: bool,
    description: Option<String>,
    created_by: String,
    created: String,
    expires: Option<String>,
    /// Only in the answer to its creation: the secret, shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    token: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct TokenList {
    tokens: Vec<TokenView>,
}

#[derive(Serialize, ToSchema)]
struct AuditList {
    #[schema(value_type = Vec<Object>)]
    records: Vec<access::audit::AuditRecord>,
}

fn admin_only(caller: &Caller) -> Result<(), ApiError> {
    if caller.0.is_admin() {
        Ok(())
    } else {
        Err(ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            "only the admin manages tokens",
        ))
    }
}

#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    teams: Vec<String>,
    #[serde(default)]
    admin: bool,
    /// e.g. `30d`.
    #[serde(default, with = "humantime_serde")]
    #[schema(value_type = Option<String>)]
    ttl: Option<Duration>,
    #[serde(default)]
    description: Option<String>,
}

fn view(record: &TokenRecord) -> TokenView {
    TokenView {
        id: record.id.clone(),
        teams: record.teams.clone(),
        admin: record.admin,
        description: record.description.clone(),
        created_by: record.created_by.clone(),
        created: humantime::format_rfc3339_seconds(record.created).to_string(),
        expires: record
            .expires
            .map(|t| humantime::format_rfc3339_seconds(t).to_string()),
        token: None,
    }
}

/// Makes a token for teams (or the admin); the admin's.
#[utoipa::path(post, path = "/v1/tokens", tag = "tokens",
    request_body = CreateBody,
    responses(
        (status = 201, body = TokenView, description = "Made; `token` holds the secret, shown once"),
        (status = 400, body = ErrorBody, description = "Unknown team, or neither teams nor admin"),
        (status = 403, body = ErrorBody, description = "Not the admin"),
    ))]
async fn create(
    State(authz): State<Authz>,
    Extension(caller): Extension<Caller>,
    body: Bytes,
) -> Result<Response, ApiError> {
    admin_only(&caller)?;
    let body: CreateBody = parse_body(&body)?;
    let invalid = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid", m);
    if body.admin != body.teams.is_empty() {
        return Err(invalid(
            "give `teams` (a team token) or `admin: true` (an admin token)".into(),
        ));
    }
    for team in &body.teams {
        if !authz.policy.is_team(team) {
            let known: Vec<&str> = authz.policy.team_names().collect();
            return Err(invalid(format!(
                "unknown team `{team}` (configured: {})",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            )));
        }
    }
    if let Some(ttl) = body.ttl
        && (ttl < Duration::from_secs(1) || ttl > MAX_TTL)
    {
        return Err(invalid("ttl must be 1s to 3y".into()));
    }
    let (id, token, hash) = access::token::mint();
    let now = SystemTime::now();
    let record = TokenRecord {
        id,
        hash,
        teams: body.teams,
        admin: body.admin,
        description: body.description,
        created_by: caller.0.label().to_string(),
        created: now,
        expires: body.ttl.map(|ttl| now + ttl),
    };
    record.validate()?;
    authz.store().put_token(record.clone()).await?;
    let mut answer = view(&record);
    // The secret is shown this once; strait keeps only its hash.
    answer.token = Some(token);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

/// The tokens (ids, teams, expiry; never secrets); the admin's.
#[utoipa::path(get, path = "/v1/tokens", tag = "tokens",
    responses(
        (status = 200, body = TokenList),
        (status = 403, body = ErrorBody, description = "Not the admin"),
    ))]
async fn list(
    State(authz): State<Authz>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    admin_only(&caller)?;
    let snapshot = authz.store().snapshot();
    let tokens = snapshot.tokens.values().map(|t| view(t)).collect();
    Ok(Json(TokenList { tokens }).into_response())
}

/// Revokes a token; the admin's.
#[utoipa::path(delete, path = "/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path, description = "Token id (16 hex digits)")),
    responses(
        (status = 204, description = "Revoked"),
        (status = 400, body = ErrorBody, description = "Not a token id"),
        (status = 403, body = ErrorBody, description = "Not the admin"),
        (status = 404, body = ErrorBody, description = "No such token"),
    ))]
async fn revoke(
    State(authz): State<Authz>,
    Extension(caller): Extension<Caller>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    admin_only(&caller)?;
    validate_token_id(&id)?;
    if authz.store().delete_token(&id).await? {
        Ok(StatusCode::NO_CONTENT.into_response())
    } else {
        Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("token `{id}` not found"),
        ))
    }
}

#[derive(Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// RFC 3339 time, or a sequence number (records after it).
    since: Option<String>,
    /// At most this many records (1 to 10000; default 1000).
    #[param(minimum = 1, maximum = 10000)]
    limit: Option<usize>,
}

/// The audit log, oldest first (a team's token sees its teams' records).
#[utoipa::path(get, path = "/v1/audit", tag = "tokens",
    params(AuditQuery),
    responses(
        (status = 200, body = AuditList),
        (status = 400, body = ErrorBody, description = "A `since` that is neither a time nor a number"),
        (status = 404, body = ErrorBody, description = "No audit log"),
    ))]
async fn audit(
    State(authz): State<Authz>,
    Extension(caller): Extension<Caller>,
    Query(query): Query<AuditQuery>,
) -> Result<Response, ApiError> {
    let Some(log) = authz.audit() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "no audit log here",
        ));
    };
    let (after, since) = match query.since.as_deref() {
        None => (None, None),
        Some(text) => match text.parse::<u64>() {
            Ok(seq) => (Some(seq), None),
            Err(_) => (
                None,
                Some(humantime::parse_rfc3339_weak(text).map_err(|_| {
                    ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "invalid",
                        format!(
                            "since: `{text}` is neither an RFC 3339 time nor a sequence number"
                        ),
                    )
                })?),
            ),
        },
    };
    let limit = query.limit.unwrap_or(1000);
    if !(1..=access::audit::KEPT).contains(&limit) {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            format!(
                "limit: {limit} is out of range: 1 to {}",
                access::audit::KEPT
            ),
        ));
    }
    let mut records = log.query(after, since, access::audit::KEPT);
    if let access::Identity::Teams { teams, .. } = &caller.0 {
        records.retain(|r| r.teams.split(',').any(|t| teams.contains(t)));
    }
    records.truncate(limit);
    Ok(Json(AuditList { records }).into_response())
}
