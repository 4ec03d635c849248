//! `portwatch wait`: real readiness. A TCP target is ready when the application
//! accepts the connection, not when the kernel merely queues it: for local targets
//! the server side of the connection is looked up with sock_diag, and a socket still
//! in the accept queue has no inode yet.
use std::{
    io::IsTerminal,
    net::{IpAddr, SocketAddr, ToSocketAddrs},
    time::{Duration, Instant},
};

use serde::Serialize;
use tokio::net::TcpStream;

use crate::{
    ports::{self, PortSet},
    probe::{self, HttpTarget},
    sys::sockdiag::{self, Proto},
    who::{self, WhoOptions},
};

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Tcp { host: String, port: u16 },
    Http { url: String, target: HttpTarget },
}

impl Target {
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim();
        if let Some(rest) = t.strip_prefix("tcp://") {
            let (host, port) = rest.rsplit_once(':').ok_or_else(|| format!("'{t}': expected tcp://HOST:PORT"))?;
            let port = ports::parse_port(port).map_err(|e| format!("'{t}': {e}"))?;
            let host = host.trim_matches(|c| c == '[' || c == ']');
            if host.is_empty() {
                return Err(format!("'{t}': no host"));
            }
            return Ok(Self::Tcp { host: host.to_string(), port });
        }
        if t.starts_with("http://") || t.starts_with("https://") {
            return Ok(Self::Http { url: t.to_string(), target: HttpTarget::parse(t)? });
        }
        if t.contains("://") {
            return Err(format!("'{t}': expected tcp://HOST:PORT, an http:// URL, or a port"));
        }
        let port = ports::parse_port(t).map_err(|e| e.to_string())?;
        Ok(Self::Tcp { host: "127.0.0.1".into(), port })
    }

    pub fn label(&self) -> String {
        match self {
            Self::Tcp { host, port } if host.contains(':') => format!("tcp://[{host}]:{port}"),
            Self::Tcp { host, port } => format!("tcp://{host}:{port}"),
            Self::Http { url, .. } => url.clone(),
        }
    }
}

/// clap value parser.
pub fn clap_target(s: &str) -> std::result::Result<Target, String> {
    Target::parse(s)
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

/// Whether the server side of our connection `local -> remote` is still waiting in
/// the accept queue (true), was accepted or closed (false), or unknown (None).
fn server_side_queued(local: SocketAddr, remote: SocketAddr) -> Option<bool> {
    let family = if remote.is_ipv4() { sockdiag::AF_INET } else { sockdiag::AF_INET6 };
    let socks = sockdiag::dump(Proto::Tcp, family, 1 << sockdiag::TCP_ESTABLISHED, &[remote.port()]).ok()?;
    let server = socks.iter().find(|s| s.peer_port == local.port() && s.port == remote.port());
    Some(server.is_some_and(|s| s.inode == 0))
}

/// Who holds a wedged local port, for the message.
fn holder_text(port: u16) -> String {
    let ports: PortSet = std::iter::once(port).collect();
    match who::gather(&ports, WhoOptions { tcp: true, ..WhoOptions::default() }) {
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
    /// Plain state-change lines on stderr (false: live spinners on a terminal).
    pub quiet: bool,
}

/// Waits for one target with exponential backoff (from `interval`, at most 2s).
async fn wait_one(t: Target, opts: WaitOptions, report: impl Fn(&str, &str)) -> TargetResult {
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
                report(&t.label(), &format!("ready ({detail}) after {:.1}s", start.elapsed().as_secs_f64()));
                return TargetResult { target: t.label(), ready: true, elapsed_ms: start.elapsed().as_millis() as u64, attempts, detail };
            }
            Err(why) => {
                if why != last {
                    report(&t.label(), &why);
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

/// Waits for all targets concurrently.
pub async fn wait_all(targets: &[Target], opts: &WaitOptions) -> Vec<TargetResult> {
    let tty = std::io::stderr().is_terminal() && !opts.quiet;
    let multi = indicatif::MultiProgress::new();
    let style = indicatif::ProgressStyle::with_template("{spinner} {prefix} [{elapsed}] {msg}")
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner());
    let mut futs = Vec::new();
    for t in targets {
        let bar = tty.then(|| {
            let b = multi.add(indicatif::ProgressBar::new_spinner());
            b.set_style(style.clone());
            b.set_prefix(t.label());
            b.enable_steady_tick(Duration::from_millis(100));
            b
        });
        let quiet = opts.quiet;
        futs.push(wait_one(t.clone(), opts.clone(), move |label, msg| match &bar {
            Some(b) => b.set_message(msg.to_string()),
            None if !quiet => eprintln!("portwatch: {label}: {msg}"),
            None => {}
        }));
    }
    let results = crate::agent::join_all(futs).await;
    let _ = multi.clear();
    results
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_targets() {
        assert_eq!(Target::parse("5050"), Ok(Target::Tcp { host: "127.0.0.1".into(), port: 5050 }));
        assert_eq!(Target::parse("tcp://[::1]:80"), Ok(Target::Tcp { host: "::1".into(), port: 80 }));
        assert_eq!(Target::parse("tcp://localhost:80").unwrap().label(), "tcp://localhost:80");
        assert!(matches!(Target::parse("http://127.0.0.1:5050/api/health"), Ok(Target::Http { .. })));
        assert!(Target::parse("0").is_err());
        assert!(Target::parse("abc").is_err());
        assert!(Target::parse("tcp://host").is_err());
        assert!(Target::parse("udp://x:1").is_err());
        assert!(Target::parse("https://x/").unwrap_err().contains("https"));
    }

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
