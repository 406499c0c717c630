//! The refund sweep: no credit is kept for a job that will never finish.
//!
//! A miss is charged before it generates, and its failure refunds the charge in the transaction
//! that records it. A job whose every delivery failed to reach that point — the database away for
//! longer than the delivery budget, a worker crashing on it until the queue's delivery limit
//! dead-lettered it — stays `processing`, charged. Every `refunds.every_secs`, one replica (an
//! advisory lock per batch picks it) refunds such jobs once their claim expired more than
//! `refunds.abandoned_after_secs` ago and records them as failed `internal` (retryable): a
//! delivery of one that still comes is answered with that failure, never generated for free.
//! Failed jobs whose charge stands (none should exist) are refunded too.

use std::time::Duration;

use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::time::Instant;

use crate::config::RefundSettings;
use crate::db::refunds::{self as sql, Abandoned};
use crate::db::{DbError, credits};
use crate::job::{CacheKey, ErrorCode, JobError, JobId, JobResult};

/// Jobs per batch (one transaction).
const BATCH: i64 = 200;

/// Why a refund sweep stopped.
#[derive(Debug, thiserror::Error)]
pub enum RefundError {
    /// The database failed; the next sweep tries again.
    #[error("refund sweep: {0}")]
    Db(#[from] DbError),
}

/// What a sweep did.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RefundReport {
    /// Charges given back.
    pub(crate) refunded: u64,
    /// Jobs left processing that were recorded as failed.
    pub(crate) given_up: u64,
    /// How long the sweep took (milliseconds).
    pub(crate) duration_ms: u64,
}

/// The outcome of asking for a sweep.
#[derive(Debug, Clone, PartialEq)]
pub enum Swept {
    /// The sweep ran, and did this.
    Completed(RefundReport),
    /// Another process is sweeping right now.
    Skipped,
}

/// Runs sweeps; the schedule calls [`Refunder::run`].
#[derive(Debug, Clone)]
pub struct Refunder {
    db: PgPool,
    settings: RefundSettings,
}

impl Refunder {
    /// A refunder sweeping `db` with `settings` (`[refunds]`).
    pub fn new(db: PgPool, settings: RefundSettings) -> Refunder {
        Refunder { db, settings }
    }

    /// The time between sweeps (`refunds.every_secs`).
    pub fn every(&self) -> Duration {
        Duration::from_secs(self.settings.every_secs)
    }

    /// One sweep, in batches, unless another process is sweeping.
    pub async fn run(&self) -> Result<Swept, RefundError> {
        let started = Instant::now();
        let abandoned_after = Duration::from_secs(self.settings.abandoned_after_secs);
        let mut report = RefundReport::default();
        let mut first = true;
        loop {
            let mut tx = self.db.begin().await.map_err(DbError::from)?;
            if !sql::try_lock(&mut tx).await? {
                tx.rollback().await.map_err(DbError::from)?;
                if first {
                    return Ok(Swept::Skipped);
                }
                // Another replica took over between two batches; it finishes the work.
                break;
            }
            first = false;
            let batch = sql::next_batch(&mut tx, abandoned_after, BATCH).await?;
            for job in &batch {
                if credits::refund(&mut *tx, JobId(job.job_id)).await? {
                    report.refunded += 1;
                }
                if job.processing && sql::give_up(&mut *tx, job.job_id, &given_up(job)?).await? {
                    report.given_up += 1;
                }
            }
            tx.commit().await.map_err(DbError::from)?;
            if batch.len() < BATCH as usize {
                break;
            }
        }
        report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if report.refunded > 0 || report.given_up > 0 {
            tracing::warn!(
                refunded = report.refunded,
                given_up = report.given_up,
                duration_ms = report.duration_ms,
                "refunded charges of jobs that never finished"
            );
        }
        Ok(Swept::Completed(report))
    }
}

/// The result recorded for a job given up: failed, `internal`, worth sending again.
fn given_up(job: &Abandoned) -> Result<serde_json::Value, DbError> {
    let key = job.prompt_hash.as_deref().and_then(CacheKey::parse);
    let error = JobError {
        code: ErrorCode::Internal,
        message: "the job never finished (its message was dead-lettered or lost); \
                  its credit was refunded"
            .to_owned(),
        retryable: true,
    };
    let result = JobResult::failure(JobId(job.job_id), &job.user_id, key.as_ref(), error);
    serde_json::to_value(&result).map_err(|e| DbError::Corrupt(e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_given_up_is_a_retryable_internal_failure_of_its_user() {
        let job = Abandoned {
            job_id: uuid::Uuid::nil(),
            user_id: "u".to_owned(),
            prompt_hash: Some(
                "57031741670c8d0259dfd2b0809f9923eb2a04bcfc4ac10ce9d998eb376f16fe".to_owned(),
            ),
            processing: true,
        };
        let result: JobResult = serde_json::from_value(given_up(&job).unwrap()).unwrap();
        assert_eq!(result.user_id, "u");
        assert_eq!(result.error_code(), Some(ErrorCode::Internal));
        assert_eq!(result.error.map(|e| e.retryable), Some(true));
        assert_eq!(result.prompt_hash, job.prompt_hash);
        assert_eq!(result.credits_charged, 0);
    }
}
