//! Metrics: the messages on the metrics queue (CONTRACT.md §2.4) and `GET /metrics` in the
//! Prometheus text format.

use std::collections::HashMap;

use serde_json::json;

use crate::helpers::{ADMIN_TOKEN, TestEnv, job_ids, openai_ok};
use crate::schemas::assert_valid;

#[tokio::test]
async fn job_completed_stats_snapshot_and_cleanup_completed_arrive_on_the_metrics_queue() {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| s.stats.interval_secs = 1).await;
    let mut tap = env.metrics_tap().await;
    let miss = env.run(&env.job("u", json!({}))).await;
    let hit = env.run(&env.job("u", json!({}))).await;
    let invalid = env
        .run(&env.job("u", json!({"model": "dall-e-2", "size": "1536x1024"})))
        .await;

    for result in [&miss, &hit, &invalid] {
        let id = result["job_id"].clone();
        let delivery = tap
            .next_delivery_with("job.completed", |e| e["job_id"] == id)
            .await;
        // Per-job events are kept in the broker's memory, not written to its disk.
        assert_eq!(*delivery.properties.delivery_mode(), Some(1));
        let event: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
        assert_valid("metrics/job-completed.schema.json", &event);
        assert_eq!(event["status"], result["status"]);
        assert_eq!(event["cached"], result["cached"]);
        assert_eq!(event["cost_usd"], result["cost_usd"]);
        assert_eq!(event["saved_usd"], result["saved_usd"]);
        assert_eq!(event["duration_ms"], result["duration_ms"]);
        assert_eq!(event["error_code"], result["error"]["code"]);
    }

    let snapshot = tap
        .next_with("stats.snapshot", |s| s["hits"] == 1 && s["misses"] == 1)
        .await;
    assert_valid("metrics/stats-snapshot.schema.json", &snapshot);
    assert_eq!(snapshot["generations"], 1);
    assert_eq!(snapshot["total_cached"], 1);

    let (status, report) = env
        .post_cleanup(&env.http_base(), true, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200);
    let delivery = tap.next_delivery_with("cleanup.completed", |_| true).await;
    assert_eq!(
        *delivery.properties.delivery_mode(),
        Some(2),
        "reports are persistent"
    );
    let published: serde_json::Value = serde_json::from_slice(&delivery.data).unwrap();
    assert_valid("metrics/cleanup-completed.schema.json", &published);
    assert_eq!(published, report);
    env.cleanup().await;
}

/// A burst of jobs: the feed publishes its messages in pipelined windows, and every job still
/// gets exactly one `job.completed` (none dropped, none twice, none mixed up with another's).
#[tokio::test]
async fn a_burst_of_jobs_gets_one_job_completed_each() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let mut tap = env.metrics_tap().await;
    env.run(&env.job("u", json!({}))).await;
    let jobs: Vec<_> = (0..300).map(|_| env.job("u", json!({}))).collect();
    for job in &jobs {
        env.publish(job).await;
    }
    let ids = job_ids(&jobs);
    let results = env
        .results_for_all(&ids, std::time::Duration::from_secs(60))
        .await;
    let mut seen: HashMap<String, u32> = HashMap::new();
    while seen.len() < ids.len() {
        let event = tap
            .next_with("job.completed", |e| {
                e["job_id"].as_str().is_some_and(|id| ids.contains(id))
            })
            .await;
        let id = event["job_id"].as_str().unwrap().to_owned();
        assert_eq!(event["cached"], true, "{event}");
        assert_eq!(
            event["duration_ms"], results[&id][0]["duration_ms"],
            "{event}"
        );
        *seen.entry(id).or_default() += 1;
    }
    assert!(
        seen.values().all(|&n| n == 1),
        "a job.completed twice: {seen:?}"
    );
    // Nothing more for these jobs after every one had its message.
    let quiet = tokio::time::timeout(
        std::time::Duration::from_millis(500),
        tap.next_with("job.completed", |e| {
            e["job_id"].as_str().is_some_and(|id| ids.contains(id))
        }),
    )
    .await;
    assert!(quiet.is_err(), "a job.completed twice: {:?}", quiet.ok());
    env.cleanup().await;
}

/// One sample line of the Prometheus text format: `name{label="value",…} number`.
fn parse_sample(line: &str) -> (String, HashMap<String, String>, f64) {
    let (series, value) = line.rsplit_once(' ').expect("a value");
    let value: f64 = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other
            .parse()
            .unwrap_or_else(|_| panic!("not a number: {line}")),
    };
    let (name, labels) = match series.split_once('{') {
        None => (series.to_owned(), HashMap::new()),
        Some((name, rest)) => {
            let body = rest
                .strip_suffix('}')
                .unwrap_or_else(|| panic!("unclosed labels: {line}"));
            let labels = body
                .split("\",")
                .filter(|pair| !pair.is_empty())
                .map(|pair| {
                    let (key, value) = pair
                        .split_once("=\"")
                        .unwrap_or_else(|| panic!("bad label: {line}"));
                    (key.to_owned(), value.trim_end_matches('"').to_owned())
                })
                .collect();
            (name.to_owned(), labels)
        }
    };
    let valid_name = name.chars().enumerate().all(|(i, c)| {
        c.is_ascii_alphabetic() || c == '_' || c == ':' || (i > 0 && c.is_ascii_digit())
    });
    assert!(valid_name, "metric name {name:?}");
    (name, labels, value)
}

#[tokio::test]
async fn metrics_are_served_in_the_prometheus_text_format() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    env.run(&env.job("u", json!({"hair": "long"}))).await;
    env.run(&env.job("u", json!({"hair": "long"}))).await;

    let response = env
        .http
        .get(format!("{}/metrics", env.http_base()))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    let text = response.text().await.unwrap();
    let mut types = HashMap::new();
    let mut samples = Vec::new();
    for line in text.lines().filter(|l| !l.trim().is_empty()) {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap();
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            types.insert(name.to_owned(), kind.to_owned());
        } else if !line.starts_with('#') {
            samples.push(parse_sample(line));
        }
    }
    let value = |name: &str, label: Option<(&str, &str)>| {
        samples
            .iter()
            .filter(|(n, labels, _)| {
                n == name && label.is_none_or(|(k, v)| labels.get(k).map(String::as_str) == Some(v))
            })
            .map(|(_, _, v)| *v)
            .sum::<f64>()
    };
    // Metrics are process-wide, so other tests in this process may have added to them.
    assert!(
        value("memoji_jobs_total", Some(("outcome", "hit"))) >= 1.0,
        "{text}"
    );
    assert!(
        value("memoji_jobs_total", Some(("outcome", "generated"))) >= 1.0,
        "{text}"
    );
    assert!(
        value("memoji_openai_requests_total", Some(("outcome", "ok"))) >= 1.0,
        "{text}"
    );
    assert!(value("memoji_credits_charged_total", None) >= 1.0, "{text}");
    assert!(
        value("memoji_job_duration_seconds_count", None) >= 2.0,
        "{text}"
    );
    assert!(
        value("memoji_job_duration_seconds_bucket", Some(("le", "+Inf"))) >= 2.0,
        "{text}"
    );
    let ratio = value("memoji_cache_hit_ratio", None);
    assert!((0.0..=1.0).contains(&ratio), "{text}");
    assert_eq!(
        types.get("memoji_jobs_total").map(String::as_str),
        Some("counter")
    );
    assert_eq!(
        types.get("memoji_job_duration_seconds").map(String::as_str),
        Some("histogram")
    );
    assert_eq!(
        types.get("memoji_cache_hit_ratio").map(String::as_str),
        Some("gauge")
    );
    env.cleanup().await;
}
