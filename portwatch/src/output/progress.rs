//! Live progress for `wait` (and `run`): spinners on a terminal, one line per state
//! change otherwise.
use std::{io::IsTerminal, time::Duration};

use crate::output::esc;

pub struct Progress {
    multi: indicatif::MultiProgress,
    bars: Vec<Option<indicatif::ProgressBar>>,
    labels: Vec<String>,
    quiet: bool,
}

impl Progress {
    /// One line (or spinner) per label; `quiet` prints nothing.
    pub fn new(labels: Vec<String>, quiet: bool) -> Self {
        let tty = std::io::stderr().is_terminal() && !quiet;
        let multi = indicatif::MultiProgress::new();
        let style = indicatif::ProgressStyle::with_template("{spinner} {prefix} [{elapsed}] {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
        let bars = labels
            .iter()
            .map(|l| {
                tty.then(|| {
                    let b = multi.add(indicatif::ProgressBar::new_spinner());
                    b.set_style(style.clone());
                    b.set_prefix(esc(l).into_owned());
                    b.enable_steady_tick(Duration::from_millis(100));
                    b
                })
            })
            .collect();
        Self { multi, bars, labels, quiet }
    }

    pub fn update(&self, i: usize, msg: &str) {
        match self.bars.get(i) {
            Some(Some(b)) => b.set_message(esc(msg).into_owned()),
            _ if !self.quiet => eprintln!("portwatch: {}: {}", esc(self.labels.get(i).map_or("", String::as_str)), esc(msg)),
            _ => {}
        }
    }

    pub fn finish(&self) {
        let _ = self.multi.clear();
    }
}
