//! The test's database: counting rows, dropping it, and terminating its sessions as a failover
//! would.

use memoji_worker::config::Settings;
use secrecy::ExposeSecret;
use sqlx::PgPool;

use super::env::TestEnv;

impl TestEnv {
    /// Records `requests` requests for `config` (a job's `config`, as sent) `days_ago` days ago in
    /// the request history warming reads, under the key the worker computes for it; returns the
    /// key.
    pub async fn asked(&self, config: &serde_json::Value, days_ago: i32, requests: i32) -> String {
        let parsed = memoji_worker::job::AvatarConfig::normalize(config).unwrap();
        let key =
            memoji_worker::job::CacheKey::of(&parsed, memoji_worker::job::GeneratorKind::OpenAi);
        sqlx::query(
            "INSERT INTO memoji_request_history (day, prompt_hash, prompt_config, requests)
             VALUES (current_date - $1::int, $2, $3, $4)",
        )
        .bind(days_ago)
        .bind(key.as_str())
        .bind(config)
        .bind(requests)
        .execute(&self.db)
        .await
        .unwrap();
        key.as_str().to_owned()
    }

    /// Terminates every Postgres session on this environment's database, as a failover would.
    pub async fn terminate_database_sessions(&self) -> i64 {
        let url = self.settings.database.url.expose_secret().to_owned();
        let (server, name) = url.rsplit_once('/').unwrap();
        let admin = PgPool::connect(&format!("{server}/postgres"))
            .await
            .unwrap();
        let terminated: i64 = sqlx::query_scalar(
            "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
        )
        .bind(name)
        .fetch_one(&admin)
        .await
        .unwrap();
        admin.close().await;
        terminated
    }
}

/// Drops the test's database, and any database a test derived from its name
/// (`memoji_it_<id>_…`, such as one a failing CLI test should never have created).
pub async fn drop_database(settings: &Settings) {
    let url = settings.database.url.expose_secret().to_owned();
    let (server, name) = url.rsplit_once('/').unwrap();
    if let Ok(admin) = PgPool::connect(&format!("{server}/postgres")).await {
        let derived = format!("{}\\_%", name.replace('_', "\\_"));
        let names: Vec<String> = sqlx::query_scalar(
            "SELECT datname FROM pg_database WHERE datname = $1 OR datname LIKE $2",
        )
        .bind(name)
        .bind(&derived)
        .fetch_all(&admin)
        .await
        .unwrap_or_else(|_| vec![name.to_owned()]);
        for name in names {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&admin)
                .await;
        }
        admin.close().await;
    }
}

/// Rows in a table of the test's database.
pub async fn count(db: &PgPool, sql: &str) -> i64 {
    sqlx::query_scalar::<_, i64>(sql)
        .fetch_one(db)
        .await
        .unwrap()
}

/// The uses the cache entry of `hash` has counted.
pub async fn usage_count(db: &PgPool, hash: &str) -> i64 {
    sqlx::query_scalar("SELECT usage_count::bigint FROM memoji_cache WHERE prompt_hash = $1")
        .bind(hash)
        .fetch_one(db)
        .await
        .unwrap()
}
