//! Per-job port remapping (`run --isolate-ports`): `cgroup/bind|connect|sendmsg`
//! rewrite a virtual port to the job's real one, `cgroup/getsockname|getpeername|
//! recvmsg` show the virtual port again. One set per run, attached to the run's own
//! cgroup by the run itself (a bpf_link, not pinned: it ends with the run), so they
//! run for the job's sockets only and before the root cgroup's programs (observer,
//! leases); each program also checks that the calling task is inside the run's
//! cgroup, at any depth (a job's socket used by an outsider is not rewritten).
//! They always allow the call (return 1): they only rewrite.
use aya_ebpf::{helpers::generated::bpf_get_current_ancestor_cgroup_id, macros::cgroup_sock_addr, programs::SockAddrContext};
use portwatch_common::remap::{key, local4, local6, TO_REAL, TO_VIRTUAL};

use crate::{
    ctx_field,
    maps::{remap_cgroup, remap_level, REMAP},
};

const ALLOW: i32 = 1;

/// Whether the current task is in the run's cgroup or below it.
#[inline(always)]
fn in_job() -> bool {
    let id = remap_cgroup();
    // SAFETY: a helper without pointer arguments.
    id != 0 && unsafe { bpf_get_current_ancestor_cgroup_id(remap_level() as i32) } == id
}

/// The other side of `port` in direction `dir`, if it is remapped.
#[inline(always)]
fn lookup(dir: u32, port: u16) -> Option<u16> {
    // SAFETY: the value is a plain u16, copied out at once.
    unsafe { REMAP.get(&key(dir, port)) }.copied()
}

/// Rewrites `user_port` (network order in a u32) in direction `dir` when the
/// address is one that must be rewritten (`addr_ok`).
#[inline(always)]
fn rewrite(ctx: &SockAddrContext, dir: u32, addr_ok: impl Fn() -> bool) {
    if !in_job() {
        return;
    }
    let sa = ctx.sock_addr;
    let port = u16::from_be(ctx_field!(sa, user_port) as u16);
    if port == 0 {
        return;
    }
    if let Some(to) = lookup(dir, port) {
        if addr_ok() {
            // SAFETY: `user_port` is writable for every sock_addr attach type used here.
            unsafe { (*sa).user_port = u32::from(to.to_be()) };
        }
    }
}

#[inline(always)]
fn ip4_local(ctx: &SockAddrContext) -> bool {
    let sa = ctx.sock_addr;
    local4(ctx_field!(sa, user_ip4))
}

#[inline(always)]
fn ip6_local(ctx: &SockAddrContext) -> bool {
    let sa = ctx.sock_addr;
    local6([ctx_field!(sa, user_ip6[0]), ctx_field!(sa, user_ip6[1]), ctx_field!(sa, user_ip6[2]), ctx_field!(sa, user_ip6[3])])
}

// Binds: any local address (the job's own server, wherever it binds).
#[cgroup_sock_addr(bind4)]
pub fn pw_remap_bind4(ctx: SockAddrContext) -> i32 {
    rewrite(&ctx, TO_REAL, || true);
    ALLOW
}

#[cgroup_sock_addr(bind6)]
pub fn pw_remap_bind6(ctx: SockAddrContext) -> i32 {
    rewrite(&ctx, TO_REAL, || true);
    ALLOW
}

// Connects (TCP, and UDP connect) and unconnected UDP sends: only to this host.
#[cgroup_sock_addr(connect4)]
pub fn pw_remap_connect4(ctx: SockAddrContext) -> i32 {
    rewrite(&ctx, TO_REAL, || ip4_local(&ctx));
    ALLOW
}

#[cgroup_sock_addr(connect6)]
pub fn pw_remap_connect6(ctx: SockAddrContext) -> i32 {
    rewrite(&ctx, TO_REAL, || ip6_local(&ctx));
    ALLOW
}

#[cgroup_sock_addr(sendmsg4)]
pub fn pw_remap_sendmsg4(ctx: SockAddrContext) -> i32 {
    rewrite(&ctx, TO_REAL, || ip4_local(&ctx));
    ALLOW
}

#[cgroup_sock_addr(sendmsg6)]
pub fn pw_remap_sendmsg6(ctx: SockAddrContext) -> i32 {
    rewrite(&ctx, TO_REAL, || ip6_local(&ctx));
    ALLOW
}

// What the job reads back: its own address, its peer's, a datagram's sender.
#[cgroup_sock_addr(getsockname4)]
pub fn pw_remap_getsockname4(ctx: SockAddrContext) -> i32 {
    rewrite(&ctx, TO_VIRTUAL, || true);
    ALLOW
}

#[cgroup_sock_addr(getsockname6)]
pub fn pw_remap_getsockname6(ctx: SockAddrContext) -> i32 {
    rewrite(&ctx, TO_VIRTUAL, || true);
    ALLOW
}

#[cgroup_sock_addr(getpeername4)]
pub fn pw_remap_getpeername4(ctx: SockAddrContext) -> i32 {
    rewrite(&ctx, TO_VIRTUAL, || ip4_local(&ctx));
    ALLOW
}

#[cgroup_sock_addr(getpeername6)]
pub fn pw_remap_getpeername6(ctx: SockAddrContext) -> i32 {
    rewrite(&ctx, TO_VIRTUAL, || ip6_local(&ctx));
    ALLOW
}

#[cgroup_sock_addr(recvmsg4)]
pub fn pw_remap_recvmsg4(ctx: SockAddrContext) -> i32 {
    rewrite(&ctx, TO_VIRTUAL, || ip4_local(&ctx));
    ALLOW
}

#[cgroup_sock_addr(recvmsg6)]
pub fn pw_remap_recvmsg6(ctx: SockAddrContext) -> i32 {
    rewrite(&ctx, TO_VIRTUAL, || ip6_local(&ctx));
    ALLOW
}
