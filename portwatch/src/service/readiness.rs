//! Real readiness (`wait`, and `run` before it says "ready"). A TCP target is ready
//! when the application accepts the connection, not when the kernel merely queues
//! it: for local targets the server side of the connection is looked up with
//! sock_diag, and a socket still in the accept queue has no inode yet. An HTTP
//! target is ready when it answers with an expected status.
//!
//! A target never has more than one connection in flight: a connection that was
//! not answered is kept and waited on by the next attempt, so probing a wedged
//! listener with a small backlog cannot fill its accept queue. When a local target
//! does not answer, the message says why and names the listener's holders.
use std::{
    collections::HashSet,
    net::{IpAddr, SocketAddr},
    sync::Arc,
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::{io::AsyncWriteExt, net::TcpStream, time::timeout};

pub use crate::model::target::Target;
use crate::{
    model::{
        ports::PortSet,
        socket::{Family, Proto, SockState},
        target::{HttpTarget, Response},
        time::human,
        verdict,
    },
    service::{
        holders::{self, WhoOptions},
        join_all, probe,
    },
    sys::sockdiag,
};

/// Whose listener counts. `wait` takes any; `run` only its own process tree's.
pub trait Claim: Send + Sync {
    /// Whether a process that counts holds one of the sockets `inodes`.
    fn holds_any(&self, inodes: &HashSet<u64>) -> bool;
}

#[derive(Clone)]
pub struct WaitOptions {
    pub timeout: Duration,
    /// First retry delay (doubles up to 2 s).
    pub interval: Duration,
    /// HTTP statuses that count as ready; empty: any 2xx.
    pub expect_status: Vec<u16>,
    /// When set, a local target is ready only through a listener it claims.
    pub claim: Option<Arc<dyn Claim>>,
}

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

/// Where the server side of our connection is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ServerSide {
    /// In the listener's accept queue: nobody accepted it.
    Queued,
    /// Accepted by the application.
    Accepted,
    /// Not there any more: accepted and closed, or reset with its listener.
    Gone,
    /// sock_diag could not say.
    Unknown,
}

fn server_side(local: SocketAddr, remote: SocketAddr) -> ServerSide {
    let states = (1 << portwatch_common::tcp_state::ESTABLISHED) | (1 << portwatch_common::tcp_state::CLOSE_WAIT);
    let Ok(socks) = sockdiag::dump(Proto::Tcp, Family::of(remote.ip()), states, &[remote.port()]) else {
        return ServerSide::Unknown;
    };
    match socks.iter().find(|s| s.peer_port == local.port() && s.port == remote.port()) {
        Some(s) if s.inode == 0 => ServerSide::Queued,
        Some(_) => ServerSide::Accepted,
        None => ServerSide::Gone,
    }
}

/// The holders of `port`'s listeners, for a message: ` held by pid 4242 gunicorn (T
/// stopped)`, or nothing when they cannot be found.
pub fn holder_text(port: u16) -> String {
    let ports: PortSet = std::iter::once(port).collect();
    let Ok(r) = holders::gather(&ports, WhoOptions::TCP) else { return String::new() };
    let mut hs: Vec<String> =
        r.sockets.iter().filter(|s| s.state == SockState::Listen).flat_map(|s| s.holders.iter().map(|h| h.proc.brief())).collect();
    hs.sort();
    hs.dedup();
    if hs.is_empty() {
        String::new()
    } else {
        format!(" held by {}", hs.join(", "))
    }
}

/// The listening sockets (inodes) on `port` that a connection to `ip` reaches.
fn reached_listeners(ip: IpAddr, port: u16) -> HashSet<u64> {
    let ls: Vec<(u64, IpAddr)> = sockdiag::listeners(port).unwrap_or_default().iter().map(|l| (l.inode, l.addr)).collect();
    verdict::reached(&ls, ip).into_iter().collect()
}

/// A connect that timed out: a local listener whose accept queue is full drops the
/// handshake, which is worth saying.
fn connect_timed_out(addr: SocketAddr) -> String {
    if is_local(addr.ip()) {
        let reached = reached_listeners(addr.ip(), addr.port());
        let full = sockdiag::listeners(addr.port())
            .unwrap_or_default()
            .into_iter()
            .find(|l| reached.contains(&l.inode) && l.recv_q > 0 && l.recv_q >= l.send_q);
        if let Some(l) = full {
            return format!(
                "connection not completed: the accept queue is full ({} of {}) and nobody accepts{}",
                l.recv_q,
                l.send_q,
                holder_text(addr.port())
            );
        }
    }
    "connect timed out".into()
}

async fn resolve(host: &str, port: u16) -> Result<SocketAddr, String> {
    let mut addrs = tokio::net::lookup_host((host, port)).await.map_err(|e| format!("resolve {host}: {e}"))?;
    addrs.next().ok_or_else(|| format!("resolve {host}: no address"))
}

/// A connection an attempt made that has not been answered yet.
struct Pending {
    stream: TcpStream,
    local: SocketAddr,
    remote: SocketAddr,
    /// HTTP: the request was sent; the response head read so far.
    sent: bool,
    head: Vec<u8>,
}

/// One target's attempts, holding at most one connection.
struct Prober<'a> {
    target: &'a Target,
    opts: &'a WaitOptions,
    pending: Option<Pending>,
}

impl Prober<'_> {
    /// One attempt of at most `limit`: `Ok(detail)` when ready, `Err(why)` otherwise.
    async fn attempt(&mut self, limit: Duration) -> Result<String, String> {
        let p = match self.pending.take() {
            Some(p) => p,
            None => self.connect(limit).await?,
        };
        match self.target {
            Target::Tcp { .. } => self.tcp(p, limit).await,
            Target::Http { target, .. } => self.http(p, target, limit).await,
        }
    }

    async fn connect(&self, limit: Duration) -> Result<Pending, String> {
        let addr = resolve(self.target.host(), self.target.port()).await?;
        let stream = match timeout(limit, TcpStream::connect(addr)).await {
            Err(_) => return Err(connect_timed_out(addr)),
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Err("refused".into()),
            Ok(Err(e)) => return Err(format!("connect: {e}")),
            Ok(Ok(s)) => s,
        };
        let local = stream.local_addr().map_err(|e| e.to_string())?;
        Ok(Pending { stream, local, remote: addr, sent: false, head: Vec::new() })
    }

    async fn tcp(&mut self, p: Pending, limit: Duration) -> Result<String, String> {
        if !is_local(p.remote.ip()) {
            return Ok("connected (remote host: acceptance not observable)".into());
        }
        let until = Instant::now() + limit.min(Duration::from_millis(500));
        loop {
            match server_side(p.local, p.remote) {
                ServerSide::Accepted => return self.claimed(p.remote, "accepted".into()),
                ServerSide::Unknown => return Ok("connected (sock_diag unavailable)".into()),
                ServerSide::Gone => {
                    // Accepted and already closed (FIN), or reset with its listener.
                    let mut b = [0u8; 1];
                    return match p.stream.try_read(&mut b) {
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => Err("connection reset: the listener closed".into()),
                        _ => self.claimed(p.remote, "accepted".into()),
                    };
                }
                ServerSide::Queued if Instant::now() >= until => {
                    let why = format!("connection queued but never accepted: wedged listener{}", holder_text(p.remote.port()));
                    self.pending = Some(p);
                    return Err(why);
                }
                ServerSide::Queued => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    async fn http(&mut self, mut p: Pending, t: &HttpTarget, limit: Duration) -> Result<String, String> {
        if !p.sent {
            p.stream.write_all(probe::request(t).as_bytes()).await.map_err(|e| format!("send: {e}"))?;
            p.sent = true;
        }
        match timeout(limit, probe::read_head(&mut p.stream, &mut p.head)).await {
            Err(_) => {
                let why = self.no_answer(&p);
                self.pending = Some(p);
                Err(why)
            }
            Ok(Err(e)) => Err(e),
            Ok(Ok(_)) => {
                let Some(r) = Response::parse(&p.head) else {
                    return Err(if p.head.is_empty() { "closed without an answer" } else { "no HTTP status line in the reply" }.into());
                };
                if r.is_expected(&self.opts.expect_status) {
                    self.claimed(p.remote, r.describe())
                } else {
                    Err(r.describe())
                }
            }
        }
    }

    /// Why an HTTP request has no answer yet, as far as the kernel can tell.
    fn no_answer(&self, p: &Pending) -> String {
        if !is_local(p.remote.ip()) {
            return "no answer".into();
        }
        match server_side(p.local, p.remote) {
            ServerSide::Queued => format!("connection queued but never accepted: wedged listener{}", holder_text(p.remote.port())),
            ServerSide::Accepted => format!("connection accepted but no answer{}", holder_text(p.remote.port())),
            ServerSide::Gone | ServerSide::Unknown => "no answer".into(),
        }
    }

    /// Ready, unless a claim is set and the listener the connection reached is not
    /// one it claims.
    fn claimed(&self, remote: SocketAddr, detail: String) -> Result<String, String> {
        let Some(claim) = &self.opts.claim else { return Ok(detail) };
        if !is_local(remote.ip()) {
            return Ok(format!("{detail} (remote host: its holder not checked)"));
        }
        if claim.holds_any(&reached_listeners(remote.ip(), remote.port())) {
            Ok(detail)
        } else {
            Err(format!("{detail}, but from a listener this run did not start{}", holder_text(remote.port())))
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

/// Waits for one target: attempts with exponential backoff (from `interval`, at
/// most 2 s) between new connections; a connection still unanswered is waited on
/// again at once.
pub async fn wait_one(t: &Target, opts: &WaitOptions, report: impl Fn(&str)) -> TargetResult {
    let start = Instant::now();
    let deadline = start + opts.timeout;
    let mut delay = opts.interval;
    let mut limit = Duration::from_secs(1);
    let mut attempts = 0;
    let mut last = String::new();
    let mut prober = Prober { target: t, opts, pending: None };
    let result = |ready: bool, detail: String, attempts: u32| TargetResult {
        target: t.label(),
        ready,
        elapsed_ms: start.elapsed().as_millis() as u64,
        attempts,
        detail,
    };
    loop {
        attempts += 1;
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(50));
        match prober.attempt(left.min(limit)).await {
            Ok(detail) => {
                report(&format!("ready ({detail}) after {}", human(start.elapsed())));
                return result(true, detail, attempts);
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
            return result(false, last, attempts);
        }
        if prober.pending.is_some() {
            limit = (limit * 2).min(Duration::from_secs(5));
        } else {
            // Back off, but make the last attempt at the deadline rather than giving
            // up a back-off step early.
            tokio::time::sleep(delay.min(deadline - now)).await;
            delay = (delay * 2).min(Duration::from_secs(2));
        }
    }
}

/// Waits for all targets concurrently; `progress(i, message)` hears of target `i`'s
/// state changes.
pub async fn wait_all(targets: &[Target], opts: &WaitOptions, progress: &(dyn Fn(usize, &str) + Sync)) -> Vec<TargetResult> {
    let futs: Vec<_> = targets.iter().enumerate().map(|(i, t)| wait_one(t, opts, move |msg: &str| progress(i, msg))).collect();
    join_all(futs).await
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> WaitOptions {
        WaitOptions { timeout: Duration::from_millis(400), interval: Duration::from_millis(50), expect_status: Vec::new(), claim: None }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn refused_then_accepted() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let t = Target::Tcp { host: "127.0.0.1".into(), port };
        let o = opts();
        let r = wait_one(&t, &o, |_| {}).await;
        assert!(!r.ready && r.detail == "refused", "{r:?}");
        let l = tokio::net::TcpListener::bind(("127.0.0.1", port)).await.unwrap();
        tokio::spawn(async move {
            loop {
                let _ = l.accept().await;
            }
        });
        let r = wait_one(&t, &o, |_| {}).await;
        assert!(r.ready && r.detail == "accepted", "{r:?}");
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_wedged_listener_gets_one_connection_only() {
        // Backlog 1, never accepting: every probe connection would stay queued.
        let l = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
        l.bind(&"127.0.0.1:0".parse::<SocketAddr>().unwrap().into()).unwrap();
        l.listen(1).unwrap();
        let port = l.local_addr().unwrap().as_socket().unwrap().port();
        let t = Target::Tcp { host: "127.0.0.1".into(), port };
        let o = WaitOptions { timeout: Duration::from_millis(1500), ..opts() };
        let r = wait_one(&t, &o, |_| {}).await;
        assert!(!r.ready && r.detail.starts_with("connection queued but never accepted"), "{r:?}");
        assert!(r.attempts > 1, "{r:?}");
        // Unaccepted connections stay queued even after the client closes: there is
        // exactly one, however many attempts there were.
        let queued = sockdiag::listeners(port).unwrap().first().map(|s| s.recv_q);
        assert_eq!(queued, Some(1), "one connection in the accept queue");
    }

    struct Nobody;
    impl Claim for Nobody {
        fn holds_any(&self, _: &HashSet<u64>) -> bool {
            false
        }
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_claim_refuses_listeners_it_does_not_hold() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = l.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let _ = l.accept().await;
            }
        });
        let t = Target::Tcp { host: "127.0.0.1".into(), port };
        let o = WaitOptions { claim: Some(Arc::new(Nobody)), ..opts() };
        let r = wait_one(&t, &o, |_| {}).await;
        assert!(!r.ready && r.detail.contains("this run did not start"), "{r:?}");
    }
}
