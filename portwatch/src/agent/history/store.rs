//! The history database: schema, batched inserts, queries, retention.
use std::{collections::HashMap, path::Path, time::Duration};

use rusqlite::{params, Connection, ErrorCode, OpenFlags};

use super::{safety, Row, RowKind};
use crate::{
    error::{Error, Result},
    model::{process::Text, socket::Proto, time::fmt_time},
};

/// How large the history may get: rows in `events`, and bytes of the database file
/// in use (pages holding data; free pages are given back by incremental vacuum).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    pub max_rows: u64,
    pub max_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self { max_rows: u64::MAX, max_bytes: u64::MAX }
    }
}

pub struct Store {
    conn: Connection,
    /// Content hash of a process's details -> its row in `processes`.
    procs: HashMap<u64, i64>,
    /// Rows in `events`, kept by counting what is inserted and deleted (a
    /// `COUNT(*)` per batch would cost as much as the batch).
    rows: u64,
    limits: Limits,
    /// Rows added to `processes` since unreferenced ones were last removed.
    procs_added: u64,
    /// Opened read-only with `immutable=1`: the write-ahead log is not read.
    immutable: bool,
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
    cookie INTEGER, error TEXT, detail TEXT, netns INTEGER
);
CREATE INDEX IF NOT EXISTS events_port_time ON events(port, time_ns);
CREATE INDEX IF NOT EXISTS events_cookie ON events(cookie);
";

/// Bumped when the tables change; older tables are kept under another name.
const SCHEMA_VERSION: i64 = 3;

/// A database from before version 2 keeps its rows in `events_v<N>`; new rows go
/// to fresh tables. Version 2 gains a column.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    let has_events: bool =
        conn.query_row("SELECT COUNT(*) FROM sqlite_master WHERE type = 'table' AND name = 'events'", [], |r| r.get::<_, i64>(0))? > 0;
    if has_events && version == 2 {
        // Version 3 added the network namespace; older rows have none.
        conn.execute_batch("ALTER TABLE events ADD COLUMN netns INTEGER;")?;
    } else if has_events && version < SCHEMA_VERSION {
        conn.execute_batch(&format!(
            "ALTER TABLE events RENAME TO events_v{version};
             DROP INDEX IF EXISTS events_port_time; DROP INDEX IF EXISTS events_time; DROP INDEX IF EXISTS events_cookie;"
        ))?;
    }
    Ok(())
}

const SELECT: &str = "SELECT e.id, e.time_ns, e.event, e.port, e.proto, e.addr, e.pid, e.comm, e.cookie, e.error, e.detail, e.netns,
    p.ppid, p.uid, p.cmdline, p.cgroup, p.ancestry, p.job
    FROM events e LEFT JOIN processes p ON p.id = e.proc_id";

fn db_err(path: &Path, e: rusqlite::Error) -> Error {
    Error::Config(format!("history database {}: {e}", path.display()))
}

/// The largest write-ahead log kept between checkpoints (a storm's batches may
/// grow it; it is truncated back to this after each checkpoint).
const WAL_LIMIT_BYTES: i64 = 64 << 20;
/// Free pages given back to the file system per step of incremental vacuum (4 MiB
/// of 4 KiB pages): a step is short, and the writer takes one per batch or tick.
const VACUUM_STEP_PAGES: i64 = 1024;

/// Settings for every connection: the schema (views, triggers) of a database
/// file is not trusted to call functions with side effects.
fn harden(conn: &Connection) -> rusqlite::Result<()> {
    conn.pragma_update(None, "trusted_schema", "OFF")?;
    conn.set_db_config(rusqlite::config::DbConfig::SQLITE_DBCONFIG_DEFENSIVE, true)?;
    Ok(())
}

/// `file:` URI of an absolute path, for `immutable=1`.
fn file_uri(abs: &Path) -> String {
    use std::os::unix::ffi::OsStrExt;
    let mut uri = String::from("file:");
    for &b in abs.as_os_str().as_bytes() {
        if b.is_ascii_alphanumeric() || b"/-_.~".contains(&b) {
            uri.push(b as char);
        } else {
            uri.push_str(&format!("%{b:02X}"));
        }
    }
    uri.push_str("?immutable=1");
    uri
}

impl Store {
    /// Opens (creating) the database for writing, after checking that its path is
    /// safe for root to write (`safety`): a new database is created 0640, with
    /// incremental vacuum.
    pub fn open(path: &Path) -> Result<Self> {
        let abs = safety::prepare(path).map_err(|e| Error::Config(format!("history database: {e}")))?;
        let flags = OpenFlags::SQLITE_OPEN_READ_WRITE
            | OpenFlags::SQLITE_OPEN_CREATE
            | OpenFlags::SQLITE_OPEN_NO_MUTEX
            | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let err = |e| db_err(path, e);
        let conn = Connection::open_with_flags(&abs, flags).map_err(err)?;
        harden(&conn).map_err(err)?;
        conn.busy_timeout(Duration::from_secs(5)).map_err(err)?;
        // The first read of the file: garbage fails here ("file is not a database").
        let pages: i64 = conn.query_row("PRAGMA page_count", [], |r| r.get(0)).map_err(err)?;
        if pages == 0 {
            // Only possible before the first table exists.
            conn.pragma_update(None, "auto_vacuum", "INCREMENTAL").map_err(err)?;
        }
        conn.pragma_update(None, "journal_mode", "WAL").map_err(err)?;
        // WAL without fsync per commit: a committed batch survives the agent's
        // kill -9 (it is in the OS page cache); only a machine crash can lose the
        // last ones.
        conn.pragma_update(None, "synchronous", "OFF").map_err(err)?;
        conn.pragma_update(None, "journal_size_limit", WAL_LIMIT_BYTES).map_err(err)?;
        migrate(&conn).map_err(err)?;
        conn.execute_batch(SCHEMA).map_err(err)?;
        conn.pragma_update(None, "user_version", SCHEMA_VERSION).map_err(err)?;
        let rows = conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0)).map_err(err)? as u64;
        Ok(Self { conn, procs: HashMap::new(), rows, limits: Limits::default(), procs_added: 0, immutable: false })
    }

    /// Opens an existing database for queries. A reader that may read the database
    /// but not write its `-shm` (the agent is stopped, and only it could create
    /// one) gets it opened `immutable=1`: everything checkpointed is readable.
    pub fn open_readonly(path: &Path) -> Result<Self> {
        match std::fs::File::open(path) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(Error::Config(format!(
                    "no history database at {} (the agent writes it; --db to choose another)",
                    path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {
                return Err(Error::privilege(
                    format!("cannot read the history database {}: {e}", path.display()),
                    "run as root, or get read access to it (or ask the agent: its control socket answers `history`)",
                ))
            }
            Err(e) => return Err(Error::Config(format!("history database {}: {e}", path.display()))),
        }
        let abs = std::path::absolute(path).map_err(|e| Error::Config(format!("history database {}: {e}", path.display())))?;
        if let Some(link) = safety::find_symlink(&abs) {
            return Err(Error::Config(format!(
                "history database {}: {} is a symbolic link; refusing to follow it (give the real path)",
                path.display(),
                link.display()
            )));
        }
        let ro = OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX | OpenFlags::SQLITE_OPEN_NOFOLLOW;
        let open = |target: &str, flags: OpenFlags| -> rusqlite::Result<(Connection, i64)> {
            let conn = Connection::open_with_flags(target, flags)?;
            harden(&conn)?;
            conn.busy_timeout(Duration::from_secs(5))?;
            let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
            Ok((conn, version))
        };
        let (conn, version, immutable) = match open(&abs.to_string_lossy(), ro) {
            Ok((c, v)) => (c, v, false),
            Err(e) if matches!(e.sqlite_error_code(), Some(ErrorCode::CannotOpen | ErrorCode::ReadOnly)) => {
                match open(&file_uri(&abs), ro | OpenFlags::SQLITE_OPEN_URI) {
                    Ok((c, v)) => (c, v, true),
                    Err(_) => return Err(db_err(path, e)),
                }
            }
            Err(e) => return Err(db_err(path, e)),
        };
        if version < SCHEMA_VERSION {
            return Err(Error::Config(format!(
                "history database {} has an older layout (version {version}); the agent converts it when it next starts",
                path.display()
            )));
        }
        Ok(Self { conn, procs: HashMap::new(), rows: 0, limits: Limits::default(), procs_added: 0, immutable })
    }

    /// When the database was opened without its write-ahead log and that log holds
    /// rows: what the reader should know.
    pub fn unread_wal(&self, path: &Path) -> Option<String> {
        let mut wal = path.as_os_str().to_owned();
        wal.push("-wal");
        let len = std::fs::metadata(&wal).map_or(0, |m| m.len());
        (self.immutable && len > 0).then(|| {
            format!(
                "{} ({len} bytes) is not readable without write access to the database's -shm file; rows the agent wrote since its last checkpoint are not shown",
                Path::new(&wal).display()
            )
        })
    }

    /// Sets the bounds `insert` keeps (rows at every commit, bytes after it).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// Rows in `events`, as counted.
    pub fn row_count(&self) -> u64 {
        self.rows
    }

    /// Bytes of the database file holding data (free pages excluded).
    pub fn used_bytes(&self) -> rusqlite::Result<u64> {
        let q = |p: &str| self.conn.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, i64>(0));
        let (pages, free, size) = (q("page_count")?, q("freelist_count")?, q("page_size")?);
        Ok((pages - free).max(0) as u64 * size.max(0) as u64)
    }

    /// The database's auto_vacuum mode: 0 none, 1 full, 2 incremental.
    pub fn auto_vacuum(&self) -> rusqlite::Result<i64> {
        self.conn.query_row("PRAGMA auto_vacuum", [], |r| r.get(0))
    }

    /// Converts a database created without incremental vacuum (before portwatch
    /// set it) once: the mode can only change with a VACUUM, outside WAL mode,
    /// with no other connection open. `Ok(false)` when there was nothing to do.
    pub fn convert_to_incremental(&mut self) -> rusqlite::Result<bool> {
        if self.auto_vacuum()? == 2 {
            return Ok(false);
        }
        self.conn.pragma_update(None, "journal_mode", "DELETE")?;
        let r = self.conn.execute_batch("PRAGMA auto_vacuum = INCREMENTAL; VACUUM;");
        // Back to WAL whatever happened.
        self.conn.pragma_update(None, "journal_mode", "WAL")?;
        r?;
        self.procs.clear();
        Ok(self.auto_vacuum()? == 2)
    }

    /// Gives free pages back to the file system, a step at a time, once a good
    /// part of the file is free (a store at its row bound reuses its free pages;
    /// returning them would only make the file grow again). Returns pages freed.
    pub fn give_back(&mut self) -> rusqlite::Result<u64> {
        let q = |p: &str| self.conn.query_row(&format!("PRAGMA {p}"), [], |r| r.get::<_, i64>(0));
        let (pages, free) = (q("page_count")?, q("freelist_count")?);
        if free < 256 || free * 8 < pages {
            return Ok(0);
        }
        // One result row per page freed; every step must be taken.
        let mut st = self.conn.prepare(&format!("PRAGMA incremental_vacuum({VACUUM_STEP_PAGES})"))?;
        let mut rows = st.query([])?;
        let mut n = 0;
        while rows.next()?.is_some() {
            n += 1;
        }
        Ok(n)
    }

    /// Deletes the `n` oldest events (by insertion); returns how many went.
    fn delete_oldest(conn: &Connection, n: u64, rows: u64) -> rusqlite::Result<u64> {
        if n == 0 {
            return Ok(0);
        }
        if n >= rows {
            return Ok(conn.execute("DELETE FROM events", [])? as u64);
        }
        Ok(conn.execute("DELETE FROM events WHERE id <= (SELECT id FROM events ORDER BY id LIMIT 1 OFFSET ?1)", [(n - 1) as i64])? as u64)
    }

    /// Removes process rows no event refers to any more.
    fn drop_unreferenced_procs(&mut self) -> rusqlite::Result<usize> {
        let n = self.conn.execute("DELETE FROM processes WHERE id NOT IN (SELECT proc_id FROM events WHERE proc_id IS NOT NULL)", [])?;
        self.procs.clear();
        self.procs_added = 0;
        Ok(n)
    }

    /// Keeps the limits now: the oldest rows beyond `max_rows`, then (a tenth of
    /// the rows at a time) beyond `max_bytes`. Returns the events deleted.
    pub fn enforce(&mut self) -> rusqlite::Result<u64> {
        let mut deleted = 0;
        let excess = self.rows.saturating_sub(self.limits.max_rows);
        if excess > 0 {
            let n = Self::delete_oldest(&self.conn, excess, self.rows)?;
            self.rows -= n.min(self.rows);
            deleted += n;
            if n < excess {
                self.resync()?;
            }
        }
        if self.procs_added > (self.limits.max_rows / 4).clamp(1_000, 100_000) {
            self.drop_unreferenced_procs()?;
        }
        if self.limits.max_bytes != u64::MAX {
            // A few rounds at most: each removes a tenth of the rows and the
            // processes only they referred to.
            for _ in 0..8 {
                if self.used_bytes()? <= self.limits.max_bytes {
                    break;
                }
                let n = Self::delete_oldest(&self.conn, (self.rows / 10).max(1), self.rows)?;
                self.rows -= n.min(self.rows);
                deleted += n;
                self.drop_unreferenced_procs()?;
                if self.rows == 0 {
                    break;
                }
            }
        }
        Ok(deleted)
    }

    /// Counts the rows again (after someone else changed the table).
    fn resync(&mut self) -> rusqlite::Result<()> {
        self.rows = self.count()?;
        Ok(())
    }

    /// Inserts rows in one transaction, which also deletes the oldest rows beyond
    /// `max_rows` (so a commit never leaves more); then keeps `max_bytes`. A batch
    /// larger than `max_rows` keeps its newest rows only. Returns the rows that
    /// made room (deleted, or never stored).
    pub fn insert(&mut self, rows: &[Row]) -> rusqlite::Result<u64> {
        use std::hash::{Hash, Hasher};
        let skip = rows.len().saturating_sub(usize::try_from(self.limits.max_rows).unwrap_or(usize::MAX));
        let rows = &rows[skip..];
        let excess = (self.rows + rows.len() as u64).saturating_sub(self.limits.max_rows);
        let tx = self.conn.transaction()?;
        // Oldest rows first: their pages are reused by this batch's rows.
        let deleted = Self::delete_oldest(&tx, excess, self.rows)?;
        let mut procs_added = 0;
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
                            procs_added += 1;
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
            let kinds: Vec<&str> = rows.iter().map(|r| r.event.name()).collect();
            let protos: Vec<Option<&str>> = rows.iter().map(|r| r.proto.map(|p| p.name())).collect();
            let addrs: Vec<Option<String>> = rows.iter().map(|r| r.addr.map(|a| a.to_string())).collect();
            let netns: Vec<Option<i64>> = rows.iter().map(|r| r.netns.map(|n| n as i64)).collect();
            const CHUNK: usize = 64;
            const COLS: &str =
                "INSERT INTO events (time_ns, event, port, proto, addr, pid, comm, proc_id, cookie, error, detail, netns) VALUES ";
            let one = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)";
            let many = format!("{COLS}{}", vec![one; CHUNK].join(", "));
            let single = format!("{COLS}{one}");
            let mut start = 0;
            while start < rows.len() {
                let n = (rows.len() - start).min(CHUNK);
                let mut st = if n == CHUNK { tx.prepare_cached(&many)? } else { tx.prepare_cached(&single)? };
                let end = if n == CHUNK { start + CHUNK } else { start + 1 };
                let mut args: Vec<&dyn rusqlite::ToSql> = Vec::with_capacity((end - start) * 12);
                for i in start..end {
                    let r = &rows[i];
                    args.extend_from_slice(&[
                        &r.time_ns,
                        &kinds[i],
                        &r.port,
                        &protos[i],
                        &addrs[i],
                        &r.pid,
                        &r.comm,
                        &ids[i],
                        &cookies[i],
                        &r.error,
                        &r.detail,
                        &netns[i],
                    ]);
                }
                st.execute(args.as_slice())?;
                start = end;
            }
        }
        tx.commit()?;
        self.rows = self.rows - deleted.min(self.rows) + rows.len() as u64;
        self.procs_added += procs_added;
        // `excess` is at most the rows counted before this batch.
        if deleted < excess {
            // Fewer rows than counted: someone else deleted some.
            self.resync()?;
        }
        Ok(deleted + skip as u64 + self.enforce()?)
    }

    fn rows(&self, sql: &str, args: &[&dyn rusqlite::ToSql]) -> rusqlite::Result<Vec<Row>> {
        let mut st = self.conn.prepare(sql)?;
        let it = st.query_map(args, |r| {
            let time_ns: i64 = r.get("time_ns")?;
            let event: String = r.get("event")?;
            let proto: Option<String> = r.get("proto")?;
            let addr: Option<String> = r.get("addr")?;
            Ok(Row {
                time_ns,
                time: fmt_time(time_ns),
                event: RowKind::from_name(&event).ok_or_else(|| bad_value("event", &event))?,
                port: r.get("port")?,
                proto: proto.map(|p| Proto::from_name(&p).ok_or_else(|| bad_value("proto", &p))).transpose()?,
                addr: addr.map(|a| a.parse().map_err(|_| bad_value("addr", &a))).transpose()?,
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
                netns: r.get::<_, Option<i64>>("netns")?.map(|n| n as u64),
            })
        })?;
        it.collect()
    }

    /// The timeline, oldest first: of one network namespace (and rows that name
    /// none), or of all with `netns` None.
    pub fn query(
        &self,
        port: Option<u16>,
        since: Option<i64>,
        until: Option<i64>,
        pid: Option<i32>,
        netns: Option<u64>,
    ) -> rusqlite::Result<Vec<Row>> {
        let netns = netns.map(|n| n as i64);
        self.rows(
            &format!(
                "{SELECT} WHERE (?1 IS NULL OR e.port = ?1) AND (?2 IS NULL OR e.time_ns >= ?2)
                 AND (?3 IS NULL OR e.time_ns <= ?3) AND (?4 IS NULL OR e.pid = ?4)
                 AND (?5 IS NULL OR e.netns IS NULL OR e.netns = ?5) ORDER BY e.time_ns, e.id"
            ),
            &[&port, &since, &until, &pid, &netns],
        )
    }

    /// The newest `limit` rows of the timeline, oldest first, and whether more matched.
    pub fn query_newest(
        &self,
        port: Option<u16>,
        since: Option<i64>,
        until: Option<i64>,
        pid: Option<i32>,
        limit: usize,
    ) -> rusqlite::Result<(Vec<Row>, bool)> {
        let take = limit.saturating_add(1) as i64;
        let mut rows = self.rows(
            &format!(
                "{SELECT} WHERE (?1 IS NULL OR e.port = ?1) AND (?2 IS NULL OR e.time_ns >= ?2)
                 AND (?3 IS NULL OR e.time_ns <= ?3) AND (?4 IS NULL OR e.pid = ?4) ORDER BY e.time_ns DESC, e.id DESC LIMIT ?5"
            ),
            &[&port, &since, &until, &pid, &take],
        )?;
        let truncated = rows.len() > limit;
        rows.truncate(limit);
        rows.reverse();
        Ok((rows, truncated))
    }

    /// Who held `port` at `at`: sockets bound or listening on it by then and not yet
    /// closed (their first bind/listen row each), in the network namespace `netns`
    /// (None: any).
    pub fn holders_at(&self, port: u16, at: i64, netns: Option<u64>) -> rusqlite::Result<Vec<Row>> {
        let netns = netns.map(|n| n as i64);
        self.rows(
            &format!(
                "{SELECT} WHERE e.port = ?1 AND e.event IN ('bind', 'listen', 'observed') AND e.time_ns <= ?2
                   AND (?3 IS NULL OR e.netns IS NULL OR e.netns = ?3)
                   AND e.cookie IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM events c WHERE c.cookie = e.cookie AND c.event = 'close'
                                   AND c.time_ns >= e.time_ns AND c.time_ns <= ?2)
                   AND e.id = (SELECT MIN(f.id) FROM events f WHERE f.cookie = e.cookie AND f.event IN ('bind', 'listen', 'observed'))
                 ORDER BY e.time_ns"
            ),
            &[&port, &at, &netns],
        )
    }

    /// The first bind/listen row of a socket, if recorded.
    pub fn first_seen(&self, cookie: u64) -> rusqlite::Result<Option<Row>> {
        Ok(self
            .rows(
                &format!("{SELECT} WHERE e.cookie = ?1 AND e.event IN ('bind', 'listen', 'observed') ORDER BY e.id LIMIT 1"),
                &[&(cookie as i64)],
            )?
            .into_iter()
            .next())
    }

    /// Drops rows older than `before_ns`, then the oldest beyond `max_rows`, and
    /// processes no row refers to; counts the rows again.
    pub fn prune(&mut self, before_ns: i64, max_rows: u64) -> rusqlite::Result<usize> {
        let mut n = self.conn.execute("DELETE FROM events WHERE time_ns < ?1", [before_ns])?;
        self.resync()?;
        if self.rows > max_rows {
            n += Self::delete_oldest(&self.conn, self.rows - max_rows, self.rows)? as usize;
            self.resync()?;
        }
        self.drop_unreferenced_procs()?;
        Ok(n)
    }

    pub fn count(&self) -> rusqlite::Result<u64> {
        self.conn.query_row("SELECT COUNT(*) FROM events", [], |r| r.get::<_, i64>(0)).map(|n| n as u64)
    }
}

fn bad_value(column: &str, value: &str) -> rusqlite::Error {
    rusqlite::Error::InvalidColumnType(0, format!("{column} = {value:?}"), rusqlite::types::Type::Text)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::history::{test_row as row, RowKind::*};

    #[test]
    fn stores_queries_and_answers_at() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let mut s = Store::open(&path).unwrap();
        s.insert(&[
            row(100, Bind, 5050, 377, 1),
            row(101, Listen, 5050, 377, 1),
            row(150, BindFailed, 5050, 812, 2),
            row(200, Close, 5050, 377, 1),
            row(300, Bind, 5050, 900, 3),
            row(310, Bind, 6000, 901, 4),
        ])
        .unwrap();
        assert_eq!(s.query(Some(5050), None, None, None, None).unwrap().len(), 5);
        assert_eq!(s.query(None, Some(150), Some(300), None, None).unwrap().len(), 3);
        assert_eq!(s.query(None, None, None, Some(812), None).unwrap()[0].event, BindFailed);
        let at = |t| s.holders_at(5050, t, None).unwrap().iter().map(|r| r.pid.unwrap()).collect::<Vec<_>>();
        assert_eq!(at(99), Vec::<i32>::new());
        assert_eq!(at(120), vec![377]);
        assert_eq!(at(250), Vec::<i32>::new());
        assert_eq!(at(305), vec![900]);
        assert_eq!(s.first_seen(1).unwrap().unwrap().time_ns, 100);
        let (newest, more) = s.query_newest(Some(5050), None, None, None, 2).unwrap();
        assert!(more);
        assert_eq!(newest.iter().map(|r| r.time_ns).collect::<Vec<_>>(), vec![200, 300]);
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
        m.insert(&[row(1, Bind, 1, 1, 1)]).unwrap();
        assert_eq!(m.count().unwrap(), 1);
        assert_eq!(m.prune(0, 10).unwrap(), 0);
        assert_eq!(Store::open_readonly(&path).unwrap().count().unwrap(), 2);
    }

    #[test]
    fn a_port_is_held_per_network_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("h.db")).unwrap();
        let (host, other) = (7, 9);
        let in_ns = |mut r: Row, ns: u64| {
            r.netns = Some(ns);
            r
        };
        s.insert(&[
            in_ns(row(100, Listen, 5050, 377, 1), host),
            in_ns(row(110, Listen, 5050, 400, 2), other),
            in_ns(row(120, Close, 5050, 377, 1), host),
            // An old row: no namespace known, shown everywhere.
            row(90, Bind, 5050, 50, 3),
        ])
        .unwrap();
        let at = |t, ns| s.holders_at(5050, t, ns).unwrap().iter().map(|r| r.pid.unwrap()).collect::<Vec<_>>();
        assert_eq!(at(115, Some(host)), vec![50, 377]);
        assert_eq!(at(115, Some(other)), vec![50, 400]);
        assert_eq!(at(130, Some(host)), vec![50]);
        assert_eq!(at(130, None), vec![50, 400]);
        let pids = |ns| s.query(Some(5050), None, None, None, ns).unwrap().iter().map(|r| r.pid.unwrap()).collect::<Vec<_>>();
        assert_eq!(pids(Some(other)), vec![50, 400]);
        assert_eq!(pids(None).len(), 4);
        assert_eq!(s.query(None, None, None, Some(400), None).unwrap()[0].netns, Some(other));
    }

    #[test]
    fn a_version_2_database_keeps_its_rows() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v2.db");
        {
            let c = Connection::open(&path).unwrap();
            c.execute_batch(
                "CREATE TABLE processes (id INTEGER PRIMARY KEY, pid INTEGER, ppid INTEGER, uid INTEGER, cmdline TEXT,
                     cgroup TEXT, ancestry TEXT, job TEXT);
                 CREATE TABLE events (id INTEGER PRIMARY KEY, time_ns INTEGER NOT NULL, event TEXT NOT NULL, port INTEGER,
                     proto TEXT, addr TEXT, pid INTEGER, comm TEXT, proc_id INTEGER, cookie INTEGER, error TEXT, detail TEXT);
                 INSERT INTO events (time_ns, event, port, pid, cookie) VALUES (5, 'listen', 5050, 42, 1);
                 PRAGMA user_version = 2;",
            )
            .unwrap();
        }
        let mut s = Store::open(&path).unwrap();
        s.insert(&[Row { netns: Some(3), ..row(6, Bind, 6000, 43, 2) }]).unwrap();
        let rows = s.query(None, None, None, None, Some(3)).unwrap();
        assert_eq!(rows.iter().map(|r| (r.pid, r.netns)).collect::<Vec<_>>(), vec![(Some(42), None), (Some(43), Some(3))]);
    }

    fn rows_at(from: i64, n: i64) -> Vec<Row> {
        (from..from + n).map(|t| row(t, Bind, 5050, 1, t as u64)).collect()
    }

    fn pragma(s: &Store, p: &str) -> i64 {
        s.conn.query_row(&format!("PRAGMA {p}"), [], |r| r.get(0)).unwrap()
    }

    #[test]
    fn keeps_its_row_and_byte_limits_at_every_commit_and_gives_space_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let mut s = Store::open(&path).unwrap();
        assert_eq!(s.auto_vacuum().unwrap(), 2, "a new database has incremental vacuum");
        s.set_limits(Limits { max_rows: 100, max_bytes: u64::MAX });
        for b in 0..20 {
            s.insert(&rows_at(b * 100, 37)).unwrap();
            assert!(s.count().unwrap() <= 100);
            assert_eq!(s.row_count(), s.count().unwrap(), "counted, not COUNT(*)");
        }
        let kept = s.query(None, None, None, None, None).unwrap();
        assert_eq!(kept.len(), 100);
        assert_eq!(kept.last().unwrap().time_ns, 1936, "the newest are kept");
        // A batch larger than the bound keeps its newest rows.
        assert_eq!(s.insert(&rows_at(10_000, 250)).unwrap(), 250);
        let kept = s.query(None, None, None, None, None).unwrap();
        assert_eq!((kept.len(), kept[0].time_ns), (100, 10_150));
        // Rows deleted behind its back (an operator with sqlite3): counted again.
        s.conn.execute("DELETE FROM events WHERE id IN (SELECT id FROM events ORDER BY id LIMIT 60)", []).unwrap();
        s.insert(&rows_at(11_000, 90)).unwrap();
        assert_eq!((s.row_count(), s.count().unwrap()), (100, 100));

        // Bytes: processes with distinct 4 KiB command lines make big rows.
        let max_bytes = 2 << 20;
        s.set_limits(Limits { max_rows: 1_000_000, max_bytes });
        for b in 0..30 {
            let rows: Vec<Row> = (0..50)
                .map(|i| {
                    let t = 20_000 + b * 50 + i;
                    Row { cmdline: Some(format!("{t} {}", "x".repeat(4000)).into()), ..row(t, Bind, 5050, t as i32, t as u64) }
                })
                .collect();
            s.insert(&rows).unwrap();
            assert!(s.used_bytes().unwrap() <= max_bytes, "{} bytes", s.used_bytes().unwrap());
        }
        assert!(s.count().unwrap() > 100, "not emptied: {}", s.count().unwrap());
        let procs: i64 = s.conn.query_row("SELECT COUNT(*) FROM processes", [], |r| r.get(0)).unwrap();
        assert!(procs as u64 <= s.count().unwrap(), "unreferenced processes go with their rows: {procs}");

        // Everything pruned by age: the free pages are given back.
        let pages = pragma(&s, "page_count");
        s.prune(i64::MAX, 1_000_000).unwrap();
        assert_eq!(s.row_count(), 0);
        while s.give_back().unwrap() > 0 {}
        assert!(pragma(&s, "page_count") * 4 < pages, "{} of {pages} pages left", pragma(&s, "page_count"));
        s.conn.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |_| Ok(())).unwrap();
        assert!(std::fs::metadata(&path).unwrap().len() < 256 * 1024, "{} bytes", std::fs::metadata(&path).unwrap().len());
    }

    #[test]
    fn an_older_database_is_converted_to_incremental_vacuum_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let c = Connection::open(&path).unwrap();
        c.pragma_update(None, "journal_mode", "WAL").unwrap();
        c.execute_batch(SCHEMA).unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION).unwrap();
        drop(c);
        let mut s = Store::open(&path).unwrap();
        s.insert(&rows_at(1, 10)).unwrap();
        assert_eq!(s.auto_vacuum().unwrap(), 0);
        assert!(s.convert_to_incremental().unwrap());
        assert_eq!(s.auto_vacuum().unwrap(), 2);
        assert!(!s.convert_to_incremental().unwrap(), "once");
        let mode: String = s.conn.query_row("PRAGMA journal_mode", [], |r| r.get(0)).unwrap();
        assert_eq!(mode, "wal");
        s.insert(&rows_at(11, 10)).unwrap();
        assert_eq!((s.count().unwrap(), s.row_count()), (20, 20));
    }

    #[test]
    fn readers_need_no_write_access_and_follow_no_links() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let sub = dir.path().join("db");
        let path = sub.join("h.db");
        let mut s = Store::open(&path).unwrap();
        s.insert(&rows_at(1, 3)).unwrap();
        drop(s);
        // Closed cleanly: no -wal, no -shm; nobody may create them now (root may).
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o555)).unwrap();
        let r = Store::open_readonly(&path);
        std::fs::set_permissions(&sub, std::fs::Permissions::from_mode(0o755)).unwrap();
        let r = r.unwrap();
        assert_eq!(r.query(None, None, None, None, None).unwrap().len(), 3);
        if !nix::unistd::geteuid().is_root() {
            assert!(r.immutable);
        }
        assert_eq!(r.unread_wal(&path), None);
        let link = dir.path().join("link.db");
        std::os::unix::fs::symlink(&path, &link).unwrap();
        let e = Store::open_readonly(&link).err().unwrap().to_string();
        assert!(e.contains("symbolic link"), "{e}");
        // Garbage is not a database, read-only or not.
        std::fs::write(dir.path().join("junk.db"), vec![0x5a; 4096]).unwrap();
        let e = Store::open_readonly(&dir.path().join("junk.db")).err().unwrap().to_string();
        assert!(e.contains("not a database"), "{e}");
        assert!(Store::open(&dir.path().join("junk.db")).err().unwrap().to_string().contains("not a database"));
        assert_eq!(file_uri(Path::new("/a b/h%?.db")), "file:/a%20b/h%25%3F.db?immutable=1");
    }
}
