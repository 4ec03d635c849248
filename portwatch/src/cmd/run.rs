//! `portwatch run`.
use std::time::Duration;

use crate::{
    agent::control::{client, proto::Request},
    cli::RunArgs,
    error::{exit, Error, Result},
    model::{
        event::SockEvent,
        lease::RefusalErrno,
        plan::{Ending, Leftover, PortReport},
        ports,
        socket::Socket,
    },
    output::{self, esc, progress::Progress, to_json},
    service::supervisor::{self, Report, RunOptions},
};

fn say(line: &str) {
    eprintln!("portwatch: {}", esc(line));
}

/// Lines on stderr, the live display while waiting.
struct Console {
    progress: Progress,
}

impl Report for Console {
    fn say(&self, line: &str) {
        say(line);
    }

    fn progress(&self, i: usize, msg: &str) {
        self.progress.update(i, msg);
    }

    fn settled(&self) {
        self.progress.finish();
    }

    fn in_the_way(&self, sockets: &[Socket]) {
        // The agent's history knows which job bound each socket; ask it when one runs.
        let mut sockets = sockets.to_vec();
        let req = Request::Who { ports: sockets.iter().map(|s| s.port).collect() };
        if let Some(Ok(reply)) = client::request(&client::socket_path(), &req).map(client::ok) {
            for known in reply.sockets.unwrap_or_default() {
                if let Some(s) = sockets.iter_mut().find(|s| s.cookie == known.cookie && known.job.is_some()) {
                    s.job = known.job;
                }
            }
        }
        for line in output::run::in_the_way(&sockets) {
            eprintln!("portwatch: {line}");
        }
    }

    fn freed(&self, reports: &[PortReport], grace: Duration) {
        for line in output::free::render(reports, true, grace).lines() {
            eprintln!("portwatch: --free: {line}");
        }
    }

    fn refused(&self, bind: &SockEvent, errno: RefusalErrno) {
        eprintln!("portwatch: {}", output::lease::refusal(bind, errno));
    }

    fn refusals_hidden(&self, n: u64) {
        eprintln!("portwatch: {}", output::lease::hidden(n));
    }

    fn ended(&self, why: &str, leftovers: &[Leftover], ending: &Ending) {
        for line in output::run::ended(why, leftovers, ending) {
            eprintln!("portwatch: {line}");
        }
    }
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
    let ports = ports::merge(&a.ports);
    let mut labels: Vec<String> = ports.iter().map(|p| format!("port {p}")).collect();
    labels.extend(a.health.iter().map(|t| t.label()));
    let console = Console { progress: Progress::new(labels, false) };
    let opts = RunOptions {
        ports,
        health: a.health,
        free: a.free,
        forking: a.forking,
        timeout: a.timeout,
        grace: a.grace,
        command: a.command,
        pid_file: a.pid_file,
        ready_fd: a.ready_fd,
        lease: a.lease,
        isolate: a.isolate_ports,
    };
    crate::cmd::runtime()?.block_on(supervisor::run(opts, &console))
}
