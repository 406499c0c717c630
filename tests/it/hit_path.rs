//! The hit path's bookkeeping: a hit is recorded and answered again unchanged, and a job resumed
//! after its leader delivery was charged is refunded when a hit serves it.

use serde_json::json;

use crate::helpers::{TestEnv, count, openai_ok, usage_count};

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

#[tokio::test]
async fn a_hit_counts_one_use_however_often_its_job_is_delivered() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let config = json!({"gesture": "thumbs-up"});
    let miss = env.run(&env.job("user-1", config.clone())).await;
    let hash = miss["prompt_hash"].as_str().unwrap().to_owned();
    assert_eq!(usage_count(&env.db, &hash).await, 1);

    let job = env.job("user-1", config);
    let hit = env.run(&job).await;
    assert_eq!(hit["cached"], true);
    assert_eq!(usage_count(&env.db, &hash).await, 2);
    let again = env.run(&job).await;
    assert_eq!(again, hit, "answered from the job's record");
    assert_eq!(
        usage_count(&env.db, &hash).await,
        2,
        "a finished job counts no second use"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn another_users_job_id_is_refused_without_counting_a_use() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let config = json!({"gesture": "peace"});
    let mine = env.job("user-1", config.clone());
    let miss = env.run(&mine).await;
    let hash = miss["prompt_hash"].as_str().unwrap().to_owned();

    let mut theirs = env.job("user-2", config);
    theirs["job_id"] = mine["job_id"].clone();
    let refused = env.run(&theirs).await;
    assert_eq!(refused["status"], "failed");
    assert_eq!(refused["error"]["code"], "invalid_job");
    assert_eq!(refused["user_id"], "user-2");
    assert_eq!(usage_count(&env.db, &hash).await, 1);
    env.cleanup().await;
}

#[tokio::test]
async fn force_refresh_regenerates_a_cached_key_and_charges_it() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let config = json!({"gesture": "salute"});
    let miss = env.run(&env.job("user-1", config.clone())).await;
    let hash = miss["prompt_hash"].as_str().unwrap().to_owned();

    let mut job = env.job("user-1", config);
    job["force_refresh"] = json!(true);
    let fresh = env.run(&job).await;
    assert_eq!(fresh["status"], "succeeded");
    assert_eq!(fresh["cached"], false);
    assert_eq!(fresh["credits_charged"], 1);
    assert_eq!(fresh["credits_remaining"], 98);
    assert_eq!(env.openai.calls(), 2);
    assert_eq!(
        usage_count(&env.db, &hash).await,
        2,
        "the refresh counts as a use, not as a hit"
    );
    env.cleanup().await;
}
