//! TestEnv: a whole worker (App) against the real RabbitMQ and Postgres, isolated by a database and
//! queue/exchange names of its own, with a local HTTP server answering like OpenAI.

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Channel, Consumer};
use memoji_worker::app::App;
use memoji_worker::broker::Broker;
use memoji_worker::config::Settings;
use memoji_worker::job::GeneratorKind;
use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};
use sqlx::PgPool;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

pub use crate::openai::{OpenAiStub, Reply, openai_error, openai_ok, png_b64};

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
    _storage: tempfile::TempDir,
    results: Consumer,
    _results_channel: Channel,
    /// Results consumed but not yet asked for, by job id (duplicates kept).
    seen: HashMap<String, Vec<Value>>,
    shutdown: CancellationToken,
    app: Option<JoinHandle<anyhow::Result<()>>>,
    /// Worker processes started by [`TestEnv::spawn_worker`] that are still unreaped children.
    workers: LiveWorkers,
    cleaned: bool,
}

/// Process ids of running worker children. A child stays in the set only while it has not been
/// waited for, so its pid cannot have been reused by another process.
type LiveWorkers = Arc<Mutex<HashSet<u32>>>;

/// SIGKILLs every live worker of `workers` and waits (briefly) until each has exited, so that none
/// can declare the topology again after it was removed.
fn kill_workers(workers: &LiveWorkers) {
    let pids: Vec<u32> = workers
        .lock()
        .map(|mut set| set.drain().collect())
        .unwrap_or_default();
    for pid in &pids {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    for pid in pids {
        for _ in 0..200 {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let exited = status.is_empty()
                || status
                    .lines()
                    .any(|l| l.starts_with("State:") && l.contains('Z'));
            if exited {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
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
        let mut settings = isolated_settings(&id, &openai.server.uri());
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
            _storage: storage,
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
        self._storage.path()
    }

    /// `GET {base}{path}` as JSON, with its status.
    pub async fn get_json(&self, path: &str) -> (u16, Value) {
        let response = self
            .http
            .get(format!("{}{path}", self.http_base()))
            .send()
            .await
            .unwrap();
        let status = response.status().as_u16();
        (status, response.json().await.unwrap())
    }

    /// `POST {base}/api/cache/cleanup`, with the bearer token if given.
    pub async fn post_cleanup(
        &self,
        base: &str,
        dry_run: bool,
        token: Option<&str>,
    ) -> (u16, Value) {
        post_cleanup(&self.http, base, dry_run, token).await
    }

    /// A consumer on this test's metrics queue.
    pub async fn metrics_tap(&self) -> MetricsTap {
        let channel = self.broker.channel().await.unwrap();
        let consumer = channel
            .basic_consume(
                self.settings.amqp.metrics_queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        MetricsTap {
            _channel: channel,
            consumer,
        }
    }

    /// Another worker process (an `App`) on the same database and queues, with its own admin API.
    pub async fn second_app(&self) -> SecondApp {
        let mut settings = self.settings.clone();
        let port = free_port();
        settings.http.bind = format!("127.0.0.1:{port}").parse().unwrap();
        let app = App::build(settings).await.expect("the second app builds");
        let shutdown = CancellationToken::new();
        let handle = tokio::spawn(app.run_until_stopped(shutdown.clone()));
        SecondApp {
            base: format!("http://127.0.0.1:{port}"),
            shutdown,
            handle,
        }
    }

    async fn wait_ready(&self) {
        wait_ready(&self.http, &self.http_base()).await;
    }

    /// Starts a `memoji-worker run` process configured like this environment (own admin port).
    pub async fn spawn_worker(&self) -> WorkerProcess {
        self.spawn_worker_with(|_| {}).await
    }

    /// Like [`TestEnv::spawn_worker`], with settings of its own (e.g. a proxied database URL).
    pub async fn spawn_worker_with(&self, tweak: impl FnOnce(&mut Settings)) -> WorkerProcess {
        let mut settings = self.settings.clone();
        tweak(&mut settings);
        let port = free_port();
        let log_path = self._storage.path().join(format!("worker-{port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_memoji-worker"));
        command
            .arg("run")
            .env_clear()
            .envs(worker_environment(&settings))
            .env("MEMOJI__HTTP__BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "memoji_worker=debug,info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let child = command.spawn().expect("the worker binary starts");
        if let (Some(pid), Ok(mut live)) = (child.id(), self.workers.lock()) {
            live.insert(pid);
        }
        let worker = WorkerProcess {
            child,
            http: format!("http://127.0.0.1:{port}"),
            log_path,
            live: self.workers.clone(),
        };
        wait_ready(&self.http, &worker.http).await;
        worker
    }

    /// Closes this environment's worker connections at the broker, as a broker restart would.
    pub async fn close_worker_connections(&self) -> usize {
        let listing = tokio::process::Command::new("rabbitmqctl")
            .args([
                "list_connections",
                "pid",
                "client_properties",
                "-q",
                "--no-table-headers",
            ])
            .output()
            .await
            .expect("rabbitmqctl runs");
        let marker = format!("on {}\"", self.settings.amqp.job_queue);
        let mut closed = 0;
        for line in String::from_utf8_lossy(&listing.stdout).lines() {
            let Some((pid, properties)) = line.split_once('\t') else {
                continue;
            };
            if properties.contains(&marker) {
                let status = tokio::process::Command::new("rabbitmqctl")
                    .args(["close_connection", pid, "fault test"])
                    .status()
                    .await
                    .unwrap();
                assert!(status.success());
                closed += 1;
            }
        }
        closed
    }

    /// Terminates every Postgres session on this environment's database, as a failover would.
    pub async fn terminate_database_sessions(&self) -> i64 {
        let url = self.settings.database.url.expose_secret().to_owned();
        let (server, name) = url.rsplit_once('/').unwrap();
        let admin = PgPool::connect(&format!("{server}/postgres"))
            .await
            .unwrap();
        let terminated: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
        )
        .bind(name)
        .fetch_one(&admin)
        .await
        .unwrap();
        admin.close().await;
        terminated
    }

    /// How many messages wait in `queue` (a passive declare: the queue must exist).
    pub async fn messages_in(&self, queue: &str) -> u32 {
        let channel = self.broker.channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        channel
            .queue_declare(queue.into(), passive, FieldTable::default())
            .await
            .unwrap()
            .message_count()
    }

    /// A job body with a fresh id.
    pub fn job(&self, user: &str, config: Value) -> Value {
        json!({"job_id": uuid::Uuid::new_v4().to_string(), "user_id": user, "tier": "monthly_basic", "config": config})
    }

    pub async fn publish(&self, job: &Value) {
        self.publish_raw(
            &serde_json::to_vec(job).unwrap(),
            BasicProperties::default(),
        )
        .await;
    }

    pub async fn publish_raw(&self, body: &[u8], properties: BasicProperties) {
        self.broker
            .publish("", &self.settings.amqp.job_queue, body, properties, true)
            .await
            .unwrap();
    }

    /// The next result off the result queue, with its delivery (for properties).
    pub async fn next_delivery(&mut self) -> Delivery {
        let delivery = tokio::time::timeout(RESULT_TIMEOUT, self.results.next())
            .await
            .expect("a result within the timeout")
            .expect("the result consumer is open")
            .expect("a delivery");
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        delivery
    }

    /// The result of `job_id`, waiting for it (results of other jobs are kept for later).
    pub async fn result_of(&mut self, job_id: &str) -> Value {
        loop {
            if let Some(copies) = self.seen.get_mut(job_id)
                && let Some(result) = copies.pop()
            {
                return result;
            }
            self.receive_one().await;
        }
    }

    /// Takes the next result off the queue and keeps it for later questions.
    async fn receive_one(&mut self) {
        let delivery = self.next_delivery().await;
        let result: Value = serde_json::from_slice(&delivery.data).unwrap();
        let id = result["job_id"].as_str().unwrap().to_owned();
        self.seen.entry(id).or_default().push(result);
    }

    /// Waits until `n` more results have arrived (kept for later questions).
    pub async fn await_results(&mut self, n: usize) {
        for _ in 0..n {
            self.receive_one().await;
        }
    }

    /// Publishes a job and waits for its result.
    pub async fn run(&mut self, job: &Value) -> Value {
        self.publish(job).await;
        self.result_of(job["job_id"].as_str().unwrap()).await
    }

    /// Every result (duplicates included) until each of `job_ids` has one, within `limit`.
    pub async fn results_for_all(
        &mut self,
        job_ids: &std::collections::HashSet<String>,
        limit: Duration,
    ) -> HashMap<String, Vec<Value>> {
        let mut all: HashMap<String, Vec<Value>> = HashMap::new();
        for (id, copies) in self.seen.drain() {
            all.entry(id).or_default().extend(copies);
        }
        let deadline = tokio::time::Instant::now() + limit;
        while !job_ids.iter().all(|id| all.contains_key(id)) {
            let missing = job_ids.iter().filter(|id| !all.contains_key(*id)).count();
            let next = tokio::time::timeout_at(deadline, self.results.next())
                .await
                .unwrap_or_else(|_| {
                    panic!("{missing} job(s) still without a result after {limit:?}")
                })
                .expect("the result consumer is open")
                .expect("a delivery");
            next.ack(BasicAckOptions::default()).await.unwrap();
            let result: Value = serde_json::from_slice(&next.data).unwrap();
            let id = result["job_id"].as_str().unwrap().to_owned();
            all.entry(id).or_default().push(result);
        }
        all
    }

    /// Waits until the result queue has nothing more for `quiet`; returns what arrived.
    pub async fn drain(&mut self, quiet: Duration) -> Vec<Value> {
        let mut arrived: Vec<Value> = self.seen.drain().flat_map(|(_, v)| v).collect();
        while let Ok(Some(Ok(delivery))) = tokio::time::timeout(quiet, self.results.next()).await {
            delivery.ack(BasicAckOptions::default()).await.unwrap();
            arrived.push(serde_json::from_slice(&delivery.data).unwrap());
        }
        arrived
    }

    /// Takes one message from a queue of this test, waiting up to the timeout.
    pub async fn take_from(&self, queue: &str) -> Option<Delivery> {
        let channel = self.broker.channel().await.unwrap();
        let mut consumer = channel
            .basic_consume(
                queue.into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .unwrap();
        let delivery = tokio::time::timeout(RESULT_TIMEOUT, consumer.next())
            .await
            .ok()??
            .ok()?;
        delivery.ack(BasicAckOptions::default()).await.unwrap();
        Some(delivery)
    }

    /// A private queue for reply_to tests; it goes with the test's connection.
    pub async fn reply_queue(&self) -> (Channel, String) {
        let channel = self.broker.channel().await.unwrap();
        let name = format!("{}.replies", self.id);
        channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .unwrap();
        (channel, name)
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

async fn wait_ready(http: &reqwest::Client, base: &str) {
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

/// The environment variables that configure a worker process like `settings`.
pub fn worker_environment(settings: &Settings) -> Vec<(String, String)> {
    let amqp = &settings.amqp;
    let openai = &settings.openai;
    let mut vars = vec![
        ("PATH", std::env::var("PATH").unwrap_or_default()),
        ("MEMOJI__AMQP__URL", amqp.url.expose_secret().to_owned()),
        ("MEMOJI__AMQP__PREFETCH", amqp.prefetch.to_string()),
        ("MEMOJI__AMQP__JOB_QUEUE", amqp.job_queue.clone()),
        (
            "MEMOJI__AMQP__RESULT_EXCHANGE",
            amqp.result_exchange.clone(),
        ),
        ("MEMOJI__AMQP__RESULT_QUEUE", amqp.result_queue.clone()),
        (
            "MEMOJI__AMQP__METRICS_EXCHANGE",
            amqp.metrics_exchange.clone(),
        ),
        ("MEMOJI__AMQP__METRICS_QUEUE", amqp.metrics_queue.clone()),
        (
            "MEMOJI__AMQP__DEAD_LETTER_EXCHANGE",
            amqp.dead_letter_exchange.clone(),
        ),
        (
            "MEMOJI__AMQP__DEAD_LETTER_QUEUE",
            amqp.dead_letter_queue.clone(),
        ),
        (
            "MEMOJI__AMQP__DELIVERY_LIMIT",
            amqp.delivery_limit.to_string(),
        ),
        (
            "MEMOJI__AMQP__RECONNECT_MIN_MS",
            amqp.reconnect_min_ms.to_string(),
        ),
        (
            "MEMOJI__AMQP__RECONNECT_MAX_MS",
            amqp.reconnect_max_ms.to_string(),
        ),
        (
            "MEMOJI__DATABASE__URL",
            settings.database.url.expose_secret().to_owned(),
        ),
        (
            "MEMOJI__DATABASE__MAX_CONNECTIONS",
            settings.database.max_connections.to_string(),
        ),
        ("MEMOJI__OPENAI__BASE_URL", openai.base_url.clone()),
        (
            "MEMOJI__OPENAI__MAX_CONCURRENCY",
            openai.max_concurrency.to_string(),
        ),
        (
            "MEMOJI__OPENAI__MAX_ATTEMPTS",
            openai.max_attempts.to_string(),
        ),
        (
            "MEMOJI__OPENAI__BACKOFF_MIN_MS",
            openai.backoff_min_ms.to_string(),
        ),
        (
            "MEMOJI__OPENAI__BACKOFF_MAX_MS",
            openai.backoff_max_ms.to_string(),
        ),
        (
            "MEMOJI__OPENAI__REQUEST_TIMEOUT_SECS",
            openai.request_timeout_secs.to_string(),
        ),
        (
            "MEMOJI__GENERATOR__KIND",
            settings.generator.kind.as_str().to_owned(),
        ),
        (
            "MEMOJI__STORAGE__LOCAL_DIR",
            settings.storage.local_dir.display().to_string(),
        ),
        (
            "MEMOJI__STORAGE__PUBLIC_BASE_URL",
            settings.storage.public_base_url.clone(),
        ),
        (
            "MEMOJI__CREDITS__ENABLED",
            settings.credits.enabled.to_string(),
        ),
        (
            "MEMOJI__WORKER__LEASE_SECS",
            settings.worker.lease_secs.to_string(),
        ),
        (
            "MEMOJI__WORKER__WAIT_POLL_MS",
            settings.worker.wait_poll_ms.to_string(),
        ),
        (
            "MEMOJI__WORKER__SHUTDOWN_GRACE_SECS",
            settings.worker.shutdown_grace_secs.to_string(),
        ),
        (
            "MEMOJI__WORKER__HIT_BATCH_MAX",
            settings.worker.hit_batch_max.to_string(),
        ),
    ];
    if let Some(key) = &settings.secrets.openai_api_key {
        vars.push(("OPENAI_API_KEY", key.expose_secret().to_owned()));
    }
    if !settings.telemetry.otlp_endpoint.is_empty() {
        vars.push((
            "MEMOJI__TELEMETRY__OTLP_ENDPOINT",
            settings.telemetry.otlp_endpoint.clone(),
        ));
        // Spans go out a tenth of a second after they end, not the SDK's five seconds.
        vars.push(("OTEL_BSP_SCHEDULE_DELAY", "100".to_owned()));
    }
    vars.into_iter().map(|(k, v)| (k.to_owned(), v)).collect()
}

/// A `memoji-worker run` child process; killed if dropped.
pub struct WorkerProcess {
    child: tokio::process::Child,
    pub http: String,
    pub log_path: std::path::PathBuf,
    /// Its environment's live workers, which it leaves before it is waited for.
    live: LiveWorkers,
}

impl WorkerProcess {
    /// Peak resident memory of the process so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("the worker is running");
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.leave();
    }
}

impl WorkerProcess {
    /// Leaves the live set: from now on it may be reaped, and its pid reused.
    fn leave(&self) {
        if let (Some(pid), Ok(mut live)) = (self.child.id(), self.live.lock()) {
            live.remove(&pid);
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the worker is running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGKILL: no chance to clean up.
    pub async fn kill(mut self) {
        self.signal("-KILL");
        self.leave();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then waits for the exit; returns the exit status and how long it took.
    pub async fn terminate(mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let started = std::time::Instant::now();
        self.signal("-TERM");
        self.leave();
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the worker did not exit within {limit:?}; log: {}",
                    self.log()
                )
            })
            .unwrap();
        (status, started.elapsed())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

pub async fn post_cleanup(
    http: &reqwest::Client,
    base: &str,
    dry_run: bool,
    token: Option<&str>,
) -> (u16, Value) {
    let mut request = http.post(format!("{base}/api/cache/cleanup?dry_run={dry_run}"));
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

/// A second worker process of a test.
pub struct SecondApp {
    pub base: String,
    shutdown: CancellationToken,
    handle: JoinHandle<anyhow::Result<()>>,
}

impl SecondApp {
    pub async fn stop(self) {
        self.shutdown.cancel();
        let _ = tokio::time::timeout(Duration::from_secs(15), self.handle).await;
    }
}

/// Reads the metrics queue of a test.
pub struct MetricsTap {
    _channel: Channel,
    consumer: Consumer,
}

impl MetricsTap {
    /// The next message with `routing_key` whose body satisfies `wanted`; others are consumed
    /// and passed over.
    pub async fn next_with(&mut self, routing_key: &str, wanted: impl Fn(&Value) -> bool) -> Value {
        let delivery = self.next_delivery_with(routing_key, wanted).await;
        serde_json::from_slice(&delivery.data).unwrap()
    }

    /// Like [`MetricsTap::next_with`], with the delivery (for its properties).
    pub async fn next_delivery_with(
        &mut self,
        routing_key: &str,
        wanted: impl Fn(&Value) -> bool,
    ) -> Delivery {
        let found = tokio::time::timeout(RESULT_TIMEOUT, async {
            loop {
                let delivery = self
                    .consumer
                    .next()
                    .await
                    .expect("the metrics consumer is open")
                    .expect("a delivery");
                delivery.ack(BasicAckOptions::default()).await.unwrap();
                if delivery.routing_key.as_str() != routing_key {
                    continue;
                }
                assert_eq!(
                    delivery
                        .properties
                        .content_type()
                        .as_ref()
                        .map(|s| s.as_str()),
                    Some("application/json")
                );
                let body: Value = serde_json::from_slice(&delivery.data).unwrap();
                if wanted(&body) {
                    return delivery;
                }
            }
        })
        .await;
        found.unwrap_or_else(|_| panic!("no {routing_key} message arrived in time"))
    }
}

/// Polls `check` every 20 ms until it returns `Some`, for at most [`RESULT_TIMEOUT`].
pub async fn eventually<T, F, Fut>(what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + RESULT_TIMEOUT;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

pub async fn drop_database(settings: &Settings) {
    let url = settings.database.url.expose_secret().to_owned();
    let (server, name) = url.rsplit_once('/').unwrap();
    if let Ok(admin) = PgPool::connect(&format!("{server}/postgres")).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&admin)
            .await;
        admin.close().await;
    }
}

/// Rows in a table of the test's database.
pub async fn count(db: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(db)
        .await
        .unwrap()
}

/// The `x-memoji-reason` header of a dead-lettered message.
pub fn dead_letter_reason(delivery: &lapin::message::Delivery) -> String {
    let headers = delivery.properties.headers().as_ref().expect("headers");
    match headers.inner().get(memoji_worker::broker::REASON_HEADER) {
        Some(lapin::types::AMQPValue::LongString(text)) => text.to_string(),
        other => panic!("no reason header: {other:?}"),
    }
}

/// The PNG the OpenAI stand-in returns, as bytes: what a stored image must equal.
pub fn png_bytes() -> Vec<u8> {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .decode(png_b64())
        .unwrap()
}

/// Runs a job for user `u` (monthly_basic) and asserts it failed with `code`, made `calls` OpenAI
/// calls, was refunded, cached nothing and left its key free for the next job.
pub async fn assert_failed_and_refunded(
    env: &mut TestEnv,
    code: &str,
    retryable: bool,
    calls: u32,
) -> Value {
    let job = env.job("u", json!({"hair": "curly"}));
    let result = env.run(&job).await;
    assert_eq!(result["status"], "failed", "{result}");
    assert_eq!(result["error"]["code"], code, "{result}");
    assert_eq!(result["error"]["retryable"], retryable, "{result}");
    assert_eq!(result["image_url"], Value::Null);
    assert_eq!(result["storage_path"], Value::Null);
    assert_eq!(result["credits_charged"], 0);
    assert_eq!(result["credits_remaining"], 100, "the credit is refunded");
    assert_eq!(env.openai.calls(), calls);
    let balance = "SELECT used::bigint FROM memoji_credit_balances WHERE user_id = 'u'";
    assert_eq!(count(&env.db, balance).await, 0);
    let refunds = "SELECT count(*) FROM memoji_credit_ledger WHERE refunded_at IS NOT NULL";
    assert_eq!(count(&env.db, refunds).await, 1);
    let rows = count(&env.db, "SELECT count(*) FROM memoji_cache").await;
    assert_eq!(
        rows, 0,
        "nothing cached: no row may point at an image that was never stored"
    );
    let leases = count(&env.db, "SELECT count(*) FROM memoji_generation_leases").await;
    assert_eq!(leases, 0, "the key is free again");
    result
}

/// A store that stays down fails the job as `storage_failed` after its retries (which never
/// regenerate), refunded, with no cache row pointing at an image that is not there.
pub async fn assert_storage_outage_fails_cleanly(env: &mut TestEnv) -> Value {
    assert_failed_and_refunded(env, "storage_failed", true, 1).await
}

/// The `memoji-worker` binary with a clean configuration environment plus `vars`.
pub fn worker_command(vars: &[(&str, String)]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_memoji-worker"));
    for (name, _) in std::env::vars() {
        if name.starts_with("MEMOJI") || name.starts_with("AWS_") || name.starts_with("SUPABASE_") {
            command.env_remove(name);
        }
    }
    command.envs(vars.iter().map(|(k, v)| (k, v)));
    command
}

/// A TCP proxy in front of a server, which a test can cut (dropping every connection and refusing
/// new ones) and restore: a database outage without touching the shared database.
pub struct FaultyProxy {
    pub port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    cut: Arc<tokio::sync::Notify>,
    _task: tokio_util::task::AbortOnDropHandle<()>,
}

impl FaultyProxy {
    pub async fn to(target: &str) -> FaultyProxy {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let up = Arc::new(std::sync::atomic::AtomicBool::new(true));
        let cut = Arc::new(tokio::sync::Notify::new());
        let target = target.to_owned();
        let (task_up, task_cut) = (up.clone(), cut.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = listener.accept().await {
                if !task_up.load(Ordering::SeqCst) {
                    continue; // dropped: connection refused, in effect
                }
                let (target, cut) = (target.clone(), task_cut.clone());
                tokio::spawn(async move {
                    let Ok(mut outbound) = tokio::net::TcpStream::connect(&target).await else {
                        return;
                    };
                    tokio::select! {
                        _ = tokio::io::copy_bidirectional(&mut inbound, &mut outbound) => {}
                        () = cut.notified() => {}
                    }
                });
            }
        });
        FaultyProxy {
            port,
            up,
            cut,
            _task: tokio_util::task::AbortOnDropHandle::new(task),
        }
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}
