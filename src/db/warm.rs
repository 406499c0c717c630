//! Cache warming's tables (`migrations/0010_warming.sql`): entries warming made, and the request
//! history the popularity model reads.
//!
//! A warmed entry is written with `ON CONFLICT DO NOTHING`: if a live job recorded the key while
//! warming generated it (possible only after a lease expired), the job's row stands and warming's
//! copy is dropped, never recorded twice.

use std::collections::HashSet;

use chrono::NaiveDate;
use sqlx::{PgExecutor, PgPool};

use super::DbError;
use super::cache::NewEntry;

/// The keys among `keys` that have a cache entry now.
pub(crate) async fn cached_among(
    pool: &PgPool,
    keys: &[String],
) -> Result<HashSet<String>, DbError> {
    let rows: Vec<(String,)> =
        sqlx::query_as("SELECT prompt_hash FROM memoji_cache WHERE prompt_hash = ANY($1)")
            .bind(keys)
            .fetch_all(pool)
            .await?;
    Ok(rows.into_iter().map(|(key,)| key).collect())
}

/// Records an image warming made, with no use counted (nobody asked for it yet). `false` when
/// the key already had an entry: the warmed copy is not recorded.
pub(crate) async fn record_warmed(
    executor: impl PgExecutor<'_>,
    entry: &NewEntry<'_>,
) -> Result<bool, DbError> {
    let inserted = sqlx::query(
        "INSERT INTO memoji_cache
             (prompt_hash, image_url, prompt_config, generation_cost, usage_count, storage_path,
              image_bytes, generator, model, usage, warmed_at, last_used_at)
         VALUES ($1, $2, $3, $4, 0, $5, $6, $7, $8, $9, now(), NULL)
         ON CONFLICT (prompt_hash) DO NOTHING",
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
    Ok(inserted.rows_affected() == 1)
}

/// Generation leases held now by anyone but `ours`: live jobs generating (or waiting for a turn
/// to generate) a key.
pub(crate) async fn live_leases(pool: &PgPool, ours: &[uuid::Uuid]) -> Result<i64, DbError> {
    let (n,): (i64,) = sqlx::query_as(
        "SELECT count(*) FROM memoji_generation_leases
          WHERE expires_at > now() AND NOT (holder = ANY($1))",
    )
    .bind(ours)
    .fetch_one(pool)
    .await?;
    Ok(n)
}

/// What warming has been worth so far: the entries it made that were asked for later (each
/// spared its first asker the wait, and was paid ahead of demand), with their cost, and the
/// warmed entries nobody has asked for yet.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct Worth {
    /// Warmed entries in the cache now.
    pub(crate) warmed_entries: i64,
    /// Of those, the ones asked for at least once.
    pub(crate) warmed_used: i64,
    /// What those asked-for entries cost to generate, in US dollars.
    pub saved_usd: f64,
}

/// What warming has been worth so far, over every warmed entry in the cache now.
pub async fn worth(pool: &PgPool) -> Result<Worth, DbError> {
    let (warmed_entries, warmed_used, saved_usd): (i64, i64, f64) = sqlx::query_as(
        "SELECT count(*),
                count(*) FILTER (WHERE usage_count > 0),
                COALESCE(sum(generation_cost) FILTER (WHERE usage_count > 0), 0)::float8
           FROM memoji_cache WHERE warmed_at IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(Worth {
        warmed_entries,
        warmed_used,
        saved_usd,
    })
}

/// One key's requests on one day, as the history keeps them.
#[derive(Debug, Clone, PartialEq)]
pub struct Asked {
    /// The day (UTC) of the requests.
    pub day: NaiveDate,
    /// The cache key (prompt hash).
    pub key: String,
    /// The key's canonical configuration.
    pub config: serde_json::Value,
    /// Requests for the key on that day.
    pub requests: i32,
}

/// Adds request counts to the history: one statement for any number of keys.
pub(crate) async fn add_history(pool: &PgPool, rows: &[Asked]) -> Result<(), DbError> {
    if rows.is_empty() {
        return Ok(());
    }
    let days: Vec<NaiveDate> = rows.iter().map(|r| r.day).collect();
    let keys: Vec<&str> = rows.iter().map(|r| r.key.as_str()).collect();
    let configs: Vec<&serde_json::Value> = rows.iter().map(|r| &r.config).collect();
    let counts: Vec<i32> = rows.iter().map(|r| r.requests).collect();
    sqlx::query(
        "INSERT INTO memoji_request_history AS h (day, prompt_hash, prompt_config, requests)
         SELECT * FROM unnest($1::date[], $2::text[], $3::jsonb[], $4::int[])
         ON CONFLICT (day, prompt_hash) DO UPDATE SET requests = h.requests + EXCLUDED.requests",
    )
    .bind(days)
    .bind(keys)
    .bind(configs)
    .bind(counts)
    .execute(pool)
    .await?;
    Ok(())
}

/// A key the history has seen, with its configuration and its requests in the window.
#[derive(Debug, Clone, PartialEq)]
pub struct Popular {
    /// The cache key (prompt hash).
    pub key: String,
    /// The key's canonical configuration.
    pub config: serde_json::Value,
    /// Its requests in the window.
    pub requests: i64,
}

/// The `top` keys most asked for since `since` that have no cache entry now.
pub(crate) async fn most_asked_uncached(
    pool: &PgPool,
    since: NaiveDate,
    top: i64,
) -> Result<Vec<Popular>, DbError> {
    let rows: Vec<(String, serde_json::Value, i64)> = sqlx::query_as(
        "SELECT h.prompt_hash, (array_agg(h.prompt_config ORDER BY h.day DESC))[1], sum(h.requests)::int8 AS n
           FROM memoji_request_history h
          WHERE h.day >= $1
            AND NOT EXISTS (SELECT 1 FROM memoji_cache c WHERE c.prompt_hash = h.prompt_hash)
          GROUP BY h.prompt_hash
          ORDER BY n DESC, h.prompt_hash
          LIMIT $2",
    )
    .bind(since)
    .bind(top)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(key, config, requests)| Popular {
            key,
            config,
            requests,
        })
        .collect())
}

/// Every history row since `since`, for the popularity model.
pub(crate) async fn history_since(pool: &PgPool, since: NaiveDate) -> Result<Vec<Asked>, DbError> {
    let rows: Vec<(NaiveDate, String, serde_json::Value, i32)> = sqlx::query_as(
        "SELECT day, prompt_hash, prompt_config, requests FROM memoji_request_history
          WHERE day >= $1",
    )
    .bind(since)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(day, key, config, requests)| Asked {
            day,
            key,
            config,
            requests,
        })
        .collect())
}

/// Deletes history rows older than `before` (with `dry_run`, only counts them); returns how many.
pub(crate) async fn prune_history(
    pool: &PgPool,
    before: NaiveDate,
    dry_run: bool,
) -> Result<u64, DbError> {
    if dry_run {
        let (n,): (i64,) =
            sqlx::query_as("SELECT count(*) FROM memoji_request_history WHERE day < $1")
                .bind(before)
                .fetch_one(pool)
                .await?;
        return Ok(u64::try_from(n).unwrap_or(0));
    }
    let done = sqlx::query("DELETE FROM memoji_request_history WHERE day < $1")
        .bind(before)
        .execute(pool)
        .await?;
    Ok(done.rows_affected())
}

/// The scheduled warming's advisory lock key (the ASCII bytes of "MEMOJIWM"): one replica warms.
const LOCK_KEY: i64 = 0x4d45_4d4f_4a49_574d;

/// Held while the scheduled warming runs (`db::advisory`).
pub type WarmLock = super::advisory::AdvisoryLock;

/// Takes the warming lock if no other process holds it; `None` if one does.
pub(crate) async fn try_lock(pool: &PgPool) -> Result<Option<WarmLock>, DbError> {
    super::advisory::try_lock(pool, LOCK_KEY).await
}

/// Dollars warming spent today (UTC), from the rows it recorded.
pub(crate) async fn spent_today(pool: &PgPool) -> Result<f64, DbError> {
    let (spent,): (f64,) = sqlx::query_as(
        "SELECT COALESCE(sum(generation_cost), 0)::float8 FROM memoji_cache
          WHERE warmed_at >= date_trunc('day', now() AT TIME ZONE 'UTC') AT TIME ZONE 'UTC'",
    )
    .fetch_one(pool)
    .await?;
    Ok(spent)
}

/// An entry a model refresh may regenerate.
#[derive(Debug, Clone, PartialEq)]
pub struct Refreshable {
    /// The cache key (prompt hash).
    pub key: String,
    /// The entry's canonical configuration.
    pub config: serde_json::Value,
    /// The image the entry serves now.
    pub image_url: String,
    /// Where that image is stored; `None` for an entry imported without one.
    pub storage_path: Option<String>,
    /// How often the entry has been used.
    pub usage_count: i64,
}

/// The `top` most used entries whose image `model` made.
pub(crate) async fn most_used_by_model(
    pool: &PgPool,
    model: &str,
    top: i64,
) -> Result<Vec<Refreshable>, DbError> {
    let rows: Vec<(String, serde_json::Value, String, Option<String>, i64)> = sqlx::query_as(
        "SELECT prompt_hash, prompt_config, image_url, storage_path, COALESCE(usage_count, 0)::int8
           FROM memoji_cache WHERE model = $1 AND prompt_config IS NOT NULL
          ORDER BY usage_count DESC NULLS LAST, prompt_hash LIMIT $2",
    )
    .bind(model)
    .bind(top)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(key, config, image_url, storage_path, usage_count)| Refreshable {
                key,
                config,
                image_url,
                storage_path,
                usage_count,
            },
        )
        .collect())
}

/// Moves an entry to its regenerated image, only if it still serves `old_url` (a job's
/// `force_refresh` meanwhile wins). Its history (uses, creation, archived) stays.
pub(crate) async fn move_to_refreshed(
    executor: impl PgExecutor<'_>,
    entry: &NewEntry<'_>,
    old_url: &str,
) -> Result<bool, DbError> {
    let moved = sqlx::query(
        "UPDATE memoji_cache SET image_url = $2, storage_path = $3, generation_cost = $4,
                image_bytes = $5, model = $6, usage = $7, updated_at = now()
          WHERE prompt_hash = $1 AND image_url = $8",
    )
    .bind(entry.key.as_str())
    .bind(entry.image_url)
    .bind(entry.storage_path)
    .bind(entry.generation_cost)
    .bind(entry.image_bytes)
    .bind(entry.model)
    .bind(&entry.usage)
    .bind(old_url)
    .execute(executor)
    .await?;
    Ok(moved.rows_affected() == 1)
}

/// One warming run, as the dashboard's history shows it (`memoji_warm_runs`).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct Run {
    /// `from`, `history`, `predict`, `refresh` or `schedule:history` / `schedule:predict`.
    pub source: String,
    /// `live` or `batch`.
    pub mode: String,
    /// Images generated and recorded.
    pub generated: i64,
    /// Keys left out because another warming's open batch is to answer them.
    pub skipped: i64,
    /// Lines that failed.
    pub failed: i64,
    /// Generated, but the key was recorded by someone else first (paid, dropped).
    pub wasted: i64,
    /// Dollars the run paid, wasted copies included.
    pub spent_usd: f64,
    /// Dollars paid for the wasted copies.
    pub wasted_usd: f64,
    /// The OpenAI Batch API batch, for a batch run; `None` for a live run.
    pub(crate) batch_id: Option<uuid::Uuid>,
    /// When the run started.
    pub started_at: chrono::DateTime<chrono::Utc>,
    /// When the run finished.
    pub finished_at: chrono::DateTime<chrono::Utc>,
}

/// Records a finished run.
pub(crate) async fn record_run(executor: impl PgExecutor<'_>, run: &Run) -> Result<(), DbError> {
    sqlx::query(
        "INSERT INTO memoji_warm_runs
             (source, mode, generated, skipped, failed, wasted, spent_usd, wasted_usd, batch_id,
              started_at, finished_at)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11)",
    )
    .bind(&run.source)
    .bind(&run.mode)
    .bind(i32::try_from(run.generated).unwrap_or(i32::MAX))
    .bind(i32::try_from(run.skipped).unwrap_or(i32::MAX))
    .bind(i32::try_from(run.failed).unwrap_or(i32::MAX))
    .bind(i32::try_from(run.wasted).unwrap_or(i32::MAX))
    .bind(run.spent_usd)
    .bind(run.wasted_usd)
    .bind(run.batch_id)
    .bind(run.started_at)
    .bind(run.finished_at)
    .execute(executor)
    .await?;
    Ok(())
}

type RunRow = (
    String,
    String,
    i32,
    i32,
    i32,
    i32,
    f64,
    f64,
    Option<uuid::Uuid>,
    chrono::DateTime<chrono::Utc>,
    chrono::DateTime<chrono::Utc>,
);

/// The `limit` most recent runs, newest first.
pub(crate) async fn recent_runs(pool: &PgPool, limit: i64) -> Result<Vec<Run>, DbError> {
    let rows: Vec<RunRow> = sqlx::query_as(
        "SELECT source, mode, generated, skipped, failed, wasted, spent_usd, wasted_usd, batch_id,
                started_at, finished_at
           FROM memoji_warm_runs ORDER BY finished_at DESC, id DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(
                source,
                mode,
                generated,
                skipped,
                failed,
                wasted,
                spent_usd,
                wasted_usd,
                batch_id,
                started_at,
                finished_at,
            )| Run {
                source,
                mode,
                generated: i64::from(generated),
                skipped: i64::from(skipped),
                failed: i64::from(failed),
                wasted: i64::from(wasted),
                spent_usd,
                wasted_usd,
                batch_id,
                started_at,
                finished_at,
            },
        )
        .collect())
}

/// Warming's figures: of the runs that finished in `[from, to)`, and of every warmed entry now.
#[derive(Debug, Clone, Copy, Default, PartialEq, serde::Serialize)]
pub struct Figures {
    /// Runs finished in the period.
    pub runs: i64,
    /// Images warming generated and recorded in the period.
    pub generated: i64,
    /// Lines that failed in the period.
    pub failed: i64,
    /// Generated but dropped (a live job recorded the key first).
    pub wasted: i64,
    /// Dollars warming paid in the period (wasted copies included).
    pub spent_usd: f64,
    /// Dollars paid in the period for wasted copies.
    pub wasted_usd: f64,
    /// Now: entries warming made that are in the cache.
    pub(crate) warmed_entries: i64,
    /// Now: of those, the ones asked for at least once.
    pub(crate) warmed_used: i64,
    /// Now: the hits those entries served (their uses; a warmed entry starts at 0).
    pub(crate) warmed_hits: i64,
    /// Now: the generation cost of the warmed entries asked for (what warming spared askers).
    pub saved_usd: f64,
}

/// Warming's figures (see [`Figures`]): a small table and the warmed entries' partial index,
/// never a scan of the cache.
pub async fn figures(
    pool: &PgPool,
    from: chrono::DateTime<chrono::Utc>,
    to: chrono::DateTime<chrono::Utc>,
) -> Result<Figures, DbError> {
    let (runs, generated, failed, wasted, spent_usd, wasted_usd): (i64, i64, i64, i64, f64, f64) =
        sqlx::query_as(
            "SELECT count(*), COALESCE(sum(generated), 0)::int8, COALESCE(sum(failed), 0)::int8,
                    COALESCE(sum(wasted), 0)::int8, COALESCE(sum(spent_usd), 0)::float8,
                    COALESCE(sum(wasted_usd), 0)::float8
               FROM memoji_warm_runs WHERE finished_at >= $1 AND finished_at < $2",
        )
        .bind(from)
        .bind(to)
        .fetch_one(pool)
        .await?;
    let (warmed_hits,): (i64,) = sqlx::query_as(
        "SELECT COALESCE(sum(usage_count), 0)::int8 FROM memoji_cache WHERE warmed_at IS NOT NULL",
    )
    .fetch_one(pool)
    .await?;
    let worth = worth(pool).await?;
    Ok(Figures {
        runs,
        generated,
        failed,
        wasted,
        spent_usd,
        wasted_usd,
        warmed_entries: worth.warmed_entries,
        warmed_used: worth.warmed_used,
        warmed_hits,
        saved_usd: worth.saved_usd,
    })
}
