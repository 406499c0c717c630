//! `GET /`: the dashboard, a page drawn here from the analytics rollups, with SVG charts
//! ([`super::svg`]). Read-only and open like the statistics; its actions (a cleanup, the top
//! users) send the admin token the reader types into the page, through its one script.
//!
//! Everything it loads comes from this server and from the binary itself — the page
//! (`dashboard/page.html`, filled in by [`fill`]), its stylesheet and script, and the
//! thumbnails from `/images/…` — and a strict Content-Security-Policy says so to the browser:
//! nothing else may be fetched, framed or submitted to, so the dashboard works on a machine with
//! no internet and leaks nothing to one.

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use chrono::{Duration, Utc};
use serde::Deserialize;

use super::ApiState;
use super::svg::{self, Bar, Look, Series};
use crate::db::DbError;
use crate::db::analytics::TopBy;
use crate::db::warm::{Figures as WarmFigures, Run as WarmRun};
use crate::stats::analytics::{
    self, Breakdowns, CleanupDay, DIMENSIONS, Figures, Point, Step, Summary, TopConfig,
};
use crate::stats::report::escape;

const PAGE: &str = include_str!("dashboard/page.html");
const STYLE: &str = include_str!("dashboard/style.css");
const SCRIPT: &str = include_str!("dashboard/actions.js");

/// The policy every dashboard response carries: this server only, no inline code or styles.
pub(crate) const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
                       connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'";

/// The periods the page offers.
const PERIODS: [&str; 5] = ["24h", "48h", "7d", "30d", "90d"];
/// Values shown per breakdown, configurations per top list.
const SHOWN: i64 = 8;
/// Warming runs shown in the warming history.
const WARM_RUNS_SHOWN: i64 = 10;

pub(crate) fn router() -> Router<ApiState> {
    Router::new()
        .route("/", get(page))
        .route("/dashboard/style.css", get(style))
        .route("/dashboard/actions.js", get(script))
        // Browsers ask for it on their own; no icon, and no 404 in their console.
        .route("/favicon.ico", get(|| async { StatusCode::NO_CONTENT }))
}

fn with_headers(content_type: &'static str, body: String) -> Response {
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

async fn style() -> Response {
    with_headers("text/css; charset=utf-8", STYLE.to_owned())
}

async fn script() -> Response {
    with_headers("text/javascript; charset=utf-8", SCRIPT.to_owned())
}

#[derive(Debug, Deserialize)]
struct Params {
    since: Option<String>,
}

/// Replaces each `{{name}}` of `template` with its value, in one pass (a value is never scanned
/// for placeholders itself). An unknown name is left as it is.
pub(crate) fn fill(template: &str, values: &[(&str, &str)]) -> String {
    let mut out = String::with_capacity(template.len() * 2);
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        match after.find("}}") {
            Some(end) => {
                let name = &after[..end];
                match values.iter().find(|(n, _)| *n == name) {
                    Some((_, value)) => out.push_str(value),
                    None => {
                        out.push_str("{{");
                        out.push_str(name);
                        out.push_str("}}");
                    }
                }
                rest = &after[end + 2..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

async fn page(State(state): State<ApiState>, Query(params): Query<Params>) -> Response {
    let since = params.since.unwrap_or_else(|| "7d".to_owned());
    let span = match analytics::parse_span(&since) {
        Ok(span) => span,
        Err(error) => {
            return (StatusCode::BAD_REQUEST, escape(&error.to_string())).into_response();
        }
    };
    match render(&state, &since, span).await {
        Ok(html) => with_headers("text/html; charset=utf-8", html),
        Err(error) => {
            tracing::warn!(%error, "cannot draw the dashboard");
            let mut response = with_headers(
                "text/html; charset=utf-8",
                "<!doctype html><title>memoji-worker</title><p>The database is out of reach; \
                 try again shortly.</p>"
                    .to_owned(),
            );
            *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
            response
        }
    }
}

async fn render(state: &ApiState, since: &str, span: Duration) -> Result<String, DbError> {
    let now = Utc::now();
    let step = analytics::step_for(span);
    let db = &state.db;
    let (summary, series, breakdowns, top_uses, top_saved, cleanups, experiments) = tokio::try_join!(
        analytics::summary(db, since, span, now),
        analytics::series(db, step, span, now),
        analytics::breakdowns(db, span, SHOWN, now),
        analytics::top_configs(db, TopBy::Uses, SHOWN),
        analytics::top_configs(db, TopBy::Saved, SHOWN),
        analytics::cleanups(db, span.max(Duration::days(30)), now),
        crate::stats::arms::list(db, &state.settings.experiments, Some((since, span)), now),
    )?;
    let (warm_runs, warming) = tokio::try_join!(
        crate::db::warm::recent_runs(db, WARM_RUNS_SHOWN),
        crate::db::warm::figures(db, now - span, now),
    )?;
    let labels: Vec<String> = series
        .points
        .iter()
        .map(|p| label(&p.start, step))
        .collect();
    let warnings = state.lifecycle.warnings();
    let step_name = match step {
        Step::Hour => "hour",
        Step::Day => "day",
    };
    let parts = [
        ("since", escape(since)),
        ("step", step_name.to_owned()),
        (
            "generated_at",
            escape(&now.to_rfc3339_opts(chrono::SecondsFormat::Secs, true)),
        ),
        ("nav", nav(since)),
        ("warnings", warnings_html(&warnings)),
        ("cards", cards(&summary)),
        ("chart_hit_ratio", hit_ratio(&labels, &series.points)),
        ("chart_spend", spend(&labels, &series.points)),
        ("chart_outcomes", outcomes(&labels, &series.points)),
        ("chart_latency", latency(&labels, &series.points)),
        ("breakdowns", breakdown_charts(&breakdowns)),
        ("top_uses", top_table("top-uses", &top_uses)),
        ("top_saved", top_table("top-saved", &top_saved)),
        ("cleanups", cleanup_table(&cleanups)),
        ("warming", warming_html(since, &warming, &warm_runs)),
        (
            "experiments",
            super::experiments::section(&experiments, since),
        ),
    ];
    let values: Vec<(&str, &str)> = parts.iter().map(|(n, v)| (*n, v.as_str())).collect();
    Ok(fill(PAGE, &values))
}

/// `2026-11-24T14:00:00Z` → `24 14h` (hours) or `11-24` (days).
fn label(start: &str, step: Step) -> String {
    match step {
        Step::Hour => format!(
            "{} {}h",
            start.get(8..10).unwrap_or(""),
            start.get(11..13).unwrap_or("")
        ),
        Step::Day => start.get(5..10).unwrap_or("").to_owned(),
    }
}

fn nav(current: &str) -> String {
    PERIODS
        .iter()
        .map(|p| {
            let here = if *p == current {
                " aria-current=\"page\""
            } else {
                ""
            };
            format!("<a href=\"/?since={p}\"{here}>{p}</a>")
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn warnings_html(warnings: &[String]) -> String {
    if warnings.is_empty() {
        return "<p class=\"ok\" id=\"no-warnings\">No warnings: every model the worker may call \
                is served, none near its shutdown date (as of the last check).</p>"
            .to_owned();
    }
    let items: String = warnings
        .iter()
        .map(|w| {
            format!(
                "<li class=\"warning\"><strong>Warning:</strong> {}</li>",
                escape(w)
            )
        })
        .collect();
    format!("<ul role=\"alert\" id=\"model-warnings\">{items}</ul>")
}

fn usd(value: f64) -> String {
    format!("${value:.4}")
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.0} ms"))
}

fn change(value: Option<f64>) -> String {
    value.map_or_else(|| "no previous data".to_owned(), |v| format!("{v:+.1} %"))
}

fn cards(summary: &Summary) -> String {
    let (c, p, t) = (&summary.current, &summary.previous, &summary.trend);
    let cards: [(&str, &str, String, String); 8] = [
        (
            "jobs",
            "Jobs",
            c.jobs.to_string(),
            format!("{} before, {}", p.jobs, change(t.jobs_pct)),
        ),
        (
            "hit_ratio_pct",
            "Hit ratio",
            format!("{:.2} %", c.hit_ratio_pct),
            format!(
                "{:.2} % before, {:+.2} pts",
                p.hit_ratio_pct, t.hit_ratio_pts
            ),
        ),
        (
            "hits",
            "Hits",
            c.hits.to_string(),
            format!("{} before", p.hits),
        ),
        (
            "misses",
            "Misses",
            c.misses.to_string(),
            format!("{} before", p.misses),
        ),
        (
            "spend_usd",
            "Spend",
            usd(c.spend_usd),
            format!("{} before, {}", usd(p.spend_usd), change(t.spend_pct)),
        ),
        (
            "saved_usd",
            "Saved",
            usd(c.saved_usd),
            format!("{} before, {}", usd(p.saved_usd), change(t.saved_pct)),
        ),
        (
            "failures",
            "Failures",
            c.failures.to_string(),
            failure_codes(c),
        ),
        (
            "p95_ms",
            "Duration p50 / p95",
            format!("{} / {}", ms(c.p50_ms), ms(c.p95_ms)),
            format!("queue lag p95 {}", ms(c.queue_lag_p95_ms)),
        ),
    ];
    cards
        .iter()
        .map(|(id, name, value, trend)| {
            format!(
                "<div><dt>{name}</dt><dd data-figure=\"{id}\">{}<span class=\"trend\">{}</span></dd></div>",
                escape(value),
                escape(trend)
            )
        })
        .collect()
}

fn failure_codes(figures: &Figures) -> String {
    if figures.failures_by_code.is_empty() {
        return "none".to_owned();
    }
    figures
        .failures_by_code
        .iter()
        .map(|(code, n)| format!("{code} {n}"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn hit_ratio(labels: &[String], points: &[Point]) -> String {
    let values = points
        .iter()
        .map(|p| {
            let f = &p.figures;
            (f.hits + f.misses > 0).then_some(f.hit_ratio_pct)
        })
        .collect();
    svg::lines(
        "chart-hit-ratio",
        "Hit ratio over time",
        " %",
        labels,
        &[Series {
            name: "hit ratio",
            values,
            look: Look::Solid,
        }],
    )
}

fn spend(labels: &[String], points: &[Point]) -> String {
    svg::lines(
        "chart-spend",
        "Spend and saved over time (USD)",
        "",
        labels,
        &[
            Series {
                name: "spend",
                values: points.iter().map(|p| Some(p.figures.spend_usd)).collect(),
                look: Look::Dashed,
            },
            Series {
                name: "saved",
                values: points.iter().map(|p| Some(p.figures.saved_usd)).collect(),
                look: Look::Solid,
            },
        ],
    )
}

fn outcomes(labels: &[String], points: &[Point]) -> String {
    let of = |f: fn(&Figures) -> i64| -> Vec<Option<f64>> {
        points.iter().map(|p| Some(f(&p.figures) as f64)).collect()
    };
    svg::stacked(
        "chart-outcomes",
        "Jobs by outcome",
        labels,
        &[
            Series {
                name: "hits",
                values: of(|f| f.hits),
                look: Look::Solid,
            },
            Series {
                name: "generated",
                values: of(|f| f.generations),
                look: Look::Dashed,
            },
            Series {
                name: "failed",
                values: of(|f| f.failures),
                look: Look::Dotted,
            },
            Series {
                name: "invalid",
                values: of(|f| f.invalid),
                look: Look::Dots,
            },
        ],
    )
}

fn latency(labels: &[String], points: &[Point]) -> String {
    svg::lines(
        "chart-latency",
        "Job duration p50 and p95 (ms)",
        " ms",
        labels,
        &[
            Series {
                name: "p50",
                values: points.iter().map(|p| p.figures.p50_ms).collect(),
                look: Look::Solid,
            },
            Series {
                name: "p95",
                values: points.iter().map(|p| p.figures.p95_ms).collect(),
                look: Look::Dashed,
            },
        ],
    )
}

fn breakdown_charts(breakdowns: &Breakdowns) -> String {
    DIMENSIONS
        .iter()
        .map(|dimension| {
            let values = breakdowns
                .dimensions
                .get(*dimension)
                .map(Vec::as_slice)
                .unwrap_or_default();
            let rows: Vec<Bar<'_>> = values
                .iter()
                .map(|v| Bar {
                    label: &v.value,
                    first: v.hits as f64,
                    second: v.misses as f64,
                    note: format!(
                        "{} jobs · {:.0} % hits · {}",
                        v.jobs,
                        v.hit_ratio_pct,
                        usd(v.spend_usd)
                    ),
                })
                .collect();
            let title = dimension.replace('_', " ");
            format!(
                "<figure><figcaption>By {title}</figcaption>{}</figure>",
                svg::bars(
                    &format!("chart-by-{dimension}"),
                    &format!("Jobs by {title}"),
                    ("hits", "misses"),
                    &rows
                )
            )
        })
        .collect()
}

fn top_table(id: &str, configs: &[TopConfig]) -> String {
    if configs.is_empty() {
        return format!("<p id=\"{id}\">No configuration used yet.</p>");
    }
    let rows: String = configs
        .iter()
        .map(|c| {
            let thumb = match &c.thumbnail {
                Some(src) => format!(
                    "<img class=\"thumb\" src=\"{}\" alt=\"avatar: {}\" loading=\"lazy\" width=\"48\" height=\"48\">",
                    escape(src),
                    escape(&c.label)
                ),
                None => "<span>(no stored image)</span>".to_owned(),
            };
            format!(
                "<tr data-hash=\"{}\"><td>{thumb}</td><td>{}<br><small><code>{}</code></small></td>\
                 <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                escape(&c.prompt_hash),
                escape(&c.label),
                escape(c.prompt_hash.get(..12).unwrap_or(&c.prompt_hash)),
                c.uses,
                c.hits,
                usd(c.saved_usd)
            )
        })
        .collect();
    format!(
        "<div class=\"scroll\"><table id=\"{id}\"><tr><th>image</th><th>configuration</th><th class=\"n\">uses</th>\
         <th class=\"n\">hits</th><th class=\"n\">saved</th></tr>{rows}</table></div>"
    )
}

fn cleanup_table(days: &[CleanupDay]) -> String {
    if days.is_empty() {
        return "<p id=\"cleanup-history\">No entries archived or deleted in the last 30 days.</p>"
            .to_owned();
    }
    let rows: String = days
        .iter()
        .rev()
        .map(|d| {
            format!(
                "<tr><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                escape(&d.day),
                d.archived,
                d.deleted
            )
        })
        .collect();
    format!(
        "<table id=\"cleanup-history\"><tr><th>day (UTC)</th><th class=\"n\">archived</th>\
         <th class=\"n\">deleted</th></tr>{rows}</table>"
    )
}

/// The warming section: the period's warming figures and what warmed entries are worth now, then
/// the most recent runs. Words and numbers only, so it reads the same without colour.
fn warming_html(since: &str, figures: &WarmFigures, runs: &[WarmRun]) -> String {
    let facts: [(&str, String, String); 4] = [
        (
            "warming_generated",
            "Warmed (this period)".to_owned(),
            format!(
                "{} in {} runs; {} failed, {} wasted",
                figures.generated, figures.runs, figures.failed, figures.wasted
            ),
        ),
        (
            "warming_spent_usd",
            "Warming spend (this period)".to_owned(),
            format!(
                "{} ({} wasted)",
                usd(figures.spent_usd),
                usd(figures.wasted_usd)
            ),
        ),
        (
            "warmed_hits",
            "Hits served by warmed entries (all time)".to_owned(),
            format!(
                "{} ({} of {} warmed entries asked for)",
                figures.warmed_hits, figures.warmed_used, figures.warmed_entries
            ),
        ),
        (
            "warming_saved_usd",
            "Generation cost of warmed entries asked for".to_owned(),
            usd(figures.saved_usd),
        ),
    ];
    let facts: String = facts
        .iter()
        .map(|(id, name, value)| {
            format!(
                "<div><dt>{}</dt><dd data-figure=\"{id}\">{}</dd></div>",
                escape(name),
                escape(value)
            )
        })
        .collect();
    let table = if runs.is_empty() {
        "<p id=\"warming-history\">No warming run yet (<code>memoji-worker warm</code>, or \
         <code>warm.schedule</code>).</p>"
            .to_owned()
    } else {
        let rows: String = runs
            .iter()
            .map(|r| {
                format!(
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td>\
                     <td class=\"n\">{}</td><td class=\"n\">{}</td><td class=\"n\">{}</td></tr>",
                    escape(&r.finished_at.format("%Y-%m-%d %H:%M").to_string()),
                    escape(&r.source),
                    escape(&r.mode),
                    r.generated,
                    r.skipped,
                    r.failed,
                    r.wasted,
                    usd(r.spent_usd)
                )
            })
            .collect();
        format!(
            "<div class=\"scroll\"><table id=\"warming-history\"><tr><th>finished (UTC)</th><th>source</th>\
             <th>mode</th><th class=\"n\">generated</th><th class=\"n\">skipped</th><th class=\"n\">failed</th>\
             <th class=\"n\">wasted</th><th class=\"n\">spent</th></tr>{rows}</table></div>"
        )
    };
    format!(
        "<p>Figures of the last {}; warming charges no user.</p><dl class=\"cards\">{facts}</dl>{table}",
        escape(since)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fill_replaces_placeholders_once() {
        let out = fill(
            "<p>{{a}} {{b}} {{unknown}} {{a}}</p>",
            &[("a", "{{b}}"), ("b", "<x>")],
        );
        assert_eq!(out, "<p>{{b}} <x> {{unknown}} {{b}}</p>");
        assert_eq!(fill("no end {{a", &[("a", "x")]), "no end {{a");
    }

    #[test]
    fn the_page_template_names_only_what_render_fills() {
        let names = [
            "since",
            "step",
            "generated_at",
            "nav",
            "warnings",
            "cards",
            "chart_hit_ratio",
            "chart_spend",
            "chart_outcomes",
            "chart_latency",
            "breakdowns",
            "top_uses",
            "top_saved",
            "cleanups",
            "warming",
            "experiments",
        ];
        let values: Vec<(&str, &str)> = names.iter().map(|n| (*n, "")).collect();
        assert!(!fill(PAGE, &values).contains("{{"));
        assert!(PAGE.contains("name=\"viewport\""));
        assert!(!PAGE.contains("http://") && !PAGE.contains("https://"));
    }
}

#[cfg(test)]
mod warming_tests {
    use super::*;

    #[test]
    fn the_warming_section_lists_runs_in_words_and_escapes_them() {
        let at = Utc::now();
        let run = WarmRun {
            source: "<from>".to_owned(),
            mode: "batch".to_owned(),
            generated: 3,
            skipped: 1,
            failed: 2,
            wasted: 1,
            spent_usd: 0.05,
            wasted_usd: 0.01,
            batch_id: None,
            started_at: at,
            finished_at: at,
        };
        let html = warming_html("7d", &WarmFigures::default(), &[run]);
        assert!(html.contains("id=\"warming-history\""), "{html}");
        assert!(
            html.contains("&lt;from&gt;") && !html.contains("<from>"),
            "{html}"
        );
        assert!(html.contains("<td>batch</td>"), "{html}");
        assert!(html.contains("$0.0500"), "{html}");
        let empty = warming_html("7d", &WarmFigures::default(), &[]);
        assert!(empty.contains("No warming run yet"), "{empty}");
    }
}
