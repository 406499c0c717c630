//! The promises of issue 3 under concurrency, crashes and faults, with real worker processes:
//! never lose a job, never charge or generate twice, single flight across processes.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde_json::{Value, json};

use crate::helpers::{TestEnv, count, eventually, job_ids, openai_ok};

const USERS: usize = 10;

/// `n` jobs over `keys` distinct configurations, interleaved, across [`USERS`] pro-tier users.
fn mixed_jobs(n: usize, keys: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "job_id": uuid::Uuid::new_v4().to_string(),
                "user_id": format!("user-{}", i % USERS),
                "tier": "monthly_pro",
                "config": {"hair": format!("style-{}", i % keys), "accessories": ["hat"]}
            })
        })
        .collect()
}

/// Each job's results are identical, and credits add up: the balance equals the ledger's
/// unrefunded charges, which equal the results that say a credit was charged.
async fn assert_consistent(env: &TestEnv, results: &HashMap<String, Vec<Value>>) {
    for (id, copies) in results {
        assert!(
            copies.iter().all(|r| r == &copies[0]),
            "job {id} got different results: {copies:?}"
        );
    }
    let charged_results = results
        .values()
        .filter(|copies| copies[0]["credits_charged"] == 1)
        .count() as i64;
    let ledger = count(
        &env.db,
        "SELECT count(*) FROM memoji_credit_ledger WHERE refunded_at IS NULL",
    )
    .await;
    let used = count(
        &env.db,
        "SELECT COALESCE(sum(used), 0)::bigint FROM memoji_credit_balances",
    )
    .await;
    assert_eq!(ledger, charged_results, "ledger vs results");
    assert_eq!(used, ledger, "balances vs ledger");
}

#[tokio::test]
async fn forty_identical_jobs_on_three_processes_call_openai_once_and_charge_once() {
    let mut env = TestEnv::without_worker(vec![openai_ok().held()], |s| {
        s.amqp.prefetch = 5;
    })
    .await;
    let workers = [
        env.spawn_worker().await,
        env.spawn_worker().await,
        env.spawn_worker().await,
    ];
    let jobs: Vec<Value> = (0..40)
        .map(|_| env.job("same-user", json!({"hair": "long", "gesture": "peace"})))
        .collect();
    for job in &jobs {
        env.publish(job).await;
    }
    // The one generation is held mid-flight until every process has filled its prefetch with
    // jobs waiting for it (3 × 5 in hand, 25 still queued): none of them calls OpenAI.
    env.openai.gate().wait_for(1).await;
    let queue = env.settings.amqp.job_queue.clone();
    eventually("every process holding five jobs", || async {
        (env.messages_in(&queue).await == 25).then_some(())
    })
    .await;
    assert_eq!(env.openai.calls(), 1, "the waiting jobs call no one");
    env.openai.gate().open();
    let results = env
        .results_for_all(&job_ids(&jobs), Duration::from_secs(60))
        .await;
    assert_eq!(results.len(), 40);
    assert!(
        results.values().all(|r| r[0]["status"] == "succeeded"),
        "{results:?}"
    );
    let generated = results.values().filter(|r| r[0]["cached"] == false).count();
    assert_eq!(generated, 1, "exactly one job generated");
    assert_eq!(env.openai.calls(), 1, "OpenAI called once");
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_credit_ledger").await,
        1,
        "one credit charged"
    );
    assert_consistent(&env, &results).await;
    // Several processes took part.
    let busy = workers
        .iter()
        .filter(|w| w.log().contains("result published"))
        .count();
    assert!(busy >= 2, "only {busy} of 3 processes handled jobs");
    env.cleanup().await;
}

#[tokio::test]
async fn the_same_job_published_twice_at_once_is_generated_and_charged_once() {
    let mut env = TestEnv::start(vec![openai_ok().held()]).await;
    let job = env.job("u", json!({"hair": "curly"}));
    env.publish(&job).await;
    env.publish(&job).await;
    // The first copy's generation is held until the second copy is in the worker's hands too.
    env.openai.gate().wait_for(1).await;
    let queue = env.settings.amqp.job_queue.clone();
    eventually("both copies delivered", || async {
        (env.messages_in(&queue).await == 0).then_some(())
    })
    .await;
    env.openai.gate().open();
    let mut copies = Vec::new();
    while copies.len() < 2 {
        let delivery = env.next_delivery().await;
        copies.push(serde_json::from_slice::<Value>(&delivery.data).unwrap());
    }
    assert_eq!(copies[0], copies[1], "identical results");
    assert_eq!(copies[0]["status"], "succeeded");
    assert_eq!(env.openai.calls(), 1);
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_credit_ledger").await,
        1
    );
    assert_eq!(
        count(
            &env.db,
            "SELECT sum(used)::bigint FROM memoji_credit_balances"
        )
        .await,
        1
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_free_user_gets_two_misses_then_out_of_credits_but_still_hits_and_a_new_month_restores() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let job = |hair: &str| json!({"job_id": uuid::Uuid::new_v4().to_string(), "user_id": "free-user", "config": {"hair": hair}});
    let first = env.run(&job("a")).await;
    assert_eq!(
        (
            first["status"].as_str(),
            first["credits_remaining"].as_i64()
        ),
        (Some("succeeded"), Some(1))
    );
    let second = env.run(&job("b")).await;
    assert_eq!(
        (
            second["status"].as_str(),
            second["credits_remaining"].as_i64()
        ),
        (Some("succeeded"), Some(0))
    );

    let third = env.run(&job("c")).await;
    assert_eq!(third["status"], "failed");
    assert_eq!(third["error"]["code"], "out_of_credits");
    assert_eq!(third["credits_remaining"], 0);
    assert_eq!(third["credits_charged"], 0);
    assert_eq!(env.openai.calls(), 2, "no OpenAI call without credits");

    let hit = env.run(&job("a")).await;
    assert_eq!(hit["status"], "succeeded", "hits need no credits");
    assert_eq!(hit["cached"], true);

    // The month turns: last month's balance stays behind, this month's allowance is fresh.
    sqlx::query("UPDATE memoji_credit_balances SET period = (period - interval '1 month')::date")
        .execute(&env.db)
        .await
        .unwrap();
    let next_month = env.run(&job("c")).await;
    assert_eq!(next_month["status"], "succeeded", "{next_month}");
    assert_eq!(next_month["credits_remaining"], 1);
    assert_eq!(env.openai.calls(), 3);
    env.cleanup().await;
}

#[tokio::test]
async fn sigkill_in_the_middle_of_a_thousand_jobs_loses_nothing_and_charges_nobody_twice() {
    const JOBS: usize = 1000;
    const KEYS: usize = 200;
    let mut env = TestEnv::without_worker(
        vec![openai_ok().set_delay(Duration::from_millis(30))],
        |s| {
            s.amqp.prefetch = 32;
            s.openai.max_concurrency = 8;
            s.worker.lease_secs = 3;
        },
    )
    .await;
    let worker = env.spawn_worker().await;
    let jobs = mixed_jobs(JOBS, KEYS);
    for job in &jobs {
        env.publish(job).await;
    }
    // Let it get well into the run, then kill it without warning.
    env.await_results(150).await;
    worker.kill().await;
    let calls_at_kill = env.openai.calls();

    let _restarted = env.spawn_worker().await;
    let results = env
        .results_for_all(&job_ids(&jobs), Duration::from_secs(120))
        .await;
    assert_eq!(results.len(), JOBS, "every job has a result");
    assert!(results.values().all(|r| r[0]["status"] == "succeeded"));
    let calls = env.openai.calls() as usize;
    let extra = calls - KEYS;
    eprintln!(
        "sigkill: {calls} OpenAI calls for {KEYS} keys ({extra} repeated; {calls_at_kill} made before the kill)"
    );
    assert!(calls >= KEYS, "every key generated");
    assert!(
        extra <= 8,
        "at most the generations in flight at the kill are repeated: {extra}"
    );
    let generated = count(&env.db, "SELECT count(*) FROM memoji_cache").await;
    assert_eq!(generated, KEYS as i64);
    assert_consistent(&env, &results).await;
    env.cleanup().await;
}

#[tokio::test]
async fn broker_connection_loss_and_database_session_kills_mid_run_lose_nothing() {
    const JOBS: usize = 300;
    const KEYS: usize = 60;
    let mut env = TestEnv::start_with(
        vec![openai_ok().set_delay(Duration::from_millis(50))],
        |s| {
            s.amqp.prefetch = 16;
            s.worker.lease_secs = 3;
        },
    )
    .await;
    let jobs = mixed_jobs(JOBS, KEYS);
    for job in &jobs {
        env.publish(job).await;
    }
    env.await_results(60).await;
    assert!(
        env.close_worker_connections().await >= 1,
        "the worker's broker connection was found and closed"
    );
    assert!(
        env.terminate_database_sessions().await >= 1,
        "database sessions were terminated"
    );
    env.await_results(30).await;
    env.terminate_database_sessions().await;

    let results = env
        .results_for_all(&job_ids(&jobs), Duration::from_secs(120))
        .await;
    assert_eq!(results.len(), JOBS);
    assert!(
        results.values().all(|r| r[0]["status"] == "succeeded"),
        "no job failed for a transient fault"
    );
    let calls = env.openai.calls() as usize;
    eprintln!("faults: {calls} OpenAI calls for {KEYS} keys");
    assert!((KEYS..=KEYS + 16).contains(&calls), "{calls}");
    assert_consistent(&env, &results).await;
    env.cleanup().await;
}

#[tokio::test]
async fn sigterm_with_slow_generations_in_flight_finishes_them_and_exits_within_the_grace_period() {
    let mut env = TestEnv::without_worker(vec![openai_ok().held()], |s| {
        s.openai.max_concurrency = 4;
        s.worker.shutdown_grace_secs = 10;
    })
    .await;
    let worker = env.spawn_worker().await;
    let jobs: Vec<Value> = (0..8)
        .map(|i| env.job("u", json!({"hair": format!("slow-{i}")})))
        .collect();
    for job in &jobs {
        env.publish(job).await;
    }
    // Four generations in flight, held there; four jobs waiting for a turn.
    env.openai.gate().wait_for(4).await;
    assert_eq!(env.openai.calls(), 4);
    let terminated = tokio::spawn(worker.terminate(Duration::from_secs(20)));
    // The four waiting go back to the queue at once, while the four in flight are still held.
    let queue = env.settings.amqp.job_queue.clone();
    eventually("the waiting jobs handed back", || async {
        (env.messages_in(&queue).await == 4).then_some(())
    })
    .await;
    assert!(
        !terminated.is_finished(),
        "it waits for the generations in flight"
    );
    env.openai.gate().open();
    let (status, took) = terminated.await.unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(10), "took {took:?}");
    // The four in flight finished before the exit; the four waiting for a turn went back.
    let finished = env.drain(Duration::from_millis(300)).await;
    assert_eq!(finished.len(), 4, "{finished:?}");
    let finished_ids: HashSet<String> = finished
        .iter()
        .map(|r| r["job_id"].as_str().unwrap().to_owned())
        .collect();
    let handed_back: HashSet<String> = job_ids(&jobs).difference(&finished_ids).cloned().collect();

    let _restarted = env.spawn_worker().await;
    let results = env
        .results_for_all(&handed_back, Duration::from_secs(60))
        .await;
    assert_eq!(
        results.len(),
        4,
        "the handed-back jobs complete after the restart: {results:?}"
    );
    assert!(
        results
            .values()
            .all(|r| r.len() == 1 && r[0]["status"] == "succeeded"),
        "{results:?}"
    );
    let repeated = env.drain(Duration::from_millis(500)).await;
    assert!(
        repeated.is_empty(),
        "finished jobs are not answered again: {repeated:?}"
    );
    assert_eq!(env.openai.calls(), 8, "nothing generated twice");
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_credit_ledger").await,
        8
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_database_outage_hands_jobs_back_and_they_all_complete_once_it_returns() {
    const JOBS: usize = 100;
    const KEYS: usize = 20;
    let mut env = TestEnv::without_worker(
        vec![openai_ok().set_delay(Duration::from_millis(50))],
        |s| {
            s.worker.lease_secs = 3;
        },
    )
    .await;
    let proxy = crate::helpers::FaultyProxy::to("127.0.0.1:5432").await;
    let direct = env.settings.database.url.expose_secret().to_owned();
    let proxied = direct.replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    assert_ne!(direct, proxied);
    let worker = env
        .spawn_worker_with(|s| {
            s.database.url = SecretString::from(proxied);
            s.database.acquire_timeout_secs = 1;
        })
        .await;
    let jobs = mixed_jobs(JOBS, KEYS);
    for job in &jobs {
        env.publish(job).await;
    }
    env.await_results(20).await;

    proxy.cut();
    // Readiness tells the truth while the database is away.
    let mut unready = false;
    for _ in 0..50 {
        let status = env
            .http
            .get(format!("{}/readyz", worker.http))
            .send()
            .await
            .unwrap()
            .status();
        if status == 503 {
            unready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(unready, "/readyz reports the database outage");
    tokio::time::sleep(Duration::from_secs(3)).await;
    proxy.restore();

    let results = env
        .results_for_all(&job_ids(&jobs), Duration::from_secs(90))
        .await;
    assert_eq!(results.len(), JOBS, "every job completes after the outage");
    assert!(
        results.values().all(|r| r[0]["status"] == "succeeded"),
        "{results:?}"
    );
    let calls = env.openai.calls() as usize;
    eprintln!("database outage: {calls} OpenAI calls for {KEYS} keys");
    assert!((KEYS..=KEYS + 8).contains(&calls), "{calls}");
    assert_consistent(&env, &results).await;
    assert!(
        worker.log().contains("transient failure"),
        "jobs were handed back during the outage"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn a_worker_started_while_the_database_is_away_waits_for_it() {
    let mut env = TestEnv::without_worker(vec![openai_ok()], |_| {}).await;
    let proxy = crate::helpers::FaultyProxy::to("127.0.0.1:5432").await;
    let proxied = env
        .settings
        .database
        .url
        .expose_secret()
        .replace("127.0.0.1:5432", &format!("127.0.0.1:{}", proxy.port));
    proxy.cut();
    let restore = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.restore();
    };
    let start = env.spawn_worker_with(|s| s.database.url = SecretString::from(proxied));
    let (worker, ()) = tokio::join!(start, restore);
    assert!(
        worker.log().contains("database out of reach; retrying"),
        "{}",
        worker.log()
    );
    let result = env.run(&env.job("u", json!({}))).await;
    assert_eq!(result["status"], "succeeded");
    env.cleanup().await;
}

#[tokio::test]
async fn with_credits_switched_off_nothing_is_charged_or_limited() {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| s.credits.enabled = false).await;
    for hair in ["a", "b", "c"] {
        let job = json!({"job_id": uuid::Uuid::new_v4().to_string(), "user_id": "free-user", "config": {"hair": hair}});
        let result = env.run(&job).await;
        assert_eq!(
            result["status"], "succeeded",
            "a free user is not limited: {result}"
        );
        assert_eq!(result["credits_charged"], 0);
        assert_eq!(result["credits_remaining"], Value::Null);
    }
    assert_eq!(env.openai.calls(), 3);
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_credit_ledger").await,
        0
    );
    env.cleanup().await;
}
