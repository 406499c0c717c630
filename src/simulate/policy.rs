//! A cache policy to replay, and its one-line spelling (`--policy`):
//!
//! ```text
//! name=NAME,variants=N,max_age=DAYS,warm=TOP:BUDGET,retention=RULE
//! ```
//!
//! Every part is optional; parts are separated by commas, in any order, each at most once:
//!
//! - `name`: the label in the output (default: the spec as written).
//! - `variants`: images per key, 1–20 (default 1: today's worker).
//! - `max_age`: days an image is served before a request regenerates it (default `none`).
//! - `warm`: each night, the popularity model's top `TOP` configurations not cached, generated
//!   within `BUDGET` dollars (`5`, `5usd` or `$5`); `off` by default.
//! - `retention`: `seed` (default) — the worker's cleanup, with `cleanup.*` from the
//!   configuration, or `seed:MAX_AGE_DAYS[:MIN_USES[:ARCHIVE_ABOVE_USES]]` to override them;
//!   `gdsf[:BUDGET]` — GreedyDual-Size-Frequency within a storage budget (`50000` entries, or
//!   bytes with a unit: `800mb`, `2gb`, `1.5gib`, `123456b`; without one, `--storage-budget`);
//!   `none` — never evicts.

use serde::Serialize;

use crate::config::CleanupSettings;

/// The most variants a key may hold (Helicone's limit, issue 15).
pub(crate) const MAX_VARIANTS: u32 = 20;

/// A policy, parsed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Policy {
    /// The label in the output.
    pub(crate) name: String,
    /// Images per key.
    pub(crate) variants: u32,
    /// Days an image is served before a request makes it again.
    pub(crate) max_age_days: Option<u32>,
    /// Nightly warming.
    pub(crate) warm: Option<Warm>,
    /// What leaves the cache.
    pub(crate) retention: Retention,
}

/// Nightly warming: the popularity model's top `top`, within `budget_usd` a night.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Warm {
    /// Predictions considered a night, best first.
    pub(crate) top: usize,
    /// Dollars a night at most (list prices).
    pub(crate) budget_usd: f64,
}

/// What leaves the cache.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "rule")]
pub enum Retention {
    /// Nothing.
    None,
    /// The seed's cleanup rules, run every night (`maintenance::cleanup`).
    Seed(SeedRules),
    /// GreedyDual-Size-Frequency within a budget.
    Gdsf {
        /// The storage it keeps within.
        budget: Budget,
    },
}

/// The cleanup's thresholds (`[cleanup]`): delete entries older than `max_age_days` with fewer
/// than `min_uses` uses that are not archived; archive those used more than `archive_above_uses`
/// times.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct SeedRules {
    /// `cleanup.max_age_days`.
    pub(crate) max_age_days: u32,
    /// `cleanup.min_uses`.
    pub(crate) min_uses: u32,
    /// `cleanup.archive_above_uses`.
    pub(crate) archive_above_uses: u32,
}

impl From<&CleanupSettings> for SeedRules {
    fn from(settings: &CleanupSettings) -> SeedRules {
        SeedRules {
            max_age_days: settings.max_age_days,
            min_uses: settings.min_uses,
            archive_above_uses: settings.archive_above_uses,
        }
    }
}

impl SeedRules {
    /// The archive pass: an entry not archived yet, used more than `archive_above_uses` times.
    pub fn archives(&self, uses: i64, archived: bool) -> bool {
        !archived && uses > i64::from(self.archive_above_uses)
    }

    /// The deletion pass (`db::cleanup`'s `UNUSED`): not archived, created more than
    /// `max_age_days` before the run, fewer than `min_uses` uses and at most
    /// `archive_above_uses`. `whole_days` is how many whole days lie between the day the entry
    /// was created and the run at the end of a day: an entry made on day d is older than A
    /// days at the run after day t (whatever its time of day) exactly when t − d ≥ A.
    pub fn deletes(&self, whole_days: u32, uses: i64, archived: bool) -> bool {
        !archived
            && whole_days >= self.max_age_days
            && uses < i64::from(self.min_uses)
            && uses <= i64::from(self.archive_above_uses)
    }
}

/// A storage budget.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Budget {
    /// Entries (keys, each with its variants).
    Entries(u64),
    /// Bytes of images.
    Bytes(u64),
}

/// A spec that does not parse, with what is wrong.
#[derive(Debug, thiserror::Error, PartialEq)]
#[error("policy `{spec}`: {message}")]
pub struct PolicyError {
    /// The spec as given.
    pub(crate) spec: String,
    /// What is wrong with it.
    pub(crate) message: String,
}

/// What a spec leaves out: the configuration's cleanup rules, and `--storage-budget`.
#[derive(Debug, Clone, Copy)]
pub struct Defaults {
    /// `[cleanup]`'s thresholds.
    pub(crate) seed: SeedRules,
    /// `--storage-budget`.
    pub(crate) storage_budget: Option<Budget>,
}

const SETTINGS: &str = "name, variants, max_age, warm, retention";

impl Policy {
    /// Parses a `--policy` spec.
    pub fn parse(spec: &str, defaults: &Defaults) -> Result<Policy, PolicyError> {
        let fail = |message: String| PolicyError {
            spec: spec.to_owned(),
            message,
        };
        let mut policy = Policy {
            name: spec.to_owned(),
            variants: 1,
            max_age_days: None,
            warm: None,
            retention: Retention::Seed(defaults.seed),
        };
        let mut seen: Vec<&str> = Vec::new();
        for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let Some((setting, value)) = part.split_once('=') else {
                return Err(fail(format!(
                    "`{part}` is not SETTING=VALUE (settings: {SETTINGS})"
                )));
            };
            let (setting, value) = (setting.trim(), value.trim());
            if seen.contains(&setting) {
                return Err(fail(format!("`{setting}` is given twice")));
            }
            seen.push(setting);
            match setting {
                "name" if !value.is_empty() => policy.name = value.to_owned(),
                "name" => return Err(fail("`name` is empty".to_owned())),
                "variants" => {
                    policy.variants = match value.parse::<u32>() {
                        Ok(n @ 1..=MAX_VARIANTS) => n,
                        _ => {
                            return Err(fail(format!(
                                "variants={value}: expected a whole number from 1 to {MAX_VARIANTS}"
                            )));
                        }
                    }
                }
                "max_age" => {
                    policy.max_age_days = match value {
                        "none" => None,
                        days => Some(days.trim_end_matches('d').parse().map_err(|_| {
                            fail(format!(
                                "max_age={value}: expected days (30 or 30d) or `none`"
                            ))
                        })?),
                    }
                }
                "warm" => policy.warm = parse_warm(value).map_err(fail)?,
                "retention" => {
                    policy.retention = parse_retention(value, defaults).map_err(fail)?;
                }
                other => {
                    return Err(fail(format!(
                        "unknown setting `{other}` (settings: {SETTINGS})"
                    )));
                }
            }
        }
        Ok(policy)
    }

    /// The policy in words, for the output.
    pub(crate) fn describe(&self) -> String {
        let variants = match self.variants {
            1 => "1 image a key".to_owned(),
            n => format!("{n} variants a key"),
        };
        let age = self
            .max_age_days
            .map_or("no max age".to_owned(), |d| format!("max age {d} days"));
        let warm = self.warm.map_or("no warming".to_owned(), |w| {
            format!(
                "warming the top {} a night within ${:.2}",
                w.top, w.budget_usd
            )
        });
        let retention = match self.retention {
            Retention::None => "nothing evicted".to_owned(),
            Retention::Seed(r) => format!(
                "seed cleanup nightly (delete after {} days if < {} uses, archive > {} uses)",
                r.max_age_days, r.min_uses, r.archive_above_uses
            ),
            Retention::Gdsf { budget } => format!("GDSF within {}", budget.describe()),
        };
        format!("{variants}, {age}, {warm}, {retention}")
    }
}

fn parse_warm(value: &str) -> Result<Option<Warm>, String> {
    if value == "off" {
        return Ok(None);
    }
    let expected = || format!("warm={value}: expected TOP:BUDGET (`200:5usd`) or `off`");
    let (top, budget) = value.split_once(':').ok_or_else(expected)?;
    let top: usize = top.trim().parse().map_err(|_| expected())?;
    let budget = budget.trim();
    let dollars = budget
        .strip_prefix('$')
        .or_else(|| budget.strip_suffix("usd"))
        .unwrap_or(budget);
    let budget_usd: f64 = dollars.trim().parse().map_err(|_| expected())?;
    if !budget_usd.is_finite() || budget_usd < 0.0 {
        return Err(format!(
            "warm={value}: the budget must be 0 or more dollars"
        ));
    }
    Ok(Some(Warm { top, budget_usd }))
}

fn parse_retention(value: &str, defaults: &Defaults) -> Result<Retention, String> {
    let mut parts = value.split(':').map(str::trim);
    let rule = parts.next().unwrap_or_default();
    let rest: Vec<&str> = parts.collect();
    match rule {
        "none" if rest.is_empty() => Ok(Retention::None),
        "seed" if rest.len() <= 3 => {
            let mut rules = defaults.seed;
            let fields = [
                &mut rules.max_age_days,
                &mut rules.min_uses,
                &mut rules.archive_above_uses,
            ];
            for (field, text) in fields.into_iter().zip(&rest) {
                *field = text.parse().map_err(|_| {
                    format!(
                        "retention={value}: expected seed[:MAX_AGE_DAYS[:MIN_USES[:ARCHIVE_ABOVE_USES]]] \
                         with whole numbers"
                    )
                })?;
            }
            Ok(Retention::Seed(rules))
        }
        "gdsf" if rest.len() <= 1 => {
            let budget = match rest.first() {
                Some(text) => Budget::parse(text).map_err(|e| format!("retention={value}: {e}"))?,
                None => defaults.storage_budget.ok_or_else(|| {
                    format!(
                        "retention={value}: GDSF needs a storage budget (gdsf:50000, gdsf:2gb, \
                         or --storage-budget)"
                    )
                })?,
            };
            Ok(Retention::Gdsf { budget })
        }
        _ => Err(format!(
            "retention={value}: expected `seed[:MAX_AGE_DAYS[:MIN_USES[:ARCHIVE_ABOVE_USES]]]`, \
             `gdsf[:BUDGET]` or `none`"
        )),
    }
}

impl Budget {
    /// `50000` (entries, also `50000entries`) or bytes with a unit: `b`, `kb`, `mb`, `gb`, `tb`
    /// (powers of 1000) or `kib`, `mib`, `gib`, `tib` (powers of 1024).
    pub fn parse(text: &str) -> Result<Budget, String> {
        let lower = text.trim().to_ascii_lowercase();
        let split = lower
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(lower.len());
        let (number, unit) = lower.split_at(split);
        let expected = || {
            format!(
                "`{text}` is not a storage budget: expected entries (50000) or bytes with a unit \
                 (800mb, 2gb, 1.5gib, 123456b)"
            )
        };
        let number: f64 = number.parse().map_err(|_| expected())?;
        let scale = match unit.trim() {
            "" | "entries" => {
                if number.fract() != 0.0 {
                    return Err(expected());
                }
                return Ok(Budget::Entries(number as u64));
            }
            "b" => 1.0,
            "kb" => 1e3,
            "mb" => 1e6,
            "gb" => 1e9,
            "tb" => 1e12,
            "kib" => 1024.0,
            "mib" => 1024.0 * 1024.0,
            "gib" => 1024.0 * 1024.0 * 1024.0,
            "tib" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
            _ => return Err(expected()),
        };
        Ok(Budget::Bytes((number * scale).round() as u64))
    }

    /// `50000 entries`, `2.00 GB`.
    pub(crate) fn describe(self) -> String {
        match self {
            Budget::Entries(n) => format!("{n} entries"),
            Budget::Bytes(n) => format!("{:.2} GB", n as f64 / 1e9),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn defaults() -> Defaults {
        Defaults {
            seed: SeedRules {
                max_age_days: 90,
                min_uses: 2,
                archive_above_uses: 100,
            },
            storage_budget: None,
        }
    }

    #[test]
    fn specs_parse_with_defaults_for_what_they_leave_out() {
        let d = defaults();
        let plain = Policy::parse("", &d).unwrap();
        assert_eq!(plain.variants, 1);
        assert_eq!(plain.max_age_days, None);
        assert_eq!(plain.warm, None);
        assert_eq!(plain.retention, Retention::Seed(d.seed));

        let full = Policy::parse(
            "name=mix, variants=3,max_age=30d,warm=200:5usd,retention=gdsf:50000",
            &d,
        )
        .unwrap();
        assert_eq!(full.name, "mix");
        assert_eq!(full.variants, 3);
        assert_eq!(full.max_age_days, Some(30));
        assert_eq!(
            full.warm,
            Some(Warm {
                top: 200,
                budget_usd: 5.0
            })
        );
        assert_eq!(
            full.retention,
            Retention::Gdsf {
                budget: Budget::Entries(50_000)
            }
        );
        assert_eq!(
            Policy::parse("warm=10:$2.5", &d).unwrap().warm,
            Some(Warm {
                top: 10,
                budget_usd: 2.5
            })
        );
        assert_eq!(
            Policy::parse("retention=seed:30:3", &d).unwrap().retention,
            Retention::Seed(SeedRules {
                max_age_days: 30,
                min_uses: 3,
                archive_above_uses: 100
            })
        );
        let budgeted = Defaults {
            storage_budget: Some(Budget::Bytes(5)),
            ..d
        };
        assert_eq!(
            Policy::parse("retention=gdsf", &budgeted)
                .unwrap()
                .retention,
            Retention::Gdsf {
                budget: Budget::Bytes(5)
            }
        );
    }

    #[test]
    fn budgets_take_entries_or_bytes_with_units() {
        assert_eq!(Budget::parse("50000"), Ok(Budget::Entries(50_000)));
        assert_eq!(Budget::parse("2GB"), Ok(Budget::Bytes(2_000_000_000)));
        assert_eq!(Budget::parse("1.5gib"), Ok(Budget::Bytes(1_610_612_736)));
        assert_eq!(Budget::parse("800mb"), Ok(Budget::Bytes(800_000_000)));
        assert_eq!(Budget::parse("12b"), Ok(Budget::Bytes(12)));
        assert!(Budget::parse("2 parsecs").is_err());
        assert!(Budget::parse("1.5").is_err());
    }

    #[test]
    fn bad_specs_say_what_is_wrong() {
        let d = defaults();
        let error = |spec: &str| Policy::parse(spec, &d).unwrap_err().to_string();
        assert_eq!(
            error("variants=0"),
            "policy `variants=0`: variants=0: expected a whole number from 1 to 20"
        );
        assert!(error("colour=red").contains("unknown setting `colour` (settings: name,"));
        assert!(error("variants=2,variants=3").contains("`variants` is given twice"));
        assert!(error("variants").contains("is not SETTING=VALUE"));
        assert!(error("warm=200").contains("expected TOP:BUDGET"));
        assert!(error("warm=200:-1").contains("0 or more dollars"));
        assert!(error("max_age=soon").contains("expected days"));
        assert!(error("retention=lru").contains("expected `seed"));
        assert!(error("retention=gdsf").contains("needs a storage budget"));
        assert!(error("retention=gdsf:2 parsecs").contains("not a storage budget"));
        assert!(error("retention=seed:x").contains("whole numbers"));
    }
}
