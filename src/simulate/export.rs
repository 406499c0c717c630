//! `memoji-worker history export`: the request history (`memoji_request_history`, one row per key
//! per UTC day) as a request log ([`super::log`]), with each key's stored image size where its
//! entry exists. The history keeps no users, so the lines have none.

use chrono::{Duration, NaiveDate};
use sqlx::PgPool;

use super::log::Line;
use crate::db::{DbError, warm};

/// The history of the last `days` days up to `today` (inclusive), sorted by day, then key.
pub async fn export(pool: &PgPool, days: u32, today: NaiveDate) -> Result<Vec<Line>, DbError> {
    let since = today - Duration::days(i64::from(days.max(1)) - 1);
    let mut rows = warm::history_since(pool, since).await?;
    rows.retain(|row| row.day <= today && row.requests > 0);
    rows.sort_by(|a, b| (a.day, &a.key).cmp(&(b.day, &b.key)));
    let mut keys: Vec<String> = rows.iter().map(|r| r.key.clone()).collect();
    keys.sort();
    keys.dedup();
    let sizes: std::collections::HashMap<String, i64> = sqlx::query_as(
        "SELECT prompt_hash, image_bytes FROM memoji_cache
          WHERE prompt_hash = ANY($1) AND image_bytes > 0",
    )
    .bind(&keys)
    .fetch_all(pool)
    .await?
    .into_iter()
    .collect();
    Ok(rows
        .into_iter()
        .map(|row| Line {
            day: row.day,
            image_bytes: sizes.get(&row.key).and_then(|b| u64::try_from(*b).ok()),
            key: Some(row.key),
            config: row.config,
            requests: u32::try_from(row.requests).unwrap_or(0),
            users: None,
        })
        .collect())
}
