//! RabbitMQ, through lapin: connecting, declaring the topology (CONTRACT.md §2), consuming, and
//! publishing with confirms.
//!
//! Every publish waits for the broker's confirm, so a caller that gets `Ok` knows the message is
//! the broker's responsibility. Nothing here acks a delivery: that is `worker::settle`'s job.

mod topology;

use lapin::options::{
    BasicConsumeOptions, BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, Consumer};
use secrecy::ExposeSecret;

pub use topology::declare;

use crate::config::AmqpSettings;
use crate::job::JobResult;

/// Header that carries why a message was dead-lettered.
pub const REASON_HEADER: &str = "x-memoji-reason";

#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    #[error("broker: {0}")]
    Amqp(#[from] lapin::Error),
    #[error("broker refused the message (nack) on {0}")]
    Nacked(String),
    #[error("broker could not route the message to {0}")]
    Unroutable(String),
    #[error("message could not be encoded: {0}")]
    Encode(#[from] serde_json::Error),
}

/// Where a job asked for its result to be sent too (AMQP `reply_to` / `correlation_id`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplyTo {
    pub queue: ShortString,
    pub correlation_id: ShortString,
}

/// One connection to the broker with a confirming publisher channel.
pub struct Broker {
    connection: Connection,
    publisher: Channel,
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
    /// Connects and opens the publisher channel in confirm mode.
    pub async fn connect(settings: &AmqpSettings, name: &str) -> Result<Broker, BrokerError> {
        let properties = ConnectionProperties::default().with_connection_name(name.into());
        let connection = Connection::connect(settings.url.expose_secret(), properties).await?;
        let publisher = connection.create_channel().await?;
        publisher
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        Ok(Broker {
            connection,
            publisher,
            settings: settings.clone(),
        })
    }

    pub fn settings(&self) -> &AmqpSettings {
        &self.settings
    }

    pub fn is_connected(&self) -> bool {
        self.connection.status().connected()
    }

    /// A fresh channel on this connection (for clients and tools).
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        Ok(self.connection.create_channel().await?)
    }

    /// Declares the topology (idempotent).
    pub async fn declare(&self) -> Result<(), BrokerError> {
        declare(&self.publisher, &self.settings).await
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
        let options = BasicPublishOptions {
            mandatory,
            ..BasicPublishOptions::default()
        };
        let confirm = self
            .publisher
            .basic_publish(
                exchange.into(),
                routing_key.into(),
                options,
                body,
                properties,
            )
            .await?
            .await?;
        let target = || format!("{exchange:?}/{routing_key:?}");
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable(target())),
            Confirmation::Nack(_) => Err(BrokerError::Nacked(target())),
        }
    }

    /// Publishes a job's result to the result exchange and, when asked, to its reply queue.
    pub async fn publish_result(
        &self,
        result: &JobResult,
        reply_to: Option<&ReplyTo>,
    ) -> Result<(), BrokerError> {
        let body = serde_json::to_vec(result)?;
        let message_id: ShortString = result.job_id.to_string().into();
        let properties = BasicProperties::default()
            .with_message_id(message_id.clone())
            .with_timestamp(result.completed_at.timestamp().max(0) as u64);
        self.publish(
            &self.settings.result_exchange,
            result.routing_key(),
            &body,
            properties.clone(),
            true,
        )
        .await?;
        if let Some(reply) = reply_to {
            let properties = properties.with_correlation_id(reply.correlation_id.clone());
            // The requester may be gone; the result is on the result queue regardless.
            match self
                .publish("", reply.queue.as_str(), &body, properties, true)
                .await
            {
                Err(BrokerError::Unroutable(queue)) => {
                    tracing::warn!(%queue, "reply queue does not exist; result kept on the result queue only");
                }
                other => other?,
            }
        }
        Ok(())
    }

    /// Sends a copy of an unprocessable message to the dead-letter exchange with the reason.
    pub async fn dead_letter(
        &self,
        body: &[u8],
        properties: &BasicProperties,
        reason: &str,
    ) -> Result<(), BrokerError> {
        let mut headers = properties.headers().clone().unwrap_or_default();
        headers.insert(REASON_HEADER.into(), AMQPValue::LongString(reason.into()));
        let properties = properties.clone().with_headers(headers);
        // Keep the original content type where it had one.
        let properties = match properties.content_type() {
            Some(content_type) => properties.clone().with_content_type(content_type.clone()),
            None => properties,
        };
        let exchange = self.settings.dead_letter_exchange.clone();
        let confirm = self
            .publisher
            .basic_publish(
                exchange.as_str().into(),
                self.settings.job_queue.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties.with_delivery_mode(2),
            )
            .await?
            .await?;
        match confirm {
            Confirmation::Ack(None) | Confirmation::NotRequested => Ok(()),
            Confirmation::Ack(Some(_)) => Err(BrokerError::Unroutable(exchange)),
            Confirmation::Nack(_) => Err(BrokerError::Nacked(exchange)),
        }
    }

    /// Deletes the topology's queues and exchanges (tools and tests with names of their own).
    pub async fn remove_topology(&self) -> Result<(), BrokerError> {
        let channel = self.connection.create_channel().await?;
        topology::remove(&channel, &self.settings).await;
        let _ = channel.close(200, "done".into()).await;
        Ok(())
    }

    /// Closes the connection politely.
    pub async fn close(&self) {
        let _ = self.connection.close(200, "shutting down".into()).await;
    }
}
