//! Messages that are not jobs end in the dead-letter queue with a reason, and the worker goes on.

use lapin::BasicProperties;
use lapin::types::AMQPValue;
use serde_json::{Value, json};

use crate::helpers::{TestEnv, dead_letter_reason as reason, openai_ok};

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

/// A message that never gets settled — a worker crashing on it every time — is dead-lettered by
/// the job queue's delivery limit instead of looping forever.
#[tokio::test]
async fn a_message_that_is_never_settled_is_dead_lettered_by_the_delivery_limit() {
    use futures_util::StreamExt;
    use lapin::options::{BasicConsumeOptions, BasicNackOptions};
    use lapin::types::FieldTable;

    let env = TestEnv::without_worker(vec![openai_ok()], |s| s.amqp.delivery_limit = 2).await;
    let job = env.job("u", json!({}));
    env.publish(&job).await;
    // A "worker" that takes the job and fails it back, again and again.
    let channel = env.broker.channel().await.unwrap();
    let mut consumer = channel
        .basic_consume(
            env.settings.amqp.job_queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let mut deliveries = 0;
    while let Ok(Some(Ok(delivery))) =
        tokio::time::timeout(std::time::Duration::from_secs(2), consumer.next()).await
    {
        deliveries += 1;
        let requeue = BasicNackOptions {
            requeue: true,
            ..BasicNackOptions::default()
        };
        delivery.nack(requeue).await.unwrap();
        assert!(deliveries <= 10, "the delivery limit did not stop the loop");
    }
    assert_eq!(
        deliveries, 3,
        "delivered once plus the two redeliveries the limit allows"
    );
    let letter = env
        .take_from(&env.settings.amqp.dead_letter_queue)
        .await
        .expect("the message is in the dead-letter queue");
    assert_eq!(serde_json::from_slice::<Value>(&letter.data).unwrap(), job);
    let headers = letter.properties.headers().clone().unwrap_or_default();
    let reason = match headers.inner().get("x-first-death-reason") {
        Some(AMQPValue::LongString(reason)) => reason.to_string(),
        other => panic!("no dead-letter reason: {other:?}"),
    };
    assert_eq!(reason, "delivery_limit");
    env.cleanup().await;
}
