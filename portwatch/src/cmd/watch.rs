//! `portwatch watch`: the live stream of binds, listens, accepts and closes.
use std::{
    io::{self, Write},
    time::Duration,
};

use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
};

use crate::{
    cli::WatchArgs,
    ebpf::{
        events::decode,
        observer::{Observer, ObserverOptions, DRAIN_EVERY},
    },
    error::{exit, Error, Result},
    model::{event::Record, ports::PortSet},
    output::watch::{human_line, write_json, HEADER},
    service::events::Pipeline,
    sys::clock::{mono_ns, WallClock},
};

/// `watch` may print hundreds of thousands of events a second: a larger ring buffer
/// than the agent's absorbs bursts while the printer catches up.
pub const WATCH_RING_BYTES: u32 = 64 << 20;

struct Printer<W: Write> {
    out: W,
    json: bool,
    clock: WallClock,
    printed: u64,
}

impl<W: Write> Printer<W> {
    fn emit(&mut self, mut rec: Record) -> io::Result<()> {
        if self.json {
            write_json(&mut self.out, &mut rec, &self.clock)?;
        } else {
            writeln!(self.out, "{}", human_line(&rec, &self.clock))?;
        }
        self.printed += 1;
        Ok(())
    }
}

fn describe(ports: &PortSet) -> String {
    if ports.is_empty() {
        return "all ports".into();
    }
    let v: Vec<String> = ports.iter().take(8).map(|p| p.to_string()).collect();
    let more = if ports.len() > 8 { format!(" and {} more", ports.len() - 8) } else { String::new() };
    format!("port{} {}{more}", if ports.len() == 1 { "" } else { "s" }, v.join(","))
}

pub fn run(a: WatchArgs) -> Result<u8> {
    let ports = crate::model::ports::merge(&a.ports);
    crate::cmd::runtime()?.block_on(watch(ports, a.json, a.duration, a.count, a.accepts))?;
    Ok(exit::OK)
}

async fn watch(ports: PortSet, json: bool, duration: Option<Duration>, count: Option<u64>, accepts: bool) -> Result<()> {
    let mut obs = Observer::load(&ObserverOptions { ports: ports.clone(), cgroup: None, ring_bytes: Some(WATCH_RING_BYTES), accepts })?;
    let ring = obs.take_events()?;
    // SAFETY: the ring buffer owns its fd and lives as long as the AsyncFd, which
    // deregisters it before dropping it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::io("polling the ring buffer", io::Error::other(e.to_string())))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    // Block-buffered: stdout's own line buffering would cost a write per event.
    let stdout = io::stdout();
    let mut p = Printer { out: io::BufWriter::with_capacity(1 << 16, stdout.lock()), json, clock: WallClock::new(), printed: 0 };
    let missing: Vec<&str> = obs.hooks.iter().filter(|h| !h.attached).map(|h| h.hook).collect();
    if !missing.is_empty() {
        eprintln!("portwatch: not attached (see `portwatch doctor`): {}", missing.join(", "));
    }
    eprintln!("portwatch: watching {} (Ctrl-C to stop)", describe(&ports));
    if !json {
        writeln!(p.out, "{HEADER}").map_err(|e| Error::io("stdout", e))?;
        p.out.flush().map_err(|e| Error::io("stdout", e))?;
    }
    let mut pipeline = Pipeline::new();
    // The kernel wakes this reader only when the ring fills past a watermark; the
    // tick drains what is waiting, so no event waits longer than DRAIN_EVERY.
    let mut tick = tokio::time::interval(DRAIN_EVERY);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let deadline = tokio::time::sleep(duration.unwrap_or(crate::model::time::MAX_DURATION));
    tokio::pin!(deadline);
    let limit = count.unwrap_or(u64::MAX);

    let result: io::Result<()> = async {
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    let rb = guard.get_inner_mut();
                    while let Some(item) = rb.next() {
                        match decode(&item) {
                            Ok(ev) => for r in pipeline.push(ev) { p.emit(r)?; },
                            Err(e) => eprintln!("portwatch: dropped a malformed event: {e}"),
                        }
                    }
                    guard.clear_ready();
                    p.out.flush()?;
                }
                _ = tick.tick() => {
                    let rb = ring.get_mut();
                    while let Some(item) = rb.next() {
                        match decode(&item) {
                            Ok(ev) => for r in pipeline.push(ev) { p.emit(r)?; },
                            Err(e) => eprintln!("portwatch: dropped a malformed event: {e}"),
                        }
                    }
                    pipeline.note_lost(obs.lost());
                    for r in pipeline.expire(mono_ns()) { p.emit(r)?; }
                    p.out.flush()?;
                }
                _ = sigint.recv() => break,
                _ = sigterm.recv() => break,
                () = &mut deadline => break,
            }
            if p.printed >= limit {
                break;
            }
        }
        // Whatever is still in the ring buffer, then attempts that can no longer succeed.
        let rb = ring.get_mut();
        while let Some(item) = rb.next() {
            if let Ok(ev) = decode(&item) {
                for r in pipeline.push(ev) {
                    p.emit(r)?;
                }
            }
        }
        for r in pipeline.expire(u64::MAX) {
            p.emit(r)?;
        }
        p.out.flush()
    }
    .await;
    match result {
        Ok(()) => {}
        // The reader went away (`| head`): not an error.
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => {}
        Err(e) => return Err(Error::io("watch", e)),
    }
    eprintln!("portwatch: {} events, {} lost", p.printed, obs.lost());
    Ok(())
}
