//! Progress bars on stderr (indicatif) with a tokens-per-second readout; hidden when stderr is no terminal.

use std::time::Instant;

use indicatif::{ProgressBar, ProgressStyle};

/// A progress bar over work items that counts processed tokens.
pub struct Progress {
    bar: ProgressBar,
    start: Instant,
    tokens: u64,
}

impl Progress {
    /// A bar of `total` items labelled `label`.
    pub fn new(total: u64, label: &str) -> Self {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{prefix:>14} [{bar:30}] {pos}/{len} {msg} ({elapsed})")
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
        );
        bar.set_prefix(label.to_string());
        Progress { bar, start: Instant::now(), tokens: 0 }
    }

    /// A bar that draws nothing (one item of a staged evaluation: its caller reports progress).
    pub fn hidden() -> Self {
        Progress { bar: ProgressBar::hidden(), start: Instant::now(), tokens: 0 }
    }

    /// One item done, having processed `tokens` tokens.
    pub fn advance(&mut self, tokens: u64) {
        self.tokens += tokens;
        let secs = self.start.elapsed().as_secs_f64().max(1e-9);
        self.bar.set_message(format!("{:.0} tok/s", self.tokens as f64 / secs));
        self.bar.inc(1);
    }

    /// Close the bar.
    pub fn finish(&self) {
        self.bar.finish_and_clear();
    }
}
