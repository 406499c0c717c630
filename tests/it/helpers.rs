//! The tests' toolbox, re-exported from where each part lives (`tests/it/support/`, one concern
//! per file, and the OpenAI stand-in in `tests/it/openai.rs`), so that every test imports
//! `crate::helpers::…` and keeps compiling when a helper moves.

// A facade re-exports all of each part, whether or not a test uses every item today.
#![allow(unused_imports)]

pub use crate::openai::{OpenAiStub, Reply, openai_error, openai_ok, png_b64};
pub use crate::openai_batches::{BatchScript, Batches, End};
pub use crate::support::admin::*;
pub use crate::support::broker::*;
pub use crate::support::db::*;
pub use crate::support::env::*;
pub use crate::support::metrics::*;
pub use crate::support::process::*;
pub use crate::support::proxy::*;
pub use crate::support::results::*;
