//! Wiring: [`App::build`] connects everything from settings; [`App::run_until_stopped`] runs the
//! worker and the admin API until the shutdown token is cancelled.

use std::net::SocketAddr;
use std::sync::Arc;

use anyhow::{Context as _, bail};
use sqlx::PgPool;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::config::{Settings, redacted_url};
use crate::generate::{ImageGenerator, OpenAiGenerator, Pacer, PlaceholderGenerator};
use crate::http::{self, ApiState};
use crate::job::GeneratorKind;
use crate::worker::{self, BrokerHealth, Context};
use crate::{db, storage};

pub struct App {
    ctx: Arc<Context>,
    health: Arc<BrokerHealth>,
    listener: TcpListener,
}

impl App {
    /// Connects the database (creating and migrating it), the storage backend and the generator,
    /// and binds the admin API. The broker is connected by the worker loop, which keeps
    /// reconnecting; a broker that is down at start delays work, it does not stop the process.
    pub async fn build(settings: Settings) -> anyhow::Result<App> {
        let settings = Arc::new(settings);
        let db = connect_database(&settings).await?;
        let store = storage::from_settings(&settings.storage, &settings.secrets.storage)
            .context("storage")?;
        let generator = generator(&settings)?;
        let listener = TcpListener::bind(settings.http.bind)
            .await
            .with_context(|| format!("binding the admin API to {}", settings.http.bind))?;
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
        let ctx = Arc::new(Context {
            db,
            store,
            generator,
            pacer,
            settings,
            stopping,
        });
        Ok(App {
            ctx,
            health: Arc::new(BrokerHealth::default()),
            listener,
        })
    }

    pub fn http_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Runs until `shutdown` is cancelled: stops consuming, gives in-flight jobs the grace period,
    /// stops the admin API, returns.
    pub async fn run_until_stopped(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        let api = ApiState {
            db: self.ctx.db.clone(),
            store: self.ctx.store.clone(),
            broker: self.health.clone(),
            settings: self.ctx.settings.clone(),
        };
        let api_stop = CancellationToken::new();
        let server = tokio::spawn(http::serve(self.listener, api, api_stop.clone()));
        // Jobs waiting for a turn or for another worker see the shutdown through the context.
        let stopping = self.ctx.stopping.clone();
        tokio::spawn(async move {
            shutdown.cancelled().await;
            stopping.cancel();
        });
        tasks.spawn(worker::run(
            self.ctx.clone(),
            self.health.clone(),
            self.ctx.stopping.clone(),
        ));
        tasks.close();
        tasks.wait().await;
        // The API answers until the worker has handed everything back.
        api_stop.cancel();
        server
            .await
            .context("admin API task")?
            .context("admin API")?;
        self.ctx.db.close().await;
        tracing::info!("stopped");
        Ok(())
    }
}

pub async fn connect_database(settings: &Settings) -> anyhow::Result<PgPool> {
    let pool = db::connect(&settings.database)
        .await
        .with_context(|| format!("connecting to {}", redacted_url(&settings.database.url)))?;
    db::migrate(&pool).await?;
    Ok(pool)
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
                OpenAiGenerator::new(&settings.openai, key)
                    .context("building the OpenAI client")?,
            )
        }
    })
}
