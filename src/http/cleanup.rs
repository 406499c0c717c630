//! `POST /api/cache/cleanup[?dry_run=true]`: runs the cleanup now and answers with its report;
//! 409 when another process is running one (the same lock as the scheduler's); 503 when the
//! database is out of reach. Needs the admin token.

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tracing::Instrument;

use super::{ApiState, auth};
use crate::maintenance::Ran;

pub(crate) fn router() -> Router<ApiState> {
    Router::new().route("/api/cache/cleanup", post(cleanup))
}

#[derive(Debug, Deserialize)]
struct Params {
    #[serde(default)]
    dry_run: bool,
}

async fn cleanup(
    State(state): State<ApiState>,
    headers: HeaderMap,
    Query(params): Query<Params>,
) -> Response {
    if let Err(refused) = auth::authorize(&headers, state.settings.secrets.admin_token.as_ref()) {
        return refused.into_response();
    }
    // A run of its own: a caller that hangs up does not cut a cleanup short (its report is still
    // logged and published).
    let cleaner = state.cleaner.clone();
    let run = tokio::spawn(
        async move { cleaner.run(params.dry_run).await }
            .instrument(crate::telemetry::task("cleanup (admin api)")),
    );
    let ran = match run.await {
        Ok(ran) => ran,
        Err(error) => {
            tracing::error!(%error, "the cleanup task failed");
            return (
                StatusCode::INTERNAL_SERVER_ERROR,
                Json(json!({"error": "internal", "message": "the cleanup task failed"})),
            )
                .into_response();
        }
    };
    match ran {
        Ok(Ran::Completed(report)) => Json(report).into_response(),
        Ok(Ran::Skipped) => (
            StatusCode::CONFLICT,
            Json(json!({"error": "busy", "status": "skipped",
                        "message": "another cleanup is running; nothing was done"})),
        )
            .into_response(),
        Err(error) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"error": "cleanup_failed", "message": error.to_string()})),
        )
            .into_response(),
    }
}
