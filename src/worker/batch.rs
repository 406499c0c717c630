//! Group commit for hits: deliveries of new jobs whose key is cached are answered in batches, one
//! read and one write (one commit) per batch instead of two commits per job.
//!
//! Batches form by themselves: the batcher takes whatever is waiting when a slot frees (up to
//! `worker.hit_batch_max`), with at most `worker.hit_batches_in_flight` batches at the database at
//! once. An idle worker so answers a lone hit at once — no timer, no added latency — and a busy one
//! gathers the deliveries that arrived while the last batch ran. A slow database makes batches
//! bigger, not more numerous: the waiting deliveries are bounded by the consumer's prefetch.
//!
//! The batcher only ever speeds a job up: any job it cannot answer — a miss, a job id seen before,
//! a duplicate within the batch, an entry that changed between the read and the write, a batch
//! the database refused, an entry the job's cache policy does not serve (too old, warmed and
//! unused for an arm without warming, a user whose mode is refresh or bypass) — goes down the
//! one-job path (`handle`), which decides it as before. The lookup reads each user's cache
//! preferences beside the entry, so the policy costs the batch no statement of its own.
//!
//! Durability: a hit's result is committed before the worker publishes it; a crash between the
//! commit and the ack means a redelivery, which finds the job id known and replays its result.

use std::collections::HashSet;
use std::sync::Arc;

use chrono::Utc;
use sqlx::PgPool;
use tokio::sync::{Semaphore, mpsc, oneshot};
use tokio::time::Instant;
use tracing::Instrument;

use crate::config::Settings;
use crate::db::cache::Hit;
use crate::db::hits::{self, Ask, Found, Served};
use crate::db::{DbError, credits};
use crate::job::{
    CacheKey, CachePolicy, CacheRequest, Image, Job, JobId, JobResult, Tier, experiment, policy,
};
use crate::storage::StoragePath;
use crate::telemetry;

/// A handle on the batcher task; cloned into every job's context. The task ends when the last
/// handle is dropped.
#[derive(Clone)]
pub struct HitBatcher {
    asks: Option<mpsc::Sender<Pending>>,
}

/// One delivery waiting for its batch.
struct Pending {
    job_id: JobId,
    user_id: String,
    tier: Tier,
    key: CacheKey,
    /// The job's own cache controls, resolved with the user's preferences the lookup reads.
    cache: CacheRequest,
    started: Instant,
    answer: oneshot::Sender<Option<JobResult>>,
}

impl HitBatcher {
    /// Starts the batcher on the current runtime; `max` 0 turns group commit off (every job takes
    /// the one-job path).
    pub fn start(db: PgPool, settings: Arc<Settings>) -> HitBatcher {
        let max = settings.worker.hit_batch_max as usize;
        if max == 0 {
            return HitBatcher { asks: None };
        }
        // Room for every delivery a consumer can hold; a sender waits beyond that.
        let (asks, waiting) = mpsc::channel(usize::from(settings.amqp.prefetch).max(max));
        let in_flight = Arc::new(Semaphore::new(settings.worker.hit_batches_in_flight.max(1)));
        tokio::spawn(
            gather(waiting, db, settings, max, in_flight)
                .instrument(crate::telemetry::task("hit batcher")),
        );
        HitBatcher { asks: Some(asks) }
    }

    /// Answers `job` from the cache in the next batch: its result, recorded; `None` sends the job
    /// down the one-job path.
    #[tracing::instrument(name = "cache lookup", level = "debug", skip_all)]
    pub async fn serve(&self, job: &Job, key: &CacheKey, started: Instant) -> Option<JobResult> {
        let asks = self.asks.as_ref()?;
        let (answer, answered) = oneshot::channel();
        let pending = Pending {
            job_id: job.id,
            user_id: job.user_id.clone(),
            tier: job.tier,
            key: key.clone(),
            cache: job.cache.clone(),
            started,
            answer,
        };
        asks.send(pending).await.ok()?;
        answered.await.ok().flatten()
    }
}

/// Takes what is waiting whenever a batch slot is free.
async fn gather(
    mut waiting: mpsc::Receiver<Pending>,
    db: PgPool,
    settings: Arc<Settings>,
    max: usize,
    in_flight: Arc<Semaphore>,
) {
    while let Some(first) = waiting.recv().await {
        let Ok(slot) = in_flight.clone().acquire_owned().await else {
            return;
        };
        let mut batch = Vec::with_capacity(max);
        batch.push(first);
        while batch.len() < max {
            match waiting.try_recv() {
                Ok(pending) => batch.push(pending),
                Err(_) => break,
            }
        }
        let (db, settings) = (db.clone(), settings.clone());
        tokio::spawn(
            async move {
                answer(&db, &settings, batch).await;
                drop(slot);
            }
            .in_current_span(),
        );
    }
}

/// Serves one batch and answers every delivery in it.
async fn answer(db: &PgPool, settings: &Settings, batch: Vec<Pending>) {
    let size = batch.len();
    let results = match serve_batch(db, settings, &batch).await {
        Ok(results) => {
            telemetry::count_hit_batch(size, false);
            results
        }
        Err(error) => {
            // The one-job path meets the same fault on its own, and reports it with its job.
            tracing::warn!(%error, size, "a batch of hits failed; its jobs take the one-job path");
            telemetry::count_hit_batch(size, true);
            vec![None; size]
        }
    };
    for (pending, result) in batch.into_iter().zip(results) {
        // A delivery that stopped waiting (its task was cancelled) has its result recorded: a
        // redelivery replays it.
        let _ = pending.answer.send(result);
    }
}

/// The recorded result of each delivery of `batch`, in order; `None` for the one-job path.
async fn serve_batch(
    db: &PgPool,
    settings: &Settings,
    batch: &[Pending],
) -> Result<Vec<Option<JobResult>>, DbError> {
    let asks: Vec<Ask> = batch
        .iter()
        .map(|pending| Ask {
            job_id: pending.job_id,
            user_id: &pending.user_id,
            key: &pending.key,
        })
        .collect();
    let found = hits::look_up(db, &asks, credits::current_period()).await?;
    let now = Utc::now();
    // A job id twice in one batch (a publisher's retry racing the original): the first is served
    // here, the second waits for it on the one-job path.
    let mut ids = HashSet::with_capacity(batch.len());
    let results: Vec<Option<(JobResult, String)>> = batch
        .iter()
        .zip(found)
        .map(|(pending, found)| {
            let Found::Hit(hit, preferences) = found else {
                return None;
            };
            // The job's policy (its assignment is the one to label the result with).
            let _policy = serving_policy(settings, pending, &hit, preferences.as_ref(), now)?;
            if !ids.insert(pending.job_id) {
                return None;
            }
            let url = hit.entry.image_url.clone();
            let used = hit.credits_used.unwrap_or(0);
            let remaining = credits::remaining_after(&settings.credits, pending.tier, used);
            let result = hit_result(pending.job_id, &pending.user_id, &pending.key, hit)
                .with_credits_remaining(remaining)
                .took(pending.started);
            Some((result, url))
        })
        .collect();
    let served: Vec<Served> = batch
        .iter()
        .zip(&results)
        .filter_map(|(pending, result)| {
            result.as_ref().map(|(result, url)| Served {
                result,
                key: &pending.key,
                image_url: url,
            })
        })
        .collect();
    let recorded = if served.is_empty() {
        HashSet::new()
    } else {
        hits::record(db, &served).await?
    };
    Ok(results
        .into_iter()
        .map(|result| {
            result
                .map(|(result, _)| result)
                .filter(|result| recorded.contains(&result.job_id))
        })
        .collect())
}

/// The job's cache policy (its own controls, its user's preferences, its arm, the
/// configuration), if it lets the entry serve the job here; `None` sends it down the one-job
/// path.
fn serving_policy(
    settings: &Settings,
    pending: &Pending,
    hit: &Hit,
    preferences: Option<&crate::job::UserPreferences>,
    now: chrono::DateTime<Utc>,
) -> Option<CachePolicy> {
    let assignment = experiment::assign(&settings.experiments, &pending.user_id);
    let policy = policy::resolve(&pending.cache, preferences, assignment, &settings.cache);
    let serves = policy.batchable()
        && policy
            .freshness(now)
            .serves(hit.entry.updated_at, hit.entry.warmed_unused);
    serves.then_some(policy)
}

/// The result of a hit on `hit`'s entry (credits left and duration still to stamp).
pub(super) fn hit_result(job_id: JobId, user_id: &str, key: &CacheKey, hit: Hit) -> JobResult {
    let entry = hit.entry;
    let storage_path = entry
        .storage_path
        .or_else(|| StoragePath::in_url(&entry.image_url).map(|path| path.to_string()));
    let image = Image {
        image_url: entry.image_url,
        storage_path,
        model: entry.model,
    };
    JobResult::hit(job_id, user_id, key, image, entry.generation_cost)
}
