//! Group commit for hits: the statements behind `worker::batch`, each over arrays (`unnest`), so
//! a batch of deliveries costs one read and one write, whatever its size.
//!
//! A hit of a job id never seen before needs no claim: its result is recorded, finished, in the
//! same statement that counts the entry's use. Anything else — a job id known already (a
//! redelivery, a duplicate, another user's id), a miss — is left to the one-job path.

use std::collections::HashSet;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgExecutor;
use uuid::Uuid;

use super::DbError;
use super::cache::{EntryRow, Hit, entry_columns};
use super::preferences::PreferenceRow;
use crate::job::{CacheKey, JobId, JobResult, UserPreferences};

/// A delivery asking for its key.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The delivery's job id.
    pub job_id: JobId,
    /// The user id as the job gave it.
    pub user_id: &'a str,
    /// The job's cache key.
    pub key: &'a CacheKey,
}

/// What the cache and the job table hold for an [`Ask`].
#[derive(Debug, Clone, PartialEq)]
pub enum Found {
    /// The key's entry (no use counted yet), the user's credit use this period, and the user's
    /// cache preferences (`None`: none set), which decide whether the entry may serve
    /// (`job::policy`).
    Hit(Hit, Option<UserPreferences>),
    /// The key has no entry.
    Miss,
    /// The job id has a row already: the one-job path decides what it is.
    Known,
}

/// An [`EntryRow`] that may be missing (a miss), with whether the job id is known.
#[derive(sqlx::FromRow)]
struct FoundRow {
    known: bool,
    image_url: Option<String>,
    storage_path: Option<String>,
    cost: Option<f64>,
    updated_at: Option<DateTime<Utc>>,
    model: Option<String>,
    warmed_unused: Option<bool>,
    used: Option<i32>,
    has_preferences: bool,
    pref_max_age_days: Option<i32>,
    pref_mode: Option<String>,
    pref_variants_opt_out: Option<bool>,
}

impl FoundRow {
    fn found(self) -> Result<Found, DbError> {
        let preferences = self
            .has_preferences
            .then(|| {
                PreferenceRow {
                    max_age_days: self.pref_max_age_days,
                    mode: self.pref_mode,
                    variants_opt_out: self.pref_variants_opt_out.unwrap_or(false),
                }
                .preferences()
            })
            .transpose()?;
        Ok(
            match (self.known, self.image_url, self.cost, self.updated_at) {
                (true, ..) => Found::Known,
                (false, Some(image_url), Some(cost), Some(updated_at)) => Found::Hit(
                    Hit::from(EntryRow {
                        image_url,
                        storage_path: self.storage_path,
                        cost,
                        updated_at,
                        model: self.model,
                        warmed_unused: self.warmed_unused.unwrap_or(false),
                        used: self.used,
                    }),
                    preferences,
                ),
                (false, ..) => Found::Miss,
            },
        )
    }
}

/// The statement behind [`look_up`]: `$1` job ids, `$2` user ids, `$3` keys (arrays of one
/// length), `$4` the credit period. Public so that a test can hold its plan to index probes.
pub const LOOK_UP: &str = concat!(
    "SELECT job.job_id IS NOT NULL AS known, entry.*, balance.used,
                prefs.user_id IS NOT NULL AS has_preferences,
                prefs.max_age_days AS pref_max_age_days, prefs.mode AS pref_mode,
                prefs.variants_opt_out AS pref_variants_opt_out
           FROM unnest($1::uuid[], $2::text[], $3::text[]) WITH ORDINALITY
                AS ask(job_id, user_id, prompt_hash, n)
           LEFT JOIN LATERAL (SELECT j.job_id FROM memoji_jobs j
                               WHERE j.job_id = ask.job_id LIMIT 1) job ON true
           LEFT JOIN LATERAL (SELECT ",
    entry_columns!(),
    " FROM memoji_cache WHERE prompt_hash = ask.prompt_hash) entry ON true
           LEFT JOIN memoji_credit_balances balance
             ON entry.image_url IS NOT NULL AND balance.user_id = ask.user_id
            AND balance.period = $4
           LEFT JOIN LATERAL (SELECT p.user_id, p.max_age_days, p.mode, p.variants_opt_out
                                FROM memoji_user_cache_preferences p
                               WHERE entry.image_url IS NOT NULL AND p.user_id = ask.user_id
                               LIMIT 1) prefs ON true
          ORDER BY ask.n"
);

/// Reads, for every ask in order, the key's entry, the user's credit use in `period` and cache
/// preferences (for found entries only), and whether the job id is known. Writes nothing and
/// counts no use.
///
/// Every part is a probe by primary key per ask, whatever the planner thinks of the tables' sizes:
/// the job id as a `LATERAL … LIMIT 1` rather than an `EXISTS`, which the planner may turn into a
/// hashed subplan that reads all of `memoji_jobs` on every batch (it did, while the table's
/// statistics still said it was small: 70% of Postgres's CPU under load; BENCHMARKS.md); the
/// user's preferences likewise.
pub async fn look_up(
    executor: impl PgExecutor<'_>,
    asks: &[Ask<'_>],
    period: NaiveDate,
) -> Result<Vec<Found>, DbError> {
    let ids: Vec<Uuid> = asks.iter().map(|ask| ask.job_id.0).collect();
    let users: Vec<&str> = asks.iter().map(|ask| ask.user_id).collect();
    let keys: Vec<&str> = asks.iter().map(|ask| ask.key.as_str()).collect();
    let rows: Vec<FoundRow> = sqlx::query_as(LOOK_UP)
        .bind(&ids)
        .bind(&users)
        .bind(&keys)
        .bind(period)
        .fetch_all(executor)
        .await?;
    if rows.len() != asks.len() {
        return Err(DbError::Corrupt(format!(
            "a batch of {} lookups came back with {} rows",
            asks.len(),
            rows.len()
        )));
    }
    rows.into_iter().map(FoundRow::found).collect()
}

/// A hit's result to record, with the image the lookup found.
#[derive(Debug, Clone, Copy)]
pub struct Served<'a> {
    /// The hit's result.
    pub result: &'a JobResult,
    /// The job's cache key.
    pub key: &'a CacheKey,
    /// The entry's image when it was looked up: the result is recorded only if the entry still
    /// serves it (a refresh or a cleanup in between sends the job down the one-job path).
    pub image_url: &'a str,
}

/// Records the results of hits as finished jobs and counts one use per recorded job on each
/// entry, in one statement (one commit). Returns the ids it recorded; a job whose id appeared
/// meanwhile, or whose entry changed or went, is not recorded and is left to the caller.
pub async fn record(
    executor: impl PgExecutor<'_>,
    served: &[Served<'_>],
) -> Result<HashSet<JobId>, DbError> {
    let mut ids = Vec::with_capacity(served.len());
    let mut users = Vec::with_capacity(served.len());
    let mut keys = Vec::with_capacity(served.len());
    let mut urls = Vec::with_capacity(served.len());
    let mut results = Vec::with_capacity(served.len());
    for hit in served {
        ids.push(hit.result.job_id.0);
        users.push(hit.result.user_id.as_str());
        keys.push(hit.key.as_str());
        urls.push(hit.image_url);
        results
            .push(serde_json::to_value(hit.result).map_err(|e| DbError::Corrupt(e.to_string()))?);
    }
    let recorded: Vec<(Uuid,)> = sqlx::query_as(
        "WITH served AS (
             SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[])
                 AS s(job_id, user_id, prompt_hash, image_url, result)),
         recorded AS (
             INSERT INTO memoji_jobs (job_id, user_id, prompt_hash, status, result)
             SELECT s.job_id, s.user_id, s.prompt_hash, 'succeeded', s.result
               FROM served s
               JOIN memoji_cache c ON c.prompt_hash = s.prompt_hash AND c.image_url = s.image_url
             ON CONFLICT (job_id) DO NOTHING
             RETURNING job_id, prompt_hash),
         used AS (
             UPDATE memoji_cache c
                SET usage_count = COALESCE(c.usage_count, 0) + n.uses, last_used_at = now()
               FROM (SELECT prompt_hash, count(*) AS uses FROM recorded GROUP BY prompt_hash) n
              WHERE c.prompt_hash = n.prompt_hash)
         SELECT job_id FROM recorded",
    )
    .bind(&ids)
    .bind(&users)
    .bind(&keys)
    .bind(&urls)
    .bind(&results)
    .fetch_all(executor)
    .await?;
    Ok(recorded.into_iter().map(|(id,)| JobId(id)).collect())
}
