//! The analytics rollups (migration 0009): what [`record`] adds as jobs complete, and the reads
//! behind `GET /api/analytics/…`, the dashboard and `memoji-worker report`.
//!
//! Writing is one statement per statistics flush (about once a second per process, whatever the
//! number of jobs settled meanwhile): the batch is aggregated in memory first (`stats::analytics`),
//! so every row appears once and each table gets one multi-row upsert. Reading touches only these
//! tables, by primary key range or a descending index, never `memoji_jobs` or `memoji_cache`.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::{PgConnection, PgPool};

use super::DbError;

/// Histogram buckets per hour, for durations and queue lags: bucket `i < BUCKETS - 1` counts values
/// up to [`bucket_bound_ms`]`(i)`; the last counts everything above.
pub(crate) const BUCKETS: usize = 42;

/// The upper bound of bucket `i`, in milliseconds: 2^(i/2), so from 1 ms to about 17 minutes in
/// steps of √2.
pub(crate) fn bucket_bound_ms(i: usize) -> f64 {
    2f64.powf(i as f64 / 2.0)
}

/// The bucket a value in milliseconds falls in.
pub(crate) fn bucket_of(ms: f64) -> usize {
    if ms <= 1.0 {
        return 0;
    }
    let i = (2.0 * ms.log2()).ceil();
    (i as usize).min(BUCKETS - 1)
}

/// One hour's job events.
#[derive(Debug, Clone, PartialEq)]
pub struct HourCounts {
    /// Jobs answered in the hour, every outcome.
    pub jobs: i64,
    /// Jobs answered from the cache.
    pub hits: i64,
    /// Jobs not answered from the cache (invalid jobs excluded).
    pub misses: i64,
    /// Jobs answered by a new generation.
    pub generations: i64,
    /// Failed jobs other than `invalid_job`.
    pub failures: i64,
    /// Jobs that failed as `invalid_job`.
    pub invalid: i64,
    /// What the generations cost, in US dollars.
    pub spend_usd: f64,
    /// What the cache hits saved, in US dollars.
    pub saved_usd: f64,
    /// Job durations, one count per [`bucket_of`] bucket.
    pub(crate) durations: [i64; BUCKETS],
    /// Queue lags (where the publisher said when it sent the job), one count per bucket.
    pub(crate) lags: [i64; BUCKETS],
}

impl Default for HourCounts {
    fn default() -> Self {
        HourCounts {
            jobs: 0,
            hits: 0,
            misses: 0,
            generations: 0,
            failures: 0,
            invalid: 0,
            spend_usd: 0.0,
            saved_usd: 0.0,
            durations: [0; BUCKETS],
            lags: [0; BUCKETS],
        }
    }
}

impl HourCounts {
    /// Adds `other`'s counts and histogram buckets to these.
    pub fn add(&mut self, other: &HourCounts) {
        self.jobs += other.jobs;
        self.hits += other.hits;
        self.misses += other.misses;
        self.generations += other.generations;
        self.failures += other.failures;
        self.invalid += other.invalid;
        self.spend_usd += other.spend_usd;
        self.saved_usd += other.saved_usd;
        for i in 0..BUCKETS {
            self.durations[i] += other.durations[i];
            self.lags[i] += other.lags[i];
        }
    }
}

/// Jobs with one attribute value, on one day.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ValueCounts {
    /// Jobs with the value.
    pub jobs: i64,
    /// Of those, jobs answered from the cache.
    pub hits: i64,
    /// Of those, jobs not answered from the cache.
    pub misses: i64,
    /// What their generations cost, in US dollars.
    pub spend_usd: f64,
    /// What their cache hits saved, in US dollars.
    pub saved_usd: f64,
}

impl ValueCounts {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &ValueCounts) {
        self.jobs += other.jobs;
        self.hits += other.hits;
        self.misses += other.misses;
        self.spend_usd += other.spend_usd;
        self.saved_usd += other.saved_usd;
    }
}

/// Uses of one configuration (cache key).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ConfigCounts {
    /// Succeeded jobs with this configuration.
    pub uses: i64,
    /// Of those, jobs answered from the cache.
    pub hits: i64,
    /// Of those, jobs answered by a new generation.
    pub generations: i64,
    /// What its generations cost, in US dollars.
    pub spend_usd: f64,
    /// What its cache hits saved, in US dollars.
    pub saved_usd: f64,
    /// The configuration in words (`stats::analytics::label`); empty when unknown.
    pub label: String,
    /// The model of its latest image, when known.
    pub model: Option<String>,
    /// Where its latest image is stored, when known.
    pub storage_path: Option<String>,
    /// Its latest image's URL, when known.
    pub image_url: Option<String>,
    /// When it was last used; `None` only for an empty value.
    pub last_used_at: Option<DateTime<Utc>>,
}

impl ConfigCounts {
    /// Adds `other`, a later batch: its image and label replace these where it has them.
    pub fn add(&mut self, other: &ConfigCounts) {
        self.uses += other.uses;
        self.hits += other.hits;
        self.generations += other.generations;
        self.spend_usd += other.spend_usd;
        self.saved_usd += other.saved_usd;
        if !other.label.is_empty() {
            self.label.clone_from(&other.label);
        }
        for (mine, theirs) in [
            (&mut self.model, &other.model),
            (&mut self.storage_path, &other.storage_path),
            (&mut self.image_url, &other.image_url),
        ] {
            if theirs.is_some() {
                mine.clone_from(theirs);
            }
        }
        self.last_used_at = self.last_used_at.max(other.last_used_at);
    }
}

/// One user's jobs.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct UserCounts {
    /// Jobs the user sent (invalid jobs excluded).
    pub jobs: i64,
    /// Of those, jobs answered by a new generation.
    pub generations: i64,
    /// What their generations cost, in US dollars.
    pub spend_usd: f64,
    /// What their cache hits saved, in US dollars.
    pub saved_usd: f64,
    /// When the user's latest job completed; `None` only for an empty value.
    pub(crate) last_seen_at: Option<DateTime<Utc>>,
}

impl UserCounts {
    /// Adds `other`'s counts to these; the later `last_seen_at` wins.
    pub fn add(&mut self, other: &UserCounts) {
        self.jobs += other.jobs;
        self.generations += other.generations;
        self.spend_usd += other.spend_usd;
        self.saved_usd += other.saved_usd;
        self.last_seen_at = self.last_seen_at.max(other.last_seen_at);
    }
}

/// Everything one flush adds, each row once.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Batch {
    /// Counts per hour (keyed by the hour's start).
    pub hours: HashMap<DateTime<Utc>, HourCounts>,
    /// Failed jobs per hour and error code.
    pub failures: HashMap<(DateTime<Utc>, &'static str), i64>,
    /// Counts per day, dimension (`model`, `size`, `gesture`, …) and value.
    pub values: HashMap<(NaiveDate, &'static str, String), ValueCounts>,
    /// Counts per configuration, keyed by prompt hash.
    pub configs: HashMap<String, ConfigCounts>,
    /// Counts per user id.
    pub users: HashMap<String, UserCounts>,
    /// Jobs of users in an experiment's arm (migration 0015).
    pub arms: HashMap<super::experiments::ArmHour, super::experiments::ArmCounts>,
}

impl Batch {
    /// Whether the batch adds nothing (then there is nothing to write).
    pub fn is_empty(&self) -> bool {
        self.hours.is_empty()
            && self.failures.is_empty()
            && self.values.is_empty()
            && self.configs.is_empty()
            && self.users.is_empty()
            && self.arms.is_empty()
    }

    /// Adds `other` (a later batch) to this one.
    pub(crate) fn merge(&mut self, other: Batch) {
        for (k, v) in other.hours {
            self.hours.entry(k).or_default().add(&v);
        }
        for (k, v) in other.failures {
            *self.failures.entry(k).or_default() += v;
        }
        for (k, v) in other.values {
            self.values.entry(k).or_default().add(&v);
        }
        for (k, v) in other.configs {
            self.configs.entry(k).or_default().add(&v);
        }
        for (k, v) in other.users {
            self.users.entry(k).or_default().add(&v);
        }
        for (k, v) in other.arms {
            self.arms.entry(k).or_default().add(&v);
        }
    }
}

/// The upsert of a whole batch: one statement, one round trip, six multi-row upserts.
const RECORD: &str = "
WITH h AS (
    INSERT INTO memoji_analytics_hourly AS t
        (hour, jobs, hits, misses, generations, failures, invalid, spend_usd, saved_usd,
         duration_buckets, lag_buckets)
    SELECT u.hour, u.jobs, u.hits, u.misses, u.generations, u.failures, u.invalid, u.spend, u.saved,
           ($10::int8[])[((u.i - 1) * 42 + 1):(u.i * 42)],
           ($11::int8[])[((u.i - 1) * 42 + 1):(u.i * 42)]
      FROM unnest($1::timestamptz[], $2::int8[], $3::int8[], $4::int8[], $5::int8[], $6::int8[],
                  $7::int8[], $8::float8[], $9::float8[])
           WITH ORDINALITY AS u(hour, jobs, hits, misses, generations, failures, invalid, spend,
                                saved, i)
    ON CONFLICT (hour) DO UPDATE SET
        jobs = t.jobs + EXCLUDED.jobs, hits = t.hits + EXCLUDED.hits,
        misses = t.misses + EXCLUDED.misses, generations = t.generations + EXCLUDED.generations,
        failures = t.failures + EXCLUDED.failures, invalid = t.invalid + EXCLUDED.invalid,
        spend_usd = t.spend_usd + EXCLUDED.spend_usd, saved_usd = t.saved_usd + EXCLUDED.saved_usd,
        duration_buckets = memoji_analytics_add_buckets(t.duration_buckets, EXCLUDED.duration_buckets),
        lag_buckets = memoji_analytics_add_buckets(t.lag_buckets, EXCLUDED.lag_buckets)
    RETURNING 1
), d AS (
    INSERT INTO memoji_analytics_daily AS t
        (day, jobs, hits, misses, generations, failures, invalid, spend_usd, saved_usd,
         duration_buckets, lag_buckets)
    SELECT u.day, u.jobs, u.hits, u.misses, u.generations, u.failures, u.invalid, u.spend, u.saved,
           ($49::int8[])[((u.i - 1) * 42 + 1):(u.i * 42)],
           ($50::int8[])[((u.i - 1) * 42 + 1):(u.i * 42)]
      FROM unnest($40::date[], $41::int8[], $42::int8[], $43::int8[], $44::int8[], $45::int8[],
                  $46::int8[], $47::float8[], $48::float8[])
           WITH ORDINALITY AS u(day, jobs, hits, misses, generations, failures, invalid, spend,
                                saved, i)
    ON CONFLICT (day) DO UPDATE SET
        jobs = t.jobs + EXCLUDED.jobs, hits = t.hits + EXCLUDED.hits,
        misses = t.misses + EXCLUDED.misses, generations = t.generations + EXCLUDED.generations,
        failures = t.failures + EXCLUDED.failures, invalid = t.invalid + EXCLUDED.invalid,
        spend_usd = t.spend_usd + EXCLUDED.spend_usd, saved_usd = t.saved_usd + EXCLUDED.saved_usd,
        duration_buckets = memoji_analytics_add_buckets(t.duration_buckets, EXCLUDED.duration_buckets),
        lag_buckets = memoji_analytics_add_buckets(t.lag_buckets, EXCLUDED.lag_buckets)
    RETURNING 1
), f AS (
    INSERT INTO memoji_analytics_failures AS t (hour, code, failures)
    SELECT * FROM unnest($12::timestamptz[], $13::text[], $14::int8[])
    ON CONFLICT (hour, code) DO UPDATE SET failures = t.failures + EXCLUDED.failures
    RETURNING 1
), b AS (
    INSERT INTO memoji_analytics_breakdown AS t
        (day, dimension, value, jobs, hits, misses, spend_usd, saved_usd)
    SELECT * FROM unnest($15::date[], $16::text[], $17::text[], $18::int8[], $19::int8[],
                         $20::int8[], $21::float8[], $22::float8[])
    ON CONFLICT (day, dimension, value) DO UPDATE SET
        jobs = t.jobs + EXCLUDED.jobs, hits = t.hits + EXCLUDED.hits,
        misses = t.misses + EXCLUDED.misses, spend_usd = t.spend_usd + EXCLUDED.spend_usd,
        saved_usd = t.saved_usd + EXCLUDED.saved_usd
    RETURNING 1
), c AS (
    INSERT INTO memoji_analytics_configs AS t
        (prompt_hash, uses, hits, generations, spend_usd, saved_usd, label, model, storage_path,
         image_url, last_used_at)
    SELECT u.hash, u.uses, u.hits, u.generations, u.spend, u.saved, u.label, NULLIF(u.model, ''),
           NULLIF(u.path, ''), NULLIF(u.url, ''), u.at
      FROM unnest($23::text[], $24::int8[], $25::int8[], $26::int8[], $27::float8[],
                  $28::float8[], $29::text[], $30::text[], $31::text[], $32::text[],
                  $33::timestamptz[])
           AS u(hash, uses, hits, generations, spend, saved, label, model, path, url, at)
    ON CONFLICT (prompt_hash) DO UPDATE SET
        uses = t.uses + EXCLUDED.uses, hits = t.hits + EXCLUDED.hits,
        generations = t.generations + EXCLUDED.generations,
        spend_usd = t.spend_usd + EXCLUDED.spend_usd, saved_usd = t.saved_usd + EXCLUDED.saved_usd,
        label = CASE WHEN EXCLUDED.label = '' THEN t.label ELSE EXCLUDED.label END,
        model = COALESCE(EXCLUDED.model, t.model),
        storage_path = COALESCE(EXCLUDED.storage_path, t.storage_path),
        image_url = COALESCE(EXCLUDED.image_url, t.image_url),
        last_used_at = GREATEST(t.last_used_at, EXCLUDED.last_used_at)
    RETURNING 1
), us AS (
    INSERT INTO memoji_analytics_users AS t
        (user_id, jobs, generations, spend_usd, saved_usd, last_seen_at)
    SELECT * FROM unnest($34::text[], $35::int8[], $36::int8[], $37::float8[], $38::float8[],
                         $39::timestamptz[])
    ON CONFLICT (user_id) DO UPDATE SET
        jobs = t.jobs + EXCLUDED.jobs, generations = t.generations + EXCLUDED.generations,
        spend_usd = t.spend_usd + EXCLUDED.spend_usd, saved_usd = t.saved_usd + EXCLUDED.saved_usd,
        last_seen_at = GREATEST(t.last_seen_at, EXCLUDED.last_seen_at)
    RETURNING 1
)
SELECT (SELECT count(*) FROM h) + (SELECT count(*) FROM d) + (SELECT count(*) FROM f) + (SELECT count(*) FROM b)
     + (SELECT count(*) FROM c) + (SELECT count(*) FROM us)";

/// One period table's columns, as the statement's arrays.
struct Columns<T> {
    start: Vec<T>,
    jobs: Vec<i64>,
    hits: Vec<i64>,
    misses: Vec<i64>,
    generations: Vec<i64>,
    failures: Vec<i64>,
    invalid: Vec<i64>,
    spend: Vec<f64>,
    saved: Vec<f64>,
    durations: Vec<i64>,
    lags: Vec<i64>,
}

impl<T> Default for Columns<T> {
    fn default() -> Self {
        Columns {
            start: Vec::new(),
            jobs: Vec::new(),
            hits: Vec::new(),
            misses: Vec::new(),
            generations: Vec::new(),
            failures: Vec::new(),
            invalid: Vec::new(),
            spend: Vec::new(),
            saved: Vec::new(),
            durations: Vec::new(),
            lags: Vec::new(),
        }
    }
}

impl<T> Columns<T> {
    fn push(&mut self, start: T, c: &HourCounts) {
        self.start.push(start);
        self.jobs.push(c.jobs);
        self.hits.push(c.hits);
        self.misses.push(c.misses);
        self.generations.push(c.generations);
        self.failures.push(c.failures);
        self.invalid.push(c.invalid);
        self.spend.push(c.spend_usd);
        self.saved.push(c.saved_usd);
        self.durations.extend_from_slice(&c.durations);
        self.lags.extend_from_slice(&c.lags);
    }
}

/// Adds a batch to the rollups, in one statement, on the caller's connection (the statistics'
/// flush transaction, so the figures of both move together).
pub async fn record(conn: &mut PgConnection, batch: &Batch) -> Result<(), DbError> {
    if batch.is_empty() {
        return Ok(());
    }
    let now = Utc::now();
    let mut h = Columns::<DateTime<Utc>>::default();
    for (hour, c) in &batch.hours {
        h.push(*hour, c);
    }
    let mut days: HashMap<NaiveDate, HourCounts> = HashMap::new();
    for (hour, c) in &batch.hours {
        days.entry(hour.date_naive()).or_default().add(c);
    }
    let mut d = Columns::<NaiveDate>::default();
    for (day, c) in &days {
        d.push(*day, c);
    }
    let (mut f_hour, mut f_code, mut f_n) = (Vec::new(), Vec::new(), Vec::new());
    for ((hour, code), n) in &batch.failures {
        f_hour.push(*hour);
        f_code.push(*code);
        f_n.push(*n);
    }
    let mut v = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for ((day, dimension, value), c) in &batch.values {
        v.0.push(*day);
        v.1.push(*dimension);
        v.2.push(value.as_str());
        v.3.push(c.jobs);
        v.4.push(c.hits);
        v.5.push(c.misses);
        v.6.push(c.spend_usd);
        v.7.push(c.saved_usd);
    }
    let mut c = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for (hash, k) in &batch.configs {
        c.0.push(hash.as_str());
        c.1.push(k.uses);
        c.2.push(k.hits);
        c.3.push(k.generations);
        c.4.push(k.spend_usd);
        c.5.push(k.saved_usd);
        c.6.push(k.label.as_str());
        c.7.push(k.model.as_deref().unwrap_or(""));
        c.8.push(k.storage_path.as_deref().unwrap_or(""));
        c.9.push(k.image_url.as_deref().unwrap_or(""));
        c.10.push(k.last_used_at.unwrap_or(now));
    }
    let mut u = (
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
        Vec::new(),
    );
    for (user, k) in &batch.users {
        u.0.push(user.as_str());
        u.1.push(k.jobs);
        u.2.push(k.generations);
        u.3.push(k.spend_usd);
        u.4.push(k.saved_usd);
        u.5.push(k.last_seen_at.unwrap_or(now));
    }
    sqlx::query(RECORD)
        .bind(h.start)
        .bind(h.jobs)
        .bind(h.hits)
        .bind(h.misses)
        .bind(h.generations)
        .bind(h.failures)
        .bind(h.invalid)
        .bind(h.spend)
        .bind(h.saved)
        .bind(h.durations)
        .bind(h.lags)
        .bind(f_hour)
        .bind(f_code)
        .bind(f_n)
        .bind(v.0)
        .bind(v.1)
        .bind(v.2)
        .bind(v.3)
        .bind(v.4)
        .bind(v.5)
        .bind(v.6)
        .bind(v.7)
        .bind(c.0)
        .bind(c.1)
        .bind(c.2)
        .bind(c.3)
        .bind(c.4)
        .bind(c.5)
        .bind(c.6)
        .bind(c.7)
        .bind(c.8)
        .bind(c.9)
        .bind(c.10)
        .bind(u.0)
        .bind(u.1)
        .bind(u.2)
        .bind(u.3)
        .bind(u.4)
        .bind(u.5)
        .bind(d.start)
        .bind(d.jobs)
        .bind(d.hits)
        .bind(d.misses)
        .bind(d.generations)
        .bind(d.failures)
        .bind(d.invalid)
        .bind(d.spend)
        .bind(d.saved)
        .bind(d.durations)
        .bind(d.lags)
        .execute(&mut *conn)
        .await?;
    super::experiments::record(conn, &batch.arms).await
}

/// One stored hour or day (`hour` is its start).
#[derive(Debug, Clone, PartialEq)]
pub struct Hour {
    /// The start of the hour or day.
    pub hour: DateTime<Utc>,
    /// Its counts.
    pub counts: HourCounts,
}

#[derive(sqlx::FromRow)]
struct HourRow {
    hour: DateTime<Utc>,
    jobs: i64,
    hits: i64,
    misses: i64,
    generations: i64,
    failures: i64,
    invalid: i64,
    spend_usd: f64,
    saved_usd: f64,
    duration_buckets: Vec<i64>,
    lag_buckets: Vec<i64>,
}

fn buckets(stored: &[i64]) -> [i64; BUCKETS] {
    let mut out = [0; BUCKETS];
    for (slot, n) in out.iter_mut().zip(stored) {
        *slot = *n;
    }
    out
}

/// The hours (or, with `daily`, the UTC days) in `[from, to)`, oldest first: a primary-key
/// range, one row per hour or day.
pub(crate) async fn periods(
    pool: &PgPool,
    daily: bool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<Hour>, DbError> {
    const HOURLY: &str = "SELECT hour, jobs, hits, misses, generations, failures, invalid,
                spend_usd, saved_usd, duration_buckets, lag_buckets
           FROM memoji_analytics_hourly WHERE hour >= $1 AND hour < $2 ORDER BY hour";
    const DAILY: &str = "SELECT (day::timestamp AT TIME ZONE 'UTC') AS hour, jobs, hits, misses,
                generations, failures, invalid, spend_usd, saved_usd, duration_buckets,
                lag_buckets
           FROM memoji_analytics_daily
          WHERE day >= ($1 AT TIME ZONE 'UTC')::date AND day < ($2 AT TIME ZONE 'UTC')::date
          ORDER BY day";
    let rows: Vec<HourRow> = sqlx::query_as(if daily { DAILY } else { HOURLY })
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await?;
    Ok(rows
        .into_iter()
        .map(|r| Hour {
            hour: r.hour,
            counts: HourCounts {
                jobs: r.jobs,
                hits: r.hits,
                misses: r.misses,
                generations: r.generations,
                failures: r.failures,
                invalid: r.invalid,
                spend_usd: r.spend_usd,
                saved_usd: r.saved_usd,
                durations: buckets(&r.duration_buckets),
                lags: buckets(&r.lag_buckets),
            },
        })
        .collect())
}

/// Failures per hour (or, with `daily`, per UTC day: summed in the database, one row per day and
/// code) and code in `[from, to)`.
pub async fn failures(
    pool: &PgPool,
    daily: bool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, String, i64)>, DbError> {
    const HOURLY: &str = "SELECT hour, code, failures FROM memoji_analytics_failures
          WHERE hour >= $1 AND hour < $2 ORDER BY hour, code";
    const DAILY: &str = "SELECT date_trunc('day', hour, 'UTC') AS day, code, sum(failures)::int8
           FROM memoji_analytics_failures
          WHERE hour >= $1 AND hour < $2 GROUP BY 1, 2 ORDER BY 1, 2";
    Ok(sqlx::query_as(if daily { DAILY } else { HOURLY })
        .bind(from)
        .bind(to)
        .fetch_all(pool)
        .await?)
}

/// One attribute value's jobs over a range of days.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ValueRow {
    /// The attribute (`model`, `size`, `quality`, `gesture`, …).
    pub dimension: String,
    /// The attribute's value.
    pub value: String,
    /// Jobs with the value.
    pub jobs: i64,
    /// Of those, jobs answered from the cache.
    pub hits: i64,
    /// Of those, jobs not answered from the cache.
    pub misses: i64,
    /// What their generations cost, in US dollars.
    pub spend_usd: f64,
    /// What their cache hits saved, in US dollars.
    pub saved_usd: f64,
}

/// The `limit` most used values of every dimension over the days `[from, to)`.
pub(crate) async fn breakdown(
    pool: &PgPool,
    from: NaiveDate,
    to: NaiveDate,
    limit: i64,
) -> Result<Vec<ValueRow>, DbError> {
    Ok(sqlx::query_as(
        "SELECT dimension, value, jobs, hits, misses, spend_usd, saved_usd
           FROM (SELECT dimension, value, sum(jobs)::int8 AS jobs, sum(hits)::int8 AS hits,
                        sum(misses)::int8 AS misses, sum(spend_usd)::float8 AS spend_usd,
                        sum(saved_usd)::float8 AS saved_usd,
                        row_number() OVER (PARTITION BY dimension
                                           ORDER BY sum(jobs) DESC, value) AS rank
                   FROM memoji_analytics_breakdown
                  WHERE day >= $1 AND day < $2
                  GROUP BY dimension, value) ranked
          WHERE rank <= $3
          ORDER BY dimension, jobs DESC, value",
    )
    .bind(from)
    .bind(to)
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// A configuration in a top list.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct ConfigRow {
    /// The configuration's cache key (prompt hash).
    pub prompt_hash: String,
    /// Succeeded jobs with this configuration.
    pub uses: i64,
    /// Of those, jobs answered from the cache.
    pub hits: i64,
    /// Of those, jobs answered by a new generation.
    pub generations: i64,
    /// What its generations cost, in US dollars.
    pub spend_usd: f64,
    /// What its cache hits saved, in US dollars.
    pub saved_usd: f64,
    /// The configuration in words; empty when unknown.
    pub label: String,
    /// The model of its latest image, when known.
    pub model: Option<String>,
    /// Where its latest image is stored, when known.
    pub storage_path: Option<String>,
    /// Its latest image's URL, when known.
    pub image_url: Option<String>,
    /// When it was last used.
    pub last_used_at: DateTime<Utc>,
}

/// What a top list of configurations is ordered by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopBy {
    /// By uses, most first.
    Uses,
    /// By US dollars saved, most first.
    Saved,
}

/// The `limit` configurations used most, or that saved most (a walk down one index).
pub(crate) async fn top_configs(
    pool: &PgPool,
    by: TopBy,
    limit: i64,
) -> Result<Vec<ConfigRow>, DbError> {
    let order = match by {
        TopBy::Uses => "uses DESC",
        TopBy::Saved => "saved_usd DESC",
    };
    Ok(sqlx::query_as(&format!(
        "SELECT prompt_hash, uses, hits, generations, spend_usd, saved_usd, label, model,
                storage_path, image_url, last_used_at
           FROM memoji_analytics_configs ORDER BY {order} LIMIT $1"
    ))
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// A user in the top list by spend: the id as the jobs gave it, and figures.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct UserRow {
    /// The user id as the jobs gave it.
    pub user_id: String,
    /// Jobs the user sent (invalid jobs excluded).
    pub jobs: i64,
    /// Of those, jobs answered by a new generation.
    pub generations: i64,
    /// What their generations cost, in US dollars.
    pub spend_usd: f64,
    /// What their cache hits saved, in US dollars.
    pub saved_usd: f64,
    /// When the user's latest job completed.
    pub(crate) last_seen_at: DateTime<Utc>,
}

/// The `limit` users who cost most.
pub(crate) async fn top_users(pool: &PgPool, limit: i64) -> Result<Vec<UserRow>, DbError> {
    Ok(sqlx::query_as(
        "SELECT user_id, jobs, generations, spend_usd, saved_usd, last_seen_at
           FROM memoji_analytics_users ORDER BY spend_usd DESC LIMIT $1",
    )
    .bind(limit)
    .fetch_all(pool)
    .await?)
}

/// Entries archived and deleted per UTC day in `[from, to)`, from the statistics' hourly rows
/// (the cache table's triggers count them, whoever ran the cleanup): the cleanup history.
pub(crate) async fn cleanups(
    pool: &PgPool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(NaiveDate, i64, i64)>, DbError> {
    Ok(sqlx::query_as(
        "SELECT (hour AT TIME ZONE 'UTC')::date AS day, sum(entries_archived)::int8,
                sum(entries_deleted)::int8
           FROM memoji_stats_hourly
          WHERE hour >= $1 AND hour < $2 AND (entries_archived <> 0 OR entries_deleted <> 0)
          GROUP BY 1 ORDER BY 1",
    )
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_log_spaced() {
        assert_eq!(bucket_of(0.0), 0);
        assert_eq!(bucket_of(1.0), 0);
        assert_eq!(bucket_of(1.2), 1);
        assert_eq!(bucket_of(2.0), 2);
        assert_eq!(bucket_of(1000.0), 20);
        assert!(bucket_bound_ms(20) >= 1000.0 && bucket_bound_ms(19) < 1000.0);
        assert_eq!(bucket_of(1e12), BUCKETS - 1);
        for ms in [3.0, 17.0, 250.0, 4000.0] {
            let i = bucket_of(ms);
            assert!(
                bucket_bound_ms(i) >= ms && bucket_bound_ms(i - 1) < ms,
                "{ms}"
            );
        }
    }
}
