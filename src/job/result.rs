//! The result message every job ends in (CONTRACT.md §2.3), and the stable error codes.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize, Serializer};

use super::{Assignment, CacheKey, JobId};

/// Why a job failed. The strings are part of the contract: subscribers branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// `invalid_job`: the message is not a valid job; sending it again cannot help.
    InvalidJob,
    /// `out_of_credits`: the user had no credits left for a generation.
    OutOfCredits,
    /// `content_policy`: OpenAI refused the prompt.
    ContentPolicy,
    /// `generation_failed`: OpenAI could not make the image (errors, time-outs, an unknown model).
    GenerationFailed,
    /// `image_invalid`: OpenAI answered with something that is not a usable image.
    ImageInvalid,
    /// `storage_failed`: the image could not be stored.
    StorageFailed,
    /// `internal`: the worker itself failed (database, broker, a bug).
    Internal,
    /// An `only_if_cached` job whose key has no entry it may serve (none, too old, or being
    /// generated right now): never generated, never charged.
    NotCached,
}

impl ErrorCode {
    /// Every code, in declaration order.
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

    /// The code as the contract spells it (`invalid_job`, `out_of_credits`, …).
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
    /// Why the job failed.
    pub code: ErrorCode,
    #[serde(serialize_with = "masked")]
    /// What went wrong, in words; masked of secrets when serialized.
    pub message: String,
    /// Whether sending the job again (with a new job id) may succeed.
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
/// Whether a job succeeded or failed; serialized `succeeded` / `failed`.
pub enum Status {
    /// The job was answered with an image (`result.succeeded`).
    Succeeded,
    /// The job failed; the result's `error` says why (`result.failed`).
    Failed,
}

/// A job's result, field for field as CONTRACT.md §2.3 shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobResult {
    /// The job's id (also the result message's AMQP `message_id`).
    pub job_id: JobId,
    /// The user id as the job gave it.
    pub user_id: String,
    /// Succeeded or failed.
    pub status: Status,
    /// Whether the image came from the cache rather than a new generation.
    pub cached: bool,
    /// The job's cache key (hex SHA-256), `None` when it could not be computed (an invalid job).
    pub prompt_hash: Option<String>,
    /// The served image's URL; `None` on a failure.
    pub image_url: Option<String>,
    /// Where the served image is stored; `None` on a failure or for an entry imported without one.
    pub storage_path: Option<String>,
    /// Credits taken for this job (0 for a hit or a failure).
    pub credits_charged: u32,
    /// The user's credits left after this job; `None` where credits are off or unknown.
    pub credits_remaining: Option<i64>,
    /// What this job's generation cost, in US dollars (0 for a hit).
    pub cost_usd: f64,
    /// What a hit saved (the entry's generation cost), in US dollars.
    pub saved_usd: f64,
    /// Attempts made: 1 for a hit, the HTTP attempts of a generation, 0 for a failure that never
    /// called the model.
    pub attempts: u32,
    /// The model that made the served image (for a hit, the entry's; `None` for an entry imported
    /// without one), or on a failure the model that was called (`None` if none was).
    #[serde(default)]
    pub model: Option<String>,
    /// With variants (`cache.variants` > 1 for the job's user): which of the key's images a
    /// succeeded result serves, 0 being the key's `memoji_cache` entry. Absent otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub variant: Option<u32>,
    /// How long the worker took over the job, in milliseconds.
    pub duration_ms: u64,
    #[serde(serialize_with = "millis_utc")]
    /// When the result was made; serialized with milliseconds, as JavaScript's `toISOString`.
    pub completed_at: DateTime<Utc>,
    /// Why the job failed; `None` exactly when it succeeded.
    pub error: Option<JobError>,
    /// The A/B test the job's user is in (`[experiments.<name>]`, issue 15); absent when the
    /// user is in no arm, so a job outside every experiment keeps today's message.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub experiment: Option<String>,
    /// The arm of [`JobResult::experiment`] the user is in; present exactly when it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub arm: Option<String>,
}

/// Which arm of which experiment a job's user is in, as results, `job.completed` and the
/// per-arm rollups name it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ArmLabel {
    /// The experiment's name, as configured.
    pub experiment: String,
    /// The arm's name, as configured.
    pub arm: String,
}

impl ArmLabel {
    /// The label of an assignment (none for a user in no arm).
    pub fn of(assignment: Option<&Assignment>) -> Option<ArmLabel> {
        assignment.map(|a| ArmLabel {
            experiment: a.experiment.clone(),
            arm: a.arm.clone(),
        })
    }
}

/// `2026-11-24T14:03:07.512Z`, as JavaScript's `toISOString` writes it.
fn millis_utc<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::Millis, true))
}

/// The image a succeeded result serves: where it is and what made it.
#[derive(Debug, Clone, PartialEq)]
pub struct Image {
    /// The image's public URL.
    pub image_url: String,
    /// `None` for a cache row imported without one.
    pub storage_path: Option<String>,
    /// `None` for a cache row imported without one.
    pub model: Option<String>,
}

/// What a generation spent, for [`JobResult::generated`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spent {
    /// What the generation cost, in US dollars.
    pub cost_usd: f64,
    /// Generation attempts made.
    pub attempts: u32,
    /// Credits charged for it.
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
            variant: None,
            duration_ms: 0,
            completed_at: Utc::now(),
            error: None,
            experiment: None,
            arm: None,
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
            variant: None,
            duration_ms: 0,
            completed_at: Utc::now(),
            error: None,
            experiment: None,
            arm: None,
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
            variant: None,
            duration_ms: 0,
            completed_at: Utc::now(),
            error: Some(error),
            experiment: None,
            arm: None,
        }
    }

    /// The user's credits left after this job (`None` where credits are off or unknown).
    #[must_use]
    pub(crate) fn with_credits_remaining(mut self, remaining: Option<i64>) -> JobResult {
        self.credits_remaining = remaining;
        self
    }

    /// The generation attempts a failed job made, and the model they called (none if none was).
    #[must_use]
    pub(crate) fn with_attempts(mut self, attempts: u32, model: &str) -> JobResult {
        self.attempts = attempts;
        self.model = (attempts > 0).then(|| model.to_owned());
        self
    }

    /// Names the variant a succeeded result serves (`Pick::shown`: `None` without variants).
    #[must_use]
    pub(crate) fn with_variant(mut self, variant: Option<u32>) -> JobResult {
        if self.succeeded() {
            self.variant = variant;
        }
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

    /// Names the experiment and arm the job's user is in; `None` leaves the result as it is
    /// (a result recorded with its arm keeps it).
    #[must_use]
    pub(crate) fn in_arm(mut self, arm: Option<&ArmLabel>) -> JobResult {
        if let Some(arm) = arm {
            self.experiment = Some(arm.experiment.clone());
            self.arm = Some(arm.arm.clone());
        }
        self
    }

    /// The experiment and arm this result names, if any.
    pub(crate) fn arm_label(&self) -> Option<ArmLabel> {
        match (&self.experiment, &self.arm) {
            (Some(experiment), Some(arm)) => Some(ArmLabel {
                experiment: experiment.clone(),
                arm: arm.clone(),
            }),
            _ => None,
        }
    }

    /// The `invalid_job` answer to a job that broke a rule.
    pub fn invalid(job_id: JobId, user_id: &str, message: impl Into<String>) -> JobResult {
        let error = JobError::new(ErrorCode::InvalidJob, message, false);
        JobResult::failure(job_id, user_id, None, error)
    }

    /// Whether the job succeeded.
    pub fn succeeded(&self) -> bool {
        self.status == Status::Succeeded
    }

    /// The failure's error code; `None` for a succeeded job.
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
    fn a_result_names_its_arm_only_when_it_has_one() {
        let id = JobId(Uuid::nil());
        let plain = JobResult::invalid(id, "user-42", "bad");
        let text = serde_json::to_value(&plain).unwrap();
        assert!(text.get("experiment").is_none() && text.get("arm").is_none());
        assert_eq!(plain.clone().in_arm(None), plain);
        let arm = ArmLabel {
            experiment: "variety".to_owned(),
            arm: "three".to_owned(),
        };
        let labelled = plain.in_arm(Some(&arm));
        let value = serde_json::to_value(&labelled).unwrap();
        assert_eq!(
            (value["experiment"].as_str(), value["arm"].as_str()),
            (Some("variety"), Some("three"))
        );
        assert_eq!(labelled.arm_label(), Some(arm));
        let back: JobResult = serde_json::from_value(value).unwrap();
        assert_eq!(
            back.arm_label(),
            labelled.arm_label(),
            "read back from the job table"
        );
    }

    #[test]
    fn error_codes_are_the_contract_strings() {
        for code in ErrorCode::ALL {
            assert_eq!(serde_json::to_value(code).unwrap(), json!(code.as_str()));
        }
    }
}
