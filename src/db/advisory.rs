//! Work that one replica at a time does (the cleanup, the scheduled warming): a Postgres
//! session-level advisory lock, held on a connection of its own.
//!
//! The connection is outside the pool, so the lock can never leak into a pooled connection.
//! Dropping the lock closes the connection, which releases it too; a crashed replica's lock is
//! released by Postgres when its connection goes. Advisory locks are per database, so replicas
//! sharing a database share the lock.

use sqlx::{Connection, PgConnection, PgPool};

use super::DbError;

/// A held lock; see the module.
pub struct AdvisoryLock {
    connection: PgConnection,
    key: i64,
}

/// Takes the lock `key` if no other process holds it; `None` if one does.
pub(crate) async fn try_lock(pool: &PgPool, key: i64) -> Result<Option<AdvisoryLock>, DbError> {
    let options = pool.connect_options();
    let mut connection = PgConnection::connect_with(&options).await?;
    let locked: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
        .bind(key)
        .fetch_one(&mut connection)
        .await?;
    if locked {
        Ok(Some(AdvisoryLock { connection, key }))
    } else {
        let _ = connection.close().await;
        Ok(None)
    }
}

impl AdvisoryLock {
    /// Releases the lock and closes its connection.
    pub async fn release(mut self) {
        let _ = sqlx::query("SELECT pg_advisory_unlock($1)")
            .bind(self.key)
            .execute(&mut self.connection)
            .await;
        let _ = self.connection.close().await;
    }
}
