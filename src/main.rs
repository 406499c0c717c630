//! The `memoji-worker` command line (CONTRACT.md §10): parses arguments and calls the library.

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use memoji_worker::app::{self, App};
use memoji_worker::config::{Settings, StorageKind};
use memoji_worker::job::GeneratorKind;
use memoji_worker::job::models::help;
use memoji_worker::maintenance::Ran;
use memoji_worker::{client, stats, storage, telemetry};
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
    /// Publish one job, as the web app would; with --wait, print its result.
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
    /// Run the cache cleanup now (unless another process is running it) and print its report.
    Cleanup {
        /// Only count what would be archived and deleted; change nothing.
        #[arg(long)]
        dry_run: bool,
    },
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
    #[arg(long)]
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
    /// Wait for the result and print it.
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
        json!({
            "job_id": self.job_id.unwrap_or_else(uuid::Uuid::new_v4).to_string(),
            "user_id": self.user_id,
            "tier": self.tier,
            "config": config,
            "force_refresh": self.force_refresh,
        })
    }
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("memoji-worker: {error:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let mut settings = Settings::load(cli.config.as_deref())?;
    telemetry::init(&settings.log);
    match cli.command {
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
            app.run_until_stopped(shutdown).await
        }
        Command::Migrate => {
            app::connect_database(&settings).await?;
            println!("database is migrated");
            Ok(())
        }
        Command::Enqueue(args) => {
            let job = args.job();
            let wait = args.wait.then(|| Duration::from_secs(args.timeout_secs));
            match client::enqueue(&settings.amqp, &job, wait).await? {
                Some(result) => println!("{}", serde_json::to_string_pretty(&result)?),
                None => println!(
                    "published job {}",
                    job["job_id"].as_str().unwrap_or_default()
                ),
            }
            Ok(())
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
            Ok(())
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
            Ok(())
        }
        Command::Cleanup { dry_run } => match app::cleanup(&settings, dry_run).await? {
            Ran::Completed(report) => {
                println!("{}", serde_json::to_string_pretty(&report)?);
                Ok(())
            }
            Ran::Skipped => {
                anyhow::bail!("cleanup skipped: another process is running one right now")
            }
        },
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
