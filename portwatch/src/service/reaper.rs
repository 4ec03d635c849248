//! Getting a port back, always the same way: one look at the port's holders, one
//! plan ([`model::plan`](crate::model::plan)) authorized target by target, and that
//! plan executed exactly: each target pinned with a pidfd and re-checked (same
//! process, still holding the socket, still signallable by the caller), SIGTERM
//! (with SIGCONT for stopped ones), `grace`, SIGKILL what remains (with `force`),
//! then a check that the port is bindable. A process that appears after the plan is
//! never signalled.
use std::{
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use crate::{
    error::{exit, Error, Result},
    model::{
        plan::{
            self, Caller, Ending, FreeStatus, HeldFd, Outcome, PortPlan, PortReport, Protect, Sequence, Signal, SignalSent, Skipped, Target,
        },
        ports::PortSet,
        process::{may_signal, Creds},
        socket::{Proto, Socket},
    },
    service::holders::{self, WhoOptions},
    sys::{
        pidfd::PidFd,
        proc,
        sockdiag::{self, Query},
    },
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

impl FreeOptions {
    fn sequence(&self) -> Sequence {
        Sequence { force: self.force, grace: self.grace }
    }
}

/// portwatch itself as the caller: its own credentials, never itself or its
/// ancestors.
pub fn caller_self() -> Caller {
    let pid = std::process::id() as i32;
    let (r, e, s) =
        nix::unistd::getresuid().map_or((u32::MAX, u32::MAX, u32::MAX), |u| (u.real.as_raw(), u.effective.as_raw(), u.saved.as_raw()));
    Caller {
        creds: Creds { ruid: r, euid: e, suid: s },
        root: e == 0,
        portwatch: pid,
        portwatch_ancestors: proc::ancestors(pid).into_iter().map(|(p, _)| p).collect(),
        hidden_pids: proc::in_nested_pid_namespace(),
        client: None,
        client_ancestors: Default::default(),
    }
}

/// A client of the agent's control socket, known by its peer credentials: it may
/// signal what `kill(2)` would let it, never itself or its own ancestors (nor the
/// agent and the agent's ancestors).
pub fn caller_client(uid: u32, pid: Option<i32>) -> Caller {
    let mut c = caller_self();
    c.creds = Creds { ruid: uid, euid: uid, suid: uid };
    c.root = uid == 0;
    c.client = pid;
    c.client_ancestors = pid.map(|p| proc::ancestors(p).into_iter().map(|(p, _)| p).collect()).unwrap_or_default();
    c
}

/// Plans the reaping of `sockets` (all on `port`) for `caller`.
pub fn plan_port(port: u16, sockets: &[&Socket], caller: &Caller, protect: &Protect, seq: Sequence) -> PortPlan {
    plan::plan(port, sockets, caller, protect, seq, &|pid| (proc::creds(pid), proc::exe(pid)))
}

/// Whether nothing on `port` holds it for the given protocols.
pub fn port_is_free(port: u16, q: Query) -> bool {
    sockdiag::sockets_on_ports(&[port], q).map(|v| v.is_empty()).unwrap_or(false)
}

/// Whether a fresh socket can bind `addr:port` (with SO_REUSEADDR, as servers do).
pub fn bindable(proto: Proto, addr: IpAddr, port: u16) -> bool {
    use socket2::{Domain, Socket, Type};
    let domain = if addr.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 };
    let ty = if proto == Proto::Tcp { Type::STREAM } else { Type::DGRAM };
    let Ok(s) = Socket::new(domain, ty, None) else { return false };
    let _ = s.set_reuse_address(true);
    if addr.is_ipv6() {
        let _ = s.set_only_v6(true);
    }
    s.bind(&SocketAddr::new(addr, port).into()).is_ok()
}

/// Whether `pid` still holds one of `fds`, read through /proc.
pub fn still_holds(pid: i32, fds: &[HeldFd]) -> bool {
    fds.iter().any(|f| proc::fd_is_socket(pid, f.fd, f.inode))
}

/// Why a pinned target must not be signalled after all, if so: the pidfd must name
/// the planned process (same start time), which must still be `ours` (hold the
/// socket; be part of the run) and still be one the caller may signal.
fn recheck(t: &Target, fd: &PidFd, caller: &Caller, ours: &dyn Fn(&Target) -> Option<&'static str>) -> Option<&'static str> {
    match proc::start_and_state(t.proc.pid) {
        Some((start, _)) if start == t.proc.start_ticks => {}
        _ => return Some("the pid now names another process (it was reused)"),
    }
    if let Some(why) = ours(t) {
        return Some(why);
    }
    if !caller.root && !proc::creds(t.proc.pid).is_some_and(|c| may_signal(caller.creds, c)) {
        return Some("its credentials changed since the plan: the caller may no longer signal it");
    }
    // Still alive now, so the /proc reads above were about the pinned process.
    if fd.exited() {
        return Some("exited");
    }
    None
}

fn holds_its_socket(t: &Target) -> Option<&'static str> {
    (!still_holds(t.proc.pid, &t.fds)).then_some("no longer holds the socket (closed, or the pid was reused)")
}

fn to_nix(sig: Signal) -> nix::sys::signal::Signal {
    use nix::sys::signal::Signal as S;
    match sig {
        Signal::Term => S::SIGTERM,
        Signal::Cont => S::SIGCONT,
        Signal::Kill => S::SIGKILL,
    }
}

/// Pins each target with a pidfd, re-checks it (`ours` says whether it is still
/// the process the plan meant), then SIGTERM (and SIGCONT to stopped ones), up to
/// `grace`, and SIGKILL what is alive with `force`. Returns the pinned pidfds.
fn signal_sequence(
    targets: &[Target],
    caller: &Caller,
    seq: Sequence,
    ours: &dyn Fn(&Target) -> Option<&'static str>,
    out: &mut Outcome,
) -> Vec<PidFd> {
    let start = Instant::now();
    // Pin each target first, then verify that the pinned process is the planned one.
    let mut live: Vec<(PidFd, &Target)> = Vec::new();
    for t in targets {
        match PidFd::open(t.proc.pid) {
            Ok(fd) => match recheck(t, &fd, caller, ours) {
                None => live.push((fd, t)),
                Some(why) => out.skipped.push(Skipped { pid: t.proc.pid, why: why.into() }),
            },
            Err(e) => out.skipped.push(Skipped { pid: t.proc.pid, why: format!("gone ({e})") }),
        }
    }
    let send = |fd: &PidFd, sig: Signal, out: &mut Outcome| {
        let ok = fd.signal(to_nix(sig)).is_ok();
        out.signals.push(SignalSent { pid: fd.pid, signal: sig, ok });
    };
    for (fd, _) in &live {
        send(fd, Signal::Term, out);
    }
    for (fd, t) in &live {
        if t.proc.is_stopped() {
            send(fd, Signal::Cont, out);
        }
    }
    let deadline = start + seq.grace;
    while Instant::now() < deadline && !live.iter().all(|(fd, _)| fd.exited()) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let remaining: Vec<&(PidFd, &Target)> = live.iter().filter(|(fd, _)| !fd.exited()).collect();
    if seq.force && !remaining.is_empty() {
        for (fd, _) in &remaining {
            send(fd, Signal::Kill, out);
        }
        for (fd, _) in &remaining {
            fd.wait_exit(Duration::from_secs(5));
        }
    }
    live.into_iter().map(|(fd, _)| fd).collect()
}

/// Ends processes that are not a port's holders (a run's leftovers, an abandoned
/// run's cgroup) by the same rules as a port: each authorized for `caller`, pinned,
/// re-checked (same process, still `ours`), SIGTERM, grace, SIGKILL with `force`.
/// A refused process is left alone; the others are still ended.
pub fn end_processes(pids: &[i32], caller: &Caller, protect: &Protect, seq: Sequence, ours: &dyn Fn(i32) -> bool) -> Ending {
    let start = Instant::now();
    let mut e = Ending::default();
    for &pid in pids {
        let Some(info) = proc::info(pid) else { continue };
        let t = Target { creds: proc::creds(pid), exe: proc::exe(pid), proc: info, fds: Vec::new() };
        match plan::refusal(&t, caller, protect) {
            Some(r) => e.refused.push((pid, r)),
            None => e.targets.push(t),
        }
    }
    let live = signal_sequence(&e.targets, caller, seq, &|t| (!ours(t.proc.pid)).then_some("no longer part of the run"), &mut e.outcome);
    e.outcome.survivors = live.iter().filter(|fd| !fd.exited()).map(|fd| fd.pid).collect();
    e.outcome.freed = e.outcome.survivors.is_empty();
    e.outcome.elapsed_ms = start.elapsed().as_millis() as u64;
    e
}

/// Carries out a plan, and nothing beyond it. `free_check` says whether the port is
/// free now (sock_diag).
pub fn execute(plan: &PortPlan, caller: &Caller, free_check: &dyn Fn(u16) -> bool) -> Outcome {
    let start = Instant::now();
    let mut out = Outcome { port: plan.port, ..Outcome::default() };
    if plan.refused.is_some() {
        return out;
    }
    let live = signal_sequence(&plan.targets, caller, plan.sequence, &holds_its_socket, &mut out);
    out.survivors = live.iter().filter(|fd| !fd.exited()).map(|fd| fd.pid).collect();
    // The last holder's exit closes the socket; confirm nobody (re)took the port.
    let confirm_until = Instant::now() + Duration::from_millis(500);
    loop {
        let free = free_check(plan.port) && plan.addrs.iter().all(|(p, a)| bindable(*p, *a, plan.port));
        if free || Instant::now() >= confirm_until || !out.survivors.is_empty() {
            out.freed = free;
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    out.elapsed_ms = start.elapsed().as_millis() as u64;
    out
}

/// Plans and (unless a dry run) executes the reaping of `sockets` (all on `port`).
pub fn reap_sockets(port: u16, sockets: &[&Socket], opts: &FreeOptions, caller: &Caller) -> PortReport {
    let plan = plan_port(port, sockets, caller, &opts.protect, opts.sequence());
    let q = Query {
        tcp: sockets.iter().any(|s| s.proto == Proto::Tcp),
        udp: sockets.iter().any(|s| s.proto == Proto::Udp),
        connections: false,
    };
    let outcome = (!opts.dry_run && plan.refused.is_none()).then(|| execute(&plan, caller, &|p| port_is_free(p, q)));
    PortReport { port, plan, outcome }
}

/// `free`: one look at the ports' holders, one plan per port for `caller`, executed
/// unless a dry run. Returns the reports and notes about how holders were found.
pub fn free(ports: &PortSet, opts: &FreeOptions, caller: &Caller) -> Result<(Vec<PortReport>, Vec<String>)> {
    // TCP unless --udp alone; both flags: both.
    let who = WhoOptions { tcp: opts.tcp || !opts.udp, udp: opts.udp, prefetch: true, ..WhoOptions::default() };
    let r = holders::gather(ports, who)?;
    let reports: Vec<PortReport> = ports
        .iter()
        .map(|port| {
            let socks: Vec<&Socket> = r.on_port(port).collect();
            reap_sockets(port, &socks, opts, caller)
        })
        .collect();
    // Without privilege the holders of other users' sockets are invisible: say so,
    // rather than report a refusal.
    if !nix::unistd::geteuid().is_root() && reports.iter().any(|r| r.plan.sockets > 0 && r.plan.targets.is_empty()) {
        return Err(Error::privilege(
            "cannot see the processes holding these ports (they belong to other users)",
            "run as root, e.g. `sudo portwatch free ...`",
        ));
    }
    Ok((reports, r.notes))
}

/// The exit code of a set of reports (README: exit codes).
pub fn exit_code(reports: &[PortReport]) -> u8 {
    match plan::status(reports) {
        FreeStatus::Done => exit::OK,
        FreeStatus::StillHeld => exit::CONDITION,
        FreeStatus::Refused => exit::REFUSED,
        FreeStatus::Denied => exit::PRIVILEGE,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn still_holds_checks_the_real_fd_table() {
        use std::os::fd::AsRawFd;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let fd = l.as_raw_fd();
        let ino = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        let inode: u64 = ino.to_string_lossy().trim_start_matches("socket:[").trim_end_matches(']').parse().unwrap();
        let me = std::process::id() as i32;
        assert!(still_holds(me, &[HeldFd { fd, inode }]));
        assert!(!still_holds(me, &[HeldFd { fd, inode: inode + 1 }]), "another inode at that fd");
        let port = l.local_addr().unwrap().port();
        assert!(!bindable(Proto::Tcp, "127.0.0.1".parse().unwrap(), port));
        drop(l);
        assert!(bindable(Proto::Tcp, "127.0.0.1".parse().unwrap(), port));
    }

    #[test]
    fn the_caller_never_includes_a_stranger() {
        let me = caller_self();
        assert_eq!(me.portwatch, std::process::id() as i32);
        assert!(me.portwatch_ancestors.contains(&std::os::unix::process::parent_id().try_into().unwrap()));
        let client = caller_client(65534, Some(me.portwatch));
        assert!(!client.root && client.creds.euid == 65534);
        assert_eq!(client.client, Some(me.portwatch));
    }
}
