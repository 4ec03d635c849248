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
use std::{path::Path, time::SystemTime};

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
        lease::{DropWhat, Holder, LeaseState, LeaseView, Refusal, RefusalErrno},
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

fn now_secs() -> u64 {
    SystemTime::now().duration_since(SystemTime::UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn monotonic_ns() -> u64 {
    nix::time::clock_gettime(nix::time::ClockId::CLOCK_MONOTONIC).map_or(0, |t| t.tv_sec() as u64 * 1_000_000_000 + t.tv_nsec() as u64)
}

fn comm_of(c: &[u8; 16]) -> String {
    let end = c.iter().position(|&b| b == 0).unwrap_or(c.len());
    String::from_utf8_lossy(&c[..end]).into_owned()
}

/// How much of each lease to look up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Detail {
    /// Everything, including whether an operator lease's cgroup still exists (a
    /// walk of the cgroup tree).
    Full,
    /// What `who` needs: no cgroup walk.
    Quick,
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

fn views(name: &str, holder: &Holder, leases: &[(u16, Lease)], detail: Detail) -> Vec<LeaseView> {
    let (state, command, job, cgroup) = match holder {
        Holder::Run { pid, start_ticks } => {
            let alive = RunOwner { pid: *pid, start_ticks: *start_ticks }.alive();
            let command = alive.then(|| proc::info(*pid).map(|p| p.cmdline.to_string())).flatten();
            let job = alive.then(|| proc::details(*pid).and_then(|d| d.job.map(|j| j.to_string()))).flatten();
            let cgroup = leases.first().and_then(|(_, l)| (detail == Detail::Full).then(|| cgroup::find_by_id(l.cgroup_id)).flatten());
            (if alive { LeaseState::Active } else { LeaseState::Stale }, command, job, cgroup)
        }
        Holder::Operator { .. } => {
            let cgroup = leases.first().and_then(|(_, l)| (detail == Detail::Full).then(|| cgroup::find_by_id(l.cgroup_id)).flatten());
            let pinned = klease::links_pinned(name);
            let gone = detail == Detail::Full && cgroup.is_none();
            (if pinned && !gone { LeaseState::Active } else { LeaseState::Stale }, None, None, cgroup)
        }
    };
    let now = monotonic_ns();
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
                comm: comm_of(&l.last_comm),
                secs_ago: now.checked_sub(l.last_ns).map(|d| d / 1_000_000_000),
            }),
        })
        .collect()
}

/// Removes the holders whose leases are stale; returns their names. Root only (a
/// no-op otherwise).
pub fn sweep() -> Vec<String> {
    if !nix::unistd::geteuid().is_root() {
        return Vec::new();
    }
    let Ok(all) = list(Detail::Full) else { return Vec::new() };
    let mut names: Vec<String> = all.iter().filter(|l| l.state == LeaseState::Stale).map(|l| l.holder_name.clone()).collect();
    // A holder directory whose map is empty (its leases were dropped) goes too.
    for name in klease::holders() {
        if holder_of(&name).is_some() && !all.iter().any(|l| l.holder_name == name) && !is_live_run(&name) {
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
        level,
        owner_pid: owner.map_or(0, |o| o.pid as u32),
        owner_start: owner.map_or(0, |o| o.start_ticks),
        since_unix: now_secs(),
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
    let dir = match to {
        Grantee::Cgroup(p) => p.to_path_buf(),
        Grantee::Pid(pid) => cgroup::of_pid(pid).ok_or_else(|| Error::Usage(format!("no process {pid} (or it has no cgroup v2)")))?,
    };
    let (id, level) = cgroup::id_and_level(&dir).map_err(|e| Error::Usage(format!("{}: {e}", dir.display())))?;
    if level == 0 {
        return Err(Error::Usage("leasing to the root cgroup would refuse no one: name a service's cgroup".into()));
    }
    sweep();
    check_free(ports)?;
    let name = Holder::operator_name(now_secs(), std::process::id());
    let leases: Vec<(u16, Lease)> = ports.iter().map(|&p| (p, entry(id, level, None))).collect();
    let installed = klease::install(&name, &leases, true)?;
    let errno = installed.errno;
    drop(installed);
    let views = list(Detail::Full)?.into_iter().filter(|l| l.holder_name == name).collect();
    Ok((views, errno))
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

/// A run's lease on its ports, for as long as this value lives.
pub struct RunLease {
    installed: Installed,
    ring: Option<RingBuf<MapData>>,
    name: String,
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
        Ok(Self { installed, ring, name })
    }

    pub fn errno(&self) -> RefusalErrno {
        self.installed.errno
    }

    /// The binds refused since the last call.
    pub fn refusals(&mut self) -> Vec<SockEvent> {
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
