//! `cgroup/sock_release`: the last reference to a socket went away. Reported as a
//! `close` only for sockets portwatch saw bind or listen (their `TRACKED_SK`
//! storage) or found there at start (the `TRACKED` hash), so ordinary sockets cost
//! one storage-pointer check and nothing more.
use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock,
    programs::SockContext,
    EbpfContext,
};
use portwatch_common::{probe, EventKind, TrackedSock};

use crate::{
    ctx_field,
    emit::task_event,
    maps::{any_seeded, count_error, released, submit, untrack, TRACKED},
};

#[cgroup_sock(sock_release)]
pub fn pw_sock_release(ctx: SockContext) -> i32 {
    if try_sock_release(&ctx).is_err() {
        count_error(probe::RELEASE);
    }
    1
}

fn try_sock_release(ctx: &SockContext) -> Result<(), ()> {
    // Sockets the kernel side saw bind or listen carry their endpoint: one pointer
    // check for every other socket.
    let (cookie, t) = if let Some(t) = released(ctx.as_ptr()) {
        (t.cookie, TrackedSock { port: t.port, family: t.family, _pad: 0, addr: t.addr })
    } else {
        // Sockets found on the ports when portwatch started (seeded by user space)
        // are in a hash by cookie; with none left, stop here.
        if !any_seeded() {
            return Ok(());
        }
        // SAFETY: helper valid for cgroup/sock programs.
        let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
        // SAFETY: the value is copied out before the entry is removed.
        let Some(t) = (unsafe { TRACKED.get(&cookie) }).copied() else {
            return Ok(());
        };
        untrack(cookie);
        (cookie, t)
    };
    let sk = ctx.sock;
    let mut ev = task_event(EventKind::Close);
    // SAFETY: helper valid for cgroup/sock programs.
    ev.info.netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    ev.data.cookie = cookie;
    ev.data.family = t.family;
    ev.data.protocol = ctx_field!(sk, protocol) as u16;
    ev.data.port = t.port;
    ev.data.old_state = ctx_field!(sk, state) as u8;
    ev.data.addr = t.addr;
    submit(&ev);
    Ok(())
}
