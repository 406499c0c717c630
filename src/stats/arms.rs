//! A/B tests of cache strategies, as reported (`GET /api/experiments/…`, the dashboard's
//! Experiments section, `memoji-worker experiments show`): each arm's figures from the per-arm
//! rollups (`db::experiments`), and each arm against the control with 95 % confidence intervals
//! and a verdict ([`super::experiment`]).
//!
//! The control is the experiment's `control` arm where configured, else the first arm by name.
//! Jobs are counted in an arm when they reached the cache (an `invalid_job` answer names its
//! arm but is not counted); a replayed result is not counted again.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

use chrono::{DateTime, Duration, DurationRound, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::analytics::percentile;
use super::experiment::{self, Interval, MIN_JOBS_PER_ARM, Moments, Verdict};
use crate::config::ExperimentSettings;
use crate::db::DbError;
use crate::db::analytics::bucket_of;
use crate::db::experiments::{self as store, ArmCounts, ArmRow};
use crate::job::{JobResult, Status};

/// What one answered job adds to its arm's hour.
pub(crate) fn counts_of(result: &JobResult) -> ArmCounts {
    let hit = result.status == Status::Succeeded && result.cached;
    let mut counts = ArmCounts {
        jobs: 1,
        hits: i64::from(hit),
        misses: i64::from(!hit),
        generations: i64::from(result.status == Status::Succeeded && !result.cached),
        failures: i64::from(result.status == Status::Failed),
        spend_usd: result.cost_usd,
        saved_usd: result.saved_usd,
        spend_sq_usd: result.cost_usd * result.cost_usd,
        ..ArmCounts::default()
    };
    counts.durations[bucket_of(result.duration_ms as f64)] += 1;
    counts
}

/// One arm's figures over the report's span.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ArmFigures {
    /// The arm's name.
    pub arm: String,
    /// The configured share of users (percent); `None` for an arm no longer configured.
    pub share_pct: Option<f64>,
    /// Jobs that reached the cache.
    pub jobs: i64,
    /// Cached successes.
    pub hits: i64,
    /// Every other job.
    pub misses: i64,
    /// hits ÷ jobs × 100; 0 without jobs.
    pub hit_ratio_pct: f64,
    /// Successes generated now.
    pub generations: i64,
    /// Failed jobs.
    pub failures: i64,
    /// What the arm's generations cost.
    pub spend_usd: f64,
    /// What its hits saved.
    pub saved_usd: f64,
    /// spend ÷ jobs; `None` without jobs.
    pub cost_per_job_usd: Option<f64>,
    /// Job duration percentiles, from the histogram.
    pub p50_ms: Option<f64>,
    /// See `p50_ms`.
    pub p95_ms: Option<f64>,
}

/// A difference (arm − control) with its 95 % confidence interval and what it supports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Difference {
    /// Arm − control.
    pub difference: f64,
    /// The 95 % confidence interval's lower end.
    pub ci95_low: f64,
    /// Its upper end.
    pub ci95_high: f64,
    /// What the interval supports.
    pub verdict: Verdict,
}

/// One arm against the control.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// The arm compared.
    pub arm: String,
    /// The control it is compared with.
    pub against: String,
    /// In percentage points (Newcombe's hybrid score interval); `None` while an arm has no jobs.
    pub hit_ratio_pts: Option<Difference>,
    /// In USD per job (Welch's interval); `None` while an arm has fewer than two jobs.
    pub cost_per_job_usd: Option<Difference>,
    /// `<arm> better`, `<arm> worse`, `mixed: …` (the two figures disagree) or
    /// `too small to tell`.
    pub verdict: String,
    /// Why, in words.
    pub note: String,
}

/// `GET /api/experiments/{name}`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The experiment's name.
    pub experiment: String,
    /// Named in the configuration now (an experiment removed from it is still reported from
    /// its rollups).
    pub configured: bool,
    /// Assigning users now.
    pub enabled: bool,
    /// The arm the others are compared with.
    pub control: Option<String>,
    /// The span asked for (`since`), or `None`: everything since the experiment's first job.
    pub since: Option<String>,
    /// The span's first hour (`None`: the beginning).
    pub from: Option<String>,
    /// The end of the span: the end of the current hour.
    pub to: String,
    /// The first and last hours (UTC) with jobs in the span.
    pub first_hour: Option<String>,
    /// See `first_hour`.
    pub last_hour: Option<String>,
    /// Fewer jobs in an arm and every verdict is "too small to tell".
    pub min_jobs_per_arm: i64,
    /// Every arm, by name.
    pub arms: Vec<ArmFigures>,
    /// Every arm but the control, against the control.
    pub comparisons: Vec<Comparison>,
}

/// `GET /api/experiments`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Listing {
    /// As in [`Report`].
    pub since: Option<String>,
    /// As in [`Report`].
    pub from: Option<String>,
    /// As in [`Report`].
    pub to: String,
    /// Every experiment configured or with jobs in the span, by name.
    pub experiments: Vec<Report>,
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

fn at(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// What a report covers: `[from, to)` (`from` `None`: since the beginning) and whether it reads
/// the daily rows. Up to [`HOURLY_UP_TO`](super::analytics::HOURLY_UP_TO) hours: the last `span`
/// in whole hours, the current one included; longer spans, and everything, in whole UTC days,
/// today's included (one row per arm and day, so a year's report stays fast).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    /// The first hour or day covered; `None`: since the beginning.
    pub from: Option<DateTime<Utc>>,
    /// The end: the end of the current hour or UTC day.
    pub to: DateTime<Utc>,
    /// Read from the daily rows.
    pub daily: bool,
}

impl Span {
    /// The span of the last `span` (or everything) up to `now`.
    pub fn of(span: Option<Duration>, now: DateTime<Utc>) -> Span {
        let daily = span.is_none_or(|s| s > Duration::hours(super::analytics::HOURLY_UP_TO));
        let step = if daily {
            Duration::days(1)
        } else {
            Duration::hours(1)
        };
        let to = now.duration_trunc(step).unwrap_or(now) + step;
        let from = span.map(|span| {
            let steps = (span.num_seconds() + step.num_seconds() - 1) / step.num_seconds();
            to - step * steps.max(1) as i32
        });
        Span { from, to, daily }
    }

    async fn rows(&self, pool: &PgPool, experiment: Option<&str>) -> Result<Vec<ArmRow>, DbError> {
        let from = self.from.unwrap_or(DateTime::UNIX_EPOCH);
        store::arms(pool, experiment, self.daily, from, self.to).await
    }
}

fn figures(arm: &str, share_pct: Option<f64>, c: &ArmCounts) -> ArmFigures {
    let jobs = c.jobs;
    ArmFigures {
        arm: arm.to_owned(),
        share_pct,
        jobs,
        hits: c.hits,
        misses: c.misses,
        hit_ratio_pct: if jobs > 0 {
            round(100.0 * c.hits as f64 / jobs as f64, 2)
        } else {
            0.0
        },
        generations: c.generations,
        failures: c.failures,
        spend_usd: round(c.spend_usd, 6),
        saved_usd: round(c.saved_usd, 6),
        cost_per_job_usd: (jobs > 0).then(|| round(c.spend_usd / jobs as f64, 6)),
        p50_ms: percentile(&c.durations, 0.5),
        p95_ms: percentile(&c.durations, 0.95),
    }
}

fn difference(interval: Interval, verdict: Verdict, digits: i32) -> Difference {
    Difference {
        difference: round(interval.estimate, digits),
        ci95_low: round(interval.low, digits),
        ci95_high: round(interval.high, digits),
        verdict,
    }
}

/// One arm against the control, from their counts.
pub fn compare(arm: &str, b: &ArmCounts, control: &str, a: &ArmCounts) -> Comparison {
    let enough = a.jobs >= MIN_JOBS_PER_ARM && b.jobs >= MIN_JOBS_PER_ARM;
    let hit = experiment::newcombe(b.hits, b.jobs, a.hits, a.jobs).map(|i| i.scaled(100.0));
    let moments = |c: &ArmCounts| Moments {
        n: c.jobs,
        sum: c.spend_usd,
        sum_sq: c.spend_sq_usd,
    };
    let cost = experiment::welch(moments(b), moments(a));
    let hit_verdict = experiment::verdict(hit.as_ref(), enough, true);
    let cost_verdict = experiment::verdict(cost.as_ref(), enough, false);
    let (verdict, note) = if !enough {
        (
            Verdict::TooSmall.as_str().to_owned(),
            format!(
                "fewer than {MIN_JOBS_PER_ARM} jobs in an arm ({control}: {}, {arm}: {})",
                a.jobs, b.jobs
            ),
        )
    } else {
        match (hit_verdict, cost_verdict) {
            (Verdict::TooSmall, Verdict::TooSmall) => (
                Verdict::TooSmall.as_str().to_owned(),
                "both 95 % intervals contain 0: no difference shown yet".to_owned(),
            ),
            (one, Verdict::TooSmall) | (Verdict::TooSmall, one) => (
                format!("{arm} {}", one.as_str()),
                format!(
                    "hit ratio {}, cost per job {}",
                    hit_verdict.as_str(),
                    cost_verdict.as_str()
                ),
            ),
            (h, c) if h == c => (
                format!("{arm} {}", h.as_str()),
                "hit ratio and cost per job agree".to_owned(),
            ),
            (h, c) => (
                format!(
                    "mixed: {arm} {} in hit ratio, {} in cost per job",
                    h.as_str(),
                    c.as_str()
                ),
                "the two figures disagree; cost per job is what the cache saves".to_owned(),
            ),
        }
    };
    Comparison {
        arm: arm.to_owned(),
        against: control.to_owned(),
        hit_ratio_pts: hit.map(|i| difference(i, hit_verdict, 2)),
        cost_per_job_usd: cost.map(|i| difference(i, cost_verdict, 6)),
        verdict,
        note,
    }
}

/// The report of `name` from its rows (its arms' sums over the span) and its settings, if it
/// is configured.
pub fn build(
    name: &str,
    settings: Option<&ExperimentSettings>,
    rows: &[ArmRow],
    since: Option<&str>,
    span: Span,
) -> Report {
    let mut counts: BTreeMap<String, ArmCounts> = BTreeMap::new();
    if let Some(settings) = settings {
        for arm in settings.arms.keys() {
            counts.entry(arm.clone()).or_default();
        }
    }
    for row in rows.iter().filter(|r| r.experiment == name) {
        counts.entry(row.arm.clone()).or_default().add(&row.counts);
    }
    let configured_control = settings
        .and_then(|s| s.control.as_ref())
        .filter(|c| counts.contains_key(*c));
    let control = configured_control.or_else(|| counts.keys().next()).cloned();
    let share = |arm: &str| settings.and_then(|s| s.arms.get(arm)).map(|a| a.share);
    let arms = counts
        .iter()
        .map(|(arm, c)| figures(arm, share(arm), c))
        .collect();
    let comparisons = match control.as_ref().and_then(|c| counts.get(c).map(|a| (c, a))) {
        Some((control, a)) => counts
            .iter()
            .filter(|(arm, _)| *arm != control)
            .map(|(arm, b)| compare(arm, b, control, a))
            .collect(),
        None => Vec::new(),
    };
    let mine = || rows.iter().filter(|r| r.experiment == name);
    Report {
        experiment: name.to_owned(),
        configured: settings.is_some(),
        enabled: settings.is_some_and(|s| s.enabled),
        control,
        since: since.map(str::to_owned),
        from: span.from.map(at),
        to: at(span.to),
        first_hour: mine().map(|r| r.first_hour).min().map(at),
        last_hour: mine().map(|r| r.last_hour).max().map(at),
        min_jobs_per_arm: MIN_JOBS_PER_ARM,
        arms,
        comparisons,
    }
}

/// The report of `name` over the last `span` (`None`: since its first job); `None` when it is
/// neither configured nor has any jobs in the span.
pub async fn report(
    pool: &PgPool,
    experiments: &BTreeMap<String, ExperimentSettings>,
    name: &str,
    since: Option<(&str, Duration)>,
    now: DateTime<Utc>,
) -> Result<Option<Report>, DbError> {
    let range = Span::of(since.map(|(_, span)| span), now);
    let rows = range.rows(pool, Some(name)).await?;
    let settings = experiments.get(name);
    if settings.is_none() && rows.is_empty() {
        return Ok(None);
    }
    Ok(Some(build(
        name,
        settings,
        &rows,
        since.map(|(text, _)| text),
        range,
    )))
}

/// Every experiment configured or with jobs in the span, by name.
pub async fn list(
    pool: &PgPool,
    experiments: &BTreeMap<String, ExperimentSettings>,
    since: Option<(&str, Duration)>,
    now: DateTime<Utc>,
) -> Result<Listing, DbError> {
    let range = Span::of(since.map(|(_, span)| span), now);
    let rows = range.rows(pool, None).await?;
    let names: BTreeSet<&str> = experiments
        .keys()
        .map(String::as_str)
        .chain(rows.iter().map(|r| r.experiment.as_str()))
        .collect();
    let since_text = since.map(|(text, _)| text);
    Ok(Listing {
        since: since_text.map(str::to_owned),
        from: range.from.map(at),
        to: at(range.to),
        experiments: names
            .into_iter()
            .map(|name| build(name, experiments.get(name), &rows, since_text, range))
            .collect(),
    })
}

fn usd(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("${v:.4}"))
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.0}"))
}

/// The report as text for a terminal (`memoji-worker experiments show`).
pub fn text(report: &Report) -> String {
    let mut out = String::new();
    let state = match (report.configured, report.enabled) {
        (true, true) => "enabled",
        (true, false) => "disabled",
        (false, _) => "no longer configured",
    };
    let span = match (&report.since, &report.from) {
        (Some(since), Some(from)) => format!("last {since} ({from} to {})", report.to),
        _ => format!("since its first job, up to {}", report.to),
    };
    let _ = writeln!(out, "experiment {} ({state}), {span}", report.experiment);
    let _ = writeln!(
        out,
        "control: {}",
        report.control.as_deref().unwrap_or("(no arms)")
    );
    let _ = writeln!(
        out,
        "{:<16} {:>6} {:>8} {:>8} {:>8} {:>10} {:>10} {:>10} {:>8} {:>8}",
        "arm", "share", "jobs", "hit %", "misses", "spend", "saved", "cost/job", "p50 ms", "p95 ms"
    );
    for a in &report.arms {
        let share = a
            .share_pct
            .map_or_else(|| "–".to_owned(), |s| format!("{s}%"));
        let _ = writeln!(
            out,
            "{:<16} {:>6} {:>8} {:>8.2} {:>8} {:>10} {:>10} {:>10} {:>8} {:>8}",
            a.arm,
            share,
            a.jobs,
            a.hit_ratio_pct,
            a.misses,
            usd(Some(a.spend_usd)),
            usd(Some(a.saved_usd)),
            usd(a.cost_per_job_usd),
            ms(a.p50_ms),
            ms(a.p95_ms)
        );
    }
    for c in &report.comparisons {
        let _ = writeln!(out, "\n{} against {}: {}", c.arm, c.against, c.verdict);
        if let Some(h) = &c.hit_ratio_pts {
            let _ = writeln!(
                out,
                "  hit ratio    {:+.2} pts (95% CI {:+.2} to {:+.2}): {}",
                h.difference,
                h.ci95_low,
                h.ci95_high,
                h.verdict.as_str()
            );
        }
        if let Some(d) = &c.cost_per_job_usd {
            let _ = writeln!(
                out,
                "  cost per job {:+.6} USD (95% CI {:+.6} to {:+.6}): {}",
                d.difference,
                d.ci95_low,
                d.ci95_high,
                d.verdict.as_str()
            );
        }
        let _ = writeln!(out, "  ({})", c.note);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ArmSettings;

    fn counts(jobs: i64, hits: i64, cost: f64) -> ArmCounts {
        let misses = jobs - hits;
        ArmCounts {
            jobs,
            hits,
            misses,
            generations: misses,
            spend_usd: misses as f64 * cost,
            spend_sq_usd: misses as f64 * cost * cost,
            ..ArmCounts::default()
        }
    }

    fn row(arm: &str, c: ArmCounts) -> ArmRow {
        ArmRow {
            experiment: "variety".to_owned(),
            arm: arm.to_owned(),
            counts: c,
            first_hour: DateTime::UNIX_EPOCH,
            last_hour: DateTime::UNIX_EPOCH,
        }
    }

    fn settings(control: Option<&str>) -> ExperimentSettings {
        let arm = |share| ArmSettings {
            share,
            variants: None,
            max_age_days: None,
            warming: None,
        };
        ExperimentSettings {
            enabled: true,
            control: control.map(str::to_owned),
            arms: BTreeMap::from([
                ("a-control".to_owned(), arm(50.0)),
                ("b-three".to_owned(), arm(40.0)),
                ("c-idle".to_owned(), arm(10.0)),
            ]),
        }
    }

    #[test]
    fn arms_are_compared_with_the_control() {
        let rows = [
            row("a-control", counts(1000, 600, 0.04)),
            row("b-three", counts(1000, 700, 0.04)),
        ];
        let report = build(
            "variety",
            Some(&settings(None)),
            &rows,
            None,
            Span::of(None, DateTime::UNIX_EPOCH),
        );
        assert_eq!(
            report.control.as_deref(),
            Some("a-control"),
            "first by name"
        );
        let names: Vec<&str> = report.arms.iter().map(|a| a.arm.as_str()).collect();
        assert_eq!(
            names,
            ["a-control", "b-three", "c-idle"],
            "configured arms without jobs too"
        );
        assert_eq!(report.arms[0].hit_ratio_pct, 60.0);
        assert_eq!(report.arms[0].cost_per_job_usd, Some(0.016));
        assert_eq!(report.arms[2].cost_per_job_usd, None);
        let three = &report.comparisons[0];
        assert_eq!(three.arm, "b-three");
        let hit = three.hit_ratio_pts.as_ref().unwrap();
        assert_eq!(hit.difference, 10.0);
        assert_eq!((hit.ci95_low, hit.ci95_high), (5.82, 14.13));
        assert_eq!(hit.verdict, Verdict::Better);
        let cost = three.cost_per_job_usd.as_ref().unwrap();
        assert_eq!(cost.difference, -0.004);
        assert_eq!(cost.verdict, Verdict::Better);
        assert_eq!(three.verdict, "b-three better", "{three:?}");
        let idle = &report.comparisons[1];
        assert_eq!(idle.verdict, "too small to tell");
        assert!(idle.note.contains("fewer than 100 jobs"), "{}", idle.note);
        assert!(idle.hit_ratio_pts.is_none(), "no jobs, no interval");
        let shown = text(&report);
        assert!(
            shown.contains("b-three against a-control: b-three better"),
            "{shown}"
        );
        assert!(
            shown.contains("+10.00 pts (95% CI +5.82 to +14.13)"),
            "{shown}"
        );
    }

    #[test]
    fn a_configured_control_wins_and_small_samples_say_so() {
        let rows = [
            row("a-control", counts(50, 30, 0.04)),
            row("b-three", counts(50, 45, 0.04)),
        ];
        let report = build(
            "variety",
            Some(&settings(Some("b-three"))),
            &rows,
            Some("7d"),
            Span::of(Some(Duration::days(7)), DateTime::UNIX_EPOCH),
        );
        assert_eq!(report.control.as_deref(), Some("b-three"));
        let vs = &report.comparisons[0];
        assert_eq!(
            (vs.arm.as_str(), vs.against.as_str()),
            ("a-control", "b-three")
        );
        assert_eq!(vs.verdict, "too small to tell");
        // The interval is still shown, and the verdict on it is withheld.
        let hit = vs.hit_ratio_pts.as_ref().unwrap();
        assert!(hit.ci95_high < 0.0, "{hit:?}");
        assert_eq!(hit.verdict, Verdict::TooSmall);
        // An experiment only the rollups know of.
        let gone = build(
            "variety",
            None,
            &rows,
            None,
            Span::of(None, DateTime::UNIX_EPOCH),
        );
        assert!(!gone.configured && !gone.enabled);
        assert_eq!(gone.arms[0].share_pct, None);
        assert_eq!(gone.control.as_deref(), Some("a-control"));
    }

    #[test]
    fn spans_are_hours_up_to_three_days_then_whole_days() {
        let now = DateTime::parse_from_rfc3339("2026-11-24T14:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let hours = Span::of(Some(Duration::hours(24)), now);
        assert!(!hours.daily);
        assert_eq!(at(hours.to), "2026-11-24T15:00:00Z");
        assert_eq!(hours.from.map(at).as_deref(), Some("2026-11-23T15:00:00Z"));
        let days = Span::of(Some(Duration::days(7)), now);
        assert!(days.daily);
        assert_eq!(days.from.map(at).as_deref(), Some("2026-11-18T00:00:00Z"));
        let all = Span::of(None, now);
        assert!(all.daily && all.from.is_none());
        assert_eq!(at(all.to), "2026-11-25T00:00:00Z");
    }

    #[test]
    fn one_job_counts_where_it_belongs() {
        let mut result = JobResult::failure(
            crate::job::JobId(uuid::Uuid::nil()),
            "u1",
            None,
            crate::job::JobError::new(crate::job::ErrorCode::OutOfCredits, "no", false),
        );
        let failed = counts_of(&result);
        assert_eq!((failed.jobs, failed.misses, failed.failures), (1, 1, 1));
        result.status = Status::Succeeded;
        result.error = None;
        result.cost_usd = 0.04;
        result.duration_ms = 2000;
        let made = counts_of(&result);
        assert_eq!((made.generations, made.hits, made.failures), (1, 0, 0));
        assert!((made.spend_sq_usd - 0.0016).abs() < 1e-12);
        assert_eq!(made.durations.iter().sum::<i64>(), 1);
        result.cached = true;
        result.cost_usd = 0.0;
        assert_eq!(counts_of(&result).hits, 1);
    }
}
