//! The agent's side of the control socket. Every caller is known by SO_PEERCRED;
//! root may do everything, others may query and may free what `kill(2)` would let
//! them signal (never their own tree). Everything a caller can make the agent hold
//! is bounded: request size, connections (in total and per uid), idle time, reply
//! size; and every signal sent on a caller's behalf is recorded with who asked.
use std::{
    collections::HashMap,
    os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt},
    path::Path,
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
    sync::mpsc,
};
use tracing::{info, warn};

use super::proto::{ErrorKind, Reply, Request, Status, DEFAULT_HISTORY_ROWS, MAX_HISTORY_ROWS, MAX_PORTS, MAX_REQUEST_BYTES};
use crate::{
    agent::{
        history::store::Store,
        shared::{lock, Origin, Shared},
    },
    error::{Error, Result},
    model::{plan::PortReport, ports::PortSet, time::parse_when},
    service::{
        holders::{self, WhoOptions},
        reaper::{self, FreeOptions},
    },
    sys::clock::{local_offset_secs, wall_now_ns},
};

/// Connections served at once, in total and per non-root uid. Root always has
/// `ROOT_RESERVE` more, so other users cannot lock root out.
pub const MAX_CONNECTIONS: usize = 64;
pub const MAX_PER_UID: usize = 8;
pub const ROOT_RESERVE: usize = 8;
/// A connection that sends no complete request for this long is closed.
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// Log lines about requests, per second at most (the rest are counted).
const LOG_PER_SECOND: u32 = 20;

/// A reap the server carried out, for the agent's recorder.
pub type Reaped = (PortReport, Origin);

/// The caller, from SO_PEERCRED.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer {
    pub uid: u32,
    pub pid: Option<i32>,
}

/// Counts connections per uid.
#[derive(Default)]
struct Slots {
    total: usize,
    per_uid: HashMap<u32, usize>,
}

impl Slots {
    fn take(&mut self, uid: u32) -> bool {
        let limit = if uid == 0 { MAX_CONNECTIONS + ROOT_RESERVE } else { MAX_CONNECTIONS };
        let mine = self.per_uid.get(&uid).copied().unwrap_or(0);
        if self.total >= limit || (uid != 0 && mine >= MAX_PER_UID) {
            return false;
        }
        self.total += 1;
        *self.per_uid.entry(uid).or_default() += 1;
        true
    }

    fn give(&mut self, uid: u32) {
        self.total = self.total.saturating_sub(1);
        if let Some(n) = self.per_uid.get_mut(&uid) {
            *n -= 1;
            if *n == 0 {
                self.per_uid.remove(&uid);
            }
        }
    }
}

/// A token bucket for log lines.
struct LogLimit {
    second: Instant,
    used: u32,
    suppressed: u64,
}

impl LogLimit {
    fn allow(&mut self) -> bool {
        if self.second.elapsed() >= Duration::from_secs(1) {
            if self.suppressed > 0 {
                warn!(suppressed = self.suppressed, "control socket: request log lines suppressed (rate limit)");
            }
            *self = Self { second: Instant::now(), used: 0, suppressed: 0 };
        }
        self.used += 1;
        if self.used > LOG_PER_SECOND {
            self.suppressed += 1;
            return false;
        }
        true
    }
}

struct Server {
    shared: Arc<Shared>,
    slots: Mutex<Slots>,
    log: Mutex<LogLimit>,
    reaped: mpsc::Sender<Reaped>,
}

fn ports_of(list: Vec<u16>, what: &str) -> std::result::Result<PortSet, String> {
    if list.len() > MAX_PORTS {
        return Err(format!("{what}: at most {MAX_PORTS} ports per request"));
    }
    let set: PortSet = list.into_iter().filter(|&p| p != 0).collect();
    if set.is_empty() {
        return Err(format!("{what}: give at least one port (1-65535)"));
    }
    Ok(set)
}

impl Server {
    fn handle(&self, req: Request, peer: Peer) -> Reply {
        let shared = &self.shared;
        match req {
            Request::Status {} => Reply {
                status: Some(Status {
                    version: env!("CARGO_PKG_VERSION").into(),
                    ports: shared.ports.iter().collect(),
                    stuck_ports: lock(&shared.stuck).clone(),
                    lost_events: *lock(&shared.lost),
                    uptime_secs: shared.started.elapsed().as_secs(),
                    ..shared.history_status()
                }),
                ..Reply::ok()
            },
            Request::Who { ports } => {
                let set = match ports_of(ports, "who") {
                    Ok(s) => s,
                    Err(e) => return Reply::error(ErrorKind::BadRequest, e),
                };
                match holders::gather(&set, WhoOptions::default()) {
                    Err(e) => Reply::error(ErrorKind::Internal, e.to_string()),
                    Ok(r) => {
                        let seen = lock(&shared.seen);
                        let mut sockets = r.sockets;
                        for s in &mut sockets {
                            if let Some(t) = seen.get(&s.cookie) {
                                s.since = Some(crate::model::time::fmt_time(t.since));
                                s.job = t.job.clone();
                            }
                        }
                        Reply { sockets: Some(sockets), ..Reply::ok() }
                    }
                }
            }
            Request::History { port, since, until, pid, limit } => {
                let Some(db) = &shared.db else { return Reply::error(ErrorKind::Unavailable, "history is off in this agent") };
                let now = wall_now_ns();
                let when = |s: Option<String>| s.map(|s| parse_when(&s, now, &local_offset_secs)).transpose();
                let (since, until) = match (when(since), when(until)) {
                    (Ok(a), Ok(b)) => (a, b),
                    (Err(e), _) | (_, Err(e)) => return Reply::error(ErrorKind::BadRequest, e),
                };
                let limit = limit.unwrap_or(DEFAULT_HISTORY_ROWS).clamp(1, MAX_HISTORY_ROWS);
                let rows = Store::open_readonly(db).and_then(|s| {
                    s.query_newest(port, since, until, pid, limit).map_err(|e| Error::Config(format!("history database: {e}")))
                });
                match rows {
                    Ok((rows, truncated)) => Reply { rows: Some(rows), truncated: Some(truncated), ..Reply::ok() },
                    // The database cannot be used (refused path, corrupt file): the
                    // history is unavailable, as `status` says in `history_error`.
                    Err(e) => Reply::error(ErrorKind::Unavailable, e.to_string()),
                }
            }
            Request::Free { ports, force, grace_ms, dry_run } => {
                let set = match ports_of(ports, "free") {
                    Ok(s) => s,
                    Err(e) => return Reply::error(ErrorKind::BadRequest, e),
                };
                let grace = match grace_ms.map(Duration::from_millis) {
                    Some(g) if g > crate::model::time::MAX_DURATION => {
                        return Reply::error(ErrorKind::BadRequest, "free: grace_ms is longer than the maximum duration")
                    }
                    g => g.unwrap_or(shared.grace),
                };
                let opts = FreeOptions { force, grace, dry_run, tcp: true, udp: false, protect: shared.protect.clone() };
                // One look, one plan authorized for this caller, that plan executed.
                let caller = reaper::caller_client(peer.uid, peer.pid);
                match reaper::free(&set, &opts, &caller) {
                    Ok((reports, _)) => {
                        if self.log.lock().is_ok_and(|mut l| l.allow()) {
                            info!(caller_uid = peer.uid, caller_pid = peer.pid, ports = ?set.iter().collect::<Vec<_>>(), dry_run, "control socket: free");
                        }
                        for rep in &reports {
                            // Bounded; if the recorder is this far behind, the log still has it.
                            if self.reaped.try_send((rep.clone(), Origin::Client { uid: peer.uid, pid: peer.pid })).is_err() {
                                warn!(port = rep.port, caller_uid = peer.uid, "control socket: reap not recorded (recorder busy)");
                            }
                        }
                        Reply { exit_code: Some(reaper::exit_code(&reports)), reports: Some(reports), ..Reply::ok() }
                    }
                    Err(e) => Reply::error(ErrorKind::Internal, e.to_string()),
                }
            }
        }
    }
}

/// Reads one line of at most `MAX_REQUEST_BYTES`; `Ok(None)` at end of stream.
async fn read_request<R: tokio::io::AsyncBufRead + Unpin>(r: &mut R, buf: &mut Vec<u8>) -> std::io::Result<Option<bool>> {
    buf.clear();
    loop {
        let chunk = r.fill_buf().await?;
        if chunk.is_empty() {
            return Ok(if buf.is_empty() { None } else { Some(true) });
        }
        let (take, done) = match chunk.iter().position(|&b| b == b'\n') {
            Some(i) => (i + 1, true),
            None => (chunk.len(), false),
        };
        if buf.len() + take > MAX_REQUEST_BYTES + 1 {
            return Ok(Some(false));
        }
        buf.extend_from_slice(&chunk[..take]);
        r.consume(take);
        if done {
            return Ok(Some(true));
        }
    }
}

async fn serve_conn(stream: UnixStream, server: Arc<Server>, peer: Peer) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::with_capacity(8192, rd);
    let mut buf = Vec::with_capacity(1024);
    loop {
        let reply = match tokio::time::timeout(IDLE_TIMEOUT, read_request(&mut rd, &mut buf)).await {
            Err(_) | Ok(Err(_)) | Ok(Ok(None)) => break,
            Ok(Ok(Some(false))) => Reply::error(ErrorKind::BadRequest, format!("request longer than {MAX_REQUEST_BYTES} bytes")),
            Ok(Ok(Some(true))) => match serde_json::from_slice::<Request>(&buf) {
                Err(e) => Reply::error(ErrorKind::BadRequest, format!("bad request: {e}")),
                Ok(req) => {
                    let s = server.clone();
                    tokio::task::spawn_blocking(move || s.handle(req, peer))
                        .await
                        .unwrap_or_else(|e| Reply::error(ErrorKind::Internal, e.to_string()))
                }
            },
        };
        let too_long =
            reply.error_kind == Some(ErrorKind::BadRequest) && reply.error.as_deref().is_some_and(|e| e.starts_with("request longer"));
        let mut text = serde_json::to_vec(&reply).unwrap_or_else(|_| br#"{"ok":false,"error":"reply not encodable"}"#.to_vec());
        text.push(b'\n');
        if wr.write_all(&text).await.is_err() || too_long {
            break;
        }
    }
}

/// Removes a stale control socket at `path`: only a socket, never another file.
pub fn remove_stale(path: &Path) -> Result<()> {
    match std::fs::symlink_metadata(path) {
        Err(_) => Ok(()),
        Ok(m) if m.file_type().is_socket() => {
            std::fs::remove_file(path).map_err(|e| Error::io(format!("removing stale {}", path.display()), e))
        }
        Ok(_) => Err(Error::Usage(format!("{} exists and is not a socket; refusing to replace it", path.display()))),
    }
}

/// Makes the default socket's directory (`/run/portwatch`) when the agent runs
/// without systemd's `RuntimeDirectory=`: 0755 root. An existing one is used only
/// if it is a real directory owned by root and not writable by others (a symbolic
/// link or someone else's directory there could redirect the socket).
pub fn ensure_default_dir(path: &Path) -> Result<()> {
    let dir = Path::new(crate::config::DEFAULT_SOCKET_DIR);
    if path.parent() != Some(dir) {
        return Ok(());
    }
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new().mode(0o755).create(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))
        }
        Err(e) => Err(Error::io(format!("checking {}", dir.display()), e)),
        Ok(m) => runtime_dir_ok(m.file_type().is_dir(), m.uid(), m.mode()).map_err(|why| Error::Usage(format!("{}: {why}", dir.display()))),
    }
}

/// Whether an existing runtime directory may hold the agent's socket.
fn runtime_dir_ok(is_dir: bool, uid: u32, mode: u32) -> std::result::Result<(), &'static str> {
    if !is_dir {
        return Err("not a directory (a symbolic link or a file); refusing to put the control socket there");
    }
    if uid != nix::unistd::geteuid().as_raw() && uid != 0 {
        return Err("owned by another user; refusing to put the control socket there");
    }
    if mode & 0o022 != 0 && mode & 0o1000 == 0 {
        return Err("writable by group or others; refusing to put the control socket there");
    }
    Ok(())
}

/// Binds the socket (replacing a stale one), sets its mode and group, and serves it.
/// Reaps done for callers are sent to `reaped`.
pub async fn serve(
    path: &Path,
    mode: u32,
    group: Option<&str>,
    shared: Arc<Shared>,
    reaped: mpsc::Sender<Reaped>,
) -> Result<tokio::task::JoinHandle<()>> {
    ensure_default_dir(path)?;
    if std::fs::symlink_metadata(path).is_ok() {
        // A live agent answers; a stale socket file does not and is replaced.
        if UnixStream::connect(path).await.is_ok() {
            return Err(Error::Usage(format!("another agent is serving {}", path.display())));
        }
        remove_stale(path)?;
    }
    let listener = UnixListener::bind(path).map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
    if let Some(g) = group.and_then(|g| nix::unistd::Group::from_name(g).ok().flatten()) {
        let _ = nix::unistd::chown(path, None, Some(g.gid));
    }
    let server = Arc::new(Server {
        shared,
        slots: Mutex::new(Slots::default()),
        log: Mutex::new(LogLimit { second: Instant::now(), used: 0, suppressed: 0 }),
        reaped,
    });
    Ok(tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of fds or memory: back off rather than spin.
                    warn!(error = %e, "control socket: accept failed; backing off");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            let Ok(cred) = stream.peer_cred() else { continue };
            let peer = Peer { uid: cred.uid(), pid: cred.pid() };
            if !lock(&server.slots).take(peer.uid) {
                let mut s = stream;
                let busy = serde_json::to_vec(&Reply::error(ErrorKind::Unavailable, "too many connections")).unwrap_or_default();
                let _ = tokio::time::timeout(Duration::from_millis(100), s.write_all(&[busy, b"\n".to_vec()].concat())).await;
                continue;
            }
            let server = server.clone();
            tokio::spawn(async move {
                serve_conn(stream, server.clone(), peer).await;
                lock(&server.slots).give(peer.uid);
            });
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connection_slots_per_uid_and_root_reserve() {
        let mut s = Slots::default();
        for _ in 0..MAX_PER_UID {
            assert!(s.take(1000));
        }
        assert!(!s.take(1000), "per-uid limit");
        for uid in 2000..2000 + (MAX_CONNECTIONS - MAX_PER_UID) as u32 {
            assert!(s.take(uid));
        }
        assert!(!s.take(3000), "total limit");
        for _ in 0..ROOT_RESERVE {
            assert!(s.take(0), "root keeps its reserve");
        }
        assert!(!s.take(0));
        s.give(0);
        s.give(1000);
        assert!(!s.take(1000), "root's reserve is not given to others");
        for _ in 0..ROOT_RESERVE {
            s.give(0);
        }
        assert!(s.take(1000));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn request_lines_are_bounded() {
        let mut long = vec![b'x'; MAX_REQUEST_BYTES + 10];
        long.push(b'\n');
        let mut r = BufReader::new(&long[..]);
        let mut buf = Vec::new();
        assert_eq!(read_request(&mut r, &mut buf).await.unwrap(), Some(false));
        assert!(buf.len() <= MAX_REQUEST_BYTES + 1);
        let mut r = BufReader::new(&b"{\"cmd\":\"status\"}\n"[..]);
        assert_eq!(read_request(&mut r, &mut buf).await.unwrap(), Some(true));
        assert_eq!(buf, b"{\"cmd\":\"status\"}\n");
    }

    #[test]
    fn only_a_stale_socket_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("not-a-socket");
        std::fs::write(&file, "precious").unwrap();
        assert!(remove_stale(&file).is_err());
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "precious");
        let sock = dir.path().join("s.sock");
        drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
        remove_stale(&sock).unwrap();
        assert!(!sock.exists());
    }

    #[test]
    fn runtime_dir_must_be_ours() {
        assert!(runtime_dir_ok(true, 0, 0o40755).is_ok());
        assert!(runtime_dir_ok(false, 0, 0o120777).unwrap_err().contains("not a directory"));
        assert!(runtime_dir_ok(true, 0, 0o40777).unwrap_err().contains("writable"));
        assert!(runtime_dir_ok(true, 0, 0o41777).is_ok());
        if !nix::unistd::geteuid().is_root() {
            assert!(runtime_dir_ok(true, 0, 0o40755).is_ok());
        }
        assert!(runtime_dir_ok(true, 4242, 0o40755).is_err() || nix::unistd::geteuid().as_raw() == 4242);
    }
}
