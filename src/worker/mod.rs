//! The consume loop: one task per delivery, at most `prefetch` at once, reconnecting with backoff
//! whenever the broker connection drops.
//!
//! - [`handle`]: a job's journey, from bytes to an [`Outcome`].
//! - [`claim`]: who may work on a job, and who may generate a key (single flight).
//! - `lead`: the leader's path — turn, charge, generate, store, record.
//! - [`settle`]: the only place that acks, requeues or dead-letters.
//!
//! Correctness does not rest on shutting down cleanly: a delivery is acked only after its result is
//! recorded and confirmed by the broker, so a crash anywhere means a redelivery that is answered
//! from the job table.

mod claim;
pub mod handle;
mod lead;
pub mod outage;
pub mod settle;

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::BasicCancelOptions;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use handle::Context;
pub use settle::Outcome;

use crate::broker::{Broker, BrokerError};

/// Whether the worker currently holds a live broker connection; read by `/readyz`.
#[derive(Debug, Default)]
pub struct BrokerHealth(AtomicBool);

impl BrokerHealth {
    pub fn is_up(&self) -> bool {
        self.0.load(Ordering::Relaxed)
    }
    fn set(&self, up: bool) {
        self.0.store(up, Ordering::Relaxed);
    }
}

/// Consumes jobs until `shutdown` is cancelled, then lets in-flight jobs finish within the grace
/// period. Broker failures are retried forever with backoff; they never end the loop.
pub async fn run(ctx: Arc<Context>, health: Arc<BrokerHealth>, shutdown: CancellationToken) {
    let amqp = &ctx.settings.amqp;
    let reconnect = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(amqp.reconnect_min_ms))
        .with_max_delay(Duration::from_millis(amqp.reconnect_max_ms))
        .with_jitter()
        .without_max_times();
    let mut pauses = reconnect.build();
    loop {
        let mut connected = false;
        let ended = session(&ctx, &health, &shutdown, &mut connected).await;
        health.set(false);
        if shutdown.is_cancelled() {
            return;
        }
        if connected {
            pauses = reconnect.build();
        }
        let pause = pauses.next().unwrap_or(Duration::from_secs(1));
        match ended {
            Ok(()) => tracing::warn!(
                pause_ms = pause.as_millis() as u64,
                "consumer cancelled by the broker; reconnecting"
            ),
            Err(error) => {
                tracing::warn!(%error, pause_ms = pause.as_millis() as u64, "broker connection lost; reconnecting")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => return,
        }
    }
}

/// One connection's worth of consuming.
async fn session(
    ctx: &Arc<Context>,
    health: &BrokerHealth,
    shutdown: &CancellationToken,
    connected: &mut bool,
) -> Result<(), BrokerError> {
    let tag = format!("memoji-worker-{}", uuid::Uuid::new_v4());
    // The queue in the connection name tells operators (and fault tests) whose connection it is.
    let name = format!("{tag} on {}", ctx.settings.amqp.job_queue);
    let broker = Arc::new(Broker::connect(&ctx.settings.amqp, &name).await?);
    broker.declare().await?;
    let (channel, mut consumer) = broker
        .consume_jobs(&tag, ctx.settings.amqp.prefetch)
        .await?;
    *connected = true;
    health.set(true);
    tracing::info!(queue = %ctx.settings.amqp.job_queue, prefetch = ctx.settings.amqp.prefetch, "consuming jobs");

    let in_flight = TaskTracker::new();
    let ended = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            () = ctx.outage.reported() => {
                // The database is out of reach: take no deliveries until it answers again.
                if let Err(error) = outage::stop_consuming(&channel, &mut consumer, &tag).await {
                    break Err(BrokerError::from(error));
                }
                if !ctx.outage.wait_for_database(&ctx.db, shutdown).await {
                    break Ok(());
                }
                let queue = ctx.settings.amqp.job_queue.as_str();
                match outage::resume_consuming(&channel, queue, &tag).await {
                    Ok(resumed) => consumer = resumed,
                    Err(error) => break Err(BrokerError::from(error)),
                }
            }
            next = consumer.next() => match next {
                Some(Ok(delivery)) => {
                    in_flight.spawn(process(ctx.clone(), broker.clone(), delivery, shutdown.clone()));
                }
                Some(Err(error)) => break Err(BrokerError::from(error)),
                None => break Ok(()),
            },
        }
    };
    // Stop taking new deliveries; let the ones in hand finish (their acks need this connection).
    let _ = channel
        .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
        .await;
    in_flight.close();
    let grace = Duration::from_secs(ctx.settings.worker.shutdown_grace_secs);
    if tokio::time::timeout(grace, in_flight.wait()).await.is_err() {
        tracing::warn!(
            unfinished = in_flight.len(),
            "grace period over; unfinished jobs go back to the queue"
        );
    }
    broker.close().await;
    ended
}

/// One delivery, from bytes to settlement, in a span carrying its job id. A panic in the pipeline
/// is caught here and treated as a transient failure, so the delivery is handed back (and, if it
/// keeps panicking, dead-lettered by the delivery limit) instead of being stranded unacked.
async fn process(
    ctx: Arc<Context>,
    broker: Arc<Broker>,
    delivery: Delivery,
    shutdown: CancellationToken,
) {
    let span = tracing::info_span!("job", job_id = tracing::field::Empty);
    async move {
        let message_id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.as_str().to_owned());
        let (received, started) = (chrono::Utc::now(), tokio::time::Instant::now());
        let outcome = AssertUnwindSafe(handle::handle(&ctx, &delivery.data, message_id.as_deref()))
            .catch_unwind()
            .await
            .unwrap_or_else(|_| Outcome::Retry {
                reason: "the pipeline panicked".to_owned(),
            });
        let enqueued_at = *delivery.properties.timestamp();
        ctx.observer
            .settled(&outcome, received, started.elapsed(), enqueued_at);
        settle::settle(&broker, &delivery, outcome, &shutdown).await;
    }
    .instrument(span)
    .await
}
