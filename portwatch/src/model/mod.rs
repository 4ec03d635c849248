//! The domain, typed and pure: sockets and their states, processes, kernel events
//! and the records made of them, history rows, the verdict engine, the reap plan, port sets,
//! durations and times, readiness targets. Nothing here touches the system, so all
//! of it is unit-tested without root. JSON names come from serde attributes here;
//! human text is rendered in `output/`.
pub mod blame;
pub mod event;
pub mod history;
pub mod lease;
pub mod plan;
pub mod ports;
pub mod process;
pub mod remap;
pub mod socket;
pub mod target;
pub mod time;
pub mod timeline;
pub mod verdict;
