//! A run's processes. Where cgroup v2 is writable, the run has a cgroup of its own
//! that everything the command starts is born into and cannot leave without
//! privilege; portwatch is also the children's subreaper, so orphans that leave
//! their parent (setsid, double fork) stay below it either way. A run that was
//! killed leaves its cgroup behind, named after it: [`end_abandoned`] ends those.
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use crate::{
    model::{
        plan::{Caller, Ending, Leftover, Protect, Sequence},
        socket::Proto,
    },
    service::{readiness::Claim, reaper},
    sys::{
        cgroup::{self, FoundRun, RunCgroup},
        proc,
        sockdiag::{self, Query},
    },
};

pub struct Tree {
    /// portwatch itself (the subreaper).
    me: i32,
    cgroup: Option<RunCgroup>,
}

impl Tree {
    pub fn new(me: i32, cgroup: Option<RunCgroup>) -> Self {
        Self { me, cgroup }
    }

    pub fn cgroup(&self) -> Option<&RunCgroup> {
        self.cgroup.as_ref()
    }

    /// Stops using the cgroup (the command did not land in it) and removes it.
    pub fn drop_cgroup(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            let _ = cg.remove(Duration::ZERO);
        }
    }

    /// Every live process of the run, portwatch excluded: its cgroup's members and
    /// portwatch's descendants (zombies left out).
    pub fn members(&self) -> Vec<i32> {
        let mut out = descendants(self.me);
        if let Some(cg) = &self.cgroup {
            out.extend(cg.pids());
        }
        out.retain(|&p| p != self.me && proc::start_and_state(p).is_some_and(|(_, st)| st != 'Z'));
        out.sort_unstable();
        out.dedup();
        out
    }

    /// Whether `pid` belongs to the run.
    pub fn contains(&self, pid: i32) -> bool {
        pid != self.me && (self.cgroup.as_ref().is_some_and(|c| c.contains(pid)) || proc::ancestors(pid).iter().any(|(p, _)| *p == self.me))
    }

    /// The processes of the run that hold one of `inodes`.
    pub fn holders_of(&self, inodes: &HashSet<u64>) -> Vec<i32> {
        self.members().into_iter().filter(|&pid| proc::socket_fds_of(pid).iter().any(|(_, ino)| inodes.contains(ino))).collect()
    }

    /// The ports the run's processes hold (listening or bound), per process.
    pub fn ports(&self) -> HashMap<i32, Vec<(Proto, u16)>> {
        ports_of(&self.members())
    }
}

impl Claim for Tree {
    fn holds_any(&self, inodes: &HashSet<u64>) -> bool {
        !inodes.is_empty() && !self.holders_of(inodes).is_empty()
    }
}

/// Every descendant of `pid` (breadth first, bounded).
pub fn descendants(pid: i32) -> Vec<i32> {
    let mut out = Vec::new();
    let mut queue = vec![pid];
    while let Some(p) = queue.pop() {
        for c in proc::children_of(p) {
            if !out.contains(&c) && out.len() < 100_000 {
                out.push(c);
                queue.push(c);
            }
        }
    }
    out
}

/// Ends `pids` of a run by one authorized plan (SIGTERM, `grace`, SIGKILL), each
/// re-checked to still belong to it when pinned.
pub fn end(pids: &[i32], belongs: &dyn Fn(i32) -> bool, caller: &Caller, grace: Duration) -> Ending {
    reaper::end_processes(pids, caller, &Protect::default(), Sequence { force: true, grace }, belongs)
}

/// What ending an abandoned run's cgroup did (or, on a dry run, would do).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Abandoned {
    pub run: FoundRun,
    pub leftovers: Vec<Leftover>,
    pub ending: Ending,
    /// The cgroup was removed.
    pub removed: bool,
}

/// Ends the cgroups of runs whose supervisor is gone (killed before it could end
/// its tree): their processes by one authorized plan for `caller`, then the empty
/// cgroup. A caller that is not root touches only run cgroups it created.
pub fn end_abandoned(caller: &Caller, protect: &Protect, grace: Duration, dry_run: bool) -> Vec<Abandoned> {
    let mut out = Vec::new();
    for run in cgroup::find_runs() {
        if run.owner.alive() || (!caller.root && run.uid != caller.creds.euid) {
            continue;
        }
        let pids = cgroup::pids_in(&run.dir);
        let held = ports_of(&pids);
        let leftovers: Vec<Leftover> = pids
            .iter()
            .filter_map(|&pid| proc::info(pid).map(|p| Leftover { proc: p, ports: held.get(&pid).cloned().unwrap_or_default() }))
            .collect();
        let dir = run.dir.clone();
        let in_run = move |pid: i32| {
            let Ok(text) = std::fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return false };
            crate::sys::mounts::cgroup2_root()
                .is_some_and(|root| root.join(proc::cgroup_v2_path(&text).trim_start_matches('/')).starts_with(&dir))
        };
        if dry_run {
            out.push(Abandoned { run, leftovers, ending: Ending::default(), removed: false });
            continue;
        }
        let ending = reaper::end_processes(&pids, caller, protect, Sequence { force: true, grace }, &in_run);
        let removed = cgroup::remove(&run.dir, Duration::from_secs(1)).is_ok();
        out.push(Abandoned { run, leftovers, ending, removed });
    }
    out
}

/// The ports each of `pids` holds.
pub fn ports_of(pids: &[i32]) -> HashMap<i32, Vec<(Proto, u16)>> {
    let mut by_inode: HashMap<u64, Vec<i32>> = HashMap::new();
    for &pid in pids {
        for (_, ino) in proc::socket_fds_of(pid) {
            by_inode.entry(ino).or_default().push(pid);
        }
    }
    let mut out: HashMap<i32, Vec<(Proto, u16)>> = HashMap::new();
    if by_inode.is_empty() {
        return out;
    }
    for s in sockdiag::sockets_on_ports(&[], Query::default()).unwrap_or_default() {
        for &pid in by_inode.get(&s.inode).into_iter().flatten() {
            let v = out.entry(pid).or_default();
            if !v.contains(&(s.proto, s.port)) {
                v.push((s.proto, s.port));
            }
        }
    }
    out
}
