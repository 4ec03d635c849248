//! The CLI's side of the control socket: one request, one reply.
use std::{
    io::{BufRead, BufReader, Write},
    os::unix::net::UnixStream,
    path::PathBuf,
    time::Duration,
};

use super::proto::{ErrorKind, Reply, Request};
use crate::{
    config::DEFAULT_SOCKET,
    error::{Error, Result},
};

/// The agent's socket: `PORTWATCH_SOCKET`, or the default path.
pub fn socket_path() -> PathBuf {
    std::env::var_os("PORTWATCH_SOCKET").map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from)
}

/// Sends `req` to the agent at `path`; `None` when no agent answers.
pub fn request(path: &std::path::Path, req: &Request) -> Option<Reply> {
    let mut s = UnixStream::connect(path).ok()?;
    // A free waits out the grace period; allow for it.
    s.set_read_timeout(Some(Duration::from_secs(120))).ok()?;
    let mut line = serde_json::to_vec(req).ok()?;
    line.push(b'\n');
    s.write_all(&line).ok()?;
    let mut reply = String::new();
    BufReader::new(s).read_line(&mut reply).ok()?;
    serde_json::from_str(&reply).ok()
}

/// The agent's reply, or its error as ours (a denial is a missing privilege).
pub fn ok(reply: Reply) -> Result<Reply> {
    if reply.ok {
        return Ok(reply);
    }
    let msg = format!("agent: {}", reply.error.as_deref().unwrap_or("the agent refused"));
    Err(match reply.error_kind {
        Some(ErrorKind::Denied) => Error::privilege(msg, "ask root, or free only ports your own processes hold"),
        Some(ErrorKind::BadRequest) => Error::Usage(msg),
        Some(ErrorKind::Unavailable) => Error::unsupported(msg, "try again, or ask root"),
        Some(ErrorKind::Internal) | None => Error::Internal(msg),
    })
}
