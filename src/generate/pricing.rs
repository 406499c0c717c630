//! What an image costs, in US dollars, from the price table in configuration (`[prices]`).
//!
//! Today's GPT image models bill tokens (CONTRACT.md §11): when a response reports `usage`, the
//! cost comes from it and the model's `per_million_tokens` prices. Where it does not (or for an
//! image reused from storage, whose usage is gone), the per-image fallback for the called model
//! and quality applies, scaled by the image's pixel count (`auto` counts as 1024x1024, no quality
//! or `auto` as medium). The table is checked at start ([`check`]) so that every model the worker
//! may call has both.
//!
//! OpenAI's Batch API (`warm --batch`) bills half of these prices: [`batch_list_price`] and
//! [`batch_cost`] are the same rules times [`BATCH_DISCOUNT`].

use super::Usage;
use crate::config::{PriceSettings, TokenPrices};
use crate::job::{Model, Plan};

/// Pixels of the image the per-image fallback prices are quoted for.
const QUOTED_PIXELS: f64 = 1024.0 * 1024.0;

/// The quality a per-image fallback price is looked up under.
fn priced_quality(quality: Option<&str>) -> &str {
    match quality {
        None | Some("auto") => "medium",
        Some(quality) => quality,
    }
}

/// The per-image estimate for a plan, before any usage is known; 0 only if the table lacks it,
/// which [`check`] rules out at start.
pub(crate) fn list_price(prices: &PriceSettings, plan: &Plan) -> f64 {
    prices
        .per_image
        .get(&plan.called.config_key())
        .and_then(|by_quality| by_quality.get(priced_quality(plan.quality.as_deref())))
        .map_or(0.0, |price| {
            price * plan.request_pixels() as f64 / QUOTED_PIXELS
        })
}

/// Dollars for the tokens a response reports.
pub(crate) fn token_cost(tokens: &TokenPrices, usage: &Usage) -> f64 {
    let details = usage.input_tokens_details.unwrap_or_default();
    // Without details, every input token counts as text.
    let (text, image) = if usage.input_tokens_details.is_some() {
        (details.text_tokens, details.image_tokens)
    } else {
        (usage.input_tokens, 0)
    };
    let cached = details.cached_tokens.min(text);
    let per_token = |per_million: f64| per_million / 1_000_000.0;
    (text - cached) as f64 * per_token(tokens.text_input)
        + cached as f64 * per_token(tokens.cached_text_input)
        + image as f64 * per_token(tokens.image_input)
        + usage.output_tokens as f64 * per_token(tokens.image_output)
}

/// The cost of a generation: from `usage` where OpenAI reported it, else the per-image fallback.
pub fn cost(prices: &PriceSettings, plan: &Plan, usage: Option<&Usage>) -> f64 {
    let tokens = prices.per_million_tokens.get(&plan.called.config_key());
    match (tokens, usage) {
        (Some(tokens), Some(usage)) if usage.output_tokens > 0 => token_cost(tokens, usage),
        _ => list_price(prices, plan),
    }
}

/// What the Batch API bills of the synchronous price: half (OpenAI's price list, "Batch API":
/// 50% off inputs and outputs, results within 24 hours).
pub(crate) const BATCH_DISCOUNT: f64 = 0.5;

/// The per-image estimate of a plan sent through the Batch API: half of [`list_price`].
pub(crate) fn batch_list_price(prices: &PriceSettings, plan: &Plan) -> f64 {
    list_price(prices, plan) * BATCH_DISCOUNT
}

/// The cost of a generation made through the Batch API: half of [`cost`], from its `usage`.
pub(crate) fn batch_cost(prices: &PriceSettings, plan: &Plan, usage: Option<&Usage>) -> f64 {
    cost(prices, plan, usage) * BATCH_DISCOUNT
}

/// Refuses a price table that misses a model the worker may call (any active model: a job may
/// name it, and every successor is one), a quality it takes, or that holds a negative or
/// non-finite price.
pub fn check(prices: &PriceSettings) -> Result<(), String> {
    let valid = |price: f64| price.is_finite() && price >= 0.0;
    for model in Model::active() {
        let key = model.config_key();
        match prices.per_million_tokens.get(&key) {
            Some(t)
                if [
                    t.text_input,
                    t.cached_text_input,
                    t.image_input,
                    t.image_output,
                ]
                .into_iter()
                .all(valid) => {}
            Some(_) => return Err(format!("prices.per_million_tokens.{key}: not a price")),
            None => return Err(format!("prices.per_million_tokens.{key} is missing")),
        }
        for quality in model.spec().qualities {
            let quality = priced_quality(Some(quality));
            match prices.per_image.get(&key).and_then(|q| q.get(quality)) {
                Some(price) if valid(*price) => {}
                Some(price) => {
                    return Err(format!(
                        "prices.per_image.{key}.{quality}: {price} is not a price"
                    ));
                }
                None => return Err(format!("prices.per_image.{key}.{quality} is missing")),
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
    use crate::generate::InputDetails;
    use crate::job::{AvatarConfig, ModelRules};

    fn plan(value: serde_json::Value) -> Plan {
        AvatarConfig::parse(&value)
            .unwrap()
            .plan(&ModelRules::default())
            .unwrap()
    }

    fn prices() -> PriceSettings {
        Settings::defaults().unwrap().prices
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn usage_is_priced_per_million_tokens_with_each_kind_of_input() {
        let p = &prices();
        let usage = Usage {
            input_tokens: 1_000,
            input_tokens_details: Some(InputDetails {
                text_tokens: 600,
                image_tokens: 400,
                cached_tokens: 100,
            }),
            output_tokens: 4_000,
            total_tokens: 5_000,
        };
        let cost = cost(p, &plan(json!({})), Some(&usage));
        let expected = 500.0 * 5.0e-6 + 100.0 * 1.25e-6 + 400.0 * 8.0e-6 + 4_000.0 * 30.0e-6;
        assert!(close(cost, expected), "{cost} != {expected}");
        // Without details every input token is text.
        let plain = Usage {
            input_tokens: 50,
            input_tokens_details: None,
            output_tokens: 1056,
            total_tokens: 1106,
        };
        let cost = super::cost(p, &plan(json!({})), Some(&plain));
        assert!(close(cost, 50.0 * 5.0e-6 + 1056.0 * 30.0e-6), "{cost}");
    }

    #[test]
    fn the_fallback_follows_quality_and_pixels() {
        let p = &prices();
        assert!(close(list_price(p, &plan(json!({}))), 0.04));
        assert!(close(cost(p, &plan(json!({})), None), 0.04));
        assert!(close(
            list_price(p, &plan(json!({"model": "dall-e-3", "quality": "hd"}))),
            0.17
        ));
        let big =
            plan(json!({"model": "gpt-image-2.6-flare", "size": "2048x2048", "quality": "max"}));
        assert!(close(list_price(p, &big), 0.40 * 4.0));
        // dall-e-2's 256x256 is made at 1024x1024: priced as such.
        assert!(close(
            list_price(p, &plan(json!({"model": "dall-e-2", "size": "256x256"}))),
            0.04
        ));
    }

    #[test]
    fn the_batch_price_is_half_the_price() {
        let p = &prices();
        let medium = plan(json!({}));
        assert!(close(batch_list_price(p, &medium), 0.02));
        let usage = Usage {
            input_tokens: 50,
            input_tokens_details: None,
            output_tokens: 1056,
            total_tokens: 1106,
        };
        assert!(close(
            batch_cost(p, &medium, Some(&usage)),
            cost(p, &medium, Some(&usage)) / 2.0
        ));
        assert!(close(batch_cost(p, &medium, None), 0.02));
    }

    #[test]
    fn a_table_missing_a_price_is_refused() {
        let mut p = prices();
        assert_eq!(check(&p), Ok(()));
        p.per_image
            .get_mut("gpt_image_2_6_sunburst")
            .unwrap()
            .remove("xhigh");
        assert_eq!(
            check(&p),
            Err("prices.per_image.gpt_image_2_6_sunburst.xhigh is missing".to_owned())
        );
        let mut p = prices();
        p.per_million_tokens.remove("gpt_image_2");
        assert!(
            check(&p)
                .unwrap_err()
                .contains("per_million_tokens.gpt_image_2")
        );
        let mut p = prices();
        p.per_million_tokens
            .get_mut("gpt_image_2")
            .unwrap()
            .image_output = -1.0;
        assert!(check(&p).is_err());
    }
}
