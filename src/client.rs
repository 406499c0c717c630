//! A client of the worker, as a web app would be: publishes a job and, optionally, waits for its
//! result on a private reply queue (AMQP request/reply). Used by `memoji-worker enqueue`.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use serde_json::Value;

use crate::broker::{Broker, BrokerError};
use crate::config::AmqpSettings;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error("no result within {0:?}")]
    Timeout(Duration),
    #[error("the reply queue closed before a result arrived")]
    Closed,
    #[error("the result is not JSON: {0}")]
    BadResult(#[from] serde_json::Error),
}

/// Publishes `job` (which must carry a `job_id`) to the job queue. With `wait`, returns the
/// result, waiting at most that long.
pub async fn enqueue(
    settings: &AmqpSettings,
    job: &Value,
    wait: Option<Duration>,
) -> Result<Option<Value>, ClientError> {
    let broker = Broker::connect(settings, "memoji-worker enqueue").await?;
    broker.declare().await?;
    let job_id = job
        .get("job_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let body = serde_json::to_vec(job)?;
    let properties = BasicProperties::default().with_message_id(job_id.as_str().into());

    let Some(wait) = wait else {
        broker
            .publish("", &settings.job_queue, &body, properties, true)
            .await?;
        broker.close().await;
        return Ok(None);
    };

    // A private, server-named queue that disappears with this connection.
    let channel = broker.channel().await?;
    let reply_queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::from)?;
    let mut replies = channel
        .basic_consume(
            reply_queue.name().clone(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .map_err(BrokerError::from)?;
    let properties = properties
        .with_reply_to(reply_queue.name().clone())
        .with_correlation_id(job_id.as_str().into());
    broker
        .publish("", &settings.job_queue, &body, properties, true)
        .await?;

    let result = tokio::time::timeout(wait, async {
        while let Some(delivery) = replies.next().await {
            let delivery = delivery.map_err(BrokerError::from)?;
            let _ = delivery.ack(BasicAckOptions::default()).await;
            let matches = delivery
                .properties
                .correlation_id()
                .as_ref()
                .is_some_and(|c| c.as_str() == job_id);
            if matches {
                return Ok(serde_json::from_slice(&delivery.data)?);
            }
        }
        Err(ClientError::Closed)
    })
    .await
    .map_err(|_| ClientError::Timeout(wait))?;
    broker.close().await;
    result.map(Some)
}
