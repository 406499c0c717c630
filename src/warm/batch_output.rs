//! One line of a finished batch: its image checked as the live path checks it, stored under a
//! path of its own and recorded — or dropped when someone recorded the key first — and what
//! came of it written to the line's row, so that a line is handled once even across crashes.
//!
//! Single flight holds as for a live warming: the line takes its key's generation lease before
//! it stores anything. A key a live job (or another run) recorded while the batch ran, or is
//! generating right now, is not recorded twice: the batch's copy is dropped (paid, wasted). The
//! object is never put where another image is stored (§5, immutable objects): the key's first
//! free path is used (`<hash>.png`, else `<hash>-<n>.png`), and a dropped copy's object is
//! deleted unless a row points at it.

use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use uuid::Uuid;

use super::{Done, WarmError, Warmer};
use crate::db::warm_batches::{self, Item};
use crate::db::{self, DbError, cache, leases};
use crate::generate::batch::{Answer, BatchClient};
use crate::job::{AvatarConfig, CacheKey, GeneratorKind, JobId, ModelRules, Plan};
use crate::storage::{self, StoragePath};
use crate::worker::lead::retire_image;

/// The most paths tried for one key's image before giving up (`<hash>-1.png` … ).
const MAX_REVISIONS: u32 = 64;

/// Handles one line's answer and records the outcome; returns it with the line's cost.
pub(super) async fn handle(
    warmer: &Warmer,
    client: &BatchClient,
    rules: &ModelRules,
    batch_id: Uuid,
    item: &Item,
    answer: Answer,
) -> Result<(Done, f64), WarmError> {
    let (done, cost) = match answer {
        Answer::Failed(message) => (Done::Failed { message }, 0.0),
        Answer::Image(body) => match rebuild(item, rules) {
            Err(message) => (Done::Failed { message }, 0.0),
            Ok((key, plan)) => match client.image(body, &plan).await {
                Err(error) => (
                    Done::Failed {
                        message: error.to_string(),
                    },
                    0.0,
                ),
                Ok((png, usage, cost)) => match storage::check_png(&png) {
                    Err(error) => (
                        Done::Failed {
                            message: format!("the image is unusable: {error}"),
                        },
                        cost,
                    ),
                    Ok(_) => {
                        let usage = usage.and_then(|u| serde_json::to_value(u).ok());
                        let made = Made {
                            key: &key,
                            plan: &plan,
                            png,
                            usage,
                            cost,
                        };
                        // Recorded together with the entry when it is one.
                        return keep(warmer, batch_id, item, made)
                            .await
                            .map(|done| (done, cost));
                    }
                },
            },
        },
    };
    let message = match &done {
        Done::Failed { message } => Some(message.as_str()),
        _ => None,
    };
    warm_batches::set_outcome(
        &warmer.db,
        batch_id,
        &item.custom_id,
        outcome(&done),
        cost,
        message,
    )
    .await?;
    Ok((done, cost))
}

/// A line that OpenAI never answered (the batch expired, was cancelled or failed).
pub(super) async fn unanswered(
    warmer: &Warmer,
    batch_id: Uuid,
    item: &Item,
    status: &str,
) -> Result<Done, WarmError> {
    let message = format!("no answer: the batch ended {status} before this line was done");
    warm_batches::set_outcome(
        &warmer.db,
        batch_id,
        &item.custom_id,
        "failed",
        0.0,
        Some(&message),
    )
    .await?;
    Ok(Done::Failed { message })
}

/// The word recorded for an outcome.
pub(super) fn outcome(done: &Done) -> &'static str {
    match done {
        Done::Generated { .. } => "generated",
        Done::Dropped { .. } | Done::Skipped => "wasted",
        Done::Failed { .. } => "failed",
    }
}

/// The key and plan a line stands for, made again from its recorded configuration with today's
/// rules; refused if the configuration no longer makes the same key.
fn rebuild(item: &Item, rules: &ModelRules) -> Result<(CacheKey, Plan), String> {
    let config = AvatarConfig::parse(&item.config).map_err(|e| e.to_string())?;
    let plan = config.plan(rules).map_err(|e| e.to_string())?;
    let key = CacheKey::of(&config, GeneratorKind::OpenAi);
    if key.as_str() != item.key {
        return Err(format!(
            "its configuration makes another key today ({key}); not recorded"
        ));
    }
    Ok((key, plan))
}

struct Made<'a> {
    key: &'a CacheKey,
    plan: &'a Plan,
    png: Bytes,
    usage: Option<serde_json::Value>,
    cost: f64,
}

#[derive(Debug, thiserror::Error)]
enum KeepError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
    #[error("no free path for the image: {0} revisions of the key are stored")]
    NoFreePath(u32),
}

/// Stores and records a checked image under the key's lease; the line's outcome is written in
/// the same transaction as the entry.
async fn keep(
    warmer: &Warmer,
    batch_id: Uuid,
    item: &Item,
    made: Made<'_>,
) -> Result<Done, WarmError> {
    let db = &warmer.db;
    let holder = JobId(item.holder);
    let ttl = Duration::from_secs(warmer.settings.worker.lease_secs);
    let dropped = Done::Dropped {
        cost_usd: made.cost,
    };
    let refresh = item.old_image_url.is_some();
    // A new entry: someone recorded the key meanwhile. A refresh: someone is generating it.
    let taken = (!refresh && cache::recorded_at(db, made.key).await?.is_some())
        || !leases::claim(db, made.key, holder, ttl).await?;
    if taken {
        tracing::info!(key = %made.key, "the key was made meanwhile; the batch's copy is dropped");
        let done = dropped;
        warm_batches::set_outcome(db, batch_id, &item.custom_id, "wasted", made.cost, None).await?;
        return Ok(done);
    }
    let kept = store_and_record(warmer, batch_id, item, &made).await;
    if let Err(error) = leases::release(db, made.key, holder).await {
        tracing::debug!(%error, "could not release a batch line's lease; it will expire");
    }
    match kept {
        Ok(true) => Ok(Done::Generated {
            cost_usd: made.cost,
        }),
        Ok(false) => Ok(dropped),
        Err(KeepError::Db(error)) => Err(error.into()),
        Err(error @ (KeepError::Storage(_) | KeepError::NoFreePath(_))) => {
            // Retryable or not, the line is given up: its image is gone with this attempt.
            let done = Done::Failed {
                message: error.to_string(),
            };
            warm_batches::set_outcome(
                db,
                batch_id,
                &item.custom_id,
                "failed",
                made.cost,
                Some(&error.to_string()),
            )
            .await?;
            Ok(done)
        }
    }
}

/// `true` when the entry was recorded (or moved, for a refresh) to the new image.
async fn store_and_record(
    warmer: &Warmer,
    batch_id: Uuid,
    item: &Item,
    made: &Made<'_>,
) -> Result<bool, KeepError> {
    let db = &warmer.db;
    let path = free_path(
        warmer,
        made.key,
        item.old_storage_path.as_deref(),
        &made.png,
    )
    .await?;
    let stored = warmer.store.put(&path, made.png.clone()).await?;
    let entry = cache::NewEntry {
        key: made.key,
        image_url: &stored.url,
        storage_path: stored.path.as_str(),
        prompt_config: item.config.clone(),
        generation_cost: made.cost,
        image_bytes: i64::try_from(stored.bytes).unwrap_or(i64::MAX),
        generator: GeneratorKind::OpenAi,
        model: made.plan.called.name(),
        usage: made.usage.clone(),
    };
    let mut tx = db.begin().await.map_err(DbError::from)?;
    let recorded = match &item.old_image_url {
        None => db::warm::record_warmed(&mut *tx, &entry).await?,
        Some(old_url) => db::warm::move_to_refreshed(&mut *tx, &entry, old_url).await?,
    };
    let word = if recorded { "generated" } else { "wasted" };
    warm_batches::set_outcome(&mut *tx, batch_id, &item.custom_id, word, made.cost, None).await?;
    tx.commit().await.map_err(DbError::from)?;
    if !recorded {
        tracing::info!(key = %made.key, "a live job recorded this key first; the batch's copy is dropped");
        if !cache::path_in_use(db, made.key, stored.path.as_str()).await? {
            let _ = warmer.store.delete(&stored.path).await;
        }
        return Ok(false);
    }
    if let Some(old) = item.old_storage_path.as_deref() {
        retire_image(db, warmer.store.as_ref(), made.key, old, &stored.path).await;
    }
    Ok(true)
}

/// The first path of the key where nothing else is stored: its own bytes there (an earlier
/// attempt at this very line) are fine, other bytes never overwritten.
async fn free_path(
    warmer: &Warmer,
    key: &CacheKey,
    current: Option<&str>,
    png: &Bytes,
) -> Result<StoragePath, KeepError> {
    let now = Utc::now();
    let mut path = match current {
        Some(current) => StoragePath::replacing(key, now, Some(current)),
        None => StoragePath::for_key(key, now),
    };
    for _ in 0..MAX_REVISIONS {
        match warmer.store.get(&path).await? {
            None => return Ok(path),
            Some(there) if there == *png => return Ok(path),
            Some(_) => {
                let next = path.revision_number().saturating_add(1);
                path = StoragePath::revision(key, now, next);
            }
        }
    }
    Err(KeepError::NoFreePath(MAX_REVISIONS))
}
