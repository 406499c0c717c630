//! Integration tests: the whole worker against the real RabbitMQ and Postgres on this machine.
//! Each test has its own database, queue and exchange names, and OpenAI stand-in, so they run in
//! parallel and in any order.

mod helpers;

mod failures;
mod hit_path;
mod pipeline;
mod poison;
