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
    ebpf::{events::decode, Observer, ObserverOptions},
    error::{Error, Result},
    free::{self, FreeOptions, PortReport},
    model,
    probe,
    reap::SelfInfo,
    sys::clock::mono_ns,
    verdict::{Engine, HolderSample, Sample, SockSample, Verdict},
    who::{self, WhoOptions, WhoResult},
};

/// Samples the TCP sockets on the ports, with holders and the kernel's counters.
pub fn sample(cfg: &Config, obs: &Observer, probe_failures: &HashMap<u16, (u32, String)>) -> Result<(Sample, WhoResult)> {
    let r = who::gather(&cfg.ports, WhoOptions { tcp: true, udp: false, clients: false, force_proc: false, prefetch: false })?;
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
            holders: s.holders.iter().map(|h| HolderSample { pid: h.pid, ppid: h.ppid, state: h.state.chars().next().unwrap_or('?') }).collect(),
        })
        .collect();
    // Only ports with a listener need the kernel counter (one map read each).
    let mut listening: Vec<u16> = r.sockets.iter().filter(|s| s.state == "listen").map(|s| s.port).collect();
    listening.dedup();
    let queued = listening.into_iter().map(|p| (p, obs.queued(p))).collect();
    let at = Duration::from_nanos(mono_ns());
    Ok((Sample { at, sockets, queued, probe_failures: probe_failures.clone() }, r))
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

fn verdict_fields(v: &Verdict) -> (String, String) {
    let reasons: Vec<&str> = v.reasons.iter().map(|r| r.kind.name()).collect();
    let evidence: Vec<&str> = v.reasons.iter().map(|r| r.evidence.as_str()).collect();
    (reasons.join(","), evidence.join("; "))
}

/// Reaps the sockets of one verdict (holders taken from the same sample).
fn reap_verdict(v: &Verdict, r: &WhoResult, cfg: &Config, force: bool, dry_run: bool, me: &SelfInfo) -> PortReport {
    let socks: Vec<&who::SocketReport> = r.sockets.iter().filter(|s| s.cookie == v.cookie).collect();
    let opts = FreeOptions { force, grace: cfg.grace, dry_run, tcp: true, udp: false, protect: cfg.protect.clone() };
    free::reap_sockets(v.port, &socks, &opts, me)
}

fn log_reap(rep: &PortReport) {
    match (&rep.plan.refused, &rep.outcome) {
        (Some(why), _) => warn!(port = rep.port, reason = %why, "refused to reap"),
        (None, None) => info!(port = rep.port, targets = ?rep.plan.targets.iter().map(|t| t.pid).collect::<Vec<_>>(), steps = ?rep.plan.steps, "dry run: would reap"),
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

/// The long-running agent.
pub async fn run(cfg: Config, dry_run: bool) -> Result<()> {
    if cfg.ports.is_empty() {
        return Err(Error::Usage("no ports to watch: give --port or `ports` in the config".into()));
    }
    let mut obs = Observer::load(&ObserverOptions { ports: cfg.ports.clone(), cgroup: None, ring_bytes: None })?;
    let ring = obs.take_events()?;
    // SAFETY: the ring buffer owns its fd and outlives the registration.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::io("polling the ring buffer", std::io::Error::other(e.to_string())))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    let me = SelfInfo::current();
    let mut engine = engine(&cfg);
    let mut streaks: HashMap<u16, (u32, String)> = HashMap::new();
    let mut stuck: HashSet<u64> = HashSet::new();
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let probe_every = (Duration::from_secs(1).as_nanos() / cfg.interval.as_nanos().max(1)).max(1) as u64;
    let mut ticks: u64 = 0;
    let ports: Vec<u16> = cfg.ports.iter().collect();
    info!(ports = ?ports, stall = %humantime::format_duration(cfg.stall), grace = %humantime::format_duration(cfg.grace), reap = cfg.reap, dry_run, "agent started");
    loop {
        tokio::select! {
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(|e| Error::io("ring buffer", e))?;
                let rb = guard.get_inner_mut();
                while let Some(item) = rb.next() {
                    if let Ok(ev) = decode(&item) {
                        let r = model::Record::from_event(&ev);
                        info!(event = r.event, pid = ?r.pid, comm = ?r.comm, proto = r.proto, addr = %r.addr, port = r.port, "socket event");
                    }
                }
                guard.clear_ready();
            }
            _ = tick.tick() => {
                ticks += 1;
                if !cfg.probes.is_empty() && ticks % probe_every == 0 {
                    run_probes(&cfg, &mut streaks).await;
                }
                let (sample, who) = match sample(&cfg, &obs, &streaks) {
                    Ok(s) => s,
                    Err(e) => { warn!(error = %e, "sampling failed"); continue; }
                };
                let verdicts = engine.update(&sample);
                let now: HashSet<u64> = verdicts.iter().map(|v| v.cookie).collect();
                for v in &verdicts {
                    if stuck.insert(v.cookie) {
                        let (reasons, evidence) = verdict_fields(v);
                        warn!(port = v.port, reasons = %reasons, evidence = %evidence, pids = ?v.pids, "listener stuck");
                        if cfg.reap {
                            let rep = reap_verdict(v, &who, &cfg, true, dry_run, &me);
                            log_reap(&rep);
                        }
                    }
                }
                for c in stuck.iter().filter(|c| !now.contains(c)).copied().collect::<Vec<_>>() {
                    stuck.remove(&c);
                    info!(cookie = c, "listener no longer stuck (recovered or closed)");
                }
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
        }
    }
    let lost = obs.lost();
    drop(ring);
    drop(obs);
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
    let start = tokio::time::Instant::now();
    let until = start + cfg.stall + cfg.interval;
    let mut tick = tokio::time::interval(cfg.interval);
    let probe_every = (Duration::from_secs(1).as_nanos() / cfg.interval.as_nanos().max(1)).max(1) as u64;
    let mut n = 0u64;
    let (verdicts, who) = loop {
        tick.tick().await;
        if !cfg.probes.is_empty() && n % probe_every == 0 {
            run_probes(&cfg, &mut streaks).await;
        }
        n += 1;
        let (s, who) = sample(&cfg, &obs, &streaks)?;
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
