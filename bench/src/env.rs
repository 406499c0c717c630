//! One isolated benchmark run: names, database, scratch directory and child processes.
//!
//! Every queue and exchange is renamed `bench-<id>.<default name>` and the database is
//! `memoji_bench_<id>`, so a run never touches another one's (or a developer's) data. Workers run as
//! separate processes (`memoji-worker run`, configured through `MEMOJI__…` variables only, with
//! the environment otherwise cleared), so their memory can be read from `/proc/<pid>/status` and
//! they do not share a runtime with the load generator.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use anyhow::{Context as _, bail};
use lapin::options::{QueueDeclareOptions, QueuePurgeOptions};
use lapin::types::FieldTable;
use memoji_worker::broker::Broker;
use memoji_worker::config::Settings;
use memoji_worker::job::GeneratorKind;
use secrecy::SecretString;
use sqlx::PgPool;

/// Where the services are, from the command line.
#[derive(Debug, Clone)]
pub struct Services {
    pub amqp_url: String,
    /// `postgres://user@host:port`, without a database name.
    pub pg_server: String,
}

/// The binaries a run starts. They are copied into the run's directory first, so a rebuild in a
/// shared target directory in the middle of a run cannot swap them.
#[derive(Debug, Clone)]
pub struct Bins {
    pub worker: PathBuf,
    pub bench: PathBuf,
}

impl Bins {
    /// `memoji-worker` beside this executable unless `worker` names another build.
    pub fn locate(worker: Option<PathBuf>) -> anyhow::Result<Bins> {
        let bench = std::env::current_exe().context("locating memoji-bench")?;
        let worker = worker.unwrap_or_else(|| bench.with_file_name("memoji-worker"));
        if !worker.exists() {
            bail!(
                "{} does not exist: run `cargo build --release` first, or pass --worker-bin",
                worker.display()
            );
        }
        Ok(Bins { worker, bench })
    }

    fn copied_into(&self, dir: &Path) -> anyhow::Result<Bins> {
        let copy = |from: &Path, name: &str| -> anyhow::Result<PathBuf> {
            let to = dir.join(name);
            std::fs::copy(from, &to).with_context(|| format!("copying {}", from.display()))?;
            Ok(to)
        };
        Ok(Bins {
            worker: copy(&self.worker, "memoji-worker")?,
            bench: copy(&self.bench, "memoji-bench")?,
        })
    }
}

/// What a worker process is told, beyond the run's names.
#[derive(Debug, Clone)]
pub struct WorkerKnobs {
    pub prefetch: u16,
    pub max_concurrency: usize,
    /// Root of the OpenAI stand-in, without `/v1`.
    pub openai_root: String,
}

/// A process the run started: a worker or an echo consumer.
pub struct Proc {
    pub name: String,
    child: Child,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Peak and current resident set size, in KiB (`VmHWM`, `VmRSS`).
    pub fn memory_kib(&self) -> anyhow::Result<(u64, u64)> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))?;
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|line| line.strip_prefix(name))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|kib| kib.parse().ok())
                .unwrap_or(0)
        };
        Ok((field("VmHWM:"), field("VmRSS:")))
    }

    /// CPU time used so far (user + system), in clock ticks.
    pub fn cpu_ticks(&self) -> u64 {
        cpu_ticks(self.pid())
    }

    /// SIGTERM (a graceful stop), then SIGKILL if it is still there after `grace`.
    pub async fn stop(mut self, grace: Duration) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status();
        let deadline = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        eprintln!("{} did not stop within {grace:?}; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Proc {
    /// A process left running by a failed scenario is killed, never leaked.
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// An isolated run.
pub struct Bench {
    pub id: String,
    pub settings: Settings,
    pub dir: PathBuf,
    pub bins: Bins,
    pub db: PgPool,
    pub broker: Broker,
    services: Services,
    spawned: u32,
}

impl Bench {
    /// Creates the database (migrated), the scratch directory and the topology.
    pub async fn setup(services: &Services, bins: &Bins) -> anyhow::Result<Bench> {
        let id = uuid::Uuid::new_v4().simple().to_string()[..10].to_owned();
        let dir = std::env::temp_dir().join(format!("memoji-bench-{id}"));
        std::fs::create_dir_all(&dir)?;
        let bins = bins.copied_into(&dir)?;
        let mut settings = Settings::defaults()?;
        let amqp = &mut settings.amqp;
        amqp.url = SecretString::from(services.amqp_url.clone());
        amqp.prefix_names(&format!("bench-{id}"));
        settings.database.url =
            SecretString::from(format!("{}/memoji_bench_{id}", services.pg_server));
        settings.storage.local_dir = dir.join("images");
        settings.generator.kind = GeneratorKind::OpenAi;
        let db = memoji_worker::app::connect_database(&settings).await?;
        let broker = Broker::connect(&settings.amqp, "memoji-bench").await?;
        broker.declare().await?;
        eprintln!(
            "run {id}: database memoji_bench_{id}, queues bench-{id}.*, dir {}",
            dir.display()
        );
        Ok(Bench {
            id,
            settings,
            dir,
            bins,
            db,
            broker,
            services: services.clone(),
            spawned: 0,
        })
    }

    /// The environment a worker (or echo) process gets: nothing but this run's configuration
    /// (every setting, through the library's one map from settings to variables).
    fn child_env(
        &self,
        knobs: &WorkerKnobs,
        http_port: u16,
    ) -> anyhow::Result<Vec<(String, String)>> {
        let mut settings = self.settings.clone();
        settings.amqp.prefetch = knobs.prefetch;
        settings.openai.max_concurrency = knobs.max_concurrency;
        settings.openai.base_url = format!("{}/v1", knobs.openai_root);
        settings.secrets.openai_api_key = Some(SecretString::from("sk-bench-not-a-key"));
        settings.http.bind = ([127, 0, 0, 1], http_port).into();
        settings.storage.public_base_url = format!("http://127.0.0.1:{http_port}/images");
        settings.worker.shutdown_grace_secs = 5;
        let mut env = vec![("PATH".to_owned(), std::env::var("PATH").unwrap_or_default())];
        env.extend(settings.to_environment()?);
        Ok(env)
    }

    fn spawn(
        &mut self,
        name: &str,
        program: &Path,
        arg: &str,
        knobs: &WorkerKnobs,
    ) -> anyhow::Result<Proc> {
        self.spawned += 1;
        let port = free_port()?;
        let log = std::fs::File::create(self.dir.join(format!("{name}-{}.log", self.spawned)))?;
        let child = Command::new(program)
            .arg(arg)
            .env_clear()
            .envs(self.child_env(knobs, port)?)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", program.display()))?;
        Ok(Proc {
            name: format!("{name}#{}", self.spawned),
            child,
        })
    }

    /// Starts `count` worker processes and waits until each consumes the job queue.
    pub async fn start_workers(
        &mut self,
        count: usize,
        knobs: &WorkerKnobs,
    ) -> anyhow::Result<Vec<Proc>> {
        let before = self.consumers().await?;
        let worker = self.bins.worker.clone();
        let mut procs = Vec::new();
        for _ in 0..count {
            procs.push(self.spawn("worker", &worker, "run", knobs)?);
        }
        self.wait_for_consumers(before + count as u32).await?;
        Ok(procs)
    }

    /// Starts the echo consumer (`memoji-bench echo`) and waits until it consumes.
    pub async fn start_echo(&mut self, knobs: &WorkerKnobs) -> anyhow::Result<Proc> {
        let before = self.consumers().await?;
        let bench = self.bins.bench.clone();
        let proc = self.spawn("echo", &bench, "echo", knobs)?;
        self.wait_for_consumers(before + 1).await?;
        Ok(proc)
    }

    async fn consumers(&self) -> anyhow::Result<u32> {
        let channel = self.broker.channel().await?;
        let queue = channel
            .queue_declare(
                self.settings.amqp.job_queue.as_str().into(),
                QueueDeclareOptions {
                    passive: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let _ = channel.close(200, "done".into()).await;
        Ok(queue.consumer_count())
    }

    async fn wait_for_consumers(&self, want: u32) -> anyhow::Result<()> {
        for _ in 0..600 {
            if self.consumers().await? >= want {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!(
            "only {} of {want} consumers after 30 s; see the logs in {}",
            self.consumers().await?,
            self.dir.display()
        )
    }

    /// Empties the job and result queues between phases.
    pub async fn purge(&self) -> anyhow::Result<()> {
        let channel = self.broker.channel().await?;
        for queue in [
            &self.settings.amqp.job_queue,
            &self.settings.amqp.result_queue,
        ] {
            channel
                .queue_purge(queue.as_str().into(), QueuePurgeOptions::default())
                .await?;
        }
        let _ = channel.close(200, "done".into()).await;
        Ok(())
    }

    /// Removes the queues, exchanges, database and directory of the run.
    pub async fn cleanup(self) {
        let _ = self.broker.remove_topology().await;
        self.broker.close().await;
        self.db.close().await;
        if let Ok(admin) = PgPool::connect(&format!("{}/postgres", self.services.pg_server)).await {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS \"memoji_bench_{}\" WITH (FORCE)",
                self.id
            ))
            .execute(&admin)
            .await;
            admin.close().await;
        }
        let _ = std::fs::remove_dir_all(&self.dir);
        eprintln!("run {}: cleaned up", self.id);
    }
}

/// User + system CPU time of a process, in clock ticks (`/proc/<pid>/stat` fields 14 and 15).
pub fn cpu_ticks(pid: u32) -> u64 {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return 0;
    };
    let Some((_, rest)) = stat.rsplit_once(')') else {
        return 0;
    };
    // After the command name: state is field 3, utime field 14, stime field 15.
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let tick = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    tick(11) + tick(12)
}

/// Clock ticks per second (`getconf CLK_TCK`; 100 on Linux).
pub const TICKS_PER_SEC: f64 = 100.0;

/// What the database and one process spent on a run, read before and after it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Spent {
    /// CPU ticks of the run database's Postgres backends.
    pub pg_ticks: u64,
    /// CPU ticks of the measured process.
    pub proc_ticks: u64,
    /// CPU ticks of the RabbitMQ node (`beam.smp`), shared with anyone else using the broker.
    pub broker_ticks: u64,
    /// Writing transactions started in the cluster (transaction ids taken).
    pub commits: i64,
}

impl Spent {
    pub fn since(self, before: Spent) -> Spent {
        Spent {
            pg_ticks: self.pg_ticks.saturating_sub(before.pg_ticks),
            proc_ticks: self.proc_ticks.saturating_sub(before.proc_ticks),
            broker_ticks: self.broker_ticks.saturating_sub(before.broker_ticks),
            commits: self.commits - before.commits,
        }
    }

    /// `(process CPU µs, Postgres CPU µs, RabbitMQ CPU µs, commits)` per job.
    pub fn per_job(self, jobs: usize) -> (f64, f64, f64, f64) {
        let us = |ticks: u64| ticks as f64 / TICKS_PER_SEC * 1e6 / jobs as f64;
        (
            us(self.proc_ticks),
            us(self.pg_ticks),
            us(self.broker_ticks),
            self.commits as f64 / jobs as f64,
        )
    }
}

impl Bench {
    /// A snapshot of what the database, the broker and `proc` have spent so far. Call it a
    /// little after the load stopped, so the last jobs' work is counted.
    pub async fn spent(&self, proc: &Proc) -> anyhow::Result<Spent> {
        let pids: Vec<i32> = sqlx::query_scalar(
            "SELECT pid FROM pg_stat_activity WHERE datname = current_database()",
        )
        .fetch_all(&self.db)
        .await?;
        // The next transaction id: every writing transaction takes one, so the difference counts
        // them (cluster-wide, but the run's own writes dominate). pg_stat_database would lag.
        let commits: i64 =
            sqlx::query_scalar("SELECT pg_snapshot_xmax(pg_current_snapshot())::text::bigint")
                .fetch_one(&self.db)
                .await?;
        Ok(Spent {
            pg_ticks: pids.iter().map(|&pid| cpu_ticks(pid as u32)).sum(),
            proc_ticks: proc.cpu_ticks(),
            broker_ticks: broker_pids().into_iter().map(cpu_ticks).sum(),
            commits,
        })
    }
}

/// The RabbitMQ node's processes on this machine (`beam.smp`).
fn broker_pids() -> Vec<u32> {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .is_ok_and(|comm| comm.trim() == "beam.smp")
        })
        .collect()
}

fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
