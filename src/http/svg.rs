//! The dashboard's charts, drawn here as SVG text: no chart library, no script, nothing fetched.
//!
//! Readable without colour: every series has its own line dash and marker, or its own fill
//! pattern (solid, hatched, cross-hatched, dotted), a legend that shows that pattern beside the
//! name in words, and figures written as text (axis values, the last value of each line, each
//! bar's count). Colours only add to that. Presentation attributes (`fill=`, `stroke=`) rather
//! than `style=`, so the page's CSP needs no inline styles.

use std::fmt::Write as _;

use crate::stats::report::escape;

const WIDTH: f64 = 640.0;
const HEIGHT: f64 = 240.0;
const LEFT: f64 = 56.0;
const RIGHT: f64 = 64.0;
const TOP: f64 = 36.0;
const BOTTOM: f64 = 40.0;

/// How a series is told apart without colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Look {
    /// A solid dark line with round markers; a solid fill.
    Solid,
    /// A dashed line with square markers; a hatched fill.
    Dashed,
    /// A dotted line with triangle markers; a cross-hatched fill.
    Dotted,
    /// A dotted fill (bars only; lines draw as dash-dot).
    Dots,
}

impl Look {
    fn colour(self) -> &'static str {
        match self {
            Look::Solid => "#1f4e79",
            Look::Dashed => "#b35900",
            Look::Dotted => "#8b1a1a",
            Look::Dots => "#555555",
        }
    }

    fn dash(self) -> &'static str {
        match self {
            Look::Solid => "",
            Look::Dashed => " stroke-dasharray=\"8 4\"",
            Look::Dotted => " stroke-dasharray=\"2 3\"",
            Look::Dots => " stroke-dasharray=\"8 3 2 3\"",
        }
    }

    fn fill(self) -> String {
        match self {
            Look::Solid => self.colour().to_owned(),
            Look::Dashed => "url(#hatch)".to_owned(),
            Look::Dotted => "url(#cross)".to_owned(),
            Look::Dots => "url(#dots)".to_owned(),
        }
    }

    fn marker(self, x: f64, y: f64) -> String {
        let c = self.colour();
        match self {
            Look::Solid => format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"2.5\" fill=\"{c}\"/>"),
            Look::Dashed => format!(
                "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"5\" height=\"5\" fill=\"{c}\"/>",
                x - 2.5,
                y - 2.5
            ),
            Look::Dotted | Look::Dots => format!(
                "<path d=\"M{:.1} {:.1} l3 5 h-6 z\" fill=\"{c}\"/>",
                x,
                y - 3.0
            ),
        }
    }

    /// What the legend says the look is, for a reader who cannot see it.
    fn words(self, bars: bool) -> &'static str {
        match (self, bars) {
            (Look::Solid, false) => "solid line, dots",
            (Look::Dashed, false) => "dashed line, squares",
            (Look::Dotted, false) => "dotted line, triangles",
            (Look::Dots, false) => "dash-dot line, triangles",
            (Look::Solid, true) => "solid",
            (Look::Dashed, true) => "hatched",
            (Look::Dotted, true) => "cross-hatched",
            (Look::Dots, true) => "dotted",
        }
    }
}

/// One line or one bar layer.
pub(crate) struct Series<'a> {
    pub name: &'a str,
    pub values: Vec<Option<f64>>,
    pub look: Look,
}

const PATTERNS: &str = "<defs>\
<pattern id=\"hatch\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\" patternTransform=\"rotate(45)\">\
<rect width=\"6\" height=\"6\" fill=\"#f3d9bf\"/><line x1=\"0\" y1=\"0\" x2=\"0\" y2=\"6\" stroke=\"#b35900\" stroke-width=\"3\"/></pattern>\
<pattern id=\"cross\" width=\"6\" height=\"6\" patternUnits=\"userSpaceOnUse\">\
<rect width=\"6\" height=\"6\" fill=\"#f2d0d0\"/><path d=\"M0 0 L6 6 M6 0 L0 6\" stroke=\"#8b1a1a\" stroke-width=\"1.2\"/></pattern>\
<pattern id=\"dots\" width=\"5\" height=\"5\" patternUnits=\"userSpaceOnUse\">\
<rect width=\"5\" height=\"5\" fill=\"#eeeeee\"/><circle cx=\"2.5\" cy=\"2.5\" r=\"1.3\" fill=\"#333333\"/></pattern>\
</defs>";

/// A round number at or above `max`, for the top of an axis (1, 2, 5 × 10^n).
fn nice_max(max: f64) -> f64 {
    if max <= 0.0 || !max.is_finite() {
        return 1.0;
    }
    let magnitude = 10f64.powf(max.log10().floor());
    for step in [1.0, 2.0, 5.0, 10.0] {
        if step * magnitude >= max {
            return step * magnitude;
        }
    }
    10.0 * magnitude
}

/// A figure as an axis or bar label: no needless decimals.
pub(crate) fn figure(value: f64) -> String {
    if value == 0.0 {
        "0".to_owned()
    } else if value.abs() >= 100.0 || value.fract() == 0.0 {
        format!("{value:.0}")
    } else if value.abs() >= 1.0 {
        format!("{value:.2}")
    } else {
        format!("{value:.4}")
    }
}

fn open(out: &mut String, id: &str, title: &str, summary: &str) {
    let _ = write!(
        out,
        "<svg class=\"chart\" id=\"{id}\" viewBox=\"0 0 {WIDTH} {HEIGHT}\" width=\"100%\" role=\"img\" \
         aria-labelledby=\"{id}-t {id}-d\" xmlns=\"http://www.w3.org/2000/svg\" font-family=\"sans-serif\" font-size=\"11\">\
         <title id=\"{id}-t\">{}</title><desc id=\"{id}-d\">{}</desc>{PATTERNS}",
        escape(title),
        escape(summary)
    );
}

fn axes(out: &mut String, top: f64, unit: &str, labels: &[String]) {
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    for i in 0..=4 {
        let y = TOP + plot_h * f64::from(i) / 4.0;
        let value = top * f64::from(4 - i) / 4.0;
        let _ = write!(
            out,
            "<line x1=\"{LEFT}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#cccccc\" stroke-width=\"0.6\"/>\
             <text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#222222\">{}{}</text>",
            LEFT + plot_w,
            LEFT - 4.0,
            y + 4.0,
            figure(value),
            escape(unit)
        );
    }
    let n = labels.len().max(1);
    let every = n.div_ceil(6).max(1);
    for (i, label) in labels.iter().enumerate() {
        if i % every != 0 && i != n - 1 {
            continue;
        }
        let x = LEFT + plot_w * (i as f64 + 0.5) / n as f64;
        let _ = write!(
            out,
            "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#222222\">{}</text>",
            HEIGHT - BOTTOM + 14.0,
            escape(label)
        );
    }
    let _ = write!(
        out,
        "<line x1=\"{LEFT}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" stroke=\"#222222\"/>",
        TOP + plot_h,
        LEFT + plot_w,
        TOP + plot_h
    );
}

fn legend(out: &mut String, series: &[Series<'_>], bars: bool) {
    let mut x = LEFT;
    for s in series {
        let c = s.look.colour();
        if bars {
            let _ = write!(
                out,
                "<rect x=\"{x:.1}\" y=\"10\" width=\"14\" height=\"10\" fill=\"{}\" stroke=\"{c}\"/>",
                s.look.fill()
            );
        } else {
            let _ = write!(
                out,
                "<line x1=\"{x:.1}\" y1=\"15\" x2=\"{:.1}\" y2=\"15\" stroke=\"{c}\" stroke-width=\"2\"{}/>{}",
                x + 18.0,
                s.look.dash(),
                s.look.marker(x + 9.0, 15.0)
            );
        }
        let text = format!("{} ({})", s.name, s.look.words(bars));
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"19\" fill=\"#222222\">{}</text>",
            x + 22.0,
            escape(&text)
        );
        x += 30.0 + text.chars().count() as f64 * 5.6;
    }
}

/// Lines over time (one value per label; `None` leaves a gap).
pub(crate) fn lines(
    id: &str,
    title: &str,
    unit: &str,
    labels: &[String],
    series: &[Series<'_>],
) -> String {
    let max = series
        .iter()
        .flat_map(|s| s.values.iter().flatten())
        .fold(0.0f64, |a, &b| a.max(b));
    let top = nice_max(max);
    let summary = series
        .iter()
        .map(|s| {
            let last = s.values.iter().rev().flatten().next();
            format!(
                "{}: last {}",
                s.name,
                last.map_or("none".to_owned(), |v| format!("{}{unit}", figure(*v)))
            )
        })
        .collect::<Vec<_>>()
        .join("; ");
    let mut out = String::new();
    open(&mut out, id, title, &summary);
    axes(&mut out, top, unit, labels);
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let n = labels.len().max(1) as f64;
    let at = |i: usize, v: f64| {
        (
            LEFT + plot_w * (i as f64 + 0.5) / n,
            TOP + plot_h * (1.0 - v / top),
        )
    };
    for s in series {
        let c = s.look.colour();
        let mut path = String::new();
        let mut pen_up = true;
        let mut markers = String::new();
        let dense = s.values.len() > 60;
        for (i, v) in s.values.iter().enumerate() {
            match v {
                Some(v) => {
                    let (x, y) = at(i, *v);
                    let _ = write!(path, "{}{x:.1} {y:.1} ", if pen_up { "M" } else { "L" });
                    pen_up = false;
                    if !dense {
                        markers.push_str(&s.look.marker(x, y));
                    }
                }
                None => pen_up = true,
            }
        }
        if !path.is_empty() {
            let _ = write!(
                out,
                "<path class=\"series\" data-series=\"{}\" d=\"{}\" fill=\"none\" stroke=\"{c}\" stroke-width=\"2\"{}/>{markers}",
                escape(s.name),
                path.trim_end(),
                s.look.dash()
            );
        }
        if let Some((i, v)) = s
            .values
            .iter()
            .enumerate()
            .rev()
            .find_map(|(i, v)| v.map(|v| (i, v)))
        {
            let (x, y) = at(i, v);
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#222222\">{}{}</text>",
                x + 6.0,
                y + 4.0,
                figure(v),
                escape(unit)
            );
        }
    }
    legend(&mut out, series, false);
    out.push_str("</svg>");
    out
}

/// Stacked bars over time (one stack per label).
pub(crate) fn stacked(id: &str, title: &str, labels: &[String], series: &[Series<'_>]) -> String {
    let totals: Vec<f64> = (0..labels.len())
        .map(|i| {
            series
                .iter()
                .map(|s| s.values.get(i).copied().flatten().unwrap_or(0.0))
                .sum()
        })
        .collect();
    let top = nice_max(totals.iter().copied().fold(0.0, f64::max));
    let summary = series
        .iter()
        .map(|s| format!("{}: {}", s.name, figure(s.values.iter().flatten().sum())))
        .collect::<Vec<_>>()
        .join("; ");
    let mut out = String::new();
    open(&mut out, id, title, &format!("totals {summary}"));
    axes(&mut out, top, "", labels);
    let (plot_w, plot_h) = (WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM);
    let n = labels.len().max(1) as f64;
    let bar_w = (plot_w / n * 0.8).max(1.0);
    for i in 0..labels.len() {
        let x = LEFT + plot_w * (i as f64 + 0.5) / n - bar_w / 2.0;
        let mut base = 0.0;
        for s in series {
            let v = s.values.get(i).copied().flatten().unwrap_or(0.0);
            if v <= 0.0 {
                continue;
            }
            let (y0, y1) = (
                TOP + plot_h * (1.0 - base / top),
                TOP + plot_h * (1.0 - (base + v) / top),
            );
            let _ = write!(
                out,
                "<rect class=\"bar\" x=\"{x:.1}\" y=\"{y1:.1}\" width=\"{bar_w:.1}\" height=\"{:.1}\" fill=\"{}\" stroke=\"{}\" stroke-width=\"0.5\"><title>{}: {}</title></rect>",
                (y0 - y1).max(0.5),
                s.look.fill(),
                s.look.colour(),
                escape(&labels[i]),
                escape(&format!("{} {}", s.name, figure(v)))
            );
            base += v;
        }
        if base > 0.0 && labels.len() <= 31 {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#222222\" font-size=\"9\">{}</text>",
                x + bar_w / 2.0,
                TOP + plot_h * (1.0 - base / top) - 3.0,
                figure(base)
            );
        }
    }
    legend(&mut out, series, true);
    out.push_str("</svg>");
    out
}

/// One row of a horizontal bar chart: a label and two parts (hits, misses).
pub(crate) struct Bar<'a> {
    pub label: &'a str,
    pub first: f64,
    pub second: f64,
    /// Written after the bar.
    pub note: String,
}

/// Horizontal bars, one per row, split in two parts told apart by pattern.
pub(crate) fn bars(id: &str, title: &str, names: (&str, &str), rows: &[Bar<'_>]) -> String {
    let row_h = 20.0;
    let height = 34.0 + row_h * rows.len().max(1) as f64;
    let label_w = 150.0;
    let plot_w = WIDTH - label_w - 120.0;
    let top = nice_max(rows.iter().map(|r| r.first + r.second).fold(0.0, f64::max));
    let mut out = String::new();
    let summary = rows
        .iter()
        .map(|r| format!("{}: {}", r.label, r.note))
        .collect::<Vec<_>>()
        .join("; ");
    let _ = write!(
        out,
        "<svg class=\"chart\" id=\"{id}\" viewBox=\"0 0 {WIDTH} {height}\" width=\"100%\" role=\"img\" \
         aria-labelledby=\"{id}-t {id}-d\" xmlns=\"http://www.w3.org/2000/svg\" font-family=\"sans-serif\" font-size=\"11\">\
         <title id=\"{id}-t\">{}</title><desc id=\"{id}-d\">{}</desc>{PATTERNS}",
        escape(title),
        escape(&summary)
    );
    let looks = [(names.0, Look::Solid), (names.1, Look::Dashed)];
    let mut x = label_w;
    for (name, look) in looks {
        let text = format!("{name} ({})", look.words(true));
        let _ = write!(
            out,
            "<rect x=\"{x:.1}\" y=\"8\" width=\"14\" height=\"10\" fill=\"{}\" stroke=\"{}\"/>\
             <text x=\"{:.1}\" y=\"17\" fill=\"#222222\">{}</text>",
            look.fill(),
            look.colour(),
            x + 18.0,
            escape(&text)
        );
        x += 30.0 + text.chars().count() as f64 * 5.6;
    }
    if rows.is_empty() {
        let _ = write!(
            out,
            "<text x=\"{label_w}\" y=\"44\" fill=\"#222222\">no jobs in this period</text>"
        );
    }
    for (i, row) in rows.iter().enumerate() {
        let y = 28.0 + row_h * i as f64;
        let shown: String = row.label.chars().take(24).collect();
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#222222\">{}</text>",
            label_w - 6.0,
            y + 12.0,
            escape(&shown)
        );
        let w1 = plot_w * row.first / top;
        let w2 = plot_w * row.second / top;
        for (offset, w, look) in [(0.0, w1, Look::Solid), (w1, w2, Look::Dashed)] {
            if w > 0.0 {
                let _ = write!(
                    out,
                    "<rect class=\"bar\" x=\"{:.1}\" y=\"{y:.1}\" width=\"{w:.1}\" height=\"14\" fill=\"{}\" stroke=\"{}\" stroke-width=\"0.5\"/>",
                    label_w + offset,
                    look.fill(),
                    look.colour()
                );
            }
        }
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#222222\">{}</text>",
            label_w + w1 + w2 + 4.0,
            y + 12.0,
            escape(&row.note)
        );
    }
    out.push_str("</svg>");
    out
}

/// One row of an interval chart: an estimate and its 95 % confidence interval.
pub(crate) struct Estimate<'a> {
    pub label: &'a str,
    pub estimate: f64,
    pub low: f64,
    pub high: f64,
    /// The figures in words, written beside the row.
    pub note: String,
}

/// Horizontal bars from zero to each row's estimate, with its 95 % confidence interval drawn
/// over the bar as a black line with end marks, and a zero line. Told apart by shape, not
/// colour; each row's figures are written beside it, and the legend says what the marks mean.
pub(crate) fn intervals(id: &str, title: &str, unit: &str, rows: &[Estimate<'_>]) -> String {
    let row_h = 24.0;
    let height = 56.0 + row_h * rows.len().max(1) as f64;
    let label_w = 90.0;
    let plot_w = WIDTH - label_w - 290.0;
    let low = rows
        .iter()
        .map(|r| r.low.min(r.estimate))
        .fold(0.0, f64::min);
    let high = rows
        .iter()
        .map(|r| r.high.max(r.estimate))
        .fold(0.0, f64::max);
    let (low, high) = if high - low <= 0.0 {
        (0.0, 1.0)
    } else {
        (low, high)
    };
    let x = |v: f64| label_w + plot_w * (v - low) / (high - low);
    let mut out = String::new();
    let summary = rows
        .iter()
        .map(|r| format!("{}: {}", r.label, r.note))
        .collect::<Vec<_>>()
        .join("; ");
    let _ = write!(
        out,
        "<svg class=\"chart\" id=\"{id}\" viewBox=\"0 0 {WIDTH} {height}\" width=\"100%\" role=\"img\" \
         aria-labelledby=\"{id}-t {id}-d\" xmlns=\"http://www.w3.org/2000/svg\" font-family=\"sans-serif\" font-size=\"11\">\
         <title id=\"{id}-t\">{}</title><desc id=\"{id}-d\">{}</desc>{PATTERNS}",
        escape(title),
        escape(&summary)
    );
    let look = Look::Solid;
    let _ = write!(
        out,
        "<rect x=\"{label_w}\" y=\"8\" width=\"14\" height=\"10\" fill=\"url(#hatch)\" stroke=\"{}\"/>\
         <text x=\"{:.1}\" y=\"17\" fill=\"#222222\">estimate (hatched bar)</text>\
         <line x1=\"{:.1}\" y1=\"13\" x2=\"{:.1}\" y2=\"13\" stroke=\"#000000\" stroke-width=\"2\"/>\
         <line x1=\"{:.1}\" y1=\"8\" x2=\"{:.1}\" y2=\"18\" stroke=\"#000000\" stroke-width=\"2\"/>\
         <line x1=\"{:.1}\" y1=\"8\" x2=\"{:.1}\" y2=\"18\" stroke=\"#000000\" stroke-width=\"2\"/>\
         <text x=\"{:.1}\" y=\"17\" fill=\"#222222\">95% confidence interval (line with end marks)</text>",
        look.colour(),
        label_w + 18.0,
        label_w + 150.0,
        label_w + 174.0,
        label_w + 150.0,
        label_w + 150.0,
        label_w + 174.0,
        label_w + 174.0,
        label_w + 180.0
    );
    if rows.is_empty() {
        let _ = write!(
            out,
            "<text x=\"{label_w}\" y=\"48\" fill=\"#222222\">no jobs in this period</text>"
        );
    }
    let top = 28.0;
    let bottom = top + row_h * rows.len().max(1) as f64;
    // The zero line, and the axis' ends in words (an end too close to zero is left to the zero).
    let zero = x(0.0);
    let _ = write!(
        out,
        "<line x1=\"{zero:.1}\" y1=\"{top}\" x2=\"{zero:.1}\" y2=\"{bottom:.1}\" stroke=\"#222222\" stroke-width=\"1.2\"/>\
         <text x=\"{zero:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"#222222\">0</text>",
        bottom + 14.0
    );
    for (value, anchor) in [(low, "start"), (high, "end")] {
        if (x(value) - zero).abs() > 40.0 {
            let _ = write!(
                out,
                "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"{anchor}\" fill=\"#222222\">{}{}</text>",
                x(value),
                bottom + 14.0,
                figure(value),
                escape(unit)
            );
        }
    }
    for (i, row) in rows.iter().enumerate() {
        let y = top + row_h * i as f64;
        let shown: String = row.label.chars().take(14).collect();
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"#222222\">{}</text>",
            label_w - 6.0,
            y + 14.0,
            escape(&shown)
        );
        let (from, to) = (x(0.0).min(x(row.estimate)), x(0.0).max(x(row.estimate)));
        let _ = write!(
            out,
            "<rect class=\"bar\" x=\"{from:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"12\" fill=\"url(#hatch)\" stroke=\"{}\" stroke-width=\"0.5\"/>",
            y + 4.0,
            (to - from).max(1.0),
            look.colour()
        );
        let (l, h, mid) = (x(row.low), x(row.high), y + 10.0);
        let _ = write!(
            out,
            "<path class=\"ci\" d=\"M{l:.1} {mid:.1} H{h:.1} M{l:.1} {:.1} V{:.1} M{h:.1} {:.1} V{:.1}\" stroke=\"#000000\" stroke-width=\"2\" fill=\"none\"/>",
            mid - 6.0,
            mid + 6.0,
            mid - 6.0,
            mid + 6.0
        );
        let _ = write!(
            out,
            "<text x=\"{:.1}\" y=\"{:.1}\" fill=\"#222222\">{}</text>",
            label_w + plot_w + 8.0,
            y + 14.0,
            escape(&row.note)
        );
    }
    out.push_str("</svg>");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn axes_end_on_round_numbers() {
        assert_eq!(nice_max(0.0), 1.0);
        assert_eq!(nice_max(7.0), 10.0);
        assert_eq!(nice_max(130.0), 200.0);
        assert_eq!(nice_max(0.042), 0.05);
    }

    #[test]
    fn charts_say_in_words_what_they_show() {
        let labels = vec!["a".to_owned(), "b".to_owned()];
        let svg = lines(
            "x",
            "Hit <ratio>",
            " %",
            &labels,
            &[
                Series {
                    name: "hits",
                    values: vec![Some(10.0), Some(50.0)],
                    look: Look::Solid,
                },
                Series {
                    name: "p95",
                    values: vec![None, Some(5.0)],
                    look: Look::Dashed,
                },
            ],
        );
        assert!(svg.contains("Hit &lt;ratio&gt;"));
        assert!(svg.contains("hits (solid line, dots)"));
        assert!(svg.contains("p95 (dashed line, squares)"));
        assert!(svg.contains("hits: last 50 %"));
        assert_eq!(svg.matches("class=\"series\"").count(), 2);
        let svg = stacked(
            "y",
            "Jobs",
            &labels,
            &[Series {
                name: "hits",
                values: vec![Some(1.0), Some(3.0)],
                look: Look::Dashed,
            }],
        );
        assert_eq!(svg.matches("class=\"bar\"").count(), 2);
        assert!(svg.contains("hits (hatched)"));
        let svg = intervals(
            "z",
            "Difference",
            " pts",
            &[Estimate {
                label: "three",
                estimate: 10.0,
                low: 5.8,
                high: 14.1,
                note: "+10.00 pts (95% CI +5.80 to +14.10): better".to_owned(),
            }],
        );
        assert_eq!(svg.matches("class=\"ci\"").count(), 1);
        assert!(svg.contains("95% confidence interval (line with end marks)"));
        assert!(svg.contains("+10.00 pts (95% CI +5.80 to +14.10): better"));
    }
}
