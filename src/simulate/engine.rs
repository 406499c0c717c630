//! The replay of one policy: day by day, each request served from the simulated cache or
//! generated; each night the retention rule and then the warming. Pure and in memory.
//!
//! What a request does (the live worker's rules, issue 15):
//! - no entry for its key: a miss — one generation at the key's list price; the entry is
//!   created (created today, 1 use);
//! - an entry with fewer images than `variants`: a miss — the key's next variant is generated
//!   (the first N requests for a key each generate);
//! - otherwise the user's variant is picked by a stable hash of (user, key); if `max_age` is set
//!   and that image was made more than `max_age` days ago it is regenerated (a miss, charged; the
//!   entry keeps its creation time and counts the use, as `db::cache::record` does), else a hit,
//!   which saves the key's list price. Every request counts a use of the entry.
//!
//! A key's variants are one entry for retention: one creation time, one use count, deleted
//! together (issue 15). Warming makes one image of a key, with no use counted (as
//! `db::warm::record_warmed`), and never charges a user. Days are UTC days and every night runs
//! after the day's last request: the cleanup as `maintenance::cleanup` (archive first, then
//! delete), then the warming (so its images serve the next day).

use std::collections::HashMap;

use serde::Serialize;

use super::gdsf::Gdsf;
use super::policy::{Budget, Policy, Retention, SeedRules};
use super::prepared::{Askers, Catalogue, Prepared, Pricing, anonymous_hash};
use crate::warm::predict::{self, Model, Row};

/// One day of a replay (and, summed, the whole).
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize)]
pub struct Tally {
    /// Requests served.
    pub requests: u64,
    /// Of which hits.
    pub(crate) hits: u64,
    /// Live generations: the misses (every miss generates).
    pub(crate) generations: u64,
    /// Images warming made that night.
    pub(crate) warmed: u64,
    /// Dollars of the live generations, and of that night's warming.
    pub(crate) live_usd: f64,
    /// Dollars of the warming.
    pub(crate) warm_usd: f64,
    /// What the hits would have cost to generate (each its entry's list price).
    pub(crate) saved_usd: f64,
    /// Entries (keys) removed: by the cleanup's deletion, or evicted by GDSF.
    pub(crate) evictions: u64,
    /// Their images' bytes.
    pub(crate) evicted_bytes: u64,
    /// Entries the cleanup archived.
    pub(crate) archived: u64,
    /// What the cache holds at the end of the day (after the night's cleanup and warming):
    /// entries (keys), images (variants count apart) and their bytes.
    pub(crate) entries: u64,
    /// Images held (a key's variants each count).
    pub(crate) images: u64,
    /// Their bytes.
    pub bytes: u64,
}

impl Tally {
    /// Live and warming dollars.
    pub fn spend_usd(&self) -> f64 {
        self.live_usd + self.warm_usd
    }

    /// Hits ÷ requests, 0 without requests.
    pub(crate) fn hit_ratio(&self) -> f64 {
        if self.requests == 0 {
            0.0
        } else {
            self.hits as f64 / self.requests as f64
        }
    }
}

/// The whole replay of a policy.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// Each day.
    pub(crate) days: Vec<Tally>,
    /// Sums of the days; `entries`, `images` and `bytes` are those at the end.
    pub(crate) total: Tally,
    /// The most the cache held at the end of any day.
    pub(crate) peak_entries: u64,
    /// The most bytes it held at the end of any day.
    pub(crate) peak_bytes: u64,
}

#[derive(Debug, Clone)]
struct Entry {
    created: u32,
    uses: i64,
    archived: bool,
    /// The day each variant's image was made.
    made: Vec<u32>,
    /// GDSF's F: requests since the entry came in (a warmed one starts at 1).
    frequency: f64,
}

/// The simulated cache.
struct Cache<'a> {
    policy: &'a Policy,
    entries: HashMap<u32, Entry>,
    images: u64,
    bytes: u64,
    gdsf: Option<(Gdsf, Budget)>,
}

impl Cache<'_> {
    fn over_budget(&self) -> bool {
        match self.gdsf {
            Some((_, Budget::Entries(n))) => self.entries.len() as u64 > n,
            Some((_, Budget::Bytes(n))) => self.bytes > n,
            None => false,
        }
    }

    /// GDSF's view of an entry changed: its priority again (cost and size per image: a key's
    /// variants cost and weigh alike, so their ratio is one image's).
    fn touch(&mut self, id: u32, catalogue: &Catalogue) {
        let (Some((gdsf, budget)), Some(entry)) = (&mut self.gdsf, self.entries.get(&id)) else {
            return;
        };
        let known = catalogue.get(id);
        let size = match budget {
            Budget::Entries(_) => 1.0,
            Budget::Bytes(_) => known.image_bytes as f64,
        };
        gdsf.touch(id, entry.frequency, known.price_usd, size);
    }

    /// Removes an entry and its images.
    fn remove(&mut self, id: u32, catalogue: &Catalogue, tally: &mut Tally) {
        if let Some(entry) = self.entries.remove(&id) {
            let bytes = catalogue.get(id).image_bytes * entry.made.len() as u64;
            self.images = self.images.saturating_sub(entry.made.len() as u64);
            self.bytes = self.bytes.saturating_sub(bytes);
            tally.evictions += 1;
            tally.evicted_bytes += bytes;
        }
    }

    /// GDSF: evicts the lowest priorities until the cache fits its budget.
    fn fit(&mut self, catalogue: &Catalogue, tally: &mut Tally) {
        while self.over_budget() {
            let Some(id) = self.gdsf.as_mut().and_then(|(gdsf, _)| gdsf.evict()) else {
                break;
            };
            self.remove(id, catalogue, tally);
        }
    }

    /// Adds one image to a key's entry (creating it), today.
    fn add_image(&mut self, id: u32, today: u32, uses: i64, catalogue: &Catalogue) {
        let entry = self.entries.entry(id).or_insert(Entry {
            created: today,
            uses: 0,
            archived: false,
            made: Vec::new(),
            frequency: 0.0,
        });
        entry.made.push(today);
        entry.uses += uses;
        entry.frequency += 1.0;
        self.images += 1;
        self.bytes += catalogue.get(id).image_bytes;
    }

    /// One request; `hash` picks the variant.
    fn serve(&mut self, id: u32, hash: u64, today: u32, catalogue: &Catalogue, tally: &mut Tally) {
        let price = catalogue.get(id).price_usd;
        tally.requests += 1;
        let variants = self.policy.variants as usize;
        let max_age = self.policy.max_age_days;
        let stale = |made: u32| max_age.is_some_and(|days| today.saturating_sub(made) > days);
        match self.entries.get_mut(&id) {
            Some(entry) if entry.made.len() >= variants => {
                let pick = (hash % entry.made.len() as u64) as usize;
                entry.uses += 1;
                entry.frequency += 1.0;
                if stale(entry.made[pick]) {
                    entry.made[pick] = today;
                    tally.generations += 1;
                    tally.live_usd += price;
                } else {
                    tally.hits += 1;
                    tally.saved_usd += price;
                }
            }
            _ => {
                self.add_image(id, today, 1, catalogue);
                tally.generations += 1;
                tally.live_usd += price;
            }
        }
        self.touch(id, catalogue);
        self.fit(catalogue, tally);
    }

    /// The seed's cleanup (`maintenance::cleanup`, `db::cleanup`), run the night after `today`:
    /// the archive pass over every entry, then the deletion pass ([`SeedRules`]).
    fn clean(&mut self, rules: SeedRules, today: u32, catalogue: &Catalogue, tally: &mut Tally) {
        for entry in self.entries.values_mut() {
            if rules.archives(entry.uses, entry.archived) {
                entry.archived = true;
                tally.archived += 1;
            }
        }
        let mut doomed: Vec<u32> = self
            .entries
            .iter()
            .filter(|(_, e)| rules.deletes(today.saturating_sub(e.created), e.uses, e.archived))
            .map(|(id, _)| *id)
            .collect();
        doomed.sort_unstable();
        for id in doomed {
            self.remove(id, catalogue, tally);
        }
    }
}

/// The warming's popularity model reads this many days of history, as `warm.days` does.
pub(crate) const WARM_HISTORY_DAYS: u32 = 30;

/// Replays `log` under `policy`.
pub fn run(log: &Prepared, policy: &Policy, pricing: &Pricing<'_>) -> Outcome {
    let mut catalogue = log.catalogue.clone();
    let gdsf = match policy.retention {
        Retention::Gdsf { budget } => Some((Gdsf::default(), budget)),
        _ => None,
    };
    let mut cache = Cache {
        policy,
        entries: HashMap::new(),
        images: 0,
        bytes: 0,
        gdsf,
    };
    let mut history: Vec<Row> = Vec::new();
    let mut days = Vec::with_capacity(log.days.len());
    for (n, asked) in log.days.iter().enumerate() {
        let today = n as u32;
        let mut tally = Tally::default();
        for line in asked {
            match &line.askers {
                Askers::Named(users) => {
                    for (hash, count) in users {
                        for _ in 0..*count {
                            cache.serve(line.key, *hash, today, &catalogue, &mut tally);
                        }
                    }
                }
                Askers::Anonymous(count) => {
                    for i in 0..*count {
                        let hash = anonymous_hash(today, line.key, i);
                        cache.serve(line.key, hash, today, &catalogue, &mut tally);
                    }
                }
            }
        }
        if let Retention::Seed(rules) = policy.retention {
            cache.clean(rules, today, &catalogue, &mut tally);
        }
        if let Some(warm) = policy.warm {
            let date = log.date(n);
            history.retain(|row| (date - row.day).num_days() < i64::from(WARM_HISTORY_DAYS));
            history.extend(asked.iter().map(|line| {
                let known = catalogue.get(line.key);
                Row {
                    day: date,
                    key: known.key.clone(),
                    config: known.config.clone(),
                    requests: line.requests() as f64,
                }
            }));
            let ranked = predict::predict(
                &Model::default(),
                &history,
                date,
                warm.top,
                &|key| {
                    catalogue
                        .find(key)
                        .is_some_and(|id| cache.entries.contains_key(&id))
                },
                &super::log::key_of,
            );
            for prediction in ranked {
                let Some(key) = super::log::key_of(&prediction.config) else {
                    continue;
                };
                let Ok(id) = catalogue.add(&key, &prediction.config, None, pricing) else {
                    continue;
                };
                if cache.entries.contains_key(&id) {
                    continue;
                }
                let price = catalogue.get(id).price_usd;
                // In rank order, stopping before the night's spend would pass the budget (as
                // `warm::run` does).
                if tally.warm_usd + price > warm.budget_usd + 1e-9 {
                    break;
                }
                cache.add_image(id, today, 0, &catalogue);
                tally.warmed += 1;
                tally.warm_usd += price;
                cache.touch(id, &catalogue);
                cache.fit(&catalogue, &mut tally);
            }
        }
        tally.entries = cache.entries.len() as u64;
        tally.images = cache.images;
        tally.bytes = cache.bytes;
        days.push(tally);
    }
    summarize(days)
}

fn summarize(days: Vec<Tally>) -> Outcome {
    let mut total = Tally::default();
    let (mut peak_entries, mut peak_bytes) = (0, 0);
    for day in &days {
        total.requests += day.requests;
        total.hits += day.hits;
        total.generations += day.generations;
        total.warmed += day.warmed;
        total.live_usd += day.live_usd;
        total.warm_usd += day.warm_usd;
        total.saved_usd += day.saved_usd;
        total.evictions += day.evictions;
        total.evicted_bytes += day.evicted_bytes;
        total.archived += day.archived;
        peak_entries = peak_entries.max(day.entries);
        peak_bytes = peak_bytes.max(day.bytes);
    }
    if let Some(last) = days.last() {
        total.entries = last.entries;
        total.images = last.images;
        total.bytes = last.bytes;
    }
    Outcome {
        days,
        total,
        peak_entries,
        peak_bytes,
    }
}
