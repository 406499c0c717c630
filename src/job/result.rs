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
    /// An `only_if_cached` job whose key has no entry it may serve (none, too old, or being
    /// generated right now): never generated, never charged.
    NotCached,
}

impl ErrorCode {
    pub const ALL: [ErrorCode; 8] = [
        ErrorCode::InvalidJob,
        ErrorCode::OutOfCredits,
        ErrorCode::ContentPolicy,
        ErrorCode::GenerationFailed,
        ErrorCode::ImageInvalid,
        ErrorCode::StorageFailed,
        ErrorCode::Internal,
        ErrorCode::NotCached,
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
            ErrorCode::NotCached => "not_cached",
        }
    }
}

/// The `error` object of a failed result. `retryable` tells the publisher whether sending the job
/// again (with a new job id) may succeed.
///
/// The message is masked ([`crate::redact::text`]) when the error is made with [`JobError::new`]
/// and again whenever it is serialized, so no key or password quoted by an outside system (an
/// OpenAI 401 body, a connection error naming a URL) reaches a subscriber or the job table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobError {
    pub code: ErrorCode,
    #[serde(serialize_with = "masked")]
    pub message: String,
    pub retryable: bool,
}

impl JobError {
    /// An error whose message is masked already, so logging it is safe too.
    pub fn new(code: ErrorCode, message: impl Into<String>, retryable: bool) -> JobError {
        let message = message.into();
        let message = match crate::redact::text(&message) {
            std::borrow::Cow::Borrowed(_) => message,
            std::borrow::Cow::Owned(masked) => masked,
        };
        JobError {
            code,
            message,
            retryable,
        }
    }
}

fn masked<S: Serializer>(message: &str, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&crate::redact::text(message))
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

/// The image a succeeded result serves: where it is and what made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    pub image_url: String,
    /// `None` for a cache row imported without one.
    pub storage_path: Option<String>,
    /// `None` for a cache row imported without one.
    pub model: Option<String>,
}

/// What a generation spent, for [`JobResult::generated`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spent {
    pub cost_usd: f64,
    pub attempts: u32,
    pub credits_charged: u32,
}

impl JobResult {
    /// A hit: the cached image, nothing charged, the entry's generation cost saved.
    pub fn hit(
        job_id: JobId,
        user_id: &str,
        key: &CacheKey,
        image: Image,
        saved_usd: f64,
    ) -> JobResult {
        JobResult {
            job_id,
            user_id: user_id.to_owned(),
            status: Status::Succeeded,
            cached: true,
            prompt_hash: Some(key.to_string()),
            image_url: Some(image.image_url),
            storage_path: image.storage_path,
            credits_charged: 0,
            credits_remaining: None,
            cost_usd: 0.0,
            saved_usd,
            attempts: 1,
            model: image.model,
            duration_ms: 0,
            completed_at: Utc::now(),
            error: None,
        }
    }

    /// A miss generated and stored now.
    pub fn generated(
        job_id: JobId,
        user_id: &str,
        key: &CacheKey,
        image: Image,
        spent: Spent,
    ) -> JobResult {
        JobResult {
            job_id,
            user_id: user_id.to_owned(),
            status: Status::Succeeded,
            cached: false,
            prompt_hash: Some(key.to_string()),
            image_url: Some(image.image_url),
            storage_path: image.storage_path,
            credits_charged: spent.credits_charged,
            credits_remaining: None,
            cost_usd: spent.cost_usd,
            saved_usd: 0.0,
            attempts: spent.attempts,
            model: image.model,
            duration_ms: 0,
            completed_at: Utc::now(),
            error: None,
        }
    }

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

    /// The user's credits left after this job (`None` where credits are off or unknown).
    #[must_use]
    pub fn with_credits_remaining(mut self, remaining: Option<i64>) -> JobResult {
        self.credits_remaining = remaining;
        self
    }

    /// The generation attempts a failed job made, and the model they called (none if none was).
    #[must_use]
    pub fn with_attempts(mut self, attempts: u32, model: &str) -> JobResult {
        self.attempts = attempts;
        self.model = (attempts > 0).then(|| model.to_owned());
        self
    }

    /// Stamps how long the job took, from its delivery's start, and when it completed.
    #[must_use]
    pub fn took(mut self, started: tokio::time::Instant) -> JobResult {
        self.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.completed_at = Utc::now();
        self
    }

    /// The `not_cached` answer to an `only_if_cached` job that found no entry it may serve.
    /// Retryable: the same job sent again later may find the key cached.
    pub fn not_cached(job_id: JobId, user_id: &str, key: &CacheKey) -> JobResult {
        let message = "no cached image may serve this only_if_cached job; nothing was generated";
        let error = JobError::new(ErrorCode::NotCached, message, true);
        JobResult::failure(job_id, user_id, Some(key), error)
    }

    /// The `invalid_job` answer to a job that broke a rule.
    pub fn invalid(job_id: JobId, user_id: &str, message: impl Into<String>) -> JobResult {
        let error = JobError::new(ErrorCode::InvalidJob, message, false);
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
    fn no_key_or_password_reaches_a_result() {
        let key = "sk-proj-Zq8vN2xR4tY6uI0oP3aS5dF7gH9jK1lL";
        let body = format!(
            "OpenAI answered 401: {{\"error\":{{\"message\":\"Incorrect API key provided: {key}\"}}}}"
        );
        let id = JobId(Uuid::nil());
        // Made with the constructor: masked at birth, so a log line of it is safe too.
        let error = JobError::new(ErrorCode::GenerationFailed, body.clone(), false);
        assert!(!error.message.contains("Zq8vN2"), "{}", error.message);
        assert!(error.message.contains("Incorrect API key provided: sk-***"));
        // Built field by field (as older code does): masked when serialized.
        let raw = JobError {
            code: ErrorCode::StorageFailed,
            message: format!("{body} via postgres://memoji:hunter2@db/memoji?sslpassword=pw2"),
            retryable: true,
        };
        for error in [error, raw] {
            let result = JobResult::failure(id, "user-42", None, error);
            let text = serde_json::to_string(&result).unwrap();
            for secret in ["Zq8vN2", "hunter2", "pw2"] {
                assert!(!text.contains(secret), "{text}");
            }
        }
    }

    #[test]
    fn error_codes_are_the_contract_strings() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
    }
}
