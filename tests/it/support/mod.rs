//! What the integration tests stand on, one concern per file. Tests import it through
//! `crate::helpers` (a facade that re-exports everything here), so a test file reads
//! `use crate::helpers::{TestEnv, openai_ok, …}` whatever file an item lives in.
//!
//! | file | what |
//! | --- | --- |
//! | `env.rs` | [`TestEnv`](env::TestEnv): an isolated worker (own database, queue names, OpenAI stand-in, ports), its settings, and the `Drop` guard that removes all of it even when the test fails |
//! | `results.rs` | waiting for results (one job's, many, until quiet), `eventually`, shared assertions about failed jobs |
//! | `broker.rs` | publishing jobs, taking from and counting the test's queues, reply queues, closing the worker's broker connections |
//! | `process.rs` | `memoji-worker run` child processes configured like the environment (`worker_environment`), `worker_command` for CLI tests |
//! | `admin.rs` | the admin API: JSON requests, the cleanup endpoint, a second in-process worker |
//! | `metrics.rs` | a tap on the metrics queue |
//! | `db.rs` | counting rows, dropping the database, terminating its sessions |
//! | `proxy.rs` | `FaultyProxy`: a TCP proxy a test cuts and restores (a database outage) |
//!
//! The OpenAI stand-in is `tests/it/openai.rs`.

pub mod admin;
pub mod broker;
pub mod db;
pub mod env;
pub mod metrics;
pub mod process;
pub mod proxy;
pub mod results;
