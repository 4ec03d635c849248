//! Per-job port remapping (`run --isolate-ports`), the pure part: which virtual
//! port goes to which real one, the kernel map's entries both ways, and where real
//! ports are looked for.
use portwatch_common::remap::{key, MAX_PORTS, TO_REAL, TO_VIRTUAL};
use serde::Serialize;

use super::target::Target;

/// Virtual port -> real port, for one run (empty: nothing is remapped).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct PortMap(Vec<Pair>);

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Pair {
    /// The port the job's code and config name.
    #[serde(rename = "port")]
    pub virt: u16,
    /// The port the kernel really binds for the job.
    pub real: u16,
}

impl PortMap {
    /// From pairs; fails on more than the kernel map holds, a port remapped twice,
    /// or a real port that is also a virtual one (the rewrite would be ambiguous).
    pub fn new(pairs: impl IntoIterator<Item = (u16, u16)>) -> Result<Self, String> {
        let mut v: Vec<Pair> = pairs.into_iter().map(|(virt, real)| Pair { virt, real }).collect();
        v.sort_by_key(|p| p.virt);
        if v.len() > MAX_PORTS as usize {
            return Err(format!("at most {MAX_PORTS} ports can be isolated, not {}", v.len()));
        }
        for (i, p) in v.iter().enumerate() {
            if p.virt == 0 || p.real == 0 {
                return Err("port 0 cannot be isolated".into());
            }
            if v[..i].iter().any(|q| q.virt == p.virt || q.real == p.real) {
                return Err(format!("port {} remapped twice", p.virt));
            }
            if v.iter().any(|q| q.virt == p.real && q.virt != p.virt) {
                return Err(format!("real port {} is also an isolated port", p.real));
            }
        }
        Ok(Self(v))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    pub fn pairs(&self) -> &[Pair] {
        &self.0
    }

    /// The real port for `port` (itself when it is not remapped).
    pub fn real(&self, port: u16) -> u16 {
        self.0.iter().find(|p| p.virt == port).map_or(port, |p| p.real)
    }

    /// The virtual port `port` is the real one of (itself when it is none's).
    pub fn virtual_of(&self, port: u16) -> u16 {
        self.0.iter().find(|p| p.real == port).map_or(port, |p| p.virt)
    }

    /// Whether `port` is one of the real ports.
    pub fn is_real(&self, port: u16) -> bool {
        self.0.iter().any(|p| p.real == port)
    }

    /// `5050 (isolated: real port 41234)`, or `5050`.
    pub fn label(&self, port: u16) -> String {
        match self.0.iter().find(|p| p.virt == port) {
            Some(p) => format!("{} (isolated: real port {})", p.virt, p.real),
            None => port.to_string(),
        }
    }

    /// The kernel map's entries: virtual -> real and real -> virtual.
    pub fn entries(&self) -> Vec<(u32, u16)> {
        self.0.iter().flat_map(|p| [(key(TO_REAL, p.virt), p.real), (key(TO_VIRTUAL, p.real), p.virt)]).collect()
    }

    /// Back from the kernel map's entries (the virtual -> real ones).
    pub fn from_entries(entries: impl IntoIterator<Item = (u32, u16)>) -> Self {
        let mut v: Vec<Pair> =
            entries.into_iter().filter(|(k, _)| k >> 16 == TO_REAL).map(|(k, real)| Pair { virt: k as u16, real }).collect();
        v.sort_by_key(|p| p.virt);
        Self(v)
    }

    /// A readiness target as the run must probe it: a local host's remapped port
    /// becomes the real one (portwatch itself is outside the job: its connects are
    /// not rewritten). An URL's text, as messages show it, stays the user's.
    pub fn target(&self, t: &Target) -> Target {
        let real = self.real(t.port());
        if real == t.port() || !is_local_host(t.host()) {
            return t.clone();
        }
        let mut t = t.clone();
        match &mut t {
            Target::Tcp { port, .. } => *port = real,
            Target::Http { target, .. } => target.port = real,
        }
        t
    }
}

/// Hosts a job reaches itself on, as the connect programs see them.
pub fn is_local_host(host: &str) -> bool {
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(a)) => a.is_loopback() || a.is_unspecified(),
        Ok(std::net::IpAddr::V6(a)) => {
            a.is_loopback() || a.is_unspecified() || a.to_ipv4_mapped().is_some_and(|v| v.is_loopback() || v.is_unspecified())
        }
        Err(_) => host == "localhost",
    }
}

/// `/proc/sys/net/ipv4/ip_local_port_range`: "32768\t60999".
pub fn parse_port_range(text: &str) -> Option<(u16, u16)> {
    let mut it = text.split_whitespace().map(str::parse::<u16>);
    match (it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

/// Fewest ports above the ephemeral range worth looking in before falling back to
/// the ports below it.
const MIN_POOL: u32 = 256;
/// Lowest real port: below are the ports services are configured on.
const LOWEST: u16 = 10_000;

/// Where real ports are looked for, in order, starting at a random `seed`: above
/// the kernel's ephemeral range (never handed out to a connect or bind(0), so no
/// other process gets one by chance), else between 10000 and the range's start.
pub fn candidates(ephemeral: (u16, u16), seed: u64) -> Vec<u16> {
    let (lo, hi) = ephemeral;
    let (from, to) =
        if 65_535 - u32::from(hi) >= MIN_POOL { (hi + 1, 65_535) } else { (LOWEST.min(lo.saturating_sub(1)), lo.saturating_sub(1)) };
    if from > to || from == 0 {
        return Vec::new();
    }
    let n = u32::from(to - from) + 1;
    let start = (seed % u64::from(n)) as u32;
    (0..n).map(|i| from + ((start + i) % n) as u16).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_map_goes_both_ways_and_back() {
        let m = PortMap::new([(5050, 61234), (8080, 61235)]).unwrap();
        assert_eq!(m.real(5050), 61234);
        assert_eq!(m.real(9000), 9000);
        assert!(m.is_real(61235) && !m.is_real(5050));
        assert_eq!((m.virtual_of(61235), m.virtual_of(5050)), (8080, 5050));
        assert_eq!(m.label(5050), "5050 (isolated: real port 61234)");
        assert_eq!(m.label(9000), "9000");
        let e = m.entries();
        assert_eq!(e.len(), 4);
        assert!(e.contains(&(key(TO_REAL, 5050), 61234)));
        assert!(e.contains(&(key(TO_VIRTUAL, 61234), 5050)));
        assert_eq!(PortMap::from_entries(e), m);
    }

    #[test]
    fn ambiguous_maps_are_refused() {
        assert!(PortMap::new([(5050, 61234), (5050, 61235)]).is_err());
        assert!(PortMap::new([(5050, 61234), (5051, 61234)]).is_err());
        assert!(PortMap::new([(5050, 5051), (5051, 61000)]).is_err());
        assert!(PortMap::new([(0, 61000)]).is_err());
        assert!(PortMap::new((1..=65).map(|p| (p, 60000 + p))).is_err());
        assert!(PortMap::new([(5050, 5050)]).is_ok());
    }

    #[test]
    fn local_targets_probe_the_real_port() {
        let m = PortMap::new([(5050, 61234)]).unwrap();
        let t = |s: &str| Target::parse(s).unwrap();
        // The probe goes to the real port; messages keep the URL as the user gave it.
        let h = m.target(&t("http://127.0.0.1:5050/health"));
        assert_eq!((h.port(), h.label()), (61234, "http://127.0.0.1:5050/health".to_string()));
        assert_eq!(m.target(&t("localhost:5050")), t("localhost:61234"));
        assert_eq!(m.target(&t("[::1]:5050")), t("[::1]:61234"));
        assert_eq!(m.target(&t("10.1.2.3:5050")), t("10.1.2.3:5050"));
        assert_eq!(m.target(&t("127.0.0.1:8080")), t("127.0.0.1:8080"));
    }

    #[test]
    fn local_hosts() {
        for h in ["127.0.0.1", "127.9.9.9", "0.0.0.0", "::1", "::", "::ffff:127.0.0.1", "localhost"] {
            assert!(is_local_host(h), "{h}");
        }
        for h in ["10.0.0.1", "example.com", "fe80::1"] {
            assert!(!is_local_host(h), "{h}");
        }
    }

    #[test]
    fn real_ports_come_from_above_the_ephemeral_range() {
        assert_eq!(parse_port_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_port_range("60999 32768"), None);
        assert_eq!(parse_port_range("x"), None);
        let c = candidates((32768, 60999), 7);
        assert_eq!(c.len(), 65_535 - 60_999);
        assert_eq!(c[0], 61_007);
        assert!(c.iter().all(|&p| p > 60_999));
        // The range reaches the top: below it instead.
        let c = candidates((32768, 65535), 0);
        assert_eq!((c[0], c.len()), (10_000, 32768 - 10_000));
        assert!(candidates((1, 65535), 0).is_empty());
    }
}
