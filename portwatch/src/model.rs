//! Pure state: turning the kernel's event stream into the records users see.
//!
//! A bind shows up as two kernel events: an attempt (`cgroup/bind*`, before the kernel
//! checks anything) and, only on success, a `post_bind` with the real port. The kernel
//! reports no failure, so a failure is an attempt that no success followed: the same
//! socket trying again, the same thread moving on to something else, or `window` of
//! time passing. Its errno is then inferred from who holds the port (see
//! [`infer_failure`]) and marked as inferred.
use std::{collections::HashMap, net::IpAddr};

use portwatch_common::EventKind;
use serde::Serialize;

use crate::{
    ebpf::events::{family_name, SockEvent},
    sys::sockdiag::{Proto, SockEntry},
};

/// What `watch` prints for one event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    /// RFC 3339 wall time, filled in when printed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(skip)]
    pub ts_ns: u64,
    pub event: &'static str,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub uid: Option<u32>,
    pub comm: Option<String>,
    pub proto: &'static str,
    pub family: &'static str,
    pub addr: String,
    pub port: u16,
    /// For binds: the port asked for; 0 means the kernel chose `port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// `"inferred"` when the errno was deduced rather than observed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_source: Option<&'static str>,
    /// For failed binds: the socket holding the port at that moment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_by: Option<HeldBy>,
    /// For accepts: the connecting peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<u16>,
    pub cookie: u64,
    pub cgroup_id: Option<u64>,
    pub netns_cookie: u64,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeldBy {
    pub inode: u64,
    pub state: &'static str,
    pub addr: String,
    pub uid: u32,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pids: Vec<i32>,
}

pub fn event_name(kind: EventKind) -> &'static str {
    match kind {
        EventKind::BindAttempt | EventKind::Bind => "bind",
        EventKind::Listen => "listen",
        EventKind::Close => "close",
        EventKind::Accept => "accept",
    }
}

pub fn proto_name(p: Option<Proto>) -> &'static str {
    p.map_or("other", Proto::name)
}

pub fn fmt_addr(ip: &IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => a.to_string(),
        IpAddr::V6(a) => match a.to_ipv4_mapped() {
            Some(v4) if !a.is_loopback() && !a.is_unspecified() => format!("::ffff:{v4}"),
            _ => a.to_string(),
        },
    }
}

impl Record {
    pub fn from_event(ev: &SockEvent) -> Self {
        let t = ev.task.as_ref();
        let accept = ev.kind == EventKind::Accept;
        Self {
            time: None,
            ts_ns: ev.ts_ns,
            event: event_name(ev.kind),
            pid: t.map(|t| t.pid),
            tid: t.map(|t| t.tid),
            uid: t.map(|t| t.uid),
            comm: t.map(|t| t.comm.clone()),
            proto: proto_name(ev.proto),
            family: family_name(ev.family),
            addr: fmt_addr(&ev.addr),
            port: ev.port,
            requested_port: None,
            error: None,
            error_source: None,
            held_by: None,
            peer_addr: accept.then(|| fmt_addr(&ev.peer)),
            peer_port: accept.then_some(ev.peer_port),
            cookie: ev.cookie,
            cgroup_id: t.map(|t| t.cgroup_id),
            netns_cookie: ev.netns_cookie,
        }
    }
}

/// Output of [`BindTracker::push`].
#[derive(Debug, PartialEq, Eq)]
pub enum Step {
    /// Ready to print.
    Emit(Box<Record>),
    /// A bind attempt that did not succeed; infer why, then print.
    Failed(SockEvent),
}

/// Pairs bind attempts with their outcome.
#[derive(Debug)]
pub struct BindTracker {
    pending: HashMap<u64, SockEvent>,
    window_ns: u64,
}

impl BindTracker {
    pub fn new(window_ns: u64) -> Self {
        Self { pending: HashMap::new(), window_ns }
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    pub fn push(&mut self, ev: SockEvent) -> Vec<Step> {
        let mut out = Vec::new();
        // The same thread moved on: its earlier attempts on other sockets are over.
        if let Some(tid) = ev.task.as_ref().map(|t| t.tid) {
            let done: Vec<u64> = self
                .pending
                .iter()
                .filter(|(c, a)| **c != ev.cookie && a.task.as_ref().map(|t| t.tid) == Some(tid) && a.ts_ns <= ev.ts_ns)
                .map(|(c, _)| *c)
                .collect();
            for c in done {
                if let Some(a) = self.pending.remove(&c) {
                    out.push(Step::Failed(a));
                }
            }
        }
        match ev.kind {
            EventKind::BindAttempt => {
                if let Some(prev) = self.pending.insert(ev.cookie, ev) {
                    out.push(Step::Failed(prev));
                }
            }
            EventKind::Bind => {
                let req = self.pending.remove(&ev.cookie).map_or(0, |a| a.req_port);
                let mut r = Record::from_event(&ev);
                r.requested_port = Some(req);
                out.push(Step::Emit(Box::new(r)));
            }
            _ => out.push(Step::Emit(Box::new(Record::from_event(&ev)))),
        }
        out
    }

    /// Attempts older than the window at `now_ns` (CLOCK_MONOTONIC), oldest first.
    pub fn expire(&mut self, now_ns: u64) -> Vec<SockEvent> {
        let window = self.window_ns;
        let old: Vec<u64> = self.pending.iter().filter(|(_, a)| a.ts_ns.saturating_add(window) <= now_ns).map(|(c, _)| *c).collect();
        let mut v: Vec<SockEvent> = old.iter().filter_map(|c| self.pending.remove(c)).collect();
        v.sort_by_key(|a| a.ts_ns);
        v
    }
}

/// Why a bind failed, judged from the sockets on the port right after it: another
/// socket on the port means EADDRINUSE; a privileged port and a non-root caller
/// means EACCES; otherwise the reason was not observed.
pub fn infer_failure(attempt: &SockEvent, on_port: &[SockEntry], unpriv_start: u16) -> Record {
    let mut r = Record::from_event(attempt);
    r.requested_port = Some(attempt.req_port);
    // The socket is bound to the port after all: the success event was lost (the
    // ring buffer overflowed) or late. Report the bind as it is.
    if attempt.cookie != 0 && on_port.iter().any(|s| s.cookie == attempt.cookie && s.port == attempt.port) {
        return r;
    }
    r.error_source = Some("inferred");
    let holder = on_port.iter().find(|s| s.cookie != attempt.cookie && s.port == attempt.port && Some(s.proto) == attempt.proto);
    let uid = attempt.task.as_ref().map_or(0, |t| t.uid);
    r.error = Some(
        if let Some(h) = holder {
            r.held_by = Some(HeldBy { inode: h.inode, state: h.state_name(), addr: fmt_addr(&h.addr), uid: h.uid, pids: Vec::new() });
            "EADDRINUSE"
        } else if attempt.port < unpriv_start && uid != 0 {
            "EACCES"
        } else {
            "unknown"
        }
        .to_string(),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ebpf::events::{from_raw, tests::raw};

    fn ev(kind: EventKind, pid: u32, port: u16, cookie: u64, ts: u64) -> SockEvent {
        let mut r = raw(kind, pid, port);
        r.data.cookie = cookie;
        r.info.ts_ns = ts;
        if kind == EventKind::BindAttempt {
            r.data.req_port = port;
        }
        from_raw(&r).unwrap()
    }

    fn entry(port: u16, cookie: u64) -> SockEntry {
        SockEntry {
            proto: Proto::Tcp,
            family: 2,
            state: 10,
            addr: "127.0.0.1".parse().unwrap(),
            port,
            peer: "0.0.0.0".parse().unwrap(),
            peer_port: 0,
            inode: 777,
            uid: 0,
            cookie,
            recv_q: 0,
            send_q: 128,
        }
    }

    #[test]
    fn success_pairs_attempt_and_bind() {
        let mut t = BindTracker::new(50);
        assert!(t.push(ev(EventKind::BindAttempt, 10, 5050, 1, 100)).is_empty());
        let out = t.push(ev(EventKind::Bind, 10, 5050, 1, 101));
        match &out[..] {
            [Step::Emit(r)] => {
                assert_eq!((r.event, r.port, r.requested_port, r.error.clone()), ("bind", 5050, Some(5050), None));
            }
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(t.pending(), 0);
        assert!(t.expire(10_000).is_empty());
    }

    #[test]
    fn bind_zero_has_no_attempt() {
        let mut t = BindTracker::new(50);
        let out = t.push(ev(EventKind::Bind, 10, 40000, 9, 100));
        assert!(matches!(&out[..], [Step::Emit(r)] if r.requested_port == Some(0) && r.port == 40000));
    }

    #[test]
    fn failure_by_timeout_retry_or_thread_moving_on() {
        let mut t = BindTracker::new(50);
        t.push(ev(EventKind::BindAttempt, 10, 5050, 1, 100));
        assert!(t.expire(149).is_empty());
        assert_eq!(t.expire(150).len(), 1);

        t.push(ev(EventKind::BindAttempt, 10, 5050, 2, 200));
        let out = t.push(ev(EventKind::BindAttempt, 10, 5050, 2, 210));
        assert!(matches!(&out[..], [Step::Failed(a)] if a.ts_ns == 200));

        // Same thread binds another socket: the pending attempt on cookie 2 failed.
        let out = t.push(ev(EventKind::Bind, 10, 6000, 3, 220));
        assert_eq!(out.len(), 2);
        assert!(matches!(&out[0], Step::Failed(a) if a.cookie == 2));
        // Another process's events do not resolve it.
        t.push(ev(EventKind::BindAttempt, 10, 5050, 4, 300));
        assert!(t.push(ev(EventKind::Listen, 11, 7000, 5, 301)).len() == 1);
        assert_eq!(t.pending(), 1);
    }

    #[test]
    fn infers_errno() {
        let a = ev(EventKind::BindAttempt, 10, 5050, 1, 100);
        let r = infer_failure(&a, &[entry(5050, 2)], 1024);
        assert_eq!(r.error.as_deref(), Some("EADDRINUSE"));
        assert_eq!(r.error_source, Some("inferred"));
        assert_eq!(r.held_by.as_ref().unwrap().inode, 777);
        // Its own socket on the port means the bind succeeded after all.
        let ok = infer_failure(&a, &[entry(5050, 1)], 1024);
        assert_eq!((ok.error, ok.error_source), (None, None));
        assert_eq!(infer_failure(&a, &[], 1024).error.as_deref(), Some("unknown"));
        let mut low = ev(EventKind::BindAttempt, 10, 80, 1, 100);
        low.task.as_mut().unwrap().uid = 1000;
        assert_eq!(infer_failure(&low, &[], 1024).error.as_deref(), Some("EACCES"));
    }

    #[test]
    fn formats_addresses() {
        assert_eq!(fmt_addr(&"::1".parse().unwrap()), "::1");
        assert_eq!(fmt_addr(&"::ffff:10.0.0.1".parse().unwrap()), "::ffff:10.0.0.1");
        assert_eq!(fmt_addr(&"0.0.0.0".parse().unwrap()), "0.0.0.0");
    }
}
