//! `tp_btf/inet_sock_set_state`: TCP state changes. Fires only when a TCP socket
//! changes state (never on the syscall path of unrelated processes), and reports:
//! - CLOSE -> LISTEN: a listener started (the task is the one calling listen());
//! - SYN_RECV -> ESTABLISHED: the kernel completed a connection into a listener's
//!   accept queue (softirq context; counted per port in `QUEUED`, and written to the
//!   ring buffer only when `CONFIG[ACCEPTS]` asks for it: `watch --accepts`).
//!
//! `struct sock` fields are read at offsets resolved from BTF by user space.
use aya_ebpf::{helpers::generated::bpf_get_socket_cookie, macros::btf_tracepoint, programs::BtfTracePointContext};
use portwatch_common::{probe, tcp_state, EventKind, KernelOffsets, AF_INET, AF_INET6};

use crate::{
    emit::{is_self, softirq_event, task_event},
    maps::{accepts_wanted, count_error, offsets, submit, track, watched, CONFIG, QUEUED},
    read::rd,
};

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn pw_state_btf(ctx: BtfTracePointContext) -> i32 {
    if try_state(&ctx).is_err() {
        count_error(probe::STATE);
    }
    0
}

fn try_state(ctx: &BtfTracePointContext) -> Result<(), ()> {
    let old: i32 = ctx.arg(1);
    let new: i32 = ctx.arg(2);
    let kind = match (old as u8, new as u8) {
        (tcp_state::CLOSE, tcp_state::LISTEN) => EventKind::Listen,
        (tcp_state::SYN_RECV, tcp_state::ESTABLISHED) => EventKind::Accept,
        _ => return Ok(()),
    };
    let off = offsets();
    if !off.state_hook_ready() {
        return Err(());
    }
    let sk: *const u8 = ctx.arg(0);
    let sk = sk as u64;
    let port: u16 = rd(sk, off.skc_num)?;
    match kind {
        EventKind::Listen => {
            // A listen() that binds implicitly has no port yet: only "watch all" wants it.
            let all = matches!(CONFIG.get(portwatch_common::config::WATCH_ALL), Some(v) if *v != 0);
            if (port == 0 && !all) || (port != 0 && !watched(port)) || is_self() {
                return Ok(());
            }
        }
        _ => {
            if !watched(port) {
                return Ok(());
            }
            if let Some(n) = QUEUED.get_ptr_mut(u32::from(port)) {
                // SAFETY: per-CPU slot.
                unsafe { *n += 1 };
            }
            // The verdict needs only the count: the record (and the reader's work
            // for it) is for `watch --accepts`.
            if !accepts_wanted() {
                return Ok(());
            }
        }
    }
    let mut ev = if kind == EventKind::Listen { task_event(kind) } else { softirq_event(kind) };
    fill_sock(&mut ev.data, sk, &off)?;
    ev.data.port = port;
    ev.data.old_state = old as u8;
    ev.data.new_state = new as u8;
    if let Ok(net) = rd::<u64>(sk, off.skc_net) {
        ev.info.netns_cookie = rd::<u64>(net, off.net_cookie).unwrap_or(0);
    }
    if kind == EventKind::Listen {
        // SAFETY: `sk` is the tracepoint's trusted `struct sock *` argument.
        ev.data.cookie = unsafe { bpf_get_socket_cookie(ctx.arg(0)) };
        track(ctx.arg(0), &ev.data);
    }
    submit(&ev);
    Ok(())
}

fn fill_sock(d: &mut portwatch_common::SockData, sk: u64, off: &KernelOffsets) -> Result<(), ()> {
    d.family = rd(sk, off.skc_family)?;
    d.protocol = rd(sk, off.sk_protocol).unwrap_or(0);
    d.peer_port = u16::from_be(rd(sk, off.skc_dport).unwrap_or(0));
    if d.family == AF_INET {
        let a: [u8; 4] = rd(sk, off.skc_rcv_saddr)?;
        let p: [u8; 4] = rd(sk, off.skc_daddr).unwrap_or([0; 4]);
        d.addr[..4].copy_from_slice(&a);
        d.peer_addr[..4].copy_from_slice(&p);
    } else if d.family == AF_INET6 {
        d.addr = rd(sk, off.skc_v6_rcv_saddr)?;
        d.peer_addr = rd(sk, off.skc_v6_daddr).unwrap_or([0; 16]);
    }
    Ok(())
}
