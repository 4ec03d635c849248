//! What the agent's event loop shares with its control socket.
use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

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
    pub protect: Protect,
    pub grace: Duration,
    /// Socket cookie -> tenure, from the agent's events.
    pub seen: Mutex<HashMap<u64, Tenure>>,
    pub stuck: Mutex<Vec<u16>>,
    pub lost: Mutex<u64>,
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
