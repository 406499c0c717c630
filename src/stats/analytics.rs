//! Analytics (issue 16): what each settled job adds to the rollups, and the figures read back
//! from them — time series, totals with their trend, breakdowns by attribute, top lists — as the
//! API (`GET /api/analytics/…`), the dashboard and `memoji-worker report` show them.
//!
//! [`add_job`] runs on the job path under the tally's mutex: a few map updates, no I/O. The batch
//! reaches Postgres with the statistics' flush ([`crate::db::analytics::record`]).

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, DurationRound, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use crate::db::DbError;
use crate::db::analytics::{
    self as store, BUCKETS, Batch, ConfigCounts, ConfigRow, HourCounts, TopBy, UserCounts,
    ValueCounts, bucket_bound_ms, bucket_of,
};
use crate::job::{AvatarConfig, ErrorCode, JobResult, Status};

/// The attributes jobs are broken down by, in the order the dashboard shows them.
pub(crate) const DIMENSIONS: [&str; 9] = [
    "model",
    "size",
    "quality",
    "gesture",
    "family_type",
    "hair",
    "skin_tone",
    "color_theme",
    "accessory",
];

/// Most configurations and users one batch keeps while the database cannot be written; beyond,
/// new ones are left out of the top lists (the time series and breakdowns still count them).
const MAX_KEYS_PER_BATCH: usize = 100_000;

/// Adds one answered job to `batch`. `config` is the job's configuration where it could be read
/// (not for an invalid job); `lag` the time it waited in the queue, where its publisher said when
/// it was sent.
pub(crate) fn add_job(
    batch: &mut Batch,
    result: &JobResult,
    config: Option<&AvatarConfig>,
    lag: Option<std::time::Duration>,
) {
    let at = result.completed_at;
    let hour = at.duration_trunc(Duration::hours(1)).unwrap_or(at);
    let code = result.error_code();
    let invalid = code == Some(ErrorCode::InvalidJob);
    // An `only_if_cached` job that found nothing (a preview): neither a miss nor a failure, and
    // nothing generated; it shows in the failures by code under `not_cached` only.
    let preview = code == Some(ErrorCode::NotCached);
    let hit = result.status == Status::Succeeded && result.cached;
    let generated = result.status == Status::Succeeded && !result.cached;
    let h = batch.hours.entry(hour).or_default();
    h.jobs += 1;
    h.hits += i64::from(hit);
    h.misses += i64::from(!hit && !invalid && !preview);
    h.generations += i64::from(generated);
    h.failures += i64::from(code.is_some() && !invalid && !preview);
    h.invalid += i64::from(invalid);
    h.spend_usd += result.cost_usd;
    h.saved_usd += result.saved_usd;
    h.durations[bucket_of(result.duration_ms as f64)] += 1;
    if let Some(lag) = lag {
        h.lags[bucket_of(lag.as_secs_f64() * 1000.0)] += 1;
    }
    if let Some(code) = code {
        *batch.failures.entry((hour, code.as_str())).or_default() += 1;
    }
    if invalid || preview {
        return;
    }
    if let (Some(experiment), Some(arm)) = (&result.experiment, &result.arm) {
        batch
            .arms
            .entry((hour, experiment.clone(), arm.clone()))
            .or_default()
            .add(&super::arms::counts_of(result));
    }
    if let Some(config) = config {
        let counts = ValueCounts {
            jobs: 1,
            hits: i64::from(hit),
            misses: i64::from(!hit),
            spend_usd: result.cost_usd,
            saved_usd: result.saved_usd,
        };
        let day = at.date_naive();
        let model = result.model.as_deref().unwrap_or(&config.model);
        let quality = config.quality.as_deref().unwrap_or("default");
        let mut add = |dimension: &'static str, value: &str| {
            batch
                .values
                .entry((day, dimension, value.to_owned()))
                .or_default()
                .add(&counts);
        };
        add("model", model);
        add("size", &config.size);
        add("quality", quality);
        add("gesture", &config.gesture);
        add("family_type", &config.family_type);
        add("hair", &config.hair);
        add("skin_tone", &config.skin_tone);
        add("color_theme", &config.color_theme);
        if config.accessories.is_empty() {
            add("accessory", "none");
        }
        for accessory in &config.accessories {
            add("accessory", accessory);
        }
    }
    if let (Status::Succeeded, Some(hash)) = (result.status, &result.prompt_hash)
        && (batch.configs.len() < MAX_KEYS_PER_BATCH || batch.configs.contains_key(hash))
    {
        batch
            .configs
            .entry(hash.clone())
            .or_default()
            .add(&ConfigCounts {
                uses: 1,
                hits: i64::from(hit),
                generations: i64::from(generated),
                spend_usd: result.cost_usd,
                saved_usd: result.saved_usd,
                label: config.map(label).unwrap_or_default(),
                model: result.model.clone(),
                storage_path: result.storage_path.clone(),
                image_url: result.image_url.clone(),
                last_used_at: Some(at),
            });
    }
    if batch.users.len() < MAX_KEYS_PER_BATCH || batch.users.contains_key(&result.user_id) {
        batch
            .users
            .entry(result.user_id.clone())
            .or_default()
            .add(&UserCounts {
                jobs: 1,
                generations: i64::from(generated),
                spend_usd: result.cost_usd,
                saved_usd: result.saved_usd,
                last_seen_at: Some(at),
            });
    }
}

/// A configuration in words, for the top lists: `father · wave · short hair · medium skin ·
/// pastel-blue · glasses, hat`.
pub fn label(config: &AvatarConfig) -> String {
    let mut parts = vec![
        config.family_type.clone(),
        config.gesture.clone(),
        format!("{} hair", config.hair),
        format!("{} skin", config.skin_tone),
        config.color_theme.clone(),
    ];
    if !config.accessories.is_empty() {
        parts.push(config.accessories.join(", "));
    }
    if config.prompt.is_some() {
        parts.push("+ prompt".to_owned());
    }
    parts.join(" · ")
}

/// The `p`-quantile (0–1) of a histogram, interpolated within its bucket on a log scale; `None`
/// when it counts nothing.
pub(crate) fn percentile(buckets: &[i64; BUCKETS], p: f64) -> Option<f64> {
    let total: i64 = buckets.iter().sum();
    if total == 0 {
        return None;
    }
    let rank = (p * total as f64).max(1.0);
    let mut below = 0i64;
    for (i, &n) in buckets.iter().enumerate() {
        if n > 0 && (below + n) as f64 >= rank {
            if i == 0 {
                return Some(1.0);
            }
            let (low, high) = (bucket_bound_ms(i - 1), bucket_bound_ms(i));
            if i == BUCKETS - 1 {
                return Some(low);
            }
            let within = ((rank - below as f64) / n as f64).clamp(0.0, 1.0);
            return Some(round(low * (high / low).powf(within), 1));
        }
        below += n;
    }
    None
}

fn round(value: f64, digits: i32) -> f64 {
    let scale = 10f64.powi(digits);
    (value * scale).round() / scale
}

fn ratio_pct(part: i64, whole: i64) -> f64 {
    if whole > 0 {
        round(100.0 * part as f64 / whole as f64, 2)
    } else {
        0.0
    }
}

fn millis(at: DateTime<Utc>) -> String {
    at.to_rfc3339_opts(SecondsFormat::Secs, true)
}

/// The figures of a stretch of time (one point of a series, or a whole period).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Figures {
    /// Jobs answered.
    pub jobs: i64,
    /// Jobs answered from the cache.
    pub hits: i64,
    /// Valid jobs not answered from the cache.
    pub misses: i64,
    /// hits ÷ (hits + misses) × 100; 0 before the first lookup.
    pub hit_ratio_pct: f64,
    /// Images generated (successes not from the cache).
    pub generations: i64,
    /// Failed jobs other than `invalid_job`.
    pub failures: i64,
    /// Jobs refused as `invalid_job`.
    pub invalid: i64,
    /// Failed jobs per error code (`invalid_job` included).
    pub failures_by_code: BTreeMap<String, i64>,
    /// What generation cost, USD.
    pub spend_usd: f64,
    /// What cache hits saved, USD.
    pub saved_usd: f64,
    /// Job durations (`duration_ms` of the results), from the hourly histograms.
    pub p50_ms: Option<f64>,
    /// 95th percentile of the job durations, milliseconds; `None` without jobs.
    pub p95_ms: Option<f64>,
    /// Time between the publisher's AMQP `timestamp` and the delivery (whole seconds), for the
    /// jobs that carry one.
    pub queue_lag_p50_ms: Option<f64>,
    /// 95th percentile of the queue lag, milliseconds; `None` when no job carried a timestamp.
    pub queue_lag_p95_ms: Option<f64>,
}

impl Figures {
    fn of(counts: &HourCounts, failures: BTreeMap<String, i64>) -> Figures {
        Figures {
            jobs: counts.jobs,
            hits: counts.hits,
            misses: counts.misses,
            hit_ratio_pct: ratio_pct(counts.hits, counts.hits + counts.misses),
            generations: counts.generations,
            failures: counts.failures,
            invalid: counts.invalid,
            failures_by_code: failures,
            spend_usd: round(counts.spend_usd, 6),
            saved_usd: round(counts.saved_usd, 6),
            p50_ms: percentile(&counts.durations, 0.5),
            p95_ms: percentile(&counts.durations, 0.95),
            queue_lag_p50_ms: percentile(&counts.lags, 0.5),
            queue_lag_p95_ms: percentile(&counts.lags, 0.95),
        }
    }
}

/// A series' resolution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// One point per hour.
    Hour,
    /// One point per UTC day.
    Day,
}

impl Step {
    fn length(self) -> Duration {
        match self {
            Step::Hour => Duration::hours(1),
            Step::Day => Duration::days(1),
        }
    }
}

/// One point of a series: the figures of the step starting at `start`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Point {
    /// Start of the step, RFC 3339 (UTC, whole seconds).
    pub start: String,
    /// The step's figures, flattened into the point.
    #[serde(flatten)]
    pub figures: Figures,
}

/// `GET /api/analytics/series`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Series {
    /// The resolution of the points.
    pub step: Step,
    /// Start of the first step, RFC 3339.
    pub from: String,
    /// End of the last step (exclusive), RFC 3339.
    pub to: String,
    /// Every step of the range, oldest first; steps without jobs are zeros.
    pub points: Vec<Point>,
}

/// Why a requested span was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpanError {
    /// The text is not a number followed by `h` or `d`.
    #[error("`{0}` is not a span: write a number and a unit, h or d (48h, 7d, 90d)")]
    Unreadable(String),
    /// The span is shorter than 1 hour or longer than 400 days.
    #[error("`{0}` is out of range: from 1h to 400d")]
    OutOfRange(String),
}

/// Reads `48h`, `7d`, `90d` (1 hour to 400 days).
pub fn parse_span(text: &str) -> Result<Duration, SpanError> {
    let text = text.trim();
    let unreadable = || SpanError::Unreadable(text.to_owned());
    let (number, unit) = text.split_at(text.len().saturating_sub(1));
    let n: i64 = number.parse().map_err(|_| unreadable())?;
    let span = match unit {
        "h" => Duration::hours(n),
        "d" => Duration::days(n),
        _ => return Err(unreadable()),
    };
    if span < Duration::hours(1) || span > Duration::days(400) {
        return Err(SpanError::OutOfRange(text.to_owned()));
    }
    Ok(span)
}

/// The steps covering the last `span` up to now: the current step is the last one.
fn range(step: Step, span: Duration, now: DateTime<Utc>) -> (DateTime<Utc>, DateTime<Utc>) {
    let to = now.duration_trunc(step.length()).unwrap_or(now) + step.length();
    let steps =
        (span.num_seconds() + step.length().num_seconds() - 1) / step.length().num_seconds();
    (to - step.length() * steps.max(1) as i32, to)
}

/// What the hours of `[from, to)` add up to, per step.
async fn steps(
    pool: &PgPool,
    step: Step,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(DateTime<Utc>, HourCounts, BTreeMap<String, i64>)>, DbError> {
    let (hours, failures) = tokio::try_join!(
        store::periods(pool, step == Step::Day, from, to),
        store::failures(pool, step == Step::Day, from, to)
    )?;
    let start_of = |at: DateTime<Utc>| at.duration_trunc(step.length()).unwrap_or(at);
    let mut out = Vec::new();
    let mut at = from;
    while at < to {
        out.push((at, HourCounts::default(), BTreeMap::new()));
        at += step.length();
    }
    let index = |at: DateTime<Utc>| {
        let i = (start_of(at) - from).num_seconds() / step.length().num_seconds();
        usize::try_from(i).ok()
    };
    for hour in hours {
        if let Some(slot) = index(hour.hour).and_then(|i| out.get_mut(i)) {
            slot.1.add(&hour.counts);
        }
    }
    for (hour, code, n) in failures {
        if let Some(slot) = index(hour).and_then(|i| out.get_mut(i)) {
            *slot.2.entry(code).or_default() += n;
        }
    }
    Ok(out)
}

/// The series of the last `span`, per `step`.
pub async fn series(
    pool: &PgPool,
    step: Step,
    span: Duration,
    now: DateTime<Utc>,
) -> Result<Series, DbError> {
    let (from, to) = range(step, span, now);
    let points = steps(pool, step, from, to)
        .await?
        .into_iter()
        .map(|(start, counts, failures)| Point {
            start: millis(start),
            figures: Figures::of(&counts, failures),
        })
        .collect();
    Ok(Series {
        step,
        from: millis(from),
        to: millis(to),
        points,
    })
}

/// Changes from the previous period to this one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trend {
    /// Percentage points.
    pub hit_ratio_pts: f64,
    /// Percent change; `None` when the previous period had none.
    pub jobs_pct: Option<f64>,
    /// Percent change in spend; `None` when the previous period spent nothing.
    pub spend_pct: Option<f64>,
    /// Percent change in savings; `None` when the previous period saved nothing.
    pub saved_pct: Option<f64>,
}

/// `GET /api/analytics/summary`: a period's figures beside the period before it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// The span as the caller asked for it (e.g. `7d`).
    pub since: String,
    /// Start of the current period, RFC 3339.
    pub from: String,
    /// End of the current period (exclusive), RFC 3339.
    pub to: String,
    /// The current period's figures.
    pub current: Figures,
    /// The figures of the period of the same length before it.
    pub previous: Figures,
    /// Changes from `previous` to `current`.
    pub trend: Trend,
}

fn change_pct(now: f64, before: f64) -> Option<f64> {
    (before != 0.0).then(|| round(100.0 * (now - before) / before, 1))
}

async fn total(
    pool: &PgPool,
    step: Step,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Figures, DbError> {
    let mut counts = HourCounts::default();
    let mut failures = BTreeMap::new();
    for (_, c, f) in steps(pool, step, from, to).await? {
        counts.add(&c);
        for (code, n) in f {
            *failures.entry(code).or_default() += n;
        }
    }
    Ok(Figures::of(&counts, failures))
}

/// The step a span is counted in: hours up to [`HOURLY_UP_TO`] hours, whole UTC days beyond.
pub(crate) fn step_for(span: Duration) -> Step {
    if span <= Duration::hours(HOURLY_UP_TO) {
        Step::Hour
    } else {
        Step::Day
    }
}

/// Longest span (hours) counted in hours by the summary and the dashboard.
pub(crate) const HOURLY_UP_TO: i64 = 72;
/// Longest span (hours) an hourly series may ask for (a series of days covers more).
pub(crate) const MAX_HOURLY_SERIES: i64 = 14 * 24;

/// The last `span` (whole hours up to 72 h, else whole UTC days, the current one included) and
/// the same span before it.
pub async fn summary(
    pool: &PgPool,
    since: &str,
    span: Duration,
    now: DateTime<Utc>,
) -> Result<Summary, DbError> {
    let step = step_for(span);
    let (from, to) = range(step, span, now);
    let before = from - (to - from);
    let (current, previous) =
        tokio::try_join!(total(pool, step, from, to), total(pool, step, before, from))?;
    let trend = Trend {
        hit_ratio_pts: round(current.hit_ratio_pct - previous.hit_ratio_pct, 2),
        jobs_pct: change_pct(current.jobs as f64, previous.jobs as f64),
        spend_pct: change_pct(current.spend_usd, previous.spend_usd),
        saved_pct: change_pct(current.saved_usd, previous.saved_usd),
    };
    Ok(Summary {
        since: since.to_owned(),
        from: millis(from),
        to: millis(to),
        current,
        previous,
        trend,
    })
}

/// One value of an attribute.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValueFigures {
    /// The attribute's value (e.g. `wave`).
    pub value: String,
    /// Jobs with this value.
    pub jobs: i64,
    /// Of them, answered from the cache.
    pub hits: i64,
    /// Of them, not answered from the cache.
    pub misses: i64,
    /// hits ÷ (hits + misses) × 100; 0 without lookups.
    pub hit_ratio_pct: f64,
    /// What generation cost, USD.
    pub spend_usd: f64,
    /// What cache hits saved, USD.
    pub saved_usd: f64,
}

/// `GET /api/analytics/breakdowns`: per attribute, its most used values over whole UTC days.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Breakdowns {
    /// First day counted, RFC 3339 (midnight UTC).
    pub from: String,
    /// End of the last day counted (exclusive), RFC 3339.
    pub to: String,
    /// Per attribute of [`DIMENSIONS`], its values, most used first (every attribute present, maybe empty).
    pub dimensions: BTreeMap<String, Vec<ValueFigures>>,
}

/// The `limit` most used values of each attribute over the last `span` (whole days, today's
/// included).
pub async fn breakdowns(
    pool: &PgPool,
    span: Duration,
    limit: i64,
    now: DateTime<Utc>,
) -> Result<Breakdowns, DbError> {
    let (from, to) = range(Step::Day, span, now);
    let (first, end): (NaiveDate, NaiveDate) = (from.date_naive(), to.date_naive());
    let rows = store::breakdown(pool, first, end, limit).await?;
    let mut dimensions: BTreeMap<String, Vec<ValueFigures>> = DIMENSIONS
        .iter()
        .map(|d| ((*d).to_owned(), Vec::new()))
        .collect();
    for row in rows {
        dimensions
            .entry(row.dimension)
            .or_default()
            .push(ValueFigures {
                value: row.value,
                jobs: row.jobs,
                hits: row.hits,
                misses: row.misses,
                hit_ratio_pct: ratio_pct(row.hits, row.hits + row.misses),
                spend_usd: round(row.spend_usd, 6),
                saved_usd: round(row.saved_usd, 6),
            });
    }
    Ok(Breakdowns {
        from: millis(from),
        to: millis(to),
        dimensions,
    })
}

/// A configuration in a top list.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopConfig {
    /// The configuration's cache key.
    pub prompt_hash: String,
    /// The configuration in words (see [`label`]).
    pub label: String,
    /// Jobs that asked for it.
    pub uses: i64,
    /// Of them, answered from the cache.
    pub hits: i64,
    /// Images generated for it.
    pub generations: i64,
    /// What its generations cost, USD.
    pub spend_usd: f64,
    /// What its cache hits saved, USD.
    pub saved_usd: f64,
    /// The model of its last image, where known.
    pub model: Option<String>,
    /// The public URL of its image, where known.
    pub image_url: Option<String>,
    /// The image on this admin server (`/images/…`), for the dashboard's thumbnails.
    pub thumbnail: Option<String>,
    /// When it was last asked for, RFC 3339.
    pub last_used_at: String,
}

impl From<ConfigRow> for TopConfig {
    fn from(row: ConfigRow) -> TopConfig {
        TopConfig {
            thumbnail: row
                .storage_path
                .as_deref()
                .and_then(crate::storage::StoragePath::parse)
                .map(|path| format!("/images/{}", path.as_str())),
            prompt_hash: row.prompt_hash,
            label: row.label,
            uses: row.uses,
            hits: row.hits,
            generations: row.generations,
            spend_usd: round(row.spend_usd, 6),
            saved_usd: round(row.saved_usd, 6),
            model: row.model,
            image_url: row.image_url,
            last_used_at: millis(row.last_used_at),
        }
    }
}

/// The top configurations (since the beginning) by uses or by cost saved.
pub(crate) async fn top_configs(
    pool: &PgPool,
    by: TopBy,
    limit: i64,
) -> Result<Vec<TopConfig>, DbError> {
    Ok(store::top_configs(pool, by, limit)
        .await?
        .into_iter()
        .map(TopConfig::from)
        .collect())
}

/// A user in the top list by spend (since the beginning): the id as jobs gave it, nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TopUser {
    /// The user id as jobs gave it.
    pub user_id: String,
    /// Jobs the user sent.
    pub jobs: i64,
    /// Images generated for the user.
    pub generations: i64,
    /// What the user's generations cost, USD.
    pub spend_usd: f64,
    /// What cache hits saved on the user's jobs, USD.
    pub saved_usd: f64,
    /// When the user's last job was answered, RFC 3339.
    pub last_seen_at: String,
}

/// The `limit` users who cost the most since the beginning, most first.
pub(crate) async fn top_users(pool: &PgPool, limit: i64) -> Result<Vec<TopUser>, DbError> {
    Ok(store::top_users(pool, limit)
        .await?
        .into_iter()
        .map(|row| TopUser {
            user_id: row.user_id,
            jobs: row.jobs,
            generations: row.generations,
            spend_usd: round(row.spend_usd, 6),
            saved_usd: round(row.saved_usd, 6),
            last_seen_at: millis(row.last_seen_at),
        })
        .collect())
}

/// A day's cleanup work: entries archived and deleted.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CleanupDay {
    /// The UTC day, `YYYY-MM-DD`.
    pub day: String,
    /// Cache entries archived that day.
    pub archived: i64,
    /// Cache entries deleted that day.
    pub deleted: i64,
}

/// The cleanup history of the last `span`, days with work only.
pub(crate) async fn cleanups(
    pool: &PgPool,
    span: Duration,
    now: DateTime<Utc>,
) -> Result<Vec<CleanupDay>, DbError> {
    let (from, to) = range(Step::Day, span, now);
    Ok(store::cleanups(pool, from, to)
        .await?
        .into_iter()
        .map(|(day, archived, deleted)| CleanupDay {
            day: day.to_string(),
            archived,
            deleted,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_come_from_the_buckets() {
        let mut b = [0i64; BUCKETS];
        assert_eq!(percentile(&b, 0.5), None);
        // 90 jobs around 10 ms, 10 around 1 s.
        b[bucket_of(10.0)] = 90;
        b[bucket_of(1000.0)] = 10;
        let p50 = percentile(&b, 0.5).unwrap();
        assert!((8.0..=11.4).contains(&p50), "{p50}");
        let p95 = percentile(&b, 0.95).unwrap();
        assert!((724.0..=1024.0).contains(&p95), "{p95}");
        let mut one = [0i64; BUCKETS];
        one[bucket_of(250.0)] = 1;
        let p = percentile(&one, 0.95).unwrap();
        assert!((181.0..=256.0).contains(&p), "{p}");
    }

    #[test]
    fn spans_read_hours_and_days() {
        assert_eq!(parse_span("48h"), Ok(Duration::hours(48)));
        assert_eq!(parse_span("7d"), Ok(Duration::days(7)));
        assert!(matches!(parse_span("7w"), Err(SpanError::Unreadable(_))));
        assert!(matches!(parse_span("d"), Err(SpanError::Unreadable(_))));
        assert!(matches!(parse_span("0h"), Err(SpanError::OutOfRange(_))));
        assert!(matches!(parse_span("401d"), Err(SpanError::OutOfRange(_))));
    }

    #[test]
    fn ranges_end_with_the_current_step() {
        let now = DateTime::parse_from_rfc3339("2026-11-24T14:30:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let (from, to) = range(Step::Hour, Duration::hours(24), now);
        assert_eq!(millis(to), "2026-11-24T15:00:00Z");
        assert_eq!(millis(from), "2026-11-23T15:00:00Z");
        let (from, to) = range(Step::Day, Duration::days(7), now);
        assert_eq!(millis(to), "2026-11-25T00:00:00Z");
        assert_eq!(millis(from), "2026-11-18T00:00:00Z");
    }

    #[test]
    fn a_hit_a_generation_and_failures_count_where_they_belong() {
        let config = AvatarConfig::normalize(&serde_json::json!({
            "hair": "Long", "accessories": ["hat", "glasses"]
        }))
        .unwrap();
        let at = Utc::now();
        let mut hit = JobResult::failure(
            crate::job::JobId(uuid::Uuid::nil()),
            "u1",
            None,
            crate::job::JobError::new(ErrorCode::Internal, "x", true),
        );
        hit.status = Status::Succeeded;
        hit.error = None;
        hit.cached = true;
        hit.saved_usd = 0.04;
        hit.prompt_hash = Some("abc".into());
        hit.storage_path = Some("2026/11/abc.png".into());
        hit.duration_ms = 12;
        hit.completed_at = at;
        let mut made = hit.clone();
        made.cached = false;
        made.saved_usd = 0.0;
        made.cost_usd = 0.04;
        made.duration_ms = 3000;
        let mut failed = made.clone();
        failed.status = Status::Failed;
        failed.cost_usd = 0.0;
        failed.prompt_hash = None;
        failed.error = Some(crate::job::JobError::new(
            ErrorCode::OutOfCredits,
            "no",
            false,
        ));
        let mut invalid = failed.clone();
        invalid.error = Some(crate::job::JobError::new(
            ErrorCode::InvalidJob,
            "bad",
            false,
        ));
        let mut batch = Batch::default();
        add_job(&mut batch, &hit, Some(&config), None);
        add_job(
            &mut batch,
            &made,
            Some(&config),
            Some(std::time::Duration::from_secs(2)),
        );
        add_job(&mut batch, &failed, Some(&config), None);
        add_job(&mut batch, &invalid, None, None);
        let mut preview = failed.clone();
        preview.error = Some(crate::job::JobError::new(
            ErrorCode::NotCached,
            "not cached",
            true,
        ));
        add_job(&mut batch, &preview, Some(&config), None);
        let hour = batch.hours.values().next().unwrap();
        assert_eq!(
            (hour.jobs, hour.hits, hour.misses, hour.generations),
            (5, 1, 2, 1),
            "a not_cached preview is a job, not a miss"
        );
        assert_eq!((hour.failures, hour.invalid), (1, 1));
        assert_eq!(hour.lags.iter().sum::<i64>(), 1);
        assert_eq!(batch.failures.values().sum::<i64>(), 3);
        assert_eq!(
            batch.failures[&(*batch.hours.keys().next().unwrap(), "not_cached")],
            1
        );
        let day = at.date_naive();
        let hair = &batch.values[&(day, "hair", "long".to_owned())];
        assert_eq!((hair.jobs, hair.hits, hair.misses), (3, 1, 2));
        assert_eq!(batch.values[&(day, "accessory", "hat".to_owned())].jobs, 3);
        assert_eq!(
            batch.values[&(day, "quality", "default".to_owned())].jobs,
            3
        );
        let key = &batch.configs["abc"];
        assert_eq!((key.uses, key.hits, key.generations), (2, 1, 1));
        assert!(key.label.contains("long hair"), "{}", key.label);
        assert_eq!(
            batch.users["u1"].jobs, 3,
            "invalid jobs are not a user's spend"
        );
    }
}
