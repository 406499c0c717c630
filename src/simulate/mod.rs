//! Offline policy replay (issue 15, item 5): a request log — the worker's own history
//! (`memoji-worker history export`) or a synthetic Zipf log (`memoji-worker history generate`),
//! one format ([`log`]) — replayed day by day against cache policies ([`policy`]: variants per
//! key, a max age, nightly warming, and retention: the seed's cleanup rules or GreedyDual-Size-
//! Frequency within a storage budget), so an operator can compare them before turning one on.
//!
//! Pure and in memory: no database, broker, storage or OpenAI (only `history export` reads
//! Postgres). It measures policies — what a cache would have served and what it would have cost
//! at list prices — not the worker. It reuses the warming's pieces: the Zipf generator
//! (`warm::replay`), the popularity model (`warm::predict`) and the price table
//! (`generate::pricing`).
//!
//! - [`log`]: the request log's format, reading, writing, the synthetic log.
//! - [`policy`]: the `--policy` spec.
//! - [`prepared`]: the log priced and grouped by day.
//! - [`engine`]: the replay of one policy; `gdsf`: the cost-aware retention's queue.
//! - [`report`]: the output; [`export`]: the history export; [`cli`]: the commands.

#![warn(missing_docs)]

pub mod cli;
pub mod engine;
pub mod export;
mod gdsf;
pub mod log;
pub mod policy;
pub mod prepared;
pub mod report;

#[cfg(test)]
mod tests;
