//! `memoji_cache`: lookups that count a use, and recording a new image.
//!
//! Rows imported from the JavaScript system may have NULLs where the worker always writes values,
//! so reads COALESCE. Archived rows serve hits like any other (CONTRACT.md §4).

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgExecutor, PgPool};

use super::DbError;
use crate::job::{CacheKey, Freshness, GeneratorKind};

/// A cached image, as a hit serves it.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// The image's public URL.
    pub image_url: String,
    /// Where the image is stored; `None` for rows imported without one.
    pub storage_path: Option<String>,
    /// What generating the image cost, in US dollars (what a hit saves).
    pub generation_cost: f64,
    /// When the entry's image was last written.
    pub updated_at: DateTime<Utc>,
    /// The model that made the image; `None` for rows imported without one.
    pub model: Option<String>,
    /// Warming made the entry and no live job has used it yet (`warmed_at` set, no use
    /// counted): an arm with `warming = false` does not serve it (`job::policy`).
    pub(crate) warmed_unused: bool,
}

/// A hit together with the user's credit use this month, read in the same round trip.
#[derive(Debug, Clone, PartialEq)]
pub struct Hit {
    /// The cached image.
    pub entry: Entry,
    /// Credits used this period, where the user has a balance row.
    pub(crate) credits_used: Option<i64>,
}

/// The columns of a cache row that a hit serves, as [`EntryRow`] reads them, for `concat!` into
/// the statements that serve hits. Rows imported from the JavaScript system may have NULLs; these
/// COALESCE them.
macro_rules! entry_columns {
    () => {
        "image_url, storage_path, COALESCE(generation_cost, 0)::float8 AS cost, \
         COALESCE(updated_at, created_at, now()) AS updated_at, model, \
         (warmed_at IS NOT NULL AND COALESCE(usage_count, 0) = 0) AS warmed_unused"
    };
}
pub(super) use entry_columns;

/// A row of [`entry_columns`], with the user's credit use read beside it.
#[derive(sqlx::FromRow)]
pub(super) struct EntryRow {
    pub(super) image_url: String,
    pub(super) storage_path: Option<String>,
    pub(super) cost: f64,
    pub(super) updated_at: DateTime<Utc>,
    pub(super) model: Option<String>,
    pub(super) warmed_unused: bool,
    pub(super) used: Option<i32>,
}

impl From<EntryRow> for Hit {
    fn from(row: EntryRow) -> Hit {
        Hit {
            entry: Entry {
                image_url: row.image_url,
                storage_path: row.storage_path,
                generation_cost: row.cost,
                updated_at: row.updated_at,
                model: row.model,
                warmed_unused: row.warmed_unused,
            },
            credits_used: row.used.map(i64::from),
        }
    }
}

/// Serves a hit: counts the use and returns the entry, or `None` on a miss — or when the entry
/// is not `fresh` enough for the job (too old, or warmed and unused where that is not served;
/// then no use is counted). One statement, which also reads the user's credit use for
/// `credits_remaining`. (Hits of new jobs are served in batches by [`super::hits`], on the same
/// columns, which check the same [`Freshness`] in Rust.)
pub async fn hit(
    executor: impl PgExecutor<'_>,
    key: &CacheKey,
    user_id: &str,
    period: NaiveDate,
    fresh: &Freshness,
) -> Result<Option<Hit>, DbError> {
    let row: Option<EntryRow> = sqlx::query_as(concat!(
        "WITH hit AS (
             UPDATE memoji_cache
                SET usage_count = COALESCE(usage_count, 0) + 1, last_used_at = now()
              WHERE prompt_hash = $1
                AND ($4::timestamptz IS NULL OR COALESCE(updated_at, created_at, now()) >= $4)
                AND ($5::boolean OR warmed_at IS NULL OR COALESCE(usage_count, 0) > 0)
          RETURNING ",
        entry_columns!(),
        ")
         SELECT hit.*, balance.used
           FROM hit
           LEFT JOIN memoji_credit_balances balance
             ON balance.user_id = $2 AND balance.period = $3"
    ))
    .bind(key.as_str())
    .bind(user_id)
    .bind(period)
    .bind(fresh.not_before)
    .bind(fresh.serve_unused_warmed)
    .fetch_optional(executor)
    .await?;
    Ok(row.map(Hit::from))
}

/// A freshly generated image to record.
#[derive(Debug, Clone)]
pub struct NewEntry<'a> {
    /// The job's cache key.
    pub key: &'a CacheKey,
    /// The stored image's public URL.
    pub image_url: &'a str,
    /// Where the image is stored.
    pub storage_path: &'a str,
    /// The canonical configuration the key was computed from.
    pub prompt_config: serde_json::Value,
    /// What the generation cost, in US dollars.
    pub generation_cost: f64,
    /// The stored image's size, in bytes.
    pub image_bytes: i64,
    /// What made the image (OpenAI or the placeholder).
    pub generator: GeneratorKind,
    /// The model that made the image.
    pub model: &'a str,
    /// OpenAI's token usage, as reported.
    pub usage: Option<serde_json::Value>,
}

/// Records a generated image. A `force_refresh` moves an existing row to its new image (a path
/// of its own, CONTRACT.md §5) and keeps its history (use count, creation time, archived flag).
pub async fn record(executor: impl PgExecutor<'_>, entry: &NewEntry<'_>) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO memoji_cache
             (prompt_hash, image_url, prompt_config, generation_cost, usage_count, storage_path,
              image_bytes, generator, model, usage)
         VALUES ($1, $2, $3, $4, 1, $5, $6, $7, $8, $9)
         ON CONFLICT (prompt_hash) DO UPDATE SET
             image_url = EXCLUDED.image_url,
             prompt_config = EXCLUDED.prompt_config,
             generation_cost = EXCLUDED.generation_cost,
             usage_count = COALESCE(memoji_cache.usage_count, 0) + 1,
             storage_path = EXCLUDED.storage_path,
             image_bytes = EXCLUDED.image_bytes,
             generator = EXCLUDED.generator,
             model = EXCLUDED.model,
             usage = EXCLUDED.usage,
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
    .bind(entry.model)
    .bind(&entry.usage)
    .execute(executor)
    .await?;
    Ok(())
}

/// The image a key's entry serves now, without counting a use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CurrentImage {
    /// The image's public URL.
    pub image_url: String,
    /// `None` for a row imported without one.
    pub storage_path: Option<String>,
}

/// The key's current image; `None` on a miss.
pub(crate) async fn current_image(
    pool: &PgPool,
    key: &CacheKey,
) -> Result<Option<CurrentImage>, DbError> {
    let row: Option<(String, Option<String>)> =
        sqlx::query_as("SELECT image_url, storage_path FROM memoji_cache WHERE prompt_hash = $1")
            .bind(key.as_str())
            .fetch_optional(pool)
            .await?;
    Ok(row.map(|(image_url, storage_path)| CurrentImage {
        image_url,
        storage_path,
    }))
}

/// Whether a row of the key — its entry or one of its variants (`db::variants`) — points at the
/// stored object `path`. A path is built from its key, so no other key's row can (and the lookup
/// stays on the key's index).
pub(crate) async fn path_in_use(
    pool: &PgPool,
    key: &CacheKey,
    path: &str,
) -> Result<bool, DbError> {
    let (in_use,): (bool,) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM memoji_cache WHERE prompt_hash = $1 AND storage_path = $2)
             OR EXISTS (SELECT 1 FROM memoji_cache_variants
                         WHERE prompt_hash = $1 AND storage_path = $2)",
    )
    .bind(key.as_str())
    .bind(path)
    .fetch_one(pool)
    .await?;
    Ok(in_use)
}

/// When the key's entry was last (re)generated, without counting a use; `None` on a miss.
pub(crate) async fn recorded_at(
    pool: &PgPool,
    key: &CacheKey,
) -> Result<Option<DateTime<Utc>>, DbError> {
    let row: Option<(DateTime<Utc>,)> = sqlx::query_as(
        "SELECT COALESCE(updated_at, created_at, now()) FROM memoji_cache WHERE prompt_hash = $1",
    )
    .bind(key.as_str())
    .fetch_optional(pool)
    .await?;
    Ok(row.map(|(at,)| at))
}
