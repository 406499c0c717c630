//! Generation leases: single flight for a cache key across every worker process.
//!
//! The job holding a key's lease is the only one generating it; others wait for its cache row.
//! A lease names its holder by job id, so the same job redelivered after a crash takes its own
//! lease back at once, and one that is not renewed expires so that another job can take over.

use std::time::Duration;

use sqlx::{PgExecutor, PgPool};

use super::DbError;
use super::jobs::millis;
use crate::job::{CacheKey, JobId};

/// Takes the key's lease for `holder` if it is free, expired, or already the holder's.
pub async fn claim(
    pool: &PgPool,
    key: &CacheKey,
    holder: JobId,
    ttl: Duration,
) -> Result<bool, DbError> {
    let claimed: Option<(uuid::Uuid,)> = sqlx::query_as(
        "INSERT INTO memoji_generation_leases (prompt_hash, holder, expires_at)
         VALUES ($1, $2, now() + $3 * interval '1 millisecond')
         ON CONFLICT (prompt_hash) DO UPDATE
            SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
          WHERE memoji_generation_leases.expires_at < now()
             OR memoji_generation_leases.holder = EXCLUDED.holder
         RETURNING holder",
    )
    .bind(key.as_str())
    .bind(holder.0)
    .bind(millis(ttl))
    .fetch_optional(pool)
    .await?;
    Ok(claimed.is_some())
}

/// Extends a held lease; `false` if it was lost (expired and taken by another job).
pub async fn renew(
    pool: &PgPool,
    key: &CacheKey,
    holder: JobId,
    ttl: Duration,
) -> Result<bool, DbError> {
    let renewed = sqlx::query(
        "UPDATE memoji_generation_leases SET expires_at = now() + $3 * interval '1 millisecond'
          WHERE prompt_hash = $1 AND holder = $2",
    )
    .bind(key.as_str())
    .bind(holder.0)
    .bind(millis(ttl))
    .execute(pool)
    .await?;
    Ok(renewed.rows_affected() == 1)
}

/// Gives a lease up; part of the transaction that records the outcome.
pub async fn release(
    executor: impl PgExecutor<'_>,
    key: &CacheKey,
    holder: JobId,
) -> Result<(), DbError> {
    sqlx::query("DELETE FROM memoji_generation_leases WHERE prompt_hash = $1 AND holder = $2")
        .bind(key.as_str())
        .bind(holder.0)
        .execute(executor)
        .await?;
    Ok(())
}
