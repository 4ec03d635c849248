//! Every socket bound to a port and every process holding it (`who`, `check`, and
//! whatever must know a port's holders before acting: `free`, the agent, `wait`).
//!
//! Sockets come from sock_diag (filtered in the kernel). Holders come from the
//! fastest method that can answer exactly here: the `iter/task` holders program
//! run over the processes that held the ports last time (the candidates' pass,
//! kept only when the fds found account for every reference to each socket's
//! file), then over every task (one visit per task), then the `iter/task_file`
//! pass (one visit per open file), then a /proc walk (no privilege needed; sees
//! only what /proc shows).
use std::collections::{HashMap, HashSet};

use portwatch_common::tcp_state;
use serde::Serialize;

use crate::{
    ebpf::iter,
    error::{Error, Result},
    model::{
        ports::PortSet,
        process::{Holder, ProcInfo},
        socket::{Family, Proto, SockEntry, SockState, Socket},
    },
    sys::{
        proc::{self, FdHolder},
        sockdiag::{self, Query},
    },
};

/// How holders are found. `Auto` takes the fastest method that can answer exactly
/// here; the others force one (for comparison, tests and benchmarks).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Method {
    #[default]
    Auto,
    /// The `iter/task` holders pass over every task (never the candidates' pass:
    /// see `complete_from_candidates`); fails if it cannot answer.
    Holders,
    /// The `iter/task_file` pass (one visit per open file on the host).
    TaskFile,
    /// A walk of /proc/*/fd (no privilege needed; sees only what /proc shows).
    Proc,
}

impl Method {
    /// The name reported in [`WhoResult::method`].
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
    /// Also TCP sockets in other states on the ports (established, closing...): the
    /// server side of accepted connections, and clients bound to the port.
    pub connections: bool,
    pub method: Method,
    /// Read the pinned iterator in a second thread while sock_diag runs (one-shot
    /// commands: less wall time; the agent leaves it off to spend no CPU on idle ports).
    pub prefetch: bool,
}

impl WhoOptions {
    /// TCP sockets only, no prefetch: what policy (free, the agent) asks for.
    pub const TCP: Self = Self { tcp: true, udp: false, clients: false, connections: false, method: Method::Auto, prefetch: false };
}

#[derive(Clone, Debug, Default)]
pub struct WhoResult {
    pub sockets: Vec<Socket>,
    /// Connections to the ports from local clients (only with `--clients`).
    pub clients: Vec<Socket>,
    /// How holders were found: "bpf-holders", "bpf-iterator", "proc-walk" or "none".
    pub method: &'static str,
    /// Shown on stderr: e.g. why the fallback was used.
    pub notes: Vec<String>,
    /// Where the time went (for `who -v`): phase name and milliseconds.
    pub phases: Vec<(&'static str, f64)>,
    /// Leases on the ports (`who` fills them in from `service::lease`).
    pub leases: Vec<crate::model::lease::LeaseView>,
}

impl WhoResult {
    pub fn on_port(&self, port: u16) -> impl Iterator<Item = &Socket> {
        self.sockets.iter().filter(move |s| s.port == port)
    }
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

/// Everything bound to `ports`.
pub fn gather(ports: &PortSet, opts: WhoOptions) -> Result<WhoResult> {
    let list: Vec<u16> = ports.iter().collect();
    let both = !opts.tcp && !opts.udp;
    let q = Query { tcp: opts.tcp || both, udp: opts.udp || both, connections: opts.connections };
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
        all.into_iter().filter(|s| ports.contains(s.peer_port) && s.state == tcp_state::ESTABLISHED).collect()
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
    let mut out: Vec<Socket> = sockets.iter().map(|s| Socket::new(s, holders_for(fds, s.inode, &mut cache), false)).collect();
    out.sort_by_key(|s| (s.port, s.proto, s.family, s.addr));
    let mut cl: Vec<Socket> = clients.iter().map(|s| Socket::new(s, holders_for(fds, s.inode, &mut cache), true)).collect();
    cl.sort_by_key(|c| c.port);
    WhoResult { sockets: out, clients: cl, method, notes, phases: Vec::new(), leases: Vec::new() }
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
    let tcp_states = if q.connections { !0 } else { (1 << tcp_state::LISTEN) | (1 << tcp_state::CLOSE) };
    let mut method = Method::Holders.name();
    // `--method holders` is the full pass (one visit per task), always.
    let candidates = if strict {
        None
    } else {
        candidate_pass(list, q, tcp_states).unwrap_or_else(|e| {
            tracing::debug!("holders pass over candidates: {e}");
            None
        })
    };
    // sock_diag's view of the sockets, when the cgroup's candidates needed it.
    let mut described = None;
    let scan = match candidates {
        Some(found) => {
            // Who holds the port now, for a later ask: when this server stops
            // waiting on its socket (stopped, wedged), its holders stay candidates.
            if matches!(found.source, Source::Waiting | Source::Cgroup) {
                remember(&found.scan);
            }
            clock.lap(found.source.phase());
            method = CANDIDATES;
            described = found.described;
            Ok(Ok(found.scan))
        }
        None => {
            clock.lap("candidates (no proof)");
            let full = iter::holders_on_ports(list, q.tcp, q.udp, tcp_states);
            if let Ok(Ok(scan)) = &full {
                remember(scan);
            }
            clock.lap("holders pass");
            full
        }
    };
    let scan = match scan {
        Ok(Ok(scan)) => scan,
        Ok(Err(why)) if strict => {
            return Err(Error::unsupported(
                format!("the holders pass cannot answer this query: {why}"),
                "use --method auto (falls back to the task_file pass)",
            ));
        }
        Ok(Err(_)) => return Ok(None),
        Err(e) if strict => return Err(e),
        Err(e) => {
            tracing::debug!("holders iterator: {e}");
            return Ok(None);
        }
    };
    let described = match described {
        Some(d) => Some(d),
        None => describe(&scan.sockets, list)?,
    };
    let Some(mut sockets) = described else { return Ok(None) };
    // A socket bound since the pass: its holders are unknown, so take the full path.
    let seen: HashSet<u64> = scan.sockets.iter().map(|s| s.inode).collect();
    if sockets.iter().any(|s| !seen.contains(&s.inode)) {
        return Ok(None);
    }
    // Bound, never-listening TCP sockets are in sock_diag only from Linux 6.8: before,
    // ask the socket itself, through its holder.
    let described: HashSet<u64> = sockets.iter().map(|s| s.inode).collect();
    for s in scan.sockets.iter().filter(|s| !described.contains(&s.inode) && s.state == tcp_state::CLOSE) {
        if let Some(e) = scan.holders.iter().filter(|h| h.inode == s.inode).find_map(|h| unlisted_socket(s, h)) {
            sockets.push(e);
        }
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
    let mut r = assemble(&sockets, &client_socks, &fds, method, Vec::new());
    clock.lap("/proc details");
    r.phases = clock.0;
    Ok(Some(r))
}

/// [`WhoResult::method`] when the holders came from the candidates' pass.
pub const CANDIDATES: &str = "bpf-candidates";

/// Processes checked at most in the candidates' pass (hinted ones and their
/// descendants); more, and the full pass is cheaper.
const MAX_CANDIDATES: usize = 64;

/// The holders pass over a few processes instead of every task (see
/// [`hints`](super::hints)): first over this process alone, which finds the
/// sockets on the ports (and answers at once when there are none), then over the
/// processes that held these ports last time, those waiting on the sockets and
/// their parents, and those in the sockets' cgroups, each with their descendants.
/// `None` when no answer can be proven complete ([`complete_from_candidates`]).
fn candidate_pass(list: &[u16], q: Query, tcp_states: u32) -> Result<Option<FromCandidates>> {
    if list.len() > portwatch_common::holders::MAX_PORTS {
        return Ok(None);
    }
    let me = std::process::id();
    let Some(mine) = iter::holders_in_processes(list, q.tcp, q.udp, tcp_states, &[me])? else { return Ok(None) };
    let Some(first) = mine.into_iter().next() else { return Ok(None) };
    if first.sockets.is_empty() {
        return Ok(Some(FromCandidates { scan: first, source: Source::NoSockets, described: None }));
    }
    let found = |scan, source, described| Some(FromCandidates { scan, source, described });
    // The cheapest first; the cgroup's needs a sock_diag dump and a cgroup read.
    let hinted = super::hints::Hints::load().pids_for(list);
    if let Some(scan) = check_candidates(hinted, &first, list, q, tcp_states)? {
        return Ok(found(scan, Source::Hinted, None));
    }
    if let Some(scan) = check_candidates(waiter_candidates(&first.waiters), &first, list, q, tcp_states)? {
        return Ok(found(scan, Source::Waiting, None));
    }
    let Ok(Some(described)) = describe(&first.sockets, list) else { return Ok(None) };
    Ok(check_candidates(cgroup_candidates(&described), &first, list, q, tcp_states)?
        .and_then(|scan| found(scan, Source::Cgroup, Some(described))))
}

/// An answer of the candidates' pass.
struct FromCandidates {
    scan: iter::HolderScan,
    source: Source,
    /// sock_diag's view of its sockets, when the pass read it.
    described: Option<Vec<SockEntry>>,
}

/// Which candidates gave an answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    /// The run over `who` itself found no sockets on the ports.
    NoSockets,
    /// The processes that held the ports at the last ask ([`hints`](super::hints)).
    Hinted,
    /// The processes waiting on the sockets, and their parents.
    Waiting,
    /// The processes in the sockets' cgroups.
    Cgroup,
}

impl Source {
    /// The phase `who -v` names.
    fn phase(self) -> &'static str {
        match self {
            Self::NoSockets => "no sockets",
            Self::Hinted => "holders of hinted candidates",
            Self::Waiting => "holders of waiting candidates",
            Self::Cgroup => "holders of the cgroup's candidates",
        }
    }
}

/// The processes waiting on the sockets (a server idle in accept, poll/select or
/// epoll_wait) and their parents: a pre-forking server's master holds the
/// listener its workers wait on.
fn waiter_candidates(waiters: &[i32]) -> Vec<i32> {
    let mut pids = waiters.to_vec();
    for &w in waiters {
        if let Some(parent) = proc::parent_of(w).filter(|&p| p > 1 && !pids.contains(&p)) {
            pids.push(parent);
        }
    }
    pids
}

/// Runs the holders program over `pids` and their descendants; the answer when
/// [`complete_from_candidates`] proves it, with `first` (the run over ourselves).
/// No pids: no answer, and no run.
fn check_candidates(
    mut pids: Vec<i32>,
    first: &iter::HolderScan,
    list: &[u16],
    q: Query,
    tcp_states: u32,
) -> Result<Option<iter::HolderScan>> {
    let me = std::process::id();
    // Forked workers hold what their parent held: descendants, breadth first.
    let mut i = 0;
    while i < pids.len() && pids.len() < MAX_CANDIDATES {
        for c in proc::children_of(pids[i]) {
            if !pids.contains(&c) {
                pids.push(c);
            }
        }
        i += 1;
    }
    pids.truncate(MAX_CANDIDATES);
    pids.retain(|&p| p as u32 != me);
    if pids.is_empty() {
        return Ok(None);
    }
    let pids: Vec<u32> = pids.into_iter().map(|p| p as u32).collect();
    let Some(mut runs) = iter::holders_in_processes(list, q.tcp, q.udp, tcp_states, &pids)? else { return Ok(None) };
    runs.insert(0, first.clone());
    Ok(complete_from_candidates(&runs))
}

/// The processes in the cgroups (and their descendants) that created the sockets
/// on the ports, when none is the root cgroup and there are at most
/// [`MAX_CANDIDATES`]; else none.
fn cgroup_candidates(sockets: &[SockEntry]) -> Vec<i32> {
    /// The cgroup v2 root's id.
    const ROOT: u64 = 1;
    let mut ids: Vec<u64> = sockets.iter().map(|s| s.cgroup).collect();
    ids.sort_unstable();
    ids.dedup();
    if ids.is_empty() || ids.iter().any(|&id| id == 0 || id == ROOT) {
        return Vec::new();
    }
    let mut pids = Vec::new();
    for id in ids {
        let Ok(dir) = crate::sys::cgroup::path_by_id(id) else { return Vec::new() };
        pids.extend(crate::sys::cgroup::pids_in(&dir));
        if pids.len() > MAX_CANDIDATES {
            return Vec::new();
        }
    }
    pids
}

/// One answer from the runs over candidate processes, when it is provably
/// complete: every run found the same sockets, each with the same known number of
/// references to its file, and the fds found over all runs account for every one.
/// A process outside the candidates holding a socket leaves a reference
/// unaccounted for; a transient reference does too, and costs a full pass.
pub fn complete_from_candidates(runs: &[iter::HolderScan]) -> Option<iter::HolderScan> {
    let first = runs.first()?;
    let key = |scan: &iter::HolderScan| {
        let mut k: Vec<(u64, u32)> = scan.sockets.iter().map(|s| (s.inode, s.refs)).collect();
        k.sort_unstable();
        k
    };
    let sockets = key(first);
    if sockets.iter().any(|&(_, refs)| refs == 0) || runs.iter().any(|r| key(r) != sockets) {
        return None;
    }
    let holders: Vec<FdHolder> = runs.iter().flat_map(|r| r.holders.iter().copied()).collect();
    for &(inode, refs) in &sockets {
        if holders.iter().filter(|h| h.inode == inode).count() != refs as usize {
            return None;
        }
    }
    let mut holders = holders;
    holders.sort();
    holders.dedup();
    Some(iter::HolderScan { sockets: first.sockets.clone(), holders, waiters: Vec::new() })
}

/// Remembers who held each port (for the next query's candidates).
fn remember(scan: &iter::HolderScan) {
    let mut seen: std::collections::BTreeMap<u16, Vec<i32>> = std::collections::BTreeMap::new();
    for s in &scan.sockets {
        let pids = seen.entry(s.port).or_default();
        pids.extend(scan.holders.iter().filter(|h| h.inode == s.inode).map(|h| h.pid));
    }
    super::hints::Hints::remember(&seen);
}

/// sock_diag's view of the sockets a holders pass found: one dump per (protocol,
/// family, states) present (a TCP listener needs only the listening-hash dump, the
/// cheapest; bound-only sockets need the whole bind hash). `None` for a socket of
/// a kind it does not know.
fn describe(found: &[iter::ScannedSocket], list: &[u16]) -> Result<Option<Vec<SockEntry>>> {
    let mut dumps: Vec<(Proto, Family, u32)> = Vec::new();
    for s in found {
        let Some(family) = Family::from_af(u16::from(s.family)) else { return Ok(None) };
        let d = match (Proto::from_ipproto(u16::from(s.proto)), s.state) {
            (Some(Proto::Tcp), tcp_state::LISTEN) => (Proto::Tcp, family, 1 << tcp_state::LISTEN),
            (Some(Proto::Tcp), tcp_state::CLOSE | tcp_state::BOUND_INACTIVE) => {
                (Proto::Tcp, family, (1 << tcp_state::CLOSE) | (1 << tcp_state::BOUND_INACTIVE))
            }
            (Some(Proto::Tcp), state) => (Proto::Tcp, family, 1 << state),
            (Some(Proto::Udp), _) => (Proto::Udp, family, u32::MAX),
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
    Ok(Some(sockets))
}

/// A socket the holders pass found and sock_diag does not list, described through a
/// duplicate of its holder's fd.
fn unlisted_socket(s: &iter::ScannedSocket, h: &FdHolder) -> Option<SockEntry> {
    let (addr, cookie, uid) = crate::sys::pidfd::peek_socket(h.pid, h.fd).ok()?;
    Some(SockEntry {
        proto: Proto::from_ipproto(u16::from(s.proto))?,
        family: Family::from_af(u16::from(s.family))?,
        state: s.state,
        addr: addr.ip(),
        port: s.port,
        peer: if addr.is_ipv4() { std::net::Ipv4Addr::UNSPECIFIED.into() } else { std::net::Ipv6Addr::UNSPECIFIED.into() },
        peer_port: 0,
        inode: s.inode,
        uid,
        cookie,
        recv_q: 0,
        send_q: 0,
        cgroup: 0,
    })
}

/// Local clients connected to `list` and their holders, from a holders pass over
/// the clients' own ports; `None` when that pass cannot answer exactly.
fn clients_fast(list: &[u16]) -> Result<Option<(Vec<SockEntry>, Vec<FdHolder>)>> {
    let wanted: HashSet<u16> = list.iter().copied().collect();
    let all = sockdiag::dump_all_connections().map_err(|e| Error::io("sock_diag", e))?;
    let clients: Vec<SockEntry> = all.into_iter().filter(|s| wanted.contains(&s.peer_port) && s.state == tcp_state::ESTABLISHED).collect();
    if clients.is_empty() {
        return Ok(Some((clients, Vec::new())));
    }
    let mut locals: Vec<u16> = clients.iter().map(|c| c.port).collect();
    locals.sort_unstable();
    locals.dedup();
    if locals.len() > FAST_MAX_PORTS {
        return Ok(None);
    }
    let scan = match iter::holders_on_ports(&locals, true, false, 1 << tcp_state::ESTABLISHED) {
        Ok(Ok(scan)) => scan,
        Ok(Err(_)) => return Ok(None),
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

/// `check`'s per-port answer.
#[derive(Debug, Serialize)]
pub struct PortStatus {
    pub port: u16,
    pub free: bool,
    pub holders: Vec<BriefHolder>,
    /// Sockets on the port that did not decide the answer but may matter
    /// (connections and TIME_WAIT that a bind without SO_REUSEADDR runs into).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

#[derive(Debug, Serialize, PartialEq, Eq, PartialOrd, Ord)]
pub struct BriefHolder {
    pub pid: i32,
    pub comm: String,
    pub proto: Proto,
    pub state: SockState,
}

/// What "free" means for `check`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Strictness {
    /// A server that sets SO_REUSEADDR (gunicorn, uvicorn, node, most servers) could
    /// bind the port on every address.
    ReuseAddr,
    /// A bind without SO_REUSEADDR would succeed (TIME_WAIT connections block it).
    Strict,
}

/// Whether a fresh server socket could bind `port` on every address (the IPv6
/// wildcard, dual-stack, meets every socket on the port, IPv4 included), as the
/// kernel answers it. `None` when the test cannot be made (a privileged port
/// without privilege, no IPv6 and no IPv4...).
pub fn test_bind(proto: Proto, port: u16, strict: Strictness) -> Option<bool> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

    use socket2::{Domain, Socket, Type};
    let ty = if proto == Proto::Tcp { Type::STREAM } else { Type::DGRAM };
    let try_bind = |addr: IpAddr| -> std::io::Result<()> {
        let s = Socket::new(if addr.is_ipv4() { Domain::IPV4 } else { Domain::IPV6 }, ty, None)?;
        s.set_reuse_address(strict == Strictness::ReuseAddr)?;
        if addr.is_ipv6() {
            s.set_only_v6(false)?;
        }
        s.bind(&SocketAddr::new(addr, port).into())
    };
    let answer = |r: std::io::Result<()>| match r {
        Ok(()) => Some(true),
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => Some(false),
        Err(_) => None,
    };
    answer(try_bind(IpAddr::V6(Ipv6Addr::UNSPECIFIED))).or_else(|| answer(try_bind(IpAddr::V4(Ipv4Addr::UNSPECIFIED))))
}

/// What `check` found: each port's status, notes, and the sockets it looked at on
/// the ports that are not free (with their holders), for whoever wants to say more.
pub struct CheckResult {
    pub statuses: Vec<PortStatus>,
    pub notes: Vec<String>,
    pub sockets: Vec<Socket>,
}

/// `check`: whether each port is free (as [`Strictness`] defines it, asked of the
/// kernel with a test bind), and who holds those that are not.
pub fn check(ports: &PortSet, tcp: bool, udp: bool, strict: Strictness) -> Result<CheckResult> {
    let protos: Vec<Proto> = [(tcp, Proto::Tcp), (udp, Proto::Udp)].into_iter().filter(|(on, _)| *on).map(|(_, p)| p).collect();
    // Held ports (or ports the test cannot decide) get one look at what is on them.
    let mut verdict: Vec<(u16, Option<bool>)> = Vec::new();
    for port in ports.iter() {
        let answers: Vec<Option<bool>> = protos.iter().map(|p| test_bind(*p, port, strict)).collect();
        let free = if answers.contains(&Some(false)) {
            Some(false)
        } else if answers.iter().all(|a| *a == Some(true)) {
            Some(true)
        } else {
            None
        };
        verdict.push((port, free));
    }
    let look: PortSet = verdict.iter().filter(|(_, f)| *f != Some(true)).map(|(p, _)| *p).collect();
    let who = if look.is_empty() {
        WhoResult::default()
    } else {
        gather(&look, WhoOptions { tcp, udp, connections: true, prefetch: true, ..WhoOptions::default() })?
    };
    let mut out = Vec::new();
    for (port, free) in verdict {
        let socks: Vec<&Socket> = who.on_port(port).collect();
        // Undecided by the test: held when something that blocks a server is there.
        let blocking = |s: &&Socket| s.proto == Proto::Udp || matches!(s.state, SockState::Listen | SockState::Bound);
        let free = free.unwrap_or_else(|| !socks.iter().any(blocking));
        let mut holders: Vec<BriefHolder> = socks
            .iter()
            .flat_map(|s| {
                s.holders.iter().map(move |h| BriefHolder { pid: h.proc.pid, comm: h.proc.comm.clone(), proto: s.proto, state: s.state })
            })
            .collect();
        holders.sort();
        holders.dedup();
        // Connections on the port (TIME_WAIT included, which no process holds): they
        // matter to a bind without SO_REUSEADDR, and say why a port nobody holds is
        // held. Only the notes below use them, so they are looked up only when a note
        // can follow: a port free for SO_REUSEADDR that a bind without it would not
        // get (a strict bind tells, cheaply), or a held port with no holder. The
        // lookup is a dump of the established hash, which the kernel walks whole
        // (about 2 ms per family on a large host, whatever the port).
        let wants_conns = tcp
            && if free {
                strict == Strictness::ReuseAddr && test_bind(Proto::Tcp, port, Strictness::Strict) != Some(true)
            } else {
                holders.is_empty()
            };
        let lingering = if wants_conns {
            sockdiag::sockets_on_ports(&[port], Query { tcp: true, udp: false, connections: true }).unwrap_or_default()
        } else {
            Vec::new()
        };
        let mut by_state: std::collections::BTreeMap<&str, usize> = Default::default();
        for s in lingering.iter().filter(|s| s.port == port && !matches!(s.sock_state(), SockState::Listen | SockState::Bound)) {
            *by_state.entry(s.sock_state().name()).or_default() += 1;
        }
        let conns: Vec<String> = by_state.iter().map(|(st, n)| format!("{n} {st}")).collect();
        let mut notes = Vec::new();
        match (free, holders.is_empty(), conns.is_empty()) {
            (true, _, false) => notes.push(format!(
                "{} connection(s) on the port: a server that sets SO_REUSEADDR can bind it, a bind without it may fail (check --strict)",
                conns.join(", ")
            )),
            (false, true, false) => notes.push(format!(
                "no process holds it: {} connection(s) on the port block a bind without SO_REUSEADDR; they end by themselves",
                conns.join(", ")
            )),
            (false, true, true) => notes.push(format!("no process found holding it; run `portwatch who {port}`")),
            _ => {}
        }
        out.push(PortStatus { port, free, holders: if free { Vec::new() } else { holders }, notes });
    }
    Ok(CheckResult { statuses: out, notes: who.notes, sockets: who.sockets })
}

#[cfg(test)]
mod tests {
    use super::*;
    use iter::{HolderScan, ScannedSocket};

    fn sock(inode: u64, refs: u32) -> ScannedSocket {
        ScannedSocket { proto: 6, family: 2, state: 10, port: 5050, inode, refs }
    }

    fn run(sockets: &[ScannedSocket], holders: &[(i32, i32, u64)]) -> HolderScan {
        HolderScan {
            sockets: sockets.to_vec(),
            holders: holders.iter().map(|&(pid, fd, inode)| FdHolder { pid, fd, inode }).collect(),
            waiters: Vec::new(),
        }
    }

    #[test]
    fn candidates_answer_only_when_every_reference_is_accounted_for() {
        let s = [sock(7, 3)];
        // Our own run finds the socket; three candidates hold one fd each.
        let runs = [run(&s, &[]), run(&s, &[(10, 3, 7)]), run(&s, &[(11, 3, 7)]), run(&s, &[(12, 3, 7)])];
        let got = complete_from_candidates(&runs).expect("complete");
        assert_eq!(got.holders.iter().map(|h| h.pid).collect::<Vec<_>>(), vec![10, 11, 12]);
        // One reference held elsewhere (or a transient one): no answer.
        assert_eq!(complete_from_candidates(&runs[..3]), None);
        // Two fds of one process count twice (dup).
        let dup = [run(&[sock(7, 2)], &[]), run(&[sock(7, 2)], &[(10, 3, 7), (10, 9, 7)])];
        assert_eq!(complete_from_candidates(&dup).map(|s| s.holders.len()), Some(2));
        // The count changed between runs (a fork meanwhile), or is unknown: no answer.
        let moved = [run(&[sock(7, 1)], &[]), run(&[sock(7, 2)], &[(10, 3, 7), (11, 3, 7)])];
        assert_eq!(complete_from_candidates(&moved), None);
        let unknown = [run(&[sock(7, 0)], &[])];
        assert_eq!(complete_from_candidates(&unknown), None);
        // A socket appeared between runs: no answer.
        let grew = [run(&[sock(7, 1)], &[(10, 3, 7)]), run(&[sock(7, 1), sock(8, 1)], &[(11, 4, 8)])];
        assert_eq!(complete_from_candidates(&grew), None);
        // No sockets at all: a complete, empty answer.
        assert_eq!(complete_from_candidates(&[run(&[], &[])]), Some(HolderScan::default()));
    }
}
