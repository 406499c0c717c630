//! What `memoji-worker simulate` prints: per policy, a row per day and the totals; then the
//! policies side by side. Markdown tables (`--format table`) or one JSON document.

use std::fmt::Write as _;

use chrono::NaiveDate;
use serde::Serialize;

use super::engine::{Outcome, Tally};
use super::policy::Policy;
use super::prepared::{Prepared, Refused};

/// The log replayed.
#[derive(Debug, Clone, Serialize)]
pub struct LogSummary {
    /// The log's first day.
    pub(crate) first_day: NaiveDate,
    /// Days replayed.
    pub(crate) days: usize,
    /// Requests replayed.
    pub requests: u64,
    /// Distinct keys asked for.
    pub(crate) keys: usize,
    /// `named` (the log says who asked) or `anonymous` (each request a different user).
    pub users: &'static str,
    /// Lines left out: configurations a job could not make.
    pub(crate) refused: Vec<Refused>,
}

impl LogSummary {
    /// The summary of a prepared log.
    pub fn of(log: &Prepared) -> LogSummary {
        LogSummary {
            first_day: log.start,
            days: log.days.len(),
            requests: log.requests(),
            keys: log.catalogue.keys.len(),
            users: if log.named_users {
                "named"
            } else {
                "anonymous"
            },
            refused: log.refused.clone(),
        }
    }
}

/// A day (or the total) with the figures derived from it.
#[derive(Debug, Clone, Serialize)]
pub struct Figures {
    /// The day; `None` for the total.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) date: Option<NaiveDate>,
    /// The counts.
    #[serde(flatten)]
    pub(crate) tally: Tally,
    /// Requests that were not hits (each one a live generation).
    pub(crate) misses: u64,
    /// Hits ÷ requests.
    pub(crate) hit_ratio: f64,
    /// Live and warming dollars.
    pub(crate) spend_usd: f64,
}

impl Figures {
    fn of(date: Option<NaiveDate>, tally: &Tally) -> Figures {
        Figures {
            date,
            tally: *tally,
            misses: tally.requests - tally.hits,
            hit_ratio: tally.hit_ratio(),
            spend_usd: tally.spend_usd(),
        }
    }
}

/// One policy's replay.
#[derive(Debug, Clone, Serialize)]
pub struct PolicyReport {
    /// The policy's label.
    pub(crate) name: String,
    /// The policy in words.
    pub(crate) description: String,
    /// The policy.
    pub(crate) policy: Policy,
    /// The whole log; storage at the end.
    pub(crate) total: Figures,
    /// The most entries held at the end of a day.
    pub(crate) peak_entries: u64,
    /// The most bytes held at the end of a day.
    pub(crate) peak_bytes: u64,
    /// Each day.
    pub(crate) days: Vec<Figures>,
}

/// The whole output.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// What was replayed.
    pub(crate) log: LogSummary,
    /// Each policy, in the order given.
    pub(crate) policies: Vec<PolicyReport>,
}

impl Report {
    /// The report of `outcomes`, one per policy, on `log`.
    pub fn new(log: &Prepared, outcomes: Vec<(Policy, Outcome)>) -> Report {
        let policies = outcomes
            .into_iter()
            .map(|(policy, outcome)| PolicyReport {
                name: policy.name.clone(),
                description: policy.describe(),
                total: Figures::of(None, &outcome.total),
                peak_entries: outcome.peak_entries,
                peak_bytes: outcome.peak_bytes,
                days: outcome
                    .days
                    .iter()
                    .enumerate()
                    .map(|(n, day)| Figures::of(Some(log.date(n)), day))
                    .collect(),
                policy,
            })
            .collect();
        Report {
            log: LogSummary::of(log),
            policies,
        }
    }

    /// Markdown: each policy's days (unless `totals_only`), then the comparison.
    pub fn table(&self, totals_only: bool) -> String {
        let mut out = String::new();
        let log = &self.log;
        let _ = writeln!(
            out,
            "Log: {} days from {}, {} requests, {} keys, users {}{}.\n",
            log.days,
            log.first_day,
            log.requests,
            log.keys,
            log.users,
            if log.refused.is_empty() {
                String::new()
            } else {
                format!(
                    "; {} lines left out (configurations a job could not make: {})",
                    log.refused.len(),
                    log.refused[0].reason
                )
            }
        );
        if !totals_only {
            for policy in &self.policies {
                let _ = writeln!(out, "## {}\n\n{}.\n", policy.name, policy.description);
                let _ = writeln!(
                    out,
                    "| day | requests | hits | hit ratio | generations | warmed | spend $ | saved $ | entries | storage MB | evictions |"
                );
                let _ = writeln!(
                    out,
                    "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
                );
                for day in &policy.days {
                    row(
                        &mut out,
                        &day.date.map_or(String::new(), |d| d.to_string()),
                        day,
                    );
                }
                row(&mut out, "**total**", &policy.total);
                out.push('\n');
            }
            let _ = writeln!(out, "## Compared\n");
        }
        let _ = writeln!(
            out,
            "| policy | hit ratio | generations | warmed | spend $ | saved $ | peak storage | entries at the end | evictions |"
        );
        let _ = writeln!(
            out,
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"
        );
        for policy in &self.policies {
            let t = &policy.total;
            let _ = writeln!(
                out,
                "| {} | {:.1}% | {} | {} | {:.2} | {:.2} | {} entries, {:.0} MB | {} | {} |",
                policy.name,
                100.0 * t.hit_ratio,
                t.tally.generations,
                t.tally.warmed,
                t.spend_usd,
                t.tally.saved_usd,
                policy.peak_entries,
                policy.peak_bytes as f64 / 1e6,
                t.tally.entries,
                t.tally.evictions,
            );
        }
        out
    }
}

fn row(out: &mut String, label: &str, day: &Figures) {
    let t = &day.tally;
    let _ = writeln!(
        out,
        "| {label} | {} | {} | {:.1}% | {} | {} | {:.2} | {:.2} | {} | {:.0} | {} |",
        t.requests,
        t.hits,
        100.0 * day.hit_ratio,
        t.generations,
        t.warmed,
        day.spend_usd,
        t.saved_usd,
        t.entries,
        t.bytes as f64 / 1e6,
        t.evictions,
    );
}
