//! `portwatch free`: get ports back now, with the safe reaping sequence.
use std::time::Duration;

use serde::Serialize;

use crate::{
    config::Protect,
    error::{exit, Result},
    ports::PortSet,
    reap::{self, Outcome, PortPlan, SelfInfo},
    sys::sockdiag::{self, Proto, Query},
    who::{self, SocketReport, WhoOptions},
};

#[derive(Clone, Debug, Default)]
pub struct FreeOptions {
    pub force: bool,
    pub grace: Duration,
    pub dry_run: bool,
    pub tcp: bool,
    pub udp: bool,
    pub protect: Protect,
}

#[derive(Debug, Serialize)]
pub struct PortReport {
    pub port: u16,
    pub plan: PortPlan,
    /// `None` for a dry run.
    pub outcome: Option<Outcome>,
}

/// Whether nothing on `port` holds it for the given protocols.
pub fn port_is_free(port: u16, q: Query) -> bool {
    sockdiag::sockets_on_ports(&[port], q).map(|v| v.is_empty()).unwrap_or(false)
}

/// Plans and (unless dry-run) carries out the reaping of every socket on each port.
pub fn reap_sockets(port: u16, sockets: &[&SocketReport], opts: &FreeOptions, me: &SelfInfo) -> PortReport {
    let plan = reap::plan(port, sockets, me, &opts.protect, opts.force, opts.grace);
    let q = Query {
        tcp: sockets.iter().any(|s| s.proto == Proto::Tcp),
        udp: sockets.iter().any(|s| s.proto == Proto::Udp),
        connections: false,
    };
    let outcome = (!opts.dry_run).then(|| reap::execute(&plan, opts.force, opts.grace, &|p| port_is_free(p, q)));
    PortReport { port, plan, outcome }
}

pub fn run(ports: &PortSet, opts: &FreeOptions) -> Result<(Vec<PortReport>, Vec<String>)> {
    // TCP unless --udp alone; both flags: both.
    let r = who::gather(ports, WhoOptions { tcp: opts.tcp || !opts.udp, udp: opts.udp, prefetch: true, ..WhoOptions::default() })?;
    let me = SelfInfo::current();
    let reports: Vec<PortReport> = ports
        .iter()
        .map(|port| {
            let socks: Vec<&SocketReport> = r.sockets.iter().filter(|s| s.port == port).collect();
            reap_sockets(port, &socks, opts, &me)
        })
        .collect();
    // Without privilege the holders of other users' sockets are invisible: say so,
    // rather than report a refusal.
    if !nix::unistd::geteuid().is_root() && reports.iter().any(|r| r.plan.sockets > 0 && r.plan.targets.is_empty()) {
        return Err(crate::error::Error::privilege(
            "cannot see the processes holding these ports (they belong to other users)",
            "run as root, e.g. `sudo portwatch free ...`",
        ));
    }
    Ok((reports, r.notes))
}

/// The exit code: refusals win, then anything still held.
pub fn exit_code(reports: &[PortReport]) -> u8 {
    if reports.iter().any(|r| r.plan.refused.is_some()) {
        exit::REFUSED
    } else if reports.iter().any(|r| r.outcome.as_ref().is_some_and(|o| !o.freed)) {
        exit::CONDITION
    } else {
        exit::OK
    }
}

/// `12 ms` below a second, `1.25 s` above.
pub fn fmt_ms(ms: u64) -> String {
    if ms < 1000 {
        format!("{ms} ms")
    } else {
        format!("{:.2} s", ms as f64 / 1000.0)
    }
}

pub fn render(reports: &[PortReport], force: bool, grace: Duration) -> String {
    let mut s = String::new();
    for r in reports {
        let p = &r.plan;
        if let Some(why) = &p.refused {
            s.push_str(&format!("port {}: refused: {why}\n", r.port));
            continue;
        }
        if p.sockets == 0 {
            s.push_str(&format!("port {}: already free\n", r.port));
            continue;
        }
        let who: Vec<String> = p.targets.iter().map(|t| format!("{} ({}, {})", t.pid, t.comm, t.state)).collect();
        match &r.outcome {
            None => {
                s.push_str(&format!(
                    "port {}: would signal {} process{}: {}\n",
                    r.port,
                    p.targets.len(),
                    if p.targets.len() == 1 { "" } else { "es" },
                    who.join(", ")
                ));
                for (i, step) in p.steps.iter().enumerate() {
                    s.push_str(&format!("  {}. {step}\n", i + 1));
                }
            }
            Some(o) if o.freed => {
                let count = |sig: &str| o.signals.iter().filter(|x| x.signal == sig).count();
                let mut sent = format!("SIGTERM to {}", count("SIGTERM"));
                for sig in ["SIGCONT", "SIGKILL"] {
                    if count(sig) > 0 {
                        sent.push_str(&format!(", {sig} to {}", count(sig)));
                    }
                }
                s.push_str(&format!("port {}: freed in {} ({sent}): {}\n", r.port, fmt_ms(o.elapsed_ms), who.join(", ")));
            }
            Some(o) => {
                let alive: Vec<String> = o.survivors.iter().map(ToString::to_string).collect();
                let hint = if force { String::new() } else { "; use --force to SIGKILL".to_string() };
                if alive.is_empty() {
                    s.push_str(&format!("port {}: still held after {} (taken again?){hint}\n", r.port, humantime::format_duration(grace)));
                } else {
                    s.push_str(&format!(
                        "port {}: still held by {} after {}{hint}\n",
                        r.port,
                        alive.join(", "),
                        humantime::format_duration(grace)
                    ));
                }
            }
        }
        if let Some(o) = &r.outcome {
            for (pid, why) in &o.skipped {
                s.push_str(&format!("  skipped {pid}: {why}\n"));
            }
        }
    }
    s
}
