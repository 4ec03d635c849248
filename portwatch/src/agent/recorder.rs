//! Turns what the agent sees and does into history rows and metrics, with process
//! details captured while the processes still exist.
use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::{Duration, Instant},
};

use super::{
    history::{writer::Writer, Row, RowKind},
    metrics::Metrics,
    shared::{lock, Origin, Shared, Tenure},
};
use crate::{
    model::{
        event::{Activity, BindError, ErrorSource, Record},
        lease::{Holder, LeaseView},
        plan::PortReport,
        process::ProcDetails,
        socket::Socket,
        time::{fmt_time, WallNs},
        verdict::Verdict,
    },
    sys::{
        clock::{wall_now_ns, wall_ns, WallClock},
        proc,
    },
};

/// Caches details per (pid, start time) so a storm from one process reads /proc once;
/// an entry is re-validated (pid reuse) at most once a second. Bounded by entries
/// and by bytes: a process chooses its command line and environment (up to 4 KiB
/// each are kept), so 4096 entries could otherwise hold ~64 MiB.
#[derive(Default)]
pub struct DetailsCache {
    map: HashMap<i32, (u64, Instant, Option<Arc<ProcDetails>>)>,
    /// Estimated bytes of the entries.
    bytes: usize,
}

/// Estimated memory of one cache entry.
fn details_bytes(d: Option<&ProcDetails>) -> usize {
    let base = 64 + std::mem::size_of::<(u64, Instant, Option<Arc<ProcDetails>>)>() + std::mem::size_of::<ProcDetails>();
    d.map_or(base, |d| {
        let p = &d.proc;
        base + p.user.capacity()
            + p.comm.capacity()
            + p.cmdline.len()
            + p.cgroup.len()
            + p.container.as_ref().map_or(0, String::capacity)
            + d.ancestry.len()
            + d.job.as_ref().map_or(0, |j| j.len())
    })
}

impl DetailsCache {
    const MAX: usize = 4096;
    /// At most this many bytes of details (the cache starts over beyond).
    pub const MAX_BYTES: usize = 8 << 20;

    pub fn get(&mut self, pid: i32) -> Option<Arc<ProcDetails>> {
        if let Some((_, checked, d)) = self.map.get(&pid) {
            if checked.elapsed() < Duration::from_secs(1) {
                return d.clone();
            }
        }
        let Some((start, _)) = proc::start_and_state(pid) else {
            // Gone: what we knew is still the best description of it.
            return self.map.get(&pid).and_then(|(_, _, d)| d.clone());
        };
        if let Some((s, checked, d)) = self.map.get_mut(&pid) {
            if *s == start {
                *checked = Instant::now();
                return d.clone();
            }
        }
        let d = proc::details(pid).map(Arc::new);
        self.insert(pid, start, d.clone());
        d
    }

    fn insert(&mut self, pid: i32, start: u64, d: Option<Arc<ProcDetails>>) {
        let b = details_bytes(d.as_deref());
        if let Some((_, _, old)) = self.map.remove(&pid) {
            self.bytes -= details_bytes(old.as_deref()).min(self.bytes);
        }
        if self.map.len() >= Self::MAX || self.bytes + b > Self::MAX_BYTES {
            self.map.clear();
            self.bytes = 0;
        }
        self.map.insert(pid, (start, Instant::now(), d));
        self.bytes += b;
    }
}

pub struct Recorder {
    pub writer: Option<Writer>,
    pub metrics: Option<Metrics>,
    details: DetailsCache,
    shared: Arc<Shared>,
    clock: WallClock,
    /// The agent's own network namespace: that of the sockets it samples and
    /// reaps (sock_diag answers for it only).
    netns: Option<u64>,
    /// Sockets found unseen (not bound before the agent's eyes) in the last sample.
    unseen: HashSet<u64>,
}

impl Recorder {
    pub fn new(writer: Option<Writer>, metrics: Option<Metrics>, shared: Arc<Shared>) -> Self {
        let netns = crate::sys::netns::own_cookie();
        Self { writer, metrics, details: DetailsCache::default(), shared, clock: WallClock::new(), netns, unseen: HashSet::new() }
    }

    /// A row with the details of `pid` (read now, or cached).
    fn row(&mut self, time_ns: WallNs, kind: RowKind, pid: Option<i32>) -> Row {
        let mut r = Row { pid, netns: self.netns, ..Row::at(time_ns, kind) };
        if let Some(d) = pid.and_then(|p| self.details.get(p)) {
            r.ppid = Some(d.proc.ppid);
            r.uid = Some(d.proc.uid);
            r.comm = Some(d.proc.comm.clone());
            r.cmdline = Some(d.proc.cmdline.clone());
            r.cgroup = Some(d.proc.cgroup.clone());
            r.ancestry = Some(d.ancestry.clone());
            r.job = d.job.clone();
        }
        r
    }

    /// A socket event or a failed bind, as the event pipeline produced it.
    pub fn event(&mut self, rec: &Record) {
        if let Some(m) = &self.metrics {
            m.event(match (&rec.error, rec.outcome_unknown()) {
                (Some(_), true) => "bind_unknown",
                (Some(_), false) => "bind_failed",
                (None, _) => rec.event.name(),
            });
        }
        // An accept is a count, not a row; a bind whose outcome is unknown (events
        // were lost meanwhile) is not a failure.
        if rec.event == Activity::Accept || rec.error_source == Some(ErrorSource::LostEvents) {
            return;
        }
        let kind = match (rec.event, rec.error) {
            (_, Some(BindError::Leased)) => RowKind::LeaseRefused,
            (_, Some(_)) => RowKind::BindFailed,
            (Activity::Bind, None) => RowKind::Bind,
            (Activity::Listen, None) => RowKind::Listen,
            (Activity::Close, None) => RowKind::Close,
            (Activity::Accept, None) => return,
        };
        let t = wall_ns(&self.clock, rec.ts_ns);
        let mut r = self.row(t, kind, rec.pid.map(|p| p as i32));
        if r.comm.is_none() {
            r.comm = rec.comm.clone();
        }
        r.port = Some(rec.port);
        r.proto = rec.proto;
        r.addr = Some(rec.addr);
        r.cookie = Some(rec.cookie);
        if rec.netns_cookie != 0 {
            r.netns = Some(rec.netns_cookie);
        }
        r.error = rec.error.map(|e| e.name().to_string());
        if rec.error_source == Some(ErrorSource::OtherNetns) {
            r.detail = Some(format!("in another network namespace (cookie {})", rec.netns_cookie));
        }
        if let Some(h) = &rec.held_by {
            let mut d = match (h.pids.first(), &h.comm) {
                (Some(pid), Some(comm)) => format!("held by pid {pid} ({comm})"),
                (Some(pid), None) => format!("held by pid {pid}"),
                _ => format!("held by a {} socket (inode {})", h.state.name(), h.inode),
            };
            if let Some(t) = lock(&self.shared.seen).get(&h.cookie) {
                d.push_str(&format!(", since {}", fmt_time(t.since)));
                if let Some(j) = &t.job {
                    d.push_str(&format!(", job {j}"));
                }
            }
            r.detail = Some(d);
        }
        if let Some(l) = &rec.lease {
            r.detail = Some(lease_detail(l));
        }
        {
            let mut seen = lock(&self.shared.seen);
            match kind {
                RowKind::Bind | RowKind::Listen => {
                    seen.entry(rec.cookie).or_insert(Tenure { since: t, job: r.job.as_deref().map(String::from) });
                }
                RowKind::Close => {
                    seen.remove(&rec.cookie);
                }
                _ => {}
            }
        }
        self.record(r);
    }

    /// Sockets on the watched ports that the agent did not see being bound (there
    /// before it started, or bound while its events were lost), from a sample: one
    /// `observed` row each, once, with the first holder's details and the time of
    /// that process's start as the row's time and the socket's `since` (it has held
    /// the port since then at most). Marked in `detail` as observed, not seen binding.
    ///
    /// A socket is written the second sample in a row it is found unseen: its bind
    /// event, if there is one, may still be in the ring buffer at the first.
    pub fn observe<'a>(&mut self, sockets: impl IntoIterator<Item = &'a Socket>) {
        let now = wall_now_ns();
        let unseen: Vec<&Socket> = {
            let seen = lock(&self.shared.seen);
            sockets.into_iter().filter(|s| s.cookie != 0 && !seen.contains_key(&s.cookie)).collect()
        };
        let before = std::mem::replace(&mut self.unseen, unseen.iter().map(|s| s.cookie).collect());
        for s in unseen {
            if !before.contains(&s.cookie) {
                continue;
            }
            self.unseen.remove(&s.cookie);
            let holder = s.holders.first().map(|h| &h.proc);
            let since = observed_since(holder.and_then(|p| p.start_time), now);
            let mut r = self.row(since, RowKind::Observed, holder.map(|p| p.pid));
            if r.comm.is_none() {
                r.comm = holder.map(|p| p.comm.clone());
            }
            r.port = Some(s.port);
            r.proto = Some(s.proto);
            r.addr = Some(s.addr);
            r.cookie = Some(s.cookie);
            r.detail = Some(format!(
                "{} socket observed by the agent at {} (not seen binding); since its holder's start",
                s.state.name(),
                fmt_time(now)
            ));
            lock(&self.shared.seen).insert(s.cookie, Tenure { since, job: r.job.as_deref().map(String::from) });
            if let Some(m) = &self.metrics {
                m.event("observed");
            }
            self.record(r);
        }
    }

    pub fn verdict(&mut self, v: &Verdict) {
        if let Some(m) = &self.metrics {
            for r in &v.reasons {
                m.verdict(r.kind.name());
            }
        }
        let reasons: Vec<&str> = v.reasons.iter().map(|r| r.kind.name()).collect();
        let evidence: Vec<&str> = v.reasons.iter().map(|r| r.evidence.as_str()).collect();
        let mut r = Row { port: Some(v.port), cookie: Some(v.cookie), ..Row::at(wall_now_ns(), RowKind::Stuck) };
        r.error = Some(reasons.join(","));
        r.detail = Some(format!("{}; pids {:?}", evidence.join("; "), v.pids));
        self.record(r);
    }

    /// A reap (the agent's own, or one a client asked for), every signal a row.
    pub fn reap(&mut self, rep: &PortReport, origin: Origin) {
        if let Some(m) = &self.metrics {
            let outcome = match (&rep.plan.refused, &rep.outcome) {
                (Some(_), _) => "refused",
                (None, None) => "dry_run",
                (None, Some(o)) if o.freed => "freed",
                (None, Some(_)) => "still_held",
            };
            m.reap(outcome);
            for sig in rep.outcome.iter().flat_map(|o| o.signals.iter()) {
                m.signal(sig.signal.name());
            }
        }
        let by = match origin {
            Origin::Agent => "agent".to_string(),
            Origin::Client { uid, pid: Some(pid) } => format!("uid {uid} pid {pid} (control socket)"),
            Origin::Client { uid, pid: None } => format!("uid {uid} (control socket)"),
        };
        let now = wall_now_ns();
        if let Some(why) = &rep.plan.refused {
            let r = Row { port: Some(rep.port), detail: Some(format!("{why}; asked by {by}")), ..Row::at(now, RowKind::Refused) };
            self.record(r);
        }
        if let Some(o) = &rep.outcome {
            for sig in &o.signals {
                let t = rep.plan.targets.iter().find(|t| t.proc.pid == sig.pid);
                let r = Row {
                    port: Some(rep.port),
                    pid: Some(sig.pid),
                    comm: t.map(|t| t.proc.comm.clone()),
                    uid: t.map(|t| t.proc.uid),
                    cmdline: t.map(|t| t.proc.cmdline.clone()),
                    detail: Some(format!("{} {}; asked by {by}", sig.signal.name(), if sig.ok { "delivered" } else { "failed" })),
                    ..Row::at(now, RowKind::Signal)
                };
                self.record(r);
            }
            let freed = if o.freed { "port free" } else { "port still held" };
            let r = Row {
                port: Some(rep.port),
                detail: Some(format!("{freed} after {} ms; asked by {by}", o.elapsed_ms)),
                ..Row::at(now, RowKind::Reaped)
            };
            self.record(r);
        }
    }

    fn record(&self, r: Row) {
        if let Some(w) = &self.writer {
            w.record(r);
        }
    }
}

/// An observed socket's `since`: its holder's start (seconds since the epoch), or
/// now when the holder is unknown; never in the future.
fn observed_since(start_secs: Option<u64>, now: WallNs) -> WallNs {
    start_secs.and_then(|s| i64::try_from(s).ok()).and_then(|s| s.checked_mul(1_000_000_000)).map_or(now, |t| t.min(now))
}

/// A lease refusal's detail: `refused by the lease of run pid 4711 (portwatch run
/// --lease -p 5050 -- gunicorn app), job GITHUB_RUN_ID=123`.
fn lease_detail(l: &LeaseView) -> String {
    let mut d = match &l.holder {
        Holder::Run { pid, .. } => format!("refused by the lease of run pid {pid}"),
        Holder::Operator { name } => format!("refused by operator lease {name}"),
    };
    if let Some(c) = &l.command {
        d.push_str(&format!(" ({})", proc::clip(c.clone())));
    }
    if let Some(j) = &l.job {
        d.push_str(&format!(", job {j}"));
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::process::ProcInfo;

    #[test]
    fn observed_since_is_the_holders_start() {
        assert_eq!(observed_since(Some(100), 500_000_000_000), 100_000_000_000);
        assert_eq!(observed_since(None, 5), 5);
        assert_eq!(observed_since(Some(1000), 5), 5);
        assert_eq!(observed_since(Some(u64::MAX), 5), 5);
    }

    #[test]
    fn details_cache_is_bounded_by_bytes() {
        let mut c = DetailsCache::default();
        let big = |pid: i32| ProcDetails {
            proc: ProcInfo { pid, cmdline: "c".repeat(4096).into(), cgroup: "g".repeat(4096).into(), ..ProcInfo::default() },
            ancestry: "a".repeat(4096).into(),
            job: Some("j".repeat(4096).into()),
        };
        let each = details_bytes(Some(&big(1)));
        assert!(each > 16 * 1024);
        for pid in 1..=4096 {
            c.insert(pid, 1, Some(Arc::new(big(pid))));
            assert!(c.bytes <= DetailsCache::MAX_BYTES, "{} bytes at pid {pid}", c.bytes);
        }
        assert!(c.map.len() <= DetailsCache::MAX_BYTES / each);
        // Replacing an entry (pid reuse) does not count it twice.
        let before = c.bytes;
        let pid = *c.map.keys().next().unwrap();
        c.insert(pid, 2, Some(Arc::new(big(pid))));
        assert_eq!(c.bytes, before);
        // Small entries: bounded by count as before.
        let mut c = DetailsCache::default();
        for pid in 1..=10_000 {
            c.insert(pid, 1, None);
        }
        assert!(c.map.len() <= DetailsCache::MAX);
    }
}
