//! Results: waiting for a job's result (others kept for later), for many, or for quiet; polling
//! until something holds; and the assertions that several tests share about failed jobs.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use futures_util::StreamExt;
use lapin::message::Delivery;
use lapin::options::BasicAckOptions;
use serde_json::{Value, json};

use super::db::count;
use super::env::{RESULT_TIMEOUT, TestEnv};
use crate::openai::png_b64;

impl TestEnv {
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

/// The job ids of `jobs`, as [`TestEnv::results_for_all`] takes them.
pub fn job_ids(jobs: &[Value]) -> HashSet<String> {
    jobs.iter()
        .map(|job| job["job_id"].as_str().unwrap().to_owned())
        .collect()
}
