//! Statistics (CONTRACT.md §2.4, §8): what the cache is worth, counted without slowing jobs.
//!
//! - [`observer`]: the job path's only hook. Each settled job is counted in memory (a mutex held
//!   for a few additions), its `job.completed` message queued, its Prometheus metrics recorded.
//! - [`Tally::flush`] adds the in-memory counts to Postgres every `stats.flush_ms`, one upsert per
//!   hour bucket. A crash loses at most that interval's counts (documented, accepted); a failed
//!   flush keeps the counts for the next one.
//! - [`feed`]: the metrics exchange's publisher, fed through a bounded channel that drops (and
//!   counts) messages rather than ever making a job wait.
//! - [`arms`] reports A/B tests per arm from their own rollups, with the intervals and verdicts
//!   of [`experiment`] (pure statistics).
//! - [`read`] turns the stored counters into [`Stats`], the body of `GET /api/cache/stats` and of
//!   `stats.snapshot`, without scanning the cache table.

pub mod analytics;
pub mod arms;
pub mod experiment;
pub mod feed;
pub mod observer;
pub mod report;
pub mod requests;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, DurationRound, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

pub use feed::Feed;
pub use observer::Observer;

use crate::db::DbError;
use crate::db::analytics::Batch as AnalyticsBatch;
use crate::db::stats::{self as store, Counts, Raw};
use crate::telemetry;

/// Job events not yet written to Postgres: the statistics' counts per UTC hour, and the
/// analytics rollups' batch.
#[derive(Debug, Default)]
pub struct Tally {
    pending: Mutex<BTreeMap<DateTime<Utc>, Counts>>,
    analytics: Mutex<AnalyticsBatch>,
    /// Requests per key per day, for the request history (cache warming).
    pub requests: requests::Requests,
}

/// The hour bucket of a moment.
pub(crate) fn hour_of(at: DateTime<Utc>) -> DateTime<Utc> {
    at.duration_trunc(chrono::Duration::hours(1)).unwrap_or(at)
}

impl Tally {
    /// Adds one job's counts to its hour.
    pub fn add(&self, at: DateTime<Utc>, counts: &Counts) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.entry(hour_of(at)).or_default().add(counts);
    }

    /// Adds one answered job to the analytics batch (see [`analytics::add_job`]).
    pub(crate) fn add_job(
        &self,
        result: &crate::job::JobResult,
        config: Option<&crate::job::AvatarConfig>,
        lag: Option<Duration>,
    ) {
        let mut batch = self
            .analytics
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        analytics::add_job(&mut batch, result, config, lag);
    }

    /// Writes what was counted so far, statistics and analytics in one transaction. On failure
    /// the counts go back, to be written next time.
    pub async fn flush(&self, pool: &PgPool) -> Result<(), DbError> {
        let history = self.requests.flush(pool).await;
        self.flush_counts(pool).await?;
        history
    }

    async fn flush_counts(&self, pool: &PgPool) -> Result<(), DbError> {
        let taken =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        let batch = std::mem::take(
            &mut *self
                .analytics
                .lock()
                .unwrap_or_else(PoisonError::into_inner),
        );
        let buckets: Vec<(DateTime<Utc>, Counts)> =
            taken.into_iter().filter(|(_, c)| !c.is_empty()).collect();
        if buckets.is_empty() && batch.is_empty() {
            return Ok(());
        }
        match store::add(pool, &buckets, &batch).await {
            Ok(()) => Ok(()),
            Err(error) => {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                for (hour, counts) in &buckets {
                    pending.entry(*hour).or_default().add(counts);
                }
                drop(pending);
                let mut kept = self
                    .analytics
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                let newer = std::mem::replace(&mut *kept, batch);
                kept.merge(newer);
                Err(error)
            }
        }
    }

    /// Flushes every `every` until `shutdown`, then once more.
    pub async fn run(self: Arc<Self>, pool: PgPool, every: Duration, shutdown: CancellationToken) {
        let mut ticks = tokio::time::interval(every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = ticks.tick() => {}
                () = shutdown.cancelled() => break,
            }
            if let Err(error) = self.flush(&pool).await {
                telemetry::count_stats_flush_failure();
                tracing::warn!(%error, "could not write statistics; keeping them for the next try");
            }
        }
        if let Err(error) = self.flush(&pool).await {
            tracing::warn!(%error, "could not write the last statistics before stopping");
        }
    }
}

/// The figures of one period.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Lifetime: entries in the cache now. Last 24 h: entries added.
    pub total_cached: i64,
    /// Lifetime: the sum of `usage_count` (except hits served by other systems than this worker).
    /// Last 24 h: uses (hits + generations).
    pub total_usage: i64,
    /// `total_usage` ÷ entries in the cache now.
    pub avg_usage_per_entry: f64,
    /// The generation cost of the entries hits served.
    pub estimated_cost_saved_usd: f64,
    /// hits ÷ (hits + misses) × 100; 0 before the first lookup.
    pub cache_efficiency_pct: f64,
    /// Lookups answered from the cache.
    pub hits: i64,
    /// Lookups that found nothing (force_refresh jobs included), whatever came of them.
    pub misses: i64,
    /// Images generated (misses that generated).
    pub generations: i64,
    /// What those generations cost, USD.
    pub generation_cost_usd: f64,
    /// Lifetime: archived entries now. Last 24 h: entries archived.
    pub archived: i64,
}

/// The body of `GET /api/cache/stats` and of `stats.snapshot`: lifetime figures at the top level
/// (where dashboards of the JavaScript system read them), the last 24 hours beside them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Since the beginning, flattened into the top level.
    #[serde(flatten)]
    pub lifetime: Figures,
    /// The last 24 hours.
    pub last_24h: Figures,
    /// When these figures were computed, RFC 3339 with milliseconds (UTC).
    pub generated_at: String,
}

fn ratio(part: i64, whole: i64) -> f64 {
    if whole > 0 {
        part as f64 / whole as f64
    } else {
        0.0
    }
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

impl Stats {
    /// The statistics of `raw`, as of `now` (which only stamps `generated_at`).
    pub(crate) fn from_raw(raw: &Raw, now: DateTime<Utc>) -> Stats {
        let entries = raw.totals.entries;
        let figures =
            |counts: &Counts, total_cached: i64, total_usage: i64, archived: i64| Figures {
                total_cached,
                total_usage,
                avg_usage_per_entry: round(ratio(total_usage, entries), 4),
                estimated_cost_saved_usd: round(counts.saved_usd, 6),
                cache_efficiency_pct: round(
                    100.0 * ratio(counts.hits, counts.hits + counts.misses),
                    2,
                ),
                hits: counts.hits,
                misses: counts.misses,
                generations: counts.generations,
                generation_cost_usd: round(counts.generation_cost_usd, 6),
                archived,
            };
        let window = &raw.last_24h;
        Stats {
            // Hits raise usage_count without the totals' triggers (so that they cost the job
            // path nothing): the workers' hit counts make up the difference.
            lifetime: figures(
                &raw.lifetime,
                entries,
                raw.totals.usage + raw.lifetime.hits,
                raw.totals.archived,
            ),
            last_24h: figures(
                window,
                raw.last_24h_changes.entries_added,
                window.hits + window.generations,
                raw.last_24h_changes.entries_archived,
            ),
            generated_at: now.to_rfc3339_opts(SecondsFormat::Millis, true),
        }
    }
}

/// The statistics as stored now (what other processes counted in the last second may be missing).
pub async fn read(pool: &PgPool) -> Result<Stats, DbError> {
    let raw = store::read(pool).await?;
    Ok(Stats::from_raw(&raw, Utc::now()))
}

/// Publishes `stats.snapshot` every `every` until `shutdown`, after writing this process's counts.
pub(crate) async fn publish_snapshots(
    tally: Arc<Tally>,
    pool: PgPool,
    feed: Feed,
    every: Duration,
    shutdown: CancellationToken,
) {
    let mut ticks = tokio::time::interval(every);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = shutdown.cancelled() => return,
        }
        if let Err(error) = tally.flush(&pool).await {
            tracing::warn!(%error, "could not write statistics before a snapshot");
        }
        match read(&pool).await {
            Ok(stats) => feed.send(feed::STATS_SNAPSHOT, &stats),
            Err(error) => {
                tracing::warn!(%error, "no stats.snapshot this time: cannot read the statistics")
            }
        }
    }
}

/// The statistics as a table for people (`memoji-worker stats`).
pub fn table(stats: &Stats) -> String {
    let (l, w) = (&stats.lifetime, &stats.last_24h);
    let rows: [(&str, String, String); 10] = [
        (
            "total_cached",
            l.total_cached.to_string(),
            w.total_cached.to_string(),
        ),
        (
            "total_usage",
            l.total_usage.to_string(),
            w.total_usage.to_string(),
        ),
        (
            "avg_usage_per_entry",
            format!("{:.2}", l.avg_usage_per_entry),
            format!("{:.2}", w.avg_usage_per_entry),
        ),
        (
            "estimated_cost_saved_usd",
            format!("{:.4}", l.estimated_cost_saved_usd),
            format!("{:.4}", w.estimated_cost_saved_usd),
        ),
        (
            "cache_efficiency_pct",
            format!("{:.2}", l.cache_efficiency_pct),
            format!("{:.2}", w.cache_efficiency_pct),
        ),
        ("hits", l.hits.to_string(), w.hits.to_string()),
        ("misses", l.misses.to_string(), w.misses.to_string()),
        (
            "generations",
            l.generations.to_string(),
            w.generations.to_string(),
        ),
        (
            "generation_cost_usd",
            format!("{:.4}", l.generation_cost_usd),
            format!("{:.4}", w.generation_cost_usd),
        ),
        ("archived", l.archived.to_string(), w.archived.to_string()),
    ];
    let mut out = format!("{:<26} {:>16} {:>16}\n", "figure", "lifetime", "last 24 h");
    for (name, lifetime, window) in rows {
        out.push_str(&format!("{name:<26} {lifetime:>16} {window:>16}\n"));
    }
    out.push_str(&format!("(as of {})\n", stats.generated_at));
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::db::stats::{TableChanges, Totals};

    #[test]
    fn figures_follow_the_counts() {
        let raw = Raw {
            totals: Totals {
                entries: 4,
                usage: 10,
                archived: 1,
            },
            lifetime: Counts {
                hits: 3,
                misses: 1,
                generations: 1,
                failures: 0,
                generation_cost_usd: 0.042,
                saved_usd: 0.126,
            },
            last_24h: Counts {
                hits: 1,
                misses: 3,
                generations: 2,
                failures: 1,
                generation_cost_usd: 0.08,
                saved_usd: 0.04,
            },
            last_24h_changes: TableChanges {
                entries_added: 2,
                entries_deleted: 0,
                entries_archived: 1,
            },
        };
        let stats = Stats::from_raw(&raw, Utc::now());
        assert_eq!(stats.lifetime.cache_efficiency_pct, 75.0);
        // 10 uses in the table's totals plus 3 hits the workers counted, over 4 entries.
        assert_eq!(stats.lifetime.total_usage, 13);
        assert_eq!(stats.lifetime.avg_usage_per_entry, 3.25);
        assert_eq!(stats.lifetime.total_cached, 4);
        assert_eq!(stats.last_24h.cache_efficiency_pct, 25.0);
        assert_eq!(stats.last_24h.total_usage, 3);
        assert_eq!(stats.last_24h.total_cached, 2);
        assert_eq!(stats.last_24h.archived, 1);
        let json = serde_json::to_value(&stats).unwrap();
        assert_eq!(json["hits"], 3, "lifetime figures at the top level: {json}");
        assert_eq!(json["last_24h"]["hits"], 1);
        // Nothing counted yet: zeros, not NaN.
        let empty = Stats::from_raw(&Raw::default(), Utc::now());
        assert_eq!(empty.lifetime.cache_efficiency_pct, 0.0);
        assert_eq!(empty.lifetime.avg_usage_per_entry, 0.0);
        assert!(table(&empty).contains("cache_efficiency_pct"));
    }

    #[tokio::test]
    async fn tally_buckets_by_hour() {
        let tally = Tally::default();
        let at = DateTime::parse_from_rfc3339("2026-11-24T14:59:59Z")
            .unwrap()
            .with_timezone(&Utc);
        let one = Counts {
            hits: 1,
            saved_usd: 0.5,
            ..Counts::default()
        };
        tally.add(at, &one);
        tally.add(at + chrono::Duration::seconds(1), &one);
        tally.add(at, &one);
        let pending = tally.pending.lock().unwrap();
        assert_eq!(pending.len(), 2);
        assert_eq!(pending[&hour_of(at)].hits, 2);
    }
}
