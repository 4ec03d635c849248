//! Persistent history: every event the agent sees on watched ports, with the process
//! details captured while the process still exists, in SQLite (WAL). Writes are
//! batched on their own thread, so a bind storm costs the agent one channel send per
//! event; a committed batch survives `kill -9` of the agent.
use std::{
    collections::HashMap,
    path::Path,
    sync::mpsc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use rusqlite::{params, Connection, OpenFlags};
use serde::Serialize;

use crate::error::{Error, Result};

pub const DEFAULT_DB: &str = "/var/lib/portwatch/history.db";

/// Environment variables that name the CI job a process belongs to.
pub const JOB_VARS: &[&str] =
    &["GITHUB_RUN_ID", "GITHUB_JOB", "CI_JOB_ID", "CI_PIPELINE_ID", "BUILD_ID", "BUILD_NUMBER", "BUILDKITE_JOB_ID", "JOB_NAME"];

/// Shared text: a storm of events from one process shares one copy of its details.
pub type Text = std::sync::Arc<str>;

/// One row of history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Row {
    /// Wall-clock nanoseconds since the epoch.
    #[serde(skip)]
    pub time_ns: i64,
    /// RFC 3339, for JSON output.
    pub time: String,
    /// `bind`, `bind_failed`, `listen`, `close`, `stuck`, `signal`, `reaped`, `refused`.
    pub event: String,
    pub port: Option<u16>,
    pub proto: Option<String>,
    pub addr: Option<String>,
    pub pid: Option<i32>,
    pub ppid: Option<i32>,
    pub uid: Option<u32>,
    pub comm: Option<String>,
    pub cmdline: Option<Text>,
    pub cgroup: Option<Text>,
    /// `812 python3 < 377 bash < 1 init`: the parent chain at event time.
    pub ancestry: Option<Text>,
    /// CI job identity from the process environment, e.g. `GITHUB_RUN_ID=4711`.
    pub job: Option<Text>,
    pub cookie: Option<u64>,
    pub error: Option<String>,
    /// Free text: who held the port, a verdict's evidence, a signal's outcome.
    pub detail: Option<String>,
}

pub fn now_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

pub fn fmt_time(ns: i64) -> String {
    humantime::format_rfc3339_millis(UNIX_EPOCH + Duration::from_nanos(ns.max(0) as u64)).to_string()
}

/// Parses `--since`/`--until`/`--at`: a duration back from now (`10m`) or a time
/// (`2026-11-26T10:02:11Z`, `2026-11-26 10:02:11`, UTC).
pub fn parse_when(s: &str, now: i64) -> std::result::Result<i64, String> {
    let t = s.trim();
    if let Ok(d) = crate::cli::parse_duration(t) {
        return Ok(now - d.as_nanos() as i64);
    }
    humantime::parse_rfc3339_weak(t)
        .map(|st| st.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64))
        .map_err(|_| format!("invalid time '{t}': give a duration like 10m or a time like 2026-11-26T10:02:11Z"))
}

/// Details of a live process, for a history row.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProcDetails {
    pub ppid: i32,
    pub uid: u32,
    pub comm: String,
    pub cmdline: Text,
    pub cgroup: Text,
    pub ancestry: Text,
    pub job: Option<Text>,
}

/// The CI job identity in an environment block (NUL-separated `KEY=value`).
pub fn job_from_environ(env: &[u8]) -> Option<String> {
    let mut found: Vec<String> = env
        .split(|&b| b == 0)
        .filter_map(|kv| std::str::from_utf8(kv).ok())
        .filter(|kv| JOB_VARS.iter().any(|k| kv.strip_prefix(k).is_some_and(|rest| rest.starts_with('='))))
        .map(String::from)
        .collect();
    found.sort_by_key(|kv| JOB_VARS.iter().position(|k| kv.starts_with(k)).unwrap_or(usize::MAX));
    (!found.is_empty()).then(|| found.join(" "))
}

/// Reads a process's details now (None once it is gone).
pub fn read_details(pid: i32) -> Option<ProcDetails> {
    let info = crate::sys::proc::info(pid)?;
    let mut chain = vec![format!("{} {}", info.pid, info.comm)];
    let mut p = info.ppid;
    for _ in 0..32 {
        if p <= 0 {
            break;
        }
        let Some(st) = procfs::process::Process::new(p).ok().and_then(|x| x.stat().ok()) else { break };
        chain.push(format!("{} {}", st.pid, st.comm));
        if st.pid == 1 {
            break;
        }
        p = st.ppid;
    }
    let env = std::fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    Some(ProcDetails {
        ppid: info.ppid,
        uid: info.uid,
        comm: info.comm,
        cmdline: info.cmdline.into(),
        cgroup: info.cgroup.into(),
        ancestry: chain.join(" < ").into(),
        job: job_from_environ(&env).map(Text::from),
    })
}

/// Caches details per (pid, start time) so a storm from one process reads /proc once;
/// an entry is re-validated (pid reuse) at most once a second.
#[derive(Default)]
pub struct DetailsCache {
    map: HashMap<i32, (u64, std::time::Instant, Option<ProcDetails>)>,
}

impl DetailsCache {
    pub fn get(&mut self, pid: i32) -> Option<ProcDetails> {
        if let Some((_, checked, d)) = self.map.get(&pid) {
            if checked.elapsed() < Duration::from_secs(1) {
                return d.clone();
            }
        }
        let start = procfs::process::Process::new(pid).ok().and_then(|p| p.stat().ok()).map(|s| s.starttime);
        let Some(start) = start else {
            // Gone: what we knew is still the best description of it.
            return self.map.get(&pid).and_then(|(_, _, d)| d.clone());
        };
        if let Some((s, checked, d)) = self.map.get_mut(&pid) {
            if *s == start {
                *checked = std::time::Instant::now();
                return d.clone();
            }
        }
        if self.map.len() > 4096 {
            self.map.clear();
        }
        let d = read_details(pid);
        self.map.insert(pid, (start, std::time::Instant::now(), d.clone()));
        d
    }
}

pub struct Store {
    conn: Connection,
    /// Content hash of a process's details -> its row in `processes`.
    procs: HashMap<u64, i64>,
}

/// Events reference the process they came from; process details (command line,
/// parent chain, job...) are stored once per process, which keeps rows small and
/// inserts fast in a storm.
const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS processes (
    id INTEGER PRIMARY KEY,
    pid INTEGER, ppid INTEGER, uid INTEGER, cmdline TEXT, cgroup TEXT, ancestry TEXT, job TEXT
);
CREATE TABLE IF NOT EXISTS events (
    id INTEGER PRIMARY KEY,
    time_ns INTEGER NOT NULL,
    event TEXT NOT NULL,
    port INTEGER, proto TEXT, addr TEXT,
    pid INTEGER, comm TEXT, proc_id INTEGER REFERENCES processes(id),
    cookie INTEGER, error TEXT, detail TEXT
);
CREATE INDEX IF NOT EXISTS events_port_time ON events(port, time_ns);
CREATE INDEX IF NOT EXISTS events_cookie ON events(cookie);
";

/// Bumped when the tables change; older tables are kept under another name.
const SCHEMA_VERSION: i64 = 2;

/// A database from an earlier schema keeps its rows in `events_v<N>`; new rows go
/// to fresh tables.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let has_events: bool =
        conn.query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'", [], |r| r.get::<_, i64>(0))? > 0;
    if has_events && version < SCHEMA_VERSION {
        conn.execute_batch(&format!(
            "ALTER TABLE events RENAME TO events_v{version};
             DROP INDEX IF EXISTS events_port_time; DROP INDEX IF EXISTS events_time; DROP INDEX IF EXISTS events_cookie;"
        ))?;
    }
    Ok(())
}

const SELECT: &str = "SELECT e.id, e.time_ns, e.event, e.port, e.proto, e.addr, e.pid, e.comm, e.cookie, e.error, e.detail,
    p.ppid, p.uid, p.cmdline, p.cgroup, p.ancestry, p.job
    FROM events e LEFT JOIN processes p ON p.id = e.proc_id";

fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::Config(format!("history database {}: {e}", path.display()))
}

impl Store {
    /// Opens (creating) the database for writing.
    pub fn open(path: &Path) -> Result<Self> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
        }
        let conn = Connection::open(path).map_err(|e| db_err(path, e))?;
        conn.pragma_update(None, "journal_mode", "WAL").map_err(|e| db_err(path, e))?;
        // WAL without fsync per commit: a committed batch survives the agent's
        // kill -9 (it is in the OS page cache); only a machine crash can lose the
        // last ones.
        conn.pragma_update(None, "synchronous", "OFF").map_err(|e| db_err(path, e))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(|e| db_err(path, e))?;
        migrate(&conn).map_err(|e| db_err(path, e))?;
        conn.execute_batch(SCHEMA).map_err(|e| db_err(path, e))?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(|e| db_err(path, e))?;
        Ok(Self { conn, procs: HashMap::new() })
    }

    /// Opens an existing database for queries.
    pub fn open_readonly(path: &Path) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Config(format!("no history database at {} (the agent writes it; --db to choose another)", path.display())));
        }
        let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY).map_err(|e| db_err(path, e))?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(|e| db_err(path, e))?;
        let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0)).map_err(|e| db_err(path, e))?;
        if version < SCHEMA_VERSION {
            return Err(Error::Config(format!(
                "history database {} has an older layout (version {version}); the agent converts it when it next starts",
                path.display()
            )));
        }
        Ok(Self { conn, procs: HashMap::new() })
    }

    /// Inserts rows in one transaction.
    pub fn insert(&mut self, rows: &[Row]) -> rusqlite::Result<()> {
        use std::hash::{Hash, Hasher};
        let tx = self.conn.transaction()?;
        {
            let mut proc_st = tx.prepare_cached(
                "INSERT INTO processes (pid, ppid, uid, cmdline, cgroup, ancestry, job) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?;
            // Process ids first, then the events in multi-row INSERTs (one statement
            // per CHUNK rows is several times cheaper than one per row).
            let mut by_ptr: HashMap<(Option<i32>, usize, usize), Option<i64>> = HashMap::new();
            let mut ids: Vec<Option<i64>> = Vec::with_capacity(rows.len());
            for r in rows {
                let ptr_key =
                    (r.pid, r.ancestry.as_ref().map_or(0, |a| a.as_ptr() as usize), r.cmdline.as_ref().map_or(0, |c| c.as_ptr() as usize));
                let cached = (ptr_key.1 != 0).then(|| by_ptr.get(&ptr_key).copied()).flatten();
                let proc_id = if let Some(id) = cached {
                    id
                } else if r.ancestry.is_some() || r.cmdline.is_some() {
                    let mut h = std::collections::hash_map::DefaultHasher::new();
                    (r.pid, r.ppid, r.uid, &r.cmdline, &r.cgroup, &r.ancestry, &r.job).hash(&mut h);
                    let key = h.finish();
                    match self.procs.get(&key) {
                        Some(&id) => Some(id),
                        None => {
                            proc_st.execute(params![
                                r.pid,
                                r.ppid,
                                r.uid,
                                r.cmdline.as_deref(),
                                r.cgroup.as_deref(),
                                r.ancestry.as_deref(),
                                r.job.as_deref()
                            ])?;
                            let id = tx.last_insert_rowid();
                            if self.procs.len() > 65536 {
                                self.procs.clear();
                            }
                            self.procs.insert(key, id);
                            Some(id)
                        }
                    }
                } else {
                    None
                };
                if ptr_key.1 != 0 {
                    by_ptr.insert(ptr_key, proc_id);
                }
                ids.push(proc_id);
            }
            let cookies: Vec<Option<i64>> = rows.iter().map(|r| r.cookie.map(|c| c as i64)).collect();
            const CHUNK: usize = 64;
            const COLS: &str = "INSERT INTO events (time_ns, event, port, proto, addr, pid, comm, proc_id, cookie, error, detail) VALUES ";
            let one = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
            let many = format!("{COLS}{}", vec![one; CHUNK].join(", "));
            let single = format!("{COLS}{one}");
            let mut start = 0;
            while start < rows.len() {
                let n = (rows.len() - start).min(CHUNK);
                let mut st = if n == CHUNK { tx.prepare_cached(&many)? } else { tx.prepare_cached(&single)? };
                let end = if n == CHUNK { start + CHUNK } else { start + 1 };
                let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity((end - start) * 11);
                for i in start..end {
                    let r = &rows[i];
                    args.extend_from_slice(&[
                        &r.time_ns,
                        &r.event,
                        &r.port,
                        &r.proto,
                        &r.addr,
                        &r.pid,
                        &r.comm,
                        &ids[i],
                        &cookies[i],
                        &r.error,
                        &r.detail,
                    ]);
                }
                st.execute(args.as_slice())?;
                start = end;
            }
        }
        tx.commit()
    }

    fn rows(&self, sql: &str, args: &[&dyn rusqlite::ToSql]) -> rusqlite::Result<Vec<Row>> {
        let mut st = self.conn.prepare(sql)?;
        let it = st.query_map(args, |r| {
            let time_ns: i64 = r.get("time_ns")?;
            Ok(Row {
                time_ns,
                time: fmt_time(time_ns),
                event: r.get("event")?,
                port: r.get("port")?,
                proto: r.get("proto")?,
                addr: r.get("addr")?,
                pid: r.get("pid")?,
                ppid: r.get("ppid")?,
                uid: r.get("uid")?,
                comm: r.get("comm")?,
                cmdline: r.get::<_, Option<String>>("cmdline")?.map(Text::from),
                cgroup: r.get::<_, Option<String>>("cgroup")?.map(Text::from),
                ancestry: r.get::<_, Option<String>>("ancestry")?.map(Text::from),
                job: r.get::<_, Option<String>>("job")?.map(Text::from),
                cookie: r.get::<_, Option<i64>>("cookie")?.map(|c| c as u64),
                error: r.get("error")?,
                detail: r.get("detail")?,
            })
        })?;
        it.collect()
    }

    /// The timeline, oldest first.
    pub fn query(&self, port: Option<u16>, since: Option<i64>, until: Option<i64>, pid: Option<i32>) -> rusqlite::Result<Vec<Row>> {
        self.rows(
            &format!(
                "{SELECT} WHERE (?1 IS NULL OR e.port = ?1) AND (?2 IS NULL OR e.time_ns >= ?2)
                 AND (?3 IS NULL OR e.time_ns <= ?3) AND (?4 IS NULL OR e.pid = ?4) ORDER BY e.time_ns, e.id"
            ),
            &[&port, &since, &until, &pid],
        )
    }

    /// Who held `port` at `at`: sockets bound or listening on it by then and not yet
    /// closed (their first bind/listen row each).
    pub fn holders_at(&self, port: u16, at: i64) -> rusqlite::Result<Vec<Row>> {
        self.rows(
            &format!(
                "{SELECT} WHERE e.port = ?1 AND e.event IN ('bind', 'listen') AND e.time_ns <= ?2
                   AND e.cookie IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM events c WHERE c.cookie = e.cookie AND c.event = 'close'
                                   AND c.time_ns >= e.time_ns AND c.time_ns <= ?2)
                   AND e.id = (SELECT MIN(f.id) FROM events f WHERE f.cookie = e.cookie AND f.event IN ('bind', 'listen'))
                 ORDER BY e.time_ns"
            ),
            &[&port, &at],
        )
    }

    /// The first bind/listen row of a socket, if recorded.
    pub fn first_seen(&self, cookie: u64) -> rusqlite::Result<Option<Row>> {
        Ok(self
            .rows(&format!("{SELECT} WHERE e.cookie = ?1 AND e.event IN ('bind', 'listen') ORDER BY e.id LIMIT 1"), &[&(cookie as i64)])?
            .into_iter()
            .next())
    }

    /// Drops rows older than `before_ns`, then the oldest beyond `max_rows`.
    pub fn prune(&mut self, before_ns: i64, max_rows: u64) -> rusqlite::Result<usize> {
        let mut n = self.conn.execute("DELETE FROM events WHERE time_ns < ?1", [before_ns])?;
        let count: i64 = self.conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))?;
        if count as u64 > max_rows {
            n += self
                .conn
                .execute("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT ?1)", [count - max_rows as i64])?;
        }
        // Processes no event refers to any more.
        self.conn.execute("DELETE FROM processes WHERE id NOT IN (SELECT proc_id FROM events WHERE proc_id IS NOT NULL)", [])?;
        self.procs.clear();
        Ok(n)
    }

    pub fn count(&self) -> rusqlite::Result<u64> {
        self.conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0)).map(|n| n as u64)
    }
}

/// Retention settings.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub max_age: Duration,
    pub max_rows: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self { max_age: Duration::from_secs(7 * 86400), max_rows: 1_000_000 }
    }
}

/// Rows the writer may have queued before new ones are dropped.
pub const QUEUE_ROWS: usize = 100_000;

/// The batching writer: rows go through a channel to a thread that commits them in
/// transactions of up to 5000 rows or every 200 ms, and prunes once a minute.
pub struct Writer {
    tx: Option<mpsc::Sender<Row>>,
    /// Rows sent and not yet taken by the writer thread.
    queued: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    /// Rows dropped because the writer fell this far behind (memory stays bounded).
    pub dropped: std::sync::Arc<std::sync::atomic::AtomicU64>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    pub fn start(path: &Path, retention: Retention) -> Result<Self> {
        let mut store = Store::open(path)?;
        // Bounded by a count, not by a `sync_channel`: that preallocates every slot
        // (100k rows, ~28 MiB of RSS for an idle agent). The list channel allocates
        // as rows arrive, and a storm the database cannot absorb costs rows
        // (counted), not memory.
        let (tx, rx) = mpsc::channel::<Row>();
        let queued = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let taken = queued.clone();
        let thread = std::thread::Builder::new()
            .name("history".into())
            .spawn(move || {
                let mut batch = Vec::with_capacity(5000);
                let mut last_prune = std::time::Instant::now() - Duration::from_secs(3600);
                loop {
                    let closed = match rx.recv_timeout(Duration::from_millis(200)) {
                        Ok(r) => {
                            batch.push(r);
                            while batch.len() < 20_000 {
                                match rx.try_recv() {
                                    Ok(r) => batch.push(r),
                                    Err(_) => break,
                                }
                            }
                            taken.fetch_sub(batch.len(), std::sync::atomic::Ordering::Relaxed);
                            false
                        }
                        Err(mpsc::RecvTimeoutError::Timeout) => false,
                        Err(mpsc::RecvTimeoutError::Disconnected) => true,
                    };
                    if !batch.is_empty() {
                        if let Err(e) = store.insert(&batch) {
                            tracing::warn!(error = %e, rows = batch.len(), "history write failed");
                        }
                        batch.clear();
                        // A storm grows the batch to 20k rows; do not keep that.
                        batch.shrink_to(5000);
                    }
                    if last_prune.elapsed() > Duration::from_secs(60) {
                        let before = now_ns() - retention.max_age.as_nanos() as i64;
                        if let Err(e) = store.prune(before, retention.max_rows) {
                            tracing::warn!(error = %e, "history prune failed");
                        }
                        last_prune = std::time::Instant::now();
                    }
                    if closed {
                        break;
                    }
                }
            })
            .map_err(|e| Error::io("starting the history writer", e))?;
        Ok(Self { tx: Some(tx), queued, dropped: Default::default(), thread: Some(thread) })
    }

    pub fn record(&self, row: Row) {
        use std::sync::atomic::Ordering::Relaxed;
        if let Some(tx) = &self.tx {
            if self.queued.fetch_add(1, Relaxed) >= QUEUE_ROWS || tx.send(row).is_err() {
                self.queued.fetch_sub(1, Relaxed);
                self.dropped.fetch_add(1, Relaxed);
            }
        }
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        drop(self.tx.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// The human timeline.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    for r in rows {
        let port = r.port.map_or(String::new(), |p| format!("{p}/{}", r.proto.as_deref().unwrap_or("?")));
        let who = match (r.pid, &r.comm) {
            (Some(p), Some(c)) => format!("pid {p} ({c})"),
            (Some(p), None) => format!("pid {p}"),
            _ => String::new(),
        };
        let mut tail = Vec::new();
        if let Some(e) = &r.error {
            tail.push(e.clone());
        }
        if let Some(d) = &r.detail {
            tail.push(d.clone());
        }
        if let Some(j) = &r.job {
            tail.push(format!("job {j}"));
        }
        out.push_str(&format!(
            "{}  {:<11} {:<10} {:<16} {:<24} {}\n",
            r.time,
            r.event,
            port,
            r.addr.as_deref().unwrap_or(""),
            who,
            tail.join("; ")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(t: i64, event: &str, port: u16, pid: i32, cookie: u64) -> Row {
        Row {
            time_ns: t,
            time: fmt_time(t),
            event: event.into(),
            port: Some(port),
            proto: Some("tcp".into()),
            pid: Some(pid),
            comm: Some("gunicorn".into()),
            cookie: Some(cookie),
            ..Row::default()
        }
    }

    #[test]
    fn stores_queries_and_answers_at() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let mut s = Store::open(&path).unwrap();
        s.insert(&[
            row(100, "bind", 5050, 377, 1),
            row(101, "listen", 5050, 377, 1),
            row(150, "bind_failed", 5050, 812, 2),
            row(200, "close", 5050, 377, 1),
            row(300, "bind", 5050, 900, 3),
            row(310, "bind", 6000, 901, 4),
        ])
        .unwrap();
        assert_eq!(s.query(Some(5050), None, None, None).unwrap().len(), 5);
        assert_eq!(s.query(None, Some(150), Some(300), None).unwrap().len(), 3);
        assert_eq!(s.query(None, None, None, Some(812)).unwrap()[0].event, "bind_failed");
        let at = |t| s.holders_at(5050, t).unwrap().iter().map(|r| r.pid.unwrap()).collect::<Vec<_>>();
        assert_eq!(at(99), Vec::<i32>::new());
        assert_eq!(at(120), vec![377]);
        assert_eq!(at(250), Vec::<i32>::new());
        assert_eq!(at(305), vec![900]);
        assert_eq!(s.first_seen(1).unwrap().unwrap().time_ns, 100);
        // Retention by age and by count.
        assert_eq!(s.prune(150, 1000).unwrap(), 2);
        assert_eq!(s.prune(0, 2).unwrap(), 2);
        assert_eq!(s.count().unwrap(), 2);
        drop(s);
        assert!(Store::open_readonly(&dir.path().join("missing.db")).is_err());
        // An older schema is set aside, not written into.
        let old = dir.path().join("old.db");
        Connection::open(&old)
            .unwrap()
            .execute_batch("CREATE TABLE events (id INTEGER PRIMARY KEY, time_ns INTEGER, event TEXT);")
            .unwrap();
        let e = Store::open_readonly(&old).err().unwrap().to_string();
        assert!(e.contains("older layout"), "{e}");
        let mut m = Store::open(&old).unwrap();
        m.insert(&[row(1, "bind", 1, 1, 1)]).unwrap();
        assert_eq!(m.count().unwrap(), 1);
        assert_eq!(m.prune(0, 10).unwrap(), 0);
        assert_eq!(Store::open_readonly(&path).unwrap().count().unwrap(), 2);
    }

    #[test]
    fn job_identity_and_times() {
        let env = b"PATH=/bin\0GITHUB_JOB=test\0GITHUB_RUN_ID=4711\0HOME=/root\0";
        assert_eq!(job_from_environ(env).as_deref(), Some("GITHUB_RUN_ID=4711 GITHUB_JOB=test"));
        assert_eq!(job_from_environ(b"GITHUB_RUN_IDX=1\0"), None);
        assert_eq!(parse_when("10s", 100_000_000_000), Ok(90_000_000_000));
        assert_eq!(parse_when("1970-01-01T00:01:40Z", 0), Ok(100_000_000_000));
        assert!(parse_when("yesterday", 0).is_err());
        assert_eq!(fmt_time(1_500_000_000), "1970-01-01T00:00:01.500Z");
    }

    #[test]
    fn writer_stores_rows_and_drops_beyond_its_queue_bound() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let w = Writer::start(&path, Retention::default()).unwrap();
        // Recent times: the writer prunes by age as it starts.
        let t = now_ns();
        w.record(row(t, "bind", 5050, 1, 1));
        // A writer this far behind: the next row is dropped and counted.
        w.queued.fetch_add(QUEUE_ROWS, Relaxed);
        w.record(row(t + 1, "bind", 5050, 2, 2));
        assert_eq!(w.dropped.load(Relaxed), 1);
        w.queued.fetch_sub(QUEUE_ROWS, Relaxed);
        w.record(row(t + 2, "bind", 5050, 3, 3));
        drop(w);
        let pids: Vec<i32> =
            Store::open_readonly(&path).unwrap().query(None, None, None, None).unwrap().iter().filter_map(|r| r.pid).collect();
        assert_eq!(pids, vec![1, 3]);
    }

    #[test]
    fn reads_own_details() {
        let d = read_details(std::process::id() as i32).unwrap();
        assert!(d.ancestry.starts_with(&format!("{} ", std::process::id())));
        assert!(!d.comm.is_empty());
    }
}
