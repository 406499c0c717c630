//! The tables behind `GET /api/cache/stats` (migration 0003): job events per UTC hour and since
//! the beginning, and the cache table's totals kept by triggers.
//!
//! Reading is a handful of primary-key lookups and at most 24 hourly rows, whatever the size of
//! `memoji_cache`; nothing here scans it.

use chrono::{DateTime, Utc};
use sqlx::PgPool;

use super::DbError;

/// Job events counted in memory for one hour, added to Postgres in one upsert.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Counts {
    /// Jobs answered from the cache.
    pub hits: i64,
    /// Jobs not answered from the cache.
    pub misses: i64,
    /// Images generated.
    pub generations: i64,
    /// Failed jobs.
    pub failures: i64,
    /// What the generations cost, in US dollars.
    pub generation_cost_usd: f64,
    /// What the hits saved, in US dollars.
    pub saved_usd: f64,
}

impl Counts {
    /// Whether nothing was counted.
    pub fn is_empty(&self) -> bool {
        *self == Counts::default()
    }

    /// Adds `other`'s counts to these.
    pub fn add(&mut self, other: &Counts) {
        self.hits += other.hits;
        self.misses += other.misses;
        self.generations += other.generations;
        self.failures += other.failures;
        self.generation_cost_usd += other.generation_cost_usd;
        self.saved_usd += other.saved_usd;
    }
}

/// Adds counts to their hour buckets and to the lifetime row, and the analytics batch to its
/// rollups ([`super::analytics::record`]), in one transaction: either all of a flush counts or
/// none of it does (and the caller keeps it for the next try).
pub async fn add(
    pool: &PgPool,
    buckets: &[(DateTime<Utc>, Counts)],
    analytics: &super::analytics::Batch,
) -> Result<(), DbError> {
    let mut total = Counts::default();
    let mut tx = pool.begin().await?;
    for (hour, counts) in buckets {
        total.add(counts);
        sqlx::query(
            "INSERT INTO memoji_stats_hourly AS h
                 (hour, hits, misses, generations, failures, generation_cost_usd, saved_usd)
             VALUES ($1, $2, $3, $4, $5, $6, $7)
             ON CONFLICT (hour) DO UPDATE SET
                 hits = h.hits + EXCLUDED.hits,
                 misses = h.misses + EXCLUDED.misses,
                 generations = h.generations + EXCLUDED.generations,
                 failures = h.failures + EXCLUDED.failures,
                 generation_cost_usd = h.generation_cost_usd + EXCLUDED.generation_cost_usd,
                 saved_usd = h.saved_usd + EXCLUDED.saved_usd",
        )
        .bind(hour)
        .bind(counts.hits)
        .bind(counts.misses)
        .bind(counts.generations)
        .bind(counts.failures)
        .bind(counts.generation_cost_usd)
        .bind(counts.saved_usd)
        .execute(&mut *tx)
        .await?;
    }
    sqlx::query(
        "UPDATE memoji_stats_lifetime SET
             hits = hits + $1, misses = misses + $2, generations = generations + $3,
             failures = failures + $4, generation_cost_usd = generation_cost_usd + $5,
             saved_usd = saved_usd + $6
          WHERE id = 1",
    )
    .bind(total.hits)
    .bind(total.misses)
    .bind(total.generations)
    .bind(total.failures)
    .bind(total.generation_cost_usd)
    .bind(total.saved_usd)
    .execute(&mut *tx)
    .await?;
    super::analytics::record(&mut tx, analytics).await?;
    tx.commit().await?;
    Ok(())
}

/// What the cache table holds now.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Totals {
    /// Rows in `memoji_cache`.
    pub entries: i64,
    /// The sum of the rows' use counts.
    pub usage: i64,
    /// Of the rows, the archived ones.
    pub archived: i64,
}

/// Changes to the cache table within a window, counted by the triggers.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct TableChanges {
    /// Rows added.
    pub(crate) entries_added: i64,
    /// Rows deleted.
    pub(crate) entries_deleted: i64,
    /// Rows archived.
    pub(crate) entries_archived: i64,
}

/// Everything the statistics are computed from.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Raw {
    /// What the cache table holds now.
    pub totals: Totals,
    /// Job events since the beginning.
    pub lifetime: Counts,
    /// Job events in the last 24 hours.
    pub last_24h: Counts,
    /// Changes to the cache table in the last 24 hours.
    pub(crate) last_24h_changes: TableChanges,
}

#[derive(sqlx::FromRow)]
struct RawRow {
    entries: i64,
    usage: i64,
    archived: i64,
    l_hits: i64,
    l_misses: i64,
    l_generations: i64,
    l_failures: i64,
    l_cost: f64,
    l_saved: f64,
    w_hits: i64,
    w_misses: i64,
    w_generations: i64,
    w_failures: i64,
    w_cost: f64,
    w_saved: f64,
    w_added: i64,
    w_deleted: i64,
    w_archived: i64,
}

/// The statistics query: primary-key lookups and a range of at most 24 hourly rows. Public so
/// that a test can check its plan never touches `memoji_cache`.
pub const READ: &str = "SELECT t.entries, t.usage, t.archived,
                l.hits AS l_hits, l.misses AS l_misses, l.generations AS l_generations,
                l.failures AS l_failures, l.generation_cost_usd AS l_cost, l.saved_usd AS l_saved,
                w.hits AS w_hits, w.misses AS w_misses, w.generations AS w_generations,
                w.failures AS w_failures, w.cost AS w_cost, w.saved AS w_saved,
                w.added AS w_added, w.deleted AS w_deleted, w.archived AS w_archived
           FROM (SELECT COALESCE(sum(entries), 0)::bigint AS entries,
                        COALESCE(sum(usage), 0)::bigint AS usage,
                        COALESCE(sum(archived), 0)::bigint AS archived
                   FROM memoji_cache_totals) t,
                memoji_stats_lifetime l,
                (SELECT COALESCE(sum(hits), 0)::bigint AS hits,
                        COALESCE(sum(misses), 0)::bigint AS misses,
                        COALESCE(sum(generations), 0)::bigint AS generations,
                        COALESCE(sum(failures), 0)::bigint AS failures,
                        COALESCE(sum(generation_cost_usd), 0)::float8 AS cost,
                        COALESCE(sum(saved_usd), 0)::float8 AS saved,
                        COALESCE(sum(entries_added), 0)::bigint AS added,
                        COALESCE(sum(entries_deleted), 0)::bigint AS deleted,
                        COALESCE(sum(entries_archived), 0)::bigint AS archived
                   FROM memoji_stats_hourly
                  WHERE hour >= date_trunc('hour', now()) - interval '23 hours') w
          WHERE l.id = 1";

/// Reads the figures in one round trip. The window is the current hour and the 23 before it.
pub async fn read(pool: &PgPool) -> Result<Raw, DbError> {
    let row: RawRow = sqlx::query_as(READ).fetch_one(pool).await?;
    Ok(Raw {
        totals: Totals {
            entries: row.entries,
            usage: row.usage,
            archived: row.archived,
        },
        lifetime: Counts {
            hits: row.l_hits,
            misses: row.l_misses,
            generations: row.l_generations,
            failures: row.l_failures,
            generation_cost_usd: row.l_cost,
            saved_usd: row.l_saved,
        },
        last_24h: Counts {
            hits: row.w_hits,
            misses: row.w_misses,
            generations: row.w_generations,
            failures: row.w_failures,
            generation_cost_usd: row.w_cost,
            saved_usd: row.w_saved,
        },
        last_24h_changes: TableChanges {
            entries_added: row.w_added,
            entries_deleted: row.w_deleted,
            entries_archived: row.w_archived,
        },
    })
}
