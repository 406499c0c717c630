//! Wiring: [`App::build`] connects everything from settings; [`App::run_until_stopped`] runs the
//! worker, the admin API, the cleanup schedule, the statistics and the metrics feed until the
//! shutdown token is cancelled. [`cleanup`], [`stats`] and [`report`] are the one-shot commands.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context as _, bail};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Settings, redacted_url};
use crate::generate::lifecycle::{Lifecycle, ModelChecker};
use crate::generate::{ImageGenerator, OpenAiGenerator, Pacer, PlaceholderGenerator};
use crate::http::{self, ApiState};
use crate::job::{GeneratorKind, ModelRules};
use crate::maintenance::{self, Cleaner, Ran, Refunder, schedule};
use crate::stats::feed::{self, Feed, Outbox};
use crate::stats::{Observer, Stats, Tally};
use crate::worker::batch::HitBatcher;
use crate::worker::{self, BrokerHealth, Context};
use crate::{db, stats, storage, telemetry};
use tracing::Instrument;

/// How often the Prometheus recorder's histograms are tidied.
const METRICS_UPKEEP: Duration = Duration::from_secs(5);

/// The running worker's parts, connected from settings by [`App::build`].
pub struct App {
    ctx: Arc<Context>,
    health: Arc<BrokerHealth>,
    listener: TcpListener,
    tally: Arc<Tally>,
    feed: Feed,
    outbox: Outbox,
    cleaner: Arc<Cleaner>,
}

impl App {
    /// Connects the database (creating and migrating it), the storage backend and the generator,
    /// and binds the admin API. The broker is connected by the worker loop, which keeps
    /// reconnecting; a broker that is down at start delays work, it does not stop the process.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let models = Arc::new(check_domain(&settings)?);
        let settings = Arc::new(settings);
        telemetry::install_prometheus();
        // What can be refused without touching the database comes first: a missing key or a busy
        // port stops the start before anything is created or migrated.
        let generator = generator(&settings)?;
        let store = storage::from_settings(&settings.storage, &settings.secrets.storage)
            .context("storage")?;
        let listener = TcpListener::bind(settings.http.bind)
            .await
            .with_context(|| {
                format!(
                    "binding the admin API to {} (another process has it? choose another address \
                 with MEMOJI__HTTP__BIND or `bind` in [http])",
                    settings.http.bind
                )
            })?;
        let db = connect_database(&settings).await?;
        tracing::info!(
            broker = %redacted_url(&settings.amqp.url),
            database = %redacted_url(&settings.database.url),
            generator = generator.kind().as_str(),
            storage = ?store,
            admin_api = %settings.http.bind,
            "memoji-worker ready"
        );
        let pacer = Arc::new(Pacer::new(
            settings.openai.max_concurrency,
            settings.openai.images_per_minute,
        ));
        let stopping = CancellationToken::new();
        let (feed, outbox) = feed::channel(settings.stats.feed_capacity);
        let tally = Arc::new(Tally::default());
        let cleaner = Arc::new(Cleaner::new(
            db.clone(),
            store.clone(),
            settings.cleanup.clone(),
            Some(feed.clone()),
        ));
        for (retired, successor) in models.successors.pairs() {
            tracing::debug!(retired, %successor, "retired model served by its successor");
        }
        let hits = HitBatcher::start(db.clone(), settings.clone());
        let ctx = Arc::new(Context {
            hits,
            db,
            store,
            generator,
            pacer,
            models,
            observer: Arc::new(Observer::new(tally.clone(), feed.clone())),
            settings,
            stopping,
            outage: Arc::default(),
        });
        Ok(App {
            ctx,
            health: Arc::new(BrokerHealth::default()),
            listener,
            tally,
            feed,
            outbox,
            cleaner,
        })
    }

    /// The address the admin API listens on (the bound port when `http.bind` asked for port 0).
    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs until `shutdown` is cancelled: stops consuming, gives in-flight jobs the grace period,
    /// stops the cleanup schedule and the admin API, writes the last statistics, lets the metrics
    /// feed send what is queued (briefly), returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let settings = self.ctx.settings.clone();
        let db = self.ctx.db.clone();
        let schedule = schedule::start(self.cleaner.clone(), &settings.cleanup.schedule)
            .await
            .context("starting the cleanup schedule")?;
        let refunder = Refunder::new(db.clone(), settings.refunds.clone());
        schedule
            .add_refunds(Arc::new(refunder))
            .await
            .context("scheduling the refund sweep")?;
        if !settings.warm.schedule.is_empty() {
            let warming = maintenance::warming::ScheduledWarming {
                warmer: crate::warm::Warmer {
                    db: db.clone(),
                    store: self.ctx.store.clone(),
                    generator: self.ctx.generator.clone(),
                    settings: settings.clone(),
                    broker: None,
                },
                rules: (*self.ctx.models).clone(),
                feed: Some(self.feed.clone()),
                batch: batch_client(&settings).ok(),
            };
            schedule
                .add_warming(Arc::new(warming), &settings.warm.schedule)
                .await
                .context("scheduling the warming")?;
        }
        // The metrics feed outlives everything that sends to it, so their last messages go out.
        let feed_stop = CancellationToken::new();
        let publisher = tokio::spawn(
            feed::run(settings.amqp.clone(), self.outbox, feed_stop.clone())
                .instrument(telemetry::task("metrics feed")),
        );
        let background_stop = CancellationToken::new();
        let background = TaskTracker::new();
        background.spawn(
            self.tally
                .clone()
                .run(
                    db.clone(),
                    Duration::from_millis(settings.stats.flush_ms),
                    background_stop.clone(),
                )
                .instrument(telemetry::task("stats flush")),
        );
        background.spawn(
            stats::publish_snapshots(
                self.tally.clone(),
                db.clone(),
                self.feed.clone(),
                Duration::from_secs(settings.stats.interval_secs),
                background_stop.clone(),
            )
            .instrument(telemetry::task("stats snapshots")),
        );
        background.spawn(
            upkeep_metrics(background_stop.clone()).instrument(telemetry::task("metrics upkeep")),
        );
        if let Ok(client) = batch_client(&settings) {
            let sweep = maintenance::warming::BatchSweep {
                warmer: crate::warm::Warmer {
                    db: db.clone(),
                    store: self.ctx.store.clone(),
                    generator: self.ctx.generator.clone(),
                    settings: settings.clone(),
                    broker: None,
                },
                client,
                rules: (*self.ctx.models).clone(),
                feed: Some(self.feed.clone()),
            };
            background.spawn(
                sweep
                    .run_every(
                        Duration::from_millis(settings.warm.batch_poll_ms.max(10)),
                        background_stop.clone(),
                    )
                    .instrument(telemetry::task("warming batch sweep")),
            );
        }
        let lifecycle = Arc::new(Lifecycle::new(settings.openai.shutdown_warning_days));
        if let Some(checker) = model_checker(&settings)? {
            let plan = maintenance::lifecycle::Plan {
                models: self
                    .ctx
                    .models
                    .successors
                    .callable()
                    .iter()
                    .map(|m| m.name().to_owned())
                    .collect(),
                every: Duration::from_secs(settings.openai.lifecycle_check_hours * 3600),
                retry_after: Duration::from_secs(settings.openai.lifecycle_retry_secs),
            };
            background.spawn(
                maintenance::lifecycle::run(
                    checker,
                    plan,
                    lifecycle.clone(),
                    db.clone(),
                    background_stop.clone(),
                )
                .instrument(telemetry::task("model lifecycle")),
            );
        }
        background.close();

        let tasks = TaskTracker::new();
        let api = ApiState {
            db: db.clone(),
            store: self.ctx.store.clone(),
            broker: self.health.clone(),
            settings: settings.clone(),
            cleaner: self.cleaner.clone(),
            lifecycle,
        };
        let api_stop = CancellationToken::new();
        let server = tokio::spawn(
            http::serve(self.listener, api, api_stop.clone())
                .instrument(telemetry::task("admin api")),
        );
        // Jobs waiting for a turn or for another worker see the shutdown through the context.
        let stopping = self.ctx.stopping.clone();
        tokio::spawn(
            async move {
                shutdown.cancelled().await;
                stopping.cancel();
            }
            .instrument(telemetry::task("shutdown relay")),
        );
        tasks.spawn(
            worker::run(
                self.ctx.clone(),
                self.health.clone(),
                self.ctx.stopping.clone(),
            )
            .instrument(telemetry::task("consumer")),
        );
        tasks.close();
        tasks.wait().await;
        schedule.stop().await;
        // The API answers until the worker has handed everything back.
        api_stop.cancel();
        let served = server.await;
        // Last statistics written, then the feed drains what is queued.
        background_stop.cancel();
        background.wait().await;
        feed_stop.cancel();
        let _ = publisher.await;
        served.context("admin API task")?.context("admin API")?;
        db.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Connects (creating the database if allowed) and migrates. A database that is out of reach at
/// start — a replica starting before Postgres, a failover — is waited for with backoff for up to
/// `database.connect_retry_secs`; any other failure (bad credentials, a broken migration) stops at
/// once.
pub async fn connect_database(settings: &Settings) -> anyhow::Result<PgPool> {
    let give_up =
        tokio::time::Instant::now() + Duration::from_secs(settings.database.connect_retry_secs);
    let mut pauses = backon::BackoffBuilder::build(
        backon::ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(250))
            .with_max_delay(Duration::from_secs(5))
            .with_jitter()
            .without_max_times(),
    );
    let url = redacted_url(&settings.database.url);
    let mut attempt = 0u32;
    loop {
        attempt += 1;
        let connected = async {
            let pool = db::connect(&settings.database).await?;
            db::migrate(&pool).await?;
            Ok::<_, db::DbError>(pool)
        };
        match connected.await {
            Ok(pool) => return Ok(pool),
            Err(error) if error.is_connectivity() && tokio::time::Instant::now() < give_up => {
                let pause = pauses.next().unwrap_or(Duration::from_secs(5));
                let left = give_up.saturating_duration_since(tokio::time::Instant::now());
                tracing::warn!(
                    database = %url,
                    attempt,
                    retry_in_ms = pause.as_millis() as u64,
                    gives_up_in_secs = left.as_secs(),
                    error = %telemetry::causes(&error),
                    "database out of reach; retrying for up to database.connect_retry_secs = {}s in all",
                    settings.database.connect_retry_secs,
                );
                tokio::time::sleep(pause).await;
            }
            Err(error) => {
                let tried = if attempt > 1 {
                    format!(" ({attempt} attempts)")
                } else {
                    String::new()
                };
                return Err(error).with_context(|| format!("connecting to {url}{tried}"));
            }
        }
    }
}

/// `memoji-worker cleanup`: one run (or a dry run) under the same lock as the scheduler's, its
/// report published to the metrics exchange like a scheduled one.
pub async fn cleanup(settings: &Settings, dry_run: bool) -> anyhow::Result<Ran> {
    let db = connect_database(settings).await?;
    let store =
        storage::from_settings(&settings.storage, &settings.secrets.storage).context("storage")?;
    let (feed, outbox) = feed::channel(settings.stats.feed_capacity);
    let stop = CancellationToken::new();
    let publisher = tokio::spawn(feed::run(settings.amqp.clone(), outbox, stop.clone()));
    let cleaner = Cleaner::new(db.clone(), store, settings.cleanup.clone(), Some(feed));
    let ran = cleaner.run(dry_run).await;
    drop(cleaner);
    stop.cancel();
    let _ = publisher.await;
    db.close().await;
    Ok(ran?)
}

/// `memoji-worker stats`: the statistics as stored in the database, and the warnings of the last
/// model lifecycle check (CONTRACT.md §11).
pub async fn stats(settings: &Settings) -> anyhow::Result<(Stats, Vec<String>)> {
    let db = connect_database(settings).await?;
    let stats = stats::read(&db).await;
    let models = db::models::load(&db).await;
    db.close().await;
    let today = chrono::Utc::now().date_naive();
    let warnings = models?
        .iter()
        .filter_map(|status| status.warning(today, settings.openai.shutdown_warning_days))
        .collect();
    Ok((stats?, warnings))
}

/// `memoji-worker report`: the analytics of the last `since` (`7d`) beside the period before.
pub async fn report(settings: &Settings, since: &str) -> anyhow::Result<stats::report::Report> {
    let span = stats::analytics::parse_span(since)?;
    let db = connect_database(settings).await?;
    let report = stats::report::build(&db, since, span, chrono::Utc::now()).await;
    db.close().await;
    Ok(report?)
}

async fn upkeep_metrics(stop: CancellationToken) {
    let Some(handle) = telemetry::install_prometheus() else {
        return;
    };
    let mut ticks = tokio::time::interval(METRICS_UPKEEP);
    loop {
        tokio::select! {
            _ = ticks.tick() => handle.run_upkeep(),
            () = stop.cancelled() => return,
        }
    }
}

/// What a `memoji-worker warm` run works with: the worker's database, store and generator, and
/// (unless a dry run) the broker, to give way to jobs waiting in the queue.
pub async fn warmer(settings: &Settings, with_broker: bool) -> anyhow::Result<crate::warm::Warmer> {
    check_domain(settings)?;
    let generator = generator(settings)?;
    let store =
        storage::from_settings(&settings.storage, &settings.secrets.storage).context("storage")?;
    let db = connect_database(settings).await?;
    let broker = if with_broker {
        let broker = crate::broker::Broker::connect(&settings.amqp, "memoji-worker warm")
            .await
            .context("connecting to the broker, to see whether live jobs are waiting")?;
        Some(Arc::new(broker))
    } else {
        None
    };
    Ok(crate::warm::Warmer {
        db,
        store,
        generator,
        settings: Arc::new(settings.clone()),
        broker,
    })
}

/// The OpenAI Batch API client `warm --batch` uses: refused for the placeholder generator (it has
/// no batches) and without an OpenAI key.
pub fn batch_client(settings: &Settings) -> anyhow::Result<crate::generate::batch::BatchClient> {
    if settings.generator.kind != GeneratorKind::OpenAi {
        bail!("--batch needs the openai generator: the placeholder draws images at once");
    }
    let Some(key) = settings.secrets.openai_api_key.clone() else {
        bail!("--batch needs an OpenAI key: set OPENAI_API_KEY");
    };
    crate::generate::batch::BatchClient::new(&settings.openai, &settings.prices, key)
        .context("building the OpenAI Batch API client")
}

/// The settings' domain rules, each checked by the module it belongs to, before anything starts:
/// the cleanup's cron schedule, the price table (every model the worker may call), the model
/// successors and the response cap. Returns the model rules jobs are checked against.
pub fn check_domain(settings: &Settings) -> anyhow::Result<ModelRules> {
    schedule::parse(&settings.cleanup.schedule)
        .map_err(|e| anyhow::anyhow!("cleanup.schedule: {e}"))?;
    if !settings.warm.schedule.is_empty() {
        schedule::parse(&settings.warm.schedule)
            .map_err(|e| anyhow::anyhow!("warm.schedule: {e}"))?;
    }
    if settings.warm.batch && !settings.warm.schedule.is_empty() {
        batch_client(settings).context("warm.batch")?;
    }
    if !["history", "predict"].contains(&settings.warm.source.as_str()) {
        bail!("warm.source must be \"history\" or \"predict\"");
    }
    crate::generate::pricing::check(&settings.prices).map_err(|e| anyhow::anyhow!(e))?;
    if settings.openai.max_response_bytes < storage::MAX_IMAGE_BYTES {
        bail!("openai.max_response_bytes must be at least the largest image stored (5 MiB)");
    }
    ModelRules::new(
        &settings.openai.successors,
        &settings.openai.default_quality,
    )
    .map_err(|e| anyhow::anyhow!(e))
}

/// The lifecycle checker, where the worker calls OpenAI (not for the placeholder generator).
fn model_checker(settings: &Settings) -> anyhow::Result<Option<ModelChecker>> {
    match (&settings.generator.kind, &settings.secrets.openai_api_key) {
        (GeneratorKind::OpenAi, Some(key)) => Ok(Some(
            ModelChecker::new(&settings.openai.base_url, key.clone())
                .context("building the OpenAI client")?,
        )),
        _ => Ok(None),
    }
}

/// The configured generator.
fn generator(settings: &Settings) -> anyhow::Result<Arc<dyn ImageGenerator>> {
    Ok(match settings.generator.kind {
        GeneratorKind::Placeholder => Arc::new(PlaceholderGenerator),
        GeneratorKind::OpenAi => {
            let Some(key) = settings.secrets.openai_api_key.clone() else {
                bail!(
                    "no OpenAI key: set OPENAI_API_KEY, or run `memoji-worker run --generator placeholder` \
                     to try the system with the offline generator"
                );
            };
            Arc::new(
                OpenAiGenerator::new(&settings.openai, &settings.prices, key)
                    .context("building the OpenAI client")?,
            )
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(tweak: impl FnOnce(&mut Settings)) -> String {
        let mut settings = Settings::defaults().unwrap();
        tweak(&mut settings);
        check_domain(&settings).unwrap_err().to_string()
    }

    #[test]
    fn the_defaults_pass_the_domain_rules() {
        let rules = check_domain(&Settings::defaults().unwrap()).unwrap();
        assert_eq!(rules.default_quality, None);
    }

    #[test]
    fn a_bad_schedule_price_table_successor_or_cap_stops_the_start() {
        let error = refusal(|s| s.cleanup.schedule = "0 3 * * *".to_owned());
        assert!(error.contains("cleanup.schedule"), "{error}");
        let error = refusal(|s| {
            s.prices.per_image.remove("gpt_image_2");
        });
        assert!(error.contains("gpt_image_2"), "{error}");
        let error = refusal(|s| {
            s.openai
                .successors
                .insert("dall_e_2".to_owned(), "dall-e-3".to_owned());
        });
        assert!(
            error.contains("dall_e_2") && error.contains("not an active model"),
            "{error}"
        );
        let error = refusal(|s| s.openai.max_response_bytes = 1024);
        assert!(error.contains("max_response_bytes"), "{error}");
    }
}
