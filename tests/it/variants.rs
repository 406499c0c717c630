//! Variants for variety (`cache.variants`, issue 15): N = 1 is the seed's behaviour exactly; with
//! N = 3 a key fills up to three images, each generated (and charged) once, each user always
//! gets the same one, uses are counted per variant, single flight holds per (key, variant), a
//! failed variant is refunded, and the cleanup deletes a key's variants and images together.

use std::collections::{BTreeMap, HashSet};
use std::time::Duration;

use chrono::{Datelike, Utc};
use memoji_worker::job::variant::choose;
use memoji_worker::job::{AvatarConfig, CacheKey, GeneratorKind};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, TestEnv, count, job_ids, openai_error, openai_ok, usage_count};
use crate::schemas::assert_valid;

fn key_of(config: &Value) -> CacheKey {
    CacheKey::of(&AvatarConfig::parse(config).unwrap(), GeneratorKind::OpenAi)
}

/// `per_variant` users for each of the `n` variants of `key`, by variant.
fn users_by_variant(key: &CacheKey, n: u32, per_variant: usize) -> BTreeMap<u32, Vec<String>> {
    let mut users: BTreeMap<u32, Vec<String>> = (0..n).map(|v| (v, Vec::new())).collect();
    for i in 0.. {
        let user = format!("user-{i}");
        let list = users
            .get_mut(&choose(&user, key, n).variant.number())
            .unwrap();
        if list.len() < per_variant {
            list.push(user);
        }
        if users.values().all(|list| list.len() == per_variant) {
            return users;
        }
    }
    unreachable!()
}

fn this_month() -> String {
    let now = Utc::now();
    format!("{:04}/{:02}", now.year(), now.month())
}

async fn variant_uses(env: &TestEnv, hash: &str, variant: u32) -> i64 {
    count(
        &env.db,
        &format!(
            "SELECT usage_count::bigint FROM memoji_cache_variants
              WHERE prompt_hash = '{hash}' AND variant = {variant}"
        ),
    )
    .await
}

#[tokio::test]
async fn one_variant_keeps_the_seeds_key_path_row_and_result() {
    let mut env = TestEnv::start(vec![openai_ok()]).await;
    assert_eq!(env.settings.cache.variants, 1, "the default");
    let config = json!({"hair": "curly", "gesture": "wave"});
    let key = key_of(&config);
    let miss = env.run(&env.job("user-1", config.clone())).await;
    assert_eq!(miss["prompt_hash"], key.as_str());
    assert_eq!(
        miss["storage_path"],
        format!("{}/{key}.png", this_month()),
        "the seed's path"
    );
    assert!(miss.get("variant").is_none(), "no variant field: {miss}");
    for user in ["user-2", "user-3", "user-4"] {
        let hit = env.run(&env.job(user, config.clone())).await;
        assert_eq!(hit["cached"], true);
        assert_eq!(hit["image_url"], miss["image_url"]);
        assert!(hit.get("variant").is_none(), "no variant field: {hit}");
    }
    assert_eq!(env.openai.calls(), 1);
    assert_eq!(usage_count(&env.db, key.as_str()).await, 4);
    let row =
        "SELECT count(*) FROM memoji_cache WHERE storage_path LIKE '%/' || prompt_hash || '.png'";
    assert_eq!(count(&env.db, row).await, 1);
    let variants = "SELECT count(*) FROM memoji_cache_variants";
    assert_eq!(count(&env.db, variants).await, 0);
    env.cleanup().await;
}

#[tokio::test]
async fn three_variants_fill_up_once_each_and_every_user_keeps_their_image() {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| s.cache.variants = 3).await;
    let config = json!({"hair": "long", "accessories": ["hat"]});
    let key = key_of(&config);
    let users = users_by_variant(&key, 3, 2);
    let mut images = BTreeMap::new();
    for (variant, pair) in &users {
        // The first user of a variant generates it, charged; the second is served it.
        let first = env.run(&env.job(&pair[0], config.clone())).await;
        assert_eq!(first["status"], "succeeded", "{first}");
        assert_eq!(first["cached"], false, "{first}");
        assert_eq!(first["credits_charged"], 1);
        assert_eq!(first["variant"], *variant);
        let path = first["storage_path"].as_str().unwrap().to_owned();
        let expected = match variant {
            0 => format!("{}/{key}.png", this_month()),
            n => format!("{}/{key}-{n}.png", this_month()),
        };
        assert_eq!(path, expected);
        assert!(env.storage_dir().join(&path).exists());
        let second = env.run(&env.job(&pair[1], config.clone())).await;
        assert_valid("result.schema.json", &first);
        assert_valid("result.schema.json", &second);
        assert_eq!(second["cached"], true, "{second}");
        assert_eq!(second["credits_charged"], 0);
        assert_eq!(second["variant"], *variant);
        assert_eq!(second["image_url"], first["image_url"]);
        images.insert(*variant, first["image_url"].clone());
    }
    assert_eq!(env.openai.calls(), 3, "each variant generated once");
    let distinct: HashSet<String> = images.values().map(|u| u.to_string()).collect();
    assert_eq!(distinct.len(), 3, "three images: {images:?}");

    // Later jobs: each user sees their own image, every time; uses are counted per variant.
    for _ in 0..2 {
        for (variant, pair) in &users {
            let again = env.run(&env.job(&pair[0], config.clone())).await;
            assert_eq!(again["cached"], true);
            assert_eq!(again["variant"], *variant);
            assert_eq!(again["image_url"], images[variant]);
        }
    }
    assert_eq!(env.openai.calls(), 3);
    assert_eq!(
        usage_count(&env.db, key.as_str()).await,
        4,
        "variant 0's uses"
    );
    assert_eq!(variant_uses(&env, key.as_str(), 1).await, 4);
    assert_eq!(variant_uses(&env, key.as_str(), 2).await, 4);

    // Variant 0 is the seed's row exactly as the seed writes it; the others never touch it.
    let (url, path): (String, String) =
        sqlx::query_as("SELECT image_url, storage_path FROM memoji_cache WHERE prompt_hash = $1")
            .bind(key.as_str())
            .fetch_one(&env.db)
            .await
            .unwrap();
    assert_eq!(Value::String(url), images[&0]);
    assert_eq!(path, format!("{}/{key}.png", this_month()));
    env.cleanup().await;
}

#[tokio::test]
async fn forty_concurrent_jobs_over_three_variants_on_three_processes_call_openai_three_times() {
    let mut env = TestEnv::without_worker(vec![openai_ok().held()], |s| {
        s.cache.variants = 3;
        s.amqp.prefetch = 5;
    })
    .await;
    let _workers = [
        env.spawn_worker().await,
        env.spawn_worker().await,
        env.spawn_worker().await,
    ];
    let config = json!({"hair": "short", "gesture": "peace", "skinTone": "dark"});
    let key = key_of(&config);
    let users: Vec<String> = (0..40).map(|i| format!("crowd-{i}")).collect();
    let spread: HashSet<u32> = users
        .iter()
        .map(|u| choose(u, &key, 3).variant.number())
        .collect();
    assert_eq!(spread.len(), 3, "the users cover the three variants");
    let jobs: Vec<Value> = users
        .iter()
        .map(|user| {
            let mut job = env.job(user, config.clone());
            job["tier"] = json!("monthly_pro");
            job
        })
        .collect();
    for job in &jobs {
        env.publish(job).await;
    }
    // One generation per variant reaches OpenAI and is held there; everyone else waits.
    env.openai.gate().wait_for(3).await;
    assert_eq!(env.openai.calls(), 3);
    env.openai.gate().open();
    let results = env
        .results_for_all(&job_ids(&jobs), Duration::from_secs(60))
        .await;
    assert_eq!(results.len(), 40);
    let mut generated = 0;
    let mut image_of_variant = BTreeMap::new();
    for (job, user) in jobs.iter().zip(&users) {
        let result = &results[job["job_id"].as_str().unwrap()][0];
        assert_eq!(result["status"], "succeeded", "{result}");
        let variant = choose(user, &key, 3).variant.number();
        assert_eq!(result["variant"], variant, "{result}");
        if result["cached"] == false {
            generated += 1;
        }
        let image = image_of_variant
            .entry(variant)
            .or_insert_with(|| result["image_url"].clone());
        assert_eq!(&result["image_url"], image, "one image per variant");
    }
    assert_eq!(generated, 3, "one job generated each variant");
    assert_eq!(env.openai.calls(), 3);
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_credit_ledger").await,
        3,
        "three credits charged"
    );
    let leases = count(&env.db, "SELECT count(*) FROM memoji_generation_leases").await;
    assert_eq!(leases, 0, "every lease released");

    // A redelivery (the same job published again) is answered with the same result.
    let first = &jobs[0];
    let recorded = results[first["job_id"].as_str().unwrap()][0].clone();
    let again = env.run(first).await;
    assert_eq!(again, recorded);
    assert_eq!(env.openai.calls(), 3);
    env.cleanup().await;
}

#[tokio::test]
async fn a_failed_variant_generation_is_refunded_and_leaves_the_variant_free() {
    let replies = vec![
        openai_ok(),
        openai_error(400, "Invalid request", Some("invalid_value")),
    ];
    let mut env = TestEnv::start_with(replies, |s| s.cache.variants = 3).await;
    let config = json!({"hair": "bald"});
    let key = key_of(&config);
    let users = users_by_variant(&key, 3, 1);
    let made = env.run(&env.job(&users[&0][0], config.clone())).await;
    assert_eq!(made["status"], "succeeded", "{made}");

    let user = &users[&1][0];
    let failed = env.run(&env.job(user, config.clone())).await;
    assert_eq!(failed["status"], "failed", "{failed}");
    assert_eq!(failed["error"]["code"], "generation_failed", "{failed}");
    assert_eq!(failed["credits_charged"], 0);
    assert_eq!(failed["credits_remaining"], 100, "the credit is refunded");
    assert!(failed.get("variant").is_none(), "{failed}");
    assert_valid("result.schema.json", &failed);
    let balance =
        format!("SELECT used::bigint FROM memoji_credit_balances WHERE user_id = '{user}'");
    assert_eq!(count(&env.db, &balance).await, 0);
    let variants = "SELECT count(*) FROM memoji_cache_variants";
    assert_eq!(count(&env.db, variants).await, 0, "nothing recorded");
    let leases = count(&env.db, "SELECT count(*) FROM memoji_generation_leases").await;
    assert_eq!(leases, 0, "the variant is free for the next job");
    // Variant 0 kept serving meanwhile.
    let hit = env.run(&env.job(&users[&0][0], config)).await;
    assert_eq!(hit["cached"], true);
    env.cleanup().await;
}

#[tokio::test]
async fn cleanup_deletes_a_keys_variants_and_images_with_its_entry() {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| s.cache.variants = 3).await;
    let old = json!({"hair": "wavy"});
    let kept = json!({"hair": "spiky"});
    let orphaned = json!({"hair": "braids"});
    let mut files = BTreeMap::new();
    for config in [&old, &kept, &orphaned] {
        let key = key_of(config);
        for (_, list) in users_by_variant(&key, 3, 1) {
            let result = env.run(&env.job(&list[0], config.clone())).await;
            assert_eq!(result["cached"], false, "{result}");
            let file = env
                .storage_dir()
                .join(result["storage_path"].as_str().unwrap());
            assert!(file.exists());
            files
                .entry(key.to_string())
                .or_insert_with(Vec::new)
                .push(file);
        }
    }
    let (old, kept, orphaned) = (key_of(&old), key_of(&kept), key_of(&orphaned));
    // All past the seed's age. The old key had one use in all; the kept key one per image: as
    // one entry, three uses, which the seed's rules keep (its row's single use alone would not).
    for table in ["memoji_cache", "memoji_cache_variants"] {
        sqlx::query(&format!(
            "UPDATE {table} SET created_at = now() - interval '100 days'"
        ))
        .execute(&env.db)
        .await
        .unwrap();
    }
    sqlx::query("UPDATE memoji_cache_variants SET usage_count = 0 WHERE prompt_hash = $1")
        .bind(old.as_str())
        .execute(&env.db)
        .await
        .unwrap();
    // An entry the JavaScript system deleted: its variants are judged on their own.
    sqlx::query("DELETE FROM memoji_cache WHERE prompt_hash = $1")
        .bind(orphaned.as_str())
        .execute(&env.db)
        .await
        .unwrap();

    let (status, dry) = env
        .post_cleanup(&env.http_base(), true, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{dry}");
    assert_eq!(dry["deleted"], 1, "{dry}");
    assert_eq!(dry["variants_deleted"], 4, "{dry}");
    let (status, report) = env
        .post_cleanup(&env.http_base(), false, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["deleted"], 1, "{report}");
    assert_eq!(report["variants_deleted"], 4, "{report}");
    assert_eq!(report["images_kept"], 0, "{report}");
    assert_eq!(report["bytes_freed"], dry["bytes_freed"]);
    assert_valid("metrics/cleanup-completed.schema.json", &report);
    for key in [&old, &orphaned] {
        let rows = format!(
            "SELECT (SELECT count(*) FROM memoji_cache WHERE prompt_hash = '{key}')
                  + (SELECT count(*) FROM memoji_cache_variants WHERE prompt_hash = '{key}')"
        );
        assert_eq!(count(&env.db, &rows).await, 0, "{key}: rows gone");
    }
    for file in &files[old.as_str()] {
        assert!(!file.exists(), "{} deleted with its entry", file.display());
    }
    // The orphan's variant images go; the entry's own image was the deleting system's to remove.
    let (variant_files, entry_file): (Vec<_>, Vec<_>) =
        files[orphaned.as_str()].iter().partition(|file| {
            file.to_string_lossy().ends_with("-1.png") || file.to_string_lossy().ends_with("-2.png")
        });
    assert_eq!(variant_files.len(), 2);
    for file in variant_files {
        assert!(!file.exists(), "{} deleted", file.display());
    }
    assert!(entry_file.iter().all(|file| file.exists()));
    let rows = format!("SELECT count(*) FROM memoji_cache_variants WHERE prompt_hash = '{kept}'");
    assert_eq!(
        count(&env.db, &rows).await,
        2,
        "the kept entry keeps its variants"
    );
    assert_eq!(usage_count(&env.db, kept.as_str()).await, 1);
    for file in &files[kept.as_str()] {
        assert!(file.exists(), "{} kept", file.display());
    }
    env.cleanup().await;
}

#[tokio::test]
async fn a_refresh_takes_a_path_no_variant_uses_and_retires_only_its_own_image() {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| s.cache.variants = 3).await;
    let config = json!({"hair": "afro"});
    let key = key_of(&config);
    let users = users_by_variant(&key, 3, 1);
    let month = this_month();
    for list in users.values() {
        env.run(&env.job(&list[0], config.clone())).await;
    }
    let dir = env.storage_dir().to_owned();
    let file = |n: u32| match n {
        0 => dir.join(format!("{month}/{key}.png")),
        n => dir.join(format!("{month}/{key}-{n}.png")),
    };
    assert!((0..3).all(|n| file(n).exists()));

    // Variant 0's refresh would be `-1` by its own numbering: variant 1 has that object.
    let mut refresh = env.job(&users[&0][0], config.clone());
    refresh["force_refresh"] = json!(true);
    let fresh = env.run(&refresh).await;
    assert_eq!(fresh["status"], "succeeded", "{fresh}");
    assert_eq!(fresh["cached"], false);
    assert_eq!(fresh["variant"], 0);
    assert_eq!(fresh["storage_path"], format!("{month}/{key}-3.png"));
    assert!(!file(0).exists(), "the replaced image is retired");
    assert!(
        file(1).exists() && file(2).exists(),
        "the variants' images stay"
    );

    // Variant 1's refresh: `-2` and `-3` are taken, so `-4`; only `-1` goes.
    let mut refresh = env.job(&users[&1][0], config.clone());
    refresh["force_refresh"] = json!(true);
    let fresh = env.run(&refresh).await;
    assert_eq!(fresh["variant"], 1, "{fresh}");
    assert_eq!(fresh["storage_path"], format!("{month}/{key}-4.png"));
    assert!(!file(1).exists());
    assert!(file(2).exists() && file(3).exists());
    let hit = env.run(&env.job(&users[&1][0], config)).await;
    assert_eq!(hit["cached"], true);
    assert_eq!(hit["image_url"], fresh["image_url"]);
    assert_eq!(env.openai.calls(), 5);
    env.cleanup().await;
}

#[tokio::test]
async fn a_variant_image_stored_by_a_dead_holder_is_reused_not_paid_again() {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| s.cache.variants = 3).await;
    let config = json!({"hair": "ponytail"});
    let key = key_of(&config);
    let users = users_by_variant(&key, 3, 1);
    env.run(&env.job(&users[&0][0], config.clone())).await;
    assert_eq!(env.openai.calls(), 1);

    // A holder of variant 2's lease stored its image, then died before recording it.
    let path = format!("{}/{key}-2.png", this_month());
    let file = env.storage_dir().join(&path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, crate::helpers::png_bytes()).unwrap();
    sqlx::query(
        "INSERT INTO memoji_generation_leases (prompt_hash, variant, holder, expires_at, storage_path)
         VALUES ($1, 2, $2, now() - interval '1 second', $3)",
    )
    .bind(key.as_str())
    .bind(uuid::Uuid::new_v4())
    .bind(&path)
    .execute(&env.db)
    .await
    .unwrap();

    let result = env.run(&env.job(&users[&2][0], config)).await;
    assert_eq!(result["status"], "succeeded", "{result}");
    assert_eq!(result["variant"], 2);
    assert_eq!(result["storage_path"], path);
    assert_eq!(
        env.openai.calls(),
        1,
        "the stored image is used, not generated again"
    );
    let leases = count(&env.db, "SELECT count(*) FROM memoji_generation_leases").await;
    assert_eq!(leases, 0);
    env.cleanup().await;
}

#[tokio::test]
async fn a_user_who_opted_out_of_variants_gets_the_keys_first_image() {
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| s.cache.variants = 3).await;
    let config = json!({"hair": "short", "gesture": "heart"});
    let key = key_of(&config);
    let users = users_by_variant(&key, 3, 1);
    let first = env.run(&env.job(&users[&0][0], config.clone())).await;
    assert_eq!(first["variant"], 0, "{first}");
    // A user whose variant is 2 opts out (their stored preference, as the admin API and
    // `user prefs set --no-variants` write it): they get variant 0, a hit, nothing generated.
    let picky = &users[&2][0];
    sqlx::query(
        "INSERT INTO memoji_user_cache_preferences (user_id, variants_opt_out) VALUES ($1, true)",
    )
    .bind(picky)
    .execute(&env.db)
    .await
    .unwrap();
    let answer = env.run(&env.job(picky, config.clone())).await;
    assert_eq!(answer["cached"], true, "{answer}");
    assert_eq!(answer["image_url"], first["image_url"]);
    assert_eq!(answer["credits_charged"], 0);
    assert_eq!(env.openai.calls(), 1, "no variant 2 was generated");
    assert_eq!(
        count(&env.db, "SELECT count(*) FROM memoji_cache_variants").await,
        0
    );
    // Without the preference the same user gets their own variant, generated.
    sqlx::query("DELETE FROM memoji_user_cache_preferences WHERE user_id = $1")
        .bind(picky)
        .execute(&env.db)
        .await
        .unwrap();
    let own = env.run(&env.job(picky, config.clone())).await;
    assert_eq!(own["variant"], 2, "{own}");
    assert_eq!(own["cached"], false, "{own}");
    env.cleanup().await;
}

#[tokio::test]
async fn an_arms_variants_apply_to_its_users_only() {
    use memoji_worker::config::{ArmSettings, ExperimentSettings};
    use memoji_worker::job::experiment::assign;
    let arm = |share, variants| ArmSettings {
        share,
        variants,
        max_age_days: None,
        warming: None,
    };
    let mut env = TestEnv::start_with(vec![openai_ok()], |s| {
        s.experiments = BTreeMap::from([(
            "variety".to_owned(),
            ExperimentSettings {
                enabled: true,
                control: None,
                arms: BTreeMap::from([
                    ("control".to_owned(), arm(50.0, None)),
                    ("three".to_owned(), arm(50.0, Some(3))),
                ]),
            },
        )]);
    })
    .await;
    let config = json!({"hair": "bun", "gesture": "peace"});
    let key = key_of(&config);
    let experiments = env.settings.experiments.clone();
    let in_arm = |name: &str, variant: Option<u32>| {
        (0..)
            .map(|n| format!("user-{n}"))
            .find(|user| {
                assign(&experiments, user).is_some_and(|a| a.arm == name)
                    && variant.is_none_or(|v| choose(user, &key, 3).variant.number() == v)
            })
            .unwrap()
    };
    // The control arm keeps one image per key: its users share variant 0, no variant field.
    let (control_a, control_b) = {
        let first = in_arm("control", None);
        let second = (0..)
            .map(|n| format!("other-{n}"))
            .find(|user| {
                assign(&env.settings.experiments, user).is_some_and(|a| a.arm == "control")
            })
            .unwrap();
        (first, second)
    };
    let made = env.run(&env.job(&control_a, config.clone())).await;
    assert!(made.get("variant").is_none(), "{made}");
    let served = env.run(&env.job(&control_b, config.clone())).await;
    assert_eq!(served["cached"], true, "{served}");
    assert!(served.get("variant").is_none(), "{served}");
    // The `three` arm's user whose variant is 2 gets an image of their own, named variant 2.
    let varied = env
        .run(&env.job(&in_arm("three", Some(2)), config.clone()))
        .await;
    assert_eq!(varied["cached"], false, "{varied}");
    assert_eq!(varied["variant"], 2, "{varied}");
    assert_eq!(varied["arm"], "three", "{varied}");
    assert_ne!(varied["image_url"], made["image_url"]);
    assert_eq!(env.openai.calls(), 2);
    env.cleanup().await;
}
