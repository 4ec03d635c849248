//! The history's row: what the agent records of an event, a verdict or a signal,
//! and what `history` reads back (the database is `agent::history`).
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{process::Text, socket::Proto, time::WallNs};

/// What a row records.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RowKind {
    #[default]
    Bind,
    BindFailed,
    Listen,
    Close,
    /// A socket found on a watched port that the agent did not see being bound
    /// (it was there before the agent started); `since` is its process's start.
    Observed,
    Stuck,
    Signal,
    Reaped,
    Refused,
    /// A bind refused by a port lease (`run --lease`, `lease add`).
    LeaseRefused,
}

impl RowKind {
    pub const ALL: [Self; 10] = [
        Self::Bind,
        Self::BindFailed,
        Self::Listen,
        Self::Close,
        Self::Observed,
        Self::Stuck,
        Self::Signal,
        Self::Reaped,
        Self::Refused,
        Self::LeaseRefused,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Self::Bind => "bind",
            Self::BindFailed => "bind_failed",
            Self::Listen => "listen",
            Self::Close => "close",
            Self::Observed => "observed",
            Self::Stuck => "stuck",
            Self::Signal => "signal",
            Self::Reaped => "reaped",
            Self::Refused => "refused",
            Self::LeaseRefused => "lease_refused",
        }
    }

    pub fn from_name(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|k| k.name() == s)
    }

    /// Rows that start a socket's tenure of a port.
    pub fn takes_port(self) -> bool {
        matches!(self, Self::Bind | Self::Listen | Self::Observed)
    }
}

/// One row of history.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Row {
    /// Wall-clock nanoseconds since the epoch.
    #[serde(skip)]
    pub time_ns: WallNs,
    /// RFC 3339, for JSON output.
    pub time: String,
    pub event: RowKind,
    pub port: Option<u16>,
    pub proto: Option<Proto>,
    pub addr: Option<IpAddr>,
    pub pid: Option<i32>,
    pub ppid: Option<i32>,
    pub uid: Option<u32>,
    pub comm: Option<String>,
    pub cmdline: Option<Text>,
    pub cgroup: Option<Text>,
    /// `812 python3 < 377 bash < 1 init`: the parent chain at event time.
    pub ancestry: Option<Text>,
    /// CI job identity from the process environment, e.g. `GITHUB_RUN_ID=4711`.
    pub job: Option<Text>,
    pub cookie: Option<u64>,
    pub error: Option<String>,
    /// Free text: who held the port, a verdict's evidence, a signal's outcome.
    pub detail: Option<String>,
    /// The network namespace of the socket (its cookie, `SO_NETNS_COOKIE`): a port
    /// number means something only within one. Rows of older databases have none.
    pub netns: Option<u64>,
}

impl Row {
    /// A row of `kind` at `time_ns`, everything else empty.
    pub fn at(time_ns: WallNs, kind: RowKind) -> Self {
        Self { time_ns, time: super::time::fmt_time(time_ns), event: kind, ..Self::default() }
    }
}

#[cfg(test)]
pub(crate) fn test_row(t: WallNs, event: RowKind, port: u16, pid: i32, cookie: u64) -> Row {
    Row {
        port: Some(port),
        proto: Some(Proto::Tcp),
        pid: Some(pid),
        comm: Some("gunicorn".into()),
        cookie: Some(cookie),
        ..Row::at(t, event)
    }
}
