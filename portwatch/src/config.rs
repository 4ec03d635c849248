//! The agent's configuration file (TOML). Unknown keys and bad values are errors
//! that name the key and the line; command-line flags override the file.
use std::{path::Path, time::Duration};

use serde::{Deserialize, Deserializer};

pub use crate::model::plan::Protect;
use crate::{
    error::{Error, Result},
    model::{ports::PortSet, target::HttpTarget, time::parse_duration},
};

/// The agent's control socket, in the runtime directory systemd makes for the
/// unit (`RuntimeDirectory=portwatch`); the agent creates the directory itself
/// when run by hand.
pub const DEFAULT_SOCKET: &str = "/run/portwatch/portwatch.sock";
/// The directory of [`DEFAULT_SOCKET`].
pub const DEFAULT_SOCKET_DIR: &str = "/run/portwatch";
/// The agent's history database.
pub const DEFAULT_DB: &str = "/var/lib/portwatch/history.db";
/// The history database's size in use, at most (`max_db_size`).
pub const DEFAULT_MAX_DB_BYTES: u64 = 512 << 20;
/// The smallest `max_db_size` accepted.
pub const MIN_DB_BYTES: u64 = 1 << 20;

pub const DEFAULT_STALL: Duration = Duration::from_secs(10);
pub const DEFAULT_GRACE: Duration = Duration::from_secs(5);
pub const DEFAULT_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Ports to watch: numbers or "5050-5052" strings.
    #[serde(deserialize_with = "de_ports")]
    pub ports: PortSet,
    /// How long a condition must last before a listener is stuck.
    #[serde(deserialize_with = "de_duration")]
    pub stall: Duration,
    /// How long holders get between SIGTERM and SIGKILL.
    #[serde(deserialize_with = "de_duration")]
    pub grace: Duration,
    /// How often the agent samples sockets and holders.
    #[serde(deserialize_with = "de_duration")]
    pub interval: Duration,
    /// Reap stuck listeners (otherwise only report them).
    pub reap: bool,
    /// Also call a listener stuck when its holders were re-parented to PID 1
    /// (their launcher exited): off by default, since daemons look the same.
    pub leftovers: bool,
    pub protect: Protect,
    #[serde(rename = "probe")]
    pub probes: Vec<Probe>,
    /// Record history (agent).
    pub history: bool,
    /// The history database.
    pub db: Option<std::path::PathBuf>,
    /// Drop history older than this.
    #[serde(deserialize_with = "de_duration")]
    pub retention: Duration,
    /// Keep at most this many history rows (at every commit).
    pub max_events: u64,
    /// Keep the history database's data within this many bytes ("512MiB", or a
    /// number of bytes); the oldest rows go first.
    #[serde(deserialize_with = "de_size")]
    pub max_db_size: u64,
    /// Serve Prometheus metrics at http://ADDR/metrics (off when unset).
    pub metrics: Option<std::net::SocketAddr>,
    /// The control socket (None: off).
    pub socket: Option<std::path::PathBuf>,
    /// Its mode, octal.
    pub socket_mode: String,
    /// Its group (when that group exists).
    pub socket_group: String,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            ports: PortSet::new(),
            stall: DEFAULT_STALL,
            grace: DEFAULT_GRACE,
            interval: DEFAULT_INTERVAL,
            reap: false,
            leftovers: false,
            protect: Protect::default(),
            probes: Vec::new(),
            history: true,
            db: None,
            retention: Duration::from_secs(7 * 86400),
            max_events: 1_000_000,
            max_db_size: DEFAULT_MAX_DB_BYTES,
            metrics: None,
            socket: Some(DEFAULT_SOCKET.into()),
            socket_mode: "0660".into(),
            socket_group: "portwatch".into(),
        }
    }
}

/// A health probe for one port. A bare TCP connect is not a probe: it succeeds
/// against a wedged listener whose accept queue still has room.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct Probe {
    pub port: u16,
    /// `http://host:port/path`: healthy on `expect_status`.
    pub http: Option<String>,
    #[serde(default = "default_status")]
    pub expect_status: u16,
    /// TCP send/expect: send `send` to 127.0.0.1:port, healthy when the reply
    /// contains `expect`.
    pub send: Option<String>,
    pub expect: Option<String>,
    #[serde(default = "default_probe_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Consecutive failures that make the listener stuck.
    #[serde(default = "default_failures")]
    pub failures: u32,
}

fn default_status() -> u16 {
    200
}
fn default_probe_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_failures() -> u32 {
    3
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    parse_duration(&s).map_err(serde::de::Error::custom)
}

/// A size: a number of bytes, or a string with a binary unit ("512MiB", "1GiB",
/// "64K", "100 MB" -- K, M, G and KB, MB, GB are taken as KiB, MiB, GiB).
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("invalid size '{s}': give bytes or a number with KiB, MiB or GiB"))?;
    let mult: u64 = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "k" | "kb" | "kib" => 1 << 10,
        "m" | "mb" | "mib" => 1 << 20,
        "g" | "gb" | "gib" => 1 << 30,
        "t" | "tb" | "tib" => 1 << 40,
        _ => return Err(format!("invalid size '{s}': unknown unit '{}' (KiB, MiB or GiB)", unit.trim())),
    };
    n.checked_mul(mult).ok_or_else(|| format!("invalid size '{s}': too large"))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum SizeItem {
    Num(u64),
    Text(String),
}

fn de_size<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u64, D::Error> {
    match SizeItem::deserialize(d)? {
        SizeItem::Num(n) => Ok(n),
        SizeItem::Text(s) => parse_size(&s).map_err(serde::de::Error::custom),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum PortItem {
    Num(i64),
    Spec(String),
}

fn de_ports<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<PortSet, D::Error> {
    let items = Vec::<PortItem>::deserialize(d)?;
    let mut set = PortSet::new();
    for item in items {
        let spec = match item {
            PortItem::Num(n) => n.to_string(),
            PortItem::Spec(s) => s,
        };
        set.add_spec(&spec).map_err(serde::de::Error::custom)?;
    }
    Ok(set)
}

impl Config {
    /// Command-line flags override the file; ports given on the command line are added.
    pub fn merge_flags(&mut self, ports: &PortSet, stall: Option<Duration>, grace: Option<Duration>, interval: Option<Duration>) {
        self.ports.extend(ports);
        if let Some(s) = stall {
            self.stall = s;
        }
        if let Some(g) = grace {
            self.grace = g;
        }
        if let Some(i) = interval {
            self.interval = i;
        }
    }

    pub fn parse(text: &str, origin: &str) -> Result<Self> {
        let cfg: Self = toml::from_str(text).map_err(|e| {
            // toml's message spans lines (with a source excerpt); keep it on one.
            let msg = e.message().to_string();
            let line = e.span().map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            Error::Config(match line {
                Some(l) => format!("{origin}: line {l}: {msg}"),
                None => format!("{origin}: {msg}"),
            })
        })?;
        cfg.validate(origin)?;
        Ok(cfg)
    }

    pub fn load(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Config(format!("cannot read config {}: {e}", path.display())))?;
        Self::parse(&text, &path.display().to_string())
    }

    fn validate(&self, origin: &str) -> Result<()> {
        for p in &self.probes {
            let kinds = u8::from(p.http.is_some()) + u8::from(p.send.is_some() || p.expect.is_some());
            if kinds != 1 {
                return Err(Error::Config(format!("{origin}: probe for port {}: give exactly one of `http` or `send`/`expect`", p.port)));
            }
            if let Some(url) = &p.http {
                HttpTarget::parse(url).map_err(|e| Error::Config(format!("{origin}: probe for port {}: {e}", p.port)))?;
            }
            if p.port == 0 {
                return Err(Error::Config(format!("{origin}: probe: port must be 1-65535")));
            }
            if p.failures == 0 {
                return Err(Error::Config(format!("{origin}: probe for port {}: failures must be at least 1", p.port)));
            }
        }
        if u32::from_str_radix(self.socket_mode.trim_start_matches("0o"), 8).map_or(true, |m| m > 0o777) {
            return Err(Error::Config(format!("{origin}: socket_mode: '{}' is not an octal file mode like \"0660\"", self.socket_mode)));
        }
        if self.max_db_size < MIN_DB_BYTES {
            return Err(Error::Config(format!("{origin}: max_db_size must be at least 1MiB")));
        }
        if self.max_events == 0 {
            return Err(Error::Config(format!("{origin}: max_events must be at least 1")));
        }
        if self.stall.is_zero() || self.interval.is_zero() {
            return Err(Error::Config(format!("{origin}: stall and interval must be longer than 0")));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_config() {
        let c = Config::parse(
            r#"
ports = [5050, "5051-5052"]
stall = "3s"
grace = "2s"
reap = true
[protect]
comm = ["sshd"]
uid = [0]
[[probe]]
port = 5050
http = "http://127.0.0.1:5050/api/health"
[[probe]]
port = 5051
send = "PING\n"
expect = "PONG"
failures = 2
"#,
            "t.toml",
        )
        .unwrap();
        assert_eq!(c.ports.iter().collect::<Vec<_>>(), vec![5050, 5051, 5052]);
        assert_eq!((c.stall, c.grace, c.reap), (Duration::from_secs(3), Duration::from_secs(2), true));
        assert_eq!(c.probes.len(), 2);
        assert_eq!(c.probes[0].expect_status, 200);
        assert_eq!(c.protect.comm, vec!["sshd"]);
        assert_eq!(Config::parse("", "e").unwrap(), Config::default());
    }

    #[test]
    fn errors_name_key_and_line() {
        let e = Config::parse("ports = [5050]\nstal = \"3s\"\n", "c.toml").unwrap_err().to_string();
        assert!(e.contains("line 2") && e.contains("stal"), "{e}");
        let e = Config::parse("ports = [70000]\n", "c.toml").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("out of range"), "{e}");
        let e = Config::parse("stall = \"soon\"\n", "c.toml").unwrap_err().to_string();
        assert!(e.contains("invalid duration"), "{e}");
        let e = Config::parse("[[probe]]\nport = 1\n", "c.toml").unwrap_err().to_string();
        assert!(e.contains("exactly one"), "{e}");
        assert!(!e.contains('\n'));
        assert!(matches!(Config::parse("ports = [", "c").unwrap_err(), Error::Config(_)));
        let e = Config::parse("max_db_size = \"lots\"\n", "c.toml").unwrap_err().to_string();
        assert!(e.contains("line 1") && e.contains("invalid size"), "{e}");
        let e = Config::parse("max_db_size = 1000\n", "c.toml").unwrap_err().to_string();
        assert!(e.contains("at least 1MiB"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512MiB"), Ok(512 << 20));
        assert_eq!(parse_size("1 GiB"), Ok(1 << 30));
        assert_eq!(parse_size("64k"), Ok(64 << 10));
        assert_eq!(parse_size("100MB"), Ok(100 << 20));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("1.5G").unwrap_err().contains("unknown unit"));
        assert!(parse_size("MiB").is_err());
        assert!(parse_size("99999999999TiB").unwrap_err().contains("too large"));
        let c = Config::parse("max_db_size = \"2GiB\"\nmax_events = 500\n", "c.toml").unwrap();
        assert_eq!((c.max_db_size, c.max_events), (2 << 30, 500));
        assert_eq!(Config::parse("max_db_size = 2097152\n", "c.toml").unwrap().max_db_size, 2 << 20);
    }
}
