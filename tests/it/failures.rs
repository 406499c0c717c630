//! OpenAI failures and invalid jobs: the right error code, retries only where worth it, and never a
//! credit kept for a failed job.

use serde_json::json;

use crate::helpers::{TestEnv, assert_failed_and_refunded, count, openai_error, openai_ok};
use wiremock::ResponseTemplate;

#[tokio::test]
async fn an_invalid_job_fails_without_a_charge_or_a_call() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let job = env.job("u", json!({"model": "dall-e-2", "size": "1536x1024"}));
    let result = env.run(&job).await;
    assert_eq!(result["status"], "failed");
    assert_eq!(result["error"]["code"], "invalid_job");
    assert_eq!(result["error"]["retryable"], false);
    assert!(
        result["error"]["message"]
            .as_str()
            .unwrap()
            .contains("size"),
        "{result}"
    );
    assert_eq!(result["image_url"], serde_json::Value::Null);
    assert_eq!(result["storage_path"], serde_json::Value::Null);
    assert_eq!(result["credits_charged"], 0);
    assert_eq!(env.openai.calls(), 0);
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_credit_ledger").await,
        0
    );
    env.cleanup().await;
}

#[tokio::test]
async fn transient_openai_errors_are_retried_until_success() {
    let mut env = TestEnv::start(vec![
        openai_error(429, "Rate limit reached", Some("rate_limit_exceeded")),
        ResponseTemplate::new(503).into(),
        openai_ok(),
    ])
    .await;
    let result = env.run(&env.job("u", json!({}))).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["attempts"], 3);
    assert_eq!(result["credits_charged"], 1);
    assert_eq!(env.openai.calls(), 3);
    env.cleanup().await;
}

#[tokio::test]
async fn exhausted_retries_fail_as_retryable_generation_failed_and_refund() {
    let mut env = TestEnv::start(vec![ResponseTemplate::new(500).into()]).await;
    assert_failed_and_refunded(&mut env, "generation_failed", true, 3).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_content_policy_refusal_is_final_and_refunded() {
    let mut env = TestEnv::start(vec![openai_error(
        400,
        "Your request was rejected as a result of our safety system.",
        Some("moderation_blocked"),
    )])
    .await;
    assert_failed_and_refunded(&mut env, "content_policy", false, 1).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_rejected_request_is_not_retried() {
    let mut env = TestEnv::start(vec![openai_error(
        400,
        "Invalid value for size",
        Some("invalid_value"),
    )])
    .await;
    assert_failed_and_refunded(&mut env, "generation_failed", false, 1).await;
    env.cleanup().await;
}

#[tokio::test]
async fn an_image_that_is_not_a_png_is_image_invalid() {
    use base64::Engine;
    let gif = base64::engine::general_purpose::STANDARD.encode(b"GIF89a not a png");
    let mut env = TestEnv::start(vec![
        ResponseTemplate::new(200)
            .set_body_json(json!({"data": [{"b64_json": gif}]}))
            .into(),
    ])
    .await;
    assert_failed_and_refunded(&mut env, "image_invalid", true, 1).await;
    env.cleanup().await;
}

#[tokio::test]
async fn a_slow_openai_times_out_and_is_retried() {
    let mut env = TestEnv::start_with(
        vec![
            openai_ok().set_delay(std::time::Duration::from_secs(3)),
            openai_ok(),
        ],
        |settings| settings.openai.request_timeout_secs = 1,
    )
    .await;
    let result = env.run(&env.job("u", json!({}))).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["attempts"], 2);
    env.cleanup().await;
}
