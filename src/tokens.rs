//! `/v1/tokens` (the admin's: make, list, revoke team and admin tokens) and `/v1/audit`
//! (the audit log; a team's tokens see their teams' records).

use std::time::{Duration, SystemTime};

use axum::Json;
use axum::body::Bytes;
use axum::extract::{Extension, Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get};
use discovery::admin::{ApiError, parse_body};
use discovery::tokens::{TokenRecord, validate_token_id};
use serde::Deserialize;
use serde_json::json;

use crate::authz::{Authz, Caller};

const MAX_TTL: Duration = Duration::from_secs(3 * 365 * 24 * 3600);

pub fn routes(authz: Authz) -> axum::Router {
    axum::Router::new()
        .route("/v1/tokens", get(list).post(create))
        .route("/v1/tokens/{id}", delete(revoke))
        .route("/v1/audit", get(audit))
        .with_state(authz)
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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateBody {
    #[serde(default)]
    teams: Vec<String>,
    #[serde(default)]
    admin: bool,
    #[serde(default, with = "humantime_serde")]
    ttl: Option<Duration>,
    #[serde(default)]
    description: Option<String>,
}

fn view(record: &TokenRecord) -> serde_json::Value {
    json!({
        "id": record.id,
        "teams": record.teams,
        "admin": record.admin,
        "description": record.description,
        "created_by": record.created_by,
        "created": humantime::format_rfc3339_seconds(record.created).to_string(),
        "expires": record.expires.map(|t| humantime::format_rfc3339_seconds(t).to_string()),
    })
}

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
        && (ttl < Duration::from_secs(60) || ttl > MAX_TTL)
    {
        return Err(invalid("ttl must be 1m to 3y".into()));
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
    answer["token"] = json!(token);
    Ok((StatusCode::CREATED, Json(answer)).into_response())
}

async fn list(
    State(authz): State<Authz>,
    Extension(caller): Extension<Caller>,
) -> Result<Response, ApiError> {
    admin_only(&caller)?;
    let snapshot = authz.store().snapshot();
    let tokens: Vec<_> = snapshot.tokens.values().map(|t| view(t)).collect();
    Ok(Json(json!({"tokens": tokens})).into_response())
}

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

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AuditQuery {
    /// RFC 3339 time, or a sequence number (records after it).
    since: Option<String>,
    limit: Option<usize>,
}

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
    let limit = query.limit.unwrap_or(1000).clamp(1, access::audit::KEPT);
    let mut records = log.query(after, since, access::audit::KEPT);
    if let access::Identity::Teams { teams, .. } = &caller.0 {
        records.retain(|r| r.teams.split(',').any(|t| teams.contains(t)));
    }
    records.truncate(limit);
    Ok(Json(json!({"records": records})).into_response())
}
