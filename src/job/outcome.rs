//! How a delivery ends: the pipeline's verdict, which `worker::settle` carries out and the
//! statistics count. Pure data.

use std::time::Duration;

use super::{ArmLabel, JobId, JobResult};

/// How a delivery ends.
#[derive(Debug)]
pub enum Outcome {
    /// Publish this result, then ack.
    Answer(JobResult),
    /// Publish this result recorded earlier (the job was seen before), then ack. Settled like
    /// [`Outcome::Answer`]; the statistics do not count it again.
    Replay(JobResult),
    /// Not a job: dead-letter a copy with the reason, answer where possible, then ack.
    Reject {
        /// Why it was rejected, for the dead-letter header.
        reason: String,
        /// The failure result to publish; `None` when there is no one to answer.
        answer: Option<JobResult>,
    },
    /// A transient failure (database or broker out of reach, a claim lost): hand the delivery back
    /// to the queue after `after` (or a pause growing with its deliveries). `job` names whom to
    /// answer when the delivery budget is spent.
    Retry {
        /// What failed, for the log.
        cause: String,
        /// How long to wait before handing it back; `None` for a pause growing with its
        /// deliveries.
        after: Option<Duration>,
        /// Whom to answer when the budget is spent; `None` when the delivery was not a job.
        job: Option<Recipient>,
    },
}

/// Whose result a failing delivery would carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    /// The job's id.
    pub(crate) job_id: JobId,
    /// The user who asked.
    pub(crate) user_id: String,
    /// The experiment and arm the user is in, which that result names too.
    pub arm: Option<ArmLabel>,
}
