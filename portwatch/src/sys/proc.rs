//! Process details from /proc, and the /proc walk that maps socket inodes to the
//! processes holding them (the fallback when the BPF iterator is unavailable).
use std::{
    collections::HashSet,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use procfs::process::FDTarget;
use serde::Serialize;

/// What `who` shows about a process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ProcInfo {
    pub pid: i32,
    pub ppid: i32,
    pub uid: u32,
    pub user: String,
    pub comm: String,
    pub cmdline: String,
    /// R, S, D, T, t, Z, ...
    pub state: char,
    /// Seconds since the epoch.
    pub start_time: Option<u64>,
    pub age_secs: Option<u64>,
    pub cgroup: String,
    pub container: Option<String>,
}

/// Reads a small /proc file with plain `read`s into a page-sized buffer (std's
/// `read_to_end` adds a stat, a seek and 32-byte probe reads for files that report
/// size 0, as /proc files do; `who` reads three files per holder).
fn read_small(path: &str) -> std::io::Result<Vec<u8>> {
    use std::io::Read;
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 4096];
    let mut len = 0;
    loop {
        if len == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match f.read(&mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(len);
    Ok(buf)
}

/// Reads one process; `None` if it is gone or unreadable.
pub fn info(pid: i32) -> Option<ProcInfo> {
    use procfs::FromRead;
    use std::os::unix::fs::MetadataExt;
    let dir = format!("/proc/{pid}");
    let stat = procfs::process::Stat::from_read(&read_small(&format!("{dir}/stat")).ok()?[..]).ok()?;
    let uid = std::fs::metadata(&dir).map_or(u32::MAX, |m| m.uid());
    let cmdline = read_small(&format!("{dir}/cmdline"))
        .map(|b| b.split(|&c| c == 0).filter(|a| !a.is_empty()).map(String::from_utf8_lossy).collect::<Vec<_>>().join(" "))
        .unwrap_or_default();
    let start = start_time(stat.starttime);
    let cgroup = read_small(&format!("{dir}/cgroup")).map(|t| cgroup_v2_path(&String::from_utf8_lossy(&t))).unwrap_or_default();
    Some(ProcInfo {
        pid,
        ppid: stat.ppid,
        uid,
        user: user_name(uid),
        comm: stat.comm,
        cmdline,
        state: stat.state,
        start_time: start.map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()),
        age_secs: start.and_then(|t| SystemTime::now().duration_since(t).ok()).map(|d| d.as_secs()),
        container: container_id(&cgroup),
        cgroup,
    })
}

fn start_time(ticks: u64) -> Option<SystemTime> {
    let boot = procfs::boot_time_secs().ok()?;
    let tps = procfs::ticks_per_second().max(1);
    Some(UNIX_EPOCH + Duration::from_secs(boot) + Duration::from_millis(ticks * 1000 / tps))
}

/// The user name of `uid` (the uid itself when it has none), looked up once per
/// uid per process: an NSS lookup reads /etc/passwd each time.
pub fn user_name(uid: u32) -> String {
    static NAMES: std::sync::Mutex<Option<std::collections::HashMap<u32, String>>> = std::sync::Mutex::new(None);
    let lookup = || nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)).ok().flatten().map_or_else(|| uid.to_string(), |u| u.name);
    let Ok(mut guard) = NAMES.lock() else {
        return lookup();
    };
    guard.get_or_insert_with(Default::default).entry(uid).or_insert_with(lookup).clone()
}

/// The cgroup v2 path (`0::/path`) of a /proc/<pid>/cgroup text, or the first path.
pub fn cgroup_v2_path(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .or_else(|| text.lines().next().and_then(|l| l.splitn(3, ':').nth(2)))
        .unwrap_or("")
        .to_string()
}

/// A container id (64 hex digits) found in a cgroup path, as docker, containerd,
/// cri-o and podman write them; shortened to 12 like `docker ps`.
pub fn container_id(cgroup: &str) -> Option<String> {
    cgroup
        .split(['/', '-', ':', '.'])
        .find(|seg| seg.len() == 64 && seg.bytes().all(|b| b.is_ascii_hexdigit()))
        .map(|s| s[..12].to_string())
}

/// Whether this process runs in a pid namespace below the initial one: pids the
/// kernel reports globally (as BPF programs see them) then differ from ours.
pub fn in_nested_pid_namespace() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("NSpid:")).map(|l| l.split_whitespace().count() > 2))
        .unwrap_or(false)
}

/// Whether `/proc/<pid>/fd/<fd>` is the socket with `inode`.
pub fn fd_is_socket(pid: i32, fd: i32, inode: u64) -> bool {
    fd_check(pid, fd, inode) == FdCheck::Holds
}

/// What /proc says about a (process, fd, socket inode) a BPF pass reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FdCheck {
    Holds,
    /// Closed or replaced since the pass (or the process is gone).
    Gone,
    /// /proc does not let us look (e.g. a process that is not dumpable, or a
    /// hardened PID 1): the kernel's answer stands.
    Unknown,
}

pub fn fd_check(pid: i32, fd: i32, inode: u64) -> FdCheck {
    match std::fs::read_link(format!("/proc/{pid}/fd/{fd}")) {
        Ok(l) if l.as_os_str().as_encoded_bytes() == format!("socket:[{inode}]").as_bytes() => FdCheck::Holds,
        Ok(_) => FdCheck::Gone,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => FdCheck::Unknown,
        Err(_) => FdCheck::Gone,
    }
}

/// One (process, fd) holding a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FdHolder {
    pub pid: i32,
    pub fd: i32,
    pub inode: u64,
}

/// Walks /proc/<pid>/fd for every process: the slow path. Returns the holders found
/// and how many processes could not be read (not ours, without privilege).
pub fn walk_socket_holders(inodes: &HashSet<u64>) -> (Vec<FdHolder>, usize) {
    let mut out = Vec::new();
    let mut denied = 0;
    let Ok(all) = procfs::process::all_processes() else {
        return (out, denied);
    };
    for p in all.flatten() {
        let pid = p.pid;
        match p.fd() {
            Ok(fds) => {
                for fd in fds.flatten() {
                    if let FDTarget::Socket(ino) = fd.target {
                        if inodes.contains(&ino) {
                            out.push(FdHolder { pid, fd: fd.fd, inode: ino });
                        }
                    }
                }
            }
            Err(_) => denied += 1,
        }
    }
    out.sort();
    (out, denied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_paths_and_container_ids() {
        assert_eq!(cgroup_v2_path("12:cpu:/x\n0::/system.slice/a.service\n"), "/system.slice/a.service");
        assert_eq!(cgroup_v2_path("3:cpu:/only-v1\n"), "/only-v1");
        let id = "4f3c2b1a0f3c2b1a0f3c2b1a0f3c2b1a0f3c2b1a0f3c2b1a0f3c2b1a0f3c2b1a";
        assert_eq!(container_id(&format!("/system.slice/docker-{id}.scope")).as_deref(), Some("4f3c2b1a0f3c"));
        assert_eq!(container_id(&format!("/kubepods/burstable/pod1/{id}")).as_deref(), Some("4f3c2b1a0f3c"));
        assert_eq!(container_id("/user.slice/user-1000.slice"), None);
    }

    #[test]
    fn reads_own_process() {
        let me = info(std::process::id() as i32).unwrap();
        assert_eq!(me.pid, std::process::id() as i32);
        assert!(matches!(me.state, 'R' | 'S'));
        assert!(!me.comm.is_empty());
    }
}
