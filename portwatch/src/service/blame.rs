//! Who is in the way of a job that wants its ports: for every holder of a held
//! port, the line the job's log and summary show (see [`Blame`]).
use crate::{
    model::{
        blame::{Blame, HeldSource},
        socket::{Proto, SockState, Socket},
        time::WallNs,
    },
    sys::{clock::wall_now_ns, proc},
};

/// What the agent's history knows of a socket (by cookie): since when it has held
/// its port, and the CI job that bound it.
pub type HistoryLookup<'a> = &'a dyn Fn(u64) -> Option<(WallNs, Option<String>)>;

/// The holders of the sockets in the way (listening or bound TCP sockets, UDP
/// sockets) among `sockets`, blamed: the job from the history (else the holder's
/// environment), how long it has held the port (history, else the process's
/// age), the holder's state and the listener's accept queue.
pub fn blame(sockets: &[Socket], history: HistoryLookup<'_>) -> Vec<Blame> {
    let now = wall_now_ns();
    let mut out = Vec::new();
    let in_the_way = |s: &&Socket| s.proto == Proto::Udp || matches!(s.state, SockState::Listen | SockState::Bound);
    for s in sockets.iter().filter(in_the_way) {
        let seen = history(s.cookie);
        for h in &s.holders {
            let (held_secs, held_source) = match &seen {
                Some((since, _)) => (Some(u64::try_from((now - since) / 1_000_000_000).unwrap_or(0)), HeldSource::History),
                None => (h.proc.age_secs, HeldSource::Process),
            };
            let job = seen.as_ref().and_then(|(_, j)| j.clone()).or_else(|| proc::job(h.proc.pid));
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
    out
}
