//! Why a step of a job's journey did not produce a result, typed where it is born.

use std::time::Duration;

use crate::db::DbError;
use crate::job::ErrorCode;

/// Worth another delivery, or never.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    /// Cannot finish now but may later: the delivery goes back to the queue, after `after` if
    /// the cause knows how long (else a pause growing with the deliveries).
    #[error("{cause}")]
    Retry {
        cause: String,
        after: Option<Duration>,
    },
    /// The database is out of reach: the delivery goes back to the queue, and the worker stops
    /// consuming until the database answers again ([`super::outage`]), so a long outage does not
    /// spend the job's delivery budget.
    #[error("{0}")]
    Unreachable(String),
    /// Will not work however often it is tried (a stored row that cannot be read, a statement
    /// the database refuses): the job is answered with `code` at once.
    #[error("{cause}")]
    Permanent { code: ErrorCode, cause: String },
}

impl StepError {
    pub(crate) fn retry(cause: impl Into<String>) -> StepError {
        StepError::Retry {
            cause: cause.into(),
            after: None,
        }
    }
}

impl From<DbError> for StepError {
    fn from(error: DbError) -> StepError {
        if error.is_connectivity() {
            StepError::Unreachable(error.to_string())
        } else if error.retryable() {
            StepError::Retry {
                after: error.retry_after(),
                cause: error.to_string(),
            }
        } else {
            StepError::Permanent {
                code: ErrorCode::Internal,
                cause: error.to_string(),
            }
        }
    }
}
