//! Port leases: the rules around `ebpf::lease`. A lease on a port refuses, in the
//! kernel, every bind to that port number from outside the holder's cgroup.
//!
//! - `run --lease`: the run's own cgroup holds its ports for as long as the run
//!   lasts ([`RunLease`]); its programs go with its fds, also on SIGKILL.
//! - `lease add`: an operator leases ports to a cgroup until `lease drop`.
//! - One holder per port at a time. `lease drop` and `lease add` are root-only;
//!   `free` and `cleanup` never bind, so a lease cannot lock out their recovery.
//! - A lease whose holder is gone (a killed run, a removed cgroup) is stale:
//!   nothing enforces a killed run's lease any more, but a removed cgroup's
//!   operator lease would refuse everyone, so [`sweep`] removes both (`lease list`,
//!   `cleanup`, and the agent call it).
use std::path::Path;

use aya::maps::{MapData, RingBuf};
use portwatch_common::Lease;

use crate::{
    ebpf::{
        events,
        lease::{self as klease, Installed},
    },
    error::{Error, Result},
    model::{
        event::SockEvent,
        lease::{DropWhat, Holder, LeaseState, LeaseView, LineBudget, Refusal, RefusalErrno, Show},
    },
    sys::{
        cgroup::{self, RunOwner},
        proc,
    },
};

/// The holder named `name`, if portwatch made the name.
pub fn holder_of(name: &str) -> Option<Holder> {
    if let Some(o) = RunOwner::parse(name) {
        return Some(Holder::Run { pid: o.pid, start_ticks: o.start_ticks });
    }
    Holder::operator(name)
}

/// How much of each lease to look up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Everything, including whether an operator lease's cgroup still exists (a
    /// walk of the cgroup tree).
    Full,
    /// What `who` needs: no cgroup walk.
    Quick,
    /// What the sweep needs: whether each lease is still enforced (an operator
    /// lease's cgroup still exists), without looking up the runs' cgroup paths.
    State,
}

/// Every lease on the host (none when bpffs holds none). Reading pinned maps needs
/// root; without it there is nothing to read and the answer is a privilege error.
pub fn list(detail: Detail) -> Result<Vec<LeaseView>> {
    let names = klease::holders();
    if names.is_empty() {
        return Ok(Vec::new());
    }
    let mut out = Vec::new();
    for name in names {
        let Some(holder) = holder_of(&name) else { continue };
        let leases = match klease::read(&name) {
            Ok(l) => l,
            Err(e) if !nix::unistd::geteuid().is_root() => {
                return Err(Error::privilege(format!("reading the leases needs root ({e})"), "run as root, e.g. `sudo portwatch ...`"))
            }
            Err(e) => {
                tracing::debug!("lease holder {name}: {e}");
                continue;
            }
        };
        out.extend(views(&name, &holder, &leases, detail));
    }
    Ok(out)
}

/// The leases on `ports`, for `who` (errors and a missing privilege give none).
pub fn on_ports(ports: &[u16]) -> Vec<LeaseView> {
    if klease::holders().is_empty() {
        return Vec::new();
    }
    list(Detail::Quick).unwrap_or_default().into_iter().filter(|l| ports.contains(&l.port)).collect()
}

/// The lease that refused `attempt`, if one did: an active lease on its port whose
/// last refusal is that socket (or that process, when a later refusal already
/// took its place).
pub fn refused(attempt: &SockEvent) -> Option<LeaseView> {
    let pid = attempt.task.as_ref().map(|t| t.pid);
    on_ports(&[attempt.port])
        .into_iter()
        .find(|l| l.last_refused.as_ref().is_some_and(|r| (attempt.cookie != 0 && r.cookie == attempt.cookie) || Some(r.pid) == pid))
}

/// A run's command line and CI job, which do not change while it lives: read once
/// per run (a bind storm against a leased port must not read the run's environment
/// once per refusal). Bounded: starts over beyond [`MAX_RUN_INFO`] runs.
type RunInfo = (Option<String>, Option<String>);
const MAX_RUN_INFO: usize = 256;

fn run_info(owner: RunOwner) -> RunInfo {
    static CACHE: std::sync::Mutex<Option<std::collections::HashMap<(i32, u64), RunInfo>>> = std::sync::Mutex::new(None);
    let key = (owner.pid, owner.start_ticks);
    let mut guard = CACHE.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
    let cache = guard.get_or_insert_with(Default::default);
    if let Some(v) = cache.get(&key) {
        return v.clone();
    }
    let command = proc::info(owner.pid).map(|p| p.cmdline.to_string());
    let job = proc::details(owner.pid).and_then(|d| d.job.map(|j| j.to_string()));
    if cache.len() >= MAX_RUN_INFO {
        cache.clear();
    }
    cache.insert(key, (command.clone(), job.clone()));
    (command, job)
}

fn views(name: &str, holder: &Holder, leases: &[(u16, Lease)], detail: Detail) -> Vec<LeaseView> {
    // One walk of the cgroup tree per holder, and only where its answer is used.
    let walk = matches!((holder, detail), (_, Detail::Full) | (Holder::Operator { .. }, Detail::State));
    let cgroup = if walk { leases.first().and_then(|(_, l)| cgroup::find_by_id(l.cgroup_id)) } else { None };
    let (state, command, job) = match holder {
        Holder::Run { pid, start_ticks } => {
            let owner = RunOwner { pid: *pid, start_ticks: *start_ticks };
            let alive = owner.alive();
            let (command, job) = if alive { run_info(owner) } else { (None, None) };
            (if alive { LeaseState::Active } else { LeaseState::Stale }, command, job)
        }
        Holder::Operator { .. } => {
            let gone = walk && cgroup.is_none();
            (if klease::links_pinned(name) && !gone { LeaseState::Active } else { LeaseState::Stale }, None, None)
        }
    };
    let now = crate::sys::clock::mono_ns();
    leases
        .iter()
        .map(|(port, l)| LeaseView {
            port: *port,
            holder_name: name.to_string(),
            holder: holder.clone(),
            state,
            cgroup_id: l.cgroup_id,
            cgroup: cgroup.as_ref().map(|p| p.display().to_string()),
            command: command.clone(),
            job: job.clone(),
            since: l.since_unix,
            refused: l.refused,
            last_refused: (l.refused > 0).then(|| Refusal {
                pid: l.last_tgid,
                uid: l.last_uid,
                comm: events::comm_str(&l.last_comm),
                cookie: l.last_cookie,
                secs_ago: now.checked_sub(l.last_ns).map(|d| d / 1_000_000_000),
            }),
        })
        .collect()
}

/// How old an incomplete holder directory must be before the sweep removes it.
const INCOMPLETE_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// Removes the holders whose leases are stale; returns their names. Root only (a
/// no-op otherwise).
pub fn sweep() -> Vec<String> {
    if !nix::unistd::geteuid().is_root() {
        return Vec::new();
    }
    let Ok(all) = list(Detail::State) else { return Vec::new() };
    let mut names: Vec<String> = all.iter().filter(|l| l.state == LeaseState::Stale).map(|l| l.holder_name.clone()).collect();
    // A holder directory whose map is empty (its leases were dropped) goes too, and
    // one left incomplete by a holder that died while making it (a directory being
    // made right now is complete within milliseconds: it is left alone).
    for name in klease::holders() {
        if holder_of(&name).is_none() || all.iter().any(|l| l.holder_name == name) || is_live_run(&name) {
            continue;
        }
        let gone = match klease::is_complete(&name) {
            Ok(()) => klease::read(&name).is_ok_and(|v| v.is_empty()),
            Err(age) => age > INCOMPLETE_GRACE,
        };
        if gone {
            names.push(name);
        }
    }
    names.sort();
    names.dedup();
    names.retain(|n| klease::remove_dir(n).map_err(|e| tracing::warn!("removing stale lease {n}: {e}")).is_ok());
    names
}

fn is_live_run(name: &str) -> bool {
    RunOwner::parse(name).is_some_and(RunOwner::alive)
}

fn require_root(what: &str) -> Result<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err(Error::privilege(format!("{what} is root-only"), "run as root, e.g. `sudo portwatch lease ...`"))
    }
}

/// Fails if another holder has an active lease on one of `ports`.
fn check_free(ports: &[u16]) -> Result<()> {
    let all = list(Detail::Quick)?;
    if let Some(l) = crate::model::lease::conflicts(&all, ports).first() {
        return Err(Error::Refused(format!("port {} is already leased to {} (portwatch lease list)", l.port, l.holder_name)));
    }
    Ok(())
}

fn entry(cgroup_id: u64, level: u32, owner: Option<RunOwner>) -> Lease {
    Lease {
        cgroup_id,
        // Ours: a lease covers the network namespace it was made in.
        netns_cookie: crate::sys::netns::own_cookie().unwrap_or(0),
        level,
        owner_pid: owner.map_or(0, |o| o.pid as u32),
        owner_start: owner.map_or(0, |o| o.start_ticks),
        since_unix: crate::sys::clock::wall_now_secs(),
        ..Lease::default()
    }
}

/// Where an operator's lease goes.
#[derive(Clone, Debug)]
pub enum Grantee<'a> {
    Cgroup(&'a Path),
    Pid(i32),
}

/// `lease add`: leases `ports` to a cgroup until `lease drop`.
pub fn add(ports: &[u16], to: Grantee<'_>) -> Result<(Vec<LeaseView>, RefusalErrno)> {
    require_root("lease add")?;
    let dir = grantee_dir(to)?;
    let (id, level) = cgroup::id_and_level(&dir).map_err(|e| Error::Usage(format!("{}: {e}", dir.display())))?;
    sweep();
    check_free(ports)?;
    let name = Holder::operator_name(crate::sys::clock::wall_now_secs(), std::process::id());
    let leases: Vec<(u16, Lease)> = ports.iter().map(|&p| (p, entry(id, level, None))).collect();
    let installed = klease::install(&name, &leases, true)?;
    let errno = installed.errno;
    drop(installed);
    let views = list(Detail::Full)?.into_iter().filter(|l| l.holder_name == name).collect();
    Ok((views, errno))
}

/// `lease hold`: leases `ports` to a cgroup for as long as the returned value
/// lives (the caller's process: its links close with it, also on SIGKILL).
pub fn hold(ports: &[u16], to: Grantee<'_>) -> Result<(RunLease, std::path::PathBuf)> {
    require_root("lease hold")?;
    let dir = grantee_dir(to)?;
    let me = std::process::id() as i32;
    let owner = RunOwner { pid: me, start_ticks: proc::start_and_state(me).map_or(0, |(t, _)| t) };
    Ok((RunLease::start(owner, &dir, ports)?, dir))
}

/// The cgroup directory a lease goes to (never the root: it would refuse no one).
fn grantee_dir(to: Grantee<'_>) -> Result<std::path::PathBuf> {
    let dir = match to {
        Grantee::Cgroup(p) => p.to_path_buf(),
        Grantee::Pid(pid) => cgroup::of_pid(pid).ok_or_else(|| Error::Usage(format!("no process {pid} (or it has no cgroup v2)")))?,
    };
    let (_, level) = cgroup::id_and_level(&dir).map_err(|e| Error::Usage(format!("{}: {e}", dir.display())))?;
    if level == 0 {
        return Err(Error::Usage("leasing to the root cgroup would refuse no one: name a service's cgroup".into()));
    }
    Ok(dir)
}

/// `lease drop`: removes the leases `what` selects (root only). Returns them.
pub fn remove(what: &DropWhat) -> Result<Vec<LeaseView>> {
    require_root("lease drop")?;
    let all = list(Detail::Quick)?;
    let chosen: Vec<LeaseView> = all.into_iter().filter(|l| what.covers(l)).collect();
    let mut holders: Vec<&str> = chosen.iter().map(|l| l.holder_name.as_str()).collect();
    holders.dedup();
    for name in holders {
        let ports: Vec<u16> = chosen.iter().filter(|l| l.holder_name == name).map(|l| l.port).collect();
        let left = klease::remove(name, &ports)?;
        // An operator's holder with nothing left goes (its pinned links with it); a
        // live run's stays until the run ends and removes it.
        if left == 0 && !is_live_run(name) {
            klease::remove_dir(name)?;
        }
    }
    Ok(chosen)
}

/// Refusal lines a lease holder prints per second at most (then a count).
pub const REFUSAL_LINES_PER_SECOND: u32 = 20;

/// What a lease holder has to tell since it last asked.
#[derive(Clone, Debug)]
pub enum LeaseNews {
    /// A refused bind, to show.
    Refused(SockEvent),
    /// This many more refused binds in the last second, not shown (a flood).
    Hidden(u64),
}

/// A lease held by this process (`run --lease`, `lease hold`), for as long as this
/// value lives.
pub struct RunLease {
    installed: Installed,
    ring: Option<RingBuf<MapData>>,
    name: String,
    budget: LineBudget,
    /// Refusal records the ring buffer had no room for, as last read.
    lost: u64,
}

impl RunLease {
    /// Leases `ports` to the run's cgroup `dir`.
    pub fn start(owner: RunOwner, dir: &Path, ports: &[u16]) -> Result<Self> {
        let (id, level) = cgroup::id_and_level(dir).map_err(|e| Error::Internal(format!("the run's cgroup {}: {e}", dir.display())))?;
        sweep();
        check_free(ports)?;
        let name = owner.name();
        let leases: Vec<(u16, Lease)> = ports.iter().map(|&p| (p, entry(id, level, Some(owner)))).collect();
        let mut installed = klease::install(&name, &leases, false)?;
        let ring = installed.take_refusals().map_err(|e| tracing::debug!("lease refusals not reported: {e}")).ok();
        Ok(Self { installed, ring, name, budget: LineBudget::new(REFUSAL_LINES_PER_SECOND), lost: 0 })
    }

    /// What happened since the last call: refusals to show, at most
    /// [`REFUSAL_LINES_PER_SECOND`] a second, and once a second the count of those
    /// not shown (also those the ring buffer had no room for: the kernel counts
    /// them).
    pub fn news(&mut self) -> Vec<LeaseNews> {
        let now = crate::sys::clock::mono_ns();
        let refusals = self.refusals();
        // Records the ring dropped (a flood) are counted by the kernel, exactly.
        let lost = self.installed.lost();
        self.budget.unrecorded(lost.saturating_sub(self.lost));
        self.lost = lost;
        let mut out = Vec::new();
        for ev in refusals {
            let (show, hidden) = self.budget.refusal(ev.ts_ns.max(now));
            out.extend(hidden.map(LeaseNews::Hidden));
            if show == Show::Line {
                out.push(LeaseNews::Refused(ev));
            }
        }
        out.extend(self.budget.roll(now).map(LeaseNews::Hidden));
        out
    }

    pub fn errno(&self) -> RefusalErrno {
        self.installed.errno
    }

    /// The binds refused since the last call.
    fn refusals(&mut self) -> Vec<SockEvent> {
        let mut out = Vec::new();
        if let Some(ring) = self.ring.as_mut() {
            while let Some(item) = ring.next() {
                match events::decode(&item) {
                    Ok(ev) => out.push(ev),
                    Err(e) => tracing::debug!("lease refusal record: {e}"),
                }
                if out.len() >= 1024 {
                    break;
                }
            }
        }
        out
    }

    /// Ends the lease: detaches the programs and removes the pinned map.
    pub fn end(self) {
        let name = self.name.clone();
        drop(self);
        if let Err(e) = klease::remove_dir(&name) {
            tracing::debug!("lease {name}: {e}");
        }
    }
}
