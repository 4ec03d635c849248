//! Filling in the parts of an event that do not depend on the hook.
use aya_ebpf::helpers::{
    bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
    generated::{bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_ktime_get_ns},
};
use core::mem::MaybeUninit;

use portwatch_common::{info_flags, Event, EventKind};

use crate::maps::self_tgid;

/// True when the current task is portwatch itself.
#[inline(always)]
pub fn is_self() -> bool {
    (bpf_get_current_pid_tgid() >> 32) as u32 == self_tgid()
}

/// Zeroes `slot` in place and returns it as an event. Not `Event::default()`:
/// zeroing compiles to a call of the BPF build's `memset`, a loop of five
/// instructions per byte (~500 for an event, more than the rest of the record);
/// sixteen 8-byte stores instead, volatile so LLVM does not merge them back into
/// that call, and in the caller's slot, since moving the result out would be
/// another (a copy of known zeros is a memset too).
#[inline(always)]
fn zeroed_event(slot: &mut MaybeUninit<Event>) -> &mut Event {
    const WORDS: usize = core::mem::size_of::<Event>() / 8;
    const _: () = assert!(core::mem::size_of::<Event>() % 8 == 0 && core::mem::align_of::<Event>() == 8);
    let words = slot.as_mut_ptr().cast::<u64>();
    let mut i = 0;
    while i < WORDS {
        // SAFETY: word `i` of the event (size and alignment checked above).
        unsafe { core::ptr::write_volatile(words.add(i), 0) };
        i += 1;
    }
    // SAFETY: every byte is written, and all-zero is a valid `Event` (plain integers).
    unsafe { slot.assume_init_mut() }
}

/// A new event of `kind` stamped with the current task, made in `slot`.
#[inline(always)]
pub fn task_event(slot: &mut MaybeUninit<Event>, kind: EventKind) -> &mut Event {
    let ev = zeroed_event(slot);
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
    // SAFETY: the helper writes at most 16 bytes (NUL-padded) into the event's
    // zeroed `comm` (aya's wrapper would zero a buffer of its own by `memset`).
    unsafe { bpf_get_current_comm(ev.info.comm.as_mut_ptr().cast(), ev.info.comm.len() as u32) };
    ev
}

/// A new event of `kind` raised outside process context (softirq): no task fields;
/// made in `slot`.
#[inline(always)]
pub fn softirq_event(slot: &mut MaybeUninit<Event>, kind: EventKind) -> &mut Event {
    let ev = zeroed_event(slot);
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

/// Copies a `[u32; 4]` IPv6 address (network order words) into bytes (two 8-byte
/// words: a zeroed byte array would be a `memset` call, see [`zeroed_event`]).
#[inline(always)]
pub fn ip6_bytes(words: [u32; 4]) -> [u8; 16] {
    const _: () = assert!(cfg!(target_endian = "little"));
    let lo = u64::from(words[0]) | u64::from(words[1]) << 32;
    let hi = u64::from(words[2]) | u64::from(words[3]) << 32;
    // SAFETY: two u64s are 16 plain bytes; this target is little-endian, so each
    // word's bytes stay in order.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>([lo, hi]) }
}

/// Copies a network-order IPv4 word into the first 4 bytes.
#[inline(always)]
pub fn ip4_bytes(word: u32) -> [u8; 16] {
    ip6_bytes([word, 0, 0, 0])
}
