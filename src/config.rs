//! Settings and where they come from (CONTRACT.md §9).
//!
//! `config/default.toml` is compiled in, then an optional file, then `MEMOJI__SECTION__KEY`
//! variables, then the usual unprefixed variables. Secrets (the OpenAI key, the admin token, URLs
//! with passwords) are `SecretString`s: their `Debug` output is redacted, so logging settings is safe.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use environment::Variables;

mod environment;

const DEFAULTS: &str = include_str!("../config/default.toml");

/// Unprefixed variables the usual tools set, and the key each stands for.
const ALIASES: [(&str, &str); 4] = [
    ("AMQP_URL", "amqp.url"),
    ("DATABASE_URL", "database.url"),
    ("OPENAI_BASE_URL", "openai.base_url"),
    ("SUPABASE_URL", "storage.supabase.url"),
];

/// Why the settings could not be loaded. Each message says it once: printed with its causes
/// (`{:#}`), nothing repeats.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    /// A value of the wrong type, or a layer the `config` crate refused.
    #[error("configuration")]
    Invalid(#[from] config::ConfigError),
    /// The file named by `--config` or `MEMOJI_CONFIG`, shown as it was given.
    #[error("configuration file {}", path.display())]
    Read {
        /// The file as it was given.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The file named by `--config` or `MEMOJI_CONFIG` is not valid TOML, or a value in it has the
    /// wrong type.
    #[error("configuration file {}", path.display())]
    Parse {
        /// The file as it was given.
        path: PathBuf,
        /// What the parser refused.
        #[source]
        source: config::ConfigError,
    },
    /// A key no setting reads: a typo, or a key of another version.
    #[error("unknown configuration key `{key}`{}{}", suggestion_text(.suggestion), origin_text(.variable))]
    UnknownKey {
        /// The key as written (`section.key`).
        key: String,
        /// The nearest valid key, when one is close.
        suggestion: Option<String>,
        /// The environment variable that set it, when one did.
        variable: Option<String>,
    },
    /// A value that parsed but breaks a rule (a cron expression, a price table, an experiment's
    /// shares).
    #[error("configuration: {0}")]
    Rule(String),
}

fn suggestion_text(suggestion: &Option<String>) -> String {
    suggestion
        .as_ref()
        .map(|key| format!(" (did you mean `{key}`?)"))
        .unwrap_or_default()
}

fn origin_text(variable: &Option<String>) -> String {
    variable
        .as_ref()
        .map(|name| format!(", set by the environment variable {name}"))
        .unwrap_or_default()
}

/// Every setting of the worker, one field per section of `config/default.toml`.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct Settings {
    /// The broker: URL, topology names, prefetch and reconnection (`[amqp]`).
    pub amqp: AmqpSettings,
    /// Postgres: URL, pool and session limits (`[database]`).
    pub database: DatabaseSettings,
    /// The OpenAI client: concurrency, pacing, timeouts, retries, model lifecycle (`[openai]`).
    pub openai: OpenAiSettings,
    /// Which generator makes images (`[generator]`).
    pub generator: GeneratorSettings,
    /// Where images are stored (`[storage]`).
    pub storage: StorageSettings,
    /// The admin API's listener and limits (`[http]`).
    pub http: HttpSettings,
    /// Credit charging and the tiers' monthly allowances (`[credits]`).
    pub credits: CreditSettings,
    /// Statistics: snapshot interval, flush interval, metrics feed capacity (`[stats]`).
    pub stats: StatsSettings,
    /// The cache cleanup: schedule, what is deleted or archived, retention (`[cleanup]`).
    pub cleanup: CleanupSettings,
    /// What images cost, in US dollars (`[prices]`).
    pub prices: PriceSettings,
    /// Leases, claims, shutdown grace and hit batching (`[worker]`).
    pub worker: WorkerSettings,
    /// The refund sweep (`[refunds]`).
    pub refunds: RefundSettings,
    /// Cache warming (`[warm]`).
    pub warm: WarmSettings,
    /// Cache controls every job starts from (a user's preferences and the job's own `cache`
    /// object override them, `job::policy`).
    #[serde(default)]
    pub cache: CacheSettings,
    /// Log format and level (`[log]`).
    pub log: LogSettings,
    /// Trace export (`[telemetry]`).
    pub telemetry: TelemetrySettings,
    /// A/B tests of cache strategies, by name (`[experiments.<name>]`); none by default.
    #[serde(default)]
    pub experiments: BTreeMap<String, ExperimentSettings>,
    /// From the environment only, never from a file.
    #[serde(skip)]
    pub secrets: Secrets,
}

/// The secrets, read from the environment only (never from a file, never serialized).
#[derive(Debug, Clone, Default)]
pub struct Secrets {
    /// `OPENAI_API_KEY`; `None` when unset.
    pub openai_api_key: Option<SecretString>,
    /// `ADMIN_TOKEN`, which the admin API's writes require; `None` when unset (writes are then
    /// refused with 403).
    pub admin_token: Option<SecretString>,
    /// The remote storage backends' credentials.
    pub storage: StorageSecrets,
}

/// Credentials of the remote storage backends, each read from the first variable set of its list
/// (the MEMOJI_-prefixed name first, so a deployment can keep the worker's keys apart from the
/// machine's usual AWS or Supabase variables).
#[derive(Debug, Clone, Default)]
pub struct StorageSecrets {
    /// `MEMOJI_S3_ACCESS_KEY_ID`, else `AWS_ACCESS_KEY_ID`.
    pub s3_access_key_id: Option<SecretString>,
    /// `MEMOJI_S3_SECRET_ACCESS_KEY`, else `AWS_SECRET_ACCESS_KEY`.
    pub s3_secret_access_key: Option<SecretString>,
    /// `MEMOJI_S3_SESSION_TOKEN`, else `AWS_SESSION_TOKEN` (temporary credentials only).
    pub s3_session_token: Option<SecretString>,
    /// `MEMOJI_SUPABASE_SERVICE_ROLE_KEY`, else `SUPABASE_SERVICE_ROLE_KEY`.
    pub supabase_service_key: Option<SecretString>,
}

impl StorageSecrets {
    /// The variables each secret is read from, in order of preference.
    pub(crate) const S3_ACCESS_KEY_ID: [&str; 2] = ["MEMOJI_S3_ACCESS_KEY_ID", "AWS_ACCESS_KEY_ID"];
    pub(crate) const S3_SECRET_ACCESS_KEY: [&str; 2] =
        ["MEMOJI_S3_SECRET_ACCESS_KEY", "AWS_SECRET_ACCESS_KEY"];
    pub(crate) const S3_SESSION_TOKEN: [&str; 2] = ["MEMOJI_S3_SESSION_TOKEN", "AWS_SESSION_TOKEN"];
    pub(crate) const SUPABASE_SERVICE_KEY: [&str; 2] = [
        "MEMOJI_SUPABASE_SERVICE_ROLE_KEY",
        "SUPABASE_SERVICE_ROLE_KEY",
    ];

    /// Reads each secret from the first of its variables that is set and not empty; `None` where
    /// none is.
    pub fn from_env() -> StorageSecrets {
        Self::from_lookup(secret_from_env)
    }

    /// Each secret from the first of its variables that `secret` finds set (and not empty).
    fn from_lookup(secret: impl Fn(&str) -> Option<SecretString>) -> StorageSecrets {
        let first = |variables: [&str; 2]| variables.into_iter().find_map(&secret);
        StorageSecrets {
            s3_access_key_id: first(Self::S3_ACCESS_KEY_ID),
            s3_secret_access_key: first(Self::S3_SECRET_ACCESS_KEY),
            s3_session_token: first(Self::S3_SESSION_TOKEN),
            supabase_service_key: first(Self::SUPABASE_SERVICE_KEY),
        }
    }
}

/// The broker connection and topology (`[amqp]`, CONTRACT.md §2). The worker declares the topology
/// at start, idempotently.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct AmqpSettings {
    /// A secret (it may carry a password): never serialized; see [`Settings::to_environment`].
    #[serde(skip_serializing)]
    pub url: SecretString,
    /// Unacknowledged deliveries per worker process, and so the number of jobs it works on at once.
    pub prefetch: u16,
    /// The queue jobs are consumed from.
    pub job_queue: String,
    /// The exchange results are published to.
    pub result_exchange: String,
    /// The queue bound to the result exchange.
    pub result_queue: String,
    /// The exchange metrics messages (`stats.snapshot`, `job.completed`, …) are published to.
    pub metrics_exchange: String,
    /// The queue bound to the metrics exchange.
    pub metrics_queue: String,
    /// Oldest metrics messages are dropped first beyond this many.
    pub metrics_queue_max_length: u32,
    /// The exchange dead-lettered jobs go to.
    pub dead_letter_exchange: String,
    /// The queue bound to the dead-letter exchange.
    pub dead_letter_queue: String,
    /// A job delivered this many times without being settled is dead-lettered by the broker instead
    /// of looping forever.
    pub delivery_limit: u32,
    /// Reconnection backoff after the broker connection drops: the shortest wait (milliseconds,
    /// exponential with jitter).
    pub reconnect_min_ms: u64,
    /// Reconnection backoff: the longest wait (milliseconds).
    pub reconnect_max_ms: u64,
}

/// Postgres (`[database]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct DatabaseSettings {
    /// A secret (it may carry a password): never serialized; see [`Settings::to_environment`].
    #[serde(skip_serializing)]
    pub url: SecretString,
    /// Pool size: connections per worker process.
    pub max_connections: u32,
    /// How long a job waits for a pooled connection before it is handed back to the queue
    /// (seconds).
    pub acquire_timeout_secs: u64,
    /// Create the database at start if it is missing (and the user may).
    pub create_if_missing: bool,
    /// At start, how long to keep retrying a database that is out of reach before giving up
    /// (seconds).
    pub connect_retry_secs: u64,
    /// Postgres `synchronous_commit` for the worker's sessions: `on` waits for every commit to
    /// reach disk, `off` trades the last fraction of a second of committed work on a Postgres crash
    /// for throughput.
    pub synchronous_commit: String,
    /// Postgres `statement_timeout` for the worker's sessions (milliseconds; 0 = no limit).
    pub statement_timeout_ms: u64,
    /// Postgres `lock_timeout` for the worker's sessions (milliseconds; 0 = no limit): a statement
    /// stuck behind a lock fails after this and its job goes back to the queue with backoff.
    pub lock_timeout_ms: u64,
}

/// The OpenAI client (`[openai]`). The key comes from `OPENAI_API_KEY` only ([`Secrets`]).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct OpenAiSettings {
    /// API root (also `OPENAI_BASE_URL`).
    pub base_url: String,
    /// Generations in flight per worker process; further misses wait their turn.
    pub max_concurrency: usize,
    /// Images started per minute per worker process (0 = no limit), so bursts do not draw 429s.
    pub images_per_minute: u32,
    /// One HTTP request's timeout (seconds; image generation can take a minute).
    pub request_timeout_secs: u64,
    /// All attempts of one generation together, backoff included (seconds).
    pub total_timeout_secs: u64,
    /// Attempts per generation: 429, 5xx, timeouts and connection errors are retried; other 4xx are
    /// not.
    pub max_attempts: u32,
    /// Exponential backoff between attempts, with full jitter: the shortest wait (milliseconds).
    /// `Retry-After` wins when the server sends it.
    pub backoff_min_ms: u64,
    /// Exponential backoff between attempts: the longest wait (milliseconds).
    pub backoff_max_ms: u64,
    /// Retired model (configuration key form, `gpt_image_1`) → the active model that serves it.
    #[serde(default)]
    pub successors: BTreeMap<String, String>,
    /// `quality` sent when a job names none; empty for OpenAI's own default.
    #[serde(default)]
    pub default_quality: String,
    /// `moderation` sent with every request: `auto` or `low`.
    pub moderation: String,
    /// A model whose `shutdown_date` is this close (days) is warned about.
    pub shutdown_warning_days: u32,
    /// Hours between checks of the models' lifecycle (`GET /models/{id}`); the first is at start.
    pub lifecycle_check_hours: u64,
    /// Seconds before a lifecycle check that could not reach OpenAI is tried again.
    pub lifecycle_retry_secs: u64,
    /// Largest response body read from OpenAI (bytes).
    pub max_response_bytes: usize,
}

impl AmqpSettings {
    /// Renames every queue and exchange `<prefix>.<name>`: an isolated topology on a shared broker,
    /// for tests and benchmarks.
    pub fn prefix_names(&mut self, prefix: &str) {
        for name in [
            &mut self.job_queue,
            &mut self.result_exchange,
            &mut self.result_queue,
            &mut self.metrics_exchange,
            &mut self.metrics_queue,
            &mut self.dead_letter_exchange,
            &mut self.dead_letter_queue,
        ] {
            *name = format!("{prefix}.{name}");
        }
    }
}

impl OpenAiSettings {
    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
    pub(crate) fn total_timeout(&self) -> Duration {
        Duration::from_secs(self.total_timeout_secs)
    }
}

/// Which generator makes images (`[generator]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct GeneratorSettings {
    /// `openai` or `placeholder`.
    pub kind: GeneratorKind,
}

/// Which generator makes images. Placeholder images get cache keys of their own, so they never
/// answer a run with the real generator (CONTRACT.md §10).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GeneratorKind {
    /// OpenAI's image API.
    OpenAi,
    /// An offline generator drawing a deterministic PNG (`generate::placeholder`).
    Placeholder,
}

impl GeneratorKind {
    /// The name used in the configuration and in cache keys: `openai` or `placeholder`.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            GeneratorKind::OpenAi => "openai",
            GeneratorKind::Placeholder => "placeholder",
        }
    }
}

/// Where images go (`storage.kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// A directory (`storage.local_dir`), served by the admin API at `/images/…`.
    Local,
    /// Any S3-compatible store (`[storage.s3]`).
    S3,
    /// Supabase Storage's REST API (`[storage.supabase]`).
    Supabase,
}

/// Where images are stored (`[storage]`, docs/storage.md).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StorageSettings {
    /// The backend: `local`, `s3` or `supabase`.
    pub kind: StorageKind,
    /// The local backend's directory.
    pub local_dir: PathBuf,
    /// Prefix of `image_url`; empty means the backend's own (see `config/default.toml`).
    pub public_base_url: String,
    /// `Cache-Control` stored with every upload by the remote backends.
    pub cache_control: String,
    /// One request to a remote backend, connecting included.
    pub request_timeout_secs: u64,
    /// The S3 backend's settings (used when `kind` is `s3`).
    pub s3: S3Settings,
    /// The Supabase backend's settings (used when `kind` is `supabase`).
    pub supabase: SupabaseSettings,
}

impl StorageSettings {
    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
}

/// An S3-compatible store (AWS S3, MinIO, R2, Supabase's S3 endpoint). Credentials are secrets.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct S3Settings {
    /// Empty for AWS itself (`https://s3.<region>.amazonaws.com`).
    pub endpoint: String,
    /// AWS region; `auto` for R2; MinIO takes anything.
    pub region: String,
    /// The bucket, which must exist. Images are stored at its root as `<YYYY>/<MM>/<hash>.png`.
    pub bucket: String,
    /// `<endpoint>/<bucket>/<key>` rather than `<bucket>.<endpoint host>/<key>`.
    pub path_style: bool,
}

/// Supabase Storage's REST API. The service role key is a secret.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct SupabaseSettings {
    /// The project URL, e.g. `https://abcd.supabase.co` (also `SUPABASE_URL`).
    pub url: String,
    /// A public bucket, so `image_url` opens without a token.
    pub bucket: String,
}

/// The admin API's listener and the limits that keep a hostile client from exhausting it.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct HttpSettings {
    /// The admin API's address (CONTRACT.md §8).
    pub bind: SocketAddr,
    /// A request's head (and, between keep-alive requests, the next one) must arrive within this.
    pub header_read_timeout_secs: u64,
    /// A handler must answer within this (the cleanup route excepted, which runs its own task).
    pub request_timeout_secs: u64,
    /// Connections served at once; more wait in the listen backlog.
    pub max_connections: usize,
    /// A connection whose response writes stay blocked this long (the client stopped reading) is
    /// closed.
    pub send_stall_timeout_secs: u64,
}

impl HttpSettings {
    pub(crate) fn header_read_timeout(&self) -> Duration {
        Duration::from_secs(self.header_read_timeout_secs)
    }
    pub(crate) fn request_timeout(&self) -> Duration {
        Duration::from_secs(self.request_timeout_secs)
    }
    pub(crate) fn send_stall_timeout(&self) -> Duration {
        Duration::from_secs(self.send_stall_timeout_secs)
    }
}

/// Credit charging (`[credits]`, CONTRACT.md §6).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CreditSettings {
    /// Charge one credit per miss, with a monthly allowance per tier.
    pub enabled: bool,
    /// Tier name → credits per calendar month (UTC).
    pub allowances: BTreeMap<String, Allowance>,
}

/// Credits a tier gets each month.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum Allowance {
    /// This many credits per month.
    Limited(u32),
    /// No limit (`"unlimited"` in the configuration).
    Unlimited(UnlimitedWord),
}

/// The word `unlimited`, so that an allowance reads `lifetime = "unlimited"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum UnlimitedWord {
    /// `"unlimited"`.
    Unlimited,
}

/// Statistics (`[stats]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct StatsSettings {
    /// Seconds between `stats.snapshot` messages on the metrics exchange (CONTRACT.md §2.4).
    pub interval_secs: u64,
    /// How often each process adds its in-memory counts to Postgres (milliseconds); a crash loses
    /// at most this much counting.
    pub flush_ms: u64,
    /// Metrics messages waiting for the broker, per process; beyond this, new ones are dropped (and
    /// counted).
    pub feed_capacity: usize,
}

/// What images cost, in US dollars (see `generate::pricing`). Models are keyed with `_` for `-`
/// and `.` (`gpt_image_2_6_flare`), so that every key also has an environment form.
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct PriceSettings {
    /// model → dollars per 1M tokens, from OpenAI's `usage`.
    pub per_million_tokens: BTreeMap<String, TokenPrices>,
    /// model → quality → dollars per 1024x1024 image, where a response carries no `usage`.
    pub per_image: BTreeMap<String, BTreeMap<String, f64>>,
}

/// Dollars per 1M tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
pub struct TokenPrices {
    /// Text input, less its cached part.
    pub text_input: f64,
    /// Cached text input.
    pub cached_text_input: f64,
    /// Image input.
    pub image_input: f64,
    /// Image output.
    pub image_output: f64,
}

/// The cache cleanup (`[cleanup]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct CleanupSettings {
    /// Six-field cron expression (sec min hour day month weekday), UTC; one replica cleans at a
    /// time (an advisory lock).
    pub schedule: String,
    /// Entries older than this (days), with fewer uses than `min_uses` and not archived, are
    /// deleted.
    pub max_age_days: u32,
    /// See `max_age_days`.
    pub min_uses: u32,
    /// Entries used more than this are archived: kept for good, still serving hits.
    pub archive_above_uses: u32,
    /// Rows per batch, so hits keep flowing while a cleanup runs.
    pub batch_size: u32,
    /// After each batch, rest this many times as long as the batch took (at most 1 s); 0 runs
    /// flat out.
    pub pause_factor: f64,
    /// Finished jobs are pruned this many days after they were created; 0 keeps them forever.
    pub job_retention_days: u32,
    /// Credit-ledger rows are pruned this many days after the charge; 0 keeps them forever.
    pub ledger_retention_days: u32,
    /// Request-history rows are pruned this many days after their day; 0 keeps them forever.
    pub history_retention_days: u32,
    /// A `bypass` job's image (never a cache entry) is deleted this many hours after it was
    /// made (at least 1).
    #[serde(default = "bypass_retention_hours_by_default")]
    pub bypass_retention_hours: u32,
}

fn bypass_retention_hours_by_default() -> u32 {
    24
}

/// Leases, claims and shutdown (`[worker]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WorkerSettings {
    /// How long a generating worker holds a key before another may take over (seconds); renewed
    /// while the generation runs.
    pub lease_secs: u64,
    /// How long a job's claim lasts before its result or the start of a generation (seconds); a
    /// miss extends its claim to `lease_secs` as it starts.
    pub hit_claim_secs: u64,
    /// How often a job waiting for another worker's generation of the same key looks again
    /// (milliseconds).
    pub wait_poll_ms: u64,
    /// On SIGTERM/SIGINT: stop consuming, give in-flight jobs this long (seconds), then hand the
    /// rest back.
    pub shutdown_grace_secs: u64,
    /// How long a job id derived from a message body is remembered after its job finished.
    pub derived_id_ttl_secs: u64,
    /// Group commit: the most hits one batch answers (`worker::batch`); 0 turns batching off.
    pub hit_batch_max: u32,
    /// Group commit: how many batches may be at the database at once.
    pub hit_batches_in_flight: usize,
    /// Acks of deliveries settled together go out as one `multiple` ack (`worker::acks`).
    pub coalesce_acks: bool,
}

/// The refund sweep (`maintenance::refund`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct RefundSettings {
    /// Seconds between sweeps.
    pub every_secs: u64,
    /// A charged job left processing this long after its claim expired is given up and refunded.
    pub abandoned_after_secs: u64,
}

/// Cache warming (`warm`, `memoji-worker warm`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct WarmSettings {
    /// The share of `openai.max_concurrency` a warming run may take (at least one generation).
    pub max_share: f64,
    /// How often a warming run that gives way to live jobs looks again (milliseconds).
    pub yield_poll_ms: u64,
    /// Scheduled warming: a six-field cron expression (UTC); empty: off.
    pub schedule: String,
    /// What the scheduled warming warms: `history` or `predict`.
    pub source: String,
    /// Configurations the scheduled warming considers, and the days of history it reads.
    pub top: u32,
    /// Days of request history the scheduled warming reads.
    pub days: u32,
    /// Dollars the scheduled warming may spend a UTC day, all its runs together.
    pub daily_budget_usd: f64,
    /// `warm --batch`: how often a batch is polled at OpenAI (milliseconds); also how often each
    /// worker's batch sweep looks for open batches (one replica at a time).
    pub batch_poll_ms: u64,
    /// Scheduled warming submits its run as one OpenAI batch (half price, within 24 hours).
    pub batch: bool,
}

/// Cache controls for every job (`[cache]`); a user's preferences and a job's own `cache` object
/// win over them (`job::policy`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct CacheSettings {
    /// Cached images older than this many days are not served (regenerated instead); unset: any
    /// age is served.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_days: Option<u32>,
    /// The mode of a job that names none and whose user has no preference.
    #[serde(default)]
    pub mode: CacheMode,
    /// Images kept per key (N, at least 1): variant 0 is the key's `memoji_cache` row, variants
    /// 1..N-1 are extra images; each user gets one of them, always the same (`job::variant`).
    /// 1 is the seed's behaviour.
    #[serde(default = "one_variant")]
    pub variants: u32,
}

impl Default for CacheSettings {
    fn default() -> CacheSettings {
        CacheSettings {
            max_age_days: None,
            mode: CacheMode::default(),
            variants: one_variant(),
        }
    }
}

fn one_variant() -> u32 {
    1
}

/// How a job uses the cache (a job's `cache.mode`, a user's preference, `cache.mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CacheMode {
    /// Serve a hit, generate a miss.
    #[default]
    Default,
    /// Regenerate even on a hit and replace the cached image (`force_refresh`).
    Refresh,
    /// Generate a fresh image without reading or writing the cache entry.
    Bypass,
    /// Serve a hit, or answer `not_cached`: never generate, never charge.
    OnlyIfCached,
}

impl CacheMode {
    /// Every mode, in the order the contract lists them.
    pub const ALL: [CacheMode; 4] = [
        CacheMode::Default,
        CacheMode::Refresh,
        CacheMode::Bypass,
        CacheMode::OnlyIfCached,
    ];

    /// The contract's name of the mode.
    pub fn as_str(self) -> &'static str {
        match self {
            CacheMode::Default => "default",
            CacheMode::Refresh => "refresh",
            CacheMode::Bypass => "bypass",
            CacheMode::OnlyIfCached => "only_if_cached",
        }
    }

    /// The mode named `name`, if any.
    pub fn from_name(name: &str) -> Option<CacheMode> {
        CacheMode::ALL
            .into_iter()
            .find(|mode| mode.as_str() == name)
    }
}

/// Logging (`[log]`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct LogSettings {
    /// `auto`, `pretty`, `plain` or `json`.
    pub format: LogFormat,
    /// The level filter (tracing's EnvFilter syntax); `RUST_LOG`, when set, replaces it.
    pub level: String,
}

/// Traces across the queue (`telemetry::trace`).
#[derive(Debug, Clone, Deserialize, Serialize)]
pub struct TelemetrySettings {
    /// An OTLP/HTTP collector's base URL (`http://collector:4318`); spans go to
    /// `<otlp_endpoint>/v1/traces`. Empty: no spans are exported, and a job's trace context is
    /// passed through unchanged.
    pub otlp_endpoint: String,
}

impl TelemetrySettings {
    /// Where spans are posted, if anywhere: the endpoint with `/v1/traces` appended unless it
    /// already ends so.
    pub(crate) fn traces_url(&self) -> Option<String> {
        let base = self.otlp_endpoint.trim();
        if base.is_empty() {
            return None;
        }
        let base = base.trim_end_matches('/');
        Some(if base.ends_with("/v1/traces") {
            base.to_owned()
        } else {
            format!("{base}/v1/traces")
        })
    }
}

/// One A/B test of cache strategies (`[experiments.<name>]`): users are split between its arms
/// by a stable hash of their `user_id` and the experiment's name (`job::experiment`).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ExperimentSettings {
    /// Off: nobody is assigned, every job runs on the configuration's own settings.
    #[serde(default = "enabled_by_default")]
    pub enabled: bool,
    /// The arm the others are compared with in the reports (`GET /api/experiments/{name}`);
    /// unset: the first arm by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control: Option<String>,
    /// The arms, by name (`[experiments.<name>.arms.<arm>]`), in name order.
    pub arms: BTreeMap<String, ArmSettings>,
}

fn enabled_by_default() -> bool {
    true
}

/// One arm of an experiment: the share of users it takes and the cache settings it changes for
/// them. A setting left out is the configuration's own (or the user's preference).
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
pub struct ArmSettings {
    /// Percent of all users in this arm (0 < share <= 100). The arms' shares add up to at most
    /// 100; users beyond them are in no arm and run on the configuration's settings.
    pub share: f64,
    /// Images kept per key for this arm's users (`cache.variants`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variants: Option<u32>,
    /// Cached images older than this many days are not served to this arm's users.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_age_days: Option<u32>,
    /// Whether warmed entries are served to this arm's users (false: an entry warming made is
    /// treated as not cached until a live job has used it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub warming: Option<bool>,
}

/// How log lines are written (`log.format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Pretty on a terminal, JSON otherwise.
    Auto,
    /// Compact lines for people, coloured only on a terminal.
    Pretty,
    /// Compact lines without colours.
    Plain,
    /// One JSON object per line, for log shippers.
    Json,
}

impl LogFormat {
    /// The format to write, `Auto` resolved by whether the output is a terminal.
    pub(crate) fn resolve(self, terminal: bool) -> LogFormat {
        match self {
            LogFormat::Auto if terminal => LogFormat::Pretty,
            LogFormat::Auto => LogFormat::Json,
            other => other,
        }
    }
}

impl Settings {
    /// The built-in defaults alone, ignoring files and the environment (tests start here).
    pub fn defaults() -> Result<Settings, SettingsError> {
        let layers = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .build()?;
        strict(layers, &[])?.checked()
    }

    /// Every layer: defaults, then `file` (or `MEMOJI_CONFIG`), then the environment. A key that
    /// no setting reads, in the file or in a `MEMOJI__` variable, is refused by name.
    pub fn load(file: Option<&Path>) -> Result<Settings, SettingsError> {
        Self::load_from(file, &Variables::Process)
    }

    /// [`Settings::load`] reading `variables` (see [`environment`]) instead of the process's.
    fn load_from(file: Option<&Path>, variables: &Variables) -> Result<Settings, SettingsError> {
        let env_file = variables.var_os("MEMOJI_CONFIG").map(PathBuf::from);
        let mut builder = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml));
        if let Some(path) = file.map(Path::to_path_buf).or(env_file) {
            builder = builder.add_source(read_file(&path)?);
        }
        builder = builder.add_source(variables.source(environment()));
        for (variable, key) in ALIASES {
            let prefixed = format!("MEMOJI__{}", key.replace('.', "__").to_uppercase());
            if variables.var_os(&prefixed).is_none()
                && let Some(value) = variables.var(variable)
            {
                builder = builder.set_override(key, value)?;
            }
        }
        let names: Vec<String> = variables
            .names()
            .into_iter()
            .filter(|name| name.starts_with("MEMOJI__"))
            .collect();
        let mut settings = strict(builder.build()?, &names)?;
        let secret = |name: &str| {
            variables
                .var(name)
                .filter(|v| !v.is_empty())
                .map(SecretString::from)
        };
        settings.secrets = Secrets {
            openai_api_key: secret("OPENAI_API_KEY"),
            admin_token: secret("ADMIN_TOKEN"),
            storage: StorageSecrets::from_lookup(secret),
        };
        settings.checked()
    }

    fn checked(self) -> Result<Settings, SettingsError> {
        let rule = |ok: bool, what: &str| {
            if ok {
                Ok(())
            } else {
                Err(SettingsError::Rule(what.to_owned()))
            }
        };
        rule(self.amqp.prefetch > 0, "amqp.prefetch must be at least 1")?;
        rule(
            self.openai.max_concurrency > 0,
            "openai.max_concurrency must be at least 1",
        )?;
        rule(
            self.openai.max_attempts > 0,
            "openai.max_attempts must be at least 1",
        )?;
        rule(
            self.database.max_connections > 1,
            "database.max_connections must be at least 2",
        )?;
        rule(
            self.worker.lease_secs >= 3,
            "worker.lease_secs must be at least 3",
        )?;
        rule(
            self.amqp.delivery_limit > 0,
            "amqp.delivery_limit must be at least 1",
        )?;
        rule(
            ["on", "off", "local", "remote_write", "remote_apply"]
                .contains(&self.database.synchronous_commit.as_str()),
            "database.synchronous_commit must be on, off, local, remote_write or remote_apply",
        )?;
        rule(
            self.storage.request_timeout_secs > 0,
            "storage.request_timeout_secs must be at least 1",
        )?;
        rule(
            self.stats.interval_secs > 0,
            "stats.interval_secs must be at least 1",
        )?;
        rule(self.stats.flush_ms > 0, "stats.flush_ms must be at least 1")?;
        rule(
            self.stats.feed_capacity > 0,
            "stats.feed_capacity must be at least 1",
        )?;
        rule(
            self.refunds.every_secs > 0,
            "refunds.every_secs must be at least 1",
        )?;
        rule(
            self.cleanup.batch_size > 0,
            "cleanup.batch_size must be at least 1",
        )?;
        rule(
            self.cleanup.pause_factor.is_finite() && self.cleanup.pause_factor >= 0.0,
            "cleanup.pause_factor must be a number, 0 or more",
        )?;
        // A URL that does not parse would be quoted whole, password and all, by the client
        // library's error; refuse it here with a message that names the key only.
        rule(
            url_like(&self.amqp.url),
            "amqp.url is not a URL (amqp://user:password@host:port/vhost)",
        )?;
        rule(
            url_like(&self.database.url),
            "database.url is not a URL (postgres://user:password@host:port/database)",
        )?;
        rule(
            self.telemetry.traces_url().is_none_or(|url| {
                url::Url::parse(&url).is_ok_and(|u| matches!(u.scheme(), "http" | "https"))
            }),
            "telemetry.otlp_endpoint must be empty or an http(s) URL (http://collector:4318)",
        )?;
        rule(
            self.http.header_read_timeout_secs > 0,
            "http.header_read_timeout_secs must be at least 1",
        )?;
        rule(
            self.http.request_timeout_secs > 0,
            "http.request_timeout_secs must be at least 1",
        )?;
        rule(
            self.http.max_connections > 0,
            "http.max_connections must be at least 1",
        )?;
        rule(
            self.http.send_stall_timeout_secs > 0,
            "http.send_stall_timeout_secs must be at least 1",
        )?;
        rule(
            ["auto", "low"].contains(&self.openai.moderation.as_str()),
            "openai.moderation must be auto or low",
        )?;
        rule(
            self.openai.lifecycle_check_hours > 0 && self.openai.lifecycle_retry_secs > 0,
            "openai.lifecycle_check_hours and openai.lifecycle_retry_secs must be at least 1",
        )?;
        rule(self.cache.variants > 0, "cache.variants must be at least 1")?;
        check_experiments(&self.experiments).map_err(SettingsError::Rule)?;
        rule(
            self.cache.max_age_days != Some(0) && self.cleanup.bypass_retention_hours > 0,
            "cache.max_age_days and cleanup.bypass_retention_hours must be at least 1",
        )?;
        // Domain rules (the cron schedule, the price table, model successors) are checked where
        // they live, when the app is built: `app::check_domain`.
        Ok(self)
    }
}

/// The experiments' rules: names the environment can spell (lowercase), at most one enabled at a
/// time (so every job names at most one experiment and arms never interact), at least two arms,
/// shares in (0, 100] adding up to at most 100, and arm settings of at least 1.
fn check_experiments(experiments: &BTreeMap<String, ExperimentSettings>) -> Result<(), String> {
    let spelled = |name: &str| {
        !name.is_empty()
            && name.len() <= 64
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_' || c == '-')
    };
    let enabled: Vec<&String> = experiments
        .iter()
        .filter(|(_, experiment)| experiment.enabled)
        .map(|(name, _)| name)
        .collect();
    if enabled.len() > 1 {
        return Err(format!(
            "at most one experiment may be enabled at a time; enabled: {}",
            enabled
                .iter()
                .map(|name| name.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    for (name, experiment) in experiments {
        if !spelled(name) {
            return Err(format!(
                "experiments.{name}: a name is 1-64 of a-z, 0-9, _ and -"
            ));
        }
        if experiment.arms.len() < 2 {
            return Err(format!("experiments.{name} needs at least two arms"));
        }
        if let Some(control) = &experiment.control
            && !experiment.arms.contains_key(control)
        {
            return Err(format!(
                "experiments.{name}.control names no arm: `{control}`"
            ));
        }
        let mut total = 0.0;
        for (arm_name, arm) in &experiment.arms {
            let at = format!("experiments.{name}.arms.{arm_name}");
            if !spelled(arm_name) {
                return Err(format!("{at}: a name is 1-64 of a-z, 0-9, _ and -"));
            }
            if !(arm.share > 0.0 && arm.share <= 100.0) {
                return Err(format!("{at}.share must be more than 0 and at most 100"));
            }
            if arm.variants == Some(0) || arm.max_age_days == Some(0) {
                return Err(format!(
                    "{at}: variants and max_age_days must be at least 1"
                ));
            }
            total += arm.share;
        }
        if total > 100.0 + 1e-9 {
            return Err(format!(
                "experiments.{name}: the arms' shares add up to {total}, more than 100"
            ));
        }
    }
    Ok(())
}

/// A configuration file (TOML), read here rather than by the `config` crate so that errors show
/// the path as it was given.
fn read_file(
    path: &Path,
) -> Result<config::File<config::FileSourceString, config::FileFormat>, SettingsError> {
    let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
        path: path.to_owned(),
        source,
    })?;
    // Parse it alone first, so a syntax error names this file.
    config::Config::builder()
        .add_source(config::File::from_str(&text, config::FileFormat::Toml))
        .build()
        .map_err(|source| SettingsError::Parse {
            path: path.to_owned(),
            source,
        })?;
    Ok(config::File::from_str(&text, config::FileFormat::Toml))
}

/// Deserializes the merged layers, refusing any key that no setting reads (generic over every
/// section: serde reports each key it skips). `variables` are the `MEMOJI__` variables set, to
/// say which one brought an unknown key.
fn strict(layers: config::Config, variables: &[String]) -> Result<Settings, SettingsError> {
    let mut unknown = Vec::new();
    let settings: Settings = serde_ignored::deserialize(layers, |path| {
        unknown.push(path.to_string());
    })?;
    match unknown.into_iter().next() {
        None => Ok(settings),
        Some(key) => {
            let variable = format!("MEMOJI__{}", key.replace('.', "__")).to_uppercase();
            Err(SettingsError::UnknownKey {
                suggestion: nearest_key(&key),
                variable: variables.iter().find(|v| **v == variable).cloned(),
                key,
            })
        }
    }
}

/// The valid key nearest to `key` among its siblings in `default.toml` (same section), if it is
/// within a couple of typos.
fn nearest_key(key: &str) -> Option<String> {
    let (section, name) = match key.rsplit_once('.') {
        Some((section, name)) => (Some(section), name),
        None => (None, key),
    };
    let defaults = config::Config::builder()
        .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
        .build()
        .ok()?;
    let siblings: Vec<String> = match section {
        None => defaults.cache.into_table().ok()?.into_keys().collect(),
        Some(section) => defaults.get_table(section).ok()?.into_keys().collect(),
    };
    let limit = (name.chars().count() / 3).clamp(1, 3);
    siblings
        .into_iter()
        .map(|candidate| (edit_distance(name, &candidate), candidate))
        .filter(|(distance, _)| *distance <= limit)
        .min()
        .map(|(_, candidate)| match section {
            Some(section) => format!("{section}.{candidate}"),
            None => candidate,
        })
}

/// Levenshtein distance, in characters.
fn edit_distance(a: &str, b: &str) -> usize {
    let b: Vec<char> = b.chars().collect();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.chars().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1)
                .min(row[j] + 1)
                .min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
}

/// `MEMOJI__SECTION__KEY` variables. The `config` crate lowercases their keys, which is why every
/// key in `default.toml` is lowercase (prices included).
fn environment() -> config::Environment {
    config::Environment::with_prefix("MEMOJI")
        .prefix_separator("__")
        .separator("__")
        .try_parsing(true)
}

/// Whether a secret URL parses as a URL with an authority (`scheme://…`).
fn url_like(url: &SecretString) -> bool {
    url::Url::parse(url.expose_secret()).is_ok_and(|u| !u.cannot_be_a_base())
}

fn secret_from_env(variable: &str) -> Option<SecretString> {
    std::env::var(variable)
        .ok()
        .filter(|v| !v.is_empty())
        .map(SecretString::from)
}

/// A URL fit for logs: scheme, host, port and path, never the password (in the userinfo or in a
/// query parameter such as `?password=`); see [`crate::redact::url`].
pub(crate) fn redacted_url(url: &SecretString) -> String {
    crate::redact::url(url.expose_secret())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_contract() {
        let settings = Settings::defaults().unwrap();
        assert_eq!(
            settings.amqp.url.expose_secret(),
            "amqp://guest:guest@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            settings.database.url.expose_secret(),
            "postgres://postgres@127.0.0.1:5432/memoji"
        );
        assert_eq!(settings.openai.base_url, "https://api.openai.com/v1");
        assert_eq!(settings.generator.kind, GeneratorKind::OpenAi);
        assert_eq!(settings.storage.kind, StorageKind::Local);
        assert_eq!(settings.http.bind.to_string(), "127.0.0.1:8080");
        assert!(settings.credits.enabled);
        assert_eq!(settings.stats.interval_secs, 60);
        assert_eq!(settings.cleanup.schedule, "0 0 3 * * *");
        let allowance = |tier: &str| settings.credits.allowances[tier];
        assert_eq!(allowance("free"), Allowance::Limited(2));
        assert_eq!(allowance("monthly_basic"), Allowance::Limited(100));
        assert_eq!(allowance("monthly_standard"), Allowance::Limited(300));
        assert_eq!(allowance("monthly_pro"), Allowance::Limited(1000));
        assert_eq!(
            allowance("lifetime"),
            Allowance::Unlimited(UnlimitedWord::Unlimited)
        );
    }

    /// Defaults, then `file`, then `variables` as if they were the environment.
    fn layered(file: &str, variables: &[(&str, &str)]) -> Settings {
        let variables = variables
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        try_layered(file, variables).unwrap()
    }

    fn try_layered(
        file: &str,
        variables: Vec<(String, String)>,
    ) -> Result<Settings, SettingsError> {
        let names: Vec<String> = variables.iter().map(|(name, _)| name.clone()).collect();
        let layers = config::Config::builder()
            .add_source(config::File::from_str(DEFAULTS, config::FileFormat::Toml))
            .add_source(config::File::from_str(file, config::FileFormat::Toml))
            .add_source(environment().source(Some(variables.into_iter().collect())))
            .build()?;
        strict(layers, &names)?.checked()
    }

    fn unknown(file: &str, variables: &[(&str, &str)]) -> String {
        let variables = variables
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        match try_layered(file, variables) {
            Err(error @ SettingsError::UnknownKey { .. }) => error.to_string(),
            other => panic!("expected an unknown key, got {other:?}"),
        }
    }

    #[test]
    fn unknown_keys_are_refused_by_name_with_the_nearest_valid_one() {
        assert_eq!(
            unknown("[amqp]\nprefech = 3\n", &[]),
            "unknown configuration key `amqp.prefech` (did you mean `amqp.prefetch`?)"
        );
        assert_eq!(
            unknown("[databse]\nurl = \"postgres://x@y/z\"\n", &[]),
            "unknown configuration key `databse` (did you mean `database`?)"
        );
        assert_eq!(
            unknown("[storage.s3]\nbukket = \"b\"\n", &[]),
            "unknown configuration key `storage.s3.bukket` (did you mean `storage.s3.bucket`?)"
        );
        // Nothing close: the key alone.
        assert_eq!(
            unknown("[worker]\ncolour = \"blue\"\n", &[]),
            "unknown configuration key `worker.colour`"
        );
        // From the environment: the variable is named.
        assert_eq!(
            unknown("", &[("MEMOJI__HTTP__BINDD", "127.0.0.1:1")]),
            "unknown configuration key `http.bindd` (did you mean `http.bind`?), \
             set by the environment variable MEMOJI__HTTP__BINDD"
        );
        // Open tables (tiers, prices) take new entries; a known key in any layer is fine.
        let settings = layered(
            "[credits.allowances]\nfree = 5\n",
            &[("MEMOJI__AMQP__PREFETCH", "3")],
        );
        assert_eq!(settings.amqp.prefetch, 3);
    }

    #[test]
    fn edit_distance_counts_typos() {
        assert_eq!(edit_distance("prefech", "prefetch"), 1);
        assert_eq!(edit_distance("databse", "database"), 1);
        assert_eq!(edit_distance("", "abc"), 3);
        assert_eq!(edit_distance("same", "same"), 0);
    }

    #[test]
    fn a_config_file_error_names_the_file_as_given_once() {
        let dir = tempfile::tempdir().unwrap();
        let missing = dir.path().join("nope.toml");
        let error = Settings::load(Some(&missing)).unwrap_err();
        let printed = format!("{:#}", anyhow::Error::from(error));
        assert!(
            printed.starts_with(&format!("configuration file {}: ", missing.display())),
            "{printed}"
        );
        assert_eq!(printed.matches("nope.toml").count(), 1, "{printed}");

        let broken = dir.path().join("broken.toml");
        std::fs::write(&broken, "[amqp\nprefetch = 3\n").unwrap();
        let printed = format!(
            "{:#}",
            anyhow::Error::from(Settings::load(Some(&broken)).unwrap_err())
        );
        assert!(
            printed.starts_with(&format!("configuration file {}: ", broken.display())),
            "{printed}"
        );
        assert_eq!(printed.matches("broken.toml").count(), 1, "{printed}");
        assert_eq!(
            printed.matches("line 1").count(),
            1,
            "the TOML error once: {printed}"
        );
    }

    #[test]
    fn the_price_table_round_trips_from_toml_and_the_environment() {
        let defaults = Settings::defaults().unwrap().prices;
        let image = |p: &PriceSettings, model: &str, quality: &str| p.per_image[model][quality];
        // The defaults are OpenAI's per-token prices for the 2.x models (CONTRACT.md §11).
        for model in [
            "gpt_image_2_6_flare",
            "gpt_image_2_6_sunburst",
            "gpt_image_2_5_flare",
            "gpt_image_2_5_sunburst",
            "gpt_image_2",
        ] {
            assert_eq!(
                defaults.per_million_tokens[model],
                TokenPrices {
                    text_input: 5.0,
                    cached_text_input: 1.25,
                    image_input: 8.0,
                    image_output: 30.0
                },
                "{model}"
            );
        }
        assert_eq!(image(&defaults, "gpt_image_2_6_flare", "medium"), 0.04);

        // A file overrides one entry and keeps the rest.
        let file = "[prices.per_image.gpt_image_2_6_flare]\nhigh = 0.2\n";
        let from_file = layered(file, &[]).prices;
        assert_eq!(image(&from_file, "gpt_image_2_6_flare", "high"), 0.2);
        assert_eq!(image(&from_file, "gpt_image_2_6_flare", "max"), 0.40);

        // The environment, in upper case as deployments write it, wins over both.
        let from_env = layered(
            file,
            &[
                (
                    "MEMOJI__PRICES__PER_IMAGE__GPT_IMAGE_2_6_FLARE__HIGH",
                    "0.19",
                ),
                (
                    "MEMOJI__PRICES__PER_MILLION_TOKENS__GPT_IMAGE_2__IMAGE_OUTPUT",
                    "32.5",
                ),
                ("MEMOJI__OPENAI__SUCCESSORS__DALL_E_3", "gpt-image-2"),
            ],
        );
        assert_eq!(image(&from_env.prices, "gpt_image_2_6_flare", "high"), 0.19);
        let tokens = from_env.prices.per_million_tokens["gpt_image_2"];
        assert_eq!((tokens.image_output, tokens.text_input), (32.5, 5.0));
        assert_eq!(from_env.openai.successors["dall_e_3"], "gpt-image-2");
        assert_eq!(
            from_env.openai.successors["gpt_image_1"],
            "gpt-image-2.6-flare"
        );
        // Nothing else moved.
        assert_eq!(from_env.prices.per_image.len(), defaults.per_image.len());
    }

    #[test]
    fn storage_defaults_are_as_documented() {
        let storage = Settings::defaults().unwrap().storage;
        assert_eq!(storage.kind, StorageKind::Local);
        assert_eq!(storage.public_base_url, "", "each backend's own URL");
        assert_eq!(storage.cache_control, "public, max-age=31536000, immutable");
        assert_eq!(storage.request_timeout(), Duration::from_secs(30));
        assert_eq!(storage.s3.endpoint, "");
        assert_eq!(storage.s3.region, "us-east-1");
        assert_eq!(storage.s3.bucket, "memoji-images");
        assert!(!storage.s3.path_style);
        assert_eq!(storage.supabase.url, "");
        assert_eq!(storage.supabase.bucket, "memoji-images");
        for kind in ["local", "s3", "supabase"] {
            let parsed: StorageKind = serde_json::from_value(serde_json::json!(kind)).unwrap();
            assert_eq!(format!("{parsed:?}").to_lowercase(), kind);
        }
    }

    #[test]
    fn a_malformed_url_is_refused_without_being_quoted() {
        for (key, url) in [
            ("amqp.url", "amqp:guest:hunter2@broker:5672"),
            ("database.url", "postgres:memoji:hunter2@db/memoji"),
            ("database.url", "hunter2"),
        ] {
            let mut settings = Settings::defaults().unwrap();
            let secret = SecretString::from(url);
            if key == "amqp.url" {
                settings.amqp.url = secret;
            } else {
                settings.database.url = secret;
            }
            let error = settings.checked().unwrap_err().to_string();
            assert!(error.contains(key), "{error}");
            assert!(!error.contains("hunter2"), "{error}");
        }
        // A Unix-socket database URL has no host, and is fine.
        let mut settings = Settings::defaults().unwrap();
        settings.database.url = SecretString::from("postgres:///memoji?host=/run/postgresql");
        assert!(settings.checked().is_ok());
    }

    #[test]
    fn secrets_stay_out_of_debug_output() {
        let mut settings = Settings::defaults().unwrap();
        settings.amqp.url = SecretString::from("amqp://user:hunter2@broker:5672/%2f");
        settings.secrets.openai_api_key = Some(SecretString::from("sk-live-123"));
        settings.secrets.storage = StorageSecrets {
            s3_access_key_id: Some(SecretString::from("AKIA-id-123")),
            s3_secret_access_key: Some(SecretString::from("s3-secret-123")),
            s3_session_token: Some(SecretString::from("s3-token-123")),
            supabase_service_key: Some(SecretString::from("sb-service-123")),
        };
        let printed = format!("{settings:?}");
        for secret in [
            "hunter2",
            "sk-live-123",
            "AKIA-id-123",
            "s3-secret-123",
            "s3-token-123",
            "sb-service-123",
        ] {
            assert!(!printed.contains(secret), "{printed}");
        }
        assert_eq!(
            redacted_url(&settings.amqp.url),
            "amqp://user:***@broker:5672/%2f"
        );
    }
}
