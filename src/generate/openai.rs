//! OpenAI's Images API (`POST {base_url}/images/generations`) as it is today (CONTRACT.md §11),
//! with the retries worth making.
//!
//! The request names its model explicitly (the called model, a retired one's successor), asks for
//! `output_format: png`, `n: 1`, the configured `moderation`, and carries a `safety_identifier`
//! (a hash of the user id, never the id); it never sends `response_format`, which GPT image models
//! refuse. A size the called model cannot make is requested larger and scaled down here, so the
//! image always has the size the job asked for.
//!
//! 429 (except an exhausted quota), 408/409, 5xx, timeouts, connection errors and a body cut off
//! in transit are retried with exponential backoff and full jitter (backon), honouring
//! `Retry-After`/`retry-after-ms`, within `max_attempts` and `total_timeout`. Other 4xx are final:
//! a content-policy refusal becomes `content_policy`, and `404 model_not_found` names the model
//! and is counted. A response body is read up to `max_response_bytes`, never further. The API key
//! is sent only in the Authorization header and never appears in an error: OpenAI echoes part of a
//! wrong key in its 401 message, so that message is replaced, and anything shaped like a key is
//! masked in every other message.

use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{GenerateError, Generated, ImageGenerator, Usage, pricing, prompt_for};
use crate::config::{OpenAiSettings, PriceSettings};
use crate::job::{AvatarConfig, GeneratorKind, Plan};
use crate::telemetry;

/// Error codes OpenAI uses for requests its safety system refuses.
const CONTENT_POLICY_CODES: [&str; 2] = ["content_policy_violation", "moderation_blocked"];
/// 429 codes that waiting will not fix.
const QUOTA_CODES: [&str; 2] = ["insufficient_quota", "billing_hard_limit_reached"];
/// OpenAI's code for a model it does not serve (never existed, or shut down).
pub(crate) const MODEL_NOT_FOUND: &str = "model_not_found";

/// The live [`ImageGenerator`]: OpenAI's Images API, with retries (see the module). Its `Debug`
/// never shows the API key.
pub struct OpenAiGenerator {
    http: reqwest::Client,
    endpoint: String,
    api_key: SecretString,
    settings: OpenAiSettings,
    prices: PriceSettings,
}

impl std::fmt::Debug for OpenAiGenerator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OpenAiGenerator")
            .field("endpoint", &self.endpoint)
            .finish_non_exhaustive()
    }
}

/// One attempt's failure, before the retry decision.
pub(super) enum AttemptError {
    Retry {
        message: String,
        retry_after: Option<Duration>,
    },
    Final(FinalError),
}

pub(super) enum FinalError {
    ContentPolicy(String),
    BadImage(String),
    Failed { message: String, retryable: bool },
}

#[derive(Deserialize)]
pub(super) struct ImagesResponse {
    #[serde(default)]
    data: Vec<ImageData>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct ImageData {
    b64_json: Option<String>,
}

#[derive(Deserialize, Default)]
pub(crate) struct ErrorBody {
    #[serde(default)]
    pub(crate) error: ApiError,
}

#[derive(Deserialize, Default)]
pub(crate) struct ApiError {
    #[serde(default)]
    pub(crate) message: String,
    #[serde(default)]
    pub(crate) code: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

/// The stable, opaque id OpenAI gets for a user (`safety_identifier`): a hash, never the id.
pub fn safety_identifier(user: &str) -> String {
    hex::encode(&Sha256::digest(format!("memoji-worker:{user}").as_bytes())[..16])
}

/// A reqwest client for OpenAI: our user agent, a connect timeout.
pub(crate) fn http_client() -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(concat!("memoji-worker/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(Duration::from_secs(10))
        .build()
}

impl OpenAiGenerator {
    /// A generator calling `{base_url}/images/generations` with `api_key`; fails only if the HTTP
    /// client cannot be built.
    pub fn new(
        settings: &OpenAiSettings,
        prices: &PriceSettings,
        api_key: SecretString,
    ) -> Result<OpenAiGenerator, reqwest::Error> {
        Ok(OpenAiGenerator {
            http: http_client()?,
            endpoint: format!(
                "{}/images/generations",
                settings.base_url.trim_end_matches('/')
            ),
            api_key,
            settings: settings.clone(),
            prices: prices.clone(),
        })
    }

    /// The request body (CONTRACT.md §11).
    fn body(&self, config: &AvatarConfig, plan: &Plan, user: &str) -> Value {
        request_body(&self.settings, config, plan, user)
    }

    #[tracing::instrument(
        name = "openai request",
        level = "debug",
        skip_all,
        fields(otel.kind = "client", http.response.status_code = tracing::field::Empty)
    )]
    async fn attempt(
        &self,
        body: &Value,
        timeout: Duration,
    ) -> Result<(Bytes, Option<Usage>), AttemptError> {
        let response = self
            .http
            .post(&self.endpoint)
            .bearer_auth(self.api_key.expose_secret())
            .timeout(timeout)
            .json(body)
            .send()
            .await
            .map_err(transport)?;
        let status = response.status();
        tracing::Span::current().record("http.response.status_code", status.as_u16());
        let retry_after = retry_after(response.headers());
        let text = read_capped(response, self.settings.max_response_bytes).await?;
        let model = body["model"].as_str().unwrap_or_default();
        judge(
            status,
            retry_after,
            &text,
            self.api_key.expose_secret(),
            model,
        )
    }
}

/// The body of `POST /v1/images/generations` (CONTRACT.md §11), as the live client sends it and
/// as each line of a batch carries it.
pub(super) fn request_body(
    settings: &OpenAiSettings,
    config: &AvatarConfig,
    plan: &Plan,
    user: &str,
) -> Value {
    let mut body = json!({
        "model": plan.called.name(),
        "prompt": prompt_for(config),
        "n": 1,
        "size": plan.request_size,
        "output_format": "png",
        "moderation": settings.moderation,
        "safety_identifier": safety_identifier(user),
    });
    for (field, value) in [
        ("quality", &plan.quality),
        ("background", &plan.background),
        ("complexity", &plan.complexity),
    ] {
        if let Some(value) = value {
            body[field] = json!(value);
        }
    }
    body
}

/// What one whole answer means: the image, or why not and whether another attempt may help.
fn judge(
    status: StatusCode,
    retry_after: Option<Duration>,
    text: &[u8],
    api_key: &str,
    model: &str,
) -> Result<(Bytes, Option<Usage>), AttemptError> {
    if status.is_success() {
        return decode(text);
    }
    let error = serde_json::from_slice::<ErrorBody>(text)
        .unwrap_or_default()
        .error;
    Err(classify(status, error, retry_after, api_key, model))
}

#[async_trait]
impl ImageGenerator for OpenAiGenerator {
    fn kind(&self) -> GeneratorKind {
        GeneratorKind::OpenAi
    }

    fn model_name(&self, plan: &Plan) -> &'static str {
        plan.called.name()
    }

    #[tracing::instrument(name = "openai generate", level = "debug", skip_all, fields(model = plan.called.name()))]
    async fn generate(
        &self,
        config: &AvatarConfig,
        plan: &Plan,
        user: &str,
    ) -> Result<Generated, GenerateError> {
        let body = self.body(config, plan, user);
        let deadline = Instant::now() + self.settings.total_timeout();
        let mut backoff = backoff(&self.settings);
        let mut attempts = 0;
        loop {
            attempts += 1;
            let remaining = deadline.saturating_duration_since(Instant::now());
            let timeout = self.settings.request_timeout().min(remaining);
            let answer = self.attempt(&body, timeout).await;
            telemetry::count_openai_request(match &answer {
                Ok(_) => "ok",
                Err(AttemptError::Final(_)) => "final_error",
                Err(AttemptError::Retry { .. }) => "retryable_error",
            });
            let (message, retry_after) = match answer {
                Ok((png, usage)) => {
                    let png = fit(png, plan.output)
                        .await
                        .map_err(|e| e.into_generate_error(attempts))?;
                    let cost_usd = pricing::cost(&self.prices, plan, usage.as_ref());
                    return Ok(Generated {
                        png,
                        attempts,
                        cost_usd,
                        usage,
                    });
                }
                Err(AttemptError::Final(error)) => return Err(error.into_generate_error(attempts)),
                Err(AttemptError::Retry {
                    message,
                    retry_after,
                }) => (crate::redact::text(&message).into_owned(), retry_after),
            };
            let delay = backoff
                .next()
                .unwrap_or_default()
                .max(retry_after.unwrap_or_default());
            let out_of_budget = Instant::now() + delay >= deadline;
            if attempts >= self.settings.max_attempts || out_of_budget {
                return Err(GenerateError::Failed {
                    message: format!("gave up after {attempts} attempt(s): {message}"),
                    retryable: true,
                    attempts,
                });
            }
            tracing::warn!(attempt = attempts, delay_ms = delay.as_millis() as u64, %message, "OpenAI attempt failed; retrying");
            telemetry::count_openai_retry();
            tokio::time::sleep(delay).await;
        }
    }
}

impl FinalError {
    pub(super) fn into_generate_error(self, attempts: u32) -> GenerateError {
        match self {
            FinalError::ContentPolicy(message) => {
                GenerateError::ContentPolicy { message, attempts }
            }
            FinalError::BadImage(message) => GenerateError::BadImage { message, attempts },
            FinalError::Failed { message, retryable } => GenerateError::Failed {
                message,
                retryable,
                attempts,
            },
        }
    }
}

pub(super) fn transport(error: reqwest::Error) -> AttemptError {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else if error.is_body() || error.is_decode() {
        "response cut off"
    } else {
        "transport error"
    };
    // Without the URL: it is not secret, but it is noise in a result message.
    AttemptError::Retry {
        message: format!("OpenAI {what}: {}", error.without_url()),
        retry_after: None,
    }
}

/// Reads a response body, refusing one larger than `limit` as soon as it says so or grows past
/// it, so a huge or endless body never sits in memory.
pub(super) async fn read_capped(
    mut response: reqwest::Response,
    limit: usize,
) -> Result<Bytes, AttemptError> {
    let too_large = || {
        AttemptError::Final(FinalError::BadImage(format!(
            "OpenAI's response is larger than openai.max_response_bytes ({limit} bytes)"
        )))
    };
    if response
        .content_length()
        .is_some_and(|length| length > limit as u64)
    {
        return Err(too_large());
    }
    let mut body = BytesMut::new();
    while let Some(chunk) = response.chunk().await.map_err(transport)? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

fn decode(body: &[u8]) -> Result<(Bytes, Option<Usage>), AttemptError> {
    let response: ImagesResponse = serde_json::from_slice(body).map_err(|e| {
        if e.is_eof() {
            // The body ended mid-document: the connection was cut, the image never arrived.
            AttemptError::Retry {
                message: format!("OpenAI response cut off after {} bytes", body.len()),
                retry_after: None,
            }
        } else {
            AttemptError::Final(FinalError::BadImage(format!(
                "unreadable response from OpenAI: {e}"
            )))
        }
    })?;
    image_of(response)
}

/// The image (and usage) of an images response, decoded from base64.
pub(super) fn image_of(response: ImagesResponse) -> Result<(Bytes, Option<Usage>), AttemptError> {
    let b64 = response
        .data
        .into_iter()
        .find_map(|d| d.b64_json)
        .ok_or_else(|| {
            AttemptError::Final(FinalError::BadImage(
                "OpenAI returned no b64_json image".to_owned(),
            ))
        })?;
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| {
            AttemptError::Final(FinalError::BadImage(format!(
                "OpenAI's image is not valid base64: {e}"
            )))
        })?;
    Ok((Bytes::from(png), response.usage))
}

/// The image at the size the job asked for: as it came when it has that size (or the job said
/// `auto`), else scaled to it (dall-e-2's 256x256, made at 1024x1024).
pub(super) async fn fit(png: Bytes, output: Option<(u32, u32)>) -> Result<Bytes, FinalError> {
    let Some((width, height)) = output else {
        return Ok(png);
    };
    let bad = |e: String| FinalError::BadImage(format!("OpenAI's image cannot be scaled: {e}"));
    // What is not a PNG is left to the storage check, which refuses it as every other bad image.
    match crate::storage::check_png(&png) {
        Ok(size) if size != (width, height) => {}
        _ => return Ok(png),
    }
    tokio::task::spawn_blocking(move || super::resize::png_to(&png, width, height))
        .await
        .map_err(|e| bad(e.to_string()))?
        .map_err(|e| bad(e.to_string()))
}

pub(super) fn classify(
    status: StatusCode,
    error: ApiError,
    retry_after: Option<Duration>,
    api_key: &str,
    model: &str,
) -> AttemptError {
    let code = error.code.as_deref().unwrap_or_default();
    let message = if status == StatusCode::UNAUTHORIZED {
        "OpenAI rejected the API key (401)".to_owned()
    } else if code == MODEL_NOT_FOUND {
        telemetry::count_model_not_found(model);
        format!(
            "OpenAI does not serve the model {model} (404 model_not_found): it may have been shut down; set openai.successors"
        )
    } else {
        let text = if error.message.is_empty() {
            "no message"
        } else {
            error.message.as_str()
        };
        let text = if api_key.is_empty() {
            text.to_owned()
        } else {
            text.replace(api_key, "***")
        };
        format!(
            "OpenAI answered {}: {}",
            status.as_u16(),
            crate::redact::text(&text)
        )
    };
    let content_policy = CONTENT_POLICY_CODES.contains(&code)
        || (error.kind.as_deref() == Some("image_generation_user_error")
            && error.message.contains("safety"));
    match status.as_u16() {
        400 if content_policy => AttemptError::Final(FinalError::ContentPolicy(message)),
        429 if QUOTA_CODES.contains(&code) => AttemptError::Final(FinalError::Failed {
            message,
            retryable: false,
        }),
        408 | 409 | 429 | 500..=599 => AttemptError::Retry {
            message,
            retry_after,
        },
        _ => AttemptError::Final(FinalError::Failed {
            message,
            retryable: false,
        }),
    }
}

/// `retry-after-ms` (OpenAI's), else `Retry-After` in seconds or as an HTTP date.
pub(super) fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    if let Some(ms) = text("retry-after-ms").and_then(|v| v.parse::<f64>().ok()) {
        return Duration::try_from_secs_f64(ms / 1000.0).ok();
    }
    let value = text("retry-after")?;
    if let Ok(seconds) = value.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).ok();
    }
    let at = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    (at.with_timezone(&chrono::Utc) - chrono::Utc::now())
        .to_std()
        .ok()
}

/// The retry schedule of a call to OpenAI (the live client's and the Batch API's): jittered
/// exponential delays from `openai.backoff_min_ms` to `openai.backoff_max_ms`, with no cap on the
/// number of tries — the caller's deadline (`openai.total_timeout_secs`) and attempts decide.
pub(crate) fn backoff(settings: &OpenAiSettings) -> backon::ExponentialBackoff {
    ExponentialBuilder::default()
        .with_min_delay(Duration::from_millis(settings.backoff_min_ms))
        .with_max_delay(Duration::from_millis(settings.backoff_max_ms))
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use serde_json::json;
    use wiremock::matchers::{body_partial_json, header, method, path};
    use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

    use super::*;
    use crate::config::Settings;
    use crate::job::ModelRules;

    const KEY: &str = "sk-test-abcdef123456";

    fn png_b64() -> String {
        let config = AvatarConfig::parse(&json!({})).unwrap();
        base64::engine::general_purpose::STANDARD
            .encode(super::super::placeholder::draw(&config).unwrap())
    }

    fn ok_body() -> Value {
        json!({"created": 1, "data": [{"b64_json": png_b64()}],
               "usage": {"input_tokens": 50, "output_tokens": 1056, "total_tokens": 1106,
                         "input_tokens_details": {"text_tokens": 50, "image_tokens": 0}}})
    }

    fn error_body(message: &str, code: Option<&str>) -> Value {
        json!({"error": {"message": message, "type": "invalid_request_error", "code": code, "param": null}})
    }

    fn settings_for(base: &str, tweak: impl FnOnce(&mut OpenAiSettings)) -> OpenAiGenerator {
        let defaults = Settings::defaults().unwrap();
        let mut settings = defaults.openai;
        settings.base_url = format!("{base}/v1");
        settings.backoff_min_ms = 10;
        settings.backoff_max_ms = 50;
        tweak(&mut settings);
        OpenAiGenerator::new(&settings, &defaults.prices, SecretString::from(KEY)).unwrap()
    }

    async fn generator(
        server: &MockServer,
        tweak: impl FnOnce(&mut OpenAiSettings),
    ) -> OpenAiGenerator {
        settings_for(&server.uri(), tweak)
    }

    /// Generates the job `config` with default model rules.
    async fn run(generator: &OpenAiGenerator, config: Value) -> Result<Generated, GenerateError> {
        let config = AvatarConfig::parse(&config).unwrap();
        let plan = config.plan(&ModelRules::default()).unwrap();
        generator.generate(&config, &plan, "user-1").await
    }

    fn job() -> Value {
        json!({"hair": "long", "quality": "high"})
    }

    /// Answers with each template in turn, then repeats the last.
    struct Sequence {
        replies: Vec<ResponseTemplate>,
        calls: Arc<AtomicU32>,
    }

    impl Respond for Sequence {
        fn respond(&self, _: &Request) -> ResponseTemplate {
            let n = self.calls.fetch_add(1, Ordering::SeqCst) as usize;
            self.replies[n.min(self.replies.len() - 1)].clone()
        }
    }

    async fn sequence(server: &MockServer, replies: Vec<ResponseTemplate>) -> Arc<AtomicU32> {
        let calls = Arc::new(AtomicU32::new(0));
        Mock::given(method("POST"))
            .and(path("/v1/images/generations"))
            .respond_with(Sequence {
                replies,
                calls: calls.clone(),
            })
            .mount(server)
            .await;
        calls
    }

    async fn request_body(server: &MockServer) -> Value {
        server.received_requests().await.unwrap()[0]
            .body_json()
            .unwrap()
    }

    #[tokio::test]
    async fn a_seed_job_asks_the_successor_with_todays_parameters() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/images/generations"))
            .and(header("authorization", format!("Bearer {KEY}").as_str()))
            .and(body_partial_json(json!({
                "model": "gpt-image-2.6-flare", "size": "1024x1024", "n": 1, "quality": "high",
                "output_format": "png", "moderation": "auto"
            })))
            .respond_with(ResponseTemplate::new(200).set_body_json(ok_body()))
            .expect(1)
            .mount(&server)
            .await;
        let generator = generator(&server, |_| {}).await;
        assert!(!format!("{generator:?}").contains(KEY), "{generator:?}");
        let generated = run(&generator, job()).await.unwrap();
        assert!(crate::storage::check_png(&generated.png).is_ok());
        assert_eq!(generated.attempts, 1);
        assert_eq!(generated.usage.map(|u| u.output_tokens), Some(1056));
        assert!((generated.cost_usd - (50.0 * 5e-6 + 1056.0 * 30e-6)).abs() < 1e-12);
        let body = request_body(&server).await;
        for absent in ["response_format", "user", "background", "complexity"] {
            assert_eq!(body.get(absent), None, "{absent} in {body}");
        }
        let id = body["safety_identifier"].as_str().unwrap();
        assert_eq!(id, safety_identifier("user-1"));
        assert!(!id.contains("user-1") && id.len() == 32, "{id}");
    }

    /// Job → what the request says (and the size of the image the job gets).
    #[tokio::test]
    async fn each_job_is_asked_in_the_called_models_words() {
        type Row = (Value, &'static str, Value, (u32, u32));
        let rows: Vec<Row> = vec![
            (
                json!({"model": "gpt-image-2.6-sunburst", "size": "1024x1024",
                       "background": "transparent", "complexity": "high", "quality": "max"}),
                "low",
                json!({"model": "gpt-image-2.6-sunburst", "background": "transparent",
                       "complexity": "high", "quality": "max", "moderation": "low"}),
                (1024, 1024),
            ),
            // A retired model goes to its successor, in the successor's words.
            (
                json!({"model": "dall-e-3", "size": "1024x1024", "quality": "hd"}),
                "auto",
                json!({"model": "gpt-image-2.6-flare", "quality": "high"}),
                (1024, 1024),
            ),
            // A size the successor cannot make is made at 1024 and scaled down.
            (
                json!({"model": "dall-e-2", "size": "256x256"}),
                "auto",
                json!({"model": "gpt-image-2.6-flare", "size": "1024x1024"}),
                (256, 256),
            ),
        ];
        for (config, moderation, asked, size) in rows {
            let server = MockServer::start().await;
            sequence(
                &server,
                vec![ResponseTemplate::new(200).set_body_json(ok_body())],
            )
            .await;
            let generator = generator(&server, |s| s.moderation = moderation.into()).await;
            let generated = run(&generator, config.clone()).await.unwrap();
            let body = request_body(&server).await;
            for (field, value) in asked.as_object().unwrap() {
                assert_eq!(&body[field], value, "{field} for {config}: {body}");
            }
            assert_eq!(body.get("response_format"), None, "{config}");
            let made = crate::storage::check_png(&generated.png).unwrap();
            assert_eq!(made, size, "{config}");
        }
    }

    /// How one answer is taken, without a server: retried (after how long), final (as what), or
    /// an image. `attempt` reads the status, headers and body and hands them to `judge`.
    #[derive(Debug, PartialEq)]
    enum Class {
        Image,
        Retry(Option<Duration>),
        ContentPolicy,
        /// Final and not worth retrying.
        Permanent,
        BadImage,
    }

    fn class(answer: Result<(Bytes, Option<Usage>), AttemptError>) -> (Class, String) {
        match answer {
            Ok(_) => (Class::Image, String::new()),
            Err(AttemptError::Retry {
                message,
                retry_after,
            }) => (Class::Retry(retry_after), message),
            Err(AttemptError::Final(FinalError::ContentPolicy(message))) => {
                (Class::ContentPolicy, message)
            }
            Err(AttemptError::Final(FinalError::BadImage(message))) => (Class::BadImage, message),
            Err(AttemptError::Final(FinalError::Failed { message, retryable })) => {
                assert!(!retryable, "a final failure is never retryable: {message}");
                (Class::Permanent, message)
            }
        }
    }

    #[test]
    fn each_answer_is_classified_once() {
        let refused = "Your request was rejected by the safety system.";
        let json = |value: Value| value.to_string();
        let whole = json(ok_body());
        let ms = Duration::from_millis;
        // (status, headers, body, class, the message contains, the message never contains)
        type Row<'a> = (
            u16,
            Vec<(&'a str, &'a str)>,
            String,
            Class,
            &'a str,
            &'a str,
        );
        let rows: Vec<Row> = vec![
            (200, vec![], whole.clone(), Class::Image, "", ""),
            // Worth another attempt: rate limits, conflicts, timeouts, the server's errors…
            (
                429,
                vec![],
                json(error_body(
                    "Rate limit reached",
                    Some("rate_limit_exceeded"),
                )),
                Class::Retry(None),
                "429",
                "",
            ),
            (408, vec![], String::new(), Class::Retry(None), "408", ""),
            (409, vec![], String::new(), Class::Retry(None), "409", ""),
            (
                500,
                vec![],
                json(error_body("server error", None)),
                Class::Retry(None),
                "server error",
                "",
            ),
            (
                503,
                vec![],
                String::new(),
                Class::Retry(None),
                "no message",
                "",
            ),
            // …after the pause the answer asks for, in either form (OpenAI's own first).
            (
                429,
                vec![("retry-after", "2")],
                String::new(),
                Class::Retry(Some(ms(2000))),
                "",
                "",
            ),
            (
                503,
                vec![("retry-after", "0.5")],
                String::new(),
                Class::Retry(Some(ms(500))),
                "",
                "",
            ),
            (
                429,
                vec![("retry-after-ms", "250"), ("retry-after", "2")],
                String::new(),
                Class::Retry(Some(ms(250))),
                "",
                "",
            ),
            (
                429,
                vec![("retry-after", "soon")],
                String::new(),
                Class::Retry(None),
                "",
                "",
            ),
            // …and a body cut off in transit: the image never arrived.
            (
                200,
                vec![],
                whole[..whole.len() / 2].to_owned(),
                Class::Retry(None),
                "cut off",
                "",
            ),
            // Final: refusals by the safety system…
            (
                400,
                vec![],
                json(error_body(refused, Some("content_policy_violation"))),
                Class::ContentPolicy,
                "safety",
                "",
            ),
            (
                400,
                vec![],
                json(error_body(refused, Some("moderation_blocked"))),
                Class::ContentPolicy,
                "safety",
                "",
            ),
            (
                400,
                vec![],
                json(json!({"error": {"message": refused, "type": "image_generation_user_error"}})),
                Class::ContentPolicy,
                "safety",
                "",
            ),
            // …what waiting will not fix…
            (
                429,
                vec![("retry-after", "2")],
                json(error_body("quota", Some("insufficient_quota"))),
                Class::Permanent,
                "quota",
                "",
            ),
            (
                429,
                vec![],
                json(error_body("billing", Some("billing_hard_limit_reached"))),
                Class::Permanent,
                "billing",
                "",
            ),
            (
                400,
                vec![],
                json(error_body(
                    "Unknown parameter: 'response_format'.",
                    Some("unknown_parameter"),
                )),
                Class::Permanent,
                "response_format",
                "",
            ),
            (
                404,
                vec![],
                json(error_body(
                    "The model does not exist",
                    Some("model_not_found"),
                )),
                Class::Permanent,
                "gpt-image-2.6-flare (404 model_not_found)",
                "",
            ),
            (
                404,
                vec![],
                json(error_body("nope", None)),
                Class::Permanent,
                "404: nope",
                "",
            ),
            // …never echoing the key: OpenAI's 401 message is replaced, key shapes are masked.
            (
                401,
                vec![],
                json(error_body(
                    &format!("Incorrect API key provided: {KEY}"),
                    None,
                )),
                Class::Permanent,
                "rejected the API key",
                "sk-test",
            ),
            (
                403,
                vec![],
                json(error_body(
                    "Project key sk-proj-Zx81**********Qa is not allowed",
                    None,
                )),
                Class::Permanent,
                "403",
                "Zx81",
            ),
            (
                400,
                vec![],
                json(error_body(&format!("bad {KEY}"), None)),
                Class::Permanent,
                "400",
                "abcdef123456",
            ),
            // An answer that is not an image.
            (
                200,
                vec![],
                json(json!({"data": []})),
                Class::BadImage,
                "no b64_json",
                "",
            ),
            (
                200,
                vec![],
                json(json!({"data": [{"b64_json": "@@not base64@@"}]})),
                Class::BadImage,
                "base64",
                "",
            ),
            (
                200,
                vec![],
                "<html>".to_owned(),
                Class::BadImage,
                "unreadable",
                "",
            ),
        ];
        for (status, headers, body, want, says, never) in rows {
            let mut map = HeaderMap::new();
            for (name, value) in &headers {
                let name = reqwest::header::HeaderName::from_bytes(name.as_bytes()).unwrap();
                map.insert(name, value.parse().unwrap());
            }
            let status = StatusCode::from_u16(status).unwrap();
            let answer = judge(
                status,
                retry_after(&map),
                body.as_bytes(),
                KEY,
                "gpt-image-2.6-flare",
            );
            let (got, message) = class(answer);
            let row = format!("{status} {headers:?} {body:.80}");
            assert_eq!(got, want, "{row}");
            assert!(message.contains(says), "{row}: {message}");
            assert!(
                never.is_empty() || !message.contains(never),
                "{row}: {message}"
            );
        }
    }

    #[test]
    fn retry_after_reads_an_http_date() {
        let mut dated = HeaderMap::new();
        let at = chrono::Utc::now() + chrono::Duration::seconds(30);
        dated.insert("retry-after", at.to_rfc2822().parse().unwrap());
        let wait = retry_after(&dated).unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
    }

    /// A sequence of answers → how the retry loop ends, within `max_attempts` and the budget.
    /// (A slow OpenAI's timeout, and a body larger than the cap, are tested end to end in
    /// tests/it: failures.rs and openai_faults.rs.)
    #[tokio::test]
    async fn the_retry_loop_ends_as_attempts_and_budget_say() {
        let whole = serde_json::to_string(&ok_body()).unwrap();
        let ok = || ResponseTemplate::new(200).set_body_json(ok_body());
        struct Row {
            what: &'static str,
            replies: Vec<ResponseTemplate>,
            max_attempts: u32,
            total_timeout_secs: u64,
            /// `Ok(attempts)` or `Err(attempts)` (a retryable generation_failed).
            ends: Result<u32, u32>,
            calls: u32,
            at_least: Duration,
        }
        let rows = vec![
            Row {
                what: "429, 5xx and a cut-off body, then an image",
                replies: vec![
                    ResponseTemplate::new(429).set_body_json(error_body(
                        "Rate limit reached",
                        Some("rate_limit_exceeded"),
                    )),
                    ResponseTemplate::new(503),
                    ResponseTemplate::new(500).set_body_json(error_body("server error", None)),
                    ResponseTemplate::new(200).set_body_string(&whole[..whole.len() / 2]),
                    ok(),
                ],
                max_attempts: 5,
                total_timeout_secs: 60,
                ends: Ok(5),
                calls: 5,
                at_least: Duration::ZERO,
            },
            Row {
                what: "502 until the attempts are spent",
                replies: vec![ResponseTemplate::new(502)],
                max_attempts: 3,
                total_timeout_secs: 60,
                ends: Err(3),
                calls: 3,
                at_least: Duration::ZERO,
            },
            Row {
                // Above the backoff's 50 ms: the pause is the header's.
                what: "retry-after-ms is waited out",
                replies: vec![
                    ResponseTemplate::new(429).insert_header("retry-after-ms", "300"),
                    ok(),
                ],
                max_attempts: 3,
                total_timeout_secs: 60,
                ends: Ok(2),
                calls: 2,
                at_least: Duration::from_millis(300),
            },
            Row {
                what: "a retry-after beyond the budget ends it at once",
                replies: vec![ResponseTemplate::new(429).insert_header("retry-after", "3600")],
                max_attempts: 3,
                total_timeout_secs: 5,
                ends: Err(1),
                calls: 1,
                at_least: Duration::ZERO,
            },
        ];
        for row in rows {
            let server = MockServer::start().await;
            let calls = sequence(&server, row.replies).await;
            let generator = generator(&server, |s| {
                s.max_attempts = row.max_attempts;
                s.total_timeout_secs = row.total_timeout_secs;
            })
            .await;
            let started = std::time::Instant::now();
            let outcome = run(&generator, job()).await;
            let took = started.elapsed();
            match (outcome, row.ends) {
                (Ok(generated), Ok(attempts)) => {
                    assert_eq!(generated.attempts, attempts, "{}", row.what);
                }
                (Err(error), Err(attempts)) => {
                    assert_eq!(error.code(), crate::job::ErrorCode::GenerationFailed);
                    assert!(error.retryable(), "{}: {error}", row.what);
                    assert_eq!(error.attempts(), attempts, "{}", row.what);
                }
                (outcome, _) => panic!("{}: {:?}", row.what, outcome.map(|g| g.attempts)),
            }
            assert_eq!(calls.load(Ordering::SeqCst), row.calls, "{}", row.what);
            assert!(took >= row.at_least, "{}: took {took:?}", row.what);
        }
    }

    #[tokio::test]
    async fn connection_errors_are_retried_and_reported() {
        // A port nothing listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let generator = settings_for(&format!("http://127.0.0.1:{port}"), |s| {
            s.backoff_min_ms = 1;
            s.backoff_max_ms = 5;
            s.max_attempts = 2;
        });
        let error = run(&generator, job()).await.unwrap_err();
        assert_eq!(error.attempts(), 2);
        assert!(error.retryable());
        assert!(error.to_string().contains("connect"), "{error}");
    }
}
