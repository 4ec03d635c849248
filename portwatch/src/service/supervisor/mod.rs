//! Supervising a service (`run`): start it, say it is ready only when its own
//! processes serve, and make sure nothing started under it survives it.
//!
//! - Before the command starts, a port held by anyone fails the run at once,
//!   naming the holders (or, with `--free`, they are freed by one authorized plan).
//! - Ready means every `--port` has a listener held by a process of the run, and
//!   every `--health` URL answers through such a listener. A port taken meanwhile
//!   by a process outside the run fails it at once, naming the holder.
//! - The command's exit ends the run: whatever it left is ended (SIGTERM, grace,
//!   SIGKILL, by pidfd) and listed, and `run` exits with the command's status. With
//!   `--forking` the launcher's successful exit hands the service over to its
//!   descendants instead (systemd's `Type=forking`).
//! - The run's processes are its own cgroup's (where cgroup v2 is writable) and
//!   portwatch's descendants (it is their subreaper): see [`tree`].
mod detach;
pub mod tree;

use std::{
    collections::HashSet,
    os::unix::process::ExitStatusExt,
    process::ExitStatus,
    sync::Arc,
    time::{Duration, Instant},
};

use nix::{
    sys::wait::{waitpid, WaitPidFlag},
    unistd::Pid,
};
use tokio::signal::unix::{signal, SignalKind};

pub use self::detach::{detach, stop, Detached};
use self::{detach::notify, tree::Tree};
use crate::{
    error::{exit, Error, Result},
    model::{
        event::SockEvent,
        lease::RefusalErrno,
        plan::{self, Ending, FreeStatus, Leftover, PortReport},
        ports::PortSet,
        process::ProcInfo,
        socket::Socket,
        target::Target,
        time::human,
    },
    service::{
        holders::{self, WhoOptions},
        join_all,
        lease::{LeaseNews, RunLease},
        readiness::{self, Claim, WaitOptions},
        reaper::{self, FreeOptions},
        remap::{self, Isolation},
    },
    sys::{
        cgroup::{self, RunCgroup, RunOwner},
        proc, sockdiag,
    },
};

/// Where the supervisor says what happens (one line each, without a prefix).
pub type Say<'a> = &'a (dyn Fn(&str) + Sync);

/// How `run` tells what happens; the command renders it.
pub trait Report: Sync {
    /// One line for the user.
    fn say(&self, line: &str);
    /// Target `i` (the ports in order, then the health URLs) has a new state.
    fn progress(&self, i: usize, msg: &str);
    /// Readiness is decided: any live display ends.
    fn settled(&self);
    /// The ports were held by processes outside the run when it started.
    fn in_the_way(&self, sockets: &[Socket]);
    /// What `--free` did.
    fn freed(&self, reports: &[PortReport], grace: Duration);
    /// The processes the run ended, and how (`why`: what ended the run).
    fn ended(&self, why: &str, leftovers: &[Leftover], ending: &Ending);
    /// `--lease`: the run's lease refused a bind.
    fn refused(&self, bind: &SockEvent, errno: RefusalErrno);
    /// `--lease`: this many more refusals in the last second were not shown.
    fn refusals_hidden(&self, n: u64);
}

#[derive(Clone, Debug)]
pub struct RunOptions {
    pub ports: PortSet,
    pub health: Vec<Target>,
    pub free: bool,
    /// The command is a launcher: its successful exit hands the service over to its
    /// descendants.
    pub forking: bool,
    pub timeout: Duration,
    pub grace: Duration,
    pub command: Vec<String>,
    /// Write our pid here (removed on exit).
    pub pid_file: Option<std::path::PathBuf>,
    /// Report "ready" / "not-ready: why" on this fd (the detaching parent reads it).
    pub ready_fd: Option<i32>,
    /// Lease the ports to the run's cgroup while it lasts.
    pub lease: bool,
    /// `--isolate-ports`: the job's binds and local connects to `ports` are
    /// rewritten to real ports chosen for it (see [`crate::service::remap`]).
    pub isolate: bool,
}

/// Reaps exited adopted children without blocking. The command itself (`keep`) is
/// left to its own waiter, which needs its exit status.
fn reap_zombies(me: i32, keep: i32) {
    for pid in proc::children_of(me).into_iter().filter(|&p| p != keep) {
        if proc::start_and_state(pid).is_some_and(|(_, st)| st == 'Z') {
            let _ = waitpid(Pid::from_raw(pid), Some(WaitPidFlag::WNOHANG));
        }
    }
}

fn status_code(st: ExitStatus) -> u8 {
    st.code().map_or_else(|| 128 + st.signal().unwrap_or(0) as u8, |c| c as u8)
}

fn describe_status(st: ExitStatus) -> String {
    match (st.code(), st.signal()) {
        (Some(c), _) => format!("exited with status {c}"),
        (None, Some(sig)) => format!("was killed by {}", crate::sys::signal_name(sig)),
        _ => "ended".into(),
    }
}

/// Holders in one phrase: `pid 4242 gunicorn (T stopped), pid 4243 gunicorn (S sleeping)`.
fn briefs<'a>(procs: impl Iterator<Item = &'a ProcInfo>) -> String {
    let mut v: Vec<String> = procs.map(ProcInfo::brief).collect();
    v.sort();
    v.dedup();
    v.join(", ")
}

/// Who holds a port, as the run sees it.
enum PortCheck {
    NoListener,
    /// A listener held by the run: its holders.
    Ours(Vec<i32>),
    /// Listeners held only by processes outside the run.
    Outsider(Vec<ProcInfo>),
}

fn check_port(port: u16, tree: &Tree) -> PortCheck {
    let inodes: HashSet<u64> = sockdiag::listeners(port).unwrap_or_default().iter().map(|l| l.inode).collect();
    if inodes.is_empty() {
        return PortCheck::NoListener;
    }
    let held = tree.holders_of(&inodes);
    if !held.is_empty() {
        return PortCheck::Ours(held);
    }
    let ports: PortSet = std::iter::once(port).collect();
    let outsiders: Vec<ProcInfo> = holders::gather(&ports, WhoOptions::TCP)
        .map(|r| r.sockets.into_iter().flat_map(|s| s.holders).map(|h| h.proc).filter(|p| !tree.contains(p.pid)).collect())
        .unwrap_or_default();
    // Holders neither ours nor found: a listener changing hands; look again.
    if outsiders.is_empty() {
        PortCheck::NoListener
    } else {
        PortCheck::Outsider(outsiders)
    }
}

/// Before the command starts: the ports (the real ones, for isolated ports) must be
/// free. Held ones fail the run (`Some(why)`), or are freed with `--free`.
fn preflight(opts: &RunOptions, rep: &dyn Report) -> Result<Option<String>> {
    let r = holders::gather(&opts.ports, WhoOptions::TCP)?;
    if r.sockets.is_empty() {
        return Ok(None);
    }
    if !opts.free {
        let mut sockets = r.sockets.clone();
        for s in &mut sockets {
            s.job = s.holders.iter().find_map(|h| proc::details(h.proc.pid).and_then(|d| d.job).map(|j| j.to_string()));
        }
        rep.in_the_way(&sockets);
        let mut ports: Vec<u16> = r.sockets.iter().map(|s| s.port).collect();
        ports.dedup();
        let who = briefs(r.sockets.iter().flat_map(|s| s.holders.iter().map(|h| &h.proc)));
        let ports: Vec<String> = ports.iter().map(ToString::to_string).collect();
        return Ok(Some(format!("port {} already held by {who}", ports.join(", "))));
    }
    let caller = reaper::caller_self();
    let fo = FreeOptions { force: true, grace: opts.grace, tcp: true, ..FreeOptions::default() };
    let reports: Vec<PortReport> = opts
        .ports
        .iter()
        .map(|port| {
            let socks: Vec<&Socket> = r.on_port(port).collect();
            reaper::reap_sockets(port, &socks, &fo, &caller)
        })
        .collect();
    rep.freed(&reports, opts.grace);
    match plan::status(&reports) {
        FreeStatus::Done => Ok(None),
        FreeStatus::StillHeld => Err(Error::Refused("a port is still held after freeing it".into())),
        FreeStatus::Refused | FreeStatus::Denied => {
            let why = reports.iter().find_map(|r| r.plan.refused.as_ref().map(|w| format!("cannot free port {}: {w}", r.port)));
            Err(Error::Refused(why.unwrap_or_else(|| "cannot free the ports".into())))
        }
    }
}

/// What ended the run.
enum Stop {
    /// The command exited (and, without `--forking` or on failure, so does the run).
    Exited,
    /// `--forking`: no process of the service is left.
    Ended,
    /// SIGINT or SIGTERM to portwatch.
    Signal(i32),
    /// Not ready: timed out, or a port is held by someone else.
    NotReady(String),
}

pub async fn run(opts: RunOptions, rep: &dyn Report) -> Result<u8> {
    let Some((prog, args)) = opts.command.split_first() else {
        return Err(Error::Usage("no command given: portwatch run [OPTIONS] -- COMMAND...".into()));
    };
    if opts.lease {
        // Say what is missing first: without privilege the cgroup could not be made
        // either, and "no cgroup" would hide the reason.
        crate::ebpf::loader::preflight()?;
    }
    let me = std::process::id() as i32;
    let owner = RunOwner { pid: me, start_ticks: proc::start_and_state(me).map_or(0, |(t, _)| t) };
    // Isolated ports need the run's cgroup before anything else: the kernel
    // rewrites by it. A run inside an isolated job inherits that job's remap.
    let (cgroup, isolation) = if opts.isolate { isolated(&opts, owner)? } else { (None, None) };
    let map = isolation.as_ref().map_or_else(remap::inherited, |i| i.map.clone());
    for p in map.pairs().iter().filter(|p| opts.ports.contains(p.virt)) {
        let how = if isolation.is_some() { "isolated" } else { "isolated by the enclosing run" };
        rep.say(&format!("port {} {how}: the job's binds and local connects use real port {}", p.virt, p.real));
    }
    let ports: Vec<u16> = opts.ports.iter().collect();
    if !ports.is_empty() {
        let real = RunOptions { ports: ports.iter().map(|&p| map.real(p)).collect(), ..opts.clone() };
        let checked = preflight(&real, rep);
        if !matches!(checked, Ok(None)) {
            if let Some(cg) = &cgroup {
                let _ = cg.remove(Duration::ZERO);
            }
        }
        if let Some(why) = checked? {
            notify(opts.ready_fd, &format!("not-ready: {why}"));
            return Ok(exit::CONDITION);
        }
    }
    let cgroup = cgroup
        .or_else(|| RunCgroup::create(owner).map_err(|e| tracing::debug!("no cgroup of its own for this run ({e}): subreaper only")).ok());
    // The lease goes in before the command starts, so nothing can take the ports
    // between the check above and the service's bind. Isolated ports lease their
    // real ports (the job's binds land there).
    let leased: Vec<u16> = ports.iter().map(|&p| map.real(p)).collect();
    let mut lease = match (opts.lease, &cgroup) {
        (false, _) => None,
        (true, None) => {
            return Err(Error::unsupported(
                "--lease needs a cgroup v2 of the run's own, and none can be made here",
                "a writable cgroup v2 (run as root)",
            ))
        }
        (true, Some(cg)) => match RunLease::start(owner, &cg.dir, &leased) {
            Ok(l) => {
                let list: Vec<String> = ports.iter().map(|&p| map.label(p)).collect();
                rep.say(&format!(
                    "lease: port {} leased to this run; binds from outside it fail with {}",
                    list.join(", "),
                    l.errno().name()
                ));
                Some(l)
            }
            Err(e) => {
                let _ = cg.remove(Duration::ZERO);
                return Err(e);
            }
        },
    };
    let mut tree = Tree::new(me, cgroup);
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
    let procs_fd = tree.cgroup().map(RunCgroup::procs_fd);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            // Into the run's cgroup before anything runs: all it starts is born there.
            if let Some(fd) = procs_fd {
                libc::write(fd, b"0".as_ptr().cast(), 1);
            }
            // If portwatch itself is SIGKILLed, the command goes too (what it started
            // stays in the run's cgroup for `cleanup`).
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0);
            Ok(())
        });
    }
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => {
            let (code, why) = start_failure(prog, &e);
            rep.say(&why);
            notify(opts.ready_fd, &format!("not-ready: {why}"));
            tree.drop_cgroup();
            return Ok(code);
        }
    };
    let child_pid = child.id().map_or(0, |p| p as i32);
    if tree.cgroup().is_some_and(|c| !c.contains(child_pid)) {
        tracing::debug!("the command did not land in the run's cgroup: subreaper only");
        tree.drop_cgroup();
        if isolation.is_some() {
            // Without the cgroup nothing would be rewritten: end the command now.
            let _ = child.start_kill();
            let _ = child.wait().await;
            return Err(Error::unsupported(
                "--isolate-ports: the command did not land in the run's cgroup",
                "a writable cgroup v2 (delegated to this user) is required",
            ));
        }
    }
    if let Some(p) = &opts.pid_file {
        std::fs::write(p, format!("{me}\n")).map_err(|e| Error::io(format!("writing {}", p.display()), e))?;
    }
    let tree = Arc::new(tree);

    let started = Instant::now();
    let deadline = tokio::time::Instant::now() + opts.timeout;
    let nports = ports.len();
    let has_targets = !(ports.is_empty() && opts.health.is_empty());
    let claim: Arc<dyn Claim> = tree.clone();
    let wopts = WaitOptions { timeout: opts.timeout, interval: Duration::from_millis(20), expect_status: Vec::new(), claim: Some(claim) };
    let targets: Vec<Target> = opts.health.iter().map(|t| map.target(t)).collect();
    let health = join_all(
        targets.iter().enumerate().map(|(i, t)| readiness::wait_one(t, &wopts, move |m: &str| rep.progress(nports + i, m))).collect(),
    );
    tokio::pin!(health);
    let mut port_ready = vec![false; nports];
    let mut port_state: Vec<String> = vec![String::new(); nports];
    let mut health_done = opts.health.is_empty();
    let mut ready = false;
    let mut ready_detail = String::new();
    let mut status: Option<ExitStatus> = None;
    let mut handed_over = false;
    let mut tick = tokio::time::interval(Duration::from_millis(10));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut lease_tick = tokio::time::interval(Duration::from_millis(100));
    lease_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let report_refusals = |lease: &mut Option<RunLease>| {
        let Some(l) = lease.as_mut() else { return };
        let errno = l.errno();
        for note in l.news() {
            match note {
                LeaseNews::Refused(ev) => rep.refused(&ev, errno),
                LeaseNews::Hidden(n) => rep.refusals_hidden(n),
            }
        }
    };
    let stop = loop {
        if !ready && health_done && port_ready.iter().all(|r| *r) {
            ready = true;
            rep.settled();
            if has_targets {
                let by = if ready_detail.is_empty() { String::new() } else { format!(" ({ready_detail})") };
                rep.say(&format!("ready after {}{by}", human(started.elapsed())));
            }
            notify(opts.ready_fd, "ready");
        }
        tokio::select! {
            _ = tick.tick(), if !ready && (status.is_none() || handed_over) => {
                reap_zombies(me, child_pid);
                let mut taken = None;
                for (i, &port) in ports.iter().enumerate() {
                    if port_ready[i] {
                        continue;
                    }
                    let msg = match check_port(map.real(port), &tree) {
                        PortCheck::NoListener => "no listener yet".to_string(),
                        PortCheck::Ours(pids) => {
                            port_ready[i] = true;
                            let who = briefs(pids.iter().filter_map(|&p| proc::info(p)).collect::<Vec<_>>().iter());
                            let port = map.label(port);
                            ready_detail = if ready_detail.is_empty() { format!("port {port}: {who}") } else { format!("{ready_detail}; port {port}: {who}") };
                            format!("listening: {who}")
                        }
                        PortCheck::Outsider(procs) => {
                            taken = Some(format!(
                                "port {} is held by {}, which this run did not start: the command cannot bind it",
                                map.label(port),
                                briefs(procs.iter())
                            ));
                            break;
                        }
                    };
                    if msg != port_state[i] {
                        rep.progress(i, &msg);
                        port_state[i] = msg;
                    }
                }
                if let Some(why) = taken {
                    break Stop::NotReady(why);
                }
            }
            results = &mut health, if !health_done => {
                health_done = true;
                if let Some(bad) = results.iter().find(|r| !r.ready) {
                    break Stop::NotReady(format!("{}: {}", bad.target, bad.detail));
                }
            }
            _ = tokio::time::sleep_until(deadline), if !ready => {
                let mut why: Vec<String> = ports.iter().zip(&port_ready).filter(|(_, r)| !**r).map(|(p, _)| format!("port {}: no listener of this run", map.label(*p))).collect();
                if !health_done {
                    why.push("health URLs not answering".into());
                }
                break Stop::NotReady(format!("not ready after {}: {}", human(opts.timeout), why.join("; ")));
            }
            st = child.wait(), if status.is_none() => {
                let st = st.map_err(|e| Error::io("waiting for the command", e))?;
                status = Some(st);
                if !(opts.forking && st.success()) {
                    break Stop::Exited;
                }
                handed_over = true;
                rep.say("the launcher exited 0: the service is what it started (--forking)");
            }
            _ = tokio::time::sleep(Duration::from_millis(100)), if handed_over => {
                reap_zombies(me, child_pid);
                if tree.members().is_empty() {
                    break Stop::Ended;
                }
            }
            _ = lease_tick.tick(), if lease.is_some() => report_refusals(&mut lease),
            _ = sigint.recv() => break Stop::Signal(libc::SIGINT),
            _ = sigterm.recv() => break Stop::Signal(libc::SIGTERM),
        }
    };
    if !ready {
        rep.settled();
    }

    // Why the run ends, in words, before anything is signalled.
    let why = match &stop {
        Stop::Exited => {
            let st = status.map_or_else(|| "ended".to_string(), describe_status);
            if ready || !has_targets {
                format!("the command {st}")
            } else {
                let outsiders: Vec<String> = ports
                    .iter()
                    .filter_map(|&p| match check_port(map.real(p), &tree) {
                        PortCheck::Outsider(procs) => {
                            Some(format!("port {} is held by {}, which this run did not start", map.label(p), briefs(procs.iter())))
                        }
                        _ => None,
                    })
                    .collect();
                let extra = if outsiders.is_empty() { String::new() } else { format!(": {}", outsiders.join("; ")) };
                format!("the command {st} before it was ready{extra}")
            }
        }
        Stop::Ended => "no process of the service is left".to_string(),
        Stop::Signal(sig) => format!("portwatch got {}", crate::sys::signal_name(*sig)),
        Stop::NotReady(why) => why.clone(),
    };
    if !ready {
        notify(opts.ready_fd, &format!("not-ready: {why}"));
    }
    if !ready && !matches!(stop, Stop::Signal(_)) {
        rep.say(&why);
    }
    if let Stop::Signal(sig) = stop {
        if status.is_none() && child_pid > 0 {
            // Unreaped, so the pid is still our child's.
            let _ = nix::sys::signal::kill(Pid::from_raw(child_pid), nix::sys::signal::Signal::try_from(sig).ok());
        }
    }

    // End whatever is left: by one authorized plan, in rounds (a process may fork
    // while it is being ended), then the cgroup's own kill as the last sweep.
    let caller = reaper::caller_self();
    let mut all_left: Vec<Leftover> = Vec::new();
    let mut ending = Ending::default();
    for _ in 0..3 {
        let members = tree.members();
        if members.is_empty() {
            break;
        }
        let held = tree::ports_of(&members);
        all_left.extend(
            members
                .iter()
                .filter_map(|&p| proc::info(p).map(|info| Leftover { proc: info, ports: held.get(&p).cloned().unwrap_or_default() })),
        );
        let (t2, c2, grace) = (tree.clone(), caller.clone(), opts.grace);
        let e = tokio::task::spawn_blocking(move || tree::end(&members, &|p| t2.contains(p), &c2, grace))
            .await
            .map_err(|e| Error::Internal(format!("ending the run's processes: {e}")))?;
        ending.targets.extend(e.targets);
        ending.refused.extend(e.refused);
        ending.outcome.signals.extend(e.outcome.signals);
        ending.outcome.skipped.extend(e.outcome.skipped);
        ending.outcome.survivors = e.outcome.survivors;
        reap_zombies(me, child_pid);
    }
    if status.is_none() {
        status = child.wait().await.ok();
    }
    if let Some(cg) = tree.cgroup() {
        let _ = cgroup::kill(&cg.dir);
        reap_zombies(me, child_pid);
        if let Err(e) = cg.remove(Duration::from_secs(1)) {
            tracing::debug!("cgroup {} not removed: {e}", cg.dir.display());
        }
    }
    // The lease lasts until nothing of the run is left.
    report_refusals(&mut lease);
    if let Some(l) = lease.take() {
        l.end();
    }
    // The command itself is not a leftover when it ended by itself.
    let left: Vec<Leftover> = all_left.into_iter().filter(|l| l.proc.pid != child_pid || !matches!(stop, Stop::Exited)).collect();
    if !left.is_empty() {
        rep.ended(&why, &left, &ending);
    } else if ready && !matches!(stop, Stop::Exited) {
        rep.say(&why);
    }
    if let Some(p) = &opts.pid_file {
        let _ = std::fs::remove_file(p);
    }
    // The remap ends with the run (its programs are detached here, or by the kernel
    // when portwatch dies).
    drop(isolation);
    Ok(match stop {
        Stop::NotReady(_) | Stop::Ended => exit::CONDITION,
        Stop::Exited if !ready && has_targets && status.is_some_and(|s| s.success()) => exit::CONDITION,
        Stop::Signal(sig) if status.is_none() => 128 + sig as u8,
        _ => status.map_or(exit::INTERNAL, status_code),
    })
}

/// `--isolate-ports`: the run's cgroup (required) and the remap of its ports.
fn isolated(opts: &RunOptions, owner: RunOwner) -> Result<(Option<RunCgroup>, Option<Isolation>)> {
    if opts.ports.is_empty() {
        return Err(Error::Usage("--isolate-ports needs the ports to isolate: -p PORTS".into()));
    }
    crate::ebpf::loader::preflight()?;
    let cg = RunCgroup::create(owner).map_err(|e| {
        Error::unsupported(
            format!("--isolate-ports needs a cgroup v2 of its own for the run, which cannot be created: {e}"),
            "a writable cgroup v2 mount is required (portwatch doctor)",
        )
    })?;
    match remap::isolate(&opts.ports, &cg) {
        Ok(i) => Ok((Some(cg), Some(i))),
        Err(e) => {
            let _ = cg.remove(Duration::ZERO);
            Err(e)
        }
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
