//! Cache controls (issue 15, README "Cache controls"): a job's `cache` object — `mode`
//! (`refresh`, `bypass`, `only_if_cached`), `max_age_days`, `namespace` — users' stored
//! preferences (admin API and CLI), and an experiment arm's `max_age_days` and `warming`, against
//! the real broker and database. Every mode keeps the guarantees: charged only on a generation,
//! nothing for `only_if_cached`, one generation per key under concurrency, the same answer on
//! redelivery.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::time::Duration;

use memoji_worker::config::{ArmSettings, ExperimentSettings, Settings};
use memoji_worker::job::experiment;
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_TOKEN, TestEnv, count, eventually, job_ids, openai_ok, post_cleanup, usage_count,
    worker_environment,
};

/// The seed's key of the default configuration (CONTRACT.md §3).
const SEED_KEY: &str = "57031741670c8d0259dfd2b0809f9923eb2a04bcfc4ac10ce9d998eb376f16fe";

/// `env.job(user, config)` with a `cache` object.
fn with_cache(env: &TestEnv, user: &str, config: Value, cache: Value) -> Value {
    let mut job = env.job(user, config);
    job["cache"] = cache;
    job
}

/// Makes the key's entry look generated `days` ago.
async fn age_entry(env: &TestEnv, hash: &str, days: i32) {
    sqlx::query(
        "UPDATE memoji_cache SET created_at = now() - make_interval(days => $2),
                updated_at = now() - make_interval(days => $2)
          WHERE prompt_hash = $1",
    )
    .bind(hash)
    .bind(days)
    .execute(&env.db)
    .await
    .unwrap();
}

async fn entry_path(env: &TestEnv, hash: &str) -> String {
    sqlx::query_scalar("SELECT storage_path FROM memoji_cache WHERE prompt_hash = $1")
        .bind(hash)
        .fetch_one(&env.db)
        .await
        .unwrap()
}

async fn ledger(env: &TestEnv) -> i64 {
    count(&env.db, "SELECT count(*) FROM memoji_credit_ledger").await
}

/// An admin API request with the token, as JSON.
async fn admin(
    env: &TestEnv,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut request = env
        .http
        .request(method, format!("{}{path}", env.http_base()))
        .bearer_auth(ADMIN_TOKEN);
    if let Some(body) = body {
        request = request.json(&body);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.json().await.unwrap())
}

#[tokio::test]
async fn only_if_cached_answers_a_hit_or_not_cached_and_never_charges_or_generates() {
    let mut env = TestEnv::start(vec![openai_ok().held()]).await;
    let config = json!({"hair": "bob"});
    let preview = with_cache(&env, "u", config.clone(), json!({"mode": "only_if_cached"}));
    let result = env.run(&preview).await;
    assert_eq!(result["status"], "failed", "{result}");
    assert_eq!(result["error"]["code"], "not_cached", "{result}");
    assert_eq!(result["error"]["retryable"], true, "{result}");
    assert_eq!(result["cached"], false);
    assert_eq!(result["credits_charged"], 0);
    assert_eq!(result["image_url"], Value::Null);
    assert!(
        result["prompt_hash"].is_string(),
        "names the key it looked up: {result}"
    );
    assert_eq!(env.openai.calls(), 0);
    assert_eq!(ledger(&env).await, 0, "never charged");
    assert_eq!(count(&env.db, "SELECT count(*) FROM memoji_cache").await, 0);
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_generation_leases").await,
        0,
        "never took the key's lease"
    );

    // Delivered again (the same job id): the same answer, from the job's record.
    env.publish(&preview).await;
    let again = env.result_of(preview["job_id"].as_str().unwrap()).await;
    assert_eq!(again, result, "a redelivery gets the recorded answer");

    // While another job generates the key, a preview does not wait for it.
    let live = env.job("u", config.clone());
    env.publish(&live).await;
    env.openai.gate().wait_for(1).await;
    let preview = with_cache(
        &env,
        "u2",
        config.clone(),
        json!({"mode": "only_if_cached"}),
    );
    let result = env.run(&preview).await;
    assert_eq!(result["error"]["code"], "not_cached", "{result}");
    env.openai.gate().open();
    let generated = env.result_of(live["job_id"].as_str().unwrap()).await;
    assert_eq!(generated["cached"], false);

    // Once cached, a preview is a hit.
    let preview = with_cache(
        &env,
        "u3",
        config.clone(),
        json!({"mode": "only_if_cached"}),
    );
    let hit = env.run(&preview).await;
    assert_eq!(hit["status"], "succeeded", "{hit}");
    assert_eq!(hit["cached"], true);
    assert_eq!(hit["image_url"], generated["image_url"]);
    assert_eq!(hit["credits_charged"], 0);
    assert_eq!(env.openai.calls(), 1);
    assert_eq!(ledger(&env).await, 1, "the one generation's credit only");
    env.cleanup().await;
}

#[tokio::test]
async fn refresh_mode_is_force_refresh_and_replaces_the_image_under_a_path_of_its_own() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let config = json!({"gesture": "bow"});
    let first = env.run(&env.job("u", config.clone())).await;
    let hash = first["prompt_hash"].as_str().unwrap().to_owned();
    let old_file = env
        .storage_dir()
        .join(first["storage_path"].as_str().unwrap());
    assert!(old_file.exists());
    let refreshed = env
        .run(&with_cache(
            &env,
            "u",
            config.clone(),
            json!({"mode": "refresh"}),
        ))
        .await;
    assert_eq!(refreshed["cached"], false, "{refreshed}");
    assert_eq!(refreshed["credits_charged"], 1);
    let path = refreshed["storage_path"].as_str().unwrap();
    assert!(path.ends_with(&format!("{hash}-1.png")), "{path}");
    assert_eq!(entry_path(&env, &hash).await, path);
    assert!(!old_file.exists(), "the replaced image is deleted");
    assert_eq!(env.openai.calls(), 2);
    // force_refresh with another mode is a contradiction, answered invalid_job.
    let mut contradiction = with_cache(&env, "u", config, json!({"mode": "only_if_cached"}));
    contradiction["force_refresh"] = json!(true);
    let invalid = env.run(&contradiction).await;
    assert_eq!(invalid["error"]["code"], "invalid_job", "{invalid}");
    env.cleanup().await;
}

#[tokio::test]
async fn bypass_returns_a_fresh_image_that_never_touches_the_entry_and_the_cleanup_removes_it() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let config = json!({"hair": "mohawk"});
    let cached = env.run(&env.job("u", config.clone())).await;
    let hash = cached["prompt_hash"].as_str().unwrap().to_owned();
    let bypass = with_cache(&env, "u", config.clone(), json!({"mode": "bypass"}));
    let fresh = env.run(&bypass).await;
    assert_eq!(fresh["status"], "succeeded", "{fresh}");
    env.publish(&bypass).await;
    let redelivered = env.result_of(bypass["job_id"].as_str().unwrap()).await;
    assert_eq!(redelivered, fresh, "a redelivery gets the recorded answer");
    assert_eq!(fresh["cached"], false);
    assert_eq!(fresh["credits_charged"], 1, "a real generation is charged");
    assert_eq!(fresh["prompt_hash"], hash.as_str());
    let path = fresh["storage_path"].as_str().unwrap().to_owned();
    let job_hex = bypass["job_id"].as_str().unwrap().replace('-', "");
    assert!(path.ends_with(&format!("{hash}-j{job_hex}.png")), "{path}");
    assert_ne!(fresh["image_url"], cached["image_url"]);
    // Its URL works, and the entry is as it was: same image, one use.
    let response = env
        .http
        .get(fresh["image_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    assert_eq!(
        entry_path(&env, &hash).await,
        cached["storage_path"].as_str().unwrap()
    );
    assert_eq!(
        usage_count(&env.db, &hash).await,
        1,
        "not read, not written"
    );
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_bypass_images").await,
        1
    );
    assert_eq!(env.openai.calls(), 2);
    // A bypass of a key nobody cached leaves no entry either.
    let other = env
        .run(&with_cache(
            &env,
            "u",
            json!({"hair": "afro"}),
            json!({"mode": "bypass"}),
        ))
        .await;
    assert_eq!(other["status"], "succeeded");
    assert_eq!(count(&env.db, "SELECT count(*) FROM memoji_cache").await, 1);

    // Past cleanup.bypass_retention_hours the cleanup deletes row and object; the entry stays.
    sqlx::query("UPDATE memoji_bypass_images SET created_at = now() - interval '25 hours' WHERE job_id = $1")
        .bind(uuid::Uuid::parse_str(bypass["job_id"].as_str().unwrap()).unwrap())
        .execute(&env.db)
        .await
        .unwrap();
    let (status, dry) = post_cleanup(&env.http, &env.http_base(), true, Some(ADMIN_TOKEN)).await;
    assert_eq!((status, &dry["bypass_deleted"]), (200, &json!(1)), "{dry}");
    let (status, report) =
        post_cleanup(&env.http, &env.http_base(), false, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["bypass_deleted"], 1, "{report}");
    assert!(
        !env.storage_dir().join(&path).exists(),
        "the object is gone"
    );
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_bypass_images").await,
        1,
        "the younger one stays"
    );
    assert!(
        env.storage_dir()
            .join(cached["storage_path"].as_str().unwrap())
            .exists()
    );
    env.cleanup().await;
}

/// The maximum age on the path a job takes: `batched` with group commit on, else the one-job
/// path.
async fn max_age_serves_young_entries_and_regenerates_old_ones(batched: bool) {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| {
        if !batched {
            s.worker.hit_batch_max = 0;
        }
    })
    .await;
    let config = json!({"gesture": "shrug"});
    let first = env.run(&env.job("u", config.clone())).await;
    let hash = first["prompt_hash"].as_str().unwrap().to_owned();
    let old_file = env
        .storage_dir()
        .join(first["storage_path"].as_str().unwrap());
    let young = env
        .run(&with_cache(
            &env,
            "u",
            config.clone(),
            json!({"max_age_days": 3}),
        ))
        .await;
    assert_eq!(
        young["cached"], true,
        "a day-old entry is young enough: {young}"
    );

    age_entry(&env, &hash, 5).await;
    // Without a maximum age any age is served.
    let plain = env.run(&env.job("u", config.clone())).await;
    assert_eq!(plain["cached"], true, "{plain}");
    let stale = with_cache(&env, "u", config.clone(), json!({"max_age_days": 3}));
    let old = env.run(&stale).await;
    assert_eq!(old["status"], "succeeded", "{old}");
    assert_eq!(old["cached"], false, "a five-day-old entry is regenerated");
    assert_eq!(old["credits_charged"], 1, "charged as a miss");
    assert_eq!(env.openai.calls(), 2);
    let path = old["storage_path"].as_str().unwrap();
    assert!(path.ends_with(&format!("{hash}-1.png")), "{path}");
    assert_eq!(entry_path(&env, &hash).await, path, "the entry moved to it");
    assert!(!old_file.exists(), "the replaced image is deleted");
    // Delivered again: the recorded answer, no second generation or charge.
    env.publish(&stale).await;
    let redelivered = env.result_of(stale["job_id"].as_str().unwrap()).await;
    assert_eq!(redelivered, old);
    assert_eq!(ledger(&env).await, 2);
    let again = env
        .run(&with_cache(&env, "u", config, json!({"max_age_days": 3})))
        .await;
    assert_eq!(again["cached"], true);
    assert_eq!(again["image_url"], old["image_url"]);
    assert_eq!(env.openai.calls(), 2);
    env.cleanup().await;
}

#[tokio::test]
async fn max_age_serves_young_entries_and_regenerates_old_ones_in_batches() {
    max_age_serves_young_entries_and_regenerates_old_ones(true).await;
}

#[tokio::test]
async fn max_age_serves_young_entries_and_regenerates_old_ones_one_by_one() {
    max_age_serves_young_entries_and_regenerates_old_ones(false).await;
}

#[tokio::test]
async fn a_namespace_has_a_key_of_its_own_and_a_seed_shaped_job_keeps_the_seeds_key() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let seed = env.run(&env.job("u", json!({}))).await;
    assert_eq!(seed["prompt_hash"], SEED_KEY);
    let spaced = env
        .run(&with_cache(
            &env,
            "u",
            json!({}),
            json!({"namespace": "tenant-a"}),
        ))
        .await;
    assert_eq!(
        spaced["prompt_hash"],
        "3cab7192db4b52749d1fea6743c38670c33cb42bf4827129c802a6782dbdb67a"
    );
    assert_eq!(spaced["cached"], false, "a separate cache: a miss");
    let prompt_config: Value =
        sqlx::query_scalar("SELECT prompt_config FROM memoji_cache WHERE prompt_hash = $1")
            .bind(spaced["prompt_hash"].as_str().unwrap())
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(prompt_config["namespace"], "tenant-a", "{prompt_config}");
    let again = env
        .run(&with_cache(
            &env,
            "u2",
            json!({}),
            json!({"namespace": "tenant-a"}),
        ))
        .await;
    assert_eq!(again["cached"], true);
    let plain = env.run(&env.job("u2", json!({}))).await;
    assert_eq!(
        (plain["prompt_hash"].as_str(), &plain["cached"]),
        (Some(SEED_KEY), &json!(true))
    );
    assert_eq!(plain["image_url"], seed["image_url"]);
    assert_eq!(env.openai.calls(), 2);
    env.cleanup().await;
}

#[tokio::test]
async fn preferences_set_through_the_api_change_what_the_user_gets_and_the_job_wins() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let path = "/api/users/picky/cache-preferences";
    let (status, shown) = admin(&env, reqwest::Method::GET, path, None).await;
    assert_eq!(status, 200);
    assert_eq!(shown["stored"], false, "{shown}");
    // The token is needed, the body checked.
    let response = env
        .http
        .put(format!("{}{path}", env.http_base()))
        .json(&json!({"mode": "bypass"}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    for bad in [
        json!({"mode": "sometimes"}),
        json!({"max_age_days": 0}),
        json!({"ttl": 3}),
    ] {
        let (status, body) = admin(&env, reqwest::Method::PUT, path, Some(bad.clone())).await;
        assert_eq!(status, 400, "{bad} → {body}");
        assert_eq!(body["error"], "invalid_preferences");
    }
    let (status, stored) = admin(
        &env,
        reqwest::Method::PUT,
        path,
        Some(json!({"mode": "only_if_cached", "variants_opt_out": true})),
    )
    .await;
    assert_eq!(status, 200, "{stored}");
    assert_eq!(
        (
            &stored["stored"],
            &stored["mode"],
            &stored["variants_opt_out"]
        ),
        (&json!(true), &json!("only_if_cached"), &json!(true))
    );
    let (_, shown) = admin(&env, reqwest::Method::GET, path, None).await;
    assert_eq!(shown, stored);

    let config = json!({"hair": "braids"});
    let preview = env.run(&env.job("picky", config.clone())).await;
    assert_eq!(
        preview["error"]["code"], "not_cached",
        "the user's mode: {preview}"
    );
    assert_eq!(env.openai.calls(), 0);
    // The job's own mode wins over the user's.
    let own = env
        .run(&with_cache(
            &env,
            "picky",
            config.clone(),
            json!({"mode": "default"}),
        ))
        .await;
    assert_eq!(own["cached"], false, "{own}");
    // Anyone else is not affected; the user's previews now hit.
    let hit = env.run(&env.job("picky", config.clone())).await;
    assert_eq!(hit["cached"], true, "{hit}");

    let (status, cleared) = admin(&env, reqwest::Method::DELETE, path, None).await;
    assert_eq!(
        (status, &cleared["cleared"]),
        (200, &json!(true)),
        "{cleared}"
    );
    let normal = env.run(&env.job("picky", json!({"hair": "bun"}))).await;
    assert_eq!(normal["cached"], false, "preferences cleared: a plain miss");
    assert_eq!(env.openai.calls(), 2);
    env.cleanup().await;
}

/// `memoji-worker user prefs …` configured like `env`; its stdout as JSON.
async fn prefs_cli(env: &TestEnv, args: &[&str]) -> Value {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_memoji-worker"))
        .args(["user", "prefs"])
        .args(args)
        .env_clear()
        .envs(worker_environment(&env.settings))
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .output()
        .await
        .unwrap();
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_slice(&output.stdout).expect("prints JSON")
}

#[tokio::test]
async fn preferences_set_with_the_cli_change_what_the_user_gets() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let config = json!({"skinTone": "deep"});
    let first = env.run(&env.job("someone", config.clone())).await;
    let hash = first["prompt_hash"].as_str().unwrap().to_owned();
    age_entry(&env, &hash, 3).await;

    // The README's lines, as written.
    let readme = prefs_cli(
        &env,
        &["set", "user-42", "--max-age-days", "7", "--no-variants"],
    )
    .await;
    assert_eq!(readme["max_age_days"], 7, "{readme}");
    assert_eq!(prefs_cli(&env, &["show", "user-42"]).await, readme);
    assert_eq!(
        prefs_cli(&env, &["clear", "user-42"]).await["cleared"],
        true
    );

    let set = prefs_cli(
        &env,
        &["set", "fussy", "--max-age-days", "2", "--no-variants"],
    )
    .await;
    assert_eq!(
        (&set["max_age_days"], &set["variants_opt_out"], &set["mode"]),
        (&json!(2), &json!(true), &Value::Null),
        "{set}"
    );
    assert_eq!(prefs_cli(&env, &["show", "fussy"]).await, set);
    // The API sees what the CLI stored.
    let (_, shown) = admin(
        &env,
        reqwest::Method::GET,
        "/api/users/fussy/cache-preferences",
        None,
    )
    .await;
    assert_eq!(shown, set);

    let other = env.run(&env.job("someone", config.clone())).await;
    assert_eq!(other["cached"], true, "no preference: any age serves");
    let fussy = env.run(&env.job("fussy", config.clone())).await;
    assert_eq!(
        fussy["cached"], false,
        "older than the user's two days: {fussy}"
    );
    assert_eq!(fussy["credits_charged"], 1);
    // The job's own max age wins over the user's.
    age_entry(&env, &hash, 3).await;
    let lenient = env
        .run(&with_cache(
            &env,
            "fussy",
            config.clone(),
            json!({"max_age_days": 10}),
        ))
        .await;
    assert_eq!(lenient["cached"], true, "{lenient}");

    let cleared = prefs_cli(&env, &["clear", "fussy"]).await;
    assert_eq!(
        (&cleared["cleared"], &cleared["stored"]),
        (&json!(true), &json!(false))
    );
    let plain = env.run(&env.job("fussy", config)).await;
    assert_eq!(plain["cached"], true);
    assert_eq!(env.openai.calls(), 2);
    env.cleanup().await;
}

/// An enabled experiment with two arms of 50 %: `short` (its own max age and warming), and
/// `control`.
fn experiment_settings(
    max_age_days: Option<u32>,
    warming: Option<bool>,
) -> BTreeMap<String, ExperimentSettings> {
    let arm = |max_age_days, warming| ArmSettings {
        share: 50.0,
        variants: None,
        max_age_days,
        warming,
    };
    BTreeMap::from([(
        "freshness".to_owned(),
        ExperimentSettings {
            enabled: true,
            control: None,
            arms: BTreeMap::from([
                ("control".to_owned(), arm(None, None)),
                ("short".to_owned(), arm(max_age_days, warming)),
            ]),
        },
    )])
}

/// A user id in `arm` of the settings' experiment.
fn user_in(settings: &Settings, arm: &str) -> String {
    (0..1000)
        .map(|n| format!("user-{n}"))
        .find(|user| experiment::assign(&settings.experiments, user).is_some_and(|a| a.arm == arm))
        .unwrap()
}

#[tokio::test]
async fn an_arms_max_age_applies_to_its_users_below_their_own_preference() {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| {
        s.experiments = experiment_settings(Some(1), None);
    })
    .await;
    let (short, control) = (
        user_in(&env.settings, "short"),
        user_in(&env.settings, "control"),
    );
    let config = json!({"accessories": ["scarf"]});
    let first = env.run(&env.job(&control, config.clone())).await;
    let hash = first["prompt_hash"].as_str().unwrap().to_owned();
    age_entry(&env, &hash, 2).await;
    let hit = env.run(&env.job(&control, config.clone())).await;
    assert_eq!(hit["cached"], true, "the control arm serves any age");
    // A preference of the short arm's user wins over the arm.
    let (status, _) = admin(
        &env,
        reqwest::Method::PUT,
        &format!("/api/users/{short}/cache-preferences"),
        Some(json!({"max_age_days": 30})),
    )
    .await;
    assert_eq!(status, 200);
    let preferred = env.run(&env.job(&short, config.clone())).await;
    assert_eq!(
        preferred["cached"], true,
        "the user's 30 days beat the arm's 1: {preferred}"
    );
    admin(
        &env,
        reqwest::Method::DELETE,
        &format!("/api/users/{short}/cache-preferences"),
        None,
    )
    .await;
    let regenerated = env.run(&env.job(&short, config)).await;
    assert_eq!(
        regenerated["cached"], false,
        "older than the arm's day: {regenerated}"
    );
    assert_eq!(env.openai.calls(), 2);
    env.cleanup().await;
}

#[tokio::test]
async fn an_arm_without_warming_is_not_served_warmed_entries_until_a_live_job_used_them() {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| {
        s.experiments = experiment_settings(None, Some(false));
    })
    .await;
    let (short, control) = (
        user_in(&env.settings, "short"),
        user_in(&env.settings, "control"),
    );
    // Two entries as warming leaves them: warmed_at set, no use counted.
    let mut hashes = Vec::new();
    for hair in ["warm-a", "warm-b"] {
        let made = env.run(&env.job("seeder", json!({"hair": hair}))).await;
        hashes.push(made["prompt_hash"].as_str().unwrap().to_owned());
    }
    sqlx::query("UPDATE memoji_cache SET warmed_at = now(), usage_count = 0")
        .execute(&env.db)
        .await
        .unwrap();
    let calls = env.openai.calls();
    // The arm without warming generates its own image of an unused warmed entry ...
    let own = env.run(&env.job(&short, json!({"hair": "warm-a"}))).await;
    assert_eq!(own["cached"], false, "{own}");
    assert_eq!(env.openai.calls(), calls + 1);
    // ... and is served one a live job has used.
    let used = env.run(&env.job(&control, json!({"hair": "warm-b"}))).await;
    assert_eq!(
        used["cached"], true,
        "the control arm is served warmed entries"
    );
    let after = env.run(&env.job(&short, json!({"hair": "warm-b"}))).await;
    assert_eq!(after["cached"], true, "used by a live job now: {after}");
    assert_eq!(env.openai.calls(), calls + 1);
    env.cleanup().await;
}

/// Single flight holds when a maximum age or a refresh forces regeneration: `n` concurrent jobs
/// of one stale key make one generation and one charge.
async fn concurrent_regeneration_is_one_generation(cache: Value, n: usize) {
    let mut env = TestEnv::start(vec![openai_ok(), openai_ok().held()]).await;
    let config = json!({"hair": "spiky", "gesture": "clap"});
    let first = env.run(&env.job("u", config.clone())).await;
    let hash = first["prompt_hash"].as_str().unwrap().to_owned();
    age_entry(&env, &hash, 5).await;
    let jobs: Vec<Value> = (0..n)
        .map(|i| with_cache(&env, &format!("user-{i}"), config.clone(), cache.clone()))
        .collect();
    for job in &jobs {
        env.publish(job).await;
    }
    // The one generation is held until every job is in the worker's hands (and recorded).
    env.openai.gate().wait_for(1).await;
    eventually("every job claimed", || async {
        let claimed = count(&env.db, "SELECT count(*) FROM memoji_jobs").await;
        (claimed == n as i64 + 1).then_some(())
    })
    .await;
    assert_eq!(env.openai.calls(), 2, "the waiting jobs call no one");
    env.openai.gate().open();
    let ids = job_ids(&jobs);
    let mut results = env.results_for_all(&ids, Duration::from_secs(60)).await;
    results.retain(|id, _| ids.contains(id));
    assert_eq!(results.len(), n);
    assert!(
        results.values().all(|r| r[0]["status"] == "succeeded"),
        "{results:?}"
    );
    let generated = results.values().filter(|r| r[0]["cached"] == false).count();
    assert_eq!(generated, 1, "exactly one job generated");
    assert_eq!(env.openai.calls(), 2, "one call for the stale key");
    assert_eq!(
        ledger(&env).await,
        2,
        "the first miss and the one regeneration"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn forty_jobs_past_their_max_age_make_one_generation() {
    concurrent_regeneration_is_one_generation(json!({"max_age_days": 1}), 40).await;
}

#[tokio::test]
async fn concurrent_refreshes_of_a_key_make_one_generation() {
    concurrent_regeneration_is_one_generation(json!({"mode": "refresh"}), 20).await;
}

#[tokio::test]
async fn enqueue_sends_the_cache_flags() {
    let env = TestEnv::start(vec![openai_ok()]).await;
    let enqueue = |args: &[&str]| {
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_memoji-worker"));
        command
            .args(["enqueue", "--wait", "--hair", "wavy"])
            .args(args)
            .env_clear()
            .envs(worker_environment(&env.settings))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        command
    };
    let preview = enqueue(&["--cache-mode", "only_if_cached"])
        .output()
        .await
        .unwrap();
    assert_eq!(preview.status.code(), Some(2), "a failed job exits 2");
    assert!(
        String::from_utf8_lossy(&preview.stderr).contains("not_cached"),
        "{}",
        String::from_utf8_lossy(&preview.stderr)
    );
    let spaced = enqueue(&["--namespace", "tenant-b", "--max-age-days", "3"])
        .output()
        .await
        .unwrap();
    assert!(spaced.status.success());
    let result: Value = serde_json::from_slice(&spaced.stdout).unwrap();
    assert_eq!(result["cached"], false);
    let plain = enqueue(&["--cache-mode", "only_if_cached"])
        .output()
        .await
        .unwrap();
    assert_eq!(
        plain.status.code(),
        Some(2),
        "the namespaced image is not the shared key's"
    );
    assert_eq!(env.openai.calls(), 1);
    env.cleanup().await;
}

/// How a plan reads `table`: the node types of its scans.
fn reads_of(plan: &Value, table: &str, found: &mut Vec<String>) {
    match plan {
        Value::Object(node) => {
            if node.get("Relation Name").and_then(Value::as_str) == Some(table)
                && let Some(how) = node.get("Node Type").and_then(Value::as_str)
            {
                found.push(how.to_owned());
            }
            node.values().for_each(|v| reads_of(v, table, found));
        }
        Value::Array(items) => items.iter().for_each(|v| reads_of(v, table, found)),
        _ => {}
    }
}

#[tokio::test]
async fn the_batched_lookup_probes_preferences_by_user_once_the_table_has_grown() {
    let env = TestEnv::start(vec![]).await;
    // A worker's statements are prepared once per connection, and Postgres may keep a generic
    // plan for the connection's life. While the preferences table is empty that plan may scan it
    // (nothing to read); once it has grown and been analyzed (autovacuum does, after 50 changed
    // rows), the same prepared statement must probe it by user id, never scan it per ask.
    let mut connection = env.db.acquire().await.unwrap();
    sqlx::query("ANALYZE memoji_user_cache_preferences, memoji_cache")
        .execute(&mut *connection)
        .await
        .unwrap();
    sqlx::query(&format!(
        "PREPARE look_up(uuid[], text[], text[], date) AS {}",
        memoji_worker::db::hits::LOOK_UP
    ))
    .execute(&mut *connection)
    .await
    .unwrap();
    let ids: Vec<String> = (0..64)
        .map(|_| format!("'{}'", uuid::Uuid::new_v4()))
        .collect();
    let explain = format!(
        "EXPLAIN (FORMAT JSON) EXECUTE look_up(ARRAY[{}]::uuid[], ARRAY[{}], ARRAY[{}], current_date)",
        ids.join(","),
        vec!["'user'"; 64].join(","),
        vec!["'0123456789abcdef'"; 64].join(",")
    );
    sqlx::query("SET plan_cache_mode = force_generic_plan")
        .execute(&mut *connection)
        .await
        .unwrap();
    let _while_empty: Value = sqlx::query_scalar(&explain)
        .fetch_one(&mut *connection)
        .await
        .unwrap();
    sqlx::query(
        "INSERT INTO memoji_user_cache_preferences (user_id, max_age_days)
         SELECT 'pref-' || n, 30 FROM generate_series(1, 5000) n",
    )
    .execute(&env.db)
    .await
    .unwrap();
    sqlx::query("ANALYZE memoji_user_cache_preferences")
        .execute(&env.db)
        .await
        .unwrap();
    for mode in ["force_generic_plan", "force_custom_plan"] {
        sqlx::query(&format!("SET plan_cache_mode = {mode}"))
            .execute(&mut *connection)
            .await
            .unwrap();
        let plan: Value = sqlx::query_scalar(&explain)
            .fetch_one(&mut *connection)
            .await
            .unwrap();
        let mut reads = Vec::new();
        reads_of(&plan, "memoji_user_cache_preferences", &mut reads);
        assert!(!reads.is_empty(), "{mode}: read: {plan:#}");
        assert!(
            reads.iter().all(|how| how.starts_with("Index")),
            "{mode}: preferences read by index only, not {reads:?}: {plan:#}"
        );
    }
    drop(connection);
    env.cleanup().await;
}
