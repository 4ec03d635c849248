//! From kernel events to records (`watch` prints them, the agent stores them): bind
//! attempts paired with their outcome, failures explained by what holds the port
//! (and by whom), implicit-bind listens given their port.
use std::{collections::HashMap, time::Duration};

use portwatch_common::tcp_state;

use crate::{
    model::{
        event::{infer_failure, Activity, BindTracker, Record, SockEvent, Step},
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
    /// Socket cookie -> (pid, comm) of the task that bound it or made it listen.
    binders: HashMap<u64, (u32, String)>,
}

impl Default for Pipeline {
    fn default() -> Self {
        Self::new()
    }
}

impl Pipeline {
    pub fn new() -> Self {
        Self { tracker: BindTracker::new(BIND_WINDOW.as_nanos() as u64), unpriv_start: unprivileged_port_start(), binders: HashMap::new() }
    }

    /// The records an event completes (none while a bind attempt awaits its outcome).
    pub fn push(&mut self, ev: SockEvent) -> Vec<Record> {
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
        match (r.event, r.pid, &r.comm) {
            (Activity::Bind | Activity::Listen, Some(pid), Some(comm)) if r.cookie != 0 => {
                if self.binders.len() >= MAX_BINDERS && !self.binders.contains_key(&r.cookie) {
                    self.binders.clear();
                }
                self.binders.insert(r.cookie, (pid, comm.clone()));
            }
            (Activity::Close, ..) => {
                self.binders.remove(&r.cookie);
            }
            _ => {}
        }
    }

    /// A failed bind: its errno from what is on the port now, and who holds it.
    fn failed(&mut self, attempt: &SockEvent) -> Record {
        let q = Query { tcp: attempt.proto == Some(Proto::Tcp), udp: attempt.proto == Some(Proto::Udp), connections: false };
        let on_port = sockdiag::sockets_on_ports(&[attempt.port], q).unwrap_or_default();
        let mut rec = infer_failure(attempt, &on_port, self.unpriv_start);
        if let Some(h) = rec.held_by.as_mut() {
            if let Some((pid, comm)) = self.binders.get(&h.cookie) {
                h.pids = vec![*pid as i32];
                h.comm = Some(comm.clone());
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
