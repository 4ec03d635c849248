//! Per-job port remapping (`run --isolate-ports`): choosing the real ports and
//! putting the rewrite in the kernel for one run's cgroup; finding the remap a run
//! nested in an isolated job inherits.
use std::collections::HashSet;

use crate::{
    ebpf::{
        loader::Loader,
        remap::{self, Remap},
    },
    error::{Error, Result},
    model::{
        ports::PortSet,
        remap::{candidates, parse_port_range, PortMap},
    },
    sys::{
        bindable::bindable,
        cgroup::{self, RunCgroup},
    },
};

/// One run's isolated ports, in the kernel while this lives.
pub struct Isolation {
    pub map: PortMap,
    _remap: Remap,
}

/// The kernel's ephemeral port range (connects and bind(0) draw from it).
fn ephemeral_range() -> (u16, u16) {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok().and_then(|t| parse_port_range(&t)).unwrap_or((32768, 60999))
}

/// Chooses a free real port for each of `ports` and rewrites them for the
/// processes of `cg`. Real ports come from above the ephemeral range (no connect or
/// bind(0) is ever given one), are free on every address (a bind test) and are not
/// another live run's; runs choose one at a time (a lock on the pin directory).
pub fn isolate(ports: &PortSet, cg: &RunCgroup) -> Result<Isolation> {
    let loader = Loader::new()?;
    let (id, level) = cg.id_and_level().map_err(|e| {
        Error::unsupported(format!("--isolate-ports: cannot identify the run's cgroup: {e}"), "a writable cgroup v2 mount is required")
    })?;
    let _lock = remap::choosing_lock();
    let taken: HashSet<u16> = remap::all_pinned().iter().flat_map(|(_, m)| m.pairs().iter().map(|p| p.real)).collect();
    let seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
        ^ u64::from(std::process::id());
    let mut pool = candidates(ephemeral_range(), seed).into_iter().filter(|p| !taken.contains(p) && !ports.contains(*p));
    let mut pairs = Vec::new();
    for port in ports.iter() {
        let real = pool
            .by_ref()
            .take(4096)
            .find(|&p| bindable(p))
            .ok_or_else(|| Error::Refused(format!("--isolate-ports: no free port found to stand in for {port}")))?;
        pairs.push((port, real));
    }
    let map = PortMap::new(pairs).map_err(|e| Error::Usage(format!("--isolate-ports: {e}")))?;
    let remap = Remap::attach(&loader, &cg.dir, id, level, &map, &cg.name())?;
    Ok(Isolation { map, _remap: remap })
}

/// The remap of the innermost isolated run this process runs inside (a `run`
/// started by an isolated job), or an empty map.
pub fn inherited() -> PortMap {
    cgroup::own_runs().iter().find_map(|name| remap::pinned(name)).unwrap_or_default()
}

/// Every live run's remap, by run cgroup name.
pub fn active() -> Vec<(String, PortMap)> {
    remap::all_pinned()
}
