//! `GET /api/analytics/…`: the analytics as JSON, read from the rollups of migration 0009, never
//! by scanning the job or cache tables (CONTRACT.md §8).
//!
//! Readable without the admin token, like `GET /api/cache/stats`: they are aggregates the
//! dashboard shows to anyone who can reach the admin port. The one exception is
//! `/api/analytics/top-users`, which names users (their ids, nothing else): it needs the token.
//!
//! - `series?step=hour|day&since=48h`: every hour (up to 14 days) or day of the span, zeros where
//!   nothing ran;
//! - `summary?since=7d`: the span's totals beside the span before, with the trend (whole hours
//!   up to 72 h, whole UTC days beyond);
//! - `breakdowns?since=30d&limit=10`: per attribute, its most used values;
//! - `top-configs?by=uses|saved&limit=10`: since the beginning, with thumbnails;
//! - `top-users?limit=10`: by spend, since the beginning (token);
//! - `warming?since=7d`: cache warming's runs, spend and waste in the span, and what the warmed
//!   entries are worth now (`db::warm::figures`: a small table and a partial index).

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use super::{ApiState, auth};
use crate::db::DbError;
use crate::db::analytics::TopBy;
use crate::stats::analytics::{self, Step};

/// Longest top list or breakdown asked for.
const MAX_LIMIT: i64 = 100;

pub(crate) fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/analytics/series", get(series))
        .route("/api/analytics/summary", get(summary))
        .route("/api/analytics/breakdowns", get(breakdowns))
        .route("/api/analytics/top-configs", get(top_configs))
        .route("/api/analytics/top-users", get(top_users))
        .route("/api/analytics/warming", get(warming))
}

#[derive(Debug, Deserialize)]
struct Params {
    step: Option<Step>,
    since: Option<String>,
    limit: Option<i64>,
    by: Option<String>,
}

fn bad_request(message: String) -> Response {
    (
        StatusCode::BAD_REQUEST,
        Json(json!({"error": "bad_request", "message": message})),
    )
        .into_response()
}

fn unavailable(error: DbError) -> Response {
    tracing::warn!(%error, "cannot read the analytics");
    (
        StatusCode::SERVICE_UNAVAILABLE,
        Json(json!({"error": "unavailable", "message": "the database is out of reach"})),
    )
        .into_response()
}

fn answer<T: serde::Serialize>(read: Result<T, DbError>) -> Response {
    match read {
        Ok(body) => Json(body).into_response(),
        Err(error) => unavailable(error),
    }
}

/// `since` (or `default`) and the span it names; the message of a 400 if it names none.
fn span(params: &Params, default: &str) -> Result<(String, chrono::Duration), String> {
    let since = params.since.clone().unwrap_or_else(|| default.to_owned());
    analytics::parse_span(&since)
        .map(|span| (since, span))
        .map_err(|error| error.to_string())
}

fn limit(params: &Params) -> Result<i64, String> {
    match params.limit.unwrap_or(10) {
        n @ 1..=MAX_LIMIT => Ok(n),
        n => Err(format!("limit {n} is out of range: from 1 to {MAX_LIMIT}")),
    }
}

async fn series(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    let step = params.step.unwrap_or(Step::Hour);
    let default = match step {
        Step::Hour => "48h",
        Step::Day => "30d",
    };
    let span = match span(&params, default) {
        Ok((_, span)) => span,
        Err(message) => return bad_request(message),
    };
    if step == Step::Hour && span > chrono::Duration::hours(analytics::MAX_HOURLY_SERIES) {
        return bad_request(format!(
            "an hourly series covers at most {}d: ask for step=day",
            analytics::MAX_HOURLY_SERIES / 24
        ));
    }
    answer(analytics::series(&state.db, step, span, Utc::now()).await)
}

async fn summary(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    let (since, span) = match span(&params, "7d") {
        Ok(read) => read,
        Err(message) => return bad_request(message),
    };
    answer(analytics::summary(&state.db, &since, span, Utc::now()).await)
}

async fn warming(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    let (_, span) = match span(&params, "7d") {
        Ok(read) => read,
        Err(message) => return bad_request(message),
    };
    let now = Utc::now();
    answer(crate::db::warm::figures(&state.db, now - span, now).await)
}

async fn breakdowns(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    let (span, limit) = match (span(&params, "30d"), limit(&params)) {
        (Ok((_, span)), Ok(limit)) => (span, limit),
        (Err(message), _) | (_, Err(message)) => return bad_request(message),
    };
    answer(analytics::breakdowns(&state.db, span, limit, Utc::now()).await)
}

/// `by=uses` (default) or `by=saved`.
fn top_by(by: Option<&str>) -> Result<TopBy, String> {
    match by.unwrap_or("uses") {
        "uses" => Ok(TopBy::Uses),
        "saved" => Ok(TopBy::Saved),
        other => Err(format!("by={other}: write by=uses or by=saved")),
    }
}

async fn top_configs(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    let by = match top_by(params.by.as_deref()) {
        Ok(by) => by,
        Err(message) => return bad_request(message),
    };
    let limit = match limit(&params) {
        Ok(limit) => limit,
        Err(message) => return bad_request(message),
    };
    answer(
        analytics::top_configs(&state.db, by, limit).await.map(
            |configs| json!({"by": params.by.as_deref().unwrap_or("uses"), "configs": configs}),
        ),
    )
}

async fn top_users(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    if let Err(refused) = auth::authorize(&headers, state.settings.secrets.admin_token.as_ref()) {
        return refused.into_response();
    }
    let limit = match limit(&params) {
        Ok(limit) => limit,
        Err(message) => return bad_request(message),
    };
    answer(
        analytics::top_users(&state.db, limit)
            .await
            .map(|users| json!({"users": users})),
    )
}
