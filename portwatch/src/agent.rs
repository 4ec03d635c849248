//! `portwatch agent` and `portwatch cleanup`: sample the watched ports, judge each
//! listener with the verdict engine, and (when asked) reap the stuck ones.
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use serde::Serialize;
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};
use tracing::{info, warn};

use crate::{
    config::Config,
    control,
    ebpf::{events::decode, Observer, ObserverOptions},
    error::{Error, Result},
    free::{self, FreeOptions, PortReport},
    history, metrics,
    model::{self, BindTracker, Step},
    probe,
    reap::SelfInfo,
    sys::clock::{mono_ns, WallClock},
    verdict::{Engine, HolderSample, Sample, SockSample, Verdict},
    who::{self, WhoOptions, WhoResult},
};

/// The ring buffer's pages are mapped into the agent (twice, for wrap-around) and
/// count towards its RSS; 4 MiB (~32k events) keeps idle RSS near 20 MiB and absorbs
/// storms of several hundred thousand events a second on watched ports.
pub const AGENT_RING_BYTES: u32 = 4 << 20;

/// Samples the TCP sockets on the ports, with holders and the kernel's counters.
/// sock_diag runs every tick; the holder search (the BPF iterator's pass over every
/// fd on the host, plus /proc details) only when a socket it has not seen appears,
/// and every `FULL_EVERY` ticks; in between, known holders' states are re-read from
/// /proc/PID/stat and gone ones dropped.
#[derive(Default)]
pub struct Sampler {
    holders: HashMap<u64, Vec<who::Holder>>,
    ticks: u64,
}

const FULL_EVERY: u64 = 10;

impl Sampler {
    pub fn sample(&mut self, cfg: &Config, obs: &Observer, probe_failures: &HashMap<u16, (u32, String)>) -> Result<(Sample, WhoResult)> {
        self.ticks += 1;
        let list: Vec<u16> = cfg.ports.iter().collect();
        let q = crate::sys::sockdiag::Query { tcp: true, udp: false, connections: false };
        let socks = crate::sys::sockdiag::sockets_on_ports(&list, q).map_err(|e| Error::io("sock_diag", e))?;
        let known = socks.iter().all(|s| self.holders.contains_key(&s.cookie));
        let r = if !known || self.ticks % FULL_EVERY == 1 {
            let r = who::gather(&cfg.ports, WhoOptions { tcp: true, prefetch: false, ..WhoOptions::default() })?;
            self.holders = r.sockets.iter().map(|s| (s.cookie, s.holders.clone())).collect();
            r
        } else {
            let sockets = socks
                .iter()
                .map(|s| {
                    let mut hs = self.holders.get(&s.cookie).cloned().unwrap_or_default();
                    hs.retain_mut(|h| match procfs::process::Process::new(h.proc.pid).and_then(|p| p.stat()) {
                        Ok(st) => {
                            h.proc.state = st.state;
                            true
                        }
                        Err(_) => false,
                    });
                    who::report(s, hs, false)
                })
                .collect();
            WhoResult { sockets, clients: Vec::new(), method: "cached", notes: Vec::new(), phases: Vec::new() }
        };
        let sockets = r
            .sockets
            .iter()
            .map(|s| SockSample {
                cookie: s.cookie,
                port: s.port,
                tcp: true,
                state: s.state,
                backlog: s.accept_queue.unwrap_or(0),
                max_backlog: s.backlog.unwrap_or(0),
                holders: s.holders.iter().map(|h| HolderSample { pid: h.proc.pid, ppid: h.proc.ppid, state: h.proc.state }).collect(),
            })
            .collect();
        // Only ports with a listener need the kernel counter (one map read each).
        let mut listening: Vec<u16> = r.sockets.iter().filter(|s| s.state == "listen").map(|s| s.port).collect();
        listening.dedup();
        let queued = listening.into_iter().map(|p| (p, obs.queued(p))).collect();
        let at = Duration::from_nanos(mono_ns());
        Ok((Sample { at, sockets, queued, probe_failures: probe_failures.clone() }, r))
    }
}

/// Probes run about once a second: every this many sampling ticks.
fn probe_every(cfg: &Config) -> u64 {
    (Duration::from_secs(1).as_nanos() / cfg.interval.as_nanos().max(1)).max(1) as u64
}

fn engine(cfg: &Config) -> Engine {
    Engine::new(cfg.stall, cfg.probes.iter().map(|p| (p.port, p.failures)).collect(), cfg.leftovers)
}

/// Runs every configured probe once, concurrently, and updates the failure streaks.
async fn run_probes(cfg: &Config, streaks: &mut HashMap<u16, (u32, String)>) {
    let results = join_all(cfg.probes.iter().map(|p| async move { (p.port, probe::run(p).await) }).collect()).await;
    for (port, r) in results {
        match r {
            Ok(()) => {
                streaks.remove(&port);
            }
            Err(e) => {
                let entry = streaks.entry(port).or_insert((0, String::new()));
                entry.0 += 1;
                entry.1 = e;
            }
        }
    }
}

/// Polls all futures together: probes have their own timeouts, and running them one
/// after another would add those up.
pub async fn join_all<F: std::future::Future>(futs: Vec<F>) -> Vec<F::Output> {
    use std::{pin::Pin, task::Poll};
    let mut futs: Vec<Pin<Box<F>>> = futs.into_iter().map(Box::pin).collect();
    let mut outs: Vec<Option<F::Output>> = futs.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (f, o) in futs.iter_mut().zip(outs.iter_mut()) {
            if o.is_none() {
                match f.as_mut().poll(cx) {
                    Poll::Ready(v) => *o = Some(v),
                    Poll::Pending => pending = true,
                }
            }
        }
        if pending {
            Poll::Pending
        } else {
            Poll::Ready(())
        }
    })
    .await;
    outs.into_iter().flatten().collect()
}

fn handle_step(step: Step, recorder: &mut Recorder) {
    let r = match step {
        Step::Emit(r) => *r,
        Step::Failed(attempt) => recorder.failed_bind(&attempt),
    };
    if let Some(m) = &recorder.metrics {
        m.event(if r.error.is_some() { "bind_failed" } else { r.event });
    }
    if r.event == "accept" {
        return;
    }
    match &r.error {
        Some(e) => {
            warn!(event = "bind_failed", error = %e, pid = ?r.pid, comm = ?r.comm, proto = r.proto, addr = %r.addr, port = r.port, "socket event")
        }
        // Every event is in the history and the metrics; logging each one would flood
        // the log pipeline in a bind storm (RUST_LOG=portwatch=debug shows them).
        None => {
            tracing::debug!(event = r.event, pid = ?r.pid, comm = ?r.comm, proto = r.proto, addr = %r.addr, port = r.port, "socket event")
        }
    }
    if r.error.is_none() {
        recorder.socket_event(&r);
    }
}

fn verdict_fields(v: &Verdict) -> (String, String) {
    let reasons: Vec<&str> = v.reasons.iter().map(|r| r.kind.name()).collect();
    let evidence: Vec<&str> = v.reasons.iter().map(|r| r.evidence.as_str()).collect();
    (reasons.join(","), evidence.join("; "))
}

/// Reaps the sockets of one verdict (holders taken from the same sample).
fn reap_verdict(v: &Verdict, r: &WhoResult, cfg: &Config, force: bool, dry_run: bool, me: &SelfInfo) -> PortReport {
    // Holders may be from the sampler's cache: look again before signalling anyone.
    let ports: crate::ports::PortSet = std::iter::once(v.port).collect();
    let fresh = who::gather(&ports, WhoOptions { tcp: true, ..WhoOptions::default() });
    let r = fresh.as_ref().unwrap_or(r);
    let socks: Vec<&who::SocketReport> = r.sockets.iter().filter(|s| s.cookie == v.cookie).collect();
    let opts = FreeOptions { force, grace: cfg.grace, dry_run, tcp: true, udp: false, protect: cfg.protect.clone() };
    free::reap_sockets(v.port, &socks, &opts, me)
}

fn log_reap(rep: &PortReport) {
    match (&rep.plan.refused, &rep.outcome) {
        (Some(why), _) => warn!(port = rep.port, reason = %why, "refused to reap"),
        (None, None) => {
            info!(port = rep.port, targets = ?rep.plan.targets.iter().map(|t| t.pid).collect::<Vec<_>>(), steps = ?rep.plan.steps, "dry run: would reap")
        }
        (None, Some(o)) => {
            let signals: Vec<String> = o.signals.iter().map(|s| format!("{}:{}", s.signal, s.pid)).collect();
            if o.freed {
                info!(port = rep.port, elapsed_ms = o.elapsed_ms, signals = ?signals, "reaped; port is free");
            } else {
                warn!(port = rep.port, elapsed_ms = o.elapsed_ms, survivors = ?o.survivors, signals = ?signals, "reaped, but the port is still held");
            }
        }
    }
}

/// Turns what the agent sees into history rows, with process details captured now.
struct Recorder {
    writer: Option<history::Writer>,
    metrics: Option<metrics::Metrics>,
    details: history::DetailsCache,
    /// Shared with the control socket: socket cookie -> (first seen, job), to say
    /// since when, and by which job, a port was held.
    shared: std::sync::Arc<control::Shared>,
    clock: WallClock,
    unpriv_start: u16,
}

impl Recorder {
    fn row(&mut self, time_ns: i64, event: &str, pid: Option<i32>) -> history::Row {
        let mut r = history::Row { time_ns, time: history::fmt_time(time_ns), event: event.into(), pid, ..history::Row::default() };
        if let Some(d) = pid.and_then(|p| self.details.get(p)) {
            r.ppid = Some(d.ppid);
            r.uid = Some(d.uid);
            r.comm = Some(d.comm);
            r.cmdline = Some(d.cmdline);
            r.cgroup = Some(d.cgroup);
            r.ancestry = Some(d.ancestry);
            r.job = d.job;
        }
        r
    }

    /// A row for a socket event, with the task's details.
    fn sock_row(&mut self, t: i64, event: &str, rec: &model::Record) -> history::Row {
        let mut r = self.row(t, event, rec.pid.map(|p| p as i32));
        if r.comm.is_none() {
            r.comm = rec.comm.clone();
        }
        r.port = Some(rec.port);
        r.proto = Some(rec.proto.to_string());
        r.addr = Some(rec.addr.clone());
        r.cookie = Some(rec.cookie);
        r
    }

    fn wall_ns(&self, mono_ns: u64) -> i64 {
        self.clock.wall(mono_ns).duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
    }

    fn socket_event(&mut self, rec: &model::Record) {
        if rec.event == "accept" {
            return;
        }
        let t = self.wall_ns(rec.ts_ns);
        let r = self.sock_row(t, rec.event, rec);
        {
            let mut seen = self.shared.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if rec.event == "bind" || rec.event == "listen" {
                seen.entry(rec.cookie).or_insert((t, r.job.as_deref().map(String::from)));
            }
            if rec.event == "close" {
                seen.remove(&rec.cookie);
            }
        }
        self.record(r);
    }

    /// A failed bind: who held the port at that moment, and since when.
    fn failed_bind(&mut self, attempt: &crate::ebpf::events::SockEvent) -> model::Record {
        let q = crate::sys::sockdiag::Query {
            tcp: attempt.proto == Some(crate::sys::sockdiag::Proto::Tcp),
            udp: attempt.proto == Some(crate::sys::sockdiag::Proto::Udp),
            connections: false,
        };
        let on_port: Vec<crate::sys::sockdiag::SockEntry> = crate::sys::sockdiag::sockets_on_ports(&[attempt.port], q).unwrap_or_default();
        let rec = model::infer_failure(attempt, &on_port, self.unpriv_start);
        if rec.error.is_none() {
            return rec;
        }
        let t = self.wall_ns(attempt.ts_ns);
        let mut r = self.sock_row(t, "bind_failed", &rec);
        r.error = rec.error.clone();
        if let Some(h) = &rec.held_by {
            // Only now, for a failure with a holder: which processes hold it.
            let ports: crate::ports::PortSet = std::iter::once(attempt.port).collect();
            let who = who::gather(&ports, WhoOptions { tcp: q.tcp, udp: q.udp, ..WhoOptions::default() }).unwrap_or_default();
            let holder = who.sockets.iter().find(|s| s.inode == h.inode);
            let mut d = match holder.and_then(|s| s.holders.first()) {
                Some(p) => format!("held by pid {} ({})", p.proc.pid, p.proc.comm),
                None => format!("held by a {} socket (inode {})", h.state, h.inode),
            };
            let seen = self.shared.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            if let Some((since, job)) = holder.and_then(|s| seen.get(&s.cookie)) {
                d.push_str(&format!(", since {}", history::fmt_time(*since)));
                if let Some(j) = job {
                    d.push_str(&format!(", job {j}"));
                }
            }
            r.detail = Some(d);
        }
        self.record(r);
        rec
    }

    fn verdict(&mut self, v: &Verdict) {
        if let Some(m) = &self.metrics {
            for r in &v.reasons {
                m.verdict(r.kind.name());
            }
        }
        let (reasons, evidence) = verdict_fields(v);
        let mut r = history::Row {
            time_ns: history::now_ns(),
            event: "stuck".into(),
            port: Some(v.port),
            cookie: Some(v.cookie),
            ..history::Row::default()
        };
        r.time = history::fmt_time(r.time_ns);
        r.error = Some(reasons);
        r.detail = Some(format!("{evidence}; pids {:?}", v.pids));
        self.record(r);
    }

    fn reap(&mut self, rep: &PortReport) {
        if let Some(m) = &self.metrics {
            let outcome = match (&rep.plan.refused, &rep.outcome) {
                (Some(_), _) => "refused",
                (None, None) => "dry_run",
                (None, Some(o)) if o.freed => "freed",
                (None, Some(_)) => "still_held",
            };
            m.reap(outcome);
            for sig in rep.outcome.iter().flat_map(|o| o.signals.iter()) {
                m.signal(sig.signal);
            }
        }
        let now = history::now_ns();
        if let Some(why) = &rep.plan.refused {
            let mut r = history::Row {
                time_ns: now,
                time: history::fmt_time(now),
                event: "refused".into(),
                port: Some(rep.port),
                ..history::Row::default()
            };
            r.detail = Some(why.clone());
            self.record(r);
        }
        if let Some(o) = &rep.outcome {
            for sig in &o.signals {
                let t = rep.plan.targets.iter().find(|t| t.pid == sig.pid);
                let mut r = history::Row {
                    time_ns: now,
                    time: history::fmt_time(now),
                    event: "signal".into(),
                    port: Some(rep.port),
                    pid: Some(sig.pid),
                    ..history::Row::default()
                };
                r.comm = t.map(|t| t.comm.clone());
                r.detail = Some(format!("{} {}", sig.signal, if sig.ok { "delivered" } else { "failed" }));
                self.record(r);
            }
            let mut r = history::Row {
                time_ns: now,
                time: history::fmt_time(now),
                event: "reaped".into(),
                port: Some(rep.port),
                ..history::Row::default()
            };
            r.detail = Some(format!("{} after {} ms", if o.freed { "port free" } else { "port still held" }, o.elapsed_ms));
            self.record(r);
        }
    }

    fn record(&self, r: history::Row) {
        if let Some(w) = &self.writer {
            w.record(r);
        }
    }
}

/// The long-running agent.
pub async fn run(cfg: Config, dry_run: bool) -> Result<()> {
    if cfg.ports.is_empty() {
        return Err(Error::Usage("no ports to watch: give --port or `ports` in the config".into()));
    }
    let mut obs = Observer::load(&ObserverOptions { ports: cfg.ports.clone(), cgroup: None, ring_bytes: Some(AGENT_RING_BYTES) })?;
    let ring = obs.take_events()?;
    // Sockets already on the watched ports: their close is reported too.
    let list: Vec<u16> = cfg.ports.iter().collect();
    let existing = crate::sys::sockdiag::sockets_on_ports(&list, crate::sys::sockdiag::Query::default()).unwrap_or_default();
    let seeded = obs.seed(&existing)?;
    // SAFETY: the ring buffer owns its fd and outlives the registration.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::io("polling the ring buffer", std::io::Error::other(e.to_string())))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let me = SelfInfo::current();
    let mut engine = engine(&cfg);
    let mut streaks: HashMap<u16, (u32, String)> = HashMap::new();
    let mut stuck: HashSet<u64> = HashSet::new();
    let writer = if cfg.history {
        let path = cfg.db.clone().unwrap_or_else(|| history::DEFAULT_DB.into());
        let retention = history::Retention { max_age: cfg.retention, max_rows: cfg.max_events };
        Some(history::Writer::start(&path, retention)?)
    } else {
        None
    };
    let metrics = match cfg.metrics {
        Some(addr) => {
            let (m, registry) = metrics::Metrics::new();
            metrics::serve(addr, std::sync::Arc::new(registry)).await?;
            info!(addr = %addr, "serving Prometheus metrics at /metrics");
            Some(m)
        }
        None => None,
    };
    let mut lost_seen = 0u64;
    let shared = std::sync::Arc::new(control::Shared {
        ports: cfg.ports.clone(),
        started: std::time::Instant::now(),
        db: cfg.history.then(|| cfg.db.clone().unwrap_or_else(|| history::DEFAULT_DB.into())),
        protect: cfg.protect.clone(),
        grace: cfg.grace,
        seen: std::sync::Mutex::new(HashMap::new()),
        stuck: std::sync::Mutex::new(Vec::new()),
        lost: std::sync::Mutex::new(0),
    });
    if let Some(path) = &cfg.socket {
        let mode = u32::from_str_radix(cfg.socket_mode.trim_start_matches("0o"), 8).unwrap_or(0o660);
        control::serve(path, mode, Some(&cfg.socket_group), shared.clone()).await?;
        info!(socket = %path.display(), mode = %format!("{mode:o}"), "control socket ready");
    }
    let mut recorder = Recorder {
        writer,
        metrics,
        details: history::DetailsCache::default(),
        shared: shared.clone(),
        clock: WallClock::new(),
        unpriv_start: 1024,
    };
    let mut tracker = BindTracker::new(crate::watch::BIND_WINDOW.as_nanos() as u64);
    let mut sampler = Sampler::default();
    let (reap_tx, mut reap_rx) = tokio::sync::mpsc::unbounded_channel::<PortReport>();
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let probe_every = probe_every(&cfg);
    let mut ticks: u64 = 0;
    let ports: Vec<u16> = cfg.ports.iter().collect();
    info!(ports = ?ports, existing_sockets = seeded, stall = %humantime::format_duration(cfg.stall), grace = %humantime::format_duration(cfg.grace), reap = cfg.reap, dry_run, "agent started");
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(|e| Error::io("ring buffer", e))?;
                let rb = guard.get_inner_mut();
                let mut steps = Vec::new();
                while let Some(item) = rb.next() {
                    if let Ok(ev) = decode(&item) {
                        steps.extend(tracker.push(ev));
                    }
                }
                guard.clear_ready();
                for step in steps {
                    handle_step(step, &mut recorder);
                }
            }
            _ = tick.tick() => {
                for attempt in tracker.expire(mono_ns()) {
                    handle_step(Step::Failed(attempt), &mut recorder);
                }
                ticks += 1;
                if !cfg.probes.is_empty() && ticks.is_multiple_of(probe_every) {
                    run_probes(&cfg, &mut streaks).await;
                }
                let (sample, who) = match sampler.sample(&cfg, &obs, &streaks) {
                    Ok(s) => s,
                    Err(e) => { warn!(error = %e, "sampling failed"); continue; }
                };
                let verdicts = engine.update(&sample);
                if let Some(m) = &recorder.metrics {
                    for port in cfg.ports.iter() {
                        let socks: Vec<&who::SocketReport> = who.sockets.iter().filter(|s| s.port == port).collect();
                        let pids: HashSet<i32> = socks.iter().flat_map(|s| s.holders.iter().map(|h| h.proc.pid)).collect();
                        let queue = socks.iter().filter_map(|s| s.accept_queue).map(u64::from).sum();
                        let max = socks.iter().filter_map(|s| s.backlog).map(u64::from).sum();
                        m.observe_port(port, socks.len(), pids.len(), queue, max, verdicts.iter().find(|v| v.port == port));
                    }
                    let lost = obs.lost();
                    m.lost.inc_by(lost.saturating_sub(lost_seen));
                    lost_seen = lost;
                }
                *shared.stuck.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = verdicts.iter().map(|v| v.port).collect();
                *shared.lost.lock().unwrap_or_else(std::sync::PoisonError::into_inner) = obs.lost();
                let now: HashSet<u64> = verdicts.iter().map(|v| v.cookie).collect();
                for v in &verdicts {
                    if stuck.insert(v.cookie) {
                        let (reasons, evidence) = verdict_fields(v);
                        warn!(port = v.port, reasons = %reasons, evidence = %evidence, pids = ?v.pids, "listener stuck");
                        recorder.verdict(v);
                        if cfg.reap {
                            // Off the event loop: a reap waits up to `grace`, and the
                            // ring buffer and other ports must not wait with it.
                            let (v, who, cfg, me, tx) = (v.clone(), who.clone(), cfg.clone(), me.clone(), reap_tx.clone());
                            tokio::task::spawn_blocking(move || {
                                let _ = tx.send(reap_verdict(&v, &who, &cfg, true, dry_run, &me));
                            });
                        }
                    }
                }
                for c in stuck.iter().filter(|c| !now.contains(c)).copied().collect::<Vec<_>>() {
                    stuck.remove(&c);
                    info!(cookie = c, "listener no longer stuck (recovered or closed)");
                }
            }
            Some(rep) = reap_rx.recv() => {
                log_reap(&rep);
                recorder.reap(&rep);
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    let lost = obs.lost();
    drop(ring);
    drop(obs);
    let dropped = recorder.writer.as_ref().map_or(0, |w| w.dropped.load(std::sync::atomic::Ordering::Relaxed));
    if dropped > 0 {
        warn!(dropped_rows = dropped, "history could not keep up; rows were dropped");
    }
    // Flushes what is queued for the database.
    drop(recorder);
    if let Some(path) = &cfg.socket {
        let _ = std::fs::remove_file(path);
    }
    info!(lost_events = lost, "agent stopped; hooks detached");
    Ok(())
}

#[derive(Debug, Serialize)]
pub struct CleanupReport {
    pub verdicts: Vec<Verdict>,
    pub reaped: Vec<PortReport>,
    /// Listeners on the ports judged healthy and left alone.
    pub healthy: Vec<u16>,
}

/// `cleanup`: observe the ports for `stall`, then reap what is stuck.
pub async fn cleanup(cfg: Config, force: bool, dry_run: bool) -> Result<(CleanupReport, u8)> {
    if cfg.ports.is_empty() {
        return Err(Error::Usage("no ports: give --port or a config with `ports`".into()));
    }
    let obs = Observer::load(&ObserverOptions { ports: cfg.ports.clone(), cgroup: None, ring_bytes: None })?;
    let mut engine = engine(&cfg);
    let mut streaks = HashMap::new();
    let mut sampler = Sampler::default();
    let start = tokio::time::Instant::now();
    let until = start + cfg.stall + cfg.interval;
    let mut tick = tokio::time::interval(cfg.interval);
    let probe_every = probe_every(&cfg);
    let mut n = 0u64;
    let (verdicts, who) = loop {
        tick.tick().await;
        if !cfg.probes.is_empty() && n.is_multiple_of(probe_every) {
            run_probes(&cfg, &mut streaks).await;
        }
        n += 1;
        let (s, who) = sampler.sample(&cfg, &obs, &streaks)?;
        let verdicts = engine.update(&s);
        if tokio::time::Instant::now() >= until {
            break (verdicts, who);
        }
    };
    let me = SelfInfo::current();
    let reaped: Vec<PortReport> = verdicts.iter().map(|v| reap_verdict(v, &who, &cfg, force, dry_run, &me)).collect();
    let stuck_ports: HashSet<u16> = verdicts.iter().map(|v| v.port).collect();
    let mut healthy: Vec<u16> = who.sockets.iter().map(|s| s.port).filter(|p| !stuck_ports.contains(p)).collect();
    healthy.sort_unstable();
    healthy.dedup();
    let code = free::exit_code(&reaped);
    Ok((CleanupReport { verdicts, reaped, healthy }, code))
}

pub fn render_cleanup(r: &CleanupReport, force: bool, grace: Duration) -> String {
    let mut s = String::new();
    if r.verdicts.is_empty() {
        s.push_str("no stuck listeners\n");
    }
    for v in &r.verdicts {
        let (reasons, evidence) = verdict_fields(v);
        s.push_str(&format!("port {}: stuck ({reasons}): {evidence}\n", v.port));
    }
    s.push_str(&free::render(&r.reaped, force, grace));
    for p in &r.healthy {
        s.push_str(&format!("port {p}: healthy, left alone\n"));
    }
    s
}
