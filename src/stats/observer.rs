//! The job path's one hook: [`Observer::settled`], called once per delivery when its outcome is
//! known, before it is settled. It counts the job in memory for the statistics, queues its
//! `job.completed` message, and records its Prometheus metrics. It never waits on I/O and cannot
//! fail, so a job is never slowed or lost because of statistics.
//!
//! What counts as what, from the result alone:
//! - `cached` → a hit, worth its entry's generation cost in savings;
//! - succeeded, not cached → a miss and a generation, with its cost;
//! - failed with any code but `invalid_job` → a miss that generated nothing (out of credits,
//!   refused, failed); `invalid_job` never reached the cache, so it is neither;
//! - a result answered again from the job table (a redelivery, a publisher's retry, a duplicate
//!   that waited for its twin's result) comes as [`Outcome::Replay`]: it was counted when it was
//!   made, so it is never counted again.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

use super::Tally;
use super::feed::{self, Feed};
use crate::db::stats::Counts;
use crate::job::Outcome;
use crate::job::{AvatarConfig, CacheKey, ErrorCode, GeneratorKind, JobId, JobResult, Status};
use crate::telemetry;
use crate::telemetry::trace::Incoming;

/// The `job.completed` message.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCompleted {
    /// The job this reports on.
    pub job_id: JobId,
    /// Whether it succeeded or failed.
    pub status: Status,
    /// Whether it was answered from the cache.
    pub cached: bool,
    /// Why it failed; `None` on success.
    pub error_code: Option<ErrorCode>,
    /// What generating it cost, USD (0 for a hit).
    pub cost_usd: f64,
    /// What the cache saved on it, USD.
    pub saved_usd: f64,
    /// How long the job took, milliseconds.
    pub duration_ms: u64,
    /// When it was answered, RFC 3339 with milliseconds (UTC).
    pub completed_at: String,
    /// The experiment and arm the job's user is in, as its result names them; absent outside
    /// every experiment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// The arm of `experiment`; present exactly when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
}

impl JobCompleted {
    /// The message for a job's result.
    pub fn of(result: &JobResult) -> JobCompleted {
        JobCompleted {
            job_id: result.job_id,
            status: result.status,
            cached: result.cached,
            error_code: result.error_code(),
            cost_usd: result.cost_usd,
            saved_usd: result.saved_usd,
            duration_ms: result.duration_ms,
            completed_at: result
                .completed_at
                .to_rfc3339_opts(SecondsFormat::Millis, true),
            experiment: result.experiment.clone(),
            arm: result.arm.clone(),
        }
    }
}

/// Shared by every in-flight job of a process.
#[derive(Debug)]
pub struct Observer {
    tally: Arc<Tally>,
    feed: Feed,
    hits: AtomicU64,
    misses: AtomicU64,
}

impl Observer {
    /// An observer that counts into `tally` and queues its messages on `feed`.
    pub fn new(tally: Arc<Tally>, feed: Feed) -> Observer {
        Observer {
            tally,
            feed,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// A job asked for `key` (a delivery that owns its job, before the cache lookup's outcome):
    /// counted in memory for the request history that cache warming reads.
    pub fn asked(&self, key: &CacheKey, config: &AvatarConfig, generator: GeneratorKind) {
        self.tally.requests.asked(key, config, generator);
    }

    /// The feed the `job.completed` messages are queued on.
    pub fn feed(&self) -> &Feed {
        &self.feed
    }

    /// Records a delivery's outcome. `body` is the delivery's (its configuration is read again
    /// for the analytics' breakdowns); `received` is when the delivery arrived; `took` how long
    /// it took; `enqueued_at` the AMQP timestamp (seconds) its publisher set, if any; `trace` the
    /// job's trace context, which its `job.completed` message carries on.
    pub fn settled(
        &self,
        outcome: &Outcome,
        body: &[u8],
        received: DateTime<Utc>,
        took: Duration,
        enqueued_at: Option<u64>,
        trace: &Incoming,
    ) {
        let lag = enqueued_at
            .and_then(|at| i64::try_from(at).ok())
            .and_then(|at| u64::try_from(received.timestamp() - at).ok())
            .map(Duration::from_secs);
        if let Some(lag) = lag {
            telemetry::record_queue_lag(lag);
        }
        match outcome {
            Outcome::Replay(result) => {
                telemetry::count_job("replayed", None, result.cached, took);
            }
            Outcome::Answer(result) => {
                self.fresh(result, took, trace);
                self.tally
                    .add_job(result, config_of(result, body).as_ref(), lag);
            }
            Outcome::Reject { answer, .. } => {
                telemetry::count_job(
                    "rejected",
                    Some(ErrorCode::InvalidJob.as_str()),
                    false,
                    took,
                );
                if let Some(result) = answer {
                    self.feed.send_with(
                        feed::JOB_COMPLETED,
                        &JobCompleted::of(result),
                        trace.outgoing(),
                    );
                }
            }
            Outcome::Retry { .. } => telemetry::count_job("retried", None, false, took),
        }
    }

    fn fresh(&self, result: &JobResult, took: Duration, trace: &Incoming) {
        let code = result.error_code();
        let (label, counts) = match (result.status, result.cached, code) {
            (Status::Succeeded, true, _) => (
                "hit",
                Counts {
                    hits: 1,
                    saved_usd: result.saved_usd,
                    ..Counts::default()
                },
            ),
            (Status::Succeeded, false, _) => (
                "generated",
                Counts {
                    misses: 1,
                    generations: 1,
                    generation_cost_usd: result.cost_usd,
                    ..Counts::default()
                },
            ),
            (Status::Failed, _, Some(ErrorCode::InvalidJob)) => ("invalid", Counts::default()),
            // A preview (`only_if_cached`) that found nothing: neither a miss nor a failure.
            (Status::Failed, _, Some(ErrorCode::NotCached)) => ("not_cached", Counts::default()),
            (Status::Failed, _, _) => (
                "failed",
                Counts {
                    misses: 1,
                    failures: 1,
                    ..Counts::default()
                },
            ),
        };
        telemetry::count_job(label, code.map(ErrorCode::as_str), result.cached, took);
        if !counts.is_empty() {
            self.tally.add(result.completed_at, &counts);
            let hits =
                self.hits.fetch_add(counts.hits as u64, Ordering::Relaxed) + counts.hits as u64;
            let misses = self
                .misses
                .fetch_add(counts.misses as u64, Ordering::Relaxed)
                + counts.misses as u64;
            telemetry::set_hit_ratio(hits as f64 / (hits + misses).max(1) as f64);
            telemetry::add_costs(counts.generation_cost_usd, counts.saved_usd);
        }
        self.feed.send_with(
            feed::JOB_COMPLETED,
            &JobCompleted::of(result),
            trace.outgoing(),
        );
    }
}

/// The job's configuration, read again from its body (a few microseconds; intake has checked it
/// already), for a job that reached the cache.
fn config_of(result: &JobResult, body: &[u8]) -> Option<AvatarConfig> {
    if result.error_code() == Some(ErrorCode::InvalidJob) {
        return None;
    }
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    AvatarConfig::parse(value.get("config").unwrap_or(&serde_json::Value::Null)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What the analytics add to each settled job, on this thread: reading the configuration
    /// again and counting it in the batch. Not a pass/fail test; run it to measure
    /// (`cargo nextest run --run-ignored only -E 'test(analytics_hook_cost)' --no-capture`).
    #[test]
    #[ignore = "a measurement, see BENCHMARKS.md"]
    fn analytics_hook_cost() {
        let tally = Tally::default();
        let body = br#"{"job_id":"6f1c1d7e-4a55-4c4b-9a55-6b1d0b9f1a11","user_id":"u-1","tier":"free",
            "config":{"model":"gpt-image-1","size":"1024x1024","familyType":"mother","gesture":"wave",
            "hair":"long","skinTone":"medium","accessories":["glasses","hat"],"colorTheme":"pastel-blue"}}"#;
        let mut result = JobResult::failure(
            JobId(uuid::Uuid::nil()),
            "u-1",
            None,
            crate::job::JobError::new(ErrorCode::Internal, "x", true),
        );
        result.status = Status::Succeeded;
        result.error = None;
        result.cached = true;
        result.prompt_hash = Some("ab".repeat(32));
        result.storage_path = Some(format!("2026/11/{}.png", "ab".repeat(32)));
        let n = 100_000;
        let started = std::time::Instant::now();
        for i in 0..n {
            result.user_id = format!("u-{}", i % 1000);
            let config = config_of(&result, body);
            tally.add_job(&result, config.as_ref(), Some(Duration::from_secs(1)));
        }
        let per_job = started.elapsed() / n;
        println!("analytics hook: {per_job:?} per job ({n} jobs)");
        // The same jobs, each in an experiment's arm (one more map entry per hour and arm).
        result.experiment = Some("freshness".to_owned());
        let started = std::time::Instant::now();
        for i in 0..n {
            result.user_id = format!("u-{}", i % 1000);
            result.arm = Some(if i % 2 == 0 { "control" } else { "fresh" }.to_owned());
            let config = config_of(&result, body);
            tally.add_job(&result, config.as_ref(), Some(Duration::from_secs(1)));
        }
        let per_job = started.elapsed() / n;
        println!("analytics hook, jobs in an arm: {per_job:?} per job ({n} jobs)");
    }
}
