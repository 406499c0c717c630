//! Requests per key per day, counted in memory as jobs arrive and added to the request history
//! (`memoji_request_history`, read by cache warming) with the statistics' flush: one statement
//! per flush, never a wait on the job path.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use chrono::{NaiveDate, Utc};
use serde_json::Value;
use sqlx::PgPool;

use crate::db::DbError;
use crate::db::warm::{self, Asked};
use crate::job::{AvatarConfig, CacheKey, GeneratorKind};

/// Counts not yet written, by (day, key), with the key's canonical configuration.
#[derive(Debug, Default)]
pub struct Requests {
    pending: Mutex<HashMap<(NaiveDate, String), (Value, i32)>>,
}

impl Requests {
    /// Counts one request for `key`. The configuration is built only the first time a key is
    /// seen in a flush interval.
    pub fn asked(&self, key: &CacheKey, config: &AvatarConfig, generator: GeneratorKind) {
        let day = Utc::now().date_naive();
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending
            .entry((day, key.as_str().to_owned()))
            .or_insert_with(|| (CacheKey::canonical_value(config, generator), 0))
            .1 += 1;
    }

    /// Writes what was counted; on failure the counts go back for the next flush.
    pub async fn flush(&self, pool: &PgPool) -> Result<(), DbError> {
        let taken =
            std::mem::take(&mut *self.pending.lock().unwrap_or_else(PoisonError::into_inner));
        if taken.is_empty() {
            return Ok(());
        }
        let rows: Vec<Asked> = taken
            .into_iter()
            .map(|((day, key), (config, requests))| Asked {
                day,
                key,
                config,
                requests,
            })
            .collect();
        match warm::add_history(pool, &rows).await {
            Ok(()) => Ok(()),
            Err(error) => {
                let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
                for row in rows {
                    pending
                        .entry((row.day, row.key))
                        .or_insert((row.config, 0))
                        .1 += row.requests;
                }
                Err(error)
            }
        }
    }
}
