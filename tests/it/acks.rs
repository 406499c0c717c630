//! Coalesced acks (`worker::acks`): hits settled together are acked together, but never by an
//! ack that also covers a delivery still at work, and never later than they would be alone.

use std::time::Duration;

use serde_json::json;

use crate::helpers::{TestEnv, job_ids, openai_ok};

/// The job queue's deliveries sent to a consumer and not yet acked, as the broker counts them.
async fn unacked(env: &TestEnv) -> u64 {
    let listing = tokio::process::Command::new("rabbitmqctl")
        .args([
            "list_queues",
            "name",
            "messages_unacknowledged",
            "-q",
            "--no-table-headers",
        ])
        .output()
        .await
        .expect("rabbitmqctl runs");
    String::from_utf8_lossy(&listing.stdout)
        .lines()
        .find_map(|line| {
            let (name, n) = line.split_once('\t')?;
            (name == env.settings.amqp.job_queue.as_str()).then(|| n.trim().parse().ok())?
        })
        .expect("the job queue is listed")
}

/// Waits (polling every 250 ms: each look starts an Erlang VM) until `n` deliveries are unacked.
async fn until_unacked(env: &TestEnv, n: u64) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let now = unacked(env).await;
        if now == n {
            return;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{now} deliveries unacked, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

#[tokio::test]
async fn hits_behind_a_miss_at_work_are_acked_at_once_and_the_miss_stays_unacked() {
    let mut env = TestEnv::start_with(vec![openai_ok(), openai_ok().held()], |s| {
        s.amqp.prefetch = 64;
    })
    .await;
    env.run(&env.job("u", json!({"hair": "a"}))).await;

    // The miss takes the lowest delivery tag and holds it: its generation waits at the gate.
    let miss = env.job("u", json!({"hair": "b"}));
    env.publish(&miss).await;
    env.openai.gate().wait_for(1).await;
    let hits: Vec<_> = (0..40)
        .map(|i| env.job(&format!("user-{i}"), json!({"hair": "a"})))
        .collect();
    // All at once, as a burst: the worker takes them in batches.
    futures_util::future::join_all(hits.iter().map(|hit| env.publish(hit))).await;
    let results = env
        .results_for_all(&job_ids(&hits), Duration::from_secs(60))
        .await;
    for hit in &hits {
        assert_eq!(results[hit["job_id"].as_str().unwrap()][0]["cached"], true);
    }

    // Every hit is acked although a lower tag is unsettled; a `multiple` ack would have taken
    // the miss's delivery with them (0 unacked).
    until_unacked(&env, 1).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(unacked(&env).await, 1, "the miss is still at work");

    env.openai.gate().open();
    let answered = env.result_of(miss["job_id"].as_str().unwrap()).await;
    assert_eq!(answered["status"], "succeeded");
    until_unacked(&env, 0).await;
    assert_eq!(env.messages_in(&env.settings.amqp.job_queue).await, 0);
    env.cleanup().await;
}

#[tokio::test]
async fn a_burst_of_hits_is_acked_in_fewer_frames_than_deliveries_and_all_are_acked() {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| s.amqp.prefetch = 64).await;
    env.run(&env.job("u", json!({}))).await;
    until_unacked(&env, 0).await;
    let (frames_before, acked_before) = (
        env.counter("memoji_ack_frames_total").await,
        env.counter("memoji_acked_deliveries_total").await,
    );
    let hits: Vec<_> = (0..300)
        .map(|i| env.job(&format!("user-{i}"), json!({})))
        .collect();
    // All at once, as a burst: the worker takes them in batches.
    futures_util::future::join_all(hits.iter().map(|hit| env.publish(hit))).await;
    env.results_for_all(&job_ids(&hits), Duration::from_secs(60))
        .await;
    until_unacked(&env, 0).await;
    let frames = env.counter("memoji_ack_frames_total").await - frames_before;
    let acked = env.counter("memoji_acked_deliveries_total").await - acked_before;
    assert_eq!(acked, 300.0, "every hit acked once");
    assert!(
        frames < acked,
        "{frames} ack frames for {acked} deliveries: none coalesced"
    );
    env.cleanup().await;
}
