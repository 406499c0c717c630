//! [`TestEnv`]: a whole worker (App) against the real RabbitMQ and Postgres, isolated by a
//! database and queue/exchange names of its own, with a local HTTP server answering like OpenAI;
//! and the `Drop` guard that removes all of it, also when the test fails.

use std::collections::HashMap;
use std::path::Path;
use std::time::Duration;

use lapin::options::BasicConsumeOptions;
use lapin::types::FieldTable;
use lapin::{Channel, Consumer};
use memoji_worker::app::App;
use memoji_worker::broker::Broker;
use memoji_worker::config::Settings;
use memoji_worker::job::GeneratorKind;
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::db::drop_database;
use super::process::{LiveWorkers, kill_workers};
use crate::openai::{OpenAiStub, Reply};

pub const RESULT_TIMEOUT: Duration = Duration::from_secs(30);

/// The admin token every test worker is given (a test that wants none removes it).
pub const ADMIN_TOKEN: &str = "test-admin-token";

pub fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "memoji_worker=debug,warn".into()),
        )
        .with_test_writer()
        .try_init();
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Settings for an isolated test: its own database, names and ports.
pub fn isolated_settings(id: &str, openai_base: &str) -> Settings {
    let mut settings = Settings::defaults().unwrap();
    let amqp = &mut settings.amqp;
    if let Ok(url) = std::env::var("AMQP_URL") {
        amqp.url = SecretString::from(url);
    }
    amqp.prefix_names(id);
    amqp.reconnect_min_ms = 50;
    amqp.reconnect_max_ms = 500;
    let server = std::env::var("DATABASE_SERVER")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".into());
    settings.database.url = SecretString::from(format!("{server}/memoji_it_{id}"));
    settings.database.max_connections = 8;
    settings.openai.base_url = format!("{openai_base}/v1");
    settings.openai.backoff_min_ms = 10;
    settings.openai.backoff_max_ms = 50;
    settings.openai.max_attempts = 3;
    settings.secrets.openai_api_key = Some(SecretString::from("sk-test-key"));
    settings.generator.kind = GeneratorKind::OpenAi;
    let port = free_port();
    settings.http.bind = format!("127.0.0.1:{port}").parse().unwrap();
    settings.storage.public_base_url = format!("http://127.0.0.1:{port}/images");
    settings.worker.shutdown_grace_secs = 5;
    settings.secrets.admin_token = Some(SecretString::from(ADMIN_TOKEN));
    // Statistics reach Postgres quickly, so tests poll for them briefly.
    settings.stats.flush_ms = 50;
    settings
}

/// Removes what it created when it goes, also when the test fails: [`TestEnv::cleanup`] does it
/// in order (worker processes killed, the in-process worker stopped, then the queues, exchanges
/// and database removed), and `Drop` does the same for a test that panicked before calling it.
pub struct TestEnv {
    pub id: String,
    pub settings: Settings,
    pub openai: OpenAiStub,
    pub db: PgPool,
    pub broker: Broker,
    pub http: reqwest::Client,
    pub(super) storage: tempfile::TempDir,
    pub(super) results: Consumer,
    pub(super) _results_channel: Channel,
    /// Results consumed but not yet asked for, by job id (duplicates kept).
    pub(super) seen: HashMap<String, Vec<Value>>,
    pub(super) shutdown: CancellationToken,
    pub(super) app: Option<JoinHandle<anyhow::Result<()>>>,
    /// Worker processes started by [`TestEnv::spawn_worker`] that are still unreaped children.
    pub(super) workers: LiveWorkers,
    pub(super) cleaned: bool,
}

/// The test's queues, exchanges and database, removed from a connection of its own.
async fn remove_everything(settings: &Settings) {
    if let Ok(broker) = Broker::connect(&settings.amqp, "test cleanup").await {
        let _ = broker.remove_topology().await;
        broker.close().await;
    }
    drop_database(settings).await;
}

impl Drop for TestEnv {
    fn drop(&mut self) {
        self.shutdown.cancel();
        kill_workers(&self.workers);
        if self.cleaned {
            return;
        }
        // A failed test: clean up on a thread with a runtime of its own (this one may be the
        // test's runtime, unwinding).
        let settings = self.settings.clone();
        let _ = std::thread::spawn(move || {
            let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            runtime.block_on(async {
                let _ = tokio::time::timeout(Duration::from_secs(30), remove_everything(&settings))
                    .await;
            });
        })
        .join();
    }
}

impl TestEnv {
    /// A running worker whose OpenAI answers `replies` in turn.
    pub async fn start(replies: Vec<Reply>) -> TestEnv {
        Self::start_with(replies, |_| {}).await
    }

    pub async fn start_with(replies: Vec<Reply>, tweak: impl FnOnce(&mut Settings)) -> TestEnv {
        Self::set_up(replies, tweak, true).await
    }

    /// Everything but the worker: for tests that run worker processes ([`TestEnv::spawn_worker`]).
    pub async fn without_worker(replies: Vec<Reply>, tweak: impl FnOnce(&mut Settings)) -> TestEnv {
        Self::set_up(replies, tweak, false).await
    }

    async fn set_up(
        replies: Vec<Reply>,
        tweak: impl FnOnce(&mut Settings),
        in_process: bool,
    ) -> TestEnv {
        init_logs();
        let id = format!("t{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
        let openai = OpenAiStub::answering(replies).await;
        let storage = tempfile::tempdir().unwrap();
        let mut settings = isolated_settings(&id, &openai.uri());
        settings.storage.local_dir = storage.path().to_owned();
        tweak(&mut settings);

        let db = memoji_worker::app::connect_database(&settings)
            .await
            .unwrap();
        let shutdown = CancellationToken::new();
        let handle = if in_process {
            let app = App::build(settings.clone()).await.expect("the app builds");
            Some(tokio::spawn(app.run_until_stopped(shutdown.clone())))
        } else {
            None
        };

        let broker = Broker::connect(&settings.amqp, "test").await.unwrap();
        broker.declare().await.unwrap();
        let results_channel = broker.channel().await.unwrap();
        let results = results_channel
            .basic_consume(
                settings.amqp.result_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let env = TestEnv {
            id,
            settings,
            openai,
            db,
            broker,
            http: reqwest::Client::new(),
            storage,
            results,
            _results_channel: results_channel,
            seen: HashMap::new(),
            shutdown,
            app: handle,
            workers: LiveWorkers::default(),
            cleaned: false,
        };
        if in_process {
            env.wait_ready().await;
        }
        env
    }

    pub fn http_base(&self) -> String {
        format!("http://{}", self.settings.http.bind)
    }

    /// The local storage backend's directory.
    pub fn storage_dir(&self) -> &Path {
        self.storage.path()
    }

    async fn wait_ready(&self) {
        wait_ready(&self.http, &self.http_base()).await;
    }

    /// A job body with a fresh id.
    pub fn job(&self, user: &str, config: Value) -> Value {
        json!({"job_id": uuid::Uuid::new_v4().to_string(), "user_id": user, "tier": "monthly_basic", "config": config})
    }

    /// Stops the workers (processes first: a running one would declare the topology again) and
    /// removes everything the test created.
    pub async fn cleanup(mut self) {
        let workers = self.workers.clone();
        let _ = tokio::task::spawn_blocking(move || kill_workers(&workers)).await;
        self.shutdown.cancel();
        if let Some(app) = self.app.take() {
            let _ = tokio::time::timeout(Duration::from_secs(15), app).await;
        }
        let _ = self.broker.remove_topology().await;
        self.broker.close().await;
        self.db.close().await;
        drop_database(&self.settings).await;
        self.cleaned = true;
    }
}

pub(super) async fn wait_ready(http: &reqwest::Client, base: &str) {
    for _ in 0..300 {
        if let Ok(response) = http.get(format!("{base}/readyz")).send().await
            && response.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the worker at {base} never became ready");
}
