//! Filling `memoji_cache` fast, and the statistics and cleanup that the scale runs time.
//!
//! Rows are made by Postgres itself (`INSERT … SELECT … FROM generate_series`), a million per
//! statement, so ten million rows take minutes, not hours.
//!
//! [`stats`] and [`cleanup`] time the shipped code: the statistics read behind
//! `GET /api/cache/stats`, and the worker's `Cleaner`.

use std::time::{Duration, Instant};

use std::sync::Arc;

use memoji_worker::config::CleanupSettings;
use memoji_worker::job::{AvatarConfig, CacheKey, GeneratorKind};
use memoji_worker::maintenance::{Cleaner, Ran};
use memoji_worker::storage::LocalStore;
use sqlx::PgPool;

use crate::load::hot_config;

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
        // A million rows at a time outlasts the worker's statement timeout
        // (`database.statement_timeout_ms`, which this pool has too) once the table is large.
        let mut tx = db.begin().await?;
        sqlx::query("SET LOCAL statement_timeout = 0")
            .execute(&mut *tx)
            .await?;
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
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        eprintln!(
            "  seeded {to} rows ({:.0} s)",
            started.elapsed().as_secs_f64()
        );
        from = to;
    }
    // Then what a table in service has had: a vacuum (hint bits set, visibility map, statistics)
    // and a checkpoint (the seed's dirty pages written), so that the measurements after it see
    // neither as background work ("hits, no cleanup" did: p99 300 ms at 1 M rows right after
    // seeding, 77 ms on the next run).
    let mut conn = db.acquire().await?;
    sqlx::query("SET statement_timeout = 0")
        .execute(&mut *conn)
        .await?;
    sqlx::query("VACUUM ANALYZE memoji_cache")
        .execute(&mut *conn)
        .await?;
    sqlx::query("CHECKPOINT").execute(&mut *conn).await?;
    sqlx::query("RESET statement_timeout")
        .execute(&mut *conn)
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

/// Times one read of the statistics, exactly as `GET /api/cache/stats` does it.
pub async fn stats(db: &PgPool) -> anyhow::Result<Duration> {
    let started = Instant::now();
    memoji_worker::stats::read(db).await?;
    Ok(started.elapsed())
}

/// What a cleanup did.
#[derive(Debug, Default)]
pub struct Cleaned {
    pub deleted: u64,
    pub archived: u64,
    pub elapsed: Duration,
}

/// One full cleanup (CONTRACT.md §7) with the worker's own `Cleaner`, in its bounded batches.
/// Seeded rows have no image files: the local store it deletes through finds nothing to free.
pub async fn cleanup(db: &PgPool, settings: &CleanupSettings) -> anyhow::Result<Cleaned> {
    let images = tempfile_dir()?;
    let store = Arc::new(LocalStore::new(
        images.clone(),
        "http://127.0.0.1/images".to_owned(),
    ));
    let cleaner = Cleaner::new(db.clone(), store, settings.clone(), None);
    let started = Instant::now();
    let ran = cleaner.run(false).await;
    let elapsed = started.elapsed();
    let _ = std::fs::remove_dir_all(&images);
    match ran? {
        Ran::Completed(report) => Ok(Cleaned {
            deleted: report.deleted,
            archived: report.archived,
            elapsed,
        }),
        Ran::Skipped => anyhow::bail!("another cleanup holds the lock"),
    }
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!(
        "memoji-bench-images-{}",
        uuid::Uuid::new_v4().simple()
    ));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
