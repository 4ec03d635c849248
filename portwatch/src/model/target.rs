//! What readiness waits for and probes reach: `tcp://HOST:PORT`, `http://` URLs,
//! bare ports; and the HTTP status line they answer with.
use super::ports;

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
        let (host, port) = match hostport.rsplit_once(':') {
            Some((h, p)) if !h.ends_with(']') || hostport.starts_with('[') => {
                (h.trim_matches(|c| c == '[' || c == ']'), ports::parse_port(p).map_err(|e| format!("'{url}': {e}"))?)
            }
            _ => (hostport.trim_matches(|c| c == '[' || c == ']'), 80),
        };
        if host.is_empty() {
            return Err(format!("'{url}': no host"));
        }
        Ok(Self { host: host.to_string(), port, path: path.to_string() })
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
    }
}
