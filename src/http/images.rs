//! `/images/{yyyy}/{mm}/{hash}.png`: the stored images, so `image_url` opens. Only paths of the
//! exact shape the worker writes are served; anything else is a 404 before storage is touched.

use axum::Router;
use axum::extract::{Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::ApiState;
use crate::storage::StoragePath;

pub fn router() -> Router<ApiState> {
    Router::new().route("/images/{year}/{month}/{file}", get(image))
}

async fn image(
    State(state): State<ApiState>,
    Path((year, month, file)): Path<(String, String, String)>,
) -> Response {
    let Some(path) = StoragePath::parse(&format!("{year}/{month}/{file}")) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    match state.store.get(&path).await {
        Ok(Some(bytes)) => (
            [
                (header::CONTENT_TYPE, "image/png"),
                (header::CACHE_CONTROL, "public, max-age=31536000, immutable"),
            ],
            bytes,
        )
            .into_response(),
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(error) => {
            tracing::warn!(%error, %path, "could not read an image");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}
