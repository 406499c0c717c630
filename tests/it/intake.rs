//! Messages that are not jobs to serde but whose ids JavaScript's `JSON.parse` can read (an
//! oversized body, a lone surrogate escape) are dead-lettered with a reason *and* answered.

use lapin::BasicProperties;

use crate::helpers::{TestEnv, dead_letter_reason as reason, openai_ok};

#[tokio::test]
async fn an_oversized_job_with_readable_ids_is_dead_lettered_and_answered() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let job_id = uuid::Uuid::new_v4().to_string();
    let prompt = "p".repeat(200 * 1024);
    let body =
        format!(r#"{{"job_id":"{job_id}","user_id":"user-42","config":{{"prompt":"{prompt}"}}}}"#);
    env.publish_raw(body.as_bytes(), BasicProperties::default())
        .await;
    let letter = env
        .take_from(&env.settings.amqp.dead_letter_queue.clone())
        .await
        .expect("dead-lettered");
    assert_eq!(letter.data.len(), body.len());
    assert!(reason(&letter).contains("at most"), "{}", reason(&letter));
    let result = env.result_of(&job_id).await;
    assert_eq!(result["status"], "failed");
    assert_eq!(result["error"]["code"], "invalid_job");
    assert_eq!(result["error"]["retryable"], false);
    assert_eq!(result["user_id"], "user-42");
    assert_eq!(result["credits_charged"], 0);
    assert_eq!(env.openai.calls(), 0);
    env.cleanup().await;
}

#[tokio::test]
async fn a_job_with_a_lone_surrogate_escape_is_dead_lettered_and_answered() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let job_id = uuid::Uuid::new_v4().to_string();
    // What JSON.stringify makes of a string a browser cut in the middle of an emoji.
    let body =
        format!(r#"{{"job_id":"{job_id}","user_id":"u","config":{{"prompt":"hi \ud83d"}}}}"#);
    env.publish_raw(body.as_bytes(), BasicProperties::default())
        .await;
    let letter = env
        .take_from(&env.settings.amqp.dead_letter_queue.clone())
        .await
        .expect("dead-lettered");
    assert!(reason(&letter).contains("not JSON"), "{}", reason(&letter));
    let result = env.result_of(&job_id).await;
    assert_eq!(result["error"]["code"], "invalid_job", "{result}");
    assert_eq!(result["user_id"], "u");
    assert_eq!(env.openai.calls(), 0);
    env.cleanup().await;
}
