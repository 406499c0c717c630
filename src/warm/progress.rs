//! What a warming run shows while it works: a progress bar on a terminal (done / total, spend so
//! far, ETA), plain lines otherwise (one per finished generation, for logs and pipes), nothing
//! for the scheduler.

use std::io::Write;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Done, Line, Report};

/// How a run shows its progress: a bar, plain lines, or nothing.
pub enum Progress {
    /// A progress bar (a terminal).
    Bar(ProgressBar),
    /// One line per finished generation (logs and pipes).
    Lines {
        /// Where the lines go.
        out: Box<dyn Write + Send>,
        /// Generations to do.
        total: usize,
        /// Generations finished so far.
        done: usize,
    },
    /// Nothing shown (the scheduler).
    Quiet,
}

impl Progress {
    /// A bar on stderr when it is a terminal, else plain lines on stderr.
    pub fn for_stderr() -> Progress {
        use std::io::IsTerminal as _;
        if std::io::stderr().is_terminal() {
            Progress::Bar(ProgressBar::with_draw_target(
                None,
                ProgressDrawTarget::stderr(),
            ))
        } else {
            Progress::lines(Box::new(std::io::stderr()))
        }
    }

    /// Plain lines to `out`.
    pub fn lines(out: Box<dyn Write + Send>) -> Progress {
        Progress::Lines {
            out,
            total: 0,
            done: 0,
        }
    }

    pub(super) fn start(&mut self, total: usize, estimate_usd: f64) {
        match self {
            Progress::Bar(bar) => {
                bar.set_length(total as u64);
                let style =
                    ProgressStyle::with_template("warming {bar:30} {pos}/{len} {msg} ETA {eta}")
                        .unwrap_or_else(|_| ProgressStyle::default_bar());
                bar.set_style(style);
                bar.set_message(format!("spent $0.0000 of ~${estimate_usd:.4}"));
            }
            Progress::Lines { out, total: t, .. } => {
                *t = total;
                let _ = writeln!(
                    out,
                    "warm: {total} to generate, estimated ${estimate_usd:.4}"
                );
            }
            Progress::Quiet => {}
        }
    }

    pub(super) fn yielding(&mut self, queued: u32, live: i64) {
        let text = format!("warm: giving way to live jobs ({queued} queued, {live} generating)");
        match self {
            Progress::Bar(bar) => bar.set_message(text),
            Progress::Lines { out, .. } => {
                let _ = writeln!(out, "{text}");
            }
            Progress::Quiet => tracing::info!(queued, live, "warming gives way to live jobs"),
        }
    }

    /// Where a batch is at OpenAI (each poll).
    pub(super) fn batch(&mut self, batch: &crate::generate::batch::Batch) {
        let counts = batch.request_counts;
        let text = format!(
            "warm: batch {} {}: {}/{} answered, {} failed",
            batch.id,
            batch.status.as_str(),
            counts.completed,
            counts.total,
            counts.failed
        );
        match self {
            Progress::Bar(bar) => bar.set_message(text),
            Progress::Lines { out, .. } => {
                let _ = writeln!(out, "{text}");
            }
            Progress::Quiet => {
                tracing::debug!(batch = %batch.id, status = batch.status.as_str(), "warming batch polled")
            }
        }
    }

    /// A done batch's answers are read now: `lines` of them still to handle.
    pub(super) fn answers(&mut self, batch: &str, lines: usize) {
        let text = format!("warm: batch {batch}: handling the answers of {lines} line(s)");
        match self {
            Progress::Bar(bar) => {
                bar.set_length(lines as u64);
                bar.set_position(0);
                bar.set_message(text);
            }
            Progress::Lines { out, total, done } => {
                *total = lines;
                *done = 0;
                let _ = writeln!(out, "{text}");
            }
            Progress::Quiet => {}
        }
    }

    pub(super) fn step(&mut self, line: &Line, spent: f64) {
        let what = match &line.done {
            Done::Generated { cost_usd } => format!("generated ${cost_usd:.4}"),
            Done::Skipped => "skipped (cached or generating elsewhere)".to_owned(),
            Done::Dropped { cost_usd } => {
                format!("dropped, a live job made it (${cost_usd:.4} wasted)")
            }
            Done::Failed { message } => format!("failed: {message}"),
        };
        match self {
            Progress::Bar(bar) => {
                bar.inc(1);
                bar.set_message(format!("spent ${spent:.4}"));
                if matches!(line.done, Done::Failed { .. }) {
                    bar.println(format!("{} {}: {what}", line.origin, line.key));
                }
            }
            Progress::Lines { out, total, done } => {
                *done += 1;
                let _ = writeln!(
                    out,
                    "warm: {done}/{total} {} {} {what} (spent ${spent:.4})",
                    line.origin, line.key
                );
            }
            Progress::Quiet => {}
        }
    }

    pub(super) fn finish(&mut self, report: &Report) {
        let text = format!(
            "warm: done: {} generated, {} skipped, {} dropped, {} failed, {} over budget; spent ${:.4}",
            report.generated,
            report.skipped,
            report.dropped,
            report.failed,
            report.over_budget,
            report.spent_usd
        );
        match self {
            Progress::Bar(bar) => {
                bar.finish_with_message(format!("spent ${:.4}", report.spent_usd))
            }
            Progress::Lines { out, .. } => {
                let _ = writeln!(out, "{text}");
            }
            Progress::Quiet => {}
        }
    }
}
