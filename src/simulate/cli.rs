//! The command line of the offline replay: `memoji-worker history export|generate` and
//! `memoji-worker simulate` (main.rs hands these over whole).

use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::Context as _;
use chrono::{NaiveDate, Utc};

use super::log::{self, Line};
use super::policy::{Budget, Defaults, Policy, SeedRules};
use super::prepared::{Prepared, Pricing};
use super::report::Report;
use super::{engine, export};
use crate::config::Settings;
use crate::warm::replay::{LogShape, People};

/// `memoji-worker history …`: request logs for `simulate`.
#[derive(Debug, clap::Subcommand)]
pub enum HistoryCommand {
    /// Write the worker's request history (memoji_request_history) as a request log: JSON
    /// Lines, one per day and key (README, "Comparing cache policies offline").
    Export {
        /// The last N days, today included.
        #[arg(long, default_value_t = 90)]
        days: u32,
        /// Write here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
    /// Write a synthetic request log in the same format: Zipf-distributed avatars, orders and
    /// users (src/warm/replay.rs holds every parameter), reproducible from its seed.
    Generate {
        /// Days of requests.
        #[arg(long, default_value_t = 30)]
        days: u32,
        /// Requests each day.
        #[arg(long, default_value_t = 2_000)]
        requests_per_day: u32,
        /// The random generator's seed: the same seed, the same log.
        #[arg(long, default_value_t = 14)]
        seed: u64,
        /// The first day of the log.
        #[arg(long, default_value = "2026-01-01")]
        start: NaiveDate,
        /// Write here instead of standard output.
        #[arg(long, value_name = "FILE")]
        out: Option<PathBuf>,
    },
}

/// What `memoji-worker simulate` is asked.
#[derive(Debug, clap::Args)]
pub struct SimulateArgs {
    /// A request log (`history export` or `history generate`).
    #[arg(long, value_name = "FILE")]
    log: PathBuf,
    /// A policy to replay, e.g. `variants=3,max_age=30,warm=200:5usd,retention=gdsf:2gb`
    /// (settings: name, variants, max_age, warm, retention); repeat to compare.
    #[arg(long = "policy", value_name = "SPEC", required = true)]
    policies: Vec<String>,
    /// The budget of `retention=gdsf` without one of its own: entries (50000) or bytes with a
    /// unit (800mb, 2gb, 1.5gib).
    #[arg(long, value_name = "BUDGET", value_parser = Budget::parse)]
    storage_budget: Option<Budget>,
    #[arg(long, value_enum, default_value = "table")]
    format: Format,
    /// With --format table: only the comparison of the totals, not each day.
    #[arg(long)]
    totals_only: bool,
}

/// How `simulate` prints.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Markdown tables.
    Table,
    /// One JSON document.
    Json,
}

/// Runs a `history` command.
pub async fn history(settings: &Settings, command: HistoryCommand) -> anyhow::Result<()> {
    match command {
        HistoryCommand::Export { days, out } => {
            let db = crate::app::connect_database(settings).await?;
            let today = Utc::now().date_naive();
            let lines = export::export(&db, days, today).await;
            db.close().await;
            let lines = lines.context("reading the request history")?;
            let comment = format!(
                "memoji request log (memoji-worker history export): the request history of the \
                 {days} days to {today}; no users (the history keeps none)"
            );
            emit(out.as_deref(), &comment, &lines)
        }
        HistoryCommand::Generate {
            days,
            requests_per_day,
            seed,
            start,
            out,
        } => {
            let shape = LogShape {
                days,
                requests_per_day,
                seed,
                ..LogShape::default()
            };
            let people = People::default();
            let lines = log::generated(&shape, &people, start);
            emit(
                out.as_deref(),
                &log::describe(&shape, &people, start),
                &lines,
            )
        }
    }
}

fn emit(out: Option<&Path>, comment: &str, lines: &[Line]) -> anyhow::Result<()> {
    let requests: u64 = lines.iter().map(|l| u64::from(l.requests)).sum();
    match out {
        Some(path) => {
            let file = std::fs::File::create(path)
                .with_context(|| format!("creating {}", path.display()))?;
            let mut writer = std::io::BufWriter::new(file);
            log::write(&mut writer, comment, lines)
                .and_then(|()| writer.flush())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!(
                "memoji-worker: wrote {} lines ({requests} requests) to {}",
                lines.len(),
                path.display()
            );
        }
        None => {
            let mut writer = std::io::BufWriter::new(std::io::stdout().lock());
            log::write(&mut writer, comment, lines)
                .and_then(|()| writer.flush())
                .context("writing the log to standard output")?;
        }
    }
    Ok(())
}

/// Runs `simulate`: reads the log, replays every policy, prints the report.
pub fn simulate(settings: &Settings, args: &SimulateArgs) -> anyhow::Result<()> {
    let defaults = Defaults {
        seed: SeedRules::from(&settings.cleanup),
        storage_budget: args.storage_budget,
    };
    let policies = args
        .policies
        .iter()
        .map(|spec| Policy::parse(spec, &defaults))
        .collect::<Result<Vec<_>, _>>()?;
    let rules = crate::app::check_domain(settings)?;
    let pricing = Pricing {
        rules: &rules,
        prices: &settings.prices,
    };
    let text = std::fs::read_to_string(&args.log)
        .with_context(|| format!("reading {}", args.log.display()))?;
    let lines = log::read(&text).with_context(|| format!("reading {}", args.log.display()))?;
    if lines.is_empty() {
        anyhow::bail!("{} holds no requests", args.log.display());
    }
    let prepared = Prepared::new(&lines, &pricing);
    let outcomes = policies
        .into_iter()
        .map(|policy| {
            let outcome = engine::run(&prepared, &policy, &pricing);
            (policy, outcome)
        })
        .collect();
    let report = Report::new(&prepared, outcomes);
    let mut stdout = std::io::stdout().lock();
    match args.format {
        Format::Table => write!(stdout, "{}", report.table(args.totals_only))?,
        Format::Json => writeln!(stdout, "{}", serde_json::to_string_pretty(&report)?)?,
    }
    Ok(())
}
