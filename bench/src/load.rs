//! The load generator: publishes jobs as a web app would (persistent, mandatory, publisher
//! confirms), and collects their results from the result queue.
//!
//! Confirms are pipelined: up to [`CONFIRM_WINDOW`] publishes are awaiting the broker's confirm at
//! once, instead of one round trip per job. A rate-limited run publishes job `i` at
//! `start + i / rate` and measures its latency from that intended time, so a publisher that falls
//! behind does not hide queueing (no coordinated omission).
//!
//! Latency is end to end: from publishing the job to the collector receiving its result. The
//! worker does not copy a job's AMQP headers onto its result (CONTRACT.md does not ask it to), so
//! the send time travels in the job id instead: a job id is `(run tag, sequence number)` as a UUID,
//! and the result's `message_id` — the job id — tells the collector which send time to subtract.
//! The sequence number is also sent as the `x-bench-seq` header, for anyone reading the queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use hdrhistogram::Histogram;
use lapin::options::{BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Confirmation};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::env::Bench;

/// Publishes awaiting their confirm at once.
const CONFIRM_WINDOW: usize = 4096;
/// A run ends when no result arrived for this long (something is stuck or lost).
const IDLE_LIMIT: Duration = Duration::from_secs(60);

/// What a job asks for.
pub struct JobSpec {
    pub user_id: String,
    pub tier: &'static str,
    pub config: Value,
}

/// The configuration of hot key `i`: distinct keys from a valid configuration.
pub fn hot_config(i: usize) -> Value {
    json!({"familyType": "father", "gesture": "wave", "colorTheme": format!("hot-{i}")})
}

/// A configuration no earlier phase used: a miss.
pub fn fresh_config(phase: u64, i: usize) -> Value {
    json!({"familyType": "mother", "colorTheme": format!("miss-{phase:x}-{i}")})
}

/// Send times of one run, in nanoseconds since its start, indexed by sequence number.
struct SentTimes {
    start: Instant,
    at: Vec<AtomicU64>,
}

/// The figures of one run.
pub struct Measured {
    pub jobs: usize,
    pub received: usize,
    pub failed: usize,
    pub cached: usize,
    /// First publish to last result.
    pub elapsed: Duration,
    /// How long publishing (with every confirm) took.
    pub publish_elapsed: Duration,
    pub nacked: usize,
    /// End-to-end latency in microseconds.
    pub latency: Histogram<u64>,
    /// When the run started; `samples` count from here.
    pub start: Instant,
    /// `(sent, latency)` of every result received: nanoseconds since `start`, microseconds.
    pub samples: Vec<(u64, u64)>,
}

impl Measured {
    pub fn throughput(&self) -> f64 {
        self.received as f64 / self.elapsed.as_secs_f64()
    }

    pub fn publish_rate(&self) -> f64 {
        self.jobs as f64 / self.publish_elapsed.as_secs_f64()
    }

    /// Latencies (µs) of the jobs sent between `from` and `to`.
    pub fn sent_between(&self, from: Instant, to: Instant) -> Histogram<u64> {
        let since = |at: Instant| at.saturating_duration_since(self.start).as_nanos() as u64;
        let (from, to) = (since(from), since(to));
        let mut histogram = new_histogram();
        for &(sent, micros) in &self.samples {
            if sent >= from && sent < to {
                histogram.saturating_record(micros.max(1));
            }
        }
        histogram
    }

    /// A latency quantile in milliseconds.
    pub fn ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }

    pub fn summary(&self) -> String {
        format!(
            "{} jobs → {} results ({} cached, {} failed, {} nacked) in {:.2} s: {:.0} jobs/s \
             (publishing {:.0}/s); latency p50 {:.2} ms, p99 {:.2} ms, p99.9 {:.2} ms, max {:.2} ms",
            self.jobs,
            self.received,
            self.cached,
            self.failed,
            self.nacked,
            self.elapsed.as_secs_f64(),
            self.throughput(),
            self.publish_rate(),
            self.ms(0.5),
            self.ms(0.99),
            self.ms(0.999),
            self.latency.max() as f64 / 1000.0,
        )
    }
}

/// Publishes `n` jobs made by `spec` (at `rate` jobs/s, or as fast as the broker confirms them)
/// and waits for all their results.
pub async fn run(
    bench: &Bench,
    n: usize,
    rate: Option<f64>,
    spec: impl Fn(usize) -> JobSpec,
) -> anyhow::Result<Measured> {
    let tag: u64 = Uuid::new_v4().as_u64_pair().0;
    let jobs: Vec<(Uuid, Vec<u8>)> = (0..n)
        .map(|seq| {
            let id = Uuid::from_u64_pair(tag, seq as u64);
            let JobSpec {
                user_id,
                tier,
                config,
            } = spec(seq);
            let body = json!({"job_id": id.to_string(), "user_id": user_id, "tier": tier, "config": config});
            (id, serde_json::to_vec(&body).expect("JSON"))
        })
        .collect();

    let sent = Arc::new(SentTimes {
        start: Instant::now(),
        at: (0..n).map(|_| AtomicU64::new(0)).collect(),
    });
    let results = bench.broker.channel().await?;
    let mut consumer = results
        .basic_consume(
            bench.settings.amqp.result_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let collector = {
        let sent = sent.clone();
        tokio::spawn(async move {
            let mut latency = new_histogram();
            let (mut received, mut failed, mut cached) = (0, 0, 0);
            let mut last = sent.start;
            let mut samples = Vec::with_capacity(n);
            while received < n {
                let delivery = match tokio::time::timeout(IDLE_LIMIT, consumer.next()).await {
                    Ok(Some(Ok(delivery))) => delivery,
                    Ok(Some(Err(error))) => {
                        eprintln!("result consumer failed: {error}");
                        break;
                    }
                    Ok(None) | Err(_) => {
                        eprintln!("no result for {IDLE_LIMIT:?}; {received} of {n} arrived");
                        break;
                    }
                };
                let now = Instant::now();
                let Some((t, seq)) = delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .and_then(|id| Uuid::parse_str(id.as_str()).ok())
                    .map(|id| id.as_u64_pair())
                else {
                    continue;
                };
                if t != tag || seq as usize >= n {
                    continue; // a result of an earlier run
                }
                let sent_ns = sent.at[seq as usize].load(Ordering::Acquire);
                let since_start = now.duration_since(sent.start).as_nanos() as u64;
                let micros = since_start.saturating_sub(sent_ns) / 1000;
                latency.saturating_record(micros.max(1));
                samples.push((sent_ns, micros));
                received += 1;
                last = now;
                let body = &delivery.data[..];
                if contains(body, b"\"status\":\"failed\"") {
                    failed += 1;
                } else if contains(body, b"\"cached\":true") {
                    cached += 1;
                }
            }
            (latency, received, failed, cached, last, samples)
        })
    };

    let channel = bench.broker.channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    let queue = bench.settings.amqp.job_queue.as_str();
    let mut confirms = FuturesUnordered::new();
    let mut nacked = 0;
    let start = sent.start;
    for (seq, (id, body)) in jobs.iter().enumerate() {
        let at = match rate {
            Some(rate) => {
                let due = start + Duration::from_secs_f64(seq as f64 / rate);
                if due > Instant::now() {
                    tokio::time::sleep_until(due.into()).await;
                }
                due
            }
            None => Instant::now(),
        };
        sent.at[seq].store(
            at.duration_since(start).as_nanos() as u64,
            Ordering::Release,
        );
        let mut headers = FieldTable::default();
        headers.insert("x-bench-seq".into(), AMQPValue::LongLongInt(seq as i64));
        let properties = BasicProperties::default()
            .with_content_type("application/json".into())
            .with_delivery_mode(2)
            .with_message_id(id.to_string().into())
            .with_headers(headers);
        let confirm = channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                properties,
            )
            .await
            .context("publishing a job")?;
        confirms.push(confirm);
        while confirms.len() >= CONFIRM_WINDOW {
            if let Some(confirm) = confirms.next().await
                && !matches!(confirm, Ok(Confirmation::Ack(None)))
            {
                nacked += 1;
            }
        }
    }
    while let Some(confirm) = confirms.next().await {
        if !matches!(confirm, Ok(Confirmation::Ack(None))) {
            nacked += 1;
        }
    }
    let publish_elapsed = start.elapsed();
    let (latency, received, failed, cached, last, samples) = collector.await?;
    let _ = channel.close(200, "done".into()).await;
    let _ = results.close(200, "done".into()).await;
    Ok(Measured {
        jobs: n,
        received,
        failed,
        cached,
        elapsed: last.duration_since(start),
        publish_elapsed,
        nacked,
        latency,
        start,
        samples,
    })
}

/// Microseconds from 1 µs to 10 minutes, three significant digits.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::<u64>::new_with_bounds(1, 600_000_000, 3).expect("valid bounds")
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}
