//! The cleanup's cron trigger (`cleanup.schedule`, six fields with seconds, UTC), on
//! `tokio-cron-scheduler`. It runs in every `memoji-worker run` process; the cleanup's advisory
//! lock makes exactly one of them do the work each time, so replicas need no leader election and
//! a replica going down does not stop the cleanup.

use std::sync::Arc;

use tokio_cron_scheduler::{Job, JobScheduler, JobSchedulerError};

use super::Cleaner;
use super::cleanup::Ran;
use super::refund::{Refunder, Swept};

/// Why the schedules could not be started.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleError {
    /// The cron scheduler failed: it could not be created or started, or refused a job (its cron
    /// expression).
    #[error("cleanup schedule: {0}")]
    Scheduler(#[from] JobSchedulerError),
}

/// Checks a cron expression as the scheduler will read it.
pub fn parse(expression: &str) -> Result<(), String> {
    Job::new_async(expression, |_, _| Box::pin(async {}))
        .map(drop)
        .map_err(|error| format!("{expression:?} is not a six-field cron expression ({error})"))
}

/// A running schedule; [`Schedule::stop`] ends it.
pub struct Schedule(JobScheduler);

/// Starts running `cleaner` (not dry) on `expression`, in UTC.
pub async fn start(cleaner: Arc<Cleaner>, expression: &str) -> Result<Schedule, ScheduleError> {
    let scheduler = JobScheduler::new().await?;
    let job = Job::new_async(expression, move |_, _| {
        let cleaner = cleaner.clone();
        Box::pin(async move {
            match cleaner.run(false).await {
                Ok(Ran::Completed(_)) => {}
                Ok(Ran::Skipped) => {
                    tracing::info!("scheduled cleanup: another replica is running it");
                }
                // Logged by the cleaner; the next scheduled run continues from where it stopped.
                Err(_) => {}
            }
        })
    })?;
    scheduler.add(job).await?;
    scheduler.start().await?;
    tracing::info!(schedule = expression, "cleanup scheduled (UTC)");
    Ok(Schedule(scheduler))
}

impl Schedule {
    /// Adds the refund sweep, every `refunder.every()`. Every replica schedules it; the sweep's
    /// advisory lock lets one of them work at a time.
    pub(crate) async fn add_refunds(&self, refunder: Arc<Refunder>) -> Result<(), ScheduleError> {
        let every = refunder.every();
        let job = Job::new_repeated_async(every, move |_, _| {
            let refunder = refunder.clone();
            Box::pin(async move {
                match refunder.run().await {
                    Ok(Swept::Completed(_)) => {}
                    Ok(Swept::Skipped) => {
                        tracing::debug!("refund sweep: another replica is running it")
                    }
                    Err(error) => {
                        tracing::warn!(%error, "refund sweep failed; the next one tries again");
                    }
                }
            })
        })?;
        self.0.add(job).await?;
        tracing::info!(every_secs = every.as_secs(), "refund sweep scheduled");
        Ok(())
    }

    /// Adds the scheduled warming on `expression` (UTC). Every replica schedules it; its
    /// advisory lock lets one of them warm at a time.
    pub(crate) async fn add_warming(
        &self,
        warming: Arc<super::warming::ScheduledWarming>,
        expression: &str,
    ) -> Result<(), ScheduleError> {
        let job = Job::new_async(expression, move |_, _| {
            let warming = warming.clone();
            Box::pin(async move {
                if let Err(error) = warming.run().await {
                    tracing::warn!(%error, "scheduled warming failed; the next one tries again");
                }
            })
        })?;
        self.0.add(job).await?;
        tracing::info!(schedule = expression, "warming scheduled (UTC)");
        Ok(())
    }

    /// Adds the warming batch sweep, every `every`. Every replica schedules it; the batch lock
    /// lets one of them work at a time.
    pub async fn add_batch_sweep(
        &self,
        sweep: Arc<super::warming::BatchSweep>,
        every: std::time::Duration,
    ) -> Result<(), ScheduleError> {
        let job = Job::new_repeated_async(every, move |_, _| {
            let sweep = sweep.clone();
            Box::pin(async move {
                match sweep.run().await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(finished = n, "warming batch sweep finished batches"),
                    Err(error) => {
                        tracing::warn!(%error, "warming batch sweep failed; the next one tries again");
                    }
                }
            })
        })?;
        self.0.add(job).await?;
        tracing::info!(
            every_ms = every.as_millis() as u64,
            "warming batch sweep scheduled"
        );
        Ok(())
    }

    /// Stops scheduling. A run in progress is abandoned with the process; its batches committed
    /// so far stay done, and its lock goes with its connection.
    pub async fn stop(mut self) {
        if let Err(error) = self.0.shutdown().await {
            tracing::warn!(%error, "stopping the cleanup schedule");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn six_field_cron_expressions_are_accepted_others_refused() {
        assert_eq!(parse("0 0 3 * * *"), Ok(()));
        assert_eq!(parse("*/5 * * * * *"), Ok(()));
        assert!(parse("every day").is_err());
        assert!(
            parse("0 3 * * *").is_err(),
            "five fields: seconds are required"
        );
    }
}
