//! `memoji-bench`: the benchmarks of BENCHMARKS.md against the real RabbitMQ and Postgres.
//!
//! Each subcommand sets up an isolated run (its own database and queue names), starts
//! `memoji-worker run` processes from the release build beside it, drives them, prints a Markdown
//! table, and removes everything it created. Not part of the test suite, and not part of the
//! worker: a crate of its own (`bench/`), so its dependencies never reach the worker's build.
//!
//! - [`env`]: an isolated run — its own database (`memoji_bench_<id>`), queue and exchange names
//!   (`bench-<id>.…`) and scratch directory; spawning worker (and echo) processes and reading
//!   their memory from `/proc`.
//! - [`load`]: the load generator — pipelined confirmed publishing, optionally rate-limited, and a
//!   result collector recording end-to-end latency in an HDR histogram.
//! - [`stub`]: a local OpenAI stand-in with a fixed latency and a fixed PNG.
//! - [`echo`]: the baseline consumer: the broker's own limit, with the worker's settle protocol.
//! - [`seed`]: fast bulk seeding of `memoji_cache`, and the stats/cleanup hooks for the scale runs.
//! - [`scenarios`]: the figures of BENCHMARKS.md, one function per section.

mod echo;
mod env;
mod load;
mod scenarios;
mod seed;
mod stub;

use std::path::PathBuf;

use clap::{Parser, Subcommand};
use env::{Bench, Bins, Services};
use scenarios::{HitArgs, MemoryArgs, MissArgs, ScaleArgs, ScaleOutArgs};
#[derive(Parser)]
#[command(
    name = "memoji-bench",
    about = "Benchmarks for memoji-worker (see BENCHMARKS.md)"
)]
struct Cli {
    #[arg(
        long,
        global = true,
        default_value = "amqp://guest:guest@127.0.0.1:5672/%2f"
    )]
    amqp_url: String,
    /// Postgres server, without a database name.
    #[arg(
        long,
        global = true,
        default_value = "postgres://postgres@127.0.0.1:5432"
    )]
    pg_server: String,
    /// The memoji-worker binary to measure (default: the one beside this binary).
    #[arg(long, global = true)]
    worker_bin: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// §Warming: replays a synthetic Zipf request log day by day, in process (no broker, database
    /// or OpenAI: a policy measurement), with and without warming the popularity model's top K
    /// each night under a budget; prints a Markdown table.
    WarmReplay {
        #[arg(long, default_value_t = 30)]
        days: u32,
        #[arg(long, default_value_t = 2_000)]
        per_day: u32,
        /// Configurations warmed each night at most.
        #[arg(long, default_value_t = 500)]
        top: usize,
        #[arg(long, default_value_t = 10.0)]
        nightly_budget_usd: f64,
        /// What a live generation costs (list price, gpt-image-2.6-flare 1024x1024 medium).
        #[arg(long, default_value_t = 0.04)]
        price_usd: f64,
        /// What a warmed image costs (0.02: OpenAI's Batch API at half price).
        #[arg(long, default_value_t = 0.04)]
        warm_price_usd: f64,
        #[arg(long, default_value_t = 7.0)]
        half_life_days: f64,
        #[arg(long, default_value_t = 7)]
        drift_every_days: u32,
        #[arg(long, default_value_t = 14)]
        seed: u64,
    },
    /// §1 hit path: echo baseline, then the worker; full speed, then at a fraction of it.
    Hit {
        #[arg(long, default_value_t = 50_000)]
        jobs: usize,
        #[arg(long, default_value_t = 1_000)]
        keys: usize,
        #[arg(long, default_value_t = 2_000)]
        warmup: usize,
        /// The rate-limited run's rate, as a fraction of the echo baseline's throughput (of the
        /// consumer's own with --skip-echo).
        #[arg(long, default_value_t = 0.5)]
        rate_fraction: f64,
        /// The rate-limited run's rate in jobs/s, instead of --rate-fraction (for before/after
        /// runs with --skip-echo at the same offered rate).
        #[arg(long)]
        rate: Option<f64>,
        #[arg(long, default_value_t = 20.0)]
        rate_secs: f64,
        #[arg(long, default_value_t = 64)]
        prefetch: u16,
        #[arg(long)]
        skip_echo: bool,
    },
    /// §2 miss path: distinct keys against an OpenAI stand-in with a fixed latency.
    Miss {
        #[arg(long, default_value_t = 2_000)]
        keys: usize,
        #[arg(long, default_value_t = 1_000)]
        latency_ms: u64,
        #[arg(long, default_value_t = 8)]
        max_concurrency: usize,
        #[arg(long, default_value_t = 64)]
        prefetch: u16,
    },
    /// §3 memory: idle, under hit load, and with large generations in flight.
    Memory {
        #[arg(long, default_value_t = 20_000)]
        hit_jobs: usize,
        #[arg(long, default_value_t = 1_000)]
        keys: usize,
        #[arg(long, default_value_t = 64)]
        in_flight: usize,
        #[arg(long, default_value_t = 4)]
        image_mib: usize,
        /// The stand-in waits this long before answering…
        #[arg(long, default_value_t = 1_000)]
        latency_ms: u64,
        /// …then sends each response body over this long.
        #[arg(long, default_value_t = 2_000)]
        trickle_ms: u64,
    },
    /// §4 scale: stats and cleanup over many cache rows, hit latency during the cleanup.
    Scale {
        #[arg(long, default_value_t = 1_000_000)]
        rows: i64,
        #[arg(long, default_value_t = 1_000)]
        keys: usize,
        /// Hit jobs per second during the measurement.
        #[arg(long, default_value_t = 300.0)]
        rate: f64,
        #[arg(long, default_value_t = 30.0)]
        secs: f64,
        #[arg(long, default_value_t = 5)]
        stats_runs: usize,
        /// The cleanup's `cleanup.pause_factor` (0: flat out); the worker's default otherwise.
        #[arg(long)]
        pause_factor: Option<f64>,
    },
    /// §5 scale-out: 1, 2, 3 worker processes on one queue.
    ScaleOut {
        #[arg(long, value_delimiter = ',', default_value = "1,2,3")]
        workers: Vec<usize>,
        #[arg(long, default_value_t = 20_000)]
        hit_jobs: usize,
        #[arg(long, default_value_t = 1_000)]
        keys: usize,
        #[arg(long, default_value_t = 80)]
        miss_keys_per_worker: usize,
        #[arg(long, default_value_t = 1_000)]
        latency_ms: u64,
        #[arg(long, default_value_t = 8)]
        max_concurrency: usize,
    },
    /// The echo consumer (started by `hit` as a child process; configured like the worker).
    Echo,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Echo = cli.command {
        return echo::run().await;
    }
    if let Command::WarmReplay {
        days,
        per_day,
        top,
        nightly_budget_usd,
        price_usd,
        warm_price_usd,
        half_life_days,
        drift_every_days,
        seed,
    } = cli.command
    {
        use memoji_worker::warm::predict::Model;
        use memoji_worker::warm::replay::{self, LogShape, Policy};
        let shape = LogShape {
            days,
            requests_per_day: per_day,
            drift_every_days,
            seed,
            ..LogShape::default()
        };
        let policy = Policy {
            top,
            nightly_budget_usd,
            price_usd,
            warm_price_usd,
            model: Model {
                half_life_days,
                ..Model::default()
            },
        };
        let started = std::time::Instant::now();
        let result = replay::replay(&replay::log(&shape), &policy);
        println!("{}", replay::table(&shape, &policy, &result));
        println!("replayed in {:.1} s", started.elapsed().as_secs_f64());
        return Ok(());
    }
    let services = Services {
        amqp_url: cli.amqp_url.clone(),
        pg_server: cli.pg_server.clone(),
    };
    let bins = Bins::locate(cli.worker_bin.clone())?;
    let mut run = Bench::setup(&services, &bins).await?;
    let outcome = match cli.command {
        Command::Hit {
            jobs,
            keys,
            warmup,
            rate_fraction,
            rate,
            rate_secs,
            prefetch,
            skip_echo,
        } => {
            let args = HitArgs {
                jobs,
                keys,
                warmup,
                rate_fraction,
                rate,
                rate_secs,
                prefetch,
                skip_echo,
            };
            scenarios::hit(&mut run, &args).await
        }
        Command::Miss {
            keys,
            latency_ms,
            max_concurrency,
            prefetch,
        } => {
            let args = MissArgs {
                keys,
                latency_ms,
                max_concurrency,
                prefetch,
            };
            scenarios::miss(&mut run, &args).await
        }
        Command::Memory {
            hit_jobs,
            keys,
            in_flight,
            image_mib,
            latency_ms,
            trickle_ms,
        } => {
            let args = MemoryArgs {
                hit_jobs,
                keys,
                in_flight,
                image_mib,
                latency_ms,
                trickle_ms,
            };
            scenarios::memory(&mut run, &args).await
        }
        Command::Scale {
            rows,
            keys,
            rate,
            secs,
            stats_runs,
            pause_factor,
        } => {
            let args = ScaleArgs {
                rows,
                keys,
                rate,
                secs,
                stats_runs,
                pause_factor,
            };
            scenarios::scale(&mut run, &args).await
        }
        Command::ScaleOut {
            workers,
            hit_jobs,
            keys,
            miss_keys_per_worker,
            latency_ms,
            max_concurrency,
        } => {
            let args = ScaleOutArgs {
                workers,
                hit_jobs,
                keys,
                miss_keys_per_worker,
                latency_ms,
                max_concurrency,
            };
            scenarios::scale_out(&mut run, &args).await
        }
        Command::Echo | Command::WarmReplay { .. } => unreachable!("handled above"),
    };
    run.cleanup().await;
    outcome
}
