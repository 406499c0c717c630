//! Keeping the cache in shape (CONTRACT.md §7).
//!
//! - [`cleanup`]: one run — archive popular entries, delete old unused ones and their images — in
//!   bounded batches, under a Postgres advisory lock so that exactly one process cleans at a time.
//! - [`schedule`]: the cron trigger inside `memoji-worker run`. Every replica schedules it; the
//!   lock makes all but one of them skip. On-demand runs (`POST /api/cache/cleanup`,
//!   `memoji-worker cleanup`) take the same lock.
//! - [`lifecycle`]: asks OpenAI, at start and daily, whether the models the worker may call are
//!   about to be shut down (CONTRACT.md §11).
//! - [`refund`]: the refund sweep, every `refunds.every_secs` on the same schedule and one replica
//!   at a time: credits of charged jobs that will never finish are given back.

pub mod cleanup;
pub mod lifecycle;
pub mod refund;
pub mod schedule;
pub mod warming;

pub use cleanup::{Cleaner, CleanupError, CleanupReport, Ran};
pub use refund::{RefundReport, Refunder, Swept};
