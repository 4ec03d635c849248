//! Port leases: `cgroup/bind4|6` programs that refuse a bind to a leased port from
//! outside the lease owner's cgroup. Each lease holder (a `portwatch run --lease`,
//! or an operator's `lease add`) loads its own pair with its own `LEASES` map and
//! attaches it to the root cgroup v2 by a bpf link, so the lease ends when the
//! holder's links close (also when it is SIGKILLed). Without a lease nothing is
//! attached, so binds cost what they did.
//!
//! Two builds of each program: one sets the errno to EADDRINUSE with
//! `bpf_set_retval` (Linux >= 5.18), one for older kernels, where a refusing
//! cgroup program can only make bind() fail with EPERM.
use aya_ebpf::{
    helpers::generated::{bpf_get_current_ancestor_cgroup_id, bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
    EbpfContext,
};
use portwatch_common::{lease, probe, EventKind, AF_INET, AF_INET6};

use crate::{
    ctx_field,
    emit::{ip4_bytes, ip6_bytes, task_event},
    maps::{count_error, submit, LEASES},
};

const ALLOW: i32 = 1;
const REFUSE: i32 = 0;

#[cgroup_sock_addr(bind4)]
pub fn pw_lease4(ctx: SockAddrContext) -> i32 {
    check::<true>(&ctx, AF_INET)
}

#[cgroup_sock_addr(bind6)]
pub fn pw_lease6(ctx: SockAddrContext) -> i32 {
    check::<true>(&ctx, AF_INET6)
}

#[cgroup_sock_addr(bind4)]
pub fn pw_lease4_eperm(ctx: SockAddrContext) -> i32 {
    check::<false>(&ctx, AF_INET)
}

#[cgroup_sock_addr(bind6)]
pub fn pw_lease6_eperm(ctx: SockAddrContext) -> i32 {
    check::<false>(&ctx, AF_INET6)
}

#[inline(always)]
fn check<const RETVAL: bool>(ctx: &SockAddrContext, family: u16) -> i32 {
    let sa = ctx.sock_addr;
    let port = u16::from_be(ctx_field!(sa, user_port) as u16);
    if port == 0 {
        return ALLOW;
    }
    let Some(l) = LEASES.get_ptr_mut(&u32::from(port)) else {
        return ALLOW;
    };
    // SAFETY: a map value pointer, valid for this program run.
    let (cgroup_id, level, netns) = unsafe { ((*l).cgroup_id, (*l).level, (*l).netns_cookie) };
    // SAFETY: helper valid for cgroup/sock_addr programs.
    if unsafe { bpf_get_current_ancestor_cgroup_id(level as i32) } == cgroup_id {
        return ALLOW;
    }
    // SAFETY: as above.
    let here = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
    if netns != 0 && here != netns {
        return ALLOW;
    }
    let mut ev = task_event(EventKind::Refused);
    ev.info.netns_cookie = here;
    // SAFETY: helper valid for cgroup/sock_addr programs.
    ev.data.cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    ev.data.family = family;
    ev.data.protocol = ctx_field!(sa, protocol) as u16;
    ev.data.port = port;
    ev.data.req_port = port;
    ev.data.errno = if RETVAL { lease::EADDRINUSE } else { 1 };
    ev.data.addr = if family == AF_INET {
        ip4_bytes(ctx_field!(sa, user_ip4))
    } else {
        ip6_bytes([ctx_field!(sa, user_ip6[0]), ctx_field!(sa, user_ip6[1]), ctx_field!(sa, user_ip6[2]), ctx_field!(sa, user_ip6[3])])
    };
    // SAFETY: as above. Two refusals racing on two CPUs may count once (the bpf
    // target has no atomic add in Rust's core): the count is for `lease list`;
    // the run's own report counts records and the ring's `LOST`.
    unsafe {
        (*l).refused += 1;
        (*l).last_tgid = ev.info.tgid;
        (*l).last_uid = ev.info.uid;
        (*l).last_ns = ev.info.ts_ns;
        (*l).last_cookie = ev.data.cookie;
        (*l).last_comm = ev.info.comm;
    }
    submit(&ev);
    if RETVAL {
        // SAFETY: helper valid for cgroup programs on Linux >= 5.18 (the other build
        // does not call it).
        if unsafe { bpf_set_retval(-lease::EADDRINUSE) } != 0 {
            count_error(probe::LEASE);
        }
    }
    REFUSE
}
