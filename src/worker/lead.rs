//! The leader's path, for the one job that generates a missing key — or a missing variant of a
//! key (`cache.variants`): wait for a turn, charge a credit, generate, check, store, record — or
//! refund and fail. Each ending is written in one transaction with the job's result, the lease
//! of the (key, variant) released in it.
//!
//! A `bypass` job (`job::policy`) walks the same path without the key's lease: its image gets a
//! path of its own per job and is recorded in `memoji_bypass_images`, never as the key's entry.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use chrono::Utc;
use tokio::time::Instant;
use uuid::Uuid;

use sqlx::PgPool;

use super::context::Context;
use super::step::StepError;
use crate::config::CacheMode;
use crate::db::credits::{self, Account, Charge};
use crate::db::{DbError, bypass, cache, jobs, leases, variants};
use crate::generate::{GenerateError, Generated, pricing};
use crate::job::{
    CacheKey, CachePolicy, ErrorCode, GeneratorKind, Image, Job, JobError, JobId, JobResult, Pick,
    Spent, Variant,
};
use crate::storage::{self, ImageStore, StorageError, StoragePath, Stored};

/// The leader's path: wait for a turn, charge, generate, store, record — or refund and fail.
pub(super) async fn run(
    ctx: &Context,
    job: &Job,
    key: &CacheKey,
    policy: &CachePolicy,
    pick: Pick,
    owner: Uuid,
    started: Instant,
) -> Result<JobResult, StepError> {
    let bypassing = policy.mode == CacheMode::Bypass;
    let variant = pick.variant;
    // Waiting for a turn comes before the charge, and a shutdown ends the wait: the job goes
    // back to the queue uncharged, with the key free for whoever takes it next.
    let _turn = tokio::select! {
        turn = ctx.pacer.turn() => turn,
        () = ctx.stopping.cancelled() => {
            leases::release_variant(&ctx.db, key, variant, job.id).await?;
            return Err(StepError::retry("shutting down before the generation started"));
        }
    };
    let credits = &ctx.settings.credits;
    let remaining = if credits.enabled {
        let account = Account {
            job: job.id,
            user_id: &job.user_id,
            tier: job.tier,
            allowance: job.tier.allowance(credits),
            period: credits::current_period(),
        };
        match credits::charge(&ctx.db, account).await? {
            Charge::Charged { remaining } => remaining,
            Charge::OutOfCredits => {
                let message = format!(
                    "no credits left this month on the {} tier",
                    job.tier.as_str()
                );
                let error = JobError::new(ErrorCode::OutOfCredits, message, false);
                let result = JobResult::failure(job.id, &job.user_id, Some(key), error)
                    .with_credits_remaining(Some(0))
                    .took(started);
                record_failure(ctx, job, key, variant, owner, &result).await?;
                return Ok(result);
            }
        }
    } else {
        None
    };

    let generated_at = Utc::now();
    // A regenerated image never overwrites a served one (CONTRACT.md §5): it gets the next
    // revision's path, and the image it replaces goes once nothing points at it. A job whose
    // policy may have passed over an entry (a refresh, a maximum age, an arm without warming)
    // replaces it. A variant's image gets a path of its own too, `<hash>-<n>.png`.
    let replaced = if policy.replaces() && !bypassing {
        variants::current_image(&ctx.db, key, variant)
            .await?
            .map(|current| {
                current
                    .storage_path
                    .or_else(|| StoragePath::in_url(&current.image_url).map(|p| p.to_string()))
            })
    } else {
        None
    };
    let path = match (&replaced, variant.is_seed()) {
        _ if bypassing => StoragePath::for_bypass(key, generated_at, job.id),
        (None, true) => StoragePath::for_key(key, generated_at),
        (Some(current), _) => {
            let from = StoragePath::replacing(key, generated_at, current.as_deref());
            leader_path(ctx, key, variant, job.id, &from).await?
        }
        (None, false) => {
            let from = StoragePath::revision(key, generated_at, variant.number());
            leader_path(ctx, key, variant, job.id, &from).await?
        }
    };
    let model = ctx.generator.model_name(&job.plan);
    let (generated, stored) = match make_image(ctx, job, &path).await {
        Ok(made) => made,
        Err((error, attempts)) => {
            tracing::warn!(code = error.code.as_str(), message = %error.message, attempts, "generation failed; refunding");
            let result = JobResult::failure(job.id, &job.user_id, Some(key), error)
                .with_attempts(attempts, model)
                .with_credits_remaining(remaining.map(|r| r + 1))
                .took(started);
            record_failure(ctx, job, key, variant, owner, &result).await?;
            return Ok(result);
        }
    };
    let image = Image {
        image_url: stored.url.clone(),
        storage_path: Some(stored.path.to_string()),
        model: Some(model.to_owned()),
    };
    let spent = Spent {
        cost_usd: generated.cost_usd,
        attempts: generated.attempts,
        credits_charged: u32::from(credits.enabled),
    };
    let result = JobResult::generated(job.id, &job.user_id, key, image, spent)
        .with_credits_remaining(remaining)
        .with_variant(pick.shown())
        .took(started);
    let usage = match generated.usage.as_ref().map(serde_json::to_value) {
        Some(Ok(usage)) => Some(usage),
        Some(Err(error)) => {
            tracing::warn!(%error, "could not encode the token usage; the entry is recorded without it");
            None
        }
        None => None,
    };
    let image_bytes = i64::try_from(stored.bytes).unwrap_or(i64::MAX);
    let entry = cache::NewEntry {
        key,
        image_url: &stored.url,
        storage_path: stored.path.as_str(),
        prompt_config: CacheKey::canonical_value_in(
            &job.config,
            ctx.generator.kind(),
            job.cache.namespace.as_deref(),
        ),
        generation_cost: generated.cost_usd,
        image_bytes,
        generator: ctx.generator.kind(),
        model,
        usage,
    };
    let mut tx = ctx.db.begin().await.map_err(DbError::from)?;
    if bypassing {
        bypass::record(&mut *tx, job.id, key, stored.path.as_str(), image_bytes).await?;
    } else {
        variants::record(&mut *tx, variant, &entry).await?;
    }
    leases::release_variant(&mut *tx, key, variant, job.id).await?;
    jobs::finish(&mut *tx, &result, owner).await?;
    tx.commit().await.map_err(DbError::from)?;
    tracing::info!(
        attempts = generated.attempts,
        cost_usd = generated.cost_usd,
        bytes = stored.bytes,
        model,
        "generated and stored"
    );
    if let Some(old) = replaced.flatten() {
        retire_image(&ctx.db, ctx.store.as_ref(), key, &old, &stored.path).await;
    }
    Ok(result)
}

/// Writes a failed result, refunding any charge and freeing the (key, variant) for the next job.
async fn record_failure(
    ctx: &Context,
    job: &Job,
    key: &CacheKey,
    variant: Variant,
    owner: Uuid,
    result: &JobResult,
) -> Result<(), StepError> {
    let mut tx = ctx.db.begin().await.map_err(DbError::from)?;
    credits::refund(&mut *tx, job.id).await?;
    leases::release_variant(&mut *tx, key, variant, job.id).await?;
    jobs::finish(&mut *tx, result, owner).await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(())
}

/// A path of its own for an image of the key's `variant` that is not the key's first
/// (`<hash>-<n>.png`): `from`, or the next number that no row of the key points at and no other
/// generation of the key has reserved — reserved in the holder's lease, so no two generations
/// of a key ever write the same object (CONTRACT.md §5). A lease that reserved a path already
/// (this job's earlier delivery, or the holder it took over from) keeps it, so an image stored
/// but never recorded is found there and reused. `None` if the holder lost the lease.
pub(crate) async fn fresh_path(
    db: &PgPool,
    key: &CacheKey,
    variant: Variant,
    holder: JobId,
    from: &StoragePath,
) -> Result<Option<StoragePath>, DbError> {
    let (tx, paths) = leases::paths_of(db, key, variant, holder).await?;
    if let Some(reserved) = paths.reserved.as_deref().and_then(StoragePath::parse) {
        tx.commit().await?;
        return Ok(Some(reserved));
    }
    let path = from.first_free(|path| paths.taken.contains(path.as_str()));
    let reserved = leases::reserve_path(tx, key, variant, holder, path.as_str()).await?;
    Ok(reserved.then_some(path))
}

/// [`fresh_path`] for the leader, which gives the job back if it lost its lease.
async fn leader_path(
    ctx: &Context,
    key: &CacheKey,
    variant: Variant,
    holder: JobId,
    from: &StoragePath,
) -> Result<StoragePath, StepError> {
    fresh_path(&ctx.db, key, variant, holder, from)
        .await?
        .ok_or_else(|| StepError::retry("lost the generation lease before storing the image"))
}

/// Deletes the image a refreshed entry served before (`old`, a path), once no row of `key`
/// points at it; a failure leaves an orphan object (logged), never a row without its image.
/// Whether it was deleted.
pub(crate) async fn retire_image(
    db: &PgPool,
    store: &dyn ImageStore,
    key: &CacheKey,
    old: &str,
    new: &StoragePath,
) -> bool {
    let Some(old_path) = StoragePath::parse(old).filter(|p| p != new) else {
        return false;
    };
    match cache::path_in_use(db, key, old_path.as_str()).await {
        Ok(false) => match store.delete(&old_path).await {
            Ok(_) => {
                tracing::info!(path = %old_path, "deleted the image the refresh replaced");
                true
            }
            Err(error) => {
                tracing::warn!(path = %old_path, %error, "could not delete the replaced image; it stays as an orphan");
                false
            }
        },
        Ok(true) => false,
        Err(error) => {
            tracing::warn!(path = %old_path, %error, "could not check the replaced image; it stays");
            false
        }
    }
}

/// Generates, checks and stores the image at `path`. Errors carry the attempts the generator
/// made.
async fn make_image(
    ctx: &Context,
    job: &Job,
    path: &StoragePath,
) -> Result<(Generated, Stored), (JobError, u32)> {
    if let Some(earlier) = stored_earlier(ctx, job, path)
        .await
        .map_err(|e| (storage_error(e), 0))?
    {
        return Ok(earlier);
    }
    let generated = ctx
        .generator
        .generate(&job.config, &job.plan, &job.user_id)
        .await
        .map_err(|e| {
            let attempts = e.attempts();
            (generation_error(e), attempts)
        })?;
    let attempts = generated.attempts;
    storage::check_png(&generated.png).map_err(|e| (storage_error(e), attempts))?;
    let stored = put_with_retries(ctx.store.as_ref(), path, generated.png.clone())
        .await
        .map_err(|e| (storage_error(e), attempts))?;
    Ok((generated, stored))
}

/// The image an earlier attempt at this miss generated and stored but could not record (the
/// database failed, the process died): using it saves paying for the same image twice. For a
/// `force_refresh` the path is the new revision's, which no entry has served, so what is there
/// is a fresh image too (and a bypass job's path is its own). Any doubt (a read error, a bad PNG) means generating — but a refusal
/// (a key refused, a bucket missing) fails the job before it pays for an image that the
/// upload would meet the same refusal with.
async fn stored_earlier(
    ctx: &Context,
    job: &Job,
    path: &StoragePath,
) -> Result<Option<(Generated, Stored)>, StorageError> {
    let png = match ctx.store.get(path).await {
        Ok(Some(png)) => png,
        Err(refused @ StorageError::Refused(_)) => return Err(refused),
        Ok(None) | Err(_) => return Ok(None),
    };
    if storage::check_png(&png).is_err() {
        return Ok(None);
    }
    tracing::info!(%path, "reusing the image an earlier attempt stored");
    let cost_usd = match ctx.generator.kind() {
        GeneratorKind::OpenAi => pricing::list_price(&ctx.settings.prices, &job.plan),
        GeneratorKind::Placeholder => 0.0,
    };
    let stored = Stored {
        url: ctx.store.url(path),
        path: path.clone(),
        bytes: png.len() as u64,
    };
    Ok(Some((
        Generated {
            png,
            attempts: 1,
            cost_usd,
            usage: None,
        },
        stored,
    )))
}

/// Storage outages are often brief: three tries with backoff before giving up.
#[tracing::instrument(name = "storage upload", level = "debug", skip_all, fields(%path))]
async fn put_with_retries(
    store: &dyn ImageStore,
    path: &StoragePath,
    png: Bytes,
) -> Result<Stored, StorageError> {
    let mut pauses = ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(200))
        .with_max_delay(Duration::from_secs(2))
        .with_jitter()
        .with_max_times(2)
        .build();
    loop {
        match store.put(path, png.clone()).await {
            Err(StorageError::Backend(message)) => match pauses.next() {
                Some(pause) => {
                    tracing::warn!(%message, "storing the image failed; retrying");
                    tokio::time::sleep(pause).await;
                }
                None => return Err(StorageError::Backend(message)),
            },
            other => return other,
        }
    }
}

fn generation_error(error: GenerateError) -> JobError {
    JobError::new(error.code(), error.to_string(), error.retryable())
}

fn storage_error(error: StorageError) -> JobError {
    match error {
        StorageError::Invalid(message) => JobError::new(ErrorCode::ImageInvalid, message, true),
        StorageError::Backend(message) => JobError::new(ErrorCode::StorageFailed, message, true),
        StorageError::Refused(message) => JobError::new(ErrorCode::StorageFailed, message, false),
    }
}
