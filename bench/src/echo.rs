//! The baseline: a consumer that does nothing but what the broker side of the worker does.
//!
//! It uses the worker's own [`Broker`] with the same settings — the same quorum job queue, the
//! same prefetch, one task per delivery — and settles each delivery the way `worker::settle` does:
//! publish a (tiny) result to the result exchange, persistent and mandatory, wait for the broker's
//! confirm, then ack. What the worker adds on top of this (JSON, hashing, Postgres) is the
//! difference between the two runs.

use std::time::Duration;

use futures_util::StreamExt;
use lapin::BasicProperties;
use lapin::options::BasicAckOptions;
use memoji_worker::broker::Broker;
use memoji_worker::config::Settings;

/// Runs until SIGTERM or Ctrl-C; configured from the environment like `memoji-worker run`.
pub async fn run() -> anyhow::Result<()> {
    let settings = Settings::load(None)?;
    let amqp = settings.amqp.clone();
    let broker = std::sync::Arc::new(Broker::connect(&amqp, "memoji-bench echo").await?);
    broker.declare().await?;
    let (_channel, mut consumer) = broker
        .consume_jobs("memoji-bench-echo", amqp.prefetch)
        .await?;
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = terminate.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
            next = consumer.next() => {
                let Some(delivery) = next else { break };
                let delivery = delivery?;
                let broker = broker.clone();
                let exchange = amqp.result_exchange.clone();
                tokio::spawn(async move {
                    let id = delivery
                        .properties
                        .message_id()
                        .as_ref()
                        .map(|id| id.as_str().to_owned())
                        .unwrap_or_default();
                    let body = format!(r#"{{"job_id":"{id}","status":"succeeded","cached":true}}"#);
                    let properties = BasicProperties::default().with_message_id(id.into());
                    match broker
                        .publish(&exchange, "result.succeeded", body.as_bytes(), properties, true)
                        .await
                    {
                        Ok(()) => {
                            let _ = delivery.ack(BasicAckOptions::default()).await;
                        }
                        Err(error) => eprintln!("echo: could not publish: {error}"),
                    }
                });
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    broker.close().await;
    Ok(())
}
