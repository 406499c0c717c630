//! Warming batches (`migrations/0011_warm_batches.sql`): each OpenAI batch the worker submitted,
//! with the key and configuration behind each of its lines, so that a batch submitted before a
//! crash is finished after it, and a line already handled is never handled again.

use chrono::{DateTime, Utc};
use serde::Serialize;
use serde_json::Value;
use sqlx::{PgExecutor, PgPool};
use uuid::Uuid;

use super::DbError;
use crate::generate::batch::Batch;

/// The lock one process holds while it finishes batches (the ASCII bytes of "MEMOJIWB"): a batch's
/// output is handled by one process at a time.
const LOCK_KEY: i64 = 0x4d45_4d4f_4a49_5742;

/// Takes the batch lock if no other process holds it; `None` if one does.
pub(crate) async fn try_lock(
    pool: &PgPool,
) -> Result<Option<super::advisory::AdvisoryLock>, DbError> {
    super::advisory::try_lock(pool, LOCK_KEY).await
}

/// A line to submit.
#[derive(Debug, Clone)]
pub struct NewItem {
    /// The id OpenAI answers the line under.
    pub custom_id: String,
    /// The cache key (prompt hash).
    pub key: String,
    /// The canonical configuration (as `memoji_cache.prompt_config` records it).
    pub config: Value,
    /// Where the candidate came from (`line 3`, `history`, `predicted`, …).
    pub origin: String,
    /// The generation lease holder used while its image is stored and recorded.
    pub holder: Uuid,
    /// The line's batch-price estimate, in US dollars.
    pub estimate_usd: f64,
    /// For a model refresh: the image the entry served at submission.
    pub(crate) old_image_url: Option<String>,
    /// For a model refresh: where that image is stored.
    pub(crate) old_storage_path: Option<String>,
}

/// Records a batch about to be submitted, with its lines, in one transaction.
pub async fn insert(
    pool: &PgPool,
    id: Uuid,
    source: &str,
    estimated_usd: f64,
    items: &[NewItem],
) -> Result<(), DbError> {
    let mut tx = pool.begin().await?;
    sqlx::query(
        "INSERT INTO memoji_warm_batches (id, source, status, lines, estimated_usd)
         VALUES ($1, $2, 'submitting', $3, $4)",
    )
    .bind(id)
    .bind(source)
    .bind(i32::try_from(items.len()).unwrap_or(i32::MAX))
    .bind(estimated_usd)
    .execute(&mut *tx)
    .await?;
    let column = |f: fn(&NewItem) -> String| items.iter().map(f).collect::<Vec<_>>();
    let configs: Vec<&Value> = items.iter().map(|i| &i.config).collect();
    let holders: Vec<Uuid> = items.iter().map(|i| i.holder).collect();
    let estimates: Vec<f64> = items.iter().map(|i| i.estimate_usd).collect();
    let old_urls: Vec<Option<String>> = items.iter().map(|i| i.old_image_url.clone()).collect();
    let old_paths: Vec<Option<String>> = items.iter().map(|i| i.old_storage_path.clone()).collect();
    sqlx::query(
        "INSERT INTO memoji_warm_batch_items
             (batch_id, custom_id, prompt_hash, prompt_config, origin, holder, estimate_usd,
              old_image_url, old_storage_path, line_no)
         SELECT $1, * FROM unnest($2::text[], $3::text[], $4::jsonb[], $5::text[], $6::uuid[],
                                  $7::float8[], $8::text[], $9::text[], $10::int[])",
    )
    .bind(id)
    .bind(column(|i| i.custom_id.clone()))
    .bind(column(|i| i.key.clone()))
    .bind(configs)
    .bind(column(|i| i.origin.clone()))
    .bind(holders)
    .bind(estimates)
    .bind(old_urls)
    .bind(old_paths)
    .bind((1..=items.len() as i32).collect::<Vec<i32>>())
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(())
}

/// Notes the uploaded input file.
pub(crate) async fn set_input_file(pool: &PgPool, id: Uuid, file_id: &str) -> Result<(), DbError> {
    sqlx::query("UPDATE memoji_warm_batches SET input_file_id = $2 WHERE id = $1")
        .bind(id)
        .bind(file_id)
        .execute(pool)
        .await?;
    Ok(())
}

/// Notes what OpenAI says of the batch now (after its creation, and at each poll).
pub(crate) async fn set_status(pool: &PgPool, id: Uuid, batch: &Batch) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE memoji_warm_batches
            SET openai_batch_id = $2, status = $3, request_counts = $4, output_file_id = $5,
                error_file_id = $6, errors = $7, polled_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .bind(&batch.id)
    .bind(batch.status.as_str())
    .bind(serde_json::to_value(batch.request_counts).ok())
    .bind(&batch.output_file_id)
    .bind(&batch.error_file_id)
    .bind(&batch.errors)
    .execute(pool)
    .await?;
    Ok(())
}

/// A batch OpenAI never accepted (the upload or the creation was refused): closed, with why.
pub(crate) async fn set_not_submitted(pool: &PgPool, id: Uuid, why: &str) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE memoji_warm_batches SET status = 'not_submitted', errors = $2, finished_at = now()
          WHERE id = $1",
    )
    .bind(id)
    .bind(why)
    .execute(pool)
    .await?;
    Ok(())
}

/// A batch as stored.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredBatch {
    /// The batch's own id.
    pub id: Uuid,
    /// What made its list: `from`, `history`, `predict`, `refresh` or `schedule`.
    pub source: String,
    /// OpenAI's batch id; `None` until OpenAI answered.
    pub(crate) openai_batch_id: Option<String>,
    /// `submitting`, then OpenAI's status (`validating` … `completed`, `failed`, `expired`, `cancelled`); `not_submitted` when refused.
    pub status: String,
    /// Lines in the batch.
    pub lines: i32,
    /// The batch price of its lines before submission, in US dollars.
    pub estimated_usd: f64,
    /// OpenAI's request counts, as last polled.
    pub request_counts: Option<Value>,
    /// Why OpenAI failed the batch as a whole, or why it was never submitted.
    pub errors: Option<String>,
    /// When it was recorded.
    pub created_at: DateTime<Utc>,
    /// When its output was handled; `None` while open.
    pub finished_at: Option<DateTime<Utc>>,
    /// The final report (JSON), once finished.
    pub report: Option<Value>,
}

type BatchRow = (
    Uuid,
    String,
    Option<String>,
    String,
    i32,
    f64,
    Option<Value>,
    Option<String>,
    DateTime<Utc>,
    Option<DateTime<Utc>>,
    Option<Value>,
);

const BATCH_COLUMNS: &str = "id, source, openai_batch_id, status, lines, estimated_usd, \
     request_counts, errors, created_at, finished_at, report";

fn stored(row: BatchRow) -> StoredBatch {
    let (
        id,
        source,
        openai_batch_id,
        status,
        lines,
        estimated_usd,
        request_counts,
        errors,
        created_at,
        finished_at,
        report,
    ) = row;
    StoredBatch {
        id,
        source,
        openai_batch_id,
        status,
        lines,
        estimated_usd,
        request_counts,
        errors,
        created_at,
        finished_at,
        report,
    }
}

/// One batch.
pub async fn get(pool: &PgPool, id: Uuid) -> Result<Option<StoredBatch>, DbError> {
    let row: Option<BatchRow> = sqlx::query_as(&format!(
        "SELECT {BATCH_COLUMNS} FROM memoji_warm_batches WHERE id = $1"
    ))
    .bind(id)
    .fetch_optional(pool)
    .await?;
    Ok(row.map(stored))
}

/// Batches OpenAI has and whose output is not handled yet, oldest first.
pub async fn open(pool: &PgPool) -> Result<Vec<StoredBatch>, DbError> {
    let rows: Vec<BatchRow> = sqlx::query_as(&format!(
        "SELECT {BATCH_COLUMNS} FROM memoji_warm_batches
          WHERE finished_at IS NULL AND openai_batch_id IS NOT NULL ORDER BY created_at"
    ))
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(stored).collect())
}

/// The most recent batches, newest first (open ones included).
pub async fn recent(pool: &PgPool, limit: i64) -> Result<Vec<StoredBatch>, DbError> {
    let rows: Vec<BatchRow> = sqlx::query_as(&format!(
        "SELECT {BATCH_COLUMNS} FROM memoji_warm_batches ORDER BY created_at DESC LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(stored).collect())
}

/// A line of a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Item {
    /// The id OpenAI answers the line under.
    pub custom_id: String,
    /// The cache key (prompt hash).
    pub key: String,
    /// The canonical configuration.
    pub config: Value,
    /// Where the candidate came from (`line 3`, `history`, `predicted`, …).
    pub origin: String,
    /// The generation lease holder used while its image is stored and recorded.
    pub holder: Uuid,
    /// The line's batch-price estimate, in US dollars.
    pub estimate_usd: f64,
    /// For a model refresh: the image the entry served at submission.
    pub(crate) old_image_url: Option<String>,
    /// For a model refresh: where that image is stored.
    pub(crate) old_storage_path: Option<String>,
    /// `generated`, `wasted` or `failed`; `None` while pending.
    pub outcome: Option<String>,
    /// What its answer cost, in US dollars, once handled.
    pub cost_usd: Option<f64>,
    /// What went wrong, for a failed line.
    pub message: Option<String>,
}

type ItemRow = (
    String,
    String,
    Value,
    String,
    Uuid,
    f64,
    Option<String>,
    Option<String>,
    Option<String>,
    Option<f64>,
    Option<String>,
);

/// Every line of a batch, in the order they were submitted.
pub async fn items(pool: &PgPool, id: Uuid) -> Result<Vec<Item>, DbError> {
    let rows: Vec<ItemRow> = sqlx::query_as(
        "SELECT custom_id, prompt_hash, prompt_config, origin, holder, estimate_usd,
                old_image_url, old_storage_path, outcome, cost_usd, message
           FROM memoji_warm_batch_items WHERE batch_id = $1 ORDER BY line_no",
    )
    .bind(id)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(
            |(
                custom_id,
                key,
                config,
                origin,
                holder,
                estimate_usd,
                old_image_url,
                old_storage_path,
                outcome,
                cost_usd,
                message,
            )| Item {
                custom_id,
                key,
                config,
                origin,
                holder,
                estimate_usd,
                old_image_url,
                old_storage_path,
                outcome,
                cost_usd,
                message,
            },
        )
        .collect())
}

/// Records what came of one line (once: a line already handled keeps its outcome).
pub(crate) async fn set_outcome(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    custom_id: &str,
    outcome: &str,
    cost_usd: f64,
    message: Option<&str>,
) -> Result<(), DbError> {
    sqlx::query(
        "UPDATE memoji_warm_batch_items SET outcome = $3, cost_usd = $4, message = $5
          WHERE batch_id = $1 AND custom_id = $2 AND outcome IS NULL",
    )
    .bind(id)
    .bind(custom_id)
    .bind(outcome)
    .bind(cost_usd)
    .bind(message)
    .execute(executor)
    .await?;
    Ok(())
}

/// Closes a batch with its report.
pub async fn finish(
    executor: impl PgExecutor<'_>,
    id: Uuid,
    report: &Value,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE memoji_warm_batches SET finished_at = now(), report = $2
          WHERE id = $1 AND finished_at IS NULL",
    )
    .bind(id)
    .bind(report)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}

/// Dollars of open batches (their estimates): spent already as far as a daily budget goes.
pub(crate) async fn open_estimates(pool: &PgPool) -> Result<f64, DbError> {
    let (sum,): (f64,) = sqlx::query_as(
        "SELECT COALESCE(sum(estimated_usd), 0)::float8 FROM memoji_warm_batches
          WHERE finished_at IS NULL",
    )
    .fetch_one(pool)
    .await?;
    Ok(sum)
}

/// The keys among `keys` that a line of an open batch is still to answer: another warming is
/// making them.
pub(crate) async fn pending_among(
    pool: &PgPool,
    keys: &[String],
) -> Result<std::collections::HashSet<String>, DbError> {
    let rows: Vec<(String,)> = sqlx::query_as(
        "SELECT DISTINCT i.prompt_hash FROM memoji_warm_batch_items i
           JOIN memoji_warm_batches b ON b.id = i.batch_id
          WHERE b.finished_at IS NULL AND i.outcome IS NULL AND i.prompt_hash = ANY($1)",
    )
    .bind(keys)
    .fetch_all(pool)
    .await?;
    Ok(rows.into_iter().map(|(key,)| key).collect())
}
