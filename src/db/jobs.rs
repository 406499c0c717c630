//! `memoji_jobs`: the state of every job, so a job id seen again is answered, not redone.

use sqlx::PgExecutor;

use super::DbError;
use crate::job::{JobId, JobResult};

/// What the table knew about a job when it arrived.
#[derive(Debug, Clone, PartialEq)]
pub enum Seen {
    /// First delivery.
    New,
    /// Delivered before, never finished (a crash, a lost connection): resume the work.
    Unfinished { deliveries: i32 },
    /// Finished before: publish this result again.
    Finished(Box<JobResult>),
    /// The id belongs to another user's job.
    Conflict,
}

/// Registers a delivery of a job, telling whether it was seen before.
pub async fn arrive(
    executor: impl PgExecutor<'_>,
    id: JobId,
    user_id: &str,
    prompt_hash: &str,
) -> Result<Seen, DbError> {
    let (owner, status, result, deliveries): (String, String, Option<serde_json::Value>, i32) =
        sqlx::query_as(
            "INSERT INTO memoji_jobs (job_id, user_id, prompt_hash, status)
             VALUES ($1, $2, $3, 'processing')
             ON CONFLICT (job_id) DO UPDATE
                SET deliveries = memoji_jobs.deliveries + 1, updated_at = now()
             RETURNING user_id, status, result, deliveries",
        )
        .bind(id.0)
        .bind(user_id)
        .bind(prompt_hash)
        .fetch_one(executor)
        .await?;
    if owner != user_id {
        return Ok(Seen::Conflict);
    }
    Ok(match (status.as_str(), result) {
        ("processing", _) | (_, None) if deliveries == 1 => Seen::New,
        ("processing", _) | (_, None) => Seen::Unfinished { deliveries },
        (_, Some(result)) => Seen::Finished(Box::new(
            serde_json::from_value(result)
                .map_err(|e| DbError::Corrupt(format!("job {id}: {e}")))?,
        )),
    })
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
        "UPDATE memoji_jobs SET status = $2, result = $3, updated_at = now() WHERE job_id = $1",
    )
    .bind(result.job_id.0)
    .bind(status)
    .bind(json)
    .execute(executor)
    .await?;
    Ok(())
}
