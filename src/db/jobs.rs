//! `memoji_jobs`: the state of every job, so a job id seen again is answered, not redone.
//!
//! One delivery at a time owns a processing job. Ownership is a lease (`owner`,
//! `owner_expires_at`) renewed while the delivery works, so a duplicate delivery — a publisher's
//! retry, or a redelivery while the first copy is still running elsewhere — waits for the owner's
//! result instead of doing the work again, and a delivery whose owner died takes over when the
//! lease runs out.

use std::time::Duration;

use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::DbError;
use crate::job::{CacheKey, JobId, JobResult};

/// What the table knew about a job when a delivery of it arrived.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// First delivery; this delivery owns the job.
    New,
    /// Delivered before and never finished (its owner died); this delivery owns it now.
    Unfinished {
        /// Deliveries counted so far, this one included.
        deliveries: i32,
    },
    /// Finished before: publish this result again.
    Finished(Box<JobResult>),
    /// Another delivery of the same job is working on it right now.
    Busy,
    /// The id belongs to another user's job, which this delivery did not touch.
    Conflict,
}

#[derive(sqlx::FromRow)]
struct ArrivalRow {
    user_id: String,
    result: Option<serde_json::Value>,
    deliveries: i32,
    owned: bool,
}

/// Who is arriving: the job, its key, and this delivery's identity as owner.
#[derive(Debug, Clone, Copy)]
pub struct Arrival<'a> {
    /// The job's id.
    pub id: JobId,
    /// The user id as the job gave it.
    pub user_id: &'a str,
    /// The job's cache key.
    pub key: &'a CacheKey,
    /// This delivery's identity as owner.
    pub owner: Uuid,
    /// How long the ownership lasts unless renewed.
    pub ttl: Duration,
}

/// Registers a delivery of a job and tries to take ownership of it, in one statement. Another
/// user's job id is never touched.
pub async fn arrive(executor: impl PgExecutor<'_>, arrival: Arrival<'_>) -> Result<Seen, DbError> {
    let row: Option<ArrivalRow> = sqlx::query_as(
        "INSERT INTO memoji_jobs (job_id, user_id, prompt_hash, status, owner, owner_expires_at)
         VALUES ($1, $2, $3, 'processing', $4, now() + $5 * interval '1 millisecond')
         ON CONFLICT (job_id) DO UPDATE SET
             deliveries = memoji_jobs.deliveries + 1,
             updated_at = now(),
             owner = CASE WHEN memoji_jobs.status = 'processing'
                           AND COALESCE(memoji_jobs.owner_expires_at < now(), true)
                          THEN EXCLUDED.owner ELSE memoji_jobs.owner END,
             owner_expires_at = CASE WHEN memoji_jobs.status = 'processing'
                           AND COALESCE(memoji_jobs.owner_expires_at < now(), true)
                          THEN EXCLUDED.owner_expires_at ELSE memoji_jobs.owner_expires_at END
          -- Another user's job id is never touched: no row comes back, and that is a conflict.
          WHERE memoji_jobs.user_id = EXCLUDED.user_id
         RETURNING user_id, result, deliveries, owner IS NOT DISTINCT FROM $4 AS owned",
    )
    .bind(arrival.id.0)
    .bind(arrival.user_id)
    .bind(arrival.key.as_str())
    .bind(arrival.owner)
    .bind(millis(arrival.ttl))
    .fetch_optional(executor)
    .await?;
    // The id belongs to another user's job: that job is left exactly as it was (no delivery
    // counted, no takeover of its claim), and this delivery is answered on its own.
    let Some(row) = row.filter(|row| row.user_id == arrival.user_id) else {
        return Ok(Seen::Conflict);
    };
    if let Some(result) = row.result {
        return Ok(Seen::Finished(Box::new(parse(arrival.id, result)?)));
    }
    Ok(match (row.owned, row.deliveries) {
        (true, 1) => Seen::New,
        (true, deliveries) => Seen::Unfinished { deliveries },
        (false, _) => Seen::Busy,
    })
}

/// For a delivery waiting on a busy job: the job's result once finished, or ownership once the
/// owner stopped renewing. `None` while the owner is still at work.
pub(crate) async fn wait_turn(
    pool: &PgPool,
    id: JobId,
    owner: Uuid,
    ttl: Duration,
) -> Result<Option<Seen>, DbError> {
    let row: Option<(Option<serde_json::Value>, bool, i32)> = sqlx::query_as(
        "WITH takeover AS (
             UPDATE memoji_jobs SET owner = $2, owner_expires_at = now() + $3 * interval '1 millisecond'
              WHERE job_id = $1 AND status = 'processing' AND owner_expires_at < now()
          RETURNING job_id)
         SELECT result, EXISTS (SELECT 1 FROM takeover), deliveries FROM memoji_jobs WHERE job_id = $1",
    )
    .bind(id.0)
    .bind(owner)
    .bind(millis(ttl))
    .fetch_optional(pool)
    .await?;
    Ok(match row {
        Some((Some(result), _, _)) => Some(Seen::Finished(Box::new(parse(id, result)?))),
        Some((None, true, deliveries)) => Some(Seen::Unfinished { deliveries }),
        Some((None, false, _)) => None,
        None => {
            return Err(DbError::Corrupt(format!(
                "job {id} disappeared while in progress"
            )));
        }
    })
}

/// Extends this delivery's ownership; `false` if it was lost.
pub(crate) async fn renew(
    pool: &PgPool,
    id: JobId,
    owner: Uuid,
    ttl: Duration,
) -> Result<bool, DbError> {
    let renewed = sqlx::query(
        "UPDATE memoji_jobs SET owner_expires_at = now() + $3 * interval '1 millisecond'
          WHERE job_id = $1 AND owner = $2 AND status = 'processing'",
    )
    .bind(id.0)
    .bind(owner)
    .bind(millis(ttl))
    .execute(pool)
    .await?;
    Ok(renewed.rows_affected() == 1)
}

/// Gives up this delivery's ownership of an unfinished job, so its next delivery starts at once.
pub(crate) async fn disown(pool: &PgPool, id: JobId, owner: Uuid) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE memoji_jobs SET owner_expires_at = now()
          WHERE job_id = $1 AND owner = $2 AND status = 'processing'",
    )
    .bind(id.0)
    .bind(owner)
    .execute(pool)
    .await?;
    Ok(())
}

/// Stores a job's result; from then on the job is finished. Only the delivery that owns the job
/// may: one whose claim expired and was taken over (or whose job another delivery finished) gets
/// [`DbError::LostClaim`], and its transaction must not commit, so that the job keeps one result.
pub async fn finish(
    executor: impl PgExecutor<'_>,
    result: &JobResult,
    owner: Uuid,
) -> Result<(), DbError> {
    let status = if result.succeeded() {
        "succeeded"
    } else {
        "failed"
    };
    let json = serde_json::to_value(result).map_err(|e| DbError::Corrupt(e.to_string()))?;
    let finished = sqlx::query(
        "UPDATE memoji_jobs SET status = $2, result = $3, updated_at = now(), owner_expires_at = NULL
          WHERE job_id = $1 AND owner = $4 AND status = 'processing'",
    )
    .bind(result.job_id.0)
    .bind(status)
    .bind(json)
    .bind(owner)
    .execute(executor)
    .await?;
    if finished.rows_affected() == 0 {
        return Err(DbError::LostClaim(result.job_id));
    }
    Ok(())
}

/// Records the `invalid_job` answer of a job that was never worked on, so that its id seen again
/// (a redelivery, a publisher's retry with a corrected body, the answer itself coming back as a
/// job) is answered, not done. Where the id is already known to the same user with a result, that
/// result is returned to be published again instead; where it is known otherwise (at work, or
/// another user's), nothing is recorded and `None` tells the caller to answer as it meant to.
pub(crate) async fn record_answer(
    executor: impl PgExecutor<'_>,
    result: &JobResult,
) -> Result<Option<JobResult>, DbError> {
    let json = serde_json::to_value(result).map_err(|e| DbError::Corrupt(e.to_string()))?;
    let earlier: Option<(Option<serde_json::Value>,)> = sqlx::query_as(
        "WITH recorded AS (
             INSERT INTO memoji_jobs (job_id, user_id, status, result)
             VALUES ($1, $2, 'failed', $3)
             ON CONFLICT (job_id) DO NOTHING
             RETURNING job_id)
         SELECT result FROM memoji_jobs
          WHERE job_id = $1 AND user_id = $2 AND NOT EXISTS (SELECT 1 FROM recorded)",
    )
    .bind(result.job_id.0)
    .bind(&result.user_id)
    .bind(json)
    .fetch_optional(executor)
    .await?;
    match earlier {
        Some((Some(earlier),)) => Ok(Some(parse(result.job_id, earlier)?)),
        _ => Ok(None),
    }
}

pub(super) fn parse(id: JobId, result: serde_json::Value) -> Result<JobResult, DbError> {
    serde_json::from_value(result).map_err(|e| DbError::Corrupt(format!("job {id}: {e}")))
}

pub(super) fn millis(ttl: Duration) -> f64 {
    ttl.as_secs_f64() * 1000.0
}
