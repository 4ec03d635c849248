//! BPF iterators for `who`: `pw_task_holders` (`iter/task`: the holders of the
//! sockets on a few ports, one pass over the tasks) and `pw_task_sockets`
//! (`iter/task_file`: every (process, fd) holding any socket, one pass over every
//! open file; the fallback when the first cannot answer exactly).
//!
//! Loading a BPF program costs far more than running it (parsing kernel BTF, creating
//! maps, verifying), so the first run pins the iterator in bpffs under a directory
//! named after the embedded object's hash; later runs only open the pinned file and
//! read it, which runs the iterator. Pins of other builds are removed when a new one
//! is made. bpffs pins are root-only, like the iterator itself.
use std::{
    fs::{self, File},
    io::Read,
    path::{Path, PathBuf},
};

use aya::{
    maps::{HashMap as BpfHashMap, Map, MapData},
    programs::links::FdLink,
};
use portwatch_common::{holders, maps, programs, HolderQuery, HolderRecord, TaskSocket};

use crate::{
    ebpf::loader::{hook, Loader, Sizes},
    error::{Error, Result},
    sys::{mounts, proc::FdHolder},
};

pub const PIN_ROOT: &str = "/sys/fs/bpf/portwatch";

/// Where this build's iterator is pinned.
pub fn pin_path() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| Path::new(PIN_ROOT).join(env!("PORTWATCH_OBJECT_HASH")).join("task_sockets")).clone()
}

/// Whether this build's iterator is pinned (the fast path is available).
pub fn pinned() -> bool {
    pin_path().exists()
}

fn pin_dir() -> PathBuf {
    pin_path().parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from(PIN_ROOT))
}

/// A socket the holders iterator found on an asked port.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ScannedSocket {
    /// 6 or 17.
    pub proto: u8,
    pub family: u8,
    /// Kernel TCP state number (TCP_CLOSE for a bound, idle TCP socket).
    pub state: u8,
    pub port: u16,
    pub inode: u64,
    /// References to the socket's file when it was found (0: unknown here); see
    /// `HolderRecord::tgid`.
    pub refs: u32,
}

/// What the holders iterator found: every socket on the ports and every fd holding one.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct HolderScan {
    pub sockets: Vec<ScannedSocket>,
    pub holders: Vec<FdHolder>,
    /// Processes that were waiting on the sockets (in accept, poll/select or
    /// epoll_wait) when the program found them: candidates, not holders.
    pub waiters: Vec<i32>,
}

/// The sockets on `ports` (TCP ones in `tcp_states`) and their holders, from the
/// `iter/task` program: one pass over the tasks per 16 ports. `Err(why)` inside
/// when it cannot answer exactly here (kernel layout not supported, more sockets
/// than it tracks, another pid namespace): the caller then uses [`all_socket_fds`].
pub fn holders_on_ports(ports: &[u16], tcp: bool, udp: bool, tcp_states: u32) -> Result<std::result::Result<HolderScan, String>> {
    if !pinned() {
        // Loads and pins both iterators (the first run on a host, or a new build).
        load_and_pin(&Loader::new()?, &pin_path())?;
    }
    let dir = pin_dir();
    let link = dir.join(HOLDERS_PIN);
    if !link.exists() {
        return Ok(Err(self_check_failure()
            .map_or_else(|| "it is not pinned on this host (see portwatch doctor)".into(), |w| format!("its self-check failed: {w}"))));
    }
    let mut map = query_map(&dir).map_err(Error::Internal)?;
    let mut scan = HolderScan::default();
    for chunk in ports.chunks(holders::MAX_PORTS) {
        match query_once(&mut map, &link, chunk, tcp, udp, tcp_states)? {
            Ok(part) => {
                scan.sockets.extend(part.sockets);
                scan.holders.extend(part.holders);
            }
            Err(status) => return Ok(Err(format!("it gave no complete answer: {}", status_name(status)))),
        }
    }
    scan.holders.sort();
    scan.holders.dedup();
    Ok(Ok(scan))
}

/// The holders pass over the tasks of the given processes only (the kernel's task
/// filter for iterator links, Linux >= 6.1), one run per process: what each run
/// found, in the order of `pids` (a run's sockets are all on the ports, whoever
/// holds them; its holders are that process's fds). At most 16 ports. `Ok(None)`
/// when this cannot be done here (the program not pinned for it, a kernel without
/// the filter, or a run without a complete answer); the caller then takes the
/// full pass.
pub fn holders_in_processes(ports: &[u16], tcp: bool, udp: bool, tcp_states: u32, pids: &[u32]) -> Result<Option<Vec<HolderScan>>> {
    if ports.len() > holders::MAX_PORTS {
        return Ok(None);
    }
    if !pinned() {
        // The first run on a host, or a new build: load and pin, as the full pass would.
        load_and_pin(&Loader::new()?, &pin_path())?;
    }
    let dir = pin_dir();
    let Ok(prog) = crate::sys::bpf_iter::PinnedProgram::open(&dir.join(HOLDERS_PROG_PIN)) else { return Ok(None) };
    let mut map = query_map(&dir).map_err(Error::Internal)?;
    let q = query(ports, tcp, udp, tcp_states);
    let key = query_key();
    let mut buf = Vec::with_capacity(4096);
    let mut runs = || -> Result<Option<Vec<HolderScan>>> {
        let mut out = Vec::with_capacity(pids.len());
        for &pid in pids {
            // The program resolves the query into the map value: a fresh one per run.
            map.insert(key, q, 0).map_err(|e| Error::Internal(format!("holder query: {e}")))?;
            buf.clear();
            match prog.run_for_process(pid, &mut buf) {
                Ok(()) => match parse_holder_status(&buf) {
                    Ok(scan) => out.push(scan),
                    Err(_) => return Ok(None),
                },
                // The process is gone: it holds nothing.
                Err(e) if e.raw_os_error() == Some(libc::ESRCH) => out.push(HolderScan::default()),
                Err(e) => {
                    tracing::debug!("filtered holders pass for pid {pid}: {e}");
                    return Ok(None);
                }
            }
        }
        Ok(Some(out))
    };
    let out = runs();
    let _ = map.remove(&key);
    out
}

/// Whether the candidates' pass can run here (for `doctor`): the holders program
/// pinned for it (its file reference count passed the self-check) and the
/// kernel's task filter for iterator links.
pub fn candidates_supported() -> std::result::Result<(), String> {
    let path = pin_dir().join(HOLDERS_PROG_PIN);
    let prog = crate::sys::bpf_iter::PinnedProgram::open(&path).map_err(|e| {
        format!("{} not pinned ({e}): the holders pass or its file reference count failed its self-check here", path.display())
    })?;
    let mut buf = Vec::new();
    match prog.run_for_process(std::process::id(), &mut buf) {
        Ok(()) => Ok(()),
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => Err(format!("no task filter for iterator links (Linux >= 6.1): {e}")),
        Err(e) => Err(e.to_string()),
    }
}

/// Whether the holders program finds the tasks waiting on a socket, the
/// candidates of a first ask (for `doctor`): a thread of ours in poll(), then one
/// in epoll_wait(), on a listener of ours, each woken by a connection it accepts.
pub fn waiters_supported() -> std::result::Result<(), String> {
    use std::os::fd::AsRawFd;
    let tcp = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| e.to_string())?;
    let addr = tcp.local_addr().map_err(|e| e.to_string())?;
    let me = std::process::id();
    for (how, wait) in [("poll()", poll_once as fn(i32)), ("epoll_wait()", epoll_once)] {
        let listener = tcp.try_clone().map_err(|e| e.to_string())?;
        let waiter = std::thread::spawn(move || {
            wait(listener.as_raw_fd());
            let _ = listener.accept();
        });
        let mut seen = Ok(false);
        for _ in 0..100 {
            seen = match holders_in_processes(&[addr.port()], true, false, 1 << portwatch_common::tcp_state::LISTEN, &[me]) {
                Ok(Some(runs)) => Ok(runs.first().is_some_and(|r| r.waiters.contains(&(me as i32)))),
                Ok(None) => Err("the holders pass gave no complete answer".to_string()),
                Err(e) => Err(e.to_string()),
            };
            if !matches!(seen, Ok(false)) {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(10));
        }
        // Wakes the waiter (it accepts the connection, so the next one waits too).
        let _ = std::net::TcpStream::connect(addr);
        let _ = waiter.join();
        if !seen? {
            return Err(format!("a thread in {how} on a listener was not found on its wait queue"));
        }
    }
    Ok(())
}

/// Waits (at most 2 s) in poll() for `fd` to be readable.
fn poll_once(fd: i32) {
    let mut p = libc::pollfd { fd, events: libc::POLLIN, revents: 0 };
    // SAFETY: one valid pollfd.
    unsafe { libc::poll(&mut p, 1, 2000) };
}

/// Waits (at most 2 s) in epoll_wait() for `fd` to be readable.
fn epoll_once(fd: i32) {
    // SAFETY: plain syscalls on an epoll fd of our own, closed before returning.
    unsafe {
        let ep = libc::epoll_create1(libc::EPOLL_CLOEXEC);
        if ep < 0 {
            return;
        }
        let mut ev = libc::epoll_event { events: libc::EPOLLIN as u32, u64: 0 };
        if libc::epoll_ctl(ep, libc::EPOLL_CTL_ADD, fd, &mut ev) == 0 {
            libc::epoll_wait(ep, &mut ev, 1, 2000);
        }
        libc::close(ep);
    }
}

type QueryMap = BpfHashMap<MapData, u64, HolderQuery>;

/// The pinned `HOLDER_QUERY` map in `dir`.
fn query_map(dir: &Path) -> std::result::Result<QueryMap, String> {
    let map = MapData::from_pin(dir.join(QUERY_PIN)).map_err(|e| format!("holder query map: {e}"))?;
    BpfHashMap::try_from(Map::LruHashMap(map)).map_err(|e| format!("holder query map: {e}"))
}

fn query(ports: &[u16], tcp: bool, udp: bool, tcp_states: u32) -> HolderQuery {
    let mut q = HolderQuery::EMPTY;
    q.nports = ports.len() as u32;
    q.ports[..ports.len()].copy_from_slice(ports);
    q.protos = if tcp { holders::PROTO_TCP } else { 0 } | if udp { holders::PROTO_UDP } else { 0 };
    q.tcp_states = tcp_states;
    q
}

/// The program finds the query by the reading thread's (tgid, tid), as the kernel
/// numbers them; in another pid namespace these differ and it finds none.
fn query_key() -> u64 {
    (u64::from(std::process::id()) << 32) | u64::from(nix::unistd::gettid().as_raw() as u32)
}

fn query_once(
    map: &mut QueryMap,
    link: &Path,
    ports: &[u16],
    tcp: bool,
    udp: bool,
    tcp_states: u32,
) -> Result<std::result::Result<HolderScan, Option<u32>>> {
    let q = query(ports, tcp, udp, tcp_states);
    let key = query_key();
    map.insert(key, q, 0).map_err(|e| Error::Internal(format!("holder query: {e}")))?;
    let read = File::open(link).and_then(|mut f| {
        let mut buf = Vec::with_capacity(16 * 1024);
        f.read_to_end(&mut buf).map(|_| buf)
    });
    let _ = map.remove(&key);
    let buf = read.map_err(|e| Error::io("reading the holders iterator", e))?;
    Ok(parse_holder_status(&buf))
}

/// Why the holders pass is not used on this host, when its self-check failed here.
pub fn self_check_failure() -> Option<String> {
    SELF_CHECK.get().cloned()
}

static SELF_CHECK: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Why the holders pass gave no complete answer, in words.
pub fn status_name(status: Option<u32>) -> &'static str {
    match status {
        None => "no status record",
        Some(holders::TOO_MANY) => "too many sockets or a hash chain too long",
        Some(holders::READ_FAILED) => "a kernel read failed",
        Some(holders::FD_TABLE_TOO_BIG) => "an fd table too big",
        Some(holders::LOOP_FAILED) => "bpf_loop refused to run",
        Some(_) => "an unknown status",
    }
}

/// Parses the holders iterator's output; `None` unless it reports a complete answer.
pub fn parse_holder_records(buf: &[u8]) -> Option<HolderScan> {
    parse_holder_status(buf).ok()
}

/// Where the walk stopped, from the first status record (for messages).
fn walk_detail(buf: &[u8]) -> String {
    buf.chunks_exact(core::mem::size_of::<HolderRecord>())
        .map(|c| {
            // SAFETY: exact-size chunk of a POD type.
            unsafe { core::ptr::read_unaligned::<HolderRecord>(c.as_ptr().cast()) }
        })
        .find(|r| r.kind == holders::REC_STATUS)
        .map(|r| {
            format!(
                " (walk: {} steps in port #{}'s chain, phase {}, read {}, {} sockets, cursor {:#x})",
                r.tgid, r.fd, r.state, r.proto, r.family, r.ino
            )
        })
        .unwrap_or_default()
}

/// Parses the holders iterator's output: the answer, or the status it ended with.
fn parse_holder_status(buf: &[u8]) -> std::result::Result<HolderScan, Option<u32>> {
    let mut scan = HolderScan::default();
    let mut status = None;
    for c in buf.chunks_exact(core::mem::size_of::<HolderRecord>()) {
        // SAFETY: exact-size chunk of a POD type.
        let r: HolderRecord = unsafe { core::ptr::read_unaligned(c.as_ptr().cast()) };
        match r.kind {
            // A later status (a failure while walking fd tables) overrides `OK`.
            holders::REC_STATUS => status = Some(if status.is_none() || r.aux != holders::OK { r.aux } else { holders::OK }),
            holders::REC_SOCKET => scan.sockets.push(ScannedSocket {
                proto: r.proto,
                family: r.family,
                state: r.state,
                port: r.aux as u16,
                inode: r.ino,
                refs: r.tgid,
            }),
            holders::REC_HOLDER => scan.holders.push(FdHolder { pid: r.tgid as i32, fd: r.fd as i32, inode: r.ino }),
            holders::REC_WAITER => {
                if let Ok(pid) = i32::try_from(r.tgid) {
                    if !scan.waiters.contains(&pid) {
                        scan.waiters.push(pid);
                    }
                }
            }
            _ => return Err(None),
        }
    }
    if status == Some(holders::OK) {
        Ok(scan)
    } else {
        Err(status)
    }
}

/// Every (process, fd, inode) for every socket on the host.
pub fn all_socket_fds() -> Result<Vec<FdHolder>> {
    let path = pin_path();
    if let Ok(f) = File::open(&path) {
        return read_iter(f);
    }
    match load_and_pin(&Loader::new()?, &path)? {
        Some(unpinned) => read_iter(unpinned),
        None => read_iter(File::open(&path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?),
    }
}

fn read_iter(mut f: File) -> Result<Vec<FdHolder>> {
    let mut buf = Vec::with_capacity(64 * 1024);
    f.read_to_end(&mut buf).map_err(|e| Error::io("reading the task_file iterator", e))?;
    Ok(parse_records(&buf))
}

const HOLDERS_PIN: &str = "holders";
/// The holders program itself, for links with a task filter.
const HOLDERS_PROG_PIN: &str = "holders_prog";
const QUERY_PIN: &str = "holder_query";

/// Pins this build's iterators unless they are (the agent does it at start, with
/// the loader it loads the observer with).
pub fn ensure_pinned(loader: &Loader) -> Result<()> {
    if !pinned() {
        load_and_pin(loader, &pin_path())?;
    }
    Ok(())
}

/// Loads both iterators and pins them. Returns the task_file iterator's file when
/// there is no bpffs to pin it in (it then runs once, unpinned).
fn load_and_pin(loader: &Loader, path: &Path) -> Result<Option<File>> {
    let mut ebpf = loader.load(Sizes { small: true, ring_bytes: None })?;
    // The holders iterator is an optimization: if this kernel cannot run it, `who`
    // uses the task_file pass alone.
    let holders = hook(programs::HOLDERS_ITER)
        .ok_or_else(|| Error::Internal("holders program missing".into()))
        .and_then(|h| loader.attach_iter(&mut ebpf, h).map_err(Error::Internal))
        .map_err(|e| tracing::debug!("holders iterator unavailable: {e}"))
        .ok();
    let task_file = hook(programs::TASK_FILE_ITER).ok_or_else(|| Error::Internal("task_file program missing".into()))?;
    let link = loader
        .attach_iter(&mut ebpf, task_file)
        .map_err(|e| Error::unsupported(format!("iter/task_file: {e}"), "Linux >= 5.8 with BTF"))?;
    // Without bpffs the iterator still runs, once, unpinned.
    if mounts::ensure_mounted(mounts::BPFFS, "bpf").is_err() {
        return link.into_file().map(Some).map_err(|e| Error::Internal(e.to_string()));
    }
    remove_other_builds(path);
    let dir = path.parent().unwrap_or(Path::new(PIN_ROOT));
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    // The holders pins go first: a pinned `task_sockets` means pinning is complete.
    if let Some(h) = holders {
        let q = ebpf.map(maps::HOLDER_QUERY).ok_or_else(|| Error::Internal("holder query map missing".into()))?;
        let _ = q.pin(dir.join(QUERY_PIN));
        if let Some(p) = hook(programs::HOLDERS_ITER).and_then(|h| ebpf.program_mut(h.program)) {
            // Optional: without it, every query takes the full pass.
            let _ = p.pin(dir.join(HOLDERS_PROG_PIN));
        }
        pin_link(h, &dir.join(HOLDERS_PIN))?;
        // Offsets from BTF name fields, not meanings: before `who` relies on the
        // pass, it must find two sockets of our own. If not, it stays unused here.
        if !crate::sys::proc::in_nested_pid_namespace() {
            if let Err(why) = self_check(dir) {
                tracing::warn!("holders pass failed its self-check ({why}); who uses the task_file pass");
                let _ = SELF_CHECK.set(why);
                let _ = fs::remove_file(dir.join(HOLDERS_PIN));
                let _ = fs::remove_file(dir.join(HOLDERS_PROG_PIN));
                let _ = fs::remove_file(dir.join(QUERY_PIN));
            } else if let Err(why) = refs_check(dir) {
                // The candidates' pass proves completeness by the file references:
                // without a count it can trust, every query takes the full pass.
                tracing::warn!("file reference count failed its self-check ({why}); who always uses the full holders pass");
                let _ = fs::remove_file(dir.join(HOLDERS_PROG_PIN));
            }
        }
    }
    pin_link(link, path)?;
    Ok(None)
}

/// Runs the pinned holders pass on a TCP listener and a UDP socket of our own and
/// checks that it finds both, with this process holding each through its fd.
fn self_check(dir: &Path) -> std::result::Result<(), String> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let tcp = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| e.to_string())?;
    let udp = std::net::UdpSocket::bind(("127.0.0.1", 0)).map_err(|e| e.to_string())?;
    let port = |a: std::io::Result<std::net::SocketAddr>| a.map(|a| a.port()).map_err(|e| e.to_string());
    let (pt, pu) = (port(tcp.local_addr())?, port(udp.local_addr())?);
    let ino = |fd: i32| std::fs::metadata(format!("/proc/self/fd/{fd}")).map(|m| m.ino()).map_err(|e| e.to_string());
    let (it, iu) = (ino(tcp.as_raw_fd())?, ino(udp.as_raw_fd())?);
    let mut map = query_map(dir)?;
    let states = 1 << portwatch_common::tcp_state::LISTEN;
    // TCP and UDP apart first, so a failure says which walk failed.
    for (what, ports, protos) in [("TCP", vec![pt], holders::PROTO_TCP), ("UDP", vec![pu], holders::PROTO_UDP)] {
        run_query(&mut map, dir, &ports, protos, states).map_err(|e| format!("{what}: {e}"))?;
    }
    let scan = run_query(&mut map, dir, &[pt, pu], holders::PROTO_TCP | holders::PROTO_UDP, states)?;
    let me = std::process::id() as i32;
    let want_sockets = [(6u8, pt, it), (17u8, pu, iu)];
    for (proto, port, inode) in want_sockets {
        if !scan.sockets.iter().any(|s| s.proto == proto && s.port == port && s.inode == inode) {
            return Err(format!("socket {proto}/{port} not found: {:?}", scan.sockets));
        }
    }
    for (fd, inode) in [(tcp.as_raw_fd(), it), (udp.as_raw_fd(), iu)] {
        if !scan.holders.contains(&FdHolder { pid: me, fd, inode }) {
            return Err(format!("holder {me}/{fd} not found: {:?}", scan.holders));
        }
    }
    Ok(())
}

/// Checks the references the holders pass reports for a socket's file: one for a
/// listener of ours held by one fd, two once the fd is duplicated.
fn refs_check(dir: &Path) -> std::result::Result<(), String> {
    use std::os::fd::AsFd;
    let tcp = std::net::TcpListener::bind(("127.0.0.1", 0)).map_err(|e| e.to_string())?;
    let port = tcp.local_addr().map_err(|e| e.to_string())?.port();
    let mut map = query_map(dir)?;
    let states = 1 << portwatch_common::tcp_state::LISTEN;
    let refs = |map: &mut QueryMap| -> std::result::Result<u32, String> {
        let scan = run_query(map, dir, &[port], holders::PROTO_TCP, states)?;
        scan.sockets.first().map(|s| s.refs).ok_or_else(|| "socket not found".to_string())
    };
    let one = refs(&mut map)?;
    let dup = tcp.as_fd().try_clone_to_owned().map_err(|e| e.to_string())?;
    let two = refs(&mut map)?;
    drop(dup);
    if (one, two) != (1, 2) {
        return Err(format!("{one} and {two} references reported for 1 and 2 fds"));
    }
    Ok(())
}

/// One query of the pinned holders pass, for the self-check.
fn run_query(map: &mut QueryMap, dir: &Path, ports: &[u16], protos: u32, states: u32) -> std::result::Result<HolderScan, String> {
    let q = query(ports, protos & holders::PROTO_TCP != 0, protos & holders::PROTO_UDP != 0, states);
    let key = query_key();
    map.insert(key, q, 0).map_err(|e| e.to_string())?;
    let read = File::open(dir.join(HOLDERS_PIN)).and_then(|mut f| {
        let mut buf = Vec::new();
        f.read_to_end(&mut buf).map(|_| buf)
    });
    let _ = map.remove(&key);
    let buf = read.map_err(|e| e.to_string())?;
    parse_holder_status(&buf).map_err(|st| format!("no complete answer: {}{}", status_name(st), walk_detail(&buf)))
}

/// Removes the pins of other builds.
fn remove_other_builds(path: &Path) {
    let dir = path.parent().unwrap_or(Path::new(PIN_ROOT));
    // Leases, remaps (and other holders' pins) live beside the builds and are not
    // theirs: only other builds' directories, named by their object hash, go.
    let keep = |p: &Path| p == dir || !p.file_name().is_some_and(|n| is_build_dir(&n.to_string_lossy()));
    if let Ok(entries) = fs::read_dir(PIN_ROOT) {
        for e in entries.flatten() {
            if !keep(&e.path()) {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
}

/// A directory named by an object hash, as [`pin_path`] makes them.
fn is_build_dir(name: &str) -> bool {
    name.len() == env!("PORTWATCH_OBJECT_HASH").len() && name.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Pins the link at `path`. Another `who` pinning the same build at the same
/// moment is fine: its pin is as good as ours.
fn pin_link(link: aya::programs::iter::IterLink, path: &Path) -> Result<()> {
    let fd_link: FdLink = link.try_into().map_err(|e: aya::programs::links::LinkError| Error::Internal(e.to_string()))?;
    match fd_link.pin(path) {
        Ok(_) => Ok(()),
        Err(_) if path.exists() => Ok(()),
        Err(e) => Err(Error::Internal(format!("pinning {}: {e}", path.display()))),
    }
}

/// Parses the iterator's output: a packed array of `TaskSocket`. Threads share their
/// process's fd table, so duplicates are removed.
pub fn parse_records(buf: &[u8]) -> Vec<FdHolder> {
    let size = core::mem::size_of::<TaskSocket>();
    let mut out: Vec<FdHolder> = buf
        .chunks_exact(size)
        .map(|c| {
            // SAFETY: exact-size chunk of a POD type.
            let r: TaskSocket = unsafe { core::ptr::read_unaligned(c.as_ptr().cast()) };
            FdHolder { pid: r.tgid as i32, fd: r.fd as i32, inode: r.ino }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_build_directories_are_cleaned() {
        assert!(is_build_dir("b6c95462f2e525bd"));
        assert!(!is_build_dir("remap"));
        assert!(!is_build_dir("b6c95462f2e525bdx"));
    }

    #[test]
    fn parses_and_dedups_records() {
        let recs = [TaskSocket { tgid: 7, fd: 3, ino: 99 }, TaskSocket { tgid: 5, fd: 4, ino: 99 }, TaskSocket { tgid: 7, fd: 3, ino: 99 }];
        // SAFETY: viewing POD structs as bytes.
        let bytes = unsafe { core::slice::from_raw_parts(recs.as_ptr().cast::<u8>(), core::mem::size_of_val(&recs)) };
        let want = vec![FdHolder { pid: 5, fd: 4, inode: 99 }, FdHolder { pid: 7, fd: 3, inode: 99 }];
        assert_eq!(parse_records(bytes), want);
        // A torn trailing record is ignored.
        assert_eq!(parse_records(&bytes[..bytes.len() - 1]), want);
    }

    fn bytes(recs: &[HolderRecord]) -> Vec<u8> {
        // SAFETY: viewing POD structs as bytes.
        unsafe { core::slice::from_raw_parts(recs.as_ptr().cast::<u8>(), core::mem::size_of_val(recs)) }.to_vec()
    }

    #[test]
    fn holder_records_need_an_ok_status_and_no_later_failure() {
        let status = |s| HolderRecord { kind: holders::REC_STATUS, aux: s, ..Default::default() };
        let sock = HolderRecord { kind: holders::REC_SOCKET, proto: 6, family: 2, state: 10, aux: 5050, ino: 77, ..Default::default() };
        let holder = HolderRecord { kind: holders::REC_HOLDER, tgid: 42, fd: 3, ino: 77, ..Default::default() };
        let scan = parse_holder_records(&bytes(&[status(holders::OK), sock, holder])).expect("complete");
        assert_eq!(scan.sockets, vec![ScannedSocket { proto: 6, family: 2, state: 10, port: 5050, inode: 77, refs: 0 }]);
        assert_eq!(scan.holders, vec![FdHolder { pid: 42, fd: 3, inode: 77 }]);
        // Waiters are candidates, once each, and never holders.
        let waiter = |pid| HolderRecord { kind: holders::REC_WAITER, tgid: pid, ino: 77, ..Default::default() };
        let scan = parse_holder_records(&bytes(&[status(holders::OK), sock, waiter(9), waiter(8), waiter(9)])).expect("complete");
        assert_eq!((scan.waiters, scan.holders), (vec![9, 8], vec![]));
        // No status: the program found no query (e.g. another pid namespace).
        assert_eq!(parse_holder_records(&bytes(&[sock, holder])), None);
        assert_eq!(parse_holder_records(&bytes(&[status(holders::TOO_MANY)])), None);
        // A failure reported while walking fd tables overrides the first OK.
        assert_eq!(parse_holder_records(&bytes(&[status(holders::OK), sock, status(holders::FD_TABLE_TOO_BIG)])), None);
        // An unknown record kind means a layout mismatch.
        let junk = HolderRecord { kind: 99, ..Default::default() };
        assert_eq!(parse_holder_records(&bytes(&[status(holders::OK), junk])), None);
        // Nothing found is a complete, empty answer.
        assert_eq!(parse_holder_records(&bytes(&[status(holders::OK)])), Some(HolderScan::default()));
    }

    #[test]
    fn pin_path_is_per_build() {
        let p = pin_path();
        assert!(p.starts_with(PIN_ROOT));
        assert_eq!(p.file_name().and_then(|f| f.to_str()), Some("task_sockets"));
        assert_eq!(p, pin_path());
    }
}
