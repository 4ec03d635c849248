//! Prometheus metrics for the agent (`--metrics ADDR`), served at `/metrics` in the
//! text exposition format by a small HTTP responder.
use std::{
    collections::HashMap,
    net::SocketAddr,
    sync::{Arc, Mutex},
};

use prometheus_client::{
    encoding::{text::encode, EncodeLabelSet},
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpListener,
};

use crate::{
    agent::{history::writer::Health, shared::lock},
    error::{Error, Result},
    model::verdict::Verdict,
    sys::proc::SelfUsage,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PortLabel {
    pub port: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct StuckLabel {
    pub port: u16,
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EventLabel {
    pub event: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabel {
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SignalLabel {
    pub signal: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ProgramLabel {
    pub program: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VersionLabel {
    pub version: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabel {
    pub outcome: String,
}

/// Every metric the agent exports; cheap to clone (shared atomics).
#[derive(Clone)]
pub struct Metrics {
    pub held: Family<PortLabel, Gauge>,
    pub holders: Family<PortLabel, Gauge>,
    pub accept_queue: Family<PortLabel, Gauge>,
    pub accept_queue_max: Family<PortLabel, Gauge>,
    pub stuck: Family<StuckLabel, Gauge>,
    pub events: Family<EventLabel, Counter>,
    pub verdicts: Family<ReasonLabel, Counter>,
    pub signals: Family<SignalLabel, Counter>,
    pub reaps: Family<OutcomeLabel, Counter>,
    pub lost: Counter,
    /// Errors each kernel program counted (failed kernel reads...).
    pub kernel_errors: Family<ProgramLabel, Gauge>,
    /// What each port's gauges were last set to: a sample that changes nothing
    /// sets nothing (an idle agent's ticks set nine labelled gauges per port).
    last_ports: Arc<Mutex<HashMap<u16, PortGauges>>>,
}

/// One port's gauges, as last set.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct PortGauges {
    held: bool,
    holders: usize,
    queue: u64,
    queue_max: u64,
    /// Bit i: stuck for `REASONS[i]`.
    stuck: u32,
}

pub const REASONS: &[&str] = &["accept_stall", "holders_stopped", "probe_failing", "bound_not_listening", "leftover"];
/// `portwatch_events_total{event}`: the socket events, failed binds (known, or of
/// unknown outcome), and sockets observed without their bind.
pub const EVENTS: &[&str] = &["bind", "listen", "close", "accept", "bind_failed", "bind_unknown", "observed"];
/// `portwatch_signals_total{signal}`: what reaping sends.
pub const SIGNALS: &[&str] = &["SIGTERM", "SIGCONT", "SIGKILL"];
/// `portwatch_reaps_total{outcome}`.
pub const OUTCOMES: &[&str] = &["freed", "still_held", "refused", "dry_run"];

impl Metrics {
    pub fn new() -> (Self, Registry) {
        let mut r = Registry::with_prefix("portwatch");
        let m = Self {
            held: Family::default(),
            holders: Family::default(),
            accept_queue: Family::default(),
            accept_queue_max: Family::default(),
            stuck: Family::default(),
            events: Family::default(),
            verdicts: Family::default(),
            signals: Family::default(),
            reaps: Family::default(),
            lost: Counter::default(),
            kernel_errors: Family::default(),
            last_ports: Arc::default(),
        };
        r.register("port_held", "Whether a socket is bound to the watched port (1) or not (0)", m.held.clone());
        r.register("port_holders", "Processes holding sockets on the watched port", m.holders.clone());
        r.register("accept_queue_length", "Connections waiting in the accept queues of the port's listeners", m.accept_queue.clone());
        r.register("accept_queue_max", "Accept queue maximum (backlog) of the port's listeners", m.accept_queue_max.clone());
        r.register("port_stuck", "Whether a listener on the port is stuck, by reason (1) or not (0)", m.stuck.clone());
        r.register("events", "Socket events seen on watched ports, by type", m.events.clone());
        r.register("verdicts", "Listeners found stuck, by reason", m.verdicts.clone());
        r.register("signals", "Signals sent while reaping, by signal", m.signals.clone());
        r.register("reaps", "Reaps, by outcome", m.reaps.clone());
        r.register("ringbuf_lost_events", "Kernel events dropped because the ring buffer was full", m.lost.clone());
        r.register(
            "kernel_program_errors",
            "Errors counted by each kernel program since the agent started (failed kernel reads)",
            m.kernel_errors.clone(),
        );
        // A gauge, not an OpenMetrics `info`, so Prometheus' text parser (and promtool)
        // accept it.
        let build: Family<VersionLabel, Gauge> = Family::default();
        build.get_or_create(&VersionLabel { version: env!("CARGO_PKG_VERSION").to_string() }).set(1);
        r.register("build_info", "portwatch build information", build);
        m.zero();
        (m, r)
    }

    /// Every counter's known series at 0, so that a rate or an alert on them has
    /// a value from the agent's start, not only after the first event.
    fn zero(&self) {
        for e in EVENTS {
            let _ = self.events.get_or_create(&EventLabel { event: (*e).to_string() });
        }
        for r in REASONS {
            let _ = self.verdicts.get_or_create(&ReasonLabel { reason: (*r).to_string() });
        }
        for s in SIGNALS {
            let _ = self.signals.get_or_create(&SignalLabel { signal: (*s).to_string() });
        }
        for o in OUTCOMES {
            let _ = self.reaps.get_or_create(&OutcomeLabel { outcome: (*o).to_string() });
        }
    }

    /// Sets the per-port gauges from one sample.
    pub fn observe_port(&self, port: u16, sockets: usize, holders: usize, queue: u64, queue_max: u64, verdict: Option<&Verdict>) {
        let stuck = REASONS
            .iter()
            .enumerate()
            .filter(|(_, reason)| verdict.is_some_and(|v| v.reasons.iter().any(|r| r.kind.name() == **reason)))
            .fold(0u32, |bits, (i, _)| bits | 1 << i);
        let now = PortGauges { held: sockets > 0, holders, queue, queue_max, stuck };
        if lock(&self.last_ports).insert(port, now) == Some(now) {
            return;
        }
        let l = PortLabel { port };
        self.held.get_or_create(&l).set(i64::from(now.held));
        self.holders.get_or_create(&l).set(holders as i64);
        self.accept_queue.get_or_create(&l).set(queue as i64);
        self.accept_queue_max.get_or_create(&l).set(queue_max as i64);
        for (i, reason) in REASONS.iter().enumerate() {
            self.stuck.get_or_create(&StuckLabel { port, reason: (*reason).to_string() }).set(i64::from(stuck >> i & 1));
        }
    }

    /// Sets the kernel programs' error counts (as read from their per-CPU counters).
    pub fn kernel_errors(&self, errors: &[(&str, u64)]) {
        for (program, n) in errors {
            self.kernel_errors.get_or_create(&ProgramLabel { program: (*program).to_string() }).set(*n as i64);
        }
    }

    pub fn event(&self, event: &str) {
        self.events.get_or_create(&EventLabel { event: event.to_string() }).inc();
    }

    pub fn verdict(&self, reason: &str) {
        self.verdicts.get_or_create(&ReasonLabel { reason: reason.to_string() }).inc();
    }

    pub fn signal(&self, signal: &str) {
        self.signals.get_or_create(&SignalLabel { signal: signal.to_string() }).inc();
    }

    pub fn reap(&self, outcome: &str) {
        self.reaps.get_or_create(&OutcomeLabel { outcome: outcome.to_string() }).inc();
    }
}

/// The history writer's metrics: its counters and gauges are the ones it updates as
/// rows are dropped or fail, so they are current whenever scraped.
pub fn register_history(r: &mut Registry, h: &Health) {
    r.register("history_rows_dropped", "History rows dropped because the writer was too far behind (queue full)", h.dropped.clone());
    r.register("history_rows_failed", "History rows the writer could not store (database unavailable or a write failed)", h.failed.clone());
    r.register("history_ok", "Whether the history database is open and being written (1) or not (0)", h.ok.clone());
    r.register("history_rows", "Rows in the history database", h.rows.clone());
}

/// The Prometheus text exposition format (0.0.4): prometheus-client writes
/// OpenMetrics, where a counter family `x` has samples `x_total`; the text format
/// names the family `x_total` too and has no `# EOF`.
pub fn render(registry: &Registry) -> String {
    let mut om = String::new();
    let _ = encode(&mut om, registry);
    let counters: std::collections::HashSet<&str> =
        om.lines().filter_map(|l| l.strip_prefix("# TYPE ").and_then(|r| r.strip_suffix(" counter"))).collect();
    let mut out = String::with_capacity(om.len() + 64);
    for line in om.lines() {
        if line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters.contains(name).then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

/// The standard `process_*` metrics (as Prometheus' client libraries export them)
/// for the agent itself, in the text format.
pub fn render_process(u: &SelfUsage) -> String {
    let mut out = String::new();
    let mut one = |name: &str, kind: &str, help: &str, value: String| {
        out.push_str(&format!("# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}\n"));
    };
    one("process_cpu_seconds_total", "counter", "Total user and system CPU time spent in seconds.", format!("{}", u.cpu_seconds));
    one("process_resident_memory_bytes", "gauge", "Resident memory size in bytes.", u.resident_bytes.to_string());
    one("process_virtual_memory_bytes", "gauge", "Virtual memory size in bytes.", u.virtual_bytes.to_string());
    one("process_open_fds", "gauge", "Number of open file descriptors.", u.open_fds.to_string());
    one("process_max_fds", "gauge", "Maximum number of open file descriptors.", u.max_fds.to_string());
    one(
        "process_start_time_seconds",
        "gauge",
        "Start time of the process since unix epoch in seconds.",
        format!("{}", u.start_time_seconds),
    );
    out
}

/// The whole exposition: the agent's metrics, then its `process_*` ones.
fn render_all(registry: &Registry) -> String {
    let mut body = render(registry);
    if let Some(u) = crate::sys::proc::self_usage() {
        body.push_str(&render_process(&u));
    }
    body
}

/// Connections the metrics endpoint serves at once; more wait in the backlog.
const MAX_SCRAPES: usize = 8;
/// A scrape must send its request within this long.
const READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// Serves `GET`/`HEAD /metrics` on `addr` until the task is dropped. Any local user
/// can reach it: requests are read with a deadline and a size limit, and only a
/// few are served at once.
pub async fn serve(addr: SocketAddr, registry: Arc<Registry>) -> Result<tokio::task::JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await.map_err(|e| Error::io(format!("metrics listener on {addr}"), e))?;
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_SCRAPES));
    Ok(tokio::spawn(async move {
        loop {
            let Ok(permit) = slots.clone().acquire_owned().await else { return };
            let mut conn = match listener.accept().await {
                Ok((c, _)) => c,
                Err(e) => {
                    // Out of fds: back off rather than spin.
                    tracing::warn!(error = %e, "metrics: accept failed; backing off");
                    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let _permit = permit;
                let mut buf = vec![0u8; 8192];
                let mut n = 0;
                let read = async {
                    while n < buf.len() {
                        match conn.read(&mut buf[n..]).await {
                            Ok(0) | Err(_) => break,
                            Ok(k) => n += k,
                        }
                        if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                            break;
                        }
                    }
                };
                if tokio::time::timeout(READ_TIMEOUT, read).await.is_err() {
                    return;
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let mut words = head.split_whitespace();
                let (method, path) = (words.next().unwrap_or(""), words.next().unwrap_or(""));
                let is_metrics = path == "/metrics" || path.starts_with("/metrics?");
                let (status, ctype, body) = match (method, is_metrics) {
                    ("GET" | "HEAD", true) => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", render_all(&registry)),
                    ("GET" | "HEAD", false) => ("404 Not Found", "text/plain", "not found: try /metrics\n".to_string()),
                    _ => ("405 Method Not Allowed", "text/plain", "GET /metrics\n".to_string()),
                };
                let mut resp =
                    format!("HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
                if method != "HEAD" {
                    resp.push_str(&body);
                }
                let _ = tokio::time::timeout(READ_TIMEOUT, conn.write_all(resp.as_bytes())).await;
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::verdict::{Reason, ReasonKind};

    #[test]
    fn renders_names_and_labels() {
        let (m, r) = Metrics::new();
        let v = Verdict {
            port: 5050,
            cookie: 1,
            reasons: vec![Reason { kind: ReasonKind::AcceptStall, evidence: String::new() }],
            pids: vec![1],
        };
        m.observe_port(5050, 1, 5, 3, 128, Some(&v));
        m.event("bind");
        m.lost.inc_by(2);
        let mut r = r;
        let h = Health::default();
        register_history(&mut r, &h);
        h.failed.inc_by(3);
        h.ok.set(1);
        let text = render(&r);
        for needle in [
            "portwatch_port_held{port=\"5050\"} 1",
            "portwatch_port_holders{port=\"5050\"} 5",
            "portwatch_accept_queue_length{port=\"5050\"} 3",
            "portwatch_port_stuck{port=\"5050\",reason=\"accept_stall\"} 1",
            "portwatch_port_stuck{port=\"5050\",reason=\"holders_stopped\"} 0",
            "portwatch_events_total{event=\"bind\"} 1",
            "portwatch_ringbuf_lost_events_total 2",
            "portwatch_build_info{version=",
            "# TYPE portwatch_events_total counter",
            "portwatch_history_rows_failed_total 3",
            "portwatch_history_rows_dropped_total 0",
            "portwatch_history_ok 1",
            "# TYPE portwatch_history_rows gauge",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        assert!(!text.contains("# EOF"));
    }

    #[test]
    fn a_port_sample_sets_its_gauges_only_when_they_change() {
        let (m, r) = Metrics::new();
        let stall = Verdict {
            port: 5050,
            cookie: 1,
            reasons: vec![Reason { kind: ReasonKind::AcceptStall, evidence: String::new() }],
            pids: vec![1],
        };
        m.observe_port(5050, 1, 2, 3, 128, Some(&stall));
        // Someone else's write to a gauge shows whether the same sample sets it again.
        m.holders.get_or_create(&PortLabel { port: 5050 }).set(99);
        m.observe_port(5050, 1, 2, 3, 128, Some(&stall));
        assert!(render(&r).contains("portwatch_port_holders{port=\"5050\"} 99"), "an unchanged sample was set again");
        // Any change sets every gauge of the port, the stuck reasons included.
        m.observe_port(5050, 0, 0, 0, 0, None);
        let text = render(&r);
        for needle in [
            "portwatch_port_held{port=\"5050\"} 0",
            "portwatch_port_holders{port=\"5050\"} 0",
            "portwatch_accept_queue_max{port=\"5050\"} 0",
            "portwatch_port_stuck{port=\"5050\",reason=\"accept_stall\"} 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
        // Another port is its own.
        m.observe_port(5051, 1, 1, 0, 128, None);
        assert!(render(&r).contains("portwatch_port_held{port=\"5051\"} 1"));
    }

    #[test]
    fn counters_start_at_zero() {
        let (_m, r) = Metrics::new();
        let text = render(&r);
        for needle in [
            "portwatch_events_total{event=\"bind_failed\"} 0",
            "portwatch_events_total{event=\"observed\"} 0",
            "portwatch_verdicts_total{reason=\"accept_stall\"} 0",
            "portwatch_signals_total{signal=\"SIGKILL\"} 0",
            "portwatch_reaps_total{outcome=\"freed\"} 0",
            "portwatch_ringbuf_lost_events_total 0",
        ] {
            assert!(text.contains(needle), "missing {needle} in\n{text}");
        }
    }

    #[test]
    fn process_metrics() {
        let u = SelfUsage {
            cpu_seconds: 1.5,
            resident_bytes: 4096,
            virtual_bytes: 8192,
            open_fds: 7,
            max_fds: 1024,
            start_time_seconds: 1_700_000_000.25,
        };
        let text = render_process(&u);
        assert!(text.contains("# TYPE process_cpu_seconds_total counter\nprocess_cpu_seconds_total 1.5\n"), "{text}");
        assert!(text.contains("process_resident_memory_bytes 4096\n"));
        assert!(text.contains("process_open_fds 7\n"));
        assert!(text.contains("process_start_time_seconds 1700000000.25\n"));
        let live = crate::sys::proc::self_usage().unwrap();
        assert!(live.open_fds > 0 && live.resident_bytes > 0 && live.start_time_seconds > 1e9);
    }
}
