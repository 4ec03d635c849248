//! `portwatch run`.
use crate::{
    cli::RunArgs,
    error::{Error, Result},
    model::ports,
    output::esc,
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
        return supervisor::detach(&pidfile, a.log.as_deref(), &say);
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
