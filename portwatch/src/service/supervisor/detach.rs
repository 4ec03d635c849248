//! `run --detach-ready` (a background supervisor that reports readiness on a pipe)
//! and `run --stop`.
use std::time::Duration;

use nix::sys::signal::Signal;

use crate::{
    error::{exit, Error, Result},
    service::supervisor::Say,
    sys::{pidfd::PidFd, proc},
};

/// Writes one line to the readiness pipe, once; later calls find it closed.
pub(super) fn notify(fd: Option<i32>, line: &str) {
    use std::{io::Write, os::fd::FromRawFd};
    if let Some(fd) = fd {
        // SAFETY: the fd was handed to us by the detaching parent and is used once
        // here; dup'ing it keeps later calls harmless (they get EBADF once closed).
        let dup = unsafe { libc::dup(fd) };
        if dup >= 0 {
            // SAFETY: we own the dup.
            let mut f = unsafe { std::fs::File::from_raw_fd(dup) };
            let _ = writeln!(f, "{line}");
        }
        // SAFETY: closing the inherited fd so the parent sees EOF after our line.
        unsafe { libc::close(fd) };
    }
}

/// What `run --detach-ready` found: `cmd::run` prints it as a line of text or as
/// one JSON object (`--json`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Detached {
    /// The service is ready and left running under the supervisor.
    pub ready: bool,
    pub supervisor_pid: u32,
    pub pid_file: std::path::PathBuf,
    /// The service's (and the supervisor's) output.
    pub log: std::path::PathBuf,
    /// From starting the supervisor to its report.
    pub elapsed_ms: u64,
    /// Why it is not ready (`None` when ready).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// `run --detach-ready`: starts `portwatch run` (the same arguments, minus the
/// detaching ones) as a background supervisor in its own session and waits for its
/// readiness report on a pipe.
pub fn detach(pidfile: &std::path::Path, log: Option<&std::path::Path>) -> Result<Detached> {
    use std::{
        io::BufRead,
        os::{fd::AsRawFd, unix::process::CommandExt as _},
    };
    let exe = std::env::current_exe().map_err(|e| Error::io("finding the portwatch binary", e))?;
    let log_path = log.map_or_else(|| pidfile.with_extension("log"), std::path::Path::to_path_buf);
    let log_file = std::fs::File::create(&log_path).map_err(|e| Error::io(format!("creating {}", log_path.display()), e))?;
    let (rd, wr) = nix::unistd::pipe().map_err(|e| Error::io("pipe", e.into()))?;
    let mut args = supervisor_args(std::env::args().skip(1));
    // Insert the readiness fd before `--`.
    let pos = args.iter().position(|a| a == "--").unwrap_or(args.len());
    let wr_fd = wr.as_raw_fd();
    args.insert(pos, format!("--ready-fd={wr_fd}"));
    let mut cmd = std::process::Command::new(exe);
    cmd.args(&args).stdin(std::process::Stdio::null()).stdout(log_file.try_clone().map_err(|e| Error::io("log", e))?).stderr(log_file);
    // SAFETY: setsid and fcntl are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            libc::setsid();
            // Keep the write end open across exec.
            let flags = libc::fcntl(wr_fd, libc::F_GETFD);
            libc::fcntl(wr_fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            Ok(())
        });
    }
    let started = std::time::Instant::now();
    let child = cmd.spawn().map_err(|e| Error::io("starting the supervisor", e))?;
    drop(wr);
    let mut line = String::new();
    let _ = std::io::BufReader::new(std::fs::File::from(rd)).read_line(&mut line);
    let line = line.trim();
    let error =
        (line != "ready").then(|| line.strip_prefix("not-ready: ").unwrap_or("the supervisor exited before it was ready").to_string());
    Ok(Detached {
        ready: error.is_none(),
        supervisor_pid: child.id(),
        pid_file: pidfile.to_path_buf(),
        log: log_path,
        elapsed_ms: started.elapsed().as_millis() as u64,
        error,
    })
}

/// The supervisor's arguments: ours without the detaching ones (`--detach-ready`,
/// `--log`, `--json`); the command after `--` is passed as it is.
fn supervisor_args(ours: impl Iterator<Item = String>) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let mut skip = false;
    let mut command = false;
    for a in ours {
        if command {
            args.push(a);
            continue;
        }
        if skip {
            skip = false;
            continue;
        }
        match a.as_str() {
            "--" => {
                command = true;
                args.push(a);
            }
            "--detach-ready" | "--json" => {}
            "--log" => skip = true,
            _ if a.starts_with("--log=") => {}
            _ => args.push(a),
        }
    }
    args
}

/// `run --stop PIDFILE`: SIGTERM the supervisor named in the pid file and wait for
/// it to end its service. A service that already ended (no pid file: its supervisor
/// removes it on exit; or a pid that no longer names that supervisor) is not an
/// error.
pub fn stop(pidfile: &std::path::Path, grace: Duration, say: Say<'_>) -> Result<u8> {
    let text = match std::fs::read_to_string(pidfile) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            say(&format!("nothing to stop: {} does not exist (the service already ended, or never started)", pidfile.display()));
            return Ok(exit::OK);
        }
        Err(e) => return Err(Error::Usage(format!("cannot read {}: {e}", pidfile.display()))),
    };
    let pid: i32 = text.trim().parse().ok().filter(|p| *p > 1).ok_or_else(|| Error::Usage(format!("{}: not a pid", pidfile.display())))?;
    // Pin it first, then check that the pinned process is the supervisor that wrote
    // the file: a portwatch `run` started before the file was written.
    let fd = match PidFd::open(pid) {
        Ok(fd) => fd,
        Err(_) => return Ok(already_ended(pidfile, pid, say)),
    };
    if !is_supervisor(pid, pidfile) || fd.exited() {
        return Ok(already_ended(pidfile, pid, say));
    }
    fd.signal(Signal::SIGTERM).map_err(|e| Error::io(format!("signalling {pid}"), e))?;
    if fd.wait_exit(grace * 2 + Duration::from_secs(5)) {
        let _ = std::fs::remove_file(pidfile);
        say(&format!("stopped supervisor {pid} and everything under it"));
        Ok(exit::OK)
    } else {
        say(&format!("supervisor {pid} did not stop in time"));
        Ok(exit::CONDITION)
    }
}

fn already_ended(pidfile: &std::path::Path, pid: i32, say: Say<'_>) -> u8 {
    let _ = std::fs::remove_file(pidfile);
    say(&format!("nothing to stop: the service already ended (pid {pid} from {} is not its supervisor any more)", pidfile.display()));
    exit::OK
}

/// Whether `pid` is a live `portwatch run` that started before `pidfile` was written.
fn is_supervisor(pid: i32, pidfile: &std::path::Path) -> bool {
    let Some(p) = proc::info(pid) else { return false };
    let written = std::fs::metadata(pidfile).and_then(|m| m.modified()).ok();
    let written = written.and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok()).map(|d| d.as_secs());
    let args: Vec<&str> = p.cmdline.split(' ').collect();
    p.state != 'Z'
        && p.comm.starts_with("portwatch")
        && args.contains(&"run")
        && matches!((p.start_time, written), (Some(start), Some(w)) if start <= w + 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn supervisor_args_drop_the_detaching_flags_but_not_the_commands() {
        let v = |s: &str| s.split(' ').map(String::from).collect::<Vec<_>>();
        let args = supervisor_args(v("run --detach-ready --json --log /tmp/l --pid-file /tmp/p -p 5050 -- srv --json --log x").into_iter());
        assert_eq!(args, v("run --pid-file /tmp/p -p 5050 -- srv --json --log x"));
        let args = supervisor_args(v("run --log=/tmp/l --detach-ready --pid-file /tmp/p -- srv --detach-ready").into_iter());
        assert_eq!(args, v("run --pid-file /tmp/p -- srv --detach-ready"));
    }
}
