//! One cleanup run: archive entries used more than `archive_above_uses` times, then delete
//! non-archived entries older than `max_age_days` with fewer than `min_uses` uses, and their
//! images; then prune finished jobs older than `job_retention_days` and credit-ledger rows older
//! than `ledger_retention_days` that can no longer be refunded (0 keeps them forever), and the
//! images of `bypass` jobs older than `bypass_retention_hours`. A dry run reads the same batches
//! and changes nothing.
//!
//! Retention never takes a job that is still `processing`, a failed job whose charge is still
//! open, or a ledger row whose job could still be refunded: those are the refund sweep's. A
//! pruned job is forgotten: the same job id arriving again after that is a new job.
//!
//! Images are deleted only after their row is gone (committed), so no row ever points at a missing
//! image. The one hazard left is the same key being recorded again meanwhile — a job that missed
//! because the row was just deleted, or a `force_refresh` — writing the same `YYYY/MM/<hash>.png`
//! (same month) that is about to be deleted. Every generation holds the key's generation lease
//! from before it stores the image until its row is recorded, so the cleanup takes that lease for
//! the moment it looks and deletes: if a generation holds it, the image is left alone (it is about
//! to be replaced, or orphaned at worst — never a row pointing at nothing); if the key's row is
//! back and points at this path, the image is left alone too.
//!
//! Variants (`cache.variants`): a key's variant rows are one entry with its `memoji_cache` row
//! for the seed's rules — its row's age, and the uses of all its images together. When they
//! delete the row, its variants go in the same statement, and all of the key's images are deleted together, each under its own (key,
//! variant) lease; archiving the row keeps its variants for good as well. Variant rows whose key
//! has no row at all are judged by the same rules on their own, in a last pass.
//!
//! Pacing: after each batch the run rests `pause_factor` times as long as the batch took (at
//! most [`MAX_REST`]), so on a busy database it holds a connection, a core and the WAL at most
//! 1 / (1 + pause_factor) of the time, and a slow batch (a loaded database) buys a longer rest.
//! Hits keep their latency while the run takes longer; 0 runs flat out.
//!
//! The advisory lock is about not doing the work twice, not about safety: should two runs ever
//! overlap (the lock's connection dropped mid-run and another replica started), every batch
//! still locks only its own rows and re-checks its conditions, so they share the work.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;
use tokio::time::Instant;

use crate::config::CleanupSettings;

/// The longest rest between two batches, whatever the batch took.
const MAX_REST: Duration = Duration::from_secs(1);

/// Rests between batches: `factor` times as long as the last batch took.
struct Pace {
    factor: f64,
    since: Instant,
}

impl Pace {
    fn new(factor: f64) -> Pace {
        Pace {
            factor: if factor.is_finite() {
                factor.max(0.0)
            } else {
                0.0
            },
            since: Instant::now(),
        }
    }

    /// The rest after a batch that took `took`.
    fn rest_after(&self, took: Duration) -> Duration {
        took.mul_f64(self.factor).min(MAX_REST)
    }

    /// Ends a batch: rests, then starts timing the next.
    async fn rest(&mut self) {
        let rest = self.rest_after(self.since.elapsed());
        if !rest.is_zero() {
            tokio::time::sleep(rest).await;
        }
        self.since = Instant::now();
    }
}
use crate::db::cleanup::{self as sql, Deleted, Unused};
use crate::db::{DbError, bypass, leases};
use crate::job::{CacheKey, JobId, Variant};
use crate::stats::Feed;
use crate::stats::feed::CLEANUP_COMPLETED;
use crate::storage::{ImageStore, StoragePath};
use crate::telemetry;

/// How long the cleanup holds a key's generation lease while it deletes the image.
const LEASE_TTL: Duration = Duration::from_secs(30);

/// Why a cleanup run failed.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// The database failed (the run stops; the next one starts over).
    #[error("cleanup: {0}")]
    Db(#[from] DbError),
}

/// What a run did (or, dry, would do): the `cleanup.completed` message and the API's answer.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanupReport {
    /// When the run started, RFC 3339 (UTC).
    pub started_at: String,
    /// Whether this was a dry run (nothing deleted, archived or pruned).
    pub dry_run: bool,
    /// Entries deleted (dry run: that would be).
    pub deleted: u64,
    /// Variant rows (`cache.variants`) deleted with their entry, or on their own where the key
    /// has no entry (dry run: that would be). Their images are in `bytes_freed`.
    #[serde(default)]
    pub variants_deleted: u64,
    /// Entries archived (dry run: that would be).
    pub archived: u64,
    /// Image bytes the storage backend reported freed (dry run: recorded sizes of the images
    /// that would be deleted).
    pub bytes_freed: u64,
    /// Images of deleted entries left in place: the key was being generated again, its new entry
    /// uses the same path, or the storage backend failed (the row is gone either way).
    pub images_kept: u64,
    /// Finished jobs pruned from `memoji_jobs` past `job_retention_days` (dry run: that would be).
    pub jobs_pruned: u64,
    /// Rows pruned from `memoji_credit_ledger` past `ledger_retention_days` (dry run: that would
    /// be).
    pub ledger_pruned: u64,
    /// Request-history rows (one per key per day) pruned past `history_retention_days` (dry
    /// run: that would be).
    #[serde(default)]
    pub history_pruned: u64,
    /// Images of `bypass` jobs deleted past `bypass_retention_hours` (dry run: that would be).
    #[serde(default)]
    pub bypass_deleted: u64,
    /// How long the run took, milliseconds.
    pub duration_ms: u64,
}

/// The outcome of asking for a run.
#[derive(Debug, Clone, PartialEq)]
pub enum Ran {
    /// The run happened; what it did.
    Completed(CleanupReport),
    /// Another process holds the cleanup lock: it is cleaning right now.
    Skipped,
}

/// Runs cleanups; shared by the scheduler, the admin API and the command line.
#[derive(Debug, Clone)]
pub struct Cleaner {
    db: PgPool,
    store: Arc<dyn ImageStore>,
    settings: CleanupSettings,
    feed: Option<Feed>,
}

impl Cleaner {
    /// `feed`, where given, gets the report as `cleanup.completed`.
    pub fn new(
        db: PgPool,
        store: Arc<dyn ImageStore>,
        settings: CleanupSettings,
        feed: Option<Feed>,
    ) -> Cleaner {
        Cleaner {
            db,
            store,
            settings,
            feed,
        }
    }

    /// One run, if no other process is running one. The report is logged, counted, published,
    /// and returned.
    pub async fn run(&self, dry_run: bool) -> Result<Ran, CleanupError> {
        let Some(lock) = sql::try_lock(&self.db).await? else {
            tracing::info!("cleanup skipped: another process is running one");
            telemetry::count_cleanup("skipped", 0, 0, 0);
            return Ok(Ran::Skipped);
        };
        let outcome = self.locked_run(dry_run).await;
        lock.release().await;
        match outcome {
            Ok(report) => {
                tracing::info!(
                    dry_run,
                    deleted = report.deleted,
                    archived = report.archived,
                    bytes_freed = report.bytes_freed,
                    images_kept = report.images_kept,
                    jobs_pruned = report.jobs_pruned,
                    ledger_pruned = report.ledger_pruned,
                    history_pruned = report.history_pruned,
                    duration_ms = report.duration_ms,
                    "cleanup completed"
                );
                if !dry_run {
                    telemetry::count_cleanup(
                        "completed",
                        report.deleted,
                        report.archived,
                        report.bytes_freed,
                    );
                }
                if let Some(feed) = &self.feed {
                    feed.send(CLEANUP_COMPLETED, &report);
                }
                Ok(Ran::Completed(report))
            }
            Err(error) => {
                telemetry::count_cleanup("failed", 0, 0, 0);
                tracing::warn!(%error, "cleanup failed; the next run picks up where it stopped");
                Err(error)
            }
        }
    }

    async fn locked_run(&self, dry_run: bool) -> Result<CleanupReport, CleanupError> {
        let started_at = Utc::now();
        let started = Instant::now();
        let batch = i64::from(self.settings.batch_size.max(1));
        let archive_above = i64::from(self.settings.archive_above_uses);
        let mut report = CleanupReport {
            started_at: started_at.to_rfc3339_opts(SecondsFormat::Millis, true),
            dry_run,
            deleted: 0,
            variants_deleted: 0,
            archived: 0,
            bytes_freed: 0,
            images_kept: 0,
            jobs_pruned: 0,
            ledger_pruned: 0,
            history_pruned: 0,
            bypass_deleted: 0,
            duration_ms: 0,
        };

        // Archive first: a popular entry is then out of the deletion's reach for good. This pass
        // walks the whole table by primary key (a batch of ids read, then those of them that
        // qualify updated): an index on usage_count would make it shorter, but every hit updates
        // usage_count, and such an index would cost each hit its HOT update. Once a day, a read
        // through the primary key is the cheaper side.
        let mut pace = Pace::new(self.settings.pause_factor);
        let mut after = None;
        loop {
            let ids = sql::next_ids(&self.db, after, batch).await?;
            let Some(last) = ids.last() else { break };
            after = Some(*last);
            report.archived += sql::archive(&self.db, &ids, archive_above, dry_run).await?;
            pace.rest().await;
        }

        let rules = Unused {
            created_before: started_at
                - chrono::Duration::days(i64::from(self.settings.max_age_days)),
            min_uses: i64::from(self.settings.min_uses),
            archive_above,
        };
        let mut after = None;
        loop {
            let old = sql::next_old(&self.db, rules.created_before, after, batch).await?;
            let Some(last) = old.last() else { break };
            after = Some(*last);
            let ids: Vec<uuid::Uuid> = old.iter().map(|(_, id)| *id).collect();
            if dry_run {
                let (n, variants, bytes) = sql::count_unused(&self.db, &ids, rules).await?;
                report.deleted += n;
                report.variants_deleted += variants;
                report.bytes_freed += bytes;
            } else {
                let deleted = sql::delete(&self.db, &ids, rules).await?;
                self.delete_images(&deleted, &mut report).await?;
            }
            pace.rest().await;
        }
        self.delete_orphan_variants(rules, batch, dry_run, &mut pace, &mut report)
            .await?;
        self.prune(started_at, batch, dry_run, &mut pace, &mut report)
            .await?;
        self.delete_bypass_images(batch, dry_run, &mut pace, &mut report)
            .await?;
        report.duration_ms = u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX);
        Ok(report)
    }

    /// Deletes the images of deleted rows (entries and their variants, together), counting them.
    async fn delete_images(
        &self,
        deleted: &[Deleted],
        report: &mut CleanupReport,
    ) -> Result<(), CleanupError> {
        for entry in deleted {
            if entry.variant == 0 {
                report.deleted += 1;
            } else {
                report.variants_deleted += 1;
            }
            match self.delete_image(entry).await? {
                Some(bytes) => report.bytes_freed += bytes,
                None => report.images_kept += 1,
            }
        }
        Ok(())
    }

    /// Variant rows of keys without an entry, judged by the same rules, in bounded batches.
    async fn delete_orphan_variants(
        &self,
        rules: Unused,
        batch: i64,
        dry_run: bool,
        pace: &mut Pace,
        report: &mut CleanupReport,
    ) -> Result<(), CleanupError> {
        if dry_run {
            let (n, bytes) = sql::count_orphans(&self.db, rules).await?;
            report.variants_deleted += n;
            report.bytes_freed += bytes;
            return Ok(());
        }
        loop {
            let deleted = sql::delete_orphans(&self.db, rules, batch).await?;
            self.delete_images(&deleted, report).await?;
            if (deleted.len() as i64) < batch {
                return Ok(());
            }
            pace.rest().await;
        }
    }

    /// Retention: old finished jobs, then old ledger rows, each walked oldest first in batches
    /// (a cursor over the age index, then those of the batch that qualify deleted).
    async fn prune(
        &self,
        now: DateTime<Utc>,
        batch: i64,
        dry_run: bool,
        pace: &mut Pace,
        report: &mut CleanupReport,
    ) -> Result<(), CleanupError> {
        for (what, days) in [
            (sql::Retained::Jobs, self.settings.job_retention_days),
            (sql::Retained::Charges, self.settings.ledger_retention_days),
        ] {
            let Some(cutoff) = retention_cutoff(now, days) else {
                continue;
            };
            let mut after = None;
            loop {
                let old = sql::next_retained(&self.db, what, cutoff, after, batch).await?;
                let Some(last) = old.last() else { break };
                after = Some(*last);
                let ids: Vec<uuid::Uuid> = old.iter().map(|(_, id)| *id).collect();
                let pruned = sql::prune(&self.db, what, &ids, cutoff, dry_run).await?;
                match what {
                    sql::Retained::Jobs => report.jobs_pruned += pruned,
                    sql::Retained::Charges => report.ledger_pruned += pruned,
                }
                pace.rest().await;
            }
        }
        // The request history: whole days, a small table (one row per key asked that day).
        if let Some(cutoff) = retention_cutoff(now, self.settings.history_retention_days) {
            report.history_pruned =
                crate::db::warm::prune_history(&self.db, cutoff.date_naive(), dry_run).await?;
        }
        Ok(())
    }

    /// The images of `bypass` jobs past their retention, oldest first in batches: the row goes
    /// first, then the object (no cache row ever points at one, and its path is its job's own).
    async fn delete_bypass_images(
        &self,
        batch: i64,
        dry_run: bool,
        pace: &mut Pace,
        report: &mut CleanupReport,
    ) -> Result<(), CleanupError> {
        let hours = self.settings.bypass_retention_hours;
        if dry_run {
            report.bypass_deleted = bypass::count_expired(&self.db, hours).await?;
            return Ok(());
        }
        loop {
            let expired = bypass::next_expired(&self.db, hours, batch).await?;
            if expired.is_empty() {
                return Ok(());
            }
            let ids: Vec<uuid::Uuid> = expired.iter().map(|e| e.job_id).collect();
            report.bypass_deleted += bypass::forget(&self.db, &ids).await?;
            for image in &expired {
                let Some(path) = StoragePath::parse(&image.storage_path) else {
                    continue;
                };
                match self.store.delete(&path).await {
                    Ok(bytes) => report.bytes_freed += bytes,
                    Err(error) => {
                        tracing::warn!(%error, %path, "could not delete a bypass image; it stays as an orphan");
                    }
                }
            }
            pace.rest().await;
        }
    }

    /// Deletes a deleted entry's image unless the key is being, or has been, recorded again at
    /// the same path. `Some(bytes freed)`, or `None` when the image stays.
    async fn delete_image(&self, entry: &Deleted) -> Result<Option<u64>, CleanupError> {
        let (Some(key), Some(path)) = (CacheKey::parse(&entry.prompt_hash), image_path(entry))
        else {
            // Not a path of ours (an imported row pointing elsewhere): nothing to delete here.
            return Ok(None);
        };
        let holder = JobId(uuid::Uuid::new_v4());
        let variant = Variant::new(u32::try_from(entry.variant).unwrap_or(0));
        if !leases::claim_variant(&self.db, &key, variant, holder, LEASE_TTL).await? {
            tracing::info!(%path, "key is being generated again; leaving its image");
            return Ok(None);
        }
        let outcome = async {
            if sql::image_in_use(&self.db, key.as_str(), path.as_str()).await? {
                return Ok(None);
            }
            match self.store.delete(&path).await {
                Ok(bytes) => Ok(Some(bytes)),
                Err(error) => {
                    tracing::warn!(%error, %path, "could not delete the image of a deleted entry; it stays as an orphan");
                    Ok(None)
                }
            }
        }
        .await;
        leases::release_variant(&self.db, &key, variant, holder).await?;
        outcome
    }
}

/// `days` before `now`, or `None` for 0 (kept forever).
fn retention_cutoff(now: DateTime<Utc>, days: u32) -> Option<DateTime<Utc>> {
    (days > 0).then(|| now - chrono::Duration::days(i64::from(days)))
}

/// Where an entry's image is stored: its `storage_path`, or for rows imported without one the
/// `YYYY/MM/<hash>.png` tail of its URL. Only paths of the exact shape the worker writes.
fn image_path(entry: &Deleted) -> Option<StoragePath> {
    if let Some(path) = entry.storage_path.as_deref() {
        return StoragePath::parse(path);
    }
    let mut parts = entry.image_url.rsplitn(4, '/');
    let (file, month, year) = (parts.next()?, parts.next()?, parts.next()?);
    StoragePath::parse(&format!("{year}/{month}/{file}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "57031741670c8d0259dfd2b0809f9923eb2a04bcfc4ac10ce9d998eb376f16fe";

    fn entry(storage_path: Option<&str>, image_url: &str) -> Deleted {
        Deleted {
            prompt_hash: KEY.to_owned(),
            variant: 0,
            storage_path: storage_path.map(str::to_owned),
            image_url: image_url.to_owned(),
            image_bytes: 0,
        }
    }

    #[test]
    fn the_rest_after_a_batch_is_in_proportion_to_it_and_bounded() {
        let pace = Pace::new(1.0);
        assert_eq!(
            pace.rest_after(Duration::from_millis(40)),
            Duration::from_millis(40)
        );
        assert_eq!(pace.rest_after(Duration::from_secs(5)), MAX_REST);
        let half = Pace::new(0.5);
        assert_eq!(
            half.rest_after(Duration::from_millis(40)),
            Duration::from_millis(20)
        );
        for flat_out in [0.0, -1.0, f64::NAN] {
            assert_eq!(
                Pace::new(flat_out).rest_after(Duration::from_secs(1)),
                Duration::ZERO
            );
        }
    }

    #[test]
    fn finds_the_image_of_worker_and_imported_rows() {
        let path = format!("2025/07/{KEY}.png");
        assert_eq!(
            image_path(&entry(Some(&path), "http://x/images/whatever")).map(|p| p.to_string()),
            Some(path.clone())
        );
        let url = format!("https://x.supabase.co/storage/v1/object/public/memoji-images/{path}");
        assert_eq!(
            image_path(&entry(None, &url)).map(|p| p.to_string()),
            Some(path)
        );
        assert_eq!(
            image_path(&entry(None, "https://cdn.example.com/a.png")),
            None
        );
        assert_eq!(image_path(&entry(Some("../../etc/passwd"), "")), None);
    }
}
