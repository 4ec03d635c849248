//! The batching writer: rows go through a channel to a thread that commits them in
//! transactions, and prunes by age and count.
use std::{path::Path, sync::mpsc, time::Duration};

use super::{store::Store, Row};
use crate::{
    error::{Error, Result},
    sys::clock::wall_now_ns,
};

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
                        let before = wall_now_ns() - retention.max_age.as_nanos() as i64;
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agent::history::{test_row as row, RowKind::Bind};

    #[test]
    fn writer_stores_rows_and_drops_beyond_its_queue_bound() {
        use std::sync::atomic::Ordering::Relaxed;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("h.db");
        let w = Writer::start(&path, Retention::default()).unwrap();
        // Recent times: the writer prunes by age as it starts.
        let t = wall_now_ns();
        w.record(row(t, Bind, 5050, 1, 1));
        // A writer this far behind: the next row is dropped and counted.
        w.queued.fetch_add(QUEUE_ROWS, Relaxed);
        w.record(row(t + 1, Bind, 5050, 2, 2));
        assert_eq!(w.dropped.load(Relaxed), 1);
        w.queued.fetch_sub(QUEUE_ROWS, Relaxed);
        w.record(row(t + 2, Bind, 5050, 3, 3));
        drop(w);
        let pids: Vec<i32> =
            Store::open_readonly(&path).unwrap().query(None, None, None, None).unwrap().iter().filter_map(|r| r.pid).collect();
        assert_eq!(pids, vec![1, 3]);
    }
}
