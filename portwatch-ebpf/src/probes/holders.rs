//! `iter/task`: the holders of the sockets bound to a few ports, for `portwatch who`.
//!
//! `iter/task_file` visits every open file on the host (about 330 ns each); this
//! program visits every task once instead. On the first task it resolves the query:
//! it walks the kernel's port-keyed hash buckets (the TCP bind hash, the UDP hash)
//! for each asked port and records the `struct file *` of every socket it finds.
//! Then, for each process, it reads the fd table 64 slots at a time and compares
//! the pointers. See `portwatch_common::holders` for the protocol with user space.
use core::ffi::c_void;

use aya_ebpf::{
    bindings::seq_file,
    helpers::generated::{bpf_get_current_pid_tgid, bpf_get_current_task, bpf_loop, bpf_probe_read_kernel, bpf_seq_write},
    macros::map,
    maps::PerCpuArray,
};
use portwatch_common::{holders::*, probe, tcp_state, HolderQuery, HolderRecord, IPPROTO_TCP, IPPROTO_UDP};

use super::task_file::IterMeta;
use crate::{
    maps::{count_error, ep_poll_callback, pollwake, udp_table_global, FD_CHUNK, HOLDER_OFFSETS, HOLDER_QUERY},
    read::rd,
};

/// `struct bpf_iter__task`.
#[repr(C)]
pub struct IterTask {
    meta: *const IterMeta,
    task: *const u8,
}

/// One field of `HOLDER_OFFSETS` (read alone: the whole struct would cost stack).
macro_rules! off {
    ($f:ident) => {
        // SAFETY: a plain read of a load-time constant.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!(HOLDER_OFFSETS.$f)) }
    };
}

/// Steps of one hash-chain walk (bucket entries plus sockets on the port). A port
/// with more sockets than this (e.g. thousands of accepted connections) is reported
/// as `TOO_MANY` and user space uses the slower full pass.
const MAX_WALK_STEPS: u32 = 1 << 14;
/// fd-table chunks of 64 (so 4M fds).
const MAX_FD_CHUNKS: u32 = 1 << 16;

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task")]
pub fn pw_task_holders(ctx: *mut IterTask) -> i32 {
    if try_task_holders(ctx).is_err() {
        count_error(probe::HOLDERS);
    }
    0
}

fn try_task_holders(ctx: *mut IterTask) -> Result<(), ()> {
    // SAFETY: the iterator context is valid for the duration of the call.
    let (meta, task) = unsafe { ((*ctx).meta, (*ctx).task) };
    if task.is_null() {
        return Ok(());
    }
    // SAFETY: helper without arguments.
    let key = unsafe { bpf_get_current_pid_tgid() };
    let q = HOLDER_QUERY.get_ptr_mut(key).ok_or(())?;
    // SAFETY: meta is the iterator's trusted metadata pointer.
    let seq = unsafe { (*meta).seq };
    // SAFETY: q points into the map value, valid while the program runs.
    let q = unsafe { &mut *q };
    if q.status == 0 {
        let rec = resolve(q).unwrap_or(HolderRecord { kind: REC_STATUS, aux: READ_FAILED, ..HolderRecord::default() });
        q.status = rec.aux;
        if q.status == READ_FAILED {
            count_error(probe::HOLDERS);
        }
        emit(seq, &rec);
        for i in 0..MAX_TARGETS {
            if i as u32 >= q.ntargets {
                break;
            }
            let info = q.info[i];
            let rec = HolderRecord {
                kind: REC_SOCKET,
                proto: info as u8,
                family: (info >> 8) as u8,
                state: (info >> 16) as u8,
                aux: (info >> 32) as u32,
                tgid: q.refs[i].min(u64::from(u32::MAX)) as u32,
                ino: q.inodes[i],
                ..HolderRecord::default()
            };
            emit(seq, &rec);
        }
        for i in 0..MAX_WAITER_PIDS {
            if i as u32 >= q.nwaiters {
                break;
            }
            let w = q.waiters[i];
            let ino = q.inodes[(w >> 32) as usize & (MAX_TARGETS - 1)];
            emit(seq, &HolderRecord { kind: REC_WAITER, tgid: w as u32, ino, ..HolderRecord::default() });
        }
    }
    if q.status != OK || q.ntargets == 0 {
        return Ok(());
    }
    // A failed read could hide a holder: say so, and user space takes another path.
    let status = scan_task(q, seq, task as u64).unwrap_or(READ_FAILED);
    if status == READ_FAILED {
        count_error(probe::HOLDERS);
    }
    if status != OK {
        q.status = status;
        emit(seq, &HolderRecord { kind: REC_STATUS, aux: status, ..HolderRecord::default() });
    }
    Ok(())
}

/// Compares one task's fd table with the sockets' files; returns a status.
#[inline(always)]
fn scan_task(q: &mut HolderQuery, seq: *mut seq_file, task: u64) -> Result<u32, ()> {
    let pid: i32 = rd(task, off!(task_pid))?;
    let tgid: i32 = rd(task, off!(task_tgid))?;
    let files: u64 = rd(task, off!(task_files))?;
    if files == 0 {
        // A kernel thread or an exiting task: no fd table.
        return Ok(OK);
    }
    if pid != tgid {
        // A thread: its fd table is its process's unless it unshared it.
        let leader: u64 = rd(task, off!(task_group_leader))?;
        let leader_files: u64 = rd(leader, off!(task_files)).unwrap_or(0);
        if leader_files == files {
            return Ok(OK);
        }
    }
    let fdt: u64 = rd(files, off!(files_fdt))?;
    let max_fds: u32 = rd(fdt, off!(fdt_max_fds))?;
    let arr: u64 = rd(fdt, off!(fdt_fd))?;
    let open_fds: u64 = rd(fdt, off!(fdt_open_fds))?;
    let chunks = max_fds.div_ceil(64);
    if chunks > MAX_FD_CHUNKS {
        return Ok(FD_TABLE_TOO_BIG);
    }
    set_fd_status(OK);
    let mut walk = FdWalk { q: q as *mut HolderQuery, seq, arr, open_fds, tgid: tgid as u32, _pad: 0 };
    // SAFETY: the callback and its context follow bpf_loop's contract.
    unsafe { bpf_loop(chunks, fd_chunk as *mut c_void, (&mut walk as *mut FdWalk).cast(), 0) };
    Ok(HOLDER_FD_STATUS.get(0).copied().unwrap_or(READ_FAILED))
}

#[inline(always)]
fn emit(seq: *mut seq_file, rec: &HolderRecord) {
    // SAFETY: writes `rec` (on the stack) into the iterator's seq_file.
    unsafe {
        bpf_seq_write(seq, (rec as *const HolderRecord).cast(), core::mem::size_of::<HolderRecord>() as u32);
    }
}

/// State of the walk over the asked ports' hash chains, advanced by the one
/// `bpf_loop` callback. It lives in a per-CPU map, not on the stack: verifiers
/// before 6.7 check a callback once, with the caller's stack as it was at the call,
/// and treat what they know of it as fixed; on Debian's 6.1 the walk's state on the
/// stack then never changed as far as the program was concerned. The callback's
/// stack context carries only the query pointer.
#[repr(C)]
pub struct Walk {
    net: u64,
    /// Cursors: the next bind bucket, the next bind2 bucket, the next socket node.
    tb: u64,
    tb2: u64,
    sk: u64,
    port: u32,
    mix: u32,
    status: u32,
    /// Which asked port, which walk of it ([`Phase`]), and steps of that walk.
    index: u32,
    phase: u32,
    steps: u32,
    /// The last read attempted (where a READ_FAILED happened, for doctor).
    stage: u32,
}

#[map]
static HOLDER_WALK: PerCpuArray<Walk> = PerCpuArray::with_max_entries(1, 0);

/// What the walk's callback is handed on the stack: only what does not change.
#[repr(C)]
struct WalkCtx {
    q: *mut HolderQuery,
}

/// Where the walk is, for one port: about to start, in the TCP bind hash, about
/// to start the UDP hash, in it.
mod phase {
    pub const START: u32 = 0;
    pub const TCP: u32 = 1;
    pub const UDP_START: u32 = 2;
    pub const UDP: u32 = 3;
}

/// Finds the sockets on the asked ports; returns the status record (which also
/// says where the walk stopped: steps, port index, phase, sockets found).
fn resolve(q: &mut HolderQuery) -> Result<HolderRecord, ()> {
    // SAFETY: helper without arguments.
    let current = unsafe { bpf_get_current_task() };
    let nsproxy: u64 = rd(current, off!(task_nsproxy))?;
    let net: u64 = rd(nsproxy, off!(nsproxy_net_ns))?;
    let mix: u32 = if off!(net_hash_mix) == u32::MAX { 0 } else { rd(net, off!(net_hash_mix))? };
    q.min_file = u64::MAX;
    q.max_file = 0;
    let nports = q.nports.min(MAX_PORTS as u32);
    let w = HOLDER_WALK.get_ptr_mut(0).ok_or(())?;
    // SAFETY: the per-CPU value, ours while the program runs (migration disabled).
    let w = unsafe { &mut *w };
    *w = Walk { net, tb: 0, tb2: 0, sk: 0, port: 0, mix, status: OK, index: 0, phase: phase::START, steps: 0, stage: 0 };
    let mut ctx = WalkCtx { q: q as *mut HolderQuery };
    // Each port: a start, at most MAX_WALK_STEPS in each hash, and a start of the UDP walk.
    let iterations = nports * (2 * MAX_WALK_STEPS + 2) + 1;
    // SAFETY: the callback and its context follow bpf_loop's contract.
    let r = unsafe { bpf_loop(iterations, resolve_step as *mut c_void, (&mut ctx as *mut WalkCtx).cast(), 0) };
    let status = if r < 0 {
        LOOP_FAILED
    } else if w.status == OK && w.index < nports {
        // The walk ran out of steps.
        TOO_MANY
    } else {
        w.status
    };
    Ok(HolderRecord {
        kind: REC_STATUS,
        aux: status,
        tgid: w.steps,
        fd: w.index,
        state: w.phase as u8,
        family: q.ntargets as u8,
        proto: w.stage as u8,
        ino: w.sk,
    })
}

/// One step of the walk: 0 to go on, 1 to stop (done or failed).
extern "C" fn resolve_step(_i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: ctx is the caller's `WalkCtx`; its query points into the map value.
    let q = unsafe { &mut *(*ctx.cast::<WalkCtx>()).q };
    let Some(w) = HOLDER_WALK.get_ptr_mut(0) else { return 1 };
    // SAFETY: the per-CPU value, ours while the program runs.
    let w = unsafe { &mut *w };
    match resolve_step_inner(w, q) {
        Ok(more) => i64::from(!more || w.status != OK),
        Err(()) => {
            w.status = READ_FAILED;
            1
        }
    }
}

#[inline(always)]
fn resolve_step_inner(w: &mut Walk, q: &mut HolderQuery) -> Result<bool, ()> {
    if w.index >= q.nports.min(MAX_PORTS as u32) {
        return Ok(false);
    }
    match w.phase {
        phase::START => {
            // Below nports <= MAX_PORTS (checked above); the mask bounds it for
            // verifiers that do not learn from comparing two registers (6.1).
            const _: () = assert!(MAX_PORTS.is_power_of_two());
            // SAFETY: a read of our own field; volatile, so LLVM keeps the mask.
            let i = unsafe { core::ptr::read_volatile(&w.index) } as usize & (MAX_PORTS - 1);
            w.port = u32::from(q.ports[i]);
            w.steps = 0;
            (w.tb, w.tb2, w.sk) = (0, 0, 0);
            if q.protos & PROTO_TCP != 0 {
                w.stage = 1;
                let hashinfo: u64 = rd(w.net, off!(net_tcp_hashinfo))?;
                w.stage = 2;
                let bhash: u64 = rd(hashinfo, off!(hashinfo_bhash))?;
                w.stage = 3;
                let size: u32 = rd(hashinfo, off!(hashinfo_bhash_size))?;
                w.stage = 4;
                if size == 0 {
                    return Err(());
                }
                // inet_bhashfn(): (port + net_hash_mix(net)) & (bhash_size - 1)
                let slot = (w.port.wrapping_add(w.mix) & (size - 1)) as u64;
                let bucket = bhash + slot * u64::from(off!(bhb_size));
                w.tb = rd(bucket + u64::from(off!(bhb_chain)), off!(hlist_first))?;
                w.phase = phase::TCP;
            } else {
                w.phase = phase::UDP_START;
            }
        }
        phase::TCP => {
            w.steps += 1;
            if w.steps > MAX_WALK_STEPS {
                w.status = TOO_MANY;
                return Ok(false);
            }
            if !tcp_step_inner(w, q)? {
                w.phase = phase::UDP_START;
            }
        }
        phase::UDP_START => {
            w.steps = 0;
            if q.protos & PROTO_UDP != 0 {
                // `net->ipv4.udp_table` from 6.2; the global `udp_table` before.
                let table: u64 = if off!(net_udp_table) != u32::MAX { rd(w.net, off!(net_udp_table))? } else { udp_table_global() };
                let hash: u64 = rd(table, off!(udp_table_hash))?;
                let mask: u32 = rd(table, off!(udp_table_mask))?;
                // udp_hashfn(): (port + net_hash_mix(net)) & mask
                let slot = (w.port.wrapping_add(w.mix) & mask) as u64;
                let hslot = hash + slot * u64::from(off!(udp_hslot_size));
                w.sk = rd(hslot + u64::from(off!(udp_hslot_head)), off!(hlist_first))?;
                w.phase = phase::UDP;
            } else {
                w.index += 1;
                w.phase = phase::START;
            }
        }
        _ => {
            w.steps += 1;
            if w.steps > MAX_WALK_STEPS {
                w.status = TOO_MANY;
                return Ok(false);
            }
            if !udp_step_inner(w, q)? {
                w.index += 1;
                w.phase = phase::START;
            }
        }
    }
    Ok(true)
}

#[inline(always)]
fn tcp_step_inner(w: &mut Walk, q: &mut HolderQuery) -> Result<bool, ()> {
    if w.sk != 0 {
        let node = w.sk;
        w.stage = 10;
        w.sk = rd(node, off!(hlist_next))?;
        w.stage = 11;
        add_socket(w, q, node - u64::from(off!(skc_bind_node)), IPPROTO_TCP as u8)?;
        return Ok(w.status == OK);
    }
    if w.tb2 != 0 {
        let node = w.tb2;
        w.tb2 = rd(node, off!(hlist_next))?;
        let tb2 = node - u64::from(off!(tb2_bhash_node));
        w.sk = rd(tb2 + u64::from(off!(tb2_owners)), off!(hlist_first))?;
        return Ok(true);
    }
    if w.tb != 0 {
        let node = w.tb;
        w.stage = 20;
        w.tb = rd(node, off!(hlist_next))?;
        let tb = node - u64::from(off!(tb_node));
        w.stage = 21;
        let port: u16 = rd(tb, off!(tb_port))?;
        w.stage = 22;
        let net: u64 = rd(tb, off!(tb_net))?;
        if u32::from(port) == w.port && net == w.net {
            if off!(tb_owners) != u32::MAX {
                w.stage = 23;
                w.sk = rd(tb + u64::from(off!(tb_owners)), off!(hlist_first))?;
            } else {
                w.tb2 = rd(tb + u64::from(off!(tb_bhash2)), off!(hlist_first))?;
            }
        }
        return Ok(true);
    }
    Ok(false)
}

/// One step of the UDP walk: the sockets in the port's `udp_table.hash` slot.
#[inline(always)]
fn udp_step_inner(w: &mut Walk, q: &mut HolderQuery) -> Result<bool, ()> {
    if w.sk == 0 {
        return Ok(false);
    }
    let node = w.sk;
    w.sk = rd(node, off!(hlist_next))?;
    let sk = node - u64::from(off!(skc_node));
    let num: u16 = rd(sk, off!(skc_num))?;
    let net: u64 = rd(sk, off!(skc_net))?;
    if u32::from(num) == w.port && net == w.net {
        add_socket(w, q, sk, IPPROTO_UDP as u8)?;
    }
    Ok(w.status == OK)
}

/// Records a socket found on the port (if its state is asked for and it has a file).
#[inline(always)]
fn add_socket(w: &mut Walk, q: &mut HolderQuery, sk: u64, proto: u8) -> Result<(), ()> {
    let state: u8 = rd(sk, off!(skc_state))?;
    if proto == IPPROTO_TCP as u8
        && (state == tcp_state::TIME_WAIT || state == tcp_state::NEW_SYN_RECV || q.tcp_states & (1u32 << (state & 31)) == 0)
    {
        return Ok(());
    }
    let family: u16 = rd(sk, off!(skc_family))?;
    let sock: u64 = rd(sk, off!(sk_socket))?;
    if sock == 0 {
        return Ok(());
    }
    let file: u64 = rd(sock, off!(socket_file))?;
    if file == 0 {
        return Ok(());
    }
    let inode: u64 = rd(file, off!(file_inode))?;
    let ino: u64 = rd(inode, off!(inode_ino))?;
    // Read before the index below is computed: 6.1's verifier loses its bound
    // across the helper calls.
    let refs = fd_refs(q, sock, file);
    let n = q.ntargets as usize;
    if n >= MAX_TARGETS {
        w.status = TOO_MANY;
        return Ok(());
    }
    q.files[n] = file;
    q.inodes[n] = ino;
    q.info[n] = u64::from(proto) | u64::from(family as u8) << 8 | u64::from(state) << 16 | u64::from(w.port) << 32;
    q.refs[n] = refs;
    q.ntargets = n as u32 + 1;
    q.min_file = q.min_file.min(file);
    q.max_file = q.max_file.max(file);
    Ok(())
}

/// Waiters read on a socket's wait queue at most; more, and its references are
/// not known.
const MAX_WAITERS: u32 = 32;

/// The references to a socket's file that fd slots hold (see
/// `HolderRecord::tgid`): all of them, less those of tasks in poll/select on it
/// (each `poll_table_entry` on the socket's wait queue holds one). 0 when unknown.
/// The processes waiting on it go to `q.waiters`, as the next socket's.
#[inline(always)]
fn fd_refs(q: &mut HolderQuery, sock: u64, file: u64) -> u64 {
    let refs = file_refs(file);
    if refs == 0 {
        return 0;
    }
    let polls = match poll_refs(q, sock, file) {
        Ok(Some(n)) => n,
        _ => return 0,
    };
    // Read again: a count that moved meanwhile is not known.
    if polls >= refs || file_refs(file) != refs {
        return 0;
    }
    refs - polls
}

/// Entries of poll/select on the socket's wait queue that name `file`; None when
/// the queue is longer than [`MAX_WAITERS`] or `pollwake` is unknown while the
/// queue has waiters. Who waits is noted on the way ([`note_waiter`]).
#[inline(always)]
fn poll_refs(q: &mut HolderQuery, sock: u64, file: u64) -> Result<Option<u64>, ()> {
    if off!(socket_wait_head) == u32::MAX {
        return Ok(None);
    }
    let head = sock + u64::from(off!(socket_wait_head));
    let mut node: u64 = rd(head, off!(list_next))?;
    let wake = pollwake();
    let mut n = 0u64;
    for _ in 0..MAX_WAITERS {
        if node == head {
            return Ok(Some(n));
        }
        if wake == 0 || off!(pte_filp) == u32::MAX {
            return Ok(None);
        }
        let wqe = node - u64::from(off!(wqe_entry));
        let func: u64 = rd(wqe, off!(wqe_func))?;
        if func == wake {
            let entry = wqe - u64::from(off!(pte_wait));
            let filp: u64 = rd(entry, off!(pte_filp))?;
            if filp == file {
                n += 1;
            }
        }
        note_waiter(q, wqe, func, wake);
        node = rd(node, off!(list_next))?;
    }
    Ok(if node == head { Some(n) } else { None })
}

/// Notes the process behind one wait-queue entry of a socket (the one about to be
/// `q.files[q.ntargets]`) in `q.waiters`: a task in accept() (the entry's
/// `private`), in poll/select (its `poll_wqueues`' task), or the first task in
/// epoll_wait on an epoll that watches the socket. A candidate only: what it
/// reads is checked by the proof in user space, so a wrong guess costs a run,
/// never an answer, and a failed read here is no failure of the walk.
#[inline(always)]
fn note_waiter(q: &mut HolderQuery, wqe: u64, func: u64, wake: u64) {
    let Ok(private) = rd::<u64>(wqe, off!(wqe_private)) else { return };
    let task = if func == wake {
        rd::<u64>(private, off!(pwq_polling_task)).unwrap_or(0)
    } else if func == ep_poll_callback() {
        epoll_waiter(wqe).unwrap_or(0)
    } else {
        private
    };
    let Ok(tgid) = rd::<u32>(task, off!(task_tgid)) else { return };
    let k = q.nwaiters as usize;
    if tgid == 0 || k >= MAX_WAITER_PIDS {
        return;
    }
    const _: () = assert!(MAX_WAITER_PIDS.is_power_of_two() && MAX_TARGETS.is_power_of_two());
    q.waiters[k & (MAX_WAITER_PIDS - 1)] = u64::from(tgid) | ((q.ntargets as u64) & (MAX_TARGETS as u64 - 1)) << 32;
    q.nwaiters = k as u32 + 1;
}

/// The first task in epoll_wait on the epoll whose entry `wqe` is (0: none).
#[inline(always)]
fn epoll_waiter(wqe: u64) -> Result<u64, ()> {
    // Offsets BTF did not give (u32::MAX): no reads through them at all.
    if off!(epe_wait) == u32::MAX || off!(epe_base) == u32::MAX || off!(epi_ep) == u32::MAX || off!(ep_wait_head) == u32::MAX {
        return Ok(0);
    }
    let entry = wqe - u64::from(off!(epe_wait));
    let epi: u64 = rd(entry, off!(epe_base))?;
    let ep: u64 = rd(epi, off!(epi_ep))?;
    let head = ep + u64::from(off!(ep_wait_head));
    let first: u64 = rd(head, off!(list_next))?;
    if first == head {
        return Ok(0);
    }
    rd(first - u64::from(off!(wqe_entry)), off!(wqe_private))
}

/// The references to a file; 0 when unknown.
#[inline(always)]
fn file_refs(file: u64) -> u64 {
    if off!(file_ref) != u32::MAX {
        // file_ref_t: the count minus one while the file is live; above
        // FILE_REF_MAXREF it is being released (or saturated): unknown.
        match rd::<u64>(file, off!(file_ref)) {
            Ok(r) if r < (1 << 62) => r + 1,
            _ => 0,
        }
    } else if off!(file_count) != u32::MAX {
        rd::<u64>(file, off!(file_count)).unwrap_or(0)
    } else {
        0
    }
}

/// What `fd_chunk` is handed on the stack: what does not change during one
/// process's fd-table walk. Its status lives in `HOLDER_FD_STATUS` (see [`Walk`]
/// for why loop state is not on the stack).
#[repr(C)]
struct FdWalk {
    q: *mut HolderQuery,
    seq: *mut seq_file,
    arr: u64,
    open_fds: u64,
    tgid: u32,
    _pad: u32,
}

#[map]
static HOLDER_FD_STATUS: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Sets this CPU's fd-walk status.
#[inline(always)]
fn set_fd_status(status: u32) {
    if let Some(p) = HOLDER_FD_STATUS.get_ptr_mut(0) {
        // SAFETY: the per-CPU value, ours while the program runs.
        unsafe { *p = status };
    }
}

/// Compares one chunk of 64 fd slots against the sockets' file pointers, reading
/// only up to the chunk's highest open fd (the `open_fds` bitmap word says which).
extern "C" fn fd_chunk(i: u64, ctx: *mut c_void) -> i64 {
    // SAFETY: ctx is the caller's `FdWalk`.
    let w = unsafe { &*ctx.cast::<FdWalk>() };
    let Ok(word) = rd::<u64>(w.open_fds + i * 8, 0) else {
        set_fd_status(READ_FAILED);
        return 1;
    };
    if word == 0 {
        return 0;
    }
    let used = 64 - word.leading_zeros() as u64;
    let Some(buf) = FD_CHUNK.get_ptr_mut(0) else {
        set_fd_status(READ_FAILED);
        return 1;
    };
    // 8..=512 bytes. The volatile read hides what LLVM knows about `used`, so the
    // mask stays in the code and the verifier can see the bounds.
    let last = used.wrapping_sub(1);
    // SAFETY: a read of a local.
    let last = unsafe { core::ptr::read_volatile(&last) };
    let size = (((last & 63) as u32) + 1) * 8;
    // SAFETY: reads `used` slots of the fd array into the per-CPU scratch value.
    let r = unsafe { bpf_probe_read_kernel(buf.cast(), size, (w.arr + i * 512) as *const c_void) };
    if r != 0 {
        set_fd_status(READ_FAILED);
        return 1;
    }
    // SAFETY: both point into map values, valid while the program runs.
    let (buf, q) = unsafe { (&*buf, &*w.q) };
    let (lo, hi) = (q.min_file, q.max_file);
    for j in 0..64 {
        if j as u64 >= used {
            break;
        }
        let f = buf[j];
        if f < lo || f > hi {
            continue;
        }
        // In range: compare with each socket, at constant indexes (unused slots are 0
        // and never equal a file pointer), which every verifier can follow.
        let fd = (i * 64 + j as u64) as u32;
        macro_rules! against {
            ($($k:literal)*) => {$(
                if q.files[$k] == f {
                    emit(w.seq, &HolderRecord { kind: REC_HOLDER, tgid: w.tgid, fd, ino: q.inodes[$k], ..HolderRecord::default() });
                    continue;
                }
            )*};
        }
        against!(0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15);
        const _: () = assert!(MAX_TARGETS == 16, "one index above per target");
    }
    0
}
