//! Settling a delivery: the only place that acks, requeues or dead-letters.
//!
//! The pipeline ends in an [`Outcome`]; this module turns it into broker actions in the one safe
//! order: publish (and wait for the broker's confirm), then ack. If anything fails before the ack,
//! the delivery goes back to the queue after a pause that grows with its deliveries, and the job
//! table makes the next run answer with the same result instead of redoing the work.
//!
//! The job queue dead-letters a message delivered more than `amqp.delivery_limit` times. Before
//! that happens in silence, the last delivery that still fails is given up here: the job gets a
//! `failed` result with code `internal` (retryable), and the message goes to the dead-letter
//! queue with our reason header.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::types::AMQPValue;
use tokio_util::sync::CancellationToken;
use tracing::Instrument as _;

use super::acks::Acks;
use crate::broker::{Broker, ReplyTo};
use crate::job::{ErrorCode, JobError, JobResult, Outcome, Recipient};
use crate::telemetry::trace::Incoming;

/// A delivery that could not be settled this time.
struct Failure {
    cause: String,
    after: Option<Duration>,
    job: Option<Recipient>,
    /// Another delivery cannot do better (a result that cannot be encoded): give up now.
    hopeless: bool,
}

/// Longest pause before handing a failing delivery back.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(30);

/// Carries out `outcome` for `delivery`: publishes what it says (waiting for the broker's
/// confirm), then acks; on any failure before the ack, hands the delivery back to the queue after
/// a pause, or gives it up once its delivery budget is spent. Never fails: what cannot be done is
/// logged.
pub(crate) async fn settle(
    broker: &Broker,
    acks: &Acks,
    delivery: &Delivery,
    outcome: Outcome,
    trace: &Incoming,
    shutdown: &CancellationToken,
) {
    let failed = match outcome {
        Outcome::Answer(result) | Outcome::Replay(result) => {
            answer(broker, delivery, &result, trace).await.err()
        }
        Outcome::Reject {
            reason,
            answer: reply,
        } => {
            tracing::warn!(%reason, "not a job; dead-lettering it");
            match broker
                .dead_letter(&delivery.data, &delivery.properties, &reason)
                .await
            {
                Ok(()) => match reply {
                    Some(result) => answer(broker, delivery, &result, trace).await.err(),
                    None => None,
                },
                Err(error) => Some(Failure {
                    cause: format!("could not dead-letter it: {error}"),
                    after: None,
                    hopeless: false,
                    job: reply.map(|r| Recipient {
                        arm: r.arm_label(),
                        job_id: r.job_id,
                        user_id: r.user_id,
                    }),
                }),
            }
        }
        Outcome::Retry { cause, after, job } => Some(Failure {
            cause,
            after,
            job,
            hopeless: false,
        }),
    };
    let Some(failure) = failed else {
        return ack(acks, delivery).await;
    };
    let deliveries = delivery_count(delivery);
    if failure.hopeless || deliveries >= broker.settings().delivery_limit {
        return give_up(broker, acks, delivery, failure, deliveries + 1, trace).await;
    }
    let pause = failure.after.unwrap_or_else(|| retry_pause(deliveries));
    tracing::warn!(
        cause = %failure.cause,
        deliveries = deliveries + 1,
        pause_ms = pause.as_millis() as u64,
        "transient failure; handing the job back"
    );
    tokio::select! {
        () = tokio::time::sleep(pause) => {}
        () = shutdown.cancelled() => {}
    }
    requeue(acks, delivery, &failure.cause).await;
}

/// The last delivery the queue allows failed too (or another could not do better): answer
/// `internal` (retryable: publishing the job again may work) and dead-letter the message with the
/// reason, then ack. If even the dead-letter
/// copy fails, the delivery is handed back and the queue's own limit dead-letters it.
async fn give_up(
    broker: &Broker,
    acks: &Acks,
    delivery: &Delivery,
    failure: Failure,
    deliveries: u32,
    trace: &Incoming,
) {
    let reason = format!("gave up after {deliveries} deliveries: {}", failure.cause);
    tracing::error!(%reason, "delivery budget spent; answering internal and dead-lettering");
    if let Some(job) = &failure.job {
        let error = JobError {
            code: ErrorCode::Internal,
            message: format!(
                "the worker could not complete this job in {deliveries} deliveries; publish it again to retry"
            ),
            retryable: true,
        };
        let result =
            JobResult::failure(job.job_id, &job.user_id, None, error).in_arm(job.arm.as_ref());
        if let Err(unsent) = answer(broker, delivery, &result, trace).await {
            tracing::warn!(cause = %unsent.cause, "could not publish the internal failure either");
        }
    }
    match broker
        .dead_letter(&delivery.data, &delivery.properties, &reason)
        .await
    {
        Ok(()) => ack(acks, delivery).await,
        Err(error) => {
            requeue(
                acks,
                delivery,
                &format!("could not dead-letter it: {error}"),
            )
            .await;
        }
    }
}

async fn ack(acks: &Acks, delivery: &Delivery) {
    if let Err(error) = acks.ack(delivery.delivery_tag).await {
        // The channel is gone: the broker redelivers, and the job table answers again.
        tracing::warn!(%error, "could not ack; the job will be redelivered and answered from its record");
    }
}

async fn requeue(acks: &Acks, delivery: &Delivery, cause: &str) {
    if let Err(error) = acks.hand_back(delivery.delivery_tag).await {
        tracing::warn!(%error, %cause, "could not hand the job back; the broker will redeliver it");
    }
}

/// Publishes the result and, once the broker confirmed it, a best-effort copy to `reply_to`: a
/// reply that cannot be delivered is logged and never makes the job run again. Both carry the
/// job's trace, with this step's span as their parent when spans are exported.
async fn answer(
    broker: &Broker,
    delivery: &Delivery,
    result: &JobResult,
    trace: &Incoming,
) -> Result<(), Failure> {
    let span = tracing::debug_span!("publish result", otel.kind = "producer");
    async {
        let headers = trace.outgoing();
        broker
            .publish_result(result, headers.as_ref())
            .await
            .map_err(|error| Failure {
                cause: format!("could not publish the result: {error}"),
                after: None,
                hopeless: !error.retryable(),
                job: Some(Recipient {
                    job_id: result.job_id,
                    user_id: result.user_id.clone(),
                    arm: result.arm_label(),
                }),
            })?;
        tracing::info!(
            status = ?result.status,
            cached = result.cached,
            error = result.error_code().map(|c| c.as_str()),
            duration_ms = result.duration_ms,
            "result published"
        );
        if let Some(reply) = reply_to(broker, delivery, result)
            && let Err(error) = broker
                .publish_reply(result, &reply, headers.as_ref())
                .await
        {
            tracing::warn!(queue = %reply.queue, %error, "the reply_to copy could not be delivered; the result is on the result queue");
        }
        Ok(())
    }
    .instrument(span)
    .await
}

/// The delivery's `reply_to`, unless it is empty or names one of the worker's own queues.
fn reply_to(broker: &Broker, delivery: &Delivery, result: &JobResult) -> Option<ReplyTo> {
    let queue = delivery
        .properties
        .reply_to()
        .as_ref()
        .filter(|q| !q.as_str().is_empty())?;
    if broker.is_own_queue(queue.as_str()) {
        tracing::warn!(%queue, "reply_to names one of the worker's own queues; ignored");
        return None;
    }
    Some(ReplyTo {
        queue: queue.clone(),
        correlation_id: delivery
            .properties
            .correlation_id()
            .clone()
            .unwrap_or_else(|| result.job_id.to_string().into()),
    })
}

/// How often the quorum queue has delivered this message before (its `x-delivery-count`).
pub(crate) fn delivery_count(delivery: &Delivery) -> u32 {
    let header = delivery
        .properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get("x-delivery-count").cloned());
    match header {
        Some(AMQPValue::LongLongInt(n)) => u32::try_from(n).unwrap_or(0),
        Some(AMQPValue::LongInt(n)) => u32::try_from(n).unwrap_or(0),
        Some(AMQPValue::LongUInt(n)) => n,
        Some(AMQPValue::ShortInt(n)) => u32::try_from(n).unwrap_or(0),
        _ => 0,
    }
}

/// 250 ms, doubling with each earlier delivery, at most [`MAX_RETRY_PAUSE`].
fn retry_pause(previous_deliveries: u32) -> Duration {
    let pause = Duration::from_millis(250).saturating_mul(1 << previous_deliveries.min(10));
    pause.min(MAX_RETRY_PAUSE)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_pauses_grow_and_are_capped() {
        assert_eq!(retry_pause(0), Duration::from_millis(250));
        assert_eq!(retry_pause(2), Duration::from_secs(1));
        assert_eq!(retry_pause(30), MAX_RETRY_PAUSE);
    }
}
