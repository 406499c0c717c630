//! The test's side of the broker: publishing jobs, taking messages off its queues, counting them,
//! reply queues, and closing the worker's connections as a broker restart would.

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel};

use serde_json::Value;

use super::env::{RESULT_TIMEOUT, TestEnv};

impl TestEnv {
    pub async fn publish(&self, job: &Value) {
        self.publish_raw(
            &serde_json::to_vec(job).unwrap(),
            BasicProperties::default(),
        )
        .await;
    }

    pub async fn publish_raw(&self, body: &[u8], properties: BasicProperties) {
        self.broker
            .publish("", &self.settings.amqp.job_queue, body, properties, true)
            .await
            .unwrap();
    }

    /// Takes one message from a queue of this test, waiting up to the timeout.
    pub async fn take_from(&self, queue: &str) -> Option<Delivery> {
        let channel = self.broker.channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let delivery = tokio::time::timeout(RESULT_TIMEOUT, consumer.next())
            .await
            .ok()??
            .ok()?;
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        Some(delivery)
    }

    /// A private queue for reply_to tests; it goes with the test's connection.
    pub async fn reply_queue(&self) -> (Channel, String) {
        let channel = self.broker.channel().await.unwrap();
        let name = format!("{}.replies", self.id);
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        (channel, name)
    }

    /// How many messages wait in `queue` (a passive declare: the queue must exist).
    pub async fn messages_in(&self, queue: &str) -> u32 {
        let channel = self.broker.channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count()
    }

    /// Closes this environment's worker connections at the broker, as a broker restart would.
    pub async fn close_worker_connections(&self) -> usize {
        let listing = tokio::process::Command::new("rabbitmqctl")
            .args([
                "list_connections",
                "pid",
                "client_properties",
                "-q",
                "--no-table-headers",
            ])
            .output()
            .await
            .expect("rabbitmqctl runs");
        let marker = format!("on {}\"", self.settings.amqp.job_queue);
        let mut closed = 0;
        for line in String::from_utf8_lossy(&listing.stdout).lines() {
            let Some((pid, properties)) = line.split_once('\t') else {
                continue;
            };
            if properties.contains(&marker) {
                let status = tokio::process::Command::new("rabbitmqctl")
                    .args(["close_connection", pid, "fault test"])
                    .status()
                    .await
                    .unwrap();
                assert!(status.success());
                closed += 1;
            }
        }
        closed
    }
}

/// The `x-memoji-reason` header of a dead-lettered message.
pub fn dead_letter_reason(delivery: &lapin::message::Delivery) -> String {
    let headers = delivery.properties.headers().as_ref().expect("headers");
    match headers.inner().get(memoji_worker::broker::REASON_HEADER) {
        Some(lapin::types::AMQPValue::LongString(text)) => text.to_string(),
        other => panic!("no reason header: {other:?}"),
    }
}
