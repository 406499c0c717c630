//! Postgres, through sqlx, with the SQL next to the function that runs it.
//!
//! - [`cache`]: `memoji_cache`, the table shared with the JavaScript system.
//! - [`jobs`]: every job's state and result, for idempotency.
//! - [`hits`]: group commit for hits of new jobs: one read and one write per batch.
//! - [`derived`]: which job a body without a job id stands for now.
//! - [`credits`]: monthly balances and the per-job ledger.
//! - [`leases`]: who may generate a key right now (single flight across processes).
//! - [`stats`]: counters and rollups behind `GET /api/cache/stats`.
//! - [`analytics`]: the rollups behind `GET /api/analytics/…`, the dashboard and `report`.
//! - [`experiments`]: the per-arm rollups of A/B tests, behind `GET /api/experiments/…`.
//! - [`cleanup`]: the cleanup's batches and its single-replica lock.
//! - [`refunds`]: the refund sweep's batches: charges whose job will never finish.
//! - [`warm`]: cache warming's entries and the request history.
//! - [`variants`]: a key's images by variant (`cache.variants`), variant 0 in [`cache`].
//! - [`warm_batches`]: the OpenAI batches warming submitted, line by line, until handled.
//! - [`preferences`]: users' stored cache preferences.
//! - [`bypass`]: the images of `bypass` jobs, which are never cache entries.

pub mod advisory;
pub mod analytics;
pub mod bypass;
pub mod cache;
pub mod cleanup;
pub mod credits;
pub mod derived;
pub mod experiments;
pub mod hits;
pub mod jobs;
pub mod leases;
pub mod models;
pub mod preferences;
pub mod refunds;
pub mod stats;
pub mod variants;
pub mod warm;
pub mod warm_batches;

use std::time::Duration;

use secrecy::ExposeSecret;
use sqlx::migrate::MigrateDatabase;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{Connection, PgPool, Postgres};

use crate::config::DatabaseSettings;

/// A database failure. [`DbError::retryable`] tells whether trying again can help: a retryable one
/// sends the job back to the queue (the broker's delivery limit bounds how often; an outage
/// pauses consuming instead), any other is answered at once as `internal`.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// A query or connection failed.
    #[error("database: {0}")]
    Sqlx(#[from] sqlx::Error),
    /// Running the migrations failed.
    #[error("database: migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// Stored data does not convert to or from its form in the table (a result that does not
    /// (de)serialize, an unexpected row).
    #[error("database: stored data is unreadable: {0}")]
    Corrupt(String),
    /// This delivery's claim on the job expired and another delivery took it over (or finished
    /// it): this one must not record or publish a result of its own.
    #[error("database: the claim on job {0} was lost to another delivery")]
    LostClaim(crate::job::JobId),
}

/// How long a delivery that lost its job's claim waits before it is handed back: by then the new
/// owner has usually finished, and the redelivery is answered from its record.
const AFTER_LOST_CLAIM: Duration = Duration::from_millis(500);

impl DbError {
    /// How long to wait before the retry, where the failure knows better than the default pause.
    pub(crate) fn retry_after(&self) -> Option<Duration> {
        match self {
            DbError::LostClaim(_) => Some(AFTER_LOST_CLAIM),
            _ => None,
        }
    }

    /// Whether the failure is the database being out of reach rather than a query at fault.
    pub(crate) fn is_connectivity(&self) -> bool {
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

impl DbError {
    /// Whether trying the same thing again later can succeed: the database out of reach, a
    /// serialization failure or deadlock, a lock or statement timeout, a server short of
    /// resources, a read-only server mid-failover. A row that cannot be read, a statement the
    /// database refuses or a failed migration stay the same however often they are retried.
    pub fn retryable(&self) -> bool {
        if self.is_connectivity() {
            return true;
        }
        match self {
            // Another delivery owns the job now; its answer is recorded soon.
            DbError::LostClaim(_) => true,
            DbError::Sqlx(sqlx::Error::Database(db)) => db.code().is_some_and(|code| {
                // 40: transaction rollback (serialization, deadlock); 53: insufficient
                // resources; 55P03: lock_not_available; 57014: query_canceled (timeouts);
                // 25006: read_only_sql_transaction (a failover in progress).
                code.starts_with("40")
                    || code.starts_with("53")
                    || code == "55P03"
                    || code == "57014"
                    || code == "25006"
            }),
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
        .connect_with(options.application_name("memoji-worker").options([
            ("synchronous_commit", settings.synchronous_commit.clone()),
            // A statement stuck behind a lock, or running away, fails (and its job is retried)
            // instead of stalling the job forever. 0 switches a limit off.
            (
                "statement_timeout",
                settings.statement_timeout_ms.to_string(),
            ),
            ("lock_timeout", settings.lock_timeout_ms.to_string()),
        ]))
        .await?;
    Ok(pool)
}

/// Runs the migrations in `migrations/`; replicas starting together wait on sqlx's migration lock,
/// on a connection without the job path's statement and lock timeouts (a migration may take long,
/// and so may the wait for another replica's).
pub async fn migrate(pool: &PgPool) -> Result<(), DbError> {
    let mut conn = pool.acquire().await?;
    sqlx::raw_sql("SET statement_timeout = 0; SET lock_timeout = 0")
        .execute(&mut *conn)
        .await?;
    sqlx::migrate!("./migrations").run(&mut *conn).await?;
    // Back to the connection's configured limits before it returns to the pool.
    sqlx::raw_sql("RESET statement_timeout; RESET lock_timeout")
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Is the database answering?
pub(crate) async fn ping(pool: &PgPool) -> bool {
    sqlx::query("SELECT 1").execute(pool).await.is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_failures_that_can_pass_are_retryable() {
        assert!(DbError::Sqlx(sqlx::Error::PoolTimedOut).retryable());
        assert!(DbError::Sqlx(sqlx::Error::PoolTimedOut).is_connectivity());
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        assert!(DbError::Sqlx(sqlx::Error::Io(reset)).retryable());
        assert!(!DbError::Corrupt("job 1: missing field".to_owned()).retryable());
        assert!(!DbError::Sqlx(sqlx::Error::RowNotFound).retryable());
        assert!(!DbError::Sqlx(sqlx::Error::ColumnNotFound("x".to_owned())).retryable());
        let id = crate::job::JobId(uuid::Uuid::nil());
        assert!(DbError::LostClaim(id).retryable());
        assert!(!DbError::LostClaim(id).is_connectivity());
        assert_eq!(DbError::LostClaim(id).retry_after(), Some(AFTER_LOST_CLAIM));
    }
}
