//! `who` tables and `check` lines.
use std::collections::{BTreeMap, HashSet};

use crate::{
    model::{ports::PortSet, remap::PortMap, socket::Socket},
    output::{age, esc, truncate, Table},
    service::holders::{PortStatus, WhoResult},
};

/// How much of a command line a row shows (`--wide`: all of it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Width {
    Narrow,
    Wide,
}

/// The human view: one table per port, then the clients.
pub fn render(ports: &PortSet, r: &WhoResult, width: Width) -> String {
    let mut by_port: BTreeMap<u16, Vec<&Socket>> = BTreeMap::new();
    for s in &r.sockets {
        by_port.entry(s.port).or_default().push(s);
    }
    let mut out = String::new();
    let leases = |out: &mut String, port: u16| {
        for l in r.leases.iter().filter(|l| l.port == port) {
            out.push_str(&format!("  lease: {}\n", super::lease::who_line(l)));
        }
    };
    for port in ports.iter() {
        let Some(socks) = by_port.get(&port) else {
            if ports.len() <= 64 || r.leases.iter().any(|l| l.port == port) {
                out.push_str(&format!("port {port}: free\n"));
            }
            leases(&mut out, port);
            continue;
        };
        let pids: HashSet<i32> = socks.iter().flat_map(|s| s.holders.iter().map(|h| h.proc.pid)).collect();
        out.push_str(&format!(
            "port {port}: {} socket{}, {} process{}\n",
            socks.len(),
            if socks.len() == 1 { "" } else { "s" },
            pids.len(),
            if pids.len() == 1 { "" } else { "es" }
        ));
        leases(&mut out, port);
        let mut t =
            Table::new(["PROTO", "ADDRESS", "STATE", "QUEUE", "INODE", "PID", "PPID", "USER", "ST", "AGE", "FD", "COMM", "COMMAND"]);
        for s in socks {
            let proto = format!("{}{}", s.proto.name(), s.family.digit());
            let queue = match (s.accept_queue, s.backlog) {
                (Some(q), Some(b)) => format!("{q}/{b}"),
                _ => "-".into(),
            };
            let sock_cells = [proto, s.addr.to_string(), s.state.name().to_string(), queue, s.inode.to_string()];
            if s.holders.is_empty() {
                let mut row: Vec<String> = sock_cells.to_vec();
                row.extend(["-", "-", "-", "-", "-", "-", "-", "(no process holds it)"].map(String::from));
                t.row(row);
            }
            for h in &s.holders {
                let cmd = match width {
                    Width::Narrow => truncate(&h.proc.cmdline, 60),
                    Width::Wide => h.proc.cmdline.to_string(),
                };
                let mut row: Vec<String> = sock_cells.to_vec();
                row.extend([
                    h.proc.pid.to_string(),
                    h.proc.ppid.to_string(),
                    h.proc.user.clone(),
                    h.proc.state.to_string(),
                    age(h.proc.age_secs),
                    h.fd.to_string(),
                    h.proc.comm.clone(),
                    cmd,
                ]);
                t.row(row);
            }
            if let Some(since) = &s.since {
                let job = s.job.as_deref().map(|j| format!(" by job {}", esc(j))).unwrap_or_default();
                out.push_str(&format!("  ({} {} held since {since}{job})\n", s.proto.name(), s.addr));
            }
        }
        out.push_str(&t.render());
    }
    if !r.clients.is_empty() {
        out.push_str("clients connected to these ports (not holders):\n");
        for c in &r.clients {
            let who: Vec<String> = c.holders.iter().map(|h| format!("{} ({})", h.proc.pid, esc(&h.proc.comm))).collect();
            out.push_str(&format!("  {} -> port {}  {}\n", c.peer.map_or("?".into(), |p| p.to_string()), c.port, who.join(", ")));
        }
    }
    out
}

/// `check`: one line per port.
pub fn render_check(st: &[PortStatus]) -> String {
    let mut out = String::new();
    for s in st {
        if s.free {
            out.push_str(&format!("{}: free\n", s.port));
        } else if s.holders.is_empty() {
            out.push_str(&format!("{}: held\n", s.port));
        } else {
            let who: Vec<String> =
                s.holders.iter().map(|h| format!("{} ({}, {} {})", h.pid, esc(&h.comm), h.proto.name(), h.state.name())).collect();
            out.push_str(&format!("{}: held by {}\n", s.port, who.join(", ")));
        }
        for n in &s.notes {
            out.push_str(&format!("  note: {}\n", esc(n)));
        }
    }
    out
}

/// Active `run --isolate-ports` remaps that involve the asked ports, as the port
/// the jobs name or as the real port standing in for it. `runs`: by run cgroup name.
pub fn remaps(ports: &PortSet, runs: &[(String, PortMap)]) -> Vec<String> {
    let mut out = Vec::new();
    for (run, map) in runs {
        for p in map.pairs() {
            if ports.contains(p.virt) {
                out.push(format!("port {} is isolated for the jobs of {}: they use real port {}", p.virt, esc(run), p.real));
            }
            if ports.contains(p.real) {
                out.push(format!("port {} is the real port of isolated port {} for the jobs of {}", p.real, p.virt, esc(run)));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn remaps_are_named_by_either_port() {
        let runs = vec![("portwatch-run-1-2".to_string(), PortMap::new([(5050, 61000)]).unwrap())];
        let one = |p: u16| remaps(&std::iter::once(p).collect(), &runs);
        assert_eq!(one(5050), ["port 5050 is isolated for the jobs of portwatch-run-1-2: they use real port 61000"]);
        assert_eq!(one(61000), ["port 61000 is the real port of isolated port 5050 for the jobs of portwatch-run-1-2"]);
        assert!(one(8080).is_empty());
    }
    use crate::{
        model::{
            process::{Holder, ProcInfo},
            socket::{Family, Proto, SockState},
        },
        service::holders::{BriefHolder, PortStatus},
    };

    fn sock(port: u16, pids: &[i32], comm: &str) -> Socket {
        Socket {
            port,
            proto: Proto::Tcp,
            family: Family::Ipv4,
            addr: "127.0.0.1".parse().unwrap(),
            state: SockState::Listen,
            inode: 5,
            cookie: 1,
            uid: 0,
            accept_queue: Some(2),
            backlog: Some(128),
            peer: None,
            since: None,
            job: None,
            holders: pids
                .iter()
                .map(|&pid| Holder {
                    proc: ProcInfo {
                        pid,
                        ppid: 1,
                        uid: 0,
                        user: "root".into(),
                        comm: comm.into(),
                        cmdline: "gunicorn --bind 127.0.0.1:5050 app:app".into(),
                        state: 'S',
                        age_secs: Some(90),
                        cgroup: "/".into(),
                        ..ProcInfo::default()
                    },
                    fd: 5,
                })
                .collect(),
        }
    }

    #[test]
    fn renders_tables_and_check_lines() {
        let ports = PortSet::parse("5050,5051").unwrap();
        let r = WhoResult { sockets: vec![sock(5050, &[10, 11], "gunicorn")], method: "bpf-iterator", ..Default::default() };
        let text = render(&ports, &r, Width::Narrow);
        assert!(text.contains("port 5050: 1 socket, 2 processes"), "{text}");
        assert!(text.contains("port 5051: free"));
        assert!(text.contains("2/128") && text.contains("gunicorn") && text.contains("90s"));
        let held = |pids: &[i32]| {
            pids.iter().map(|&pid| BriefHolder { pid, comm: "gunicorn".into(), proto: Proto::Tcp, state: SockState::Listen }).collect()
        };
        let st = vec![
            PortStatus { port: 5050, free: false, holders: held(&[10, 11]), notes: vec![] },
            PortStatus { port: 5051, free: true, holders: vec![], notes: vec!["1 time-wait".into()] },
        ];
        let c = render_check(&st);
        assert!(c.contains("5050: held by 10 (gunicorn, tcp listen), 11 (gunicorn, tcp listen)"), "{c}");
        assert!(c.contains("5051: free\n  note: 1 time-wait"));
    }

    #[test]
    fn a_hostile_name_cannot_forge_a_line() {
        let ports = PortSet::parse("5050").unwrap();
        let r = WhoResult { sockets: vec![sock(5050, &[10], "x\nport 5050: free\n\x1b]0;pwned\x07")], ..Default::default() };
        let text = render(&ports, &r, Width::Wide);
        assert!(!text.contains('\x1b') && !text.lines().any(|l| l == "port 5050: free"), "{text}");
        let st = [PortStatus {
            port: 5050,
            free: false,
            holders: vec![BriefHolder { pid: 10, comm: "x\nport 5050: free".into(), proto: Proto::Tcp, state: SockState::Listen }],
            notes: vec![],
        }];
        let c = render_check(&st);
        assert_eq!(c.lines().count(), 1, "{c}");
    }
}
