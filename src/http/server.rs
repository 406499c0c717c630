//! The admin API's accept loop: hyper's HTTP/1 server with the limits `axum::serve` does not
//! offer.
//!
//! - A header-read timeout (`http.header_read_timeout_secs`): a client that opens a connection
//!   and never finishes its request head (a slowloris), or leaves a keep-alive connection idle, is
//!   disconnected when it runs out.
//! - A connection cap (`http.max_connections`): at the cap the loop stops accepting until a
//!   connection closes, so admin clients can never take the file descriptors the jobs need. Those
//!   waiting sit in the kernel's listen backlog, costing the process nothing.
//! - A send-stall timeout (`http.send_stall_timeout_secs`): a client that stops reading a response
//!   (so the server's writes stay blocked that long) is disconnected, so stalled readers cannot
//!   hold every slot — and `/readyz` — for good.
//! - Shutdown stops accepting at once and gives open connections [`SHUTDOWN_GRACE`] to finish.
//!
//! The request timeout is a layer on the router (`http::router`), not here.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::Sleep;
use tokio_util::sync::CancellationToken;

use crate::config::HttpSettings;

/// How long open connections may take to finish once the server is told to stop.
pub(crate) const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);
/// The pause after a failed accept (out of file descriptors, typically), so the loop does not spin.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);

/// Serves `app` on `listener` under `limits` until `shutdown` is cancelled.
pub(crate) async fn run(
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
        let stream = StallGuard::new(stream, limits.send_stall_timeout());
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

/// A connection whose writes fail once one has been blocked for `limit`: the client stopped
/// reading. Reads pass through untouched (the header-read timeout governs them).
struct StallGuard<T> {
    io: T,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<T> StallGuard<T> {
    fn new(io: T, limit: Duration) -> StallGuard<T> {
        StallGuard {
            io,
            limit,
            stalled: None,
        }
    }

    /// Passes a ready write on (and forgets any stall); on a blocked one, starts or checks the
    /// stall clock.
    fn guard<R>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<R>>,
    ) -> Poll<io::Result<R>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let clock = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        ready!(clock.as_mut().poll(cx));
        Poll::Ready(Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client stopped reading the response",
        )))
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for StallGuard<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for StallGuard<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write(cx, buf);
        self.guard(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.io).poll_write_vectored(cx, bufs);
        self.guard(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.io).poll_flush(cx);
        self.guard(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.io).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncWriteExt;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_write_blocked_for_the_limit_fails_and_a_moving_one_does_not() {
        // A pipe whose reader reads nothing: the writer blocks once its 1 KiB buffer is full.
        let (_client, server) = tokio::io::duplex(1024);
        let mut guarded = StallGuard::new(server, Duration::from_secs(30));
        guarded.write_all(&[7; 1024]).await.unwrap();
        let started = tokio::time::Instant::now();
        let error = guarded.write_all(&[7; 10]).await.unwrap_err();
        assert_eq!(error.kind(), io::ErrorKind::TimedOut);
        assert_eq!(started.elapsed(), Duration::from_secs(30));

        // A slow but moving reader: every write waits less than the limit, none fails.
        let (mut client, server) = tokio::io::duplex(1024);
        let mut guarded = StallGuard::new(server, Duration::from_secs(30));
        let reader = tokio::spawn(async move {
            let mut sink = [0u8; 512];
            let mut total = 0;
            while total < 8 * 1024 {
                tokio::time::sleep(Duration::from_secs(20)).await;
                total += tokio::io::AsyncReadExt::read(&mut client, &mut sink)
                    .await
                    .unwrap();
            }
        });
        guarded.write_all(&[7; 8 * 1024]).await.unwrap();
        drop(guarded);
        reader.await.unwrap();
    }
}
