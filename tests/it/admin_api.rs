//! The admin API (CONTRACT.md §8): writes need the admin token, and the statistics add up to a
//! known sequence of hits and misses.

use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, TestEnv, eventually, openai_error, openai_ok};

#[tokio::test]
async fn cleanup_needs_the_admin_token() {
    let env = TestEnv::start(vec![]).await;
    let base = env.http_base();
    let (status, body) = env.post_cleanup(&base, true, None).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["error"], "unauthorized");
    let (status, _) = env.post_cleanup(&base, true, Some("wrong-token")).await;
    assert_eq!(status, 401);
    let (status, _) = env
        .post_cleanup(&base, true, Some(&format!("{ADMIN_TOKEN}x")))
        .await;
    assert_eq!(status, 401);
    let response = env
        .http
        .post(format!("{base}/api/cache/cleanup"))
        .header("authorization", format!("Basic {ADMIN_TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 401);
    assert_eq!(
        response.headers().get("www-authenticate").unwrap(),
        "Bearer"
    );
    let (status, body) = env.post_cleanup(&base, true, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["dry_run"], true);
    // Reads need no token.
    let (status, _) = env.get_json("/api/cache/stats").await;
    assert_eq!(status, 200);
    env.cleanup().await;
}

#[tokio::test]
async fn without_an_admin_token_writes_are_refused() {
    let env = TestEnv::start_with(vec![], |s| s.secrets.admin_token = None).await;
    for token in [None, Some(ADMIN_TOKEN), Some("")] {
        let (status, body) = env.post_cleanup(&env.http_base(), true, token).await;
        assert_eq!(status, 403, "{body}");
        assert_eq!(body["error"], "admin_disabled");
        assert!(
            body["message"].as_str().unwrap().contains("ADMIN_TOKEN"),
            "{body}"
        );
    }
    env.cleanup().await;
}

fn close(actual: &Value, expected: f64) -> bool {
    actual.as_f64().is_some_and(|a| (a - expected).abs() < 1e-9)
}

#[tokio::test]
async fn stats_match_a_known_sequence_of_hits_and_misses() {
    let mut env = TestEnv::start(vec![
        openai_ok(),
        openai_ok(),
        openai_error(400, "Invalid prompt", Some("invalid_value")),
        openai_ok(),
    ])
    .await;
    let a = json!({"hair": "long"});
    let b = json!({"hair": "bob"});
    // A: miss (generated), then two hits. B: miss (generated), one hit. C: miss that fails.
    // An invalid job is neither a hit nor a miss. A force_refresh of A is a miss (generated).
    let first = env.job("u", a.clone());
    let miss_a = env.run(&first).await;
    assert_eq!(miss_a["cached"], false);
    assert_eq!(env.run(&env.job("u", a.clone())).await["cached"], true);
    assert_eq!(env.run(&env.job("u", a.clone())).await["cached"], true);
    let miss_b = env.run(&env.job("u", b.clone())).await;
    assert_eq!(miss_b["cached"], false);
    assert_eq!(env.run(&env.job("u", b.clone())).await["cached"], true);
    let failed = env.run(&env.job("u", json!({"hair": "afro"}))).await;
    assert_eq!(failed["error"]["code"], "generation_failed", "{failed}");
    let invalid = env
        .run(&env.job("u", json!({"model": "dall-e-2", "size": "1536x1024"})))
        .await;
    assert_eq!(invalid["error"]["code"], "invalid_job");
    let mut refresh = env.job("u", a.clone());
    refresh["force_refresh"] = json!(true);
    assert_eq!(env.run(&refresh).await["cached"], false);
    // The same job again is answered from its record: not counted twice.
    assert_eq!(env.run(&first).await["cached"], false);
    // An entry imported from the JavaScript system counts in what the cache holds.
    sqlx::query(
        "INSERT INTO memoji_cache (prompt_hash, image_url, generation_cost, usage_count, archived)
         VALUES (repeat('ab', 32), 'https://x/2025/01/a.png', 0.04, 7, true)",
    )
    .execute(&env.db)
    .await
    .unwrap();
    // One more hit after the replay: had the replay counted, hits would go past 4.
    assert_eq!(env.run(&env.job("u", a.clone())).await["cached"], true);

    let stats = eventually("the counts to reach Postgres", || async {
        let (status, stats) = env.get_json("/api/cache/stats").await;
        assert_eq!(status, 200);
        (stats["hits"] == 4 && stats["misses"] == 4).then_some(stats)
    })
    .await;
    let expected_lifetime = json!({
        "total_cached": 3,
        // A: 1 + 3 hits + 1 refresh; B: 1 + 1 hit; imported: 7.
        "total_usage": 5 + 2 + 7,
        "hits": 4, "misses": 4, "generations": 3, "archived": 1,
    });
    for (figure, value) in expected_lifetime.as_object().unwrap() {
        assert_eq!(&stats[figure], value, "lifetime {figure}: {stats}");
    }
    assert!(
        close(&stats["avg_usage_per_entry"], 4.6667),
        "14 uses / 3 entries: {stats}"
    );
    assert!(close(&stats["cache_efficiency_pct"], 50.0), "{stats}");
    // Each generation costs what its usage says (A's prompt twice: the miss and the refresh).
    let (cost_a, cost_b) = (
        miss_a["cost_usd"].as_f64().unwrap(),
        miss_b["cost_usd"].as_f64().unwrap(),
    );
    assert!(cost_a > 0.0 && cost_b > 0.0);
    assert!(
        close(
            &stats["generation_cost_usd"],
            ((2.0 * cost_a + cost_b) * 1e6).round() / 1e6
        ),
        "{stats}"
    );
    // Hits are worth their entry's generation cost (kept to 4 decimals by the table's
    // numeric(10, 4)): A's three hits and B's one.
    let stored = |cost: f64| (cost * 1e4).round() / 1e4;
    assert!(
        close(
            &stats["estimated_cost_saved_usd"],
            3.0 * stored(cost_a) + stored(cost_b)
        ),
        "{stats}"
    );

    let window = &stats["last_24h"];
    let expected_window = json!({
        "total_cached": 3, "total_usage": 4 + 3,
        "hits": 4, "misses": 4, "generations": 3, "archived": 0,
    });
    for (figure, value) in expected_window.as_object().unwrap() {
        assert_eq!(&window[figure], value, "last 24 h {figure}: {stats}");
    }
    assert!(close(&window["cache_efficiency_pct"], 50.0), "{stats}");

    // `memoji-worker stats` reads the same figures from the database.
    let (from_db, _) = memoji_worker::app::stats(&env.settings).await.unwrap();
    let mut from_db = serde_json::to_value(&from_db).unwrap();
    let mut from_api = stats.clone();
    from_db["generated_at"] = Value::Null;
    from_api["generated_at"] = Value::Null;
    assert_eq!(from_db, from_api);
    let table = memoji_worker::stats::table(&serde_json::from_value(stats.clone()).unwrap());
    assert!(table.contains("cache_efficiency_pct"), "{table}");
    assert!(table.contains("50.00"), "{table}");
    env.cleanup().await;
}

/// Every relation a query plan reads.
fn relations(plan: &Value, found: &mut Vec<String>) {
    match plan {
        Value::Object(node) => {
            if let Some(Value::String(name)) = node.get("Relation Name") {
                found.push(name.clone());
            }
            node.values().for_each(|v| relations(v, found));
        }
        Value::Array(items) => items.iter().for_each(|v| relations(v, found)),
        _ => {}
    }
}

#[tokio::test]
async fn the_stats_query_never_reads_the_cache_table() {
    let env = TestEnv::start(vec![]).await;
    // However large memoji_cache grows, answering reads only the small counter tables.
    let plan: Value = sqlx::query_scalar(&format!(
        "EXPLAIN (FORMAT JSON) {}",
        memoji_worker::db::stats::READ
    ))
    .fetch_one(&env.db)
    .await
    .unwrap();
    let mut read = Vec::new();
    relations(&plan, &mut read);
    read.sort();
    read.dedup();
    assert_eq!(
        read,
        [
            "memoji_cache_totals",
            "memoji_stats_hourly",
            "memoji_stats_lifetime"
        ],
        "{plan:#}"
    );
    env.cleanup().await;
}
