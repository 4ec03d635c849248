//! The control protocol: one JSON object per line each way.
//!
//! - `{"cmd":"status"}`
//! - `{"cmd":"who","ports":[5050]}`
//! - `{"cmd":"history","port":5050,"since":"10m","until":null,"pid":null,"limit":1000}`
//! - `{"cmd":"free","ports":[5050],"force":true,"grace_ms":5000,"dry_run":false}`
//!
//! Replies: `{"ok":true,...}` or `{"ok":false,"error":"...","error_kind":"denied"}`.
use serde::{Deserialize, Serialize};

use crate::{
    agent::history::Row,
    model::{plan::PortReport, socket::Socket},
};

/// The longest request line the agent reads.
pub const MAX_REQUEST_BYTES: usize = 64 * 1024;
/// History rows in one reply, at most (and by default).
pub const MAX_HISTORY_ROWS: usize = 10_000;
pub const DEFAULT_HISTORY_ROWS: usize = 1_000;
/// Ports in one request, at most.
pub const MAX_PORTS: usize = 1024;

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    Status {},
    Who {
        ports: Vec<u16>,
    },
    History {
        #[serde(default)]
        port: Option<u16>,
        #[serde(default)]
        since: Option<String>,
        #[serde(default)]
        until: Option<String>,
        #[serde(default)]
        pid: Option<i32>,
        /// The newest this many rows (default and maximum: see `*_HISTORY_ROWS`).
        #[serde(default)]
        limit: Option<usize>,
    },
    Free {
        ports: Vec<u16>,
        #[serde(default)]
        force: bool,
        #[serde(default)]
        grace_ms: Option<u64>,
        #[serde(default)]
        dry_run: bool,
    },
}

/// Why a request failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorKind {
    /// Malformed, too long, or invalid arguments.
    BadRequest,
    /// The caller may not do this.
    Denied,
    /// The agent cannot now (history off, too many connections).
    Unavailable,
    Internal,
}

/// The agent's state (`status`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Status {
    pub version: String,
    pub ports: Vec<u16>,
    pub stuck_ports: Vec<u16>,
    pub lost_events: u64,
    pub uptime_secs: u64,
    pub history_db: Option<String>,
    /// Why the history is not being written now (the database cannot be opened
    /// or written); `null` while it is, or while history is off.
    #[serde(default)]
    pub history_error: Option<String>,
    /// Rows in the database, as the writer counts them (`null` unless it is open).
    #[serde(default)]
    pub history_rows: Option<u64>,
    /// Rows dropped before the writer's queue (it was too far behind), so far.
    #[serde(default)]
    pub history_rows_dropped: u64,
    /// Rows the writer could not store (no database, a failed write), so far.
    #[serde(default)]
    pub history_rows_failed: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error_kind: Option<ErrorKind>,
    #[serde(default, skip_serializing_if = "Option::is_none", flatten)]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sockets: Option<Vec<Socket>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<Vec<Row>>,
    /// `history`: rows left out by the limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub truncated: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reports: Option<Vec<PortReport>>,
    /// `free`: the exit code the command would have had.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<u8>,
}

impl Reply {
    pub fn ok() -> Self {
        Self { ok: true, ..Self::default() }
    }

    pub fn error(kind: ErrorKind, msg: impl Into<String>) -> Self {
        Self { ok: false, error: Some(msg.into()), error_kind: Some(kind), ..Self::default() }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_requests() {
        let p = |s: &str| serde_json::from_str::<Request>(s);
        assert_eq!(p(r#"{"cmd":"status"}"#).unwrap(), Request::Status {});
        assert!(matches!(p(r#"{"cmd":"who","ports":[5050]}"#), Ok(Request::Who { .. })));
        assert!(matches!(p(r#"{"cmd":"free","ports":[5050],"force":true}"#), Ok(Request::Free { force: true, dry_run: false, .. })));
        assert!(p(r#"{"cmd":"reboot"}"#).is_err());
        assert!(p(r#"{"cmd":"who","ports":[70000]}"#).is_err());
        assert!(p(r#"{"cmd":"status","x":1}"#).is_err());
    }

    #[test]
    fn replies_round_trip() {
        let mut r = Reply::ok();
        r.status = Some(Status { version: "1".into(), ports: vec![5050], ..Status::default() });
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.starts_with(r#"{"ok":true"#) && text.contains(r#""version":"1""#), "{text}");
        let back: Reply = serde_json::from_str(&text).unwrap();
        assert_eq!(back.status.unwrap().ports, vec![5050]);
        // An older agent's status, without the history's health.
        let old: Reply = serde_json::from_str(
            r#"{"ok":true,"version":"0","ports":[],"stuck_ports":[],"lost_events":0,"uptime_secs":1,"history_db":null}"#,
        )
        .unwrap();
        assert_eq!(old.status.unwrap().history_rows_failed, 0);
        let e: Reply = serde_json::from_str(&serde_json::to_string(&Reply::error(ErrorKind::Denied, "no")).unwrap()).unwrap();
        assert_eq!((e.ok, e.error_kind), (false, Some(ErrorKind::Denied)));
    }
}
