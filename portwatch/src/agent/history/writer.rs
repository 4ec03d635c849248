//! The batching writer: rows go through a channel to a thread that commits them in
//! transactions, keeps the store within its limits and prunes it by age.
//!
//! The database never stops the agent. When it cannot be opened (garbage, a path
//! refused by [`super::safety`], a full disk...) or a write fails, the thread
//! reports why in [`Health`] (the control socket's `status`, the metrics, one log
//! line per change), counts the rows it could not store, and opens it again after
//! 2 s, then less and less often (up to once a minute). The queue in front of it
//! is bounded by rows and by bytes: rows beyond either are dropped and counted.
use std::{
    cell::RefCell,
    path::{Path, PathBuf},
    sync::{
        atomic::{AtomicUsize, Ordering::Relaxed},
        mpsc, Arc, Mutex, PoisonError,
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::{counter::Counter, gauge::Gauge};
use tracing::{info, warn};

use super::{
    store::{Limits, Store},
    Row,
};
use crate::{config::DEFAULT_MAX_DB_BYTES, model::process::Text, sys::clock::wall_now_ns};

/// Retention settings.
#[derive(Clone, Copy, Debug)]
pub struct Retention {
    pub max_age: Duration,
    pub max_rows: u64,
    /// Bytes of the database file in use, at most.
    pub max_bytes: u64,
}

impl Default for Retention {
    fn default() -> Self {
        Self { max_age: Duration::from_secs(7 * 86400), max_rows: 1_000_000, max_bytes: DEFAULT_MAX_DB_BYTES }
    }
}

/// Rows the writer may have queued before new ones are dropped.
pub const QUEUE_ROWS: usize = 50_000;
/// Bytes the queued rows may hold (estimated by [`row_bytes`]) before new ones
/// are dropped: command lines, cgroups, parent chains and jobs are up to 4 KiB
/// each, so rows are not all alike.
pub const QUEUE_BYTES: usize = 16 << 20;
/// The first wait before opening the database again after a failure; it doubles
/// up to `RETRY_MAX`.
pub const RETRY_FIRST: Duration = Duration::from_secs(2);
pub const RETRY_MAX: Duration = Duration::from_secs(60);
/// Dropped rows are logged at most this often (counted all the time).
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);
const PRUNE_EVERY: Duration = Duration::from_secs(60);

/// The history's state, as the control socket's `status` and the metrics show it;
/// the counters and gauges are the metrics themselves (shared atomics).
#[derive(Debug, Default)]
pub struct Health {
    /// Rows dropped before the queue: the writer was too far behind.
    pub dropped: Counter,
    /// Rows the writer took but could not store (no database, or a failed write).
    pub failed: Counter,
    /// 1 while the database is open and the last write succeeded.
    pub ok: Gauge,
    /// Rows in the database, as the writer counts them.
    pub rows: Gauge,
    error: Mutex<Option<String>>,
}

impl Health {
    /// Why the history is not being written, when it is not.
    pub fn error(&self) -> Option<String> {
        self.error.lock().unwrap_or_else(PoisonError::into_inner).clone()
    }

    /// Records the state; `true` when it changed.
    fn set(&self, error: Option<String>) -> bool {
        self.ok.set(i64::from(error.is_none()));
        let mut e = self.error.lock().unwrap_or_else(PoisonError::into_inner);
        let changed = *e != error;
        *e = error;
        changed
    }
}

/// A conservative estimate of the memory a queued row holds: the row itself, the
/// strings it owns, and its shared texts — each counted unless the row queued
/// just before holds the same one (a storm from one process shares one copy of
/// its details). At most one row's texts are ever counted short: only the row at
/// the head of the queue can have been taken while rows sharing its texts wait.
pub fn row_bytes(r: &Row, before: &[Option<Text>; 4]) -> usize {
    let s = |o: &Option<String>| o.as_ref().map_or(0, String::capacity);
    let mut n = std::mem::size_of::<Row>() + r.time.capacity() + s(&r.comm) + s(&r.error) + s(&r.detail);
    for (t, b) in texts_of(r).into_iter().zip(before) {
        match (t, b) {
            (Some(t), Some(b)) if Arc::ptr_eq(t, b) => {}
            // The text and Arc's two counters.
            (Some(t), _) => n += t.len() + 16,
            (None, _) => {}
        }
    }
    n
}

fn texts_of(r: &Row) -> [Option<&Text>; 4] {
    [r.cmdline.as_ref(), r.cgroup.as_ref(), r.ancestry.as_ref(), r.job.as_ref()]
}

struct Queued {
    row: Row,
    bytes: usize,
}

/// The batching writer: rows go through a channel to a thread that commits them in
/// transactions of up to 20,000 rows, at least every 200 ms.
pub struct Writer {
    tx: Option<mpsc::Sender<Queued>>,
    /// Rows sent and not yet taken by the writer thread.
    queued: Arc<AtomicUsize>,
    /// Their estimated bytes.
    queued_bytes: Arc<AtomicUsize>,
    /// The shared texts of the last row queued.
    last: RefCell<[Option<Text>; 4]>,
    pub health: Arc<Health>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Writer {
    /// Starts the writer thread, which opens (creating) the database at `path`.
    /// This does not fail: a database that cannot be opened is reported in
    /// `health` and tried again.
    pub fn start(path: &Path, retention: Retention) -> Self {
        Self::start_with(path, retention, RETRY_FIRST)
    }

    fn start_with(path: &Path, retention: Retention, retry_first: Duration) -> Self {
        // Bounded by counts, not by a `sync_channel`: that preallocates every slot
        // (100k rows, ~28 MiB of RSS for an idle agent). The list channel allocates
        // as rows arrive, and a storm the database cannot absorb costs rows
        // (counted), not memory.
        let (tx, rx) = mpsc::channel::<Queued>();
        let queued = Arc::new(AtomicUsize::new(0));
        let queued_bytes = Arc::new(AtomicUsize::new(0));
        let health = Arc::new(Health::default());
        let mut thread = Thread {
            path: path.to_path_buf(),
            retention,
            health: health.clone(),
            store: None,
            retry_at: Instant::now(),
            retry_first,
            backoff: retry_first,
            dropped_logged: 0,
            drop_log_at: Instant::now(),
            last_prune: None,
            // Set by `open`, the only way to a store.
            vacuum_due: false,
        };
        let (taken, taken_bytes) = (queued.clone(), queued_bytes.clone());
        let spawned = std::thread::Builder::new().name("history".into()).spawn(move || thread.run(&rx, &taken, &taken_bytes));
        let (tx, thread) = match spawned {
            Ok(t) => (Some(tx), Some(t)),
            Err(e) => {
                let why = format!("starting the history writer: {e}");
                warn!(error = %why, "the agent goes on without history");
                health.set(Some(why));
                (None, None)
            }
        };
        Self { tx, queued, queued_bytes, last: RefCell::new(Default::default()), health, thread }
    }

    pub fn record(&self, row: Row) {
        let Some(tx) = &self.tx else {
            self.health.failed.inc();
            return;
        };
        let mut last = self.last.borrow_mut();
        let bytes = row_bytes(&row, &last);
        // The texts that differ from the last row's (in a storm from one process,
        // none: no reference counts touched).
        let mut changed: [Option<Option<Text>>; 4] = Default::default();
        for ((t, l), c) in texts_of(&row).into_iter().zip(last.iter()).zip(changed.iter_mut()) {
            let same = match (t, l) {
                (Some(t), Some(l)) => Arc::ptr_eq(t, l),
                (None, None) => true,
                _ => false,
            };
            if !same {
                *c = Some(t.cloned());
            }
        }
        let rows_full = self.queued.fetch_add(1, Relaxed) >= QUEUE_ROWS;
        let bytes_full = self.queued_bytes.fetch_add(bytes, Relaxed) + bytes > QUEUE_BYTES;
        if rows_full || bytes_full || tx.send(Queued { row, bytes }).is_err() {
            self.queued.fetch_sub(1, Relaxed);
            self.queued_bytes.fetch_sub(bytes, Relaxed);
            self.health.dropped.inc();
            return;
        }
        for (l, c) in last.iter_mut().zip(changed) {
            if let Some(c) = c {
                *l = c;
            }
        }
    }

    /// Rows dropped because the writer fell behind.
    pub fn dropped(&self) -> u64 {
        self.health.dropped.get()
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

/// The writer thread's state.
struct Thread {
    path: PathBuf,
    retention: Retention,
    health: Arc<Health>,
    store: Option<Store>,
    retry_at: Instant,
    retry_first: Duration,
    backoff: Duration,
    dropped_logged: u64,
    drop_log_at: Instant,
    last_prune: Option<Instant>,
    /// Rows were written or deleted since free pages were last found below the
    /// give-back threshold. An idle agent then asks SQLite nothing: two PRAGMA
    /// reads five times a second were most of its idle CPU.
    vacuum_due: bool,
}

impl Thread {
    fn run(&mut self, rx: &mpsc::Receiver<Queued>, taken: &AtomicUsize, taken_bytes: &AtomicUsize) {
        let mut batch: Vec<Row> = Vec::with_capacity(5000);
        loop {
            if self.store.is_none() && Instant::now() >= self.retry_at {
                self.open();
            }
            // Waiting to reopen the database: look often. Otherwise rows wake the
            // thread, and the timeout only paces the upkeep (pruning once a minute,
            // the dropped-rows warning): once a second, since every wakeup of an
            // idle agent costs CPU.
            let wait = if self.store.is_none() { Duration::from_millis(200) } else { Duration::from_secs(1) };
            let closed = match rx.recv_timeout(wait) {
                Ok(q) => {
                    let mut bytes = q.bytes;
                    batch.push(q.row);
                    while batch.len() < 20_000 {
                        match rx.try_recv() {
                            Ok(q) => {
                                bytes += q.bytes;
                                batch.push(q.row);
                            }
                            Err(_) => break,
                        }
                    }
                    taken.fetch_sub(batch.len(), Relaxed);
                    taken_bytes.fetch_sub(bytes, Relaxed);
                    false
                }
                Err(mpsc::RecvTimeoutError::Timeout) => false,
                Err(mpsc::RecvTimeoutError::Disconnected) => true,
            };
            if !batch.is_empty() {
                self.write(&batch);
                batch.clear();
                // A storm grows the batch to 20k rows; do not keep that.
                batch.shrink_to(5000);
            }
            self.maintain();
            self.log_drops(closed);
            if closed {
                break;
            }
        }
    }

    fn open(&mut self) {
        let mut store = match Store::open(&self.path) {
            Ok(s) => s,
            Err(e) => return self.fail(e.to_string()),
        };
        let r = &self.retention;
        store.set_limits(Limits { max_rows: r.max_rows, max_bytes: r.max_bytes });
        // Over its limits from before (a smaller max_events now, an old storm).
        match store.enforce() {
            Ok(0) => {}
            Ok(n) => info!(deleted_rows = n, max_events = r.max_rows, "history database trimmed to its limits"),
            Err(e) => return self.fail(format!("history database {}: trimming it: {e}", self.path.display())),
        }
        // A database created before portwatch set incremental vacuum: once.
        let started = Instant::now();
        match store.convert_to_incremental() {
            Ok(false) => {}
            Ok(true) => info!(elapsed_ms = started.elapsed().as_millis() as u64, "history database converted to incremental vacuum (once)"),
            Err(e) => {
                warn!(error = %e, "history database: could not convert it to incremental vacuum (free pages are reused, not given back); tried again at the next start")
            }
        }
        self.health.rows.set(store.row_count() as i64);
        self.store = Some(store);
        // Trimmed at open, or free pages left by an earlier run.
        self.vacuum_due = true;
        self.backoff = self.retry_first;
        let recovered = self.health.error().is_some();
        self.health.set(None);
        if recovered {
            info!(db = %self.path.display(), rows = self.health.rows.get(), "history database open again; recording resumed");
        } else {
            info!(db = %self.path.display(), rows = self.health.rows.get(), "history database open");
        }
    }

    /// The database cannot be used: closes it, says why (once per reason), and
    /// sets when to try again.
    fn fail(&mut self, why: String) {
        self.store = None;
        if self.health.set(Some(why.clone())) {
            warn!(error = %why, retry_secs = self.backoff.as_secs(), "history database unavailable; the agent goes on without history (rows are counted as failed) and tries again");
        }
        self.retry_at = Instant::now() + self.backoff;
        self.backoff = (self.backoff * 2).min(RETRY_MAX);
    }

    fn write(&mut self, batch: &[Row]) {
        let Some(store) = &mut self.store else {
            self.health.failed.inc_by(batch.len() as u64);
            return;
        };
        match store.insert(batch) {
            Ok(_) => {
                // Inserting at the row bound deletes the oldest rows.
                self.vacuum_due = true;
                self.health.rows.set(store.row_count() as i64);
            }
            Err(e) => {
                self.health.failed.inc_by(batch.len() as u64);
                self.fail(format!("history database {}: writing {} rows failed: {e}", self.path.display(), batch.len()));
            }
        }
    }

    /// Pruning by age once a minute, and free pages given back a step at a time.
    fn maintain(&mut self) {
        let Some(store) = &mut self.store else { return };
        let mut r = Ok(());
        if self.last_prune.is_none_or(|t| t.elapsed() > PRUNE_EVERY) {
            let before = wall_now_ns() - self.retention.max_age.as_nanos() as i64;
            r = store.prune(before, self.retention.max_rows).map(drop);
            self.health.rows.set(store.row_count() as i64);
            self.last_prune = Some(Instant::now());
            self.vacuum_due = true;
        }
        let r = r.and_then(|()| {
            if self.vacuum_due {
                // 0: below the threshold, nothing to give back until rows go again.
                self.vacuum_due = store.give_back()? > 0;
            }
            Ok(())
        });
        if let Err(e) = r {
            self.fail(format!("history database {}: pruning failed: {e}", self.path.display()));
        }
    }

    fn log_drops(&mut self, closing: bool) {
        let d = self.health.dropped.get();
        // The agent logs the total when it stops.
        if d > self.dropped_logged && !closing && self.drop_log_at.elapsed() >= DROP_LOG_EVERY {
            warn!(dropped_rows = d - self.dropped_logged, total = d, "history could not keep up; rows were dropped");
            self.dropped_logged = d;
            self.drop_log_at = Instant::now();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::history::{test_row as row, RowKind::Bind};

    fn pids(path: &Path) -> Vec<i32> {
        Store::open_readonly(path).unwrap().query(None, None, None, None, None).unwrap().iter().filter_map(|r| r.pid).collect()
    }

    #[test]
    fn writer_stores_rows_and_drops_beyond_its_queue_bounds() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let w = Writer::start(&path, Retention::default());
        // Recent times: the writer prunes by age as it starts.
        let t = wall_now_ns();
        w.record(row(t, Bind, 5050, 1, 1));
        // A writer this far behind: the next row is dropped and counted.
        w.queued.fetch_add(QUEUE_ROWS, Relaxed);
        w.record(row(t + 1, Bind, 5050, 2, 2));
        assert_eq!(w.dropped(), 1);
        w.queued.fetch_sub(QUEUE_ROWS, Relaxed);
        // Or holding this many bytes.
        w.queued_bytes.fetch_add(QUEUE_BYTES - 100, Relaxed);
        w.record(row(t + 2, Bind, 5050, 3, 3));
        assert_eq!(w.dropped(), 2);
        w.queued_bytes.fetch_sub(QUEUE_BYTES - 100, Relaxed);
        w.record(row(t + 3, Bind, 5050, 4, 4));
        let health = w.health.clone();
        drop(w);
        assert_eq!(pids(&path), vec![1, 4]);
        assert_eq!((health.ok.get(), health.failed.get(), health.rows.get(), health.error()), (1, 0, 2, None));
    }

    #[test]
    fn queued_bytes_count_shared_texts_once() {
        let big: Text = "x".repeat(4096).into();
        let with = |t: &Text| Row { cmdline: Some(t.clone()), ancestry: Some(t.clone()), ..row(1, Bind, 1, 1, 1) };
        let plain = row_bytes(&row(1, Bind, 1, 1, 1), &Default::default());
        let first = row_bytes(&with(&big), &Default::default());
        assert_eq!(first, plain + 2 * (4096 + 16));
        // The same texts as the row before: not counted again.
        let before = texts_of(&with(&big)).map(|t| t.cloned());
        assert_eq!(row_bytes(&with(&big), &before), plain);
        // Equal but separate texts are separate memory.
        let other: Text = "x".repeat(4096).into();
        assert_eq!(row_bytes(&with(&other), &before), first);

        // 200 processes with 4 KiB texts each cost their bytes; past the budget,
        // rows are dropped rather than queued (a writer without its thread here,
        // so nothing is taken meanwhile).
        let (tx, rx) = mpsc::channel();
        let w = Writer {
            tx: Some(tx),
            queued: Default::default(),
            queued_bytes: Arc::new(AtomicUsize::new(QUEUE_BYTES - 100 * first)),
            last: Default::default(),
            health: Default::default(),
            thread: None,
        };
        for i in 0..200 {
            w.record(with(&Text::from(format!("{i:04}{}", "y".repeat(4092)))));
        }
        assert_eq!((w.dropped(), rx.try_iter().count()), (100, 100));
        // One process's storm shares its texts: far more rows fit.
        w.queued_bytes.store(QUEUE_BYTES - 100 * first, Relaxed);
        for _ in 0..1000 {
            w.record(with(&big));
        }
        assert_eq!((w.dropped(), rx.try_iter().count()), (100, 1000));
    }

    #[test]
    fn a_bad_database_is_reported_counted_and_retried() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        std::fs::write(&path, vec![0x5a; 8192]).unwrap();
        let w = Writer::start_with(&path, Retention::default(), Duration::from_millis(300));
        let wait_for = |what: &str, f: &dyn Fn() -> bool| {
            let until = Instant::now() + Duration::from_secs(10);
            while !f() {
                assert!(Instant::now() < until, "{what}");
                std::thread::sleep(Duration::from_millis(20));
            }
        };
        wait_for("the error is reported", &|| w.health.error().is_some());
        let e = w.health.error().unwrap();
        assert!(e.contains("not a database") && e.contains("h.db"), "{e}");
        assert_eq!(w.health.ok.get(), 0);
        let t = wall_now_ns();
        w.record(row(t, Bind, 5050, 1, 1));
        wait_for("the row is counted as failed", &|| w.health.failed.get() == 1);
        // The garbage is left alone, and the writer keeps trying.
        assert_eq!(std::fs::read(&path).unwrap(), vec![0x5a; 8192]);
        std::fs::remove_file(&path).unwrap();
        wait_for("the database is opened again", &|| w.health.ok.get() == 1);
        assert_eq!(w.health.error(), None);
        w.record(row(t + 1, Bind, 5050, 2, 2));
        drop(w);
        assert_eq!(pids(&path), vec![2]);
    }
}
