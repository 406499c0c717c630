//! Today's OpenAI (CONTRACT.md §11), end to end through RabbitMQ and Postgres: seed-shaped jobs
//! served by the successor under the seed's key, every active model with its own rules, retired
//! models through their successors, the request as today's API takes it, costs from `usage`, the
//! lifecycle check, `model_not_found`, and refreshed images on paths of their own.

use memoji_worker::job::{AvatarConfig, CacheKey, GeneratorKind};
use serde_json::{Value, json};

use crate::helpers::{TestEnv, count, eventually, openai_ok};

/// The seed's key for an empty configuration (CONTRACT.md §3, hash-vectors.json).
const SEED_KEY: &str = "57031741670c8d0259dfd2b0809f9923eb2a04bcfc4ac10ce9d998eb376f16fe";

fn key_of(config: Value) -> String {
    let config = AvatarConfig::normalize(&config).unwrap();
    CacheKey::of(&config, GeneratorKind::OpenAi).to_string()
}

/// The stored image of a result, read from the local store.
fn stored_png(env: &TestEnv, result: &Value) -> Vec<u8> {
    let path = result["storage_path"].as_str().expect("a stored image");
    std::fs::read(env.storage_dir().join(path)).unwrap()
}

fn png_size(png: &[u8]) -> (u32, u32) {
    memoji_worker::storage::check_png(png).unwrap()
}

#[tokio::test]
async fn a_seed_job_is_made_by_the_successor_under_the_seeds_key() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let user = "seed-user";
    let result = env.run(&env.job(user, json!({}))).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["prompt_hash"], SEED_KEY);
    assert_eq!(result["model"], "gpt-image-2.6-flare");
    let requests = env.openai.generation_requests().await;
    assert_eq!(requests.len(), 1);
    let request = &requests[0];
    assert_eq!(request["model"], "gpt-image-2.6-flare");
    assert_eq!(request["output_format"], "png");
    assert_eq!(request["moderation"], "auto");
    assert_eq!(request["n"], 1);
    assert_eq!(request["size"], "1024x1024");
    for absent in [
        "response_format",
        "user",
        "background",
        "quality",
        "complexity",
    ] {
        assert!(request.get(absent).is_none(), "{absent} sent: {request}");
    }
    let safety = request["safety_identifier"].as_str().unwrap();
    assert_eq!(safety, memoji_worker::generate::safety_identifier(user));
    assert!(!safety.contains(user));

    // The row records what the key stands for (the model asked for), the called model and
    // OpenAI's usage; cost_usd comes from that usage.
    let (prompt_config, model, usage): (Value, Option<String>, Option<Value>) = sqlx::query_as(
        "SELECT prompt_config, model, usage FROM memoji_cache WHERE prompt_hash = $1",
    )
    .bind(SEED_KEY)
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert_eq!(
        prompt_config,
        json!({"model": "gpt-image-1", "size": "1024x1024", "familyType": "father",
               "gesture": "wave", "hair": "short", "skinTone": "medium", "accessories": [],
               "colorTheme": "pastel-blue", "background": "auto"})
    );
    assert_eq!(model.as_deref(), Some("gpt-image-2.6-flare"));
    let usage = usage.expect("usage recorded");
    let text = usage["input_tokens_details"]["text_tokens"]
        .as_f64()
        .unwrap();
    let output = usage["output_tokens"].as_f64().unwrap();
    let expected = text * 5.0 / 1e6 + output * 30.0 / 1e6;
    let cost = result["cost_usd"].as_f64().unwrap();
    assert!((cost - expected).abs() < 1e-9, "{cost} != {expected}");

    // The hit says which model made the image and saves what it cost.
    let hit = env.run(&env.job(user, json!({}))).await;
    assert_eq!(hit["cached"], true);
    assert_eq!(hit["model"], "gpt-image-2.6-flare");
    // generation_cost is the seed's numeric(10, 4): the saving is the cost to four places.
    assert!((hit["saved_usd"].as_f64().unwrap() - cost).abs() < 1e-4);
    env.cleanup().await;
}

#[tokio::test]
async fn a_row_the_javascript_system_wrote_keeps_answering_untouched() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let config = json!({"model": "gpt-image-1", "hair": "long"});
    let key = key_of(config.clone());
    let url =
        format!("https://x.supabase.co/storage/v1/object/public/memoji-images/2025/07/{key}.png");
    // Only the seed's columns, as the JavaScript system wrote them.
    sqlx::query(
        "INSERT INTO memoji_cache (prompt_hash, image_url, prompt_config, generation_cost, usage_count)
         VALUES ($1, $2, $3, 0.042, 3)",
    )
    .bind(&key)
    .bind(&url)
    .bind(json!({"model": "gpt-image-1"}))
    .execute(&env.db)
    .await
    .unwrap();
    let result = env.run(&env.job("u", config)).await;
    assert_eq!(result["cached"], true, "{result}");
    assert_eq!(result["image_url"], url);
    assert_eq!(result["model"], Value::Null, "imported without a model");
    assert_eq!(env.openai.calls(), 0);
    let (image_url, model, uses): (String, Option<String>, i32) = sqlx::query_as(
        "SELECT image_url, model, usage_count FROM memoji_cache WHERE prompt_hash = $1",
    )
    .bind(&key)
    .fetch_one(&env.db)
    .await
    .unwrap();
    assert_eq!((image_url.as_str(), model, uses), (url.as_str(), None, 4));
    env.cleanup().await;
}

#[tokio::test]
async fn every_active_model_works_with_its_own_rules() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    for (config, size) in [
        (
            json!({"model": "gpt-image-2.6-flare", "size": "2048x1152", "complexity": "high", "quality": "max"}),
            (2048, 1152),
        ),
        (
            json!({"model": "gpt-image-2.6-sunburst", "size": "1280x3840", "complexity": "low"}),
            (1280, 3840),
        ),
        (
            json!({"model": "gpt-image-2.5-flare", "size": "1024x1536", "quality": "xhigh"}),
            (1024, 1536),
        ),
        (
            json!({"model": "gpt-image-2.5-sunburst", "size": "auto", "background": "transparent"}),
            (1024, 1024),
        ),
        (
            json!({"model": "gpt-image-2", "size": "1536x1024", "quality": "high", "background": "opaque"}),
            (1536, 1024),
        ),
    ] {
        let result = env.run(&env.job("u", config.clone())).await;
        assert_eq!(result["status"], "succeeded", "{config}: {result}");
        assert_eq!(result["model"], config["model"], "{config}");
        assert_eq!(result["prompt_hash"], key_of(config.clone()), "{config}");
        assert_eq!(png_size(&stored_png(&env, &result)), size, "{config}");
    }
    let requests = env.openai.generation_requests().await;
    assert_eq!(requests.len(), 5, "no refusal, no retry");
    assert_eq!(requests[0]["complexity"], "high");
    assert_eq!(requests[0]["quality"], "max");
    assert_eq!(requests[3]["background"], "transparent");
    // complexity is in the key, after quality, only when present.
    let with = key_of(json!({"model": "gpt-image-2.6-flare", "complexity": "high"}));
    let without = key_of(json!({"model": "gpt-image-2.6-flare"}));
    assert_ne!(with, without);
    env.cleanup().await;
}

#[tokio::test]
async fn a_job_breaking_a_rule_is_invalid_named_and_free() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    for (config, rule) in [
        (
            json!({"model": "gpt-image-2.6-flare", "size": "1000x1000"}),
            "multiples of 16",
        ),
        (
            json!({"model": "gpt-image-2", "size": "4096x2048"}),
            "at most 3840",
        ),
        (
            json!({"model": "gpt-image-2.5-flare", "size": "3840x1024"}),
            "aspect ratio",
        ),
        (
            json!({"model": "gpt-image-2.6-flare", "size": "512x512"}),
            "pixels",
        ),
        (
            json!({"model": "gpt-image-2", "quality": "xhigh"}),
            "quality",
        ),
        (
            json!({"model": "gpt-image-2.5-sunburst", "complexity": "high"}),
            "complexity",
        ),
        (
            json!({"model": "gpt-image-2.6-flare", "complexity": "extreme"}),
            "complexity",
        ),
        (
            json!({"model": "gpt-image-1", "size": "2048x2048"}),
            "1536x1024",
        ),
        (json!({"model": "dall-e-2", "size": "1792x1024"}), "256x256"),
        (json!({"model": "gpt-image-9"}), "gpt-image-2.6-flare"),
    ] {
        let result = env.run(&env.job("u", config.clone())).await;
        assert_eq!(result["error"]["code"], "invalid_job", "{config}: {result}");
        let message = result["error"]["message"].as_str().unwrap();
        assert!(message.contains(rule), "{config}: {message}");
        assert_eq!(result["credits_charged"], 0);
        assert_eq!(result["model"], Value::Null, "never reached OpenAI");
    }
    assert_eq!(env.openai.calls(), 0);
    let charges = count(&env.db, "SELECT count(*) FROM memoji_credit_ledger").await;
    assert_eq!(charges, 0);
    env.cleanup().await;
}

#[tokio::test]
async fn retired_models_are_served_by_their_configured_successors() {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| {
        s.openai
            .successors
            .insert("dall_e_3".to_owned(), "gpt-image-2".to_owned());
    })
    .await;
    // dall-e-2's small sizes are made at 1024x1024 and scaled down to what was asked.
    for (size, side) in [("256x256", 256), ("512x512", 512)] {
        let config = json!({"model": "dall-e-2", "size": size});
        let result = env.run(&env.job("u", config.clone())).await;
        assert_eq!(result["status"], "succeeded", "{result}");
        assert_eq!(result["model"], "gpt-image-2.6-flare");
        assert_eq!(result["prompt_hash"], key_of(config));
        assert_eq!(png_size(&stored_png(&env, &result)), (side, side));
    }
    // dall-e-3's hd is the successor's high; its successor here is configured.
    let result = env
        .run(&env.job(
            "u",
            json!({"model": "dall-e-3", "size": "1792x1024", "quality": "hd"}),
        ))
        .await;
    assert_eq!(result["model"], "gpt-image-2", "{result}");
    assert_eq!(png_size(&stored_png(&env, &result)), (1792, 1024));
    let requests = env.openai.generation_requests().await;
    assert_eq!(
        requests
            .iter()
            .map(|r| (r["model"].as_str().unwrap(), r["size"].as_str().unwrap()))
            .collect::<Vec<_>>(),
        [
            ("gpt-image-2.6-flare", "1024x1024"),
            ("gpt-image-2.6-flare", "1024x1024"),
            ("gpt-image-2", "1792x1024")
        ]
    );
    assert_eq!(requests[2]["quality"], "high");
    env.cleanup().await;
}

#[tokio::test]
async fn model_not_found_fails_at_once_refunded_and_counted() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    env.openai.forget("gpt-image-2.6-flare");
    let result = env.run(&env.job("u", json!({"hair": "curly"}))).await;
    assert_eq!(result["error"]["code"], "generation_failed", "{result}");
    assert_eq!(result["error"]["retryable"], false);
    let message = result["error"]["message"].as_str().unwrap();
    assert!(
        message.contains("gpt-image-2.6-flare") && message.contains("model_not_found"),
        "{message}"
    );
    assert_eq!(result["model"], "gpt-image-2.6-flare");
    assert_eq!(result["credits_remaining"], 100, "refunded");
    assert_eq!(env.openai.calls(), 1, "not retried");
    let refunds = "SELECT count(*) FROM memoji_credit_ledger WHERE refunded_at IS NOT NULL";
    assert_eq!(count(&env.db, refunds).await, 1);
    let metrics = reqwest::get(format!("{}/metrics", env.http_base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics
            .lines()
            .any(|l| l
                .starts_with("memoji_openai_model_not_found_total{model=\"gpt-image-2.6-flare\"}")),
        "{metrics}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn shutdown_dates_and_unknown_models_are_reported_not_fatal() {
    let env =
        TestEnv::without_worker(vec![openai_ok()], |s| s.openai.lifecycle_retry_secs = 1).await;
    // OpenAI cannot answer the first lifecycle check: the worker starts and is ready anyway.
    env.openai.set_models_down(true);
    let soon = (chrono::Utc::now() + chrono::Duration::days(12)).date_naive();
    env.openai
        .announce_shutdown("gpt-image-2.6-flare", &soon.to_string());
    env.openai.forget("gpt-image-2.5-sunburst");
    let stop = tokio_util::sync::CancellationToken::new();
    let app = memoji_worker::app::App::build(env.settings.clone())
        .await
        .expect("the worker starts while OpenAI cannot be asked");
    let running = tokio::spawn(app.run_until_stopped(stop.clone()));
    let (status, body) = eventually("ready", || async {
        let response = reqwest::get(format!("{}/readyz", env.http_base()))
            .await
            .ok()?;
        let status = response.status().as_u16();
        Some((status, response.json::<Value>().await.ok()?)).filter(|(s, _)| *s == 200)
    })
    .await;
    assert_eq!((status, body["model_warnings"].clone()), (200, json!([])));
    eventually("a failed check", || async {
        (env.openai.model_checks().await > 0).then_some(())
    })
    .await;
    // OpenAI answers again: the check is tried again and its warnings appear.
    env.openai.set_models_down(false);
    let body = eventually("the lifecycle warnings", || async {
        let (status, body) = env.get_json("/readyz").await;
        let warnings = body["model_warnings"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        (status == 200 && warnings.len() == 2).then_some(body)
    })
    .await;
    let text = body["model_warnings"].to_string();
    assert!(
        text.contains("gpt-image-2.6-flare") && text.contains(&soon.to_string()),
        "{text}"
    );
    assert!(
        text.contains("gpt-image-2.5-sunburst") && text.contains("404"),
        "{text}"
    );
    assert_eq!(body["ready"], true, "a warning is news, not unreadiness");

    let metrics = reqwest::get(format!("{}/metrics", env.http_base()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let gauge = metrics
        .lines()
        .find(|l| l.starts_with("memoji_openai_model_days_left{model=\"gpt-image-2.6-flare\"}"))
        .unwrap_or_else(|| panic!("no days-left gauge: {metrics}"));
    let days: f64 = gauge.rsplit(' ').next().unwrap().parse().unwrap();
    assert!((11.0..=12.0).contains(&days), "{gauge}");

    // `memoji-worker stats` shows them too, from what the check recorded.
    let (_, warnings) = memoji_worker::app::stats(&env.settings).await.unwrap();
    assert_eq!(warnings.len(), 2, "{warnings:?}");
    stop.cancel();
    running.await.unwrap().unwrap();
    env.cleanup().await;
}

#[tokio::test]
async fn a_refreshed_image_gets_a_path_of_its_own_and_the_old_one_goes() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    let config = json!({"hair": "wavy"});
    let first = env.run(&env.job("u", config.clone())).await;
    let first_path = first["storage_path"].as_str().unwrap().to_owned();
    assert!(first_path.ends_with(&format!("{}.png", first["prompt_hash"].as_str().unwrap())));
    let mut refresh = env.job("u", config.clone());
    refresh["force_refresh"] = json!(true);
    let second = env.run(&refresh).await;
    assert_eq!(second["cached"], false, "{second}");
    let second_path = second["storage_path"].as_str().unwrap().to_owned();
    assert!(second_path.ends_with("-1.png"), "{second_path}");
    assert_ne!(second["image_url"], first["image_url"]);
    assert!(env.storage_dir().join(&second_path).exists());
    assert!(
        !env.storage_dir().join(&first_path).exists(),
        "the replaced image goes once nothing points at it"
    );
    // The new image is served at its URL; the entry moved to it.
    let served = reqwest::get(second["image_url"].as_str().unwrap())
        .await
        .unwrap();
    assert_eq!(served.status(), 200);
    let hit = env.run(&env.job("u", config.clone())).await;
    assert_eq!(hit["storage_path"], second_path.as_str());
    let mut again = env.job("u", config);
    again["force_refresh"] = json!(true);
    let third = env.run(&again).await;
    assert!(
        third["storage_path"].as_str().unwrap().ends_with("-2.png"),
        "{third}"
    );
    assert_eq!(env.openai.calls(), 3);
    let rows = count(&env.db, "SELECT count(*) FROM memoji_cache").await;
    assert_eq!(rows, 1);
    env.cleanup().await;
}

#[tokio::test]
async fn the_placeholder_draws_at_the_asked_size() {
    let mut env = TestEnv::start_with(vec![], |s| {
        s.generator.kind = GeneratorKind::Placeholder;
        s.secrets.openai_api_key = None;
    })
    .await;
    for (config, size) in [
        (
            json!({"model": "gpt-image-2.6-flare", "size": "2560x1440"}),
            (2560, 1440),
        ),
        (json!({"model": "dall-e-2", "size": "256x256"}), (256, 256)),
        (json!({}), (1024, 1024)),
    ] {
        let result = env.run(&env.job("u", config.clone())).await;
        assert_eq!(result["status"], "succeeded", "{config}: {result}");
        assert_eq!(result["model"], "placeholder");
        assert_eq!(png_size(&stored_png(&env, &result)), size, "{config}");
    }
    assert_eq!(env.openai.calls(), 0);
    env.cleanup().await;
}
