//! Postgres, through sqlx, with the SQL next to the function that runs it.
//!
//! - [`cache`]: `memoji_cache`, the table shared with the JavaScript system.
//! - [`jobs`]: every job's state and result, for idempotency.
//! - [`credits`]: monthly balances and the per-job ledger.
//! - [`leases`]: who may generate a key right now (single flight across processes).
//! - [`stats`]: counters and rollups behind `GET /api/cache/stats`.
//! - [`cleanup`]: the cleanup's batches and its single-replica lock.

pub mod cache;
pub mod cleanup;
pub mod credits;
pub mod jobs;
pub mod leases;
pub mod models;
pub mod stats;

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool, Postgres};

use crate::config::DatabaseSettings;

/// A database failure. Every one of them is worth retrying later: the job goes back to the queue
/// and the broker's delivery limit bounds how often.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("database: migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("database: stored data is unreadable: {0}")]
    Corrupt(String),
}

impl DbError {
    /// Whether the failure is the database being out of reach rather than a query at fault.
    pub fn is_connectivity(&self) -> bool {
        match self {
            DbError::Sqlx(error) => match error {
                sqlx::Error::Io(_)
                | sqlx::Error::PoolTimedOut
                | sqlx::Error::PoolClosed
                | sqlx::Error::WorkerCrashed
                | sqlx::Error::Tls(_)
                | sqlx::Error::Protocol(_) => true,
                sqlx::Error::Database(db) => db.code().is_some_and(|code| {
                    // connection exceptions, admin shutdown / cannot connect now, too many connections
                    code.starts_with("08") || code.starts_with("57P") || code == "53300"
                }),
                _ => false,
            },
            _ => false,
        }
    }
}

/// A pooled connection idle at least this long is pinged before it is handed out.
const PING_IF_IDLE_FOR: Duration = Duration::from_secs(1);

/// Connects a pool, creating the database first where it is missing and allowed.
pub async fn connect(settings: &DatabaseSettings) -> Result<PgPool, DbError> {
    let url = settings.url.expose_secret();
    if settings.create_if_missing && !Postgres::database_exists(url).await? {
        match Postgres::create_database(url).await {
            Ok(()) => tracing::info!("created the database"),
            // Another replica created it first.
            Err(sqlx::Error::Database(e)) if e.code().as_deref() == Some("42P04") => {}
            Err(e) => return Err(e.into()),
        }
    }
    let options: PgConnectOptions = url.parse()?;
    let pool = PgPoolOptions::new()
        .max_connections(settings.max_connections)
        .acquire_timeout(Duration::from_secs(settings.acquire_timeout_secs))
        // sqlx pings every connection it hands out *and* every one it takes back: two extra round
        // trips per query on the hit path. The ping on release already proved a connection alive,
        // so only one that sat idle a while (long enough for a server restart to have cut it) is
        // pinged again before use. A connection that dies in between fails one query, and that
        // job is retried like any database error.
        .test_before_acquire(false)
        .before_acquire(|conn, meta| {
            Box::pin(async move {
                if meta.idle_for >= PING_IF_IDLE_FOR {
                    conn.ping().await?;
                }
                Ok(true)
            })
        })
        .connect_with(
            options
                .application_name("memoji-worker")
                .options([("synchronous_commit", settings.synchronous_commit.as_str())]),
        )
        .await?;
    Ok(pool)
}

/// Runs the migrations in `migrations/`; replicas starting together wait on sqlx's migration lock.
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    sqlx::migrate!("./migrations").run(pool).await?;
    Ok(())
}

/// Is the database answering?
pub async fn ping(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}
