//! The queues and exchanges of CONTRACT.md §2, declared idempotently at start.
//!
//! Re-declaring with the same arguments is a no-op; declaring an existing queue with different
//! arguments (say, a classic `memoji.jobs` from an earlier setup) fails loudly with the broker's
//! PRECONDITION_FAILED rather than silently working with the wrong guarantees.

use lapin::options::{
    ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ExchangeKind};

use super::BrokerError;
use crate::config::AmqpSettings;

fn durable_exchange() -> ExchangeDeclareOptions {
    ExchangeDeclareOptions {
        durable: true,
        ..ExchangeDeclareOptions::default()
    }
}

fn durable_queue() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn table(entries: &[(&str, AMQPValue)]) -> FieldTable {
    let mut table = FieldTable::default();
    for (key, value) in entries {
        table.insert((*key).into(), value.clone());
    }
    table
}

/// Declares the worker's exchanges and queues, named by `names`, idempotently (CONTRACT.md §2).
pub async fn declare(channel: &Channel, names: &AmqpSettings) -> Result<(), BrokerError> {
    let text = |s: &str| AMQPValue::LongString(s.into());

    // Dead letters: a fanout exchange into one durable queue.
    channel
        .exchange_declare(
            names.dead_letter_exchange.as_str().into(),
            ExchangeKind::Fanout,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            names.dead_letter_queue.as_str().into(),
            durable_queue(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            names.dead_letter_queue.as_str().into(),
            names.dead_letter_exchange.as_str().into(),
            "".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    // Jobs: a quorum queue (replicated, with a delivery limit) that dead-letters to the above.
    let job_arguments = table(&[
        ("x-queue-type", text("quorum")),
        ("x-dead-letter-exchange", text(&names.dead_letter_exchange)),
        (
            "x-delivery-limit",
            AMQPValue::LongLongInt(i64::from(names.delivery_limit)),
        ),
    ]);
    channel
        .queue_declare(
            names.job_queue.as_str().into(),
            durable_queue(),
            job_arguments,
        )
        .await?;

    // Results: a topic exchange and a durable queue holding every result until someone reads it.
    channel
        .exchange_declare(
            names.result_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_declare(
            names.result_queue.as_str().into(),
            durable_queue(),
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            names.result_queue.as_str().into(),
            names.result_exchange.as_str().into(),
            "result.#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;

    // Metrics: a topic exchange and a bounded queue that drops its oldest messages first.
    channel
        .exchange_declare(
            names.metrics_exchange.as_str().into(),
            ExchangeKind::Topic,
            durable_exchange(),
            FieldTable::default(),
        )
        .await?;
    let metrics_arguments = table(&[
        (
            "x-max-length",
            AMQPValue::LongLongInt(i64::from(names.metrics_queue_max_length)),
        ),
        ("x-overflow", text("drop-head")),
    ]);
    channel
        .queue_declare(
            names.metrics_queue.as_str().into(),
            durable_queue(),
            metrics_arguments,
        )
        .await?;
    channel
        .queue_bind(
            names.metrics_queue.as_str().into(),
            names.metrics_exchange.as_str().into(),
            "#".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Deletes every queue and exchange of the topology, messages included: for tools and tests that
/// set up a topology of their own under prefixed names. Best effort: what is already gone is fine.
pub(crate) async fn remove(channel: &Channel, names: &AmqpSettings) {
    for queue in [
        &names.job_queue,
        &names.result_queue,
        &names.metrics_queue,
        &names.dead_letter_queue,
    ] {
        let _ = channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await;
    }
    for exchange in [
        &names.result_exchange,
        &names.metrics_exchange,
        &names.dead_letter_exchange,
    ] {
        let _ = channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await;
    }
}
