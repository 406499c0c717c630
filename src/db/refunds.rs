//! The refund sweep's SQL (`maintenance::refund`): charges whose job will never finish.
//!
//! A charge is normally refunded in the transaction that records its job's failure. Two kinds
//! escape that: a job left `processing` — its message dead-lettered by the delivery limit, or
//! lost — whose claim expired long ago, and (defensively) a `failed` job whose charge stands.
//! Each batch is one transaction that takes the sweep's advisory lock for its own duration
//! (`pg_try_advisory_xact_lock`), so replicas never sweep at the same moment and a crashed one
//! holds nothing.

use std::time::Duration;

use sqlx::{PgExecutor, Postgres, Transaction};
use uuid::Uuid;

use super::DbError;
use super::jobs::millis;

/// The sweep's advisory lock key: the ASCII bytes of "MEMOJIRF", beside the cleanup's "MEMOJICL".
const LOCK_KEY: i64 = 0x4d45_4d4f_4a49_5246;

/// How far back charges are looked at. The sweep runs every few minutes, so anything older was
/// seen by many runs already; the bound keeps each run to an index range of recent charges.
const LOOKBACK: Duration = Duration::from_secs(7 * 24 * 3600);

/// A charged job that will not finish.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct Abandoned {
    /// The job's id.
    pub job_id: Uuid,
    /// The user whose credit is to be refunded.
    pub user_id: String,
    /// The job's cache key, where it was recorded.
    pub prompt_hash: Option<String>,
    /// Still `processing` (to be recorded as failed); otherwise it failed and only the refund is
    /// missing.
    pub processing: bool,
}

/// Takes the sweep's lock for the rest of `tx`; `false` if another process holds it.
pub(crate) async fn try_lock(tx: &mut Transaction<'_, Postgres>) -> Result<bool, DbError> {
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1)")
        .bind(LOCK_KEY)
        .fetch_one(&mut **tx)
        .await?;
    Ok(locked)
}

/// Up to `batch` abandoned charged jobs, locked for `tx` (rows another transaction holds are
/// skipped, for the next run): unrefunded charges of the last [`LOOKBACK`] whose job failed, or
/// is still processing with a claim that expired more than `abandoned_after` ago.
pub(crate) async fn next_batch(
    tx: &mut Transaction<'_, Postgres>,
    abandoned_after: Duration,
    batch: i64,
) -> Result<Vec<Abandoned>, DbError> {
    let rows: Vec<Abandoned> = sqlx::query_as(
        "SELECT job.job_id, job.user_id, job.prompt_hash, job.status = 'processing' AS processing
           FROM memoji_credit_ledger charge
           JOIN memoji_jobs job ON job.job_id = charge.job_id
          WHERE charge.refunded_at IS NULL
            AND charge.charged_at > now() - $1 * interval '1 millisecond'
            AND (job.status = 'failed'
                 OR (job.status = 'processing'
                     AND COALESCE(job.owner_expires_at, job.updated_at)
                         < now() - $2 * interval '1 millisecond'))
          ORDER BY charge.charged_at
          LIMIT $3
            FOR UPDATE OF job SKIP LOCKED",
    )
    .bind(millis(LOOKBACK))
    .bind(millis(abandoned_after))
    .bind(batch)
    .fetch_all(&mut **tx)
    .await?;
    Ok(rows)
}

/// Records a processing job as finished with `result` (a failure), so that a delivery of it that
/// still comes is answered with that instead of being worked on (and generated uncharged).
pub(crate) async fn give_up(
    executor: impl PgExecutor<'_>,
    job_id: Uuid,
    result: &serde_json::Value,
) -> Result<bool, DbError> {
    let done = sqlx::query(
        "UPDATE memoji_jobs
            SET status = 'failed', result = $2, owner = NULL, owner_expires_at = NULL,
                updated_at = now()
          WHERE job_id = $1 AND status = 'processing'",
    )
    .bind(job_id)
    .bind(result)
    .execute(executor)
    .await?;
    Ok(done.rows_affected() == 1)
}
