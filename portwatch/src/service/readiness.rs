//! Real readiness (`wait`, and `run` before it says "ready"). A TCP target is ready
//! when the application accepts the connection, not when the kernel merely queues
//! it: for local targets the server side of the connection is looked up with
//! sock_diag, and a socket still in the accept queue has no inode yet.
use std::{
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::net::TcpStream;

pub use crate::model::target::Target;
use crate::{
    model::{
        ports::PortSet,
        socket::{Family, Proto},
    },
    service::{
        holders::{self, WhoOptions},
        join_all, probe,
    },
    sys::sockdiag,
};

fn is_local(ip: IpAddr) -> bool {
    ip.is_loopback() || ip.is_unspecified() || local_addrs().contains(&ip)
}

fn local_addrs() -> Vec<IpAddr> {
    nix::ifaddrs::getifaddrs()
        .map(|it| {
            it.filter_map(|i| i.address)
                .filter_map(|a| a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())).or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip()))))
                .collect()
        })
        .unwrap_or_default()
}

/// Whether the server side of our connection `local -> remote` is still waiting in
/// the accept queue (true), was accepted or closed (false), or unknown (None).
fn server_side_queued(local: SocketAddr, remote: SocketAddr) -> Option<bool> {
    let socks =
        sockdiag::dump(Proto::Tcp, Family::of(remote.ip()), 1 << portwatch_common::tcp_state::ESTABLISHED, &[remote.port()]).ok()?;
    let server = socks.iter().find(|s| s.peer_port == local.port() && s.port == remote.port());
    Some(server.is_some_and(|s| s.inode == 0))
}

/// Who holds a wedged local port, for the message.
fn holder_text(port: u16) -> String {
    let ports: PortSet = std::iter::once(port).collect();
    match holders::gather(&ports, WhoOptions::TCP) {
        Ok(r) => {
            let mut hs: Vec<String> = r
                .sockets
                .iter()
                .flat_map(|s| s.holders.iter().map(|h| format!("pid {} comm {} ({})", h.proc.pid, h.proc.comm, h.proc.state)))
                .collect();
            hs.dedup();
            if hs.is_empty() {
                String::new()
            } else {
                format!(" held by {}", hs.join(", "))
            }
        }
        Err(_) => String::new(),
    }
}

/// One attempt: `Ok(detail)` when ready, `Err(why)` otherwise.
pub async fn check(t: &Target, expect_status: Option<u16>, attempt_timeout: Duration) -> std::result::Result<String, String> {
    match t {
        Target::Http { target, .. } => {
            let status = probe::http_get_status(target, attempt_timeout).await?;
            let ok = expect_status.map_or((200..300).contains(&status), |want| status == want);
            if ok {
                Ok(format!("HTTP {status}"))
            } else {
                Err(format!("HTTP {status}"))
            }
        }
        Target::Tcp { host, port } => {
            let addrs: Vec<SocketAddr> = (host.as_str(), *port).to_socket_addrs().map_err(|e| format!("resolve: {e}"))?.collect();
            let addr = *addrs.first().ok_or("no address")?;
            let stream = tokio::time::timeout(attempt_timeout, TcpStream::connect(addr))
                .await
                .map_err(|_| "connect timed out".to_string())?
                .map_err(|e| if e.kind() == std::io::ErrorKind::ConnectionRefused { "refused".to_string() } else { e.to_string() })?;
            if !is_local(addr.ip()) {
                return Ok("connected (remote host: acceptance not observable)".into());
            }
            let local = stream.local_addr().map_err(|e| e.to_string())?;
            let until = Instant::now() + attempt_timeout.min(Duration::from_millis(500));
            loop {
                match server_side_queued(local, addr) {
                    Some(false) => return Ok("accepted".into()),
                    None => return Ok("connected (sock_diag unavailable)".into()),
                    Some(true) if Instant::now() >= until => {
                        return Err(format!("connection queued but never accepted: wedged listener{}", holder_text(*port)));
                    }
                    Some(true) => tokio::time::sleep(Duration::from_millis(20)).await,
                }
            }
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct TargetResult {
    pub target: String,
    pub ready: bool,
    pub elapsed_ms: u64,
    pub attempts: u32,
    /// The last error, or what made it ready.
    pub detail: String,
}

#[derive(Clone, Debug)]
pub struct WaitOptions {
    pub timeout: Duration,
    pub interval: Duration,
    pub expect_status: Option<u16>,
}

/// Waits for one target with exponential backoff (from `interval`, at most 2s).
async fn wait_one(t: Target, opts: WaitOptions, report: impl Fn(&str)) -> TargetResult {
    let start = Instant::now();
    let deadline = start + opts.timeout;
    let mut delay = opts.interval;
    let mut attempts = 0;
    let mut last = String::new();
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(50));
        match check(&t, opts.expect_status, left.min(Duration::from_secs(5))).await {
            Ok(detail) => {
                report(&format!("ready ({detail}) after {:.1}s", start.elapsed().as_secs_f64()));
                return TargetResult { target: t.label(), ready: true, elapsed_ms: start.elapsed().as_millis() as u64, attempts, detail };
            }
            Err(why) => {
                if why != last {
                    report(&why);
                    last = why;
                }
            }
        }
        let now = Instant::now();
        if now >= deadline {
            return TargetResult {
                target: t.label(),
                ready: false,
                elapsed_ms: start.elapsed().as_millis() as u64,
                attempts,
                detail: last,
            };
        }
        // Back off, but make the last attempt at the deadline rather than giving up
        // a back-off step early.
        tokio::time::sleep(delay.min(deadline - now)).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
}

/// Waits for all targets concurrently; `progress(i, message)` hears of target `i`'s
/// state changes.
pub async fn wait_all(targets: &[Target], opts: &WaitOptions, progress: &(dyn Fn(usize, &str) + Sync)) -> Vec<TargetResult> {
    let futs: Vec<_> =
        targets.iter().enumerate().map(|(i, t)| wait_one(t.clone(), opts.clone(), move |msg: &str| progress(i, msg))).collect();
    join_all(futs).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn refused_then_accepted() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let t = Target::Tcp { host: "127.0.0.1".into(), port };
        assert_eq!(check(&t, None, Duration::from_millis(300)).await, Err("refused".into()));
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        tokio::spawn(async move {
            loop {
                let _ = l.accept().await;
            }
        });
        assert_eq!(check(&t, None, Duration::from_millis(300)).await, Ok("accepted".into()));
    }
}
