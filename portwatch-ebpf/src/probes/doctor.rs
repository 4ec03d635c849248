//! Empty programs, one per hook type, that `portwatch doctor` loads and attaches for
//! real (and detaches at once) to tell what this host supports. They do nothing.
use aya_ebpf::{
    macros::{fentry, kprobe, lsm, raw_tracepoint, tracepoint},
    programs::{FEntryContext, LsmContext, ProbeContext, RawTracePointContext, TracePointContext},
};

#[fentry(function = "inet_listen")]
pub fn pw_probe_fentry(_ctx: FEntryContext) -> u32 {
    0
}

#[kprobe]
pub fn pw_probe_kprobe(_ctx: ProbeContext) -> u32 {
    0
}

#[lsm(hook = "socket_listen")]
pub fn pw_probe_lsm(_ctx: LsmContext) -> i32 {
    0
}

#[tracepoint]
pub fn pw_probe_tracepoint(_ctx: TracePointContext) -> u32 {
    0
}

#[raw_tracepoint(tracepoint = "inet_sock_set_state")]
pub fn pw_probe_raw_tp(_ctx: RawTracePointContext) -> u32 {
    0
}
