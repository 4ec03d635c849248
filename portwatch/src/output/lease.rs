//! `lease list`, the lease line of `who`, and `run --lease`'s refusal lines.
use crate::{
    model::{
        event::SockEvent,
        lease::{Holder, LeaseState, LeaseView, RefusalErrno},
    },
    output::{age, esc, truncate, Table},
};

fn since(l: &LeaseView, now_secs: u64) -> String {
    age(now_secs.checked_sub(l.since))
}

/// Who holds it, in words: `run pid 4711` or `operator lease lease-1700000000-99`.
pub fn holder(l: &LeaseView) -> String {
    match &l.holder {
        Holder::Run { pid, .. } => format!("run pid {pid}"),
        Holder::Operator { name } => format!("operator lease {name}"),
    }
}

fn last(l: &LeaseView) -> String {
    match &l.last_refused {
        Some(r) => format!("pid {} ({}) {} ago", r.pid, r.comm, age(r.secs_ago)),
        None => "-".into(),
    }
}

/// The `lease list` table.
pub fn render_list(leases: &[LeaseView]) -> String {
    if leases.is_empty() {
        return "no leases\n".into();
    }
    let now = crate::sys::clock::wall_now_secs();
    let mut t = Table::new(["PORT", "STATE", "HOLDER", "CGROUP", "SINCE", "REFUSED", "LAST REFUSED", "JOB", "COMMAND"]);
    for l in leases {
        t.row([
            l.port.to_string(),
            match l.state {
                LeaseState::Active => "active".into(),
                LeaseState::Stale => "stale".into(),
            },
            holder(l),
            l.cgroup.clone().unwrap_or_else(|| format!("id {}", l.cgroup_id)),
            since(l, now),
            l.refused.to_string(),
            last(l),
            l.job.clone().unwrap_or_else(|| "-".into()),
            l.command.as_deref().map_or_else(|| "-".into(), |c| truncate(c, 60)),
        ]);
    }
    t.render()
}

/// One line for `who`: `leased to run pid 4711 (job "smoke") for 5m; 2 binds
/// refused, the last from pid 4800 (python3) 3s ago`.
pub fn who_line(l: &LeaseView) -> String {
    let job = l.job.as_deref().map_or_else(String::new, |j| format!(" (job {})", esc(j)));
    let stale = if l.state == LeaseState::Stale { " [stale: its holder is gone]" } else { "" };
    let refused = match (&l.last_refused, l.refused) {
        (Some(r), n) => format!("; {n} bind{} refused, the last from pid {} ({}) {} ago", plural(n), r.pid, esc(&r.comm), age(r.secs_ago)),
        (None, _) => String::new(),
    };
    format!("leased to {}{job} for {}{refused}{stale}", esc(&holder(l)), since(l, crate::sys::clock::wall_now_secs()))
}

fn plural(n: u64) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// `run --lease`: a refused bind, as it happened.
pub fn refusal(ev: &SockEvent, errno: RefusalErrno) -> String {
    let who = ev.task.as_ref().map_or_else(|| "a process".to_string(), |t| format!("pid {} ({}, uid {})", t.pid, esc(&t.comm), t.uid));
    let proto = ev.proto.map_or("", |p| p.name());
    format!("lease: refused {who} binding {proto} {}: {}", std::net::SocketAddr::new(ev.addr, ev.port), errno.name())
}

/// Refusals not shown in the last second (a flood).
pub fn hidden(n: u64) -> String {
    format!("lease: {n} more binds refused in the last second (not shown)")
}

/// What `lease add` / `lease drop` did, one line per port.
pub fn changed(verb: &str, leases: &[LeaseView]) -> String {
    leases.iter().map(|l| format!("{verb} port {} ({})\n", l.port, esc(&holder(l)))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::lease::Refusal;

    fn view() -> LeaseView {
        LeaseView {
            port: 5050,
            holder_name: "portwatch-run-42-7".into(),
            holder: Holder::Run { pid: 42, start_ticks: 7 },
            state: LeaseState::Active,
            cgroup_id: 9,
            cgroup: Some("/sys/fs/cgroup/x".into()),
            command: Some("portwatch run --lease -p 5050 -- evil\x1b[2J".into()),
            job: Some("smoke\nFAKE LINE".into()),
            since: 0,
            refused: 2,
            last_refused: Some(Refusal { pid: 4800, uid: 1000, comm: "py\x1b]0;x".into(), cookie: 1, secs_ago: Some(3) }),
        }
    }

    #[test]
    fn names_are_escaped_everywhere() {
        let l = view();
        for text in [render_list(std::slice::from_ref(&l)), who_line(&l)] {
            assert!(!text.contains('\x1b'), "{text}");
            assert!(!text.trim_end().contains("\nFAKE"), "{text}");
        }
        assert!(who_line(&l).contains("2 binds refused, the last from pid 4800"), "{}", who_line(&l));
        assert!(who_line(&l).starts_with("leased to run pid 42 (job smoke\\nFAKE LINE)"), "{}", who_line(&l));
    }

    #[test]
    fn stale_leases_say_so() {
        let mut l = view();
        l.state = LeaseState::Stale;
        assert!(who_line(&l).ends_with("[stale: its holder is gone]"));
        assert!(render_list(&[l]).contains("stale"));
        assert_eq!(render_list(&[]), "no leases\n");
    }
}
