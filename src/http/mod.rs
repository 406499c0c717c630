//! The admin HTTP API (CONTRACT.md §8), on axum: one `router()` per file, merged here.

mod auth;
mod cleanup;
mod health;
mod images;
mod metrics;
mod stats;

use std::sync::Arc;

use axum::Router;
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::Settings;
use crate::maintenance::Cleaner;
use crate::storage::ImageStore;
use crate::worker::BrokerHealth;

/// What the handlers read.
#[derive(Clone)]
pub struct ApiState {
    pub db: PgPool,
    pub store: Arc<dyn ImageStore>,
    pub broker: Arc<BrokerHealth>,
    pub settings: Arc<Settings>,
    pub cleaner: Arc<Cleaner>,
    /// What OpenAI said of the models the worker may call, for `/readyz`.
    pub lifecycle: Arc<crate::generate::lifecycle::Lifecycle>,
}

pub fn router(state: ApiState) -> Router {
    Router::new()
        .merge(health::router())
        .merge(images::router())
        .merge(stats::router())
        .merge(cleanup::router())
        .merge(metrics::router())
        .with_state(state)
}

/// Serves the API on `listener` until `shutdown` is cancelled.
pub async fn serve(
    listener: TcpListener,
    state: ApiState,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}
