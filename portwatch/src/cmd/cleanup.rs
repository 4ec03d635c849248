//! `portwatch cleanup`.
use crate::{
    cli::CleanupArgs,
    ebpf::loader,
    error::{exit, Error, Result},
    model::ports,
    output::{cleanup::render, to_json},
    service::{
        judge::{self, CleanupReport},
        reaper,
        supervisor::tree,
    },
};

pub fn run(a: CleanupArgs) -> Result<u8> {
    let mut cfg = crate::cmd::load_config(a.config.as_deref())?;
    cfg.merge_flags(&ports::merge(&a.ports), a.stall, a.grace, None);
    if cfg.ports.is_empty() && !a.runs {
        return Err(Error::Usage("no ports: give --port or a config with `ports` (or --runs for killed runs only)".into()));
    }
    // First what killed runs left: it needs no observation.
    let caller = reaper::caller_self();
    let runs = tree::end_abandoned(&caller, &cfg.protect, cfg.grace, a.dry_run);
    // Leases whose holder is gone (a killed run's, a removed cgroup's).
    if !a.dry_run {
        for name in crate::service::lease::sweep() {
            eprintln!("portwatch: removed stale lease {}", crate::output::esc(&name));
        }
    }
    let report = if a.runs {
        CleanupReport { verdicts: Vec::new(), reaped: Vec::new(), healthy: Vec::new(), runs }
    } else {
        // Say what is missing before announcing the observation.
        loader::preflight()?;
        if !a.json {
            eprintln!("portwatch: observing {} port(s) for {}", cfg.ports.len(), crate::model::time::human(cfg.stall));
        }
        let mut r = crate::cmd::runtime()?.block_on(judge::cleanup(&cfg, a.force, a.dry_run))?;
        r.runs = runs;
        r
    };
    if a.json {
        println!("{}", to_json(&report)?);
    } else {
        print!("{}", render(&report, a.force, cfg.grace, a.runs));
    }
    let survivors = report.runs.iter().any(|r| !r.ending.outcome.survivors.is_empty() || !r.ending.refused.is_empty());
    Ok(match reaper::exit_code(&report.reaped) {
        exit::OK if survivors => exit::CONDITION,
        code => code,
    })
}
