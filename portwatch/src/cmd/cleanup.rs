//! `portwatch cleanup`.
use crate::{
    cli::CleanupArgs,
    ebpf::loader,
    error::{Error, Result},
    model::ports,
    output::{cleanup::render, to_json},
    service::{judge, reaper},
};

pub fn run(a: CleanupArgs) -> Result<u8> {
    let mut cfg = crate::cmd::load_config(a.config.as_deref())?;
    cfg.merge_flags(&ports::merge(&a.ports), a.stall, a.grace, None);
    if cfg.ports.is_empty() {
        return Err(Error::Usage("no ports: give --port or a config with `ports`".into()));
    }
    // Say what is missing before announcing the observation.
    loader::preflight()?;
    if !a.json {
        eprintln!("portwatch: observing {} port(s) for {}", cfg.ports.len(), crate::model::time::human(cfg.stall));
    }
    let report = crate::cmd::runtime()?.block_on(judge::cleanup(&cfg, a.force, a.dry_run))?;
    if a.json {
        println!("{}", to_json(&report)?);
    } else {
        print!("{}", render(&report, a.force, cfg.grace));
    }
    Ok(reaper::exit_code(&report.reaped))
}
