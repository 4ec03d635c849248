//! `portwatch run`.
use crate::{
    cli::RunArgs,
    error::{exit, Error, Result},
    model::ports,
    output::{esc, to_json},
    service::supervisor::{self, RunOptions},
};

fn say(line: &str) {
    eprintln!("portwatch: {}", esc(line));
}

pub fn run(a: RunArgs) -> Result<u8> {
    if let Some(pidfile) = a.stop {
        return supervisor::stop(&pidfile, a.grace, &say);
    }
    if a.detach_ready {
        let pidfile = a.pid_file.ok_or_else(|| Error::Usage("--detach-ready needs --pid-file".into()))?;
        let d = supervisor::detach(&pidfile, a.log.as_deref())?;
        if a.json {
            println!("{}", to_json(&d)?);
        } else if let Some(why) = &d.error {
            say(&format!("{why} (output in {})", d.log.display()));
        } else {
            let p = d.pid_file.display();
            say(&format!(
                "ready; supervisor pid {} (pid file {p}, output {}); stop with: portwatch run --stop {p}",
                d.supervisor_pid,
                d.log.display()
            ));
        }
        return Ok(if d.ready { exit::OK } else { exit::CONDITION });
    }
    let opts = RunOptions {
        ports: ports::merge(&a.ports),
        health: a.health,
        free: a.free,
        timeout: a.timeout,
        grace: a.grace,
        command: a.command,
        pid_file: a.pid_file,
        ready_fd: a.ready_fd,
    };
    crate::cmd::runtime()?.block_on(supervisor::run(opts, &say))
}
