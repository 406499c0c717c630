//! Cache warming (`memoji-worker warm`, src/warm/): what is not cached is generated ahead of
//! demand, within the budget, charging nobody, giving way to live jobs and in single flight with
//! them; the command's output on a pipe is plain lines.

use std::io::Write;
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use memoji_worker::warm::{self, Candidate, Options, Progress, Refused, Report, Warmer};
use serde_json::{Value, json};
use tokio_util::sync::CancellationToken;

use crate::helpers::{TestEnv, count, eventually, openai_ok, worker_environment};

/// Progress lines captured for the test.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn warmer(env: &TestEnv) -> Warmer {
    memoji_worker::app::warmer(&env.settings, true)
        .await
        .expect("the warmer builds")
}

fn candidates(env: &TestEnv, warmer: &Warmer, jsonl: &str) -> (Vec<Candidate>, Vec<Refused>) {
    let rules = memoji_worker::app::check_domain(&env.settings).unwrap();
    let (configs, mut refused) = warm::read_jsonl(jsonl);
    let shaping = warm::Shaping {
        rules: &rules,
        prices: &env.settings.prices,
        generator: warmer.generator.kind(),
        model: None,
    };
    let (wanted, more) = shaping.candidates(configs);
    refused.extend(more);
    (wanted, refused)
}

async fn run_warm(env: &TestEnv, jsonl: &str, options: Options, progress: &mut Progress) -> Report {
    let warmer = warmer(env).await;
    let (wanted, refused) = candidates(env, &warmer, jsonl);
    warm::run(
        &warmer,
        wanted,
        refused,
        &options,
        progress,
        &CancellationToken::new(),
    )
    .await
    .expect("the warming run completes")
}

fn line(hair: &str) -> String {
    json!({"hair": hair, "gesture": "thumbs-up"}).to_string()
}

#[tokio::test]
async fn warming_generates_what_is_missing_within_budget_and_charges_nobody() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    // One configuration is cached by a live job first (which charges its user one credit).
    let live = env
        .run(&env.job("user-1", json!({"hair": "long", "gesture": "thumbs-up"})))
        .await;
    assert_eq!(live["cached"], false);
    let ledger_before = count(&env.db, "SELECT count(*) FROM memoji_credit_ledger").await;

    let jsonl = [
        line("long"),
        line("curly"),
        "not json".to_owned(),
        line("bald"),
        line("curly"),
        line("bun"),
        json!({"size": "13x13"}).to_string(),
    ]
    .join("\n");
    // Each image lists at $0.04 (gpt-image-2.6-flare, 1024x1024, medium): $0.10 buys two.
    let captured = Captured::default();
    let mut progress = Progress::lines(Box::new(captured.clone()));
    let options = Options {
        budget_usd: Some(0.10),
        ..Options::default()
    };
    let report = run_warm(&env, &jsonl, options, &mut progress).await;

    assert_eq!(report.considered, 4, "{report:?}");
    assert_eq!(report.already_cached, 1);
    assert_eq!(report.refused.len(), 2, "{:?}", report.refused);
    assert_eq!(report.generated, 2);
    assert_eq!(report.over_budget, 1);
    assert_eq!(report.failed, 0);
    assert!(
        report.spent_usd > 0.0 && report.spent_usd <= 0.10,
        "{report:?}"
    );
    assert_eq!(env.openai.calls(), 3, "one live generation and two warmed");

    // Rows recorded with their cost, no use counted yet, and nobody charged.
    let warmed: Vec<(f64, i32)> = sqlx::query_as(
        "SELECT generation_cost::float8, usage_count FROM memoji_cache WHERE warmed_at IS NOT NULL",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    assert_eq!(warmed.len(), 2);
    for (cost, uses) in &warmed {
        assert!(*cost > 0.0);
        assert_eq!(*uses, 0);
    }
    let recorded: f64 = warmed.iter().map(|(cost, _)| cost).sum();
    assert!(
        (recorded - report.spent_usd).abs() < 1e-4,
        "{recorded} vs {report:?}"
    );
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_credit_ledger").await,
        ledger_before
    );
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_generation_leases").await,
        0
    );

    // The run is in the warming history the dashboard shows.
    let (source, mode, generated): (String, String, i32) =
        sqlx::query_as("SELECT source, mode, generated FROM memoji_warm_runs")
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(
        (source.as_str(), mode.as_str(), generated),
        ("from", "live", 2)
    );

    // Plain lines, one per generation, then the summary.
    let text = captured.text();
    assert!(text.contains("warm: 2 to generate"), "{text}");
    assert!(text.contains("warm: 1/2 "), "{text}");
    assert!(text.contains("warm: 2/2 "), "{text}");
    assert!(text.contains("warm: done: 2 generated"), "{text}");

    // A user asking for a warmed configuration gets a hit, free.
    let hit = env
        .run(&env.job("user-2", json!({"hair": "curly", "gesture": "thumbs-up"})))
        .await;
    assert_eq!(hit["cached"], true, "{hit}");
    assert_eq!(hit["credits_charged"], 0);
    assert_eq!(env.openai.calls(), 3);

    // A dry run lists what is left, with its estimate, and generates nothing.
    let report = run_warm(
        &env,
        &jsonl,
        Options {
            dry_run: true,
            ..Options::default()
        },
        &mut Progress::Quiet,
    )
    .await;
    assert_eq!(report.planned, 1);
    assert_eq!(report.would_generate[0].config["hair"], "bun");
    assert!((report.estimated_usd - 0.04).abs() < 1e-9, "{report:?}");
    assert_eq!(env.openai.calls(), 3);
    env.cleanup().await;
}

#[tokio::test]
async fn a_live_job_asking_for_a_key_warming_is_generating_waits_and_is_a_hit() {
    let mut env = TestEnv::start(vec![openai_ok().set_delay(Duration::from_millis(1500))]).await;
    let warmer = warmer(&env).await;
    let (wanted, refused) = candidates(&env, &warmer, &line("wavy"));
    let running = tokio::spawn(async move {
        warm::run(
            &warmer,
            wanted,
            refused,
            &Options::default(),
            &mut Progress::Quiet,
            &CancellationToken::new(),
        )
        .await
        .unwrap()
    });
    let openai = &env.openai;
    eventually("warming's generation to start", || async {
        (openai.calls() == 1).then_some(())
    })
    .await;
    let result = env
        .run(&env.job("user-1", json!({"hair": "wavy", "gesture": "thumbs-up"})))
        .await;
    let report = running.await.unwrap();
    assert_eq!(report.generated, 1, "{report:?}");
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(
        result["cached"], true,
        "the live job waited for warming's image: {result}"
    );
    assert_eq!(result["credits_charged"], 0);
    assert_eq!(env.openai.calls(), 1, "the key was generated once");
    env.cleanup().await;
}

#[tokio::test]
async fn warming_skips_a_key_a_live_job_is_generating() {
    let mut env = TestEnv::start(vec![openai_ok().set_delay(Duration::from_millis(1500))]).await;
    let job = env.job("user-1", json!({"hair": "wavy", "gesture": "thumbs-up"}));
    env.publish(&job).await;
    let openai = &env.openai;
    eventually("the live generation to start", || async {
        (openai.calls() == 1).then_some(())
    })
    .await;
    let report = run_warm(
        &env,
        &line("wavy"),
        Options::default(),
        &mut Progress::Quiet,
    )
    .await;
    let result = env.result_of(job["job_id"].as_str().unwrap()).await;
    assert_eq!(result["cached"], false);
    // Warming gave way (the live generation held a lease) or found the key taken: never twice.
    assert_eq!(report.generated + report.dropped, 0, "{report:?}");
    assert_eq!(env.openai.calls(), 1, "the key was generated once");
    assert_eq!(
        count(
            &env.db,
            "SELECT count(*) FROM memoji_cache WHERE warmed_at IS NOT NULL"
        )
        .await,
        0
    );
    env.cleanup().await;
}

#[tokio::test]
async fn warming_waits_while_live_jobs_are_queued() {
    // No worker consumes at first: the jobs wait in the queue, and warming must not start.
    let mut env = TestEnv::without_worker(vec![openai_ok()], |s| s.warm.yield_poll_ms = 50).await;
    for hair in ["a1", "a2", "a3"] {
        env.publish(&env.job("user-1", json!({"hair": hair}))).await;
    }
    let warmer = warmer(&env).await;
    let (wanted, refused) = candidates(&env, &warmer, &[line("w1"), line("w2")].join("\n"));
    let running = tokio::spawn(async move {
        warm::run(
            &warmer,
            wanted,
            refused,
            &Options::default(),
            &mut Progress::Quiet,
            &CancellationToken::new(),
        )
        .await
        .unwrap()
    });
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(
        env.openai.calls(),
        0,
        "warming started while jobs were queued"
    );
    assert!(!running.is_finished());
    // A worker takes the queue; warming goes on once the live jobs are served.
    let worker = env.second_app().await;
    env.await_results(3).await;
    let report = tokio::time::timeout(Duration::from_secs(30), running)
        .await
        .expect("warming finishes once the queue is empty")
        .unwrap();
    assert_eq!(report.generated, 2, "{report:?}");
    assert!(report.yielded >= 1);
    let requests = env.openai.generation_requests().await;
    assert_eq!(requests.len(), 5);
    worker.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_warm_command_prints_plain_progress_lines_and_a_report_when_not_on_a_terminal() {
    let env = TestEnv::without_worker(vec![openai_ok()], |_| {}).await;
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("popular.jsonl");
    std::fs::write(&file, [line("x1"), line("x2"), line("x3")].join("\n")).unwrap();
    let run = |args: Vec<String>| {
        let vars = worker_environment(&env.settings);
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_memoji-worker"));
        command
            .args(args)
            .env_clear()
            .envs(vars)
            .stdin(Stdio::null())
            .kill_on_drop(true);
        async move { command.output().await.unwrap() }
    };
    let path = file.display().to_string();
    let dry = run(vec![
        "warm".into(),
        "--from".into(),
        path.clone(),
        "--dry-run".into(),
    ])
    .await;
    assert!(
        dry.status.success(),
        "{}",
        String::from_utf8_lossy(&dry.stderr)
    );
    let report: Value = serde_json::from_slice(&dry.stdout).expect("the report is JSON");
    assert_eq!(report["planned"], 3);
    assert_eq!(report["would_generate"].as_array().unwrap().len(), 3);
    assert_eq!(env.openai.calls(), 0);

    let real = run(vec![
        "warm".into(),
        "--from".into(),
        path,
        "--max".into(),
        "2".into(),
    ])
    .await;
    let stderr = String::from_utf8_lossy(&real.stderr);
    assert!(real.status.success(), "{stderr}");
    let report: Value = serde_json::from_slice(&real.stdout).expect("the report is JSON");
    assert_eq!(report["generated"], 2, "{report}");
    assert!(stderr.contains("warm: 2 to generate"), "{stderr}");
    assert!(stderr.contains("warm: 2/2 "), "{stderr}");
    assert!(!stderr.contains('\r'), "no bar drawn on a pipe: {stderr}");
    assert_eq!(env.openai.calls(), 2);
    env.cleanup().await;
}

#[tokio::test]
async fn the_request_history_gives_back_the_most_asked_configurations_not_cached_now() {
    // Calls: a (ok), b (ok), c twice (refused, so never cached), then warming's (ok).
    let replies = vec![
        openai_ok(),
        openai_ok(),
        crate::helpers::openai_error(400, "Invalid request", None),
        crate::helpers::openai_error(400, "Invalid request", None),
        openai_ok(),
    ];
    let mut env = TestEnv::start(replies).await;
    let asks = [("a", 3), ("b", 1), ("c", 2)];
    for (hair, times) in asks {
        for _ in 0..times {
            env.run(&env.job("user-1", json!({"hair": hair}))).await;
        }
    }
    let pool = env.db.clone();
    let db = &pool;
    eventually("the history to be written", || async {
        (count(
            db,
            "SELECT COALESCE(sum(requests), 0)::int8 FROM memoji_request_history",
        )
        .await
            == 6)
            .then_some(())
    })
    .await;
    assert_eq!(
        count(db, "SELECT count(*) FROM memoji_request_history").await,
        3,
        "one row per key per day"
    );
    // a's entry is cleaned up; c never made it.
    sqlx::query("DELETE FROM memoji_cache WHERE prompt_config->>'hair' = 'a'")
        .execute(db)
        .await
        .unwrap();
    let configs = warm::history::most_asked(db, 30, 500).await.unwrap();
    let hairs: Vec<&str> = configs
        .iter()
        .map(|(_, config)| config["hair"].as_str().unwrap())
        .collect();
    assert_eq!(hairs, ["a", "c"], "most asked first, cached ones left out");
    assert!(configs[0].0.contains("3 requests"), "{configs:?}");
    let top = warm::history::most_asked(db, 30, 1).await.unwrap();
    assert_eq!(top.len(), 1);

    // Warming them from the history makes them hits again, for the same keys.
    let calls = env.openai.calls();
    let warmer = warmer(&env).await;
    let rules = memoji_worker::app::check_domain(&env.settings).unwrap();
    let shaping = warm::Shaping {
        rules: &rules,
        prices: &env.settings.prices,
        generator: warmer.generator.kind(),
        model: None,
    };
    let (wanted, refused) = shaping.candidates(configs);
    let report = warm::run(
        &warmer,
        wanted,
        refused,
        &Options::default(),
        &mut Progress::Quiet,
        &CancellationToken::new(),
    )
    .await
    .unwrap();
    assert_eq!(report.generated, 2, "{report:?}");
    // a's row alone was deleted: its image, still in storage at the same path, is reused (as a
    // job's leader reuses one), so only c is paid for.
    assert_eq!(env.openai.calls(), calls + 1);
    let hit = env.run(&env.job("user-2", json!({"hair": "c"}))).await;
    assert_eq!(hit["cached"], true, "{hit}");

    // The cleanup prunes history past cleanup.history_retention_days (90).
    sqlx::query(
        "INSERT INTO memoji_request_history (day, prompt_hash, prompt_config, requests)
         VALUES (current_date - 91, repeat('0', 64), '{}', 4)",
    )
    .execute(db)
    .await
    .unwrap();
    let (status, report) = env
        .post_cleanup(&env.http_base(), false, Some(crate::helpers::ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["history_pruned"], 1, "{report}");
    assert_eq!(
        count(
            db,
            "SELECT count(*) FROM memoji_request_history WHERE day < current_date - 90"
        )
        .await,
        0
    );
    env.cleanup().await;
}

#[tokio::test]
async fn warm_predict_explains_and_warms_popular_combinations_nobody_asked_for_yet() {
    let env = TestEnv::without_worker(vec![openai_ok()], |_| {}).await;
    // History: wave and heart are popular gestures, long and short popular hair; wave + long was
    // never asked for.
    let rows = [
        ("wave", "short", 30),
        ("heart", "long", 25),
        ("heart", "short", 10),
        ("clap", "buzz", 1),
    ];
    for (gesture, hair, requests) in rows {
        let config = json!({"model": "gpt-image-1", "size": "1024x1024", "familyType": "father",
            "gesture": gesture, "hair": hair, "skinTone": "medium", "accessories": [],
            "colorTheme": "pastel-blue", "background": "auto"});
        env.asked(&config, 1, requests).await;
    }
    let run = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_memoji-worker"));
        command
            .args(args)
            .env_clear()
            .envs(worker_environment(&env.settings))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        async move { command.output().await.unwrap() }
    };
    let explained = run(&["warm", "--predict", "--explain", "--top", "6"]).await;
    let stdout = String::from_utf8_lossy(&explained.stdout);
    assert!(
        explained.status.success(),
        "{}",
        String::from_utf8_lossy(&explained.stderr)
    );
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 6, "{stdout}");
    assert!(
        lines[0].contains("\"gesture\":\"wave\"") && lines[0].contains("\"hair\":\"short\""),
        "{stdout}"
    );
    let unseen = lines
        .iter()
        .find(|l| l.contains("\"gesture\":\"wave\"") && l.contains("\"hair\":\"long\""))
        .unwrap_or_else(|| panic!("wave + long is predicted: {stdout}"));
    assert!(unseen.contains("never asked"), "{unseen}");
    assert!(unseen.contains("gesture=wave"), "{unseen}");
    assert_eq!(env.openai.calls(), 0, "--explain generates nothing");

    let warmed = run(&["warm", "--predict", "--top", "2", "--budget-usd", "1"]).await;
    assert!(
        warmed.status.success(),
        "{}",
        String::from_utf8_lossy(&warmed.stderr)
    );
    let report: Value = serde_json::from_slice(&warmed.stdout).unwrap();
    assert_eq!(report["generated"], 2, "{report}");
    assert_eq!(env.openai.calls(), 2);
    // What is warmed now is predicted no more: the top one was wave + short.
    let again = run(&["warm", "--predict", "--explain", "--top", "6"]).await;
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(
        !stdout.contains("\"gesture\":\"wave\",\"hair\":\"short\""),
        "{stdout}"
    );
    // The README's other forms, as written.
    for args in [
        &[
            "warm",
            "--from-history",
            "--days",
            "30",
            "--top",
            "500",
            "--budget-usd",
            "5",
        ][..],
        &["warm", "--predict", "--top", "500", "--budget-usd", "5"][..],
    ] {
        let output = run(args).await;
        assert!(
            output.status.success(),
            "{args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        let report: Value = serde_json::from_slice(&output.stdout).unwrap();
        assert!(report["spent_usd"].as_f64().unwrap() <= 5.0, "{report}");
        assert_eq!(report["failed"], 0, "{report}");
    }
    // Every history configuration is cached now, and nothing was generated twice.
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_request_history h WHERE NOT EXISTS (SELECT 1 FROM memoji_cache c WHERE c.prompt_hash = h.prompt_hash)").await,
        0
    );
    let requests = env.openai.generation_requests().await.len() as i64;
    assert_eq!(
        requests,
        count(&env.db, "SELECT count(*) FROM memoji_cache").await
    );
    env.cleanup().await;
}

#[tokio::test]
async fn scheduled_warming_runs_on_one_replica_within_the_daily_budget_and_reports() {
    // Every second, on two replicas; the day's budget buys two images at list price.
    let tweak = |s: &mut memoji_worker::config::Settings| {
        s.warm.schedule = "*/1 * * * * *".to_owned();
        s.warm.daily_budget_usd = 0.08;
        s.warm.yield_poll_ms = 50;
    };
    let env = TestEnv::start_with(vec![openai_ok()], tweak).await;
    let mut tap = env.metrics_tap().await;
    for hair in ["h1", "h2", "h3"] {
        env.asked(&json!({"hair": hair}), 0, 5).await;
    }
    let second = env.second_app().await;
    let completed = tap
        .next_with("warm.completed", |m| m["generated"].as_u64() > Some(0))
        .await;
    crate::schemas::assert_valid("metrics/warm-completed.schema.json", &completed);
    assert_eq!(completed["source"], "history");
    assert!(
        completed["spent_usd"].as_f64().unwrap() <= 0.08,
        "{completed}"
    );
    assert_eq!(completed["saved_so_far_usd"], 0.0);
    // Later runs (on either replica) find the day's budget spent: nothing more is generated.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let warmed = count(
        &env.db,
        "SELECT count(*) FROM memoji_cache WHERE warmed_at IS NOT NULL",
    )
    .await;
    assert_eq!(warmed, 2, "{completed}");
    assert_eq!(
        env.openai.calls(),
        2,
        "each key generated once, by one replica"
    );
    let spent: f64 = sqlx::query_scalar(
        "SELECT sum(generation_cost)::float8 FROM memoji_cache WHERE warmed_at IS NOT NULL",
    )
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert!(spent <= 0.08, "{spent}");
    second.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn refresh_moves_the_most_used_entries_of_a_model_to_new_images_and_never_points_at_a_missing_one()
 {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    for hair in ["r1", "r2", "r3"] {
        env.run(&env.job("user-1", json!({"hair": hair}))).await;
    }
    // As if the seed system had made them with gpt-image-1, used 10, 5 and 1 times.
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
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_memoji-worker"))
        .args([
            "refresh",
            "--generated-by",
            "gpt-image-1",
            "--top",
            "2",
            "--budget-usd",
            "1",
        ])
        .env_clear()
        .envs(worker_environment(&env.settings))
        .stdin(Stdio::null())
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["refreshed"], 2, "{report}");
    assert_eq!(report["old_images_deleted"], 2, "{report}");
    assert!(report["spent_usd"].as_f64().unwrap() <= 1.0);
    assert_eq!(env.openai.calls(), calls + 2);
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_credit_ledger").await,
        ledger
    );

    let after: Vec<(String, String, String, i32)> = sqlx::query_as(
        "SELECT prompt_config->>'hair', storage_path, model, usage_count FROM memoji_cache ORDER BY 1",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    for (hair, path, model, uses) in &after {
        // No row points at a missing image.
        assert!(
            env.storage_dir().join(path).is_file(),
            "{hair}: {path} is missing"
        );
        let old = &before.iter().find(|(h, _)| h == hair).unwrap().1;
        if hair == "r3" {
            assert_eq!(path, old, "the least used entry is left alone");
            assert_eq!(model, "gpt-image-1");
        } else {
            assert!(path.ends_with("-1.png"), "{path}");
            assert_eq!(model, "gpt-image-2.6-flare");
            assert!(
                !env.storage_dir().join(old).exists(),
                "the old image {old} is deleted"
            );
            assert!(*uses >= 5, "the entry keeps its history");
        }
    }
    let hit = env.run(&env.job("user-2", json!({"hair": "r1"}))).await;
    assert_eq!(hit["cached"], true);
    assert!(
        hit["storage_path"].as_str().unwrap().ends_with("-1.png"),
        "{hit}"
    );
    assert_eq!(hit["model"], "gpt-image-2.6-flare");
    env.cleanup().await;
}
