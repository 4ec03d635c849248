//! What readiness waits for and probes reach: `tcp://HOST:PORT`, `http://` URLs,
//! bare ports; and the HTTP status line they answer with.
use super::ports;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    Tcp { host: String, port: u16 },
    Http { url: String, target: HttpTarget },
}

impl Target {
    /// `tcp://HOST:PORT`, `HOST:PORT` (the wait-for-it form; `[::1]:PORT` for IPv6),
    /// an `http://` URL, or a bare port (on 127.0.0.1).
    pub fn parse(s: &str) -> std::result::Result<Self, String> {
        let t = s.trim();
        if t.starts_with("http://") || t.starts_with("https://") {
            return Ok(Self::Http { url: t.to_string(), target: HttpTarget::parse(t)? });
        }
        let hostport = match t.strip_prefix("tcp://") {
            Some(rest) => rest,
            None if t.contains("://") => return Err(format!("'{t}': expected HOST:PORT, tcp://HOST:PORT, an http:// URL, or a port")),
            None if !t.contains(':') => {
                let port = ports::parse_port(t).map_err(|e| format!("'{t}': {e}"))?;
                return Ok(Self::Tcp { host: "127.0.0.1".into(), port });
            }
            None => t,
        };
        let (host, port) = split_host_port(hostport).ok_or_else(|| format!("'{t}': expected HOST:PORT ([ADDR]:PORT for IPv6)"))?;
        let port = ports::parse_port(port).map_err(|e| format!("'{t}': {e}"))?;
        if host.is_empty() {
            return Err(format!("'{t}': no host"));
        }
        Ok(Self::Tcp { host: host.to_string(), port })
    }

    /// The port the target reaches.
    pub fn port(&self) -> u16 {
        match self {
            Self::Tcp { port, .. } => *port,
            Self::Http { target, .. } => target.port,
        }
    }

    /// The host the target names.
    pub fn host(&self) -> &str {
        match self {
            Self::Tcp { host, .. } => host,
            Self::Http { target, .. } => &target.host,
        }
    }

    pub fn label(&self) -> String {
        match self {
            Self::Tcp { host, port } if host.contains(':') => format!("tcp://[{host}]:{port}"),
            Self::Tcp { host, port } => format!("tcp://{host}:{port}"),
            Self::Http { url, .. } => url.clone(),
        }
    }
}

/// `host:port` or `[v6]:port` into host (unbracketed) and port text; `None` when an
/// IPv6 address is not bracketed or no port is given.
fn split_host_port(s: &str) -> Option<(&str, &str)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return Some((host, after.strip_prefix(':')?));
    }
    let (host, port) = s.rsplit_once(':')?;
    (!host.contains(':')).then_some((host, port))
}

/// `host` as it goes in a URL authority: IPv6 literals bracketed.
pub fn authority(host: &str, port: u16) -> String {
    if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// clap value parser.
pub fn clap_target(s: &str) -> std::result::Result<Target, String> {
    Target::parse(s)
}

/// `http://host[:port][/path]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpTarget {
    pub host: String,
    pub port: u16,
    pub path: String,
}

impl HttpTarget {
    pub fn parse(url: &str) -> Result<Self, String> {
        let rest = match url.split_once("://") {
            Some(("http", rest)) => rest,
            Some(("https", _)) => return Err(format!("'{url}': https probes are not supported; probe the service over http on loopback")),
            _ => return Err(format!("'{url}': expected an http:// URL")),
        };
        let (hostport, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let (host, port) = if hostport.starts_with('[') || hostport.matches(':').count() == 1 {
            match split_host_port(hostport) {
                Some((h, p)) => (h, ports::parse_port(p).map_err(|e| format!("'{url}': {e}"))?),
                None if hostport.ends_with(']') => (hostport.trim_matches(|c| c == '[' || c == ']'), 80),
                None => return Err(format!("'{url}': expected http://HOST[:PORT]/PATH")),
            }
        } else if hostport.contains(':') {
            return Err(format!("'{url}': an IPv6 address must be in brackets: http://[ADDR]:PORT/"));
        } else {
            (hostport, 80)
        };
        if host.is_empty() {
            return Err(format!("'{url}': no host"));
        }
        Ok(Self { host: host.to_string(), port, path: path.to_string() })
    }

    /// The `Host:` header's value: the host (IPv6 bracketed) and, unless it is 80,
    /// the port.
    pub fn host_header(&self) -> String {
        match (self.host.contains(':'), self.port) {
            (true, 80) => format!("[{}]", self.host),
            (false, 80) => self.host.clone(),
            _ => authority(&self.host, self.port),
        }
    }
}

/// What an HTTP response head says: its status and, for a redirect, where to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    pub status: u16,
    pub location: Option<String>,
}

impl Response {
    /// From a response head (`HTTP/1.1 302 Found\r\nLocation: /login\r\n...`).
    pub fn parse(head: &[u8]) -> Option<Self> {
        let status = parse_status(head)?;
        let text = String::from_utf8_lossy(head);
        let location =
            text.split("\r\n").skip(1).take_while(|l| !l.is_empty()).find_map(|l| {
                l.split_once(':').filter(|(k, _)| k.trim().eq_ignore_ascii_case("location")).map(|(_, v)| v.trim().to_string())
            });
        Some(Self { status, location })
    }

    pub fn is_redirect(&self) -> bool {
        (300..400).contains(&self.status)
    }

    /// Whether the status is one of `expect` (any 2xx when `expect` is empty).
    pub fn is_expected(&self, expect: &[u16]) -> bool {
        if expect.is_empty() {
            (200..300).contains(&self.status)
        } else {
            expect.contains(&self.status)
        }
    }

    /// "HTTP 503", "HTTP 302 redirect to /login".
    pub fn describe(&self) -> String {
        match &self.location {
            Some(to) if self.is_redirect() => format!("HTTP {} redirect to {to}", self.status),
            _ => format!("HTTP {}", self.status),
        }
    }
}

/// The status code of an HTTP response head (`HTTP/1.1 503 ...`).
pub fn parse_status(head: &[u8]) -> Option<u16> {
    let text = std::str::from_utf8(head).ok()?;
    let mut parts = text.split_whitespace();
    let proto = parts.next()?;
    if !proto.starts_with("HTTP/") {
        return None;
    }
    parts.next()?.parse().ok()
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
        assert_eq!(Target::parse("localhost:5050"), Ok(Target::Tcp { host: "localhost".into(), port: 5050 }));
        assert_eq!(Target::parse("[::1]:5050"), Ok(Target::Tcp { host: "::1".into(), port: 5050 }));
        assert_eq!(Target::parse("[::1]:5050").unwrap().label(), "tcp://[::1]:5050");
        assert!(Target::parse("localhost:abc").unwrap_err().contains("abc"), "{:?}", Target::parse("localhost:abc"));
        assert!(Target::parse("::1:80").is_err());
        assert!(Target::parse("localhost:0").is_err());
        assert!(Target::parse(":80").unwrap_err().contains("no host"));
        assert!(Target::parse("udp://x:1").is_err());
        assert!(Target::parse("https://x/").unwrap_err().contains("https"));
    }

    #[test]
    fn parses_urls() {
        assert_eq!(
            HttpTarget::parse("http://127.0.0.1:5050/api/health").unwrap(),
            HttpTarget { host: "127.0.0.1".into(), port: 5050, path: "/api/health".into() }
        );
        assert_eq!(HttpTarget::parse("http://localhost").unwrap().port, 80);
        assert_eq!(HttpTarget::parse("http://[::1]:8080/x").unwrap().host, "::1");
        assert!(HttpTarget::parse("https://x/").unwrap_err().contains("https"));
        assert!(HttpTarget::parse("ftp://x/").is_err());
        assert!(HttpTarget::parse("http://x:0/").is_err());
        assert_eq!(parse_status(b"HTTP/1.1 503 Service Unavailable\r\n"), Some(503));
        assert_eq!(parse_status(b"garbage"), None);
        assert!(HttpTarget::parse("http://::1/x").unwrap_err().contains("brackets"));
        assert_eq!(HttpTarget::parse("http://[::1]/x").unwrap(), HttpTarget { host: "::1".into(), port: 80, path: "/x".into() });
    }

    #[test]
    fn host_header_carries_the_port_and_brackets() {
        let h = |u: &str| HttpTarget::parse(u).unwrap().host_header();
        assert_eq!(h("http://127.0.0.1:5050/health"), "127.0.0.1:5050");
        assert_eq!(h("http://example.com/"), "example.com");
        assert_eq!(h("http://[::1]:8080/"), "[::1]:8080");
        assert_eq!(h("http://[::1]/"), "[::1]");
    }

    #[test]
    fn responses_say_status_and_redirect() {
        let r = Response::parse(b"HTTP/1.1 302 Found\r\nContent-Length: 0\r\nlocation:  /login \r\n\r\n").unwrap();
        assert_eq!(r, Response { status: 302, location: Some("/login".into()) });
        assert_eq!(r.describe(), "HTTP 302 redirect to /login");
        assert!(!r.is_expected(&[]));
        assert!(r.is_expected(&[200, 302]));
        let ok = Response::parse(b"HTTP/1.0 204 No Content\r\n\r\n").unwrap();
        assert!(ok.is_expected(&[]));
        assert!(!ok.is_expected(&[200]));
        assert_eq!(ok.describe(), "HTTP 204");
    }
}
