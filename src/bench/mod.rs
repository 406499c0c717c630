//! The benchmark harness behind `memoji-bench` (BENCHMARKS.md). Not part of the library: the
//! binary includes these modules itself, so nothing here ships in the worker or runs in the tests.
//!
//! - [`env`]: an isolated run — its own database (`memoji_bench_<id>`), queue and exchange names
//!   (`bench-<id>.…`) and scratch directory; spawning worker (and echo) processes and reading
//!   their memory from `/proc`.
//! - [`load`]: the load generator — pipelined confirmed publishing, optionally rate-limited, and a
//!   result collector recording end-to-end latency in an HDR histogram.
//! - [`stub`]: a local OpenAI stand-in with a fixed latency and a fixed PNG.
//! - [`echo`]: the baseline consumer: the broker's own limit, with the worker's settle protocol.
//! - [`seed`]: fast bulk seeding of `memoji_cache`, and the stats/cleanup hooks for the scale runs.
//! - [`scenarios`]: the figures of BENCHMARKS.md, one function per section.

pub mod echo;
pub mod env;
pub mod load;
pub mod scenarios;
pub mod seed;
pub mod stub;
