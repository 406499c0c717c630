//! Warming through OpenAI's Batch API (`memoji-worker warm … --batch`, src/warm/batch.rs) against
//! the stand-in's files and batches endpoints (`tests/it/openai_batches.rs`): rows recorded at
//! half the price, within the budget, charging nobody; failed lines, expired and failed batches
//! reported, never dropped silently; a batch outlives the command that submitted it (killed with
//! SIGKILL) and is finished by `warm --resume` or by a worker; a key a live job made meanwhile is
//! recorded once and the batch's copy counted as wasted; the API key never shows.

use std::process::{Output, Stdio};
use std::time::Duration;

use memoji_worker::config::Settings;
use memoji_worker::warm::{self, Options, Progress};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{BatchScript, End, TestEnv, count, eventually, openai_ok, worker_environment};

/// The test worker's OpenAI key (`support::env::isolated_settings`).
const KEY: &str = "sk-test-key";

fn fast(settings: &mut Settings) {
    settings.warm.batch_poll_ms = 50;
}

fn line(hair: &str) -> String {
    json!({"hair": hair, "gesture": "heart"}).to_string()
}

/// A JSONL file of `hairs` in the test's storage directory (removed with it).
fn jsonl(env: &TestEnv, name: &str, hairs: &[&str]) -> String {
    let path = env.storage_dir().join(name);
    let text: Vec<String> = hairs.iter().map(|h| line(h)).collect();
    std::fs::write(&path, text.join("\n")).unwrap();
    path.display().to_string()
}

fn command(env: &TestEnv, args: &[&str]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_memoji-worker"));
    command
        .args(args)
        .env_clear()
        .envs(worker_environment(&env.settings))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    command
}

async fn cli(env: &TestEnv, args: &[&str]) -> (Output, Value) {
    let output = command(env, args).output().await.unwrap();
    assert!(
        output.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report = serde_json::from_slice(&output.stdout).unwrap_or_else(|e| {
        panic!("{e}: {}", String::from_utf8_lossy(&output.stdout));
    });
    (output, report)
}

fn text(output: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

/// The half-price cost of a row's recorded usage: (text in × $5 + image out × $30) / 1M / 2.
fn half_price_of(usage: &Value) -> f64 {
    let input = usage["input_tokens"].as_f64().unwrap();
    let output = usage["output_tokens"].as_f64().unwrap();
    (input * 5.0 + output * 30.0) / 1_000_000.0 / 2.0
}

#[tokio::test]
async fn a_batch_completes_at_half_price_within_the_budget_and_charges_nobody() {
    let env = TestEnv::without_worker(vec![openai_ok()], fast).await;
    env.openai.batches.script(BatchScript {
        polls: vec!["validating", "in_progress", "in_progress", "finalizing"],
        ..BatchScript::default()
    });
    let file = jsonl(&env, "popular.jsonl", &["b1", "b2", "b3", "b4"]);
    // At the batch price each image is $0.02 (half of $0.04): $0.06 buys three.
    let (_, dry) = cli(
        &env,
        &[
            "warm",
            "--from",
            &file,
            "--batch",
            "--dry-run",
            "--budget-usd",
            "0.06",
        ],
    )
    .await;
    assert_eq!(dry["mode"], "batch", "{dry}");
    assert_eq!(dry["planned"], 3, "{dry}");
    assert_eq!(dry["over_budget"], 1, "{dry}");
    assert!(
        (dry["estimated_usd"].as_f64().unwrap() - 0.06).abs() < 1e-9,
        "{dry}"
    );
    assert!((dry["would_generate"][0]["estimate_usd"].as_f64().unwrap() - 0.02).abs() < 1e-9);
    assert_eq!(env.openai.batches.created(), 0, "a dry run submits nothing");

    let (output, report) = cli(
        &env,
        &["warm", "--from", &file, "--batch", "--budget-usd", "0.06"],
    )
    .await;
    assert_eq!(report["mode"], "batch", "{report}");
    assert_eq!(report["generated"], 3, "{report}");
    assert_eq!(report["failed"], 0, "{report}");
    assert_eq!(report["over_budget"], 1, "{report}");
    assert_eq!(report["batch"]["status"], "completed", "{report}");
    assert_eq!(report["batch"]["open"], false, "{report}");
    let spent = report["spent_usd"].as_f64().unwrap();
    assert!(spent > 0.0 && spent <= 0.06, "the budget holds: {report}");
    assert_eq!(env.openai.calls(), 0, "no live generation");
    assert_eq!(env.openai.batches.created(), 1);
    assert!(
        env.openai.batches.polls() >= 5,
        "polled over several statuses"
    );

    // Rows at the batch price, from their usage; no use counted; nobody charged.
    let rows: Vec<(String, f64, Value, String, i32)> = sqlx::query_as(
        "SELECT prompt_hash, generation_cost::float8, usage, storage_path, usage_count
           FROM memoji_cache WHERE warmed_at IS NOT NULL",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    assert_eq!(rows.len(), 3);
    let mut recorded = 0.0;
    for (key, cost, usage, path, uses) in &rows {
        // generation_cost is numeric(10, 4): recorded to the hundredth of a cent.
        assert!(
            (cost - half_price_of(usage)).abs() < 5.1e-5,
            "{cost} {usage}"
        );
        assert_eq!(*uses, 0);
        assert!(path.ends_with(&format!("{key}.png")), "{path}");
        let png = std::fs::read(env.storage_dir().join(path)).unwrap();
        assert!(memoji_worker::storage::check_png(&png).is_ok());
        recorded += cost;
    }
    assert!(
        (recorded - spent).abs() < 3.0 * 5.1e-5,
        "{recorded} vs {spent}"
    );
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_credit_ledger").await,
        0
    );
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_generation_leases").await,
        0
    );

    // Each line is the live request's body under its key.
    let lines = env.openai.batches.uploaded_lines();
    assert_eq!(lines.len(), 3);
    for l in &lines {
        assert_eq!(l["method"], "POST");
        assert_eq!(l["url"], "/v1/images/generations");
        let body = &l["body"];
        assert_eq!(body["model"], "gpt-image-2.6-flare", "{body}");
        assert_eq!(body["output_format"], "png");
        assert_eq!(body["n"], 1);
        assert_eq!(body.get("response_format"), None);
        assert_eq!(body["safety_identifier"].as_str().unwrap().len(), 32);
        let key = l["custom_id"].as_str().unwrap();
        assert!(rows.iter().any(|(k, ..)| k == key), "{key}");
    }

    // Progress on a pipe: the statuses polled, each line, the summary; never the key.
    let all = text(&output);
    let stderr = String::from_utf8_lossy(&output.stderr);
    for status in ["validating", "in_progress", "finalizing", "completed"] {
        assert!(
            stderr.contains(&format!(" {status}: ")),
            "{status}: {stderr}"
        );
    }
    assert!(stderr.contains("warm: 3 to generate"), "{stderr}");
    assert!(stderr.contains("warm: 3/3 "), "{stderr}");
    assert!(
        stderr.contains("handling the answers of 3 line(s)"),
        "{stderr}"
    );
    assert!(!all.contains(KEY), "{all}");

    // The warming history has the run.
    let (mode, generated): (String, i32) =
        sqlx::query_as("SELECT mode, generated FROM memoji_warm_runs")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!((mode.as_str(), generated), ("batch", 3));

    // The other sources go the same way: the history's top, as a batch.
    let config = json!({"hair": "from-history", "gesture": "heart"});
    let key = env.asked(&config, 0, 7).await;
    let (_, report) = cli(
        &env,
        &[
            "warm",
            "--from-history",
            "--days",
            "30",
            "--top",
            "5",
            "--batch",
            "--budget-usd",
            "1",
        ],
    )
    .await;
    assert_eq!(report["generated"], 1, "{report}");
    assert_eq!(report["lines"][0]["key"], key.as_str(), "{report}");
    let source: String = sqlx::query_scalar(
        "SELECT source FROM memoji_warm_batches ORDER BY created_at DESC LIMIT 1",
    )
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert_eq!(source, "history");
    env.cleanup().await;
}

#[tokio::test]
async fn failed_lines_are_reported_and_the_others_recorded() {
    let env = TestEnv::without_worker(vec![openai_ok()], fast).await;
    // Line 1 in the error file, line 2 a 500 in the output, line 3 not a PNG.
    env.openai.batches.script(BatchScript {
        error_lines: vec![1],
        non_200_lines: vec![2],
        bad_image_lines: vec![3],
        ..BatchScript::default()
    });
    let file = jsonl(&env, "f.jsonl", &["f1", "f2", "f3", "f4", "f5"]);
    let (output, report) = cli(&env, &["warm", "--from", &file, "--batch"]).await;
    assert_eq!(report["generated"], 2, "{report}");
    assert_eq!(report["failed"], 3, "{report}");
    let failures = report["batch"]["failures"].as_array().unwrap();
    assert_eq!(failures.len(), 3, "{report}");
    let said = |origin: &str| {
        failures
            .iter()
            .find(|f| f["origin"] == origin)
            .unwrap_or_else(|| panic!("{origin} in {report}"))["message"]
            .as_str()
            .unwrap()
            .to_owned()
    };
    assert!(said("line 1").contains("Invalid prompt"), "{report}");
    assert!(said("line 2").contains("500"), "{report}");
    assert!(said("line 3").to_lowercase().contains("png"), "{report}");
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_cache").await,
        2,
        "only the good lines are recorded"
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("failed: "), "{stderr}");

    // A batch OpenAI fails as a whole: every line reported failed, nothing spent.
    env.openai.batches.script(BatchScript {
        polls: vec!["validating"],
        end: End::Failed {
            message: "The input file is malformed".to_owned(),
        },
        ..BatchScript::default()
    });
    let file = jsonl(&env, "g.jsonl", &["g1", "g2"]);
    let (_, report) = cli(&env, &["warm", "--from", &file, "--batch"]).await;
    assert_eq!(report["batch"]["status"], "failed", "{report}");
    assert_eq!(report["failed"], 2, "{report}");
    assert_eq!(report["spent_usd"], 0.0, "{report}");
    let message = report["batch"]["failures"][0]["message"].as_str().unwrap();
    assert!(message.contains("malformed"), "{message}");
    env.cleanup().await;
}

#[tokio::test]
async fn an_expired_or_cancelled_batch_keeps_its_partial_output_and_reports_the_rest() {
    let env = TestEnv::without_worker(vec![openai_ok()], fast).await;
    for (end, hairs, status) in [
        (
            End::Expired { answered: 2 },
            ["e1", "e2", "e3", "e4"],
            "expired",
        ),
        (
            End::Cancelled { answered: 1 },
            ["c1", "c2", "c3", "c4"],
            "cancelled",
        ),
    ] {
        let answered = match &end {
            End::Expired { answered } | End::Cancelled { answered } => *answered,
            _ => unreachable!(),
        };
        env.openai.batches.script(BatchScript {
            polls: vec!["in_progress", "cancelling"],
            end,
            ..BatchScript::default()
        });
        let file = jsonl(&env, &format!("{status}.jsonl"), &hairs);
        let (_, report) = cli(&env, &["warm", "--from", &file, "--batch"]).await;
        assert_eq!(report["batch"]["status"], status, "{report}");
        assert_eq!(report["generated"], answered, "{report}");
        assert_eq!(report["failed"], 4 - answered, "{report}");
        for failure in report["batch"]["failures"].as_array().unwrap() {
            let message = failure["message"].as_str().unwrap();
            assert!(message.contains(&format!("batch_{status}")), "{message}");
        }
        let recorded = count(
            &env.db,
            &format!(
                "SELECT count(*) FROM memoji_cache WHERE prompt_config->>'hair' LIKE '{}%'",
                &hairs[0][..1]
            ),
        )
        .await;
        assert_eq!(recorded, answered as i64, "{status}");
    }
    env.cleanup().await;
}

/// Starts `warm --from FILE --batch` and SIGKILLs it once its batch is in progress at OpenAI.
async fn submit_and_kill(env: &TestEnv, file: &str) {
    env.openai.batches.hold();
    let before = env.openai.batches.created();
    let mut child = command(env, &["warm", "--from", file, "--batch"])
        .spawn()
        .unwrap();
    let db = &env.db;
    let batches = &env.openai.batches;
    eventually("the batch to be in progress", || async {
        let polled = count(
            db,
            "SELECT count(*) FROM memoji_warm_batches WHERE status = 'in_progress'",
        )
        .await;
        (batches.created() > before && polled > 0).then_some(())
    })
    .await;
    child.start_kill().unwrap();
    let status = child.wait().await.unwrap();
    assert!(!status.success(), "killed");
}

#[tokio::test]
async fn a_batch_whose_command_was_killed_is_finished_by_warm_resume() {
    let env = TestEnv::without_worker(vec![openai_ok()], fast).await;
    let file = jsonl(&env, "k.jsonl", &["k1", "k2", "k3"]);
    submit_and_kill(&env, &file).await;
    assert_eq!(count(&env.db, "SELECT count(*) FROM memoji_cache").await, 0);

    // `warm batches` sees it open, still in progress.
    let (_, listed) = cli(&env, &["warm", "batches"]).await;
    assert_eq!(listed["finished_now"], json!([]), "{listed}");
    assert_eq!(listed["batches"][0]["status"], "in_progress", "{listed}");
    assert_eq!(listed["batches"][0]["finished_at"], Value::Null, "{listed}");

    env.openai.batches.release();
    let (output, resumed) = cli(&env, &["warm", "--batch", "--resume"]).await;
    let reports = resumed["resumed"].as_array().unwrap();
    assert_eq!(reports.len(), 1, "{resumed}");
    assert_eq!(reports[0]["generated"], 3, "{resumed}");
    assert_eq!(count(&env.db, "SELECT count(*) FROM memoji_cache").await, 3);
    assert_eq!(env.openai.batches.created(), 1, "submitted once");
    assert!(!text(&output).contains(KEY));
    // Nothing is left open.
    let (_, again) = cli(&env, &["warm", "--batch", "--resume"]).await;
    assert_eq!(again["resumed"], json!([]), "{again}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_worker_finishes_a_batch_whose_command_died_and_reports_it() {
    let env = TestEnv::without_worker(vec![openai_ok()], fast).await;
    let mut tap = env.metrics_tap().await;
    let file = jsonl(&env, "w.jsonl", &["w1", "w2"]);
    submit_and_kill(&env, &file).await;
    // Two workers start; one of them (the batch lock) finishes the batch once OpenAI is done.
    let first = env.spawn_worker().await;
    let second = env.spawn_worker().await;
    env.openai.batches.release();
    let db = &env.db;
    let finished = tokio::time::timeout(Duration::from_secs(30), async {
        while count(db, "SELECT count(*) FROM memoji_warm_runs").await == 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;
    assert!(
        finished.is_ok(),
        "no worker finished the batch:\n{}\n{}",
        first.log(),
        second.log()
    );
    let completed = tap
        .next_with("warm.completed", |m| m["mode"] == "batch")
        .await;
    crate::schemas::assert_valid("metrics/warm-completed.schema.json", &completed);
    assert_eq!(completed["generated"], 2, "{completed}");
    assert_eq!(completed["source"], "from");
    assert_eq!(count(&env.db, "SELECT count(*) FROM memoji_cache").await, 2);
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_warm_runs").await,
        1,
        "finished once"
    );
    assert_eq!(
        count(
            &env.db,
            "SELECT count(*) FROM memoji_warm_batches WHERE finished_at IS NULL"
        )
        .await,
        0
    );
    first.kill().await;
    second.kill().await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_key_a_live_job_made_while_the_batch_ran_is_recorded_once_and_the_copy_is_wasted() {
    let mut env = TestEnv::start_with(vec![openai_ok()], fast).await;
    env.openai.batches.hold();
    let warmer = memoji_worker::app::warmer(&env.settings, false)
        .await
        .unwrap();
    let rules = memoji_worker::app::check_domain(&env.settings).unwrap();
    let client = memoji_worker::app::batch_client(&env.settings).unwrap();
    let (configs, _) = warm::read_jsonl(&[line("lv1"), line("lv2")].join("\n"));
    let shaping = warm::Shaping {
        rules: &rules,
        prices: &env.settings.prices,
        generator: warmer.generator.kind(),
        model: None,
    };
    let (candidates, refused) = shaping.candidates(configs);
    let running = tokio::spawn(async move {
        let batching = warm::batch::Batching {
            warmer: &warmer,
            client: &client,
            rules: &rules,
        };
        batching
            .warm(
                candidates,
                refused,
                &Options::default(),
                &mut Progress::Quiet,
                &CancellationToken::new(),
                true,
            )
            .await
            .unwrap()
    });
    let batches = env.openai.batches.clone();
    eventually("the batch to be submitted", || async {
        (batches.created() == 1).then_some(())
    })
    .await;
    // Meanwhile a user asks for lv1: generated live, charged once.
    let live = env
        .run(&env.job("user-1", json!({"hair": "lv1", "gesture": "heart"})))
        .await;
    assert_eq!(live["cached"], false, "{live}");
    assert_eq!(live["credits_charged"], 1);
    env.openai.batches.release();
    let report = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("the batch finishes")
        .unwrap();
    assert_eq!(report.generated, 1, "{report:?}");
    assert_eq!(report.dropped, 1, "{report:?}");
    assert!(report.wasted_usd > 0.0, "{report:?}");
    let batch = report.batch.clone().unwrap();
    assert_eq!(batch.wasted, 1);
    // lv1 has one row, the live job's, and one stored object.
    let key = live["prompt_hash"].as_str().unwrap();
    let rows: Vec<(Option<chrono::DateTime<chrono::Utc>>, String)> =
        sqlx::query_as("SELECT warmed_at, storage_path FROM memoji_cache WHERE prompt_hash = $1")
            .bind(key)
            .fetch_all(&env.db)
            .await
            .unwrap();
    assert_eq!(rows.len(), 1);
    assert!(rows[0].0.is_none(), "the live job's row stands");
    assert_eq!(rows[0].1, live["storage_path"].as_str().unwrap());
    let objects = walk(env.storage_dir())
        .into_iter()
        .filter(|p| p.contains(key))
        .count();
    assert_eq!(objects, 1, "the batch's copy is not kept");
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_credit_ledger").await,
        1,
        "only the live job was charged"
    );
    // The report says so: wasted count and dollars, in the history too.
    let (wasted, wasted_usd): (i32, f64) =
        sqlx::query_as("SELECT wasted, wasted_usd FROM memoji_warm_runs WHERE mode = 'batch'")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(wasted, 1);
    assert!((wasted_usd - report.wasted_usd).abs() < 1e-9);
    env.cleanup().await;
}

fn walk(dir: &std::path::Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap().flatten() {
        let path = entry.path();
        if path.is_dir() {
            found.extend(walk(&path));
        } else {
            found.push(path.display().to_string());
        }
    }
    found
}

#[tokio::test]
async fn the_api_key_never_appears_in_the_output_of_a_refused_batch() {
    let secret = "sk-proj-wrongSecret4242abcdef";
    let env = TestEnv::without_worker(vec![openai_ok()], |s| {
        fast(s);
        s.secrets.openai_api_key = Some(secret.to_owned().into());
    })
    .await;
    let file = jsonl(&env, "s.jsonl", &["s1"]);
    let output = command(&env, &["warm", "--from", &file, "--batch"])
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let all = text(&output);
    assert!(all.contains("rejected the API key"), "{all}");
    assert!(!all.contains("wrongSecret4242"), "{all}");
    let (status, errors): (String, Option<String>) =
        sqlx::query_as("SELECT status, errors FROM memoji_warm_batches")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(status, "not_submitted");
    assert!(!errors.unwrap_or_default().contains("wrongSecret4242"));
    env.cleanup().await;
}

#[tokio::test]
async fn refresh_batch_moves_entries_to_new_images_at_half_price_and_deletes_the_old_ones() {
    let mut env = TestEnv::start_with(vec![openai_ok()], fast).await;
    for hair in ["r1", "r2", "r3"] {
        env.run(&env.job("user-1", json!({"hair": hair}))).await;
    }
    sqlx::query(
        "UPDATE memoji_cache SET model = 'gpt-image-1',
                usage_count = CASE prompt_config->>'hair' WHEN 'r1' THEN 10 WHEN 'r2' THEN 5 ELSE 1 END",
    )
    .execute(&env.db)
    .await
    .unwrap();
    let before: Vec<(String, String)> =
        sqlx::query_as("SELECT prompt_config->>'hair', storage_path FROM memoji_cache")
            .fetch_all(&env.db)
            .await
            .unwrap();
    let ledger = count(&env.db, "SELECT count(*) FROM memoji_credit_ledger").await;
    let calls = env.openai.calls();
    let (output, report) = cli(
        &env,
        &[
            "refresh",
            "--generated-by",
            "gpt-image-1",
            "--top",
            "2",
            "--budget-usd",
            "1",
            "--batch",
        ],
    )
    .await;
    assert_eq!(report["mode"], "batch", "{report}");
    assert_eq!(report["generated"], 2, "{report}");
    assert_eq!(report["batch"]["status"], "completed", "{report}");
    assert_eq!(env.openai.calls(), calls, "no live generation");
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_credit_ledger").await,
        ledger
    );
    let after: Vec<(String, String, String, f64, Value)> = sqlx::query_as(
        "SELECT prompt_config->>'hair', storage_path, model, generation_cost::float8, usage
           FROM memoji_cache ORDER BY 1",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    for (hair, path, model, cost, usage) in &after {
        assert!(
            env.storage_dir().join(path).is_file(),
            "{hair}: {path} is missing"
        );
        let old = &before.iter().find(|(h, _)| h == hair).unwrap().1;
        if hair == "r3" {
            assert_eq!(path, old, "the least used entry is left alone");
        } else {
            assert!(path.ends_with("-1.png"), "{path}");
            assert_eq!(model, "gpt-image-2.6-flare");
            assert!(
                (cost - half_price_of(usage)).abs() < 5.1e-5,
                "{cost} {usage}"
            );
            assert!(!env.storage_dir().join(old).exists(), "{old} is deleted");
        }
    }
    assert!(!text(&output).contains(KEY));
    env.cleanup().await;
}

#[tokio::test]
async fn a_command_killed_while_it_reads_the_output_is_resumed_where_it_stopped() {
    let env = TestEnv::without_worker(vec![openai_ok()], fast).await;
    // Lines 1 and 2 are answered in the output file, line 3 fails into the error file, whose
    // download hangs: the command is killed after the output file, before the error file.
    env.openai.batches.script(BatchScript {
        polls: vec!["in_progress"],
        error_lines: vec![3],
        ..BatchScript::default()
    });
    env.openai
        .batches
        .delay_error_files(Some(Duration::from_secs(60)));
    let file = jsonl(&env, "m.jsonl", &["m1", "m2", "m3"]);
    let mut child = command(&env, &["warm", "--from", &file, "--batch"])
        .spawn()
        .unwrap();
    let db = &env.db;
    eventually("the output file's lines to be recorded", || async {
        (count(db, "SELECT count(*) FROM memoji_cache").await == 2).then_some(())
    })
    .await;
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    assert_eq!(
        count(
            db,
            "SELECT count(*) FROM memoji_warm_batches WHERE finished_at IS NULL"
        )
        .await,
        1,
        "the batch is still open"
    );
    env.openai.batches.delay_error_files(None);
    let (_, resumed) = cli(&env, &["warm", "--batch", "--resume"]).await;
    let report = &resumed["resumed"][0];
    assert_eq!(report["generated"], 2, "{resumed}");
    assert_eq!(report["failed"], 1, "{resumed}");
    assert_eq!(
        report["dropped"], 0,
        "the handled lines are not handled again: {resumed}"
    );
    assert_eq!(count(db, "SELECT count(*) FROM memoji_cache").await, 2);
    let objects = walk(env.storage_dir())
        .into_iter()
        .filter(|p| p.ends_with(".png"))
        .count();
    assert_eq!(objects, 2, "one object per recorded key");
    assert_eq!(count(db, "SELECT count(*) FROM memoji_warm_runs").await, 1);
    env.cleanup().await;
}

#[tokio::test]
async fn scheduled_warming_with_warm_batch_submits_one_batch_within_the_daily_budget() {
    // Every second; the day's budget buys two images at the batch price ($0.02 each).
    let tweak = |s: &mut Settings| {
        fast(s);
        s.warm.schedule = "*/1 * * * * *".to_owned();
        s.warm.batch = true;
        s.warm.daily_budget_usd = 0.04;
    };
    let env = TestEnv::start_with(vec![openai_ok()], tweak).await;
    let mut tap = env.metrics_tap().await;
    for hair in ["sh1", "sh2", "sh3"] {
        env.asked(&json!({"hair": hair}), 0, 5).await;
    }
    let completed = tap
        .next_with("warm.completed", |m| m["mode"] == "batch")
        .await;
    crate::schemas::assert_valid("metrics/warm-completed.schema.json", &completed);
    assert_eq!(completed["source"], "schedule:history", "{completed}");
    assert_eq!(completed["generated"], 2, "{completed}");
    assert!(
        completed["spent_usd"].as_f64().unwrap() <= 0.04,
        "{completed}"
    );
    // Later runs find the day's budget spent (or committed): no second batch, no live call.
    // (Two more scheduled runs, a second apart: nothing to wait for but the clock.)
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(env.openai.batches.created(), 1, "one batch a day's budget");
    assert_eq!(env.openai.calls(), 0, "nothing generated live");
    assert_eq!(
        count(
            &env.db,
            "SELECT count(*) FROM memoji_cache WHERE warmed_at IS NOT NULL"
        )
        .await,
        2
    );
    env.cleanup().await;
}
