//! `memoji-worker report --since 7d [--format md|json|html]`: the analytics of a period as text a
//! person pastes into a chat or a mail — hit ratio, spend, saved, the trend against the period
//! before, the top configurations — read from the same rollups as `GET /api/analytics/…`.

use chrono::{DateTime, Duration, Utc};
use serde::{Deserialize, Serialize};
use sqlx::PgPool;

use super::analytics::{self, Figures, Summary, TopConfig};
use crate::db::DbError;
use crate::db::analytics::TopBy;

/// How many configurations each top list shows.
const TOP: i64 = 5;

/// What a report says (its `--format json` body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// The period's figures and their trend against the period before.
    pub(crate) summary: Summary,
    /// Since the beginning: the rollups count configurations over their whole life.
    pub(crate) top_by_uses: Vec<TopConfig>,
    pub(crate) top_by_saved: Vec<TopConfig>,
}

/// A report's format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Markdown.
    Md,
    /// The [`Report`] as JSON.
    Json,
    /// A standalone HTML page.
    Html,
}

/// Reads the report of the `span` before `now` from the rollups (`since` is the period as the user
/// wrote it, e.g. `7d`). Fails only when the database does.
pub async fn build(
    pool: &PgPool,
    since: &str,
    span: Duration,
    now: DateTime<Utc>,
) -> Result<Report, DbError> {
    let (summary, top_by_uses, top_by_saved) = tokio::try_join!(
        analytics::summary(pool, since, span, now),
        analytics::top_configs(pool, TopBy::Uses, TOP),
        analytics::top_configs(pool, TopBy::Saved, TOP),
    )?;
    Ok(Report {
        summary,
        top_by_uses,
        top_by_saved,
    })
}

fn signed(value: Option<f64>, unit: &str) -> String {
    match value {
        Some(v) => format!("{v:+.1}{unit}"),
        None => "n/a (nothing before)".to_owned(),
    }
}

fn ms(value: Option<f64>) -> String {
    value.map_or_else(|| "–".to_owned(), |v| format!("{v:.0} ms"))
}

/// The rows of the figures table: name, this period, the period before, the change.
fn rows(report: &Report) -> Vec<[String; 4]> {
    let (c, p, t): (&Figures, &Figures, _) = (
        &report.summary.current,
        &report.summary.previous,
        &report.summary.trend,
    );
    vec![
        [
            "Jobs".into(),
            c.jobs.to_string(),
            p.jobs.to_string(),
            signed(t.jobs_pct, " %"),
        ],
        [
            "Hit ratio".into(),
            format!("{:.2} %", c.hit_ratio_pct),
            format!("{:.2} %", p.hit_ratio_pct),
            format!("{:+.2} pts", t.hit_ratio_pts),
        ],
        [
            "Hits / misses".into(),
            format!("{} / {}", c.hits, c.misses),
            format!("{} / {}", p.hits, p.misses),
            String::new(),
        ],
        [
            "Spend (USD)".into(),
            format!("{:.4}", c.spend_usd),
            format!("{:.4}", p.spend_usd),
            signed(t.spend_pct, " %"),
        ],
        [
            "Saved (USD)".into(),
            format!("{:.4}", c.saved_usd),
            format!("{:.4}", p.saved_usd),
            signed(t.saved_pct, " %"),
        ],
        [
            "Failures".into(),
            c.failures.to_string(),
            p.failures.to_string(),
            String::new(),
        ],
        [
            "Duration p50 / p95".into(),
            format!("{} / {}", ms(c.p50_ms), ms(c.p95_ms)),
            format!("{} / {}", ms(p.p50_ms), ms(p.p95_ms)),
            String::new(),
        ],
    ]
}

/// Markdown: a heading, the figures table and the top lists.
pub fn markdown(report: &Report) -> String {
    let s = &report.summary;
    let mut out = format!(
        "# memoji-worker report: last {} ({} – {})\n\n| figure | this period | previous period | change |\n| --- | ---: | ---: | ---: |\n",
        s.since, s.from, s.to
    );
    for [name, now, before, change] in rows(report) {
        out.push_str(&format!("| {name} | {now} | {before} | {change} |\n"));
    }
    for (title, list) in [
        ("Top configurations by uses", &report.top_by_uses),
        ("Top configurations by cost saved", &report.top_by_saved),
    ] {
        out.push_str(&format!(
            "\n## {title} (all time)\n\n| configuration | uses | hits | saved (USD) |\n| --- | ---: | ---: | ---: |\n"
        ));
        if list.is_empty() {
            out.push_str("| (none yet) | | | |\n");
        }
        for config in list {
            out.push_str(&format!(
                "| {} (`{}`) | {} | {} | {:.4} |\n",
                md_cell(&config.label),
                config.prompt_hash.get(..12).unwrap_or(&config.prompt_hash),
                config.uses,
                config.hits,
                config.saved_usd
            ));
        }
    }
    out
}

fn md_cell(text: &str) -> String {
    text.replace('|', "\\|").replace('\n', " ")
}

/// HTML escaping for text and attribute values.
pub(crate) fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

/// A standalone HTML page (no scripts, no outside resources), for a mail.
pub fn html(report: &Report) -> String {
    let s = &report.summary;
    let mut out = format!(
        "<!doctype html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><meta name=\"viewport\" content=\"width=device-width, initial-scale=1\"><title>memoji-worker report</title></head><body>\n<h1>memoji-worker report: last {}</h1>\n<p>{} – {}</p>\n<table border=\"1\" cellpadding=\"4\"><tr><th>figure</th><th>this period</th><th>previous period</th><th>change</th></tr>\n",
        escape(&s.since),
        escape(&s.from),
        escape(&s.to)
    );
    for row in rows(report) {
        out.push_str("<tr>");
        for cell in row {
            out.push_str(&format!("<td>{}</td>", escape(&cell)));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n");
    for (title, list) in [
        ("Top configurations by uses", &report.top_by_uses),
        ("Top configurations by cost saved", &report.top_by_saved),
    ] {
        out.push_str(&format!(
            "<h2>{title} (all time)</h2>\n<table border=\"1\" cellpadding=\"4\"><tr><th>configuration</th><th>uses</th><th>hits</th><th>saved (USD)</th></tr>\n"
        ));
        for config in list {
            out.push_str(&format!(
                "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td></tr>\n",
                escape(&config.label),
                config.uses,
                config.hits,
                config.saved_usd
            ));
        }
        out.push_str("</table>\n");
    }
    out.push_str("</body></html>\n");
    out
}

/// The report in `format`.
pub fn render(report: &Report, format: Format) -> Result<String, serde_json::Error> {
    Ok(match format {
        Format::Md => markdown(report),
        Format::Json => serde_json::to_string_pretty(report)? + "\n",
        Format::Html => html(report),
    })
}
