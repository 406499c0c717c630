//! Job ids derived from message bodies (CONTRACT.md §2.1): which job a body stands for now.
//!
//! A job without `job_id` (and without a UUID `message_id`) gets an id derived from its body, so
//! that a broker's redelivery of the same message is recognized. That recognition is bounded: once
//! the job has been finished for `worker.derived_id_ttl_secs`, or as soon as it failed with a
//! retryable error, the same body is a new job, with a fresh id of its own (so its charge, its
//! row and its result never mix with the old job's, and a subscriber that drops repeated ids keeps
//! it). `memoji_derived_jobs` maps the derived id to the job it stands for; the first job of a body
//! keeps the derived id itself, as before the mapping existed.

use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::DbError;
use crate::job::JobId;

/// A mapping whose job row is gone (pruned) is treated as finished this long after it was made,
/// at the least; a job row missing for less than that is still being created by a twin delivery.
const MISSING_JOB_GRACE: Duration = Duration::from_secs(3600);

/// The mapped job, as a delivery of the body finds it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
struct Current {
    job_id: Uuid,
    assigned_at: DateTime<Utc>,
    status: Option<String>,
    retryable: Option<bool>,
    completed_at: Option<DateTime<Utc>>,
    now: DateTime<Utc>,
}

impl Current {
    /// Whether the body no longer stands for this job.
    fn is_over(&self, ttl: Duration) -> bool {
        let before = |span: Duration| {
            chrono::Duration::from_std(span)
                .ok()
                .and_then(|span| self.now.checked_sub_signed(span))
                .unwrap_or(DateTime::<Utc>::MIN_UTC)
        };
        match self.status.as_deref() {
            None => self.assigned_at < before(ttl.max(MISSING_JOB_GRACE)),
            Some("processing") => false,
            Some(_) => {
                self.retryable == Some(true) || self.completed_at.is_none_or(|at| at <= before(ttl))
            }
        }
    }
}

/// The id of the job that a body whose derived id is `derived` stands for now: `derived` itself
/// the first time, the same id for a redelivery, a fresh one once the last job is over (finished
/// `ttl` ago, or failed retryably). Deliveries of the same body are serialized on its row.
pub(crate) async fn current_job(
    pool: &PgPool,
    derived: JobId,
    ttl: Duration,
) -> Result<JobId, DbError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO memoji_derived_jobs (derived_id, job_id) VALUES ($1, $1)
         ON CONFLICT (derived_id) DO NOTHING",
    )
    .bind(derived.0)
    .execute(&mut *tx)
    .await?;
    let current: Current = sqlx::query_as(
        "SELECT mapping.job_id, mapping.assigned_at, job.status,
                (job.result -> 'error' ->> 'retryable')::boolean AS retryable,
                (job.result ->> 'completed_at')::timestamptz AS completed_at, now() AS now
           FROM memoji_derived_jobs mapping
           LEFT JOIN memoji_jobs job ON job.job_id = mapping.job_id
          WHERE mapping.derived_id = $1
            FOR UPDATE OF mapping",
    )
    .bind(derived.0)
    .fetch_one(&mut *tx)
    .await?;
    let id = if current.is_over(ttl) {
        let fresh = Uuid::new_v4();
        sqlx::query(
            "UPDATE memoji_derived_jobs SET job_id = $2, assigned_at = now() WHERE derived_id = $1",
        )
        .bind(derived.0)
        .bind(fresh)
        .execute(&mut *tx)
        .await?;
        tracing::info!(previous = %current.job_id, job = %fresh, "the same body again after its job was over: a new job");
        fresh
    } else {
        current.job_id
    };
    tx.commit().await?;
    Ok(JobId(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn current(status: Option<&str>, retryable: Option<bool>, ago_secs: i64) -> Current {
        let now = Utc::now();
        let at = now - chrono::Duration::seconds(ago_secs);
        Current {
            job_id: Uuid::nil(),
            assigned_at: at,
            status: status.map(str::to_owned),
            retryable,
            completed_at: status.filter(|s| *s != "processing").map(|_| at),
            now,
        }
    }

    #[test]
    fn a_derived_job_is_over_after_its_ttl_or_a_retryable_failure() {
        let ttl = Duration::from_secs(600);
        assert!(!current(Some("processing"), None, 100_000).is_over(ttl));
        assert!(!current(Some("succeeded"), None, 599).is_over(ttl));
        assert!(current(Some("succeeded"), None, 601).is_over(ttl));
        assert!(!current(Some("failed"), Some(false), 10).is_over(ttl));
        assert!(current(Some("failed"), Some(true), 0).is_over(ttl));
        // A job row not there yet is a twin delivery's; one gone for long was pruned.
        assert!(!current(None, None, 0).is_over(ttl));
        assert!(current(None, None, 7200).is_over(ttl));
        assert!(current(Some("succeeded"), None, 0).is_over(Duration::ZERO));
    }
}
