//! The hit path's bookkeeping: a hit is recorded and answered again unchanged, and a job resumed
//! after its leader delivery was charged is refunded when a hit serves it.

use serde_json::json;

use crate::helpers::{TestEnv, count, openai_ok};

#[tokio::test]
async fn a_resumed_job_charged_by_its_earlier_delivery_is_refunded_when_served_as_a_hit() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let config = json!({"hair": "curly"});
    let first = env.run(&env.job("user-7", config.clone())).await;
    assert_eq!(first["credits_remaining"], 99);

    // A second job whose earlier delivery took the lease, was charged, and died before finishing.
    let job = env.job("user-7", config);
    let id: uuid::Uuid = job["job_id"].as_str().unwrap().parse().unwrap();
    for sql in [
        "INSERT INTO memoji_jobs (job_id, user_id, status) VALUES ($1, 'user-7', 'processing')",
        "INSERT INTO memoji_credit_ledger (job_id, user_id, period)
         VALUES ($1, 'user-7', date_trunc('month', now() AT TIME ZONE 'UTC')::date)",
        "UPDATE memoji_credit_balances SET used = used + 1
          WHERE user_id = 'user-7' AND $1::uuid IS NOT NULL",
    ] {
        sqlx::query(sql).bind(id).execute(&env.db).await.unwrap();
    }

    let hit = env.run(&job).await;
    assert_eq!(hit["status"], "succeeded");
    assert_eq!(hit["cached"], true);
    assert_eq!(hit["credits_charged"], 0);
    assert_eq!(
        hit["credits_remaining"], 99,
        "the earlier charge is given back"
    );
    assert_eq!(env.openai.calls(), 1);
    let refunded = count(
        &env.db,
        &format!(
            "SELECT count(*) FROM memoji_credit_ledger WHERE job_id = '{id}' AND refunded_at IS NOT NULL"
        ),
    )
    .await;
    assert_eq!(refunded, 1);

    // Delivered once more, it is answered from its record: same result, no second refund.
    let again = env.run(&job).await;
    assert_eq!(again, hit);
    let used = count(
        &env.db,
        "SELECT used::bigint FROM memoji_credit_balances WHERE user_id = 'user-7'",
    )
    .await;
    assert_eq!(used, 1);
    env.cleanup().await;
}
