//! Who is in the way of a job that wants its ports: for every holder of a held
//! port, the line the job's log and summary show (see [`Blame`]).
use crate::{
    error::Result,
    model::{blame::Blame, ports::PortSet, time::WallNs},
    service::holders::{self, WhoOptions},
    sys::{clock::wall_now_ns, proc},
};

/// What the agent's history knows of a socket (by cookie): since when it has held
/// its port, and the CI job that bound it.
pub type HistoryLookup<'a> = &'a dyn Fn(u64) -> Option<(WallNs, Option<String>)>;

/// The holders of `ports`, blamed: the job from the history (else the holder's
/// environment), how long it has held the port (history, else the process's age),
/// the holder's state and the listener's accept queue.
pub fn blame(ports: &PortSet, tcp: bool, udp: bool, history: HistoryLookup<'_>) -> Result<Vec<Blame>> {
    let r = holders::gather(ports, WhoOptions { tcp, udp, connections: false, prefetch: true, ..WhoOptions::default() })?;
    let now = wall_now_ns();
    let mut out = Vec::new();
    for s in &r.sockets {
        let seen = history(s.cookie);
        for h in &s.holders {
            let (held_secs, held_source) = match &seen {
                Some((since, _)) => (Some(u64::try_from((now - since) / 1_000_000_000).unwrap_or(0)), "history"),
                None => (h.proc.age_secs, "process"),
            };
            let job = seen
                .as_ref()
                .and_then(|(_, j)| j.clone())
                .or_else(|| proc::details(h.proc.pid).and_then(|d| d.job.as_deref().map(str::to_owned)));
            let b = Blame {
                port: s.port,
                proto: s.proto,
                state: s.state,
                pid: h.proc.pid,
                comm: h.proc.comm.clone(),
                proc_state: h.proc.state,
                job,
                held_secs,
                held_source,
                accept_queue: s.accept_queue,
                backlog: s.backlog,
            };
            if !out.contains(&b) {
                out.push(b);
            }
        }
    }
    Ok(out)
}
