//! Group commit for hits (`worker::batch`): a burst of hits is answered in batches, each job
//! recorded once with the result it was answered with; a batch the database refuses sends its
//! jobs down the one-job path without losing one; a slow database makes jobs wait, not fail; and
//! a crash between a batch's commit and the acks is answered again with the same result.

use std::time::Duration;

use lapin::types::FieldTable;
use serde_json::{Value, json};

use crate::helpers::{TestEnv, count, eventually, job_ids, openai_ok, usage_count};

/// Fills the cache with one entry per config and returns their hashes.
async fn warm(env: &mut TestEnv, configs: &[Value]) -> Vec<String> {
    let mut hashes = Vec::new();
    for config in configs {
        let miss = env.run(&env.job("warmer", config.clone())).await;
        assert_eq!(miss["cached"], false);
        hashes.push(miss["prompt_hash"].as_str().unwrap().to_owned());
    }
    hashes
}

#[tokio::test]
async fn a_burst_of_hits_is_answered_in_batches_and_each_job_is_recorded_once() {
    let mut env = TestEnv::start_with(vec![openai_ok(); 4], |s| s.amqp.prefetch = 64).await;
    let configs: Vec<Value> = ["a", "b", "c", "d"]
        .iter()
        .map(|hair| json!({"hair": hair}))
        .collect();
    let hashes = warm(&mut env, &configs).await;
    let batches_before = env.counter("memoji_hit_batches_total").await;
    let batched_before = env.counter("memoji_hit_batch_jobs_total").await;

    const JOBS: usize = 400;
    let jobs: Vec<Value> = (0..JOBS)
        .map(|i| env.job(&format!("user-{}", i % 37), configs[i % 4].clone()))
        .collect();
    for job in &jobs {
        env.publish(job).await;
    }
    let ids = job_ids(&jobs);
    let results = env.results_for_all(&ids, Duration::from_secs(60)).await;
    for job in &jobs {
        let id = job["job_id"].as_str().unwrap();
        let copies = &results[id];
        assert_eq!(copies.len(), 1, "one result for {id}: {copies:?}");
        let result = &copies[0];
        assert_eq!(result["status"], "succeeded");
        assert_eq!(result["cached"], true);
        assert_eq!(result["credits_charged"], 0);
        assert_eq!(result["user_id"], job["user_id"]);
        // Recorded as answered: a redelivery would publish exactly this.
        let recorded: (Value,) =
            sqlx::query_as("SELECT result FROM memoji_jobs WHERE job_id = $1::uuid")
                .bind(id)
                .fetch_one(&env.db)
                .await
                .unwrap();
        assert_eq!(&recorded.0, result);
    }
    // One use per job, on the right entry; the warming misses counted one each.
    for hash in &hashes {
        assert_eq!(
            usage_count(&env.db, hash).await,
            1 + (JOBS / 4) as i64,
            "{hash}"
        );
    }
    assert_eq!(env.openai.calls(), 4, "no hit generated anything");
    let batches = env.counter("memoji_hit_batches_total").await - batches_before;
    let batched = env.counter("memoji_hit_batch_jobs_total").await - batched_before;
    assert_eq!(
        batched, JOBS as f64,
        "every new job's hit went through a batch"
    );
    assert!(
        batches < JOBS as f64,
        "{JOBS} hits in {batches} batches: the burst was batched"
    );
    // A job delivered again is answered from its record, unchanged, and counts no use.
    let again = env.run(&jobs[0]).await;
    assert_eq!(again, results[jobs[0]["job_id"].as_str().unwrap()][0]);
    assert_eq!(
        usage_count(&env.db, &hashes[0]).await,
        1 + (JOBS / 4) as i64
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_batch_the_database_refuses_sends_its_jobs_down_the_one_job_path() {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| s.amqp.prefetch = 32).await;
    let config = json!({"gesture": "wave"});
    let hash = warm(&mut env, std::slice::from_ref(&config))
        .await
        .remove(0);
    // The job table refuses a finished hit recorded in one go for this user: the batch holding
    // it fails as a whole, half its work done in memory and none of it committed.
    for sql in [
        "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS
           $$ BEGIN RAISE EXCEPTION 'refused for the test'; END $$",
        "CREATE TRIGGER refuse_poison BEFORE INSERT ON memoji_jobs FOR EACH ROW
           WHEN (NEW.user_id = 'poison' AND NEW.status = 'succeeded') EXECUTE FUNCTION refuse_poison()",
    ] {
        sqlx::query(sql).execute(&env.db).await.unwrap();
    }
    let fallbacks_before = env.counter("memoji_hit_batch_fallbacks_total").await;
    let jobs: Vec<Value> = (0..60)
        .map(|i| {
            let user = if i % 10 == 0 {
                "poison".to_owned()
            } else {
                format!("u{i}")
            };
            env.job(&user, config.clone())
        })
        .collect();
    for job in &jobs {
        env.publish(job).await;
    }
    let ids = job_ids(&jobs);
    let results = env.results_for_all(&ids, Duration::from_secs(60)).await;
    for id in &ids {
        assert_eq!(results[id].len(), 1, "{id}");
        assert_eq!(results[id][0]["cached"], true, "{:?}", results[id]);
    }
    assert!(env.counter("memoji_hit_batch_fallbacks_total").await > fallbacks_before);
    assert_eq!(
        usage_count(&env.db, &hash).await,
        61,
        "one use per job, none lost or doubled"
    );
    let finished = count(
        &env.db,
        "SELECT count(*) FROM memoji_jobs WHERE status = 'succeeded' AND user_id <> 'warmer'",
    )
    .await;
    assert_eq!(finished, 60);
    env.cleanup().await;
}

#[tokio::test]
async fn hits_wait_while_the_database_is_slow_and_are_all_answered_once_it_is_not() {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| s.amqp.prefetch = 32).await;
    let config = json!({"skinTone": "medium"});
    let hash = warm(&mut env, std::slice::from_ref(&config))
        .await
        .remove(0);
    // A transaction elsewhere holds the entry's row: every write that counts a use waits.
    let mut blocker = env.db.begin().await.unwrap();
    sqlx::query("SELECT 1 FROM memoji_cache WHERE prompt_hash = $1 FOR UPDATE")
        .bind(&hash)
        .execute(&mut *blocker)
        .await
        .unwrap();
    let jobs: Vec<Value> = (0..100)
        .map(|i| env.job(&format!("u{i}"), config.clone()))
        .collect();
    for job in &jobs {
        env.publish(job).await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let answered = env.drain(Duration::from_millis(100)).await;
    assert!(
        answered.is_empty(),
        "nothing is answered while the row is held"
    );
    blocker.rollback().await.unwrap();
    let ids = job_ids(&jobs);
    let results = env.results_for_all(&ids, Duration::from_secs(60)).await;
    for id in &ids {
        assert_eq!(results[id].len(), 1, "{id}");
        assert_eq!(results[id][0]["cached"], true, "{:?}", results[id]);
    }
    assert_eq!(usage_count(&env.db, &hash).await, 101);
    env.cleanup().await;
}

#[tokio::test]
async fn a_crash_between_a_batch_commit_and_the_ack_is_answered_again_with_the_same_result() {
    let mut env = TestEnv::without_worker(vec![openai_ok()], |_| {}).await;
    let worker = env.spawn_worker().await;
    let config = json!({"theme": "ocean"});
    let hash = warm(&mut env, std::slice::from_ref(&config))
        .await
        .remove(0);

    // The result queue leaves the result exchange: a result can be recorded but not published
    // (results are published mandatory), so the delivery stays unacked.
    let amqp = env.settings.amqp.clone();
    let channel = env.broker.channel().await.unwrap();
    channel
        .queue_unbind(
            amqp.result_queue.as_str().into(),
            amqp.result_exchange.as_str().into(),
            "result.#".into(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let job = env.job("user-9", config);
    let id = job["job_id"].as_str().unwrap().to_owned();
    env.publish(&job).await;
    let recorded: Value = eventually("the hit's result is committed", || async {
        sqlx::query_as::<_, (Option<Value>,)>(
            "SELECT result FROM memoji_jobs WHERE job_id = $1::uuid",
        )
        .bind(&id)
        .fetch_optional(&env.db)
        .await
        .unwrap()
        .and_then(|(result,)| result)
    })
    .await;
    worker.kill().await;
    assert_eq!(usage_count(&env.db, &hash).await, 2);

    // The topology back, and a new worker: the delivery comes again and is answered from its
    // record, counting no second use.
    env.broker.declare().await.unwrap();
    let _second = env.spawn_worker().await;
    let answered = env.result_of(&id).await;
    assert_eq!(answered, recorded);
    assert_eq!(answered["cached"], true);
    assert_eq!(usage_count(&env.db, &hash).await, 2);
    env.cleanup().await;
}

/// Every table a plan reads, with how (`Seq Scan`, `Index Scan`, …), and whether any subplan is
/// hashed (a hashed subplan reads its whole table to build the hash).
fn scans(plan: &Value, found: &mut Vec<(String, String)>, hashed: &mut bool) {
    match plan {
        Value::Object(node) => {
            if let (Some(Value::String(name)), Some(Value::String(how))) =
                (node.get("Relation Name"), node.get("Node Type"))
            {
                found.push((name.clone(), how.clone()));
            }
            if node
                .get("Subplan Name")
                .and_then(Value::as_str)
                .is_some_and(|name| name.starts_with("hashed"))
            {
                *hashed = true;
            }
            node.values().for_each(|v| scans(v, found, hashed));
        }
        Value::Array(items) => items.iter().for_each(|v| scans(v, found, hashed)),
        _ => {}
    }
}

#[tokio::test]
async fn the_batched_lookup_probes_the_job_table_by_id_whatever_plan_postgres_keeps() {
    let env = TestEnv::start(vec![]).await;
    // A worker's statements are prepared once per connection, and after five runs Postgres may
    // keep a generic plan for the connection's life. A plan made while memoji_jobs was small (a
    // new deployment, the first minutes of a benchmark) must not read the whole table for every
    // batch once it has grown: the job id is probed by index, never hashed from a full scan.
    sqlx::query(
        "INSERT INTO memoji_jobs (job_id, user_id, status)
         SELECT gen_random_uuid(), 'user-' || n, 'succeeded' FROM generate_series(1, 2000) n",
    )
    .execute(&env.db)
    .await
    .unwrap();
    sqlx::query("ANALYZE memoji_jobs, memoji_cache, memoji_credit_balances")
        .execute(&env.db)
        .await
        .unwrap();
    let mut connection = env.db.acquire().await.unwrap();
    sqlx::query(&format!(
        "PREPARE look_up(uuid[], text[], text[], date) AS {}",
        memoji_worker::db::hits::LOOK_UP
    ))
    .execute(&mut *connection)
    .await
    .unwrap();
    let ids: Vec<String> = (0..64)
        .map(|_| format!("'{}'", uuid::Uuid::new_v4()))
        .collect();
    let keys = vec!["'0123456789abcdef'"; 64].join(",");
    let users = vec!["'user'"; 64].join(",");
    for mode in ["force_generic_plan", "force_custom_plan"] {
        sqlx::query(&format!("SET plan_cache_mode = {mode}"))
            .execute(&mut *connection)
            .await
            .unwrap();
        let plan: Value = sqlx::query_scalar(&format!(
            "EXPLAIN (FORMAT JSON) EXECUTE look_up(ARRAY[{}]::uuid[], ARRAY[{users}], ARRAY[{keys}], current_date)",
            ids.join(","),
        ))
        .fetch_one(&mut *connection)
        .await
        .unwrap();
        let (mut found, mut hashed) = (Vec::new(), false);
        scans(&plan, &mut found, &mut hashed);
        assert!(
            !hashed,
            "{mode}: a hashed subplan reads a whole table: {plan:#}"
        );
        let reads: Vec<&String> = found
            .iter()
            .filter(|(name, _)| name == "memoji_jobs")
            .map(|(_, how)| how)
            .collect();
        assert!(!reads.is_empty(), "{mode}: memoji_jobs is read: {plan:#}");
        assert!(
            reads.iter().all(|how| how.starts_with("Index")),
            "{mode}: memoji_jobs is read by index only, not {reads:?}: {plan:#}"
        );
    }
    drop(connection);
    env.cleanup().await;
}
