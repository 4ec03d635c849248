//! The observer: the kernel object loaded with its hooks attached (recording why one
//! could not be), and the maps user space drives: watched ports, counters, events.
use std::{fs::File, path::PathBuf};

use aya::{
    maps::{Array, MapData, PerCpuArray, RingBuf},
    Btf, Ebpf,
};
use portwatch_common::{config, maps, programs, KernelOffsets, TrackedSock};
use serde::Serialize;

use crate::{
    ebpf::{
        btf as kbtf,
        loader::{attach_cgroup, attach_tp_btf, load_error, loader, preflight, raise_memlock, release_heap, OBJECT},
    },
    error::{Error, Result},
    model::{ports::PortSet, socket::SockEntry},
    sys::mounts,
};

#[derive(Clone, Debug, Default)]
pub struct ObserverOptions {
    /// Ports to report; empty = every port.
    pub ports: PortSet,
    /// cgroup v2 directory to attach to (default: the root of the unified hierarchy).
    pub cgroup: Option<PathBuf>,
    /// Ring buffer size in bytes (a power of two); default `EVENTS_BYTES`.
    pub ring_bytes: Option<u32>,
}

/// One hook: what it is for, and whether it is attached.
#[derive(Clone, Debug, Serialize)]
pub struct HookStatus {
    pub program: &'static str,
    pub hook: &'static str,
    pub purpose: &'static str,
    pub attached: bool,
    pub error: Option<String>,
}

pub struct Observer {
    ebpf: Ebpf,
    pub hooks: Vec<HookStatus>,
    pub offsets: KernelOffsets,
    pub cgroup: PathBuf,
    pub memlock_raised: bool,
    /// What the PORTS map holds now, so updates touch only what changed.
    watched: PortSet,
}

impl Observer {
    pub fn load(opts: &ObserverOptions) -> Result<Self> {
        preflight()?;
        let memlock_raised = raise_memlock();
        let cgroup = match &opts.cgroup {
            Some(p) => p.clone(),
            None => mounts::cgroup2_root()
                .ok_or_else(|| Error::unsupported("no cgroup v2 mount found", "mount -t cgroup2 none /sys/fs/cgroup/unified"))?,
        };
        let cgroup_file = File::open(&cgroup).map_err(|e| Error::io(format!("opening {}", cgroup.display()), e))?;
        let offsets = kbtf::load_vmlinux().map(|b| kbtf::resolve(&b)).unwrap_or(KernelOffsets::UNSET);
        let aya_btf = Btf::from_sys_fs().ok();
        let me = std::process::id();
        let mut l = loader(aya_btf.as_ref(), &offsets, &me, false);
        if let Some(bytes) = opts.ring_bytes {
            l.map_max_entries(maps::EVENTS, bytes);
        }
        let mut ebpf = l.load(OBJECT).map_err(|e| load_error(&e))?;

        let mut hooks = Vec::new();
        for (program, hook, purpose) in [
            (programs::BIND4, "cgroup/bind4", "bind attempts (IPv4)"),
            (programs::BIND6, "cgroup/bind6", "bind attempts (IPv6)"),
            (programs::POST_BIND4, "cgroup/post_bind4", "successful binds with the real port (IPv4)"),
            (programs::POST_BIND6, "cgroup/post_bind6", "successful binds with the real port (IPv6)"),
            (programs::SOCK_RELEASE, "cgroup/sock_release", "closes of watched sockets"),
        ] {
            let r = attach_cgroup(&mut ebpf, program, &cgroup_file);
            hooks.push(HookStatus { program, hook, purpose, attached: r.is_ok(), error: r.err() });
        }
        let r = match (&aya_btf, offsets.valid) {
            (None, _) => Err("kernel BTF unavailable".to_string()),
            (_, 0) => Err("struct sock offsets not found in BTF".to_string()),
            (Some(btf), _) => attach_tp_btf(&mut ebpf, programs::STATE_BTF, "inet_sock_set_state", btf),
        };
        hooks.push(HookStatus {
            program: programs::STATE_BTF,
            hook: "tp_btf/inet_sock_set_state",
            purpose: "listen starts and connections queued for accept",
            attached: r.is_ok(),
            error: r.err(),
        });
        let core = hooks.iter().filter(|h| h.hook.contains("post_bind")).any(|h| h.attached);
        if !core {
            let why = hooks.iter().find_map(|h| h.error.clone()).unwrap_or_default();
            return Err(Error::unsupported(
                format!("cannot attach the bind hooks to {}: {why}", cgroup.display()),
                "run `portwatch doctor`; a cgroup v2 mount and CONFIG_CGROUP_BPF are required",
            ));
        }
        let mut obs = Self { ebpf, hooks, offsets, cgroup, memlock_raised, watched: PortSet::new() };
        obs.set_ports(&opts.ports)?;
        drop(aya_btf);
        release_heap();
        Ok(obs)
    }

    /// Replaces the watched ports while running; an empty set watches every port.
    pub fn set_ports(&mut self, ports: &PortSet) -> Result<()> {
        let internal = |e: aya::maps::MapError| Error::Internal(format!("updating the ports map: {e}"));
        {
            let mut cfg: Array<_, u64> =
                Array::try_from(self.ebpf.map_mut(maps::CONFIG).ok_or_else(|| missing(maps::CONFIG))?).map_err(internal)?;
            // Watch-all first, so switching never opens a window where nothing is reported.
            if ports.is_empty() {
                cfg.set(config::WATCH_ALL, 1, 0).map_err(internal)?;
            }
        }
        {
            let mut map: Array<_, u8> =
                Array::try_from(self.ebpf.map_mut(maps::PORTS).ok_or_else(|| missing(maps::PORTS))?).map_err(internal)?;
            for port in self.watched.iter().filter(|&p| !ports.contains(p)) {
                map.set(u32::from(port), 0, 0).map_err(internal)?;
            }
            for port in ports.iter().filter(|&p| !self.watched.contains(p)) {
                map.set(u32::from(port), 1, 0).map_err(internal)?;
            }
        }
        self.watched = ports.clone();
        if !ports.is_empty() {
            let mut cfg: Array<_, u64> =
                Array::try_from(self.ebpf.map_mut(maps::CONFIG).ok_or_else(|| missing(maps::CONFIG))?).map_err(internal)?;
            cfg.set(config::WATCH_ALL, 0, 0).map_err(internal)?;
        }
        Ok(())
    }

    /// Tracks sockets that existed before the observer started (from a sock_diag
    /// snapshot), so their close is reported too.
    pub fn seed(&mut self, socks: &[SockEntry]) -> Result<usize> {
        use aya::maps::HashMap as BpfHashMap;
        let internal = |e: aya::maps::MapError| Error::Internal(format!("seeding the tracked sockets: {e}"));
        let mut added = 0u64;
        {
            let mut tracked: BpfHashMap<_, u64, TrackedSock> =
                BpfHashMap::try_from(self.ebpf.map_mut(maps::TRACKED).ok_or_else(|| missing(maps::TRACKED))?).map_err(internal)?;
            for s in socks.iter().filter(|s| s.cookie != 0) {
                let mut addr = [0u8; 16];
                match s.addr {
                    std::net::IpAddr::V4(a) => addr[..4].copy_from_slice(&a.octets()),
                    std::net::IpAddr::V6(a) => addr = a.octets(),
                }
                let t = TrackedSock { port: s.port, family: u16::from(s.family.af()), _pad: 0, addr };
                // BPF_NOEXIST: a socket the kernel side tracked meanwhile stays counted once.
                if tracked.insert(s.cookie, t, 1).is_ok() {
                    added += 1;
                }
            }
        }
        let mut count: Array<_, u64> =
            Array::try_from(self.ebpf.map_mut(maps::TRACKED_COUNT).ok_or_else(|| missing(maps::TRACKED_COUNT))?).map_err(internal)?;
        let now = count.get(&0, 0).map_err(internal)?;
        count.set(0, now + added, 0).map_err(internal)?;
        Ok(added as usize)
    }

    /// The ring buffer, moved out so it can be polled on its own.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self.ebpf.take_map(maps::EVENTS).ok_or_else(|| missing(maps::EVENTS))?;
        RingBuf::try_from(map).map_err(|e| Error::Internal(format!("ring buffer: {e}")))
    }

    fn per_cpu_sum(&self, name: &str, index: u32) -> u64 {
        self.ebpf
            .map(name)
            .and_then(|m| PerCpuArray::<_, u64>::try_from(m).ok())
            .and_then(|a| a.get(&index, 0).ok())
            .map_or(0, |v| v.iter().sum())
    }

    /// Events dropped because the ring buffer was full.
    pub fn lost(&self) -> u64 {
        self.per_cpu_sum(maps::LOST, 0)
    }

    /// Connections the kernel has completed into accept queues on `port` since load.
    pub fn queued(&self, port: u16) -> u64 {
        self.per_cpu_sum(maps::QUEUED, u32::from(port))
    }
}

fn missing(name: &str) -> Error {
    Error::Internal(format!("map {name} missing from the kernel object"))
}
