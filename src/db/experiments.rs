//! The per-arm rollups of A/B tests (migration 0015): what [`record`] adds with each statistics
//! flush, and the sums behind `GET /api/experiments/…`.
//!
//! Rows are per experiment, UTC hour (and, in a second table, UTC day) and arm, keyed in that
//! order, so one experiment's report is a primary-key range summed in the database: one row per
//! arm comes back, whatever the number of jobs. Nothing here reads `memoji_jobs` or
//! `memoji_cache`.

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, Utc};
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
    pub(crate) spend_sq_usd: f64,
    /// Job durations, in the analytics' histogram buckets.
    pub(crate) durations: [i64; BUCKETS],
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
WITH h AS (
    INSERT INTO memoji_analytics_arms AS t
        (experiment, hour, arm, jobs, hits, misses, generations, failures, spend_usd, saved_usd,
         spend_sq_usd, duration_buckets)
    SELECT u.experiment, u.at, u.arm, u.jobs, u.hits, u.misses, u.generations, u.failures,
           u.spend, u.saved, u.sq, ($12::int8[])[((u.i - 1) * 42 + 1):(u.i * 42)]
      FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::int8[], $5::int8[], $6::int8[],
                  $7::int8[], $8::int8[], $9::float8[], $10::float8[], $11::float8[])
           WITH ORDINALITY AS u(experiment, at, arm, jobs, hits, misses, generations, failures,
                                spend, saved, sq, i)
    ON CONFLICT (experiment, hour, arm) DO UPDATE SET
        jobs = t.jobs + EXCLUDED.jobs, hits = t.hits + EXCLUDED.hits,
        misses = t.misses + EXCLUDED.misses, generations = t.generations + EXCLUDED.generations,
        failures = t.failures + EXCLUDED.failures, spend_usd = t.spend_usd + EXCLUDED.spend_usd,
        saved_usd = t.saved_usd + EXCLUDED.saved_usd,
        spend_sq_usd = t.spend_sq_usd + EXCLUDED.spend_sq_usd,
        duration_buckets = memoji_analytics_add_buckets(t.duration_buckets, EXCLUDED.duration_buckets)
    RETURNING 1
)
INSERT INTO memoji_analytics_arms_daily AS t
    (experiment, day, arm, jobs, hits, misses, generations, failures, spend_usd, saved_usd,
     spend_sq_usd, duration_buckets)
SELECT u.experiment, u.at, u.arm, u.jobs, u.hits, u.misses, u.generations, u.failures,
       u.spend, u.saved, u.sq, ($24::int8[])[((u.i - 1) * 42 + 1):(u.i * 42)]
  FROM unnest($13::text[], $14::date[], $15::text[], $16::int8[], $17::int8[], $18::int8[],
              $19::int8[], $20::int8[], $21::float8[], $22::float8[], $23::float8[])
       WITH ORDINALITY AS u(experiment, at, arm, jobs, hits, misses, generations, failures,
                            spend, saved, sq, i)
ON CONFLICT (experiment, day, arm) DO UPDATE SET
    jobs = t.jobs + EXCLUDED.jobs, hits = t.hits + EXCLUDED.hits,
    misses = t.misses + EXCLUDED.misses, generations = t.generations + EXCLUDED.generations,
    failures = t.failures + EXCLUDED.failures, spend_usd = t.spend_usd + EXCLUDED.spend_usd,
    saved_usd = t.saved_usd + EXCLUDED.saved_usd,
    spend_sq_usd = t.spend_sq_usd + EXCLUDED.spend_sq_usd,
    duration_buckets = memoji_analytics_add_buckets(t.duration_buckets, EXCLUDED.duration_buckets)";

/// One table's columns, as the statement's arrays.
struct Columns<'a, T> {
    experiment: Vec<&'a str>,
    at: Vec<T>,
    arm: Vec<&'a str>,
    jobs: Vec<i64>,
    hits: Vec<i64>,
    misses: Vec<i64>,
    generations: Vec<i64>,
    failures: Vec<i64>,
    spend: Vec<f64>,
    saved: Vec<f64>,
    sq: Vec<f64>,
    durations: Vec<i64>,
}

impl<'a, T> Columns<'a, T> {
    fn of(rows: impl Iterator<Item = (T, &'a str, &'a str, &'a ArmCounts)>) -> Columns<'a, T> {
        let mut c = Columns {
            experiment: Vec::new(),
            at: Vec::new(),
            arm: Vec::new(),
            jobs: Vec::new(),
            hits: Vec::new(),
            misses: Vec::new(),
            generations: Vec::new(),
            failures: Vec::new(),
            spend: Vec::new(),
            saved: Vec::new(),
            sq: Vec::new(),
            durations: Vec::new(),
        };
        for (at, experiment, arm, counts) in rows {
            c.experiment.push(experiment);
            c.at.push(at);
            c.arm.push(arm);
            c.jobs.push(counts.jobs);
            c.hits.push(counts.hits);
            c.misses.push(counts.misses);
            c.generations.push(counts.generations);
            c.failures.push(counts.failures);
            c.spend.push(counts.spend_usd);
            c.saved.push(counts.saved_usd);
            c.sq.push(counts.spend_sq_usd);
            c.durations.extend_from_slice(&counts.durations);
        }
        c
    }
}

/// Adds a batch's arm counts to the hourly and daily rollups, in one statement, on the caller's
/// connection (the statistics' flush transaction). Nothing is sent when no job ran in an arm.
pub async fn record(
    conn: &mut PgConnection,
    arms: &HashMap<ArmHour, ArmCounts>,
) -> Result<(), DbError> {
    if arms.is_empty() {
        return Ok(());
    }
    let mut days: HashMap<(NaiveDate, &str, &str), ArmCounts> = HashMap::new();
    for ((hour, experiment, arm), counts) in arms {
        days.entry((hour.date_naive(), experiment, arm))
            .or_default()
            .add(counts);
    }
    let h = Columns::of(
        arms.iter()
            .map(|((hour, e, a), c)| (*hour, e.as_str(), a.as_str(), c)),
    );
    let d = Columns::of(days.iter().map(|((day, e, a), c)| (*day, *e, *a, c)));
    sqlx::query(RECORD)
        .bind(h.experiment)
        .bind(h.at)
        .bind(h.arm)
        .bind(h.jobs)
        .bind(h.hits)
        .bind(h.misses)
        .bind(h.generations)
        .bind(h.failures)
        .bind(h.spend)
        .bind(h.saved)
        .bind(h.sq)
        .bind(h.durations)
        .bind(d.experiment)
        .bind(d.at)
        .bind(d.arm)
        .bind(d.jobs)
        .bind(d.hits)
        .bind(d.misses)
        .bind(d.generations)
        .bind(d.failures)
        .bind(d.spend)
        .bind(d.saved)
        .bind(d.sq)
        .bind(d.durations)
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
    /// The first and last hours (days, read from the daily rows) with jobs in the span.
    pub(crate) first_hour: DateTime<Utc>,
    /// The last such hour (or day).
    pub(crate) last_hour: DateTime<Utc>,
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

/// The histogram summed bucket by bucket (an aggregate per bucket: far faster than adding
/// arrays row by row).
fn summed_buckets() -> String {
    let sums: Vec<String> = (1..=BUCKETS)
        .map(|i| format!("COALESCE(sum(duration_buckets[{i}]), 0)::int8"))
        .collect();
    format!("ARRAY[{}]", sums.join(", "))
}

/// Every arm of `experiment` (or, with `None`, of every experiment) with jobs in `[from, to)`,
/// summed per arm, in name order: from the hourly rows, or with `daily` from the daily ones
/// (`from` and `to` then whole UTC days).
pub async fn arms(
    pool: &PgPool,
    experiment: Option<&str>,
    daily: bool,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<ArmRow>, DbError> {
    let (table, at, range) = if daily {
        (
            "memoji_analytics_arms_daily",
            "(day::timestamp AT TIME ZONE 'UTC')",
            "day >= ($2 AT TIME ZONE 'UTC')::date AND day < ($3 AT TIME ZONE 'UTC')::date",
        )
    } else {
        ("memoji_analytics_arms", "hour", "hour >= $2 AND hour < $3")
    };
    let sql = format!(
        "SELECT experiment, arm, sum(jobs)::int8 AS jobs, sum(hits)::int8 AS hits,
                sum(misses)::int8 AS misses, sum(generations)::int8 AS generations,
                sum(failures)::int8 AS failures, sum(spend_usd)::float8 AS spend_usd,
                sum(saved_usd)::float8 AS saved_usd, sum(spend_sq_usd)::float8 AS spend_sq_usd,
                {} AS duration_buckets, min({at}) AS first_hour, max({at}) AS last_hour
           FROM {table}
          WHERE ($1::text IS NULL OR experiment = $1) AND {range}
          GROUP BY experiment, arm
          ORDER BY experiment, arm",
        summed_buckets()
    );
    let rows: Vec<Summed> = sqlx::query_as(&sql)
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
