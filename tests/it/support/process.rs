//! Worker processes: `memoji-worker run` children configured like a [`TestEnv`] (its settings as
//! environment variables), which its `Drop` guard kills; and the bare binary for CLI tests.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use memoji_worker::config::Settings;

use super::env::{TestEnv, free_port, wait_ready};

/// Process ids of running worker children. A child stays in the set only while it has not been
/// waited for, so its pid cannot have been reused by another process.
pub(super) type LiveWorkers = Arc<Mutex<HashSet<u32>>>;

/// SIGKILLs every live worker of `workers` and waits (briefly) until each has exited, so that none
/// can declare the topology again after it was removed.
pub(super) fn kill_workers(workers: &LiveWorkers) {
    let pids: Vec<u32> = workers
        .lock()
        .map(|mut set| set.drain().collect())
        .unwrap_or_default();
    for pid in &pids {
        let _ = std::process::Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .status();
    }
    for pid in pids {
        for _ in 0..200 {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
            let exited = status.is_empty()
                || status
                    .lines()
                    .any(|l| l.starts_with("State:") && l.contains('Z'));
            if exited {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl TestEnv {
    /// Starts a `memoji-worker run` process configured like this environment (own admin port).
    pub async fn spawn_worker(&self) -> WorkerProcess {
        self.spawn_worker_with(|_| {}).await
    }

    /// Like [`TestEnv::spawn_worker`], with settings of its own (e.g. a proxied database URL).
    pub async fn spawn_worker_with(&self, tweak: impl FnOnce(&mut Settings)) -> WorkerProcess {
        let mut settings = self.settings.clone();
        tweak(&mut settings);
        let port = free_port();
        let log_path = self.storage.path().join(format!("worker-{port}.log"));
        let log = std::fs::File::create(&log_path).unwrap();
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_memoji-worker"));
        command
            .arg("run")
            .env_clear()
            .envs(worker_environment(&settings))
            .env("MEMOJI__HTTP__BIND", format!("127.0.0.1:{port}"))
            .env("RUST_LOG", "memoji_worker=debug,info")
            .stdout(std::process::Stdio::null())
            .stderr(log)
            .kill_on_drop(true);
        let child = command.spawn().expect("the worker binary starts");
        if let (Some(pid), Ok(mut live)) = (child.id(), self.workers.lock()) {
            live.insert(pid);
        }
        let worker = WorkerProcess {
            child,
            http: format!("http://127.0.0.1:{port}"),
            log_path,
            live: self.workers.clone(),
        };
        wait_ready(&self.http, &worker.http).await;
        worker
    }
}

/// The environment of a worker process configured like `settings`: `PATH`, then every setting and
/// secret ([`Settings::to_environment`], the one map from settings to variables).
pub fn worker_environment(settings: &Settings) -> Vec<(String, String)> {
    let mut vars = vec![("PATH".to_owned(), std::env::var("PATH").unwrap_or_default())];
    vars.extend(
        settings
            .to_environment()
            .expect("every setting has an environment form"),
    );
    if !settings.telemetry.otlp_endpoint.is_empty() {
        // Spans go out a tenth of a second after they end, not the SDK's five seconds.
        vars.push(("OTEL_BSP_SCHEDULE_DELAY".to_owned(), "100".to_owned()));
    }
    vars
}

/// A `memoji-worker run` child process; killed if dropped.
pub struct WorkerProcess {
    child: tokio::process::Child,
    pub http: String,
    pub log_path: std::path::PathBuf,
    /// Its environment's live workers, which it leaves before it is waited for.
    live: LiveWorkers,
}

impl WorkerProcess {
    /// Peak resident memory of the process so far (`VmHWM`), in KiB.
    pub fn peak_rss_kib(&self) -> u64 {
        let pid = self.child.id().expect("the worker is running");
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc/<pid>/status")
    }
}

impl Drop for WorkerProcess {
    fn drop(&mut self) {
        self.leave();
    }
}

impl WorkerProcess {
    /// Leaves the live set: from now on it may be reaped, and its pid reused.
    fn leave(&self) {
        if let (Some(pid), Ok(mut live)) = (self.child.id(), self.live.lock()) {
            live.remove(&pid);
        }
    }

    fn signal(&self, signal: &str) {
        let pid = self.child.id().expect("the worker is running").to_string();
        let status = std::process::Command::new("kill")
            .args([signal, &pid])
            .status()
            .unwrap();
        assert!(status.success(), "kill {signal} {pid}");
    }

    /// SIGKILL: no chance to clean up.
    pub async fn kill(mut self) {
        self.signal("-KILL");
        self.leave();
        let _ = self.child.wait().await;
    }

    /// SIGTERM, then waits for the exit; returns the exit status and how long it took.
    pub async fn terminate(mut self, limit: Duration) -> (std::process::ExitStatus, Duration) {
        let started = std::time::Instant::now();
        self.signal("-TERM");
        self.leave();
        let status = tokio::time::timeout(limit, self.child.wait())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "the worker did not exit within {limit:?}; log: {}",
                    self.log()
                )
            })
            .unwrap();
        (status, started.elapsed())
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }
}

/// The `memoji-worker` binary with a clean configuration environment plus `vars`.
pub fn worker_command(vars: &[(&str, String)]) -> std::process::Command {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_memoji-worker"));
    for (name, _) in std::env::vars() {
        if name.starts_with("MEMOJI") || name.starts_with("AWS_") || name.starts_with("SUPABASE_") {
            command.env_remove(name);
        }
    }
    command.envs(vars.iter().map(|(k, v)| (k, v)));
    command
}
