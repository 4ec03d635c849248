//! Persistent history: every event the agent sees on watched ports, with the process
//! details captured while the process still exists, in SQLite (WAL). Writes are
//! batched on their own thread ([`writer`]), so a bind storm costs the agent one
//! channel send per event; a committed batch survives `kill -9` of the agent.
//! The database never stops the agent: when it cannot be opened or written, the
//! writer counts the rows it loses, reports why ([`writer::Health`]) and tries
//! again now and then. Its size is kept within `max_events` rows and
//! `max_db_size` bytes at every commit ([`store::Limits`]), and the writer's queue
//! within a byte budget.
pub mod safety;
pub mod store;
pub mod writer;

#[cfg(test)]
pub(crate) use crate::model::history::test_row;
pub use crate::model::history::{Row, RowKind};
