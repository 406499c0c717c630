//! What an image costs, in US dollars, from the price table in configuration (`[prices]`).
//!
//! GPT image models bill tokens; when a response reports `usage`, the cost comes from it.
//! Otherwise the per-image price for the model, quality and size applies. `auto` quality is priced
//! as medium (standard for DALL·E) and `auto` size as square, the common outcomes. The table is
//! checked at start ([`check`]) so that every configuration a job may carry has a price.

use super::Usage;
use crate::config::{PriceSettings, TokenPrices};
use crate::job::{AvatarConfig, Model};

/// The configuration key of a model: `gpt-image-1` → `gpt_image_1`.
pub fn model_key(model: Model) -> String {
    model.as_str().replace('-', "_")
}

/// The quality a price is looked up under.
fn priced_quality(model: Model, quality: Option<&str>) -> &str {
    match (model, quality) {
        (Model::DallE2, _) => "standard",
        (Model::DallE3, None | Some("auto")) => "standard",
        (_, None | Some("auto")) => "medium",
        (_, Some(quality)) => quality,
    }
}

fn priced_size(size: &str) -> &str {
    if size == "auto" { "1024x1024" } else { size }
}

fn per_image(
    prices: &PriceSettings,
    model: Model,
    quality: Option<&str>,
    size: &str,
) -> Option<f64> {
    prices
        .per_image
        .get(&model_key(model))?
        .get(priced_quality(model, quality))?
        .get(priced_size(size))
        .copied()
}

fn per_token(prices: &PriceSettings, model: Model) -> Option<TokenPrices> {
    if !model.is_gpt_image() {
        return None;
    }
    prices.per_token.get(&model_key(model)).copied()
}

/// The price of one image of this configuration, before any usage is known.
pub fn list_price(prices: &PriceSettings, config: &AvatarConfig) -> f64 {
    // `check` made sure every accepted configuration has a price; 0 is unreachable in practice.
    per_image(
        prices,
        config.model,
        config.quality.as_deref(),
        &config.size,
    )
    .unwrap_or(0.0)
}

/// The cost of a generation: from `usage` where the model bills tokens and reported them.
pub fn cost(prices: &PriceSettings, config: &AvatarConfig, usage: Option<&Usage>) -> f64 {
    match (per_token(prices, config.model), usage) {
        (Some(tokens), Some(usage)) if usage.output_tokens > 0 => {
            usage.input_tokens as f64 * tokens.input + usage.output_tokens as f64 * tokens.output
        }
        _ => list_price(prices, config),
    }
}

/// Refuses a price table that misses a model, quality or size a job may ask for, or holds a
/// negative or non-finite price.
pub fn check(prices: &PriceSettings) -> Result<(), String> {
    let valid = |price: f64| price.is_finite() && price >= 0.0;
    for model in Model::ALL {
        for quality in model.qualities() {
            for size in model.sizes() {
                match per_image(prices, model, Some(quality), size) {
                    Some(price) if valid(price) => {}
                    Some(price) => {
                        return Err(format!(
                            "prices.per_image.{}: {price} is not a price",
                            model_key(model)
                        ));
                    }
                    None => {
                        return Err(format!(
                            "prices.per_image.{}.{}.{} is missing",
                            model_key(model),
                            priced_quality(model, Some(quality)),
                            priced_size(size)
                        ));
                    }
                }
            }
        }
        if model.is_gpt_image() {
            match per_token(prices, model) {
                Some(t) if valid(t.input) && valid(t.output) => {}
                _ => {
                    return Err(format!(
                        "prices.per_token.{} needs input and output prices",
                        model_key(model)
                    ));
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::config::Settings;

    fn config(value: serde_json::Value) -> AvatarConfig {
        AvatarConfig::parse(&value).unwrap()
    }

    fn prices() -> PriceSettings {
        Settings::defaults().unwrap().prices
    }

    #[test]
    fn list_prices_follow_model_quality_and_size() {
        let p = &prices();
        assert_eq!(list_price(p, &config(json!({}))), 0.042);
        assert_eq!(
            list_price(p, &config(json!({"quality": "high", "size": "1536x1024"}))),
            0.25
        );
        assert_eq!(
            list_price(p, &config(json!({"quality": "low", "size": "auto"}))),
            0.011
        );
        assert_eq!(
            list_price(
                p,
                &config(json!({"model": "gpt-image-1-mini", "quality": "high"}))
            ),
            0.036
        );
        assert_eq!(
            list_price(p, &config(json!({"model": "dall-e-3", "quality": "hd"}))),
            0.08
        );
        assert_eq!(
            list_price(
                p,
                &config(json!({"model": "dall-e-3", "size": "1792x1024"}))
            ),
            0.08
        );
        assert_eq!(
            list_price(p, &config(json!({"model": "dall-e-2", "size": "256x256"}))),
            0.016
        );
    }

    #[test]
    fn usage_wins_for_token_billed_models() {
        let p = &prices();
        let usage = Usage {
            input_tokens: 50,
            output_tokens: 1056,
            total_tokens: 1106,
        };
        let cost = cost(p, &config(json!({})), Some(&usage));
        assert!(
            (cost - (50.0 * 5.0e-6 + 1056.0 * 40.0e-6)).abs() < 1e-12,
            "{cost}"
        );
        // DALL·E bills per image whatever usage says.
        assert_eq!(
            super::cost(p, &config(json!({"model": "dall-e-3"})), Some(&usage)),
            0.04
        );
    }

    #[test]
    fn a_table_missing_a_price_is_refused() {
        let mut p = prices();
        assert_eq!(check(&p), Ok(()));
        p.per_image
            .get_mut("dall_e_3")
            .unwrap()
            .get_mut("hd")
            .unwrap()
            .remove("1024x1792");
        assert_eq!(
            check(&p),
            Err("prices.per_image.dall_e_3.hd.1024x1792 is missing".to_owned())
        );
        let mut p = prices();
        p.per_token.remove("gpt_image_1_mini");
        assert!(
            check(&p)
                .unwrap_err()
                .contains("per_token.gpt_image_1_mini")
        );
    }
}
