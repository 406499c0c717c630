//! Integration tests: the whole worker against the real RabbitMQ and Postgres on this machine.
//! Each test has its own database, queue and exchange names, and OpenAI stand-in, so they run in
//! parallel and in any order.

// A test that cannot unwrap is a test that hides its failure; a test binary has no public API.
#![allow(clippy::unwrap_used, clippy::expect_used, unreachable_pub)]

mod helpers;
mod openai;
mod openai_batches;
mod support;

mod acks;
mod admin_api;
mod admin_limits;
mod analytics;
mod broker_faults;
mod cache_controls;
mod claims;
mod cleanup;
mod cli;
mod experiments;
mod failures;
mod group_commit;
mod guarantees;
mod hit_path;
mod idempotency;
mod intake;
mod leftovers;
mod metrics;
mod models;
mod openai_batch;
mod openai_faults;
mod pipeline;
mod poison;
mod readme;
mod refunds;
mod schemas;
mod secrets;
mod simulate;
mod storage_local;
mod storage_s3;
mod storage_supabase;
mod traces;
mod variants;
mod warm;
