//! One job's journey: intake → key → job record → cache → result, and on a miss single flight
//! (`claim`) and the leader's path (`lead`: credits → generate → check → store → record).
//!
//! Every step that changes state is idempotent per job id, and each outcome is written in one
//! transaction with the job's result, so a job delivered again — after a crash, a lost connection
//! or a publisher's retry — is answered from its record and never charged or generated twice.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::{Acquire, PgPool};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::claim::{self, Claim, Conn, Heartbeat};
use super::settle::{Outcome, Recipient};
use crate::config::Settings;
use crate::db::credits;
use crate::db::jobs::{self, Lookup, Seen};
use crate::db::{DbError, cache, derived};
use crate::generate::{ImageGenerator, Pacer};
use crate::job::{
    CacheKey, ErrorCode, Intake, Job, JobError, JobResult, ModelRules, Rejection, Status, intake,
};
use crate::storage::{ImageStore, StoragePath};

/// Everything a job's journey needs; shared by all in-flight jobs.
#[derive(Clone)]
pub struct Context {
    pub db: PgPool,
    pub store: Arc<dyn ImageStore>,
    pub generator: Arc<dyn ImageGenerator>,
    /// Turns for generations: concurrency and per-minute limits.
    pub pacer: Arc<Pacer>,
    pub settings: Arc<Settings>,
    /// Successors of retired models and the default quality: what jobs are checked against.
    pub models: Arc<ModelRules>,
    /// Cancelled on shutdown: jobs still waiting (for a turn, for another worker) are handed back.
    pub stopping: CancellationToken,
    /// Statistics, `job.completed` and job metrics; told once per delivery, in `worker::process`.
    pub observer: Arc<crate::stats::Observer>,
    /// Set when the database is found out of reach: the consume loop pauses until it answers.
    pub outage: Arc<super::outage::Outage>,
}

/// Why a step did not produce a result, typed where it is born: worth another delivery, or never.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// Cannot finish now but may later: the delivery goes back to the queue, after `after` if
    /// the cause knows how long (else a pause growing with the deliveries).
    #[error("{cause}")]
    Retry {
        cause: String,
        after: Option<Duration>,
    },
    /// The database is out of reach: the delivery goes back to the queue, and the worker stops
    /// consuming until the database answers again ([`super::outage`]), so a long outage does not
    /// spend the job's delivery budget.
    #[error("{0}")]
    Unreachable(String),
    /// Will not work however often it is tried (a stored row that cannot be read, a statement
    /// the database refuses): the job is answered with `code` at once.
    #[error("{cause}")]
    Permanent { code: ErrorCode, cause: String },
}

impl StepError {
    pub fn retry(cause: impl Into<String>) -> StepError {
        StepError::Retry {
            cause: cause.into(),
            after: None,
        }
    }
}

impl From<DbError> for StepError {
    fn from(error: DbError) -> StepError {
        if error.is_connectivity() {
            StepError::Unreachable(error.to_string())
        } else if error.retryable() {
            StepError::Retry {
                after: error.retry_after(),
                cause: error.to_string(),
            }
        } else {
            StepError::Permanent {
                code: ErrorCode::Internal,
                cause: error.to_string(),
            }
        }
    }
}

/// What serving a job came to: a result made now, or one recorded earlier and answered again.
enum Served {
    Fresh(JobResult),
    /// From the job table (a redelivery, a publisher's retry, a duplicate that waited for its
    /// twin): counted when it was made, never again.
    Replay(JobResult),
}

/// Turns a delivery's body into its outcome. Records the job id on the current span.
pub async fn handle(ctx: &Context, body: &[u8], message_id: Option<&str>) -> Outcome {
    let started = Instant::now();
    let span = tracing::Span::current();
    match intake(body, message_id, &ctx.models) {
        Err(Rejection { reason, answer }) => {
            if let Some((id, _)) = &answer {
                span.record("job_id", tracing::field::display(id));
            }
            let answer = match answer {
                Some((id, user)) => Some(
                    ctx.invalid(JobResult::invalid(id, &user, reason.clone()))
                        .await,
                ),
                None => None,
            };
            Outcome::Reject { reason, answer }
        }
        Ok(Intake::Invalid {
            job_id,
            user_id,
            message,
        }) => {
            span.record("job_id", tracing::field::display(job_id));
            tracing::info!(%message, "invalid job");
            Outcome::Answer(
                ctx.invalid(JobResult::invalid(job_id, &user_id, message))
                    .await,
            )
        }
        Ok(Intake::Job(mut job)) => {
            if job.derived_id
                && let Err(error) = ctx.current_derived_job(&mut job).await
            {
                return ctx.failed_step(&job, error, started);
            }
            span.record("job_id", tracing::field::display(job.id));
            match serve(ctx, &job, started).await {
                Ok(Served::Fresh(result)) => Outcome::Answer(result),
                Ok(Served::Replay(result)) => Outcome::Replay(result),
                Err(error) => ctx.failed_step(&job, error, started),
            }
        }
    }
}

async fn serve(ctx: &Context, job: &Job, started: Instant) -> Result<Served, StepError> {
    let key = CacheKey::of(&job.config, ctx.generator.kind());
    // This delivery's identity while it owns the job.
    let owner = Uuid::new_v4();
    let (seen, lookup, conn) = claim::own_job(ctx, job, &key, owner).await?;
    let resumed = match seen {
        Seen::Finished(result) => {
            tracing::info!("job seen before; answering with its recorded result");
            return Ok(Served::Replay(*result));
        }
        Seen::Conflict => {
            // Answered under this user's id only; the other user's job is left untouched.
            // Subscribers match results on user_id and job_id together (README).
            tracing::warn!("job_id already belongs to another user's job; answering invalid_job");
            return Ok(Served::Fresh(JobResult::invalid(
                job.id,
                &job.user_id,
                "job_id already belongs to another user's job",
            )));
        }
        Seen::New => false,
        Seen::Unfinished { deliveries } => {
            tracing::info!(
                deliveries,
                "resuming a job an earlier delivery did not finish"
            );
            true
        }
        Seen::Busy => return Err(StepError::retry("the job is busy elsewhere")),
    };
    let owned = Owned { owner, resumed };
    let outcome = work(ctx, job, &key, owned, lookup, conn, started).await;
    if outcome.is_err() {
        // Handing the job back: let its next delivery take over at once rather than wait for
        // this claim to expire. If the database is what failed, the claim simply expires.
        if let Err(error) = jobs::disown(&ctx.db, job.id, owner).await {
            tracing::debug!(%error, "could not release the job; its claim will expire");
        }
    }
    outcome.map(Served::Fresh)
}

/// This delivery's ownership of its job.
#[derive(Debug, Clone, Copy)]
struct Owned {
    owner: Uuid,
    /// An earlier delivery worked on the job and did not finish it.
    resumed: bool,
}

/// The owned part of a job's journey: the cache, then single flight and generation.
async fn work(
    ctx: &Context,
    job: &Job,
    key: &CacheKey,
    owned: Owned,
    lookup: Lookup,
    conn: Option<Conn>,
    started: Instant,
) -> Result<JobResult, StepError> {
    ctx.observer.asked(key, &job.config, ctx.generator.kind());
    let owner = owned.owner;
    let received = Utc::now();
    let hit = match lookup {
        Lookup::Hit(hit) => Some(hit),
        Lookup::Miss => None,
        // Ownership came after a wait: look now.
        Lookup::Skipped if !job.force_refresh => ctx.serve_hit(job, key).await?,
        Lookup::Skipped => None,
    };
    if let Some(hit) = hit {
        return ctx.finish_hit(conn, job, key, hit, owned, started).await;
    }
    // A miss waits (for a turn, for another worker) without holding a connection, and may take
    // long: from here on the job's claims are renewed. A hit ends well within a claim's life, so
    // the hit path spawns no renewal task.
    drop(conn);
    let _heartbeat = Heartbeat::start(ctx.db.clone(), job, key, owner, ctx.lease_ttl());
    match claim::lead_or_wait(ctx, job, key, job.force_refresh.then_some(received)).await? {
        Claim::Served(hit) => ctx.finish_hit(None, job, key, hit, owned, started).await,
        Claim::Leader => ctx.generate(job, key, owner, started).await,
    }
}

impl Context {
    /// A job whose id was derived from its body stands for the job that body stands for now: the
    /// same one for a redelivery, a new one once the last is over (`db::derived`).
    async fn current_derived_job(&self, job: &mut Job) -> Result<(), StepError> {
        let ttl = Duration::from_secs(self.settings.worker.derived_id_ttl_secs);
        job.id = derived::current_job(&self.db, job.id, ttl).await?;
        Ok(())
    }

    /// The outcome of a job whose journey stopped short.
    fn failed_step(&self, job: &Job, error: StepError, started: Instant) -> Outcome {
        let recipient = Some(Recipient {
            job_id: job.id,
            user_id: job.user_id.clone(),
        });
        match error {
            StepError::Retry { cause, after } => Outcome::Retry {
                cause,
                after,
                job: recipient,
            },
            StepError::Unreachable(cause) => {
                self.outage.report();
                Outcome::Retry {
                    cause,
                    after: None,
                    job: recipient,
                }
            }
            StepError::Permanent { code, cause } => {
                tracing::error!(%cause, "the job cannot be completed");
                let error = JobError {
                    code,
                    message: cause,
                    retryable: false,
                };
                let mut result = JobResult::failure(job.id, &job.user_id, None, error);
                result.duration_ms = elapsed_ms(started);
                Outcome::Answer(result)
            }
        }
    }

    /// How long a claim on a job or key lasts without renewal.
    pub(super) fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.settings.worker.lease_secs)
    }

    /// How long a job's first claim lasts: enough for a hit, which takes milliseconds; a miss
    /// extends it to [`Context::lease_ttl`] when its heartbeat starts. A job whose process died
    /// is so taken over in seconds.
    pub(super) fn hit_claim_ttl(&self) -> Duration {
        Duration::from_secs(self.settings.worker.hit_claim_secs).min(self.lease_ttl())
    }

    /// Records an `invalid_job` answer under its job id (see [`jobs::record_answer`]) and returns
    /// what to publish: the answer, or the result the id already has. Recording is best effort: the
    /// answer goes out even when the database is away.
    async fn invalid(&self, answer: JobResult) -> JobResult {
        match jobs::record_answer(&self.db, &answer).await {
            Ok(Some(earlier)) => {
                tracing::info!("job id seen before; answering with its recorded result");
                earlier
            }
            Ok(None) => answer,
            Err(error) => {
                tracing::warn!(%error, "could not record the invalid_job answer; answering anyway");
                answer
            }
        }
    }

    /// Counts a use of the key's entry and returns it; `None` on a miss.
    pub(super) async fn serve_hit(
        &self,
        job: &Job,
        key: &CacheKey,
    ) -> Result<Option<cache::Hit>, DbError> {
        cache::hit(&self.db, key, &job.user_id, credits::current_period()).await
    }

    fn remaining_after(&self, job: &Job, used: i64) -> Option<i64> {
        let credits = &self.settings.credits;
        credits
            .enabled
            .then(|| credits::remaining(credits.allowance(job.tier), used))
            .flatten()
    }

    /// Answers from the cache, on `conn` if the hit path already holds one. A resumed job may have
    /// been charged by its earlier delivery as a leader that never finished; hits are free, so that
    /// charge is refunded, in the same transaction as the result. Otherwise recording the result
    /// is one statement, atomic on its own: no BEGIN and COMMIT round trips.
    async fn finish_hit(
        &self,
        conn: Option<Conn>,
        job: &Job,
        key: &CacheKey,
        hit: cache::Hit,
        owned: Owned,
        started: Instant,
    ) -> Result<JobResult, StepError> {
        let mut conn = match conn {
            Some(conn) => conn,
            None => self.db.acquire().await.map_err(DbError::from)?,
        };
        let used = hit.credits_used.unwrap_or(0);
        if !owned.resumed {
            let result = self.hit_result(job, key, hit.entry, used, started);
            jobs::finish(&mut *conn, &result, owned.owner).await?;
            return Ok(result);
        }
        let mut tx = conn.begin().await.map_err(DbError::from)?;
        let refunded = credits::refund(&mut *tx, job.id).await?;
        let result = self.hit_result(job, key, hit.entry, used - i64::from(refunded), started);
        jobs::finish(&mut *tx, &result, owned.owner).await?;
        tx.commit().await.map_err(DbError::from)?;
        Ok(result)
    }

    fn hit_result(
        &self,
        job: &Job,
        key: &CacheKey,
        entry: cache::Entry,
        used: i64,
        started: Instant,
    ) -> JobResult {
        let storage_path = entry
            .storage_path
            .clone()
            .or_else(|| path_in_url(&entry.image_url));
        JobResult {
            job_id: job.id,
            user_id: job.user_id.clone(),
            status: Status::Succeeded,
            cached: true,
            prompt_hash: Some(key.to_string()),
            image_url: Some(entry.image_url),
            storage_path,
            credits_charged: 0,
            credits_remaining: self.remaining_after(job, used),
            cost_usd: 0.0,
            saved_usd: entry.generation_cost,
            attempts: 1,
            model: entry.model,
            duration_ms: elapsed_ms(started),
            completed_at: Utc::now(),
            error: None,
        }
    }
}

/// The `YYYY/MM/<hash>.png` tail of an image URL, for rows imported without a storage path.
pub(super) fn path_in_url(url: &str) -> Option<String> {
    let parts: Vec<&str> = url.rsplitn(4, '/').collect();
    let tail = format!("{}/{}/{}", parts.get(2)?, parts.get(1)?, parts.first()?);
    StoragePath::parse(&tail).map(|p| p.to_string())
}

pub(super) fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_storage_path_in_an_imported_url() {
        let hash = "57031741670c8d0259dfd2b0809f9923eb2a04bcfc4ac10ce9d998eb376f16fe";
        let url = format!(
            "https://x.supabase.co/storage/v1/object/public/memoji-images/2025/07/{hash}.png"
        );
        assert_eq!(path_in_url(&url), Some(format!("2025/07/{hash}.png")));
        assert_eq!(path_in_url("https://cdn.example.com/avatar.png"), None);
    }
}
