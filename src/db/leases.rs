//! Generation leases: single flight for a cache key's image — per (key, variant) — across every
//! worker process.
//!
//! The job holding a lease is the only one generating that image; others wait for its cache row.
//! A lease names its holder by job id, so the same job redelivered after a crash takes its own
//! lease back at once, and one that is not renewed expires so that another job can take over.
//! Variant 0 (the key's `memoji_cache` row, the only one with `cache.variants` = 1) is the key's
//! lease as it always was; [`claim`], [`renew`] and [`release`] are that lease.
//!
//! A holder about to write a `<hash>-<n>.png` object (a variant's image, or one replacing an
//! image) first reserves that path in its lease ([`reserve_path`]), under a per-key lock, so two
//! generations of the same key never write the same object, and a job that takes an expired
//! lease over finds the path of the image its predecessor may have stored.

use std::collections::HashSet;
use std::time::Duration;

use sqlx::{PgExecutor, PgPool, Postgres, Transaction};

use super::DbError;
use super::jobs::millis;
use crate::job::{CacheKey, JobId, Variant};

/// Takes the key's (variant 0) lease for `holder` if it is free, expired, or already the holder's.
pub async fn claim(
    pool: &PgPool,
    key: &CacheKey,
    holder: JobId,
    ttl: Duration,
) -> Result<bool, DbError> {
    claim_variant(pool, key, Variant::SEED, holder, ttl).await
}

/// Takes the lease of the key's `variant` for `holder` if it is free, expired, or already the
/// holder's. A lease taken over keeps the path its last holder reserved.
pub(crate) async fn claim_variant(
    pool: &PgPool,
    key: &CacheKey,
    variant: Variant,
    holder: JobId,
    ttl: Duration,
) -> Result<bool, DbError> {
    let claimed: Option<(uuid::Uuid,)> = sqlx::query_as(
        "INSERT INTO memoji_generation_leases (prompt_hash, variant, holder, expires_at)
         VALUES ($1, $2, $3, now() + $4 * interval '1 millisecond')
         ON CONFLICT (prompt_hash, variant) DO UPDATE
            SET holder = EXCLUDED.holder, expires_at = EXCLUDED.expires_at
          WHERE memoji_generation_leases.expires_at < now()
             OR memoji_generation_leases.holder = EXCLUDED.holder
         RETURNING holder",
    )
    .bind(key.as_str())
    .bind(variant_number(variant))
    .bind(holder.0)
    .bind(millis(ttl))
    .fetch_optional(pool)
    .await?;
    Ok(claimed.is_some())
}

/// Extends a held (variant 0) lease; `false` if it was lost (expired and taken by another job).
pub(crate) async fn renew(
    pool: &PgPool,
    key: &CacheKey,
    holder: JobId,
    ttl: Duration,
) -> Result<bool, DbError> {
    renew_variant(pool, key, Variant::SEED, holder, ttl).await
}

/// Extends a held lease of the key's `variant`; `false` if it was lost.
pub(crate) async fn renew_variant(
    pool: &PgPool,
    key: &CacheKey,
    variant: Variant,
    holder: JobId,
    ttl: Duration,
) -> Result<bool, DbError> {
    let renewed = sqlx::query(
        "UPDATE memoji_generation_leases SET expires_at = now() + $4 * interval '1 millisecond'
          WHERE prompt_hash = $1 AND variant = $2 AND holder = $3",
    )
    .bind(key.as_str())
    .bind(variant_number(variant))
    .bind(holder.0)
    .bind(millis(ttl))
    .execute(pool)
    .await?;
    Ok(renewed.rows_affected() == 1)
}

/// Gives a (variant 0) lease up; part of the transaction that records the outcome.
pub async fn release(
    executor: impl PgExecutor<'_>,
    key: &CacheKey,
    holder: JobId,
) -> Result<(), DbError> {
    release_variant(executor, key, Variant::SEED, holder).await
}

/// Gives the lease of the key's `variant` up (and the path it reserved).
pub(crate) async fn release_variant(
    executor: impl PgExecutor<'_>,
    key: &CacheKey,
    variant: Variant,
    holder: JobId,
) -> Result<(), DbError> {
    sqlx::query(
        "DELETE FROM memoji_generation_leases
          WHERE prompt_hash = $1 AND variant = $2 AND holder = $3",
    )
    .bind(key.as_str())
    .bind(variant_number(variant))
    .bind(holder.0)
    .execute(executor)
    .await?;
    Ok(())
}

/// The paths of a key's objects, as [`reserve_path`] sees them under the key's lock.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyPaths {
    /// The path this holder's lease reserved already (a redelivery, a lease taken over).
    pub(crate) reserved: Option<String>,
    /// Every path a row of the key points at, or another lease of the key reserved.
    pub taken: HashSet<String>,
}

/// Opens a transaction holding the key's path lock (a transaction-level advisory lock, so the
/// commit releases it) and reads the key's [`KeyPaths`]. Rows and reservations are read in one
/// statement: a generation recording its row releases its reservation in the same commit, so a
/// path is always seen as one or the other. Finish with [`reserve_path`].
pub(crate) async fn paths_of(
    pool: &PgPool,
    key: &CacheKey,
    variant: Variant,
    holder: JobId,
) -> Result<(Transaction<'static, Postgres>, KeyPaths), DbError> {
    let mut tx = pool.begin().await?;
    sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('memoji-paths:' || $1, 0))")
        .bind(key.as_str())
        .execute(&mut *tx)
        .await?;
    let rows: Vec<(Option<String>, bool)> = sqlx::query_as(
        "SELECT storage_path, false FROM memoji_cache WHERE prompt_hash = $1
         UNION ALL
         SELECT storage_path, false FROM memoji_cache_variants WHERE prompt_hash = $1
         UNION ALL
         SELECT storage_path, variant = $2 AND holder = $3
           FROM memoji_generation_leases
          WHERE prompt_hash = $1 AND storage_path IS NOT NULL",
    )
    .bind(key.as_str())
    .bind(variant_number(variant))
    .bind(holder.0)
    .fetch_all(&mut *tx)
    .await?;
    let mut paths = KeyPaths::default();
    for (path, ours) in rows {
        match (path, ours) {
            (Some(path), true) => paths.reserved = Some(path),
            (Some(path), false) => {
                paths.taken.insert(path);
            }
            (None, _) => {}
        }
    }
    Ok((tx, paths))
}

/// Reserves `path` in the holder's lease and commits, releasing the key's path lock. `false` if
/// the holder no longer holds the lease.
pub(crate) async fn reserve_path(
    mut tx: Transaction<'static, Postgres>,
    key: &CacheKey,
    variant: Variant,
    holder: JobId,
    path: &str,
) -> Result<bool, DbError> {
    let reserved = sqlx::query(
        "UPDATE memoji_generation_leases SET storage_path = $4
          WHERE prompt_hash = $1 AND variant = $2 AND holder = $3",
    )
    .bind(key.as_str())
    .bind(variant_number(variant))
    .bind(holder.0)
    .bind(path)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(reserved.rows_affected() == 1)
}

fn variant_number(variant: Variant) -> i32 {
    i32::try_from(variant.number()).unwrap_or(i32::MAX)
}
