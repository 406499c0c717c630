//! `/images/{yyyy}/{mm}/{hash}.png`: the stored images, so `image_url` opens. Only paths of the
//! exact shape the worker writes are served; anything else is a 404 before storage is touched.
//!
//! With the local backend a file is streamed from disk in small chunks (`ReaderStream`), never
//! read whole: a slow reader of a 5 MiB image holds a file descriptor and a few kilobytes, not
//! the image. The remote backends' objects (at most `storage::MAX_IMAGE_BYTES`) are read whole
//! through the store — their `image_url`s point at the bucket itself, so this route is rarely
//! asked for them — at most [`REMOTE_READS`] at a time, so that many clients cannot make the
//! process hold many images at once.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use tokio::sync::Semaphore;
use tokio_util::io::ReaderStream;

use super::ApiState;
use crate::config::StorageKind;
use crate::storage::StoragePath;

const CONTENT_TYPE: &str = "image/png";
/// Stored objects are immutable (CONTRACT.md §5): a regenerated image gets a path of its own.
const CACHE_CONTROL: &str = "public, max-age=31536000, immutable";
/// The chunk a file is read in.
const CHUNK_BYTES: usize = 16 * 1024;
/// Remote objects read into memory at once, across all connections (8 × 5 MiB at most).
const REMOTE_READS: usize = 8;
static REMOTE_SLOTS: Semaphore = Semaphore::const_new(REMOTE_READS);

pub(crate) fn router() -> Router<ApiState> {
    Router::new().route("/images/{year}/{month}/{file}", get(image))
}

async fn image(
    State(state): State<ApiState>,
    Path((year, month, file)): Path<(String, String, String)>,
) -> Response {
    let Some(path) = StoragePath::parse(&format!("{year}/{month}/{file}")) else {
        return StatusCode::NOT_FOUND.into_response();
    };
    let storage = &state.settings.storage;
    if storage.kind == StorageKind::Local {
        return stream_file(&storage.local_dir.join(path.as_str()), &path).await;
    }
    // Waiting here counts against the request timeout (a 408 when the slots stay busy). The slot
    // is held until the body has been sent (or the connection is gone), since that is how long
    // the image stays in memory.
    let Ok(slot) = REMOTE_SLOTS.acquire().await else {
        return StatusCode::SERVICE_UNAVAILABLE.into_response();
    };
    match state.store.get(&path).await {
        Ok(Some(bytes)) => {
            let length = bytes.len();
            let chunks = (0..length).step_by(CHUNK_BYTES).map(move |at| {
                let _held = &slot;
                Ok::<_, std::convert::Infallible>(bytes.slice(at..length.min(at + CHUNK_BYTES)))
            });
            png(
                Body::from_stream(futures_util::stream::iter(chunks)),
                Some(length as u64),
            )
        }
        Ok(None) => StatusCode::NOT_FOUND.into_response(),
        Err(error) => {
            tracing::warn!(%error, %path, "could not read an image");
            StatusCode::SERVICE_UNAVAILABLE.into_response()
        }
    }
}

/// The file as a stream. Files are replaced by rename, never rewritten, so the open file and its
/// length stay consistent while it streams.
async fn stream_file(file: &std::path::Path, path: &StoragePath) -> Response {
    let opened = match tokio::fs::File::open(file).await {
        Ok(opened) => opened,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => {
            return StatusCode::NOT_FOUND.into_response();
        }
        Err(error) => {
            tracing::warn!(%error, %path, "could not open an image");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    let length = match opened.metadata().await {
        Ok(meta) if meta.is_file() => meta.len(),
        Ok(_) => return StatusCode::NOT_FOUND.into_response(),
        Err(error) => {
            tracing::warn!(%error, %path, "could not read an image's size");
            return StatusCode::SERVICE_UNAVAILABLE.into_response();
        }
    };
    let body = Body::from_stream(ReaderStream::with_capacity(opened, CHUNK_BYTES));
    png(body, Some(length))
}

fn png(body: Body, length: Option<u64>) -> Response {
    let mut response = Response::new(body);
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(CONTENT_TYPE));
    headers.insert(
        header::CACHE_CONTROL,
        HeaderValue::from_static(CACHE_CONTROL),
    );
    if let Some(length) = length {
        headers.insert(header::CONTENT_LENGTH, HeaderValue::from(length));
    }
    response
}
