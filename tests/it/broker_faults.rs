//! The broker side of "every job is answered" under faults (issue 10): a publishing channel the
//! broker closes, a result queue that disappears, replies that cannot be delivered or that poison
//! a connection, `reply_to` naming the worker's own queues, the delivery budget running out, and
//! what the dead-letter copy keeps.

use std::time::{Duration, Instant};

use lapin::BasicProperties;
use lapin::options::{ExchangeDeleteOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use serde_json::{Value, json};

use crate::helpers::{TestEnv, count, dead_letter_reason as reason, job_ids, openai_ok};

fn body(job: &Value) -> Vec<u8> {
    serde_json::to_vec(job).unwrap()
}

async fn deliveries(env: &TestEnv, job: &Value) -> i64 {
    let sql = format!(
        "SELECT COALESCE(max(deliveries), 0)::bigint FROM memoji_jobs WHERE job_id = '{}'",
        job["job_id"].as_str().unwrap()
    );
    count(&env.db, &sql).await
}

async fn ready(env: &TestEnv, base: &str) -> u16 {
    env.http
        .get(format!("{base}/readyz"))
        .send()
        .await
        .map(|r| r.status().as_u16())
        .unwrap_or(0)
}

/// A publish to an exchange that is gone makes the broker close the publishing channel (404).
/// The worker reopens it: once the exchange is back, the job that hit the fault and every later
/// one are answered, and `/readyz` says ready because it is.
#[tokio::test]
async fn a_publishing_channel_the_broker_closes_is_reopened_and_later_jobs_are_answered() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let channel = env.broker.channel().await.unwrap();
    channel
        .exchange_delete(
            env.settings.amqp.result_exchange.as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await
        .unwrap();
    let first = env.job("u", json!({"hair": "a"}));
    env.publish(&first).await;
    // Its first delivery fails to publish (the channel is closed under it) and is handed back.
    crate::helpers::eventually("the first delivery", || async {
        (deliveries(&env, &first).await >= 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.broker.declare().await.unwrap();

    let answered = env.result_of(first["job_id"].as_str().unwrap()).await;
    assert_eq!(answered["status"], "succeeded", "{answered}");
    for hair in ["b", "c", "d"] {
        let started = Instant::now();
        let result = env.run(&env.job("u", json!({"hair": hair}))).await;
        assert_eq!(result["status"], "succeeded", "{result}");
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
    }
    assert_eq!(ready(&env, &env.http_base()).await, 200);
    assert_eq!(env.openai.calls(), 4, "nothing generated twice");
    env.cleanup().await;
}

/// With the result queue gone, a result is unroutable. The job is handed back with a growing
/// pause (not 21 times in a fraction of a second until the delivery limit dead-letters it), and
/// answered once the queue is back.
#[tokio::test]
async fn a_result_queue_that_disappears_backs_off_and_the_job_is_answered_when_it_is_back() {
    let env = TestEnv::start(vec![openai_ok()]).await;
    let amqp = env.settings.amqp.clone();
    let channel = env.broker.channel().await.unwrap();
    channel
        .queue_delete(
            amqp.result_queue.as_str().into(),
            QueueDeleteOptions::default(),
        )
        .await
        .unwrap();
    let job = env.job("u", json!({}));
    env.publish(&job).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let tries = deliveries(&env, &job).await;
    assert!(
        (1..=6).contains(&tries),
        "{tries} deliveries in 3 s: the retries back off"
    );
    assert_eq!(
        env.messages_in(&amqp.dead_letter_queue).await,
        0,
        "nothing dead-lettered meanwhile"
    );

    env.broker.declare().await.unwrap();
    let delivery = env
        .take_from(&amqp.result_queue)
        .await
        .expect("the job is answered once the result queue is back");
    let result: Value = serde_json::from_slice(&delivery.data).unwrap();
    assert_eq!(result["job_id"], job["job_id"]);
    assert_eq!(result["status"], "succeeded");
    assert_eq!(env.openai.calls(), 1, "the retries did not generate again");
    env.cleanup().await;
}

/// A reply queue that refuses messages (full, `reject-publish`) nacks the reply. The result is on
/// the result queue once; the job is not run again and not answered again.
#[tokio::test]
async fn a_reply_that_is_refused_does_not_make_the_job_run_or_answer_again() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let channel = env.broker.channel().await.unwrap();
    let full = format!("{}.full-replies", env.id);
    let mut arguments = FieldTable::default();
    arguments.insert("x-max-length".into(), AMQPValue::LongLongInt(0));
    arguments.insert(
        "x-overflow".into(),
        AMQPValue::LongString("reject-publish".into()),
    );
    channel
        .queue_declare(
            full.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            arguments,
        )
        .await
        .unwrap();
    let job = env.job("u", json!({}));
    env.publish_raw(
        &body(&job),
        BasicProperties::default().with_reply_to(full.as_str().into()),
    )
    .await;
    let result = env.result_of(job["job_id"].as_str().unwrap()).await;
    assert_eq!(result["status"], "succeeded");
    let again = env.drain(Duration::from_millis(1500)).await;
    assert!(
        again.is_empty(),
        "answered once: {} more copies",
        again.len()
    );
    assert_eq!(deliveries(&env, &job).await, 1, "delivered once");
    let _ = channel
        .queue_delete(full.as_str().into(), QueueDeleteOptions::default())
        .await;
    env.cleanup().await;
}

/// `reply_to` naming the job queue would send the `invalid_job` answer back in as a job, to be
/// charged and generated. It is ignored (CONTRACT.md §2.1): one answer, no call, no charge.
#[tokio::test]
async fn reply_to_naming_the_workers_own_queues_is_ignored() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let own = [
        env.settings.amqp.job_queue.clone(),
        env.settings.amqp.result_queue.clone(),
        env.settings.amqp.dead_letter_queue.clone(),
    ];
    for queue in &own {
        let job = env.job("u", json!({"size": "13x13"}));
        env.publish_raw(
            &body(&job),
            BasicProperties::default().with_reply_to(queue.as_str().into()),
        )
        .await;
        let result = env.result_of(job["job_id"].as_str().unwrap()).await;
        assert_eq!(result["error"]["code"], "invalid_job", "{result}");
    }
    let more = env.drain(Duration::from_millis(1500)).await;
    assert!(more.is_empty(), "one answer per job: {more:?}");
    assert_eq!(env.openai.calls(), 0, "no answer came back as a job");
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_credit_ledger").await,
        0
    );
    let dead = env.settings.amqp.dead_letter_queue.clone();
    assert_eq!(
        env.messages_in(&dead).await,
        0,
        "no reply went into the dead-letter queue"
    );
    env.cleanup().await;
}

/// An `invalid_job` answer is recorded under its job id: the id sent again, even with a body that
/// would be valid, is answered with the recorded result, never charged or generated.
#[tokio::test]
async fn a_job_id_answered_invalid_is_answered_again_not_done() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let invalid = env.job("u", json!({"size": "13x13"}));
    let first = env.run(&invalid).await;
    assert_eq!(first["error"]["code"], "invalid_job");
    let mut corrected = invalid.clone();
    corrected["config"] = json!({});
    let second = env.run(&corrected).await;
    assert_eq!(second, first, "the recorded answer, again");
    assert_eq!(env.openai.calls(), 0);
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_credit_ledger").await,
        0
    );
    env.cleanup().await;
}

/// A direct reply-to name that is not one (its pid part, `eHl6`, is base64 of no Erlang term) makes
/// RabbitMQ close the publishing connection with 541 INTERNAL_ERROR. Replies
/// go out on a connection of their own: the job connection, its consumer and every job in flight
/// are untouched, and the poisoned job is answered once.
#[tokio::test]
async fn a_poisoning_reply_to_cannot_close_the_job_connection() {
    let mut env = TestEnv::without_worker(
        vec![openai_ok().set_delay(Duration::from_millis(300))],
        |_| {},
    )
    .await;
    let worker = env.spawn_worker().await;
    let poisoned = env.job("u", json!({"hair": "poison"}));
    env.publish_raw(
        &body(&poisoned),
        BasicProperties::default().with_reply_to("amq.rabbitmq.reply-to.eHl6.abc".into()),
    )
    .await;
    let others: Vec<Value> = (0..10)
        .map(|i| env.job("u", json!({"hair": format!("other-{i}")})))
        .collect();
    for job in &others {
        env.publish(job).await;
    }
    let mut ids = job_ids(&others);
    ids.insert(poisoned["job_id"].as_str().unwrap().to_owned());
    let mut results = env.results_for_all(&ids, Duration::from_secs(30)).await;
    for copy in env.drain(Duration::from_millis(1500)).await {
        let id = copy["job_id"].as_str().unwrap().to_owned();
        results.entry(id).or_default().push(copy);
    }
    assert!(
        results.values().all(|copies| copies.len() == 1),
        "every job answered once: {:?}",
        results.values().map(Vec::len).collect::<Vec<_>>()
    );
    assert!(
        results.values().all(|c| c[0]["status"] == "succeeded"),
        "{results:?}"
    );
    let log = worker.log();
    assert!(
        !log.contains("broker connection lost"),
        "the job connection stayed up: {log}"
    );
    assert!(
        log.contains("reply_to copy could not be delivered"),
        "the bad reply was logged"
    );
    assert_eq!(env.openai.calls(), 11);

    // The reply connection the broker closed is opened again for the next reply.
    let (reply_channel, replies) = env.reply_queue().await;
    let asking = env.job("u", json!({"hair": "other-0"}));
    env.publish_raw(
        &body(&asking),
        BasicProperties::default().with_reply_to(replies.as_str().into()),
    )
    .await;
    let mut consumer = reply_channel
        .basic_consume(
            replies.as_str().into(),
            "".into(),
            lapin::options::BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    use futures_util::StreamExt;
    let reply = tokio::time::timeout(Duration::from_secs(10), consumer.next())
        .await
        .expect("a reply")
        .expect("the reply consumer is open")
        .unwrap();
    let reply: Value = serde_json::from_slice(&reply.data).unwrap();
    assert_eq!(reply["job_id"], asking["job_id"]);
    env.cleanup().await;
}

/// A job that fails on every delivery (here: its row is locked by a stuck transaction, which the
/// worker's `lock_timeout` turns into a failure instead of a wait without end) is answered
/// `internal` (retryable) on its last delivery and dead-lettered with our reason, instead of
/// vanishing into the dead-letter queue in silence.
#[tokio::test]
async fn the_last_delivery_answers_internal_and_dead_letters_with_a_reason() {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| {
        s.amqp.delivery_limit = 2;
        s.database.lock_timeout_ms = 200;
    })
    .await;
    let job = env.job("u", json!({}));
    let id: uuid::Uuid = job["job_id"].as_str().unwrap().parse().unwrap();
    // A transaction that inserted the job's row and never ends: every arrival waits on it.
    let mut stuck = env.db.begin().await.unwrap();
    sqlx::query("INSERT INTO memoji_jobs (job_id, user_id, status) VALUES ($1, 'u', 'processing')")
        .bind(id)
        .execute(&mut *stuck)
        .await
        .unwrap();
    let started = Instant::now();
    env.publish(&job).await;
    let result = env.result_of(&id.to_string()).await;
    eprintln!("answered internal after {:?}", started.elapsed());
    assert_eq!(result["status"], "failed", "{result}");
    assert_eq!(result["error"]["code"], "internal", "{result}");
    assert_eq!(result["error"]["retryable"], true, "{result}");
    assert_eq!(result["credits_charged"], 0);
    let letter = env
        .take_from(&env.settings.amqp.dead_letter_queue.clone())
        .await
        .expect("dead-lettered");
    assert_eq!(serde_json::from_slice::<Value>(&letter.data).unwrap(), job);
    let why = reason(&letter);
    assert!(why.contains("gave up after 3 deliveries"), "{why}");
    stuck.rollback().await.unwrap();
    assert!(
        env.drain(Duration::from_millis(500)).await.is_empty(),
        "one answer"
    );
    assert_eq!(env.openai.calls(), 0);
    env.cleanup().await;
}

/// The dead-letter copy of a message loses its `expiration`, so it stays in the dead-letter queue
/// for someone to look at instead of vanishing there.
#[tokio::test]
async fn a_dead_letter_copy_does_not_expire() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    env.publish_raw(
        b"not json, expiring",
        BasicProperties::default().with_expiration("1000".into()),
    )
    .await;
    tokio::time::sleep(Duration::from_millis(2000)).await;
    let letter = env
        .take_from(&env.settings.amqp.dead_letter_queue.clone())
        .await
        .expect("the copy is still in the dead-letter queue");
    assert_eq!(letter.data, b"not json, expiring");
    assert_eq!(letter.properties.expiration(), &None);
    let result = env.run(&env.job("u", json!({}))).await;
    assert_eq!(result["status"], "succeeded");
    env.cleanup().await;
}

/// A message published by another broker user carries its AMQP `user_id`; a copy with it, from the
/// worker's user, is refused by the broker (406, closing the channel). The copy drops it: the
/// message is dead-lettered and the jobs after it are answered.
#[tokio::test]
async fn a_message_with_another_users_user_id_is_dead_lettered_and_later_jobs_are_answered() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let user = BrokerUser::add(&env.id).await;
    let other = lapin::Connection::connect(&user.url(), lapin::ConnectionProperties::default())
        .await
        .unwrap();
    let channel = other.create_channel().await.unwrap();
    channel
        .basic_publish(
            "".into(),
            env.settings.amqp.job_queue.as_str().into(),
            lapin::options::BasicPublishOptions::default(),
            b"not json, from another user",
            BasicProperties::default().with_user_id(user.name.as_str().into()),
        )
        .await
        .unwrap()
        .await
        .unwrap();
    let letter = env
        .take_from(&env.settings.amqp.dead_letter_queue.clone())
        .await
        .expect("dead-lettered");
    assert_eq!(letter.data, b"not json, from another user");
    assert_eq!(letter.properties.user_id(), &None);
    let started = Instant::now();
    let result = env.run(&env.job("u", json!({}))).await;
    assert_eq!(result["status"], "succeeded");
    assert!(started.elapsed() < Duration::from_secs(5));
    let _ = other.close(200, "done".into()).await;
    drop(user);
    env.cleanup().await;
}

/// A broker user of a test's own (rabbitmqctl), removed afterwards.
struct BrokerUser {
    name: String,
}

impl BrokerUser {
    async fn add(id: &str) -> BrokerUser {
        let name = format!("memoji-it-{id}");
        let ctl = |args: Vec<&str>| {
            let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
            async move {
                let status = tokio::process::Command::new("rabbitmqctl")
                    .args(&args)
                    .stdout(std::process::Stdio::null())
                    .status()
                    .await
                    .unwrap();
                assert!(status.success(), "rabbitmqctl {args:?}");
            }
        };
        ctl(vec!["add_user", &name, "it-password"]).await;
        ctl(vec!["set_permissions", "-p", "/", &name, ".*", ".*", ".*"]).await;
        BrokerUser { name }
    }

    fn url(&self) -> String {
        format!("amqp://{}:it-password@127.0.0.1:5672/%2f", self.name)
    }
}

/// Removed even when the test fails.
impl Drop for BrokerUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.name])
            .stdout(std::process::Stdio::null())
            .status();
    }
}
