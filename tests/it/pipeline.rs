//! The happy paths: miss then hit, every result field, served images, request/reply, rows imported
//! from the JavaScript system, and the same job id twice.

use chrono::{DateTime, Datelike, Utc};
use lapin::BasicProperties;
use serde_json::{Value, json};

use crate::helpers::{TestEnv, count, openai_ok};

/// The hash the JavaScript system gives the default configuration (tests/data/hash-vectors.json).
const DEFAULT_HASH: &str = "57031741670c8d0259dfd2b0809f9923eb2a04bcfc4ac10ce9d998eb376f16fe";

#[tokio::test]
async fn a_miss_generates_stores_and_charges_then_a_hit_serves_it_free() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let job = env.job("user-42", json!({}));
    let before = Utc::now();
    let miss = env.run(&job).await;

    // Every field of CONTRACT.md §2.3.
    let path = format!(
        "{:04}/{:02}/{DEFAULT_HASH}.png",
        before.year(),
        before.month()
    );
    assert_eq!(miss["job_id"], job["job_id"]);
    assert_eq!(miss["user_id"], "user-42");
    assert_eq!(miss["status"], "succeeded");
    assert_eq!(miss["cached"], false);
    assert_eq!(miss["prompt_hash"], DEFAULT_HASH);
    assert_eq!(miss["storage_path"], path.as_str());
    assert_eq!(
        miss["image_url"],
        format!("{}/images/{path}", env.http_base()).as_str()
    );
    assert_eq!(miss["credits_charged"], 1);
    assert_eq!(miss["credits_remaining"], 99, "monthly_basic has 100");
    let cost = miss["cost_usd"].as_f64().unwrap();
    // The stand-in bills a word per text token and 1056 output tokens at the default quality,
    // priced per 1M tokens as CONTRACT.md §11 says: text $5, image output $30.
    let requests = env.openai.generation_requests().await;
    let words = requests[0]["prompt"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .count() as f64;
    assert!(
        (cost - (words * 5e-6 + 1056.0 * 30e-6)).abs() < 1e-9,
        "cost from usage tokens: {cost}"
    );
    assert_eq!(miss["saved_usd"], 0.0);
    assert_eq!(miss["attempts"], 1);
    assert!(miss["duration_ms"].is_u64());
    let completed = miss["completed_at"].as_str().unwrap();
    assert_eq!(
        completed.len(),
        "2026-11-24T14:03:07.512Z".len(),
        "{completed}"
    );
    assert!(completed.parse::<DateTime<Utc>>().unwrap() >= before);
    assert_eq!(miss["error"], Value::Null);
    assert_eq!(env.openai.calls(), 1);

    // The URL serves the stored PNG.
    let image = env
        .http
        .get(miss["image_url"].as_str().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(image.headers()["content-type"], "image/png");
    let bytes = image.bytes().await.unwrap();
    assert!(memoji_worker::storage::check_png(&bytes).is_ok());
    assert!(env.settings.storage.local_dir.join(&path).is_file());

    // The same configuration again: a hit, no OpenAI call, no charge, the cost saved.
    let again = env.job("user-42", json!({"hair": "SHORT", "accessories": []}));
    let hit = env.run(&again).await;
    assert_eq!(hit["status"], "succeeded");
    assert_eq!(hit["cached"], true);
    assert_eq!(hit["prompt_hash"], DEFAULT_HASH);
    assert_eq!(hit["image_url"], miss["image_url"]);
    assert_eq!(hit["storage_path"], miss["storage_path"]);
    assert_eq!(hit["credits_charged"], 0);
    assert_eq!(hit["credits_remaining"], 99);
    assert_eq!(hit["cost_usd"], 0.0);
    assert!((hit["saved_usd"].as_f64().unwrap() - cost).abs() < 1e-4);
    assert_eq!(env.openai.calls(), 1);

    let uses = count(
        &env.db,
        &format!(
            "SELECT usage_count::bigint FROM memoji_cache WHERE prompt_hash = '{DEFAULT_HASH}'"
        ),
    )
    .await;
    assert_eq!(uses, 2);
    env.cleanup().await;
}

#[tokio::test]
async fn results_are_persistent_json_with_the_job_id_as_message_id() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let job = env.job("u", json!({"size": "2x2"}));
    env.publish(&job).await;
    let delivery = env.next_delivery().await;
    let properties = &delivery.properties;
    assert_eq!(
        properties.message_id().as_ref().map(|s| s.as_str()),
        job["job_id"].as_str()
    );
    assert_eq!(
        properties.content_type().as_ref().map(|s| s.as_str()),
        Some("application/json")
    );
    assert_eq!(*properties.delivery_mode(), Some(2));
    assert_eq!(delivery.routing_key.as_str(), "result.failed");
    env.cleanup().await;
}

#[tokio::test]
async fn reply_to_gets_the_result_with_the_correlation_id() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let (_channel, reply_queue) = env.reply_queue().await;
    let job = env.job("u", json!({"gesture": "peace"}));
    let properties = BasicProperties::default()
        .with_reply_to(reply_queue.as_str().into())
        .with_correlation_id("request-7".into());
    env.publish_raw(&serde_json::to_vec(&job).unwrap(), properties)
        .await;
    let reply = env.take_from(&reply_queue).await.expect("a reply");
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        Some("request-7")
    );
    let result: Value = serde_json::from_slice(&reply.data).unwrap();
    assert_eq!(result["job_id"], job["job_id"]);
    assert_eq!(result["status"], "succeeded");
    // The result queue has it too.
    assert_eq!(env.result_of(job["job_id"].as_str().unwrap()).await, result);

    // Without a correlation id, the job id stands in.
    let job = env.job("u", json!({"gesture": "peace"}));
    let properties = BasicProperties::default().with_reply_to(reply_queue.as_str().into());
    env.publish_raw(&serde_json::to_vec(&job).unwrap(), properties)
        .await;
    let reply = env.take_from(&reply_queue).await.expect("a reply");
    assert_eq!(
        reply
            .properties
            .correlation_id()
            .as_ref()
            .map(|s| s.as_str()),
        job["job_id"].as_str()
    );
    env.cleanup().await;
}

#[tokio::test]
async fn rows_imported_from_the_javascript_system_serve_hits() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    // A row as the JavaScript system wrote it: only its own columns, its key for the vector config.
    let hash = "4e6c2df63797de8ee158e13fe3a6db9e8b28b89692f6b452d9ec5d268a1ea9b5";
    let url = format!(
        "https://abc.supabase.co/storage/v1/object/public/memoji-images/2025/06/{hash}.png"
    );
    sqlx::query(
        "INSERT INTO memoji_cache (prompt_hash, image_url, prompt_config, generation_cost, usage_count, archived)
         VALUES ($1, $2, '{}'::jsonb, 0.04, 7, true)",
    )
    .bind(hash)
    .bind(&url)
    .execute(&env.db)
    .await
    .unwrap();
    let job = env.job(
        "u",
        json!({"model": "gpt-image-1", "size": "1024x1024", "familyType": "grandpa", "gesture": "shrug",
               "hair": "Braids", "skinTone": "light", "accessories": [], "colorTheme": "mono",
               "background": "opaque"}),
    );
    let result = env.run(&job).await;
    assert_eq!(result["cached"], true, "{result}");
    assert_eq!(result["prompt_hash"], hash);
    assert_eq!(result["image_url"], url.as_str());
    assert_eq!(
        result["storage_path"],
        format!("2025/06/{hash}.png").as_str()
    );
    assert_eq!(result["saved_usd"], 0.04);
    assert_eq!(
        env.openai.calls(),
        0,
        "an archived imported row still serves hits"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn the_same_job_id_twice_generates_and_charges_once_with_identical_results() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let job = env.job("u", json!({"hair": "long"}));
    let first = env.run(&job).await;
    let second = env.run(&job).await;
    assert_eq!(first, second);
    assert_eq!(env.openai.calls(), 1);
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_credit_ledger").await,
        1
    );
    assert_eq!(
        count(
            &env.db,
            "SELECT used::bigint FROM memoji_credit_balances WHERE user_id = 'u'"
        )
        .await,
        1
    );
    env.cleanup().await;
}

#[tokio::test]
async fn synchronous_commit_is_set_on_the_worker_sessions() {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| {
        s.database.synchronous_commit = "off".to_owned()
    })
    .await;
    let setting: String = sqlx::query_scalar("SHOW synchronous_commit")
        .fetch_one(&env.db)
        .await
        .unwrap();
    assert_eq!(setting, "off");
    let result = env.run(&env.job("u", json!({}))).await;
    assert_eq!(result["status"], "succeeded");
    env.cleanup().await;
}
