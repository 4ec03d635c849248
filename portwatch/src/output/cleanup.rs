//! `cleanup`'s report as text.
use std::time::Duration;

use crate::{
    output::{esc, free},
    service::judge::CleanupReport,
};

pub fn render(r: &CleanupReport, force: bool, grace: Duration, runs_only: bool) -> String {
    let mut s = String::new();
    for run in &r.runs {
        let why = format!("{} (its supervisor, pid {}, is gone)", run.run.dir.display(), run.run.owner.pid);
        if run.leftovers.is_empty() {
            s.push_str(&format!("killed run {}: nothing left\n", esc(&why)));
        } else {
            for line in super::run::ended(&format!("killed run {why}"), &run.leftovers, &run.ending) {
                s.push_str(&line);
                s.push('\n');
            }
        }
    }
    if runs_only {
        if r.runs.is_empty() {
            s.push_str("no killed runs left anything\n");
        }
        return s;
    }
    if r.verdicts.is_empty() {
        s.push_str("no stuck listeners\n");
    }
    for v in &r.verdicts {
        let reasons: Vec<&str> = v.reasons.iter().map(|r| r.kind.name()).collect();
        let evidence: Vec<&str> = v.reasons.iter().map(|r| r.evidence.as_str()).collect();
        s.push_str(&format!("port {}: stuck ({}): {}\n", v.port, reasons.join(","), esc(&evidence.join("; "))));
    }
    s.push_str(&free::render(&r.reaped, force, grace));
    for p in &r.healthy {
        s.push_str(&format!("port {p}: healthy, left alone\n"));
    }
    s
}
