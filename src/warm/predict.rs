//! The popularity model ("intelligent preloading"): from the request history, each
//! configuration's expected requests tomorrow.
//!
//! - **Seen keys**: an exponentially decayed average of the key's daily requests (half-life
//!   [`Model::half_life_days`]): yesterday counts fully, a week ago half as much (by default).
//! - **Any combination, seen or not**: the attributes (gesture, hair, skin tone, colour theme,
//!   family type, the accessory set) are scored apart, each value's decayed share of all
//!   requests, and combined as if independent: `total rate × Π share(value)`. This predicts
//!   popular combinations nobody has asked for yet (a popular gesture with a popular hair style).
//!   The other fields (model, size, background, quality) take their most asked value, where
//!   leaving the field out counts as a value.
//!
//! A key's prediction blends the two: `β × own rate + (1 − β) × attribute rate` for a seen key
//! (β = [`Model::own_weight`]), the attribute rate alone for one never seen. Pure: the same rows
//! in give the same ranking out, which is what `memoji-bench warm-replay` measures.

use std::collections::{BTreeMap, HashMap};

use chrono::NaiveDate;
use serde::Serialize;
use serde_json::{Map, Value};

/// The attributes scored apart, by their configuration field names.
pub(crate) const ATTRIBUTES: [&str; 6] = [
    "gesture",
    "hair",
    "skinTone",
    "colorTheme",
    "familyType",
    "accessories",
];

/// One day's requests for one configuration (as the history stores it).
#[derive(Debug, Clone)]
pub struct Row {
    /// The UTC day.
    pub day: NaiveDate,
    /// The configuration's cache key.
    pub key: String,
    /// The configuration (a job's `config` object).
    pub config: Value,
    /// Requests for it that day.
    pub requests: f64,
}

/// The model's knobs.
#[derive(Debug, Clone, Copy)]
pub struct Model {
    /// Days after which a day's requests weigh half as much.
    pub half_life_days: f64,
    /// β: how much a seen key's own history weighs against its attributes.
    pub own_weight: f64,
    /// Values of each attribute combined into unseen candidates (the most asked ones).
    pub values_per_attribute: usize,
}

impl Default for Model {
    fn default() -> Model {
        Model {
            half_life_days: 7.0,
            own_weight: 0.8,
            values_per_attribute: 4,
        }
    }
}

/// A predicted configuration, with why.
#[derive(Debug, Clone, Serialize)]
pub struct Prediction {
    /// The configuration (a job's `config` object) to warm.
    pub config: Value,
    /// Expected requests tomorrow.
    pub score: f64,
    /// The key's own decayed daily rate; `None` for a key never seen.
    pub own_rate: Option<f64>,
    /// The attribute model's rate for the combination.
    pub attribute_rate: f64,
    /// Each attribute's value and its share of the requests.
    pub shares: BTreeMap<String, (String, f64)>,
}

/// An attribute's value as text (the accessory set joined with `+`, `none` when empty).
fn value_of(config: &Value, attribute: &str) -> String {
    match config.get(attribute) {
        Some(Value::String(text)) => text.clone(),
        Some(Value::Array(items)) if attribute == "accessories" => {
            let names: Vec<&str> = items.iter().filter_map(Value::as_str).collect();
            if names.is_empty() {
                "none".to_owned()
            } else {
                names.join("+")
            }
        }
        _ => String::new(),
    }
}

fn set_value(config: &mut Map<String, Value>, attribute: &str, value: &str) {
    let value = if attribute == "accessories" {
        Value::Array(
            value
                .split('+')
                .filter(|v| !v.is_empty() && *v != "none")
                .map(Value::from)
                .collect(),
        )
    } else {
        Value::from(value)
    };
    config.insert(attribute.to_owned(), value);
}

/// Ranks configurations by expected requests tomorrow (`today` is the last day of the history
/// counted fully), best first, at most `top`. `exclude` drops keys (those cached now); keys of
/// unseen combinations come from `key_of` (`None`: not a valid configuration).
pub fn predict(
    model: &Model,
    rows: &[Row],
    today: NaiveDate,
    top: usize,
    exclude: &dyn Fn(&str) -> bool,
    key_of: &dyn Fn(&Value) -> Option<String>,
) -> Vec<Prediction> {
    if rows.is_empty() || top == 0 {
        return Vec::new();
    }
    let lambda = std::f64::consts::LN_2 / model.half_life_days.max(0.1);
    let weight = |day: NaiveDate| (-lambda * (today - day).num_days().max(0) as f64).exp();
    // The normalizer: the weights of the days the history covers, so rates are per day.
    let first = rows.iter().map(|r| r.day).min().unwrap_or(today);
    let span = (today - first).num_days().max(0);
    let days: f64 = (0..=span)
        .map(|d| weight(today - chrono::Duration::days(d)))
        .sum();

    let mut own: HashMap<&str, (f64, &Value)> = HashMap::new();
    let mut shares: Vec<HashMap<String, f64>> = vec![HashMap::new(); ATTRIBUTES.len()];
    let mut rest: HashMap<String, HashMap<String, f64>> = HashMap::new();
    let mut total = 0.0;
    for row in rows {
        let w = weight(row.day) * row.requests;
        total += w;
        let entry = own.entry(row.key.as_str()).or_insert((0.0, &row.config));
        entry.0 += w;
        for (i, attribute) in ATTRIBUTES.iter().enumerate() {
            *shares[i]
                .entry(value_of(&row.config, attribute))
                .or_default() += w;
        }
        if let Value::Object(object) = &row.config {
            for (field, value) in object {
                if !ATTRIBUTES.contains(&field.as_str()) {
                    *rest
                        .entry(field.clone())
                        .or_default()
                        .entry(value.to_string())
                        .or_default() += w;
                }
            }
        }
    }
    if total <= 0.0 {
        return Vec::new();
    }
    let total_rate = total / days;
    let attribute_rate = |config: &Value| -> (f64, BTreeMap<String, (String, f64)>) {
        let mut rate = total_rate;
        let mut explained = BTreeMap::new();
        for (i, attribute) in ATTRIBUTES.iter().enumerate() {
            let value = value_of(config, attribute);
            let share = shares[i].get(&value).copied().unwrap_or(0.0) / total;
            rate *= share;
            explained.insert((*attribute).to_owned(), (value, share));
        }
        (rate, explained)
    };

    let mut predictions: HashMap<String, Prediction> = HashMap::new();
    for (key, (sum, config)) in &own {
        if exclude(key) {
            continue;
        }
        let own_rate = sum / days;
        let (attr, explained) = attribute_rate(config);
        predictions.insert(
            (*key).to_owned(),
            Prediction {
                config: (*config).clone(),
                score: model.own_weight * own_rate + (1.0 - model.own_weight) * attr,
                own_rate: Some(own_rate),
                attribute_rate: attr,
                shares: explained,
            },
        );
    }
    // Unseen combinations of the most asked values. Leaving a field out is a value too: a field
    // most requests do not set (`quality`, say, set by a quarter of them) stays out, rather than
    // taking the most common of the values the few set.
    let mut template = Map::new();
    for (field, values) in &rest {
        let unset = total - values.values().sum::<f64>();
        if let Some((text, weight)) = values
            .iter()
            .max_by(|a, b| a.1.total_cmp(b.1).then_with(|| b.0.cmp(a.0)))
            && *weight > unset
            && let Ok(value) = serde_json::from_str::<Value>(text)
        {
            template.insert(field.clone(), value);
        }
    }
    let top_values: Vec<Vec<String>> = shares
        .iter()
        .map(|by_value| {
            let mut values: Vec<(&String, &f64)> = by_value.iter().collect();
            values.sort_by(|a, b| b.1.total_cmp(a.1).then_with(|| a.0.cmp(b.0)));
            values
                .into_iter()
                .take(model.values_per_attribute.max(1))
                .map(|(v, _)| v.clone())
                .collect()
        })
        .collect();
    let mut combination = vec![0usize; ATTRIBUTES.len()];
    'combinations: loop {
        let mut config = template.clone();
        for (i, attribute) in ATTRIBUTES.iter().enumerate() {
            set_value(&mut config, attribute, &top_values[i][combination[i]]);
        }
        let config = Value::Object(config);
        if let Some(key) = key_of(&config)
            && !own.contains_key(key.as_str())
            && !exclude(&key)
        {
            let (attr, explained) = attribute_rate(&config);
            predictions.insert(
                key,
                Prediction {
                    config,
                    score: attr,
                    own_rate: None,
                    attribute_rate: attr,
                    shares: explained,
                },
            );
        }
        // Next combination (an odometer over the top values).
        for i in 0..ATTRIBUTES.len() {
            combination[i] += 1;
            if combination[i] < top_values[i].len() {
                continue 'combinations;
            }
            combination[i] = 0;
        }
        break;
    }
    let mut ranked: Vec<(String, Prediction)> = predictions.into_iter().collect();
    ranked.sort_by(|a, b| b.1.score.total_cmp(&a.1.score).then_with(|| a.0.cmp(&b.0)));
    ranked.truncate(top);
    ranked.into_iter().map(|(_, p)| p).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn row(day: u32, config: Value, requests: f64) -> Row {
        Row {
            day: NaiveDate::from_ymd_opt(2026, 11, day).unwrap(),
            key: key(&config).unwrap(),
            config,
            requests,
        }
    }

    fn cfg(gesture: &str, hair: &str) -> Value {
        json!({"model": "gpt-image-1", "gesture": gesture, "hair": hair, "skinTone": "medium",
               "colorTheme": "pastel-blue", "familyType": "father", "accessories": []})
    }

    fn key(config: &Value) -> Option<String> {
        Some(format!("{}-{}", config["gesture"], config["hair"]))
    }

    #[test]
    fn recent_requests_weigh_more_and_unseen_popular_combinations_are_predicted() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        let rows = vec![
            // Old favourite, a month ago.
            row(1, cfg("bow", "bun"), 100.0),
            // Today's: wave with short, and heart with long.
            row(30, cfg("wave", "short"), 20.0),
            row(30, cfg("heart", "long"), 20.0),
        ];
        let ranked = predict(&Model::default(), &rows, today, 10, &|_| false, &key);
        let names: Vec<String> = ranked.iter().map(|p| key(&p.config).unwrap()).collect();
        assert!(
            names.iter().position(|n| n.contains("wave")).unwrap()
                < names.iter().position(|n| n.contains("bow")).unwrap(),
            "{names:?}"
        );
        // wave + long was never asked for, but both values are popular now.
        let unseen = ranked
            .iter()
            .find(|p| p.config["gesture"] == "wave" && p.config["hair"] == "long")
            .expect("an unseen popular combination is predicted");
        assert!(unseen.own_rate.is_none());
        assert!(unseen.score > 0.0);
        // The model field comes from the template.
        assert_eq!(unseen.config["model"], "gpt-image-1");
    }

    #[test]
    fn excluded_keys_are_left_out() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        let rows = vec![row(30, cfg("wave", "short"), 5.0)];
        let cached = key(&cfg("wave", "short")).unwrap();
        let ranked = predict(&Model::default(), &rows, today, 10, &|k| k == cached, &key);
        assert!(ranked.is_empty(), "{ranked:?}");
    }

    #[test]
    fn a_field_most_requests_leave_out_stays_out_of_unseen_combinations() {
        let today = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        let with_quality = |gesture: &str, hair: &str, quality: &str| {
            let mut config = cfg(gesture, hair);
            config["quality"] = json!(quality);
            config
        };
        // A quarter of the requests set quality (mostly "low"); the rest leave it out.
        let rows = vec![
            row(30, cfg("wave", "short"), 30.0),
            row(30, cfg("heart", "long"), 45.0),
            row(30, with_quality("bow", "bun", "low"), 15.0),
            row(30, with_quality("heart", "short", "high"), 10.0),
        ];
        let ranked = predict(&Model::default(), &rows, today, 50, &|_| false, &key);
        let unseen: Vec<&Prediction> = ranked.iter().filter(|p| p.own_rate.is_none()).collect();
        assert!(!unseen.is_empty(), "{ranked:?}");
        for prediction in unseen {
            assert!(
                prediction.config.get("quality").is_none(),
                "an unseen combination takes the most common choice, no quality: {prediction:?}"
            );
        }
        // A field most requests set is still filled in.
        let mostly_low: Vec<Row> = (0..4)
            .map(|n| row(30, with_quality("wave", &format!("h{n}"), "low"), 10.0))
            .chain([row(30, cfg("heart", "long"), 5.0)])
            .collect();
        let ranked = predict(&Model::default(), &mostly_low, today, 50, &|_| false, &key);
        assert!(
            ranked
                .iter()
                .filter(|p| p.own_rate.is_none())
                .all(|p| p.config["quality"] == "low"),
            "{ranked:?}"
        );
    }
}
