//! Money under faults: a database outage longer than the delivery budget loses no job and no
//! credit, and the refund sweep gives back the charges of jobs that will never finish.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::helpers::{FaultyProxy, TestEnv, count, eventually, job_ids, openai_ok};

#[tokio::test]
async fn a_database_outage_longer_than_the_delivery_budget_loses_no_job_and_no_credit() {
    const JOBS: usize = 30;
    // Three deliveries: on today's main, ~5 s of outage spends them all and the broker
    // dead-letters the jobs, charged, without a result.
    let mut env = TestEnv::without_worker(
        vec![openai_ok().set_delay(Duration::from_millis(300))],
        |s| {
            s.amqp.delivery_limit = 3;
            s.worker.lease_secs = 3;
        },
    )
    .await;
    let proxy = FaultyProxy::to("127.0.0.1:5432").await;
    let proxied = env
        .settings
        .database
        .url
        .expose_secret()
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    let worker = env
        .spawn_worker_with(|s| {
            s.database.url = SecretString::from(proxied);
            s.database.acquire_timeout_secs = 1;
        })
        .await;
    let jobs: Vec<Value> = (0..JOBS)
        .map(|n| {
            env.job(
                &format!("user-{}", n % 5),
                json!({"hair": format!("h{}", n % 10)}),
            )
        })
        .collect();
    for job in &jobs {
        env.publish(job).await;
    }
    env.await_results(3).await;

    proxy.cut();
    tokio::time::sleep(Duration::from_secs(10)).await;
    proxy.restore();

    let ids = job_ids(&jobs);
    let results = env.results_for_all(&ids, Duration::from_secs(60)).await;
    assert_eq!(results.len(), JOBS, "no job lost");
    assert!(
        results.values().all(|r| r[0]["status"] == "succeeded"),
        "every job succeeds once the database is back: {results:?}"
    );
    // No credit lost: every charge is refunded, or its job succeeded.
    let lost = count(
        &env.db,
        "SELECT count(*) FROM memoji_credit_ledger charge
           LEFT JOIN memoji_jobs job ON job.job_id = charge.job_id
          WHERE charge.refunded_at IS NULL AND job.status IS DISTINCT FROM 'succeeded'",
    )
    .await;
    assert_eq!(lost, 0, "a charge kept for a job that did not succeed");
    let used = count(
        &env.db,
        "SELECT COALESCE(sum(used), 0)::bigint FROM memoji_credit_balances",
    )
    .await;
    let misses = results.values().filter(|r| r[0]["cached"] == false).count();
    assert_eq!(used as usize, misses, "one credit per generated job");
    assert!(
        worker.log().contains("stopped consuming"),
        "the worker paused during the outage"
    );
    // Nothing was given up to the dead-letter queue.
    let dead = env.settings.amqp.dead_letter_queue.clone();
    assert_eq!(env.messages_in(&dead).await, 0, "no job dead-lettered");
    // The worker resumed for good: a new job is served.
    let after = env.run(&env.job("u", json!({"hair": "after"}))).await;
    assert_eq!(after["status"], "succeeded");
    env.cleanup().await;
}

#[tokio::test]
async fn the_refund_sweep_gives_back_credits_of_jobs_that_never_finished() {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| {
        s.refunds.every_secs = 1;
        s.refunds.abandoned_after_secs = 1;
    })
    .await;
    let period = "(date_trunc('month', now() AT TIME ZONE 'UTC'))::date";
    let abandoned = uuid::Uuid::new_v4();
    let alive = uuid::Uuid::new_v4();
    let failed = uuid::Uuid::new_v4();
    for (id, status, expires) in [
        (abandoned, "processing", "now() - interval '1 minute'"),
        (alive, "processing", "now() + interval '1 minute'"),
        (failed, "failed", "NULL"),
    ] {
        sqlx::query(&format!(
            "INSERT INTO memoji_jobs (job_id, user_id, status, owner, owner_expires_at)
             VALUES ($1, 'u', '{status}', gen_random_uuid(), {expires})"
        ))
        .bind(id)
        .execute(&env.db)
        .await
        .unwrap();
        sqlx::query(&format!(
            "INSERT INTO memoji_credit_ledger (job_id, user_id, period) VALUES ($1, 'u', {period})"
        ))
        .bind(id)
        .execute(&env.db)
        .await
        .unwrap();
    }
    sqlx::query(&format!(
        "INSERT INTO memoji_credit_balances (user_id, period, tier, allowance, used)
         VALUES ('u', {period}, 'monthly_basic', 100, 3)"
    ))
    .execute(&env.db)
    .await
    .unwrap();

    let used = "SELECT used::bigint FROM memoji_credit_balances WHERE user_id = 'u'";
    eventually("the sweep's refunds", || async {
        (count(&env.db, used).await == 1).then_some(())
    })
    .await;
    let refunded: Vec<uuid::Uuid> = sqlx::query_scalar(
        "SELECT job_id FROM memoji_credit_ledger WHERE refunded_at IS NOT NULL ORDER BY job_id",
    )
    .fetch_all(&env.db)
    .await
    .unwrap();
    let mut expected = vec![abandoned, failed];
    expected.sort();
    assert_eq!(refunded, expected, "the live job keeps its charge");
    let status: String = sqlx::query_scalar("SELECT status FROM memoji_jobs WHERE job_id = $1")
        .bind(alive)
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(status, "processing");

    // A late delivery of the abandoned job is answered with its failure, never generated free.
    let job = json!({"job_id": abandoned.to_string(), "user_id": "u", "tier": "monthly_basic"});
    let result = env.run(&job).await;
    assert_eq!(result["status"], "failed", "{result}");
    assert_eq!(result["error"]["code"], "internal");
    assert_eq!(result["error"]["retryable"], true);
    assert_eq!(env.openai.calls(), 0);
    // Swept once: later sweeps change nothing.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert_eq!(count(&env.db, used).await, 1);
    env.cleanup().await;
}
