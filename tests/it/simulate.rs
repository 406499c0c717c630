//! Offline policy replay (src/simulate/): `history export` writes the worker's request history as
//! a request log, `simulate` replays it against policies and its totals add up; and the replay's
//! seed retention deletes exactly the entries the real cleanup deletes.

use std::path::Path;
use std::process::Stdio;

use chrono::{Duration, Utc};
use memoji_worker::job::{AvatarConfig, CacheKey, GeneratorKind};
use memoji_worker::simulate::log;
use memoji_worker::simulate::policy::SeedRules;
use serde_json::{Value, json};

use crate::helpers::{TestEnv, count, openai_ok, worker_environment};

fn canonical(gesture: &str, hair: &str) -> (String, Value) {
    let config = json!({"gesture": gesture, "hair": hair});
    let parsed = AvatarConfig::normalize(&config).unwrap();
    (
        CacheKey::of(&parsed, GeneratorKind::OpenAi).to_string(),
        CacheKey::canonical_value(&parsed, GeneratorKind::OpenAi),
    )
}

/// `memoji-worker ARGS` in `dir`, configured like `env`'s worker.
async fn run(env: &TestEnv, dir: &Path, args: &[&str]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_memoji-worker"))
        .args(args)
        .current_dir(dir)
        .env_clear()
        .envs(worker_environment(&env.settings))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap()
}

fn close(a: f64, b: f64) -> bool {
    (a - b).abs() < 1e-6
}

#[tokio::test]
async fn the_exported_history_replays_under_two_policies_with_totals_that_add_up() {
    let env = TestEnv::without_worker(vec![openai_ok()], |_| {}).await;
    // Five keys over four days (days ago, gesture, hair, requests), and one row 40 days old
    // that a 30-day export leaves out.
    let rows = [
        (3, "wave", "short", 7),
        (3, "heart", "long", 2),
        (2, "wave", "short", 5),
        (2, "clap", "bun", 1),
        (1, "wave", "short", 4),
        (1, "heart", "long", 3),
        (1, "peace", "curly", 1),
        (0, "wave", "short", 2),
        (0, "wink", "bald", 1),
        (40, "wave", "short", 9),
    ];
    for (ago, gesture, hair, requests) in rows {
        let (key, config) = canonical(gesture, hair);
        sqlx::query(
            "INSERT INTO memoji_request_history (day, prompt_hash, prompt_config, requests)
             VALUES (current_date - $1::int, $2, $3, $4)",
        )
        .bind(ago)
        .bind(&key)
        .bind(&config)
        .bind(requests)
        .execute(&env.db)
        .await
        .unwrap();
    }
    // One key is cached, with its real image size.
    let (cached, _) = canonical("wave", "short");
    sqlx::query(
        "INSERT INTO memoji_cache (prompt_hash, image_url, generation_cost, image_bytes)
         VALUES ($1, 'http://x/a.png', 0.04, 1234567)",
    )
    .bind(&cached)
    .execute(&env.db)
    .await
    .unwrap();

    // The README's commands, as written.
    let dir = tempfile::tempdir().unwrap();
    let dir = dir.path();
    let file = dir.join("history.jsonl");
    let path = "history.jsonl";
    let exported = run(
        &env,
        dir,
        &["history", "export", "--days", "30", "--out", path],
    )
    .await;
    assert!(
        exported.status.success(),
        "{}",
        String::from_utf8_lossy(&exported.stderr)
    );
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(text.starts_with("# memoji request log"), "{text}");
    let lines = log::read(&text).unwrap();
    assert_eq!(lines.len(), 9, "{text}");
    let requests: u32 = lines.iter().map(|l| l.requests).sum();
    assert_eq!(requests, 26);
    let today = Utc::now().date_naive();
    assert_eq!(lines[0].day, today - Duration::days(3), "oldest first");
    assert_eq!(lines.last().unwrap().day, today);
    for line in &lines {
        assert!(line.users.is_none(), "the history keeps no users");
        assert_eq!(
            line.key,
            log::key_of(&line.config),
            "the config makes the key"
        );
        let expected = (line.key.as_deref() == Some(cached.as_str())).then_some(1_234_567);
        assert_eq!(line.image_bytes, expected);
    }

    // Two policies: the seed's (nothing is 90 days old), and 2 variants under GDSF with room
    // for 3 entries.
    let simulated = run(
        &env,
        dir,
        &[
            "simulate",
            "--log",
            path,
            "--policy",
            "name=today",
            "--policy",
            "name=tight,variants=2,retention=gdsf:3",
            "--format",
            "json",
        ],
    )
    .await;
    assert!(
        simulated.status.success(),
        "{}",
        String::from_utf8_lossy(&simulated.stderr)
    );
    let report: Value = serde_json::from_slice(&simulated.stdout).unwrap();
    assert_eq!(report["log"]["requests"], 26);
    assert_eq!(report["log"]["days"], 4);
    assert_eq!(report["log"]["keys"], 5);
    assert_eq!(report["log"]["users"], "anonymous");
    let policies = report["policies"].as_array().unwrap();
    assert_eq!(policies.len(), 2);
    for policy in policies {
        let total = &policy["total"];
        let n = |field: &str| total[field].as_u64().unwrap();
        let usd = |field: &str| total[field].as_f64().unwrap();
        assert_eq!(n("requests"), 26, "{policy}");
        assert_eq!(n("hits") + n("misses"), n("requests"), "{total}");
        assert_eq!(n("misses"), n("generations"), "every miss generates");
        // Every key is a default 1024x1024 medium image: $0.04 each.
        let made = (n("generations") + n("warmed")) as f64;
        assert!(close(usd("spend_usd"), made * 0.04), "{total}");
        assert!(close(usd("saved_usd"), n("hits") as f64 * 0.04), "{total}");
        let days = policy["days"].as_array().unwrap();
        assert_eq!(days.len(), 4);
        let hits: u64 = days.iter().map(|d| d["hits"].as_u64().unwrap()).sum();
        assert_eq!(hits, n("hits"));
    }
    // The seed's policy keeps everything (5 keys, 5 generations: 21 hits); two variants need
    // a second miss for every key asked twice or more, and three entries cannot hold five keys.
    let (seed, tight) = (&policies[0]["total"], &policies[1]["total"]);
    assert_eq!(seed["generations"], 5, "{seed}");
    assert_eq!(seed["entries"], 5);
    assert_eq!(seed["evictions"], 0);
    assert!(tight["generations"].as_u64().unwrap() > 5, "{tight}");
    assert!(tight["entries"].as_u64().unwrap() <= 3, "{tight}");
    assert!(tight["evictions"].as_u64().unwrap() >= 2, "{tight}");
    assert_eq!(policies[1]["policy"]["variants"], 2);
    assert_eq!(env.openai.calls(), 0, "a replay calls nobody");

    // The table says the same, and a bad spec is refused by name.
    let table = run(
        &env,
        dir,
        &["simulate", "--log", path, "--policy", "retention=seed"],
    )
    .await;
    let table = String::from_utf8(table.stdout).unwrap();
    assert!(table.contains("## Compared"), "{table}");
    assert!(table.contains("| **total** | 26 | 21 |"), "{table}");
    let refused = run(
        &env,
        dir,
        &["simulate", "--log", path, "--policy", "variants=0"],
    )
    .await;
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(
        stderr.contains("policy `variants=0`: variants=0: expected a whole number from 1 to 20"),
        "{stderr}"
    );

    // The generated log: the same format, with users, and the same arithmetic.
    let generate = [
        "history",
        "generate",
        "--days",
        "3",
        "--requests-per-day",
        "200",
        "--seed",
        "14",
        "--out",
        "zipf.jsonl",
    ];
    let generated = run(&env, dir, &generate).await;
    assert!(generated.status.success());
    let zipf = log::read(&std::fs::read_to_string(dir.join("zipf.jsonl")).unwrap()).unwrap();
    assert_eq!(zipf.iter().map(|l| l.requests).sum::<u32>(), 600);
    assert!(zipf.iter().all(|l| l.users.is_some()));
    let replayed = run(
        &env,
        dir,
        &[
            "simulate",
            "--log",
            "zipf.jsonl",
            "--policy",
            "variants=3",
            "--format",
            "json",
        ],
    )
    .await;
    let report: Value = serde_json::from_slice(&replayed.stdout).unwrap();
    assert_eq!(report["log"]["users"], "named");
    let total = &report["policies"][0]["total"];
    assert_eq!(total["requests"], 600);
    assert_eq!(
        total["hits"].as_u64().unwrap() + total["generations"].as_u64().unwrap(),
        600
    );
    env.cleanup().await;
}

#[tokio::test]
async fn the_replays_seed_retention_deletes_what_the_real_cleanup_deletes() {
    let env = TestEnv::without_worker(vec![openai_ok()], |_| {}).await;
    let rules = SeedRules::from(&env.settings.cleanup);
    // Every combination around the thresholds: made k whole days (and an hour) before the run.
    let ages = [0, 1, 89, 90, 91, 400];
    let uses = [0, 1, 2, 3, 100, 101, 500];
    let mut expected = Vec::new();
    for age in ages {
        for used in uses {
            for archived in [false, true] {
                let key = format!("{:064x}", expected.len() + 1);
                sqlx::query(
                    "INSERT INTO memoji_cache (prompt_hash, image_url, usage_count, archived,
                                               created_at)
                     VALUES ($1, 'https://cdn.example.com/a.png', $2, $3,
                             now() - make_interval(days => $4) - interval '1 hour')",
                )
                .bind(&key)
                .bind(used)
                .bind(archived)
                .bind(age)
                .execute(&env.db)
                .await
                .unwrap();
                let archived_after = archived || rules.archives(i64::from(used), archived);
                let deleted = rules.deletes(age as u32, i64::from(used), archived_after);
                expected.push((key, deleted, archived_after));
            }
        }
    }
    let ran = memoji_worker::app::cleanup(&env.settings, false)
        .await
        .unwrap();
    assert!(matches!(ran, memoji_worker::maintenance::Ran::Completed(_)));
    for (key, deleted, archived) in &expected {
        let rows: Vec<(bool,)> =
            sqlx::query_as("SELECT archived IS TRUE FROM memoji_cache WHERE prompt_hash = $1")
                .bind(key)
                .fetch_all(&env.db)
                .await
                .unwrap();
        assert_eq!(rows.is_empty(), *deleted, "{key}: deleted?");
        if let Some((now_archived,)) = rows.first() {
            assert_eq!(now_archived, archived, "{key}: archived?");
        }
    }
    let gone = expected.iter().filter(|(_, d, _)| *d).count() as i64;
    assert!(gone > 0);
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_cache").await,
        expected.len() as i64 - gone
    );
    env.cleanup().await;
}
