//! `memoji_bypass_images`: the images `bypass` jobs generated, never cache entries. Each is
//! stored under a path of its own and deleted by the cleanup after
//! `cache.bypass_retention_hours`.

use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::DbError;
use crate::job::{CacheKey, JobId};

/// Records a bypass job's image.
pub async fn record(
    executor: impl PgExecutor<'_>,
    job_id: JobId,
    key: &CacheKey,
    storage_path: &str,
    image_bytes: i64,
) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO memoji_bypass_images (job_id, prompt_hash, storage_path, image_bytes)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (job_id) DO NOTHING",
    )
    .bind(job_id.0)
    .bind(key.as_str())
    .bind(storage_path)
    .bind(image_bytes)
    .execute(executor)
    .await?;
    Ok(())
}

/// A bypass image past its retention.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Expired {
    /// The bypass job's id.
    pub job_id: Uuid,
    /// Where its image is stored.
    pub storage_path: String,
    /// The image's size, as recorded.
    pub image_bytes: Option<i64>,
}

/// Up to `limit` bypass images older than `hours`, oldest first.
pub(crate) async fn next_expired(
    pool: &PgPool,
    hours: u32,
    limit: i64,
) -> Result<Vec<Expired>, DbError> {
    Ok(sqlx::query_as(
        "SELECT job_id, storage_path, image_bytes FROM memoji_bypass_images
          WHERE created_at < now() - make_interval(hours => $1)
          ORDER BY created_at LIMIT $2",
    )
    .bind(i32::try_from(hours).unwrap_or(i32::MAX))
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Forgets the bypass images of `job_ids` (their objects are deleted after).
pub async fn forget(pool: &PgPool, job_ids: &[Uuid]) -> Result<u64, DbError> {
    let done = sqlx::query("DELETE FROM memoji_bypass_images WHERE job_id = ANY($1)")
        .bind(job_ids)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// How many bypass images are older than `hours` (a dry run's count).
pub(crate) async fn count_expired(pool: &PgPool, hours: u32) -> Result<u64, DbError> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM memoji_bypass_images
          WHERE created_at < now() - make_interval(hours => $1)",
    )
    .bind(i32::try_from(hours).unwrap_or(i32::MAX))
    .fetch_one(pool)
    .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}
