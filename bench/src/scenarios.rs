//! The figures of BENCHMARKS.md, one function per section. Each prints progress to stderr and a
//! Markdown table to stdout, and measures its baseline in the same run.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::env::{Bench, Proc, WorkerKnobs};
use crate::load::{self, JobSpec, Measured, fresh_config, hot_config};
use crate::seed;
use crate::stub::{self, Stub};

const STOP_GRACE: Duration = Duration::from_secs(15);
const MIB: f64 = 1024.0;
/// Lets the last jobs' work settle before CPU time is read.
const STATS_FLUSH: Duration = Duration::from_millis(1500);

fn hit_spec(keys: usize) -> impl Fn(usize) -> JobSpec {
    move |seq| JobSpec {
        user_id: format!("bench-user-{}", seq % 100),
        tier: "monthly_basic",
        config: hot_config(seq % keys),
    }
}

fn miss_spec(phase: u64) -> impl Fn(usize) -> JobSpec {
    move |seq| JobSpec {
        user_id: format!("bench-user-{}", seq % 100),
        tier: "lifetime",
        config: fresh_config(phase, seq),
    }
}

fn phase() -> u64 {
    uuid::Uuid::new_v4().as_u64_pair().1 & 0xffff_ffff
}

fn row(m: &Measured) -> String {
    format!(
        "{:.0} | {:.2} | {:.2} | {:.2} | {}/{} ({} failed)",
        m.throughput(),
        m.ms(0.5),
        m.ms(0.99),
        m.ms(0.999),
        m.received,
        m.jobs,
        m.failed
    )
}

#[derive(Debug, Clone)]
pub struct HitArgs {
    pub jobs: usize,
    pub keys: usize,
    pub warmup: usize,
    /// Rate of the rate-limited run, as a fraction of the echo baseline's throughput (of the
    /// consumer's own when the echo is skipped).
    pub rate_fraction: f64,
    /// Rate of the rate-limited run in jobs/s, overriding `rate_fraction`.
    pub rate: Option<f64>,
    /// Length of the rate-limited run.
    pub rate_secs: f64,
    pub prefetch: u16,
    /// Skip the echo baseline (for before/after runs of the worker alone).
    pub skip_echo: bool,
}

/// §1: hit throughput and latency, the echo consumer first as the baseline.
pub async fn hit(bench: &mut Bench, args: &HitArgs) -> anyhow::Result<()> {
    seed::prewarm(&bench.db, args.keys).await?;
    let openai = Stub::start(Duration::from_secs(1), stub::small_png()).await?;
    let knobs = WorkerKnobs {
        prefetch: args.prefetch,
        max_concurrency: 8,
        openai_root: openai.root.clone(),
    };
    let mut table = Vec::new();
    let mut full_speed = Vec::new();
    // The echo's throughput, once measured: the rate-limited runs offer a share of it.
    let mut echo_throughput = None;
    let targets: &[&str] = if args.skip_echo {
        &["worker"]
    } else {
        &["echo", "worker"]
    };
    for &target in targets {
        let proc = if target == "echo" {
            bench.start_echo(&knobs).await?
        } else {
            bench.start_workers(1, &knobs).await?.remove(0)
        };
        tokio::time::sleep(Duration::from_secs(1)).await;
        let (_, idle_rss) = proc.memory_kib()?;
        eprintln!("{target}: warm-up with {} jobs", args.warmup);
        let warm = load::run(bench, args.warmup, None, hit_spec(args.keys)).await?;
        eprintln!("  {}", warm.summary());
        eprintln!(
            "{target}: {} jobs as fast as the broker takes them",
            args.jobs
        );
        tokio::time::sleep(STATS_FLUSH).await;
        let before = bench.spent(&proc).await?;
        let full = load::run(bench, args.jobs, None, hit_spec(args.keys)).await?;
        eprintln!("  {}", full.summary());
        tokio::time::sleep(STATS_FLUSH).await;
        let (cpu, pg, broker, commits) = bench.spent(&proc).await?.since(before).per_job(args.jobs);
        eprintln!(
            "  per job: {cpu:.0} µs {target} CPU, {pg:.0} µs Postgres CPU, {broker:.0} µs RabbitMQ CPU, {commits:.2} write transactions"
        );
        if target == "echo" {
            echo_throughput = Some(full.throughput());
        }
        let rate = args.rate.unwrap_or_else(|| {
            echo_throughput.unwrap_or_else(|| full.throughput()) * args.rate_fraction
        });
        let n = ((rate * args.rate_secs) as usize).clamp(100, args.jobs);
        eprintln!("{target}: {n} jobs at {rate:.0}/s");
        let limited = load::run(bench, n, Some(rate), hit_spec(args.keys)).await?;
        eprintln!("  {}", limited.summary());
        full_speed.push((full.throughput(), limited.ms(0.99)));
        let (peak, _) = proc.memory_kib()?;
        proc.stop(STOP_GRACE).await;
        bench.purge().await?;
        table.push(format!(
            "| {target} | full speed | {} | {:.1} | {cpu:.0} | {pg:.0} | {broker:.0} | {commits:.2} |",
            row(&full),
            peak as f64 / MIB
        ));
        let share = echo_throughput.map_or(String::new(), |echo| {
            format!(" ({:.0}% of echo)", 100.0 * rate / echo)
        });
        table.push(format!(
            "| {target} | {:.0}/s{share} | {} | {:.1} | | | | |",
            rate,
            row(&limited),
            peak as f64 / MIB
        ));
        eprintln!(
            "{target}: idle RSS {:.1} MiB, peak {:.1} MiB",
            idle_rss as f64 / MIB,
            peak as f64 / MIB
        );
    }
    println!(
        "\n### Hit path: {} hot keys, {} jobs (prefetch {})\n",
        args.keys, args.jobs, args.prefetch
    );
    println!(
        "| consumer | publish rate | jobs/s | p50 ms | p99 ms | p99.9 ms | results | peak RSS MiB \
         | consumer CPU µs/job | Postgres CPU µs/job | RabbitMQ CPU µs/job | write transactions/job |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    for line in table {
        println!("{line}");
    }
    if let [(echo, _), (worker, worker_p99)] = full_speed[..] {
        println!(
            "\nworker ÷ echo throughput: {:.0}% (target ≥ 60%); worker p99 at {:.0}% of the \
             echo's throughput: {worker_p99:.2} ms (target < 10 ms)",
            100.0 * worker / echo,
            args.rate_fraction * 100.0
        );
    }
    Ok(())
}

#[derive(Debug, Clone)]
pub struct MissArgs {
    pub keys: usize,
    pub latency_ms: u64,
    pub max_concurrency: usize,
    pub prefetch: u16,
}

/// §2: miss throughput against max_concurrency ÷ latency, with a 1 s OpenAI stand-in.
pub async fn miss(bench: &mut Bench, args: &MissArgs) -> anyhow::Result<()> {
    let latency = Duration::from_millis(args.latency_ms);
    let openai = Stub::start(latency, stub::small_png()).await?;
    let knobs = WorkerKnobs {
        prefetch: args.prefetch,
        max_concurrency: args.max_concurrency,
        openai_root: openai.root.clone(),
    };
    let worker = bench.start_workers(1, &knobs).await?.remove(0);
    eprintln!(
        "worker: {} distinct misses, OpenAI {} ms, max_concurrency {}",
        args.keys, args.latency_ms, args.max_concurrency
    );
    let m = load::run(bench, args.keys, None, miss_spec(phase())).await?;
    eprintln!("  {}", m.summary());
    let calls = openai.calls();
    worker.stop(STOP_GRACE).await;
    bench.purge().await?;
    let ideal = args.max_concurrency as f64 / latency.as_secs_f64();
    println!(
        "\n### Miss path: {} distinct keys, OpenAI stand-in {} ms, max_concurrency {}, prefetch {}\n",
        args.keys, args.latency_ms, args.max_concurrency, args.prefetch
    );
    println!(
        "| jobs/s | ideal jobs/s | % of ideal | p50 ms | p99 ms | OpenAI calls | distinct keys | results |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    println!(
        "| {:.1} | {:.1} | {:.1}% | {:.0} | {:.0} | {} | {} | {}/{} ({} failed) |",
        m.throughput(),
        ideal,
        100.0 * m.throughput() / ideal,
        m.ms(0.5),
        m.ms(0.99),
        calls,
        args.keys,
        m.received,
        m.jobs,
        m.failed
    );
    Ok(())
}

#[derive(Debug, Clone)]
pub struct MemoryArgs {
    pub hit_jobs: usize,
    pub keys: usize,
    pub in_flight: usize,
    pub image_mib: usize,
    pub latency_ms: u64,
    pub trickle_ms: u64,
}

/// Samples a process's VmRSS every 10 ms until stopped; returns the highest sample (KiB).
fn sample_rss(pid: u32) -> (Arc<AtomicU64>, tokio_util::sync::CancellationToken) {
    let peak = Arc::new(AtomicU64::new(0));
    let stop = tokio_util::sync::CancellationToken::new();
    let (p, s) = (peak.clone(), stop.clone());
    tokio::spawn(async move {
        while !s.is_cancelled() {
            if let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status"))
                && let Some(kib) = status
                    .lines()
                    .find_map(|l| l.strip_prefix("VmRSS:"))
                    .and_then(|r| r.split_whitespace().next())
                    .and_then(|k| k.parse::<u64>().ok())
            {
                p.fetch_max(kib, Ordering::Relaxed);
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    });
    (peak, stop)
}

/// §3: a worker's resident memory idle, under full hit load, and with large images in flight.
pub async fn memory(bench: &mut Bench, args: &MemoryArgs) -> anyhow::Result<()> {
    seed::prewarm(&bench.db, args.keys).await?;
    let png = stub::big_png(args.image_mib * 1024 * 1024);
    let png_len = png.len();
    let openai = Stub::start_trickling(
        Duration::from_millis(args.latency_ms),
        Duration::from_millis(args.trickle_ms),
        png,
    )
    .await?;
    let knobs = WorkerKnobs {
        prefetch: u16::try_from(args.in_flight.max(64)).unwrap_or(u16::MAX),
        max_concurrency: args.in_flight,
        openai_root: openai.root.clone(),
    };

    let worker = bench.start_workers(1, &knobs).await?.remove(0);
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (idle_peak, idle) = worker.memory_kib()?;
    eprintln!("idle: VmRSS {idle} KiB, VmHWM {idle_peak} KiB");
    let m = load::run(bench, args.hit_jobs, None, hit_spec(args.keys)).await?;
    eprintln!("hit load: {}", m.summary());
    let (hit_peak, hit_now) = worker.memory_kib()?;
    worker.stop(STOP_GRACE).await;
    bench.purge().await?;

    // A fresh process, so its high-water mark is the misses' alone.
    let worker: Proc = bench.start_workers(1, &knobs).await?.remove(0);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let (_, miss_idle) = worker.memory_kib()?;
    let (sampled, stop) = sample_rss(worker.pid());
    let m = load::run(bench, args.in_flight, None, miss_spec(phase())).await?;
    stop.cancel();
    eprintln!("misses: {}", m.summary());
    let (miss_peak, miss_after) = worker.memory_kib()?;
    worker.stop(STOP_GRACE).await;
    bench.purge().await?;
    let in_flight_bytes = (args.in_flight * png_len) as f64 / (1024.0 * 1024.0);
    let mib = |kib: u64| kib as f64 / MIB;

    println!(
        "\n### Memory: one worker process (prefetch {}, max_concurrency {})\n",
        knobs.prefetch, knobs.max_concurrency
    );
    println!("| state | VmRSS MiB | VmHWM (peak) MiB | target |");
    println!("| --- | --- | --- | --- |");
    println!(
        "| idle (3 s after start) | {:.1} | {:.1} | < 64 MiB |",
        mib(idle),
        mib(idle_peak)
    );
    println!(
        "| after {} hit jobs at full speed | {:.1} | {:.1} | — |",
        args.hit_jobs,
        mib(hit_now),
        mib(hit_peak)
    );
    println!(
        "| {} generations of {:.1} MiB PNGs in flight ({:.0} MiB of images; stand-in waits {} ms, then sends each body over {} ms) | {:.1} (idle {:.1}; highest 10 ms sample {:.1}) | {:.1} | < 3 × {:.0} = {:.0} MiB |",
        args.in_flight,
        png_len as f64 / (1024.0 * 1024.0),
        in_flight_bytes,
        args.latency_ms,
        args.trickle_ms,
        mib(miss_after),
        mib(miss_idle),
        mib(sampled.load(Ordering::Relaxed)),
        mib(miss_peak),
        in_flight_bytes,
        3.0 * in_flight_bytes
    );
    println!(
        "\nmisses: {}/{} results, {} failed, OpenAI calls {}",
        m.received,
        m.jobs,
        m.failed,
        openai.calls()
    );
    Ok(())
}

#[derive(Debug, Clone)]
pub struct ScaleArgs {
    pub rows: i64,
    pub keys: usize,
    pub rate: f64,
    pub secs: f64,
    pub stats_runs: usize,
    pub pause_factor: Option<f64>,
}

/// §4: statistics and cleanup over a large cache, and hit latency while the cleanup runs.
pub async fn scale(bench: &mut Bench, args: &ScaleArgs) -> anyhow::Result<()> {
    if let Some(factor) = args.pause_factor {
        bench.settings.cleanup.pause_factor = factor;
    }
    seed::prewarm(&bench.db, args.keys).await?;
    eprintln!("seeding {} rows", args.rows);
    let seeded = seed::seed(&bench.db, args.rows).await?;
    let (rows, mib) = seed::table_size(&bench.db).await?;
    eprintln!(
        "  {rows} rows, {mib:.0} MiB, in {:.1} s",
        seeded.as_secs_f64()
    );

    let mut stats = Vec::new();
    for _ in 0..args.stats_runs {
        stats.push(seed::stats(&bench.db).await?);
    }
    stats.sort();
    let stats_median = stats[stats.len() / 2];
    let stats_max = stats[stats.len() - 1];

    let openai = Stub::start(Duration::from_secs(1), stub::small_png()).await?;
    let knobs = WorkerKnobs {
        prefetch: 64,
        max_concurrency: 8,
        openai_root: openai.root.clone(),
    };
    let worker = bench.start_workers(1, &knobs).await?.remove(0);
    let n = (args.rate * args.secs) as usize;
    let _ = load::run(bench, 1000, None, hit_spec(args.keys)).await?;
    eprintln!("hits at {:.0}/s, no cleanup", args.rate);
    let quiet = load::run(bench, n, Some(args.rate), hit_spec(args.keys)).await?;
    eprintln!("  {}", quiet.summary());

    eprintln!("hits at {:.0}/s while a full cleanup runs", args.rate);
    let db = bench.db.clone();
    let settings = bench.settings.cleanup.clone();
    let cleanup = tokio::spawn(async move {
        let from = Instant::now();
        let cleaned = seed::cleanup(&db, &settings).await;
        (from, Instant::now(), cleaned)
    });
    // Hits in 5 s slices until the cleanup is over; only those sent while it ran are counted.
    let mut slices = Vec::new();
    while !cleanup.is_finished() {
        let slice = (args.rate * 5.0) as usize;
        slices.push(load::run(bench, slice, Some(args.rate), hit_spec(args.keys)).await?);
    }
    let (from, to, cleaned) = cleanup.await?;
    let cleaned = cleaned?;
    let mut busy = load::new_histogram();
    for slice in &slices {
        busy.add(slice.sent_between(from, to))?;
    }
    eprintln!(
        "  cleanup: {cleaned:?}; {} hits sent while it ran",
        busy.len()
    );
    let busy_ms = |q: f64| busy.value_at_quantile(q) as f64 / 1000.0;
    worker.stop(STOP_GRACE).await;
    bench.purge().await?;

    println!(
        "\n### Scale: {rows} cache rows ({mib:.0} MiB with indexes), seeded in {:.0} s\n",
        seeded.as_secs_f64()
    );
    println!("| what | figure |");
    println!("| --- | --- |");
    println!(
        "| stats read (`GET /api/cache/stats`), median / max of {} | {:.1} ms / {:.1} ms |",
        args.stats_runs,
        stats_median.as_secs_f64() * 1000.0,
        stats_max.as_secs_f64() * 1000.0
    );
    println!(
        "| full cleanup (`Cleaner`, batches of {}, pause factor {}) | {:.1} s: {} deleted, {} archived |",
        bench.settings.cleanup.batch_size,
        bench.settings.cleanup.pause_factor,
        cleaned.elapsed.as_secs_f64(),
        cleaned.deleted,
        cleaned.archived
    );
    println!(
        "| hits at {:.0}/s, no cleanup: p50 / p99 / p99.9 | {:.2} / {:.2} / {:.2} ms |",
        args.rate,
        quiet.ms(0.5),
        quiet.ms(0.99),
        quiet.ms(0.999)
    );
    println!(
        "| hits at {:.0}/s sent while the cleanup ran ({} hits): p50 / p99 / p99.9 | {:.2} / {:.2} / {:.2} ms |",
        args.rate,
        busy.len(),
        busy_ms(0.5),
        busy_ms(0.99),
        busy_ms(0.999)
    );
    Ok(())
}

#[derive(Debug, Clone)]
pub struct ScaleOutArgs {
    pub workers: Vec<usize>,
    pub hit_jobs: usize,
    pub keys: usize,
    pub miss_keys_per_worker: usize,
    pub latency_ms: u64,
    pub max_concurrency: usize,
}

/// §5: hit and miss throughput with several worker processes on one queue.
pub async fn scale_out(bench: &mut Bench, args: &ScaleOutArgs) -> anyhow::Result<()> {
    seed::prewarm(&bench.db, args.keys).await?;
    let latency = Duration::from_millis(args.latency_ms);
    let openai = Stub::start(latency, stub::small_png()).await?;
    let knobs = WorkerKnobs {
        prefetch: 64,
        max_concurrency: args.max_concurrency,
        openai_root: openai.root.clone(),
    };
    let mut table = Vec::new();
    for &k in &args.workers {
        let workers = bench.start_workers(k, &knobs).await?;
        let _ = load::run(bench, 1000, None, hit_spec(args.keys)).await?;
        eprintln!("{k} worker(s): {} hits", args.hit_jobs);
        let hits = load::run(bench, args.hit_jobs, None, hit_spec(args.keys)).await?;
        eprintln!("  {}", hits.summary());
        let keys = args.miss_keys_per_worker * k;
        let calls_before = openai.calls();
        eprintln!("{k} worker(s): {keys} misses");
        let misses = load::run(bench, keys, None, miss_spec(phase())).await?;
        eprintln!("  {}", misses.summary());
        let calls = openai.calls() - calls_before;
        for worker in workers {
            worker.stop(STOP_GRACE).await;
        }
        bench.purge().await?;
        let ideal = (k * args.max_concurrency) as f64 / latency.as_secs_f64();
        table.push(format!(
            "| {k} | {:.0} | {:.2} | {:.2} | {:.1} | {:.1} | {:.1}% | {calls}/{keys} |",
            hits.throughput(),
            hits.ms(0.5),
            hits.ms(0.99),
            misses.throughput(),
            ideal,
            100.0 * misses.throughput() / ideal
        ));
    }
    println!(
        "\n### Scale-out: worker processes on one queue ({} hit jobs; {} misses per worker, OpenAI {} ms, max_concurrency {})\n",
        args.hit_jobs, args.miss_keys_per_worker, args.latency_ms, args.max_concurrency
    );
    println!(
        "| workers | hit jobs/s | hit p50 ms | hit p99 ms | miss jobs/s | ideal | % of ideal | OpenAI calls/keys |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for line in table {
        println!("{line}");
    }
    Ok(())
}
