//! Integration tests: the whole worker against the real RabbitMQ and Postgres on this machine.
//! Each test has its own database, queue and exchange names, and OpenAI stand-in, so they run in
//! parallel and in any order.

mod helpers;

mod admin_api;
mod cleanup;
mod cli;
mod failures;
mod guarantees;
mod hit_path;
mod metrics;
mod pipeline;
mod poison;
mod schemas;
mod storage_local;
mod storage_s3;
mod storage_supabase;
