//! Tests leave nothing behind on the shared broker and database: not after a test that spawned
//! worker processes, and not after a test that failed half-way.

use lapin::options::{ExchangeDeclareOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use memoji_worker::broker::Broker;
use memoji_worker::config::Settings;
use sqlx::PgPool;

use crate::helpers::{TestEnv, openai_ok};

/// The test's queues and exchanges that still exist, and whether its database does.
async fn what_is_left(settings: &Settings) -> (Vec<String>, bool) {
    let mut probe = settings.amqp.clone();
    // A broker connection of its own, on the default names: declaring nothing of the test's.
    probe.prefix_names("probe");
    let broker = Broker::connect(&probe, "leftover probe").await.unwrap();
    let amqp = &settings.amqp;
    let mut left = Vec::new();
    for queue in [
        &amqp.job_queue,
        &amqp.result_queue,
        &amqp.metrics_queue,
        &amqp.dead_letter_queue,
    ] {
        // A passive declare fails (and closes its channel) when the queue does not exist.
        let channel = broker.channel().await.unwrap();
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        if channel
            .queue_declare(queue.as_str().into(), passive, FieldTable::default())
            .await
            .is_ok()
        {
            left.push(queue.clone());
        }
    }
    for exchange in [
        &amqp.result_exchange,
        &amqp.metrics_exchange,
        &amqp.dead_letter_exchange,
    ] {
        let channel = broker.channel().await.unwrap();
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        if channel
            .exchange_declare(
                exchange.as_str().into(),
                lapin::ExchangeKind::Topic,
                passive,
                FieldTable::default(),
            )
            .await
            .is_ok()
        {
            left.push(exchange.clone());
        }
    }
    broker.close().await;
    let url = secrecy::ExposeSecret::expose_secret(&settings.database.url).to_owned();
    let (server, name) = url.rsplit_once('/').unwrap();
    let admin = PgPool::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(name)
            .fetch_one(&admin)
            .await
            .unwrap();
    admin.close().await;
    (left, exists)
}

#[tokio::test]
async fn a_test_with_worker_processes_removes_its_queues_exchanges_and_database() {
    let mut env = TestEnv::without_worker(vec![openai_ok()], |_| {}).await;
    // Dropped only after the cleanup, as the tests in guarantees.rs do with theirs.
    let _worker = env.spawn_worker().await;
    let result = env.run(&env.job("u", serde_json::json!({}))).await;
    assert_eq!(result["status"], "succeeded");
    let settings = env.settings.clone();
    assert_eq!(
        what_is_left(&settings).await.0.len(),
        7,
        "the probe sees what exists"
    );
    env.cleanup().await;
    // A worker left running would declare everything again on its next reconnect.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(what_is_left(&settings).await, (vec![], false));
}

#[tokio::test]
async fn a_test_that_fails_half_way_still_removes_what_it_created() {
    // A failing #[tokio::test] of its own: a runtime on a thread, whose body panics before its
    // cleanup, with an in-process worker and a worker process running.
    let (settings_tx, settings_rx) = std::sync::mpsc::channel();
    let failing = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(async move {
            let env = TestEnv::start(vec![openai_ok()]).await;
            let _worker = env.spawn_worker().await;
            settings_tx.send(env.settings.clone()).unwrap();
            panic!("a test failing before its cleanup");
        })
    });
    assert!(failing.join().is_err(), "the inner test failed");
    let settings = settings_rx.recv().unwrap();
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    assert_eq!(what_is_left(&settings).await, (vec![], false));
}

#[tokio::test]
async fn a_database_derived_from_the_tests_name_goes_with_it() {
    // As a CLI test pointing a command at `<its database>_nokey` would leave one if it failed.
    let env = TestEnv::without_worker(vec![], |_| {}).await;
    let url = secrecy::ExposeSecret::expose_secret(&env.settings.database.url).to_owned();
    let (server, name) = url.rsplit_once('/').unwrap();
    let admin = PgPool::connect(&format!("{server}/postgres"))
        .await
        .unwrap();
    let derived = format!("{name}_derived");
    sqlx::query(&format!("CREATE DATABASE \"{derived}\""))
        .execute(&admin)
        .await
        .unwrap();
    env.cleanup().await;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&derived)
            .fetch_one(&admin)
            .await
            .unwrap();
    admin.close().await;
    assert!(!exists, "{derived} is left behind");
}
