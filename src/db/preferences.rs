//! `memoji_user_cache_preferences`: a user's stored cache preferences (`job::policy`), read once
//! per job by primary key on the one-job path and joined into the batched hit path's lookup.

use sqlx::PgExecutor;

use super::DbError;
use crate::config::CacheMode;
use crate::job::UserPreferences;

/// A row's fields as stored: `mode` as its name.
#[derive(sqlx::FromRow)]
pub(super) struct PreferenceRow {
    pub(super) max_age_days: Option<i32>,
    pub(super) mode: Option<String>,
    pub(super) variants_opt_out: bool,
}

impl PreferenceRow {
    /// The preferences, or `Corrupt` for a value the table's checks should have refused.
    pub(super) fn preferences(self) -> Result<UserPreferences, DbError> {
        let max_age_days = match self.max_age_days {
            None => None,
            Some(days) => Some(
                u32::try_from(days)
                    .ok()
                    .filter(|d| *d >= 1)
                    .ok_or_else(|| DbError::Corrupt(format!("max_age_days {days}")))?,
            ),
        };
        let mode = match self.mode.as_deref() {
            None => None,
            Some(name) => Some(
                CacheMode::from_name(name)
                    .ok_or_else(|| DbError::Corrupt(format!("cache mode {name:?}")))?,
            ),
        };
        Ok(UserPreferences {
            max_age_days,
            mode,
            variants_opt_out: self.variants_opt_out,
        })
    }
}

/// The user's preferences; `None` when they set none.
pub async fn get(
    executor: impl PgExecutor<'_>,
    user_id: &str,
) -> Result<Option<UserPreferences>, DbError> {
    let row: Option<PreferenceRow> = sqlx::query_as(
        "SELECT max_age_days, mode, variants_opt_out
           FROM memoji_user_cache_preferences WHERE user_id = $1",
    )
    .bind(user_id)
    .fetch_optional(executor)
    .await?;
    row.map(PreferenceRow::preferences).transpose()
}

/// Stores the user's preferences, replacing any earlier ones.
pub async fn set(
    executor: impl PgExecutor<'_>,
    user_id: &str,
    preferences: &UserPreferences,
) -> Result<(), DbError> {
    let max_age_days = preferences
        .max_age_days
        .map(|days| i32::try_from(days).unwrap_or(i32::MAX));
    sqlx::query(
        "INSERT INTO memoji_user_cache_preferences
             (user_id, max_age_days, mode, variants_opt_out, updated_at)
         VALUES ($1, $2, $3, $4, now())
         ON CONFLICT (user_id) DO UPDATE SET
             max_age_days = EXCLUDED.max_age_days, mode = EXCLUDED.mode,
             variants_opt_out = EXCLUDED.variants_opt_out, updated_at = now()",
    )
    .bind(user_id)
    .bind(max_age_days)
    .bind(preferences.mode.map(CacheMode::as_str))
    .bind(preferences.variants_opt_out)
    .execute(executor)
    .await?;
    Ok(())
}

/// Removes the user's preferences; whether they had any.
pub async fn clear(executor: impl PgExecutor<'_>, user_id: &str) -> Result<bool, DbError> {
    let done = sqlx::query("DELETE FROM memoji_user_cache_preferences WHERE user_id = $1")
        .bind(user_id)
        .execute(executor)
        .await?;
    Ok(done.rows_affected() > 0)
}
