//! `portwatch wait`.
use crate::{
    cli::WaitArgs,
    error::{exit, Result},
    output::{esc, fmt_duration, progress::Progress, to_json},
    service::{
        readiness::{self, WaitOptions},
        supervisor,
    },
};

pub fn run(a: WaitArgs) -> Result<u8> {
    let opts = WaitOptions { timeout: a.timeout, interval: a.interval, expect_status: a.expect_status, claim: None };
    let progress = Progress::new(a.targets.iter().map(|t| t.label()).collect(), a.json);
    let results = crate::cmd::runtime()?.block_on(readiness::wait_all(&a.targets, &opts, &|i, msg| progress.update(i, msg)));
    progress.finish();
    if a.json {
        println!("{}", to_json(&results)?);
    } else {
        for r in results.iter().filter(|r| !r.ready) {
            eprintln!("portwatch: {} not ready after {}: {}", esc(&r.target), fmt_duration(a.timeout), esc(&r.detail));
        }
    }
    if !results.iter().all(|r| r.ready) {
        return Ok(exit::CONDITION);
    }
    if a.command.is_empty() {
        return Ok(exit::OK);
    }
    // Only returns when the command could not be started.
    let (code, why) = supervisor::exec(&a.command);
    eprintln!("portwatch: {}", esc(&why));
    Ok(code)
}
