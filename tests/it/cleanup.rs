//! Cleanup (CONTRACT.md §7): dry runs change nothing; real runs delete old unused entries and
//! their images, archive popular ones (which keep serving hits), leave images a generation is
//! about to reuse, run on exactly one process at a time, and run on their cron schedule.

use std::path::PathBuf;

use chrono::{Datelike, Duration, Utc};
use memoji_worker::db;
use memoji_worker::job::{AvatarConfig, CacheKey, GeneratorKind, JobId};
use serde_json::{Value, json};

use crate::helpers::{ADMIN_TOKEN, TestEnv, count, eventually, post_cleanup};

/// A cache row seeded with an image file, as the worker would have written it `age_days` ago.
struct Seeded {
    hash: String,
    file: PathBuf,
    bytes: i64,
}

fn random_key() -> String {
    format!(
        "{}{}",
        uuid::Uuid::new_v4().simple(),
        uuid::Uuid::new_v4().simple()
    )
}

fn key_of(config: Value) -> String {
    let config = AvatarConfig::parse(&config).unwrap();
    CacheKey::of(&config, GeneratorKind::OpenAi).to_string()
}

async fn seed(env: &TestEnv, hash: &str, age_days: i64, uses: i32, archived: bool) -> Seeded {
    let created = Utc::now() - Duration::days(age_days);
    let path = format!("{:04}/{:02}/{hash}.png", created.year(), created.month());
    let file = env.storage_dir().join(&path);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let png = vec![7u8; 1000 + (age_days as usize)];
    std::fs::write(&file, &png).unwrap();
    sqlx::query(
        "INSERT INTO memoji_cache (prompt_hash, image_url, generation_cost, usage_count, created_at,
                                   updated_at, last_used_at, archived, storage_path, image_bytes, generator)
         VALUES ($1, $2, 0.042, $3, $4, $4, $4, $5, $6, $7, 'openai')",
    )
    .bind(hash)
    .bind(format!("{}/{path}", env.settings.storage.public_base_url))
    .bind(uses)
    .bind(created)
    .bind(archived)
    .bind(&path)
    .bind(png.len() as i64)
    .execute(&env.db)
    .await
    .unwrap();
    Seeded {
        hash: hash.to_owned(),
        file,
        bytes: png.len() as i64,
    }
}

async fn row_exists(env: &TestEnv, hash: &str) -> bool {
    count(
        &env.db,
        &format!("SELECT count(*) FROM memoji_cache WHERE prompt_hash = '{hash}'"),
    )
    .await
        == 1
}

async fn archived(env: &TestEnv, hash: &str) -> bool {
    sqlx::query_scalar::<_, bool>("SELECT archived FROM memoji_cache WHERE prompt_hash = $1")
        .bind(hash)
        .fetch_one(&env.db)
        .await
        .unwrap()
}

#[tokio::test]
async fn a_dry_run_changes_nothing_and_a_real_run_deletes_unused_entries_with_their_images_and_archives_popular_ones()
 {
    let mut env = TestEnv::start_with(vec![], |s| {
        // Small batches, so the run takes several of each.
        s.cleanup.batch_size = 2;
    })
    .await;
    let popular_config = json!({"gesture": "peace", "hair": "curly"});
    let old_unused = seed(&env, &random_key(), 120, 1, false).await;
    let old_unused_too = seed(&env, &random_key(), 91, 0, false).await;
    let old_used = seed(&env, &random_key(), 120, 2, false).await;
    let recent_unused = seed(&env, &random_key(), 30, 1, false).await;
    let old_archived_unused = seed(&env, &random_key(), 400, 1, true).await;
    let popular = seed(&env, &key_of(popular_config.clone()), 200, 101, false).await;
    let exactly_at_the_archive_line = seed(&env, &random_key(), 10, 100, false).await;
    let all = [
        &old_unused,
        &old_unused_too,
        &old_used,
        &recent_unused,
        &old_archived_unused,
        &popular,
        &exactly_at_the_archive_line,
    ];

    // Dry run: the right figures, nothing touched.
    let (status, report) = env
        .post_cleanup(&env.http_base(), true, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["dry_run"], true);
    assert_eq!(report["deleted"], 2, "{report}");
    assert_eq!(report["archived"], 1, "{report}");
    assert_eq!(
        report["bytes_freed"],
        old_unused.bytes + old_unused_too.bytes,
        "{report}"
    );
    for seeded in all {
        assert!(row_exists(&env, &seeded.hash).await);
        assert!(seeded.file.exists());
    }
    assert!(!archived(&env, &popular.hash).await);

    // The real run.
    let (status, report) = env
        .post_cleanup(&env.http_base(), false, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["dry_run"], false);
    assert_eq!(report["deleted"], 2, "{report}");
    assert_eq!(report["archived"], 1, "{report}");
    assert_eq!(
        report["bytes_freed"],
        old_unused.bytes + old_unused_too.bytes,
        "{report}"
    );
    assert_eq!(report["images_kept"], 0);
    assert!(report["duration_ms"].is_u64());
    assert!(report["started_at"].as_str().unwrap().ends_with('Z'));
    for gone in [&old_unused, &old_unused_too] {
        assert!(!row_exists(&env, &gone.hash).await);
        assert!(!gone.file.exists(), "the image goes with its entry");
    }
    for kept in [
        &old_used,
        &recent_unused,
        &old_archived_unused,
        &popular,
        &exactly_at_the_archive_line,
    ] {
        assert!(row_exists(&env, &kept.hash).await);
        assert!(kept.file.exists());
    }
    assert!(archived(&env, &popular.hash).await);
    assert!(!archived(&env, &exactly_at_the_archive_line.hash).await);
    // The statistics follow: 7 seeded − 2 deleted; archived now: the seeded one and the popular
    // one; archived within the last 24 h: the popular one.
    let (_, stats) = env.get_json("/api/cache/stats").await;
    assert_eq!(stats["total_cached"], 5, "{stats}");
    assert_eq!(stats["archived"], 2, "{stats}");
    assert_eq!(stats["last_24h"]["archived"], 1, "{stats}");

    // Nothing left to do.
    let (_, again) = env
        .post_cleanup(&env.http_base(), false, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(
        (again["deleted"].as_u64(), again["archived"].as_u64()),
        (Some(0), Some(0))
    );

    // The archived entry still serves hits, and no generation happens.
    let result = env.run(&env.job("u", popular_config)).await;
    assert_eq!(result["cached"], true, "{result}");
    assert_eq!(result["prompt_hash"], popular.hash.as_str());
    assert_eq!(env.openai.calls(), 0);
    env.cleanup().await;
}

#[tokio::test]
async fn the_image_of_a_key_being_generated_again_is_left_alone() {
    let env = TestEnv::start(vec![]).await;
    let doomed = seed(&env, &random_key(), 120, 1, false).await;
    // A generation of the same key is in flight: it holds the key's lease, and may be writing
    // to the very same path.
    let key = CacheKey::parse(&doomed.hash).unwrap();
    let generation = JobId(uuid::Uuid::new_v4());
    assert!(
        db::leases::claim(
            &env.db,
            &key,
            generation,
            std::time::Duration::from_secs(60)
        )
        .await
        .unwrap()
    );
    let (status, report) = env
        .post_cleanup(&env.http_base(), false, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["deleted"], 1);
    assert_eq!(report["images_kept"], 1);
    assert_eq!(report["bytes_freed"], 0);
    assert!(!row_exists(&env, &doomed.hash).await);
    assert!(doomed.file.exists(), "the generation's image survives");
    env.cleanup().await;
}

#[tokio::test]
async fn an_image_its_key_was_recorded_at_again_is_kept() {
    let env = TestEnv::start(vec![]).await;
    let doomed = seed(&env, &random_key(), 120, 1, false).await;
    // The moment the cleanup deletes the entry, the same key is recorded again at the same path
    // (a job missed and regenerated it within the month): simulated by a trigger that puts the
    // new entry in place in the deleting statement itself, before the cleanup looks at the image.
    sqlx::raw_sql(
        "CREATE FUNCTION test_rerecord() RETURNS trigger LANGUAGE plpgsql AS $$
         BEGIN
             INSERT INTO memoji_cache (prompt_hash, image_url, usage_count, storage_path, image_bytes)
             VALUES (OLD.prompt_hash, OLD.image_url, 1, OLD.storage_path, OLD.image_bytes);
             RETURN NULL;
         END $$;
         CREATE TRIGGER test_rerecord AFTER DELETE ON memoji_cache
             FOR EACH ROW EXECUTE FUNCTION test_rerecord();",
    )
    .execute(&env.db)
    .await
    .unwrap();
    let (status, report) = env
        .post_cleanup(&env.http_base(), false, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["deleted"], 1, "{report}");
    assert_eq!(report["images_kept"], 1, "{report}");
    assert!(row_exists(&env, &doomed.hash).await, "the new entry");
    assert!(doomed.file.exists(), "the new entry's image is not deleted");
    env.cleanup().await;
}

#[tokio::test]
async fn two_cleanups_at_once_on_two_processes_exactly_one_runs() {
    let env = TestEnv::start(vec![]).await;
    let other = env.second_app().await;
    let doomed = seed(&env, &random_key(), 120, 1, false).await;
    // Make whichever run gets the lock wait inside it: writes to the cache table block on
    // this transaction's table lock (reads do not), so the winner holds the lock mid-run.
    let mut blocker = env.db.begin().await.unwrap();
    sqlx::query("LOCK TABLE memoji_cache IN EXCLUSIVE MODE")
        .execute(&mut *blocker)
        .await
        .unwrap();

    let http = env.http.clone();
    let (first_base, second_base) = (env.http_base(), other.base.clone());
    let first = tokio::spawn({
        let http = http.clone();
        async move { post_cleanup(&http, &first_base, false, Some(ADMIN_TOKEN)).await }
    });
    let second = tokio::spawn({
        let http = http.clone();
        async move { post_cleanup(&http, &second_base, false, Some(ADMIN_TOKEN)).await }
    });
    // One of them is refused while the other holds the lock and waits on the table.
    eventually("one cleanup to hold the lock", || async {
        db::cleanup::is_locked(&env.db).await.unwrap().then_some(())
    })
    .await;
    eventually("the loser to answer", || async {
        (first.is_finished() || second.is_finished()).then_some(())
    })
    .await;
    let (loser, winner) = if first.is_finished() {
        (first, second)
    } else {
        (second, first)
    };
    let (status, body) = loser.await.unwrap();
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"], "busy");
    assert!(
        !winner.is_finished(),
        "the winner is still waiting on the table lock"
    );
    // The command line's run is refused the same way.
    assert_eq!(
        memoji_worker::app::cleanup(&env.settings, true)
            .await
            .unwrap(),
        memoji_worker::maintenance::Ran::Skipped
    );

    blocker.rollback().await.unwrap();
    let (status, report) = winner.await.unwrap();
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["deleted"], 1);
    assert!(!row_exists(&env, &doomed.hash).await);
    // The lock is free again: the next run runs.
    let (status, _) = env.post_cleanup(&other.base, true, Some(ADMIN_TOKEN)).await;
    assert_eq!(status, 200);
    other.stop().await;
    env.cleanup().await;
}

#[tokio::test]
async fn the_schedule_runs_the_cleanup_and_publishes_its_report() {
    let env = TestEnv::start_with(vec![], |s| s.cleanup.schedule = "* * * * * *".to_owned()).await;
    let mut tap = env.metrics_tap().await;
    let doomed = seed(&env, &random_key(), 120, 1, false).await;
    let report = tap
        .next_with("cleanup.completed", |r| r["deleted"] == 1)
        .await;
    assert_eq!(report["dry_run"], false);
    assert!(!row_exists(&env, &doomed.hash).await);
    assert!(!doomed.file.exists());
    env.cleanup().await;
}

#[tokio::test]
async fn the_command_line_cleanup_reports_and_publishes() {
    let env = TestEnv::start(vec![]).await;
    let mut tap = env.metrics_tap().await;
    let doomed = seed(&env, &random_key(), 120, 1, false).await;
    let ran = memoji_worker::app::cleanup(&env.settings, false)
        .await
        .unwrap();
    let memoji_worker::maintenance::Ran::Completed(report) = ran else {
        panic!("the cleanup was skipped")
    };
    assert_eq!(report.deleted, 1);
    assert_eq!(report.bytes_freed, doomed.bytes as u64);
    let published = tap.next_with("cleanup.completed", |_| true).await;
    assert_eq!(published, serde_json::to_value(&report).unwrap());
    env.cleanup().await;
}

/// A `memoji_jobs` row as the worker leaves it, `age_days` old.
async fn seed_job(env: &TestEnv, status: &str, age_days: i64) -> uuid::Uuid {
    let id = uuid::Uuid::new_v4();
    let at = Utc::now() - Duration::days(age_days);
    let result = (status != "processing").then(|| json!({"job_id": id, "status": status}));
    sqlx::query(
        "INSERT INTO memoji_jobs (job_id, user_id, status, result, created_at, updated_at)
         VALUES ($1, 'retention-user', $2, $3, $4, $4)",
    )
    .bind(id)
    .bind(status)
    .bind(result)
    .bind(at)
    .execute(&env.db)
    .await
    .unwrap();
    id
}

/// A `memoji_credit_ledger` row for `job`, charged `age_days` ago, refunded or not.
async fn seed_charge(env: &TestEnv, job: uuid::Uuid, age_days: i64, refunded: bool) {
    let at = Utc::now() - Duration::days(age_days);
    sqlx::query(
        "INSERT INTO memoji_credit_ledger (job_id, user_id, period, charged_at, refunded_at)
         VALUES ($1, 'retention-user', date_trunc('month', $2)::date, $2, CASE WHEN $3 THEN $2 END)",
    )
    .bind(job)
    .bind(at)
    .bind(refunded)
    .execute(&env.db)
    .await
    .unwrap();
}

async fn ids_in(env: &TestEnv, table: &str) -> Vec<uuid::Uuid> {
    let mut ids: Vec<uuid::Uuid> = sqlx::query_scalar(&format!("SELECT job_id FROM {table}"))
        .fetch_all(&env.db)
        .await
        .unwrap();
    ids.sort();
    ids
}

fn sorted(mut ids: Vec<uuid::Uuid>) -> Vec<uuid::Uuid> {
    ids.sort();
    ids
}

#[tokio::test]
async fn retention_prunes_old_finished_jobs_and_old_charges_but_never_what_could_still_be_refunded()
{
    let mut env = TestEnv::start_with(vec![], |s| {
        // Small batches, so each pass takes several; the defaults (30 and 400 days) otherwise.
        s.cleanup.batch_size = 2;
    })
    .await;
    // A real job through the worker, then aged past retention: its record goes like any other.
    let real = env
        .run(&env.job("retention-user", json!({"hair": "long"})))
        .await;
    let real: uuid::Uuid = real["job_id"].as_str().unwrap().parse().unwrap();
    sqlx::query(
        "UPDATE memoji_jobs SET created_at = now() - interval '31 days',
                                updated_at = now() - interval '31 days' WHERE job_id = $1",
    )
    .bind(real)
    .execute(&env.db)
    .await
    .unwrap();

    // Jobs past the 30 days.
    let old_succeeded = seed_job(&env, "succeeded", 40).await;
    let old_failed_refunded = seed_job(&env, "failed", 40).await;
    seed_charge(&env, old_failed_refunded, 40, true).await;
    let old_failed_charge_open = seed_job(&env, "failed", 45).await;
    seed_charge(&env, old_failed_charge_open, 45, false).await;
    let old_processing = seed_job(&env, "processing", 50).await;
    seed_charge(&env, old_processing, 50, false).await;
    // Within the 30 days.
    let recent = seed_job(&env, "succeeded", 29).await;
    // Charges past the 400 days.
    let ancient_succeeded = seed_job(&env, "succeeded", 500).await;
    seed_charge(&env, ancient_succeeded, 500, false).await;
    let ancient_refunded = uuid::Uuid::new_v4(); // its job pruned long ago
    seed_charge(&env, ancient_refunded, 480, true).await;
    let ancient_job_pruned = uuid::Uuid::new_v4(); // finished, pruned (only finished jobs are)
    seed_charge(&env, ancient_job_pruned, 470, false).await;
    let ancient_processing = seed_job(&env, "processing", 600).await;
    seed_charge(&env, ancient_processing, 600, false).await;
    let ancient_failed_open = seed_job(&env, "failed", 450).await;
    seed_charge(&env, ancient_failed_open, 450, false).await;
    // A charge within the 400 days, refunded: kept.
    let young_charge = uuid::Uuid::new_v4();
    seed_charge(&env, young_charge, 399, true).await;

    let jobs_before = ids_in(&env, "memoji_jobs").await;
    let ledger_before = ids_in(&env, "memoji_credit_ledger").await;
    let expected_jobs_pruned = [real, old_succeeded, old_failed_refunded, ancient_succeeded];
    let expected_ledger_pruned = [ancient_succeeded, ancient_refunded, ancient_job_pruned];

    // Dry run: the figures, nothing touched.
    let (status, report) = env
        .post_cleanup(&env.http_base(), true, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["jobs_pruned"],
        expected_jobs_pruned.len(),
        "{report}"
    );
    assert_eq!(
        report["ledger_pruned"],
        expected_ledger_pruned.len(),
        "{report}"
    );
    assert_eq!(ids_in(&env, "memoji_jobs").await, jobs_before);
    assert_eq!(ids_in(&env, "memoji_credit_ledger").await, ledger_before);

    // Real run: exactly those go.
    let (status, report) = env
        .post_cleanup(&env.http_base(), false, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(
        report["jobs_pruned"],
        expected_jobs_pruned.len(),
        "{report}"
    );
    assert_eq!(
        report["ledger_pruned"],
        expected_ledger_pruned.len(),
        "{report}"
    );
    let kept = |before: &[uuid::Uuid], gone: &[uuid::Uuid]| {
        sorted(
            before
                .iter()
                .filter(|id| !gone.contains(id))
                .copied()
                .collect(),
        )
    };
    assert_eq!(
        ids_in(&env, "memoji_jobs").await,
        kept(&jobs_before, &expected_jobs_pruned)
    );
    assert_eq!(
        ids_in(&env, "memoji_credit_ledger").await,
        kept(&ledger_before, &expected_ledger_pruned)
    );
    // Spelled out: what could still be refunded, and what is young, stays.
    let jobs = ids_in(&env, "memoji_jobs").await;
    for id in [
        old_failed_charge_open,
        old_processing,
        recent,
        ancient_processing,
        ancient_failed_open,
    ] {
        assert!(jobs.contains(&id));
    }
    let ledger = ids_in(&env, "memoji_credit_ledger").await;
    for id in [
        old_failed_refunded,
        old_failed_charge_open,
        old_processing,
        ancient_processing,
        ancient_failed_open,
        young_charge,
    ] {
        assert!(ledger.contains(&id));
    }

    // Nothing left to prune: a second run prunes nothing.
    let (_, report) = env
        .post_cleanup(&env.http_base(), false, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(report["jobs_pruned"], 0, "{report}");
    assert_eq!(report["ledger_pruned"], 0, "{report}");
    env.cleanup().await;
}

#[tokio::test]
async fn a_retention_of_zero_keeps_jobs_and_charges_forever() {
    let env = TestEnv::start_with(vec![], |s| {
        s.cleanup.job_retention_days = 0;
        s.cleanup.ledger_retention_days = 0;
    })
    .await;
    let job = seed_job(&env, "succeeded", 3000).await;
    seed_charge(&env, job, 3000, true).await;
    let (status, report) = env
        .post_cleanup(&env.http_base(), false, Some(ADMIN_TOKEN))
        .await;
    assert_eq!(status, 200, "{report}");
    assert_eq!(report["jobs_pruned"], 0, "{report}");
    assert_eq!(report["ledger_pruned"], 0, "{report}");
    assert_eq!(ids_in(&env, "memoji_jobs").await, vec![job]);
    assert_eq!(ids_in(&env, "memoji_credit_ledger").await, vec![job]);
    env.cleanup().await;
}
