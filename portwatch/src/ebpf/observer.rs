//! The observer: the kernel object loaded with its hooks attached (recording why one
//! could not be), and the maps user space drives: watched ports, counters, events.
use std::{fs::File, path::PathBuf, sync::Arc, time::Duration};

use aya::{
    maps::{Array, HashMap as BpfHashMap, MapData, PerCpuArray, RingBuf},
    Ebpf,
};
use portwatch_common::{config, maps, probe, KernelOffsets, TrackedSock};
use serde::Serialize;

use crate::{
    ebpf::loader::{Loader, Role, Sizes, HOOKS},
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
    /// Also write accept-queue arrivals to the ring buffer (`watch --accepts`). They
    /// are always counted in the kernel ([`Counts`]), which is all a verdict needs.
    pub accepts: bool,
}

/// How long a record may wait in the ring buffer: the kernel side writes records
/// without waking the reader until [`wakeup_watermark`] bytes are waiting, so every
/// reader also drains the ring on a timer of this period.
pub const DRAIN_EVERY: Duration = Duration::from_millis(20);

/// Bytes waiting in the ring buffer beyond which a record wakes the reader at once:
/// an eighth of the ring, at most 512 KiB (~3,800 records), so a storm is read in
/// large batches long before the ring fills, and a trickle is read by the timer.
/// `PORTWATCH_WAKEUP_BYTES` overrides it (0: a wakeup per record when the reader
/// keeps up, the kernel's default; for benchmarks).
pub fn wakeup_watermark(ring_bytes: u32) -> u64 {
    if let Some(v) = std::env::var("PORTWATCH_WAKEUP_BYTES").ok().and_then(|v| v.parse().ok()) {
        return v;
    }
    u64::from(ring_bytes / 8).clamp(4096, 512 << 10)
}

/// The seeded sockets (by cookie) and the flag telling `sock_release` to look.
struct Seeded {
    map: BpfHashMap<MapData, u64, TrackedSock>,
    any: Array<MapData, u64>,
}

type Tracked = Arc<std::sync::Mutex<Seeded>>;

/// The kernel's per-port count of connections completed into accept queues, and
/// the sockets it tracks on the watched ports, readable from any thread (the
/// agent's sampler runs off the event loop).
#[derive(Clone)]
pub struct Counts {
    queued: Arc<PerCpuArray<MapData, u64>>,
    tracked: Tracked,
    /// Sockets tracked in their own storage, per CPU.
    live: Arc<PerCpuArray<MapData, i64>>,
}

impl Counts {
    /// Connections the kernel has completed into accept queues on `port` since load.
    pub fn queued(&self, port: u16) -> u64 {
        self.queued.get(&u32::from(port), 0).map_or(0, |v| v.iter().sum())
    }

    /// Whether the kernel side tracks any socket: every socket bound or listening
    /// on a watched port since the hooks were attached, and those found there before
    /// ([`Observer::seed`]), until it is released. None means nothing is on the
    /// watched ports (in this or another network namespace), so a sample can skip
    /// sock_diag: one `BPF_MAP_GET_NEXT_KEY`. Errors answer "yes" (sample anyway).
    pub fn any_tracked(&self) -> bool {
        let live: i64 = self.live.get(&0, 0).map_or(1, |v| v.iter().sum());
        if live > 0 {
            return true;
        }
        let mut t = self.tracked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut seeded = t.map.keys().next().is_some();
        if !seeded {
            // Every seeded socket is gone: `sock_release` can stop looking them up.
            // Under the lock, so a seed cannot slip in between; the kernel side
            // may add one (a socket without storage) and set the flag at any time,
            // so look again after clearing it and set it back if so.
            let _ = t.any.set(0, 0, 0);
            if t.map.keys().next().is_some() {
                let _ = t.any.set(0, 1, 0);
                seeded = true;
            }
        }
        seeded
    }

    /// Tracks sockets found on the watched ports (from sock_diag), so their close is
    /// reported and [`Counts::any_tracked`] sees them; returns how many were added.
    /// Sets `TRACKED_ANY`, so `sock_release` looks them up (until none is left).
    pub fn track(&self, socks: &[SockEntry]) -> usize {
        let mut guard = self.tracked.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let Seeded { map: tracked, any } = &mut *guard;
        let mut added = 0;
        for s in socks.iter().filter(|s| s.cookie != 0) {
            let mut addr = [0u8; 16];
            match s.addr {
                std::net::IpAddr::V4(a) => addr[..4].copy_from_slice(&a.octets()),
                std::net::IpAddr::V6(a) => addr = a.octets(),
            }
            let t = TrackedSock { port: s.port, family: u16::from(s.family.af()), _pad: 0, addr };
            // BPF_NOEXIST: a socket the kernel side tracked meanwhile stays as it is.
            if tracked.insert(s.cookie, t, 1).is_ok() {
                added += 1;
            }
        }
        if added > 0 {
            if let Err(e) = any.set(0, 1, 0) {
                tracing::warn!("seeded sockets' closes may go unreported: {}: {e}", maps::TRACKED_ANY);
            }
        }
        added
    }
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
    counts: Counts,
    ring_bytes: u32,
}

impl Observer {
    /// Loads the observer with a loader of its own.
    pub fn load(opts: &ObserverOptions) -> Result<Self> {
        Self::load_with(&Loader::new()?, opts)
    }

    pub fn load_with(loader: &Loader, opts: &ObserverOptions) -> Result<Self> {
        let cgroup = match &opts.cgroup {
            Some(p) => p.clone(),
            None => mounts::cgroup2_root()
                .ok_or_else(|| Error::unsupported("no cgroup v2 mount found", "mount -t cgroup2 none /sys/fs/cgroup/unified"))?,
        };
        let cgroup_file = File::open(&cgroup).map_err(|e| Error::io(format!("opening {}", cgroup.display()), e))?;
        let mut ebpf = loader.load(Sizes { small: false, ring_bytes: opts.ring_bytes })?;
        let mut hooks = Vec::new();
        for h in HOOKS.iter().filter(|h| matches!(h.role, Role::Observer { .. })) {
            let r = loader.attach(&mut ebpf, h, Some(&cgroup_file));
            hooks.push(HookStatus { program: h.program, hook: h.hook, purpose: h.purpose, attached: r.is_ok(), error: r.err() });
        }
        let required = HOOKS.iter().filter(|h| h.role == Role::Observer { required: true });
        if let Some(h) = required.into_iter().find(|h| !hooks.iter().any(|s| s.program == h.program && s.attached)) {
            let why = hooks.iter().find(|s| s.program == h.program).and_then(|s| s.error.clone()).unwrap_or_default();
            return Err(Error::unsupported(
                format!("cannot attach {} to {}: {why}", h.hook, cgroup.display()),
                "run `portwatch doctor`; a cgroup v2 mount and CONFIG_CGROUP_BPF are required",
            ));
        }
        let queued = ebpf.take_map(maps::QUEUED).ok_or_else(|| missing(maps::QUEUED))?;
        let tracked = ebpf.take_map(maps::TRACKED).ok_or_else(|| missing(maps::TRACKED))?;
        let any = ebpf.take_map(maps::TRACKED_ANY).ok_or_else(|| missing(maps::TRACKED_ANY))?;
        let live = ebpf.take_map(maps::TRACKED_LIVE).ok_or_else(|| missing(maps::TRACKED_LIVE))?;
        let counts = Counts {
            queued: Arc::new(PerCpuArray::try_from(queued).map_err(|e| Error::Internal(format!("{}: {e}", maps::QUEUED)))?),
            tracked: Arc::new(std::sync::Mutex::new(Seeded {
                map: BpfHashMap::try_from(tracked).map_err(|e| Error::Internal(format!("{}: {e}", maps::TRACKED)))?,
                any: Array::try_from(any).map_err(|e| Error::Internal(format!("{}: {e}", maps::TRACKED_ANY)))?,
            })),
            live: Arc::new(PerCpuArray::try_from(live).map_err(|e| Error::Internal(format!("{}: {e}", maps::TRACKED_LIVE)))?),
        };
        let ring = opts.ring_bytes.unwrap_or(portwatch_common::EVENTS_BYTES);
        {
            let internal = |e: aya::maps::MapError| Error::Internal(format!("setting the observer's options: {e}"));
            let mut cfg: Array<_, u64> =
                Array::try_from(ebpf.map_mut(maps::CONFIG).ok_or_else(|| missing(maps::CONFIG))?).map_err(internal)?;
            cfg.set(config::ACCEPTS, u64::from(opts.accepts), 0).map_err(internal)?;
            cfg.set(config::WAKEUP_BYTES, wakeup_watermark(ring), 0).map_err(internal)?;
            // For tests: the path a socket takes when its storage cannot be allocated.
            if std::env::var_os("PORTWATCH_NO_SOCKET_STORAGE").is_some_and(|v| v == "1") {
                cfg.set(config::NO_STORAGE, 1, 0).map_err(internal)?;
            }
        }
        let mut obs = Self {
            ebpf,
            hooks,
            offsets: loader.offsets,
            cgroup,
            memlock_raised: loader.memlock_raised,
            watched: PortSet::new(),
            counts,
            ring_bytes: ring,
        };
        obs.set_ports(&opts.ports)?;
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

    /// Batched wakeups (the default, `on`: none below the watermark, the reader
    /// drains on a timer) or the kernel's own (`off`: a wakeup when a record lands
    /// in a ring the reader has emptied), which lets an idle reader sleep without a
    /// timer.
    pub fn set_batched_wakeups(&mut self, on: bool) -> Result<()> {
        let internal = |e: aya::maps::MapError| Error::Internal(format!("setting the wakeup mode: {e}"));
        let mut cfg: Array<_, u64> =
            Array::try_from(self.ebpf.map_mut(maps::CONFIG).ok_or_else(|| missing(maps::CONFIG))?).map_err(internal)?;
        cfg.set(config::WAKEUP_BYTES, if on { wakeup_watermark(self.ring_bytes) } else { 0 }, 0).map_err(internal)
    }

    /// Tracks sockets that existed before the observer started (from a sock_diag
    /// snapshot), so their close is reported too.
    pub fn seed(&mut self, socks: &[SockEntry]) -> Result<usize> {
        Ok(self.counts.track(socks))
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

    /// Errors counted by each kernel program since load (failed kernel reads...), by
    /// `portwatch_common::probe` name.
    pub fn errors(&self) -> Vec<(&'static str, u64)> {
        probe::NAMES.iter().enumerate().map(|(i, n)| (*n, self.per_cpu_sum(maps::ERRORS, i as u32))).collect()
    }

    /// The kernel's accept counters, as a handle other threads can read.
    pub fn counts(&self) -> Counts {
        self.counts.clone()
    }

    /// Connections the kernel has completed into accept queues on `port` since load.
    pub fn queued(&self, port: u16) -> u64 {
        self.counts.queued(port)
    }
}

fn missing(name: &str) -> Error {
    Error::Internal(format!("map {name} missing from the kernel object"))
}
