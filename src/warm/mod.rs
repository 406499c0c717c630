//! Cache warming (issue 14): popular avatars generated before anyone asks for them.
//!
//! A warming run takes a list of configurations ([`Candidate`]s, from a JSONL file, the request
//! history or the popularity model), drops those cached already, and generates the rest through
//! the same single flight as live jobs: each key's generation lease (`db::leases`), so a live job
//! that misses on a key warming is generating waits for it and is served a hit, and warming never
//! generates a key a live job is generating. It never touches credits: no user is charged.
//!
//! It gives way to live traffic ([`run`]): at most `warm.max_share` of `openai.max_concurrency`
//! generations at once, none started while jobs wait in the job queue or while live jobs hold
//! enough leases to fill `openai.max_concurrency`. `--budget-usd` stops it before the estimated
//! spend ([`crate::generate::pricing::list_price`] for what is in flight, the real cost for what
//! is done) would pass the budget.
//!
//! With `--batch` ([`batch`]) the same list goes to OpenAI's Batch API instead: half the price,
//! answers within 24 hours, the batch persisted in Postgres so that any process finishes it after
//! a crash; its images are checked, stored and recorded under the same single-flight rules.

pub mod batch;
mod batch_output;
pub mod history;
pub mod predict;
pub mod progress;
pub mod refresh;
pub mod replay;
mod run;

use std::collections::HashSet;

use serde::Serialize;
use serde_json::Value;

pub use progress::Progress;
pub use run::{Warmer, run};

use crate::config::PriceSettings;
use crate::db::DbError;
use crate::generate::pricing;
use crate::job::{AvatarConfig, CacheKey, GeneratorKind, ModelRules, Plan};

/// The user id warming's requests carry (hashed into OpenAI's `safety_identifier`): never a
/// real user's.
pub(crate) const WARM_USER: &str = "memoji-warm";

/// Why a warming command failed; [`WarmError::retryable`] says whether running it again may help.
#[derive(Debug, thiserror::Error)]
pub enum WarmError {
    /// The database failed.
    #[error(transparent)]
    Db(#[from] DbError),
    /// An input (a file, an argument) could not be read.
    #[error("reading {what}: {message}")]
    Input {
        /// What was being read.
        what: String,
        /// Why it could not be read.
        message: String,
    },
    /// The broker failed while checking for waiting live jobs.
    #[error("the broker (to see whether live jobs are waiting): {0}")]
    Broker(#[from] crate::broker::BrokerError),
    /// OpenAI's Batch API failed (`--batch`).
    #[error(transparent)]
    Batch(#[from] crate::generate::batch::BatchError),
    /// The command cannot do what was asked (e.g. no such batch); the message says why.
    #[error("{0}")]
    Refused(String),
}

impl WarmError {
    /// Whether the same command may succeed later (an outage, a rate limit) or not.
    pub fn retryable(&self) -> bool {
        match self {
            WarmError::Db(error) => error.is_connectivity(),
            WarmError::Broker(_) => true,
            WarmError::Batch(error) => error.retryable(),
            WarmError::Input { .. } | WarmError::Refused(_) => false,
        }
    }
}

/// A configuration to warm: normalized, checked against its model's rules, keyed and priced.
#[derive(Debug, Clone)]
pub struct Candidate {
    /// Where it came from: `line 3`, `history`, `predicted`.
    pub origin: String,
    /// The parsed configuration.
    pub config: AvatarConfig,
    /// What it generates with, per its model's rules.
    pub plan: Plan,
    /// Its cache key.
    pub key: CacheKey,
    /// The canonical configuration, as recorded in `prompt_config`.
    pub canonical: Value,
    /// The list-price estimate (`generate::pricing::list_price`); 0 for the placeholder.
    pub estimate_usd: f64,
}

/// A configuration that could not be warmed, with the reason (the `invalid_job` message a job
/// would get).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Refused {
    /// Where it came from, as in [`Candidate::origin`].
    pub origin: String,
    /// Why it was refused.
    pub reason: String,
}

/// How candidates are made: the rules jobs are checked with, and `--model`.
#[derive(Debug, Clone)]
pub struct Shaping<'a> {
    /// The model rules jobs are checked with.
    pub rules: &'a ModelRules,
    /// The list prices estimates are made with.
    pub prices: &'a PriceSettings,
    /// The generator keys are made for (OpenAI or the placeholder).
    pub generator: GeneratorKind,
    /// `--model`: replaces each configuration's `model` (a different key per model).
    pub model: Option<&'a str>,
}

impl Shaping<'_> {
    /// Turns configurations into candidates, each key once (the first origin kept).
    pub fn candidates(
        &self,
        configs: impl IntoIterator<Item = (String, Value)>,
    ) -> (Vec<Candidate>, Vec<Refused>) {
        let mut seen = HashSet::new();
        let (mut wanted, mut refused) = (Vec::new(), Vec::new());
        for (origin, mut value) in configs {
            if let (Some(model), Value::Object(object)) = (self.model, &mut value) {
                object.insert("model".to_owned(), Value::from(model));
            }
            let parsed = AvatarConfig::parse(&value)
                .and_then(|config| config.plan(self.rules).map(|plan| (config, plan)));
            match parsed {
                Ok((config, plan)) => {
                    let key = CacheKey::of(&config, self.generator);
                    if !seen.insert(key.clone()) {
                        continue;
                    }
                    let estimate_usd = match self.generator {
                        GeneratorKind::OpenAi => pricing::list_price(self.prices, &plan),
                        GeneratorKind::Placeholder => 0.0,
                    };
                    wanted.push(Candidate {
                        origin,
                        canonical: CacheKey::canonical_value(&config, self.generator),
                        config,
                        plan,
                        key,
                        estimate_usd,
                    });
                }
                Err(error) => refused.push(Refused {
                    origin,
                    reason: error.to_string(),
                }),
            }
        }
        (wanted, refused)
    }
}

/// Reads a JSONL file of configurations (one job `config` object a line; blank lines and lines
/// starting with `#` skipped), each tagged with its line number.
pub fn read_jsonl(text: &str) -> (Vec<(String, Value)>, Vec<Refused>) {
    let (mut configs, mut refused) = (Vec::new(), Vec::new());
    for (n, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let origin = format!("line {}", n + 1);
        match serde_json::from_str::<Value>(line) {
            Ok(value @ Value::Object(_)) => configs.push((origin, value)),
            Ok(_) => refused.push(Refused {
                origin,
                reason: "not a JSON object".to_owned(),
            }),
            Err(error) => refused.push(Refused {
                origin,
                reason: format!("not JSON: {error}"),
            }),
        }
    }
    (configs, refused)
}

/// What a run is asked to do.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Stop before the spend (estimated for what is in flight) would pass this.
    pub budget_usd: Option<f64>,
    /// Generate at most this many.
    pub max: Option<usize>,
    /// Only list what would be generated, with the estimate.
    pub dry_run: bool,
    /// What made the list (`from`, `history`, `predict`, `refresh`, `schedule:…`), for the
    /// warming history; empty: `from`.
    pub source: String,
}

impl Options {
    /// The source recorded in the warming history.
    pub fn source(&self) -> &str {
        if self.source.is_empty() {
            "from"
        } else {
            &self.source
        }
    }
}

/// How a run generates: at once through the live API, or through the Batch API.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Through the live Images API, one request per image.
    #[default]
    Live,
    /// Through OpenAI's Batch API, at the batch price.
    Batch,
}

impl Mode {
    /// `live` or `batch`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Live => "live",
            Mode::Batch => "batch",
        }
    }
}

/// What happened to one candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "snake_case", tag = "outcome")]
pub enum Done {
    /// Generated, stored and recorded.
    Generated {
        /// What it cost, USD.
        cost_usd: f64,
    },
    /// A live job (or another warming run) was generating it, or recorded it meanwhile.
    Skipped,
    /// Generated, but a live job recorded the key first: the copy is dropped (paid, wasted).
    Dropped {
        /// What it cost, USD (paid for nothing).
        cost_usd: f64,
    },
    /// The generation or the recording failed.
    Failed {
        /// Why, in words.
        message: String,
    },
}

/// A line of the final report for one candidate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Line {
    /// Where the candidate came from.
    pub origin: String,
    /// Its cache key.
    pub key: String,
    /// What happened to it, flattened into the line (`outcome` names the variant).
    #[serde(flatten)]
    pub done: Done,
}

/// The final report of a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Report {
    /// `live`, or `batch` (OpenAI's Batch API: prices and spend at the batch price).
    pub mode: Mode,
    /// Whether this was a `--dry-run` (nothing generated).
    pub dry_run: bool,
    /// Configurations read (valid ones, each key once).
    pub considered: usize,
    /// Candidates whose key was already cached (nothing to do).
    pub already_cached: usize,
    /// Configurations that could not be warmed, with the reason.
    pub refused: Vec<Refused>,
    /// What was to be generated (after `--max`), and its list-price estimate.
    pub planned: usize,
    /// The list-price estimate of `planned`, USD.
    pub estimated_usd: f64,
    /// Images generated and recorded.
    pub generated: usize,
    /// Candidates skipped because a live job or another run had them.
    pub skipped: usize,
    /// Generated, but a live job (or another run) recorded the key first: the copy is dropped,
    /// paid for nothing (`wasted_usd`).
    pub dropped: usize,
    /// Candidates whose generation or recording failed.
    pub failed: usize,
    /// Left out because the budget would have been passed.
    pub over_budget: usize,
    /// Dollars paid: generated and dropped images.
    pub spent_usd: f64,
    /// Of which for dropped copies.
    pub wasted_usd: f64,
    /// Times a generation waited for live jobs first.
    pub yielded: u64,
    /// How long the run took, milliseconds.
    pub duration_ms: u64,
    /// One line per candidate that was attempted.
    pub lines: Vec<Line>,
    /// For `--dry-run`: what would be generated.
    pub would_generate: Vec<Planned>,
    /// With `--batch`: the batch and the lines that failed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch: Option<batch::BatchSummary>,
}

/// A configuration a dry run would generate.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Planned {
    /// Where it came from.
    pub origin: String,
    /// Its cache key.
    pub key: String,
    /// The canonical configuration.
    pub config: Value,
    /// Its list-price estimate, USD.
    pub estimate_usd: f64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jsonl_lines_become_candidates_each_key_once_with_model_overridden_and_refusals_named() {
        let text =
            "{\"hair\":\"Long\"}\n\n# a comment\n{\"hair\":\"long\"}\n[1]\n{\"size\":\"13x13\"}\n";
        let (configs, refused) = read_jsonl(text);
        assert_eq!(configs.len(), 3);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].origin, "line 5");
        let rules = ModelRules::default();
        let prices = crate::config::Settings::defaults().unwrap().prices;
        let shaping = Shaping {
            rules: &rules,
            prices: &prices,
            generator: GeneratorKind::OpenAi,
            model: None,
        };
        let (wanted, refused) = shaping.candidates(configs.clone());
        // "Long" and "long" are one key (hair is lowercased); 13x13 breaks the size rules.
        assert_eq!(wanted.len(), 1);
        assert_eq!(wanted[0].origin, "line 1");
        assert!((wanted[0].estimate_usd - 0.04).abs() < 1e-9);
        assert_eq!(refused.len(), 1);
        assert_eq!(refused[0].origin, "line 6");
        let with_model = Shaping {
            model: Some("gpt-image-2"),
            ..shaping
        };
        let (other, _) = with_model.candidates(configs);
        assert_ne!(other[0].key, wanted[0].key, "--model makes keys of its own");
        assert_eq!(other[0].canonical["model"], "gpt-image-2");
        assert_eq!(other[0].plan.called.name(), "gpt-image-2");
    }
}
