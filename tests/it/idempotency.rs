//! The job id as idempotency key, at its edges: a duplicate counted once, another user's id never
//! taken over, and a derived id remembered only as long as CONTRACT.md §2.1 says.

use std::time::Duration;

use lapin::BasicProperties;
use serde_json::{Value, json};

use crate::helpers::{TestEnv, count, eventually, openai_error, openai_ok};

#[tokio::test]
async fn a_duplicate_delivery_is_answered_again_but_counted_once() {
    let mut env = TestEnv::start(vec![openai_ok().held()]).await;
    let job = env.job("u", json!({"hair": "duplicate"}));
    let id = job["job_id"].as_str().unwrap().to_owned();
    env.publish(&job).await;
    // The twin arrives while the first is still generating (held there): it waits for its result.
    env.openai.gate().wait_for(1).await;
    env.publish(&job).await;
    let queue = env.settings.amqp.job_queue.clone();
    eventually("the twin delivered", || async {
        (env.messages_in(&queue).await == 0).then_some(())
    })
    .await;
    // One answer let through: a second generation would never get one.
    env.openai.gate().release(1);
    let first = env.result_of(&id).await;
    let second = env.result_of(&id).await;
    assert_eq!(first, second, "the twin gets the same result");
    assert_eq!(first["status"], "succeeded");
    assert_eq!(env.openai.calls(), 1);
    // Counted once: one miss, one generation, one generation's cost.
    let stats = eventually("the statistics", || async {
        let (_, stats) = env.get_json("/api/cache/stats").await;
        (stats["generations"].as_i64() >= Some(1)).then_some(stats)
    })
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, later) = env.get_json("/api/cache/stats").await;
    for figure in ["misses", "generations", "generation_cost_usd", "hits"] {
        assert_eq!(
            stats[figure], later[figure],
            "nothing more is counted later"
        );
    }
    assert_eq!(stats["generations"], 1, "{stats}");
    assert_eq!(stats["misses"], 1, "{stats}");
    let cost = stats["generation_cost_usd"].as_f64().unwrap();
    assert!(
        (cost - first["cost_usd"].as_f64().unwrap()).abs() < 1e-9,
        "{stats}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn another_users_job_id_is_answered_without_touching_that_users_job() {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| s.worker.lease_secs = 3).await;
    // A finished job of the victim's.
    let finished = env.job("victim", json!({"hair": "a"}));
    let finished_id = finished["job_id"].as_str().unwrap().to_owned();
    assert_eq!(env.run(&finished).await["status"], "succeeded");
    // A job of the victim's whose worker died: processing, its claim expired.
    let stranded = env.job("victim", json!({"hair": "b"}));
    let stranded_id = stranded["job_id"].as_str().unwrap().to_owned();
    let owner = uuid::Uuid::new_v4();
    sqlx::query(
        "INSERT INTO memoji_jobs (job_id, user_id, status, owner, owner_expires_at)
         VALUES ($1, 'victim', 'processing', $2, now() - interval '1 minute')",
    )
    .bind(uuid::Uuid::parse_str(&stranded_id).unwrap())
    .bind(owner)
    .execute(&env.db)
    .await
    .unwrap();
    let db = env.db.clone();
    let row = |id: String| {
        let db = db.clone();
        async move {
            sqlx::query_as::<_, (String, Option<uuid::Uuid>, i32, chrono::DateTime<chrono::Utc>, String)>(
                "SELECT user_id, owner, deliveries, updated_at, status FROM memoji_jobs WHERE job_id = $1",
            )
            .bind(uuid::Uuid::parse_str(&id).unwrap())
            .fetch_one(&db)
            .await
            .unwrap()
        }
    };
    let before = (
        row(finished_id.clone()).await,
        row(stranded_id.clone()).await,
    );

    for id in [&finished_id, &stranded_id] {
        let mut reuse = env.job("mallory", json!({}));
        reuse["job_id"] = json!(id);
        env.publish(&reuse).await;
        let answer = env.result_of(id).await;
        assert_eq!(
            answer["user_id"], "mallory",
            "answered under the sender's user id"
        );
        assert_eq!(answer["error"]["code"], "invalid_job", "{answer}");
    }
    let after = (
        row(finished_id.clone()).await,
        row(stranded_id.clone()).await,
    );
    assert_eq!(
        before, after,
        "the victim's jobs are untouched: no delivery counted, no takeover"
    );
    assert_eq!(env.openai.calls(), 1);

    // The victim's stranded job, redelivered, is taken over at once and completes.
    env.publish(&stranded).await;
    let result = env.result_of(&stranded_id).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["user_id"], "victim");
    let victims = env.drain(Duration::from_millis(300)).await;
    assert!(victims.is_empty(), "nothing else published: {victims:?}");
    env.cleanup().await;
}

/// A result off the result queue, whatever its job id.
async fn next_result(env: &mut TestEnv) -> Value {
    serde_json::from_slice(&env.next_delivery().await.data).unwrap()
}

#[tokio::test]
async fn a_body_without_ids_is_a_new_job_after_a_retryable_failure_or_its_ttl() {
    let mut env = TestEnv::start_with(
        vec![
            openai_error(500, "boom", None),
            openai_error(500, "boom", None),
            openai_error(500, "boom", None),
            openai_ok(),
        ],
        |s| s.worker.derived_id_ttl_secs = 2,
    )
    .await;
    let body = serde_json::to_vec(
        &json!({"user_id": "u", "tier": "monthly_basic", "config": {"hair": "derived"}}),
    )
    .unwrap();

    env.publish_raw(&body, BasicProperties::default()).await;
    let failed = next_result(&mut env).await;
    assert_eq!(failed["status"], "failed");
    assert_eq!(failed["error"]["retryable"], true, "{failed}");
    assert_eq!(env.openai.calls(), 3);

    // The same body after a retryable failure: a new job, which succeeds.
    env.publish_raw(&body, BasicProperties::default()).await;
    let retried = next_result(&mut env).await;
    assert_eq!(retried["status"], "succeeded", "{retried}");
    assert_ne!(
        retried["job_id"], failed["job_id"],
        "a new job has an id of its own"
    );
    assert_eq!(env.openai.calls(), 4);

    // Within the TTL, the same body is the same job: answered from its record.
    env.publish_raw(&body, BasicProperties::default()).await;
    let replayed = next_result(&mut env).await;
    assert_eq!(replayed, retried);

    // After the TTL, it is a new job again (a hit now: the image is cached).
    tokio::time::sleep(Duration::from_millis(2500)).await;
    env.publish_raw(&body, BasicProperties::default()).await;
    let fresh = next_result(&mut env).await;
    assert_eq!(fresh["status"], "succeeded", "{fresh}");
    assert_eq!(fresh["cached"], true);
    assert_ne!(fresh["job_id"], retried["job_id"]);
    assert_eq!(env.openai.calls(), 4);
    let charged = "SELECT count(*) FROM memoji_credit_ledger WHERE refunded_at IS NULL";
    assert_eq!(
        count(&env.db, charged).await,
        1,
        "only the generation is charged"
    );
    env.cleanup().await;
}
