//! Errors and exit codes. Every failure the user can cause or fix maps to one line and
//! a distinct exit code (documented in README.md).
use std::io;

/// Process exit codes.
pub mod exit {
    /// Success; for `check`: every port is free.
    pub const OK: u8 = 0;
    /// The answer is "no": a port is held (`check`), still held (`free`), not ready (`wait`).
    pub const CONDITION: u8 = 1;
    /// Bad input: arguments, ports, durations.
    pub const USAGE: u8 = 2;
    /// Unreadable or invalid configuration file.
    pub const CONFIG: u8 = 3;
    /// Missing privilege (root or capabilities).
    pub const PRIVILEGE: u8 = 4;
    /// The kernel or host lacks something portwatch needs (BPF, BTF, cgroup v2, tracefs).
    pub const UNSUPPORTED: u8 = 5;
    /// portwatch refused to act (e.g. the target is protected).
    pub const REFUSED: u8 = 6;
    /// A bug or an unexpected system error.
    pub const INTERNAL: u8 = 70;
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Usage(String),
    #[error("{0}")]
    Config(String),
    #[error("{what} (fix: {fix})")]
    Privilege { what: String, fix: String },
    #[error("{what} (fix: {fix})")]
    Unsupported { what: String, fix: String },
    #[error("{0}")]
    Refused(String),
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },
    #[error("{0}")]
    Internal(String),
}

impl Error {
    pub fn exit_code(&self) -> u8 {
        match self {
            Self::Usage(_) => exit::USAGE,
            Self::Config(_) => exit::CONFIG,
            Self::Privilege { .. } => exit::PRIVILEGE,
            Self::Unsupported { .. } => exit::UNSUPPORTED,
            Self::Refused(_) => exit::REFUSED,
            Self::Io { .. } | Self::Internal(_) => exit::INTERNAL,
        }
    }

    pub fn io(context: impl Into<String>, source: io::Error) -> Self {
        Self::Io { context: context.into(), source }
    }

    pub fn privilege(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::Privilege { what: what.into(), fix: fix.into() }
    }

    pub fn unsupported(what: impl Into<String>, fix: impl Into<String>) -> Self {
        Self::Unsupported { what: what.into(), fix: fix.into() }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
