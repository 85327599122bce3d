//! Progress of long command-line work (`dlq replay`, `pending --ack/--claim`,
//! `status` over many groups): a bar on a terminal, nothing when stderr is
//! piped or redirected, so scripts and logs see only the result.

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use std::io::IsTerminal;

/// A bar over `total` steps of `what`; hidden unless stderr is a terminal.
pub struct Progress(ProgressBar);

impl Progress {
    /// Starts a bar of `total` steps, labelled `what`.
    pub fn new(total: u64, what: &str) -> Self {
        let target = if std::io::stderr().is_terminal() {
            ProgressDrawTarget::stderr()
        } else {
            ProgressDrawTarget::hidden()
        };
        let bar = ProgressBar::with_draw_target(Some(total), target);
        if let Ok(style) =
            ProgressStyle::with_template("{msg} [{bar:30}] {pos}/{len} ({per_sec}, {eta} left)")
        {
            bar.set_style(style.progress_chars("=> "));
        }
        bar.set_message(what.to_string());
        Progress(bar)
    }

    /// `n` more steps done.
    pub fn advance(&self, n: u64) {
        self.0.inc(n);
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.0.finish_and_clear();
    }
}
