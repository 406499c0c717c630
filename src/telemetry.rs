//! Logging, traces and metrics.
//!
//! Logging: `tracing` with a level filter from RUST_LOG or configuration; pretty (colours on a
//! terminal only), plain or JSON lines, `auto` picking pretty on a terminal and JSON elsewhere.
//! Every line of a job's work carries its `job_id` through the `job` span. The libraries' routine
//! chatter is filtered out by default ([`QUIET`]), and the AMQP client's logging is capped at debug
//! whatever RUST_LOG says ([`AMQP_CAP`]): at trace it prints the connection's PLAIN response, which
//! carries the broker password.
//!
//! Traces: [`trace`] continues a job's W3C trace context across the queue, and with
//! `telemetry.otlp_endpoint` set, exports the worker's spans over OTLP; the `job` span records the
//! trace id (`trace_id`), so a job's log lines carry it.
//!
//! Metrics: the `metrics` facade with a Prometheus recorder, rendered by `GET /metrics`. Every
//! metric name is a constant here, described once in [`install_prometheus`], and recorded through
//! the small functions below, so call sites in the pipeline stay one line long. Recording never
//! fails and never blocks: with no recorder installed it does nothing.

pub mod trace;

use std::sync::OnceLock;
use std::time::Duration;

use metrics::{
    Unit, counter, describe_counter, describe_gauge, describe_histogram, gauge, histogram,
};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use std::io::IsTerminal as _;
use tracing_subscriber::filter::{LevelFilter, Targets};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;
use tracing_subscriber::{EnvFilter, Layer, Registry};

use crate::config::{LogFormat, LogSettings, TelemetrySettings};

/// Counter of jobs settled, by `outcome` (hit, generated, failed, invalid, rejected, retried,
/// replayed).
pub(crate) const JOBS: &str = "memoji_jobs_total";
pub(crate) const JOB_FAILURES: &str = "memoji_job_failures_total";
pub(crate) const JOB_DURATION: &str = "memoji_job_duration_seconds";
pub(crate) const QUEUE_LAG: &str = "memoji_job_queue_lag_seconds";
pub(crate) const HIT_RATIO: &str = "memoji_cache_hit_ratio";
pub(crate) const GENERATION_COST: &str = "memoji_generation_cost_usd";
pub(crate) const SAVED: &str = "memoji_saved_usd";
pub(crate) const OPENAI_REQUESTS: &str = "memoji_openai_requests_total";
pub(crate) const OPENAI_RETRIES: &str = "memoji_openai_retries_total";
pub(crate) const OPENAI_MODEL_NOT_FOUND: &str = "memoji_openai_model_not_found_total";
pub(crate) const OPENAI_MODEL_DAYS_LEFT: &str = "memoji_openai_model_days_left";
pub(crate) const OPENAI_MODEL_UNKNOWN: &str = "memoji_openai_model_unknown";
pub(crate) const CREDITS_CHARGED: &str = "memoji_credits_charged_total";
pub(crate) const CREDITS_REFUNDED: &str = "memoji_credits_refunded_total";
pub(crate) const FEED_PUBLISHED: &str = "memoji_metrics_messages_published_total";
pub(crate) const FEED_DROPPED: &str = "memoji_metrics_messages_dropped_total";
pub(crate) const STATS_FLUSH_FAILURES: &str = "memoji_stats_flush_failures_total";
pub(crate) const CLEANUP_RUNS: &str = "memoji_cleanup_runs_total";
pub(crate) const CLEANUP_DELETED: &str = "memoji_cleanup_deleted_total";
pub(crate) const CLEANUP_ARCHIVED: &str = "memoji_cleanup_archived_total";
pub(crate) const CLEANUP_BYTES_FREED: &str = "memoji_cleanup_bytes_freed_total";
pub(crate) const HIT_BATCHES: &str = "memoji_hit_batches_total";
pub(crate) const HIT_BATCH_JOBS: &str = "memoji_hit_batch_jobs_total";
pub(crate) const HIT_BATCH_FALLBACKS: &str = "memoji_hit_batch_fallbacks_total";
pub(crate) const ACK_FRAMES: &str = "memoji_ack_frames_total";
pub(crate) const ACKED_DELIVERIES: &str = "memoji_acked_deliveries_total";

/// Seconds: from a cache hit (milliseconds) to a slow generation with retries (minutes).
const SECONDS_BUCKETS: [f64; 15] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
];

/// Directives added after the configured level (and RUST_LOG), unless RUST_LOG names the target
/// itself: notices and chatter that every start produces and nobody needs.
/// - sqlx's `relation "_sqlx_migrations" already exists, skipping` notice on every migration run;
/// - tokio-cron-scheduler's `Uninited` / `Job creator created` lines;
/// - lapin's own lines: every failure it logs also comes back to the worker as an error, which the
///   worker logs once with what it does about it (a connection refused showed up three times
///   more), and its WARN for a returned message dumps the whole body as a decimal byte array (the
///   worker logs one line of its own for an unroutable reply, see `broker::publish_result`).
pub(crate) const QUIET: [&str; 3] = [
    "sqlx::postgres::notice=warn",
    "tokio_cron_scheduler=warn",
    "lapin=off",
];

/// Targets whose logging never goes below debug, even under RUST_LOG=trace: lapin and amq-protocol
/// trace every frame, including the connection's PLAIN response with the broker password.
pub(crate) const AMQP_CAP: [&str; 2] = ["lapin", "amq_protocol"];

/// Installs the global subscriber, writing to stderr, with the span exporter when
/// `telemetry.otlp_endpoint` is set (call it inside the Tokio runtime). A second call (tests)
/// installs nothing. The exporter that comes back is to be shut down before the process ends, so
/// the last spans go out.
pub fn init(
    log: &LogSettings,
    telemetry: &TelemetrySettings,
) -> Result<Option<trace::Exporter>, trace::TraceError> {
    let rust_log = std::env::var("RUST_LOG").ok();
    let terminal = std::io::stderr().is_terminal();
    let exporter = trace::Exporter::from_settings(telemetry)?;
    let tracer = exporter.as_ref().map(trace::Exporter::tracer);
    let installed = subscriber(log, rust_log.as_deref(), terminal, std::io::stderr, tracer)
        .try_init()
        .is_ok();
    match exporter {
        Some(exporter) if installed => {
            trace::exporting_from_now_on();
            tracing::info!(endpoint = %exporter.url(), "exporting traces over OTLP");
            Ok(Some(exporter))
        }
        Some(exporter) => {
            exporter.shutdown();
            Ok(None)
        }
        None => Ok(None),
    }
}

/// The subscriber [`init`] installs, writing to `writer`; `terminal` says whether that is a
/// terminal (colours, and what `auto` means). With a `tracer`, the worker's own spans (and their
/// info-and-above events) become OpenTelemetry spans too; no other crate's.
pub(crate) fn subscriber<W>(
    settings: &LogSettings,
    rust_log: Option<&str>,
    terminal: bool,
    writer: W,
    tracer: Option<opentelemetry_sdk::trace::SdkTracer>,
) -> impl tracing::Subscriber + Send + Sync + 'static
where
    W: for<'w> MakeWriter<'w> + Send + Sync + 'static,
{
    let layer = tracing_subscriber::fmt::layer().with_writer(writer);
    let layer: Box<dyn Layer<Registry> + Send + Sync> = match settings.format.resolve(terminal) {
        LogFormat::Json => layer.json().flatten_event(true).boxed(),
        LogFormat::Pretty => layer.compact().with_ansi(terminal).boxed(),
        LogFormat::Plain | LogFormat::Auto => layer.compact().with_ansi(false).boxed(),
    };
    let spans = tracer.map(|tracer| {
        tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_threads(false)
            .with_tracked_inactivity(false)
            .with_filter(tracing_subscriber::filter::filter_fn(|meta| {
                let level = if meta.is_span() {
                    tracing::Level::DEBUG
                } else {
                    tracing::Level::INFO
                };
                meta.target().starts_with("memoji_worker") && *meta.level() <= level
            }))
    });
    tracing_subscriber::registry()
        .with(
            layer
                .with_filter(filter(&settings.level, rust_log))
                .with_filter(amqp_cap()),
        )
        .with(spans)
}

/// The level filter: RUST_LOG if set and valid, else the configured level, plus [`QUIET`] for the
/// targets it does not name.
pub fn filter(level: &str, rust_log: Option<&str>) -> EnvFilter {
    let base = rust_log
        .filter(|directives| !directives.trim().is_empty())
        .and_then(|directives| EnvFilter::try_new(directives).ok().map(|f| (f, directives)));
    let (mut filter, named) = match base {
        Some((filter, directives)) => (filter, directives.to_owned()),
        None => (
            EnvFilter::try_new(level).unwrap_or_else(|_| EnvFilter::new("info")),
            level.to_owned(),
        ),
    };
    for directive in QUIET {
        let target = directive.split('=').next().unwrap_or(directive);
        if !named.contains(target)
            && let Ok(directive) = directive.parse()
        {
            filter = filter.add_directive(directive);
        }
    }
    filter
}

/// Drops trace-level events and spans of [`AMQP_CAP`]'s targets, whatever the other filters say.
pub(crate) fn amqp_cap() -> Targets {
    AMQP_CAP.into_iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |targets, target| targets.with_target(target, LevelFilter::DEBUG),
    )
}

/// An error and its causes, outermost first, each said once: a cause whose text its parent already
/// includes (many libraries print their source inside their own message) is skipped.
pub fn causes(error: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut next = Some(error);
    while let Some(error) = next {
        let text = error.to_string();
        match parts.last_mut() {
            _ if text.is_empty() => {}
            Some(last) if last.contains(&text) => {}
            // A generic parent ("database") whose cause says it all ("database: …").
            Some(last) if text.contains(last.as_str()) => *last = text,
            _ => parts.push(text),
        }
        next = error.source();
    }
    parts.join(": ")
}

/// The process's Prometheus recorder, installed on first call. Metrics are process-wide: several
/// `App`s in one process (tests) share them. `None` if another recorder was installed first.
pub(crate) fn install_prometheus() -> Option<&'static PrometheusHandle> {
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
        HIT_BATCHES,
        "Batches of hits written with one commit (group commit); jobs ÷ batches is the mean size"
    );
    describe_counter!(
        HIT_BATCH_JOBS,
        "Deliveries that went through a batch of hits"
    );
    describe_counter!(
        HIT_BATCH_FALLBACKS,
        "Batches the database refused, whose jobs took the one-job path"
    );
    describe_counter!(
        ACK_FRAMES,
        "basic.ack frames sent for job deliveries (one can ack a run of them: multiple)"
    );
    describe_counter!(ACKED_DELIVERIES, "Job deliveries acked");
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
pub(crate) fn count_job(
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

/// The span a spawned task runs in, so its log lines (and its traces) say which task wrote them:
/// `task{name="stats flush"}`. Tokio's own task names need an unstable build; this needs none.
pub(crate) fn task(name: &'static str) -> tracing::Span {
    tracing::info_span!("task", name)
}

/// One batch of `jobs` deliveries through group commit; `failed` when its jobs fell back.
pub(crate) fn count_hit_batch(jobs: usize, failed: bool) {
    counter!(HIT_BATCHES).increment(1);
    counter!(HIT_BATCH_JOBS).increment(jobs as u64);
    if failed {
        counter!(HIT_BATCH_FALLBACKS).increment(1);
    }
}

/// One ack frame sent, acking `deliveries` job deliveries.
pub(crate) fn count_ack_frame(deliveries: usize) {
    counter!(ACK_FRAMES).increment(1);
    counter!(ACKED_DELIVERIES).increment(deliveries as u64);
}

pub(crate) fn record_queue_lag(lag: Duration) {
    histogram!(QUEUE_LAG).record(lag.as_secs_f64());
}

pub(crate) fn set_hit_ratio(ratio: f64) {
    gauge!(HIT_RATIO).set(ratio);
}

pub(crate) fn add_costs(generation_cost_usd: f64, saved_usd: f64) {
    if generation_cost_usd != 0.0 {
        gauge!(GENERATION_COST).increment(generation_cost_usd);
    }
    if saved_usd != 0.0 {
        gauge!(SAVED).increment(saved_usd);
    }
}

pub(crate) fn count_openai_request(outcome: &'static str) {
    counter!(OPENAI_REQUESTS, "outcome" => outcome).increment(1);
}

/// A `404 model_not_found` for `model` during a job.
pub(crate) fn count_model_not_found(model: &str) {
    metrics::counter!(OPENAI_MODEL_NOT_FOUND, "model" => model.to_owned()).increment(1);
}

/// What the lifecycle check learnt of a model: days to its `shutdown_date` (none: no gauge), and
/// whether OpenAI knows it at all.
pub(crate) fn set_model_lifecycle(model: &str, days_left: Option<i64>, unknown: bool) {
    if let Some(days) = days_left {
        metrics::gauge!(OPENAI_MODEL_DAYS_LEFT, "model" => model.to_owned()).set(days as f64);
    }
    metrics::gauge!(OPENAI_MODEL_UNKNOWN, "model" => model.to_owned())
        .set(f64::from(u8::from(unknown)));
}

pub(crate) fn count_openai_retry() {
    counter!(OPENAI_RETRIES).increment(1);
}

pub(crate) fn count_credit_charged() {
    counter!(CREDITS_CHARGED).increment(1);
}

pub(crate) fn count_credit_refunded() {
    counter!(CREDITS_REFUNDED).increment(1);
}

pub(crate) fn count_feed_published(routing_key: &'static str) {
    counter!(FEED_PUBLISHED, "routing_key" => routing_key).increment(1);
}

pub(crate) fn count_feed_dropped(routing_key: &'static str) {
    counter!(FEED_DROPPED, "routing_key" => routing_key).increment(1);
}

pub(crate) fn count_stats_flush_failure() {
    counter!(STATS_FLUSH_FAILURES).increment(1);
}

pub(crate) fn count_cleanup(result: &'static str, deleted: u64, archived: u64, bytes_freed: u64) {
    counter!(CLEANUP_RUNS, "result" => result).increment(1);
    counter!(CLEANUP_DELETED).increment(deleted);
    counter!(CLEANUP_ARCHIVED).increment(archived);
    counter!(CLEANUP_BYTES_FREED).increment(bytes_freed);
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::*;

    /// A log destination the test can read.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl std::io::Write for Buffer {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// What `emit` logs through the subscriber `init` would install.
    fn logged(
        format: LogFormat,
        level: &str,
        rust_log: Option<&str>,
        terminal: bool,
        emit: impl FnOnce(),
    ) -> String {
        let buffer = Buffer::default();
        let settings = LogSettings {
            format,
            level: level.to_owned(),
        };
        let writer = buffer.clone();
        let subscriber = subscriber(&settings, rust_log, terminal, move || writer.clone(), None);
        tracing::subscriber::with_default(subscriber, emit);
        String::from_utf8(buffer.0.lock().unwrap().clone()).unwrap()
    }

    #[test]
    fn amqp_logging_stays_at_debug_even_under_rust_log_trace() {
        for rust_log in [
            "trace",
            "trace,lapin=trace,amq_protocol=trace",
            "lapin=trace",
        ] {
            let out = logged(LogFormat::Plain, "info", Some(rust_log), false, || {
                tracing::trace!(target: "lapin::io_loop", "frame with the PLAIN response hunter2");
                tracing::trace!(target: "amq_protocol::frame", "hunter2 again");
                tracing::debug!(target: "lapin::io_loop", "lapin debug line");
                tracing::trace!(target: "memoji_worker::worker", "own trace line");
            });
            assert!(!out.contains("hunter2"), "{rust_log}: {out}");
            if rust_log.contains("lapin") {
                assert!(out.contains("lapin debug line"), "{rust_log}: {out}");
            }
            if rust_log.starts_with("trace") {
                assert!(out.contains("own trace line"), "{rust_log}: {out}");
            }
        }
    }

    #[test]
    fn routine_library_notices_are_left_out_unless_asked_for() {
        let emit = || {
            tracing::info!(target: "sqlx::postgres::notice", "relation \"_sqlx_migrations\" already exists, skipping");
            tracing::info!(target: "tokio_cron_scheduler::job_scheduler", "Job creator created");
            tracing::warn!(target: "lapin::returned_messages", "Server returned us a message [123, 34]");
            tracing::error!(target: "lapin::channels", "Connection error");
            tracing::info!(target: "memoji_worker::app", "memoji-worker ready");
            tracing::warn!(target: "sqlx::postgres::notice", "a real warning");
        };
        let out = logged(LogFormat::Plain, "info", None, false, emit);
        assert!(out.contains("memoji-worker ready"), "{out}");
        assert!(out.contains("a real warning"), "{out}");
        for noise in [
            "_sqlx_migrations",
            "Job creator",
            "returned us",
            "Connection error",
        ] {
            assert!(!out.contains(noise), "{noise}: {out}");
        }
        // RUST_LOG replaces the level; naming a target brings its lines back.
        let out = logged(
            LogFormat::Plain,
            "info",
            Some("info,lapin=warn"),
            false,
            emit,
        );
        assert!(out.contains("returned us"), "{out}");
        assert!(!out.contains("_sqlx_migrations"), "{out}");
        let out = logged(LogFormat::Plain, "info", Some("warn"), false, emit);
        assert!(!out.contains("memoji-worker ready"), "{out}");
    }

    #[test]
    fn colours_only_on_a_terminal_and_auto_means_json_elsewhere() {
        let emit =
            || tracing::info!(target: "memoji_worker::app", answer = 42, "memoji-worker ready");
        let auto_piped = logged(LogFormat::Auto, "info", None, false, emit);
        let line: serde_json::Value =
            serde_json::from_str(auto_piped.trim()).expect("JSON when piped");
        assert_eq!(line["message"], "memoji-worker ready");
        assert_eq!(line["answer"], 42);
        let auto_terminal = logged(LogFormat::Auto, "info", None, true, emit);
        assert!(
            auto_terminal.contains("\x1b["),
            "pretty and coloured: {auto_terminal:?}"
        );
        assert!(serde_json::from_str::<serde_json::Value>(auto_terminal.trim()).is_err());
        let pretty_piped = logged(LogFormat::Pretty, "info", None, false, emit);
        assert!(!pretty_piped.contains('\x1b'), "{pretty_piped:?}");
        assert!(
            pretty_piped.contains("memoji-worker ready answer=42"),
            "{pretty_piped:?}"
        );
        let plain_terminal = logged(LogFormat::Plain, "info", None, true, emit);
        assert!(!plain_terminal.contains('\x1b'), "{plain_terminal:?}");
    }

    #[test]
    fn a_jobs_log_lines_carry_its_trace_id_in_json_and_text() {
        use lapin::types::{AMQPValue, FieldTable};
        let mut headers = FieldTable::default();
        headers.insert(
            trace::TRACEPARENT.into(),
            AMQPValue::LongString("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into()),
        );
        let incoming = trace::Incoming::from_headers(Some(&headers));
        let emit = || {
            let span = tracing::info_span!(
                "job",
                job_id = tracing::field::Empty,
                trace_id = tracing::field::Empty
            );
            incoming.adopt(&span);
            span.in_scope(|| tracing::info!(target: "memoji_worker::worker", "result published"));
        };
        let json = logged(LogFormat::Json, "info", None, false, emit);
        let line: serde_json::Value = serde_json::from_str(json.trim()).expect("one JSON line");
        assert_eq!(
            line["span"]["trace_id"], "4bf92f3577b34da6a3ce929d0e0e4736",
            "{json}"
        );
        let plain = logged(LogFormat::Plain, "info", None, false, emit);
        assert!(
            plain.contains("result published trace_id=4bf92f3577b34da6a3ce929d0e0e4736"),
            "{plain}"
        );
    }

    #[derive(Debug, thiserror::Error)]
    #[error("connecting to postgres://x@y/z")]
    struct Outer(#[source] Middle);

    #[derive(Debug, thiserror::Error)]
    #[error("database: {0}")]
    struct Middle(#[source] Inner);

    #[derive(Debug, thiserror::Error)]
    #[error("role \"nosuchuser\" does not exist")]
    struct Inner;

    #[derive(Debug, thiserror::Error)]
    #[error("database")]
    struct Generic(#[source] Middle);

    #[test]
    fn causes_are_printed_once_outermost_first() {
        assert_eq!(
            causes(&Outer(Middle(Inner))),
            "connecting to postgres://x@y/z: database: role \"nosuchuser\" does not exist"
        );
        assert_eq!(
            causes(&Generic(Middle(Inner))),
            "database: role \"nosuchuser\" does not exist"
        );
        assert_eq!(causes(&Inner), "role \"nosuchuser\" does not exist");
    }
}
