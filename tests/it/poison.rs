//! Messages that are not jobs end in the dead-letter queue with a reason, and the worker goes on.

use lapin::BasicProperties;
use lapin::types::AMQPValue;
use serde_json::{Value, json};

use crate::helpers::{TestEnv, openai_ok};

fn reason(delivery: &lapin::message::Delivery) -> String {
    let headers = delivery.properties.headers().as_ref().expect("headers");
    match headers.inner().get(memoji_worker::broker::REASON_HEADER) {
        Some(AMQPValue::LongString(text)) => text.to_string(),
        other => panic!("no reason header: {other:?}"),
    }
}

#[tokio::test]
async fn non_jobs_are_dead_lettered_with_a_reason_and_the_worker_goes_on() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let dead = env.settings.amqp.dead_letter_queue.clone();

    env.publish_raw(b"this is not json", BasicProperties::default())
        .await;
    let letter = env.take_from(&dead).await.expect("dead-lettered");
    assert_eq!(letter.data, b"this is not json");
    assert!(reason(&letter).contains("not JSON"), "{}", reason(&letter));

    env.publish(&json!({"job_id": uuid::Uuid::new_v4().to_string(), "config": {}}))
        .await;
    let letter = env.take_from(&dead).await.expect("dead-lettered");
    assert!(reason(&letter).contains("user_id"), "{}", reason(&letter));

    env.publish_raw(&vec![b'x'; 70 * 1024], BasicProperties::default())
        .await;
    let letter = env.take_from(&dead).await.expect("dead-lettered");
    assert!(reason(&letter).contains("at most"), "{}", reason(&letter));

    // None of those produced a result; a real job still gets one.
    let job = env.job("u", json!({}));
    let result = env.run(&job).await;
    assert_eq!(result["status"], "succeeded");
    let others: Vec<Value> = env.drain(std::time::Duration::from_millis(300)).await;
    assert!(others.is_empty(), "no results for non-jobs: {others:?}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_non_job_with_readable_ids_is_dead_lettered_and_answered() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let job_id = uuid::Uuid::new_v4().to_string();
    let user = "u".repeat(200);
    env.publish(&json!({"job_id": job_id, "user_id": user, "config": {}}))
        .await;
    let letter = env
        .take_from(&env.settings.amqp.dead_letter_queue.clone())
        .await
        .expect("dead-lettered");
    assert!(reason(&letter).contains("user_id"));
    let result = env.result_of(&job_id).await;
    assert_eq!(result["status"], "failed");
    assert_eq!(result["error"]["code"], "invalid_job");
    assert_eq!(result["user_id"], user.as_str());
    assert_eq!(env.openai.calls(), 0);
    env.cleanup().await;
}
