//! A/B tests of cache strategies (issue 15 item 4): results and `job.completed` name the
//! experiment and arm of their user — the arm `job::experiment::assign` computes, the same for
//! every job of a user — and nothing at all without experiments; the per-arm report
//! (`GET /api/experiments/…`, `memoji-worker experiments show`, the dashboard) adds up to the
//! jobs sent, against the real broker, database and OpenAI stand-in.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use memoji_worker::config::{ArmSettings, ExperimentSettings, Settings};
use memoji_worker::job::experiment::assign;
use serde_json::{Value, json};

use crate::helpers::{
    TestEnv, dead_letter_reason, eventually, job_ids, openai_error, openai_ok, worker_command,
    worker_environment,
};
use crate::schemas::assert_valid;

/// The experiment the tests configure: `control` and `fresh`, with the given shares (percent).
pub const EXPERIMENT: &str = "freshness";

pub fn two_arms(settings: &mut Settings, control: f64, fresh: f64) {
    let arm = |share| ArmSettings {
        share,
        variants: None,
        max_age_days: None,
        warming: None,
    };
    settings.experiments = BTreeMap::from([(
        EXPERIMENT.to_owned(),
        ExperimentSettings {
            enabled: true,
            control: None,
            arms: BTreeMap::from([
                ("control".to_owned(), arm(control)),
                ("fresh".to_owned(), arm(fresh)),
            ]),
        },
    )]);
}

/// The arm `user` is in under `settings`, as the worker computes it.
fn arm_of(settings: &Settings, user: &str) -> Option<String> {
    assign(&settings.experiments, user).map(|a| a.arm)
}

/// The first user `user-<n>` in `arm` (`None`: in no arm).
fn user_in(settings: &Settings, arm: Option<&str>, skip: &HashSet<String>) -> String {
    (0..10_000)
        .map(|n| format!("user-{n}"))
        .find(|u| !skip.contains(u) && arm_of(settings, u).as_deref() == arm)
        .expect("a user in every arm among 10,000")
}

fn assert_names(message: &Value, arm: Option<&str>) {
    match arm {
        Some(arm) => {
            assert_eq!(message["experiment"], EXPERIMENT, "{message}");
            assert_eq!(message["arm"], arm, "{message}");
        }
        None => {
            let object = message.as_object().unwrap();
            assert!(
                !object.contains_key("experiment") && !object.contains_key("arm"),
                "a user in no arm: no fields {message}"
            );
        }
    }
}

#[tokio::test]
async fn results_and_job_completed_name_the_arm_of_their_user() {
    // First generation succeeds; every later one fails (generation_failed).
    let replies = vec![
        openai_ok(),
        openai_error(400, "Invalid prompt", Some("invalid_value")),
    ];
    let mut env = TestEnv::start_with(replies, |s| two_arms(s, 40.0, 40.0)).await;
    let mut tap = env.metrics_tap().await;
    let mut chosen = HashSet::new();
    let mut users = Vec::new();
    for arm in [Some("control"), Some("fresh"), Some("control"), None] {
        let user = user_in(&env.settings, arm, &chosen);
        chosen.insert(user.clone());
        users.push((user, arm));
    }
    let config = json!({"hair": "long"});
    for (round, expected) in [(0, "a miss, then hits"), (1, "hits")] {
        for (user, arm) in &users {
            let result = env.run(&env.job(user, config.clone())).await;
            assert_eq!(result["status"], "succeeded", "{expected}: {result}");
            assert_valid("result.schema.json", &result);
            assert_names(&result, *arm);
            let id = result["job_id"].clone();
            let event = tap.next_with("job.completed", |e| e["job_id"] == id).await;
            assert_valid("metrics/job-completed.schema.json", &event);
            assert_names(&event, *arm);
            if round == 1 {
                assert_eq!(result["cached"], true);
            }
        }
    }
    // A failed generation, an invalid job, and a replay name the arm too.
    let (user, arm) = (&users[1].0, users[1].1);
    let failed = env.run(&env.job(user, json!({"hair": "afro"}))).await;
    assert_eq!(failed["error"]["code"], "generation_failed", "{failed}");
    assert_valid("result.schema.json", &failed);
    assert_names(&failed, arm);
    let invalid_job = env.job(user, json!({"model": "dall-e-2", "size": "1536x1024"}));
    let invalid = env.run(&invalid_job).await;
    assert_eq!(invalid["error"]["code"], "invalid_job");
    assert_names(&invalid, arm);
    let again = env.job(user, config.clone());
    let first = env.run(&again).await;
    let replayed = env.run(&again).await;
    assert_eq!(
        replayed, first,
        "a redelivered job is answered as before, arm and all"
    );
    assert_names(&replayed, arm);
    // Not a job (its user_id is too long) but its ids are readable: dead-lettered, and its
    // answer names the arm of that user.
    let (long, long_arm) = (0..1000)
        .map(|n| format!("{n}-{}", "u".repeat(200)))
        .find_map(|u| arm_of(&env.settings, &u).map(|a| (u, a)))
        .unwrap();
    let job_id = uuid::Uuid::new_v4().to_string();
    env.publish(&json!({"job_id": job_id, "user_id": long, "config": {}}))
        .await;
    let letter = env
        .take_from(&env.settings.amqp.dead_letter_queue.clone())
        .await
        .expect("dead-lettered");
    assert!(dead_letter_reason(&letter).contains("user_id"));
    let answer = env.result_of(&job_id).await;
    assert_eq!(answer["error"]["code"], "invalid_job", "{answer}");
    assert_names(&answer, Some(&long_arm));
    env.cleanup().await;
}

#[tokio::test]
async fn without_experiments_messages_are_todays() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let mut tap = env.metrics_tap().await;
    let contract = [
        "job_id",
        "user_id",
        "status",
        "cached",
        "prompt_hash",
        "image_url",
        "storage_path",
        "credits_charged",
        "credits_remaining",
        "cost_usd",
        "saved_usd",
        "attempts",
        "model",
        "duration_ms",
        "completed_at",
        "error",
    ];
    let completed = [
        "job_id",
        "status",
        "cached",
        "error_code",
        "cost_usd",
        "saved_usd",
        "duration_ms",
        "completed_at",
    ];
    for _ in 0..2 {
        let result = env.run(&env.job("user-1", json!({}))).await;
        let keys: Vec<&str> = result
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, contract, "{result}");
        let id = result["job_id"].clone();
        let event = tap.next_with("job.completed", |e| e["job_id"] == id).await;
        let keys: Vec<&str> = event
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, completed, "{event}");
    }
    let (status, listing) = env.get_json("/api/experiments").await;
    assert_eq!(status, 200, "{listing}");
    assert_eq!(listing["experiments"], json!([]));
    let (status, _) = env.get_json("/api/experiments/freshness").await;
    assert_eq!(status, 404);
    let html = env.get_text("").await;
    assert!(
        !html.contains("id=\"experiments\""),
        "no Experiments section"
    );
    env.cleanup().await;
}

/// Each arm's figures, summed from the results the worker sent.
#[derive(Debug, Default, PartialEq)]
struct Sent {
    jobs: i64,
    hits: i64,
    misses: i64,
    spend: f64,
}

#[tokio::test]
async fn the_report_counts_each_arm_as_its_jobs_ran() {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| two_arms(s, 50.0, 50.0)).await;
    // 300 users, one job each, over six configurations: six generations, the rest hits.
    let hairs = ["long", "short", "bob", "curly", "wavy", "afro"];
    let jobs: Vec<Value> = (0..300)
        .map(|n| env.job(&format!("user-{n}"), json!({"hair": hairs[n % 6]})))
        .collect();
    for job in &jobs {
        env.publish(job).await;
    }
    let results = env
        .results_for_all(&job_ids(&jobs), Duration::from_secs(120))
        .await;
    let mut sent: HashMap<String, Sent> = HashMap::new();
    for copies in results.values() {
        let result = &copies[0];
        let user = result["user_id"].as_str().unwrap();
        let arm = arm_of(&env.settings, user).expect("shares add up to 100");
        assert_eq!(
            result["arm"],
            arm.as_str(),
            "the arm assign computes: {result}"
        );
        let s = sent.entry(arm).or_default();
        s.jobs += 1;
        if result["cached"] == true {
            s.hits += 1;
        } else {
            s.misses += 1;
        }
        s.spend += result["cost_usd"].as_f64().unwrap();
    }
    for arm in ["control", "fresh"] {
        // 300 users split 50/50: a standard deviation of 8.7 users; allow four.
        let jobs = sent[arm].jobs;
        assert!((115..=185).contains(&jobs), "{arm}: {jobs} of 300 users");
    }
    let path = format!("/api/experiments/{EXPERIMENT}");
    let report = eventually("every job in the per-arm rollups", || async {
        let (status, body) = env.get_json(&path).await;
        assert_eq!(status, 200, "{body}");
        let jobs: i64 = body["arms"]
            .as_array()?
            .iter()
            .filter_map(|a| a["jobs"].as_i64())
            .sum();
        (jobs == 300).then_some(body)
    })
    .await;
    assert_eq!(report["configured"], true);
    assert_eq!(report["control"], "control", "the first arm by name");
    for figures in report["arms"].as_array().unwrap() {
        let arm = figures["arm"].as_str().unwrap();
        let s = &sent[arm];
        assert_eq!(figures["jobs"], s.jobs, "{arm}: {figures}");
        assert_eq!(figures["hits"], s.hits, "{arm}: {figures}");
        assert_eq!(figures["misses"], s.misses, "{arm}: {figures}");
        assert_eq!(figures["share_pct"], 50.0);
        let spend = figures["spend_usd"].as_f64().unwrap();
        assert!(
            (spend - s.spend).abs() < 1e-5,
            "{arm}: {spend} vs {}",
            s.spend
        );
        let expected_ratio = 100.0 * s.hits as f64 / s.jobs as f64;
        let ratio = figures["hit_ratio_pct"].as_f64().unwrap();
        assert!((ratio - expected_ratio).abs() < 0.01, "{figures}");
        assert!(figures["p95_ms"].as_f64().unwrap() >= figures["p50_ms"].as_f64().unwrap());
    }
    let comparison = &report["comparisons"][0];
    assert_eq!(
        (comparison["arm"].as_str(), comparison["against"].as_str()),
        (Some("fresh"), Some("control"))
    );
    let hit = &comparison["hit_ratio_pts"];
    assert!(
        hit["ci95_low"].as_f64().unwrap() <= hit["difference"].as_f64().unwrap()
            && hit["difference"].as_f64().unwrap() <= hit["ci95_high"].as_f64().unwrap(),
        "{comparison}"
    );
    assert!(
        comparison["cost_per_job_usd"]["ci95_low"].is_number(),
        "{comparison}"
    );
    // Which arm's user asked first for each configuration (and so paid for its generation) is
    // a race, so the verdict may go either way; it must follow the interval.
    let contains_zero =
        hit["ci95_low"].as_f64().unwrap() <= 0.0 && hit["ci95_high"].as_f64().unwrap() >= 0.0;
    assert_eq!(
        hit["verdict"] == "too small to tell",
        contains_zero,
        "both arms have 100 jobs or more: the verdict is the interval's {comparison}"
    );

    // A span, the list, and what is refused.
    let (status, recent) = env.get_json(&format!("{path}?since=1h")).await;
    assert_eq!(status, 200);
    assert_eq!(
        recent["arms"], report["arms"],
        "every job ran within the hour"
    );
    assert_eq!(recent["since"], "1h");
    let (status, listing) = env.get_json("/api/experiments?since=7d").await;
    assert_eq!(status, 200);
    assert_eq!(
        listing["experiments"][0]["arms"], report["arms"],
        "{listing}"
    );
    let (status, body) = env.get_json(&format!("{path}?since=7w")).await;
    assert_eq!(status, 400, "{body}");
    let (status, body) = env.get_json("/api/experiments/nothing-here").await;
    assert_eq!(status, 404, "{body}");

    // The command line prints the same report.
    let vars = worker_environment(&env.settings);
    let vars: Vec<(&str, String)> = vars.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
    let run = |extra: &[&str]| {
        let output = worker_command(&vars)
            .args(["experiments", "show", EXPERIMENT])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    let json: Value = serde_json::from_str(&run(&["--json"])).unwrap();
    assert_eq!(json["arms"], report["arms"]);
    assert_eq!(json["comparisons"], report["comparisons"]);
    let text = run(&[]);
    assert!(text.contains("fresh against control:"), "{text}");
    let control_jobs = sent["control"].jobs.to_string();
    assert!(
        text.lines()
            .any(|l| l.starts_with("control") && l.contains(&control_jobs)),
        "{text}"
    );

    // The dashboard shows each arm's jobs.
    let html = env.get_text("").await;
    assert!(
        html.contains("id=\"experiment-freshness\""),
        "the Experiments section"
    );
    for (arm, s) in &sent {
        assert!(
            html.contains(&format!("<tr data-arm=\"{arm}\">")),
            "{arm} in the table"
        );
        assert!(html.contains(&format!("data-arm-figure=\"jobs\">{}<", s.jobs)));
    }
    assert!(html.contains("id=\"chart-exp-freshness-hit-difference\""));
    env.cleanup().await;
}

/// The schemas hold the two fields together: an `experiment` without its `arm` (or the other
/// way round) is not a result or a `job.completed` message.
#[test]
fn the_schemas_want_experiment_and_arm_together() {
    let schema = |name: &str| -> jsonschema::Validator {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("schemas")
            .join(name);
        let schema: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        jsonschema::validator_for(&schema).unwrap()
    };
    let event = json!({
        "job_id": "0b6f6f0e-3f5e-4c55-9d36-0f2b8e4a7f10", "status": "succeeded", "cached": true,
        "error_code": null, "cost_usd": 0.0, "saved_usd": 0.04, "duration_ms": 3,
        "completed_at": "2026-11-24T14:03:07.512Z", "experiment": "freshness", "arm": "fresh"
    });
    let completed = schema("metrics/job-completed.schema.json");
    assert!(completed.is_valid(&event));
    for field in ["experiment", "arm"] {
        let mut half = event.clone();
        half.as_object_mut().unwrap().remove(field);
        assert!(!completed.is_valid(&half), "without {field}: {half}");
    }
    let result = json!({
        "job_id": "0b6f6f0e-3f5e-4c55-9d36-0f2b8e4a7f10", "user_id": "user-42", "status": "failed",
        "cached": false, "prompt_hash": null, "image_url": null, "storage_path": null,
        "credits_charged": 0, "credits_remaining": null, "cost_usd": 0.0, "saved_usd": 0.0,
        "attempts": 0, "model": null, "duration_ms": 0, "completed_at": "2026-11-24T14:03:07.512Z",
        "error": {"code": "internal", "message": "x", "retryable": true}, "arm": "fresh"
    });
    let results = schema("result.schema.json");
    assert!(!results.is_valid(&result), "an arm without its experiment");
    let mut whole = result.clone();
    whole["experiment"] = json!("freshness");
    assert!(results.is_valid(&whole), "{whole}");
}
