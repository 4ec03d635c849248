//! One module per command, each thin: options -> service -> output -> exit code
//! (`main` dispatches). Commands never call each other; what two commands share is
//! a service. This file holds only what every command needs at its edge.
use std::path::Path;

use crate::{
    config::Config,
    error::{Error, Result},
};

pub mod agent;
pub mod check;
pub mod cleanup;
pub mod completions;
pub mod doctor;
pub mod free;
pub mod history;
pub mod lease;
pub mod man;
pub mod run;
pub mod wait;
pub mod watch;
pub mod who;

pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

pub fn load_config(path: Option<&Path>) -> Result<Config> {
    path.map_or_else(|| Ok(Config::default()), Config::load)
}

/// The async runtime for the commands that need one (one thread: portwatch's work is
/// I/O-bound and the machines it runs on are busy).
pub fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| Error::io("starting the async runtime", e))
}

/// Prints notes about how an answer was found, on stderr.
pub fn notes(notes: &[String]) {
    for n in notes {
        eprintln!("portwatch: note: {}", crate::output::esc(n));
    }
}
