//! A tap on a test's metrics queue.

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions};
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use serde_json::Value;

use super::env::{RESULT_TIMEOUT, TestEnv};

impl TestEnv {
    /// A consumer on this test's metrics queue.
    pub async fn metrics_tap(&self) -> MetricsTap {
        let channel = self.broker.channel().await.unwrap();
        let consumer = channel
            .basic_consume(
                self.settings.amqp.metrics_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        MetricsTap {
            _channel: channel,
            consumer,
        }
    }
}

/// Reads the metrics queue of a test.
pub struct MetricsTap {
    _channel: Channel,
    consumer: Consumer,
}

impl MetricsTap {
    /// The next message with `routing_key` whose body satisfies `wanted`; others are consumed
    /// and passed over.
    pub async fn next_with(&mut self, routing_key: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let delivery = self.next_delivery_with(routing_key, wanted).await;
        serde_json::from_slice(&delivery.data).unwrap()
    }

    /// Like [`MetricsTap::next_with`], with the delivery (for its properties).
    pub async fn next_delivery_with(
        &mut self,
        routing_key: &str,
        wanted: impl Fn(&Value) -> bool,
    ) -> Delivery {
        let found = tokio::time::timeout(RESULT_TIMEOUT, async {
            loop {
                let delivery = self
                    .consumer
                    .next()
                    .await
                    .expect("the metrics consumer is open")
                    .expect("a delivery");
                delivery.ack(BasicAckOptions::default()).await.unwrap();
                if delivery.routing_key.as_str() != routing_key {
                    continue;
                }
                assert_eq!(
                    delivery
                        .properties
                        .content_type()
                        .as_ref()
                        .map(|s| s.as_str()),
                    Some("application/json")
                );
                let body: Value = serde_json::from_slice(&delivery.data).unwrap();
                if wanted(&body) {
                    return delivery;
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no {routing_key} message arrived in time"))
    }
}
