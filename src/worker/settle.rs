//! Settling a delivery: the only place that acks, requeues or dead-letters.
//!
//! The pipeline ends in an [`Outcome`]; this module turns it into broker actions in the one safe
//! order: publish (and wait for the broker's confirm), then ack. If anything fails before the ack,
//! the delivery goes back to the queue, and the job table makes the second run answer with the
//! same result instead of redoing the work.

use std::time::Duration;

use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::AMQPValue;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, ReplyTo};
use crate::job::JobResult;

/// How a delivery ends.
#[derive(Debug)]
pub enum Outcome {
    /// Publish this result, then ack.
    Answer(JobResult),
    /// Publish this result recorded earlier (the job was seen before), then ack. Settled like
    /// [`Outcome::Answer`]; the statistics do not count it again.
    Replay(JobResult),
    /// Not a job: dead-letter a copy with the reason, answer where possible, then ack.
    Reject {
        reason: String,
        answer: Option<JobResult>,
    },
    /// A transient failure (database or broker out of reach): hand the delivery back to the
    /// queue after a pause. The queue's delivery limit dead-letters a message that keeps failing.
    Retry { reason: String },
}

/// Longest pause before handing a failing delivery back.
const MAX_RETRY_PAUSE: Duration = Duration::from_secs(30);

pub async fn settle(
    broker: &Broker,
    delivery: &Delivery,
    outcome: Outcome,
    shutdown: &CancellationToken,
) {
    let settled = match outcome {
        Outcome::Answer(result) | Outcome::Replay(result) => {
            answer(broker, delivery, &result).await
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
                    Some(result) => answer(broker, delivery, &result).await,
                    None => Ok(()),
                },
                Err(error) => Err(error.to_string()),
            }
        }
        Outcome::Retry { reason } => {
            let pause = retry_pause(delivery_count(delivery));
            tracing::warn!(%reason, pause_ms = pause.as_millis() as u64, "transient failure; handing the job back");
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => {}
            }
            Err(reason)
        }
    };
    match settled {
        Ok(()) => {
            if let Err(error) = delivery.ack(BasicAckOptions::default()).await {
                // The channel is gone: the broker redelivers, and the job table answers again.
                tracing::warn!(%error, "could not ack; the job will be redelivered and answered from its record");
            }
        }
        Err(reason) => {
            let requeue = BasicNackOptions {
                requeue: true,
                ..BasicNackOptions::default()
            };
            if let Err(error) = delivery.nack(requeue).await {
                tracing::warn!(%error, %reason, "could not hand the job back; the broker will redeliver it");
            }
        }
    }
}

async fn answer(broker: &Broker, delivery: &Delivery, result: &JobResult) -> Result<(), String> {
    let reply_to = delivery
        .properties
        .reply_to()
        .as_ref()
        .filter(|q| !q.as_str().is_empty())
        .map(|queue| ReplyTo {
            queue: queue.clone(),
            correlation_id: delivery
                .properties
                .correlation_id()
                .clone()
                .unwrap_or_else(|| result.job_id.to_string().into()),
        });
    broker
        .publish_result(result, reply_to.as_ref())
        .await
        .map_err(|e| e.to_string())?;
    tracing::info!(
        status = ?result.status,
        cached = result.cached,
        error = result.error_code().map(|c| c.as_str()),
        duration_ms = result.duration_ms,
        "result published"
    );
    Ok(())
}

/// How often the quorum queue has delivered this message before (its `x-delivery-count`).
pub fn delivery_count(delivery: &Delivery) -> u32 {
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
