//! OpenAI's Images API (`POST {base_url}/images/generations`), with the retries worth making.
//!
//! 429 (except an exhausted quota), 408/409, 5xx, timeouts and connection errors are retried with
//! exponential backoff and full jitter (backon), honouring `Retry-After`/`retry-after-ms`, within
//! `max_attempts` and `total_timeout`. Other 4xx are final; a content-policy refusal becomes
//! `content_policy`. The API key is sent only in the Authorization header and never appears in an
//! error: OpenAI echoes part of a wrong key in its 401 message, so that message is replaced.

use std::time::Duration;

use async_trait::async_trait;
use backon::{BackoffBuilder, ExponentialBuilder};
use base64::Engine;
use bytes::Bytes;
use reqwest::StatusCode;
use reqwest::header::HeaderMap;
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{GenerateError, Generated, ImageGenerator, Usage, pricing, prompt_for};
use crate::config::{OpenAiSettings, PriceSettings};
use crate::job::{AvatarConfig, GeneratorKind};
use crate::telemetry;

/// Error codes OpenAI uses for requests its safety system refuses.
const CONTENT_POLICY_CODES: [&str; 2] = ["content_policy_violation", "moderation_blocked"];
/// 429 codes that waiting will not fix.
const QUOTA_CODES: [&str; 2] = ["insufficient_quota", "billing_hard_limit_reached"];

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
enum AttemptError {
    Retry {
        message: String,
        retry_after: Option<Duration>,
    },
    Final(FinalError),
}

enum FinalError {
    ContentPolicy(String),
    BadImage(String),
    Failed { message: String, retryable: bool },
}

#[derive(Deserialize)]
struct ImagesResponse {
    #[serde(default)]
    data: Vec<ImageData>,
    usage: Option<Usage>,
}

#[derive(Deserialize)]
struct ImageData {
    b64_json: Option<String>,
}

#[derive(Deserialize, Default)]
struct ErrorBody {
    #[serde(default)]
    error: ApiError,
}

#[derive(Deserialize, Default)]
struct ApiError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    code: Option<String>,
    #[serde(default, rename = "type")]
    kind: Option<String>,
}

impl OpenAiGenerator {
    pub fn new(
        settings: &OpenAiSettings,
        prices: &PriceSettings,
        api_key: SecretString,
    ) -> Result<OpenAiGenerator, reqwest::Error> {
        let http = reqwest::Client::builder()
            .user_agent(concat!("memoji-worker/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .build()?;
        Ok(OpenAiGenerator {
            http,
            endpoint: format!(
                "{}/images/generations",
                settings.base_url.trim_end_matches('/')
            ),
            api_key,
            settings: settings.clone(),
            prices: prices.clone(),
        })
    }

    /// The request body for a configuration, following each model's parameters.
    fn body(config: &AvatarConfig, user: &str) -> Value {
        let mut body = json!({
            "model": config.model.as_str(),
            "prompt": prompt_for(config),
            "n": 1,
            "size": config.size,
            // An opaque, stable id per user for OpenAI's abuse monitoring; never the raw id.
            "user": hex::encode(&Sha256::digest(user.as_bytes())[..16]),
        });
        if config.model.is_gpt_image() {
            body["background"] = json!(config.background);
            body["output_format"] = json!("png");
        } else {
            body["response_format"] = json!("b64_json");
        }
        if let Some(quality) = config
            .quality
            .as_deref()
            .filter(|q| *q != "auto" || config.model.is_gpt_image())
        {
            body["quality"] = json!(quality);
        }
        body
    }

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
        let retry_after = retry_after(response.headers());
        let text = response.bytes().await.map_err(transport)?;
        if status.is_success() {
            return decode(&text).map_err(AttemptError::Final);
        }
        let error = serde_json::from_slice::<ErrorBody>(&text)
            .unwrap_or_default()
            .error;
        Err(classify(
            status,
            error,
            retry_after,
            self.api_key.expose_secret(),
        ))
    }
}

#[async_trait]
impl ImageGenerator for OpenAiGenerator {
    fn kind(&self) -> GeneratorKind {
        GeneratorKind::OpenAi
    }

    async fn generate(
        &self,
        config: &AvatarConfig,
        user: &str,
    ) -> Result<Generated, GenerateError> {
        let body = Self::body(config, user);
        let deadline = Instant::now() + self.settings.total_timeout();
        let mut backoff = ExponentialBuilder::default()
            .with_min_delay(Duration::from_millis(self.settings.backoff_min_ms))
            .with_max_delay(Duration::from_millis(self.settings.backoff_max_ms))
            .with_jitter()
            .without_max_times()
            .build();
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
                    let cost_usd = pricing::cost(&self.prices, config, usage.as_ref());
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
                }) => (message, retry_after),
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
    fn into_generate_error(self, attempts: u32) -> GenerateError {
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

fn transport(error: reqwest::Error) -> AttemptError {
    let what = if error.is_timeout() {
        "timed out"
    } else if error.is_connect() {
        "could not connect"
    } else {
        "transport error"
    };
    // Without the URL: it is not secret, but it is noise in a result message.
    AttemptError::Retry {
        message: format!("OpenAI {what}: {}", error.without_url()),
        retry_after: None,
    }
}

fn decode(body: &[u8]) -> Result<(Bytes, Option<Usage>), FinalError> {
    let response: ImagesResponse = serde_json::from_slice(body)
        .map_err(|e| FinalError::BadImage(format!("unreadable response from OpenAI: {e}")))?;
    let b64 = response
        .data
        .into_iter()
        .find_map(|d| d.b64_json)
        .ok_or_else(|| FinalError::BadImage("OpenAI returned no b64_json image".to_owned()))?;
    let png = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map_err(|e| FinalError::BadImage(format!("OpenAI's image is not valid base64: {e}")))?;
    Ok((Bytes::from(png), response.usage))
}

fn classify(
    status: StatusCode,
    error: ApiError,
    retry_after: Option<Duration>,
    api_key: &str,
) -> AttemptError {
    let code = error.code.as_deref().unwrap_or_default();
    let message = if status == StatusCode::UNAUTHORIZED {
        "OpenAI rejected the API key (401)".to_owned()
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
        format!("OpenAI answered {}: {text}", status.as_u16())
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
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
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

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU32, Ordering};

    use serde_json::json;
    use wiremock::matchers::{body_partial_json, header, method, path};
    use wiremock::{Mock, MockServer, Request, Respond, ResponseTemplate};

    use super::*;
    use crate::config::Settings;

    const KEY: &str = "sk-test-abcdef123456";

    fn png_b64() -> String {
        let config = AvatarConfig::parse(&json!({})).unwrap();
        base64::engine::general_purpose::STANDARD
            .encode(super::super::placeholder::draw(&config).unwrap())
    }

    fn ok_body() -> Value {
        json!({"created": 1, "data": [{"b64_json": png_b64()}],
               "usage": {"input_tokens": 50, "output_tokens": 1056, "total_tokens": 1106}})
    }

    fn error_body(message: &str, code: Option<&str>) -> Value {
        json!({"error": {"message": message, "type": "invalid_request_error", "code": code, "param": null}})
    }

    async fn generator(
        server: &MockServer,
        tweak: impl FnOnce(&mut OpenAiSettings),
    ) -> OpenAiGenerator {
        let defaults = Settings::defaults().unwrap();
        let mut settings = defaults.openai;
        settings.base_url = format!("{}/v1", server.uri());
        settings.backoff_min_ms = 10;
        settings.backoff_max_ms = 50;
        tweak(&mut settings);
        OpenAiGenerator::new(&settings, &defaults.prices, SecretString::from(KEY)).unwrap()
    }

    fn config() -> AvatarConfig {
        AvatarConfig::parse(&json!({"hair": "long", "quality": "high"})).unwrap()
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

    #[tokio::test]
    async fn sends_the_model_parameters_and_decodes_the_image() {
        let server = MockServer::start().await;
        Mock::given(method("POST"))
            .and(path("/v1/images/generations"))
            .and(header("authorization", format!("Bearer {KEY}").as_str()))
            .and(body_partial_json(
                json!({"model": "gpt-image-1", "size": "1024x1024", "n": 1,
                                          "quality": "high", "background": "auto"}),
            ))
            .respond_with(ResponseTemplate::new(200).set_body_json(ok_body()))
            .expect(1)
            .mount(&server)
            .await;
        let generated = generator(&server, |_| {})
            .await
            .generate(&config(), "user-1")
            .await
            .unwrap();
        assert!(crate::storage::check_png(&generated.png).is_ok());
        assert_eq!(generated.attempts, 1);
        assert_eq!(generated.usage.map(|u| u.output_tokens), Some(1056));
        assert!((generated.cost_usd - (50.0 * 5e-6 + 1056.0 * 40e-6)).abs() < 1e-12);
    }

    #[tokio::test]
    async fn dall_e_asks_for_base64_and_sends_no_background() {
        let server = MockServer::start().await;
        let calls = sequence(
            &server,
            vec![ResponseTemplate::new(200).set_body_json(ok_body())],
        )
        .await;
        let config =
            AvatarConfig::parse(&json!({"model": "dall-e-3", "size": "1792x1024"})).unwrap();
        generator(&server, |_| {})
            .await
            .generate(&config, "u")
            .await
            .unwrap();
        let request: Value = server.received_requests().await.unwrap()[0]
            .body_json()
            .unwrap();
        assert_eq!(request["response_format"], "b64_json");
        assert_eq!(request.get("background"), None);
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn retries_429_and_5xx_then_succeeds() {
        let server = MockServer::start().await;
        let calls = sequence(
            &server,
            vec![
                ResponseTemplate::new(429).set_body_json(error_body(
                    "Rate limit reached",
                    Some("rate_limit_exceeded"),
                )),
                ResponseTemplate::new(503),
                ResponseTemplate::new(500).set_body_json(error_body("server error", None)),
                ResponseTemplate::new(200).set_body_json(ok_body()),
            ],
        )
        .await;
        let generated = generator(&server, |_| {})
            .await
            .generate(&config(), "u")
            .await
            .unwrap();
        assert_eq!(generated.attempts, 4);
        assert_eq!(calls.load(Ordering::SeqCst), 4);
    }

    #[tokio::test]
    async fn gives_up_after_max_attempts_as_retryable_generation_failed() {
        let server = MockServer::start().await;
        let calls = sequence(&server, vec![ResponseTemplate::new(502)]).await;
        let error = generator(&server, |s| s.max_attempts = 3)
            .await
            .generate(&config(), "u")
            .await
            .unwrap_err();
        assert_eq!(error.code(), crate::job::ErrorCode::GenerationFailed);
        assert!(error.retryable());
        assert_eq!(error.attempts(), 3);
        assert_eq!(calls.load(Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn honours_retry_after() {
        let server = MockServer::start().await;
        sequence(
            &server,
            vec![
                ResponseTemplate::new(429).insert_header("retry-after", "1"),
                ResponseTemplate::new(200).set_body_json(ok_body()),
            ],
        )
        .await;
        let started = std::time::Instant::now();
        generator(&server, |_| {})
            .await
            .generate(&config(), "u")
            .await
            .unwrap();
        assert!(
            started.elapsed() >= Duration::from_secs(1),
            "waited {:?}",
            started.elapsed()
        );
    }

    #[tokio::test]
    async fn a_retry_after_beyond_the_budget_ends_the_generation() {
        let server = MockServer::start().await;
        let calls = sequence(
            &server,
            vec![ResponseTemplate::new(429).insert_header("retry-after", "3600")],
        )
        .await;
        let error = generator(&server, |s| s.total_timeout_secs = 5)
            .await
            .generate(&config(), "u")
            .await
            .unwrap_err();
        assert!(error.retryable());
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test]
    async fn timeouts_are_retried() {
        let server = MockServer::start().await;
        let calls = sequence(
            &server,
            vec![
                ResponseTemplate::new(200)
                    .set_body_json(ok_body())
                    .set_delay(Duration::from_secs(3)),
                ResponseTemplate::new(200).set_body_json(ok_body()),
            ],
        )
        .await;
        let generated = generator(&server, |s| s.request_timeout_secs = 1)
            .await
            .generate(&config(), "u")
            .await
            .unwrap();
        assert_eq!(generated.attempts, 2);
        assert_eq!(calls.load(Ordering::SeqCst), 2);
    }

    #[tokio::test]
    async fn connection_errors_are_retried_and_reported() {
        // A port nothing listens on.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let mut settings = Settings::defaults().unwrap().openai;
        settings.base_url = format!("http://127.0.0.1:{port}/v1");
        settings.backoff_min_ms = 1;
        settings.backoff_max_ms = 5;
        settings.max_attempts = 2;
        let prices = Settings::defaults().unwrap().prices;
        let generator = OpenAiGenerator::new(&settings, &prices, SecretString::from(KEY)).unwrap();
        let error = generator.generate(&config(), "u").await.unwrap_err();
        assert_eq!(error.attempts(), 2);
        assert!(error.retryable());
        assert!(error.to_string().contains("connect"), "{error}");
    }

    #[tokio::test]
    async fn content_policy_refusals_are_final() {
        for code in CONTENT_POLICY_CODES {
            let server = MockServer::start().await;
            let calls = sequence(
                &server,
                vec![ResponseTemplate::new(400).set_body_json(error_body(
                    "Your request was rejected by the safety system.",
                    Some(code),
                ))],
            )
            .await;
            let error = generator(&server, |_| {})
                .await
                .generate(&config(), "u")
                .await
                .unwrap_err();
            assert_eq!(error.code(), crate::job::ErrorCode::ContentPolicy, "{code}");
            assert!(!error.retryable());
            assert_eq!(calls.load(Ordering::SeqCst), 1);
        }
    }

    #[tokio::test]
    async fn other_client_errors_and_exhausted_quota_are_not_retried() {
        for (status, code) in [
            (400, Some("invalid_size")),
            (404, None),
            (429, Some("insufficient_quota")),
        ] {
            let server = MockServer::start().await;
            let calls = sequence(
                &server,
                vec![ResponseTemplate::new(status).set_body_json(error_body("nope", code))],
            )
            .await;
            let error = generator(&server, |_| {})
                .await
                .generate(&config(), "u")
                .await
                .unwrap_err();
            assert_eq!(
                error.code(),
                crate::job::ErrorCode::GenerationFailed,
                "{status}"
            );
            assert!(!error.retryable(), "{status}");
            assert_eq!(calls.load(Ordering::SeqCst), 1, "{status}");
        }
    }

    #[tokio::test]
    async fn the_key_never_appears_in_errors() {
        let server = MockServer::start().await;
        sequence(
            &server,
            vec![ResponseTemplate::new(401).set_body_json(error_body(
                &format!("Incorrect API key provided: {KEY}"),
                Some("invalid_api_key"),
            ))],
        )
        .await;
        let error = generator(&server, |_| {})
            .await
            .generate(&config(), "u")
            .await
            .unwrap_err();
        assert!(!error.to_string().contains("sk-test"), "{error}");
        assert!(!format!("{error:?}").contains("sk-test"));
        let generator = generator(&server, |_| {}).await;
        assert!(!format!("{generator:?}").contains("sk-test"));
    }

    #[tokio::test]
    async fn garbage_instead_of_an_image_is_image_invalid() {
        for body in [
            json!({"data": []}),
            json!({"data": [{"b64_json": "@@not base64@@"}]}),
        ] {
            let server = MockServer::start().await;
            sequence(
                &server,
                vec![ResponseTemplate::new(200).set_body_json(body)],
            )
            .await;
            let error = generator(&server, |_| {})
                .await
                .generate(&config(), "u")
                .await
                .unwrap_err();
            assert_eq!(error.code(), crate::job::ErrorCode::ImageInvalid);
        }
    }

    #[test]
    fn retry_after_reads_every_form() {
        let mut headers = HeaderMap::new();
        headers.insert("retry-after", "2".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_secs(2)));
        headers.insert("retry-after-ms", "250".parse().unwrap());
        assert_eq!(retry_after(&headers), Some(Duration::from_millis(250)));
        let mut dated = HeaderMap::new();
        let at = chrono::Utc::now() + chrono::Duration::seconds(30);
        dated.insert("retry-after", at.to_rfc2822().parse().unwrap());
        let wait = retry_after(&dated).unwrap();
        assert!(
            wait > Duration::from_secs(25) && wait <= Duration::from_secs(30),
            "{wait:?}"
        );
    }
}
