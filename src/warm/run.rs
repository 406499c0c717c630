//! A warming run: candidates in order, through single flight, within the budget and the share of
//! generation slots warming may take, giving way to live jobs.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use lapin::options::QueueDeclareOptions;
use lapin::types::FieldTable;
use sqlx::PgPool;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::AbortOnDropHandle;
use uuid::Uuid;

use super::{Candidate, Done, Line, Options, Planned, Progress, Report, WARM_USER, WarmError};
use crate::broker::Broker;
use crate::config::Settings;
use crate::db::{self, DbError, cache, leases};
use crate::generate::{ImageGenerator, Pacer};
use crate::job::JobId;
use crate::storage::{self, ImageStore, StoragePath};

/// What a run needs: the same database, store and generator a worker uses, and the broker to see
/// whether live jobs are waiting (`None`: never yield to the queue, only to live leases).
#[derive(Clone)]
pub struct Warmer {
    /// The cache's database.
    pub db: PgPool,
    /// Where the images are stored.
    pub store: Arc<dyn ImageStore>,
    /// What generates the images.
    pub generator: Arc<dyn ImageGenerator>,
    /// The worker's settings (`warm.*`, `openai.*`, prices).
    pub settings: Arc<Settings>,
    /// The broker, to see whether live jobs are waiting; `None`: never yield to the queue.
    pub broker: Option<Arc<Broker>>,
}

impl Warmer {
    /// Generations warming may run at once: its share of `openai.max_concurrency`, at least one.
    pub fn slots(&self) -> usize {
        let share = self.settings.warm.max_share.clamp(0.0, 1.0);
        let slots = (self.settings.openai.max_concurrency as f64 * share).floor() as usize;
        slots.max(1)
    }

    /// Jobs ready in the job queue (published, not yet delivered to a worker).
    async fn queued_jobs(&self) -> Result<u32, WarmError> {
        let Some(broker) = &self.broker else {
            return Ok(0);
        };
        let channel = broker.channel().await?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let queue = channel
            .queue_declare(
                self.settings.amqp.job_queue.as_str().into(),
                passive,
                FieldTable::default(),
            )
            .await
            .map_err(crate::broker::BrokerError::from)?;
        let _ = channel.close(200, "".into()).await;
        Ok(queue.message_count())
    }
}

/// Runs `candidates` (in order: the most wanted first) as `options` say, reporting each step to
/// `progress`. Stops early, with a report, when `stop` is cancelled.
pub async fn run(
    warmer: &Warmer,
    candidates: Vec<Candidate>,
    refused: Vec<super::Refused>,
    options: &Options,
    progress: &mut Progress,
    stop: &CancellationToken,
) -> Result<Report, WarmError> {
    let started = Instant::now();
    let started_at = Utc::now();
    let (mut report, todo) = plan(&warmer.db, candidates, refused, options).await?;
    if options.dry_run {
        report.duration_ms = elapsed_ms(started);
        return Ok(report);
    }

    progress.start(todo.len(), report.estimated_usd);
    let slots = warmer.slots();
    let per_minute = (f64::from(warmer.settings.openai.images_per_minute)
        * warmer.settings.warm.max_share.clamp(0.0, 1.0))
    .floor() as u32;
    let pacer = Arc::new(Pacer::new(
        slots,
        per_minute.max(u32::from(warmer.settings.openai.images_per_minute > 0)),
    ));
    let poll = Duration::from_millis(warmer.settings.warm.yield_poll_ms.max(10));
    let mut running: JoinSet<(Candidate, Uuid, Done)> = JoinSet::new();
    let mut holders: Vec<Uuid> = Vec::new();
    // Spend: what is done (real cost) plus what is in flight (estimates).
    let mut spent = 0.0_f64;
    let mut reserved = 0.0_f64;
    let budget = options.budget_usd;
    let mut queue = todo.into_iter();
    let mut next = queue.next();
    let mut yielding = false;
    loop {
        // Collect what finished.
        while let Some(joined) = running.try_join_next() {
            settle(
                joined,
                &mut report,
                &mut spent,
                &mut reserved,
                &mut holders,
                progress,
            );
        }
        let Some(candidate) = next.take() else {
            break;
        };
        if stop.is_cancelled() {
            next = Some(candidate);
            break;
        }
        let over_budget =
            budget.is_some_and(|b| spent + reserved + candidate.estimate_usd > b + f64::EPSILON);
        if over_budget && running.is_empty() {
            // Real costs came in above the estimates: stop before passing the budget.
            report.over_budget += 1 + queue.len();
            break;
        }
        // Over budget with generations running (they may come in cheaper), or every slot taken:
        // wait for one to finish, then look at this candidate again.
        if over_budget || running.len() >= slots {
            next = Some(candidate);
            wait_one(
                &mut running,
                &mut report,
                &mut spent,
                &mut reserved,
                &mut holders,
                progress,
            )
            .await;
            continue;
        }
        // Live jobs first: none waiting in the queue, and room beside the live generations.
        let queued = warmer.queued_jobs().await?;
        let live = db::warm::live_leases(&warmer.db, &holders).await?;
        let room = warmer.settings.openai.max_concurrency as i64 - live - running.len() as i64;
        if queued > 0 || room <= 0 {
            if !yielding {
                report.yielded += 1;
                progress.yielding(queued, live);
                yielding = true;
            }
            next = Some(candidate);
            tokio::select! {
                () = tokio::time::sleep(poll) => {}
                () = stop.cancelled() => {}
                Some(joined) = running.join_next(), if !running.is_empty() => {
                    settle(joined, &mut report, &mut spent, &mut reserved, &mut holders, progress);
                }
            }
            continue;
        }
        yielding = false;
        let holder = Uuid::new_v4();
        holders.push(holder);
        reserved += candidate.estimate_usd;
        let (warmer, pacer) = (warmer.clone(), pacer.clone());
        running.spawn(async move {
            let done = warm_one(&warmer, &pacer, &candidate, JobId(holder)).await;
            (candidate, holder, done)
        });
        next = queue.next();
    }
    while !running.is_empty() {
        wait_one(
            &mut running,
            &mut report,
            &mut spent,
            &mut reserved,
            &mut holders,
            progress,
        )
        .await;
    }
    let unstarted = usize::from(next.is_some()) + queue.len();
    if stop.is_cancelled() && unstarted > 0 {
        tracing::info!(unstarted, "warming stopped before the end of its list");
    }
    report.spent_usd = spent;
    report.duration_ms = elapsed_ms(started);
    progress.finish(&report);
    record_run(&warmer.db, options.source(), &report, None, started_at).await;
    Ok(report)
}

/// What a run will generate, in order: `candidates` not cached now, at most `--max`, as many as
/// their estimates fit the budget; and the report so far (what was considered, cached, refused,
/// left over the budget; for a dry run, the list).
pub(super) async fn plan(
    db: &PgPool,
    candidates: Vec<Candidate>,
    refused: Vec<super::Refused>,
    options: &Options,
) -> Result<(Report, Vec<Candidate>), WarmError> {
    let keys: Vec<String> = candidates.iter().map(|c| c.key.to_string()).collect();
    let cached = db::warm::cached_among(db, &keys).await?;
    let mut report = Report {
        dry_run: options.dry_run,
        considered: candidates.len(),
        refused,
        ..Report::default()
    };
    let mut todo: Vec<Candidate> = Vec::new();
    for candidate in candidates {
        if cached.contains(candidate.key.as_str()) {
            report.already_cached += 1;
        } else {
            todo.push(candidate);
        }
    }
    if let Some(max) = options.max {
        todo.truncate(max);
    }
    // What fits the budget at its estimates, in order.
    if let Some(budget) = options.budget_usd {
        let mut total = 0.0;
        let fits = todo
            .iter()
            .take_while(|c| {
                total += c.estimate_usd;
                total <= budget + f64::EPSILON
            })
            .count();
        report.over_budget = todo.len() - fits;
        todo.truncate(fits);
    }
    report.planned = todo.len();
    report.estimated_usd = todo.iter().map(|c| c.estimate_usd).sum();
    if options.dry_run {
        report.would_generate = todo
            .iter()
            .map(|c| Planned {
                origin: c.origin.clone(),
                key: c.key.to_string(),
                config: c.canonical.clone(),
                estimate_usd: c.estimate_usd,
            })
            .collect();
    }
    Ok((report, todo))
}

/// Adds a finished run to the warming history (`memoji_warm_runs`); a run that had nothing to
/// do is not recorded. A failure is logged: the run itself is done.
pub(super) async fn record_run(
    db: &PgPool,
    source: &str,
    report: &Report,
    batch_id: Option<Uuid>,
    started_at: chrono::DateTime<Utc>,
) {
    if report.dry_run || (report.planned == 0 && report.batch.is_none()) {
        return;
    }
    let count = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
    let run = db::warm::Run {
        source: source.to_owned(),
        mode: report.mode.as_str().to_owned(),
        generated: count(report.generated),
        skipped: count(report.skipped),
        failed: count(report.failed),
        wasted: count(report.dropped),
        spent_usd: report.spent_usd,
        wasted_usd: report.wasted_usd,
        batch_id,
        started_at,
        finished_at: Utc::now(),
    };
    if let Err(error) = db::warm::record_run(db, &run).await {
        tracing::warn!(%error, "could not add the warming run to its history");
    }
}

async fn wait_one(
    running: &mut JoinSet<(Candidate, Uuid, Done)>,
    report: &mut Report,
    spent: &mut f64,
    reserved: &mut f64,
    holders: &mut Vec<Uuid>,
    progress: &mut Progress,
) {
    if let Some(joined) = running.join_next().await {
        settle(joined, report, spent, reserved, holders, progress);
    }
}

/// Books one finished generation.
fn settle(
    joined: Result<(Candidate, Uuid, Done), tokio::task::JoinError>,
    report: &mut Report,
    spent: &mut f64,
    reserved: &mut f64,
    holders: &mut Vec<Uuid>,
    progress: &mut Progress,
) {
    let (candidate, holder, done) = match joined {
        Ok(finished) => finished,
        Err(error) => {
            // A panicked generation: its lease expires (its holder stays listed as ours, so it
            // is not taken for a live job's); count it as failed.
            report.failed += 1;
            tracing::warn!(%error, "a warming generation panicked");
            return;
        }
    };
    *reserved = (*reserved - candidate.estimate_usd).max(0.0);
    // What is left are the holders of the generations still in flight.
    holders.retain(|h| *h != holder);
    match &done {
        Done::Generated { cost_usd } => {
            report.generated += 1;
            *spent += cost_usd;
        }
        Done::Dropped { cost_usd } => {
            report.dropped += 1;
            *spent += cost_usd;
            report.wasted_usd += cost_usd;
        }
        Done::Skipped => report.skipped += 1,
        Done::Failed { .. } => report.failed += 1,
    }
    let line = Line {
        origin: candidate.origin,
        key: candidate.key.to_string(),
        done,
    };
    progress.step(&line, *spent);
    report.lines.push(line);
}

/// Generates one key under its lease, as a live job's leader would, without any credit.
async fn warm_one(warmer: &Warmer, pacer: &Pacer, candidate: &Candidate, holder: JobId) -> Done {
    match try_warm_one(warmer, pacer, candidate, holder).await {
        Ok(done) => done,
        Err(error) => {
            if let Err(release) = leases::release(&warmer.db, &candidate.key, holder).await {
                tracing::debug!(%release, "could not release a warming lease; it will expire");
            }
            Done::Failed {
                message: error.to_string(),
            }
        }
    }
}

#[derive(Debug, thiserror::Error)]
enum OneError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error(transparent)]
    Generate(#[from] crate::generate::GenerateError),
    #[error(transparent)]
    Storage(#[from] storage::StorageError),
}

async fn try_warm_one(
    warmer: &Warmer,
    pacer: &Pacer,
    candidate: &Candidate,
    holder: JobId,
) -> Result<Done, OneError> {
    let db = &warmer.db;
    let key = &candidate.key;
    let ttl = Duration::from_secs(warmer.settings.worker.lease_secs);
    if !leases::claim(db, key, holder, ttl).await? {
        // A live job (or another run) is generating it: it will be cached without us.
        return Ok(Done::Skipped);
    }
    if cache::recorded_at(db, key).await?.is_some() {
        leases::release(db, key, holder).await?;
        return Ok(Done::Skipped);
    }
    let _renewal = renew_lease(db.clone(), key.clone(), holder, ttl);
    let _turn = pacer.turn().await;
    let path = StoragePath::for_key(key, Utc::now());
    // An image an interrupted run stored but did not record is reused, as a job's leader does.
    let earlier = match warmer.store.get(&path).await {
        Ok(Some(png)) if storage::check_png(&png).is_ok() => Some(png),
        _ => None,
    };
    let (png, cost_usd, usage) = match earlier {
        Some(png) => (png, candidate.estimate_usd, None),
        None => {
            let generated = warmer
                .generator
                .generate(&candidate.config, &candidate.plan, WARM_USER)
                .await?;
            storage::check_png(&generated.png)?;
            (generated.png, generated.cost_usd, generated.usage)
        }
    };
    let stored = warmer.store.put(&path, png).await?;
    let entry = cache::NewEntry {
        key,
        image_url: &stored.url,
        storage_path: stored.path.as_str(),
        prompt_config: candidate.canonical.clone(),
        generation_cost: cost_usd,
        image_bytes: i64::try_from(stored.bytes).unwrap_or(i64::MAX),
        generator: warmer.generator.kind(),
        model: warmer.generator.model_name(&candidate.plan),
        usage: usage.and_then(|u| serde_json::to_value(u).ok()),
    };
    let mut tx = db.begin().await.map_err(DbError::from)?;
    let recorded = db::warm::record_warmed(&mut *tx, &entry).await?;
    leases::release(&mut *tx, key, holder).await?;
    tx.commit().await.map_err(DbError::from)?;
    Ok(if recorded {
        tracing::info!(key = %key, cost_usd, "warmed");
        Done::Generated { cost_usd }
    } else {
        tracing::info!(key = %key, cost_usd, "a live job recorded this key first; the warmed copy is dropped");
        Done::Dropped { cost_usd }
    })
}

/// Renews a warming lease until dropped, like a job's heartbeat.
fn renew_lease(
    pool: PgPool,
    key: crate::job::CacheKey,
    holder: JobId,
    ttl: Duration,
) -> AbortOnDropHandle<()> {
    AbortOnDropHandle::new(tokio::spawn(async move {
        let mut every = tokio::time::interval(ttl / 3);
        every.tick().await;
        loop {
            every.tick().await;
            if let Err(error) = leases::renew(&pool, &key, holder, ttl).await {
                tracing::warn!(%error, "could not renew a warming lease");
            }
        }
    }))
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
