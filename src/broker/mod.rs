//! RabbitMQ, through lapin: connecting, declaring the topology (CONTRACT.md §2), consuming, and
//! publishing with confirms.
//!
//! Every publish waits for the broker's confirm, so a caller that gets `Ok` knows the message is
//! the broker's responsibility. Nothing here acks a delivery: that is `worker::settle`'s job.
//!
//! Publishing goes through [`publisher`]: a channel the broker closes is reopened before the next
//! publish. Replies (`reply_to`) go out on a connection of their own, because their queue names
//! come from outside: a crafted name that makes the broker close a connection closes that one, not
//! the one the jobs are consumed and acked on.

mod publisher;
mod topology;

use std::sync::Arc;

use lapin::options::{BasicConsumeOptions, BasicPublishOptions, BasicQosOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer,
    PublisherConfirm,
};
use secrecy::ExposeSecret;

pub use topology::declare;

use crate::config::AmqpSettings;
use crate::job::JobResult;
use publisher::Publisher;

/// Header that carries why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-memoji-reason";

/// What went wrong talking to RabbitMQ.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The connection or a channel failed.
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    /// The broker nacked a published message (the `exchange/routing key` named).
    #[error("broker refused the message (nack) on {0}")]
    Nacked(String),
    /// A mandatory message reached no queue (the `exchange/routing key` named).
    #[error("broker could not route the message to {0}")]
    Unroutable(String),
    /// A message could not be serialized to JSON.
    #[error("message could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

impl BrokerError {
    /// Whether doing the same again later may succeed: a connection or channel that is reopened,
    /// a queue that comes back, a broker that accepts again. A message that cannot be encoded
    /// never will be.
    pub(crate) fn retryable(&self) -> bool {
        match self {
            BrokerError::Amqp(error) => error.can_be_recovered(),
            BrokerError::Nacked(_) | BrokerError::Unroutable(_) => true,
            BrokerError::Encode(_) => false,
        }
    }
}

/// One message for [`Broker::publish_pipelined`].
#[derive(Debug)]
pub(crate) struct Outgoing<'a> {
    pub(crate) routing_key: &'a str,
    pub(crate) body: &'a [u8],
    pub(crate) properties: BasicProperties,
    /// Written to disk by the broker (delivery mode 2), or kept in memory (1).
    pub(crate) persistent: bool,
}

/// Where a job asked for its result to be sent too (AMQP `reply_to` / `correlation_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ReplyTo {
    pub(crate) queue: ShortString,
    pub(crate) correlation_id: ShortString,
}

/// One connection to the broker with a confirming publisher channel, and a reply publisher on a
/// connection of its own.
pub struct Broker {
    connection: Arc<Connection>,
    publisher: Publisher,
    replies: Publisher,
    settings: AmqpSettings,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Broker")
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Connects and opens the publisher channel in confirm mode. The reply connection opens when
    /// the first reply is sent.
    pub async fn connect(settings: &AmqpSettings, name: &str) -> Result<Broker, BrokerError> {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connection =
            Arc::new(Connection::connect(settings.url.expose_secret(), properties).await?);
        let publisher = Publisher::shared(connection.clone()).await?;
        let replies = Publisher::own(settings.url.clone(), format!("{name} (replies)"));
        Ok(Broker {
            connection,
            publisher,
            replies,
            settings: settings.clone(),
        })
    }

    /// The settings it was connected with (`[amqp]`).
    pub(crate) fn settings(&self) -> &AmqpSettings {
        &self.settings
    }

    pub(crate) fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// Connected, with a publishing channel open: results can be published right now.
    pub(crate) fn can_publish(&self) -> bool {
        self.is_connected() && self.publisher.is_open()
    }

    /// A fresh channel on this connection (for clients and tools).
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        Ok(self.connection.create_channel().await?)
    }

    /// Declares the topology (idempotent).
    pub async fn declare(&self) -> Result<(), BrokerError> {
        declare(&self.publisher.channel().await?, &self.settings).await
    }

    /// A channel consuming the job queue with `prefetch` unacknowledged deliveries at most.
    pub async fn consume_jobs(
        &self,
        consumer_tag: &str,
        prefetch: u16,
    ) -> Result<(Channel, Consumer), BrokerError> {
        let channel = self.connection.create_channel().await?;
        channel
            .basic_qos(prefetch, BasicQosOptions::default())
            .await?;
        let consumer = channel
            .basic_consume(
                self.settings.job_queue.as_str().into(),
                consumer_tag.into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?;
        Ok((channel, consumer))
    }

    /// Publishes a persistent JSON message and waits for the broker's confirm. With `mandatory`,
    /// a message no queue takes is an error.
    pub async fn publish(
        &self,
        exchange: &str,
        routing_key: &str,
        body: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let properties = properties
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        confirmed(
            &self.publisher,
            exchange,
            routing_key,
            body,
            properties,
            mandatory,
        )
        .await
    }

    /// Publishes `messages` (JSON, not mandatory) to `exchange` one after another,
    /// without waiting for a confirm in between, then waits for every confirm: one round trip
    /// for the lot instead of one per message. Returns how many of them, from the first, the
    /// broker confirmed, and the error that stopped the rest (those may or may not have arrived:
    /// sending them again is at least once).
    pub(crate) async fn publish_pipelined(
        &self,
        exchange: &str,
        messages: &[Outgoing<'_>],
    ) -> (usize, Option<BrokerError>) {
        let channel = match self.publisher.channel().await {
            Ok(channel) => channel,
            Err(error) => return (0, Some(error)),
        };
        let mut confirms = Vec::with_capacity(messages.len());
        let mut stopped = None;
        for message in messages {
            let properties = message
                .properties
                .clone()
                .with_content_type("application/json".into())
                .with_delivery_mode(if message.persistent { 2 } else { 1 });
            match send(
                &channel,
                exchange,
                message.routing_key,
                message.body,
                properties,
                false,
            )
            .await
            {
                Ok(confirm) => confirms.push(confirm),
                Err(error) => {
                    stopped = Some(error);
                    break;
                }
            }
        }
        let mut confirmed = 0;
        for (confirm, message) in confirms.into_iter().zip(messages) {
            let answer = confirm.await;
            if let Err(error) = judged(
                &self.publisher,
                &channel,
                exchange,
                message.routing_key,
                answer,
            )
            .await
            {
                return (confirmed, Some(error));
            }
            confirmed += 1;
        }
        match stopped {
            Some(error) => {
                let routing_key = messages.get(confirmed).map_or("", |m| m.routing_key);
                let error = judged(&self.publisher, &channel, exchange, routing_key, Err(error))
                    .await
                    .err();
                (confirmed, error)
            }
            None => (confirmed, None),
        }
    }

    /// Publishes a job's result to the result exchange, with `trace` headers (the job's trace
    /// context, `telemetry::trace`) if any; `Ok` once the broker has routed it to a queue and
    /// confirmed it.
    pub(crate) async fn publish_result(
        &self,
        result: &JobResult,
        trace: Option<&FieldTable>,
    ) -> Result<(), BrokerError> {
        let body = serde_json::to_vec(result)?;
        self.publish(
            &self.settings.result_exchange,
            result.routing_key(),
            &body,
            result_properties(result, trace),
            true,
        )
        .await
    }

    /// Sends a copy of a result to the queue its job named in `reply_to`, on the reply connection,
    /// with the same `trace` headers as the result.
    pub(crate) async fn publish_reply(
        &self,
        result: &JobResult,
        reply: &ReplyTo,
        trace: Option<&FieldTable>,
    ) -> Result<(), BrokerError> {
        let body = serde_json::to_vec(result)?;
        let properties = result_properties(result, trace)
            .with_correlation_id(reply.correlation_id.clone())
            .with_content_type("application/json".into())
            .with_delivery_mode(2);
        confirmed(
            &self.replies,
            "",
            reply.queue.as_str(),
            &body,
            properties,
            true,
        )
        .await
    }

    /// Whether `queue` is one of the worker's own queues, which a `reply_to` may not name
    /// (CONTRACT.md §2.1): a reply into the job queue would come back as a job.
    pub(crate) fn is_own_queue(&self, queue: &str) -> bool {
        let names = &self.settings;
        [
            &names.job_queue,
            &names.result_queue,
            &names.metrics_queue,
            &names.dead_letter_queue,
        ]
        .iter()
        .any(|own| own.as_str() == queue)
    }

    /// Sends a copy of an unprocessable message to the dead-letter exchange with the reason.
    ///
    /// The copy keeps the message's properties but two: its `expiration`, which would make it
    /// vanish from the dead-letter queue, and its AMQP `user_id`, which the broker checks against
    /// the publishing connection's user and refuses (closing the channel) when they differ.
    pub(crate) async fn dead_letter(
        &self,
        body: &[u8],
        properties: &BasicProperties,
        reason: &str,
    ) -> Result<(), BrokerError> {
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
        let copy = dead_letter_properties(properties).with_headers(headers);
        confirmed(
            &self.publisher,
            &self.settings.dead_letter_exchange,
            &self.settings.job_queue,
            body,
            copy.with_delivery_mode(2),
            true,
        )
        .await
    }

    /// Deletes the topology's queues and exchanges (tools and tests with names of their own).
    pub async fn remove_topology(&self) -> Result<(), BrokerError> {
        let channel = self.connection.create_channel().await?;
        topology::remove(&channel, &self.settings).await;
        let _ = channel.close(200, "done".into()).await;
        Ok(())
    }

    /// Closes the connections politely.
    pub async fn close(&self) {
        self.replies.close().await;
        let _ = self.connection.close(200, "shutting down".into()).await;
    }
}

fn result_properties(result: &JobResult, trace: Option<&FieldTable>) -> BasicProperties {
    let properties = BasicProperties::default()
        .with_message_id(result.job_id.to_string().into())
        .with_timestamp(result.completed_at.timestamp().max(0) as u64);
    match trace {
        Some(headers) => properties.with_headers(headers.clone()),
        None => properties,
    }
}

/// Publishes on `publisher`'s channel and waits for the confirm. A channel the publish left
/// closed is reopened at once, so the next publish (and `/readyz`) finds an open one.
async fn confirmed(
    publisher: &Publisher,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
    mandatory: bool,
) -> Result<(), BrokerError> {
    let channel = publisher.channel().await?;
    let sent = async {
        send(&channel, exchange, routing_key, body, properties, mandatory)
            .await?
            .await
    }
    .await;
    judged(publisher, &channel, exchange, routing_key, sent).await
}

/// Hands one message to the broker; the returned future resolves to its confirm.
async fn send(
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    body: &[u8],
    properties: BasicProperties,
    mandatory: bool,
) -> Result<PublisherConfirm, lapin::Error> {
    let options = BasicPublishOptions {
        mandatory,
        ..BasicPublishOptions::default()
    };
    channel
        .basic_publish(
            exchange.into(),
            routing_key.into(),
            options,
            body,
            properties,
        )
        .await
}

/// What the broker's answer to one publish means; a channel the publish left closed is reopened.
async fn judged(
    publisher: &Publisher,
    channel: &Channel,
    exchange: &str,
    routing_key: &str,
    sent: Result<Confirmation, lapin::Error>,
) -> Result<(), BrokerError> {
    let target = || format!("{exchange:?}/{routing_key:?}");
    match sent {
        Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => Ok(()),
        Ok(Confirmation::Ack(Some(_))) => Err(BrokerError::Unroutable(target())),
        Ok(Confirmation::Nack(_)) => Err(BrokerError::Nacked(target())),
        Err(error) => {
            if !channel.status().connected()
                && let Err(reopen) = publisher.channel().await
            {
                tracing::warn!(%reopen, "could not reopen the publishing channel");
            }
            Err(error.into())
        }
    }
}

/// A message's properties without `expiration` and `user_id` (BasicProperties cannot unset).
fn dead_letter_properties(original: &BasicProperties) -> BasicProperties {
    let mut copy = BasicProperties::default();
    if let Some(v) = original.content_type() {
        copy = copy.with_content_type(v.clone());
    }
    if let Some(v) = original.content_encoding() {
        copy = copy.with_content_encoding(v.clone());
    }
    if let Some(v) = original.priority() {
        copy = copy.with_priority(*v);
    }
    if let Some(v) = original.correlation_id() {
        copy = copy.with_correlation_id(v.clone());
    }
    if let Some(v) = original.reply_to() {
        copy = copy.with_reply_to(v.clone());
    }
    if let Some(v) = original.message_id() {
        copy = copy.with_message_id(v.clone());
    }
    if let Some(v) = original.timestamp() {
        copy = copy.with_timestamp(*v);
    }
    if let Some(v) = original.kind() {
        copy = copy.with_type(v.clone());
    }
    if let Some(v) = original.app_id() {
        copy = copy.with_app_id(v.clone());
    }
    if let Some(v) = original.cluster_id() {
        copy = copy.with_cluster_id(v.clone());
    }
    copy
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_errors_know_whether_a_retryable() {
        let io = std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset");
        assert!(BrokerError::Amqp(lapin::Error::from(io)).retryable());
        assert!(BrokerError::Unroutable("x".into()).retryable());
        assert!(BrokerError::Nacked("x".into()).retryable());
        let encode = serde_json::from_str::<u8>("x").unwrap_err();
        assert!(!BrokerError::Encode(encode).retryable());
    }

    #[test]
    fn the_dead_letter_copy_drops_expiration_and_user_id_and_keeps_the_rest() {
        let original = BasicProperties::default()
            .with_expiration("1000".into())
            .with_user_id("someone".into())
            .with_message_id("m".into())
            .with_correlation_id("c".into())
            .with_content_type("text/plain".into())
            .with_timestamp(7);
        let copy = dead_letter_properties(&original);
        assert_eq!(copy.expiration(), &None);
        assert_eq!(copy.user_id(), &None);
        assert_eq!(copy.message_id(), original.message_id());
        assert_eq!(copy.correlation_id(), original.correlation_id());
        assert_eq!(copy.content_type(), original.content_type());
        assert_eq!(copy.timestamp(), original.timestamp());
    }
}
