//! The analytics (issue 16): `GET /api/analytics/…`, the dashboard at `/` and
//! `memoji-worker report` add up to a known sequence of jobs run through the real broker,
//! database and the OpenAI stand-in — and the dashboard, loaded in Debian's Chromium, shows the
//! API's figures, draws its charts and asks nothing of any other server.

use lapin::BasicProperties;
use serde_json::{Value, json};

use crate::helpers::{
    ADMIN_TOKEN, TestEnv, eventually, openai_error, openai_ok, worker_command, worker_environment,
};

/// What [`known_traffic`] ran.
pub struct Traffic {
    pub cost_a: f64,
    pub cost_b: f64,
}

/// Seven jobs: A generated then hit twice (one of them published with an AMQP timestamp), B
/// generated then hit once, C failing (`generation_failed`), one invalid job. User `u-big` ran
/// A's and B's misses.
pub async fn known_traffic(env: &mut TestEnv) -> Traffic {
    let a = json!({"hair": "long", "accessories": ["hat", "glasses"], "gesture": "thumbs-up"});
    let b = json!({"hair": "bob", "quality": "low"});
    let miss_a = env.run(&env.job("u-big", a.clone())).await;
    assert_eq!(miss_a["cached"], false, "{miss_a}");
    assert_eq!(
        env.run(&env.job("u-small", a.clone())).await["cached"],
        true
    );
    let stamped = env.job("u-small", a.clone());
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    env.publish_raw(
        &serde_json::to_vec(&stamped).unwrap(),
        BasicProperties::default().with_timestamp(now - 2),
    )
    .await;
    let hit = env.result_of(stamped["job_id"].as_str().unwrap()).await;
    assert_eq!(hit["cached"], true, "{hit}");
    let miss_b = env.run(&env.job("u-big", b.clone())).await;
    assert_eq!(miss_b["cached"], false, "{miss_b}");
    assert_eq!(env.run(&env.job("u-small", b)).await["cached"], true);
    let failed = env.run(&env.job("u-small", json!({"hair": "afro"}))).await;
    assert_eq!(failed["error"]["code"], "generation_failed", "{failed}");
    let invalid = env
        .run(&env.job("u-small", json!({"model": "dall-e-2", "size": "1536x1024"})))
        .await;
    assert_eq!(invalid["error"]["code"], "invalid_job");
    Traffic {
        cost_a: miss_a["cost_usd"].as_f64().unwrap(),
        cost_b: miss_b["cost_usd"].as_f64().unwrap(),
    }
}

pub fn replies() -> Vec<crate::helpers::Reply> {
    vec![
        openai_ok(),
        openai_ok(),
        openai_error(400, "Invalid prompt", Some("invalid_value")),
    ]
}

fn close(actual: &Value, expected: f64) -> bool {
    actual.as_f64().is_some_and(|a| (a - expected).abs() < 1e-6)
}

/// The summary once every job has been flushed to Postgres.
pub async fn summary_of_all(env: &TestEnv, jobs: i64) -> Value {
    eventually("the analytics to reach Postgres", || async {
        let (status, body) = env.get_json("/api/analytics/summary?since=7d").await;
        assert_eq!(status, 200, "{body}");
        (body["current"]["jobs"] == jobs).then_some(body)
    })
    .await
}

#[tokio::test]
async fn analytics_add_up_to_a_known_sequence_of_jobs() {
    let mut env = TestEnv::start(replies()).await;
    let traffic = known_traffic(&mut env).await;
    let stored = |cost: f64| (cost * 1e4).round() / 1e4;

    let summary = summary_of_all(&env, 7).await;
    let current = &summary["current"];
    for (figure, value) in [
        ("hits", 3),
        ("misses", 3),
        ("generations", 2),
        ("failures", 1),
        ("invalid", 1),
    ] {
        assert_eq!(current[figure], value, "{figure}: {summary}");
    }
    assert!(close(&current["hit_ratio_pct"], 50.0), "{summary}");
    assert!(
        close(&current["spend_usd"], traffic.cost_a + traffic.cost_b),
        "{summary}"
    );
    assert!(
        close(
            &current["saved_usd"],
            2.0 * stored(traffic.cost_a) + stored(traffic.cost_b)
        ),
        "{summary}"
    );
    assert_eq!(
        current["failures_by_code"],
        json!({"generation_failed": 1, "invalid_job": 1})
    );
    let (p50, p95) = (
        current["p50_ms"].as_f64().unwrap(),
        current["p95_ms"].as_f64().unwrap(),
    );
    assert!(p50 > 0.0 && p95 >= p50, "{summary}");
    // One job carried a timestamp two seconds old: its lag is about 2 s (whole seconds).
    let lag = current["queue_lag_p50_ms"].as_f64().unwrap();
    assert!((1000.0..=4100.0).contains(&lag), "{summary}");
    // Nothing ran in the week before.
    assert_eq!(summary["previous"]["jobs"], 0);
    assert_eq!(summary["trend"]["jobs_pct"], Value::Null);

    // The series: every hour of the span, the jobs in the current one.
    let (status, series) = env
        .get_json("/api/analytics/series?step=hour&since=24h")
        .await;
    assert_eq!(status, 200, "{series}");
    let points = series["points"].as_array().unwrap();
    assert_eq!(points.len(), 24);
    let sum = |figure: &str| -> i64 { points.iter().map(|p| p[figure].as_i64().unwrap()).sum() };
    assert_eq!(
        (sum("jobs"), sum("hits"), sum("misses")),
        (7, 3, 3),
        "{series}"
    );
    let (status, days) = env
        .get_json("/api/analytics/series?step=day&since=30d")
        .await;
    assert_eq!(status, 200);
    assert_eq!(days["points"].as_array().unwrap().len(), 30);
    assert_eq!(days["points"][29]["jobs"], 7, "{days}");

    // Breakdowns by attribute.
    let (status, breakdowns) = env.get_json("/api/analytics/breakdowns?since=7d").await;
    assert_eq!(status, 200, "{breakdowns}");
    let value = |dimension: &str, value: &str| -> Value {
        breakdowns["dimensions"][dimension]
            .as_array()
            .unwrap()
            .iter()
            .find(|v| v["value"] == value)
            .cloned()
            .unwrap_or_else(|| panic!("no {dimension}={value}: {breakdowns}"))
    };
    let long = value("hair", "long");
    assert_eq!(
        (long["jobs"].as_i64(), long["hits"].as_i64()),
        (Some(3), Some(2))
    );
    assert_eq!(long["misses"], 1);
    assert!(close(&long["spend_usd"], traffic.cost_a), "{long}");
    assert_eq!(value("hair", "bob")["jobs"], 2);
    assert_eq!(value("hair", "afro")["misses"], 1);
    assert_eq!(value("accessory", "hat")["jobs"], 3);
    assert_eq!(value("accessory", "none")["jobs"], 3);
    assert_eq!(value("quality", "low")["jobs"], 2);
    assert_eq!(value("gesture", "thumbs-up")["jobs"], 3);
    assert_eq!(
        value("skin_tone", "medium")["jobs"],
        6,
        "the invalid job is not counted"
    );
    // Every job that reached the cache was made or served by one model or another.
    let by_model: i64 = breakdowns["dimensions"]["model"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["jobs"].as_i64().unwrap())
        .sum();
    assert_eq!(by_model, 6, "{breakdowns}");

    // Top configurations: A by uses and by saved, with a thumbnail this server serves.
    let (status, top) = env.get_json("/api/analytics/top-configs?by=uses").await;
    assert_eq!(status, 200, "{top}");
    let first = &top["configs"][0];
    assert_eq!(
        (first["uses"].as_i64(), first["hits"].as_i64()),
        (Some(3), Some(2)),
        "{top}"
    );
    assert!(
        first["label"].as_str().unwrap().contains("long hair"),
        "{top}"
    );
    assert_eq!(top["configs"].as_array().unwrap().len(), 2);
    let thumbnail = first["thumbnail"].as_str().unwrap();
    let image = env
        .http
        .get(format!("{}{thumbnail}", env.http_base()))
        .send()
        .await
        .unwrap();
    assert_eq!(image.status(), 200);
    assert_eq!(image.headers()["content-type"], "image/png");
    let (_, by_saved) = env
        .get_json("/api/analytics/top-configs?by=saved&limit=1")
        .await;
    assert_eq!(by_saved["configs"][0]["prompt_hash"], first["prompt_hash"]);
    assert_eq!(by_saved["configs"].as_array().unwrap().len(), 1);

    // Top users name users: the token is needed.
    let (status, _) = env.get_json("/api/analytics/top-users").await;
    assert_eq!(status, 401);
    let users: Value = env
        .http
        .get(format!("{}/api/analytics/top-users", env.http_base()))
        .bearer_auth(ADMIN_TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(users["users"][0]["user_id"], "u-big", "{users}");
    assert_eq!(users["users"][0]["generations"], 2, "{users}");
    assert!(close(
        &users["users"][0]["spend_usd"],
        traffic.cost_a + traffic.cost_b
    ));

    // Bad parameters are refused with the reason.
    for path in [
        "/api/analytics/summary?since=7w",
        "/api/analytics/series?since=500d",
        "/api/analytics/series?step=hour&since=30d",
        "/api/analytics/top-configs?limit=0",
        "/api/analytics/top-configs?by=cost",
    ] {
        let (status, body) = env.get_json(path).await;
        assert_eq!(status, 400, "{path}: {body}");
        assert!(body["message"].as_str().is_some(), "{body}");
    }

    // The dashboard: open, strict CSP, and the same figures.
    let page = env.http.get(env.http_base()).send().await.unwrap();
    assert_eq!(page.status(), 200);
    let csp = page.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    assert!(
        csp.contains("default-src 'none'") && csp.contains("img-src 'self'"),
        "{csp}"
    );
    let html = page.text().await.unwrap();
    assert!(html.contains("<dd data-figure=\"jobs\">7<"), "jobs shown");
    assert!(html.contains("<dd data-figure=\"hit_ratio_pct\">50.00 %<"));
    assert!(html.contains("id=\"chart-by-hair\""));
    assert!(
        html.contains(thumbnail),
        "the top configuration's thumbnail"
    );
    assert!(!html.contains("{{"), "every placeholder filled");
    for asset in ["/dashboard/style.css", "/dashboard/actions.js"] {
        let response = env
            .http
            .get(format!("{}{asset}", env.http_base()))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "{asset}");
    }
    env.cleanup().await;
}

#[tokio::test]
async fn report_prints_the_period_its_trend_and_the_top_configurations() {
    let mut env = TestEnv::start(replies()).await;
    let traffic = known_traffic(&mut env).await;
    let summary = summary_of_all(&env, 7).await;
    let run = |format: &'static str| {
        let vars: Vec<(String, String)> = worker_environment(&env.settings);
        let vars: Vec<(&str, String)> = vars.iter().map(|(k, v)| (k.as_str(), v.clone())).collect();
        let output = worker_command(&vars)
            .args(["report", "--since", "7d", "--format", format])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8(output.stdout).unwrap()
    };
    // The report and the API read the same rollups; a statistics flush between the two reads
    // (the rejected message's answer, say, landing a second later) is waited out, not compared.
    let strip = |mut body: Value| {
        body["from"] = Value::Null;
        body["to"] = Value::Null;
        body
    };
    let mut api = strip(summary);
    let mut json = Value::Null;
    for _ in 0..20 {
        json = serde_json::from_str(&run("json")).unwrap();
        if strip(json["summary"].clone()) == api {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
        api = strip(env.get_json("/api/analytics/summary?since=7d").await.1);
    }
    assert_eq!(
        strip(json["summary"].clone()),
        api,
        "the report reads the API's figures"
    );
    assert_eq!(json["top_by_uses"][0]["uses"], 3);
    let md = run("md");
    assert!(md.starts_with("# memoji-worker report: last 7d"), "{md}");
    assert!(
        md.contains("| Hit ratio | 50.00 % | 0.00 % | +50.00 pts |"),
        "{md}"
    );
    assert!(
        md.contains(&format!(
            "| Spend (USD) | {:.4} |",
            traffic.cost_a + traffic.cost_b
        )),
        "{md}"
    );
    assert!(
        md.contains("## Top configurations by uses (all time)"),
        "{md}"
    );
    assert!(md.contains("long hair"), "{md}");
    let html = run("html");
    assert!(
        html.starts_with("<!doctype html>") && html.contains("<td>Hit ratio</td><td>50.00 %</td>"),
        "{html}"
    );
    env.cleanup().await;
}

#[tokio::test]
async fn the_dashboard_in_chromium_shows_the_api_figures_and_fetches_nothing_else() {
    // With an A/B test running: u-small is in its control arm, u-big in `fresh`.
    let mut env =
        TestEnv::start_with(replies(), |s| crate::experiments::two_arms(s, 50.0, 50.0)).await;
    known_traffic(&mut env).await;
    summary_of_all(&env, 7).await;
    // A warming run (as `warm --batch` records one), for the warming history.
    sqlx::query(
        "INSERT INTO memoji_warm_runs (source, mode, generated, failed, wasted, spent_usd, wasted_usd, started_at)
         VALUES ('from', 'batch', 3, 1, 1, 0.08, 0.02, now() - interval '1 minute')",
    )
    .execute(&env.db)
    .await
    .unwrap();
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/browser");
    assert!(
        std::path::Path::new("/usr/bin/chromium").exists(),
        "Debian's Chromium is needed: apt-get install -y chromium (.ci/run installs it)"
    );
    if !dir.join("node_modules/playwright-core").exists() {
        let npm = std::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(&dir)
            .status()
            .expect("npm (Node.js) is needed for the browser test");
        assert!(npm.success(), "npm ci in tests/browser failed");
    }
    let artifacts = std::path::Path::new(env!("CARGO_TARGET_TMPDIR")).join("../artifacts");
    let screenshot = artifacts.join("dashboard.png");
    let output = tokio::process::Command::new("node")
        .arg(dir.join("dashboard.mjs"))
        .arg(env.http_base())
        .arg(&screenshot)
        .arg(ADMIN_TOKEN)
        .output()
        .await
        .expect("node runs");
    assert!(
        output.status.success(),
        "browser checks failed:\n{}\n{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    let report: Value = serde_json::from_slice(&output.stdout).unwrap();
    assert_eq!(report["figures"]["jobs"], "7", "{report}");
    assert_eq!(report["warming_runs"], 1, "{report}");
    assert!(report["charts"].as_array().unwrap().len() >= 13, "{report}");
    // The Experiments section: both arms, with the jobs each ran (the invalid job is not
    // counted: it never reached the cache).
    let arms = &report["experiments"][0]["arms"];
    assert_eq!(report["experiments"][0]["name"], "freshness", "{report}");
    assert_eq!(arms[0]["arm"], "control", "{report}");
    assert_eq!(
        arms[0]["figures"]["jobs"], "4",
        "u-small: three hits, one failure"
    );
    assert_eq!(arms[1]["figures"]["jobs"], "2", "u-big: two generations");
    let png = std::fs::read(&screenshot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "a real screenshot"
    );
    env.cleanup().await;
}
