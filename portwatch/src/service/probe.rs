//! Health probes: HTTP GET with an expected status, or TCP send/expect. Both need
//! the application to answer, unlike a bare connect, which a wedged listener's
//! accept queue completes on the application's behalf.
use std::{
    net::{IpAddr, SocketAddr},
    time::Duration,
};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
    time::timeout,
};

use crate::{
    config::Probe,
    model::{
        target::{HttpTarget, Response},
        time::human,
    },
};

/// Why a probe failed, in words for logs and `wait`.
pub type ProbeError = String;

/// Connects to `host:port`, remembering the address tried (for the verdict: a probe
/// judges only the listener it reached).
async fn connect(host: &str, port: u16, reached: &mut Option<IpAddr>) -> Result<TcpStream, ProbeError> {
    let addrs: Vec<SocketAddr> = tokio::net::lookup_host((host, port)).await.map_err(|e| format!("resolve {host}: {e}"))?.collect();
    let addr = *addrs.first().ok_or_else(|| format!("resolve {host}: no address"))?;
    *reached = Some(addr.ip());
    TcpStream::connect(addr).await.map_err(|e| format!("connect: {e}"))
}

/// The request `wait` and the probes send: `Host:` with the port, no keep-alive.
pub fn request(t: &HttpTarget) -> String {
    format!("GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: portwatch\r\nAccept: */*\r\nConnection: close\r\n\r\n", t.path, t.host_header())
}

/// The most of a response head read: enough for the status line and a Location.
pub const MAX_HEAD: usize = 8 * 1024;

/// Reads a response head into `buf` (kept across calls: a read cut short by a
/// timeout resumes where it stopped). `Ok(true)` once the head is complete or the
/// peer closed, or `MAX_HEAD` bytes arrived.
pub async fn read_head(s: &mut TcpStream, buf: &mut Vec<u8>) -> Result<bool, ProbeError> {
    let mut chunk = [0u8; 1024];
    loop {
        if buf.windows(4).any(|w| w == b"\r\n\r\n") || buf.len() >= MAX_HEAD {
            return Ok(true);
        }
        let k = s.read(&mut chunk).await.map_err(|e| format!("read: {e}"))?;
        if k == 0 {
            return Ok(true);
        }
        buf.extend_from_slice(&chunk[..k.min(MAX_HEAD - buf.len())]);
    }
}

async fn http_get(t: &HttpTarget, limit: Duration, reached: &mut Option<IpAddr>) -> Result<Response, ProbeError> {
    let fut = async {
        let mut s = connect(&t.host, t.port, reached).await?;
        s.write_all(request(t).as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        let mut buf = Vec::new();
        read_head(&mut s, &mut buf).await?;
        Response::parse(&buf).ok_or_else(|| "no HTTP status line in the reply".to_string())
    };
    timeout(limit, fut).await.map_err(|_| format!("no answer within {}", human(limit)))?
}

/// Runs one probe: `Ok(())` when healthy; and the address it connected to.
pub async fn run(p: &Probe) -> (Option<IpAddr>, Result<(), ProbeError>) {
    let mut reached = None;
    let r = probe(p, &mut reached).await;
    (reached, r)
}

async fn probe(p: &Probe, reached: &mut Option<IpAddr>) -> Result<(), ProbeError> {
    if let Some(url) = &p.http {
        let t = HttpTarget::parse(url)?;
        let r = http_get(&t, p.timeout, reached).await?;
        return if r.status == p.expect_status { Ok(()) } else { Err(format!("{}, expected {}", r.describe(), p.expect_status)) };
    }
    let send = p.send.clone().unwrap_or_default();
    let expect = p.expect.clone().unwrap_or_default();
    let port = p.port;
    *reached = Some(IpAddr::V4(std::net::Ipv4Addr::LOCALHOST));
    let fut = async move {
        let mut s = TcpStream::connect(("127.0.0.1", port)).await.map_err(|e| format!("connect: {e}"))?;
        s.write_all(send.as_bytes()).await.map_err(|e| format!("send: {e}"))?;
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        loop {
            let k = s.read(&mut buf).await.map_err(|e| format!("read: {e}"))?;
            if k == 0 {
                break;
            }
            got.extend_from_slice(&buf[..k]);
            if String::from_utf8_lossy(&got).contains(&expect) {
                return Ok(());
            }
        }
        Err(format!("reply did not contain {expect:?}"))
    };
    timeout(p.timeout, fut).await.map_err(|_| format!("no answer within {}", human(p.timeout)))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(flavor = "current_thread")]
    async fn probes_a_real_http_server_and_a_silent_one() {
        use tokio::net::TcpListener;
        let ok = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let ok_port = ok.local_addr().unwrap().port();
        tokio::spawn(async move {
            loop {
                let (mut c, _) = ok.accept().await.unwrap();
                let mut b = [0u8; 1024];
                let _ = c.read(&mut b).await;
                let _ = c.write_all(b"HTTP/1.0 200 OK\r\n\r\nok").await;
            }
        });
        // A listener that never accepts: connect succeeds, the probe must not.
        let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let silent_port = silent.local_addr().unwrap().port();
        let probe = |port: u16| Probe {
            port,
            http: Some(format!("http://127.0.0.1:{port}/health")),
            expect_status: 200,
            send: None,
            expect: None,
            timeout: Duration::from_millis(300),
            failures: 1,
        };
        assert_eq!(run(&probe(ok_port)).await, (Some("127.0.0.1".parse().unwrap()), Ok(())));
        let err = run(&probe(silent_port)).await.1.unwrap_err();
        assert!(err.contains("no answer"), "{err}");
        drop(silent);
    }
}
