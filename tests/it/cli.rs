//! The command line as the README uses it: `enqueue --wait` against a running worker, `run`
//! without an OpenAI key, and the unprefixed variables (AMQP_URL, DATABASE_URL, OPENAI_BASE_URL).

use std::process::Stdio;
use std::time::Duration;

use secrecy::ExposeSecret;
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
    let untouched = format!("{}_nokey", env.settings.database.url.expose_secret());
    let run = command(&env, &["run"], |vars| {
        vars.retain(|(name, _)| name != "OPENAI_API_KEY");
        set(vars, "MEMOJI__DATABASE__URL", &untouched);
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
    assert!(
        !database_exists(&untouched).await,
        "the key is checked before the database is created or migrated"
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

/// Runs `memoji-worker <args>` like `env` (adjusted) to completion, within 60 s.
async fn output(
    env: &TestEnv,
    args: &[&str],
    adjust: impl FnOnce(&mut Vec<(String, String)>),
) -> std::process::Output {
    tokio::time::timeout(Duration::from_secs(60), command(env, args, adjust).output())
        .await
        .expect("the command finishes")
        .unwrap()
}

fn set(vars: &mut Vec<(String, String)>, name: &str, value: &str) {
    vars.retain(|(n, _)| n != name);
    vars.push((name.to_owned(), value.to_owned()));
}

#[tokio::test]
async fn enqueue_wait_without_a_worker_says_so_at_once_and_times_out_clearly() {
    use tokio::io::AsyncBufReadExt as _;
    let env = TestEnv::without_worker(vec![openai_ok()], |_| {}).await;
    let started = std::time::Instant::now();
    let mut child = command(&env, &["enqueue", "--wait", "--timeout-secs", "4"], |_| {})
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = tokio::io::BufReader::new(child.stderr.take().unwrap()).lines();
    let first = tokio::time::timeout(Duration::from_secs(3), stderr.next_line())
        .await
        .expect("a word within a second or two, not after the timeout")
        .unwrap()
        .unwrap();
    assert!(
        first.contains(&format!(
            "no worker is consuming {}",
            env.settings.amqp.job_queue
        )),
        "{first}"
    );
    let mut rest = Vec::new();
    while let Some(line) = stderr.next_line().await.unwrap() {
        rest.push(line);
    }
    let status = child.wait().await.unwrap();
    assert!(!status.success());
    assert!(started.elapsed() < Duration::from_secs(15));
    let last = rest.last().cloned().unwrap_or_default();
    assert!(
        last.contains("within 4s") && last.contains("stays queued") && last.contains("no worker"),
        "{rest:?}"
    );
    // Off a terminal there is no spinner.
    assert!(!rest.iter().any(|l| l.contains('\r')), "{rest:?}");
    // The job is still there for a worker to pick up.
    let queued = env.take_from(&env.settings.amqp.job_queue).await;
    assert!(queued.is_some(), "the job stays queued");
    env.cleanup().await;
}

#[tokio::test]
async fn enqueue_wait_exits_2_with_the_code_when_the_job_fails() {
    let env = TestEnv::start(vec![openai_ok()]).await;
    let run = output(&env, &["enqueue", "--wait", "--size", "7x7"], |_| {}).await;
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let result: Value = serde_json::from_slice(&run.stdout).expect("the result is printed");
    assert_eq!(result["status"], "failed");
    assert_eq!(result["error"]["code"], "invalid_job");
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("failed: invalid_job: "), "{stderr}");
    // A success still exits 0.
    let ok = output(&env, &["enqueue", "--wait"], |_| {}).await;
    assert!(ok.status.success(), "{ok:?}");
    env.cleanup().await;
}

#[tokio::test]
async fn credits_are_counted_per_user_across_tiers_against_the_jobs_tier() {
    let env = TestEnv::start(vec![openai_ok()]).await;
    let mut remaining = Vec::new();
    for (tier, hair) in [
        ("free", "a"),
        ("free", "b"),
        ("monthly_basic", "c"),
        ("free", "d"),
    ] {
        let run = output(
            &env,
            &[
                "enqueue",
                "--wait",
                "--user-id",
                "tiers",
                "--tier",
                tier,
                "--hair",
                hair,
            ],
            |_| {},
        )
        .await;
        let result: Value = serde_json::from_slice(&run.stdout).unwrap();
        remaining.push((
            result["status"].as_str().unwrap().to_owned(),
            result["credits_remaining"].clone(),
        ));
    }
    let expected = [
        ("succeeded", json!(1)),
        ("succeeded", json!(0)),
        ("succeeded", json!(97)), // as the README says: 100 − 3
        ("failed", json!(0)),     // free again: 3 used of 2
    ];
    let got: Vec<(&str, Value)> = remaining
        .iter()
        .map(|(s, r)| (s.as_str(), r.clone()))
        .collect();
    assert_eq!(got, expected.to_vec());
    env.cleanup().await;
}

#[tokio::test]
async fn a_job_id_that_is_not_a_uuid_is_refused_as_such() {
    let env = TestEnv::without_worker(vec![], |_| {}).await;
    let run = output(&env, &["enqueue", "--job-id", "123"], |_| {}).await;
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(stderr.contains("expected a UUID"), "{stderr}");
    assert!(!stderr.contains("invalid length"), "{stderr}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_second_worker_on_a_busy_port_names_the_setting_and_touches_no_database() {
    let env = TestEnv::start(vec![openai_ok()]).await;
    let untouched = format!("{}_second", env.settings.database.url.expose_secret());
    let run = output(&env, &["run"], |vars| {
        set(
            vars,
            "MEMOJI__HTTP__BIND",
            &env.settings.http.bind.to_string(),
        );
        set(vars, "MEMOJI__DATABASE__URL", &untouched);
    })
    .await;
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        stderr.contains("MEMOJI__HTTP__BIND") && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(
        !database_exists(&untouched).await,
        "refused before the database"
    );
    env.cleanup().await;
}

async fn database_exists(url: &str) -> bool {
    let (server, name) = url.rsplit_once('/').unwrap();
    let admin = sqlx::PgPool::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    let exists = sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
        .bind(name)
        .fetch_one(&admin)
        .await
        .unwrap();
    admin.close().await;
    exists
}

#[tokio::test]
async fn broker_errors_name_the_masked_url_once_and_trace_logging_keeps_the_password() {
    let env = TestEnv::without_worker(vec![], |_| {}).await;
    let password = format!("pw-{}", env.id);
    let run = output(&env, &["enqueue"], |vars| {
        set(
            vars,
            "MEMOJI__AMQP__URL",
            &format!("amqp://guest:{password}@127.0.0.1:5672/%2f"),
        );
        set(vars, "RUST_LOG", "trace,lapin=trace,amq_protocol=trace");
    })
    .await;
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(
        !stderr.contains(&password),
        "the password leaked:\n{stderr}"
    );
    assert!(
        stderr.contains("\"target\":\"lapin"),
        "lapin's logging was on (capped at debug): {stderr}"
    );
    // The error line (lapin's own log lines, asked for here, may come after it).
    let errors: Vec<&str> = stderr
        .lines()
        .filter(|line| line.starts_with("memoji-worker: "))
        .collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(
        errors[0].starts_with(
            "memoji-worker: connecting to the broker at amqp://guest:***@127.0.0.1:5672/%2f: "
        ),
        "{}",
        errors[0]
    );
    assert_eq!(
        errors[0].matches("ACCESS_REFUSED").count(),
        1,
        "{}",
        errors[0]
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_database_out_of_reach_is_waited_for_by_name_attempt_and_limit_then_refused() {
    let env = TestEnv::without_worker(vec![], |_| {}).await;
    let port = crate::helpers::free_port();
    let run = output(&env, &["migrate"], |vars| {
        set(
            vars,
            "MEMOJI__DATABASE__URL",
            &format!("postgres://postgres:secret-{port}@127.0.0.1:{port}/memoji"),
        );
        set(vars, "MEMOJI__DATABASE__CONNECT_RETRY_SECS", "2");
        set(vars, "MEMOJI__LOG__FORMAT", "plain");
    })
    .await;
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!stderr.contains(&format!("secret-{port}")), "{stderr}");
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("WARN")).collect();
    assert!(!warnings.is_empty(), "{stderr}");
    for (n, warning) in warnings.iter().enumerate() {
        assert!(
            warning.contains(&format!("postgres://postgres:***@127.0.0.1:{port}/memoji"))
                && warning.contains(&format!("attempt={}", n + 1))
                && warning.contains("connect_retry_secs = 2s"),
            "{warning}"
        );
    }
    let last = stderr
        .lines()
        .rfind(|line| line.starts_with("memoji-worker: "))
        .unwrap_or_default();
    assert!(
        last.contains(&format!(
            "connecting to postgres://postgres:***@127.0.0.1:{port}/memoji ("
        )) && last.contains("attempts)"),
        "{last}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn an_unknown_configuration_key_stops_the_command_with_its_name() {
    let env = TestEnv::without_worker(vec![], |_| {}).await;
    let run = output(&env, &["stats"], |vars| {
        set(vars, "MEMOJI__AMQP__PREFECH", "3")
    })
    .await;
    assert!(!run.status.success());
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert_eq!(
        stderr.trim(),
        "memoji-worker: unknown configuration key `amqp.prefech` (did you mean `amqp.prefetch`?), \
         set by the environment variable MEMOJI__AMQP__PREFECH"
    );
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("memoji.toml");
    std::fs::write(&file, "[databse]\nurl = \"postgres://x@127.0.0.1/y\"\n").unwrap();
    let run = output(&env, &["--config", file.to_str().unwrap(), "stats"], |_| {}).await;
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!run.status.success());
    assert!(
        stderr.contains("unknown configuration key `databse` (did you mean `database`?)"),
        "{stderr}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_result_for_a_reply_queue_that_is_gone_is_one_clear_log_line() {
    // As when `enqueue --wait` gave up and its private queue went with its connection.
    let mut env = TestEnv::without_worker(vec![openai_ok()], |_| {}).await;
    let worker = env.spawn_worker().await;
    let job = env.job("u", json!({"hair": "gone"}));
    let gone = format!("{}.gone-reply", env.id);
    let properties = lapin::BasicProperties::default()
        .with_reply_to(gone.as_str().into())
        .with_correlation_id("c-1".into());
    env.publish_raw(&serde_json::to_vec(&job).unwrap(), properties)
        .await;
    let result = env.result_of(job["job_id"].as_str().unwrap()).await;
    assert_eq!(result["status"], "succeeded", "kept on the result queue");
    crate::helpers::eventually("the worker's warning", || async {
        worker
            .log()
            .contains("the reply_to copy could not be delivered")
            .then_some(())
    })
    .await;
    let log = worker.log();
    assert_eq!(
        log.matches("the reply_to copy could not be delivered")
            .count(),
        1,
        "{log}"
    );
    assert!(!log.contains("Server returned"), "lapin's dump: {log}");
    assert!(log.lines().all(|line| line.len() < 1000), "{log}");
    env.cleanup().await;
}

#[tokio::test]
async fn on_a_terminal_enqueue_wait_shows_a_spinner_while_it_waits() {
    let env = TestEnv::without_worker(vec![], |_| {}).await;
    // `script` (util-linux) gives the command a pseudo-terminal, as a person's shell would.
    let inner = format!(
        "{} enqueue --wait --timeout-secs 2",
        env!("CARGO_BIN_EXE_memoji-worker")
    );
    let mut vars = worker_environment(&env.settings);
    set(&mut vars, "TERM", "xterm");
    let run = tokio::process::Command::new("script")
        .args(["-qefc", &inner, "/dev/null"])
        .env_clear()
        .envs(vars)
        .stdin(Stdio::null())
        .output();
    let output = tokio::time::timeout(Duration::from_secs(30), run)
        .await
        .expect("it gives up after its timeout")
        .unwrap();
    assert!(!output.status.success());
    let screen = String::from_utf8_lossy(&output.stdout);
    assert!(screen.contains("no worker is consuming"), "{screen:?}");
    let frames = screen.matches("waiting for the result of job").count();
    assert!(frames >= 5, "a spinner redrawn in place: {screen:?}");
    assert!(screen.contains("\r\x1b[2K"), "{screen:?}");
    assert!(screen.contains("no result for job"), "{screen:?}");
    env.cleanup().await;
}

#[tokio::test]
async fn enqueue_wait_says_when_a_worker_attaches_and_prints_the_result() {
    // A generation slow enough for the client to notice the worker before the result.
    let slow = openai_ok().set_delay(Duration::from_secs(3));
    let env = TestEnv::without_worker(vec![slow], |_| {}).await;
    let waiting = command(&env, &["enqueue", "--wait", "--timeout-secs", "60"], |_| {}).output();
    let late_worker = async {
        tokio::time::sleep(Duration::from_millis(1500)).await;
        env.spawn_worker().await
    };
    let (output, _worker) = tokio::join!(waiting, late_worker);
    let output = output.unwrap();
    assert!(output.status.success(), "{output:?}");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("no worker is consuming"), "{stderr}");
    assert!(
        stderr.contains("a worker is consuming the job queue now"),
        "{stderr}"
    );
    let result: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(result["status"], "succeeded");
    env.cleanup().await;
}
