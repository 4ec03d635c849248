//! What the agent's event loop shares with its control socket.
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use super::{control::proto::Status, history::writer::Health};
use crate::model::{plan::Protect, ports::PortSet, time::WallNs};

/// Since when, and by which CI job, a socket has held its port.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Tenure {
    pub since: WallNs,
    pub job: Option<String>,
}

pub struct Shared {
    pub ports: PortSet,
    pub started: Instant,
    pub db: Option<PathBuf>,
    /// The history writer's state (None: history off).
    pub history: Option<Arc<Health>>,
    pub protect: Protect,
    pub grace: Duration,
    /// Socket cookie -> tenure, from the agent's events.
    pub seen: Mutex<HashMap<u64, Tenure>>,
    pub stuck: Mutex<Vec<u16>>,
    pub lost: Mutex<u64>,
}

impl Shared {
    /// The history's part of `status`: the database, why it is not written (if
    /// so), its rows, and the rows lost so far (everything else left default).
    pub fn history_status(&self) -> Status {
        let h = self.history.as_deref();
        Status {
            history_db: self.db.as_ref().map(|p| p.display().to_string()),
            history_error: h.and_then(Health::error),
            history_rows: h.filter(|h| h.ok.get() == 1).map(|h| h.rows.get().max(0) as u64),
            history_rows_dropped: h.map_or(0, |h| h.dropped.get()),
            history_rows_failed: h.map_or(0, |h| h.failed.get()),
            ..Status::default()
        }
    }
}

/// Who asked for a reap: the agent's own verdict, or a client of the control socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    Agent,
    Client { uid: u32, pid: Option<i32> },
}

/// Locks a mutex, taking the data even if a holder panicked (the maps stay usable).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
