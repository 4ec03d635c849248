//! `portwatch who` and `portwatch check`: every socket bound to a port and every
//! process holding it. Sockets come from sock_diag (filtered in the kernel); holders
//! from one pass of the `iter/task_file` BPF iterator, or from a /proc walk when BPF
//! is not available.
use std::collections::{BTreeMap, HashMap, HashSet};

use comfy_table::{presets::NOTHING, Cell, ContentArrangement, Table};
use serde::Serialize;

use crate::{
    ebpf::iter,
    error::{Error, Result},
    model::fmt_addr,
    ports::PortSet,
    sys::{
        proc::{self, FdHolder, ProcInfo},
        sockdiag::{self, Proto, Query, SockEntry},
    },
};

/// How `who` finds holders. `Auto` takes the fastest method that can answer exactly
/// here; the others force one (for comparison, tests and benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    #[default]
    Auto,
    /// The `iter/task` holders pass (one visit per task); fails if it cannot answer.
    Holders,
    /// The `iter/task_file` pass (one visit per open file on the host).
    TaskFile,
    /// A walk of /proc/*/fd (no privilege needed; sees only what /proc shows).
    Proc,
}

impl Method {
    /// The name reported in `WhoResult::method`.
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Holders => "bpf-holders",
            Self::TaskFile => "bpf-iterator",
            Self::Proc => "proc-walk",
        }
    }
}

#[derive(Clone, Copy, Debug, Default)]
pub struct WhoOptions {
    pub tcp: bool,
    pub udp: bool,
    pub clients: bool,
    pub method: Method,
    /// Read the pinned iterator in a second thread while sock_diag runs (one-shot
    /// commands: less wall time; the agent leaves it off to spend no CPU on idle ports).
    pub prefetch: bool,
}

/// A process holding a socket through one fd (in JSON: the process's fields and
/// `fd`, side by side).
#[derive(Clone, Debug, Serialize, PartialEq, Eq)]
pub struct Holder {
    #[serde(flatten)]
    pub proc: ProcInfo,
    pub fd: i32,
}

/// One socket and who holds it (the `--json` schema).
#[derive(Clone, Debug, Serialize)]
pub struct SocketReport {
    pub port: u16,
    pub proto: Proto,
    pub family: &'static str,
    pub addr: String,
    pub state: &'static str,
    pub inode: u64,
    pub cookie: u64,
    pub uid: u32,
    /// Listeners: connections waiting to be accepted.
    pub accept_queue: Option<u32>,
    /// Listeners: the accept queue's maximum.
    pub backlog: Option<u32>,
    /// For `--clients`: the remote end of a connection to the port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peer: Option<String>,
    pub holders: Vec<Holder>,
}

#[derive(Clone, Debug, Default)]
pub struct WhoResult {
    pub sockets: Vec<SocketReport>,
    /// Connections to the ports from local clients (only with `--clients`).
    pub clients: Vec<SocketReport>,
    /// How holders were found: "bpf-holders", "bpf-iterator", "proc-walk" or "none".
    pub method: &'static str,
    /// Shown on stderr: e.g. why the fallback was used.
    pub notes: Vec<String>,
    /// Where the time went (for `who -v`): phase name and milliseconds.
    pub phases: Vec<(&'static str, f64)>,
}

/// Finds holders for the inodes: the BPF iterator first, then the /proc walk.
type Prefetch = std::thread::JoinHandle<Result<Vec<FdHolder>>>;

fn find_holders(
    inodes: &HashSet<u64>,
    force_proc: bool,
    prefetch: Option<Prefetch>,
    notes: &mut Vec<String>,
) -> (Vec<FdHolder>, &'static str) {
    if inodes.is_empty() {
        return (Vec::new(), "none");
    }
    if proc::in_nested_pid_namespace() {
        notes.push("in a nested pid namespace: walking /proc so pids are this namespace's".into());
    } else if !force_proc {
        let pass = match prefetch {
            Some(h) => h.join().unwrap_or_else(|_| Err(Error::Internal("iterator thread panicked".into()))),
            None => iter::all_socket_fds(),
        }
        .map(|all| all.into_iter().filter(|h| inodes.contains(&h.inode)).collect::<Vec<_>>());
        match pass {
            // The iterator reports pids of the initial pid namespace; when they do not
            // name the same fds in our /proc (another pid namespace), walk /proc.
            Ok(h) => {
                // Keep what /proc confirms; an fd closed since the pass just drops out.
                let n = h.len();
                let ok: Vec<FdHolder> = h.into_iter().filter(|x| proc::fd_check(x.pid, x.fd, x.inode) != proc::FdCheck::Gone).collect();
                if n == 0 || !ok.is_empty() {
                    return (ok, Method::TaskFile.name());
                }
                notes.push("BPF iterator pids do not match this /proc (pid namespace); walking /proc instead".into());
            }
            Err(e) => notes.push(format!("BPF iterator unavailable ({e}); walking /proc instead")),
        }
    }
    let (h, denied) = proc::walk_socket_holders(inodes);
    if denied > 0 {
        notes.push(format!("{denied} processes could not be inspected (not root): holders owned by other users may be missing"));
    }
    (h, Method::Proc.name())
}

fn holders_for(fds: &[FdHolder], inode: u64, cache: &mut HashMap<i32, Option<ProcInfo>>) -> Vec<Holder> {
    fds.iter()
        .filter(|h| h.inode == inode)
        .filter_map(|h| {
            let proc = cache.entry(h.pid).or_insert_with(|| proc::info(h.pid)).clone()?;
            Some(Holder { proc, fd: h.fd })
        })
        .collect()
}

pub fn report(s: &SockEntry, holders: Vec<Holder>, client: bool) -> SocketReport {
    let listener = s.is_listener();
    SocketReport {
        port: if client { s.peer_port } else { s.port },
        proto: s.proto,
        family: crate::ebpf::events::family_name(u16::from(s.family)),
        addr: fmt_addr(&s.addr),
        state: s.state_name(),
        inode: s.inode,
        cookie: s.cookie,
        uid: s.uid,
        accept_queue: listener.then_some(s.recv_q),
        backlog: listener.then_some(s.send_q),
        peer: client.then(|| format!("{}:{}", fmt_addr(&s.addr), s.port)),
        holders,
    }
}

/// Everything bound to `ports`.
pub fn gather(ports: &PortSet, opts: WhoOptions) -> Result<WhoResult> {
    let list: Vec<u16> = ports.iter().collect();
    let both = !opts.tcp && !opts.udp;
    let q = Query { tcp: opts.tcp || both, udp: opts.udp || both, connections: false };
    if matches!(opts.method, Method::Auto | Method::Holders) {
        if let Some(r) = gather_fast(&list, q, opts.clients, opts.method == Method::Holders)? {
            return Ok(r);
        }
    }
    if opts.method == Method::Holders && !nix::unistd::geteuid().is_root() {
        return Err(Error::privilege("the holders pass reads BPF pins, which only root may", "run as root, or use --method auto"));
    }
    if opts.method == Method::Holders {
        return Err(Error::unsupported(
            "the holders iterator cannot answer this query exactly here",
            "use --method auto (falls back to the task_file pass)",
        ));
    }
    let force_proc = opts.method == Method::Proc;
    let prefetch = (opts.prefetch && !force_proc && iter::pinned()).then(|| std::thread::spawn(iter::all_socket_fds));
    let sockets = sockdiag::sockets_on_ports(&list, q).map_err(|e| Error::io("sock_diag", e))?;
    let clients: Vec<SockEntry> = if opts.clients && q.tcp {
        let all = sockdiag::dump_all_connections().map_err(|e| Error::io("sock_diag", e))?;
        all.into_iter().filter(|s| ports.contains(s.peer_port) && s.state == sockdiag::TCP_ESTABLISHED).collect()
    } else {
        Vec::new()
    };
    let inodes: HashSet<u64> = sockets.iter().chain(&clients).map(|s| s.inode).filter(|&i| i != 0).collect();
    let mut notes = Vec::new();
    let (fds, method) = find_holders(&inodes, force_proc, prefetch, &mut notes);
    Ok(assemble(&sockets, &clients, &fds, method, notes))
}

fn assemble(sockets: &[SockEntry], clients: &[SockEntry], fds: &[FdHolder], method: &'static str, notes: Vec<String>) -> WhoResult {
    let mut cache = HashMap::new();
    let mut out: Vec<SocketReport> = sockets.iter().map(|s| report(s, holders_for(fds, s.inode, &mut cache), false)).collect();
    out.sort_by(|a, b| (a.port, a.proto, a.family, &a.addr).cmp(&(b.port, b.proto, b.family, &b.addr)));
    let mut cl: Vec<SocketReport> = clients.iter().map(|s| report(s, holders_for(fds, s.inode, &mut cache), true)).collect();
    cl.sort_by_key(|c| c.port);
    WhoResult { sockets: out, clients: cl, method, notes, phases: Vec::new() }
}

/// Ports the fast path takes at most (16 per pass over the tasks).
const FAST_MAX_PORTS: usize = 8 * portwatch_common::holders::MAX_PORTS;

/// The fast path (root, initial pid namespace): the `iter/task` holders pass finds
/// the sockets and their holders; sock_diag then describes only the kinds of socket
/// it found (a TCP listener needs just the listening-hash dump, the cheapest one).
/// `None` when it cannot answer exactly; the caller then takes the full path.
/// With `clients`, connections to the ports are looked up too: the clients'
/// sockets are on their own (ephemeral) ports, so a second pass asks for those.
/// With `strict`, errors are returned instead of falling back.
fn gather_fast(list: &[u16], q: Query, clients: bool, strict: bool) -> Result<Option<WhoResult>> {
    if list.len() > FAST_MAX_PORTS || !nix::unistd::geteuid().is_root() || proc::in_nested_pid_namespace() {
        return Ok(None);
    }
    let mut clock = Phases::default();
    let tcp_states = (1 << sockdiag::TCP_LISTEN) | (1 << sockdiag::TCP_CLOSE);
    let scan = match iter::holders_on_ports(list, q.tcp, q.udp, tcp_states) {
        Ok(Some(scan)) => scan,
        Ok(None) => return Ok(None),
        Err(e) if strict => return Err(e),
        Err(e) => {
            tracing::debug!("holders iterator: {e}");
            return Ok(None);
        }
    };
    clock.lap("holders pass");
    // One dump per (protocol, family, states) present.
    let mut dumps: Vec<(Proto, u8, u32)> = Vec::new();
    for s in &scan.sockets {
        let d = match (Proto::from_ipproto(u16::from(s.proto)), s.state) {
            (Some(Proto::Tcp), sockdiag::TCP_LISTEN) => (Proto::Tcp, s.family, 1 << sockdiag::TCP_LISTEN),
            (Some(Proto::Tcp), _) => (Proto::Tcp, s.family, (1 << sockdiag::TCP_CLOSE) | (1 << sockdiag::TCP_BOUND_INACTIVE)),
            (Some(Proto::Udp), _) => (Proto::Udp, s.family, u32::MAX),
            (None, _) => return Ok(None),
        };
        if !dumps.contains(&d) {
            dumps.push(d);
        }
    }
    let mut sockets = Vec::new();
    for (proto, family, states) in dumps {
        sockets.extend(sockdiag::dump(proto, family, states, list).map_err(|e| Error::io("sock_diag", e))?);
    }
    // A socket bound since the pass: its holders are unknown, so take the full path.
    let seen: HashSet<u64> = scan.sockets.iter().map(|s| s.inode).collect();
    if sockets.iter().any(|s| !seen.contains(&s.inode)) {
        return Ok(None);
    }
    clock.lap("sock_diag");
    let mut holders = scan.holders;
    let mut client_socks = Vec::new();
    if clients && q.tcp {
        let Some((socks, fds)) = clients_fast(list)? else {
            return Ok(None);
        };
        client_socks = socks;
        holders.extend(fds);
        clock.lap("clients");
    }
    // Drop what /proc shows closed since the pass; keep what it will not show.
    let fds: Vec<FdHolder> = holders.into_iter().filter(|h| proc::fd_check(h.pid, h.fd, h.inode) != proc::FdCheck::Gone).collect();
    let mut r = assemble(&sockets, &client_socks, &fds, Method::Holders.name(), Vec::new());
    clock.lap("/proc details");
    r.phases = clock.0;
    Ok(Some(r))
}

/// Local clients connected to `list` and their holders, from a holders pass over
/// the clients' own ports; `None` when that pass cannot answer exactly.
fn clients_fast(list: &[u16]) -> Result<Option<(Vec<SockEntry>, Vec<FdHolder>)>> {
    let wanted: HashSet<u16> = list.iter().copied().collect();
    let all = sockdiag::dump_all_connections().map_err(|e| Error::io("sock_diag", e))?;
    let clients: Vec<SockEntry> =
        all.into_iter().filter(|s| wanted.contains(&s.peer_port) && s.state == sockdiag::TCP_ESTABLISHED).collect();
    if clients.is_empty() {
        return Ok(Some((clients, Vec::new())));
    }
    let mut locals: Vec<u16> = clients.iter().map(|c| c.port).collect();
    locals.sort_unstable();
    locals.dedup();
    if locals.len() > FAST_MAX_PORTS {
        return Ok(None);
    }
    let scan = match iter::holders_on_ports(&locals, true, false, 1 << sockdiag::TCP_ESTABLISHED) {
        Ok(Some(scan)) => scan,
        Ok(None) => return Ok(None),
        Err(e) => {
            tracing::debug!("holders iterator (clients): {e}");
            return Ok(None);
        }
    };
    let seen: HashSet<u64> = scan.sockets.iter().map(|s| s.inode).collect();
    if clients.iter().any(|c| !seen.contains(&c.inode)) {
        return Ok(None);
    }
    Ok(Some((clients, scan.holders)))
}

/// Lap times.
struct Phases(Vec<(&'static str, f64)>, std::time::Instant);

impl Default for Phases {
    fn default() -> Self {
        Self(Vec::new(), std::time::Instant::now())
    }
}

impl Phases {
    fn lap(&mut self, name: &'static str) {
        let now = std::time::Instant::now();
        self.0.push((name, (now - self.1).as_secs_f64() * 1e3));
        self.1 = now;
    }
}

fn age(secs: Option<u64>) -> String {
    match secs {
        None => "-".into(),
        Some(s) if s < 120 => format!("{s}s"),
        Some(s) if s < 7200 => format!("{}m", s / 60),
        Some(s) if s < 172_800 => format!("{}h", s / 3600),
        Some(s) => format!("{}d", s / 86400),
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(n - 1).collect();
        t.push('…');
        t
    }
}

/// The human view: one table per port.
pub fn render(ports: &PortSet, r: &WhoResult) -> String {
    let mut by_port: BTreeMap<u16, Vec<&SocketReport>> = BTreeMap::new();
    for s in &r.sockets {
        by_port.entry(s.port).or_default().push(s);
    }
    let mut out = String::new();
    for port in ports.iter() {
        let Some(socks) = by_port.get(&port) else {
            if ports.len() <= 64 {
                out.push_str(&format!("port {port}: free\n"));
            }
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
        let mut t = Table::new();
        t.load_preset(NOTHING).set_content_arrangement(ContentArrangement::Disabled);
        t.set_header(["PROTO", "ADDRESS", "STATE", "QUEUE", "INODE", "PID", "PPID", "USER", "ST", "AGE", "FD", "COMM", "COMMAND"]);
        for s in socks {
            let proto = format!("{}{}", s.proto.name(), if s.family == "ipv6" { "6" } else { "4" });
            let queue = match (s.accept_queue, s.backlog) {
                (Some(q), Some(b)) => format!("{q}/{b}"),
                _ => "-".into(),
            };
            let sock_cells = [proto, s.addr.clone(), s.state.to_string(), queue, s.inode.to_string()];
            if s.holders.is_empty() {
                let mut row: Vec<Cell> = sock_cells.iter().map(Cell::new).collect();
                row.extend(["-", "-", "-", "-", "-", "-", "-", "(no process holds it)"].map(Cell::new));
                t.add_row(row);
            }
            for h in &s.holders {
                let mut row: Vec<Cell> = sock_cells.iter().map(Cell::new).collect();
                row.extend(
                    [
                        h.proc.pid.to_string(),
                        h.proc.ppid.to_string(),
                        h.proc.user.clone(),
                        h.proc.state.to_string(),
                        age(h.proc.age_secs),
                        h.fd.to_string(),
                        h.proc.comm.clone(),
                        truncate(&h.proc.cmdline, 60),
                    ]
                    .map(Cell::new),
                );
                t.add_row(row);
            }
        }
        for line in t.to_string().lines() {
            out.push_str("  ");
            out.push_str(line.trim_end());
            out.push('\n');
        }
    }
    if !r.clients.is_empty() {
        out.push_str("clients connected to these ports (not holders):\n");
        for c in &r.clients {
            let who: Vec<String> = c.holders.iter().map(|h| format!("{} ({})", h.proc.pid, h.proc.comm)).collect();
            out.push_str(&format!("  {} -> port {}  {}\n", c.peer.as_deref().unwrap_or("?"), c.port, who.join(", ")));
        }
    }
    out
}

/// `check`'s per-port answer.
#[derive(Debug, Serialize)]
pub struct PortStatus {
    pub port: u16,
    pub free: bool,
    pub holders: Vec<BriefHolder>,
}

#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct BriefHolder {
    pub pid: i32,
    pub comm: String,
    pub proto: Proto,
    pub state: &'static str,
}

pub fn port_status(ports: &PortSet, r: &WhoResult) -> Vec<PortStatus> {
    ports
        .iter()
        .map(|port| {
            let socks: Vec<&SocketReport> = r.sockets.iter().filter(|s| s.port == port).collect();
            let mut holders: Vec<BriefHolder> = socks
                .iter()
                .flat_map(|s| {
                    s.holders.iter().map(move |h| BriefHolder {
                        pid: h.proc.pid,
                        comm: h.proc.comm.clone(),
                        proto: s.proto,
                        state: s.state,
                    })
                })
                .collect();
            holders.sort();
            holders.dedup();
            PortStatus { port, free: socks.is_empty(), holders }
        })
        .collect()
}

pub fn render_check(st: &[PortStatus]) -> String {
    let mut out = String::new();
    for s in st {
        if s.free {
            out.push_str(&format!("{}: free\n", s.port));
        } else if s.holders.is_empty() {
            out.push_str(&format!("{}: held (no process found; run `portwatch who {}`)\n", s.port, s.port));
        } else {
            let who: Vec<String> = s.holders.iter().map(|h| format!("{} ({}, {} {})", h.pid, h.comm, h.proto.name(), h.state)).collect();
            out.push_str(&format!("{}: held by {}\n", s.port, who.join(", ")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sock(port: u16, pids: &[i32]) -> SocketReport {
        SocketReport {
            port,
            proto: Proto::Tcp,
            family: "ipv4",
            addr: "127.0.0.1".into(),
            state: "listen",
            inode: 5,
            cookie: 1,
            uid: 0,
            accept_queue: Some(2),
            backlog: Some(128),
            peer: None,
            holders: pids
                .iter()
                .map(|&pid| Holder {
                    proc: ProcInfo {
                        pid,
                        ppid: 1,
                        uid: 0,
                        user: "root".into(),
                        comm: "gunicorn".into(),
                        cmdline: "gunicorn --bind 127.0.0.1:5050 app:app".into(),
                        state: 'S',
                        start_time: None,
                        age_secs: Some(90),
                        cgroup: "/".into(),
                        container: None,
                    },
                    fd: 5,
                })
                .collect(),
        }
    }

    #[test]
    fn renders_tables_and_check_lines() {
        let ports = PortSet::parse("5050,5051").unwrap();
        let r = WhoResult { sockets: vec![sock(5050, &[10, 11])], method: "bpf-iterator", ..Default::default() };
        let text = render(&ports, &r);
        assert!(text.contains("port 5050: 1 socket, 2 processes"), "{text}");
        assert!(text.contains("port 5051: free"));
        assert!(text.contains("2/128") && text.contains("gunicorn") && text.contains("90s"));
        let st = port_status(&ports, &r);
        assert!(!st[0].free && st[1].free);
        assert_eq!(st[0].holders.len(), 2);
        let c = render_check(&st);
        assert!(c.contains("5050: held by 10 (gunicorn, tcp listen), 11 (gunicorn, tcp listen)"), "{c}");
        assert!(c.contains("5051: free"));
    }

    #[test]
    fn formats_ages() {
        assert_eq!(age(Some(5)), "5s");
        assert_eq!(age(Some(600)), "10m");
        assert_eq!(age(Some(7200)), "2h");
        assert_eq!(age(None), "-");
        assert_eq!(truncate("abcdef", 4), "abc…");
    }
}
