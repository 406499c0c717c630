//! Keeping the cache in shape (CONTRACT.md §7).
//!
//! - [`cleanup`]: one run — archive popular entries, delete old unused ones and their images — in
//!   bounded batches, under a Postgres advisory lock so that exactly one process cleans at a time.
//! - [`schedule`]: the cron trigger inside `memoji-worker run`. Every replica schedules it; the
//!   lock makes all but one of them skip. On-demand runs (`POST /api/cache/cleanup`,
//!   `memoji-worker cleanup`) take the same lock.
//! - [`lifecycle`]: asks OpenAI, at start and daily, whether the models the worker may call are
//!   about to be shut down (CONTRACT.md §11).

pub mod cleanup;
pub mod lifecycle;
pub mod schedule;

pub use cleanup::{Cleaner, CleanupError, CleanupReport, Ran};
