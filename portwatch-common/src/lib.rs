//! Types shared by the kernel programs (`portwatch-ebpf`) and user space (`portwatch`).
//!
//! Everything here is `#[repr(C)]` with explicit padding so both sides agree on the
//! byte layout; the compile-time assertions at the bottom keep it that way.
#![no_std]

/// Names of maps, shared so neither side spells them on its own.
pub mod maps {
    /// Ring buffer of [`crate::Event`]s.
    pub const EVENTS: &str = "EVENTS";
    /// Per-CPU `u64` counter of events dropped because the ring buffer was full.
    pub const LOST: &str = "LOST";
    /// `Array<u8>` with 65536 entries: non-zero = port is watched.
    pub const PORTS: &str = "PORTS";
    /// `Array<u64>` of run-time settings, indexed by [`crate::config`] constants.
    pub const CONFIG: &str = "CONFIG";
    /// `LruHashMap<u64, TrackedSock>`: socket cookie -> local endpoint, for sockets we
    /// reported as bound or listening, so their release is reported as a `close`
    /// (`cgroup/sock_release` may not read the socket's address itself).
    pub const TRACKED: &str = "TRACKED";
    /// `Array<u64>` [1]: non-zero while `TRACKED` may hold an entry (user space
    /// sets it when it seeds, clears it when the map is empty again), so
    /// `sock_release` skips the cookie and the lookup otherwise.
    pub const TRACKED_ANY: &str = "TRACKED_ANY";
    /// `SK_STORAGE<TrackedSk>`: the sockets the kernel side saw bind or listen on
    /// a watched port carry their endpoint with them, so `sock_release` finds them
    /// with one pointer check (no cookie, no hash lookup for every other socket).
    pub const TRACKED_SK: &str = "TRACKED_SK";
    /// `PerCpuArray<i64>` [1]: sockets with `TRACKED_SK` storage (+1 when made,
    /// -1 on release; the sum over CPUs is the count).
    pub const TRACKED_LIVE: &str = "TRACKED_LIVE";
    /// `PerCpuArray<u64>` indexed by port: connections the kernel completed into a
    /// listener's accept queue (SYN_RECV -> ESTABLISHED on the listener's port).
    pub const QUEUED: &str = "QUEUED";
    /// `LruHashMap<u64, HolderQuery>` keyed by the reader's `pid_tgid`: what one read
    /// of the `pw_task_holders` iterator looks for (see [`crate::holders`]).
    pub const HOLDER_QUERY: &str = "HOLDER_QUERY";
    /// `PerCpuArray<[u64; 64]>` [1]: scratch for one chunk of an fd table.
    pub const FD_CHUNK: &str = "FD_CHUNK";
    /// `PerCpuArray<u64>` indexed by [`crate::probe`]: failed kernel reads and other
    /// errors per program (counted, never silently dropped).
    pub const ERRORS: &str = "ERRORS";
    /// `HashMap<u32, Lease>`: leased port -> its [`crate::Lease`] (one map per
    /// lease holder; see [`crate::lease`]).
    pub const LEASES: &str = "LEASES";
    /// `HashMap<u32, u16>` of one `run --isolate-ports` (see [`crate::remap`]):
    /// `remap::key(TO_REAL, virtual)` -> real port and `remap::key(TO_VIRTUAL, real)`
    /// -> virtual port, host byte order.
    pub const REMAP: &str = "REMAP";
}

/// Program ids for the `ERRORS` counters.
pub mod probe {
    pub const BIND: u32 = 0;
    pub const POST_BIND: u32 = 1;
    pub const STATE: u32 = 2;
    pub const RELEASE: u32 = 3;
    pub const TASK_FILE: u32 = 4;
    pub const HOLDERS: u32 = 5;
    pub const LEASE: u32 = 6;
    /// A socket's storage could not be made (its close is then tracked in the
    /// `TRACKED` hash instead).
    pub const TRACK: u32 = 7;
    pub const COUNT: u32 = 8;
    /// Names, indexed by id.
    pub const NAMES: [&str; COUNT as usize] =
        ["bind", "post_bind", "inet_sock_set_state", "sock_release", "task_file", "holders", "lease", "socket_storage"];
}

/// Names of the kernel programs, shared with user space.
pub mod programs {
    pub const BIND4: &str = "pw_bind4";
    pub const BIND6: &str = "pw_bind6";
    pub const POST_BIND4: &str = "pw_post_bind4";
    pub const POST_BIND6: &str = "pw_post_bind6";
    pub const SOCK_RELEASE: &str = "pw_sock_release";
    /// `tp_btf/inet_sock_set_state`: listen starts and accept-queue arrivals.
    pub const STATE_BTF: &str = "pw_state_btf";
    /// `iter/task_file`: every (process, fd) holding a socket.
    pub const TASK_FILE_ITER: &str = "pw_task_sockets";
    /// `iter/task`: holders of the sockets on given ports, comparing fd tables
    /// against the sockets' `struct file` pointers (see [`crate::holders`]).
    pub const HOLDERS_ITER: &str = "pw_task_holders";
    /// Do-nothing programs `doctor` loads to test hook types.
    pub const PROBE_FENTRY: &str = "pw_probe_fentry";
    pub const PROBE_KPROBE: &str = "pw_probe_kprobe";
    pub const PROBE_LSM: &str = "pw_probe_lsm";
    pub const PROBE_TRACEPOINT: &str = "pw_probe_tracepoint";
    pub const PROBE_RAW_TP: &str = "pw_probe_raw_tp";
    /// `cgroup/bind4|6` lease enforcement, refusing with EADDRINUSE
    /// (`bpf_set_retval`, Linux >= 5.18).
    pub const LEASE4: &str = "pw_lease4";
    pub const LEASE6: &str = "pw_lease6";
    /// The same for kernels without `bpf_set_retval`: the refusal is EPERM.
    pub const LEASE4_EPERM: &str = "pw_lease4_eperm";
    pub const LEASE6_EPERM: &str = "pw_lease6_eperm";
    /// Per-job port remapping (`run --isolate-ports`), see [`crate::remap`].
    pub const REMAP_BIND4: &str = "pw_remap_bind4";
    pub const REMAP_BIND6: &str = "pw_remap_bind6";
    pub const REMAP_CONNECT4: &str = "pw_remap_connect4";
    pub const REMAP_CONNECT6: &str = "pw_remap_connect6";
    pub const REMAP_GETSOCKNAME4: &str = "pw_remap_getsockname4";
    pub const REMAP_GETSOCKNAME6: &str = "pw_remap_getsockname6";
    pub const REMAP_GETPEERNAME4: &str = "pw_remap_getpeername4";
    pub const REMAP_GETPEERNAME6: &str = "pw_remap_getpeername6";
    pub const REMAP_SENDMSG4: &str = "pw_remap_sendmsg4";
    pub const REMAP_SENDMSG6: &str = "pw_remap_sendmsg6";
    pub const REMAP_RECVMSG4: &str = "pw_remap_recvmsg4";
    pub const REMAP_RECVMSG6: &str = "pw_remap_recvmsg6";
}

/// Globals (`.rodata`) set by user space at load time.
pub mod globals {
    /// The tgid of the portwatch process itself: its own activity is not reported.
    pub const SELF_TGID: &str = "SELF_TGID";
    /// Kernel struct field offsets resolved from BTF at load time; see [`crate::KernelOffsets`].
    pub const OFFSETS: &str = "OFFSETS";
    /// Offsets for the holders iterator; see [`crate::HolderOffsets`].
    pub const HOLDER_OFFSETS: &str = "HOLDER_OFFSETS";
    /// Address of the kernel's global `udp_table` (kernels before 6.2, where
    /// `net->ipv4.udp_table` does not exist), or 0.
    pub const UDP_TABLE: &str = "UDP_TABLE";
    pub const POLLWAKE: &str = "POLLWAKE";
    /// Address of the kernel's `ep_poll_callback` (epoll's wait-queue entries), or 0.
    pub const EP_POLL_CALLBACK: &str = "EP_POLL_CALLBACK";
    /// `u64`: the cgroup v2 id (directory inode) of the run whose ports the remap
    /// programs rewrite; 0 = none (the programs do nothing).
    pub const REMAP_CGROUP: &str = "REMAP_CGROUP";
    /// `u32`: that cgroup's depth below the cgroup v2 root (the root is 0), for
    /// `bpf_get_current_ancestor_cgroup_id`.
    pub const REMAP_LEVEL: &str = "REMAP_LEVEL";
}

/// Indexes into the `CONFIG` map.
pub mod config {
    /// Non-zero: report every port, ignoring `PORTS`.
    pub const WATCH_ALL: u32 = 0;
    /// Non-zero: accept-queue arrivals are also written to the ring buffer (for
    /// `watch --accepts`); otherwise they are only counted in `QUEUED`.
    pub const ACCEPTS: u32 = 1;
    /// Ring-buffer wakeup watermark in bytes: a record is written without waking the
    /// reader (`BPF_RB_NO_WAKEUP`) unless more than this many bytes are waiting
    /// (then `BPF_RB_FORCE_WAKEUP`); the reader drains on a timer meanwhile. 0 = the
    /// kernel's default (a wakeup when the reader has caught up).
    pub const WAKEUP_BYTES: u32 = 2;
    /// Non-zero: sockets are tracked in the `TRACKED` hash, never in their own
    /// storage, as when that storage cannot be allocated
    /// (`PORTWATCH_NO_SOCKET_STORAGE=1`, which tests that fallback).
    pub const NO_STORAGE: u32 = 3;
    pub const LEN: u32 = 4;
}

/// Size of the ring buffer in bytes (power of two pages).
pub const EVENTS_BYTES: u32 = 8 << 20;
/// Entries of the `TRACKED` map.
pub const TRACKED_ENTRIES: u32 = 65536;

pub const AF_INET: u16 = 2;
pub const AF_INET6: u16 = 10;
pub const IPPROTO_TCP: u16 = 6;
pub const IPPROTO_UDP: u16 = 17;

/// Socket states as the kernel numbers them (`include/net/tcp_states.h`; UDP
/// sockets use CLOSE and ESTABLISHED). Defined once, for both sides.
pub mod tcp_state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
    /// Bound but neither listening nor connected (Linux >= 6.5; CLOSE before).
    pub const BOUND_INACTIVE: u8 = 13;
}

/// What happened. The tag is the first field of every event.
#[repr(u32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EventKind {
    /// `bind()` called on a watched port (from `cgroup/bind4|6`, before the kernel checks it).
    BindAttempt = 1,
    /// `bind()` succeeded; `port` is the real port, also for bind(0) (`cgroup/post_bind4|6`).
    Bind = 2,
    /// A TCP socket started listening (`inet_sock_set_state` CLOSE -> LISTEN).
    Listen = 3,
    /// A socket we reported as bound or listening was released (`cgroup/sock_release`).
    Close = 4,
    /// The kernel completed a connection into a listener's accept queue.
    Accept = 5,
    /// A lease refused a bind (`cgroup/bind4|6` lease programs).
    Refused = 6,
}

impl EventKind {
    pub const fn from_u32(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::BindAttempt),
            2 => Some(Self::Bind),
            3 => Some(Self::Listen),
            4 => Some(Self::Close),
            5 => Some(Self::Accept),
            6 => Some(Self::Refused),
            _ => None,
        }
    }
}

/// Who and when: the same for every event.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct EventInfo {
    /// An [`EventKind`] as `u32`.
    pub kind: u32,
    /// Thread group id (the process id users know). 0 when not in process context.
    pub tgid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    /// [`info_flags`] bits.
    pub flags: u32,
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// cgroup v2 id of the task.
    pub cgroup_id: u64,
    /// Network namespace cookie (`SO_NETNS_COOKIE`), 0 if unknown.
    pub netns_cookie: u64,
    pub comm: [u8; 16],
}

pub mod info_flags {
    /// The event happened in softirq context: tgid/comm are not the socket's owner.
    pub const NO_TASK: u32 = 1;
}

/// The socket the event is about.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct SockData {
    /// Socket cookie (`SO_COOKIE`, sock_diag's `idiag_cookie`), 0 if unknown.
    pub cookie: u64,
    pub family: u16,
    pub protocol: u16,
    /// Local port, host byte order (the real one for bind(0) once bound).
    pub port: u16,
    /// For binds: the port asked for (0 = kernel picks).
    pub req_port: u16,
    pub peer_port: u16,
    pub old_state: u8,
    pub new_state: u8,
    pub _pad0: u32,
    /// 0 or a positive errno.
    pub errno: i32,
    pub _pad1: u32,
    /// Local address: IPv4 in the first 4 bytes, network order.
    pub addr: [u8; 16],
    pub peer_addr: [u8; 16],
}

/// The envelope: one fixed-size record in the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct Event {
    pub info: EventInfo,
    pub data: SockData,
}

pub mod offsets;
pub use offsets::{HolderOffsets, KernelOffsets};

/// A socket portwatch reported bound or listening (value of the `TRACKED` map).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackedSock {
    pub port: u16,
    pub family: u16,
    pub _pad: u32,
    pub addr: [u8; 16],
}

/// What a socket tracked by the kernel side carries (`TRACKED_SK` storage).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TrackedSk {
    pub cookie: u64,
    pub port: u16,
    pub family: u16,
    pub _pad: u32,
    pub addr: [u8; 16],
}

/// One record written by the `iter/task_file` program: a process holding a socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default)]
pub struct TaskSocket {
    pub tgid: u32,
    pub fd: u32,
    pub ino: u64,
}

/// The `pw_task_holders` iterator: who holds the sockets bound to a few ports, at a
/// cost of one pass over the tasks rather than over every open file.
///
/// A reader writes a [`HolderQuery`] under its own `pid_tgid` into the
/// `HOLDER_QUERY` map and reads the pinned iterator. On the first task the program
/// finds the sockets on the ports by walking the kernel's own port-keyed hash
/// buckets (TCP bind hash, UDP hash), and records each socket's `struct file *`.
/// Then, for every process, it compares the fd table against those pointers. The
/// output is a packed array of [`HolderRecord`]s.
pub mod holders {
    pub const MAX_PORTS: usize = 16;
    pub const MAX_TARGETS: usize = 16;
    /// [`super::HolderQuery::protos`] bits.
    pub const PROTO_TCP: u32 = 1;
    pub const PROTO_UDP: u32 = 2;
    /// [`super::HolderRecord::kind`].
    pub const REC_STATUS: u8 = 1;
    pub const REC_SOCKET: u8 = 2;
    pub const REC_HOLDER: u8 = 3;
    /// A process waiting on a socket (in accept, poll/select or epoll_wait): `tgid`
    /// and the socket's `ino`. A candidate holder only, for `who`'s proof.
    pub const REC_WAITER: u8 = 4;
    /// Waiting processes recorded at most (over all sockets).
    pub const MAX_WAITER_PIDS: usize = 16;
    /// Status values (in a `REC_STATUS` record's `aux`). Anything but `OK` means the
    /// answer is incomplete and the caller must use another method.
    pub const OK: u32 = 1;
    /// More sockets than `MAX_TARGETS`, or a hash chain longer than the walk allows.
    pub const TOO_MANY: u32 = 2;
    /// A kernel read failed (a structure changed under us, or an offset is wrong).
    pub const READ_FAILED: u32 = 3;
    /// An fd table had more entries than the program walks.
    pub const FD_TABLE_TOO_BIG: u32 = 4;
    /// `bpf_loop` refused to run.
    pub const LOOP_FAILED: u32 = 5;
}

/// One query of the holders iterator (value of `HOLDER_QUERY`). User space fills
/// `ports`, `nports`, `protos` and `tcp_states`; the program fills the rest.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HolderQuery {
    /// Host byte order.
    pub ports: [u16; holders::MAX_PORTS],
    pub nports: u32,
    /// [`holders::PROTO_TCP`] | [`holders::PROTO_UDP`].
    pub protos: u32,
    /// Bit `1 << state` set: TCP sockets in that state count (e.g. LISTEN, CLOSE).
    pub tcp_states: u32,
    /// 0 until the program resolved the sockets, then a [`holders`] status.
    pub status: u32,
    pub ntargets: u32,
    pub _pad: u32,
    /// `struct file *` of each socket found.
    pub files: [u64; holders::MAX_TARGETS],
    pub inodes: [u64; holders::MAX_TARGETS],
    /// Per socket: `proto | family << 8 | state << 16 | port << 32`.
    pub info: [u64; holders::MAX_TARGETS],
    /// Per socket: the references to its file (see [`HolderRecord::tgid`]).
    pub refs: [u64; holders::MAX_TARGETS],
    /// Smallest and largest of `files`, to skip most fds with two compares.
    pub min_file: u64,
    pub max_file: u64,
    /// Processes found waiting on the sockets, and the socket's index in `files`
    /// (`tgid | index << 32`); [`holders::REC_WAITER`] records.
    pub waiters: [u64; holders::MAX_WAITER_PIDS],
    pub nwaiters: u32,
    pub _pad2: u32,
}

impl HolderQuery {
    pub const EMPTY: Self = Self {
        ports: [0; holders::MAX_PORTS],
        nports: 0,
        protos: 0,
        tcp_states: 0,
        status: 0,
        ntargets: 0,
        _pad: 0,
        files: [0; holders::MAX_TARGETS],
        inodes: [0; holders::MAX_TARGETS],
        info: [0; holders::MAX_TARGETS],
        refs: [0; holders::MAX_TARGETS],
        min_file: 0,
        max_file: 0,
        waiters: [0; holders::MAX_WAITER_PIDS],
        nwaiters: 0,
        _pad2: 0,
    };
}

/// One record of the holders iterator's output.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HolderRecord {
    /// [`holders::REC_STATUS`], [`holders::REC_SOCKET`], [`holders::REC_HOLDER`]
    /// or [`holders::REC_WAITER`].
    pub kind: u8,
    /// Sockets: 6 (TCP) or 17 (UDP).
    pub proto: u8,
    /// Sockets: `AF_INET` or `AF_INET6` (low byte).
    pub family: u8,
    /// Sockets: the kernel's TCP state number (UDP: 7 unconnected, 1 connected).
    pub state: u8,
    /// Holders and waiters: the process (init pid namespace). Sockets: the references to the
    /// socket's file when the program resolved it (0: not known on this kernel).
    /// Every fd slot holding the socket is one, so when the holders found account
    /// for all of them, no other process holds it. Transient references (a syscall
    /// in progress on the fd in a multithreaded process, an fd in flight over a
    /// unix socket) make the count larger, never smaller.
    pub tgid: u32,
    /// Holders: the fd number.
    pub fd: u32,
    /// Status: the [`holders`] status. Sockets: the local port.
    pub aux: u32,
    // A status record after the socket walk also says where it stopped: `tgid` =
    // steps in the last hash chain, `fd` = the port's index, `state` = the walk's
    // phase, `family` = sockets found, `ino` = bpf_loop's iterations (for doctor).
    /// Sockets, holders and waiters: the socket's inode number.
    pub ino: u64,
}

/// Port leases: while a `portwatch run --lease` (or an operator's `lease add`)
/// holds a lease on a port, a bind to that port number from outside the owner's
/// cgroup is refused in the kernel. Each holder loads its own pair of lease
/// programs and its own `LEASES` map, so a lease ends with its holder's bpf links.
pub mod lease {
    /// Most ports one holder may lease.
    pub const MAX_PORTS: u32 = 64;
    /// The errno a refusal returns where `bpf_set_retval` exists.
    pub const EADDRINUSE: i32 = 98;
}

/// One leased port (value of `LEASES`, keyed by the port as `u32`). User space
/// fills the owner; the program counts refusals and keeps the last one.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Lease {
    /// cgroup v2 id (the directory's inode number) whose processes may bind.
    pub cgroup_id: u64,
    /// The network namespace (`SO_NETNS_COOKIE`) the lease is in: binds in other
    /// namespaces, which have ports of their own, are not refused. 0 = every one.
    pub netns_cookie: u64,
    /// That cgroup's depth below the cgroup v2 root (the root is 0).
    pub level: u32,
    /// The `portwatch run` holding the lease, 0 for an operator's lease.
    pub owner_pid: u32,
    /// The owner's start time (clock ticks since boot), so a reused pid is not it.
    pub owner_start: u64,
    /// When the lease began (seconds since the epoch).
    pub since_unix: u64,
    /// Binds refused so far.
    pub refused: u64,
    /// The last refused bind: tgid, uid, `bpf_ktime_get_ns`, socket cookie, comm.
    pub last_tgid: u32,
    pub last_uid: u32,
    pub last_ns: u64,
    pub last_cookie: u64,
    pub last_comm: [u8; 16],
}

/// Per-job port remapping (`run --isolate-ports`). One program set per run,
/// attached to the run's cgroup and checking that the calling task is inside it
/// (at any depth): binds to a virtual port go to the real one, connects
/// and UDP sends to a local address on the virtual port go to the real one, and
/// `getsockname`/`getpeername`/`recvmsg` show the virtual port again.
pub mod remap {
    /// Most ports one run can isolate (each takes two entries of the map).
    pub const MAX_PORTS: u32 = 64;
    /// Entries of the `REMAP` map.
    pub const ENTRIES: u32 = 2 * MAX_PORTS;
    /// Direction of a `REMAP` key: virtual -> real.
    pub const TO_REAL: u32 = 0;
    /// Direction of a `REMAP` key: real -> virtual.
    pub const TO_VIRTUAL: u32 = 1;

    /// The `REMAP` key of `port` looked up in direction `dir`.
    #[inline(always)]
    pub const fn key(dir: u32, port: u16) -> u32 {
        (dir << 16) | port as u32
    }

    /// Whether an IPv4 address (as the kernel stores it: network order in a `u32`
    /// read natively) is this host seen from itself: 127.0.0.0/8 or 0.0.0.0.
    #[inline(always)]
    pub const fn local4(ip: u32) -> bool {
        ip == 0 || u32::from_be(ip) >> 24 == 127
    }

    /// The same for IPv6 (four network-order words): `::1`, `::`, and IPv4-mapped
    /// local IPv4 (`::ffff:127.0.0.1`, `::ffff:0.0.0.0`).
    #[inline(always)]
    pub const fn local6(w: [u32; 4]) -> bool {
        if w[0] != 0 || w[1] != 0 {
            return false;
        }
        if w[2] == 0 {
            return w[3] == 0 || u32::from_be(w[3]) == 1;
        }
        u32::from_be(w[2]) == 0xffff && local4(w[3])
    }
}

#[cfg(feature = "user")]
mod pod {
    // SAFETY: all of these are `#[repr(C)]`, made only of integers and byte arrays,
    // with explicit padding (checked by the size assertions below).
    unsafe impl aya::Pod for super::Event {}
    unsafe impl aya::Pod for super::KernelOffsets {}
    unsafe impl aya::Pod for super::TaskSocket {}
    unsafe impl aya::Pod for super::TrackedSock {}
    unsafe impl aya::Pod for super::HolderQuery {}
    unsafe impl aya::Pod for super::HolderRecord {}
    unsafe impl aya::Pod for super::HolderOffsets {}
    unsafe impl aya::Pod for super::Lease {}
}

const _: () = assert!(core::mem::size_of::<EventInfo>() == 64);
const _: () = assert!(core::mem::size_of::<SockData>() == 64);
const _: () = assert!(core::mem::size_of::<Event>() == 128);
const _: () = assert!(core::mem::size_of::<TaskSocket>() == 16);
const _: () = assert!(core::mem::size_of::<TrackedSock>() == 24);
const _: () = assert!(core::mem::size_of::<TrackedSk>() == 32);
const _: () =
    assert!(core::mem::size_of::<HolderQuery>() == 32 + 24 + 4 * 8 * holders::MAX_TARGETS + 16 + 8 * holders::MAX_WAITER_PIDS + 8);
const _: () = assert!(core::mem::size_of::<HolderRecord>() == 24);
const _: () = assert!(core::mem::size_of::<Lease>() == 88);

#[cfg(test)]
mod tests {
    extern crate std;

    use super::remap::{key, local4, local6, TO_REAL, TO_VIRTUAL};

    fn v4(a: [u8; 4]) -> u32 {
        u32::from_ne_bytes(a)
    }

    fn v6(a: std::net::Ipv6Addr) -> [u32; 4] {
        let o = a.octets();
        core::array::from_fn(|i| u32::from_ne_bytes([o[4 * i], o[4 * i + 1], o[4 * i + 2], o[4 * i + 3]]))
    }

    #[test]
    fn remap_keys_keep_directions_apart() {
        assert_ne!(key(TO_REAL, 5050), key(TO_VIRTUAL, 5050));
        assert_eq!(key(TO_REAL, 5050), 5050);
        assert_eq!(key(TO_VIRTUAL, 65535), 0x1_ffff);
    }

    #[test]
    fn local_addresses_are_the_ones_a_job_reaches_itself_on() {
        assert!(local4(v4([127, 0, 0, 1])));
        assert!(local4(v4([127, 1, 2, 3])));
        assert!(local4(0));
        assert!(!local4(v4([10, 0, 0, 1])));
        assert!(!local4(v4([1, 0, 0, 127])));
        for a in ["::1", "::", "::ffff:127.0.0.1", "::ffff:0.0.0.0"] {
            assert!(local6(v6(a.parse().unwrap())), "{a}");
        }
        for a in ["::2", "fe80::1", "::ffff:10.0.0.1", "2001:db8::1", "::127.0.0.1"] {
            assert!(!local6(v6(a.parse().unwrap())), "{a}");
        }
    }
}
