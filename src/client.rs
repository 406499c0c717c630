//! A client of the worker, as a web app would be: publishes a job and, optionally, waits for its
//! result on a private reply queue (AMQP request/reply). Used by `memoji-worker enqueue`.
//!
//! While it waits it tells its caller what a person needs to know through [`Waiting`] events: at
//! once whether any worker consumes the job queue (the queue's declare says how many consumers it
//! has), when one attaches, and a tick every so often for a spinner.
//!
//! Each job it publishes starts a trace: a W3C `traceparent` header, continued by the worker onto
//! the result (`telemetry::trace`).

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};
use serde_json::Value;

use crate::broker::{Broker, BrokerError};
use crate::config::{AmqpSettings, redacted_url};
use crate::telemetry::trace;

/// How often the job queue's consumers are counted again while waiting.
const RECOUNT: Duration = Duration::from_secs(1);
/// How often [`Waiting::Tick`] is sent.
const TICK: Duration = Duration::from_millis(100);

/// Why `enqueue` returned no result.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The broker could not be reached.
    #[error("connecting to the broker at {url}")]
    Connect {
        /// Password masked.
        url: String,
        /// What connecting failed with.
        #[source]
        source: BrokerError,
    },
    /// Declaring, publishing or consuming failed.
    #[error(transparent)]
    Broker(#[from] BrokerError),
    #[error(
        "no result for job {job_id} within {}s{}; the job stays queued and its result will reach the result queue",
        wait.as_secs(),
        if *.worker_seen { "" } else { " (no worker consumed the job queue meanwhile: start one with `memoji-worker run`)" }
    )]
    /// No result arrived in time; the job stays queued.
    Timeout {
        /// The job waited for.
        job_id: String,
        /// How long it was waited for.
        wait: Duration,
        /// Whether a worker consumed the job queue at any point while waiting.
        worker_seen: bool,
    },
    /// The reply queue closed before a result arrived.
    #[error("the reply queue closed before a result arrived")]
    Closed,
    /// The reply was not a JSON result.
    #[error("the result is not JSON")]
    BadResult(#[from] serde_json::Error),
}

/// What happens while `enqueue` waits for a result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Waiting {
    /// Right after publishing: no worker consumes the job queue, so the job waits for one.
    NoWorker {
        /// The job queue.
        queue: String,
    },
    /// A worker started consuming the job queue after [`Waiting::NoWorker`].
    WorkerAttached {
        /// Consumers of the job queue now.
        consumers: u32,
    },
    /// Still waiting, this long so far.
    Tick {
        /// Time since publishing.
        elapsed: Duration,
    },
}

/// Publishes `job` (which must carry a `job_id`) to the job queue, starting a trace for it (its
/// `traceparent` header: this span's when spans are exported, else a new trace id). With `wait`,
/// returns the result, waiting at most that long and telling `on_wait` how it goes.
#[tracing::instrument(name = "enqueue", skip_all, fields(otel.kind = "producer"))]
pub async fn enqueue(
    settings: &AmqpSettings,
    job: &Value,
    wait: Option<Duration>,
    mut on_wait: impl FnMut(Waiting),
) -> Result<Option<Value>, ClientError> {
    let broker = Broker::connect(settings, "memoji-worker enqueue")
        .await
        .map_err(|source| ClientError::Connect {
            url: redacted_url(&settings.url),
            source,
        })?;
    broker.declare().await?;
    let job_id = job
        .get("job_id")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_owned();
    let body = serde_json::to_vec(job)?;
    let properties = BasicProperties::default()
        .with_message_id(job_id.as_str().into())
        .with_headers(trace::start());

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

    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + wait;
    let mut consumers = consumers_of(&channel, &settings.job_queue).await?;
    let mut worker_seen = consumers > 0;
    if !worker_seen {
        on_wait(Waiting::NoWorker {
            queue: settings.job_queue.clone(),
        });
    }
    let mut ticks = tokio::time::interval(TICK);
    let mut recounts = tokio::time::interval(RECOUNT);
    recounts.reset();
    let result = loop {
        tokio::select! {
            delivery = replies.next() => {
                let Some(delivery) = delivery else { break Err(ClientError::Closed) };
                let delivery = delivery.map_err(BrokerError::from)?;
                let _ = delivery.ack(BasicAckOptions::default()).await;
                let matches = delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .is_some_and(|c| c.as_str() == job_id);
                if matches {
                    break serde_json::from_slice(&delivery.data).map_err(ClientError::from);
                }
            }
            _ = ticks.tick() => on_wait(Waiting::Tick { elapsed: started.elapsed() }),
            _ = recounts.tick() => {
                let now = consumers_of(&channel, &settings.job_queue).await?;
                if consumers == 0 && now > 0 {
                    on_wait(Waiting::WorkerAttached { consumers: now });
                }
                worker_seen |= now > 0;
                consumers = now;
            }
            () = tokio::time::sleep_until(deadline) => {
                break Err(ClientError::Timeout { job_id: job_id.clone(), wait, worker_seen });
            }
        }
    };
    broker.close().await;
    result.map(Some)
}

/// How many consumers the job queue has: a passive declare, which changes nothing.
async fn consumers_of(channel: &Channel, queue: &str) -> Result<u32, BrokerError> {
    let queue = channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions {
                passive: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(queue.consumer_count())
}
