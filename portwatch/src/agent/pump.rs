//! The agent's event thread: decoded kernel events become records (bind attempts
//! paired with their outcome, failures explained through sock_diag and, for a holder
//! bound before the agent, a holders pass), which are logged and recorded (process
//! details from /proc). All of that may block, so it runs here, beside the event
//! loop, which only drains the ring buffer and hands batches over a channel of one
//! batch: while that is full, records wait in the ring buffer (bounded by its size),
//! never in an unbounded queue.
use std::{
    sync::{Arc, Mutex},
    thread::JoinHandle,
};

use tokio::sync::mpsc::{self, error::TrySendError};

use super::{recorder::Recorder, shared::lock};
use crate::{
    ebpf::events::decode,
    model::event::{Record, SockEvent},
    service::events::Pipeline,
};

/// At most this many events are taken from the ring buffer per batch.
pub const BATCH: usize = 8192;

pub enum Msg {
    Events(Vec<SockEvent>),
    /// A sampling tick: the kernel's lost-event count, and time to expire bind
    /// attempts that did not succeed.
    Tick {
        lost: u64,
        /// CLOCK_MONOTONIC when the ring buffer was last read to its end, every
        /// record read by then handed over before this tick: an attempt expires
        /// only against this time, never while its success may still be unread.
        drained_ns: u64,
    },
}

pub struct Pump {
    tx: mpsc::Sender<Msg>,
    thread: JoinHandle<()>,
}

impl Pump {
    /// Starts the thread; `log` is called for each record before it is recorded.
    pub fn start(recorder: Arc<Mutex<Recorder>>, log: fn(&Record)) -> std::io::Result<Self> {
        let (tx, mut rx) = mpsc::channel::<Msg>(1);
        let thread = std::thread::Builder::new().name("pw-events".into()).spawn(move || {
            let mut pipeline = Pipeline::new();
            let emit = |r: Record| {
                log(&r);
                lock(&recorder).event(&r);
            };
            while let Some(msg) = rx.blocking_recv() {
                match msg {
                    Msg::Events(evs) => {
                        for ev in evs {
                            pipeline.push(ev).into_iter().for_each(emit);
                        }
                    }
                    Msg::Tick { lost, drained_ns } => {
                        pipeline.note_lost(lost);
                        pipeline.expire(drained_ns).into_iter().for_each(emit);
                    }
                }
            }
            // The loop ended: attempts that can no longer succeed.
            for r in pipeline.expire(u64::MAX) {
                lock(&recorder).event(&r);
            }
        })?;
        Ok(Self { tx, thread })
    }

    /// Hands a message over without waiting; gives it back when a batch is still
    /// waiting for the thread.
    pub fn try_send(&self, msg: Msg) -> Result<(), Msg> {
        match self.tx.try_send(msg) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(m) | TrySendError::Closed(m)) => Err(m),
        }
    }

    /// Hands a batch of events over without waiting; gives it back (to keep until
    /// the thread takes it) when the thread is still busy with the last one.
    pub fn try_send_events(&self, batch: Vec<SockEvent>) -> Option<Vec<SockEvent>> {
        match self.try_send(Msg::Events(batch)) {
            Ok(()) | Err(Msg::Tick { .. }) => None,
            Err(Msg::Events(b)) => Some(b),
        }
    }

    /// Waits until the thread can take a message (a slot to send it through).
    pub async fn reserve(&self) -> Option<mpsc::Permit<'_, Msg>> {
        self.tx.reserve().await.ok()
    }

    /// Waits until the thread can take a message, then hands it over.
    pub async fn send(&self, msg: Msg) {
        let _ = self.tx.send(msg).await;
    }

    /// Hands over the last events, and waits until the thread has recorded them.
    pub async fn finish(self, rest: Vec<SockEvent>) {
        if !rest.is_empty() {
            self.send(Msg::Events(rest)).await;
        }
        drop(self.tx);
        let thread = self.thread;
        let _ = tokio::task::spawn_blocking(move || thread.join()).await;
    }
}

/// Records taken from the ring buffer that did not decode (none, unless the kernel
/// and user sides disagree): counted for the stop line, the first one logged.
pub static MALFORMED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// Takes up to `max` events from the ring buffer; true when it stopped at `max`
/// (more may be waiting).
pub fn drain(rb: &mut aya::maps::RingBuf<aya::maps::MapData>, into: &mut Vec<SockEvent>, max: usize) -> bool {
    while into.len() < max {
        let Some(item) = rb.next() else { return false };
        match decode(&item) {
            Ok(ev) => into.push(ev),
            Err(e) => {
                if MALFORMED.fetch_add(1, std::sync::atomic::Ordering::Relaxed) == 0 {
                    tracing::warn!(error = %e, "dropped a malformed kernel event (later ones are counted in the stop line)");
                }
            }
        }
    }
    true
}
