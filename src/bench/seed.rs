//! Filling `memoji_cache` fast, and the statistics and cleanup that the scale runs time.
//!
//! Rows are made by Postgres itself (`INSERT … SELECT … FROM generate_series`), a million per
//! statement, so ten million rows take minutes, not hours.
//!
//! HOOKS: the stats endpoint and the cleanup are being written on another branch. Until they are
//! merged, [`stats`] and [`cleanup`] run reference SQL written after CONTRACT.md §7–8 (marked
//! `HOOK(stats)` / `HOOK(cleanup)`); after the merge, replace the body of each with a call to the
//! real function so BENCHMARKS.md measures the shipped code.

use std::time::{Duration, Instant};

use memoji_worker::config::CleanupSettings;
use memoji_worker::job::{AvatarConfig, CacheKey, GeneratorKind};
use sqlx::PgPool;

use super::load::hot_config;

/// Rows per seeding statement.
const SEED_CHUNK: i64 = 1_000_000;

/// Inserts the cache rows of hot keys `0..keys`, so their jobs are hits.
pub async fn prewarm(db: &PgPool, keys: usize) -> anyhow::Result<()> {
    let mut hashes = Vec::with_capacity(keys);
    let mut configs = Vec::with_capacity(keys);
    for i in 0..keys {
        let config = AvatarConfig::parse(&hot_config(i))?;
        hashes.push(CacheKey::of(&config, GeneratorKind::OpenAi).to_string());
        configs.push(CacheKey::canonical_json(&config, GeneratorKind::OpenAi));
    }
    sqlx::query(
        "INSERT INTO memoji_cache
             (prompt_hash, image_url, storage_path, prompt_config, generation_cost, usage_count,
              image_bytes, generator)
         SELECT h, 'http://127.0.0.1:8080/images/2026/11/' || h || '.png', '2026/11/' || h || '.png',
                c::jsonb, 0.042, 1, 1500000, 'openai'
           FROM unnest($1::text[], $2::text[]) AS t(h, c)
         ON CONFLICT (prompt_hash) DO NOTHING",
    )
    .bind(&hashes)
    .bind(&configs)
    .execute(db)
    .await?;
    Ok(())
}

/// Adds seed rows until the table holds `total` seed rows (numbering continues where it stopped).
/// Ages spread over 400 days; uses: a fifth 0–1 (cleanup candidates when old), one in fifty 150
/// (archive candidates), the rest 2–9.
pub async fn seed(db: &PgPool, total: i64) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let have: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM memoji_cache WHERE image_url LIKE 'https://cdn.example.com/%'",
    )
    .fetch_one(db)
    .await?;
    let mut from = have;
    while from < total {
        let to = (from + SEED_CHUNK).min(total);
        sqlx::query(
            "INSERT INTO memoji_cache
                 (prompt_hash, image_url, prompt_config, generation_cost, usage_count, created_at,
                  updated_at, last_used_at, archived, image_bytes, generator)
             SELECT encode(sha256(convert_to('seed-' || g, 'UTF8')), 'hex'),
                    'https://cdn.example.com/memoji-images/2025/01/seed-' || g || '.png',
                    '{\"model\":\"gpt-image-1\",\"seed\":true}'::jsonb,
                    0.042,
                    CASE WHEN g % 50 = 0 THEN 150 ELSE g % 10 END,
                    now() - (g % 400) * interval '1 day',
                    now() - (g % 400) * interval '1 day',
                    now() - (g % 400) * interval '1 day',
                    false, 1500000, 'openai'
               FROM generate_series($1::bigint, $2::bigint - 1) AS g",
        )
        .bind(from)
        .bind(to)
        .execute(db)
        .await?;
        eprintln!(
            "  seeded {to} rows ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        from = to;
    }
    sqlx::query("VACUUM ANALYZE memoji_cache")
        .execute(db)
        .await?;
    Ok(started.elapsed())
}

/// Rows in the table and its size on disk with indexes, in MiB.
pub async fn table_size(db: &PgPool) -> anyhow::Result<(i64, f64)> {
    let (rows, bytes): (i64, i64) = sqlx::query_as(
        "SELECT (SELECT count(*) FROM memoji_cache), pg_total_relation_size('memoji_cache')",
    )
    .fetch_one(db)
    .await?;
    Ok((rows, bytes as f64 / (1024.0 * 1024.0)))
}

/// Times one statistics computation over the whole cache.
///
/// HOOK(stats): replace the query with the real one after merging the stats branch, e.g.
/// `memoji_worker::db::stats::snapshot(db).await?` (whatever `GET /api/cache/stats` calls).
pub async fn stats(db: &PgPool) -> anyhow::Result<Duration> {
    let started = Instant::now();
    let _: (i64, i64, f64, f64, i64, i64) = sqlx::query_as(
        "SELECT count(*),
                COALESCE(sum(usage_count), 0)::bigint,
                COALESCE(avg(usage_count), 0)::float8,
                COALESCE(sum(generation_cost * GREATEST(usage_count - 1, 0)), 0)::float8,
                count(*) FILTER (WHERE archived),
                count(*) FILTER (WHERE created_at > now() - interval '24 hours')
           FROM memoji_cache",
    )
    .fetch_one(db)
    .await?;
    Ok(started.elapsed())
}

/// What a cleanup did.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub deleted: i64,
    pub archived: i64,
    pub bytes_freed: i64,
    pub batches: u64,
    pub elapsed: Duration,
}

/// One full cleanup (CONTRACT.md §7) in bounded batches.
///
/// HOOK(cleanup): replace the body with the real cleanup after merging the cleanup branch, e.g.
/// `memoji_worker::maintenance::cleanup::run(db, store, settings, false).await?`, keeping the
/// timing. Until then: keyset batches over the primary key, deleting old rarely used rows and
/// archiving popular ones, `batch_size` rows per statement (images are not deleted: seed rows
/// have none).
pub async fn cleanup(db: &PgPool, settings: &CleanupSettings) -> anyhow::Result<Cleaned> {
    let started = Instant::now();
    let mut cleaned = Cleaned::default();
    let mut after = uuid::Uuid::nil();
    loop {
        let (last, deleted, bytes, archived): (Option<uuid::Uuid>, i64, i64, i64) = sqlx::query_as(
            "WITH batch AS (
                 SELECT id, created_at, usage_count, archived FROM memoji_cache
                  WHERE id > $1 ORDER BY id LIMIT $2),
             deleted AS (
                 DELETE FROM memoji_cache c USING batch b
                  WHERE c.id = b.id AND b.created_at < now() - make_interval(days => $3)
                    AND COALESCE(b.usage_count, 0) < $4 AND b.archived IS NOT TRUE
                 RETURNING COALESCE(c.image_bytes, 0) AS bytes),
             archived AS (
                 UPDATE memoji_cache c SET archived = true FROM batch b
                  WHERE c.id = b.id AND COALESCE(b.usage_count, 0) > $5
                    AND b.archived IS NOT TRUE
                 RETURNING 1)
             SELECT (SELECT id FROM batch ORDER BY id DESC LIMIT 1),
                    (SELECT count(*) FROM deleted),
                    (SELECT COALESCE(sum(bytes), 0)::bigint FROM deleted),
                    (SELECT count(*) FROM archived)",
        )
        .bind(after)
        .bind(i64::from(settings.batch_size))
        .bind(i32::try_from(settings.max_age_days).unwrap_or(i32::MAX))
        .bind(i32::try_from(settings.min_uses).unwrap_or(i32::MAX))
        .bind(i32::try_from(settings.archive_above_uses).unwrap_or(i32::MAX))
        .fetch_one(db)
        .await?;
        cleaned.batches += 1;
        cleaned.deleted += deleted;
        cleaned.bytes_freed += bytes;
        cleaned.archived += archived;
        match last {
            Some(last) => after = last,
            None => break,
        }
    }
    cleaned.elapsed = started.elapsed();
    Ok(cleaned)
}
