//! The model lifecycle check (CONTRACT.md §11): at start and every `openai.lifecycle_check_hours`,
//! ask OpenAI about every model the worker may call. A shutdown date within
//! `openai.shutdown_warning_days` is a WARN log line; a model OpenAI does not know is an ERROR
//! line (a job routed to it would fail). Both go to `/readyz`'s body, `memoji-worker stats` and the
//! `memoji_openai_model_*` gauges. An OpenAI that cannot be reached is asked again after
//! `openai.lifecycle_retry_secs`; it never stops the worker.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::db;
use crate::generate::lifecycle::{CheckError, Lifecycle, ModelChecker, ModelStatus};
use crate::telemetry;

/// What to check, and how often.
#[derive(Debug, Clone)]
pub struct Plan {
    /// The models to ask OpenAI about.
    pub(crate) models: Vec<String>,
    /// The time between checks (`openai.lifecycle_check_hours`).
    pub(crate) every: Duration,
    pub(crate) retry_after: Duration,
}

/// Checks every model once: the statuses learnt, and whether OpenAI could be asked about all.
pub(crate) async fn check_all(
    checker: &ModelChecker,
    models: &[String],
) -> (Vec<ModelStatus>, Option<CheckError>) {
    let mut statuses = Vec::with_capacity(models.len());
    let mut failure = None;
    for model in models {
        match checker.check(model).await {
            Ok(status) => statuses.push(status),
            Err(error) => failure = Some(error),
        }
    }
    (statuses, failure)
}

/// Runs the checks until `stop`.
pub async fn run(
    checker: ModelChecker,
    plan: Plan,
    lifecycle: Arc<Lifecycle>,
    pool: PgPool,
    stop: CancellationToken,
) {
    loop {
        let (statuses, failure) = check_all(&checker, &plan.models).await;
        report(&lifecycle, &statuses);
        if !statuses.is_empty()
            && let Err(error) = db::models::save(&pool, &statuses).await
        {
            tracing::warn!(%error, "could not record the model lifecycle check");
        }
        let pause = match failure {
            Some(error) => {
                tracing::warn!(%error, retry_in_secs = plan.retry_after.as_secs(), "model lifecycle check incomplete; trying again later");
                plan.retry_after
            }
            None => plan.every,
        };
        tokio::select! {
            () = tokio::time::sleep(pause) => {}
            () = stop.cancelled() => return,
        }
    }
}

/// Logs, exports and remembers what a check found.
pub fn report(lifecycle: &Lifecycle, statuses: &[ModelStatus]) {
    let today = Utc::now().date_naive();
    lifecycle.update(statuses);
    for status in statuses {
        let unknown = matches!(
            status.state,
            crate::generate::lifecycle::ModelState::Unknown
        );
        telemetry::set_model_lifecycle(&status.model, status.days_left(today), unknown);
        match status.warning(today, lifecycle.warning_days()) {
            Some(warning) if unknown => tracing::error!(model = %status.model, "{warning}"),
            Some(warning) => tracing::warn!(model = %status.model, "{warning}"),
            None => tracing::debug!(model = %status.model, "model checked: fine"),
        }
    }
}
