//! Maps and load-time globals. Names match `portwatch_common::maps` / `globals`.
use core::ffi::c_void;

use aya_ebpf::{
    btf_maps::SkStorage,
    helpers::generated::bpf_sk_storage_get,
    macros::{btf_map, map},
    maps::{Array, HashMap, LruHashMap, PerCpuArray, RingBuf},
};
use portwatch_common::{
    config, lease, offsets::Offsets, probe, remap, Event, HolderOffsets, HolderQuery, KernelOffsets, Lease, SockData, TrackedSk,
    TrackedSock, EVENTS_BYTES, TRACKED_ENTRIES,
};

#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

#[map]
pub static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

#[map]
pub static PORTS: Array<u8> = Array::with_max_entries(65536, 0);

#[map]
pub static CONFIG: Array<u64> = Array::with_max_entries(config::LEN, 0);

#[map]
pub static TRACKED: LruHashMap<u64, TrackedSock> = LruHashMap::with_max_entries(TRACKED_ENTRIES, 0);

/// Non-zero while entries may be in `TRACKED` (user space's seeded sockets, or a
/// socket whose storage could not be made): otherwise `sock_release` skips the
/// cookie and the hash lookup. Set by both sides; only user space clears it.
#[map]
pub static TRACKED_ANY: Array<u64> = Array::with_max_entries(1, 0);

/// Socket-local storage of the sockets the kernel side tracks.
#[btf_map]
pub static TRACKED_SK: SkStorage<TrackedSk> = SkStorage::new();

/// Sockets with `TRACKED_SK` storage, per CPU (+1 made, -1 released).
#[map]
pub static TRACKED_LIVE: PerCpuArray<i64> = PerCpuArray::with_max_entries(1, 0);

/// Errors per program (failed kernel reads...), by `portwatch_common::probe` id.
#[map]
pub static ERRORS: PerCpuArray<u64> = PerCpuArray::with_max_entries(probe::COUNT, 0);

#[map]
pub static QUEUED: PerCpuArray<u64> = PerCpuArray::with_max_entries(65536, 0);

/// Queries of the holders iterator, keyed by the reader's `pid_tgid`.
#[map]
pub static HOLDER_QUERY: LruHashMap<u64, HolderQuery> = LruHashMap::with_max_entries(256, 0);

/// One chunk (64 slots) of an fd table, read with a single kernel read.
#[map]
pub static FD_CHUNK: PerCpuArray<[u64; 64]> = PerCpuArray::with_max_entries(1, 0);

/// Leased ports of one lease holder (see `probes::lease`).
#[map]
pub static LEASES: HashMap<u32, Lease> = HashMap::with_max_entries(lease::MAX_PORTS, 0);

#[unsafe(no_mangle)]
static SELF_TGID: u32 = 0;

#[unsafe(no_mangle)]
pub static HOLDER_OFFSETS: HolderOffsets = HolderOffsets::UNSET;

#[unsafe(no_mangle)]
static UDP_TABLE: u64 = 0;

/// The address of the kernel's `pollwake` (the wake function of poll/select's
/// wait-queue entries), or 0 when unknown.
#[unsafe(no_mangle)]
static POLLWAKE: u64 = 0;

#[inline(always)]
pub fn pollwake() -> u64 {
    // SAFETY: a plain read of a load-time constant.
    unsafe { core::ptr::read_volatile(&POLLWAKE) }
}

/// The address of the kernel's `ep_poll_callback` (the wake function of epoll's
/// entries on a watched file's wait queue), or 0 when unknown.
#[unsafe(no_mangle)]
static EP_POLL_CALLBACK: u64 = 0;

#[inline(always)]
pub fn ep_poll_callback() -> u64 {
    // SAFETY: a plain read of a load-time constant.
    unsafe { core::ptr::read_volatile(&EP_POLL_CALLBACK) }
}

/// The global `udp_table`'s address (kernels before 6.2), or 0.
#[inline(always)]
pub fn udp_table_global() -> u64 {
    // SAFETY: a plain read of a load-time constant.
    unsafe { core::ptr::read_volatile(&UDP_TABLE) }
}

#[unsafe(no_mangle)]
static OFFSETS: KernelOffsets = KernelOffsets::UNSET;

/// The tgid of portwatch itself (set by user space at load).
#[inline(always)]
pub fn self_tgid() -> u32 {
    // SAFETY: a plain read of a load-time constant.
    unsafe { core::ptr::read_volatile(&SELF_TGID) }
}

/// BTF-resolved kernel field offsets (set by user space at load).
#[inline(always)]
pub fn offsets() -> KernelOffsets {
    // SAFETY: a plain read of a load-time constant.
    unsafe { core::ptr::read_volatile(&OFFSETS) }
}

#[inline(always)]
pub fn watched(port: u16) -> bool {
    if let Some(all) = CONFIG.get(config::WATCH_ALL) {
        if *all != 0 {
            return true;
        }
    }
    matches!(PORTS.get(u32::from(port)), Some(v) if *v != 0)
}

const BPF_RB_NO_WAKEUP: u64 = 1;
const BPF_RB_FORCE_WAKEUP: u64 = 2;
const BPF_RB_AVAIL_DATA: u64 = 0;

/// Whether accept-queue arrivals go to the ring buffer (`watch --accepts`).
#[inline(always)]
pub fn accepts_wanted() -> bool {
    matches!(CONFIG.get(config::ACCEPTS), Some(v) if *v != 0)
}

/// Wakeup flags for the next record: none while less than the watermark is waiting
/// (the reader drains on a timer), a forced wakeup beyond it.
#[inline(always)]
fn wakeup_flags() -> u64 {
    let mark = match CONFIG.get(config::WAKEUP_BYTES) {
        Some(v) if *v != 0 => *v,
        _ => return 0,
    };
    if EVENTS.query(BPF_RB_AVAIL_DATA) >= mark {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    }
}

/// Sends an event, or counts it as lost when the ring buffer is full.
#[inline(always)]
pub fn submit(ev: &Event) {
    if EVENTS.output::<Event>(ev, wakeup_flags()).is_err() {
        if let Some(lost) = LOST.get_ptr_mut(0) {
            // SAFETY: per-CPU slot, no concurrent writer on this CPU.
            unsafe { *lost += 1 };
        }
    }
}

/// Counts an error of program `id` (per CPU: no atomics needed).
#[inline(always)]
pub fn count_error(id: u32) {
    if let Some(n) = ERRORS.get_ptr_mut(id) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *n += 1 };
    }
}

const BPF_SK_STORAGE_GET_F_CREATE: u64 = 1;

fn live_add(n: i64) {
    if let Some(p) = TRACKED_LIVE.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *p += n };
    }
}

/// Remembers a socket so its release is reported as a `close`: its endpoint goes
/// into the socket's own storage. `sk` is a socket the helper accepts (a
/// `cgroup/sock` context, or a tracing program's `struct sock *`).
#[inline(always)]
pub fn track(sk: *mut c_void, d: &SockData) {
    let map = core::ptr::addr_of!(TRACKED_SK).cast_mut().cast::<c_void>();
    let mut t = TrackedSk { cookie: d.cookie, port: d.port, family: d.family, _pad: 0, addr: d.addr };
    if !matches!(CONFIG.get(config::NO_STORAGE), Some(v) if *v != 0) {
        // SAFETY: `sk` is a socket pointer the verifier knows; `map` is the map.
        unsafe {
            if !bpf_sk_storage_get(map, sk, core::ptr::null_mut(), 0).is_null() {
                return;
            }
            if !bpf_sk_storage_get(map, sk, core::ptr::addr_of_mut!(t).cast(), BPF_SK_STORAGE_GET_F_CREATE).is_null() {
                live_add(1);
                return;
            }
        }
        // No storage (an allocation that failed): counted, for doctor and the metrics.
        count_error(probe::TRACK);
    }
    // The cookie-keyed hash keeps the socket instead, so its close is still reported.
    let seeded = TrackedSock { port: t.port, family: t.family, _pad: 0, addr: t.addr };
    if TRACKED.insert(&t.cookie, &seeded, 0).is_ok() {
        if let Some(any) = TRACKED_ANY.get_ptr_mut(0) {
            // SAFETY: the array's one value; a plain store of 1.
            unsafe { core::ptr::write_volatile(any, 1) };
        }
    }
}

/// The tracked endpoint of the socket being released, if it has one.
#[inline(always)]
pub fn released(sk: *mut c_void) -> Option<TrackedSk> {
    let map = core::ptr::addr_of!(TRACKED_SK).cast_mut().cast::<c_void>();
    // SAFETY: as in `track`; the value is copied out before the socket goes.
    let p = unsafe { bpf_sk_storage_get(map, sk, core::ptr::null_mut(), 0) }.cast::<TrackedSk>();
    if p.is_null() {
        return None;
    }
    live_add(-1);
    // SAFETY: non-null storage of this socket.
    Some(unsafe { *p })
}

/// Whether user space's seeded entries may be in `TRACKED` (one array read).
#[inline(always)]
pub fn any_seeded() -> bool {
    matches!(TRACKED_ANY.get(0), Some(n) if *n != 0)
}

/// Forgets a seeded socket.
#[inline(always)]
pub fn untrack(cookie: u64) {
    let _ = TRACKED.remove(&cookie);
}

/// One run's port remapping (`run --isolate-ports`); keys by `remap::key`.
#[map]
pub static REMAP: HashMap<u32, u16> = HashMap::with_max_entries(remap::ENTRIES, 0);

#[unsafe(no_mangle)]
static REMAP_CGROUP: u64 = 0;

#[unsafe(no_mangle)]
static REMAP_LEVEL: u32 = 0;

/// The cgroup v2 id of the run whose ports are remapped (0 = none).
#[inline(always)]
pub fn remap_cgroup() -> u64 {
    // SAFETY: a plain read of a load-time constant.
    unsafe { core::ptr::read_volatile(&REMAP_CGROUP) }
}

/// That cgroup's depth below the cgroup v2 root.
#[inline(always)]
pub fn remap_level() -> u32 {
    // SAFETY: a plain read of a load-time constant.
    unsafe { core::ptr::read_volatile(&REMAP_LEVEL) }
}
