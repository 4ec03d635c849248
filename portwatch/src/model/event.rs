//! Kernel events, and the records users see made of them.
//!
//! A bind shows up as two kernel events: an attempt (`cgroup/bind*`, before the kernel
//! checks anything) and, only on success, a `post_bind` with the real port. The kernel
//! reports no failure, so a failure is an attempt that no success followed: the same
//! socket trying again, the same thread moving on to something else, or `window` of
//! time passing. Its errno is then inferred from who holds the port (see
//! [`infer_failure`]) and marked as inferred.
use std::{
    collections::HashMap,
    hash::{BuildHasherDefault, Hasher},
    net::{IpAddr, Ipv4Addr},
};

pub use portwatch_common::EventKind;
use serde::{Serialize, Serializer};

use super::socket::{Family, Proto, SockEntry, SockState};

/// An event from the kernel, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockEvent {
    pub kind: EventKind,
    /// CLOCK_MONOTONIC nanoseconds.
    pub ts_ns: u64,
    /// `None` for events raised outside process context (accept).
    pub task: Option<Task>,
    pub netns_cookie: u64,
    pub cookie: u64,
    pub proto: Option<Proto>,
    pub family: Family,
    pub addr: IpAddr,
    pub port: u16,
    pub req_port: u16,
    pub peer: IpAddr,
    pub peer_port: u16,
    pub old_state: u8,
    pub new_state: u8,
    /// Kernel events lost (ring buffer full) before this one was read, as last told:
    /// a bind attempt's outcome is unknown if more were lost while it was pending.
    pub lost_before: u64,
}

/// Hashes a socket cookie (or any u64 id) with one multiplication: the maps keyed
/// by cookies are updated for every event in a storm, where SipHash shows.
#[derive(Default, Clone, Copy)]
pub struct CookieHasher(u64);

impl Hasher for CookieHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0.rotate_left(8) ^ u64::from(b)).wrapping_mul(0x9e37_79b9_7f4a_7c15);
        }
    }

    fn write_u64(&mut self, n: u64) {
        // Fibonacci hashing: the high bits, which hashbrown uses, depend on every bit.
        self.0 = (self.0 ^ n).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }
}

/// A map keyed by socket cookies.
pub type CookieMap<V> = HashMap<u64, V, BuildHasherDefault<CookieHasher>>;

/// The task an event happened in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Task {
    pub pid: u32,
    pub tid: u32,
    pub uid: u32,
    pub gid: u32,
    pub comm: String,
    pub cgroup_id: u64,
}

/// What a record reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Activity {
    Bind,
    Listen,
    Close,
    Accept,
}

impl Activity {
    pub fn of(kind: EventKind) -> Self {
        match kind {
            EventKind::BindAttempt | EventKind::Bind | EventKind::Refused => Self::Bind,
            EventKind::Listen => Self::Listen,
            EventKind::Close => Self::Close,
            EventKind::Accept => Self::Accept,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Bind => "bind",
            Self::Listen => "listen",
            Self::Close => "close",
            Self::Accept => "accept",
        }
    }
}

/// Why a bind failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
pub enum BindError {
    /// Another socket holds the port.
    #[serde(rename = "EADDRINUSE")]
    AddrInUse,
    /// A privileged port and an unprivileged caller.
    #[serde(rename = "EACCES")]
    Access,
    /// The kernel refused for a reason not observed.
    #[serde(rename = "unknown")]
    Unknown,
    /// A port lease refused it (the caller saw EADDRINUSE, or EPERM before 5.18).
    #[serde(rename = "lease")]
    Leased,
}

impl BindError {
    pub fn name(self) -> &'static str {
        match self {
            Self::AddrInUse => "EADDRINUSE",
            Self::Access => "EACCES",
            Self::Unknown => "unknown",
            Self::Leased => "lease",
        }
    }
}

/// How an error was known.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ErrorSource {
    /// Deduced from what was on the port (the kernel reports no failed bind).
    Inferred,
    /// Not known: kernel events were lost while the attempt was pending (its success
    /// may have been among them), so it is not counted as a failure.
    #[serde(rename = "lost_events")]
    LostEvents,
    /// Not known: the attempt was made in another network namespace, whose sockets
    /// portwatch does not see.
    #[serde(rename = "other_netns")]
    OtherNetns,
}

/// What `watch` prints for one event (and the agent records).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Record {
    /// RFC 3339 wall time, filled in when printed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    #[serde(skip)]
    pub ts_ns: u64,
    pub event: Activity,
    pub pid: Option<u32>,
    pub tid: Option<u32>,
    pub uid: Option<u32>,
    pub comm: Option<String>,
    #[serde(serialize_with = "proto_or_other")]
    pub proto: Option<Proto>,
    pub family: Family,
    pub addr: IpAddr,
    pub port: u16,
    /// For binds: the port asked for; 0 means the kernel chose `port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_port: Option<u16>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<BindError>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error_source: Option<ErrorSource>,
    /// For failed binds: the socket holding the port at that moment.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_by: Option<HeldBy>,
    /// For binds a lease refused: the lease.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease: Option<Box<crate::model::lease::LeaseView>>,
    /// For accepts: the connecting peer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_addr: Option<IpAddr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer_port: Option<u16>,
    pub cookie: u64,
    pub cgroup_id: Option<u64>,
    pub netns_cookie: u64,
}

fn proto_or_other<S: Serializer>(p: &Option<Proto>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(p.map_or("other", Proto::name))
}

/// The socket a failed bind ran into.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HeldBy {
    pub inode: u64,
    pub state: SockState,
    pub addr: IpAddr,
    pub uid: u32,
    pub cookie: u64,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pids: Vec<i32>,
    /// The command of the first holder, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
}

impl Record {
    pub fn from_event(ev: &SockEvent) -> Self {
        let t = ev.task.as_ref();
        let accept = ev.kind == EventKind::Accept;
        Self {
            time: None,
            ts_ns: ev.ts_ns,
            event: Activity::of(ev.kind),
            pid: t.map(|t| t.pid),
            tid: t.map(|t| t.tid),
            uid: t.map(|t| t.uid),
            comm: t.map(|t| t.comm.clone()),
            proto: ev.proto,
            family: ev.family,
            addr: ev.addr,
            port: ev.port,
            requested_port: None,
            error: None,
            error_source: None,
            held_by: None,
            lease: None,
            peer_addr: accept.then_some(ev.peer),
            peer_port: accept.then_some(ev.peer_port),
            cookie: ev.cookie,
            cgroup_id: t.map(|t| t.cgroup_id),
            netns_cookie: ev.netns_cookie,
        }
    }

    /// A failure that is not known to be one (see [`ErrorSource`]).
    pub fn outcome_unknown(&self) -> bool {
        matches!(self.error_source, Some(ErrorSource::LostEvents | ErrorSource::OtherNetns))
    }

    /// A `listen()` without `bind()`: the port was not known when the event fired.
    pub fn is_autobound_listen(&self) -> bool {
        self.event == Activity::Listen && self.port == 0
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

/// Pairs bind attempts with their outcome. Pending attempts are bounded: beyond
/// [`BindTracker::MAX_PENDING`] the oldest is resolved early (as not seen to
/// succeed).
#[derive(Debug)]
pub struct BindTracker {
    pending: CookieMap<SockEvent>,
    window_ns: u64,
}

impl BindTracker {
    pub const MAX_PENDING: usize = 65_536;

    pub fn new(window_ns: u64) -> Self {
        Self { pending: CookieMap::default(), window_ns }
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
                if self.pending.len() >= Self::MAX_PENDING {
                    if let Some(oldest) = self.pending.values().min_by_key(|a| a.ts_ns).map(|a| a.cookie) {
                        out.extend(self.pending.remove(&oldest).map(Step::Failed));
                    }
                }
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
/// socket on the port (in the same network namespace) means EADDRINUSE; a
/// privileged port and a non-root caller means EACCES; otherwise the reason was not
/// observed. `on_port` must come from the attempt's own network namespace.
pub fn infer_failure(attempt: &SockEvent, on_port: &[SockEntry], unpriv_start: u16) -> Record {
    let mut r = Record::from_event(attempt);
    r.requested_port = Some(attempt.req_port);
    // The socket is bound to the port after all: the success event was lost (the
    // ring buffer overflowed) or late. Report the bind as it is.
    if attempt.cookie != 0 && on_port.iter().any(|s| s.cookie == attempt.cookie && s.port == attempt.port) {
        return r;
    }
    r.error_source = Some(ErrorSource::Inferred);
    let holder = on_port.iter().find(|s| s.cookie != attempt.cookie && s.port == attempt.port && Some(s.proto) == attempt.proto);
    let uid = attempt.task.as_ref().map_or(0, |t| t.uid);
    r.error = Some(if let Some(h) = holder {
        r.held_by = Some(HeldBy {
            inode: h.inode,
            state: h.sock_state(),
            addr: h.addr,
            uid: h.uid,
            cookie: h.cookie,
            pids: Vec::new(),
            comm: None,
        });
        BindError::AddrInUse
    } else if attempt.port < unpriv_start && uid != 0 {
        BindError::Access
    } else {
        BindError::Unknown
    });
    r
}

/// An unspecified IPv4 address, for events that carry none.
pub const NO_ADDR: IpAddr = IpAddr::V4(Ipv4Addr::UNSPECIFIED);

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn ev(kind: EventKind, pid: u32, port: u16, cookie: u64, ts: u64) -> SockEvent {
        SockEvent {
            kind,
            ts_ns: ts,
            task: Some(Task { pid, tid: pid, uid: 0, gid: 0, comm: "python3".into(), cgroup_id: 1 }),
            netns_cookie: 1,
            cookie,
            proto: Some(Proto::Tcp),
            family: Family::Ipv4,
            addr: "127.0.0.1".parse().unwrap(),
            port,
            req_port: if kind == EventKind::BindAttempt { port } else { 0 },
            peer: NO_ADDR,
            peer_port: 0,
            old_state: 0,
            new_state: 0,
            lost_before: 0,
        }
    }

    fn entry(port: u16, cookie: u64) -> SockEntry {
        SockEntry {
            proto: Proto::Tcp,
            family: Family::Ipv4,
            state: portwatch_common::tcp_state::LISTEN,
            addr: "127.0.0.1".parse().unwrap(),
            port,
            peer: NO_ADDR,
            peer_port: 0,
            inode: 777,
            uid: 0,
            cookie,
            recv_q: 0,
            send_q: 128,
            cgroup: 0,
        }
    }

    #[test]
    fn success_pairs_attempt_and_bind() {
        let mut t = BindTracker::new(50);
        assert!(t.push(ev(EventKind::BindAttempt, 10, 5050, 1, 100)).is_empty());
        let out = t.push(ev(EventKind::Bind, 10, 5050, 1, 101));
        match &out[..] {
            [Step::Emit(r)] => {
                assert_eq!((r.event, r.port, r.requested_port, r.error), (Activity::Bind, 5050, Some(5050), None));
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
    fn pending_attempts_are_bounded() {
        let mut t = BindTracker::new(1 << 40);
        for i in 0..BindTracker::MAX_PENDING as u64 + 10 {
            // Distinct threads, so none resolves another.
            let mut e = ev(EventKind::BindAttempt, 10, 5050, i + 1, i);
            e.task.as_mut().unwrap().tid = i as u32 + 1000;
            t.push(e);
        }
        assert_eq!(t.pending(), BindTracker::MAX_PENDING);
    }

    #[test]
    fn infers_errno() {
        let a = ev(EventKind::BindAttempt, 10, 5050, 1, 100);
        let r = infer_failure(&a, &[entry(5050, 2)], 1024);
        assert_eq!(r.error, Some(BindError::AddrInUse));
        assert_eq!(r.error_source, Some(ErrorSource::Inferred));
        assert_eq!(r.held_by.as_ref().unwrap().inode, 777);
        // Its own socket on the port means the bind succeeded after all.
        let ok = infer_failure(&a, &[entry(5050, 1)], 1024);
        assert_eq!((ok.error, ok.error_source), (None, None));
        assert_eq!(infer_failure(&a, &[], 1024).error, Some(BindError::Unknown));
        let mut low = ev(EventKind::BindAttempt, 10, 80, 1, 100);
        low.task.as_mut().unwrap().uid = 1000;
        assert_eq!(infer_failure(&low, &[], 1024).error, Some(BindError::Access));
    }

    #[test]
    fn json_names() {
        let mut r = Record::from_event(&ev(EventKind::Bind, 42, 5050, 1, 1));
        r.error = Some(BindError::AddrInUse);
        r.error_source = Some(ErrorSource::Inferred);
        let j = serde_json::to_value(&r).unwrap();
        assert_eq!(j["event"], "bind");
        assert_eq!(j["proto"], "tcp");
        assert_eq!(j["family"], "ipv4");
        assert_eq!(j["addr"], "127.0.0.1");
        assert_eq!(j["error"], "EADDRINUSE");
        assert_eq!(j["error_source"], "inferred");
    }
}
