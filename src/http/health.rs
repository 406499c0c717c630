//! `/healthz`: the process answers. `/readyz`: it can do work — the broker connection is up and
//! the database answers. Its body also lists the model lifecycle warnings (CONTRACT.md §11),
//! which do not change the status: a model shutting down next week is news, not unreadiness.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Json, Router};
use serde_json::{Value, json};

use super::ApiState;

pub(crate) fn router() -> Router<ApiState> {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
}

async fn healthz() -> Json<Value> {
    Json(json!({"status": "ok"}))
}

async fn readyz(State(state): State<ApiState>) -> (StatusCode, Json<Value>) {
    let broker = state.broker.is_up();
    let database = crate::db::ping(&state.db).await;
    let status = if broker && database {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({
            "ready": broker && database,
            "broker": broker,
            "database": database,
            "model_warnings": state.lifecycle.warnings(),
        })),
    )
}
