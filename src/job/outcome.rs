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
        reason: String,
        answer: Option<JobResult>,
    },
    /// A transient failure (database or broker out of reach, a claim lost): hand the delivery back
    /// to the queue after `after` (or a pause growing with its deliveries). `job` names whom to
    /// answer when the delivery budget is spent.
    Retry {
        cause: String,
        after: Option<Duration>,
        job: Option<Recipient>,
    },
}

/// Whose result a failing delivery would carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipient {
    pub job_id: JobId,
    pub user_id: String,
    /// The experiment and arm the user is in, which that result names too.
    pub arm: Option<ArmLabel>,
}
