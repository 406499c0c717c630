//! `/api/users/{user_id}/cache-preferences`: a user's stored cache preferences (`job::policy`),
//! read (`GET`), replaced (`PUT`, a JSON body of `max_age_days`, `mode`, `variants_opt_out`, each
//! optional; what is left out is unset) and removed (`DELETE`). Every method needs the admin
//! token: preferences are per-user data. Each job reads its user's preferences when it runs, so a
//! change applies to the next job on every replica, without a restart or a cache to expire.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::{ApiState, auth};
use crate::db::{DbError, preferences};
use crate::job::{UserPreferences, valid_user_id};

pub(crate) fn router() -> Router<ApiState> {
    Router::new().route(
        "/api/users/{user_id}/cache-preferences",
        get(show).put(replace).delete(clear),
    )
}

/// The body of every answer: the user and what is stored for them (`stored` false: nothing,
/// the fields are then the "not set" values).
fn body(user_id: &str, stored: Option<&UserPreferences>) -> serde_json::Value {
    let shown = stored.cloned().unwrap_or_default();
    json!({
        "user_id": user_id,
        "stored": stored.is_some(),
        "max_age_days": shown.max_age_days,
        "mode": shown.mode,
        "variants_opt_out": shown.variants_opt_out,
    })
}

fn refused(status: StatusCode, error: &str, message: String) -> Response {
    (status, Json(json!({"error": error, "message": message}))).into_response()
}

fn unavailable(error: &DbError) -> Response {
    tracing::warn!(%error, "cannot reach the cache preferences");
    refused(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the database is out of reach".to_owned(),
    )
}

/// The token and the user id, checked: the refusal to answer with, if either is wrong.
fn refusal(state: &ApiState, headers: &HeaderMap, user_id: &str) -> Option<Response> {
    if let Err(refusal) = auth::authorize(headers, state.settings.secrets.admin_token.as_ref()) {
        return Some(refusal.into_response());
    }
    (!valid_user_id(user_id)).then(|| {
        refused(
            StatusCode::BAD_REQUEST,
            "bad_request",
            "user_id must be 1-128 printable characters".to_owned(),
        )
    })
}

async fn show(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
) -> Response {
    if let Some(refusal) = refusal(&state, &headers, &user_id) {
        return refusal;
    }
    match preferences::get(&state.db, &user_id).await {
        Ok(stored) => Json(body(&user_id, stored.as_ref())).into_response(),
        Err(error) => unavailable(&error),
    }
}

async fn replace(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
    request: Bytes,
) -> Response {
    if let Some(refusal) = refusal(&state, &headers, &user_id) {
        return refusal;
    }
    let parsed = serde_json::from_slice::<UserPreferences>(&request)
        .map_err(|error| error.to_string())
        .and_then(UserPreferences::checked);
    let wanted = match parsed {
        Ok(wanted) => wanted,
        Err(message) => {
            return refused(StatusCode::BAD_REQUEST, "invalid_preferences", message);
        }
    };
    match preferences::set(&state.db, &user_id, &wanted).await {
        Ok(()) => {
            tracing::info!(%user_id, ?wanted, "cache preferences stored");
            Json(body(&user_id, Some(&wanted))).into_response()
        }
        Err(error) => unavailable(&error),
    }
}

async fn clear(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Path(user_id): Path<String>,
) -> Response {
    if let Some(refusal) = refusal(&state, &headers, &user_id) {
        return refusal;
    }
    match preferences::clear(&state.db, &user_id).await {
        Ok(had) => {
            let mut answer = body(&user_id, None);
            answer["cleared"] = json!(had);
            Json(answer).into_response()
        }
        Err(error) => unavailable(&error),
    }
}
