//! Warming through OpenAI's Batch API (`memoji-worker warm … --batch`): half the price, answers
//! within 24 hours.
//!
//! [`Batching::warm`] plans the run as a live one does (not cached now, `--max`, and the budget,
//! at the **batch** price: [`pricing::batch_list_price`], so a batch never costs more than
//! `--budget-usd` as priced before submission), records the batch and its lines in Postgres
//! (`db::warm_batches`), uploads the JSONL, creates the batch, and polls it every
//! `warm.batch_poll_secs` until OpenAI is done with it. Its output and error files are then read
//! line by line ([`super::batch_output`]): each image checked, stored and recorded at the batch
//! price, each failure reported. An expired or cancelled batch's partial output is used and its
//! other lines reported failed; nothing is dropped silently.
//!
//! A batch survives the process that submitted it: [`Batching::resume`] (`warm --resume`) waits
//! for every open batch, [`Batching::sweep`] (`warm batches`, and every worker's scheduler, one
//! replica at a time) polls each once and finishes those that are done. Whoever handles a
//! batch's output holds the batch lock (`db::warm_batches::try_lock`), so a batch is finished by
//! one process, and each line's outcome is written once, so a crash mid-way resumes where it
//! stopped.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use chrono::Utc;
use serde::Serialize;
use serde_json::json;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use super::run::plan;
use super::{
    Candidate, Done, Line, Mode, Options, Progress, Refused, Report, WARM_USER, WarmError, Warmer,
    batch_output,
};
use crate::db::warm_batches::{self, Item, NewItem, StoredBatch};
use crate::db::{self};
use crate::generate::batch::{Batch, BatchClient, BatchStatus};
use crate::generate::pricing;
use crate::job::ModelRules;

/// The most requests OpenAI takes in one batch.
const MAX_LINES: usize = 50_000;

/// What the report says of the batch itself.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchSummary {
    /// The worker's id for it (`memoji_warm_batches.id`).
    pub id: Uuid,
    /// OpenAI's id for it; `None` until it is submitted.
    pub openai_batch_id: Option<String>,
    /// OpenAI's last status (or `submitting`, `not_submitted`).
    pub status: String,
    /// Requests in the batch.
    pub lines: usize,
    /// Lines whose image was generated but dropped: the key was recorded by someone else first.
    pub wasted: usize,
    /// Every line that failed, with why.
    pub failures: Vec<FailedLine>,
    /// Still at OpenAI: `warm --resume` (or a worker) finishes it later.
    pub open: bool,
}

/// A line of a batch that produced no entry.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedLine {
    /// The line's id in the batch (its cache key).
    pub custom_id: String,
    /// Where its configuration came from (`line 3`, `history: …`).
    pub origin: String,
    /// The cache key it was to fill.
    pub key: String,
    /// Why: OpenAI's error (redacted), the image check's, or that no answer came.
    pub message: String,
}

/// A line to submit: a candidate, and for a model refresh the image its entry serves now.
pub(super) struct ToSubmit {
    pub(super) candidate: Candidate,
    pub(super) replaces: Option<(String, Option<String>)>,
}

/// What batch warming works with.
#[derive(Clone, Copy)]
pub struct Batching<'a> {
    /// The database, store and settings a live run uses (its generator is not called).
    pub warmer: &'a Warmer,
    /// OpenAI's Batch API.
    pub client: &'a BatchClient,
    /// The rules a line's configuration is checked with again when its answer comes.
    pub rules: &'a ModelRules,
}

impl Batching<'_> {
    fn poll(&self) -> Duration {
        Duration::from_millis(self.warmer.settings.warm.batch_poll_ms.max(10))
    }

    /// `warm --batch`: plans `candidates` at the batch price, submits them as one batch and, with
    /// `wait`, polls it until it is done and handles its output. A dry run only prices it.
    pub async fn warm(
        &self,
        mut candidates: Vec<Candidate>,
        refused: Vec<Refused>,
        options: &Options,
        progress: &mut Progress,
        stop: &CancellationToken,
        wait: bool,
    ) -> Result<Report, WarmError> {
        for candidate in &mut candidates {
            candidate.estimate_usd =
                pricing::batch_list_price(&self.warmer.settings.prices, &candidate.plan);
        }
        // A key a line of an open batch is still to answer is another warming's: skipped.
        let keys: Vec<String> = candidates.iter().map(|c| c.key.to_string()).collect();
        let pending = warm_batches::pending_among(&self.warmer.db, &keys).await?;
        let before = candidates.len();
        candidates.retain(|c| !pending.contains(c.key.as_str()));
        let skipped = before - candidates.len();
        let (mut planned, todo) = plan(&self.warmer.db, candidates, refused, options).await?;
        planned.mode = Mode::Batch;
        planned.skipped = skipped;
        planned.considered += skipped;
        if options.dry_run || todo.is_empty() {
            return Ok(planned);
        }
        let lines = todo
            .into_iter()
            .map(|candidate| ToSubmit {
                candidate,
                replaces: None,
            })
            .collect();
        let id = self.submit(options.source(), lines, progress).await?;
        let mut report = if wait {
            self.wait(id, progress, stop).await?
        } else {
            self.report(id).await?
        };
        report.considered = planned.considered;
        report.skipped = planned.skipped;
        report.already_cached = planned.already_cached;
        report.refused = planned.refused;
        report.over_budget = planned.over_budget;
        Ok(report)
    }

    /// Records the batch and its lines, uploads the input file and creates the batch. A batch
    /// OpenAI refuses is closed as `not_submitted`, with why.
    pub(super) async fn submit(
        &self,
        source: &str,
        lines: Vec<ToSubmit>,
        progress: &mut Progress,
    ) -> Result<Uuid, WarmError> {
        let db = &self.warmer.db;
        if lines.len() > MAX_LINES {
            return Err(WarmError::Refused(format!(
                "a batch holds at most {MAX_LINES} requests (OpenAI's limit), this one {}: \
                 use --max or --top",
                lines.len()
            )));
        }
        let id = Uuid::new_v4();
        let mut jsonl = Vec::new();
        let mut items = Vec::with_capacity(lines.len());
        for line in &lines {
            let c = &line.candidate;
            let custom_id = c.key.to_string();
            let request = self.client.line(&custom_id, &c.config, &c.plan, WARM_USER);
            serde_json::to_writer(&mut jsonl, &request)
                .map_err(|e| WarmError::Refused(format!("writing the batch's file: {e}")))?;
            jsonl.push(b'\n');
            let (old_image_url, old_storage_path) = line.replaces.clone().unzip();
            items.push(NewItem {
                custom_id,
                key: c.key.to_string(),
                config: c.canonical.clone(),
                origin: c.origin.clone(),
                holder: Uuid::new_v4(),
                estimate_usd: c.estimate_usd,
                old_image_url,
                old_storage_path: old_storage_path.flatten(),
            });
        }
        let estimated: f64 = items.iter().map(|i| i.estimate_usd).sum();
        warm_batches::insert(db, id, source, estimated, &items).await?;
        let submitted = async {
            let file = self
                .client
                .upload(&format!("memoji-warm-{id}.jsonl"), Bytes::from(jsonl))
                .await?;
            warm_batches::set_input_file(db, id, &file).await?;
            let metadata = json!({"memoji_batch": id.to_string(), "source": source});
            let batch = self.client.create(&file, metadata).await?;
            warm_batches::set_status(db, id, &batch).await?;
            Ok::<Batch, WarmError>(batch)
        }
        .await;
        match submitted {
            Ok(batch) => {
                tracing::info!(batch = %batch.id, lines = items.len(), estimated_usd = estimated, "warming batch submitted");
                progress.start(items.len(), estimated);
                progress.batch(&batch);
                Ok(id)
            }
            Err(error) => {
                if let Err(db_error) =
                    warm_batches::set_not_submitted(db, id, &error.to_string()).await
                {
                    tracing::warn!(%db_error, "could not close a batch that was not submitted");
                }
                Err(error)
            }
        }
    }

    /// Polls the batch until OpenAI is done with it and its output is handled (here or by another
    /// process); returns its report. Stopped by `stop`, it returns the report so far, `open`.
    pub async fn wait(
        &self,
        id: Uuid,
        progress: &mut Progress,
        stop: &CancellationToken,
    ) -> Result<Report, WarmError> {
        loop {
            let stored = warm_batches::get(&self.warmer.db, id)
                .await?
                .ok_or_else(|| WarmError::Refused(format!("no warming batch {id}")))?;
            if stored.finished_at.is_some() || stop.is_cancelled() {
                let report = self.report(id).await?;
                progress.finish(&report);
                return Ok(report);
            }
            match self.poll_once(&stored, progress).await {
                Ok(_) => {}
                Err(error) if error.retryable() => {
                    tracing::warn!(%error, "polling a warming batch failed; trying again");
                }
                Err(error) => return Err(error),
            }
            let finished = warm_batches::get(&self.warmer.db, id)
                .await?
                .is_some_and(|b| b.finished_at.is_some());
            if !finished {
                tokio::select! {
                    () = tokio::time::sleep(self.poll()) => {}
                    () = stop.cancelled() => {}
                }
            }
        }
    }

    /// `warm --resume`: waits for every open batch in turn; their reports.
    pub async fn resume(
        &self,
        progress: &mut Progress,
        stop: &CancellationToken,
    ) -> Result<Vec<Report>, WarmError> {
        let mut reports = Vec::new();
        for stored in warm_batches::open(&self.warmer.db).await? {
            reports.push(self.wait(stored.id, progress, stop).await?);
        }
        Ok(reports)
    }

    /// One look at every open batch (`warm batches`, the worker's batch sweep): each polled once,
    /// those OpenAI is done with finished. Returns the batches finished now, with their reports;
    /// nothing when another process holds the batch lock.
    pub async fn sweep(
        &self,
        progress: &mut Progress,
    ) -> Result<Vec<(StoredBatch, Report)>, WarmError> {
        let db = &self.warmer.db;
        // Cheap when there is nothing to do: no lock (and no connection of its own) taken.
        if warm_batches::open(db).await?.is_empty() {
            return Ok(Vec::new());
        }
        let Some(lock) = warm_batches::try_lock(db).await? else {
            return Ok(Vec::new());
        };
        let outcome = async {
            let mut finished = Vec::new();
            for stored in warm_batches::open(db).await? {
                let Some(batch_id) = &stored.openai_batch_id else {
                    continue;
                };
                let batch = match self.client.get(batch_id).await {
                    Ok(batch) => batch,
                    Err(error) => {
                        tracing::warn!(%error, batch = %batch_id, "could not poll a warming batch");
                        continue;
                    }
                };
                warm_batches::set_status(db, stored.id, &batch).await?;
                if batch.status.is_terminal() {
                    self.finish_locked(&stored, &batch, progress).await?;
                    finished.push((stored.clone(), self.report(stored.id).await?));
                }
            }
            Ok::<_, WarmError>(finished)
        }
        .await;
        lock.release().await;
        outcome
    }

    /// Polls one batch; when OpenAI is done with it, finishes it unless another process is.
    async fn poll_once(
        &self,
        stored: &StoredBatch,
        progress: &mut Progress,
    ) -> Result<(), WarmError> {
        let Some(batch_id) = &stored.openai_batch_id else {
            return Err(WarmError::Refused(format!(
                "batch {} was never created at OpenAI (status {})",
                stored.id, stored.status
            )));
        };
        let batch = self.client.get(batch_id).await?;
        warm_batches::set_status(&self.warmer.db, stored.id, &batch).await?;
        progress.batch(&batch);
        if !batch.status.is_terminal() {
            return Ok(());
        }
        let Some(lock) = warm_batches::try_lock(&self.warmer.db).await? else {
            tracing::info!(batch = %batch_id, "another process is finishing this batch");
            return Ok(());
        };
        let outcome = match warm_batches::get(&self.warmer.db, stored.id).await? {
            Some(fresh) if fresh.finished_at.is_none() => {
                self.finish_locked(&fresh, &batch, progress).await
            }
            _ => Ok(()),
        };
        lock.release().await;
        outcome
    }

    /// Handles a done batch's output and error files, reports the lines without an answer as
    /// failed, and closes the batch with its report (and its warming-history row). The batch
    /// lock is held by the caller.
    async fn finish_locked(
        &self,
        stored: &StoredBatch,
        batch: &Batch,
        progress: &mut Progress,
    ) -> Result<(), WarmError> {
        let db = &self.warmer.db;
        let items = warm_batches::items(db, stored.id).await?;
        let mut spent: f64 = items.iter().filter_map(|i| i.cost_usd).sum();
        let mut pending: HashMap<&str, &Item> = items
            .iter()
            .filter(|i| i.outcome.is_none())
            .map(|i| (i.custom_id.as_str(), i))
            .collect();
        progress.answers(&batch.id, pending.len());
        for file in [&batch.output_file_id, &batch.error_file_id]
            .into_iter()
            .flatten()
        {
            let mut lines = self.client.content(file).await?;
            while let Some(line) = lines.next_line().await? {
                let answered = match self.client.answered(&line) {
                    Ok(answered) => answered,
                    Err(error) => {
                        tracing::warn!(%error, "an unreadable line in a batch's file");
                        continue;
                    }
                };
                let Some(item) = pending.remove(answered.custom_id.as_str()) else {
                    continue;
                };
                let (done, cost) = batch_output::handle(
                    self.warmer,
                    self.client,
                    self.rules,
                    stored.id,
                    item,
                    answered.answer,
                )
                .await?;
                spent += cost;
                progress.step(&line_of(item, done), spent);
            }
        }
        let ended = match &batch.errors {
            Some(errors) => format!("{} ({errors})", batch.status.as_str()),
            None => batch.status.as_str().to_owned(),
        };
        let mut left: Vec<&Item> = pending.into_values().collect();
        left.sort_by(|a, b| a.custom_id.cmp(&b.custom_id));
        for item in left {
            let done = batch_output::unanswered(self.warmer, stored.id, item, &ended).await?;
            progress.step(&line_of(item, done), spent);
        }
        let report = self.report(stored.id).await?;
        let run = db::warm::Run {
            source: stored.source.clone(),
            mode: Mode::Batch.as_str().to_owned(),
            generated: report.generated as i64,
            skipped: report.skipped as i64,
            failed: report.failed as i64,
            wasted: report.dropped as i64,
            spent_usd: report.spent_usd,
            wasted_usd: report.wasted_usd,
            batch_id: Some(stored.id),
            started_at: stored.created_at,
            finished_at: Utc::now(),
        };
        let body = serde_json::to_value(&report).unwrap_or_default();
        let mut tx = db.begin().await.map_err(db::DbError::from)?;
        if warm_batches::finish(&mut *tx, stored.id, &body).await? {
            db::warm::record_run(&mut *tx, &run).await?;
        }
        tx.commit().await.map_err(db::DbError::from)?;
        if batch.status != BatchStatus::Completed {
            tracing::warn!(batch = %batch.id, status = batch.status.as_str(), failed = report.failed, "a warming batch ended before every line was done; its other lines are reported failed");
        }
        tracing::info!(batch = %batch.id, generated = report.generated, wasted = report.dropped, failed = report.failed, spent_usd = report.spent_usd, "warming batch finished");
        Ok(())
    }

    /// A batch's report, from its lines as recorded (pending lines are not in it yet).
    pub async fn report(&self, id: Uuid) -> Result<Report, WarmError> {
        let db = &self.warmer.db;
        let stored = warm_batches::get(db, id)
            .await?
            .ok_or_else(|| WarmError::Refused(format!("no warming batch {id}")))?;
        let items = warm_batches::items(db, id).await?;
        let mut report = Report {
            mode: Mode::Batch,
            planned: items.len(),
            estimated_usd: stored.estimated_usd,
            ..Report::default()
        };
        let mut failures = Vec::new();
        for item in &items {
            let cost = item.cost_usd.unwrap_or(0.0);
            report.spent_usd += cost;
            let done = match item.outcome.as_deref() {
                None => continue,
                Some("generated") => {
                    report.generated += 1;
                    Done::Generated { cost_usd: cost }
                }
                Some("wasted") => {
                    report.dropped += 1;
                    report.wasted_usd += cost;
                    Done::Dropped { cost_usd: cost }
                }
                Some(_) => {
                    report.failed += 1;
                    let message = item.message.clone().unwrap_or_default();
                    failures.push(FailedLine {
                        custom_id: item.custom_id.clone(),
                        origin: item.origin.clone(),
                        key: item.key.clone(),
                        message: message.clone(),
                    });
                    Done::Failed { message }
                }
            };
            report.lines.push(line_of(item, done));
        }
        if let Some(finished) = stored.finished_at {
            report.duration_ms =
                u64::try_from((finished - stored.created_at).num_milliseconds()).unwrap_or(0);
        }
        report.batch = Some(BatchSummary {
            id,
            openai_batch_id: stored.openai_batch_id.clone(),
            status: stored.status.clone(),
            lines: items.len(),
            wasted: report.dropped,
            failures,
            open: stored.finished_at.is_none(),
        });
        Ok(report)
    }
}

fn line_of(item: &Item, done: Done) -> Line {
    Line {
        origin: item.origin.clone(),
        key: item.key.clone(),
        done,
    }
}
