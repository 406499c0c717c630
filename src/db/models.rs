//! `memoji_model_status`: what the last lifecycle check learnt of each model the worker may call
//! (CONTRACT.md §11), for `memoji-worker stats`.

use chrono::{DateTime, NaiveDate, Utc};
use sqlx::PgPool;

use super::DbError;
use crate::generate::lifecycle::{ModelState, ModelStatus};

/// Records each status, replacing the model's previous one.
pub(crate) async fn save(pool: &PgPool, statuses: &[ModelStatus]) -> Result<(), DbError> {
    let mut models = Vec::with_capacity(statuses.len());
    let mut states = Vec::with_capacity(statuses.len());
    let mut dates: Vec<Option<NaiveDate>> = Vec::with_capacity(statuses.len());
    let mut checked = Vec::with_capacity(statuses.len());
    for status in statuses {
        models.push(status.model.clone());
        let (state, date) = match status.state {
            ModelState::Served { shutdown } => ("ok", shutdown),
            ModelState::Unknown => ("unknown", None),
        };
        states.push(state.to_owned());
        dates.push(date);
        checked.push(status.checked_at);
    }
    sqlx::query(
        "INSERT INTO memoji_model_status (model, state, shutdown_date, checked_at)
         SELECT * FROM unnest($1::text[], $2::text[], $3::date[], $4::timestamptz[])
         ON CONFLICT (model) DO UPDATE SET
             state = EXCLUDED.state, shutdown_date = EXCLUDED.shutdown_date,
             checked_at = EXCLUDED.checked_at",
    )
    .bind(&models)
    .bind(&states)
    .bind(&dates)
    .bind(&checked)
    .execute(pool)
    .await?;
    Ok(())
}

/// Every recorded status, by model name.
pub async fn load(pool: &PgPool) -> Result<Vec<ModelStatus>, DbError> {
    let rows: Vec<(String, String, Option<NaiveDate>, DateTime<Utc>)> = sqlx::query_as(
        "SELECT model, state, shutdown_date, checked_at FROM memoji_model_status ORDER BY model",
    )
    .fetch_all(pool)
    .await?;
    Ok(rows
        .into_iter()
        .map(|(model, state, shutdown, checked_at)| ModelStatus {
            model,
            state: if state == "unknown" {
                ModelState::Unknown
            } else {
                ModelState::Served { shutdown }
            },
            checked_at,
        })
        .collect())
}
