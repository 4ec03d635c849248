//! The reap plan: which processes to signal to get a port back, and whether that is
//! allowed. Built once from one look at the port's holders, authorized target by
//! target, then executed exactly as planned (`service::reaper`). Pure.
use std::{
    collections::{BTreeMap, HashSet},
    fmt,
    net::IpAddr,
    time::Duration,
};

use serde::{Deserialize, Serialize, Serializer};

use super::{
    process::{may_signal, Creds, ProcInfo},
    socket::{Proto, Socket},
};

/// Processes portwatch never signals, in addition to PID 1, itself, its ancestors,
/// the caller's own tree and kernel threads. A name (`comm`) can be chosen by any
/// process, so protection by name is a convenience, not a boundary: protect by uid,
/// cgroup or executable path where it matters.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Protect {
    /// Exact process names (comm).
    pub comm: Vec<String>,
    pub uid: Vec<u32>,
    /// cgroup v2 path prefixes, e.g. "/system.slice/sshd.service".
    pub cgroup: Vec<String>,
    /// Executable paths (`/proc/PID/exe`), exact.
    pub exe: Vec<String>,
}

/// Who asks for the signals, and whom they must never reach.
#[derive(Clone, Debug, Default)]
pub struct Caller {
    pub creds: Creds,
    /// May signal any process (root: CAP_KILL).
    pub root: bool,
    /// portwatch's own pid and its ancestors.
    pub portwatch: i32,
    pub portwatch_ancestors: HashSet<i32>,
    /// portwatch cannot see every process (it runs in a nested pid namespace).
    pub hidden_pids: bool,
    /// The requesting process and its ancestors, when it is not portwatch itself
    /// (a client of the agent's control socket).
    pub client: Option<i32>,
    pub client_ancestors: HashSet<i32>,
}

/// Why a process (and so the port) will not be signalled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    Init {
        comm: String,
    },
    Portwatch,
    PortwatchAncestor {
        pid: i32,
        comm: String,
    },
    Caller {
        pid: i32,
        comm: String,
    },
    CallerAncestor {
        pid: i32,
        comm: String,
    },
    KernelThread {
        pid: i32,
        comm: String,
    },
    ProtectedName {
        pid: i32,
        comm: String,
    },
    ProtectedUid {
        pid: i32,
        comm: String,
        uid: u32,
    },
    ProtectedCgroup {
        pid: i32,
        comm: String,
        cgroup: String,
    },
    ProtectedExe {
        pid: i32,
        comm: String,
        exe: String,
    },
    /// `kill(2)` would refuse the caller (EPERM).
    NotPermitted {
        pid: i32,
        comm: String,
        caller_uid: u32,
        ruid: u32,
        suid: u32,
    },
    /// The process's credentials could not be read (it is gone, or hidden).
    Unverifiable {
        pid: i32,
        comm: String,
    },
    /// Sockets are on the port, but no visible process holds them: `hidden` when the
    /// caller cannot see every process (a nested pid namespace).
    NoHolder {
        hidden: bool,
    },
    /// A refusal as the agent reported it.
    Relayed {
        kind: RefusalKind,
        reason: String,
    },
}

/// The kind of a [`Refusal`], as JSON names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RefusalKind {
    /// PID 1, portwatch, its ancestors, the caller or the caller's ancestors.
    Essential,
    KernelThread,
    /// By the `protect` configuration.
    Protected,
    /// The caller may not signal it.
    Denied,
    NoHolder,
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Init { comm } => write!(f, "pid 1 ({comm}) is the init of this pid namespace"),
            Self::Portwatch => write!(f, "it is portwatch itself"),
            Self::PortwatchAncestor { pid, comm } => write!(f, "pid {pid} ({comm}) is an ancestor of portwatch"),
            Self::Caller { pid, comm } => write!(f, "pid {pid} ({comm}) is the caller itself"),
            Self::CallerAncestor { pid, comm } => write!(f, "pid {pid} ({comm}) is an ancestor of the caller"),
            Self::KernelThread { pid, comm } => write!(f, "pid {pid} ({comm}) is a kernel thread"),
            Self::ProtectedName { pid, comm } => write!(f, "pid {pid} ({comm}) is protected by name"),
            Self::ProtectedUid { pid, comm, uid } => write!(f, "pid {pid} ({comm}) is protected: uid {uid}"),
            Self::ProtectedCgroup { pid, comm, cgroup } => write!(f, "pid {pid} ({comm}) is protected: cgroup {cgroup}"),
            Self::ProtectedExe { pid, comm, exe } => write!(f, "pid {pid} ({comm}) is protected: exe {exe}"),
            Self::NotPermitted { pid, comm, caller_uid, ruid, suid } => write!(
                f,
                "denied: uid {caller_uid} may not signal pid {pid} ({comm}): it runs as uid {ruid} (saved uid {suid}), as kill(2) would refuse"
            ),
            Self::Unverifiable { pid, comm } => write!(f, "pid {pid} ({comm}): its credentials could not be read"),
            Self::NoHolder { hidden: true } => {
                write!(f, "no process found holding it: portwatch runs in a nested pid namespace and cannot see the holder")
            }
            Self::NoHolder { hidden: false } => write!(
                f,
                "no process holds it through a file descriptor: it is in flight over a unix socket (SCM_RIGHTS) or held by the kernel, and closes when that reference goes"
            ),
            Self::Relayed { reason, .. } => f.write_str(reason),
        }
    }
}

impl Refusal {
    pub fn kind(&self) -> RefusalKind {
        match self {
            Self::Init { .. } | Self::Portwatch | Self::PortwatchAncestor { .. } | Self::Caller { .. } | Self::CallerAncestor { .. } => {
                RefusalKind::Essential
            }
            Self::KernelThread { .. } => RefusalKind::KernelThread,
            Self::ProtectedName { .. } | Self::ProtectedUid { .. } | Self::ProtectedCgroup { .. } | Self::ProtectedExe { .. } => {
                RefusalKind::Protected
            }
            Self::NotPermitted { .. } | Self::Unverifiable { .. } => RefusalKind::Denied,
            Self::NoHolder { .. } => RefusalKind::NoHolder,
            Self::Relayed { kind, .. } => *kind,
        }
    }

    /// The caller lacks a privilege (as opposed to a protected target).
    pub fn is_permission(&self) -> bool {
        self.kind() == RefusalKind::Denied
    }
}

/// A refusal in JSON: `{"kind": "denied", "reason": "..."}`.
#[derive(Serialize, Deserialize)]
struct RefusalWire {
    kind: RefusalKind,
    reason: String,
}

impl Serialize for Refusal {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        RefusalWire { kind: self.kind(), reason: self.to_string() }.serialize(s)
    }
}

impl<'de> Deserialize<'de> for Refusal {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let w = RefusalWire::deserialize(d)?;
        Ok(Self::Relayed { kind: w.kind, reason: w.reason })
    }
}

/// One fd through which a target holds a socket on the port.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HeldFd {
    pub fd: i32,
    pub inode: u64,
}

/// One process to signal, with the sockets it holds on the port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    #[serde(flatten)]
    pub proc: ProcInfo,
    /// Its credentials when the plan was made; re-checked before any signal.
    #[serde(skip)]
    pub creds: Option<Creds>,
    /// Its executable path, for `protect.exe`.
    #[serde(skip)]
    pub exe: Option<String>,
    pub fds: Vec<HeldFd>,
}

/// The signal sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sequence {
    /// SIGKILL what is still alive after `grace`.
    pub force: bool,
    #[serde(with = "millis", rename = "grace_ms")]
    pub grace: Duration,
}

mod millis {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(d.as_millis() as u64)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        u64::deserialize(d).map(Duration::from_millis)
    }
}

/// Everything that will be done (or was refused) to get one port back.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortPlan {
    pub port: u16,
    /// Sockets on the port when the plan was made.
    pub sockets: usize,
    pub targets: Vec<Target>,
    /// Why nothing will be signalled on this port, if so.
    pub refused: Option<Refusal>,
    pub sequence: Sequence,
    /// The signal sequence, in words.
    pub steps: Vec<String>,
    /// The sockets' protocols and addresses, to confirm the port is bindable after.
    #[serde(skip)]
    pub addrs: Vec<(Proto, IpAddr)>,
}

/// A signal portwatch sends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Signal {
    #[serde(rename = "SIGTERM")]
    Term,
    #[serde(rename = "SIGCONT")]
    Cont,
    #[serde(rename = "SIGKILL")]
    Kill,
}

impl Signal {
    pub fn name(self) -> &'static str {
        match self {
            Self::Term => "SIGTERM",
            Self::Cont => "SIGCONT",
            Self::Kill => "SIGKILL",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalSent {
    pub pid: i32,
    pub signal: Signal,
    pub ok: bool,
}

/// A planned target that was not signalled, and why.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Skipped {
    pub pid: i32,
    pub why: String,
}

/// What executing a plan did.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Outcome {
    pub port: u16,
    pub freed: bool,
    pub signals: Vec<SignalSent>,
    /// Targets not signalled, with why (gone, no longer holding the socket, changed).
    pub skipped: Vec<Skipped>,
    pub survivors: Vec<i32>,
    pub elapsed_ms: u64,
}

impl Outcome {
    pub fn count(&self, sig: Signal) -> usize {
        self.signals.iter().filter(|s| s.signal == sig).count()
    }
}

/// A process a run left behind, with the ports it held.
#[derive(Clone, Debug, Serialize)]
pub struct Leftover {
    pub proc: ProcInfo,
    pub ports: Vec<(Proto, u16)>,
}

/// What ending a set of processes did: who was planned, who was refused and why,
/// and the signals.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Ending {
    pub targets: Vec<Target>,
    /// The processes left alone, with why.
    pub refused: Vec<(i32, Refusal)>,
    pub outcome: Outcome,
}

/// One port's plan and, unless it was a dry run or refused, its outcome.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PortReport {
    pub port: u16,
    pub plan: PortPlan,
    pub outcome: Option<Outcome>,
}

/// How a set of reports ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FreeStatus {
    /// Every port is free (or a dry run).
    Done,
    /// A port is still held.
    StillHeld,
    /// A port was refused because a target is protected.
    Refused,
    /// A port was refused because the caller may not signal a target.
    Denied,
}

/// Refusals win, then anything still held.
pub fn status(reports: &[PortReport]) -> FreeStatus {
    let refusals: Vec<&Refusal> = reports.iter().filter_map(|r| r.plan.refused.as_ref()).collect();
    if refusals.iter().any(|r| r.is_permission()) {
        FreeStatus::Denied
    } else if !refusals.is_empty() {
        FreeStatus::Refused
    } else if reports.iter().any(|r| r.outcome.as_ref().is_some_and(|o| !o.freed)) {
        FreeStatus::StillHeld
    } else {
        FreeStatus::Done
    }
}

/// Why `t` must not be signalled by `caller`, if it must not.
pub fn refusal(t: &Target, caller: &Caller, protect: &Protect) -> Option<Refusal> {
    let (pid, comm) = (t.proc.pid, t.proc.comm.clone());
    if pid == 1 {
        return Some(Refusal::Init { comm });
    }
    if pid == caller.portwatch {
        return Some(Refusal::Portwatch);
    }
    if caller.portwatch_ancestors.contains(&pid) {
        return Some(Refusal::PortwatchAncestor { pid, comm });
    }
    if caller.client == Some(pid) {
        return Some(Refusal::Caller { pid, comm });
    }
    if caller.client_ancestors.contains(&pid) {
        return Some(Refusal::CallerAncestor { pid, comm });
    }
    if t.proc.kernel_thread {
        return Some(Refusal::KernelThread { pid, comm });
    }
    if protect.comm.contains(&t.proc.comm) {
        return Some(Refusal::ProtectedName { pid, comm });
    }
    if protect.uid.contains(&t.proc.uid) {
        return Some(Refusal::ProtectedUid { pid, comm, uid: t.proc.uid });
    }
    if let Some(cg) = protect.cgroup.iter().find(|c| t.proc.cgroup.starts_with(c.as_str())) {
        return Some(Refusal::ProtectedCgroup { pid, comm, cgroup: cg.clone() });
    }
    if let Some(exe) = t.exe.as_ref().filter(|e| protect.exe.contains(e)) {
        return Some(Refusal::ProtectedExe { pid, comm, exe: exe.clone() });
    }
    if !caller.root {
        match t.creds {
            None => return Some(Refusal::Unverifiable { pid, comm }),
            Some(c) if !may_signal(caller.creds, c) => {
                return Some(Refusal::NotPermitted { pid, comm, caller_uid: caller.creds.euid, ruid: c.ruid, suid: c.suid })
            }
            Some(_) => {}
        }
    }
    None
}

/// Plans the reaping of every holder of `sockets` (all on `port`): one target per
/// process, each authorized. `details` supplies what the plan checks beyond the
/// holder's `ProcInfo`: its credentials and executable.
pub fn plan(
    port: u16,
    sockets: &[&Socket],
    caller: &Caller,
    protect: &Protect,
    seq: Sequence,
    details: &dyn Fn(i32) -> (Option<Creds>, Option<String>),
) -> PortPlan {
    let mut by_pid: BTreeMap<i32, Target> = BTreeMap::new();
    for s in sockets {
        for h in &s.holders {
            by_pid
                .entry(h.proc.pid)
                .or_insert_with(|| {
                    let (creds, exe) = details(h.proc.pid);
                    Target { proc: h.proc.clone(), creds, exe, fds: Vec::new() }
                })
                .fds
                .push(HeldFd { fd: h.fd, inode: s.inode });
        }
    }
    let targets: Vec<Target> = by_pid.into_values().collect();
    let mut refused = targets.iter().find_map(|t| refusal(t, caller, protect));
    if refused.is_none() && targets.is_empty() && !sockets.is_empty() {
        refused = Some(Refusal::NoHolder { hidden: caller.hidden_pids });
    }
    let steps = if refused.is_none() && !targets.is_empty() { describe(&targets, seq) } else { Vec::new() };
    let addrs = sockets.iter().map(|s| (s.proto, s.addr)).collect();
    PortPlan { port, sockets: sockets.len(), targets, refused, sequence: seq, steps, addrs }
}

fn describe(targets: &[Target], seq: Sequence) -> Vec<String> {
    let n = targets.len();
    let mut steps = vec![format!("SIGTERM to {n} process{}", if n == 1 { "" } else { "es" })];
    let stopped = targets.iter().filter(|t| t.proc.is_stopped()).count();
    if stopped > 0 {
        steps.push(format!("SIGCONT to the {stopped} stopped, so they act on SIGTERM"));
    }
    let grace = crate::model::time::human(seq.grace);
    steps.push(if seq.force {
        format!("after {grace}: SIGKILL to any still alive")
    } else {
        format!("wait up to {grace}; no SIGKILL without --force")
    });
    steps
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{
        process::Holder,
        socket::{Family, SockState},
    };

    fn holder(pid: i32, ppid: i32, comm: &str, state: char) -> Holder {
        let proc = ProcInfo {
            pid,
            ppid,
            uid: 1000,
            user: "ci".into(),
            comm: comm.into(),
            cmdline: format!("{comm} --serve").into(),
            state,
            cgroup: "/user.slice".into(),
            ..ProcInfo::default()
        };
        Holder { proc, fd: 3 }
    }

    fn sock(holders: Vec<Holder>) -> Socket {
        Socket {
            port: 5050,
            proto: Proto::Tcp,
            family: Family::Ipv4,
            addr: "127.0.0.1".parse().unwrap(),
            state: SockState::Listen,
            inode: 42,
            cookie: 1,
            uid: 1000,
            accept_queue: Some(0),
            backlog: Some(128),
            peer: None,
            since: None,
            job: None,
            holders,
        }
    }

    fn root() -> Caller {
        Caller { creds: Creds::default(), root: true, portwatch: 500, portwatch_ancestors: HashSet::from([400, 1]), ..Caller::default() }
    }

    const CI: Creds = Creds { ruid: 1000, euid: 1000, suid: 1000 };

    fn ci_details(_: i32) -> (Option<Creds>, Option<String>) {
        (Some(CI), Some("/usr/bin/python3".into()))
    }

    const FORCE: Sequence = Sequence { force: true, grace: Duration::from_secs(5) };

    #[test]
    fn one_target_per_process_with_its_fds() {
        let mut h2 = holder(11, 10, "gunicorn", 'T');
        h2.fd = 7;
        let s = sock(vec![holder(10, 1, "gunicorn", 'S'), h2, holder(10, 1, "gunicorn", 'S')]);
        let p = plan(5050, &[&s], &root(), &Protect::default(), FORCE, &ci_details);
        assert_eq!(p.refused, None);
        assert_eq!(p.targets.iter().map(|t| t.proc.pid).collect::<Vec<_>>(), vec![10, 11]);
        assert_eq!(p.targets[0].fds, vec![HeldFd { fd: 3, inode: 42 }, HeldFd { fd: 3, inode: 42 }]);
        assert!(p.steps[1].contains("SIGCONT to the 1 stopped"));
        assert!(p.steps[2].contains("SIGKILL"));
        let soft = plan(5050, &[&s], &root(), &Protect::default(), Sequence { force: false, ..FORCE }, &ci_details);
        assert!(soft.steps.last().unwrap().contains("no SIGKILL"));
        let j = serde_json::to_value(&p).unwrap();
        assert_eq!(j["targets"][0]["fds"][0]["inode"], 42);
        assert_eq!(j["sequence"]["grace_ms"], 5000);
        // A refusal keeps its kind across the wire (the agent's replies).
        let denied = Refusal::NotPermitted { pid: 1, comm: "x".into(), caller_uid: 9, ruid: 0, suid: 0 };
        let back: Refusal = serde_json::from_value(serde_json::to_value(&denied).unwrap()).unwrap();
        assert!(back.is_permission() && back.to_string() == denied.to_string());
    }

    #[test]
    fn refuses_pid1_self_ancestors_kernel_threads_and_protected() {
        let p = |h: Holder, protect: &Protect| plan(5050, &[&sock(vec![h])], &root(), protect, FORCE, &ci_details).refused;
        let none = Protect::default();
        assert!(p(holder(1, 0, "init", 'S'), &none).unwrap().to_string().contains("pid 1"));
        assert_eq!(p(holder(500, 400, "portwatch", 'R'), &none), Some(Refusal::Portwatch));
        assert!(p(holder(400, 1, "bash", 'S'), &none).unwrap().to_string().contains("ancestor"));
        // By fact (PF_KTHREAD), not by look: a user process named like a kernel
        // thread, or with ppid 2 in a pid namespace, is an ordinary process.
        let mut kt = holder(33, 2, "kworker/0:1", 'S');
        kt.proc.kernel_thread = true;
        assert!(p(kt, &none).unwrap().to_string().contains("kernel thread"));
        let mut fake = holder(34, 2, "[kworker/1:2]", 'S');
        fake.proc.cmdline = "".into();
        assert_eq!(p(fake, &none), None);
        let by_comm = Protect { comm: vec!["sshd".into()], ..Protect::default() };
        assert!(p(holder(40, 1, "sshd", 'S'), &by_comm).unwrap().to_string().contains("protected by name"));
        let by_uid = Protect { uid: vec![1000], ..Protect::default() };
        assert!(p(holder(40, 1, "x", 'S'), &by_uid).unwrap().to_string().contains("uid 1000"));
        let by_cg = Protect { cgroup: vec!["/user.slice".into()], ..Protect::default() };
        assert!(p(holder(40, 1, "x", 'S'), &by_cg).unwrap().to_string().contains("cgroup"));
        let by_exe = Protect { exe: vec!["/usr/bin/python3".into()], ..Protect::default() };
        assert!(p(holder(40, 1, "x", 'S'), &by_exe).unwrap().to_string().contains("exe /usr/bin/python3"));
        assert_eq!(p(holder(40, 1, "x", 'S'), &none), None);
        // A socket nobody visible holds cannot be freed.
        let orphan = plan(5050, &[&sock(vec![])], &root(), &none, FORCE, &ci_details);
        assert_eq!(orphan.refused, Some(Refusal::NoHolder { hidden: false }));
        assert!(orphan.refused.unwrap().to_string().contains("SCM_RIGHTS"));
    }

    #[test]
    fn unprivileged_callers_by_kill_rules_and_never_their_own_tree() {
        let nobody = Caller {
            creds: Creds { ruid: 65534, euid: 65534, suid: 65534 },
            root: false,
            portwatch: 500,
            client: Some(600),
            client_ancestors: HashSet::from([550]),
            ..Caller::default()
        };
        let mine = |_: i32| (Some(Creds { ruid: 65534, euid: 65534, suid: 65534 }), None);
        let setuid_root = |_: i32| (Some(Creds { ruid: 0, euid: 65534, suid: 0 }), None);
        let gone = |_: i32| (None, None);
        let p = |h: Holder, d: &dyn Fn(i32) -> (Option<Creds>, Option<String>)| {
            plan(5050, &[&sock(vec![h])], &nobody, &Protect::default(), FORCE, d).refused
        };
        assert_eq!(p(holder(40, 1, "x", 'S'), &mine), None);
        let r = p(holder(40, 1, "x", 'S'), &setuid_root).unwrap();
        assert!(r.is_permission() && r.to_string().contains("kill(2)"), "{r}");
        assert!(p(holder(40, 1, "x", 'S'), &gone).unwrap().is_permission());
        assert!(p(holder(600, 550, "python3", 'S'), &mine).unwrap().to_string().contains("the caller itself"));
        assert!(p(holder(550, 1, "bash", 'S'), &mine).unwrap().to_string().contains("ancestor of the caller"));
        // One forbidden holder refuses the whole port: no partial frees.
        let s = sock(vec![holder(40, 1, "x", 'S'), holder(550, 1, "bash", 'S')]);
        assert!(plan(5050, &[&s], &nobody, &Protect::default(), FORCE, &mine).refused.is_some());
    }
}
