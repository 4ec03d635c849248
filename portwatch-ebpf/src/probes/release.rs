//! `cgroup/sock_release`: the last reference to a socket went away. Reported as a
//! `close` only for sockets portwatch saw bind or listen (the `TRACKED` map), so
//! ordinary client sockets cost one hash lookup and nothing more.
use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::cgroup_sock,
    programs::SockContext,
    EbpfContext,
};
use portwatch_common::{probe, EventKind};

use crate::{
    ctx_field,
    emit::task_event,
    maps::{any_tracked, count_error, submit, untrack, TRACKED},
};

#[cgroup_sock(sock_release)]
pub fn pw_sock_release(ctx: SockContext) -> i32 {
    if try_sock_release(&ctx).is_err() {
        count_error(probe::RELEASE);
    }
    1
}

fn try_sock_release(ctx: &SockContext) -> Result<(), ()> {
    // Most releases are of sockets nobody watches: with nothing tracked, stop here
    // before computing a cookie.
    if !any_tracked() {
        return Ok(());
    }
    // SAFETY: helper valid for cgroup/sock programs.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is copied out before the entry is removed.
    let Some(t) = (unsafe { TRACKED.get(&cookie) }).copied() else {
        return Ok(());
    };
    untrack(cookie);
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
