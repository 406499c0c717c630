//! `memoji_jobs`: the state of every job, so a job id seen again is answered, not redone.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgExecutor;

use super::{DbError, cache};
use crate::job::{CacheKey, JobId, JobResult};

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
    seen(id, user_id, &owner, &status, result, deliveries)
}

/// What a job's row says about this delivery.
fn seen(
    id: JobId,
    user_id: &str,
    owner: &str,
    status: &str,
    result: Option<serde_json::Value>,
    deliveries: i32,
) -> Result<Seen, DbError> {
    if owner != user_id {
        return Ok(Seen::Conflict);
    }
    Ok(match (status, result) {
        ("processing", _) | (_, None) if deliveries == 1 => Seen::New,
        ("processing", _) | (_, None) => Seen::Unfinished { deliveries },
        (_, Some(result)) => Seen::Finished(Box::new(
            serde_json::from_value(result)
                .map_err(|e| DbError::Corrupt(format!("job {id}: {e}")))?,
        )),
    })
}

#[derive(sqlx::FromRow)]
struct ArrivalRow {
    owner: String,
    status: String,
    result: Option<serde_json::Value>,
    deliveries: i32,
    image_url: Option<String>,
    storage_path: Option<String>,
    cost: Option<f64>,
    updated_at: Option<DateTime<Utc>>,
    used: Option<i32>,
}

/// [`arrive`] and, for a job not finished before and owned by `user_id`, [`cache::hit`] — in one
/// statement, so a hit costs one round trip and one transaction less. With `look_up` false
/// (`force_refresh`) the cache is not touched. Same rules as the two apart: a job seen finished,
/// or another user's, counts no use.
pub async fn arrive_and_hit(
    executor: impl PgExecutor<'_>,
    id: JobId,
    user_id: &str,
    key: &CacheKey,
    period: NaiveDate,
    look_up: bool,
) -> Result<(Seen, Option<cache::Hit>), DbError> {
    let row: ArrivalRow = sqlx::query_as(
        "WITH arrived AS (
             INSERT INTO memoji_jobs (job_id, user_id, prompt_hash, status)
             VALUES ($1, $2, $3, 'processing')
             ON CONFLICT (job_id) DO UPDATE
                SET deliveries = memoji_jobs.deliveries + 1, updated_at = now()
             RETURNING user_id, status, result, deliveries),
         hit AS (
             UPDATE memoji_cache
                SET usage_count = COALESCE(usage_count, 0) + 1, last_used_at = now()
              WHERE prompt_hash = $3 AND $5
                AND EXISTS (SELECT 1 FROM arrived
                             WHERE arrived.user_id = $2
                               AND (arrived.status = 'processing' OR arrived.result IS NULL))
          RETURNING image_url, storage_path, COALESCE(generation_cost, 0)::float8 AS cost,
                    COALESCE(updated_at, created_at, now()) AS updated_at)
         SELECT arrived.user_id AS owner, arrived.status, arrived.result, arrived.deliveries,
                hit.image_url, hit.storage_path, hit.cost, hit.updated_at, balance.used
           FROM arrived
           LEFT JOIN hit ON true
           LEFT JOIN memoji_credit_balances balance
             ON hit.image_url IS NOT NULL AND balance.user_id = $2 AND balance.period = $4",
    )
    .bind(id.0)
    .bind(user_id)
    .bind(key.as_str())
    .bind(period)
    .bind(look_up)
    .fetch_one(executor)
    .await?;
    let hit = row.image_url.map(|image_url| cache::Hit {
        entry: cache::Entry {
            image_url,
            storage_path: row.storage_path,
            generation_cost: row.cost.unwrap_or(0.0),
            updated_at: row.updated_at.unwrap_or_else(Utc::now),
        },
        credits_used: row.used.map(i64::from),
    });
    let seen = seen(
        id,
        user_id,
        &row.owner,
        &row.status,
        row.result,
        row.deliveries,
    )?;
    Ok((seen, hit))
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
