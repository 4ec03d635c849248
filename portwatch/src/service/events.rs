//! From kernel events to records (`watch` prints them, the agent stores them): bind
//! attempts paired with their outcome, failures explained by what holds the port
//! (and by whom), implicit-bind listens given their port.
use std::time::Duration;

use portwatch_common::tcp_state;

use crate::{
    model::{
        event::{infer_failure, Activity, BindError, BindTracker, CookieMap, ErrorSource, Record, SockEvent, Step},
        ports::PortSet,
        socket::{Family, Proto},
    },
    service::holders::{self, WhoOptions},
    sys::sockdiag::{self, Query},
};

/// How long a bind attempt may wait for its success event before it counts as failed.
pub const BIND_WINDOW: Duration = Duration::from_millis(50);

/// Sockets remembered with who bound them, to name a failed bind's holder without a
/// holders pass.
const MAX_BINDERS: usize = 65_536;

/// Turns decoded events into records.
pub struct Pipeline {
    tracker: BindTracker,
    unpriv_start: u16,
    /// Socket cookie -> the pid of the task that bound it or made it listen.
    binders: CookieMap<u32>,
    /// Kernel events lost so far (the ring buffer was full), as last told.
    lost: u64,
    /// This process's network namespace cookie (0 when the kernel cannot tell):
    /// sock_diag answers only for it.
    netns: u64,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Pipeline {
    pub fn new() -> Self {
        Self {
            tracker: BindTracker::new(BIND_WINDOW.as_nanos() as u64),
            unpriv_start: unprivileged_port_start(),
            binders: CookieMap::default(),
            lost: 0,
            netns: crate::sys::netns::own_cookie().unwrap_or(0),
        }
    }

    /// How many kernel events have been lost so far (the observer's counter, read
    /// once per tick, before [`Pipeline::expire`]): a bind attempt pending while
    /// events were lost has an unknown outcome.
    pub fn note_lost(&mut self, lost: u64) {
        self.lost = lost;
    }

    /// The records an event completes (none while a bind attempt awaits its outcome).
    pub fn push(&mut self, mut ev: SockEvent) -> Vec<Record> {
        ev.lost_before = self.lost;
        let steps = self.tracker.push(ev);
        steps.into_iter().map(|s| self.resolve(s)).collect()
    }

    /// Bind attempts that did not succeed within the window, as failures.
    pub fn expire(&mut self, now_mono_ns: u64) -> Vec<Record> {
        let failed = self.tracker.expire(now_mono_ns);
        failed.into_iter().map(|a| self.resolve(Step::Failed(a))).collect()
    }

    fn resolve(&mut self, step: Step) -> Record {
        match step {
            Step::Emit(r) => {
                let mut r = *r;
                if r.is_autobound_listen() {
                    resolve_autobound(&mut r);
                }
                self.remember(&r);
                r
            }
            Step::Failed(attempt) => self.failed(&attempt),
        }
    }

    fn remember(&mut self, r: &Record) {
        match (r.event, r.pid) {
            (Activity::Bind | Activity::Listen, Some(pid)) if r.cookie != 0 => {
                if self.binders.len() >= MAX_BINDERS && !self.binders.contains_key(&r.cookie) {
                    self.binders.clear();
                }
                self.binders.insert(r.cookie, pid);
            }
            (Activity::Close, ..) => {
                self.binders.remove(&r.cookie);
            }
            _ => {}
        }
    }

    /// A failed bind: its errno from what is on the port now, and who holds it; or an
    /// unknown outcome, when its success may have been lost or it happened in
    /// another network namespace.
    fn failed(&mut self, attempt: &SockEvent) -> Record {
        let unknown = if self.lost > attempt.lost_before {
            Some(ErrorSource::LostEvents)
        } else if self.netns != 0 && attempt.netns_cookie != 0 && attempt.netns_cookie != self.netns {
            Some(ErrorSource::OtherNetns)
        } else {
            None
        };
        if let Some(source) = unknown {
            let mut rec = Record::from_event(attempt);
            rec.requested_port = Some(attempt.req_port);
            rec.error = Some(BindError::Unknown);
            rec.error_source = Some(source);
            return rec;
        }
        let q = Query { tcp: attempt.proto == Some(Proto::Tcp), udp: attempt.proto == Some(Proto::Udp), connections: false };
        let on_port = sockdiag::sockets_on_ports(&[attempt.port], q).unwrap_or_default();
        let mut rec = infer_failure(attempt, &on_port, self.unpriv_start);
        // A lease refused it: the lease's own record of its last refusal says so.
        if let Some(l) = crate::service::lease::refused(attempt) {
            rec.error = Some(BindError::Leased);
            rec.error_source = None;
            rec.lease = Some(Box::new(l));
        }
        if let Some(h) = rec.held_by.as_mut() {
            let binder = self.binders.get(&h.cookie).and_then(|&pid| Some((pid, crate::sys::proc::comm(pid as i32)?)));
            if let Some((pid, comm)) = binder {
                h.pids = vec![pid as i32];
                h.comm = Some(comm);
            } else {
                // Bound before we watched: one holders pass for this port.
                let ports: PortSet = std::iter::once(attempt.port).collect();
                let who = WhoOptions { tcp: q.tcp, udp: q.udp, ..WhoOptions::default() };
                if let Some(s) = holders::gather(&ports, who).ok().and_then(|r| r.sockets.into_iter().find(|s| s.inode == h.inode)) {
                    h.pids = s.holders.iter().map(|x| x.proc.pid).collect();
                    h.pids.dedup();
                    h.comm = s.holders.first().map(|x| x.proc.comm.clone());
                }
            }
        }
        rec
    }
}

/// A listen() without bind() gets its port after the state change the kernel hook
/// sees; find it by socket cookie among the listeners. The event can reach us
/// before listen() has hashed the socket, so look a few times (up to ~100 ms; only
/// implicit-bind listens pay this).
fn resolve_autobound(r: &mut Record) {
    if r.cookie == 0 {
        return;
    }
    for _ in 0..20 {
        let found = [Family::Ipv4, Family::Ipv6]
            .into_iter()
            .filter_map(|f| sockdiag::dump(Proto::Tcp, f, 1 << tcp_state::LISTEN, &[]).ok())
            .flatten()
            .find(|s| s.cookie == r.cookie);
        if let Some(s) = found {
            r.port = s.port;
            r.addr = s.addr;
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1024)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::event::{tests::ev, EventKind};

    #[test]
    fn a_failure_while_events_were_lost_is_unknown_not_a_failure() {
        let mut p = Pipeline::new();
        p.note_lost(5);
        assert!(p.push(ev(EventKind::BindAttempt, 10, 1, 7, 100)).is_empty());
        p.note_lost(6);
        let r = p.expire(u64::MAX);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].error, r[0].error_source), (Some(BindError::Unknown), Some(ErrorSource::LostEvents)));
        assert!(r[0].held_by.is_none());
    }

    #[test]
    fn a_failure_in_another_network_namespace_is_not_blamed_on_ours() {
        let mut p = Pipeline::new();
        if p.netns == 0 {
            return eprintln!("no SO_NETNS_COOKIE on this kernel");
        }
        let mut a = ev(EventKind::BindAttempt, 10, 1, 8, 100);
        a.netns_cookie = p.netns + 1;
        p.push(a);
        let r = p.expire(u64::MAX);
        assert_eq!(r[0].error_source, Some(ErrorSource::OtherNetns));
        // In our own namespace the errno is inferred as before.
        let mut b = ev(EventKind::BindAttempt, 10, 1, 9, 100);
        b.netns_cookie = p.netns;
        p.push(b);
        assert_eq!(p.expire(u64::MAX)[0].error_source, Some(ErrorSource::Inferred));
    }
}
