//! Filling in the parts of an event that do not depend on the hook.
use aya_ebpf::helpers::{
    bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    generated::{bpf_get_current_cgroup_id, bpf_ktime_get_ns},
};
use portwatch_common::{info_flags, Event, EventKind};

use crate::maps::self_tgid;

/// True when the current task is portwatch itself.
#[inline(always)]
pub fn is_self() -> bool {
    (bpf_get_current_pid_tgid() >> 32) as u32 == self_tgid()
}

/// A new event of `kind` stamped with the current task.
#[inline(always)]
pub fn task_event(kind: EventKind) -> Event {
    let mut ev = Event::default();
    ev.info.kind = kind as u32;
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.info.tgid = (pid_tgid >> 32) as u32;
    ev.info.tid = pid_tgid as u32;
    let uid_gid = bpf_get_current_uid_gid();
    ev.info.uid = uid_gid as u32;
    ev.info.gid = (uid_gid >> 32) as u32;
    // SAFETY: helpers without arguments.
    unsafe {
        ev.info.ts_ns = bpf_ktime_get_ns();
        ev.info.cgroup_id = bpf_get_current_cgroup_id();
    }
    if let Ok(comm) = bpf_get_current_comm() {
        ev.info.comm = comm;
    }
    ev
}

/// A new event of `kind` raised outside process context (softirq): no task fields.
#[inline(always)]
pub fn softirq_event(kind: EventKind) -> Event {
    let mut ev = Event::default();
    ev.info.kind = kind as u32;
    ev.info.flags = info_flags::NO_TASK;
    // SAFETY: helper without arguments.
    ev.info.ts_ns = unsafe { bpf_ktime_get_ns() };
    ev
}

/// Reads one field of a kernel-provided context with a single load at a constant
/// offset (the verifier rejects loads through a modified context pointer).
#[macro_export]
macro_rules! ctx_field {
    ($ptr:expr, $($field:tt)+) => {
        // SAFETY: `$ptr` is the context the kernel passed in.
        unsafe { core::ptr::read_volatile(core::ptr::addr_of!((*$ptr).$($field)+)) }
    };
}

/// Copies a `[u32; 4]` IPv6 address (network order words) into bytes.
#[inline(always)]
pub fn ip6_bytes(words: [u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    let mut i = 0;
    while i < 4 {
        let b = words[i].to_ne_bytes();
        out[i * 4] = b[0];
        out[i * 4 + 1] = b[1];
        out[i * 4 + 2] = b[2];
        out[i * 4 + 3] = b[3];
        i += 1;
    }
    out
}

/// Copies a network-order IPv4 word into the first 4 bytes.
#[inline(always)]
pub fn ip4_bytes(word: u32) -> [u8; 16] {
    let mut out = [0u8; 16];
    let b = word.to_ne_bytes();
    out[0] = b[0];
    out[1] = b[1];
    out[2] = b[2];
    out[3] = b[3];
    out
}
