//! `GET /api/experiments` and `GET /api/experiments/{name}`: A/B tests of cache strategies per
//! arm (`stats::arms`), read from their rollups (migration 0015), never by scanning the job or
//! cache tables; and the dashboard's Experiments section drawn from the same reports.
//!
//! Read-only and open like `/api/analytics/…` (aggregates; no user is named). `since` is a span
//! (`48h`, `7d`, `90d`: whole hours up to 72 h, whole UTC days beyond); without it, a report
//! covers everything since the experiment's first job.

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::json;

use super::ApiState;
use super::svg::{self, Estimate};
use crate::stats::analytics;
use crate::stats::arms::{self, Comparison, Listing, Report};
use crate::stats::experiment;
use crate::stats::report::escape;

pub(crate) fn router() -> Router<ApiState> {
    Router::new()
        .route("/api/experiments", get(list))
        .route("/api/experiments/{name}", get(show))
}

#[derive(Debug, Deserialize)]
struct Params {
    since: Option<String>,
}

fn error(status: StatusCode, code: &str, message: String) -> Response {
    (status, Json(json!({"error": code, "message": message}))).into_response()
}

fn unavailable(error: &crate::db::DbError) -> Response {
    tracing::warn!(%error, "cannot read the experiments");
    self::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "unavailable",
        "the database is out of reach".to_owned(),
    )
}

/// The span `since` names, if any; the message of a 400 if it names none.
fn span(params: &Params) -> Result<Option<(&str, chrono::Duration)>, String> {
    match params.since.as_deref() {
        None => Ok(None),
        Some(since) => analytics::parse_span(since)
            .map(|span| Some((since, span)))
            .map_err(|e| e.to_string()),
    }
}

fn bad_request(message: String) -> Response {
    error(StatusCode::BAD_REQUEST, "bad_request", message)
}

async fn list(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    let since = match span(&params) {
        Ok(since) => since,
        Err(message) => return bad_request(message),
    };
    match arms::list(&state.db, &state.settings.experiments, since, Utc::now()).await {
        Ok(listing) => Json(listing).into_response(),
        Err(e) => unavailable(&e),
    }
}

async fn show(
    State(state): State<ApiState>,
    Path(name): Path<String>,
    Query(params): Query<Params>,
) -> Response {
    let since = match span(&params) {
        Ok(since) => since,
        Err(message) => return bad_request(message),
    };
    match arms::report(
        &state.db,
        &state.settings.experiments,
        &name,
        since,
        Utc::now(),
    )
    .await
    {
        Ok(Some(report)) => Json(report).into_response(),
        Ok(None) => error(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no experiment named `{name}` is configured or has jobs in this period"),
        ),
        Err(e) => unavailable(&e),
    }
}

fn usd(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("${v:.4}"))
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.0} ms"))
}

/// The dashboard's Experiments section: nothing at all when no experiment is configured or has
/// jobs in the period.
pub(super) fn section(listing: &Listing, since: &str) -> String {
    if listing.experiments.is_empty() {
        return String::new();
    }
    let articles: String = listing.experiments.iter().map(article).collect();
    format!(
        "<section id=\"experiments\" aria-labelledby=\"experiments-h\">\
         <h2 id=\"experiments-h\">Experiments (A/B tests), last {}</h2>\
         <p class=\"meta\">Each arm against the control, with 95% confidence intervals. \
         \"Too small to tell\": fewer than {} jobs in an arm, or an interval that contains 0. \
         JSON: <a href=\"/api/experiments?since={0}\">/api/experiments</a>.</p>{articles}</section>",
        escape(since),
        experiment::MIN_JOBS_PER_ARM
    )
}

fn article(report: &Report) -> String {
    let name = escape(&report.experiment);
    let state = match (report.configured, report.enabled) {
        (true, true) => "running",
        (true, false) => "disabled",
        (false, _) => "no longer configured",
    };
    let control = report.control.as_deref().unwrap_or("");
    let rows: String = report
        .arms
        .iter()
        .map(|a| {
            let role = if a.arm == control { " (control)" } else { "" };
            let share = a
                .share_pct
                .map_or_else(|| "–".to_owned(), |s| format!("{s} %"));
            let cells = [
                ("share_pct", share),
                ("jobs", a.jobs.to_string()),
                ("hit_ratio_pct", format!("{:.2} %", a.hit_ratio_pct)),
                ("misses", a.misses.to_string()),
                ("spend_usd", usd(Some(a.spend_usd))),
                ("saved_usd", usd(Some(a.saved_usd))),
                ("cost_per_job_usd", usd(a.cost_per_job_usd)),
                ("p50_ms", ms(a.p50_ms)),
                ("p95_ms", ms(a.p95_ms)),
            ];
            let cells: String = cells
                .iter()
                .map(|(figure, value)| {
                    format!(
                        "<td class=\"n\" data-arm-figure=\"{figure}\">{}</td>",
                        escape(value)
                    )
                })
                .collect();
            format!(
                "<tr data-arm=\"{}\"><th scope=\"row\">{}{role}</th>{cells}</tr>",
                escape(&a.arm),
                escape(&a.arm)
            )
        })
        .collect();
    let table = format!(
        "<div class=\"scroll\"><table id=\"experiment-{name}-arms\"><tr><th>arm</th><th class=\"n\">share</th>\
         <th class=\"n\">jobs</th><th class=\"n\">hit ratio</th><th class=\"n\">misses</th>\
         <th class=\"n\">spend</th><th class=\"n\">saved</th><th class=\"n\">cost / job</th>\
         <th class=\"n\">p50</th><th class=\"n\">p95</th></tr>{rows}</table></div>"
    );
    let ratios: Vec<Estimate<'_>> = report
        .arms
        .iter()
        .filter_map(|a| {
            let (low, high) = experiment::wilson(a.hits, a.jobs)?;
            Some(Estimate {
                label: &a.arm,
                estimate: a.hit_ratio_pct,
                low: 100.0 * low,
                high: 100.0 * high,
                note: format!(
                    "{:.2} % (CI {:.2} to {:.2}), {} jobs",
                    a.hit_ratio_pct,
                    100.0 * low,
                    100.0 * high,
                    a.jobs
                ),
            })
        })
        .collect();
    let hit_differences = differences(&report.comparisons, |c| {
        c.hit_ratio_pts.as_ref().map(|d| {
            let note = format!(
                "{:+.2} (CI {:+.2}, {:+.2}) {}",
                d.difference,
                d.ci95_low,
                d.ci95_high,
                d.verdict.as_str()
            );
            (d.difference, d.ci95_low, d.ci95_high, note)
        })
    });
    let cost_differences = differences(&report.comparisons, |c| {
        c.cost_per_job_usd.as_ref().map(|d| {
            let note = format!(
                "{:+.4} (CI {:+.4}, {:+.4}) {}",
                d.difference,
                d.ci95_low,
                d.ci95_high,
                d.verdict.as_str()
            );
            (d.difference, d.ci95_low, d.ci95_high, note)
        })
    });
    let verdicts: String = report
        .comparisons
        .iter()
        .map(|c| {
            format!(
                "<li data-verdict=\"{}\"><strong>{} against {}: {}</strong> ({})</li>",
                escape(&c.arm),
                escape(&c.arm),
                escape(&c.against),
                escape(&c.verdict),
                escape(&c.note)
            )
        })
        .collect();
    format!(
        "<article id=\"experiment-{name}\"><h3>{name} <small>({state}; control: {})</small></h3>\
         {table}<ul class=\"verdicts\">{verdicts}</ul><div class=\"grid\">\
         <figure><figcaption>Hit ratio per arm (%)</figcaption>{}</figure>\
         <figure><figcaption>Hit ratio against the control (points)</figcaption>{}</figure>\
         <figure><figcaption>Cost per job against the control (USD)</figcaption>{}</figure>\
         </div></article>",
        escape(control),
        svg::intervals(
            &format!("chart-exp-{name}-hit-ratio"),
            &format!("Hit ratio per arm of {name}, with 95% confidence intervals"),
            " %",
            &ratios
        ),
        svg::intervals(
            &format!("chart-exp-{name}-hit-difference"),
            &format!("Difference in hit ratio against {control}, percentage points"),
            " pts",
            &hit_differences
        ),
        svg::intervals(
            &format!("chart-exp-{name}-cost-difference"),
            &format!("Difference in cost per job against {control}, USD"),
            "",
            &cost_differences
        ),
    )
}

type Row = (f64, f64, f64, String);

fn differences<'a>(
    comparisons: &'a [Comparison],
    pick: impl Fn(&Comparison) -> Option<Row>,
) -> Vec<Estimate<'a>> {
    comparisons
        .iter()
        .filter_map(|c| {
            pick(c).map(|(estimate, low, high, note)| Estimate {
                label: &c.arm,
                estimate,
                low,
                high,
                note,
            })
        })
        .collect()
}
