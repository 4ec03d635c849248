//! `cgroup/bind4|6` (a bind attempt, before the kernel checks it) and
//! `cgroup/post_bind4|6` (the bind succeeded; the real port, also for bind(0)).
//! Attached to the root cgroup v2, they see every process and cost nothing unless a
//! socket is bound. Both always allow the bind: portwatch observes, it never blocks.
use aya_ebpf::{
    helpers::generated::{bpf_get_netns_cookie, bpf_get_socket_cookie},
    macros::{cgroup_sock, cgroup_sock_addr},
    programs::{SockAddrContext, SockContext},
    EbpfContext,
};
use portwatch_common::{probe, EventKind, AF_INET, AF_INET6};

use crate::{
    ctx_field,
    emit::{ip4_bytes, ip6_bytes, is_self, task_event},
    maps::{count_error, submit, track, watched},
};

const ALLOW: i32 = 1;

#[cgroup_sock_addr(bind4)]
pub fn pw_bind4(ctx: SockAddrContext) -> i32 {
    if try_bind(&ctx, AF_INET).is_err() {
        count_error(probe::BIND);
    }
    ALLOW
}

#[cgroup_sock_addr(bind6)]
pub fn pw_bind6(ctx: SockAddrContext) -> i32 {
    if try_bind(&ctx, AF_INET6).is_err() {
        count_error(probe::BIND);
    }
    ALLOW
}

fn try_bind(ctx: &SockAddrContext, family: u16) -> Result<(), ()> {
    let sa = ctx.sock_addr;
    let port = u16::from_be(ctx_field!(sa, user_port) as u16);
    // bind(0): the port is not known yet; post_bind reports it.
    if port == 0 || !watched(port) || is_self() {
        return Ok(());
    }
    let mut ev = task_event(EventKind::BindAttempt);
    // SAFETY: helpers valid for cgroup/sock_addr programs.
    unsafe {
        ev.info.netns_cookie = bpf_get_netns_cookie(ctx.as_ptr());
        ev.data.cookie = bpf_get_socket_cookie(ctx.as_ptr());
    }
    ev.data.family = family;
    ev.data.protocol = ctx_field!(sa, protocol) as u16;
    ev.data.port = port;
    ev.data.req_port = port;
    ev.data.addr = if family == AF_INET {
        ip4_bytes(ctx_field!(sa, user_ip4))
    } else {
        ip6_bytes([ctx_field!(sa, user_ip6[0]), ctx_field!(sa, user_ip6[1]), ctx_field!(sa, user_ip6[2]), ctx_field!(sa, user_ip6[3])])
    };
    submit(&ev);
    Ok(())
}

#[cgroup_sock(post_bind4)]
pub fn pw_post_bind4(ctx: SockContext) -> i32 {
    if try_post_bind::<false>(&ctx).is_err() {
        count_error(probe::POST_BIND);
    }
    ALLOW
}

#[cgroup_sock(post_bind6)]
pub fn pw_post_bind6(ctx: SockContext) -> i32 {
    if try_post_bind::<true>(&ctx).is_err() {
        count_error(probe::POST_BIND);
    }
    ALLOW
}

/// `V6` is a type parameter so each program only touches the context fields its
/// attach type may read (post_bind4 may not read `src_ip6`, and the reverse).
fn try_post_bind<const V6: bool>(ctx: &SockContext) -> Result<(), ()> {
    let family = if V6 { AF_INET6 } else { AF_INET };
    let sk = ctx.sock;
    let port = ctx_field!(sk, src_port) as u16;
    if !watched(port) || is_self() {
        return Ok(());
    }
    let mut ev = task_event(EventKind::Bind);
    // SAFETY: helpers valid for cgroup/sock programs.
    unsafe {
        ev.info.netns_cookie = bpf_get_netns_cookie(ctx.as_ptr());
        ev.data.cookie = bpf_get_socket_cookie(ctx.as_ptr());
    }
    ev.data.family = family;
    ev.data.protocol = ctx_field!(sk, protocol) as u16;
    ev.data.port = port;
    ev.data.addr = if V6 {
        ip6_bytes([ctx_field!(sk, src_ip6[0]), ctx_field!(sk, src_ip6[1]), ctx_field!(sk, src_ip6[2]), ctx_field!(sk, src_ip6[3])])
    } else {
        ip4_bytes(ctx_field!(sk, src_ip4))
    };
    track(ctx.as_ptr(), &ev.data);
    submit(&ev);
    Ok(())
}
