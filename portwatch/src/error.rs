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
    /// The command (`run`, `wait -- COMMAND`) is not executable, as shells say it.
    pub const NOT_EXECUTABLE: u8 = 126;
    /// The command (`run`, `wait -- COMMAND`) was not found, as shells say it.
    pub const NOT_FOUND: u8 = 127;
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
    /// Loading or attaching BPF failed; `permission` when the kernel said EPERM or
    /// EACCES somewhere in the chain.
    #[error("{context}: {}", chain_text(source.as_ref()))]
    Bpf {
        context: String,
        permission: bool,
        #[source]
        source: Box<aya::EbpfError>,
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
            Self::Bpf { permission: true, .. } => exit::PRIVILEGE,
            Self::Bpf { permission: false, .. } => exit::UNSUPPORTED,
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

    /// A BPF error, its kind told by the OS error in its chain (not by its words).
    pub fn bpf(context: impl Into<String>, source: aya::EbpfError) -> Self {
        let permission = os_errors(&source).any(|e| matches!(e, libc::EPERM | libc::EACCES));
        Self::Bpf { context: context.into(), permission, source: Box::new(source) }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The raw OS error numbers of the `io::Error`s in an error's source chain.
pub fn os_errors<'a>(e: &'a (dyn std::error::Error + 'static)) -> impl Iterator<Item = i32> + 'a {
    std::iter::successors(Some(e), |e| e.source()).filter_map(|e| e.downcast_ref::<io::Error>().and_then(io::Error::raw_os_error))
}

/// An error with its sources on one line; a verifier log is cut to its verdict (the
/// last lines), since the whole log runs to thousands of lines.
pub fn chain_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        let t = inner.to_string();
        if !s.ends_with(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        src = inner.source();
    }
    summarize_verifier(&s)
}

fn summarize_verifier(s: &str) -> String {
    // PORTWATCH_VERIFIER_LOG=full keeps the whole log (for porting to a kernel).
    if std::env::var_os("PORTWATCH_VERIFIER_LOG").is_some_and(|v| v == "full") {
        return s.to_string();
    }
    let Some((head, log)) = s.split_once("Verifier output:") else {
        return s.to_string();
    };
    let tail: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("verification time") && !l.starts_with("stack depth") && !l.starts_with("processed "))
        .collect();
    let keep = &tail[tail.len().saturating_sub(2)..];
    format!("{}verifier: {}", head, keep.join(" | "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verifier_logs_are_cut_to_their_verdict() {
        let e = io::Error::other("load failed: Verifier output: 0: r1 = 1\n1: exit\nR0 !read_ok\nprocessed 2 insns\n");
        assert_eq!(chain_text(&e), "load failed: verifier: 1: exit | R0 !read_ok");
    }

    #[test]
    fn permission_is_an_os_error_in_the_chain() {
        let eperm = io::Error::from_raw_os_error(libc::EPERM);
        let e = aya::EbpfError::MapError(aya::maps::MapError::CreateError { name: "EVENTS".into(), io_error: eperm });
        let e = Error::bpf("loading", e);
        assert_eq!(e.exit_code(), exit::PRIVILEGE);
        assert!(e.to_string().starts_with("loading: "), "{e}");
        let enoent = aya::EbpfError::MapError(aya::maps::MapError::CreateError {
            name: "X".into(),
            io_error: io::Error::from_raw_os_error(libc::ENOENT),
        });
        assert_eq!(Error::bpf("loading", enoent).exit_code(), exit::UNSUPPORTED);
    }
}
