//! The cleanup's SQL (CONTRACT.md §7): the single-replica lock, batches that archive popular
//! entries and delete old unused ones, and batches that prune old finished jobs and old credit
//! ledger rows (retention).
//!
//! A key's variants (`memoji_cache_variants`) are one entry with its `memoji_cache` row: the
//! rules count the key's uses together (the row's and its variants') and the row's age, and the
//! statement that deletes the row deletes its variants too, returning all of their images. Variant rows whose key has no `memoji_cache` row (the JavaScript system deleted
//! it, or only users of other variants ever asked) are judged by the same rules on their own.
//!
//! Every batch is two short statements: read the next `batch` ids in index order (the cursor),
//! then change only those of them that qualify, skipping rows a hit holds right now
//! (`FOR UPDATE SKIP LOCKED`). Locks are held for one batch, so hits keep flowing; a skipped row
//! is looked at again on the next run. Conditions are checked again under the row lock, so an
//! entry that a hit made popular a moment ago is not deleted.

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use super::DbError;

/// The advisory lock key of the cleanup: the same on every replica, unique to this purpose
/// (the ASCII bytes of "MEMOJICL"). Advisory locks are per database, so replicas sharing a
/// database share the lock.
const LOCK_KEY: i64 = 0x4d45_4d4f_4a49_434c;

/// Held while a cleanup runs (`db::advisory`).
pub type CleanupLock = super::advisory::AdvisoryLock;

/// Takes the cleanup lock if no other process holds it; `None` if one does.
pub(crate) async fn try_lock(pool: &PgPool) -> Result<Option<CleanupLock>, DbError> {
    super::advisory::try_lock(pool, LOCK_KEY).await
}

/// Whether some process holds the cleanup lock right now (for tests and diagnostics).
pub async fn is_locked(pool: &PgPool) -> Result<bool, DbError> {
    let held: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM pg_locks
                         WHERE locktype = 'advisory' AND granted
                           AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
                           AND ((classid::bigint << 32) | objid::bigint) = $1)",
    )
    .bind(LOCK_KEY)
    .fetch_one(pool)
    .await?;
    Ok(held)
}

/// The next `batch` entry ids after `after`, in primary-key order: the archive pass's cursor.
pub(crate) async fn next_ids(
    pool: &PgPool,
    after: Option<Uuid>,
    batch: i64,
) -> Result<Vec<Uuid>, DbError> {
    let ids: Vec<Uuid> = sqlx::query_scalar(
        "SELECT id FROM memoji_cache WHERE ($1::uuid IS NULL OR id > $1) ORDER BY id LIMIT $2",
    )
    .bind(after)
    .bind(batch)
    .fetch_all(pool)
    .await?;
    Ok(ids)
}

/// A key's uses as one entry: its row's and its variants' (`memoji_cache_variants`) together, for
/// `concat!` into the statements over `memoji_cache`. Without variants, the row's own count.
macro_rules! key_uses {
    () => {
        "(COALESCE(memoji_cache.usage_count, 0) + COALESCE((SELECT sum(v.usage_count)
           FROM memoji_cache_variants v WHERE v.prompt_hash = memoji_cache.prompt_hash), 0))"
    };
}

/// Archives those of `ids` used more than `above` times (with their variants' uses); with
/// `dry_run`, only counts them.
pub async fn archive(
    pool: &PgPool,
    ids: &[Uuid],
    above: i64,
    dry_run: bool,
) -> Result<u64, DbError> {
    let sql = if dry_run {
        concat!(
            "SELECT count(*) FROM memoji_cache
              WHERE id = ANY($1) AND archived IS NOT TRUE AND ",
            key_uses!(),
            " > $2"
        )
    } else {
        concat!(
            "WITH archived AS (
                 UPDATE memoji_cache SET archived = true
                  WHERE id IN (SELECT id FROM memoji_cache
                                WHERE id = ANY($1) AND archived IS NOT TRUE AND ",
            key_uses!(),
            " > $2
                                  FOR UPDATE SKIP LOCKED)
                 RETURNING 1)
             SELECT count(*) FROM archived"
        )
    };
    let n: i64 = sqlx::query_scalar(sql)
        .bind(ids)
        .bind(above)
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}

/// A position in the deletion pass's (created_at, id) order.
pub type Cursor = (DateTime<Utc>, Uuid);

/// The next `batch` non-archived entries created before `cutoff`, after `after`, oldest first.
/// Entries without a creation time (possible in imported rows) are never candidates: their age
/// is unknown.
pub(crate) async fn next_old(
    pool: &PgPool,
    cutoff: DateTime<Utc>,
    after: Option<Cursor>,
    batch: i64,
) -> Result<Vec<Cursor>, DbError> {
    let rows: Vec<(DateTime<Utc>, Uuid)> = sqlx::query_as(
        "SELECT created_at, id FROM memoji_cache
          WHERE archived IS NOT TRUE AND created_at < $1
            AND ($2::timestamptz IS NULL OR (created_at, id) > ($2, $3::uuid))
          ORDER BY created_at, id LIMIT $4",
    )
    .bind(cutoff)
    .bind(after.map(|c| c.0))
    .bind(after.map(|c| c.1))
    .bind(batch)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// The rules an entry must meet to be deleted.
#[derive(Debug, Clone, Copy)]
pub struct Unused {
    /// Only entries created before this.
    pub(crate) created_before: DateTime<Utc>,
    /// Fewer uses than this.
    pub(crate) min_uses: i64,
    /// Never one that qualifies for archiving, even if archiving skipped it this time.
    pub(crate) archive_above: i64,
}

/// A deleted entry, or one of its variants: what is needed to delete its image.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Deleted {
    /// The entry's cache key.
    pub prompt_hash: String,
    /// 0 for the key's `memoji_cache` row, n for its variant n.
    pub variant: i32,
    /// Where its image is stored; `None` for a row imported without one.
    pub storage_path: Option<String>,
    /// Its image's public URL.
    pub image_url: String,
    /// Its image's size, in bytes.
    pub image_bytes: i64,
}

/// Of `ids`, the entries the rules delete, a key's uses counted with its variants'.
const UNUSED: &str = concat!(
    "id = ANY($1) AND archived IS NOT TRUE AND created_at < $2 AND ",
    key_uses!(),
    " < $3 AND ",
    key_uses!(),
    " <= $4"
);

/// Deletes those of `ids` that meet `rules`, with their variants, returning them all (each
/// key's row first, as variant 0).
pub async fn delete(pool: &PgPool, ids: &[Uuid], rules: Unused) -> Result<Vec<Deleted>, DbError> {
    let sql = format!(
        "WITH gone AS (
             DELETE FROM memoji_cache
              WHERE id IN (SELECT id FROM memoji_cache WHERE {UNUSED} FOR UPDATE SKIP LOCKED)
             RETURNING prompt_hash, storage_path, image_url,
                       COALESCE(image_bytes, 0) AS image_bytes),
         variants AS (
             DELETE FROM memoji_cache_variants v USING gone
              WHERE v.prompt_hash = gone.prompt_hash
             RETURNING v.prompt_hash, v.variant, v.storage_path, v.image_url, v.image_bytes)
         SELECT prompt_hash, 0 AS variant, storage_path, image_url, image_bytes FROM gone
         UNION ALL
         SELECT prompt_hash, variant, storage_path, image_url, image_bytes FROM variants
         ORDER BY prompt_hash, variant"
    );
    let rows = sqlx::query_as(&sql)
        .bind(ids)
        .bind(rules.created_before)
        .bind(rules.min_uses)
        .bind(rules.archive_above)
        .fetch_all(pool)
        .await?;
    Ok(rows)
}

/// What [`delete`] would delete: how many entries, how many variant rows with them, and their
/// recorded image bytes.
pub(crate) async fn count_unused(
    pool: &PgPool,
    ids: &[Uuid],
    rules: Unused,
) -> Result<(u64, u64, u64), DbError> {
    let sql = format!(
        "WITH unused AS (
             SELECT prompt_hash, COALESCE(image_bytes, 0) AS image_bytes
               FROM memoji_cache WHERE {UNUSED}),
         variants AS (
             SELECT v.image_bytes FROM memoji_cache_variants v
               JOIN unused USING (prompt_hash))
         SELECT (SELECT count(*) FROM unused),
                (SELECT count(*) FROM variants),
                ((SELECT COALESCE(sum(image_bytes), 0) FROM unused)
                 + (SELECT COALESCE(sum(image_bytes), 0) FROM variants))::bigint"
    );
    let (n, variants, bytes): (i64, i64, i64) = sqlx::query_as(&sql)
        .bind(ids)
        .bind(rules.created_before)
        .bind(rules.min_uses)
        .bind(rules.archive_above)
        .fetch_one(pool)
        .await?;
    let count = |n: i64| u64::try_from(n).unwrap_or(0);
    Ok((count(n), count(variants), count(bytes)))
}

/// Whether a row of the key — its entry or a variant — exists and points at `storage_path`
/// (re-recorded since the cleanup deleted it), so the image there must stay.
pub(crate) async fn image_in_use(
    pool: &PgPool,
    prompt_hash: &str,
    storage_path: &str,
) -> Result<bool, DbError> {
    let used: bool = sqlx::query_scalar(
        "SELECT EXISTS (SELECT 1 FROM memoji_cache
                         WHERE prompt_hash = $1
                           AND (storage_path = $2 OR (storage_path IS NULL AND image_url LIKE '%/' || $2)))
             OR EXISTS (SELECT 1 FROM memoji_cache_variants
                         WHERE prompt_hash = $1 AND storage_path = $2)",
    )
    .bind(prompt_hash)
    .bind(storage_path)
    .fetch_one(pool)
    .await?;
    Ok(used)
}

/// Variant rows of keys without a `memoji_cache` row that meet the seed's rules on their own:
/// created before the cutoff, fewer uses than `min_uses`, not popular enough to archive.
const ORPHAN_UNUSED: &str = "created_at < $1 AND usage_count < $2 AND usage_count <= $3
    AND NOT EXISTS (SELECT 1 FROM memoji_cache c WHERE c.prompt_hash = v.prompt_hash)";

/// Deletes up to `batch` variant rows whose key has no `memoji_cache` row and that meet `rules`,
/// returning them (rows a hit holds right now are skipped). Fewer than `batch` means done.
pub(crate) async fn delete_orphans(
    pool: &PgPool,
    rules: Unused,
    batch: i64,
) -> Result<Vec<Deleted>, DbError> {
    let sql = format!(
        "DELETE FROM memoji_cache_variants
          WHERE (prompt_hash, variant) IN (
                SELECT prompt_hash, variant FROM memoji_cache_variants v
                 WHERE {ORPHAN_UNUSED}
                 ORDER BY created_at LIMIT $4 FOR UPDATE SKIP LOCKED)
         RETURNING prompt_hash, variant, storage_path, image_url, image_bytes"
    );
    let rows = sqlx::query_as(&sql)
        .bind(rules.created_before)
        .bind(rules.min_uses)
        .bind(rules.archive_above)
        .bind(batch)
        .fetch_all(pool)
        .await?;
    Ok(rows)
}

/// What [`delete_orphans`] would delete, all batches together: how many rows, and their bytes.
pub(crate) async fn count_orphans(pool: &PgPool, rules: Unused) -> Result<(u64, u64), DbError> {
    let sql = format!(
        "SELECT count(*), COALESCE(sum(image_bytes), 0)::bigint
           FROM memoji_cache_variants v WHERE {ORPHAN_UNUSED}"
    );
    let (n, bytes): (i64, i64) = sqlx::query_as(&sql)
        .bind(rules.created_before)
        .bind(rules.min_uses)
        .bind(rules.archive_above)
        .fetch_one(pool)
        .await?;
    Ok((
        u64::try_from(n).unwrap_or(0),
        u64::try_from(bytes).unwrap_or(0),
    ))
}

/// A finished job may go once it was created and finished before the cutoff — unless it failed
/// after a charge that was never refunded: the refund sweep still needs its row. A job still
/// `processing` is never pruned, however old (the refund sweep's to settle).
const PRUNABLE_JOB: &str = "job_id = ANY($1) AND created_at < $2 AND updated_at < $2
    AND status IN ('succeeded', 'failed')
    AND NOT (status = 'failed' AND EXISTS (
        SELECT 1 FROM memoji_credit_ledger l
         WHERE l.job_id = memoji_jobs.job_id AND l.refunded_at IS NULL))";

/// A ledger row may go once it was charged before the cutoff and can no longer be refunded: it
/// was refunded, or its job succeeded. A row whose job is still `processing` or `failed`
/// (unrefunded) stays for the refund sweep. A row whose job row is gone is of a finished job
/// (only finished jobs are pruned, and never a failed one with an open charge).
const PRUNABLE_CHARGE: &str = "job_id = ANY($1) AND charged_at < $2
    AND (refunded_at IS NOT NULL OR NOT EXISTS (
        SELECT 1 FROM memoji_jobs j
         WHERE j.job_id = memoji_credit_ledger.job_id AND j.status IN ('processing', 'failed')))";

/// What the retention pass prunes: finished jobs, and ledger rows that can no longer be refunded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retained {
    /// Finished jobs in `memoji_jobs`.
    Jobs,
    /// Ledger rows in `memoji_credit_ledger` that can no longer be refunded.
    Charges,
}

impl Retained {
    /// The table, the age column its index serves, and which of a batch may go.
    fn shape(self) -> (&'static str, &'static str, &'static str) {
        match self {
            Retained::Jobs => ("memoji_jobs", "created_at", PRUNABLE_JOB),
            Retained::Charges => ("memoji_credit_ledger", "charged_at", PRUNABLE_CHARGE),
        }
    }
}

/// The next `batch` rows older than `cutoff`, after `after`, oldest first (the retention pass's
/// cursor over the table's age index: `memoji_jobs_created_at`, `memoji_credit_ledger_charged_at`).
pub(crate) async fn next_retained(
    pool: &PgPool,
    what: Retained,
    cutoff: DateTime<Utc>,
    after: Option<Cursor>,
    batch: i64,
) -> Result<Vec<Cursor>, DbError> {
    let (table, age, _) = what.shape();
    let rows: Vec<Cursor> = sqlx::query_as(&format!(
        "SELECT {age}, job_id FROM {table}
          WHERE {age} < $1
            AND ($2::timestamptz IS NULL OR ({age} >= $2 AND ({age}, job_id) > ($2, $3::uuid)))
          ORDER BY {age}, job_id LIMIT $4"
    ))
    .bind(cutoff)
    .bind(after.map(|c| c.0))
    .bind(after.map(|c| c.1))
    .bind(batch)
    .fetch_all(pool)
    .await?;
    Ok(rows)
}

/// Deletes those of `ids` that may go (`PRUNABLE_JOB`, `PRUNABLE_CHARGE`); with
/// `dry_run`, only counts them. Rows a delivery holds right now are skipped (looked at again on
/// the next run).
pub async fn prune(
    pool: &PgPool,
    what: Retained,
    ids: &[Uuid],
    cutoff: DateTime<Utc>,
    dry_run: bool,
) -> Result<u64, DbError> {
    let (table, _, prunable) = what.shape();
    let sql = if dry_run {
        format!("SELECT count(*) FROM {table} WHERE {prunable}")
    } else {
        format!(
            "WITH gone AS (
                 DELETE FROM {table}
                  WHERE job_id IN (SELECT job_id FROM {table} WHERE {prunable}
                                    FOR UPDATE SKIP LOCKED)
                 RETURNING 1)
             SELECT count(*) FROM gone"
        )
    };
    let n: i64 = sqlx::query_scalar(&sql)
        .bind(ids)
        .bind(cutoff)
        .fetch_one(pool)
        .await?;
    Ok(u64::try_from(n).unwrap_or(0))
}
