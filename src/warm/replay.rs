//! Measuring the popularity model honestly: a skewed request log, replayed day by day, with and
//! without warming the predicted top K each night under a budget (`memoji-bench warm-replay`,
//! BENCHMARKS.md).
//!
//! The log is synthetic and its parameters are here, in [`LogShape`]: each attribute's values
//! are drawn from a Zipf distribution (value of rank r with probability ∝ 1 / r^s), the
//! attributes independently, and every `drift_every_days` days the popularity ranks of the
//! colour themes and gestures move (a new trend: the value ranked k takes rank 1), so yesterday's
//! favourites are not forever's. The replay is in-process, without RabbitMQ, Postgres or OpenAI:
//! it measures a policy (what a warm cache would have served), not the worker. Each request is a
//! hit if its key was cached (generated on a miss, or warmed), the cache never evicts, and every
//! generation costs `price_usd` (warming at `warm_price_usd`: the list price, or half of it
//! through OpenAI's Batch API).

use std::collections::{HashMap, HashSet};

use chrono::{Duration, NaiveDate};
use serde_json::{Value, json};

use super::predict::{self, Model, Row};
use crate::job::{AvatarConfig, CacheKey, GeneratorKind};

/// The values each attribute takes, most popular first before any drift.
const GESTURES: [&str; 8] = [
    "wave",
    "thumbs-up",
    "peace",
    "heart",
    "laugh",
    "wink",
    "shrug",
    "clap",
];
const HAIR: [&str; 10] = [
    "short", "long", "curly", "bun", "bald", "wavy", "braids", "ponytail", "afro", "buzz",
];
const SKIN: [&str; 6] = ["medium", "light", "medium-dark", "dark", "fair", "olive"];
const THEMES: [&str; 10] = [
    "pastel-blue",
    "sunset",
    "mint",
    "lavender",
    "mono",
    "neon",
    "forest",
    "peach",
    "ocean",
    "gold",
];
const FAMILY: [&str; 5] = ["father", "mother", "son", "daughter", "grandparent"];
const ACCESSORIES: [&[&str]; 8] = [
    &[],
    &["glasses"],
    &["hat"],
    &["glasses", "hat"],
    &["earrings"],
    &["headphones"],
    &["glasses", "headphones"],
    &["scarf"],
];

/// The request log's shape.
#[derive(Debug, Clone, Copy)]
pub struct LogShape {
    /// Days the log covers.
    pub days: u32,
    /// Requests each day.
    pub requests_per_day: u32,
    /// Zipf exponents: gesture, hair, skin tone, theme, family type, accessories.
    pub exponents: [f64; 6],
    /// Every this many days the theme and gesture ranks rotate (0: never).
    pub drift_every_days: u32,
    /// Seed of the random draws (the same seed, the same log).
    pub seed: u64,
}

impl Default for LogShape {
    fn default() -> LogShape {
        LogShape {
            days: 30,
            requests_per_day: 2_000,
            exponents: [1.1, 1.0, 0.8, 1.2, 0.9, 1.3],
            drift_every_days: 7,
            seed: 14,
        }
    }
}

/// splitmix64: small, seedable, good enough for a synthetic log.
struct Rng(u64);

impl Rng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Cumulative Zipf weights for `n` ranks.
fn zipf(n: usize, s: f64) -> Vec<f64> {
    let weights: Vec<f64> = (1..=n).map(|r| 1.0 / (r as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let mut cumulative = 0.0;
    weights
        .iter()
        .map(|w| {
            cumulative += w / total;
            cumulative
        })
        .collect()
}

fn draw(rng: &mut Rng, cumulative: &[f64]) -> usize {
    let u = rng.next_f64();
    cumulative
        .iter()
        .position(|c| u <= *c)
        .unwrap_or(cumulative.len() - 1)
}

/// The rank → value index of an attribute after `shift` trend changes.
fn rotated(rank: usize, n: usize, shift: usize) -> usize {
    (rank + shift * 3) % n
}

/// The synthetic log: for each day, its requests' configurations.
pub fn log(shape: &LogShape) -> Vec<Vec<Value>> {
    let mut rng = Rng(shape.seed);
    let e = shape.exponents;
    let tables = [
        zipf(GESTURES.len(), e[0]),
        zipf(HAIR.len(), e[1]),
        zipf(SKIN.len(), e[2]),
        zipf(THEMES.len(), e[3]),
        zipf(FAMILY.len(), e[4]),
        zipf(ACCESSORIES.len(), e[5]),
    ];
    (0..shape.days)
        .map(|day| {
            let shift = day.checked_div(shape.drift_every_days).unwrap_or(0) as usize;
            (0..shape.requests_per_day)
                .map(|_| {
                    let gesture =
                        GESTURES[rotated(draw(&mut rng, &tables[0]), GESTURES.len(), shift)];
                    let hair = HAIR[draw(&mut rng, &tables[1])];
                    let skin = SKIN[draw(&mut rng, &tables[2])];
                    let theme = THEMES[rotated(draw(&mut rng, &tables[3]), THEMES.len(), shift)];
                    let family = FAMILY[draw(&mut rng, &tables[4])];
                    let accessories = ACCESSORIES[draw(&mut rng, &tables[5])];
                    json!({"gesture": gesture, "hair": hair, "skinTone": skin, "colorTheme": theme,
                           "familyType": family, "accessories": accessories})
                })
                .collect()
        })
        .collect()
}

/// Who asks, and what each request orders beyond the avatar: the parts of a request [`log`]
/// leaves out, for the offline policy replay's request logs (`memoji-worker history generate`,
/// `crate::simulate`). Drawn from a generator of their own, so [`log`]'s draws (and the
/// warm-replay figures in BENCHMARKS.md) stay as they are.
#[derive(Debug, Clone, Copy)]
pub struct People {
    /// Users `user-1` … `user-N`, the one of rank r asking with probability ∝ 1 / r^s.
    pub users: u32,
    /// The users' Zipf exponent.
    pub user_exponent: f64,
}

impl Default for People {
    fn default() -> People {
        People {
            users: 20_000,
            user_exponent: 0.6,
        }
    }
}

/// What a request orders beyond the avatar, with its share of the requests: most take the
/// defaults (gpt-image-1, served by gpt-image-2.6-flare, 1024x1024, medium: $0.04), some a
/// cheaper or a dearer image, so that entries differ in cost and size.
pub(crate) const ORDERS: [(f64, &[(&str, &str)]); 5] = [
    (0.70, &[]),
    (0.12, &[("quality", "low")]),
    (0.08, &[("quality", "high")]),
    (0.06, &[("size", "1536x1024")]),
    (
        0.04,
        &[("model", "gpt-image-2.6-sunburst"), ("quality", "max")],
    ),
];

/// [`log`]'s requests, each with its order ([`ORDERS`]) merged into the configuration and the
/// user who asked.
pub fn requests(shape: &LogShape, people: &People) -> Vec<Vec<(Value, String)>> {
    let mut rng = Rng(shape.seed ^ 0x005E_ED0F_0EE5);
    let users = zipf(people.users.max(1) as usize, people.user_exponent);
    let total: f64 = ORDERS.iter().map(|(share, _)| share).sum();
    let mut cumulative = 0.0;
    let orders: Vec<f64> = ORDERS
        .iter()
        .map(|(share, _)| {
            cumulative += share / total;
            cumulative
        })
        .collect();
    log(shape)
        .into_iter()
        .map(|day| {
            day.into_iter()
                .map(|mut config| {
                    let user = fast_draw(&mut rng, &users) + 1;
                    let (_, fields) = ORDERS[fast_draw(&mut rng, &orders)];
                    if let Value::Object(object) = &mut config {
                        for (field, value) in fields {
                            object.insert((*field).to_owned(), Value::from(*value));
                        }
                    }
                    (config, format!("user-{user}"))
                })
                .collect()
        })
        .collect()
}

/// [`draw`] by bisection, for long tables (thousands of users).
fn fast_draw(rng: &mut Rng, cumulative: &[f64]) -> usize {
    let u = rng.next_f64();
    cumulative
        .partition_point(|c| *c < u)
        .min(cumulative.len().saturating_sub(1))
}

/// The replay's policy: how many to warm each night, for how much.
#[derive(Debug, Clone, Copy)]
pub struct Policy {
    /// How many predicted configurations to warm each night, at most.
    pub top: usize,
    /// Most to spend on warming each night, USD.
    pub nightly_budget_usd: f64,
    /// What a live generation costs, USD.
    pub price_usd: f64,
    /// What a warmed generation costs, USD (the list price, or the Batch API's half).
    pub warm_price_usd: f64,
    /// The popularity model that ranks what to warm.
    pub model: Model,
}

/// One day of the replay.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Day {
    /// Requests that day.
    pub requests: u64,
    /// Of them, hits without warming.
    pub hits_without: u64,
    /// Of them, hits with warming.
    pub hits_with: u64,
    /// Dollars of live generations, without warming.
    pub live_usd_without: f64,
    /// Dollars of live generations with warming, and of the warming the night before.
    pub live_usd_with: f64,
    /// Dollars of the warming the night before.
    pub warm_usd: f64,
    /// Warmed images that were asked for that day.
    pub warmed_used: u64,
    /// Images warmed the night before.
    pub warmed: u64,
}

fn key_of(config: &Value) -> Option<String> {
    let config = AvatarConfig::normalize(config).ok()?;
    Some(CacheKey::of(&config, GeneratorKind::OpenAi).to_string())
}

/// Replays `days` of requests: day 0 starts with an empty cache; each night after a day, the
/// warming side predicts from the history so far and warms what fits the budget.
pub fn replay(days: &[Vec<Value>], policy: &Policy) -> Vec<Day> {
    let start = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap_or_default();
    let mut without: HashSet<String> = HashSet::new();
    let mut with: HashSet<String> = HashSet::new();
    let mut warmed_unused: HashSet<String> = HashSet::new();
    let mut history: Vec<Row> = Vec::new();
    let mut out = Vec::new();
    let mut warm_tonight = (0u64, 0.0f64);
    for (n, requests) in days.iter().enumerate() {
        let today = start + Duration::days(n as i64);
        let mut day = Day {
            warmed: warm_tonight.0,
            warm_usd: warm_tonight.1,
            ..Day::default()
        };
        let mut counts: HashMap<String, (Value, f64)> = HashMap::new();
        for config in requests {
            let Some(key) = key_of(config) else { continue };
            day.requests += 1;
            if without.contains(&key) {
                day.hits_without += 1;
            } else {
                without.insert(key.clone());
                day.live_usd_without += policy.price_usd;
            }
            if with.contains(&key) {
                day.hits_with += 1;
                if warmed_unused.remove(&key) {
                    day.warmed_used += 1;
                }
            } else {
                with.insert(key.clone());
                day.live_usd_with += policy.price_usd;
            }
            counts.entry(key).or_insert((config.clone(), 0.0)).1 += 1.0;
        }
        history.extend(counts.into_iter().map(|(key, (config, requests))| Row {
            day: today,
            key,
            config,
            requests,
        }));
        out.push(day);
        // Tonight's warming, for tomorrow.
        let ranked = predict::predict(
            &policy.model,
            &history,
            today,
            policy.top,
            &|key| with.contains(key),
            &key_of,
        );
        let mut spent = 0.0;
        let mut warmed = 0;
        for prediction in ranked {
            if spent + policy.warm_price_usd > policy.nightly_budget_usd + 1e-9 {
                break;
            }
            if let Some(key) = key_of(&prediction.config)
                && with.insert(key.clone())
            {
                warmed_unused.insert(key);
                spent += policy.warm_price_usd;
                warmed += 1;
            }
        }
        warm_tonight = (warmed, spent);
    }
    out
}

/// A Markdown table of a replay: each day, then the totals after day 0 (the days warming could
/// act on).
pub fn table(shape: &LogShape, policy: &Policy, days: &[Day]) -> String {
    use std::fmt::Write as _;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{} days × {} requests, Zipf exponents {:?}, trends move every {} days, seed {}; \
         warm top {} a night within ${:.2} at ${:.3}/image, live ${:.3}/image, half-life {} days\n",
        shape.days,
        shape.requests_per_day,
        shape.exponents,
        shape.drift_every_days,
        shape.seed,
        policy.top,
        policy.nightly_budget_usd,
        policy.warm_price_usd,
        policy.price_usd,
        policy.model.half_life_days
    );
    let _ = writeln!(
        out,
        "| day | hit ratio without | hit ratio with | $ without | $ with (live + warm) | warmed | warmed & used |"
    );
    let _ = writeln!(out, "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |");
    let ratio = |hits: u64, n: u64| {
        if n == 0 {
            0.0
        } else {
            100.0 * hits as f64 / n as f64
        }
    };
    let mut total = Day::default();
    for (n, day) in days.iter().enumerate() {
        let _ = writeln!(
            out,
            "| {n} | {:.1}% | {:.1}% | {:.2} | {:.2} + {:.2} | {} | {} |",
            ratio(day.hits_without, day.requests),
            ratio(day.hits_with, day.requests),
            day.live_usd_without,
            day.live_usd_with,
            day.warm_usd,
            day.warmed,
            day.warmed_used
        );
        if n > 0 {
            total.requests += day.requests;
            total.hits_without += day.hits_without;
            total.hits_with += day.hits_with;
            total.live_usd_without += day.live_usd_without;
            total.live_usd_with += day.live_usd_with;
            total.warm_usd += day.warm_usd;
            total.warmed += day.warmed;
            total.warmed_used += day.warmed_used;
        }
    }
    let _ = writeln!(
        out,
        "| days 1–{} | **{:.1}%** | **{:.1}%** | **{:.2}** | **{:.2} + {:.2} = {:.2}** | {} | {} |",
        days.len().saturating_sub(1),
        ratio(total.hits_without, total.requests),
        ratio(total.hits_with, total.requests),
        total.live_usd_without,
        total.live_usd_with,
        total.warm_usd,
        total.live_usd_with + total.warm_usd,
        total.warmed,
        total.warmed_used
    );
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_is_skewed_and_reproducible() {
        let shape = LogShape {
            days: 2,
            requests_per_day: 5_000,
            ..LogShape::default()
        };
        let a = log(&shape);
        assert_eq!(a, log(&shape));
        let waves = a[0].iter().filter(|c| c["gesture"] == "wave").count();
        let claps = a[0].iter().filter(|c| c["gesture"] == "clap").count();
        assert!(waves > 4 * claps, "{waves} vs {claps}");
    }

    #[test]
    fn requests_add_users_and_orders_without_changing_the_logs_draws() {
        let shape = LogShape {
            days: 1,
            requests_per_day: 4_000,
            ..LogShape::default()
        };
        let plain = log(&shape);
        let full = requests(&shape, &People::default());
        for (config, (ordered, _)) in plain[0].iter().zip(&full[0]) {
            assert_eq!(config["gesture"], ordered["gesture"]);
            assert_eq!(config["accessories"], ordered["accessories"]);
        }
        let count = |user: &str| full[0].iter().filter(|(_, u)| u == user).count();
        assert!(count("user-1") > 4 * count("user-1000").max(1));
        let dear = full[0]
            .iter()
            .filter(|(c, _)| c["quality"] == "max")
            .count();
        assert!(
            (80..=240).contains(&dear),
            "about 4% at max quality: {dear}"
        );
    }

    #[test]
    fn warming_the_predicted_top_raises_the_next_days_hit_ratio() {
        let shape = LogShape {
            days: 8,
            requests_per_day: 500,
            ..LogShape::default()
        };
        let policy = Policy {
            top: 200,
            nightly_budget_usd: 4.0,
            price_usd: 0.04,
            warm_price_usd: 0.04,
            model: Model::default(),
        };
        let days = replay(&log(&shape), &policy);
        let (with, without): (u64, u64) = days[1..]
            .iter()
            .fold((0, 0), |(w, wo), d| (w + d.hits_with, wo + d.hits_without));
        assert!(with > without, "{with} vs {without}");
        for day in &days {
            assert!(day.warm_usd <= 4.0 + 1e-9);
            assert!(day.hits_with >= day.hits_without);
        }
    }
}
