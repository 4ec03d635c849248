//! One run's port remapping in the kernel (`run --isolate-ports`): the remap
//! programs loaded for the run's cgroup and attached to that cgroup by bpf_links
//! this process owns. A cgroup's own programs run before its ancestors' (the
//! effective list is built from the cgroup up), so the job's binds are rewritten
//! before the root's observer and lease programs look at them, and sockets outside
//! the job never run them. Nothing is pinned but the map, read-only information
//! for a `run` nested inside the job and for `who`: when the run ends, even by
//! SIGKILL, the kernel closes its links and the rewriting stops.
use std::{
    fs::{self, File},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData},
    Ebpf,
};
use portwatch_common::maps;

use super::loader::{Loader, Role, HOOKS};
use crate::{
    error::{Error, Result},
    model::remap::PortMap,
    sys::{cgroup::RunOwner, mounts},
};

/// Where each run's map is pinned, named after its cgroup.
pub const PIN_DIR: &str = "/sys/fs/bpf/portwatch/remap";

/// The remap programs of one run, attached. Dropping it detaches them.
pub struct Remap {
    _ebpf: Ebpf,
    pin: Option<PathBuf>,
}

impl Remap {
    /// Loads the remap programs for the cgroup `dir` (`id` at `level`), fills their
    /// map with `map` and attaches every one of them to that cgroup. The map is
    /// pinned as `PIN_DIR/<name>` when bpffs is there (a nested run needs it).
    pub fn attach(loader: &Loader, dir: &Path, id: u64, level: u32, map: &PortMap, name: &str) -> Result<Self> {
        let cg_file = File::open(dir).map_err(|e| Error::io(format!("opening {}", dir.display()), e))?;
        let mut ebpf = loader.load_remap(id, level)?;
        {
            let internal = |e: aya::maps::MapError| Error::Internal(format!("filling {}: {e}", maps::REMAP));
            let mut m: BpfHashMap<_, u32, u16> =
                BpfHashMap::try_from(ebpf.map_mut(maps::REMAP).ok_or_else(|| Error::Internal(format!("map {} missing", maps::REMAP)))?)
                    .map_err(internal)?;
            for (k, v) in map.entries() {
                m.insert(k, v, 0).map_err(internal)?;
            }
        }
        for h in HOOKS.iter().filter(|h| h.role == Role::Remap) {
            loader.attach(&mut ebpf, h, Some(&cg_file)).map_err(|e| {
                Error::unsupported(
                    format!("--isolate-ports: cannot attach {} to {}: {e}", h.hook, dir.display()),
                    "run `portwatch doctor`; kernel >= 5.8 with CONFIG_CGROUP_BPF is required",
                )
            })?;
        }
        let pin = pin_dir().ok().map(|d| d.join(name)).filter(|p| {
            let _ = fs::remove_file(p);
            ebpf.map(maps::REMAP).is_some_and(|m| m.pin(p).is_ok())
        });
        Ok(Self { _ebpf: ebpf, pin })
    }
}

impl Drop for Remap {
    fn drop(&mut self) {
        if let Some(p) = &self.pin {
            let _ = fs::remove_file(p);
        }
    }
}

/// `PIN_DIR`, created when missing (bpffs must be mounted).
fn pin_dir() -> std::io::Result<PathBuf> {
    if !mounts::is_mounted(mounts::BPFFS, "bpf") {
        return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "bpffs not mounted"));
    }
    fs::create_dir_all(PIN_DIR)?;
    Ok(PathBuf::from(PIN_DIR))
}

/// The map pinned at `path`.
fn read_pin(path: &Path) -> Option<PortMap> {
    let data = MapData::from_pin(path).ok()?;
    let map = Map::from_map_data(data).ok()?;
    let m: BpfHashMap<_, u32, u16> = BpfHashMap::try_from(map).ok()?;
    Some(PortMap::from_entries(m.iter().filter_map(std::result::Result::ok)))
}

/// The remap of the run cgroup `name`, when its run is alive and pinned one.
pub fn pinned(name: &str) -> Option<PortMap> {
    RunOwner::parse(name).filter(|o| o.alive())?;
    read_pin(&Path::new(PIN_DIR).join(name))
}

/// Every live run's remap, by run cgroup name; the pins of dead runs (SIGKILLed:
/// their programs are gone already) are removed on the way.
pub fn all_pinned() -> Vec<(String, PortMap)> {
    let Ok(rd) = fs::read_dir(PIN_DIR) else { return Vec::new() };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        match RunOwner::parse(&name) {
            Some(o) if o.alive() => {
                if let Some(m) = read_pin(&e.path()) {
                    out.push((name, m));
                }
            }
            Some(_) => {
                let _ = fs::remove_file(e.path());
            }
            None => {}
        }
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// An exclusive lock among runs choosing real ports (held until dropped), on the
/// pin directory; `None` where there is none (then only the bind test guards).
pub fn choosing_lock() -> Option<File> {
    let f = File::open(pin_dir().ok()?).ok()?;
    // SAFETY: flock on an fd we own.
    (unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0).then_some(f)
}
