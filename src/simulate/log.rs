//! The request log the offline replay reads: JSON Lines, one line per day and key, the same
//! format whether it comes from the worker's own history (`memoji-worker history export`) or
//! from the synthetic Zipf generator (`memoji-worker history generate`).
//!
//! ```text
//! # comments and blank lines are skipped
//! {"day":"2026-11-30","key":"57031741…","config":{"model":"gpt-image-1",…},"requests":3,
//!  "users":{"user-17":2,"user-4":1},"image_bytes":1572864}
//! ```
//!
//! - `day` (required): the UTC day, `YYYY-MM-DD`. Lines need not be sorted; a day's lines are
//!   replayed in file order.
//! - `config` (required): the configuration, as `memoji_request_history.prompt_config` holds it
//!   (the canonical configuration: enough to make the key and the image again).
//! - `requests` (required, ≥ 1): how often the key was asked for that day (hits and misses).
//! - `key`: the cache key; computed from `config` (as the `openai` generator keys it) when absent.
//! - `users`: who asked, user id → requests, summing to `requests`. The worker's history keeps no
//!   users, so an exported log has none; the replay then takes each request as coming from a
//!   different user (variants are then picked uniformly).
//! - `image_bytes`: the stored image's size, where known (the export copies it from the key's
//!   `memoji_cache` row); else estimated from the pixels ([`BYTES_PER_PIXEL`]).

use std::collections::{BTreeMap, HashMap};

use chrono::{Duration, NaiveDate};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::job::{AvatarConfig, CacheKey, GeneratorKind};
use crate::warm::replay::{self, LogShape, People};

/// Bytes of a stored PNG per pixel, for images whose size the log does not give: 1.5, so a
/// 1024x1024 image takes 1.5 MiB (what the GPT image models' PNGs weigh, give or take).
pub(crate) const BYTES_PER_PIXEL: f64 = 1.5;

/// One line: a key's requests on one day.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Line {
    /// The UTC day.
    pub day: NaiveDate,
    /// The cache key; `None`: computed from `config`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// The (canonical) configuration.
    pub config: Value,
    /// Requests that day, hits and misses.
    pub requests: u32,
    /// Who asked, and how often; `None`: each request a different user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub users: Option<BTreeMap<String, u32>>,
    /// The stored image's bytes, where known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image_bytes: Option<u64>,
}

/// A line that is not a valid log line, by number (1-based).
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("line {line}: {message}")]
pub struct LogError {
    /// The line's number, from 1.
    pub(crate) line: usize,
    /// What is wrong with it.
    pub(crate) message: String,
}

/// Reads a log; the first bad line stops it (an operator comparing policies wants to know).
pub fn read(text: &str) -> Result<Vec<Line>, LogError> {
    let mut lines = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let raw = raw.trim();
        if raw.is_empty() || raw.starts_with('#') {
            continue;
        }
        let error = |message: String| LogError {
            line: n + 1,
            message,
        };
        let line: Line = serde_json::from_str(raw).map_err(|e| error(e.to_string()))?;
        if line.requests == 0 {
            return Err(error("`requests` must be at least 1".to_owned()));
        }
        if !line.config.is_object() {
            return Err(error("`config` must be a JSON object".to_owned()));
        }
        if let Some(users) = &line.users {
            let sum: u64 = users.values().map(|n| u64::from(*n)).sum();
            if sum != u64::from(line.requests) {
                return Err(error(format!(
                    "`users` add up to {sum} requests, `requests` says {}",
                    line.requests
                )));
            }
        }
        lines.push(line);
    }
    Ok(lines)
}

/// Writes lines, one JSON object each, after a `#` comment saying where they came from.
pub fn write(out: &mut impl std::io::Write, comment: &str, lines: &[Line]) -> std::io::Result<()> {
    for text in comment.lines() {
        writeln!(out, "# {text}")?;
    }
    for line in lines {
        serde_json::to_writer(&mut *out, line)?;
        writeln!(out)?;
    }
    Ok(())
}

/// The key the `openai` generator gives a configuration (`None`: not a configuration).
pub fn key_of(config: &Value) -> Option<String> {
    let config = AvatarConfig::normalize(config).ok()?;
    Some(CacheKey::of(&config, GeneratorKind::OpenAi).to_string())
}

/// The synthetic log ([`replay::requests`]: Zipf-distributed attributes, orders and users),
/// starting on `start`, one line per day and key in order of first request, configurations in
/// their canonical form (as the history stores them).
pub fn generated(shape: &LogShape, people: &People, start: NaiveDate) -> Vec<Line> {
    let mut out = Vec::new();
    for (n, requests) in replay::requests(shape, people).into_iter().enumerate() {
        let day = start + Duration::days(n as i64);
        let mut index: HashMap<String, usize> = HashMap::new();
        let first = out.len();
        for (config, user) in requests {
            let Ok(parsed) = AvatarConfig::normalize(&config) else {
                continue;
            };
            let key = CacheKey::of(&parsed, GeneratorKind::OpenAi).to_string();
            let at = *index.entry(key.clone()).or_insert_with(|| {
                out.push(Line {
                    day,
                    key: Some(key),
                    config: CacheKey::canonical_value(&parsed, GeneratorKind::OpenAi),
                    requests: 0,
                    users: Some(BTreeMap::new()),
                    image_bytes: None,
                });
                out.len() - 1 - first
            });
            let line = &mut out[first + at];
            line.requests += 1;
            if let Some(users) = &mut line.users {
                *users.entry(user).or_default() += 1;
            }
        }
    }
    out
}

/// What `history generate` says about its log, for the file's first lines.
pub(crate) fn describe(shape: &LogShape, people: &People, start: NaiveDate) -> String {
    format!(
        "memoji request log (memoji-worker history generate): {} days from {start} × {} requests, \
         Zipf exponents {:?}, trends move every {} days, {} users (exponent {}), seed {}",
        shape.days,
        shape.requests_per_day,
        shape.exponents,
        shape.drift_every_days,
        people.users,
        people.user_exponent,
        shape.seed
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn lines_round_trip_and_bad_lines_are_named() {
        let day = NaiveDate::from_ymd_opt(2026, 11, 30).unwrap();
        let lines = vec![Line {
            day,
            key: None,
            config: json!({"hair": "long"}),
            requests: 2,
            users: Some(BTreeMap::from([("a".to_owned(), 1), ("b".to_owned(), 1)])),
            image_bytes: Some(10),
        }];
        let mut text = Vec::new();
        write(&mut text, "a test\nof two lines", &lines).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(text.starts_with("# a test\n# of two lines\n{\"day\":\"2026-11-30\""));
        assert_eq!(read(&text).unwrap(), lines);

        let bad = |line: &str| read(&format!("\n{line}\n")).unwrap_err();
        assert_eq!(bad("{").line, 2);
        let config = r#""config":{}"#;
        assert!(
            bad(&format!(r#"{{"day":"2026-13-01",{config},"requests":1}}"#))
                .message
                .contains("input is out of range")
        );
        assert!(
            bad(&format!(r#"{{"day":"2026-11-01",{config},"requests":0}}"#))
                .message
                .contains("at least 1")
        );
        assert!(
            bad(&format!(
                r#"{{"day":"2026-11-01",{config},"requests":2,"users":{{"a":1}}}}"#
            ))
            .message
            .contains("add up to 1")
        );
        assert!(
            bad(&format!(
                r#"{{"day":"2026-11-01",{config},"requests":1,"user":"a"}}"#
            ))
            .message
            .contains("unknown field `user`")
        );
    }

    #[test]
    fn the_generated_log_counts_every_request_once_with_its_user() {
        let shape = LogShape {
            days: 2,
            requests_per_day: 300,
            ..LogShape::default()
        };
        let people = People::default();
        let start = NaiveDate::from_ymd_opt(2026, 1, 1).unwrap();
        let lines = generated(&shape, &people, start);
        assert_eq!(lines, generated(&shape, &people, start), "reproducible");
        for day in 0..2 {
            let date = start + Duration::days(day);
            let of_day: Vec<&Line> = lines.iter().filter(|l| l.day == date).collect();
            let total: u32 = of_day.iter().map(|l| l.requests).sum();
            assert_eq!(total, 300);
            let mut keys: Vec<&str> = of_day.iter().filter_map(|l| l.key.as_deref()).collect();
            let n = keys.len();
            keys.sort_unstable();
            keys.dedup();
            assert_eq!(keys.len(), n, "one line per key and day");
        }
        for line in &lines {
            assert_eq!(line.key, key_of(&line.config), "the key is the config's");
        }
        // Orders other than the default make keys of their own.
        assert!(lines.iter().any(|l| l.config["quality"] == "max"));
        assert!(lines.iter().any(|l| l.config.get("quality").is_none()));
    }
}
