//! A request log made ready to replay: every key priced once (`generate::pricing::list_price`,
//! the per-image price of the model, size and quality that would be called, CONTRACT.md §11)
//! and sized, keys numbered, and the lines grouped into consecutive days (a day without lines is
//! a day without requests: the nightly cleanup and warming still run).

use std::collections::HashMap;

use chrono::{Duration, NaiveDate};
use serde::Serialize;
use serde_json::Value;
use sha2::{Digest, Sha256};

use super::log::{self, BYTES_PER_PIXEL, Line};
use crate::config::PriceSettings;
use crate::generate::pricing;
use crate::job::{AvatarConfig, ModelRules};

/// How configurations are priced and sized: the rules jobs are checked with and the price table.
#[derive(Debug, Clone, Copy)]
pub struct Pricing<'a> {
    /// The model rules (successors, default quality).
    pub(crate) rules: &'a ModelRules,
    /// `[prices]`.
    pub(crate) prices: &'a PriceSettings,
}

impl Pricing<'_> {
    /// The list price of one image of `config`, and the bytes it would take; the `invalid_job`
    /// message a job would get where it cannot be made.
    pub fn price(&self, config: &Value) -> Result<(f64, u64), String> {
        let parsed = AvatarConfig::parse(config).map_err(|e| e.to_string())?;
        let plan = parsed.plan(self.rules).map_err(|e| e.to_string())?;
        let pixels = plan
            .output
            .map_or(plan.request_pixels(), |(w, h)| u64::from(w) * u64::from(h));
        Ok((
            pricing::list_price(self.prices, &plan),
            (pixels as f64 * BYTES_PER_PIXEL).round() as u64,
        ))
    }
}

/// A key the replay knows: from the log, or predicted by the warming.
#[derive(Debug, Clone)]
pub struct Known {
    /// The cache key.
    pub key: String,
    /// Its configuration.
    pub config: Value,
    /// The list price of one image.
    pub(crate) price_usd: f64,
    /// The bytes of one image.
    pub image_bytes: u64,
}

/// The keys by number.
#[derive(Debug, Clone, Default)]
pub struct Catalogue {
    /// Each key, by number.
    pub(crate) keys: Vec<Known>,
    index: HashMap<String, u32>,
}

impl Catalogue {
    /// The key's number, if known.
    pub fn find(&self, key: &str) -> Option<u32> {
        self.index.get(key).copied()
    }

    /// The key's number, adding it (priced) if new; `Err` if the configuration cannot be made.
    pub fn add(
        &mut self,
        key: &str,
        config: &Value,
        image_bytes: Option<u64>,
        pricing: &Pricing<'_>,
    ) -> Result<u32, String> {
        if let Some(id) = self.find(key) {
            if let (Some(bytes), Some(known)) = (image_bytes, self.keys.get_mut(id as usize)) {
                known.image_bytes = bytes;
            }
            return Ok(id);
        }
        let (price_usd, estimate) = pricing.price(config)?;
        let id = u32::try_from(self.keys.len()).map_err(|_| "too many keys".to_owned())?;
        self.keys.push(Known {
            key: key.to_owned(),
            config: config.clone(),
            price_usd,
            image_bytes: image_bytes.unwrap_or(estimate),
        });
        self.index.insert(key.to_owned(), id);
        Ok(id)
    }

    /// The key's entry.
    pub fn get(&self, id: u32) -> &Known {
        &self.keys[id as usize]
    }
}

/// Who asked for a key on a day.
#[derive(Debug, Clone)]
pub(crate) enum Askers {
    /// Named users: each one's stable hash (with the key) and requests.
    Named(Vec<(u64, u32)>),
    /// A count without users (an exported history): each request a different user.
    Anonymous(u32),
}

/// One line, ready.
#[derive(Debug, Clone)]
pub struct Asked {
    /// The key's number.
    pub key: u32,
    /// Who asked.
    pub(crate) askers: Askers,
}

impl Asked {
    /// Requests of the line.
    pub fn requests(&self) -> u64 {
        match &self.askers {
            Askers::Named(users) => users.iter().map(|(_, n)| u64::from(*n)).sum(),
            Askers::Anonymous(n) => u64::from(*n),
        }
    }
}

/// A line the replay leaves out: its configuration cannot be made (a job would fail
/// `invalid_job`, and a cache never sees it).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Refused {
    /// The line's day.
    pub day: NaiveDate,
    /// Its requests.
    pub requests: u32,
    /// Why it cannot be made.
    pub(crate) reason: String,
}

/// A whole log, ready.
#[derive(Debug, Clone)]
pub struct Prepared {
    /// The first day.
    pub(crate) start: NaiveDate,
    /// Each day's lines, from `start`, one day after another.
    pub(crate) days: Vec<Vec<Asked>>,
    /// The keys of the log.
    pub(crate) catalogue: Catalogue,
    /// Lines left out.
    pub(crate) refused: Vec<Refused>,
    /// Whether every line named its users.
    pub(crate) named_users: bool,
}

/// The stable hash a user's variant is picked by: the same user, the same key, the same variant.
pub(crate) fn user_hash(user: &str, key: &str) -> u64 {
    let digest = Sha256::new()
        .chain_update(user.as_bytes())
        .chain_update([0u8])
        .chain_update(key.as_bytes())
        .finalize();
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest[..8]);
    u64::from_be_bytes(first)
}

/// The hash of the `n`th anonymous request for key `id` on day `day`: uniform over variants.
pub(crate) fn anonymous_hash(day: u32, id: u32, n: u32) -> u64 {
    let mut z = (u64::from(day) << 40) ^ (u64::from(id) << 16) ^ u64::from(n);
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

impl Prepared {
    /// Prices, numbers and groups the lines.
    pub fn new(lines: &[Line], pricing: &Pricing<'_>) -> Prepared {
        let start = lines.iter().map(|l| l.day).min().unwrap_or_default();
        let end = lines.iter().map(|l| l.day).max().unwrap_or(start);
        let span = usize::try_from((end - start).num_days()).unwrap_or(0) + 1;
        let mut days: Vec<Vec<Asked>> = vec![Vec::new(); if lines.is_empty() { 0 } else { span }];
        let mut catalogue = Catalogue::default();
        let mut refused = Vec::new();
        let mut named_users = !lines.is_empty();
        for line in lines {
            let key = match line.key.clone().or_else(|| log::key_of(&line.config)) {
                Some(key) => key,
                None => {
                    refused.push(Refused {
                        day: line.day,
                        requests: line.requests,
                        reason: "not a configuration".to_owned(),
                    });
                    continue;
                }
            };
            let id = match catalogue.add(&key, &line.config, line.image_bytes, pricing) {
                Ok(id) => id,
                Err(reason) => {
                    refused.push(Refused {
                        day: line.day,
                        requests: line.requests,
                        reason,
                    });
                    continue;
                }
            };
            let askers = match &line.users {
                Some(users) => Askers::Named(
                    users
                        .iter()
                        .map(|(user, n)| (user_hash(user, &key), *n))
                        .collect(),
                ),
                None => {
                    named_users = false;
                    Askers::Anonymous(line.requests)
                }
            };
            let day = usize::try_from((line.day - start).num_days()).unwrap_or(0);
            days[day].push(Asked { key: id, askers });
        }
        Prepared {
            start,
            days,
            catalogue,
            refused,
            named_users,
        }
    }

    /// The date of day `n`.
    pub fn date(&self, n: usize) -> NaiveDate {
        self.start + Duration::days(n as i64)
    }

    /// Requests replayed (refused lines left out).
    pub fn requests(&self) -> u64 {
        self.days.iter().flatten().map(Asked::requests).sum()
    }
}
