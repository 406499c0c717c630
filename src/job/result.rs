//! The result message every job ends in (CONTRACT.md §2.3), and the stable error codes.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};

use super::{CacheKey, JobId};

/// Why a job failed. The strings are part of the contract: subscribers branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    InvalidJob,
    OutOfCredits,
    ContentPolicy,
    GenerationFailed,
    ImageInvalid,
    StorageFailed,
    Internal,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 7] = [
        ErrorCode::InvalidJob,
        ErrorCode::OutOfCredits,
        ErrorCode::ContentPolicy,
        ErrorCode::GenerationFailed,
        ErrorCode::ImageInvalid,
        ErrorCode::StorageFailed,
        ErrorCode::Internal,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::InvalidJob => "invalid_job",
            ErrorCode::OutOfCredits => "out_of_credits",
            ErrorCode::ContentPolicy => "content_policy",
            ErrorCode::GenerationFailed => "generation_failed",
            ErrorCode::ImageInvalid => "image_invalid",
            ErrorCode::StorageFailed => "storage_failed",
            ErrorCode::Internal => "internal",
        }
    }
}

/// The `error` object of a failed result. `retryable` tells the publisher whether sending the job
/// again (with a new job id) may succeed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: ErrorCode,
    pub message: String,
    pub retryable: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Succeeded,
    Failed,
}

/// A job's result, field for field as CONTRACT.md §2.3 shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    pub job_id: JobId,
    pub user_id: String,
    pub status: Status,
    pub cached: bool,
    pub prompt_hash: Option<String>,
    pub image_url: Option<String>,
    pub storage_path: Option<String>,
    pub credits_charged: u32,
    pub credits_remaining: Option<i64>,
    pub cost_usd: f64,
    pub saved_usd: f64,
    pub attempts: u32,
    /// The model that made the served image (for a hit, the entry's; `None` for an entry imported
    /// without one), or on a failure the model that was called (`None` if none was).
    #[serde(default)]
    pub model: Option<String>,
    pub duration_ms: u64,
    #[serde(serialize_with = "millis_utc")]
    pub completed_at: DateTime<Utc>,
    pub error: Option<JobError>,
}

/// `2026-11-24T14:03:07.512Z`, as JavaScript's `toISOString` writes it.
fn millis_utc<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

impl JobResult {
    /// A failed result; image fields empty, nothing charged.
    pub fn failure(
        job_id: JobId,
        user_id: &str,
        key: Option<&CacheKey>,
        error: JobError,
    ) -> JobResult {
        JobResult {
            job_id,
            user_id: user_id.to_owned(),
            status: Status::Failed,
            cached: false,
            prompt_hash: key.map(|k| k.to_string()),
            image_url: None,
            storage_path: None,
            credits_charged: 0,
            credits_remaining: None,
            cost_usd: 0.0,
            saved_usd: 0.0,
            attempts: 0,
            model: None,
            duration_ms: 0,
            completed_at: Utc::now(),
            error: Some(error),
        }
    }

    /// The `invalid_job` answer to a job that broke a rule.
    pub fn invalid(job_id: JobId, user_id: &str, message: impl Into<String>) -> JobResult {
        let error = JobError {
            code: ErrorCode::InvalidJob,
            message: message.into(),
            retryable: false,
        };
        JobResult::failure(job_id, user_id, None, error)
    }

    pub fn succeeded(&self) -> bool {
        self.status == Status::Succeeded
    }

    pub fn error_code(&self) -> Option<ErrorCode> {
        self.error.as_ref().map(|e| e.code)
    }

    /// The AMQP routing key on the result exchange.
    pub fn routing_key(&self) -> &'static str {
        match self.status {
            Status::Succeeded => "result.succeeded",
            Status::Failed => "result.failed",
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;
    use uuid::Uuid;

    use super::*;

    #[test]
    fn failure_serializes_with_every_contract_field() {
        let id = JobId(Uuid::nil());
        let mut result = JobResult::invalid(id, "user-42", "config.size \"3x3\" is not allowed");
        result.completed_at = DateTime::parse_from_rfc3339("2026-11-24T14:03:07.512345Z")
            .unwrap()
            .into();
        let value = serde_json::to_value(&result).unwrap();
        assert_eq!(
            value,
            json!({
                "job_id": "00000000-0000-0000-0000-000000000000", "user_id": "user-42",
                "status": "failed", "cached": false, "prompt_hash": null, "image_url": null,
                "storage_path": null, "credits_charged": 0, "credits_remaining": null,
                "cost_usd": 0.0, "saved_usd": 0.0, "attempts": 0, "model": null, "duration_ms": 0,
                "completed_at": "2026-11-24T14:03:07.512Z",
                "error": {"code": "invalid_job", "message": "config.size \"3x3\" is not allowed",
                          "retryable": false}
            })
        );
        assert_eq!(result.routing_key(), "result.failed");
    }

    #[test]
    fn error_codes_are_the_contract_strings() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
    }
}
