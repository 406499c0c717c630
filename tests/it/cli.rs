//! The command line as the README uses it: `enqueue --wait` against a running worker, `run`
//! without an OpenAI key, and the unprefixed variables (AMQP_URL, DATABASE_URL, OPENAI_BASE_URL).

use std::process::Stdio;
use std::time::Duration;

use serde_json::{Value, json};

use crate::helpers::{TestEnv, openai_ok, worker_environment};

/// `memoji-worker <args>` configured like `env`, with `adjust` applied to its variables.
fn command(
    env: &TestEnv,
    args: &[&str],
    adjust: impl FnOnce(&mut Vec<(String, String)>),
) -> tokio::process::Command {
    let mut vars = worker_environment(&env.settings);
    adjust(&mut vars);
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_memoji-worker"));
    command
        .args(args)
        .env_clear()
        .envs(vars)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

#[tokio::test]
async fn enqueue_wait_prints_a_miss_then_a_hit() {
    let env = TestEnv::start(vec![openai_ok()]).await;
    let args = [
        "enqueue",
        "--wait",
        "--tier",
        "monthly_basic",
        "--hair",
        "long",
        "--accessories",
        "glasses,hat",
    ];
    let mut printed = Vec::new();
    for _ in 0..2 {
        let output = command(&env, &args, |_| {}).output().await.unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        printed.push(
            serde_json::from_slice::<Value>(&output.stdout)
                .expect("enqueue prints the result as JSON"),
        );
    }
    assert_eq!(printed[0]["status"], "succeeded");
    assert_eq!(printed[0]["cached"], false);
    assert_eq!(printed[1]["cached"], true);
    assert_eq!(printed[0]["image_url"], printed[1]["image_url"]);
    // The accessories were sent as a list and sorted into the key like the JavaScript system does.
    let key = memoji_worker::job::CacheKey::of(
        &memoji_worker::job::AvatarConfig::parse(
            &json!({"hair": "long", "accessories": ["hat", "glasses"]}),
        )
        .unwrap(),
        memoji_worker::job::GeneratorKind::OpenAi,
    );
    assert_eq!(printed[0]["prompt_hash"], key.as_str());
    let image = env
        .http
        .get(printed[0]["image_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(image.status(), 200);
    env.cleanup().await;
}

#[tokio::test]
async fn run_without_an_openai_key_stops_at_once_and_says_why() {
    let env = TestEnv::without_worker(vec![openai_ok()], |_| {}).await;
    let run = command(&env, &["run"], |vars| {
        vars.retain(|(name, _)| name != "OPENAI_API_KEY")
    })
    .output();
    let output = tokio::time::timeout(Duration::from_secs(20), run)
        .await
        .expect("it stops at once")
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        stderr.contains("OPENAI_API_KEY") && stderr.contains("--generator placeholder"),
        "{stderr}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn the_usual_unprefixed_variables_configure_the_worker() {
    let mut env = TestEnv::without_worker(vec![openai_ok()], |_| {}).await;
    let mut worker = command(&env, &["run"], |vars| {
        for (prefixed, plain) in [
            ("MEMOJI__AMQP__URL", "AMQP_URL"),
            ("MEMOJI__DATABASE__URL", "DATABASE_URL"),
            ("MEMOJI__OPENAI__BASE_URL", "OPENAI_BASE_URL"),
        ] {
            let at = vars.iter().position(|(name, _)| name == prefixed).unwrap();
            let (_, value) = vars.remove(at);
            vars.push((plain.to_owned(), value));
        }
    })
    .stdout(Stdio::null())
    .stderr(Stdio::null())
    .spawn()
    .unwrap();
    let result = env.run(&env.job("u", json!({"gesture": "clap"}))).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(
        env.openai.calls(),
        1,
        "OPENAI_BASE_URL pointed it at the stand-in"
    );
    worker.kill().await.unwrap();
    env.cleanup().await;
}
