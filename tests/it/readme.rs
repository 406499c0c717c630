//! The README's commands, run as written: every line of its ```sh blocks, against the real
//! RabbitMQ and Postgres, so that a README that stops working is a red CI.
//!
//! - The line that runs the worker (`… run --generator placeholder`) is started in the background
//!   and waited for; it is stopped with SIGTERM at the end and must exit 0.
//! - The line that runs the tests (`cargo nextest run`) is not run (it would run this test): it
//!   must be the command `.ci/run` runs.
//! - Every other line runs with `bash -c`, in order, in a fresh directory, and must exit 0 with
//!   nothing on stderr. What the README says a line prints (`"cached": false`, `"cached": true`,
//!   a PNG written by `curl -o FILE`) is checked.
//!
//! One substitution: `cargo run [-q] --release -- ARGS` runs the binary this test suite was built
//! with (`CARGO_BIN_EXE_memoji-worker`), through a `cargo` stand-in first on `PATH`. A release build
//! is a second full build of every dependency (20+ minutes cold on a 2-core CI machine, against a
//! 2-minute budget for this test), and which binary `cargo run` picks is checked separately: the
//! package's `default-run`, as `cargo metadata` reports it, must be `memoji-worker` (the root
//! package's only binary today — the benchmark tool is the workspace member `bench/` — but a second
//! binary added beside it would make `cargo run` refuse to choose). The stand-in refuses any
//! other `cargo` invocation, so a README line it does not understand fails the test.
//!
//! Isolation: the commands get this test's queue names, database and admin port through
//! `MEMOJI__…` variables (the layer a deployment uses too), so nothing is shared with other tests
//! or with a developer's own worker.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use serde_json::Value;

use crate::helpers::{TestEnv, worker_environment};

const README: &str = include_str!("../../README.md");
const CI: &str = include_str!("../../.ci/run");

/// One README line, with its trailing `# comment` (what the README says it does).
struct Line {
    command: String,
    comment: String,
}

/// Every non-empty, non-comment line of the README's ```sh blocks, in order.
fn sh_lines(markdown: &str) -> Vec<Line> {
    let mut lines = Vec::new();
    let mut in_sh = false;
    for line in markdown.lines() {
        let trimmed = line.trim();
        if trimmed.starts_with("```") {
            in_sh = !in_sh && trimmed == "```sh";
            continue;
        }
        if !in_sh || trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        let (command, comment) = match trimmed.find("  #") {
            Some(at) => (
                &trimmed[..at],
                trimmed[at..].trim_start().trim_start_matches('#'),
            ),
            None => (trimmed, ""),
        };
        lines.push(Line {
            command: command.trim().to_owned(),
            comment: comment.trim().to_owned(),
        });
    }
    lines
}

/// A `cargo` that understands `cargo run [-q|--quiet] [--release] -- ARGS` and nothing else.
const CARGO_STAND_IN: &str = r#"#!/bin/sh
# Stands in for `cargo run --release -- ARGS` (tests/it/readme.rs says why).
if [ "$1" != run ]; then echo "readme test: cannot stand in for: cargo $*" >&2; exit 97; fi
shift
while [ $# -gt 0 ]; do
  case "$1" in
    -q|--quiet|--release) shift ;;
    --) shift; break ;;
    *) echo "readme test: unexpected cargo run option: $1" >&2; exit 97 ;;
  esac
done
exec "$MEMOJI_README_BINARY" "$@"
"#;

#[test]
fn cargo_run_picks_the_worker_binary() {
    let output = std::process::Command::new(env!("CARGO"))
        .args([
            "metadata",
            "--no-deps",
            "--format-version",
            "1",
            "--offline",
        ])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(
        output.status.success(),
        "{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let metadata: Value = serde_json::from_slice(&output.stdout).unwrap();
    // The workspace's packages: the worker (the root) and the bench (bench/).
    let packages = metadata["packages"].as_array().unwrap();
    let package = packages
        .iter()
        .find(|p| p["name"] == "memoji-worker")
        .expect("the memoji-worker package");
    assert_eq!(
        metadata["workspace_default_members"],
        serde_json::json!([package["id"]]),
        "`cargo run` at the root builds the worker's package alone"
    );
    assert_eq!(
        package["default_run"], "memoji-worker",
        "`cargo run` must run the worker without --bin"
    );
}

#[tokio::test]
async fn the_readme_commands_work_as_written() {
    let env = TestEnv::without_worker(vec![], |_| {}).await;
    let lines = sh_lines(README);
    assert!(
        lines.len() >= 5,
        "the README has its commands in ```sh blocks"
    );

    let work = tempfile::tempdir().unwrap();
    let bin = work.path().join("bin");
    std::fs::create_dir(&bin).unwrap();
    let cargo = bin.join("cargo");
    std::fs::write(&cargo, CARGO_STAND_IN).unwrap();
    std::fs::set_permissions(&cargo, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let cwd = work.path().join("clone");
    std::fs::create_dir(&cwd).unwrap();

    // A fresh machine's environment: no OpenAI key, this test's names and ports.
    let mut vars = worker_environment(&env.settings);
    vars.retain(|(name, _)| name != "OPENAI_API_KEY" && name != "PATH");
    vars.push((
        "MEMOJI__HTTP__BIND".into(),
        env.settings.http.bind.to_string(),
    ));
    vars.push((
        "PATH".into(),
        format!(
            "{}:{}",
            bin.display(),
            std::env::var("PATH").unwrap_or_default()
        ),
    ));
    vars.push(("HOME".into(), work.path().display().to_string()));
    vars.push((
        "MEMOJI_README_BINARY".into(),
        env!("CARGO_BIN_EXE_memoji-worker").into(),
    ));
    let shell = |command: &str| {
        let mut shell = tokio::process::Command::new("bash");
        shell
            .args(["-o", "pipefail", "-c", command])
            .current_dir(&cwd)
            .env_clear()
            .envs(vars.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .kill_on_drop(true);
        shell
    };

    let mut worker = None;
    let worker_log = work.path().join("worker.log");
    let mut cached = Vec::new();
    let mut ran = 0;
    for line in &lines {
        let command = line.command.as_str();
        if command.starts_with("cargo nextest run") {
            let ci_runs_it = CI.lines().any(|ci| ci.trim().starts_with(command));
            assert!(
                ci_runs_it,
                "the README's test command `{command}` is what .ci/run runs"
            );
            continue;
        }
        if command.contains(" run --generator placeholder") {
            let log = std::fs::File::create(&worker_log).unwrap();
            let child = shell(&format!("exec {command}"))
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .unwrap();
            worker = Some(child);
            wait_ready(&env, &worker_log).await;
            continue;
        }
        assert!(
            worker.is_some(),
            "the worker command comes first: {command}"
        );
        let output = tokio::time::timeout(Duration::from_secs(60), shell(command).output())
            .await
            .unwrap_or_else(|_| panic!("`{command}` did not finish within 60 s"))
            .unwrap();
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(
            output.status.success(),
            "`{command}` failed ({}):\n{stdout}\n{stderr}\nworker log:\n{}",
            output.status,
            std::fs::read_to_string(&worker_log).unwrap_or_default()
        );
        assert_quiet_log(&stderr, command);
        ran += 1;
        for (said, value) in [("\"cached\": false", false), ("\"cached\": true", true)] {
            if line.comment.contains(said) {
                let result: Value = serde_json::from_str(&stdout)
                    .unwrap_or_else(|e| panic!("`{command}` prints a JSON result ({e}): {stdout}"));
                assert_eq!(result["status"], "succeeded", "{result}");
                assert_eq!(result["cached"], value, "`{command}` # {}", line.comment);
                cached.push(value);
            }
        }
        if let Some(file) = curl_output(command) {
            let bytes = std::fs::read(cwd.join(file)).unwrap();
            assert!(
                bytes.starts_with(b"\x89PNG\r\n\x1a\n"),
                "`{command}` wrote a PNG to {file}"
            );
        }
    }
    assert_eq!(cached, [false, true], "the README shows a miss, then a hit");
    assert!(ran >= 7, "ran {ran} commands");

    // The worker stops on SIGTERM, and said nothing a person would have to wonder about.
    let mut worker = worker.expect("the README starts the worker");
    let pid = worker.id().unwrap().to_string();
    std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    let status = tokio::time::timeout(Duration::from_secs(20), worker.wait())
        .await
        .expect("the worker stops on SIGTERM")
        .unwrap();
    let log = std::fs::read_to_string(&worker_log).unwrap();
    assert!(status.success(), "{status}: {log}");
    assert_quiet_log(&log, "the worker");
    env.cleanup().await;
}

/// What a command wrote to stderr in a clean run: log lines only (JSON, as stderr is not a
/// terminal), none above INFO, none of the libraries' routine noise.
fn assert_quiet_log(stderr: &str, command: &str) {
    for line in stderr.lines() {
        let entry: Value = serde_json::from_str(line)
            .unwrap_or_else(|_| panic!("{command}: off a terminal, log lines are JSON: {line}"));
        let level = entry["level"].as_str().unwrap_or_default();
        assert!(
            level == "INFO" || level == "DEBUG",
            "{command}: a {level} line in a clean run: {line}"
        );
        for noise in [
            "_sqlx_migrations",
            "Job creator",
            "Uninited",
            "Server returned",
        ] {
            assert!(!line.contains(noise), "{command}: library noise: {line}");
        }
    }
}

/// `FILE` of a `curl … -o FILE …` command.
fn curl_output(command: &str) -> Option<&str> {
    if !command.starts_with("curl ") {
        return None;
    }
    let mut words = command.split_whitespace();
    words.find(|w| *w == "-o")?;
    words.next()
}

async fn wait_ready(env: &TestEnv, log: &Path) {
    let url = format!("{}/readyz", env.http_base());
    for _ in 0..400 {
        if let Ok(response) = env.http.get(&url).send().await
            && response.status().is_success()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "the README's worker never became ready:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

#[test]
fn the_readme_parser_finds_commands_and_their_comments() {
    let lines = sh_lines(
        "text\n```sh\ncargo a -- b   # says \"x\"\n\n# only a comment\ncurl -o f.png u\n```\n```\nnot sh\n```\n",
    );
    let found: Vec<(&str, &str)> = lines
        .iter()
        .map(|l| (l.command.as_str(), l.comment.as_str()))
        .collect();
    assert_eq!(
        found,
        [("cargo a -- b", "says \"x\""), ("curl -o f.png u", "")]
    );
    assert_eq!(
        curl_output("curl -fsS -o avatar.png \"$(x)\""),
        Some("avatar.png")
    );
}
