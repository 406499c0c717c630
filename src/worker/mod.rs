//! The consume loop: one task per delivery, at most `prefetch` at once, reconnecting with backoff
//! whenever the broker connection drops.
//!
//! - [`context`]: what every job's journey shares (pool, store, generator, settings, signals).
//! - [`handle`]: a job's journey, top to bottom, from bytes to an [`Outcome`].
//! - [`batch`]: group commit — hits of new jobs answered in batches, one commit per batch.
//! - `claim`: who may work on a job, and who may generate a key (single flight); decisions only.
//! - `lead`: the leader's path — turn, charge, generate, store, record.
//! - `step`: why a step stopped short, and whether another delivery can help.
//! - [`settle`]: the only place that decides to ack, requeue or dead-letter.
//! - `acks`: the frames that do it, in tag order, a run settled together as one `multiple` ack.
//!
//! Correctness does not rest on shutting down cleanly: a delivery is acked only after its result is
//! recorded and confirmed by the broker, so a crash anywhere means a redelivery that is answered
//! from the job table.

mod acks;
pub mod batch;
mod claim;
pub mod context;
pub mod handle;
pub(crate) mod lead;
pub mod outage;
pub mod settle;
mod step;

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::{FutureExt, StreamExt};
use lapin::message::Delivery;
use lapin::options::BasicCancelOptions;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

pub use crate::job::Outcome;
use crate::job::Recipient;
pub use context::Context;

use crate::broker::{Broker, BrokerError};
use crate::job::{Intake, Rejection};
use crate::telemetry::trace::Incoming;

/// Whether the worker can do broker work right now, read by `/readyz`: a session is consuming, and
/// its connection and publishing channel are open (a channel the broker closed and that could not
/// be reopened makes the worker unready until it is).
#[derive(Debug, Default)]
pub struct BrokerHealth(Mutex<Option<Arc<Broker>>>);

impl BrokerHealth {
    /// Whether a session is consuming and can publish right now.
    pub(crate) fn is_up(&self) -> bool {
        self.current().is_some_and(|broker| broker.can_publish())
    }
    fn current(&self) -> Option<Arc<Broker>> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
    fn set(&self, broker: Option<Arc<Broker>>) {
        *self.0.lock().unwrap_or_else(PoisonError::into_inner) = broker;
    }
}

/// Consumes jobs until `shutdown` is cancelled, then lets in-flight jobs finish within the grace
/// period. Broker failures are retried forever with backoff; they never end the loop.
///
/// When a connection drops, the next one is opened at once: the jobs still at work on the old
/// one (a generation can take a minute) finish in the background and record their results, and
/// their redeliveries on the new connection are answered from those records.
pub async fn run(ctx: Arc<Context>, health: Arc<BrokerHealth>, shutdown: CancellationToken) {
    let amqp = &ctx.settings.amqp;
    let reconnect = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(amqp.reconnect_min_ms))
        .with_max_delay(Duration::from_millis(amqp.reconnect_max_ms))
        .with_jitter()
        .without_max_times();
    let mut pauses = reconnect.build();
    // Every delivery's task, across sessions: shutdown waits for all of them.
    let in_flight = TaskTracker::new();
    loop {
        let mut connected = false;
        let ended = session(&ctx, &health, &shutdown, &in_flight, &mut connected).await;
        health.set(None);
        if shutdown.is_cancelled() {
            break;
        }
        if connected {
            pauses = reconnect.build();
        }
        // A session that was consuming reconnects at once; failing connects back off.
        let pause = if connected {
            Duration::ZERO
        } else {
            pauses.next().unwrap_or(Duration::from_secs(1))
        };
        match ended {
            Ok(()) => tracing::warn!(
                pause_ms = pause.as_millis() as u64,
                "consumer cancelled by the broker; reconnecting"
            ),
            Err(error) => {
                tracing::warn!(%error, pause_ms = pause.as_millis() as u64, unfinished = in_flight.len(), "broker connection lost; reconnecting")
            }
        }
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = shutdown.cancelled() => break,
        }
    }
    in_flight.close();
    let grace = Duration::from_secs(ctx.settings.worker.shutdown_grace_secs);
    if tokio::time::timeout(grace, in_flight.wait()).await.is_err() {
        tracing::warn!(
            unfinished = in_flight.len(),
            "grace period over; unfinished jobs go back to the queue"
        );
    }
}

/// One connection's worth of consuming, until shutdown or a broker failure; returns at once either
/// way, leaving its jobs to finish on its connection.
async fn session(
    ctx: &Arc<Context>,
    health: &BrokerHealth,
    shutdown: &CancellationToken,
    in_flight: &TaskTracker,
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
    let acks = acks::Acks::start(channel.clone(), ctx.settings.worker.coalesce_acks);
    *connected = true;
    health.set(Some(broker.clone()));
    tracing::info!(queue = %ctx.settings.amqp.job_queue, prefetch = ctx.settings.amqp.prefetch, "consuming jobs");

    let mine = TaskTracker::new();
    let ended = loop {
        tokio::select! {
            () = shutdown.cancelled() => break Ok(()),
            () = ctx.outage.reported() => {
                // The database is out of reach: take no deliveries until it answers again.
                match outage::stop_consuming(&channel, &acks, &mut consumer, &tag).await {
                    Ok(()) => {}
                    Err(acks::AckError::Amqp(error)) => break Err(BrokerError::from(error)),
                    Err(acks::AckError::Stopped) => break Ok(()),
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
                    let task = mine.track_future(process(ctx.clone(), broker.clone(), acks.clone(), delivery, shutdown.clone()));
                    in_flight.spawn(task);
                }
                Some(Err(error)) => break Err(BrokerError::from(error)),
                None => break Ok(()),
            },
        }
    };
    mine.close();
    if shutdown.is_cancelled() {
        // Stop taking new deliveries; the ones in hand finish within the grace period `run`
        // gives every task (their acks need this connection).
        let _ = channel
            .basic_cancel(tag.as_str().into(), BasicCancelOptions::default())
            .await;
    }
    // On a broker failure the connection is gone or going: its jobs finish on their own (the
    // broker redelivers them, unacked) while the next session starts. Either way the connection
    // is closed after the last of them.
    // The consuming channel too lives until then: dropped, it would hand the deliveries back.
    in_flight.spawn(async move {
        mine.wait().await;
        drop((consumer, acks, channel));
        broker.close().await;
    });
    ended
}

/// One delivery, from bytes to settlement, in a span carrying its job id and trace id (the
/// job's own trace, continued, or with spans exported one the worker starts). A panic in the pipeline
/// is caught here and treated as a transient failure, so the delivery is handed back (and, if it
/// keeps panicking, answered `internal` and dead-lettered on its last delivery) instead of being
/// stranded unacked.
async fn process(
    ctx: Arc<Context>,
    broker: Arc<Broker>,
    acks: acks::Acks,
    delivery: Delivery,
    shutdown: CancellationToken,
) {
    // The job's trace context, continued in this span and on what is published for the job.
    let trace = Incoming::from_headers(delivery.properties.headers().as_ref());
    let span = tracing::info_span!(
        "job",
        job_id = tracing::field::Empty,
        trace_id = tracing::field::Empty
    );
    trace.adopt(&span);
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
                cause: "the pipeline panicked".to_owned(),
                after: None,
                job: recipient(&delivery.data, message_id.as_deref(), &ctx.models),
            });
        let enqueued_at = *delivery.properties.timestamp();
        ctx.observer.settled(
            &outcome,
            &delivery.data,
            received,
            started.elapsed(),
            enqueued_at,
            &trace,
        );
        settle::settle(&broker, &acks, &delivery, outcome, &trace, &shutdown).await;
    }
    .instrument(span)
    .await
}

/// Whom a delivery's result would go to, read again after a panic (intake is pure and cheap).
fn recipient(
    body: &[u8],
    message_id: Option<&str>,
    models: &crate::job::ModelRules,
) -> Option<Recipient> {
    match crate::job::intake(body, message_id, models) {
        Ok(Intake::Job(job)) => Some(Recipient {
            job_id: job.id,
            user_id: job.user_id,
            arm: None,
        }),
        Ok(Intake::Invalid {
            job_id, user_id, ..
        }) => Some(Recipient {
            job_id,
            user_id,
            arm: None,
        }),
        Err(Rejection { answer, .. }) => answer.map(|(job_id, user_id)| Recipient {
            job_id,
            user_id,
            arm: None,
        }),
    }
}
