//! The long-running agent: follows the kernel's socket events on the watched ports
//! into the history, judges listeners continuously, logs each verdict with its
//! evidence, reaps stuck ones (with `reap`), and serves the control socket and the
//! metrics. This module is the event loop only.
use std::{
    collections::HashSet,
    sync::{Arc, Mutex},
    time::Instant,
};

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};
use tracing::{info, warn};

pub mod control;
pub mod history;
pub mod metrics;
pub mod pump;
pub mod recorder;
pub mod shared;

use self::{
    control::server::Reaped,
    history::writer::{Retention, Writer},
    pump::{drain, Msg, Pump, BATCH},
    recorder::Recorder,
    shared::{lock, Origin, Shared},
};
use crate::{
    config::{Config, DEFAULT_DB},
    ebpf::{
        iter,
        loader::Loader,
        observer::{Observer, ObserverOptions},
    },
    error::{Error, Result},
    model::{
        event::{Record, SockEvent},
        plan::PortReport,
        verdict::{Sample, Verdict},
    },
    output::esc,
    service::{
        holders::WhoResult,
        judge::{self, Sampler, Streaks, Tick},
        reaper,
        supervisor::tree,
    },
    sys::{
        clock::mono_ns,
        sockdiag::{self, Query},
    },
};

/// The ring buffer's pages are mapped into the agent (twice, for wrap-around) and
/// count towards its RSS. 2 MiB (~15k events): accepts no longer pass through it,
/// and with the event thread's two batches of 8192 waiting beside it the agent
/// buffers as many events as the 4 MiB ring did alone, for 4 MiB less RSS.
pub const AGENT_RING_BYTES: u32 = 2 << 20;

/// The agent needs no interactive latency: its records wait in the ring buffer up
/// to 50 ms (or until the fill watermark wakes it), which keeps an idle agent's
/// wakeups to 20 a second.
const AGENT_DRAIN_EVERY: std::time::Duration = std::time::Duration::from_millis(50);

/// Empty drains in a row (200 ms without a record) after which the agent goes back
/// to the kernel's own wakeups and stops its drain timer.
const IDLE_DRAINS: u32 = 4;

/// Reaps recorded from the control socket, queued for the recorder at most.
const REAPED_QUEUE: usize = 256;

fn log_record(r: &Record) {
    match &r.error {
        Some(e) => {
            let holder_pid = r.held_by.as_ref().and_then(|h| h.pids.first().copied());
            // Names are chosen by processes: escaped, so none can forge a log line.
            let holder_comm = r.held_by.as_ref().and_then(|h| h.comm.as_deref()).map(|c| esc(c).into_owned());
            let comm = r.comm.as_deref().map(|c| esc(c).into_owned());
            let held_by = r.held_by.as_ref().map(|h| crate::output::watch::held_by(h, r.port));
            warn!(event = "bind_failed", error = e.name(), pid = r.pid, comm = comm.as_deref(), proto = r.proto.map(|p| p.name()), addr = %r.addr, port = r.port, holder_pid, holder_comm = holder_comm.as_deref(), held_by = held_by.as_deref(), "bind failed")
        }
        // Every event is in the history and the metrics; logging each one would flood
        // the log pipeline in a bind storm (RUST_LOG=portwatch=debug shows them).
        None if tracing::enabled!(tracing::Level::DEBUG) => {
            let comm = r.comm.as_deref().map(|c| esc(c).into_owned());
            tracing::debug!(event = r.event.name(), pid = r.pid, comm = comm.as_deref(), proto = r.proto.map(|p| p.name()), addr = %r.addr, port = r.port, "socket event")
        }
        None => {}
    }
}

fn verdict_fields(v: &Verdict) -> (String, String) {
    let reasons: Vec<&str> = v.reasons.iter().map(|r| r.kind.name()).collect();
    let evidence: Vec<&str> = v.reasons.iter().map(|r| r.evidence.as_str()).collect();
    (reasons.join(","), evidence.join("; "))
}

/// How often the agent looks for cgroups of killed runs.
const RUNS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

fn log_reap(rep: &PortReport) {
    match (&rep.plan.refused, &rep.outcome) {
        (Some(why), _) => warn!(port = rep.port, reason = %esc(&why.to_string()), "refused to reap"),
        (None, None) => {
            let targets: Vec<i32> = rep.plan.targets.iter().map(|t| t.proc.pid).collect();
            info!(port = rep.port, targets = ?targets, steps = ?rep.plan.steps, "dry run: would reap")
        }
        (None, Some(o)) => {
            let signals: Vec<String> = o.signals.iter().map(|s| format!("{}:{}", s.signal.name(), s.pid)).collect();
            if o.freed {
                info!(port = rep.port, elapsed_ms = o.elapsed_ms, signals = ?signals, "reaped; port is free");
            } else {
                warn!(port = rep.port, elapsed_ms = o.elapsed_ms, survivors = ?o.survivors, signals = ?signals, "reaped, but the port is still held");
            }
        }
    }
}

/// Tells systemd about the agent's state (nothing outside systemd).
fn sd_notify(state: &str) {
    if let Err(e) = crate::sys::notify::notify(state) {
        warn!(error = %e, state, "could not notify systemd");
    }
}

/// Lifts the soft limit on open files to the hard one: the agent holds a socket
/// per control or metrics client, pidfds while reaping, and files while sampling
/// (the connection limits keep clients well below it).
fn raise_nofile() {
    use nix::sys::resource::{getrlimit, setrlimit, Resource};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE) {
        if soft < hard {
            let _ = setrlimit(Resource::RLIMIT_NOFILE, hard, hard);
        }
    }
}

/// The long-running agent.
pub async fn run(cfg: Config, dry_run: bool) -> Result<()> {
    if cfg.ports.is_empty() {
        return Err(Error::Usage("no ports to watch: give --port or `ports` in the config".into()));
    }
    raise_nofile();
    // One loader for the observer and the `who` iterators the sampler reads: kernel
    // BTF is read once, and its memory is given back before the agent settles.
    let loader = Loader::new()?;
    let mut obs =
        // Accept-queue arrivals are only counted in the kernel (the verdict needs the
        // count): no ring-buffer record, no user-space work per connection.
        Observer::load_with(
            &loader,
            &ObserverOptions { ports: cfg.ports.clone(), cgroup: None, ring_bytes: Some(AGENT_RING_BYTES), accepts: false },
        )?;
    if let Err(e) = iter::ensure_pinned(&loader) {
        warn!(error = %e, "the who iterators could not be pinned; holders are found by walking /proc");
    }
    drop(loader);
    let ring = obs.take_events()?;
    // Sockets already on the watched ports: their close is reported too.
    let list: Vec<u16> = cfg.ports.iter().collect();
    let existing = sockdiag::sockets_on_ports(&list, Query::default()).unwrap_or_default();
    let seeded = obs.seed(&existing)?;
    // SAFETY: the ring buffer owns its fd and outlives the registration.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::io("polling the ring buffer", std::io::Error::other(e.to_string())))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    // A hangup (a closed terminal, `systemctl kill -s HUP`) stops the agent as
    // SIGTERM does: cleanly, with every queued row written.
    let mut sighup = signal(SignalKind::hangup()).map_err(|e| Error::io("SIGHUP handler", e))?;
    let me = reaper::caller_self();
    let mut engine = judge::engine(&cfg);
    let mut streaks = Streaks::new();
    let mut stuck: HashSet<u64> = HashSet::new();
    let db = cfg.history.then(|| cfg.db.clone().unwrap_or_else(|| DEFAULT_DB.into()));
    // Never fails: a database that cannot be used is reported (status, metrics,
    // log) and tried again, and the agent observes, judges and reaps meanwhile.
    let writer = db
        .as_ref()
        .map(|path| Writer::start(path, Retention { max_age: cfg.retention, max_rows: cfg.max_events, max_bytes: cfg.max_db_size }));
    let metrics = match cfg.metrics {
        Some(addr) => {
            let (m, mut registry) = metrics::Metrics::new();
            if let Some(w) = &writer {
                metrics::register_history(&mut registry, &w.health);
            }
            metrics::serve(addr, Arc::new(registry)).await?;
            info!(addr = %addr, "serving Prometheus metrics at /metrics");
            Some(m)
        }
        None => None,
    };
    let mut lost_seen = 0u64;
    let shared = Arc::new(Shared {
        ports: cfg.ports.clone(),
        started: Instant::now(),
        db,
        history: writer.as_ref().map(|w| w.health.clone()),
        protect: cfg.protect.clone(),
        grace: cfg.grace,
        seen: Mutex::new(Default::default()),
        stuck: Mutex::new(Vec::new()),
        lost: Mutex::new(0),
    });
    let (reaped_tx, mut reaped_rx) = tokio::sync::mpsc::channel::<Reaped>(REAPED_QUEUE);
    if let Some(path) = &cfg.socket {
        let mode = u32::from_str_radix(cfg.socket_mode.trim_start_matches("0o"), 8).unwrap_or(0o660);
        control::server::serve(path, mode, Some(&cfg.socket_group), shared.clone(), reaped_tx.clone()).await?;
        info!(socket = %path.display(), mode = %format!("{mode:o}"), "control socket ready");
    }
    let recorder = Arc::new(Mutex::new(Recorder::new(writer, metrics.clone(), shared.clone())));
    // Events become records on a thread of their own (sock_diag, /proc): the loop
    // only drains the ring buffer.
    let pump = Pump::start(recorder.clone(), log_record).map_err(|e| Error::io("starting the event thread", e))?;
    // Records waiting for the event thread (it has a batch already): the ring
    // buffer is not drained until they are handed over.
    let mut pending: Option<Vec<SockEvent>> = None;
    // The kernel wakes the loop only past a fill watermark; this drains the rest.
    // While nothing arrives the agent uses the kernel's own wakeups (one when a
    // record lands in an empty ring) and no drain timer; the first records switch
    // it to batched wakeups and the timer, IDLE_DRAINS empty drains switch back.
    obs.set_batched_wakeups(false)?;
    let mut batched = false;
    let mut empty_drains = 0u32;
    let mut drain_tick = tokio::time::interval(AGENT_DRAIN_EVERY);
    drain_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The sampler (sock_diag, the holders pass, /proc) runs on the blocking pool,
    // one sample at a time; the loop keeps draining the ring meanwhile.
    let counts = obs.counts();
    let mut sampler = Some(Sampler::default());
    type SampleJob = tokio::task::JoinHandle<(Sampler, Result<(Sample, WhoResult)>)>;
    let mut sampling: Option<SampleJob> = None;
    let mut accepted_seen: std::collections::HashMap<u16, u64> = std::collections::HashMap::new();
    let mut tick = tokio::time::interval(cfg.interval);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let probe_every = judge::probe_every(&cfg);
    let mut ticks: u64 = 0;
    // When the tick last read the ring buffer to its end (see Msg::Tick).
    let mut drained_ns: u64 = 0;
    // systemd (Type=notify): ready once the hooks are attached, the control socket
    // listens and the metrics are served.
    sd_notify(&format!("READY=1\nSTATUS=watching {} port(s)", list.len()));
    info!(ports = ?list, existing_sockets = seeded, stall = %crate::model::time::human(cfg.stall), grace = %crate::model::time::human(cfg.grace), reap = cfg.reap, dry_run, "agent started");
    // Runs killed before they ended their processes leave a cgroup behind: looked for
    // now and then, ended with --reap (one search at a time, off the loop).
    let mut runs_tick = tokio::time::interval(RUNS_EVERY);
    runs_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let runs_busy = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    loop {
        tokio::select! {
            _ = runs_tick.tick(), if !runs_busy.load(std::sync::atomic::Ordering::Relaxed) => {
                runs_busy.store(true, std::sync::atomic::Ordering::Relaxed);
                let (cfg, me, busy) = (cfg.clone(), me.clone(), runs_busy.clone());
                tokio::task::spawn_blocking(move || {
                    // Leases whose holder is gone: a killed run's (enforced no more)
                    // and a removed cgroup's (which would refuse every bind).
                    for name in crate::service::lease::sweep() {
                        warn!(holder = %esc(&name), "removed a stale lease");
                    }
                    let runs = if cfg.reap { tree::end_abandoned(&me, &cfg.protect, cfg.grace, dry_run) } else { Vec::new() };
                    for run in runs {
                        let pids: Vec<i32> = run.leftovers.iter().map(|l| l.proc.pid).collect();
                        let signals: Vec<String> = run.ending.outcome.signals.iter().map(|s| format!("{} {}", s.signal.name(), s.pid)).collect();
                        warn!(cgroup = %esc(&run.run.dir.display().to_string()), supervisor = run.run.owner.pid, pids = ?pids, signals = ?signals, removed = run.removed, dry_run, "ended what a killed run left");
                    }
                    busy.store(false, std::sync::atomic::Ordering::Relaxed);
                });
            }
            guard = ring.readable_mut(), if pending.is_none() => {
                let mut guard = guard.map_err(|e| Error::io("ring buffer", e))?;
                let mut batch = Vec::new();
                if !drain(guard.get_inner_mut(), &mut batch, BATCH) {
                    guard.clear_ready();
                }
                drop(guard);
                if !batched && !batch.is_empty() {
                    obs.set_batched_wakeups(true)?;
                    batched = true;
                    empty_drains = 0;
                    drain_tick.reset();
                }
                if !batch.is_empty() {
                    pending = pump.try_send_events(batch);
                }
            }
            _ = drain_tick.tick(), if pending.is_none() && batched => {
                let mut batch = Vec::new();
                drain(ring.get_mut(), &mut batch, BATCH);
                empty_drains = if batch.is_empty() { empty_drains + 1 } else { 0 };
                if empty_drains >= IDLE_DRAINS {
                    // Back to the kernel's wakeups; what was written meanwhile
                    // without one is taken now.
                    obs.set_batched_wakeups(false)?;
                    batched = false;
                    drain(ring.get_mut(), &mut batch, BATCH);
                }
                if !batch.is_empty() {
                    pending = pump.try_send_events(batch);
                }
            }
            Some(permit) = pump.reserve(), if pending.is_some() => {
                // The event thread took the previous batch: hand over the one waiting
                // (meanwhile the ring buffer was the buffer).
                if let Some(b) = pending.take() {
                    permit.send(Msg::Events(b));
                }
            }
            _ = tick.tick() => {
                // What the ring holds goes to the event thread before the tick that
                // expires bind attempts: in batched mode a bind's success can wait
                // in the ring for a drain tick, and its attempt, read earlier, must
                // not be judged failed meanwhile (it was, once, under TCG: one
                // bind recorded twice). Also the last resort for a record a kernel
                // program wrote without a wakeup while the mode switched back.
                if pending.is_none() {
                    let at = mono_ns();
                    let mut batch = Vec::new();
                    let more = drain(ring.get_mut(), &mut batch, BATCH);
                    if !batch.is_empty() {
                        pending = pump.try_send_events(batch);
                    }
                    if !more {
                        drained_ns = at;
                    }
                }
                // Expiring bind attempts waits for a free slot behind every batch
                // read (a later tick does it).
                if pending.is_none() {
                    let _ = pump.try_send(Msg::Tick { lost: obs.lost(), drained_ns });
                }
                ticks += 1;
                if !cfg.probes.is_empty() && ticks.is_multiple_of(probe_every) {
                    judge::run_probes(&cfg, &mut streaks).await;
                }
                if let Some(mut s) = sampler.take() {
                    sampling = Some(match s.tick(&counts, &streaks) {
                        // Nothing on the ports (a few map reads told): finished on
                        // this thread, without waking a blocking-pool thread twice a
                        // tick (most of an idle agent's CPU on this VM).
                        Tick::Idle(idle) => tokio::spawn(async move { (s, Ok(*idle)) }),
                        Tick::Look { tracked } => {
                            let (ports, counts, streaks) = (cfg.ports.clone(), counts.clone(), streaks.clone());
                            tokio::task::spawn_blocking(move || {
                                let r = s.look(tracked, &ports, &counts, &streaks);
                                (s, r)
                            })
                        }
                    });
                }
            }
            done = async { match sampling.as_mut() { Some(job) => job.await, None => std::future::pending().await } }, if sampling.is_some() => {
                sampling = None;
                let (s, r) = done.map_err(|e| Error::Internal(format!("the sampler panicked: {e}")))?;
                sampler = Some(s);
                let (sample, who) = match r {
                    Ok(s) => s,
                    Err(e) => { warn!(error = %e, "sampling failed"); continue; }
                };
                // Sockets the agent did not see bound: an `observed` history row each.
                // (A /proc read for a socket seen twice unseen: rare, and brief.)
                lock(&recorder).observe(who.sockets.iter().filter(|s| cfg.ports.contains(s.port)));
                let verdicts = engine.update(&sample);
                if let Some(m) = &metrics {
                    for port in cfg.ports.iter() {
                        let socks: Vec<_> = who.on_port(port).collect();
                        let pids: HashSet<i32> = socks.iter().flat_map(|s| s.holders.iter().map(|h| h.proc.pid)).collect();
                        let queue = socks.iter().filter_map(|s| s.accept_queue).map(u64::from).sum();
                        let max = socks.iter().filter_map(|s| s.backlog).map(u64::from).sum();
                        m.observe_port(port, socks.len(), pids.len(), queue, max, verdicts.iter().find(|v| v.port == port));
                    }
                    // Accepts are counted in the kernel, not sent as events.
                    for (port, n) in sample.queued.iter().map(|(p, q)| (p, &q.after)) {
                        let before = accepted_seen.insert(*port, *n).unwrap_or(0);
                        if *n > before {
                            m.events.get_or_create(&metrics::EventLabel { event: "accept".into() }).inc_by(*n - before);
                        }
                    }
                    let lost = obs.lost();
                    m.lost.inc_by(lost.saturating_sub(lost_seen));
                    lost_seen = lost;
                    m.kernel_errors(&obs.errors());
                }
                *lock(&shared.stuck) = verdicts.iter().map(|v| v.port).collect();
                *lock(&shared.lost) = obs.lost();
                let now: HashSet<u64> = verdicts.iter().map(|v| v.cookie).collect();
                for v in &verdicts {
                    if stuck.insert(v.cookie) {
                        let (reasons, evidence) = verdict_fields(v);
                        warn!(port = v.port, reasons = %reasons, evidence = %evidence, pids = ?v.pids, "listener stuck");
                        lock(&recorder).verdict(v);
                        if cfg.reap {
                            // Off the event loop: a reap waits up to `grace`, and the
                            // ring buffer and other ports must not wait with it.
                            let (v, cfg, me, tx) = (v.clone(), cfg.clone(), me.clone(), reaped_tx.clone());
                            tokio::task::spawn_blocking(move || {
                                let rep = judge::reap_verdict(&v, &cfg, true, dry_run, &me);
                                let _ = tx.blocking_send((rep, Origin::Agent));
                            });
                        }
                    }
                }
                for c in stuck.iter().filter(|c| !now.contains(c)).copied().collect::<Vec<_>>() {
                    stuck.remove(&c);
                    info!(cookie = c, "listener no longer stuck (recovered or closed)");
                }
            }
            Some((rep, origin)) = reaped_rx.recv() => {
                if origin == Origin::Agent {
                    log_reap(&rep);
                }
                lock(&recorder).reap(&rep, origin);
            }
            _ = sigint.recv() => break,
            _ = sigterm.recv() => break,
            _ = sighup.recv() => break,
        }
    }
    sd_notify("STOPPING=1\nSTATUS=stopping: detaching hooks, flushing history");
    // What is still in the ring buffer; the event thread then expires attempts that
    // can no longer succeed.
    let mut rest = pending.take().unwrap_or_default();
    drain(ring.get_mut(), &mut rest, usize::MAX);
    pump.finish(rest).await;
    if let Some(job) = sampling.take() {
        let _ = job.await;
    }
    let lost = obs.lost();
    // Kernel programs' error counts, by program, when any: for the stop line.
    let mut kernel_errors: Vec<String> = obs.errors().into_iter().filter(|&(_, n)| n > 0).map(|(p, n)| format!("{p} {n}")).collect();
    let malformed = pump::MALFORMED.load(std::sync::atomic::Ordering::Relaxed);
    if malformed > 0 {
        kernel_errors.push(format!("malformed events {malformed}"));
    }
    drop(ring);
    drop(obs);
    let recorder = match Arc::try_unwrap(recorder) {
        Ok(m) => m.into_inner().unwrap_or_else(std::sync::PoisonError::into_inner),
        Err(_) => return Err(Error::Internal("the recorder is still shared at exit".into())),
    };
    let health = recorder.writer.as_ref().map(|w| w.health.clone());
    // Flushes what is queued for the database.
    drop(recorder);
    if let Some(h) = health {
        if h.dropped.get() > 0 {
            warn!(dropped_rows = h.dropped.get(), "history could not keep up; rows were dropped");
        }
        if h.failed.get() > 0 {
            warn!(failed_rows = h.failed.get(), "history rows could not be stored (see the history database errors above)");
        }
    }
    if let Some(path) = &cfg.socket {
        let _ = control::server::remove_stale(path);
    }
    if kernel_errors.is_empty() {
        info!(lost_events = lost, "agent stopped; hooks detached");
    } else {
        info!(lost_events = lost, kernel_errors = %kernel_errors.join(", "), "agent stopped; hooks detached");
    }
    Ok(())
}
