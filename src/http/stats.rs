//! `GET /api/cache/stats`: the statistics (CONTRACT.md §8), read from counters and hourly rollups,
//! never by scanning the cache table, so it answers in milliseconds at any cache size.

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use super::ApiState;
use crate::stats;

pub(crate) fn router() -> Router<ApiState> {
    Router::new().route("/api/cache/stats", get(cache_stats))
}

async fn cache_stats(State(state): State<ApiState>) -> Response {
    match stats::read(&state.db).await {
        Ok(stats) => Json(stats).into_response(),
        Err(error) => {
            tracing::warn!(%error, "cannot read the statistics");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({"error": "unavailable", "message": "the database is out of reach"})),
            )
                .into_response()
        }
    }
}
