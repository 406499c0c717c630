//! What an image costs, in US dollars, from OpenAI's published prices.
//!
//! GPT image models bill tokens; when a response reports `usage`, the cost comes from it.
//! Otherwise the per-image price for the model, quality and size applies. `auto` quality is priced
//! as medium (standard for DALL·E) and `auto` size as square, the common outcomes.

use super::Usage;
use crate::job::{AvatarConfig, Model};

/// Dollars per token for GPT image models: text input, image output.
fn token_prices(model: Model) -> Option<(f64, f64)> {
    match model {
        Model::GptImage1 => Some((5.0e-6, 40.0e-6)),
        Model::GptImage1Mini => Some((2.0e-6, 8.0e-6)),
        Model::DallE2 | Model::DallE3 => None,
    }
}

/// The price of one image of this configuration, before any usage is known.
pub fn list_price(config: &AvatarConfig) -> f64 {
    let (width, height) = config.dimensions();
    let large = width != height;
    let quality = config.quality.as_deref().unwrap_or("auto");
    match config.model {
        Model::GptImage1 => match (quality, large) {
            ("low", false) => 0.011,
            ("low", true) => 0.016,
            ("high", false) => 0.167,
            ("high", true) => 0.25,
            (_, false) => 0.042,
            (_, true) => 0.063,
        },
        Model::GptImage1Mini => match (quality, large) {
            ("low", false) => 0.005,
            ("low", true) => 0.006,
            ("high", false) => 0.036,
            ("high", true) => 0.052,
            (_, false) => 0.011,
            (_, true) => 0.015,
        },
        Model::DallE3 => match (quality, large) {
            ("hd", false) => 0.08,
            ("hd", true) => 0.12,
            (_, false) => 0.04,
            (_, true) => 0.08,
        },
        Model::DallE2 => match width {
            256 => 0.016,
            512 => 0.018,
            _ => 0.02,
        },
    }
}

/// The cost of a generation: from `usage` where the model bills tokens and reported them.
pub fn cost(config: &AvatarConfig, usage: Option<&Usage>) -> f64 {
    match (token_prices(config.model), usage) {
        (Some((input, output)), Some(usage)) if usage.output_tokens > 0 => {
            usage.input_tokens as f64 * input + usage.output_tokens as f64 * output
        }
        _ => list_price(config),
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn config(value: serde_json::Value) -> AvatarConfig {
        AvatarConfig::parse(&value).unwrap()
    }

    #[test]
    fn list_prices_follow_model_quality_and_size() {
        assert_eq!(list_price(&config(json!({}))), 0.042);
        assert_eq!(
            list_price(&config(json!({"quality": "high", "size": "1536x1024"}))),
            0.25
        );
        assert_eq!(
            list_price(&config(json!({"model": "dall-e-3", "quality": "hd"}))),
            0.08
        );
        assert_eq!(
            list_price(&config(json!({"model": "dall-e-2", "size": "256x256"}))),
            0.016
        );
    }

    #[test]
    fn usage_wins_for_token_billed_models() {
        let usage = Usage {
            input_tokens: 50,
            output_tokens: 1056,
            total_tokens: 1106,
        };
        let cost = cost(&config(json!({})), Some(&usage));
        assert!(
            (cost - (50.0 * 5.0e-6 + 1056.0 * 40.0e-6)).abs() < 1e-12,
            "{cost}"
        );
        // DALL·E bills per image whatever usage says.
        assert_eq!(
            super::cost(&config(json!({"model": "dall-e-3"})), Some(&usage)),
            0.04
        );
    }
}
