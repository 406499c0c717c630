//! Secrets never reach logs or results (with real values): a password passed as a `DATABASE_URL`
//! query parameter is masked in the ready line of a real worker process, and an OpenAI error that
//! quotes part of the key reaches the result masked.

use std::time::Duration;

use secrecy::ExposeSecret;
use serde_json::json;

use crate::helpers::{TestEnv, openai_error, worker_command};

#[tokio::test]
async fn a_password_in_the_database_url_query_is_masked_in_the_ready_line() {
    let env = TestEnv::without_worker(vec![], |_| {}).await;
    // Postgres here trusts local connections, so the password is sent and ignored: the worker
    // really runs with it.
    let url = format!(
        "{}?sslmode=disable&password=hunter2-db-secret&application_name=memoji-it",
        env.settings.database.url.expose_secret()
    );
    let amqp = env
        .settings
        .amqp
        .url
        .expose_secret()
        .replace("guest:guest@", "guest:guest-broker-secret@");
    let log_path = env.storage_dir().join("worker.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let vars: Vec<(&str, String)> = vec![
        ("MEMOJI__DATABASE__URL", url),
        ("MEMOJI__AMQP__URL", amqp),
        (
            "MEMOJI__HTTP__BIND",
            format!("127.0.0.1:{}", crate::helpers::free_port()),
        ),
        (
            "MEMOJI__STORAGE__LOCAL_DIR",
            env.storage_dir().display().to_string(),
        ),
        ("MEMOJI__GENERATOR__KIND", "placeholder".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ];
    let mut child = tokio::process::Command::from(worker_command(&vars))
        .arg("run")
        .stdout(std::process::Stdio::null())
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let read_log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    while !read_log().contains("memoji-worker ready") {
        assert!(
            tokio::time::Instant::now() < deadline,
            "no ready line: {}",
            read_log()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let _ = child.kill().await;
    let log = read_log();
    let ready = log
        .lines()
        .find(|line| line.contains("memoji-worker ready"))
        .unwrap();
    assert!(ready.contains("password=***"), "{ready}");
    assert!(ready.contains("sslmode=disable"), "{ready}");
    assert!(ready.contains("guest:***@"), "{ready}");
    for secret in ["hunter2-db-secret", "guest-broker-secret"] {
        assert!(!log.contains(secret), "{secret} in the log:\n{log}");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn an_openai_error_quoting_the_key_reaches_the_result_masked() {
    // OpenAI's 403 for a project without access quotes the key with its middle starred out; a
    // proxy in front of it may echo it whole.
    let quoted = "Project proj_abc does not have access with key sk-proj-Zq8v****************************9JkL; \
                  retry with sk-proj-Zq8vN2xR4tY6uI0oP3aS5dF7gH9jK1lL";
    let mut env = TestEnv::start(vec![openai_error(403, quoted, Some("forbidden"))]).await;
    let result = env.run(&env.job("u-secret", json!({"hair": "long"}))).await;
    assert_eq!(result["status"], "failed", "{result}");
    let message = result["error"]["message"].as_str().unwrap();
    assert!(message.contains("403"), "{message}");
    assert!(message.contains("sk-***"), "{message}");
    for fragment in ["Zq8v", "9JkL", "N2xR4tY6"] {
        assert!(!message.contains(fragment), "{message}");
    }
    // The job's stored record, which answers a redelivery, is masked too.
    let stored: serde_json::Value =
        sqlx::query_scalar("SELECT result FROM memoji_jobs WHERE job_id = $1::uuid")
            .bind(result["job_id"].as_str().unwrap())
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert!(!stored.to_string().contains("Zq8v"), "{stored}");
    env.cleanup().await;
}
