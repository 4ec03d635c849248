//! Getting a port back, always the same way: identify every holder of the socket,
//! refuse protected processes, open a pidfd on each and re-check through /proc that it
//! still holds the socket, SIGTERM (with SIGCONT for stopped ones), wait `grace`,
//! SIGKILL what remains (with `force`), then confirm the port is bindable.
use std::{
    collections::{BTreeMap, HashSet},
    net::{IpAddr, SocketAddr},
    time::{Duration, Instant},
};

use nix::sys::signal::Signal;
use serde::Serialize;

use crate::{
    config::Protect,
    sys::{pidfd::PidFd, sockdiag::Proto},
    who::SocketReport,
};

/// What portwatch knows about itself, to never signal itself or its ancestors.
#[derive(Clone, Debug)]
pub struct SelfInfo {
    pub pid: i32,
    pub ancestors: HashSet<i32>,
}

impl SelfInfo {
    pub fn current() -> Self {
        let pid = std::process::id() as i32;
        let mut ancestors = HashSet::new();
        let mut p = pid;
        for _ in 0..64 {
            let Some(ppid) = procfs::process::Process::new(p).ok().and_then(|pr| pr.stat().ok()).map(|s| s.ppid) else {
                break;
            };
            if ppid <= 0 || !ancestors.insert(ppid) {
                break;
            }
            p = ppid;
        }
        Self { pid, ancestors }
    }
}

/// One process to signal, with the sockets (fd, inode) it holds on the port.
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Target {
    pub pid: i32,
    pub ppid: i32,
    pub comm: String,
    pub uid: u32,
    pub state: String,
    pub cmdline: String,
    pub cgroup: String,
    pub fds: Vec<(i32, u64)>,
}

#[derive(Clone, Debug, Serialize)]
pub struct PortPlan {
    pub port: u16,
    pub sockets: usize,
    pub targets: Vec<Target>,
    /// Why nothing will be signalled on this port, if so.
    pub refused: Option<String>,
    /// The signal sequence, in words.
    pub steps: Vec<String>,
    #[serde(skip)]
    pub addrs: Vec<(Proto, IpAddr)>,
}

/// Why `holder` must not be signalled, if it must not.
pub fn protected(t: &Target, me: &SelfInfo, protect: &Protect) -> Option<String> {
    if t.pid == 1 {
        return Some(format!("pid 1 ({}) is the init of this pid namespace", t.comm));
    }
    if t.pid == me.pid {
        return Some("it is portwatch itself".into());
    }
    if me.ancestors.contains(&t.pid) {
        return Some(format!("pid {} ({}) is an ancestor of portwatch", t.pid, t.comm));
    }
    if t.pid == 2 || t.ppid == 2 || t.cmdline.is_empty() && t.comm.starts_with('[') {
        return Some(format!("pid {} ({}) is a kernel thread", t.pid, t.comm));
    }
    if protect.comm.iter().any(|c| c == &t.comm) {
        return Some(format!("pid {} ({}) is protected by name", t.pid, t.comm));
    }
    if protect.uid.contains(&t.uid) {
        return Some(format!("pid {} ({}) is protected: uid {}", t.pid, t.comm, t.uid));
    }
    if let Some(cg) = protect.cgroup.iter().find(|c| t.cgroup.starts_with(c.as_str())) {
        return Some(format!("pid {} ({}) is protected: cgroup {cg}", t.pid, t.comm));
    }
    None
}

/// Plans the reaping of every holder of `sockets` (all on `port`). Pure.
pub fn plan(port: u16, sockets: &[&SocketReport], me: &SelfInfo, protect: &Protect, force: bool, grace: Duration) -> PortPlan {
    let mut by_pid: BTreeMap<i32, Target> = BTreeMap::new();
    for s in sockets {
        for h in &s.holders {
            by_pid
                .entry(h.proc.pid)
                .or_insert_with(|| Target {
                    pid: h.proc.pid,
                    ppid: h.proc.ppid,
                    comm: h.proc.comm.clone(),
                    uid: h.proc.uid,
                    state: h.proc.state.to_string(),
                    cmdline: h.proc.cmdline.clone(),
                    cgroup: h.proc.cgroup.clone(),
                    fds: Vec::new(),
                })
                .fds
                .push((h.fd, s.inode));
        }
    }
    let targets: Vec<Target> = by_pid.into_values().collect();
    let mut refused = targets.iter().find_map(|t| protected(t, me, protect));
    if refused.is_none() && targets.is_empty() && !sockets.is_empty() {
        refused = Some("no process found holding it (another pid namespace, or not visible)".into());
    }
    let mut steps = Vec::new();
    if refused.is_none() && !targets.is_empty() {
        steps.push(format!("SIGTERM to {} process{}", targets.len(), if targets.len() == 1 { "" } else { "es" }));
        let stopped = targets.iter().filter(|t| t.state == "T" || t.state == "t").count();
        if stopped > 0 {
            steps.push(format!("SIGCONT to the {stopped} stopped, so they act on SIGTERM"));
        }
        if force {
            steps.push(format!("after {}: SIGKILL to any still alive", humantime::format_duration(grace)));
        } else {
            steps.push(format!("wait up to {}; no SIGKILL without --force", humantime::format_duration(grace)));
        }
    }
    let addrs = sockets.iter().filter_map(|s| s.addr.parse().ok().map(|a| (s.proto, a))).collect();
    PortPlan { port, sockets: sockets.len(), targets, refused, steps, addrs }
}

#[derive(Clone, Debug, Serialize)]
pub struct SignalSent {
    pub pid: i32,
    pub signal: &'static str,
    pub ok: bool,
}

#[derive(Clone, Debug, Serialize)]
pub struct Outcome {
    pub port: u16,
    pub freed: bool,
    pub refused: Option<String>,
    pub signals: Vec<SignalSent>,
    /// Targets not signalled, with why (gone, or no longer holding the socket).
    pub skipped: Vec<(i32, String)>,
    pub survivors: Vec<i32>,
    pub elapsed_ms: u64,
}

/// Whether `pid` still holds one of `fds` (fd -> socket inode), read through /proc.
pub fn still_holds(pid: i32, fds: &[(i32, u64)]) -> bool {
    fds.iter().any(|&(fd, ino)| crate::sys::proc::fd_is_socket(pid, fd, ino))
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

/// Carries out a plan. `free_check` says whether the port is free now (sock_diag).
pub fn execute(plan: &PortPlan, force: bool, grace: Duration, free_check: &dyn Fn(u16) -> bool) -> Outcome {
    let start = Instant::now();
    let mut out = Outcome {
        port: plan.port,
        freed: false,
        refused: plan.refused.clone(),
        signals: Vec::new(),
        skipped: Vec::new(),
        survivors: Vec::new(),
        elapsed_ms: 0,
    };
    if plan.refused.is_some() {
        return out;
    }
    // Pin each target first, then verify through /proc that the pinned process (not
    // a successor with the same pid) holds the socket.
    let mut live: Vec<(PidFd, &Target)> = Vec::new();
    for t in &plan.targets {
        match PidFd::open(t.pid) {
            Ok(fd) if still_holds(t.pid, &t.fds) && !fd.exited() => live.push((fd, t)),
            Ok(_) => out.skipped.push((t.pid, "no longer holds the socket (closed, or the pid was reused)".into())),
            Err(e) => out.skipped.push((t.pid, format!("gone ({e})"))),
        }
    }
    let send = |fd: &PidFd, sig: Signal, out: &mut Outcome| {
        let ok = fd.signal(sig).is_ok();
        out.signals.push(SignalSent { pid: fd.pid, signal: sig.as_str(), ok });
    };
    for (fd, _) in &live {
        send(fd, Signal::SIGTERM, &mut out);
    }
    for (fd, t) in &live {
        if t.state == "T" || t.state == "t" {
            send(fd, Signal::SIGCONT, &mut out);
        }
    }
    let deadline = start + grace;
    while Instant::now() < deadline && !live.iter().all(|(fd, _)| fd.exited()) {
        std::thread::sleep(Duration::from_millis(10));
    }
    let remaining: Vec<&(PidFd, &Target)> = live.iter().filter(|(fd, _)| !fd.exited()).collect();
    if force && !remaining.is_empty() {
        for (fd, _) in &remaining {
            send(fd, Signal::SIGKILL, &mut out);
        }
        for (fd, _) in &remaining {
            fd.wait_exit(Duration::from_secs(5));
        }
    }
    out.survivors = live.iter().filter(|(fd, _)| !fd.exited()).map(|(fd, _)| fd.pid).collect();
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        sys::proc::ProcInfo,
        who::{Holder, SocketReport},
    };

    fn holder(pid: i32, ppid: i32, comm: &str, state: char) -> Holder {
        let proc = ProcInfo {
            pid,
            ppid,
            uid: 1000,
            user: "ci".into(),
            comm: comm.into(),
            cmdline: format!("{comm} --serve"),
            state,
            start_time: None,
            age_secs: None,
            cgroup: "/user.slice".into(),
            container: None,
        };
        Holder { proc, fd: 3 }
    }

    fn sock(holders: Vec<Holder>) -> SocketReport {
        SocketReport {
            port: 5050,
            proto: Proto::Tcp,
            family: "ipv4",
            addr: "127.0.0.1".into(),
            state: "listen",
            inode: 77,
            cookie: 1,
            uid: 1000,
            accept_queue: Some(0),
            backlog: Some(128),
            peer: None,
            holders,
        }
    }

    fn me() -> SelfInfo {
        SelfInfo { pid: 500, ancestors: HashSet::from([400, 1]) }
    }

    #[test]
    fn plans_master_and_workers_with_sigcont_for_stopped() {
        let s = sock(vec![holder(10, 1, "gunicorn", 'T'), holder(11, 10, "gunicorn", 'T'), holder(12, 10, "gunicorn", 'S')]);
        let p = plan(5050, &[&s], &me(), &Protect::default(), true, Duration::from_secs(5));
        assert_eq!(p.refused, None);
        assert_eq!(p.targets.iter().map(|t| t.pid).collect::<Vec<_>>(), vec![10, 11, 12]);
        assert_eq!(p.targets[0].fds, vec![(3, 77)]);
        assert!(p.steps[0].contains("SIGTERM to 3"));
        assert!(p.steps[1].contains("SIGCONT to the 2 stopped"));
        assert!(p.steps.last().unwrap().contains("SIGKILL"));
        let soft = plan(5050, &[&s], &me(), &Protect::default(), false, Duration::from_secs(5));
        assert!(soft.steps.last().unwrap().contains("no SIGKILL"));
    }

    #[test]
    fn refuses_pid1_self_ancestors_kernel_threads_and_protected() {
        let p = |h: Holder, protect: &Protect| plan(5050, &[&sock(vec![h])], &me(), protect, true, Duration::ZERO).refused;
        let none = Protect::default();
        assert!(p(holder(1, 0, "init", 'S'), &none).unwrap().contains("pid 1"));
        assert!(p(holder(500, 400, "portwatch", 'R'), &none).unwrap().contains("portwatch itself"));
        assert!(p(holder(400, 1, "bash", 'S'), &none).unwrap().contains("ancestor"));
        assert!(p(holder(33, 2, "kworker", 'S'), &none).unwrap().contains("kernel thread"));
        let by_comm = Protect { comm: vec!["sshd".into()], ..Protect::default() };
        assert!(p(holder(40, 1, "sshd", 'S'), &by_comm).unwrap().contains("protected by name"));
        let by_uid = Protect { uid: vec![1000], ..Protect::default() };
        assert!(p(holder(40, 1, "x", 'S'), &by_uid).unwrap().contains("uid 1000"));
        let by_cg = Protect { cgroup: vec!["/user.slice".into()], ..Protect::default() };
        assert!(p(holder(40, 1, "x", 'S'), &by_cg).unwrap().contains("cgroup"));
        assert_eq!(p(holder(40, 1, "x", 'S'), &none), None);
        // A socket nobody visible holds cannot be freed.
        let orphan = plan(5050, &[&sock(vec![])], &me(), &none, true, Duration::ZERO);
        assert!(orphan.refused.unwrap().contains("no process"));
    }

    #[test]
    fn still_holds_checks_the_real_fd_table() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        use std::os::fd::AsRawFd;
        let fd = l.as_raw_fd();
        let ino = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
        let ino: u64 = ino.to_string_lossy().trim_start_matches("socket:[").trim_end_matches(']').parse().unwrap();
        let me = std::process::id() as i32;
        assert!(still_holds(me, &[(fd, ino)]));
        assert!(!still_holds(me, &[(fd, ino + 1)]), "another inode at that fd");
        let port = l.local_addr().unwrap().port();
        assert!(!bindable(Proto::Tcp, "127.0.0.1".parse().unwrap(), port));
        drop(l);
        assert!(bindable(Proto::Tcp, "127.0.0.1".parse().unwrap(), port));
    }
}
