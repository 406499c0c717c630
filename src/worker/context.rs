//! What every job's journey shares: the pool, the store, the generator, the pacing, the settings
//! and the signals. Dependencies only; the journey itself is in [`super::handle`].

use std::sync::Arc;
use std::time::Duration;

use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use super::batch::HitBatcher;
use super::outage::Outage;
use crate::config::Settings;
use crate::db::credits;
use crate::generate::{ImageGenerator, Pacer};
use crate::job::{ModelRules, Tier};
use crate::stats::Observer;
use crate::storage::ImageStore;

/// Everything a job's journey needs; shared by all in-flight jobs.
#[derive(Clone)]
pub struct Context {
    /// The database.
    pub db: PgPool,
    /// Where the images are stored.
    pub store: Arc<dyn ImageStore>,
    /// What generates the images.
    pub generator: Arc<dyn ImageGenerator>,
    /// Turns for generations: concurrency and per-minute limits.
    pub pacer: Arc<Pacer>,
    /// The worker's settings.
    pub settings: Arc<Settings>,
    /// Successors of retired models and the default quality: what jobs are checked against.
    pub models: Arc<ModelRules>,
    /// Cancelled on shutdown: jobs still waiting (for a turn, for another worker) are handed back.
    pub stopping: CancellationToken,
    /// Statistics, `job.completed` and job metrics; told once per delivery, in `worker::process`.
    pub observer: Arc<Observer>,
    /// Set when the database is found out of reach: the consume loop pauses until it answers.
    pub outage: Arc<Outage>,
    /// Group commit for hits of new jobs: one read and one write per batch of deliveries.
    pub hits: HitBatcher,
}

impl Context {
    /// How long a claim on a job or key lasts without renewal.
    pub(crate) fn lease_ttl(&self) -> Duration {
        Duration::from_secs(self.settings.worker.lease_secs)
    }

    /// How long a job's first claim lasts: enough for a hit, which takes milliseconds; a miss
    /// extends it to [`Context::lease_ttl`] when its heartbeat starts. A job whose process died
    /// is so taken over in seconds.
    pub(crate) fn hit_claim_ttl(&self) -> Duration {
        Duration::from_secs(self.settings.worker.hit_claim_secs).min(self.lease_ttl())
    }

    /// The credits a user of `tier` has left after using `used` this period; `None` where
    /// credits are off or the tier is unlimited.
    pub(crate) fn remaining_after(&self, tier: Tier, used: i64) -> Option<i64> {
        credits::remaining_after(&self.settings.credits, tier, used)
    }
}
