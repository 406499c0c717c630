//! The job domain: pure types and rules, no I/O.
//!
//! A delivery's bytes become a [`Job`] exactly once, in [`intake`]; everything downstream works with
//! validated types. [`CacheKey`] can only be computed from an [`AvatarConfig`], and a [`JobResult`]
//! is the one message every job ends in. Error codes are stable strings from CONTRACT.md §2.3.

mod avatar;
pub mod experiment;
mod intake;
mod key;
mod lenient;
pub mod models;
mod outcome;
pub mod policy;
mod result;
pub mod variant;

pub use avatar::{AvatarConfig, ConfigError, ModelRules};
pub use experiment::Assignment;
pub use intake::{Intake, Job, JobId, MAX_MESSAGE_BYTES, Rejection, Tier, intake, valid_user_id};
pub use key::{CacheKey, GeneratorKind};
pub use models::{Model, Plan};
pub use outcome::{Outcome, Recipient};
pub use policy::{CachePolicy, CacheRequest, Freshness, UserPreferences};
pub use result::{ArmLabel, ErrorCode, Image, JobError, JobResult, Spent, Status};
pub use variant::{Pick, Variant};
