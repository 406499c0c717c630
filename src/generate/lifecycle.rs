//! What OpenAI says of the models the worker may call (`GET {base_url}/models/{id}`, whose
//! `shutdown_date` announces a retirement; CONTRACT.md §11), and the warnings that follow: a
//! shutdown within `openai.shutdown_warning_days`, or a model OpenAI does not know at all.
//!
//! [`Lifecycle`] holds the latest answers for `/readyz`; `maintenance::lifecycle` runs the checks
//! at start and daily, and keeps them in Postgres for `memoji-worker stats`.

use std::sync::RwLock;
use std::time::Duration;

use chrono::{DateTime, NaiveDate, Utc};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

/// What OpenAI said of one model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ModelStatus {
    /// The model's name.
    pub(crate) model: String,
    /// What OpenAI said of it.
    pub(crate) state: ModelState,
    pub(crate) checked_at: DateTime<Utc>,
}

/// Whether OpenAI serves a model, as `GET /models/{id}` answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelState {
    /// OpenAI serves it; `shutdown` is its announced `shutdown_date`, if any.
    Served {
        /// The announced shutdown date; `None` when none is announced.
        shutdown: Option<NaiveDate>,
    },
    /// OpenAI answered 404: it does not know the model (never existed, or gone).
    Unknown,
}

impl ModelStatus {
    /// Days from `today` to the shutdown date, where one is announced.
    pub(crate) fn days_left(&self, today: NaiveDate) -> Option<i64> {
        match self.state {
            ModelState::Served {
                shutdown: Some(date),
            } => Some((date - today).num_days()),
            _ => None,
        }
    }

    /// The warning a person should read about this model, if any.
    pub(crate) fn warning(&self, today: NaiveDate, warning_days: u32) -> Option<String> {
        match &self.state {
            ModelState::Unknown => Some(format!(
                "{}: OpenAI does not serve this model (404); jobs routed to it fail. Set openai.successors",
                self.model
            )),
            ModelState::Served {
                shutdown: Some(date),
            } => {
                let days = (*date - today).num_days();
                (days <= i64::from(warning_days)).then(|| {
                    if days < 0 {
                        format!("{}: OpenAI shut it down on {date}", self.model)
                    } else {
                        format!(
                            "{}: OpenAI shuts it down on {date} (in {days} days); plan a successor in openai.successors",
                            self.model
                        )
                    }
                })
            }
            ModelState::Served { shutdown: None } => None,
        }
    }
}

/// A check that says nothing about the model: OpenAI could not be asked.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// The request failed (connection, timeout, unreadable body).
    #[error("OpenAI could not be reached: {0}")]
    Unreachable(String),
    #[error("OpenAI answered {status} to GET /models/{model}")]
    /// OpenAI answered with a status other than 200 or 404.
    Refused {
        /// The model asked about.
        model: String,
        /// The HTTP status.
        status: u16,
    },
}

#[derive(Deserialize)]
struct ModelObject {
    #[serde(default)]
    shutdown_date: Option<String>,
}

/// Asks OpenAI about models.
pub struct ModelChecker {
    http: reqwest::Client,
    base_url: String,
    api_key: SecretString,
}

impl std::fmt::Debug for ModelChecker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ModelChecker")
            .field("base_url", &self.base_url)
            .finish_non_exhaustive()
    }
}

impl ModelChecker {
    /// A checker asking the API at `base_url` with `api_key`; fails only if the HTTP client
    /// cannot be built.
    pub fn new(base_url: &str, api_key: SecretString) -> Result<ModelChecker, reqwest::Error> {
        Ok(ModelChecker {
            http: super::openai::http_client()?,
            base_url: base_url.trim_end_matches('/').to_owned(),
            api_key,
        })
    }

    /// One model's status.
    pub async fn check(&self, model: &str) -> Result<ModelStatus, CheckError> {
        let response = self
            .http
            .get(format!("{}/models/{model}", self.base_url))
            .bearer_auth(self.api_key.expose_secret())
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| CheckError::Unreachable(e.without_url().to_string()))?;
        let status = response.status();
        let state = match status.as_u16() {
            200..=299 => {
                let object: ModelObject = response
                    .json()
                    .await
                    .map_err(|e| CheckError::Unreachable(e.without_url().to_string()))?;
                let shutdown = object
                    .shutdown_date
                    .as_deref()
                    .and_then(|d| NaiveDate::parse_from_str(d, "%Y-%m-%d").ok());
                ModelState::Served { shutdown }
            }
            404 => ModelState::Unknown,
            code => {
                return Err(CheckError::Refused {
                    model: model.to_owned(),
                    status: code,
                });
            }
        };
        Ok(ModelStatus {
            model: model.to_owned(),
            state,
            checked_at: Utc::now(),
        })
    }
}

/// The latest statuses, shared with the admin API.
#[derive(Debug, Default)]
pub struct Lifecycle {
    statuses: RwLock<Vec<ModelStatus>>,
    warning_days: u32,
}

impl Lifecycle {
    /// No statuses yet; a shutdown date within `warning_days` days is warned about.
    pub fn new(warning_days: u32) -> Lifecycle {
        Lifecycle {
            statuses: RwLock::new(Vec::new()),
            warning_days,
        }
    }

    pub(crate) fn warning_days(&self) -> u32 {
        self.warning_days
    }

    /// Replaces what is known of each model in `statuses`.
    pub(crate) fn update(&self, statuses: &[ModelStatus]) {
        let mut known = match self.statuses.write() {
            Ok(known) => known,
            Err(poisoned) => poisoned.into_inner(),
        };
        for status in statuses {
            match known.iter_mut().find(|s| s.model == status.model) {
                Some(old) => *old = status.clone(),
                None => known.push(status.clone()),
            }
        }
    }

    /// Today's warnings, one line per model that needs attention.
    pub(crate) fn warnings(&self) -> Vec<String> {
        let today = Utc::now().date_naive();
        let known = match self.statuses.read() {
            Ok(known) => known,
            Err(poisoned) => poisoned.into_inner(),
        };
        known
            .iter()
            .filter_map(|s| s.warning(today, self.warning_days))
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(state: ModelState) -> ModelStatus {
        ModelStatus {
            model: "gpt-image-2.6-flare".to_owned(),
            state,
            checked_at: Utc::now(),
        }
    }

    #[test]
    fn warns_within_the_window_and_about_unknown_models() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 1).unwrap();
        let soon = status(ModelState::Served {
            shutdown: NaiveDate::from_ymd_opt(2026, 12, 20),
        });
        assert_eq!(soon.days_left(today), Some(19));
        let text = soon.warning(today, 30).unwrap();
        assert!(
            text.contains("2026-12-20") && text.contains("19 days"),
            "{text}"
        );
        assert_eq!(soon.warning(today, 10), None);
        let fine = status(ModelState::Served { shutdown: None });
        assert_eq!(fine.warning(today, 30), None);
        let gone = status(ModelState::Unknown);
        assert!(gone.warning(today, 30).unwrap().contains("404"));
    }
}
