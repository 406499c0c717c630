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
use crate::job::{JobId, JobResult};

/// What the table knew about a job when a delivery of it arrived.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// First delivery; this delivery owns the job.
    New,
    /// Delivered before and never finished (its owner died); this delivery owns it now.
    Unfinished { deliveries: i32 },
    /// Finished before: publish this result again.
    Finished(Box<JobResult>),
    /// Another delivery of the same job is working on it right now.
    Busy,
    /// The id belongs to another user's job.
    Conflict,
}

#[derive(sqlx::FromRow)]
struct Arrival {
    user_id: String,
    result: Option<serde_json::Value>,
    deliveries: i32,
    owned: bool,
}

/// Registers a delivery of a job and tries to take ownership of it as `owner`.
pub async fn arrive(
    pool: &PgPool,
    id: JobId,
    user_id: &str,
    prompt_hash: &str,
    owner: Uuid,
    ttl: Duration,
) -> Result<Seen, DbError> {
    let arrival: Arrival = sqlx::query_as(
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
         RETURNING user_id, result, deliveries, owner IS NOT DISTINCT FROM $4 AS owned",
    )
    .bind(id.0)
    .bind(user_id)
    .bind(prompt_hash)
    .bind(owner)
    .bind(millis(ttl))
    .fetch_one(pool)
    .await?;
    if arrival.user_id != user_id {
        return Ok(Seen::Conflict);
    }
    if let Some(result) = arrival.result {
        return Ok(Seen::Finished(Box::new(parse(id, result)?)));
    }
    Ok(match (arrival.owned, arrival.deliveries) {
        (true, 1) => Seen::New,
        (true, deliveries) => Seen::Unfinished { deliveries },
        (false, _) => Seen::Busy,
    })
}

/// For a delivery waiting on a busy job: the job's result once finished, or ownership once the
/// owner stopped renewing. `None` while the owner is still at work.
pub async fn wait_turn(
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
pub async fn renew(pool: &PgPool, id: JobId, owner: Uuid, ttl: Duration) -> Result<bool, DbError> {
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
pub async fn disown(pool: &PgPool, id: JobId, owner: Uuid) -> Result<(), DbError> {
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

/// Stores a job's result; from then on the job is finished.
pub async fn finish(executor: impl PgExecutor<'_>, result: &JobResult) -> Result<(), DbError> {
    let status = if result.succeeded() {
        "succeeded"
    } else {
        "failed"
    };
    let json = serde_json::to_value(result).map_err(|e| DbError::Corrupt(e.to_string()))?;
    sqlx::query(
        "UPDATE memoji_jobs SET status = $2, result = $3, updated_at = now(), owner_expires_at = NULL
          WHERE job_id = $1",
    )
    .bind(result.job_id.0)
    .bind(status)
    .bind(json)
    .execute(executor)
    .await?;
    Ok(())
}

fn parse(id: JobId, result: serde_json::Value) -> Result<JobResult, DbError> {
    serde_json::from_value(result).map_err(|e| DbError::Corrupt(format!("job {id}: {e}")))
}

pub(super) fn millis(ttl: Duration) -> f64 {
    ttl.as_secs_f64() * 1000.0
}
