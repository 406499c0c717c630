//! A key's images, by variant (`cache.variants` > 1): variant 0 is the key's `memoji_cache` row,
//! served and recorded by [`super::cache`] exactly as before; variants 1.. are rows of
//! `memoji_cache_variants`, which the JavaScript system never reads. Each function here takes a
//! variant and goes to the right table, so the journey reads the same for every variant.
//!
//! Uses are counted per variant (`usage_count`, `last_used_at` on the variant's own row).

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgExecutor, PgPool};

use super::DbError;
use super::cache::{self, CurrentImage, EntryRow, Hit, NewEntry, entry_columns};
use crate::job::{CacheKey, Freshness, Variant};

/// Serves a hit on the key's `variant`: counts the use on that variant's row and returns it, or
/// `None` if that variant does not exist (yet) or is not `fresh` enough for the job (a refresh, a
/// maximum age; warming makes variant 0 only, so the warmed-entry rule is the seed's row's). One
/// statement, with the user's credit use.
pub async fn hit(
    executor: impl PgExecutor<'_>,
    key: &CacheKey,
    variant: Variant,
    user_id: &str,
    period: NaiveDate,
    fresh: &Freshness,
) -> Result<Option<Hit>, DbError> {
    if variant.is_seed() {
        return cache::hit(executor, key, user_id, period, fresh).await;
    }
    let row: Option<EntryRow> = sqlx::query_as(concat!(
        "WITH hit AS (
             UPDATE memoji_cache_variants
                SET usage_count = usage_count + 1, last_used_at = now()
              WHERE prompt_hash = $1 AND variant = $2
                AND ($5::timestamptz IS NULL OR updated_at >= $5)
          RETURNING ",
        entry_columns!(),
        ")
         SELECT hit.*, balance.used
           FROM hit
           LEFT JOIN memoji_credit_balances balance
             ON balance.user_id = $3 AND balance.period = $4"
    ))
    .bind(key.as_str())
    .bind(number(variant))
    .bind(user_id)
    .bind(period)
    .bind(fresh.not_before)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(Hit::from))
}

/// Records a generated image as the key's `variant` (a first image, or a `force_refresh`'s
/// replacement, which keeps the row's use count and creation time).
pub async fn record(
    executor: impl PgExecutor<'_>,
    variant: Variant,
    entry: &NewEntry<'_>,
) -> Result<(), DbError> {
    if variant.is_seed() {
        return cache::record(executor, entry).await;
    }
    sqlx::query(
        "INSERT INTO memoji_cache_variants
             (prompt_hash, variant, image_url, storage_path, image_bytes, generation_cost,
              generator, model, usage)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)
         ON CONFLICT (prompt_hash, variant) DO UPDATE SET
             image_url = EXCLUDED.image_url,
             storage_path = EXCLUDED.storage_path,
             image_bytes = EXCLUDED.image_bytes,
             generation_cost = EXCLUDED.generation_cost,
             generator = EXCLUDED.generator,
             model = EXCLUDED.model,
             usage = EXCLUDED.usage,
             usage_count = memoji_cache_variants.usage_count + 1,
             updated_at = now(),
             last_used_at = now()",
    )
    .bind(entry.key.as_str())
    .bind(number(variant))
    .bind(entry.image_url)
    .bind(entry.storage_path)
    .bind(entry.image_bytes)
    .bind(entry.generation_cost)
    .bind(entry.generator.as_str())
    .bind(entry.model)
    .bind(&entry.usage)
    .execute(executor)
    .await?;
    Ok(())
}

/// The image the key's `variant` serves now, without counting a use; `None` if it does not exist.
pub(crate) async fn current_image(
    pool: &PgPool,
    key: &CacheKey,
    variant: Variant,
) -> Result<Option<CurrentImage>, DbError> {
    if variant.is_seed() {
        return cache::current_image(pool, key).await;
    }
    let row: Option<(String, String)> = sqlx::query_as(
        "SELECT image_url, storage_path FROM memoji_cache_variants
          WHERE prompt_hash = $1 AND variant = $2",
    )
    .bind(key.as_str())
    .bind(number(variant))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(image_url, storage_path)| CurrentImage {
        image_url,
        storage_path: Some(storage_path),
    }))
}

/// When the key's `variant` was last (re)generated, without counting a use; `None` if it does not
/// exist.
pub(crate) async fn recorded_at(
    pool: &PgPool,
    key: &CacheKey,
    variant: Variant,
) -> Result<Option<DateTime<Utc>>, DbError> {
    if variant.is_seed() {
        return cache::recorded_at(pool, key).await;
    }
    let row: Option<(DateTime<Utc>,)> = sqlx::query_as(
        "SELECT updated_at FROM memoji_cache_variants WHERE prompt_hash = $1 AND variant = $2",
    )
    .bind(key.as_str())
    .bind(number(variant))
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(at,)| at))
}

fn number(variant: Variant) -> i32 {
    i32::try_from(variant.number()).unwrap_or(i32::MAX)
}
