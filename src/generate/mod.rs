//! Image generators: OpenAI, and an offline placeholder.
//!
//! Both sit behind [`ImageGenerator`]. Whatever the generator, [`Pacer`] bounds how many
//! generations run at once and how many start per minute, so a burst of misses waits its turn
//! instead of drawing 429s. [`pricing`] says what an image cost. [`batch`] is OpenAI's Batch API
//! (half price, within 24 hours), for cache warming.

pub mod batch;
pub mod lifecycle;
mod openai;
mod pacing;
mod placeholder;
pub mod pricing;
mod prompt;
mod resize;

use std::fmt;

use async_trait::async_trait;
use bytes::Bytes;

pub use openai::{OpenAiGenerator, safety_identifier};
pub use pacing::{Pacer, Turn};
pub use placeholder::{PlaceholderGenerator, draw as draw_placeholder};
pub use prompt::prompt_for;

use crate::job::{AvatarConfig, ErrorCode, GeneratorKind, Plan};

/// Token counts OpenAI reports for GPT image models (CONTRACT.md §11); recorded with the entry.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Usage {
    /// Tokens of input (text and image).
    #[serde(default)]
    pub input_tokens: u64,
    /// How the input tokens split; `None` when OpenAI did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub input_tokens_details: Option<InputDetails>,
    /// Tokens of output (the image).
    #[serde(default)]
    pub output_tokens: u64,
    /// Input and output tokens together.
    #[serde(default)]
    pub total_tokens: u64,
}

/// How the input tokens split: text (of which `cached_tokens` were cached) and image.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct InputDetails {
    /// Input tokens of text.
    #[serde(default)]
    pub text_tokens: u64,
    /// Input tokens of images.
    #[serde(default)]
    pub image_tokens: u64,
    /// Of the text tokens, those OpenAI had cached.
    #[serde(default)]
    pub(crate) cached_tokens: u64,
}

/// A generated image, not yet checked or stored.
#[derive(Clone, PartialEq)]
pub struct Generated {
    /// The image bytes as the generator returned them (not yet checked).
    pub png: Bytes,
    /// HTTP attempts it took (1 when the first one succeeded).
    pub attempts: u32,
    /// What the generation cost, in US dollars.
    pub cost_usd: f64,
    /// The token counts, where the model reports them (GPT image models).
    pub usage: Option<Usage>,
}

impl fmt::Debug for Generated {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Generated")
            .field("png_bytes", &self.png.len())
            .field("attempts", &self.attempts)
            .field("cost_usd", &self.cost_usd)
            .field("usage", &self.usage)
            .finish()
    }
}

/// Why a generation failed, after whatever retries were worth making.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum GenerateError {
    /// The provider refused the request on content grounds.
    #[error("refused by the content policy: {message}")]
    ContentPolicy {
        /// The provider's explanation.
        message: String,
        /// HTTP attempts made.
        attempts: u32,
    },
    /// The provider answered with something that is not a usable image.
    #[error("the generated image is unusable: {message}")]
    BadImage {
        /// What is wrong with the image.
        message: String,
        /// HTTP attempts made.
        attempts: u32,
    },
    /// Anything else; `retryable` says whether the same job may succeed later (rate limits and
    /// outages) or not (a rejected request, a bad key, no quota).
    #[error("generation failed: {message}")]
    Failed {
        /// What went wrong, in words.
        message: String,
        /// Whether the same job may succeed later.
        retryable: bool,
        /// HTTP attempts made.
        attempts: u32,
    },
}

impl GenerateError {
    /// The result's error code for this failure.
    pub fn code(&self) -> ErrorCode {
        match self {
            GenerateError::ContentPolicy { .. } => ErrorCode::ContentPolicy,
            GenerateError::BadImage { .. } => ErrorCode::ImageInvalid,
            GenerateError::Failed { .. } => ErrorCode::GenerationFailed,
        }
    }

    /// HTTP attempts made before giving up.
    pub fn attempts(&self) -> u32 {
        match self {
            GenerateError::ContentPolicy { attempts, .. }
            | GenerateError::BadImage { attempts, .. }
            | GenerateError::Failed { attempts, .. } => *attempts,
        }
    }

    /// Whether the job may succeed if sent again (only a retryable [`GenerateError::Failed`]).
    pub fn retryable(&self) -> bool {
        matches!(
            self,
            GenerateError::Failed {
                retryable: true,
                ..
            }
        )
    }
}

/// Something that turns an avatar configuration into a PNG.
#[async_trait]
pub trait ImageGenerator: Send + Sync + fmt::Debug {
    /// Which kind of entries it makes; part of the cache key.
    fn kind(&self) -> GeneratorKind;
    /// The model name recorded for what it makes: the called model, or `placeholder`.
    fn model_name(&self, plan: &Plan) -> &'static str;
    /// Generates one image as `plan` says, at the size the job asked for. `user` is hashed before
    /// it is passed on for abuse monitoring.
    async fn generate(
        &self,
        config: &AvatarConfig,
        plan: &Plan,
        user: &str,
    ) -> Result<Generated, GenerateError>;
}
