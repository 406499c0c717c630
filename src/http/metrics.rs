//! `GET /metrics`: the process's metrics in Prometheus text format (names in `telemetry`).

use axum::Router;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::ApiState;
use crate::telemetry;

pub(crate) fn router() -> Router<ApiState> {
    Router::new().route("/metrics", get(metrics))
}

async fn metrics() -> Response {
    match telemetry::install_prometheus() {
        Some(handle) => {
            handle.run_upkeep();
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                handle.render(),
            )
                .into_response()
        }
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no metrics recorder installed\n",
        )
            .into_response(),
    }
}
