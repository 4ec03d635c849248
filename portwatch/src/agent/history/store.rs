//! The history database: schema, batched inserts, queries, retention.
use std::{collections::HashMap, path::Path, time::Duration};

use rusqlite::{params, Connection, OpenFlags};

use super::{Row, RowKind};
use crate::{
    error::{Error, Result},
    model::{process::Text, socket::Proto, time::fmt_time},
};

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
            let kinds: Vec<&str> = rows.iter().map(|r| r.event.name()).collect();
            let protos: Vec<Option<&str>> = rows.iter().map(|r| r.proto.map(|p| p.name())).collect();
            let addrs: Vec<Option<String>> = rows.iter().map(|r| r.addr.map(|a| a.to_string())).collect();
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
    /// closed (their first bind/listen row each).
    pub fn holders_at(&self, port: u16, at: i64) -> rusqlite::Result<Vec<Row>> {
        self.rows(
            &format!(
                "{SELECT} WHERE e.port = ?1 AND e.event IN ('bind', 'listen', 'observed') AND e.time_ns <= ?2
                   AND e.cookie IS NOT NULL
                   AND NOT EXISTS (SELECT 1 FROM events c WHERE c.cookie = e.cookie AND c.event = 'close'
                                   AND c.time_ns >= e.time_ns AND c.time_ns <= ?2)
                   AND e.id = (SELECT MIN(f.id) FROM events f WHERE f.cookie = e.cookie AND f.event IN ('bind', 'listen', 'observed'))
                 ORDER BY e.time_ns"
            ),
            &[&port, &at],
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
        assert_eq!(s.query(Some(5050), None, None, None).unwrap().len(), 5);
        assert_eq!(s.query(None, Some(150), Some(300), None).unwrap().len(), 3);
        assert_eq!(s.query(None, None, None, Some(812)).unwrap()[0].event, BindFailed);
        let at = |t| s.holders_at(5050, t).unwrap().iter().map(|r| r.pid.unwrap()).collect::<Vec<_>>();
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
}
