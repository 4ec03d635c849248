//! Effective capabilities, from `/proc/self/status`.
use std::fs;

pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// A capability bit set as in the `CapEff:` line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Caps(pub u64);

impl Caps {
    pub fn has(self, cap: u32) -> bool {
        self.0 & (1u64 << cap) != 0
    }

    /// Loading tracing programs and reading kernel memory.
    pub fn can_bpf(self) -> bool {
        self.has(CAP_SYS_ADMIN) || (self.has(CAP_BPF) && self.has(CAP_PERFMON))
    }

    /// Attaching cgroup socket programs.
    pub fn can_attach_cgroup(self) -> bool {
        self.has(CAP_SYS_ADMIN) || self.has(CAP_NET_ADMIN)
    }

    /// Names of what the observer needs and this set lacks.
    pub fn missing_for_observer(self) -> Vec<&'static str> {
        let mut v = Vec::new();
        if !self.can_bpf() {
            v.push("CAP_BPF+CAP_PERFMON (or CAP_SYS_ADMIN)");
        }
        if !self.can_attach_cgroup() {
            v.push("CAP_NET_ADMIN");
        }
        v
    }
}

/// Parses the `CapEff:` line of a `/proc/<pid>/status` text.
pub fn parse_cap_eff(status: &str) -> Option<Caps> {
    status.lines().find_map(|l| l.strip_prefix("CapEff:")).and_then(|v| u64::from_str_radix(v.trim(), 16).ok()).map(Caps)
}

/// This process's effective capabilities (empty if unreadable).
pub fn current() -> Caps {
    fs::read_to_string("/proc/self/status").ok().and_then(|s| parse_cap_eff(&s)).unwrap_or(Caps(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_cap_eff() {
        let root = "Name:\tx\nCapInh:\t0\nCapEff:\t000001ffffffffff\n";
        let c = parse_cap_eff(root).unwrap();
        assert!(c.can_bpf() && c.can_attach_cgroup());
        let none = parse_cap_eff("CapEff:\t0000000000000000\n").unwrap();
        assert_eq!(none.missing_for_observer().len(), 2);
        let bpf_only = Caps((1 << CAP_BPF) | (1 << CAP_PERFMON));
        assert!(bpf_only.can_bpf());
        assert_eq!(bpf_only.missing_for_observer(), vec!["CAP_NET_ADMIN"]);
        assert!(parse_cap_eff("nothing").is_none());
    }
}
