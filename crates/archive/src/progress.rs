//! The progress bar of an export (and of `ccrelay replay`) on stderr, drawn only when stderr is a
//! terminal: nothing at all in a pipe, a file, a systemd journal or a test.
//!
//! Rows come in time order, so the bar measures time: how far the last row read is from the
//! first one towards the end of the range, with the count of rows and the time reached. That
//! costs no counting query before the export starts.

use std::io::IsTerminal as _;
use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use time::OffsetDateTime;

/// A progress bar over a time range, hidden unless stderr is a terminal.
pub struct Progress {
    bar: ProgressBar,
    /// Where the bar starts: the time of the first row seen.
    first: Option<OffsetDateTime>,
    until: OffsetDateTime,
    rows: u64,
}

impl Progress {
    /// A bar labelled `label` (`messages`, `replay`) for rows up to `until`.
    pub fn new(label: &str, until: OffsetDateTime) -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr_with_hz(4)
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(0), target);
        let style =
            ProgressStyle::with_template("{prefix} [{wide_bar}] {percent:>3}% {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> ");
        bar.set_style(style);
        bar.set_prefix(label.to_owned());
        bar.enable_steady_tick(Duration::from_millis(500));
        Progress {
            bar,
            first: None,
            until,
            rows: 0,
        }
    }

    /// `rows` more rows were written, the last of them stored at `at`.
    pub fn advance(&mut self, rows: u64, at: OffsetDateTime) {
        self.rows += rows;
        let first = *self.first.get_or_insert_with(|| {
            let len = micros_between(at, self.until);
            self.bar.set_length(len.max(1));
            at
        });
        self.bar.set_position(micros_between(first, at));
        let f = time::macros::format_description!("[year]-[month]-[day] [hour]:[minute]");
        self.bar.set_message(format!(
            "{} rows, at {}",
            self.rows,
            at.format(&f).unwrap_or_default()
        ));
    }

    /// Rows written so far.
    pub fn rows(&self) -> u64 {
        self.rows
    }

    /// Ends the bar, leaving its last state on the terminal with `note`.
    pub fn finish(&self, note: &str) {
        if let Some(len) = self.bar.length() {
            self.bar.set_position(len);
        }
        self.bar
            .finish_with_message(format!("{} rows {note}", self.rows));
    }
}

/// Microseconds from `a` to `b`, 0 if `b` is not later.
fn micros_between(a: OffsetDateTime, b: OffsetDateTime) -> u64 {
    u64::try_from((b - a).whole_microseconds()).unwrap_or(0)
}
