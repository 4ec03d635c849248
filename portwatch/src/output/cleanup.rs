//! `cleanup`'s report as text.
use std::time::Duration;

use crate::{
    output::{esc, free},
    service::judge::CleanupReport,
};

pub fn render(r: &CleanupReport, force: bool, grace: Duration) -> String {
    let mut s = String::new();
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
