//! Supervising a service (`run`): start it, wait until it really serves, and make
//! sure that nothing started under it survives. portwatch becomes a child subreaper, so
//! daemons that double-fork and setsid() are re-parented to it instead of to init;
//! when the command and its descendants are to end, every remaining descendant gets
//! SIGTERM, then SIGKILL after `grace`.
use std::{collections::HashSet, os::unix::process::ExitStatusExt, process::ExitStatus, time::Duration};

use nix::{
    sys::{
        signal::{kill, Signal},
        wait::{waitpid, WaitPidFlag},
    },
    unistd::Pid,
};
use tokio::signal::unix::{signal, SignalKind};

use crate::{
    error::{exit, Error, Result},
    model::{ports::PortSet, target::Target},
    service::{
        readiness::{self, WaitOptions},
        reaper::{self, FreeOptions},
    },
};

/// Where the supervisor says what happens (one line each, without a prefix).
pub type Say<'a> = &'a (dyn Fn(&str) + Sync);

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub ports: PortSet,
    pub health: Vec<Target>,
    pub free: bool,
    pub timeout: Duration,
    pub grace: Duration,
    pub command: Vec<String>,
    /// Write our pid here (removed on exit).
    pub pid_file: Option<std::path::PathBuf>,
    /// Report "ready" / "not-ready: why" on this fd (the detaching parent reads it).
    pub ready_fd: Option<i32>,
}

/// Every pid in this process's threads' `children` lists (an orphan is adopted by
/// one of the subreaper's threads), zombies included.
fn thread_children() -> Vec<i32> {
    let mut out = Vec::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for t in tasks.flatten() {
        let list = std::fs::read_to_string(t.path().join("children")).unwrap_or_default();
        out.extend(list.split_whitespace().filter_map(|p| p.parse::<i32>().ok()));
    }
    out
}

/// Live processes whose parent is this process (direct children and adopted
/// orphans).
pub fn children() -> Vec<i32> {
    let mut out = thread_children();
    out.retain(|&pid| {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').and_then(|(_, rest)| rest.trim_start().chars().next()))
            .is_some_and(|state| state != 'Z')
    });
    out.sort_unstable();
    out.dedup();
    out
}

/// No descendants left, judged twice a little apart: a daemon being handed from an
/// exiting parent to us must not be missed.
async fn no_descendants(keep: i32) -> bool {
    if !children().is_empty() {
        return false;
    }
    tokio::time::sleep(Duration::from_millis(50)).await;
    reap_zombies(keep);
    children().is_empty()
}

/// Reaps exited adopted children without blocking. The command itself (`keep`) is
/// left to its own waiter, which needs its exit status.
fn reap_zombies(keep: i32) {
    for pid in thread_children().into_iter().filter(|&p| p != keep) {
        let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
    }
}

/// Ends every descendant: SIGTERM (and SIGCONT), wait up to `grace`, SIGKILL. Orphans
/// of killed processes are re-parented to us and handled in the next round.
pub async fn end_descendants(grace: Duration, keep: i32) {
    for _ in 0..32 {
        reap_zombies(keep);
        let kids = children();
        if kids.is_empty() {
            return;
        }
        for &k in &kids {
            let _ = kill(Pid::from_raw(k), Signal::SIGTERM);
            let _ = kill(Pid::from_raw(k), Signal::SIGCONT);
        }
        let until = tokio::time::Instant::now() + grace;
        while tokio::time::Instant::now() < until {
            reap_zombies(keep);
            let live: HashSet<i32> = children().into_iter().collect();
            if kids.iter().all(|k| !live.contains(k)) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        for &k in &kids {
            let _ = kill(Pid::from_raw(k), Signal::SIGKILL);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    reap_zombies(keep);
}

fn status_code(st: ExitStatus) -> u8 {
    st.code().map_or_else(|| 128 + st.signal().unwrap_or(0) as u8, |c| c as u8)
}

pub async fn run(opts: RunOptions, say: Say<'_>) -> Result<u8> {
    let Some((prog, args)) = opts.command.split_first() else {
        return Err(Error::Usage("no command given: portwatch run [OPTIONS] -- COMMAND...".into()));
    };
    if opts.free && !opts.ports.is_empty() {
        let fo = FreeOptions { force: true, grace: opts.grace, dry_run: false, tcp: true, udp: false, protect: Default::default() };
        let (reports, _) = reaper::free(&opts.ports, &fo, &reaper::caller_self())?;
        if let Some((port, why)) = reports.iter().find_map(|r| r.plan.refused.as_ref().map(|w| (r.port, w))) {
            return Err(Error::Refused(format!("cannot free port {port}: {why}")));
        }
        if let Some(r) = reports.iter().find(|r| r.outcome.as_ref().is_some_and(|o| !o.freed)) {
            return Err(Error::Refused(format!("port {} is still held after freeing it", r.port)));
        }
    }
    // Before the command exists, so a signal can never find run without its handlers.
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    // SAFETY: prctl with integer arguments.
    if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
        return Err(Error::io("prctl(PR_SET_CHILD_SUBREAPER)", std::io::Error::last_os_error()));
    }
    if let Some(fd) = opts.ready_fd {
        // The service must not inherit the readiness pipe, or the parent waiting on
        // it would never see it close.
        // SAFETY: fcntl on an fd we were handed.
        unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    }
    let mut cmd = tokio::process::Command::new(prog);
    cmd.args(args);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            // If portwatch itself is SIGKILLed, the command goes too.
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    let mut child = cmd.spawn().map_err(|e| Error::Usage(format!("cannot start {prog}: {e}")))?;
    if let Some(p) = &opts.pid_file {
        std::fs::write(p, format!("{}\n", std::process::id())).map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
    }
    if targets_empty(&opts) {
        notify(opts.ready_fd, "ready");
    }
    let child_pid = child.id().map_or(0, |p| p as i32);

    let mut targets: Vec<Target> = opts.ports.iter().map(|p| Target::Tcp { host: "127.0.0.1".into(), port: p }).collect();
    targets.extend(opts.health.iter().cloned());
    let wopts = WaitOptions { timeout: opts.timeout, interval: Duration::from_millis(100), expect_status: Vec::new(), claim: None };
    let started = std::time::Instant::now();
    let ready = async {
        if targets.is_empty() {
            return Vec::new();
        }
        readiness::wait_all(&targets, &wopts, &|_, _| {}).await
    };
    tokio::pin!(ready);
    let mut status: Option<ExitStatus> = None;
    let mut ready_done = false;
    let mut code_override: Option<u8> = None;
    loop {
        tokio::select! {
            results = &mut ready, if !ready_done => {
                ready_done = true;
                let bad: Vec<String> = results.iter().filter(|r| !r.ready).map(|r| format!("{}: {}", r.target, r.detail)).collect();
                if bad.is_empty() {
                    say(&format!("ready after {:.1}s", started.elapsed().as_secs_f64()));
                    notify(opts.ready_fd, "ready");
                } else {
                    let why = format!("not ready after {}: {}", humantime::format_duration(opts.timeout), bad.join("; "));
                    say(&why);
                    notify(opts.ready_fd, &format!("not-ready: {why}"));
                    code_override = Some(exit::CONDITION);
                    break;
                }
            }
            st = child.wait(), if status.is_none() => {
                let st = st.map_err(|e| Error::io("waiting for the command", e))?;
                status = Some(st);
                // A daemonizing command exits 0 at once and its descendants are the
                // service; a command that failed takes its descendants with it.
                if !st.success() || no_descendants(child_pid).await {
                    break;
                }
            }
            _ = tokio::time::sleep(Duration::from_millis(200)), if status.is_some() => {
                reap_zombies(child_pid);
                if no_descendants(child_pid).await {
                    break;
                }
            }
            _ = sigint.recv() => { forward(child_pid, status.is_none(), Signal::SIGINT); break; }
            _ = sigterm.recv() => { forward(child_pid, status.is_none(), Signal::SIGTERM); break; }
        }
    }
    // TERM (the command already has the forwarded signal), grace, KILL: for the
    // command and every descendant together.
    end_descendants(opts.grace, child_pid).await;
    if status.is_none() {
        status = child.wait().await.ok();
    }
    if !ready_done && code_override.is_none() {
        let how = status.map_or_else(|| "ended".to_string(), |s| format!("exited with status {}", status_code(s)));
        say(&format!("the command {how} before it was ready"));
        notify(opts.ready_fd, &format!("not-ready: the command {how} before it was ready"));
        if status.is_some_and(|s| s.success()) {
            code_override = Some(exit::CONDITION);
        }
    }
    if let Some(p) = &opts.pid_file {
        let _ = std::fs::remove_file(p);
    }
    Ok(code_override.unwrap_or_else(|| status.map_or(exit::INTERNAL, status_code)))
}

fn forward(pid: i32, alive: bool, sig: Signal) {
    if alive && pid > 0 {
        let _ = kill(Pid::from_raw(pid), sig);
    }
}

fn targets_empty(opts: &RunOptions) -> bool {
    opts.ports.is_empty() && opts.health.is_empty()
}

/// Writes one line to the readiness pipe, once; later calls find it closed.
fn notify(fd: Option<i32>, line: &str) {
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

/// `run --stop PIDFILE`: SIGTERM the supervisor named in the pid file (after checking
/// it is a portwatch process) and wait for it to end its service.
pub fn stop(pidfile: &std::path::Path, grace: Duration, say: Say<'_>) -> Result<u8> {
    let text = std::fs::read_to_string(pidfile).map_err(|e| Error::Usage(format!("cannot read {}: {e}", pidfile.display())))?;
    let pid: i32 = text.trim().parse().map_err(|_| Error::Usage(format!("{}: not a pid", pidfile.display())))?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let cmdline = String::from_utf8_lossy(&cmdline);
    if !cmdline.contains("portwatch") || !cmdline.contains("run") {
        let _ = std::fs::remove_file(pidfile);
        say(&format!("pid {pid} from {} is not a running portwatch supervisor; nothing to stop", pidfile.display()));
        return Ok(exit::OK);
    }
    let fd = crate::sys::pidfd::PidFd::open(pid).map_err(|e| Error::io(format!("pidfd for {pid}"), e))?;
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

/// Why a command could not be started, and the exit code shells give for it: 127
/// not found, 126 not executable.
pub fn start_failure(prog: &str, e: &std::io::Error) -> (u8, String) {
    match e.kind() {
        std::io::ErrorKind::NotFound => (exit::NOT_FOUND, format!("{prog}: command not found")),
        std::io::ErrorKind::PermissionDenied => (exit::NOT_EXECUTABLE, format!("{prog}: not executable ({e})")),
        _ => (exit::NOT_EXECUTABLE, format!("{prog}: cannot start: {e}")),
    }
}

/// Replaces portwatch with `command` (`wait -- COMMAND`): its exit status is then
/// the command's own. Returns only when it could not be started.
pub fn exec(command: &[String]) -> (u8, String) {
    use std::os::unix::process::CommandExt;
    let Some((prog, args)) = command.split_first() else { return (exit::USAGE, "no command given".into()) };
    let e = std::process::Command::new(prog).args(args).exec();
    start_failure(prog, &e)
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
