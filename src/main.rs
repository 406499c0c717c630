//! The `memoji-worker` command line (CONTRACT.md §10): parses arguments and calls the library.

use std::io::{IsTerminal as _, Write as _};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use memoji_worker::app::{self, App};
use memoji_worker::client::Waiting;
use memoji_worker::config::{CacheMode, Settings, StorageKind};
use memoji_worker::db::preferences;
use memoji_worker::job::models::help;
use memoji_worker::job::{GeneratorKind, UserPreferences};
use memoji_worker::maintenance::Ran;
use memoji_worker::{client, simulate, stats, storage, telemetry, warm};
use serde_json::{Map, Value, json};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "memoji-worker",
    version,
    about = "Cached AI avatar generation from RabbitMQ jobs"
)]
struct Cli {
    /// A configuration file layered over the built-in defaults (also MEMOJI_CONFIG).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the worker and its admin API until SIGTERM or Ctrl-C.
    Run {
        /// `placeholder` draws images offline, for trying the system without an OpenAI key.
        #[arg(long, value_parser = ["openai", "placeholder"])]
        generator: Option<String>,
    },
    /// Create the database if needed and apply the migrations.
    Migrate,
    /// Publish one job, as the web app would; with --wait, print its result (exit status 2 if
    /// the job failed, its error code on stderr).
    Enqueue(Box<EnqueueArgs>),
    /// Object storage tools.
    #[command(subcommand)]
    Storage(StorageCommand),
    /// Print the cache statistics (lifetime and last 24 h), read from the database.
    Stats {
        /// Print the JSON body of GET /api/cache/stats instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Generate configurations before anyone asks for them (cache warming). Never charges a
    /// user; gives way to live jobs; single flight with them. Prints the report (JSON) on stdout,
    /// progress on stderr (a bar on a terminal, plain lines otherwise).
    Warm(Box<WarmArgs>),
    /// Regenerate the most used entries a model made with the model that serves their
    /// configuration today (its successor, for a retired one); each entry serves its old image
    /// until the new one is stored under a path of its own. Never charges a user. Prints the
    /// report (JSON).
    Refresh {
        /// The model whose images to replace (as recorded with each entry).
        #[arg(long, value_name = "MODEL")]
        generated_by: String,
        #[arg(long, default_value_t = 100)]
        top: u32,
        /// Stop before the spend would pass this many dollars (list prices; batch prices with
        /// --batch).
        #[arg(long, value_name = "X")]
        budget_usd: Option<f64>,
        /// Through OpenAI's Batch API: half the price, answers within 24 hours (see warm --batch).
        #[arg(long)]
        batch: bool,
    },
    /// Users' settings.
    #[command(subcommand)]
    User(UserCommand),
    /// Run the cache cleanup now (unless another process is running it) and print its report.
    Cleanup {
        /// Only count what would be archived and deleted; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print a report of the last period — hit ratio, spend, saved, the trend against the period
    /// before, the top configurations — from the analytics rollups.
    Report {
        /// The period: hours or days, `48h`, `7d`, `30d` (1h to 400d).
        #[arg(long, default_value = "7d")]
        since: String,
        /// `md` (Markdown, for a chat), `json`, or `html` (a standalone page, for a mail).
        #[arg(long, value_enum, default_value = "md")]
        format: stats::report::Format,
    },
    /// A/B tests of cache strategies: each arm's figures, and each arm against the control with
    /// 95% confidence intervals and a verdict.
    #[command(subcommand)]
    Experiments(ExperimentsCommand),
    /// The request history as a request log, or a synthetic one, for `simulate`.
    #[command(subcommand)]
    History(simulate::cli::HistoryCommand),
    /// Replay a request log against cache policies, offline (no database, broker or OpenAI),
    /// and print per day and in total: hit ratio, generations, spend, saved, storage.
    Simulate(Box<simulate::cli::SimulateArgs>),
}

#[derive(Subcommand)]
enum ExperimentsCommand {
    /// Print one experiment's report (the figures of GET /api/experiments/NAME).
    Show {
        name: String,
        /// Only the last span: hours or days, `48h`, `7d` (default: since its first job).
        #[arg(long)]
        since: Option<String>,
        /// Print the JSON body of GET /api/experiments/NAME instead of a table.
        #[arg(long)]
        json: bool,
    },
}

#[derive(Args)]
#[command(
    group = clap::ArgGroup::new("source").required(true).args(["from", "from_history", "predict", "resume"]),
    args_conflicts_with_subcommands = true,
    subcommand_negates_reqs = true
)]
struct WarmArgs {
    #[command(subcommand)]
    list: Option<WarmCommand>,
    /// A JSONL file: one avatar configuration a line, as in a job's `config`.
    #[arg(long, value_name = "FILE.jsonl")]
    from: Option<PathBuf>,
    /// The configurations most asked for in the last --days days that are not cached now.
    #[arg(long)]
    from_history: bool,
    /// The popularity model's predictions for tomorrow (decayed counts per key, and per
    /// attribute for combinations never asked for), not cached now.
    #[arg(long)]
    predict: bool,
    /// With --predict: print the predictions with their scores (and why) instead of warming.
    #[arg(long, requires = "predict")]
    explain: bool,
    /// With --from-history or --predict: how many days of history.
    #[arg(long, default_value_t = 30)]
    days: u32,
    /// With --from-history or --predict: how many configurations at most.
    #[arg(long, default_value_t = 500)]
    top: u32,
    /// Stop before the spend (list prices for what is in flight) would pass this many dollars.
    #[arg(long, value_name = "X")]
    budget_usd: Option<f64>,
    /// Generate at most N images.
    #[arg(long, value_name = "N")]
    max: Option<usize>,
    /// List what would be generated, with its estimated cost; generate nothing.
    #[arg(long)]
    dry_run: bool,
    /// Warm every configuration for this model (replaces each configuration's `model`).
    #[arg(long, long_help = help::model(), help = "Model to warm for (any of --help's list)")]
    model: Option<String>,
    /// Through OpenAI's Batch API: half the price, answers within 24 hours. The batch is kept in
    /// the database; this command polls it until it is done (Ctrl-C leaves it to `warm --resume`
    /// or to the workers) and prints the report.
    #[arg(long)]
    batch: bool,
    /// Wait for every batch still open (submitted by a command that died, say), finish them, and
    /// print their reports.
    #[arg(long, requires = "batch")]
    resume: bool,
}

#[derive(Subcommand)]
enum WarmCommand {
    /// Poll every open warming batch once, finish those OpenAI is done with (like the workers
    /// do), and list the recent batches (JSON).
    Batches {
        /// How many recent batches to list.
        #[arg(long, default_value_t = 20)]
        last: i64,
    },
}

#[derive(Subcommand)]
enum UserCommand {
    /// A user's stored cache preferences (the admin API's /api/users/{user_id}/cache-preferences).
    #[command(subcommand)]
    Prefs(PrefsCommand),
}

#[derive(Subcommand)]
enum PrefsCommand {
    /// Print the user's stored preferences (JSON; `stored` false when there are none).
    Show { user_id: String },
    /// Replace the user's preferences with these (a flag left out is unset) and print them.
    Set {
        user_id: String,
        /// Cached images older than this many days are not served to the user.
        #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
        max_age_days: Option<u32>,
        /// The user's default cache mode.
        #[arg(long, value_name = "M", value_parser = ["default", "refresh", "bypass", "only_if_cached"])]
        mode: Option<String>,
        /// Opt the user out of variants: always the key's first image.
        #[arg(long)]
        no_variants: bool,
    },
    /// Remove the user's preferences.
    Clear { user_id: String },
}

#[derive(Subcommand)]
enum StorageCommand {
    /// Write, read back, compare and delete a small PNG in the configured backend
    /// (under `_memoji-check/`, never a real image's path); exits non-zero if any step fails.
    Check,
}

#[derive(Args)]
struct EnqueueArgs {
    #[arg(long, default_value = "cli-user")]
    user_id: String,
    #[arg(long, default_value = "free")]
    tier: String,
    /// Job id (a UUID); a new one by default.
    #[arg(long, value_parser = parse_job_id)]
    job_id: Option<uuid::Uuid>,
    #[arg(long, long_help = help::model(), help = "Model to ask for (any of --help's list)")]
    model: Option<String>,
    #[arg(long, help = help::size())]
    size: Option<String>,
    #[arg(long)]
    family_type: Option<String>,
    #[arg(long)]
    gesture: Option<String>,
    #[arg(long)]
    hair: Option<String>,
    #[arg(long)]
    skin_tone: Option<String>,
    /// Comma-separated, e.g. glasses,hat
    #[arg(long, value_delimiter = ',')]
    accessories: Option<Vec<String>>,
    #[arg(long)]
    color_theme: Option<String>,
    #[arg(long, help = help::background())]
    background: Option<String>,
    #[arg(long, help = help::quality())]
    quality: Option<String>,
    #[arg(long, help = help::complexity())]
    complexity: Option<String>,
    #[arg(long)]
    prompt: Option<String>,
    #[arg(long)]
    force_refresh: bool,
    /// `cache.max_age_days`: a cached image older than this is not served.
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    max_age_days: Option<u32>,
    /// `cache.mode`.
    #[arg(long, value_name = "M", value_parser = ["default", "refresh", "bypass", "only_if_cached"])]
    cache_mode: Option<String>,
    /// `cache.namespace`: a separate cache (1-64 printable characters).
    #[arg(long, value_name = "NAME")]
    namespace: Option<String>,
    /// Wait for the result and print it; exit status 2 if the job failed.
    #[arg(long)]
    wait: bool,
    /// How long --wait waits, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout_secs: u64,
}

impl EnqueueArgs {
    fn job(&self) -> Value {
        let mut config = Map::new();
        let text_fields = [
            ("model", &self.model),
            ("size", &self.size),
            ("familyType", &self.family_type),
            ("gesture", &self.gesture),
            ("hair", &self.hair),
            ("skinTone", &self.skin_tone),
            ("colorTheme", &self.color_theme),
            ("background", &self.background),
            ("quality", &self.quality),
            ("complexity", &self.complexity),
            ("prompt", &self.prompt),
        ];
        for (name, value) in text_fields {
            if let Some(value) = value {
                config.insert(name.to_owned(), json!(value));
            }
        }
        if let Some(accessories) = &self.accessories {
            config.insert("accessories".to_owned(), json!(accessories));
        }
        let mut job = json!({
            "job_id": self.job_id.unwrap_or_else(uuid::Uuid::new_v4).to_string(),
            "user_id": self.user_id,
            "tier": self.tier,
            "config": config,
            "force_refresh": self.force_refresh,
        });
        let mut cache = Map::new();
        if let Some(days) = self.max_age_days {
            cache.insert("max_age_days".to_owned(), json!(days));
        }
        if let Some(mode) = &self.cache_mode {
            cache.insert("mode".to_owned(), json!(mode));
        }
        if let Some(namespace) = &self.namespace {
            cache.insert("namespace".to_owned(), json!(namespace));
        }
        if !cache.is_empty() {
            job["cache"] = Value::Object(cache);
        }
        job
    }
}

/// `--job-id`: a UUID, said so when it is not one.
fn parse_job_id(text: &str) -> Result<uuid::Uuid, String> {
    uuid::Uuid::parse_str(text).map_err(|_| {
        format!("expected a UUID such as 0b6f6f0e-3f5e-4c55-9d36-0f2b8e4a7f10, got {text:?}")
    })
}

/// Exit status of `enqueue --wait` when the job's result says it failed.
const JOB_FAILED: u8 = 2;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(code) => code,
        Err(error) => {
            eprintln!("memoji-worker: {}", telemetry::causes(&*error));
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<ExitCode> {
    let settings = Settings::load(cli.config.as_deref())?;
    let exporter = telemetry::init(&settings.log, &settings.telemetry)?;
    let outcome = command(cli.command, settings).await;
    if let Some(exporter) = exporter {
        // Blocks while the last spans go out: off the runtime's threads.
        let _ = tokio::task::spawn_blocking(move || exporter.shutdown()).await;
    }
    outcome
}

async fn command(command: Command, mut settings: Settings) -> anyhow::Result<ExitCode> {
    match command {
        Command::Run { generator } => {
            if let Some(kind) = generator {
                settings.generator.kind = if kind == "placeholder" {
                    GeneratorKind::Placeholder
                } else {
                    GeneratorKind::OpenAi
                };
            }
            let app = App::build(settings).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(stop_on_signal(shutdown.clone()));
            app.run_until_stopped(shutdown).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Migrate => {
            app::connect_database(&settings).await?;
            println!("database is migrated");
            Ok(ExitCode::SUCCESS)
        }
        Command::Enqueue(args) => {
            let job = args.job();
            let job_id = job["job_id"].as_str().unwrap_or_default().to_owned();
            let wait = args.wait.then(|| Duration::from_secs(args.timeout_secs));
            let mut progress = Progress::new(&job_id);
            let outcome =
                client::enqueue(&settings.amqp, &job, wait, |event| progress.show(event)).await;
            progress.clear();
            match outcome? {
                Some(result) => {
                    println!("{}", serde_json::to_string_pretty(&result)?);
                    if result["status"] == "failed" {
                        let error = &result["error"];
                        eprintln!(
                            "memoji-worker: job {job_id} failed: {}: {}",
                            error["code"].as_str().unwrap_or("unknown"),
                            error["message"].as_str().unwrap_or_default()
                        );
                        return Ok(ExitCode::from(JOB_FAILED));
                    }
                }
                None => println!("published job {job_id}"),
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Storage(StorageCommand::Check) => {
            let kind = format!("{:?}", settings.storage.kind).to_lowercase();
            let store = storage::from_settings(&settings.storage, &settings.secrets.storage)
                .context("storage check failed")?;
            println!("checking the {kind} storage backend: {store:?}");
            let fetch_url = settings.storage.kind != StorageKind::Local;
            let report = storage::check::run(store.as_ref(), fetch_url)
                .await
                .with_context(|| format!("storage check failed on the {kind} backend"))?;
            println!("{report}");
            println!("storage check passed");
            Ok(ExitCode::SUCCESS)
        }
        Command::Stats { json } => {
            let (figures, model_warnings) = app::stats(&settings).await?;
            if json {
                let mut body = serde_json::to_value(&figures)?;
                body["model_warnings"] = serde_json::json!(model_warnings);
                println!("{}", serde_json::to_string_pretty(&body)?);
            } else {
                print!("{}", stats::table(&figures));
                for warning in &model_warnings {
                    println!("model warning: {warning}");
                }
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { since, format } => {
            let report = app::report(&settings, &since).await?;
            print!("{}", stats::report::render(&report, format)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Experiments(ExperimentsCommand::Show { name, since, json }) => {
            let span = since
                .as_deref()
                .map(stats::analytics::parse_span)
                .transpose()?;
            let db = app::connect_database(&settings).await?;
            let since = since.as_deref().zip(span);
            let read =
                stats::arms::report(&db, &settings.experiments, &name, since, chrono::Utc::now());
            let report = read.await;
            db.close().await;
            let Some(report) = report? else {
                anyhow::bail!(
                    "no experiment named `{name}` is configured or has jobs in this period"
                );
            };
            if json {
                println!("{}", serde_json::to_string_pretty(&report)?);
            } else {
                print!("{}", stats::arms::text(&report));
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Warm(args) => warm(&settings, &args).await,
        Command::History(command) => {
            simulate::cli::history(&settings, command).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Simulate(args) => {
            simulate::cli::simulate(&settings, &args)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Refresh {
            generated_by,
            top,
            budget_usd,
            batch,
        } => {
            let warmer = app::warmer(&settings, false).await?;
            let rules = app::check_domain(&settings)?;
            let shaping = warm::Shaping {
                rules: &rules,
                prices: &settings.prices,
                generator: warmer.generator.kind(),
                model: None,
            };
            if batch {
                let client = app::batch_client(&settings)?;
                let batching = warm::batch::Batching {
                    warmer: &warmer,
                    client: &client,
                    rules: &rules,
                };
                let stop = CancellationToken::new();
                tokio::spawn(stop_on_signal(stop.clone()));
                let mut progress = warm::Progress::for_stderr();
                let report = warm::refresh::refresh_batch(
                    &batching,
                    &shaping,
                    &generated_by,
                    top,
                    budget_usd,
                    &mut progress,
                    &stop,
                )
                .await?;
                println!("{}", serde_json::to_string_pretty(&report)?);
                warmer.db.close().await;
                return Ok(ExitCode::SUCCESS);
            }
            let report =
                warm::refresh::refresh(&warmer, &shaping, &generated_by, top, budget_usd).await?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            warmer.db.close().await;
            Ok(ExitCode::SUCCESS)
        }
        Command::User(UserCommand::Prefs(command)) => user_prefs(&settings, command).await,
        Command::Cleanup { dry_run } => match app::cleanup(&settings, dry_run).await? {
            Ran::Completed(report) => {
                println!("{}", serde_json::to_string_pretty(&report)?);
                Ok(ExitCode::SUCCESS)
            }
            Ran::Skipped => {
                anyhow::bail!("cleanup skipped: another process is running one right now")
            }
        },
    }
}

/// `memoji-worker warm`: reads the source, runs (or dry-runs) the warming, prints the report.
async fn warm(settings: &Settings, args: &WarmArgs) -> anyhow::Result<ExitCode> {
    if args.list.is_some() || args.resume {
        return warm_batches(settings, args).await;
    }
    // A batch waits at OpenAI, not beside live jobs: it needs no look at the queue.
    let warmer = app::warmer(settings, !args.dry_run && !args.explain && !args.batch).await?;
    let rules = app::check_domain(settings)?;
    let (configs, mut refused) = if let Some(file) = &args.from {
        let text =
            std::fs::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
        warm::read_jsonl(&text)
    } else if args.predict {
        let kind = warmer.generator.kind();
        let predictions = warm::history::predicted(&warmer.db, args.days, args.top, kind).await?;
        if args.explain {
            for (rank, p) in predictions.iter().enumerate() {
                let own = p
                    .own_rate
                    .map_or("never asked".to_owned(), |r| format!("{r:.3}/day"));
                let shares: Vec<String> = p
                    .shares
                    .iter()
                    .map(|(attribute, (value, share))| {
                        format!("{attribute}={value} {:.0}%", share * 100.0)
                    })
                    .collect();
                println!(
                    "{:>4}. {:.3}/day (own {own}, attributes {:.3}/day: {}) {}",
                    rank + 1,
                    p.score,
                    p.attribute_rate,
                    shares.join(", "),
                    p.config
                );
            }
            warmer.db.close().await;
            return Ok(ExitCode::SUCCESS);
        }
        let configs = predictions
            .into_iter()
            .map(|p| (format!("predicted {:.3}/day", p.score), p.config))
            .collect();
        (configs, Vec::new())
    } else {
        let configs = warm::history::most_asked(&warmer.db, args.days, args.top).await?;
        (configs, Vec::new())
    };
    let shaping = warm::Shaping {
        rules: &rules,
        prices: &settings.prices,
        generator: warmer.generator.kind(),
        model: args.model.as_deref(),
    };
    let (candidates, more_refused) = shaping.candidates(configs);
    refused.extend(more_refused);
    let source = if args.from.is_some() {
        "from"
    } else if args.predict {
        "predict"
    } else {
        "history"
    };
    let options = warm::Options {
        budget_usd: args.budget_usd,
        max: args.max,
        dry_run: args.dry_run,
        source: source.to_owned(),
    };
    let stop = CancellationToken::new();
    tokio::spawn(stop_on_signal(stop.clone()));
    let mut progress = warm::Progress::for_stderr();
    let report = if args.batch {
        let client = app::batch_client(settings)?;
        let batching = warm::batch::Batching {
            warmer: &warmer,
            client: &client,
            rules: &rules,
        };
        batching
            .warm(candidates, refused, &options, &mut progress, &stop, true)
            .await?
    } else {
        warm::run(&warmer, candidates, refused, &options, &mut progress, &stop).await?
    };
    println!("{}", serde_json::to_string_pretty(&report)?);
    warmer.db.close().await;
    Ok(ExitCode::SUCCESS)
}

/// `warm --batch --resume` and `warm batches`: the warming batches kept in the database.
async fn warm_batches(settings: &Settings, args: &WarmArgs) -> anyhow::Result<ExitCode> {
    let warmer = app::warmer(settings, false).await?;
    let rules = app::check_domain(settings)?;
    let client = app::batch_client(settings)?;
    let batching = warm::batch::Batching {
        warmer: &warmer,
        client: &client,
        rules: &rules,
    };
    let mut progress = warm::Progress::for_stderr();
    let out = if let Some(WarmCommand::Batches { last }) = &args.list {
        let finished = batching.sweep(&mut progress).await?;
        let batches = memoji_worker::db::warm_batches::recent(&warmer.db, *last).await?;
        json!({
            "finished_now": finished.into_iter().map(|(_, report)| report).collect::<Vec<_>>(),
            "batches": batches,
        })
    } else {
        let stop = CancellationToken::new();
        tokio::spawn(stop_on_signal(stop.clone()));
        let reports = batching.resume(&mut progress, &stop).await?;
        json!({ "resumed": reports })
    };
    println!("{}", serde_json::to_string_pretty(&out)?);
    warmer.db.close().await;
    Ok(ExitCode::SUCCESS)
}

/// `memoji-worker user prefs …`: reads, replaces or removes a user's cache preferences in the
/// database, and prints them as the admin API answers.
async fn user_prefs(settings: &Settings, command: PrefsCommand) -> anyhow::Result<ExitCode> {
    let db = app::connect_database(settings).await?;
    let user_id = match &command {
        PrefsCommand::Show { user_id }
        | PrefsCommand::Set { user_id, .. }
        | PrefsCommand::Clear { user_id } => user_id.clone(),
    };
    anyhow::ensure!(
        memoji_worker::job::valid_user_id(&user_id),
        "a user id is 1-128 printable characters"
    );
    let (stored, cleared) = match command {
        PrefsCommand::Show { .. } => (preferences::get(&db, &user_id).await?, None),
        PrefsCommand::Set {
            max_age_days,
            mode,
            no_variants,
            ..
        } => {
            let wanted = UserPreferences {
                max_age_days,
                mode: mode.as_deref().and_then(CacheMode::from_name),
                variants_opt_out: no_variants,
            }
            .checked()
            .map_err(anyhow::Error::msg)?;
            preferences::set(&db, &user_id, &wanted).await?;
            (Some(wanted), None)
        }
        PrefsCommand::Clear { .. } => (None, Some(preferences::clear(&db, &user_id).await?)),
    };
    db.close().await;
    let shown = stored.clone().unwrap_or_default();
    let mut body = json!({
        "user_id": user_id,
        "stored": stored.is_some(),
        "max_age_days": shown.max_age_days,
        "mode": shown.mode,
        "variants_opt_out": shown.variants_opt_out,
    });
    if let Some(cleared) = cleared {
        body["cleared"] = json!(cleared);
    }
    println!("{}", serde_json::to_string_pretty(&body)?);
    Ok(ExitCode::SUCCESS)
}

/// What `enqueue --wait` shows on stderr while it waits: at once, that no worker consumes the job
/// queue (if so) and when one attaches; on a terminal, a spinner with the time waited so far.
struct Progress {
    job_id: String,
    terminal: bool,
    frame: usize,
    drawn: bool,
}

impl Progress {
    const FRAMES: [char; 10] = ['⠋', '⠙', '⠹', '⠸', '⠼', '⠴', '⠦', '⠧', '⠇', '⠏'];

    fn new(job_id: &str) -> Progress {
        Progress {
            job_id: job_id.to_owned(),
            terminal: std::io::stderr().is_terminal(),
            frame: 0,
            drawn: false,
        }
    }

    fn show(&mut self, event: Waiting) {
        match event {
            Waiting::NoWorker { queue } => self.say(&format!(
                "no worker is consuming {queue}: the job waits there until one starts \
                 (`memoji-worker run`)"
            )),
            Waiting::WorkerAttached { consumers } => {
                self.say(&format!(
                    "a worker is consuming the job queue now ({consumers})"
                ));
            }
            Waiting::Tick { elapsed } if self.terminal => {
                self.frame = (self.frame + 1) % Self::FRAMES.len();
                eprint!(
                    "\r\x1b[2K{} waiting for the result of job {} ({}s)",
                    Self::FRAMES[self.frame],
                    self.job_id,
                    elapsed.as_secs()
                );
                let _ = std::io::stderr().flush();
                self.drawn = true;
            }
            Waiting::Tick { .. } => {}
        }
    }

    fn say(&mut self, line: &str) {
        self.clear();
        eprintln!("memoji-worker: {line}");
    }

    /// Removes the spinner's line, if one is drawn.
    fn clear(&mut self) {
        if self.drawn {
            eprint!("\r\x1b[2K");
            let _ = std::io::stderr().flush();
            self.drawn = false;
        }
    }
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn stop_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "cannot listen for SIGTERM");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("shutdown requested; finishing in-flight jobs");
    shutdown.cancel();
}
