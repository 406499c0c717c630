//! Credits (CONTRACT.md §6): a balance per user and month, and a ledger row per charged job.
//!
//! Charging inserts the job's ledger row and takes a credit from the balance in one transaction,
//! so a job is charged at most once however often it is delivered, and a balance never goes
//! below zero however many replicas charge at once.

use chrono::{Datelike, NaiveDate, Utc};
use sqlx::PgPool;

use super::DbError;
use crate::config::{Allowance, CreditSettings};
use crate::job::{JobId, Tier};

/// The period a charge counts against: the first day of the current UTC month.
pub(crate) fn current_period() -> NaiveDate {
    let today = Utc::now().date_naive();
    today.with_day(1).unwrap_or(today)
}

/// Credits left given an allowance and what was used; `None` for unlimited.
pub fn remaining(allowance: Allowance, used: i64) -> Option<i64> {
    match allowance {
        Allowance::Limited(limit) => Some((i64::from(limit) - used).max(0)),
        Allowance::Unlimited(_) => None,
    }
}

/// Credits a user of `tier` has left after using `used` this period; `None` where credits are
/// off or the tier is unlimited.
pub(crate) fn remaining_after(credits: &CreditSettings, tier: Tier, used: i64) -> Option<i64> {
    credits
        .enabled
        .then(|| remaining(tier.allowance(credits), used))
        .flatten()
}

/// The outcome of a charge.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Charge {
    /// One credit taken now, or earlier for this same job; `remaining` after it.
    Charged {
        /// Credits left this period; `None` for an unlimited allowance.
        remaining: Option<i64>,
    },
    /// Nothing left this period; nothing taken.
    OutOfCredits,
}

/// Who is charged, for which job, against which allowance.
#[derive(Debug, Clone, Copy)]
pub struct Account<'a> {
    /// The job the credit is for (charged at most once).
    pub job: JobId,
    /// The user charged.
    pub user_id: &'a str,
    /// The user's plan.
    pub tier: Tier,
    /// The plan's allowance this period.
    pub allowance: Allowance,
    /// The period charged against: the first day of its UTC month ([`current_period`]).
    pub period: NaiveDate,
}

/// Takes one credit for `account.job`, once.
pub async fn charge(pool: &PgPool, account: Account<'_>) -> Result<Charge, DbError> {
    let limit: Option<i32> = match account.allowance {
        Allowance::Limited(limit) => Some(i32::try_from(limit).unwrap_or(i32::MAX)),
        Allowance::Unlimited(_) => None,
    };
    let mut tx = pool.begin().await?;
    // The balance row for the month, created on first use; the tier's current allowance applies.
    sqlx::query(
        "INSERT INTO memoji_credit_balances (user_id, period, tier, allowance)
         VALUES ($1, $2, $3, $4)
         ON CONFLICT (user_id, period) DO UPDATE
            SET tier = EXCLUDED.tier, allowance = EXCLUDED.allowance
          WHERE (memoji_credit_balances.tier, memoji_credit_balances.allowance)
                IS DISTINCT FROM (EXCLUDED.tier, EXCLUDED.allowance)",
    )
    .bind(account.user_id)
    .bind(account.period)
    .bind(account.tier.as_str())
    .bind(limit)
    .execute(&mut *tx)
    .await?;
    // A job charged before (a redelivery) is not charged again.
    let first: Option<(uuid::Uuid,)> = sqlx::query_as(
        "INSERT INTO memoji_credit_ledger (job_id, user_id, period) VALUES ($1, $2, $3)
         ON CONFLICT (job_id) DO NOTHING RETURNING job_id",
    )
    .bind(account.job.0)
    .bind(account.user_id)
    .bind(account.period)
    .fetch_optional(&mut *tx)
    .await?;
    let used: Option<(i32,)> = if first.is_some() {
        sqlx::query_as(
            "UPDATE memoji_credit_balances SET used = used + 1, updated_at = now()
              WHERE user_id = $1 AND period = $2 AND (allowance IS NULL OR used < allowance)
             RETURNING used",
        )
    } else {
        sqlx::query_as("SELECT used FROM memoji_credit_balances WHERE user_id = $1 AND period = $2")
    }
    .bind(account.user_id)
    .bind(account.period)
    .fetch_optional(&mut *tx)
    .await?;
    match used {
        Some((used,)) => {
            tx.commit().await?;
            if first.is_some() {
                crate::telemetry::count_credit_charged();
            }
            Ok(Charge::Charged {
                remaining: remaining(account.allowance, i64::from(used)),
            })
        }
        None => {
            tx.rollback().await?;
            Ok(Charge::OutOfCredits)
        }
    }
}

/// Gives back the credit a job was charged, once; does nothing for a job that was not charged.
pub async fn refund(executor: impl sqlx::PgExecutor<'_>, job: JobId) -> Result<bool, DbError> {
    let refunded: Option<(i32,)> = sqlx::query_as(
        "WITH entry AS (
             UPDATE memoji_credit_ledger SET refunded_at = now()
              WHERE job_id = $1 AND refunded_at IS NULL
          RETURNING user_id, period)
         UPDATE memoji_credit_balances balance SET used = used - 1, updated_at = now()
           FROM entry
          WHERE balance.user_id = entry.user_id AND balance.period = entry.period AND balance.used > 0
         RETURNING balance.used",
    )
    .bind(job.0)
    .fetch_optional(executor)
    .await?;
    if refunded.is_some() {
        crate::telemetry::count_credit_refunded();
    }
    Ok(refunded.is_some())
}
