//! Judging listeners over time: samples of the watched ports (sockets, holders,
//! the kernel's accept counters, health probes) fed to the verdict engine, and the
//! reaping of what it finds stuck. The agent runs this continuously; `cleanup` for
//! one stall period.
use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use serde::Serialize;

use crate::{
    config::Config,
    ebpf::observer::{Counts, Observer, ObserverOptions},
    error::{Error, Result},
    model::{
        plan::{Caller, PortReport},
        ports::PortSet,
        process::Holder,
        socket::Socket,
        verdict::{Engine, HolderSample, ProbeStreak, Queued, Sample, SockSample, Verdict},
    },
    service::{
        holders::{self, WhoOptions, WhoResult},
        join_all, probe,
        reaper::{self, FreeOptions},
        supervisor::tree::Abandoned,
    },
    sys::{
        clock::mono_ns,
        proc,
        sockdiag::{self, Query},
    },
};

/// Per-port consecutive probe failures.
pub type Streaks = HashMap<u16, ProbeStreak>;

/// Samples the TCP sockets on the ports, with holders and the kernel's counters.
/// sock_diag runs every tick; the holder search (the holders pass, plus /proc
/// details) only when a socket it has not seen appears, and every `FULL_EVERY`
/// ticks; in between, known holders' states are re-read from /proc/PID/stat and
/// gone ones dropped.
#[derive(Default)]
pub struct Sampler {
    holders: HashMap<u64, Vec<Holder>>,
    ticks: u64,
    /// Ports with a listener at the last sample: their accept counters are read
    /// before sock_diag too (see [`crate::model::verdict::Queued`]).
    listening: Vec<u16>,
}

const FULL_EVERY: u64 = 10;

/// What one tick of the sampler needs.
pub enum Tick {
    /// Nothing bound or listening on the watched ports: the (empty) sample, taken
    /// with a few map reads, cheap enough for the agent's own loop.
    Idle(Box<(Sample, WhoResult)>),
    /// A look at the ports ([`Sampler::look`]: sock_diag, /proc, maybe the
    /// holders pass), for the blocking pool. `tracked`: the kernel tracks a socket
    /// on them.
    Look { tracked: bool },
}

impl Sampler {
    pub fn sample(&mut self, ports: &PortSet, counts: &Counts, probe_failures: &Streaks) -> Result<(Sample, WhoResult)> {
        match self.tick(counts, probe_failures) {
            Tick::Idle(idle) => Ok(*idle),
            Tick::Look { tracked } => self.look(tracked, ports, counts, probe_failures),
        }
    }

    /// Starts a tick. Nothing bound or listening on the watched ports (the kernel
    /// tracks each such socket): an empty sample without sock_diag or a holders
    /// pass. Every FULL_EVERY ticks it looks anyway, and tracks what it finds (a
    /// tracked listener can be evicted from the LRU map by a storm of binds).
    pub fn tick(&mut self, counts: &Counts, probe_failures: &Streaks) -> Tick {
        self.ticks += 1;
        let tracked = counts.any_tracked();
        if tracked || self.ticks % FULL_EVERY == 1 {
            return Tick::Look { tracked };
        }
        self.holders.clear();
        self.listening.clear();
        let at = Duration::from_nanos(mono_ns());
        let sample = Sample { at, sockets: Vec::new(), queued: HashMap::new(), probe_failures: probe_failures.clone() };
        Tick::Idle(Box::new((sample, WhoResult { method: "none", ..WhoResult::default() })))
    }

    /// The rest of a tick that must look at the ports.
    pub fn look(&mut self, tracked: bool, ports: &PortSet, counts: &Counts, probe_failures: &Streaks) -> Result<(Sample, WhoResult)> {
        let list: Vec<u16> = ports.iter().collect();
        let q = Query { tcp: true, udp: false, connections: false };
        // The accept counters bracket the read of the accept queues: one map read
        // per listening port before sock_diag and one after.
        let before: HashMap<u16, u64> = self.listening.iter().map(|&p| (p, counts.queued(p))).collect();
        let socks = sockdiag::sockets_on_ports(&list, q).map_err(|e| Error::io("sock_diag", e))?;
        let mut listening: Vec<u16> = socks.iter().filter(|s| s.is_listener()).map(|s| s.port).collect();
        listening.sort_unstable();
        listening.dedup();
        let queued: HashMap<u16, Queued> =
            listening.iter().map(|&p| (p, Queued { before: before.get(&p).copied().unwrap_or(0), after: counts.queued(p) })).collect();
        // The queue lengths judged are these, read between the counters (the holders
        // pass reads the sockets again, later).
        let accept_queue: HashMap<u64, u32> = socks.iter().filter(|s| s.is_listener()).map(|s| (s.cookie, s.recv_q)).collect();
        self.listening = listening;
        if !tracked && !socks.is_empty() {
            counts.track(&socks);
        }
        let known = socks.iter().all(|s| self.holders.contains_key(&s.cookie));
        let r = if socks.is_empty() {
            // Nothing on the ports: no holders to look for.
            self.holders.clear();
            WhoResult { method: "none", ..WhoResult::default() }
        } else if !known || self.ticks % FULL_EVERY == 1 {
            let r = holders::gather(ports, WhoOptions::TCP)?;
            self.holders = r.sockets.iter().map(|s| (s.cookie, s.holders.clone())).collect();
            r
        } else {
            let sockets = socks
                .iter()
                .map(|s| {
                    let mut hs = self.holders.get(&s.cookie).cloned().unwrap_or_default();
                    hs.retain_mut(|h| match proc::start_and_state(h.proc.pid) {
                        Some((start, state)) if start == h.proc.start_ticks => {
                            h.proc.state = state;
                            true
                        }
                        _ => false,
                    });
                    Socket::new(s, hs, false)
                })
                .collect();
            WhoResult { sockets, method: "cached", ..WhoResult::default() }
        };
        let sockets = r
            .sockets
            .iter()
            .map(|s| SockSample {
                cookie: s.cookie,
                port: s.port,
                tcp: true,
                state: s.state,
                addr: s.addr,
                backlog: accept_queue.get(&s.cookie).copied().or(s.accept_queue).unwrap_or(0),
                max_backlog: s.backlog.unwrap_or(0),
                holders: s.holders.iter().map(|h| HolderSample { pid: h.proc.pid, ppid: h.proc.ppid, state: h.proc.state }).collect(),
            })
            .collect();
        let at = Duration::from_nanos(mono_ns());
        Ok((Sample { at, sockets, queued, probe_failures: probe_failures.clone() }, r))
    }
}

/// Probes run about once a second: every this many sampling ticks.
pub fn probe_every(cfg: &Config) -> u64 {
    (Duration::from_secs(1).as_nanos() / cfg.interval.as_nanos().max(1)).max(1) as u64
}

pub fn engine(cfg: &Config) -> Engine {
    Engine::new(cfg.stall, cfg.probes.iter().map(|p| (p.port, p.failures)).collect(), cfg.leftovers)
}

/// Runs every configured probe once, concurrently, and updates the failure streaks.
pub async fn run_probes(cfg: &Config, streaks: &mut Streaks) {
    let results = join_all(cfg.probes.iter().map(|p| async move { (p.port, probe::run(p).await) }).collect()).await;
    for (port, (target, r)) in results {
        match r {
            Ok(()) => {
                streaks.remove(&port);
            }
            Err(error) => {
                let entry = streaks.entry(port).or_default();
                entry.failures += 1;
                entry.error = error;
                entry.target = target;
            }
        }
    }
}

/// Reaps the sockets of one verdict. Holders may be from the sampler's cache, so it
/// looks again, and plans from that one look.
pub fn reap_verdict(v: &Verdict, cfg: &Config, force: bool, dry_run: bool, caller: &Caller) -> PortReport {
    let ports: PortSet = std::iter::once(v.port).collect();
    let fresh = holders::gather(&ports, WhoOptions::TCP).unwrap_or_default();
    let socks: Vec<&Socket> = fresh.sockets.iter().filter(|s| s.cookie == v.cookie).collect();
    let opts = FreeOptions { force, grace: cfg.grace, dry_run, tcp: true, udp: false, protect: cfg.protect.clone() };
    reaper::reap_sockets(v.port, &socks, &opts, caller)
}

#[derive(Debug, Serialize)]
pub struct CleanupReport {
    pub verdicts: Vec<Verdict>,
    pub reaped: Vec<PortReport>,
    /// Listeners on the ports judged healthy and left alone.
    pub healthy: Vec<u16>,
    /// Runs killed before they could end their processes, and what was done.
    pub runs: Vec<Abandoned>,
}

/// `cleanup`: observe the ports for `stall`, then reap what is stuck.
pub async fn cleanup(cfg: &Config, force: bool, dry_run: bool) -> Result<CleanupReport> {
    if cfg.ports.is_empty() {
        return Err(Error::Usage("no ports: give --port or a config with `ports`".into()));
    }
    let obs = Observer::load(&ObserverOptions { ports: cfg.ports.clone(), cgroup: None, ring_bytes: None, accepts: false })?;
    let mut obs = obs;
    // Listeners already on the ports: tracked, so the sampler sees them (and their
    // close is reported).
    let list: Vec<u16> = cfg.ports.iter().collect();
    obs.seed(&sockdiag::sockets_on_ports(&list, Query::default()).unwrap_or_default())?;
    let counts = obs.counts();
    let mut engine = engine(cfg);
    let mut streaks = Streaks::new();
    let mut sampler = Sampler::default();
    let start = tokio::time::Instant::now();
    let until = start + cfg.stall + cfg.interval;
    let mut tick = tokio::time::interval(cfg.interval);
    let probe_every = probe_every(cfg);
    let mut n = 0u64;
    let (verdicts, who) = loop {
        tick.tick().await;
        if !cfg.probes.is_empty() && n.is_multiple_of(probe_every) {
            run_probes(cfg, &mut streaks).await;
        }
        n += 1;
        let (s, who) = sampler.sample(&cfg.ports, &counts, &streaks)?;
        let verdicts = engine.update(&s);
        if tokio::time::Instant::now() >= until {
            break (verdicts, who);
        }
    };
    let caller = reaper::caller_self();
    let reaped: Vec<PortReport> = verdicts.iter().map(|v| reap_verdict(v, cfg, force, dry_run, &caller)).collect();
    let stuck_ports: HashSet<u16> = verdicts.iter().map(|v| v.port).collect();
    let mut healthy: Vec<u16> = who.sockets.iter().map(|s| s.port).filter(|p| !stuck_ports.contains(p)).collect();
    healthy.sort_unstable();
    healthy.dedup();
    Ok(CleanupReport { verdicts, reaped, healthy, runs: Vec::new() })
}
