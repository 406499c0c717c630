//! Logging and metrics.
//!
//! Logging: `tracing` with a level filter from RUST_LOG or configuration, pretty or JSON lines.
//! Every line of a job's work carries its `job_id` through the `job` span.
//!
//! Metrics: the `metrics` facade with a Prometheus recorder, rendered by `GET /metrics`. Every
//! metric name is a constant here, described once in [`install_prometheus`], and recorded through
//! the small functions below, so call sites in the pipeline stay one line long. Recording never
//! fails and never blocks: with no recorder installed it does nothing.

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::config::{LogFormat, LogSettings};

pub const JOBS: &str = "memoji_jobs_total";
pub const JOB_FAILURES: &str = "memoji_job_failures_total";
pub const JOB_DURATION: &str = "memoji_job_duration_seconds";
pub const QUEUE_LAG: &str = "memoji_job_queue_lag_seconds";
pub const HIT_RATIO: &str = "memoji_cache_hit_ratio";
pub const GENERATION_COST: &str = "memoji_generation_cost_usd";
pub const SAVED: &str = "memoji_saved_usd";
pub const OPENAI_REQUESTS: &str = "memoji_openai_requests_total";
pub const OPENAI_RETRIES: &str = "memoji_openai_retries_total";
pub const OPENAI_MODEL_NOT_FOUND: &str = "memoji_openai_model_not_found_total";
pub const OPENAI_MODEL_DAYS_LEFT: &str = "memoji_openai_model_days_left";
pub const OPENAI_MODEL_UNKNOWN: &str = "memoji_openai_model_unknown";
pub const CREDITS_CHARGED: &str = "memoji_credits_charged_total";
pub const CREDITS_REFUNDED: &str = "memoji_credits_refunded_total";
pub const FEED_PUBLISHED: &str = "memoji_metrics_messages_published_total";
pub const FEED_DROPPED: &str = "memoji_metrics_messages_dropped_total";
pub const STATS_FLUSH_FAILURES: &str = "memoji_stats_flush_failures_total";
pub const CLEANUP_RUNS: &str = "memoji_cleanup_runs_total";
pub const CLEANUP_DELETED: &str = "memoji_cleanup_deleted_total";
pub const CLEANUP_ARCHIVED: &str = "memoji_cleanup_archived_total";
pub const CLEANUP_BYTES_FREED: &str = "memoji_cleanup_bytes_freed_total";

/// Seconds: from a cache hit (milliseconds) to a slow generation with retries (minutes).
const SECONDS_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Installs the global subscriber; a second call (tests) is a no-op.
pub fn init(settings: &LogSettings) {
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&settings.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match settings.format {
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
        LogFormat::Pretty => builder.compact().try_init(),
    };
}

/// The process's Prometheus recorder, installed on first call. Metrics are process-wide: several
/// `App`s in one process (tests) share them. `None` if another recorder was installed first.
pub fn install_prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let installed = PrometheusBuilder::new()
                .set_buckets(&SECONDS_BUCKETS)
                .and_then(PrometheusBuilder::install_recorder);
            match installed {
                Ok(handle) => {
                    describe();
                    Some(handle)
                }
                Err(error) => {
                    tracing::warn!(%error, "no Prometheus metrics: cannot install the recorder");
                    None
                }
            }
        })
        .as_ref()
}

fn describe() {
    describe_counter!(
        JOBS,
        "Jobs settled, by outcome: hit, generated, failed, invalid, rejected, retried, replayed"
    );
    describe_counter!(JOB_FAILURES, "Failed results, by error code");
    describe_histogram!(
        JOB_DURATION,
        Unit::Seconds,
        "Time from delivery to result, by whether the result was cached"
    );
    describe_histogram!(
        QUEUE_LAG,
        Unit::Seconds,
        "Time a job waited in the queue (from its AMQP timestamp, when the publisher set one)"
    );
    describe_gauge!(
        HIT_RATIO,
        "Hits ÷ (hits + misses) served by this process since it started"
    );
    describe_gauge!(
        GENERATION_COST,
        "Dollars spent on generations by this process since it started"
    );
    describe_gauge!(
        SAVED,
        "Dollars hits saved (their entries' generation cost) in this process since it started"
    );
    describe_counter!(
        OPENAI_REQUESTS,
        "HTTP requests to OpenAI's image API, by outcome: ok, retryable_error, final_error"
    );
    describe_counter!(
        OPENAI_RETRIES,
        "OpenAI requests repeated after a retryable failure"
    );
    describe_counter!(
        OPENAI_MODEL_NOT_FOUND,
        "Generations OpenAI refused with 404 model_not_found, by model (not retried, refunded)"
    );
    describe_gauge!(
        OPENAI_MODEL_DAYS_LEFT,
        "Days until OpenAI shuts the model down (its shutdown_date), for models with a date"
    );
    describe_gauge!(
        OPENAI_MODEL_UNKNOWN,
        "1 when OpenAI answered 404 for a model the worker may call, else 0"
    );
    describe_counter!(CREDITS_CHARGED, "Credits charged for misses");
    describe_counter!(
        CREDITS_REFUNDED,
        "Credits given back after failed generations"
    );
    describe_counter!(
        FEED_PUBLISHED,
        "Messages published to the metrics exchange, by routing key"
    );
    describe_counter!(
        FEED_DROPPED,
        "Metrics messages dropped because the feed's buffer was full"
    );
    describe_counter!(
        STATS_FLUSH_FAILURES,
        "Failed writes of the in-memory statistics to Postgres (retried)"
    );
    describe_counter!(
        CLEANUP_RUNS,
        "Cleanup runs, by result: completed, skipped (another replica held the lock), failed"
    );
    describe_counter!(CLEANUP_DELETED, "Cache entries deleted by cleanups");
    describe_counter!(CLEANUP_ARCHIVED, "Cache entries archived by cleanups");
    describe_counter!(
        CLEANUP_BYTES_FREED,
        Unit::Bytes,
        "Image bytes freed by cleanups"
    );
}

/// One settled job: its outcome label, failure code, and time from delivery to result.
pub fn count_job(
    outcome: &'static str,
    failure: Option<&'static str>,
    cached: bool,
    took: Duration,
) {
    counter!(JOBS, "outcome" => outcome).increment(1);
    if let Some(code) = failure {
        counter!(JOB_FAILURES, "code" => code).increment(1);
    }
    let cached = if cached { "true" } else { "false" };
    histogram!(JOB_DURATION, "cached" => cached).record(took.as_secs_f64());
}

pub fn record_queue_lag(lag: Duration) {
    histogram!(QUEUE_LAG).record(lag.as_secs_f64());
}

pub fn set_hit_ratio(ratio: f64) {
    gauge!(HIT_RATIO).set(ratio);
}

pub fn add_costs(generation_cost_usd: f64, saved_usd: f64) {
    if generation_cost_usd != 0.0 {
        gauge!(GENERATION_COST).increment(generation_cost_usd);
    }
    if saved_usd != 0.0 {
        gauge!(SAVED).increment(saved_usd);
    }
}

pub fn count_openai_request(outcome: &'static str) {
    counter!(OPENAI_REQUESTS, "outcome" => outcome).increment(1);
}

/// A `404 model_not_found` for `model` during a job.
pub fn count_model_not_found(model: &str) {
    metrics::counter!(OPENAI_MODEL_NOT_FOUND, "model" => model.to_owned()).increment(1);
}

/// What the lifecycle check learnt of a model: days to its `shutdown_date` (none: no gauge), and
/// whether OpenAI knows it at all.
pub fn set_model_lifecycle(model: &str, days_left: Option<i64>, unknown: bool) {
    if let Some(days) = days_left {
        metrics::gauge!(OPENAI_MODEL_DAYS_LEFT, "model" => model.to_owned()).set(days as f64);
    }
    metrics::gauge!(OPENAI_MODEL_UNKNOWN, "model" => model.to_owned())
        .set(f64::from(u8::from(unknown)));
}

pub fn count_openai_retry() {
    counter!(OPENAI_RETRIES).increment(1);
}

pub fn count_credit_charged() {
    counter!(CREDITS_CHARGED).increment(1);
}

pub fn count_credit_refunded() {
    counter!(CREDITS_REFUNDED).increment(1);
}

pub fn count_feed_published(routing_key: &'static str) {
    counter!(FEED_PUBLISHED, "routing_key" => routing_key).increment(1);
}

pub fn count_feed_dropped(routing_key: &'static str) {
    counter!(FEED_DROPPED, "routing_key" => routing_key).increment(1);
}

pub fn count_stats_flush_failure() {
    counter!(STATS_FLUSH_FAILURES).increment(1);
}

pub fn count_cleanup(result: &'static str, deleted: u64, archived: u64, bytes_freed: u64) {
    counter!(CLEANUP_RUNS, "result" => result).increment(1);
    counter!(CLEANUP_DELETED).increment(deleted);
    counter!(CLEANUP_ARCHIVED).increment(archived);
    counter!(CLEANUP_BYTES_FREED).increment(bytes_freed);
}
