//! The admin HTTP API (CONTRACT.md §8) and the dashboard at `/`, on axum: one `router()` per file, merged here, served by
//! `server` (hyper, with a header-read timeout and a connection cap). Every route but the cleanup
//! answers within `http.request_timeout_secs` or gets a 408.

mod analytics;
mod auth;
mod cleanup;
mod dashboard;
mod experiments;
mod health;
mod images;
mod metrics;
mod server;
mod stats;
mod svg;
mod users;

use std::sync::Arc;

use axum::Router;
use axum::http::StatusCode;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::timeout::TimeoutLayer;

use crate::config::Settings;
use crate::maintenance::Cleaner;
use crate::storage::ImageStore;
use crate::worker::BrokerHealth;

/// What the handlers read.
#[derive(Clone)]
pub struct ApiState {
    /// The database.
    pub db: PgPool,
    /// Where the images are (served under `/images/…`).
    pub store: Arc<dyn ImageStore>,
    /// Whether the broker is up, for `/readyz`.
    pub broker: Arc<BrokerHealth>,
    /// The worker's settings.
    pub settings: Arc<Settings>,
    /// Runs the cleanup for `POST /api/cache/cleanup`.
    pub cleaner: Arc<Cleaner>,
    /// What OpenAI said of the models the worker may call, for `/readyz`.
    pub lifecycle: Arc<crate::generate::lifecycle::Lifecycle>,
}

/// The admin HTTP API's routes over `state`; every route but the cleanup answers within
/// `http.request_timeout_secs` or with 408.
pub(crate) fn router(state: ApiState) -> Router {
    // The timeout covers producing the response (an image's body streams afterwards, bounded by
    // the connection cap). The cleanup is exempt: a long run should still answer with its report.
    let timeout = TimeoutLayer::with_status_code(
        StatusCode::REQUEST_TIMEOUT,
        state.settings.http.request_timeout(),
    );
    let timed = Router::new()
        .merge(health::router())
        .merge(images::router())
        .merge(stats::router())
        .merge(metrics::router())
        .merge(analytics::router())
        .merge(experiments::router())
        .merge(dashboard::router())
        .merge(users::router())
        .layer(timeout);
    Router::new()
        .merge(timed)
        .merge(cleanup::router())
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let limits = state.settings.http.clone();
    server::run(listener, router(state), &limits, shutdown).await
}
