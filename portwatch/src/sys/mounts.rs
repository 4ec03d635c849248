//! Finding cgroup v2 and mounting tracefs / bpffs when they are missing.
use std::{
    fs,
    path::{Path, PathBuf},
};

use nix::mount::{mount, MsFlags};

pub const TRACEFS: &str = "/sys/kernel/tracing";
pub const BPFFS: &str = "/sys/fs/bpf";

/// One line of /proc/self/mountinfo, reduced to what we need.
#[derive(Debug, PartialEq, Eq)]
pub struct Mount {
    pub point: PathBuf,
    pub fstype: String,
}

/// Parses /proc/self/mountinfo text.
pub fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let (left, right) = l.split_once(" - ")?;
            let point = left.split_whitespace().nth(4)?;
            let fstype = right.split_whitespace().next()?;
            Some(Mount { point: PathBuf::from(unescape(point)), fstype: fstype.to_string() })
        })
        .collect()
}

fn unescape(s: &str) -> String {
    s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n").replace("\\134", "\\")
}

pub fn mounts() -> Vec<Mount> {
    fs::read_to_string("/proc/self/mountinfo").map(|t| parse_mountinfo(&t)).unwrap_or_default()
}

/// The cgroup v2 mount to attach socket programs to: the root of the unified
/// hierarchy (`/sys/fs/cgroup` on pure v2 hosts, `/sys/fs/cgroup/unified` on hybrid ones).
pub fn cgroup2_root_in(mounts: &[Mount]) -> Option<PathBuf> {
    let mut v2: Vec<&Mount> = mounts.iter().filter(|m| m.fstype == "cgroup2").collect();
    v2.sort_by_key(|m| m.point.components().count());
    v2.first().map(|m| m.point.clone())
}

pub fn cgroup2_root() -> Option<PathBuf> {
    cgroup2_root_in(&mounts())
}

pub fn is_mounted(point: &str, fstype: &str) -> bool {
    mounts().iter().any(|m| m.point == Path::new(point) && m.fstype == fstype)
}

/// Mounts `fstype` at `point` unless it is there already. Returns whether it mounted.
pub fn ensure_mounted(point: &str, fstype: &'static str) -> nix::Result<bool> {
    if is_mounted(point, fstype) {
        return Ok(false);
    }
    mount(Some(fstype), point, Some(fstype), MsFlags::empty(), None::<&str>)?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
25 30 0:22 / /sys rw,nosuid - sysfs sysfs rw
40 25 0:35 / /sys/fs/cgroup rw - tmpfs tmpfs rw,mode=755
41 40 0:36 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw
42 40 0:37 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu
";

    #[test]
    fn finds_hybrid_unified_root() {
        let m = parse_mountinfo(HYBRID);
        assert_eq!(m.len(), 4);
        assert_eq!(cgroup2_root_in(&m), Some(PathBuf::from("/sys/fs/cgroup/unified")));
    }

    #[test]
    fn finds_pure_v2_root_and_none() {
        let m = parse_mountinfo("30 1 0:26 / /sys/fs/cgroup rw - cgroup2 cgroup2 rw\n");
        assert_eq!(cgroup2_root_in(&m), Some(PathBuf::from("/sys/fs/cgroup")));
        assert_eq!(cgroup2_root_in(&parse_mountinfo(HYBRID.lines().next().unwrap())), None);
    }
}
