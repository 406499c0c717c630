//! `memoji_cache`: lookups that count a use, and recording a new image.
//!
//! Rows imported from the JavaScript system may have NULLs where the worker always writes values,
//! so reads COALESCE. Archived rows serve hits like any other (CONTRACT.md §4).

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgExecutor, PgPool};

use super::DbError;
use crate::job::{CacheKey, GeneratorKind};

/// A cached image, as a hit serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub image_url: String,
    pub storage_path: Option<String>,
    pub generation_cost: f64,
    pub updated_at: DateTime<Utc>,
}

/// A hit together with the user's credit use this month, read in the same round trip.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    pub entry: Entry,
    /// Credits used this period, where the user has a balance row.
    pub credits_used: Option<i64>,
}

#[derive(sqlx::FromRow)]
struct HitRow {
    image_url: String,
    storage_path: Option<String>,
    cost: f64,
    updated_at: DateTime<Utc>,
    used: Option<i32>,
}

/// Serves a hit: counts the use and returns the entry, or `None` on a miss. One statement, which
/// also reads the user's credit use for `credits_remaining`.
pub async fn hit(
    executor: impl PgExecutor<'_>,
    key: &CacheKey,
    user_id: &str,
    period: NaiveDate,
) -> Result<Option<Hit>, DbError> {
    let row: Option<HitRow> = sqlx::query_as(
        "WITH hit AS (
             UPDATE memoji_cache
                SET usage_count = COALESCE(usage_count, 0) + 1, last_used_at = now()
              WHERE prompt_hash = $1
          RETURNING image_url, storage_path, COALESCE(generation_cost, 0)::float8 AS cost,
                    COALESCE(updated_at, created_at, now()) AS updated_at)
         SELECT hit.image_url, hit.storage_path, hit.cost, hit.updated_at, balance.used
           FROM hit
           LEFT JOIN memoji_credit_balances balance
             ON balance.user_id = $2 AND balance.period = $3",
    )
    .bind(key.as_str())
    .bind(user_id)
    .bind(period)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(|row| Hit {
        entry: Entry {
            image_url: row.image_url,
            storage_path: row.storage_path,
            generation_cost: row.cost,
            updated_at: row.updated_at,
        },
        credits_used: row.used.map(i64::from),
    }))
}

/// A freshly generated image to record.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    pub key: &'a CacheKey,
    pub image_url: &'a str,
    pub storage_path: &'a str,
    pub prompt_config: serde_json::Value,
    pub generation_cost: f64,
    pub image_bytes: i64,
    pub generator: GeneratorKind,
}

/// Records a generated image. A `force_refresh` replaces the image of an existing row and keeps
/// its history (use count, creation time, archived flag).
pub async fn record(executor: impl PgExecutor<'_>, entry: &NewEntry<'_>) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO memoji_cache
             (prompt_hash, image_url, prompt_config, generation_cost, usage_count, storage_path,
              image_bytes, generator)
         VALUES ($1, $2, $3, $4, 1, $5, $6, $7)
         ON CONFLICT (prompt_hash) DO UPDATE SET
             image_url = EXCLUDED.image_url,
             prompt_config = EXCLUDED.prompt_config,
             generation_cost = EXCLUDED.generation_cost,
             usage_count = COALESCE(memoji_cache.usage_count, 0) + 1,
             storage_path = EXCLUDED.storage_path,
             image_bytes = EXCLUDED.image_bytes,
             generator = EXCLUDED.generator,
             updated_at = now(),
             last_used_at = now()",
    )
    .bind(entry.key.as_str())
    .bind(entry.image_url)
    .bind(&entry.prompt_config)
    .bind(entry.generation_cost)
    .bind(entry.storage_path)
    .bind(entry.image_bytes)
    .bind(entry.generator.as_str())
    .execute(executor)
    .await?;
    Ok(())
}

/// When the key's entry was last (re)generated, without counting a use; `None` on a miss.
pub async fn recorded_at(pool: &PgPool, key: &CacheKey) -> Result<Option<DateTime<Utc>>, DbError> {
    let row: Option<(DateTime<Utc>,)> = sqlx::query_as(
        "SELECT COALESCE(updated_at, created_at, now()) FROM memoji_cache WHERE prompt_hash = $1",
    )
    .bind(key.as_str())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(at,)| at))
}
