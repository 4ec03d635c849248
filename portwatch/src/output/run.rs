//! What `run` says about the processes in its way and those it ended.
use crate::{
    model::{
        plan::{Ending, Leftover, Signal},
        socket::{Proto, Socket},
    },
    output::{age, esc, truncate},
};

/// One line per holder of a port the run needs: who, since when, which CI job left
/// it, its command line; then what to do.
pub fn in_the_way(sockets: &[Socket]) -> Vec<String> {
    let mut out = Vec::new();
    for s in sockets {
        for h in &s.holders {
            let p = &h.proc;
            let job = s.job.as_deref().map_or_else(String::new, |j| format!(", job {}", esc(j)));
            out.push(format!(
                "port {} is held by {}, up {}{job}: {}",
                s.port,
                esc(&p.brief()),
                age(p.age_secs),
                esc(&truncate(&p.cmdline, 200))
            ));
        }
        if s.holders.is_empty() {
            out.push(format!("port {} is held by a socket no process shows (see: portwatch who {})", s.port, s.port));
        }
    }
    let mut ports: Vec<u16> = sockets.iter().map(|s| s.port).collect();
    ports.dedup();
    let list: Vec<String> = ports.iter().map(ToString::to_string).collect();
    out.push(format!("not starting the command; free the port with --free, or see: portwatch who {}", list.join(",")));
    out
}

fn ports_text(ports: &[(Proto, u16)]) -> String {
    if ports.is_empty() {
        return String::new();
    }
    let v: Vec<String> = ports.iter().map(|(p, port)| format!("{port}/{}", p.name())).collect();
    format!(", port{} {}", if v.len() == 1 { "" } else { "s" }, v.join(" "))
}

/// The processes a run ended: one line each, with the ports it held and the
/// signals it got (or why it was left alone).
pub fn ended(why: &str, leftovers: &[Leftover], ending: &Ending) -> Vec<String> {
    let dry =
        ending.targets.is_empty() && ending.refused.is_empty() && ending.outcome.signals.is_empty() && ending.outcome.skipped.is_empty();
    let verb = if dry { "would end" } else { "ending" };
    let mut out =
        vec![format!("{}; {verb} {} process{} of the run:", esc(why), leftovers.len(), if leftovers.len() == 1 { "" } else { "es" })];
    for l in leftovers {
        let pid = l.proc.pid;
        let sigs: Vec<&str> =
            ending.outcome.signals.iter().filter(|s| s.pid == pid && s.signal != Signal::Cont).map(|s| s.signal.name()).collect();
        let fate = if let Some(k) = ending.outcome.skipped.iter().find(|k| k.pid == pid) {
            format!("not signalled: {}", esc(&k.why))
        } else if let Some((_, r)) = ending.refused.iter().find(|(p, _)| *p == pid) {
            format!("refused: {}", esc(&r.to_string()))
        } else if ending.outcome.survivors.contains(&pid) {
            format!("{} (still alive)", sigs.join(", "))
        } else if sigs.is_empty() && ending.targets.is_empty() {
            "would get SIGTERM, then SIGKILL (dry run)".into()
        } else if sigs.is_empty() {
            "exited".into()
        } else {
            sigs.join(", then ")
        };
        out.push(format!("  {}{}: {}: {fate}", esc(&l.proc.brief()), ports_text(&l.ports), esc(&truncate(&l.proc.cmdline, 120))));
    }
    out
}
