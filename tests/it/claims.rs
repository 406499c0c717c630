//! Claims under faults (issue 10): a lost claim stops the work from publishing a result of its
//! own, a broker drop does not hold back the jobs after it, and a process killed with hits in hand
//! has them taken over in seconds.

use std::time::{Duration, Instant};

use memoji_worker::job::{ErrorCode, JobError, JobId, JobResult};
use serde_json::{Value, json};

use crate::helpers::{TestEnv, count, eventually, job_ids, openai_ok};

fn id_of(job: &Value) -> uuid::Uuid {
    job["job_id"].as_str().unwrap().parse().unwrap()
}

/// While a generation runs, another delivery takes the job over and finishes it (here: the test
/// writes that delivery's result). The first delivery's result must not replace it or be
/// published: the job has one result, the one recorded first.
#[tokio::test]
async fn a_delivery_that_lost_its_claim_does_not_publish_a_result_of_its_own() {
    let mut env =
        TestEnv::start_with(vec![openai_ok().held()], |s| s.credits.enabled = false).await;
    let job = env.job("u", json!({"hair": "contested"}));
    let id = id_of(&job);
    env.publish(&job).await;
    // The generation is held in flight while the job is taken over.
    env.openai.gate().wait_for(1).await;
    let elsewhere = JobResult::failure(
        JobId(id),
        "u",
        None,
        JobError {
            code: ErrorCode::Internal,
            message: "finished by another delivery".into(),
            retryable: true,
        },
    );
    let taken = sqlx::query(
        "UPDATE memoji_jobs SET owner = gen_random_uuid(), status = 'failed', result = $2,
                owner_expires_at = NULL
          WHERE job_id = $1 AND status = 'processing'",
    )
    .bind(id)
    .bind(serde_json::to_value(&elsewhere).unwrap())
    .execute(&env.db)
    .await
    .unwrap();
    assert_eq!(taken.rows_affected(), 1, "taken over mid-generation");
    env.openai.gate().open();

    let published = env.result_of(&id.to_string()).await;
    assert_eq!(
        published["error"]["message"], "finished by another delivery",
        "the recorded result is the one published: {published}"
    );
    let stored: Value = sqlx::query_scalar("SELECT result FROM memoji_jobs WHERE job_id = $1")
        .bind(id)
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(stored["error"]["message"], "finished by another delivery");
    let more = env.drain(Duration::from_millis(1000)).await;
    assert!(more.is_empty(), "no second result: {more:?}");
    env.cleanup().await;
}

/// The broker drops the worker's connection while a slow generation is in flight. The worker
/// reconnects at once: a hit published right after is answered in well under the generation's
/// time, and the slow job still ends in one result, generated once.
#[tokio::test]
async fn after_a_broker_drop_hits_are_answered_at_once_while_a_slow_generation_finishes() {
    let mut env = TestEnv::start_with(vec![openai_ok(), openai_ok().held(), openai_ok()], |s| {
        s.worker.shutdown_grace_secs = 30
    })
    .await;
    let primed = env.run(&env.job("u", json!({"hair": "cached"}))).await;
    assert_eq!(primed["status"], "succeeded");
    let slow = env.job("u", json!({"hair": "slow"}));
    env.publish(&slow).await;
    // The slow generation is held in flight until the hit has been answered.
    env.openai.gate().wait_for(1).await;
    assert!(env.close_worker_connections().await >= 1);

    let started = Instant::now();
    let hit = env.run(&env.job("u", json!({"hair": "cached"}))).await;
    let took = started.elapsed();
    eprintln!("hit answered {took:?} after the broker drop");
    assert_eq!(hit["cached"], true, "{hit}");
    assert!(took < Duration::from_secs(3), "the hit waited {took:?}");
    env.openai.gate().open();

    let result = env.result_of(slow["job_id"].as_str().unwrap()).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(env.openai.calls(), 2, "the slow job was generated once");
    let more = env.drain(Duration::from_millis(1000)).await;
    assert!(more.is_empty(), "answered once: {more:?}");
    env.cleanup().await;
}

/// A worker is killed (SIGKILL) with hits in hand: their rows are claimed, their results not yet
/// recorded. The broker redelivers them to the next worker, which takes them over within seconds
/// (a hit's claim is short), not after the full generation lease.
#[tokio::test]
async fn after_kill_9_redelivered_hits_are_taken_over_within_seconds() {
    // The one-job path (group commit off): each hit claims its job, then records its result.
    kill_9_while_hits_are_stalled(0, "UPDATE").await;
}

#[tokio::test]
async fn after_kill_9_hits_stalled_in_a_batch_are_answered_at_once() {
    // Group commit: a batch records finished results in one INSERT; nothing is claimed, so
    // nothing has to expire.
    kill_9_while_hits_are_stalled(64, "INSERT").await;
}

/// Stalls every hit's recording statement (`stalled`: the statement kind) on a worker process,
/// kills it, and checks a new process answers them all within seconds, with no second
/// generation.
async fn kill_9_while_hits_are_stalled(hit_batch_max: u32, stalled: &str) {
    const HITS: usize = 4;
    let mut env = TestEnv::without_worker(vec![openai_ok()], |s| {
        s.worker.lease_secs = 60;
        s.worker.hit_batch_max = hit_batch_max;
    })
    .await;
    let first = env.spawn_worker().await;
    let primed = env.run(&env.job("u", json!({"hair": "cached"}))).await;
    assert_eq!(primed["status"], "succeeded");
    // Hold every hit before its result: the statement recording a result stalls.
    sqlx::raw_sql(&format!(
        "CREATE FUNCTION it_stall() RETURNS trigger LANGUAGE plpgsql AS
             $$ BEGIN PERFORM pg_sleep(600); RETURN NEW; END $$;
         CREATE TRIGGER it_stall BEFORE {stalled} ON memoji_jobs FOR EACH ROW
             WHEN (NEW.status <> 'processing') EXECUTE FUNCTION it_stall();"
    ))
    .execute(&env.db)
    .await
    .unwrap();
    let hits: Vec<Value> = (0..HITS)
        .map(|_| env.job("u", json!({"hair": "cached"})))
        .collect();
    for job in &hits {
        env.publish(job).await;
    }
    // Every hit is held: the one-job path's claims are in, or a batch is asleep in the trigger
    // with all of them delivered (none left ready in the queue).
    let stalled_sessions = "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() AND wait_event = 'PgSleep'";
    let claimed = "SELECT count(*) FROM memoji_jobs WHERE status = 'processing'";
    eventually("the hits to be held", || async {
        let held = if hit_batch_max == 0 {
            count(&env.db, claimed).await == HITS as i64
        } else {
            count(&env.db, stalled_sessions).await >= 1
                && env.messages_in(&env.settings.amqp.job_queue).await == 0
        };
        held.then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    first.kill().await;
    // The killed process's stalled statements end with their sessions.
    let ended: i64 = sqlx::query_scalar(
        "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity
          WHERE datname = current_database() AND wait_event = 'PgSleep'",
    )
    .fetch_one(&env.db)
    .await
    .unwrap();
    if hit_batch_max == 0 {
        assert_eq!(ended, HITS as i64, "every hit was stalled");
    } else {
        assert!(ended >= 1, "the batch was stalled");
    }
    sqlx::raw_sql("DROP TRIGGER it_stall ON memoji_jobs; DROP FUNCTION it_stall();")
        .execute(&env.db)
        .await
        .unwrap();

    let started = Instant::now();
    let _second = env.spawn_worker().await;
    let ids = job_ids(&hits);
    let results = env.results_for_all(&ids, Duration::from_secs(40)).await;
    let took = started.elapsed();
    eprintln!("redelivered hits answered {took:?} after the restart");
    assert!(
        ids.iter()
            .all(|id| results[id][0]["status"] == "succeeded" && results[id][0]["cached"] == true),
        "{results:?}"
    );
    assert!(took < Duration::from_secs(15), "took {took:?}");
    assert_eq!(env.openai.calls(), 1);
    env.cleanup().await;
}
