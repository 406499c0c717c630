//! Pausing on a database outage: while Postgres is out of reach, no job can be answered, so the
//! worker stops taking deliveries instead of handing every job back again and again until the
//! queue's delivery limit dead-letters it.
//!
//! The first job that finds the database out of reach reports it ([`Outage::report`]). The consume
//! loop then cancels its consumer, hands back (nack, requeue) what the broker had already sent,
//! and probes the database with backoff; once a probe succeeds it consumes again. A job in hand
//! when the outage began costs one delivery attempt (its own failed try), whatever the outage's
//! length. Other replicas pause the same way when their own jobs fail. A pool exhausted for
//! longer than `database.acquire_timeout_secs` counts as out of reach too: the pause then lasts
//! until a connection is free again, which is the backpressure wanted.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use futures_util::StreamExt;
use lapin::options::BasicCancelOptions;
use lapin::{Channel, Consumer};
use sqlx::PgPool;
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

use super::acks::{AckError, Acks};
use crate::db;

/// Longest wait for the broker to confirm that a cancelled consumer sent its last delivery.
const DRAIN_LIMIT: Duration = Duration::from_secs(5);

/// Whether the database was last found out of reach; shared by every job of a process.
#[derive(Debug)]
pub struct Outage(watch::Sender<bool>);

impl Default for Outage {
    fn default() -> Outage {
        Outage(watch::Sender::new(false))
    }
}

impl Outage {
    /// A job found the database out of reach.
    pub(crate) fn report(&self) {
        self.0
            .send_if_modified(|down| !std::mem::replace(down, true));
    }

    /// Whether the database is out of reach right now, as the jobs last found.
    pub fn is_down(&self) -> bool {
        *self.0.borrow()
    }

    /// Resolves once an outage is reported (at once if one is).
    pub(crate) async fn reported(&self) {
        let mut seen = self.0.subscribe();
        let _ = seen.wait_for(|down| *down).await;
    }

    /// Probes the database with backoff until it answers, then clears the outage. `false` if
    /// `shutdown` came first.
    pub(crate) async fn wait_for_database(
        &self,
        pool: &PgPool,
        shutdown: &CancellationToken,
    ) -> bool {
        let mut pauses = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(200))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times()
            .build();
        loop {
            if db::ping(pool).await {
                self.0.send_replace(false);
                return true;
            }
            let pause = pauses.next().unwrap_or(Duration::from_secs(5));
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => return false,
            }
        }
    }
}

/// Stops `consumer` and hands back the deliveries the broker sent before the cancel took effect.
/// The jobs in flight settle on their own (they are handed back too while the database is away).
pub(crate) async fn stop_consuming(
    channel: &Channel,
    acks: &Acks,
    consumer: &mut Consumer,
    tag: &str,
) -> Result<(), AckError> {
    channel
        .basic_cancel(tag.into(), BasicCancelOptions::default())
        .await?;
    let mut handed_back = 0_u32;
    let drained = tokio::time::timeout(DRAIN_LIMIT, async {
        // After the cancel, the stream yields what was already sent, then ends.
        while let Some(Ok(delivery)) = consumer.next().await {
            acks.hand_back(delivery.delivery_tag).await?;
            handed_back += 1;
        }
        Ok::<(), AckError>(())
    })
    .await;
    tracing::warn!(
        handed_back,
        "database out of reach; stopped consuming until it answers"
    );
    match drained {
        Ok(result) => result,
        // What was not seen stays unacked on this channel and goes back when it closes.
        Err(_) => Ok(()),
    }
}

/// Consumes the job queue again on `channel`, under the same tag.
pub(crate) async fn resume_consuming(
    channel: &Channel,
    queue: &str,
    tag: &str,
) -> Result<Consumer, lapin::Error> {
    let consumer = channel
        .basic_consume(
            queue.into(),
            tag.into(),
            lapin::options::BasicConsumeOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await?;
    tracing::info!("database answers again; consuming jobs");
    Ok(consumer)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_report_is_seen_at_once_and_only_once_per_outage() {
        let outage = Outage::default();
        assert!(!outage.is_down());
        outage.report();
        outage.report();
        assert!(outage.is_down());
        tokio::time::timeout(Duration::from_millis(100), outage.reported())
            .await
            .expect("a reported outage resolves at once");
    }

    #[tokio::test]
    async fn the_outage_lasts_until_the_database_answers() {
        let outage = Outage::default();
        outage.report();
        let unreachable = sqlx::postgres::PgPoolOptions::new()
            .acquire_timeout(Duration::from_millis(100))
            .connect_lazy("postgres://postgres@127.0.0.1:1/nothing")
            .unwrap();
        let stop = CancellationToken::new();
        let stopper = stop.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(700)).await;
            stopper.cancel();
        });
        assert!(!outage.wait_for_database(&unreachable, &stop).await);
        assert!(outage.is_down(), "still down: no probe succeeded");
    }
}
