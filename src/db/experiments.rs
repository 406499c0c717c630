//! The per-arm rollups of A/B tests (migration 0015): what [`record`] adds with each statistics
//! flush, and the sums behind `GET /api/experiments/…`.
//!
//! Rows are per experiment, UTC hour and arm, keyed in that order, so one experiment's report
//! is a primary-key range summed in the database: one row per arm comes back, whatever the
//! number of jobs. Nothing here reads `memoji_jobs` or `memoji_cache`.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::DbError;
use super::analytics::BUCKETS;

/// One arm's jobs (in an hour, or summed over a span).
#[derive(Debug, Clone, PartialEq)]
pub struct ArmCounts {
    /// Jobs that reached the cache.
    pub jobs: i64,
    /// Cached successes.
    pub hits: i64,
    /// Every other job (generated, out of credits, failed).
    pub misses: i64,
    /// Successes generated now.
    pub generations: i64,
    /// Failed jobs.
    pub failures: i64,
    /// The jobs' `cost_usd`, summed.
    pub spend_usd: f64,
    /// The jobs' `saved_usd`, summed.
    pub saved_usd: f64,
    /// The sum of each job's `cost_usd` squared, for the variance of the cost per job.
    pub spend_sq_usd: f64,
    /// Job durations, in the analytics' histogram buckets.
    pub durations: [i64; BUCKETS],
}

impl Default for ArmCounts {
    fn default() -> Self {
        ArmCounts {
            jobs: 0,
            hits: 0,
            misses: 0,
            generations: 0,
            failures: 0,
            spend_usd: 0.0,
            saved_usd: 0.0,
            spend_sq_usd: 0.0,
            durations: [0; BUCKETS],
        }
    }
}

impl ArmCounts {
    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &ArmCounts) {
        self.jobs += other.jobs;
        self.hits += other.hits;
        self.misses += other.misses;
        self.generations += other.generations;
        self.failures += other.failures;
        self.spend_usd += other.spend_usd;
        self.saved_usd += other.saved_usd;
        self.spend_sq_usd += other.spend_sq_usd;
        for (mine, theirs) in self.durations.iter_mut().zip(other.durations) {
            *mine += theirs;
        }
    }
}

/// Where an arm's jobs of one hour are counted: (hour, experiment, arm).
pub type ArmHour = (DateTime<Utc>, String, String);

const RECORD: &str = "
INSERT INTO memoji_analytics_arms AS t
    (experiment, hour, arm, jobs, hits, misses, generations, failures, spend_usd, saved_usd,
     spend_sq_usd, duration_buckets)
SELECT u.experiment, u.hour, u.arm, u.jobs, u.hits, u.misses, u.generations, u.failures,
       u.spend, u.saved, u.sq, ($12::int8[])[((u.i - 1) * 42 + 1):(u.i * 42)]
  FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::int8[], $5::int8[], $6::int8[],
              $7::int8[], $8::int8[], $9::float8[], $10::float8[], $11::float8[])
       WITH ORDINALITY AS u(experiment, hour, arm, jobs, hits, misses, generations, failures,
                            spend, saved, sq, i)
ON CONFLICT (experiment, hour, arm) DO UPDATE SET
    jobs = t.jobs + EXCLUDED.jobs, hits = t.hits + EXCLUDED.hits,
    misses = t.misses + EXCLUDED.misses, generations = t.generations + EXCLUDED.generations,
    failures = t.failures + EXCLUDED.failures, spend_usd = t.spend_usd + EXCLUDED.spend_usd,
    saved_usd = t.saved_usd + EXCLUDED.saved_usd,
    spend_sq_usd = t.spend_sq_usd + EXCLUDED.spend_sq_usd,
    duration_buckets = memoji_analytics_add_buckets(t.duration_buckets, EXCLUDED.duration_buckets)";

/// Adds a batch's arm counts, in one statement, on the caller's connection (the statistics'
/// flush transaction). Nothing is sent when no job ran in an arm.
pub async fn record(
    conn: &mut PgConnection,
    arms: &HashMap<ArmHour, ArmCounts>,
) -> Result<(), DbError> {
    if arms.is_empty() {
        return Ok(());
    }
    let n = arms.len();
    let (mut experiment, mut hour, mut arm) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut jobs, mut hits, mut misses, mut generations, mut failures) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let (mut spend, mut saved, mut sq) = (
        Vec::with_capacity(n),
        Vec::with_capacity(n),
        Vec::with_capacity(n),
    );
    let mut durations = Vec::with_capacity(n * BUCKETS);
    for ((at, name, arm_name), c) in arms {
        experiment.push(name.as_str());
        hour.push(*at);
        arm.push(arm_name.as_str());
        jobs.push(c.jobs);
        hits.push(c.hits);
        misses.push(c.misses);
        generations.push(c.generations);
        failures.push(c.failures);
        spend.push(c.spend_usd);
        saved.push(c.saved_usd);
        sq.push(c.spend_sq_usd);
        durations.extend_from_slice(&c.durations);
    }
    sqlx::query(RECORD)
        .bind(experiment)
        .bind(hour)
        .bind(arm)
        .bind(jobs)
        .bind(hits)
        .bind(misses)
        .bind(generations)
        .bind(failures)
        .bind(spend)
        .bind(saved)
        .bind(sq)
        .bind(durations)
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// One arm's jobs over a span.
#[derive(Debug, Clone, PartialEq)]
pub struct ArmRow {
    /// The experiment's name.
    pub experiment: String,
    /// The arm's name.
    pub arm: String,
    /// Its jobs, summed over the span.
    pub counts: ArmCounts,
    /// The first and last hours with jobs in the span.
    pub first_hour: DateTime<Utc>,
    pub last_hour: DateTime<Utc>,
}

#[derive(sqlx::FromRow)]
struct Summed {
    experiment: String,
    arm: String,
    jobs: i64,
    hits: i64,
    misses: i64,
    generations: i64,
    failures: i64,
    spend_usd: f64,
    saved_usd: f64,
    spend_sq_usd: f64,
    duration_buckets: Vec<i64>,
    first_hour: DateTime<Utc>,
    last_hour: DateTime<Utc>,
}

/// Every arm of `experiment` (or, with `None`, of every experiment) with jobs in the hours
/// `[from, to)`, summed per arm, in name order.
pub async fn arms(
    pool: &PgPool,
    experiment: Option<&str>,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<ArmRow>, DbError> {
    let rows: Vec<Summed> = sqlx::query_as(
        "SELECT experiment, arm, sum(jobs)::int8 AS jobs, sum(hits)::int8 AS hits,
                sum(misses)::int8 AS misses, sum(generations)::int8 AS generations,
                sum(failures)::int8 AS failures, sum(spend_usd)::float8 AS spend_usd,
                sum(saved_usd)::float8 AS saved_usd, sum(spend_sq_usd)::float8 AS spend_sq_usd,
                memoji_analytics_sum_buckets(duration_buckets) AS duration_buckets,
                min(hour) AS first_hour, max(hour) AS last_hour
           FROM memoji_analytics_arms
          WHERE ($1::text IS NULL OR experiment = $1) AND hour >= $2 AND hour < $3
          GROUP BY experiment, arm
          ORDER BY experiment, arm",
    )
    .bind(experiment)
    .bind(from)
    .bind(to)
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|r| {
            let mut durations = [0; BUCKETS];
            for (slot, n) in durations.iter_mut().zip(&r.duration_buckets) {
                *slot = *n;
            }
            ArmRow {
                experiment: r.experiment,
                arm: r.arm,
                counts: ArmCounts {
                    jobs: r.jobs,
                    hits: r.hits,
                    misses: r.misses,
                    generations: r.generations,
                    failures: r.failures,
                    spend_usd: r.spend_usd,
                    saved_usd: r.saved_usd,
                    spend_sq_usd: r.spend_sq_usd,
                    durations,
                },
                first_hour: r.first_hour,
                last_hour: r.last_hour,
            }
        })
        .collect())
}
