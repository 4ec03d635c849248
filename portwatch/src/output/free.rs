//! `free`'s reports (and the reaping part of `cleanup`'s) as text.
use std::time::Duration;

use crate::{
    model::plan::{PortReport, Signal},
    output::{esc, fmt_duration, fmt_ms},
};

/// One line per port (plus the plan's steps on a dry run and skipped targets).
pub fn render(reports: &[PortReport], force: bool, grace: Duration) -> String {
    let mut s = String::new();
    for r in reports {
        let p = &r.plan;
        if let Some(why) = &p.refused {
            s.push_str(&format!("port {}: refused: {}\n", r.port, esc(&why.to_string())));
            continue;
        }
        if p.sockets == 0 {
            s.push_str(&format!("port {}: already free\n", r.port));
            continue;
        }
        let who: Vec<String> = p.targets.iter().map(|t| format!("{} ({}, {})", t.proc.pid, esc(&t.proc.comm), t.proc.state)).collect();
        match &r.outcome {
            None => {
                let n = p.targets.len();
                s.push_str(&format!("port {}: would signal {n} process{}: {}\n", r.port, if n == 1 { "" } else { "es" }, who.join(", ")));
                for (i, step) in p.steps.iter().enumerate() {
                    s.push_str(&format!("  {}. {step}\n", i + 1));
                }
            }
            Some(o) if o.freed => {
                let mut sent = format!("SIGTERM to {}", o.count(Signal::Term));
                for sig in [Signal::Cont, Signal::Kill] {
                    if o.count(sig) > 0 {
                        sent.push_str(&format!(", {} to {}", sig.name(), o.count(sig)));
                    }
                }
                s.push_str(&format!("port {}: freed in {} ({sent}): {}\n", r.port, fmt_ms(o.elapsed_ms), who.join(", ")));
            }
            Some(o) => {
                let alive: Vec<String> = o.survivors.iter().map(ToString::to_string).collect();
                let hint = if force { String::new() } else { "; use --force to SIGKILL".to_string() };
                if alive.is_empty() {
                    s.push_str(&format!("port {}: still held after {} (taken again?){hint}\n", r.port, fmt_duration(grace)));
                } else {
                    s.push_str(&format!("port {}: still held by {} after {}{hint}\n", r.port, alive.join(", "), fmt_duration(grace)));
                }
            }
        }
        if let Some(o) = &r.outcome {
            for k in &o.skipped {
                s.push_str(&format!("  skipped {}: {}\n", k.pid, esc(&k.why)));
            }
        }
    }
    s
}
