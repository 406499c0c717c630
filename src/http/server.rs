//! The admin API's accept loop: hyper's HTTP/1 server with the limits `axum::serve` does not
//! offer.
//!
//! - A header-read timeout (`http.header_read_timeout_secs`): a client that opens a connection
//!   and never finishes its request head (a slowloris), or leaves a keep-alive connection idle, is
//!   disconnected when it runs out.
//! - A connection cap (`http.max_connections`): at the cap the loop stops accepting until a
//!   connection closes, so admin clients can never take the file descriptors the jobs need. Those
//!   waiting sit in the kernel's listen backlog, costing the process nothing.
//! - Shutdown stops accepting at once and gives open connections [`SHUTDOWN_GRACE`] to finish.
//!
//! The request timeout is a layer on the router (`http::router`), not here.

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::HttpSettings;

/// How long open connections may take to finish once the server is told to stop.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The pause after a failed accept (out of file descriptors, typically), so the loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` under `limits` until `shutdown` is cancelled.
pub async fn run(
    listener: TcpListener,
    app: Router,
    limits: &HttpSettings,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout())
        .keep_alive(true);
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    let mut connections = tokio::task::JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        let slot = tokio::select! {
            slot = slots.clone().acquire_owned() => slot,
            () = shutdown.cancelled() => break,
        };
        let Ok(slot) = slot else { break };
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shutdown.cancelled() => break,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(error) => {
                tracing::warn!(%error, "admin API: could not accept a connection");
                tokio::time::sleep(ACCEPT_PAUSE).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        connections.spawn(async move {
            if let Err(error) = connection.await {
                tracing::debug!(%error, "admin API connection ended with an error");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::info!(
            open = connections.len(),
            "admin API: closing the connections still open after the grace period"
        );
    }
    connections.shutdown().await;
    Ok(())
}
