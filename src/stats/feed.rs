//! The metrics feed: `stats.snapshot`, `job.completed` and `cleanup.completed` messages to the
//! metrics exchange (CONTRACT.md §2.4).
//!
//! Senders never wait: [`Feed::send`] puts the message into a bounded channel, or drops it and
//! counts the drop when the channel is full (the broker is down or slow). One [`run`] task per
//! process drains the channel and publishes with confirms, pipelined: whatever is queued when it
//! looks (up to [`WINDOW`] messages) goes out back to back and is confirmed together, so at a
//! few thousand jobs a second the feed costs a round trip per window, not one per message, and
//! keeps up instead of dropping.
//!
//! The publisher keeps a broker connection of its own rather than borrowing the worker's
//! (`worker::session`): the worker's connection comes and goes with its consume loop, is closed at
//! the end of each session while messages may still be queued here, and does not exist at all in
//! `memoji-worker cleanup`. A second connection per process is cheap, reconnects on its own
//! schedule, and keeps metrics from ever sharing a channel (or a failure) with results.

use std::collections::VecDeque;
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use lapin::BasicProperties;
use lapin::types::FieldTable;
use serde::Serialize;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::broker::{Broker, BrokerError, Outgoing};
use crate::config::AmqpSettings;
use crate::telemetry;

pub(crate) const STATS_SNAPSHOT: &str = "stats.snapshot";
pub(crate) const JOB_COMPLETED: &str = "job.completed";
pub(crate) const CLEANUP_COMPLETED: &str = "cleanup.completed";
/// A scheduled warming run's report (`maintenance::warming`).
pub(crate) const WARM_COMPLETED: &str = "warm.completed";

/// Whether messages with `routing_key` are persistent. `job.completed`, one per job, is not: the
/// broker keeps it in memory instead of writing every one to disk (at thousands of jobs a second,
/// that write was a large part of the broker's work per job). A broker restart loses the
/// `job.completed` messages still queued, as a full feed buffer drops them: per-job events are
/// best-effort, and the figures that must survive are in Postgres (`GET /api/cache/stats`, the
/// analytics). Snapshots and reports, a few a minute, stay persistent.
fn persistent(routing_key: &str) -> bool {
    routing_key != JOB_COMPLETED
}

/// Most messages published before waiting for their confirms.
const WINDOW: usize = 256;

/// How long a stopping process keeps trying to publish what is still queued.
const DRAIN_GRACE: Duration = Duration::from_secs(3);

/// One message for the metrics exchange: its routing key, its JSON body and, for
/// `job.completed`, the job's trace headers.
#[derive(Debug)]
pub(crate) struct Message {
    routing_key: &'static str,
    body: Vec<u8>,
    /// A job's trace context (`telemetry::trace`), for `job.completed`.
    headers: Option<FieldTable>,
    /// Its AMQP `message_id`, fixed when it is queued: a message sent again after a broker
    /// failure carries the same one, so a consumer can tell the copy.
    id: String,
    /// When it was queued (AMQP `timestamp`, seconds).
    at: u64,
}

/// The sending side; cheap to clone.
#[derive(Debug, Clone)]
pub struct Feed {
    sender: mpsc::Sender<Message>,
}

/// The receiving side, for [`run`].
#[derive(Debug)]
pub struct Outbox(mpsc::Receiver<Message>);

/// A feed holding at most `capacity` unpublished messages.
pub fn channel(capacity: usize) -> (Feed, Outbox) {
    let (sender, receiver) = mpsc::channel(capacity.max(1));
    (Feed { sender }, Outbox(receiver))
}

impl Feed {
    /// Queues a message for the metrics exchange, or drops it if the queue is full.
    pub(crate) fn send(&self, routing_key: &'static str, body: &impl Serialize) {
        self.send_with(routing_key, body, None);
    }

    /// [`Feed::send`] with AMQP headers (a job's trace context).
    pub(crate) fn send_with(
        &self,
        routing_key: &'static str,
        body: &impl Serialize,
        headers: Option<FieldTable>,
    ) {
        let body = match serde_json::to_vec(body) {
            Ok(body) => body,
            Err(error) => {
                tracing::warn!(%error, routing_key, "metrics message not serializable; dropped");
                telemetry::count_feed_dropped(routing_key);
                return;
            }
        };
        let message = Message {
            routing_key,
            body,
            headers,
            id: uuid::Uuid::new_v4().to_string(),
            at: chrono::Utc::now().timestamp().max(0) as u64,
        };
        if self.sender.try_send(message).is_err() {
            telemetry::count_feed_dropped(routing_key);
        }
    }
}

/// Publishes queued messages until `shutdown`, reconnecting with backoff whenever the broker is
/// out of reach; then publishes what is left for a short grace period, and drops the rest.
pub async fn run(settings: AmqpSettings, outbox: Outbox, shutdown: CancellationToken) {
    let Outbox(mut receiver) = outbox;
    let reconnect = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(settings.reconnect_min_ms))
        .with_max_delay(Duration::from_millis(settings.reconnect_max_ms))
        .with_jitter()
        .without_max_times();
    let mut pauses = reconnect.build();
    // Messages taken from the channel but not confirmed: tried again after reconnecting.
    let mut unsent: VecDeque<Message> = VecDeque::new();
    let stopping = async {
        shutdown.cancelled().await;
        tokio::time::sleep(DRAIN_GRACE).await;
    };
    tokio::pin!(stopping);
    loop {
        let session = async {
            let broker = match Broker::connect(&settings, "memoji-worker metrics").await {
                Ok(broker) => broker,
                Err(error) => return Some(error),
            };
            if let Err(error) = broker.declare().await {
                broker.close().await;
                return Some(error);
            }
            pauses = reconnect.build();
            let ended =
                publish_all(&broker, &settings, &mut receiver, &mut unsent, &shutdown).await;
            broker.close().await;
            ended
        };
        let ended = tokio::select! {
            ended = session => ended,
            () = &mut stopping => None,
        };
        match ended {
            // Shut down and drained, or out of time.
            None => break,
            Some(error) => {
                let pause = pauses.next().unwrap_or(Duration::from_secs(1));
                tracing::warn!(%error, pause_ms = pause.as_millis() as u64, "metrics feed lost the broker; reconnecting");
                tokio::select! {
                    () = tokio::time::sleep(pause) => {}
                    () = &mut stopping => break,
                }
            }
        }
    }
    let mut dropped = unsent.len() as u64;
    receiver.close();
    while receiver.try_recv().is_ok() {
        dropped += 1;
    }
    if dropped > 0 {
        tracing::warn!(dropped, "metrics messages not published before stopping");
    }
}

/// Publishes until the channel is closed and empty (`None`), or the broker fails (`Some`).
/// After `shutdown`, returns as soon as nothing is queued.
async fn publish_all(
    broker: &Broker,
    settings: &AmqpSettings,
    receiver: &mut mpsc::Receiver<Message>,
    unsent: &mut VecDeque<Message>,
    shutdown: &CancellationToken,
) -> Option<BrokerError> {
    loop {
        if unsent.is_empty() {
            let next = if shutdown.is_cancelled() {
                receiver.try_recv().ok()
            } else {
                tokio::select! {
                    next = receiver.recv() => next,
                    () = shutdown.cancelled() => receiver.try_recv().ok(),
                }
            };
            // Nothing left after shutdown, or every sender is gone.
            unsent.push_back(next?);
        }
        while unsent.len() < WINDOW {
            match receiver.try_recv() {
                Ok(message) => unsent.push_back(message),
                Err(_) => break,
            }
        }
        let window: Vec<Outgoing<'_>> = unsent
            .iter()
            .take(WINDOW)
            .map(|message| {
                let properties = BasicProperties::default()
                    .with_message_id(message.id.as_str().into())
                    .with_timestamp(message.at);
                Outgoing {
                    routing_key: message.routing_key,
                    persistent: persistent(message.routing_key),
                    body: &message.body,
                    properties: match &message.headers {
                        Some(headers) => properties.with_headers(headers.clone()),
                        None => properties,
                    },
                }
            })
            .collect();
        let (confirmed, failed) = broker
            .publish_pipelined(&settings.metrics_exchange, &window)
            .await;
        drop(window);
        for message in unsent.drain(..confirmed) {
            telemetry::count_feed_published(message.routing_key);
        }
        if let Some(error) = failed {
            return Some(error);
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Settings;

    #[tokio::test]
    async fn a_full_feed_drops_instead_of_waiting() {
        let (feed, Outbox(mut receiver)) = channel(2);
        for n in 0..5 {
            feed.send(JOB_COMPLETED, &json!({"n": n}));
        }
        let first = receiver.try_recv().unwrap();
        assert_eq!(first.routing_key, JOB_COMPLETED);
        assert_eq!(first.body, br#"{"n":0}"#);
        assert!(receiver.try_recv().is_ok());
        assert!(receiver.try_recv().is_err(), "the rest were dropped");
    }

    /// On paused time: the grace period passes without being waited for in real time.
    #[tokio::test(start_paused = true)]
    async fn a_missing_broker_never_holds_up_shutdown_for_long() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut settings = Settings::defaults().unwrap().amqp;
        settings.url = format!("amqp://guest:guest@127.0.0.1:{port}/%2f").into();
        settings.reconnect_min_ms = 10;
        settings.reconnect_max_ms = 20;
        let (feed, outbox) = channel(8);
        let stop = CancellationToken::new();
        let publisher = tokio::spawn(run(settings, outbox, stop.clone()));
        feed.send(STATS_SNAPSHOT, &json!({}));
        stop.cancel();
        tokio::time::timeout(DRAIN_GRACE * 2, publisher)
            .await
            .expect("the publisher gives up after its grace period")
            .unwrap();
    }
}
