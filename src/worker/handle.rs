//! One job's journey, top to bottom: intake → key → a hit of a new job, answered in a batch
//! (`batch`) — or the one-job path: own the job (`claim::own_job`) → its cache policy
//! (`job::policy`: the job's `cache` object, the user's preferences, the arm, the configuration)
//! → look the key up → on a hit, finish; on a miss, single flight (`claim::lead_or_wait`) and the
//! leader's path (`lead`). An `only_if_cached` job that misses ends as `not_cached` instead; a
//! `bypass` job skips the lookup and single flight and goes straight to the leader's path.
//!
//! Every step that changes state is idempotent per job id, and each outcome is written in one
//! transaction with the job's result, so a job delivered again — after a crash, a lost connection
//! or a publisher's retry — is answered from its record and never charged or generated twice.

use std::time::Duration;

use chrono::Utc;
use sqlx::Acquire;
use tokio::time::Instant;
use uuid::Uuid;

use super::batch::hit_result;
use super::claim::{self, Claim, Conn, Heartbeat, Ownership};
use super::context::Context;
use super::lead;
use super::step::StepError;
use crate::config::CacheMode;
use crate::db::credits;
use crate::db::{DbError, cache, derived, jobs, preferences, variants};
use crate::job::experiment::assign;
use crate::job::{
    ArmLabel, CacheKey, CachePolicy, Intake, Job, JobError, JobResult, Outcome, Pick, Recipient,
    Rejection, experiment, intake, policy, variant,
};

/// What serving a job came to: a result made now, or one recorded earlier and answered again.
enum Served {
    Fresh(JobResult),
    /// From the job table (a redelivery, a publisher's retry, a duplicate that waited for its
    /// twin): counted when it was made, never again.
    Replay(JobResult),
}

/// Turns a delivery's body into its outcome, whose result names the experiment and arm of its
/// user (see [`in_arm`]). Records the job id on the current span.
pub async fn handle(ctx: &Context, body: &[u8], message_id: Option<&str>) -> Outcome {
    in_arm(ctx, journey(ctx, body, message_id).await)
}

/// Names the experiment and arm the outcome's user is in (issue 15) on its result, or on whom a
/// given-up delivery would answer. The one place the job path asks: the arm is a pure function
/// of the settings and the `user_id`, so a replayed result names the arm its first answer did.
fn in_arm(ctx: &Context, outcome: Outcome) -> Outcome {
    let user = match &outcome {
        Outcome::Answer(result)
        | Outcome::Replay(result)
        | Outcome::Reject {
            answer: Some(result),
            ..
        } => &result.user_id,
        Outcome::Retry { job: Some(job), .. } => &job.user_id,
        Outcome::Reject { answer: None, .. } | Outcome::Retry { job: None, .. } => {
            return outcome;
        }
    };
    let Some(arm) = ArmLabel::of(assign(&ctx.settings.experiments, user).as_ref()) else {
        return outcome;
    };
    match outcome {
        Outcome::Answer(result) => Outcome::Answer(result.in_arm(Some(&arm))),
        Outcome::Replay(result) => Outcome::Replay(result.in_arm(Some(&arm))),
        Outcome::Reject { reason, answer } => Outcome::Reject {
            reason,
            answer: answer.map(|result| result.in_arm(Some(&arm))),
        },
        Outcome::Retry { cause, after, job } => Outcome::Retry {
            cause,
            after,
            job: job.map(|job| Recipient {
                arm: Some(arm),
                ..job
            }),
        },
    }
}

async fn journey(ctx: &Context, body: &[u8], message_id: Option<&str>) -> Outcome {
    let started = Instant::now();
    let span = tracing::Span::current();
    match intake(body, message_id, &ctx.models) {
        Err(Rejection { reason, answer }) => {
            let answer = match answer {
                Some((id, user)) => {
                    span.record("job_id", tracing::field::display(id));
                    Some(record_invalid(ctx, JobResult::invalid(id, &user, reason.clone())).await)
                }
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
            let answer = JobResult::invalid(job_id, &user_id, message);
            Outcome::Answer(record_invalid(ctx, answer).await)
        }
        Ok(Intake::Job(mut job)) => {
            if job.derived_id
                && let Err(error) = current_derived_job(ctx, &mut job).await
            {
                return failed_step(ctx, &job, error, started);
            }
            span.record("job_id", tracing::field::display(job.id));
            match serve(ctx, &job, started).await {
                Ok(Served::Fresh(result)) => Outcome::Answer(result),
                Ok(Served::Replay(result)) => Outcome::Replay(result),
                Err(error) => failed_step(ctx, &job, error, started),
            }
        }
    }
}

async fn serve(ctx: &Context, job: &Job, started: Instant) -> Result<Served, StepError> {
    let namespace = job.cache.namespace.as_deref();
    let key = CacheKey::in_namespace(&job.config, ctx.generator.kind(), namespace);
    // The variant by the configuration and the user's arm; the one-job path settles it with the
    // user's preferences (an opt-out) once it has read them.
    let pick = variant::pick(&ctx.settings, &job.user_id, &key);
    let served = serve_key(ctx, job, &key, pick, started).await;
    if let Ok(Served::Fresh(_)) = &served
        && namespace.is_none()
    {
        // One request for the history cache warming reads; a replay was counted when it was made.
        // A namespaced key is not: warming regenerates from the configuration alone.
        ctx.observer.asked(&key, &job.config, ctx.generator.kind());
    }
    served
}

async fn serve_key(
    ctx: &Context,
    job: &Job,
    key: &CacheKey,
    pick: Pick,
    started: Instant,
) -> Result<Served, StepError> {
    // Group commit serves the keys' entries in memoji_cache; a job with variants takes the
    // one-job path, so N = 1 keeps the batched hit path as it is.
    if !job.cache.skips_batch()
        && !pick.is_varied()
        && let Some(result) = ctx.hits.serve(job, key, started).await
    {
        return Ok(Served::Fresh(result));
    }
    // This delivery's identity while it owns the job.
    let owner = Uuid::new_v4();
    let owned = match claim::own_job(ctx, job, key, owner).await? {
        Ownership::Finished(result) => {
            tracing::info!("job seen before; answering with its recorded result");
            return Ok(Served::Replay(*result));
        }
        Ownership::Conflict => {
            // Answered under this user's id only; the other user's job is left untouched.
            // Subscribers match results on user_id and job_id together (README).
            tracing::warn!("job_id already belongs to another user's job; answering invalid_job");
            return Ok(Served::Fresh(JobResult::invalid(
                job.id,
                &job.user_id,
                "job_id already belongs to another user's job",
            )));
        }
        Ownership::Owned { resumed, conn } => Owned {
            owner,
            resumed,
            conn,
        },
    };
    let outcome = work(ctx, job, key, owned, started).await;
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
struct Owned {
    owner: Uuid,
    /// An earlier delivery worked on the job and did not finish it.
    resumed: bool,
    /// The connection the claim was made on, kept for the hit path (an acquire costs a round
    /// trip); `None` after a wait, which never holds one.
    conn: Option<Conn>,
}

/// The owned part of a job's journey: its cache policy, the cache, then single flight and
/// generation — of the job's variant of the key (variant 0, the key's entry, without variants).
async fn work(
    ctx: &Context,
    job: &Job,
    key: &CacheKey,
    mut owned: Owned,
    started: Instant,
) -> Result<JobResult, StepError> {
    // When the delivery arrived: a refresh is served only an entry recorded after that.
    let received = Utc::now()
        - chrono::TimeDelta::from_std(started.elapsed()).unwrap_or(chrono::TimeDelta::zero());
    let policy = cache_policy(ctx, job, &mut owned).await?;
    let fresh = policy.freshness(received);
    // A bypass job's image is its own, never one of the key's variants.
    let pick = match policy.mode {
        CacheMode::Bypass => Pick::SINGLE,
        _ => variant::pick_for(ctx.settings.cache.variants, &policy, &job.user_id, key),
    };
    if matches!(policy.mode, CacheMode::Default | CacheMode::OnlyIfCached) {
        let period = credits::current_period();
        let variant = pick.variant;
        let hit = match owned.conn.as_mut() {
            Some(conn) => {
                variants::hit(&mut **conn, key, variant, &job.user_id, period, &fresh).await?
            }
            None => variants::hit(&ctx.db, key, variant, &job.user_id, period, &fresh).await?,
        };
        if let Some(hit) = hit {
            return finish_hit(ctx, job, key, pick, hit, owned, started).await;
        }
    }
    if policy.mode == CacheMode::OnlyIfCached {
        // Never waits for a generation in flight, never generates: a preview asks what is there.
        return finish_not_cached(ctx, job, key, owned, started).await;
    }
    // A miss waits (for a turn, for another worker) without holding a connection, and may take
    // long: from here on the job's claims are renewed. A hit ends well within a claim's life, so
    // the hit path spawns no renewal task.
    owned.conn = None;
    let (variant, ttl) = (pick.variant, ctx.lease_ttl());
    let _heartbeat = Heartbeat::start(ctx.db.clone(), job, key, variant, owned.owner, ttl);
    if policy.mode == CacheMode::Bypass {
        // Its own image, never the key's entry: no single flight to join.
        return lead::run(ctx, job, key, &policy, pick, owned.owner, started).await;
    }
    match claim::lead_or_wait(ctx, job, key, variant, &fresh).await? {
        Claim::Served(hit) => finish_hit(ctx, job, key, pick, hit, owned, started).await,
        Claim::Leader => lead::run(ctx, job, key, &policy, pick, owned.owner, started).await,
    }
}

/// The job's cache policy: its own controls, its user's stored preferences (one primary-key
/// read, on the connection the claim was made on), its experiment arm and the configuration.
async fn cache_policy(
    ctx: &Context,
    job: &Job,
    owned: &mut Owned,
) -> Result<CachePolicy, StepError> {
    let stored = match owned.conn.as_mut() {
        Some(conn) => preferences::get(&mut **conn, &job.user_id).await?,
        None => preferences::get(&ctx.db, &job.user_id).await?,
    };
    let assignment = experiment::assign(&ctx.settings.experiments, &job.user_id);
    Ok(policy::resolve(
        &job.cache,
        stored.as_ref(),
        assignment,
        &ctx.settings.cache,
    ))
}

/// Answers an `only_if_cached` job that found no entry it may serve: `not_cached`, nothing
/// charged. A resumed job's earlier charge (its delivery ran under another policy) is refunded
/// in the same transaction.
async fn finish_not_cached(
    ctx: &Context,
    job: &Job,
    key: &CacheKey,
    owned: Owned,
    started: Instant,
) -> Result<JobResult, StepError> {
    let mut conn = match owned.conn {
        Some(conn) => conn,
        None => ctx.db.acquire().await.map_err(DbError::from)?,
    };
    let result = JobResult::not_cached(job.id, &job.user_id, key).took(started);
    if owned.resumed {
        let mut tx = conn.begin().await.map_err(DbError::from)?;
        credits::refund(&mut *tx, job.id).await?;
        jobs::finish(&mut *tx, &result, owned.owner).await?;
        tx.commit().await.map_err(DbError::from)?;
    } else {
        jobs::finish(&mut *conn, &result, owned.owner).await?;
    }
    tracing::info!("only_if_cached and not cached; answered not_cached");
    Ok(result)
}

/// Answers an owned job from the cache. A resumed job may have been charged by its earlier
/// delivery as a leader that never finished; hits are free, so that charge is refunded, in the
/// same transaction as the result. Otherwise recording the result is one statement, atomic on its
/// own: no BEGIN and COMMIT round trips.
async fn finish_hit(
    ctx: &Context,
    job: &Job,
    key: &CacheKey,
    pick: Pick,
    hit: cache::Hit,
    owned: Owned,
    started: Instant,
) -> Result<JobResult, StepError> {
    let mut conn = match owned.conn {
        Some(conn) => conn,
        None => ctx.db.acquire().await.map_err(DbError::from)?,
    };
    let used = hit.credits_used.unwrap_or(0);
    let result = hit_result(job.id, &job.user_id, key, hit).with_variant(pick.shown());
    if !owned.resumed {
        let result = result
            .with_credits_remaining(ctx.remaining_after(job.tier, used))
            .took(started);
        jobs::finish(&mut *conn, &result, owned.owner).await?;
        return Ok(result);
    }
    let mut tx = conn.begin().await.map_err(DbError::from)?;
    let refunded = credits::refund(&mut *tx, job.id).await?;
    let result = result
        .with_credits_remaining(ctx.remaining_after(job.tier, used - i64::from(refunded)))
        .took(started);
    jobs::finish(&mut *tx, &result, owned.owner).await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(result)
}

/// A job whose id was derived from its body stands for the job that body stands for now: the
/// same one for a redelivery, a new one once the last is over (`db::derived`).
async fn current_derived_job(ctx: &Context, job: &mut Job) -> Result<(), StepError> {
    let ttl = Duration::from_secs(ctx.settings.worker.derived_id_ttl_secs);
    job.id = derived::current_job(&ctx.db, job.id, ttl).await?;
    Ok(())
}

/// Records an `invalid_job` answer under its job id (see [`jobs::record_answer`]) and returns
/// what to publish: the answer, or the result the id already has. Recording is best effort: the
/// answer goes out even when the database is away.
async fn record_invalid(ctx: &Context, answer: JobResult) -> JobResult {
    match jobs::record_answer(&ctx.db, &answer).await {
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

/// The outcome of a job whose journey stopped short.
fn failed_step(ctx: &Context, job: &Job, error: StepError, started: Instant) -> Outcome {
    let recipient = Some(Recipient {
        job_id: job.id,
        user_id: job.user_id.clone(),
        arm: None,
    });
    match error {
        StepError::Retry { cause, after } => Outcome::Retry {
            cause,
            after,
            job: recipient,
        },
        StepError::Unreachable(cause) => {
            ctx.outage.report();
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
            Outcome::Answer(JobResult::failure(job.id, &job.user_id, None, error).took(started))
        }
    }
}
