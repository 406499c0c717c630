//! The request history (`memoji_request_history`): one row per key per UTC day, counts only, with
//! the canonical configuration so a key can be generated again after its entry was cleaned up (or
//! never made because its generation failed). Written by the worker's statistics flush
//! ([`crate::stats::Tally`]), read by `warm --from-history` and the popularity model, pruned by the
//! cleanup after `warm.history_retention_days`.

use chrono::{Duration, Utc};
use serde_json::Value;
use sqlx::PgPool;

use super::predict::{self, Model, Prediction, Row};
use crate::db::{DbError, warm};
use crate::job::{AvatarConfig, CacheKey, GeneratorKind};

/// The `top` configurations most asked for in the last `days` days that are not cached now, most
/// asked first, each tagged `history: N requests`.
pub async fn most_asked(
    pool: &PgPool,
    days: u32,
    top: u32,
) -> Result<Vec<(String, Value)>, DbError> {
    let since = Utc::now().date_naive() - Duration::days(i64::from(days.max(1)) - 1);
    let popular = warm::most_asked_uncached(pool, since, i64::from(top)).await?;
    Ok(popular
        .into_iter()
        .map(|p| (format!("history: {} requests", p.requests), p.config))
        .collect())
}

/// The popularity model's `top` predictions from the last `days` days of history, without the
/// keys cached now (`generator` decides the keys).
pub async fn predicted(
    pool: &PgPool,
    days: u32,
    top: u32,
    generator: GeneratorKind,
) -> Result<Vec<Prediction>, DbError> {
    let today = Utc::now().date_naive();
    let since = today - Duration::days(i64::from(days.max(1)) - 1);
    let rows: Vec<Row> = warm::history_since(pool, since)
        .await?
        .into_iter()
        .map(|asked| Row {
            day: asked.day,
            key: asked.key,
            config: asked.config,
            requests: f64::from(asked.requests),
        })
        .collect();
    let mut seen: Vec<String> = rows.iter().map(|r| r.key.clone()).collect();
    seen.sort();
    seen.dedup();
    let cached_seen = warm::cached_among(pool, &seen).await?;
    let key_of = |config: &Value| {
        AvatarConfig::normalize(config)
            .ok()
            .map(|c| CacheKey::of(&c, generator).to_string())
    };
    let top = top as usize;
    // Unseen combinations may be cached too (warmed earlier): ask for more, then drop those.
    let ranked = predict::predict(
        &Model::default(),
        &rows,
        today,
        top.saturating_mul(2).max(top + 16),
        &|key| cached_seen.contains(key),
        &key_of,
    );
    let keys: Vec<String> = ranked.iter().filter_map(|p| key_of(&p.config)).collect();
    let cached = warm::cached_among(pool, &keys).await?;
    Ok(ranked
        .into_iter()
        .filter(|p| key_of(&p.config).is_some_and(|k| !cached.contains(&k)))
        .take(top)
        .collect())
}
