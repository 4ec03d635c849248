//! The agent's control socket: newline-delimited JSON over a Unix socket, with the
//! caller identified by its peer credentials (SO_PEERCRED). Root may do everything;
//! other users may query, and may free only ports whose holders all run under their
//! own uid. Denials are logged and answered with an error.
//!
//! Requests (one JSON object per line; one reply line each):
//! - `{"cmd":"status"}`
//! - `{"cmd":"who","ports":[5050]}`
//! - `{"cmd":"history","port":5050,"since":"10m","until":null,"pid":null}`
//! - `{"cmd":"free","ports":[5050],"force":true,"grace_ms":5000,"dry_run":false}`
//!
//! Replies: `{"ok":true,...}` or `{"ok":false,"error":"..."}`.
use std::{
    collections::HashMap,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::Deserialize;
use serde_json::{json, Value};
use tokio::{
    io::{AsyncBufReadExt, AsyncWriteExt, BufReader},
    net::{UnixListener, UnixStream},
};
use tracing::{info, warn};

use crate::{
    config::Protect,
    error::{Error, Result},
    free::{self, FreeOptions},
    history,
    ports::PortSet,
    who::{self, WhoOptions},
};

pub const DEFAULT_SOCKET: &str = "/run/portwatch.sock";

#[derive(Debug, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Status,
    Who {
        ports: Vec<u16>,
    },
    History {
        port: Option<u16>,
        since: Option<String>,
        until: Option<String>,
        pid: Option<i32>,
    },
    Free {
        ports: Vec<u16>,
        #[serde(default)]
        force: bool,
        grace_ms: Option<u64>,
        #[serde(default)]
        dry_run: bool,
    },
}

/// What the agent shares with the control socket.
pub struct Shared {
    pub ports: PortSet,
    pub started: std::time::Instant,
    pub db: Option<PathBuf>,
    pub protect: Protect,
    pub grace: Duration,
    /// Socket cookie -> (first seen, job), from the agent's events.
    pub seen: Mutex<HashMap<u64, (i64, Option<String>)>>,
    pub stuck: Mutex<Vec<u16>>,
    pub lost: Mutex<u64>,
}

/// Whether a caller with `uid` may free sockets held by `holder_uids`.
pub fn may_free(uid: u32, holder_uids: &[u32]) -> std::result::Result<(), String> {
    if uid == 0 {
        return Ok(());
    }
    match holder_uids.iter().find(|&&h| h != uid) {
        Some(other) => Err(format!("denied: uid {uid} may only free ports whose holders all run as uid {uid} (one runs as uid {other})")),
        None => Ok(()),
    }
}

fn err(msg: impl Into<String>) -> Value {
    json!({"ok": false, "error": msg.into()})
}

fn handle(req: Request, uid: u32, shared: &Shared) -> Value {
    match req {
        Request::Status => json!({
            "ok": true,
            "version": env!("CARGO_PKG_VERSION"),
            "ports": shared.ports.iter().collect::<Vec<_>>(),
            "stuck_ports": *shared.stuck.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            "lost_events": *shared.lost.lock().unwrap_or_else(std::sync::PoisonError::into_inner),
            "uptime_secs": shared.started.elapsed().as_secs(),
            "history_db": shared.db.as_ref().map(|p| p.display().to_string()),
        }),
        Request::Who { ports } => {
            let set: PortSet = ports.into_iter().filter(|&p| p != 0).collect();
            if set.is_empty() {
                return err("who: give at least one port (1-65535)");
            }
            match who::gather(&set, WhoOptions::default()) {
                Err(e) => err(e.to_string()),
                Ok(r) => {
                    let seen = shared.seen.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
                    let sockets: Vec<Value> = r
                        .sockets
                        .iter()
                        .map(|s| {
                            let mut v = serde_json::to_value(s).unwrap_or_default();
                            if let (Some(o), Some((since, job))) = (v.as_object_mut(), seen.get(&s.cookie)) {
                                o.insert("since".into(), history::fmt_time(*since).into());
                                o.insert("job".into(), job.clone().into());
                            }
                            v
                        })
                        .collect();
                    json!({"ok": true, "sockets": sockets})
                }
            }
        }
        Request::History { port, since, until, pid } => {
            let Some(db) = &shared.db else { return err("history is off in this agent") };
            let now = history::now_ns();
            let when = |s: Option<String>| s.map(|s| history::parse_when(&s, now)).transpose();
            let (since, until) = match (when(since), when(until)) {
                (Ok(a), Ok(b)) => (a, b),
                (Err(e), _) | (_, Err(e)) => return err(e),
            };
            match history::Store::open_readonly(db).and_then(|s| s.query(port, since, until, pid).map_err(|e| Error::Config(e.to_string())))
            {
                Ok(rows) => json!({"ok": true, "rows": rows}),
                Err(e) => err(e.to_string()),
            }
        }
        Request::Free { ports, force, grace_ms, dry_run } => {
            let set: PortSet = ports.into_iter().filter(|&p| p != 0).collect();
            if set.is_empty() {
                return err("free: give at least one port (1-65535)");
            }
            let r = match who::gather(&set, WhoOptions { tcp: true, ..WhoOptions::default() }) {
                Ok(r) => r,
                Err(e) => return err(e.to_string()),
            };
            let uids: Vec<u32> = r.sockets.iter().flat_map(|s| s.holders.iter().map(|h| h.proc.uid)).collect();
            if let Err(why) = may_free(uid, &uids) {
                warn!(caller_uid = uid, ports = ?set.iter().collect::<Vec<_>>(), reason = %why, "control socket: free denied");
                return err(why);
            }
            let opts = FreeOptions {
                force,
                grace: grace_ms.map_or(shared.grace, Duration::from_millis),
                dry_run,
                tcp: true,
                udp: false,
                protect: shared.protect.clone(),
            };
            match free::run(&set, &opts) {
                Ok((reports, _)) => {
                    info!(caller_uid = uid, ports = ?set.iter().collect::<Vec<_>>(), "control socket: free");
                    json!({"ok": true, "exit_code": free::exit_code(&reports), "reports": reports})
                }
                Err(e) => err(e.to_string()),
            }
        }
    }
}

async fn serve_conn(stream: UnixStream, shared: Arc<Shared>) {
    let uid = match stream.peer_cred() {
        Ok(c) => c.uid(),
        Err(e) => {
            warn!(error = %e, "control socket: no peer credentials; closing");
            return;
        }
    };
    let (rd, mut wr) = stream.into_split();
    let mut lines = BufReader::new(rd).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let reply = match serde_json::from_str::<Request>(&line) {
            Err(e) => err(format!("bad request: {e}")),
            Ok(req) => {
                let shared = shared.clone();
                tokio::task::spawn_blocking(move || handle(req, uid, &shared)).await.unwrap_or_else(|e| err(e.to_string()))
            }
        };
        let mut text = reply.to_string();
        text.push('\n');
        if wr.write_all(text.as_bytes()).await.is_err() {
            break;
        }
    }
}

/// Binds the socket (replacing a stale one), sets its mode and group, and serves it.
pub async fn serve(path: &Path, mode: u32, group: Option<&str>, shared: Arc<Shared>) -> Result<tokio::task::JoinHandle<()>> {
    if path.exists() {
        // A live agent answers; a stale socket file does not and is replaced.
        if UnixStream::connect(path).await.is_ok() {
            return Err(Error::Usage(format!("another agent is serving {}", path.display())));
        }
        let _ = std::fs::remove_file(path);
    }
    let listener = UnixListener::bind(path).map_err(|e| Error::io(format!("binding {}", path.display()), e))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|e| Error::io(format!("chmod {}", path.display()), e))?;
    if let Some(g) = group.and_then(|g| nix::unistd::Group::from_name(g).ok().flatten()) {
        let _ = nix::unistd::chown(path, None, Some(g.gid));
    }
    Ok(tokio::spawn(async move {
        loop {
            if let Ok((s, _)) = listener.accept().await {
                tokio::spawn(serve_conn(s, shared.clone()));
            }
        }
    }))
}

/// Client side: one request, one reply. `None` when no agent answers.
pub fn request(path: &Path, req: &Value) -> Option<Value> {
    use std::io::{BufRead, Write};
    let mut s = std::os::unix::net::UnixStream::connect(path).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(60))).ok()?;
    let mut line = req.to_string();
    line.push('\n');
    s.write_all(line.as_bytes()).ok()?;
    let mut reply = String::new();
    std::io::BufReader::new(s).read_line(&mut reply).ok()?;
    serde_json::from_str(&reply).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn authorization() {
        assert!(may_free(0, &[0, 1000]).is_ok());
        assert!(may_free(1000, &[1000, 1000]).is_ok());
        assert!(may_free(1000, &[]).is_ok());
        assert!(may_free(1000, &[1000, 0]).unwrap_err().contains("uid 0"));
    }

    #[test]
    fn parses_requests() {
        assert!(matches!(serde_json::from_str::<Request>(r#"{"cmd":"status"}"#), Ok(Request::Status)));
        assert!(matches!(serde_json::from_str::<Request>(r#"{"cmd":"who","ports":[5050]}"#), Ok(Request::Who { .. })));
        assert!(matches!(
            serde_json::from_str::<Request>(r#"{"cmd":"free","ports":[5050],"force":true}"#),
            Ok(Request::Free { force: true, dry_run: false, .. })
        ));
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"reboot"}"#).is_err());
    }
}
