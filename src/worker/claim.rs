//! Single flight: of all jobs that miss on the same key, on any number of processes, one
//! generates (the lease holder) and the rest wait for its cache row and are served as hits.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use sqlx::PgPool;
use tokio::time::Instant;
use tokio_util::task::AbortOnDropHandle;

use super::handle::{Context, StepError};
use crate::db::{self, cache};
use crate::job::{CacheKey, Job};

/// What a missing job gets to do.
pub enum Claim {
    /// This job generates the key; the lease is renewed until the guard is dropped.
    Leader(LeaseGuard),
    /// Another job generated it meanwhile.
    Served(cache::Hit),
}

/// Keeps a lease alive while its job generates.
pub struct LeaseGuard {
    _renewal: AbortOnDropHandle<()>,
}

/// Longest pause between two looks while waiting.
const MAX_POLL: Duration = Duration::from_secs(1);

/// Claims the key's lease or waits until its entry exists. `fresh_since`, for `force_refresh`
/// jobs, accepts only an entry recorded after that time.
pub async fn lead_or_wait(
    ctx: &Context,
    job: &Job,
    key: &CacheKey,
    fresh_since: Option<DateTime<Utc>>,
) -> Result<Claim, StepError> {
    let ttl = Duration::from_secs(ctx.settings.worker.lease_secs);
    // A holder that keeps renewing is alive; still, never wait past a full generation budget.
    let give_up = Instant::now() + ctx.settings.openai.total_timeout() + ttl * 2;
    let mut poll = Duration::from_millis(ctx.settings.worker.wait_poll_ms);
    let mut waited = false;
    loop {
        if db::leases::claim(&ctx.db, key, job.id, ttl).await? {
            // The holder before us may have recorded the entry just before releasing.
            if fresh_since.is_none()
                && let Some(hit) = ctx.serve_hit(job, key).await?
            {
                db::leases::release(&ctx.db, key, job.id).await?;
                return Ok(Claim::Served(hit));
            }
            if waited {
                tracing::info!("took over the generation of this key");
            }
            return Ok(Claim::Leader(LeaseGuard {
                _renewal: renew_in_background(ctx.db.clone(), key.clone(), job, ttl),
            }));
        }
        if !waited {
            tracing::info!("another job is generating this key; waiting for it");
            waited = true;
        }
        if Instant::now() >= give_up {
            return Err(StepError::Retry(
                "waited too long for another worker's generation".to_owned(),
            ));
        }
        tokio::time::sleep(poll).await;
        poll = (poll * 2).min(MAX_POLL);
        let recorded = cache::recorded_at(&ctx.db, key).await?;
        if recorded.is_some_and(|at| fresh_since.is_none_or(|since| at >= since))
            && let Some(hit) = ctx.serve_hit(job, key).await?
        {
            return Ok(Claim::Served(hit));
        }
    }
}

fn renew_in_background(
    pool: PgPool,
    key: CacheKey,
    job: &Job,
    ttl: Duration,
) -> AbortOnDropHandle<()> {
    let holder = job.id;
    let key = Arc::new(key);
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut every = tokio::time::interval(ttl / 3);
        every.tick().await;
        loop {
            every.tick().await;
            match db::leases::renew(&pool, &key, holder, ttl).await {
                Ok(true) => {}
                Ok(false) => tracing::warn!(
                    "lost the generation lease; another worker may generate this key too"
                ),
                Err(error) => tracing::warn!(%error, "could not renew the generation lease"),
            }
        }
    }))
}
