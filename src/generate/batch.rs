//! OpenAI's Batch API for `/v1/images/generations` (`memoji-worker warm --batch`): half the
//! price ([`pricing::batch_cost`]), answers within 24 hours.
//!
//! A batch is a JSONL file of requests uploaded with `POST /v1/files` (multipart, purpose
//! `batch`), each line `{custom_id, method: "POST", url: "/v1/images/generations", body}` with
//! the very body the live client sends ([`super::openai`]); `POST /v1/batches` creates the batch,
//! `GET /v1/batches/{id}` tells how far it is, and `GET /v1/files/{id}/content` downloads its
//! output and error files, read here one line at a time (a line holds a whole base64 image, so a
//! file is never held in memory at once).
//!
//! This client sits beside the live one and shares its parts: the HTTP client, the bearer
//! header, the classification of answers (what is worth retrying: 429 except an exhausted quota,
//! 408/409, 5xx, timeouts, connection errors, with backoff and `Retry-After`), the image checks
//! (base64, scaling to the asked size) and the redaction: the API key is sent only in the
//! Authorization header and never appears in an error.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio::time::Instant;

use super::openai::{self, AttemptError, ErrorBody, FinalError, ImagesResponse};
use super::{GenerateError, Usage, pricing};
use crate::config::{OpenAiSettings, PriceSettings};
use crate::job::{AvatarConfig, Plan};

/// The endpoint every line of a warming batch calls.
pub(crate) const IMAGES_ENDPOINT: &str = "/v1/images/generations";
/// The only completion window OpenAI offers.
pub(crate) const COMPLETION_WINDOW: &str = "24h";

/// Why a Batch API request failed, after the retries worth making.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum BatchError {
    /// OpenAI refused or could not be reached; `retryable`: trying again later may help.
    #[error("OpenAI Batch API: {message}")]
    Api {
        /// What went wrong (redacted: never the key).
        message: String,
        /// Whether trying again later may help.
        retryable: bool,
    },
    /// OpenAI answered something this client cannot read.
    #[error("OpenAI Batch API: unreadable answer: {0}")]
    Unreadable(String),
}

impl BatchError {
    /// Whether the same request may succeed later.
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            BatchError::Api {
                retryable: true,
                ..
            }
        )
    }
}

/// A batch's status, as OpenAI names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchStatus {
    /// `validating`: OpenAI is checking the input file.
    Validating,
    /// `in_progress`: lines are being answered.
    InProgress,
    /// `finalizing`: the output file is being prepared.
    Finalizing,
    /// `completed`: the output (and error) file is ready.
    Completed,
    /// `failed`: OpenAI failed the batch as a whole (see [`Batch::errors`]).
    Failed,
    /// `expired`: the completion window passed before every line was answered.
    Expired,
    /// `cancelling`: a cancel is under way.
    Cancelling,
    /// `cancelled`: the batch was cancelled.
    Cancelled,
    /// A status this client does not know: treated as still running.
    Other(String),
}

impl BatchStatus {
    /// Reads OpenAI's word for it.
    pub fn parse(text: &str) -> BatchStatus {
        match text {
            "validating" => BatchStatus::Validating,
            "in_progress" => BatchStatus::InProgress,
            "finalizing" => BatchStatus::Finalizing,
            "completed" => BatchStatus::Completed,
            "failed" => BatchStatus::Failed,
            "expired" => BatchStatus::Expired,
            "cancelling" => BatchStatus::Cancelling,
            "cancelled" => BatchStatus::Cancelled,
            other => BatchStatus::Other(other.to_owned()),
        }
    }

    /// OpenAI's word for it.
    pub fn as_str(&self) -> &str {
        match self {
            BatchStatus::Validating => "validating",
            BatchStatus::InProgress => "in_progress",
            BatchStatus::Finalizing => "finalizing",
            BatchStatus::Completed => "completed",
            BatchStatus::Failed => "failed",
            BatchStatus::Expired => "expired",
            BatchStatus::Cancelling => "cancelling",
            BatchStatus::Cancelled => "cancelled",
            BatchStatus::Other(other) => other,
        }
    }

    /// Whether OpenAI is done with it: completed, failed, expired or cancelled. (An expired or
    /// cancelled batch may still have answered part of its lines.)
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            BatchStatus::Completed
                | BatchStatus::Failed
                | BatchStatus::Expired
                | BatchStatus::Cancelled
        )
    }
}

/// How many lines a batch has answered so far.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestCounts {
    /// Lines in the batch.
    #[serde(default)]
    pub total: u64,
    /// Lines answered successfully.
    #[serde(default)]
    pub completed: u64,
    /// Lines that failed.
    #[serde(default)]
    pub failed: u64,
}

/// A batch as `GET /v1/batches/{id}` describes it.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    /// OpenAI's id (`batch_…`).
    pub id: String,
    /// Its status.
    pub status: BatchStatus,
    /// How many lines it has answered so far.
    pub request_counts: RequestCounts,
    /// The file of answered lines, once there is one.
    pub output_file_id: Option<String>,
    /// The file of failed lines, once there is one.
    pub error_file_id: Option<String>,
    /// Why OpenAI failed the batch as a whole (its `errors.data` messages), if it did.
    pub errors: Option<String>,
}

#[derive(Deserialize)]
struct BatchBody {
    id: String,
    status: String,
    #[serde(default)]
    request_counts: Option<RequestCounts>,
    #[serde(default)]
    output_file_id: Option<String>,
    #[serde(default)]
    error_file_id: Option<String>,
    #[serde(default)]
    errors: Option<BatchErrors>,
}

#[derive(Deserialize)]
struct BatchErrors {
    #[serde(default)]
    data: Vec<LineError>,
}

#[derive(Deserialize, Default)]
struct LineError {
    #[serde(default)]
    code: Option<String>,
    #[serde(default)]
    message: Option<String>,
}

/// One line of an output or error file.
#[derive(Deserialize)]
struct FileLine {
    custom_id: String,
    #[serde(default)]
    response: Option<LineResponse>,
    #[serde(default)]
    error: Option<LineError>,
}

#[derive(Deserialize)]
struct LineResponse {
    status_code: u16,
    #[serde(default)]
    body: Value,
}

/// What a batch answered for one line.
#[derive(Debug)]
pub struct Answered {
    /// The id the line was submitted under.
    pub custom_id: String,
    /// What came back for it.
    pub answer: Answer,
}

/// An answer: an images response (not yet decoded), or why the line failed.
#[derive(Debug)]
pub enum Answer {
    /// A 200: the images response, as the live API answers it.
    Image(Value),
    /// Why the line failed (redacted: never the key).
    Failed(String),
}

/// The Batch API client; see the module.
pub struct BatchClient {
    http: reqwest::Client,
    base_url: String,
    api_key: SecretString,
    settings: OpenAiSettings,
    prices: PriceSettings,
}

impl std::fmt::Debug for BatchClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchClient")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl BatchClient {
    /// A client for `settings.base_url`, with the live client's HTTP settings.
    pub fn new(
        settings: &OpenAiSettings,
        prices: &PriceSettings,
        api_key: SecretString,
    ) -> Result<BatchClient, reqwest::Error> {
        Ok(BatchClient {
            http: openai::http_client()?,
            base_url: settings.base_url.trim_end_matches('/').to_owned(),
            api_key,
            settings: settings.clone(),
            prices: prices.clone(),
        })
    }

    /// One line of a batch's input file: the live request's body under `custom_id`.
    pub fn line(&self, custom_id: &str, config: &AvatarConfig, plan: &Plan, user: &str) -> Value {
        json!({
            "custom_id": custom_id,
            "method": "POST",
            "url": IMAGES_ENDPOINT,
            "body": openai::request_body(&self.settings, config, plan, user),
        })
    }

    /// Uploads a batch's input file (`POST /v1/files`, purpose `batch`); returns its file id.
    pub async fn upload(&self, filename: &str, jsonl: Bytes) -> Result<String, BatchError> {
        let boundary = format!("memoji-{}", uuid::Uuid::new_v4().simple());
        let body = multipart(&boundary, filename, &jsonl);
        let url = format!("{}/files", self.base_url);
        let answer = self
            .send(|| {
                self.http
                    .post(&url)
                    .header(
                        reqwest::header::CONTENT_TYPE,
                        format!("multipart/form-data; boundary={boundary}"),
                    )
                    .body(body.clone())
            })
            .await?;
        let file: Value = read_json(answer, self.settings.max_response_bytes).await?;
        file["id"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| BatchError::Unreadable("the uploaded file has no id".to_owned()))
    }

    /// Creates the batch (`POST /v1/batches`) for an uploaded input file.
    pub async fn create(&self, input_file_id: &str, metadata: Value) -> Result<Batch, BatchError> {
        let url = format!("{}/batches", self.base_url);
        let body = json!({
            "input_file_id": input_file_id,
            "endpoint": IMAGES_ENDPOINT,
            "completion_window": COMPLETION_WINDOW,
            "metadata": metadata,
        });
        let answer = self.send(|| self.http.post(&url).json(&body)).await?;
        batch_of(read_json(answer, self.settings.max_response_bytes).await?)
    }

    /// How far a batch is (`GET /v1/batches/{id}`).
    pub async fn get(&self, batch_id: &str) -> Result<Batch, BatchError> {
        let url = format!("{}/batches/{batch_id}", self.base_url);
        let answer = self.send(|| self.http.get(&url)).await?;
        batch_of(read_json(answer, self.settings.max_response_bytes).await?)
    }

    /// A file's lines (`GET /v1/files/{id}/content`), read one at a time.
    pub async fn content(&self, file_id: &str) -> Result<FileLines, BatchError> {
        let url = format!("{}/files/{file_id}/content", self.base_url);
        let response = self.send(|| self.http.get(&url)).await?;
        Ok(FileLines {
            response,
            buffer: BytesMut::new(),
            limit: self.settings.max_response_bytes,
            done: false,
        })
    }

    /// Reads one line of an output or error file.
    pub fn answered(&self, line: &[u8]) -> Result<Answered, BatchError> {
        let line: FileLine = serde_json::from_slice(line)
            .map_err(|e| BatchError::Unreadable(format!("a line of a batch's file: {e}")))?;
        let answer = match (line.response, line.error) {
            (Some(response), _) if response.status_code == 200 => Answer::Image(response.body),
            (Some(response), _) => {
                let status = reqwest::StatusCode::from_u16(response.status_code)
                    .unwrap_or(reqwest::StatusCode::INTERNAL_SERVER_ERROR);
                let error = serde_json::from_value::<ErrorBody>(response.body)
                    .unwrap_or_default()
                    .error;
                let message =
                    match openai::classify(status, error, None, self.api_key.expose_secret(), "") {
                        AttemptError::Retry { message, .. } => message,
                        AttemptError::Final(FinalError::ContentPolicy(message)) => {
                            format!("refused by the content policy: {message}")
                        }
                        AttemptError::Final(
                            FinalError::BadImage(message) | FinalError::Failed { message, .. },
                        ) => message,
                    };
                Answer::Failed(message)
            }
            (None, Some(error)) => Answer::Failed(self.masked(&format!(
                "{}: {}",
                error.code.as_deref().unwrap_or("error"),
                error.message.as_deref().unwrap_or("no message")
            ))),
            (None, None) => Answer::Failed("the line has neither a response nor an error".into()),
        };
        Ok(Answered {
            custom_id: line.custom_id,
            answer,
        })
    }

    /// The image of a line's images response, checked as the live path checks it (base64, then
    /// scaled to the size the job asked for), with its cost at the batch price.
    pub async fn image(
        &self,
        body: Value,
        plan: &Plan,
    ) -> Result<(Bytes, Option<Usage>, f64), GenerateError> {
        let final_error = |error: FinalError| error.into_generate_error(1);
        let response: ImagesResponse =
            serde_json::from_value(body).map_err(|e| GenerateError::BadImage {
                message: format!("unreadable response from OpenAI: {e}"),
                attempts: 1,
            })?;
        let (png, usage) = openai::image_of(response).map_err(|error| match error {
            AttemptError::Final(error) => final_error(error),
            AttemptError::Retry { message, .. } => GenerateError::BadImage {
                message,
                attempts: 1,
            },
        })?;
        let png = openai::fit(png, plan.output).await.map_err(final_error)?;
        let cost = pricing::batch_cost(&self.prices, plan, usage.as_ref());
        Ok((png, usage, cost))
    }

    fn masked(&self, text: &str) -> String {
        let key = self.api_key.expose_secret();
        let text = if key.is_empty() {
            text.to_owned()
        } else {
            text.replace(key, "***")
        };
        crate::redact::text(&text).into_owned()
    }

    /// Sends a request (built anew for each attempt) with the bearer key, retrying what is worth
    /// retrying within `openai.max_attempts` and `openai.total_timeout_secs`.
    async fn send(
        &self,
        request: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<reqwest::Response, BatchError> {
        let deadline = Instant::now() + self.settings.total_timeout();
        let mut backoff = super::openai::backoff(&self.settings);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout = self.settings.request_timeout().min(remaining);
            let answer = self.attempt(&request, timeout).await;
            let (message, retry_after) = match answer {
                Ok(response) => return Ok(response),
                Err(AttemptError::Final(error)) => {
                    let (message, retryable) = match error {
                        FinalError::Failed { message, retryable } => (message, retryable),
                        FinalError::ContentPolicy(message) | FinalError::BadImage(message) => {
                            (message, false)
                        }
                    };
                    return Err(BatchError::Api { message, retryable });
                }
                Err(AttemptError::Retry {
                    message,
                    retry_after,
                }) => (self.masked(&message), retry_after),
            };
            let delay = backoff
                .next()
                .unwrap_or_default()
                .max(retry_after.unwrap_or_default());
            if attempts >= self.settings.max_attempts || Instant::now() + delay >= deadline {
                return Err(BatchError::Api {
                    message: format!("gave up after {attempts} attempt(s): {message}"),
                    retryable: true,
                });
            }
            tracing::warn!(attempt = attempts, delay_ms = delay.as_millis() as u64, %message, "OpenAI Batch API request failed; retrying");
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(
        &self,
        request: &impl Fn() -> reqwest::RequestBuilder,
        timeout: Duration,
    ) -> Result<reqwest::Response, AttemptError> {
        let response = request()
            .bearer_auth(self.api_key.expose_secret())
            .timeout(timeout)
            .send()
            .await
            .map_err(openai::transport)?;
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let retry_after = openai::retry_after(response.headers());
        let text = openai::read_capped(response, self.settings.max_response_bytes).await?;
        let error = serde_json::from_slice::<ErrorBody>(&text)
            .unwrap_or_default()
            .error;
        Err(openai::classify(
            status,
            error,
            retry_after,
            self.api_key.expose_secret(),
            "",
        ))
    }
}

/// A file's content, line by line; see [`BatchClient::content`].
pub struct FileLines {
    response: reqwest::Response,
    buffer: BytesMut,
    limit: usize,
    done: bool,
}

impl FileLines {
    /// The next non-empty line, `None` at the end. A line longer than `openai.max_response_bytes`
    /// is refused. A download cut off is a retryable error: the lines already handled stay done.
    pub async fn next_line(&mut self) -> Result<Option<Bytes>, BatchError> {
        loop {
            if let Some(end) = self.buffer.iter().position(|b| *b == b'\n') {
                let line = self.buffer.split_to(end + 1).freeze();
                let line = line.slice(..end);
                if line.iter().all(u8::is_ascii_whitespace) {
                    continue;
                }
                return Ok(Some(line));
            }
            if self.done {
                if self.buffer.iter().all(u8::is_ascii_whitespace) {
                    return Ok(None);
                }
                return Ok(Some(std::mem::take(&mut self.buffer).freeze()));
            }
            if self.buffer.len() > self.limit {
                return Err(BatchError::Api {
                    message: format!(
                        "a line of a batch's file is larger than openai.max_response_bytes ({} bytes)",
                        self.limit
                    ),
                    retryable: false,
                });
            }
            match self.response.chunk().await {
                Ok(Some(chunk)) => self.buffer.extend_from_slice(&chunk),
                Ok(None) => self.done = true,
                Err(error) => {
                    return Err(BatchError::Api {
                        message: format!("downloading a batch's file: {}", error.without_url()),
                        retryable: true,
                    });
                }
            }
        }
    }
}

fn batch_of(value: Value) -> Result<Batch, BatchError> {
    let body: BatchBody = serde_json::from_value(value)
        .map_err(|e| BatchError::Unreadable(format!("a batch: {e}")))?;
    let errors = body.errors.and_then(|errors| {
        let messages: Vec<String> = errors
            .data
            .into_iter()
            .map(|e| {
                format!(
                    "{}: {}",
                    e.code.unwrap_or_else(|| "error".to_owned()),
                    e.message.unwrap_or_default()
                )
            })
            .collect();
        (!messages.is_empty()).then(|| crate::redact::text(&messages.join("; ")).into_owned())
    });
    Ok(Batch {
        id: body.id,
        status: BatchStatus::parse(&body.status),
        request_counts: body.request_counts.unwrap_or_default(),
        output_file_id: body.output_file_id,
        error_file_id: body.error_file_id,
        errors,
    })
}

async fn read_json(response: reqwest::Response, limit: usize) -> Result<Value, BatchError> {
    let text = openai::read_capped(response, limit)
        .await
        .map_err(|error| match error {
            AttemptError::Retry { message, .. } => BatchError::Api {
                message,
                retryable: true,
            },
            AttemptError::Final(
                FinalError::Failed { message, .. }
                | FinalError::BadImage(message)
                | FinalError::ContentPolicy(message),
            ) => BatchError::Unreadable(message),
        })?;
    serde_json::from_slice(&text).map_err(|e| BatchError::Unreadable(e.to_string()))
}

/// A `multipart/form-data` body with the fields `purpose=batch` and `file` (the JSONL).
fn multipart(boundary: &str, filename: &str, jsonl: &[u8]) -> Bytes {
    let mut body = BytesMut::new();
    body.extend_from_slice(
        format!(
            "--{boundary}\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n\
             --{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"{filename}\"\r\n\
             Content-Type: application/jsonl\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(jsonl);
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    body.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Settings;

    const KEY: &str = "sk-test-abcdef123456";

    fn client() -> BatchClient {
        let defaults = Settings::defaults().unwrap();
        BatchClient::new(&defaults.openai, &defaults.prices, SecretString::from(KEY)).unwrap()
    }

    #[test]
    fn each_status_is_read_and_only_the_final_ones_end_the_polling() {
        let rows = [
            ("validating", false),
            ("in_progress", false),
            ("finalizing", false),
            ("completed", true),
            ("failed", true),
            ("expired", true),
            ("cancelling", false),
            ("cancelled", true),
            ("paused", false),
        ];
        for (text, terminal) in rows {
            let status = BatchStatus::parse(text);
            assert_eq!(status.as_str(), text);
            assert_eq!(status.is_terminal(), terminal, "{text}");
        }
    }

    #[test]
    fn lines_are_read_as_images_or_failures_without_the_key() {
        let client = client();
        let rows = [
            (
                json!({"custom_id": "a", "response": {"status_code": 200, "body": {"data": []}}, "error": null}),
                None,
            ),
            (
                json!({"custom_id": "b", "response": {"status_code": 400, "body": {"error": {"message": format!("bad {KEY}"), "code": null}}}, "error": null}),
                Some("400"),
            ),
            (
                json!({"custom_id": "c", "response": {"status_code": 400, "body": {"error": {"message": "Your request was rejected by the safety system.", "code": "moderation_blocked"}}}}),
                Some("content policy"),
            ),
            (
                json!({"custom_id": "d", "response": null, "error": {"code": "batch_expired", "message": "This request could not be executed before the completion window expired."}}),
                Some("batch_expired"),
            ),
            (
                json!({"custom_id": "e", "response": {"status_code": 401, "body": {"error": {"message": format!("Incorrect API key provided: {KEY}")}}}}),
                Some("rejected the API key"),
            ),
        ];
        for (line, failure) in rows {
            let answered = client.answered(line.to_string().as_bytes()).unwrap();
            assert_eq!(answered.custom_id, line["custom_id"]);
            match (answered.answer, failure) {
                (Answer::Image(_), None) => {}
                (Answer::Failed(message), Some(says)) => {
                    assert!(message.contains(says), "{message}");
                    assert!(!message.contains("abcdef123456"), "{message}");
                }
                (answer, _) => panic!("{line}: {answer:?}"),
            }
        }
        assert!(client.answered(b"not json").is_err());
        assert!(!format!("{client:?}").contains(KEY));
    }

    #[test]
    fn a_batch_body_is_read_with_its_counts_files_and_errors() {
        let batch = batch_of(json!({
            "id": "batch_1", "object": "batch", "status": "failed",
            "request_counts": {"total": 3, "completed": 1, "failed": 2},
            "output_file_id": null, "error_file_id": "file-e",
            "errors": {"object": "list", "data": [{"code": "invalid_json", "message": "line 2", "line": 2}]}
        }))
        .unwrap();
        assert_eq!(batch.status, BatchStatus::Failed);
        assert_eq!(batch.request_counts.failed, 2);
        assert_eq!(batch.error_file_id.as_deref(), Some("file-e"));
        assert_eq!(batch.errors.as_deref(), Some("invalid_json: line 2"));
    }

    #[test]
    fn the_upload_is_a_multipart_form_with_purpose_batch() {
        let body = multipart("B", "warm.jsonl", b"{}\n{}\n");
        let text = String::from_utf8(body.to_vec()).unwrap();
        assert!(text.starts_with(
            "--B\r\nContent-Disposition: form-data; name=\"purpose\"\r\n\r\nbatch\r\n--B\r\n"
        ));
        assert!(text.contains("filename=\"warm.jsonl\""));
        assert!(text.ends_with("{}\n{}\n\r\n--B--\r\n"));
    }
}
