//! When is a listener stuck? A pure state machine fed with periodic samples of the
//! sockets on the watched ports; it keeps, per socket, since when each condition has
//! held, and names every reason with its figures.
//!
//! Accepting is measured, not guessed: the kernel counts connections it completes
//! into a port's accept queues (`QUEUED`), so the connections accepted so far are
//! `queued - backlog` (FIFO queues; connections reset while queued count as
//! accepted, which only errs towards "not stuck"). The counter and the queues cannot
//! be read at one instant, so the sampler reads the counter just before and just
//! after the queues ([`Queued`]). When the two reads agree, nothing completed in
//! between and the count is exact. When they differ, the sample says nothing about
//! accepting: it neither moves the baseline nor gives an accept-stall verdict, and
//! an accept in that interval is seen at the next exact sample (credited then, late:
//! towards "not stuck"). A connection completing between the reads used to look
//! like an accept and delay a stall verdict by a sample. When nothing was accepted
//! and the queue was non-empty at the start of an interval, the same connections sat
//! in it the whole interval.
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use serde::Serialize;

use std::net::IpAddr;

use super::socket::SockState;

/// One holder of a socket, as sampled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HolderSample {
    pub pid: i32,
    pub ppid: i32,
    /// /proc state letter: R, S, D, T, t, Z, ...
    pub state: char,
}

/// One socket on a watched port, as sampled.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SockSample {
    pub cookie: u64,
    pub port: u16,
    pub tcp: bool,
    pub state: SockState,
    /// The local address it is bound to (a probe judges only what it reaches).
    pub addr: IpAddr,
    pub backlog: u32,
    pub max_backlog: u32,
    pub holders: Vec<HolderSample>,
}

#[derive(Clone, Debug, Default)]
pub struct Sample {
    /// Monotonic time of the sample.
    pub at: Duration,
    pub sockets: Vec<SockSample>,
    /// Cumulative per-port count of connections completed into accept queues.
    pub queued: HashMap<u16, Queued>,
    /// Per-port consecutive probe failures.
    pub probe_failures: HashMap<u16, ProbeStreak>,
}

/// A port's kernel count of connections completed into its accept queues, read
/// just before and just after the sample's sockets (0 before: not read, a port
/// that was not listening at the last sample).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Queued {
    pub before: u64,
    pub after: u64,
}

/// Consecutive failures of a port's health probe, the last error, and the address
/// the probe connected to.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProbeStreak {
    pub failures: u32,
    pub error: String,
    /// `None` when the probe did not get as far as an address.
    pub target: Option<IpAddr>,
}

/// Which of `listeners` (cookie, bound address) a connection to `target` reaches:
/// those bound to the target address itself, or, when there are none, the wildcard
/// ones of a family that takes it (an IPv6 wildcard also takes IPv4, unless an IPv4
/// listener is on the port). A probe condemns only those.
pub fn reached(listeners: &[(u64, IpAddr)], target: IpAddr) -> Vec<u64> {
    let norm = |ip: IpAddr| match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    };
    let target = norm(target);
    let exact: Vec<u64> = listeners.iter().filter(|(_, a)| norm(*a) == target).map(|(c, _)| *c).collect();
    if !exact.is_empty() {
        return exact;
    }
    let wild = |v4: bool| listeners.iter().filter(move |(_, a)| a.is_unspecified() && a.is_ipv4() == v4).map(|(c, _)| *c);
    match target {
        IpAddr::V4(_) => {
            let v4: Vec<u64> = wild(true).collect();
            if v4.is_empty() {
                wild(false).collect()
            } else {
                v4
            }
        }
        IpAddr::V6(_) => wild(false).collect(),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReasonKind {
    AcceptStall,
    HoldersStopped,
    ProbeFailing,
    BoundNotListening,
    Leftover,
}

impl ReasonKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::AcceptStall => "accept_stall",
            Self::HoldersStopped => "holders_stopped",
            Self::ProbeFailing => "probe_failing",
            Self::BoundNotListening => "bound_not_listening",
            Self::Leftover => "leftover",
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Reason {
    pub kind: ReasonKind,
    pub evidence: String,
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Verdict {
    pub port: u16,
    pub cookie: u64,
    pub reasons: Vec<Reason>,
    pub pids: Vec<i32>,
}

#[derive(Debug, Default)]
struct Track {
    nonempty_since: Option<Duration>,
    last_accept: Duration,
    stopped_since: Option<Duration>,
    bound_since: Option<Duration>,
}

#[derive(Debug, Default)]
struct PortTrack {
    /// Connections accepted by the last exact sample, if there was one.
    accepted: Option<i64>,
}

#[derive(Debug)]
pub struct Engine {
    stall: Duration,
    leftovers: bool,
    probe_failures: HashMap<u16, u32>,
    socks: HashMap<u64, Track>,
    ports: HashMap<u16, PortTrack>,
}

fn secs(d: Duration) -> String {
    format!("{:.1}s", d.as_secs_f64())
}

impl Engine {
    pub fn new(stall: Duration, probe_failures: HashMap<u16, u32>, leftovers: bool) -> Self {
        Self { stall, leftovers, probe_failures, socks: HashMap::new(), ports: HashMap::new() }
    }

    /// Feeds one sample; returns the verdict for every stuck socket now.
    pub fn update(&mut self, s: &Sample) -> Vec<Verdict> {
        let now = s.at;
        // Per-port accepts since the last sample (listeners only).
        let mut accepted: HashMap<u16, bool> = HashMap::new();
        // Ports whose counter moved while the queues were read: no accept judgement.
        let mut unknown: HashSet<u16> = HashSet::new();
        let mut backlog_now: HashMap<u16, u64> = HashMap::new();
        for sock in s.sockets.iter().filter(|k| k.state == SockState::Listen) {
            *backlog_now.entry(sock.port).or_default() += u64::from(sock.backlog);
        }
        for (&port, &b) in &backlog_now {
            let q = s.queued.get(&port).copied().unwrap_or_default();
            let pt = self.ports.entry(port).or_default();
            if q.before != q.after {
                unknown.insert(port);
                continue;
            }
            // accepted so far = enqueued - still queued
            let now_accepted = q.after as i64 - b as i64;
            let took = pt.accepted.is_some_and(|was| now_accepted > was);
            accepted.insert(port, took);
            pt.accepted = Some(now_accepted);
        }

        // Which listeners each failing probe reached.
        let mut probed: HashMap<u64, &ProbeStreak> = HashMap::new();
        for (port, streak) in &s.probe_failures {
            let listeners: Vec<(u64, IpAddr)> =
                s.sockets.iter().filter(|k| k.port == *port && k.state == SockState::Listen).map(|k| (k.cookie, k.addr)).collect();
            let hit = match streak.target {
                Some(ip) => reached(&listeners, ip),
                None => listeners.iter().map(|(c, _)| *c).collect(),
            };
            probed.extend(hit.into_iter().map(|c| (c, streak)));
        }
        let live: HashSet<u64> = s.sockets.iter().map(|k| k.cookie).collect();
        self.socks.retain(|c, _| live.contains(c));
        let mut out = Vec::new();
        for sock in &s.sockets {
            let t = self.socks.entry(sock.cookie).or_insert_with(|| Track { last_accept: now, ..Track::default() });
            let mut reasons = Vec::new();

            if sock.state == SockState::Listen {
                if accepted.get(&sock.port).copied().unwrap_or(false) {
                    t.last_accept = now;
                }
                if sock.backlog > 0 {
                    let since = *t.nonempty_since.get_or_insert(now);
                    let idle = now.saturating_sub(t.last_accept);
                    let queued_for = now.saturating_sub(since);
                    if queued_for >= self.stall && idle >= self.stall && !unknown.contains(&sock.port) {
                        reasons.push(Reason {
                            kind: ReasonKind::AcceptStall,
                            evidence: format!(
                                "accept queue {}/{} non-empty for {}, nothing accepted for {}",
                                sock.backlog,
                                sock.max_backlog,
                                secs(queued_for),
                                secs(idle)
                            ),
                        });
                    }
                } else {
                    t.nonempty_since = None;
                }
            }

            let all_stopped = !sock.holders.is_empty() && sock.holders.iter().all(|h| matches!(h.state, 'T' | 't' | 'D'));
            if all_stopped {
                let since = *t.stopped_since.get_or_insert(now);
                if now.saturating_sub(since) >= self.stall {
                    let states: HashSet<char> = sock.holders.iter().map(|h| h.state).collect();
                    let mut states: Vec<String> = states.into_iter().map(String::from).collect();
                    states.sort();
                    reasons.push(Reason {
                        kind: ReasonKind::HoldersStopped,
                        evidence: format!(
                            "all {} holder{} {} ({}) for {}",
                            sock.holders.len(),
                            if sock.holders.len() == 1 { "" } else { "s" },
                            if states.iter().any(|s| s == "D") { "stopped or in uninterruptible sleep" } else { "stopped" },
                            states.join(","),
                            secs(now.saturating_sub(since))
                        ),
                    });
                }
            } else {
                t.stopped_since = None;
            }

            if sock.tcp && sock.state == SockState::Bound {
                let since = *t.bound_since.get_or_insert(now);
                if now.saturating_sub(since) >= self.stall {
                    reasons.push(Reason {
                        kind: ReasonKind::BoundNotListening,
                        evidence: format!("TCP socket bound but not listening for {}", secs(now.saturating_sub(since))),
                    });
                }
            } else {
                t.bound_since = None;
            }

            if let Some(streak) = probed.get(&sock.cookie) {
                let need = self.probe_failures.get(&sock.port).copied().unwrap_or(3);
                if streak.failures >= need {
                    let at = streak.target.map(|t| format!(" (probing {t})")).unwrap_or_default();
                    reasons.push(Reason {
                        kind: ReasonKind::ProbeFailing,
                        evidence: format!("health probe failed {} times in a row{at}: {}", streak.failures, streak.error),
                    });
                }
            }

            if self.leftovers && !sock.holders.is_empty() {
                let pids: HashSet<i32> = sock.holders.iter().map(|h| h.pid).collect();
                let orphaned = sock.holders.iter().all(|h| h.ppid == 1 || pids.contains(&h.ppid));
                if orphaned {
                    reasons.push(Reason {
                        kind: ReasonKind::Leftover,
                        evidence: "holders were re-parented to PID 1 (their launcher exited)".into(),
                    });
                }
            }

            if !reasons.is_empty() {
                let mut pids: Vec<i32> = sock.holders.iter().map(|h| h.pid).collect();
                pids.sort_unstable();
                pids.dedup();
                out.push(Verdict { port: sock.port, cookie: sock.cookie, reasons, pids });
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const STALL: Duration = Duration::from_secs(10);

    fn listener(backlog: u32, state: char) -> SockSample {
        SockSample {
            cookie: 1,
            port: 5050,
            tcp: true,
            state: SockState::Listen,
            addr: "127.0.0.1".parse().unwrap(),
            backlog,
            max_backlog: 128,
            holders: vec![HolderSample { pid: 10, ppid: 5, state }, HolderSample { pid: 11, ppid: 10, state }],
        }
    }

    fn sample(t: u64, socks: Vec<SockSample>, queued: u64) -> Sample {
        let queued = Queued { before: queued, after: queued };
        Sample { at: Duration::from_secs(t), sockets: socks, queued: HashMap::from([(5050, queued)]), ..Sample::default() }
    }

    fn kinds(v: &[Verdict]) -> Vec<ReasonKind> {
        v.iter().flat_map(|v| v.reasons.iter().map(|r| r.kind)).collect()
    }

    #[test]
    fn never_accepting_listener_is_stuck_after_stall() {
        let mut e = Engine::new(STALL, HashMap::new(), false);
        assert!(e.update(&sample(0, vec![listener(1, 'S')], 1)).is_empty());
        assert!(e.update(&sample(5, vec![listener(3, 'S')], 3)).is_empty());
        assert!(e.update(&sample(9, vec![listener(3, 'S')], 3)).is_empty());
        let v = e.update(&sample(10, vec![listener(3, 'S')], 3));
        assert_eq!(kinds(&v), vec![ReasonKind::AcceptStall]);
        assert_eq!(v[0].pids, vec![10, 11]);
        assert!(v[0].reasons[0].evidence.contains("3/128"), "{:?}", v[0].reasons);
    }

    #[test]
    fn a_connection_completing_between_the_reads_is_not_an_accept() {
        let at = |t: u64, backlog: u32, before: u64, after: u64| Sample {
            at: Duration::from_secs(t),
            sockets: vec![listener(backlog, 'S')],
            queued: HashMap::from([(5050, Queued { before, after })]),
            ..Sample::default()
        };
        let mut e = Engine::new(STALL, HashMap::new(), false);
        assert!(e.update(&at(0, 1, 1, 1)).is_empty());
        // Two connections complete while the queue is read (the queue may or may not
        // show them): the sample says nothing about accepting.
        assert!(e.update(&at(1, 1, 1, 3)).is_empty());
        // The queue shows them now; nothing was accepted since 0 s.
        assert!(e.update(&at(2, 3, 3, 3)).is_empty());
        assert_eq!(kinds(&e.update(&at(10, 3, 3, 3))), vec![ReasonKind::AcceptStall], "the stall counts from 0 s");

        // An accept hidden in an inexact sample is seen at the next exact one.
        let mut e = Engine::new(STALL, HashMap::new(), false);
        e.update(&at(0, 3, 3, 3));
        e.update(&at(1, 4, 3, 5));
        e.update(&at(9, 4, 5, 5));
        assert!(e.update(&at(10, 4, 5, 5)).is_empty(), "one accepted by 9 s (5 queued, 4 left)");
        assert!(e.update(&at(18, 4, 5, 5)).is_empty());
        assert_eq!(kinds(&e.update(&at(19, 4, 5, 5))), vec![ReasonKind::AcceptStall]);

        // No verdict from an inexact sample: an accept may hide in it.
        let mut e = Engine::new(STALL, HashMap::new(), false);
        e.update(&at(0, 3, 3, 3));
        assert!(e.update(&at(10, 3, 3, 4)).is_empty());
        assert_eq!(kinds(&e.update(&at(11, 4, 4, 4))), vec![ReasonKind::AcceptStall], "exact again: nothing was accepted");
    }

    #[test]
    fn busy_server_with_a_long_queue_is_never_stuck() {
        let mut e = Engine::new(STALL, HashMap::new(), false);
        // The queue stays long, but connections keep being accepted: 100 queued per
        // second, 95 accepted.
        let mut queued = 0;
        for t in 0..60 {
            queued += 100;
            let backlog = 50 + (t % 5) as u32;
            assert!(e.update(&sample(t, vec![listener(backlog, 'R')], queued)).is_empty(), "flagged at {t}s");
        }
    }

    #[test]
    fn queue_that_empties_resets_the_clock() {
        let mut e = Engine::new(STALL, HashMap::new(), false);
        e.update(&sample(0, vec![listener(2, 'S')], 2));
        e.update(&sample(6, vec![listener(0, 'S')], 2));
        e.update(&sample(8, vec![listener(1, 'S')], 3));
        assert!(e.update(&sample(12, vec![listener(1, 'S')], 3)).is_empty());
        assert_eq!(kinds(&e.update(&sample(18, vec![listener(1, 'S')], 3))), vec![ReasonKind::AcceptStall]);
    }

    #[test]
    fn stopped_holders_and_bound_sockets() {
        let mut e = Engine::new(STALL, HashMap::new(), false);
        let mut bound = listener(0, 'S');
        bound.cookie = 2;
        bound.state = SockState::Bound;
        bound.port = 6000;
        e.update(&sample(0, vec![listener(0, 'T'), bound.clone()], 0));
        let v = e.update(&sample(10, vec![listener(0, 'T'), bound.clone()], 0));
        assert_eq!(kinds(&v), vec![ReasonKind::HoldersStopped, ReasonKind::BoundNotListening]);
        assert!(v[0].reasons[0].evidence.contains("all 2 holders stopped (T)"));
        // One holder running again: no longer stopped.
        let mut mixed = listener(0, 'T');
        mixed.holders[1].state = 'S';
        assert!(e.update(&sample(11, vec![mixed], 0)).is_empty());
    }

    #[test]
    fn a_probe_reaches_the_exact_address_else_the_wildcards() {
        let l = |c: u64, a: &str| (c, a.parse::<IpAddr>().unwrap());
        let ip = |a: &str| a.parse::<IpAddr>().unwrap();
        let both = [l(1, "127.0.0.1"), l(2, "::1")];
        assert_eq!(reached(&both, ip("127.0.0.1")), vec![1]);
        assert_eq!(reached(&both, ip("::1")), vec![2]);
        let wild = [l(3, "0.0.0.0"), l(4, "::")];
        assert_eq!(reached(&wild, ip("127.0.0.1")), vec![3]);
        assert_eq!(reached(&wild, ip("::1")), vec![4]);
        assert_eq!(reached(&[l(4, "::")], ip("127.0.0.1")), vec![4], "a dual-stack wildcard takes IPv4");
        assert_eq!(reached(&[l(5, "::ffff:127.0.0.1")], ip("127.0.0.1")), vec![5]);
        assert!(reached(&[l(6, "10.0.0.1")], ip("127.0.0.1")).is_empty());
    }

    #[test]
    fn probes_and_leftovers() {
        let mut e = Engine::new(STALL, HashMap::from([(5050, 2)]), true);
        let mut s = sample(0, vec![listener(0, 'S')], 0);
        let streak = |n| ProbeStreak { failures: n, error: "HTTP 503".into(), target: Some("127.0.0.1".parse().unwrap()) };
        s.probe_failures.insert(5050, streak(1));
        assert!(e.update(&s).is_empty());
        s.at = Duration::from_secs(1);
        s.probe_failures.insert(5050, streak(2));
        assert_eq!(kinds(&e.update(&s)), vec![ReasonKind::ProbeFailing]);
        // Another listener on the port, on ::1, that the probe of 127.0.0.1 did not
        // reach: not judged by it.
        let mut v6 = listener(0, 'S');
        v6.cookie = 9;
        v6.addr = "::1".parse().unwrap();
        s.sockets.push(v6);
        s.at = Duration::from_secs(2);
        let v = e.update(&s);
        assert_eq!(v.iter().map(|v| v.cookie).collect::<Vec<_>>(), vec![1], "{v:?}");

        let mut orphan = listener(0, 'S');
        orphan.holders[0].ppid = 1;
        let v = e.update(&sample(2, vec![orphan], 0));
        assert_eq!(kinds(&v), vec![ReasonKind::Leftover]);
    }
}
