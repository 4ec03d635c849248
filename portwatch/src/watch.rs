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
    ebpf::{events::decode, Observer, ObserverOptions},
    error::{Error, Result},
    model::{infer_failure, BindTracker, Step},
    output,
    ports::PortSet,
    sys::{
        clock::{mono_ns, WallClock},
        sockdiag::{self, Query},
    },
};

/// `watch` may print hundreds of thousands of events a second: a larger ring buffer
/// than the agent's absorbs bursts while the printer catches up.
pub const WATCH_RING_BYTES: u32 = 64 << 20;

/// How long a bind attempt may wait for its success event before it counts as failed.
pub const BIND_WINDOW: Duration = Duration::from_millis(50);

#[derive(Clone, Debug, Default)]
pub struct WatchOptions {
    pub ports: PortSet,
    pub json: bool,
    /// Stop after this long (default: until Ctrl-C / SIGTERM).
    pub duration: Option<Duration>,
    /// Stop after this many records.
    pub count: Option<u64>,
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Summary {
    pub events: u64,
    pub lost: u64,
}

struct Printer<W: Write> {
    out: W,
    json: bool,
    clock: WallClock,
    printed: u64,
    unpriv_start: u16,
}

impl<W: Write> Printer<W> {
    fn emit(&mut self, step: Step) -> io::Result<()> {
        let rec = match step {
            Step::Emit(mut r) => {
                if r.event == "listen" && r.port == 0 {
                    resolve_autobound(&mut r);
                }
                *r
            }
            Step::Failed(attempt) => {
                let q = Query {
                    tcp: attempt.proto == Some(sockdiag::Proto::Tcp),
                    udp: attempt.proto == Some(sockdiag::Proto::Udp),
                    connections: false,
                };
                let on_port = sockdiag::sockets_on_ports(&[attempt.port], q).unwrap_or_default();
                infer_failure(&attempt, &on_port, self.unpriv_start)
            }
        };
        let mut rec = rec;
        if self.json {
            output::write_json(&mut self.out, &mut rec, &self.clock)?;
        } else {
            writeln!(self.out, "{}", output::human_line(&rec, &self.clock))?;
        }
        self.printed += 1;
        Ok(())
    }
}

/// A listen() without bind() gets its port after the state change the kernel hook
/// sees; find it by socket cookie among the listeners.
/// The event can reach us before listen() has hashed the socket, so look a few
/// times (up to ~100 ms; only implicit-bind listens pay this).
fn resolve_autobound(r: &mut crate::model::Record) {
    if r.cookie == 0 {
        return;
    }
    for _ in 0..20 {
        let found = [sockdiag::AF_INET, sockdiag::AF_INET6]
            .into_iter()
            .filter_map(|f| sockdiag::dump(sockdiag::Proto::Tcp, f, 1 << sockdiag::TCP_LISTEN, &[]).ok())
            .flatten()
            .find(|s| s.cookie == r.cookie);
        if let Some(s) = found {
            r.port = s.port;
            r.addr = crate::model::fmt_addr(&s.addr);
            return;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn unprivileged_port_start() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_unprivileged_port_start").ok().and_then(|s| s.trim().parse().ok()).unwrap_or(1024)
}

fn describe(ports: &PortSet) -> String {
    if ports.is_empty() {
        return "all ports".into();
    }
    let v: Vec<String> = ports.iter().take(8).map(|p| p.to_string()).collect();
    let more = if ports.len() > 8 { format!(" and {} more", ports.len() - 8) } else { String::new() };
    format!("port{} {}{more}", if ports.len() == 1 { "" } else { "s" }, v.join(","))
}

pub async fn run(opts: WatchOptions) -> Result<Summary> {
    let mut obs = Observer::load(&ObserverOptions { ports: opts.ports.clone(), cgroup: None, ring_bytes: Some(WATCH_RING_BYTES) })?;
    let ring = obs.take_events()?;
    // SAFETY: the ring buffer owns its fd and lives as long as the AsyncFd, which
    // deregisters it before dropping it.
    let mut ring = unsafe { AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| Error::io("polling the ring buffer", io::Error::other(e.to_string())))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    // Block-buffered: stdout's own line buffering would cost a write per event.
    let stdout = io::stdout();
    let mut p = Printer {
        out: io::BufWriter::with_capacity(1 << 16, stdout.lock()),
        json: opts.json,
        clock: WallClock::new(),
        printed: 0,
        unpriv_start: unprivileged_port_start(),
    };
    let missing: Vec<&str> = obs.hooks.iter().filter(|h| !h.attached).map(|h| h.hook).collect();
    if !missing.is_empty() {
        eprintln!("portwatch: not attached (see `portwatch doctor`): {}", missing.join(", "));
    }
    eprintln!("portwatch: watching {} (Ctrl-C to stop)", describe(&opts.ports));
    if !opts.json {
        writeln!(p.out, "{}", output::HEADER).map_err(|e| Error::io("stdout", e))?;
        p.out.flush().map_err(|e| Error::io("stdout", e))?;
    }
    let mut tracker = BindTracker::new(BIND_WINDOW.as_nanos() as u64);
    let mut tick = tokio::time::interval(Duration::from_millis(20));
    let deadline = tokio::time::sleep(opts.duration.unwrap_or(Duration::from_secs(u64::MAX / 4)));
    tokio::pin!(deadline);
    let limit = opts.count.unwrap_or(u64::MAX);

    let result: io::Result<()> = async {
        loop {
            tokio::select! {
                guard = ring.readable_mut() => {
                    let mut guard = guard?;
                    let rb = guard.get_inner_mut();
                    while let Some(item) = rb.next() {
                        match decode(&item) {
                            Ok(ev) => for step in tracker.push(ev) { p.emit(step)?; },
                            Err(e) => eprintln!("portwatch: dropped a malformed event: {e}"),
                        }
                    }
                    guard.clear_ready();
                    p.out.flush()?;
                }
                _ = tick.tick() => {
                    for attempt in tracker.expire(mono_ns()) { p.emit(Step::Failed(attempt))?; }
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
                for step in tracker.push(ev) {
                    p.emit(step)?;
                }
            }
        }
        for attempt in tracker.expire(u64::MAX) {
            p.emit(Step::Failed(attempt))?;
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
    let summary = Summary { events: p.printed, lost: obs.lost() };
    eprintln!("portwatch: {} events, {} lost", summary.events, summary.lost);
    Ok(summary)
}
