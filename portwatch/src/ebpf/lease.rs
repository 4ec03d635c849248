//! Port leases, seen from user space: installing one holder's lease programs and
//! its `LEASES` map, and reading or changing every holder's pinned map.
//!
//! Each holder (a `portwatch run --lease`, or an operator's `lease add`) loads its
//! own pair of `cgroup/bind4|6` lease programs and attaches them to the root
//! cgroup v2 by bpf links. A run keeps its links in its own fds: when it exits,
//! even by SIGKILL, the kernel closes them and the lease stops at once. An
//! operator's lease pins its links, so it lasts until `lease drop` (or a reboot:
//! bpffs lives in memory). Either way the map is pinned under [`PIN_DIR`], in a
//! directory named after the holder, so `lease list`, `who` and `lease drop` find
//! it; a run's directory left by a killed run is stale and swept.
use std::{
    fs::{self, File},
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData, RingBuf},
    programs::{links::FdLink, CgroupAttachMode, CgroupSockAddr},
    Ebpf,
};
use portwatch_common::{maps, programs, Lease};

use super::loader::{err_text, load_without_btf, preflight};
use crate::{
    error::{Error, Result},
    model::lease::RefusalErrno,
    sys::mounts,
};

/// Where every holder's lease directory is pinned.
pub const PIN_DIR: &str = "/sys/fs/bpf/portwatch/leases";
/// The pinned `LEASES` map in a holder's directory.
const MAP_PIN: &str = "map";
/// The pinned links of an operator's lease.
const LINK_PINS: [&str; 2] = ["link4", "link6"];

/// One holder's lease in the kernel. Dropping it detaches a run's programs (an
/// operator's stay pinned) and removes nothing from bpffs: see [`remove_dir`].
pub struct Installed {
    ebpf: Ebpf,
    pub dir: PathBuf,
    pub errno: RefusalErrno,
}

impl Installed {
    /// Refusal records the ring buffer had no room for (the `LOST` counter).
    pub fn lost(&self) -> u64 {
        self.ebpf
            .map(maps::LOST)
            .and_then(|m| aya::maps::PerCpuArray::<_, u64>::try_from(m).ok())
            .and_then(|a| a.get(&0, 0).ok())
            .map_or(0, |v| v.iter().sum())
    }

    /// The refusals ring buffer (taken once).
    pub fn take_refusals(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map(maps::EVENTS).ok_or_else(|| Error::Internal("lease ring buffer missing".into()))?;
        RingBuf::try_from(map).map_err(|e| Error::Internal(format!("lease ring buffer: {e}")))
    }
}

/// The directory of holder `name`.
pub fn dir_of(name: &str) -> PathBuf {
    Path::new(PIN_DIR).join(name)
}

/// Loads the lease programs with `leases` in their map, pins the map under
/// [`PIN_DIR`]/`name`, and attaches the programs to the root cgroup v2. With
/// `pin_links` the links are pinned too (the lease outlives this process).
pub fn install(name: &str, leases: &[(u16, Lease)], pin_links: bool) -> Result<Installed> {
    preflight()?;
    let cgroup = mounts::cgroup2_root()
        .ok_or_else(|| Error::unsupported("leases need cgroup v2, and none is mounted", "mount cgroup2, e.g. on /sys/fs/cgroup"))?;
    let cgroup_file = File::open(&cgroup).map_err(|e| Error::io(format!("opening {}", cgroup.display()), e))?;
    mounts::ensure_mounted(mounts::BPFFS, "bpf")
        .map_err(|e| Error::unsupported(format!("leases need bpffs at {}: {e}", mounts::BPFFS), "mount -t bpf bpf /sys/fs/bpf"))?;
    // The lease programs read no kernel structs: no BTF to parse.
    let mut ebpf = load_without_btf(64 << 10)?;
    {
        let map = ebpf.map_mut(maps::LEASES).ok_or_else(|| Error::Internal("lease map missing".into()))?;
        let mut m: BpfHashMap<&mut MapData, u32, Lease> = BpfHashMap::try_from(map).map_err(|e| Error::Internal(e.to_string()))?;
        for (port, lease) in leases {
            m.insert(u32::from(*port), lease, 0).map_err(|e| Error::Internal(format!("lease map: {e}")))?;
        }
    }
    let dir = dir_of(name);
    fs::create_dir_all(&dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    // The map is pinned last: a holder directory with its map is complete, which
    // is what `lease list` and the sweep rely on (see [`is_complete`]).
    let installed = (|| {
        let errno = attach(&mut ebpf, &cgroup_file, &dir, pin_links)?;
        let map = ebpf.map(maps::LEASES).ok_or_else(|| Error::Internal("lease map missing".into()))?;
        map.pin(dir.join(MAP_PIN)).map_err(|e| Error::Internal(format!("pinning the lease map in {}: {}", dir.display(), err_text(&e))))?;
        Ok(errno)
    })();
    match installed {
        Ok(errno) => Ok(Installed { ebpf, dir, errno }),
        Err(e) => {
            let _ = fs::remove_dir_all(&dir);
            Err(e)
        }
    }
}

/// Loads and attaches the lease pair: the EADDRINUSE build if this kernel can load
/// it, the EPERM build if not.
fn attach(ebpf: &mut Ebpf, cgroup: &File, dir: &Path, pin_links: bool) -> Result<RefusalErrno> {
    let forced_eperm = std::env::var_os("PORTWATCH_LEASE_EPERM").is_some();
    let builds = [
        (programs::LEASE4, programs::LEASE6, RefusalErrno::AddrInUse),
        (programs::LEASE4_EPERM, programs::LEASE6_EPERM, RefusalErrno::Perm),
    ];
    let mut why = String::new();
    for (p4, p6, errno) in builds {
        if forced_eperm && errno == RefusalErrno::AddrInUse {
            continue;
        }
        match load_pair(ebpf, p4, p6) {
            Ok(()) => {
                for (prog, pin) in [p4, p6].into_iter().zip(LINK_PINS) {
                    let p = program(ebpf, prog)?;
                    // Through a bpf link, which the kernel always attaches beside the
                    // other programs (`Single` only asks for no flags: with a link,
                    // BPF_F_ALLOW_MULTI is implied and passing it is EINVAL).
                    let id = p
                        .attach(cgroup, CgroupAttachMode::Single)
                        .map_err(|e| Error::Internal(format!("attaching {prog}: {}", err_text(&e))))?;
                    if pin_links {
                        let link = p.take_link(id).map_err(|e| Error::Internal(e.to_string()))?;
                        let fd: FdLink = link.try_into().map_err(|e: aya::programs::links::LinkError| Error::Internal(e.to_string()))?;
                        fd.pin(dir.join(pin))
                            .map_err(|e| Error::Internal(format!("pinning {prog}'s link in {}: {}", dir.display(), err_text(&e))))?;
                    }
                }
                return Ok(errno);
            }
            Err(e) => why = format!("{why}{}{p4}: {e}", if why.is_empty() { "" } else { "; " }),
        }
    }
    Err(Error::unsupported(format!("the lease programs do not load here ({why})"), "Linux >= 5.7 with cgroup v2 (see portwatch doctor)"))
}

fn program<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut CgroupSockAddr> {
    ebpf.program_mut(name)
        .ok_or_else(|| Error::Internal(format!("program {name} missing")))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| Error::Internal(e.to_string()))
}

fn load_pair(ebpf: &mut Ebpf, p4: &str, p6: &str) -> std::result::Result<(), String> {
    for name in [p4, p6] {
        program(ebpf, name).map_err(|e| e.to_string())?.load().map_err(|e| super::loader::err_text(&e))?;
    }
    Ok(())
}

/// Every holder directory under [`PIN_DIR`] (names only; none when there are none).
pub fn holders() -> Vec<String> {
    let Ok(entries) = fs::read_dir(PIN_DIR) else { return Vec::new() };
    let mut v: Vec<String> = entries.flatten().filter_map(|e| e.file_name().into_string().ok()).collect();
    v.sort();
    v
}

/// The leases in holder `name`'s pinned map.
pub fn read(name: &str) -> Result<Vec<(u16, Lease)>> {
    let m = open(name)?;
    let mut v: Vec<(u16, Lease)> = m.iter().filter_map(|r| r.ok()).filter_map(|(k, l)| u16::try_from(k).ok().map(|p| (p, l))).collect();
    v.sort_by_key(|(p, _)| *p);
    Ok(v)
}

fn open(name: &str) -> Result<BpfHashMap<MapData, u32, Lease>> {
    let path = dir_of(name).join(MAP_PIN);
    let data = MapData::from_pin(&path).map_err(|e| Error::Internal(format!("opening {}: {}", path.display(), err_text(&e))))?;
    BpfHashMap::try_from(Map::HashMap(data)).map_err(|e| Error::Internal(format!("{}: {e}", path.display())))
}

/// Removes `ports` from holder `name`'s map: binds to them are no longer refused.
/// Returns the ports left.
pub fn remove(name: &str, ports: &[u16]) -> Result<usize> {
    let mut m = open(name)?;
    for p in ports {
        let _ = m.remove(&u32::from(*p));
    }
    Ok(m.keys().filter(|k| k.is_ok()).count())
}

/// Whether holder `name`'s directory is complete (its map is pinned, last), or
/// else how long ago it was made: a directory being made is a few milliseconds
/// old; an old incomplete one was left by a holder that died while making it.
pub fn is_complete(name: &str) -> std::result::Result<(), std::time::Duration> {
    let dir = dir_of(name);
    if dir.join(MAP_PIN).exists() {
        return Ok(());
    }
    let age = fs::metadata(&dir).and_then(|m| m.modified()).ok().and_then(|t| t.elapsed().ok()).unwrap_or_default();
    Err(age)
}

/// Whether holder `name` pinned its links (an operator's lease).
pub fn links_pinned(name: &str) -> bool {
    LINK_PINS.iter().any(|p| dir_of(name).join(p).exists())
}

/// Removes holder `name`'s directory: its pinned links (which detaches an
/// operator's programs) and its map.
pub fn remove_dir(name: &str) -> Result<()> {
    let dir = dir_of(name);
    match fs::remove_dir_all(&dir) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("removing {}", dir.display()), e)),
    }
}
