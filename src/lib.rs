//! memoji-worker: serves cached AI avatars from Postgres and generates the misses with OpenAI.
//!
//! A job's journey, and where each step lives:
//!
//! ```text
//! broker ─► worker::process ─► job::intake ─► job::CacheKey
//!   ─► worker::batch (hits of new jobs, group commit) ──────────────────────────────┬─► settle
//!   ─► worker::claim (own the job) ─► db::cache (hit?) ─────────────────────────────┤   (publish,
//!        miss ─► claim (single flight) ─► worker::lead: charge ─► generate ─► store ─┘    then ack)
//! ```
//!
//! - [`job`]: pure domain — parsing, validation, the cache key, the result message.
//! - [`worker`]: the pipeline; the only code that acks, retries or dead-letters a delivery.
//! - [`broker`], [`db`], [`generate`], [`storage`]: the outside systems.
//! - [`http`]: the admin API; [`maintenance`]: the scheduled cleanup; [`stats`]: statistics and
//!   the metrics feed, told about each settled job by `worker::process` through one hook.
//! - [`app`] wires it all together and runs it until shutdown; [`config`] and [`telemetry`] set it up.
//! - [`warm`]: cache warming — popular configurations generated ahead of demand, under the same
//!   single flight as jobs, never charging anyone.
//! - [`simulate`]: offline policy replay — a request log against cache policies (variants, max
//!   age, warming, the seed's cleanup or GDSF), pure, for comparing them before turning one on.
//! - [`redact`]: the one place secrets are masked in text people see (URLs, error messages).

pub mod app;
pub mod broker;
pub mod client;
pub mod config;
pub mod db;
pub mod generate;
pub mod http;
pub mod job;
pub mod maintenance;
pub mod redact;
pub mod simulate;
pub mod stats;
pub mod storage;
pub mod telemetry;
pub mod warm;
pub mod worker;
