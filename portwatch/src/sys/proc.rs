//! Process details from /proc, and the /proc walk that maps socket inodes to the
//! processes holding them (the fallback when the BPF iterator is unavailable).
use std::{
    collections::HashSet,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use procfs::process::FDTarget;

use crate::model::process::{job_from_environ, Creds, ProcDetails, ProcInfo, Text};

/// `PF_KTHREAD` in `/proc/PID/stat`'s flags: the task is a kernel thread.
const PF_KTHREAD: u32 = 0x0020_0000;

/// Longest command line, cgroup path or ancestry kept (a process chooses its own
/// command line; a megabyte of it must not become a megabyte in every record).
pub const MAX_TEXT: usize = 4096;

/// Cuts `s` to at most `MAX_TEXT` bytes, on a character boundary, marking the cut.
pub fn clip(mut s: String) -> String {
    if s.len() > MAX_TEXT {
        let mut end = MAX_TEXT - 3;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

/// Reads a small /proc file with plain `read`s into a page-sized buffer (std's
/// `read_to_end` adds a stat, a seek and 32-byte probe reads for files that report
/// size 0, as /proc files do; `who` reads three files per holder).
/// At most `limit` bytes are read (a command line may be megabytes long).
///
/// The page-sized buffer is this thread's, reused; the answer is a copy of what
/// was read. A fresh 4 KiB buffer per file cost, with musl's allocator (the
/// static build), an mmap and a munmap each time.
fn read_small(path: &str, limit: usize) -> std::io::Result<Vec<u8>> {
    /// Larger reads (a process's environment) use a buffer of their own.
    const SCRATCH_MAX: usize = 16 * 1024;
    thread_local! {
        static SCRATCH: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    let mut f = std::fs::File::open(path)?;
    if limit > SCRATCH_MAX {
        let mut buf = Vec::new();
        let len = read_into(&mut f, &mut buf, limit)?;
        buf.truncate(len);
        return Ok(buf);
    }
    SCRATCH.with(|s| match s.try_borrow_mut() {
        Ok(mut buf) => read_into(&mut f, &mut buf, limit).map(|len| buf[..len].to_vec()),
        Err(_) => {
            let mut buf = Vec::new();
            read_into(&mut f, &mut buf, limit).map(|len| {
                buf.truncate(len);
                buf
            })
        }
    })
}

/// Reads `f` into `buf` (grown as needed, page-sized first, up to `limit`);
/// returns the length read.
fn read_into(f: &mut std::fs::File, buf: &mut Vec<u8>, limit: usize) -> std::io::Result<usize> {
    use std::io::Read;
    if buf.len() < limit.min(4096) {
        buf.resize(limit.min(4096), 0);
    }
    let mut len = 0;
    while len < limit {
        if len == buf.len() {
            buf.resize((buf.len() * 2).min(limit), 0);
        }
        let end = buf.len().min(limit);
        match f.read(&mut buf[len..end]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(len)
}

/// Reads one process; `None` if it is gone or unreadable. Reads `stat`, `cmdline`
/// and `cgroup`, one `read` each.
pub fn info(pid: i32) -> Option<ProcInfo> {
    use std::os::unix::fs::MetadataExt;

    use procfs::FromRead;
    let dir = format!("/proc/{pid}");
    let stat = procfs::process::Stat::from_read(&read_small(&format!("{dir}/stat"), 4096).ok()?[..]).ok()?;
    let uid = std::fs::metadata(&dir).map_or(u32::MAX, |m| m.uid());
    let cmdline = read_small(&format!("{dir}/cmdline"), MAX_TEXT)
        .map(|b| clip(b.split(|&c| c == 0).filter(|a| !a.is_empty()).map(String::from_utf8_lossy).collect::<Vec<_>>().join(" ")))
        .unwrap_or_default();
    let start = start_time(stat.starttime);
    let cgroup =
        read_small(&format!("{dir}/cgroup"), MAX_TEXT).map(|t| clip(cgroup_v2_path(&String::from_utf8_lossy(&t)))).unwrap_or_default();
    Some(ProcInfo {
        pid,
        ppid: stat.ppid,
        uid,
        user: user_name(uid),
        comm: stat.comm,
        cmdline: cmdline.into(),
        state: stat.state,
        start_time: start.map(|t| t.duration_since(UNIX_EPOCH).unwrap_or_default().as_secs()),
        age_secs: start.and_then(|t| SystemTime::now().duration_since(t).ok()).map(|d| d.as_secs()),
        container: container_id(&cgroup),
        cgroup: cgroup.into(),
        kernel_thread: stat.flags & PF_KTHREAD != 0,
        start_ticks: stat.starttime,
    })
}

/// A process's command name (`/proc/PID/comm`).
pub fn comm(pid: i32) -> Option<String> {
    read_small(&format!("/proc/{pid}/comm"), 64).ok().map(|c| String::from_utf8_lossy(&c).trim_end().to_string())
}

/// A process's user ids (`/proc/PID/status`), as `kill(2)` judges them.
pub fn creds(pid: i32) -> Option<Creds> {
    let text = read_small(&format!("/proc/{pid}/status"), 16 * 1024).ok()?;
    Creds::parse_status(&String::from_utf8_lossy(&text))
}

/// A process's executable path, when /proc shows it.
pub fn exe(pid: i32) -> Option<String> {
    std::fs::read_link(format!("/proc/{pid}/exe")).ok().map(|p| p.to_string_lossy().into_owned())
}

/// A process's `stat`, in one read.
fn stat(pid: i32) -> Option<procfs::process::Stat> {
    use procfs::FromRead;
    procfs::process::Stat::from_read(&read_small(&format!("/proc/{pid}/stat"), 4096).ok()?[..]).ok()
}

/// The start time (clock ticks since boot) and state of a process, from `stat`.
pub fn start_and_state(pid: i32) -> Option<(u64, char)> {
    stat(pid).map(|s| (s.starttime, s.state))
}

/// A process's parent (0 for one whose parent is outside its pid namespace).
pub fn parent_of(pid: i32) -> Option<i32> {
    stat(pid).map(|s| s.ppid)
}

/// The parent chain of `pid`, nearest first: (pid, comm), up to PID 1 or 64 steps.
pub fn ancestors(pid: i32) -> Vec<(i32, String)> {
    let mut out = Vec::new();
    let mut p = pid;
    for _ in 0..64 {
        let Some(stat) = stat(p) else {
            break;
        };
        if stat.ppid <= 0 || out.iter().any(|(q, _)| *q == stat.ppid) {
            break;
        }
        let parent = read_small(&format!("/proc/{}/comm", stat.ppid), 64)
            .map(|c| String::from_utf8_lossy(&c).trim_end().to_string())
            .unwrap_or_default();
        out.push((stat.ppid, parent));
        p = stat.ppid;
    }
    out
}

/// A process with its parent chain and CI job, for the history.
pub fn details(pid: i32) -> Option<ProcDetails> {
    let proc = info(pid)?;
    let mut chain = vec![format!("{} {}", proc.pid, proc.comm)];
    chain.extend(ancestors(pid).into_iter().map(|(p, c)| format!("{p} {c}")));
    Some(ProcDetails { ancestry: Text::from(clip(chain.join(" < "))), job: job(pid).map(|j| Text::from(clip(j))), proc })
}

/// The CI job `pid`'s environment names (see [`job_from_environ`]): one read.
pub fn job(pid: i32) -> Option<String> {
    let env = read_small(&format!("/proc/{pid}/environ"), 256 * 1024).ok()?;
    job_from_environ(&env)
}

/// The agent's own resource use, as Prometheus' `process_*` metrics report it.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct SelfUsage {
    pub cpu_seconds: f64,
    pub resident_bytes: u64,
    pub virtual_bytes: u64,
    pub open_fds: u64,
    pub max_fds: u64,
    pub start_time_seconds: f64,
}

/// Reads [`SelfUsage`] from /proc/self (stat and the fd directory) and the rlimit.
pub fn self_usage() -> Option<SelfUsage> {
    use procfs::FromRead;
    let stat = procfs::process::Stat::from_read(&read_small("/proc/self/stat", 4096).ok()?[..]).ok()?;
    let tps = procfs::ticks_per_second().max(1) as f64;
    let boot = procfs::boot_time_secs().ok()? as f64;
    let open_fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let max_fds = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE).map_or(0, |(soft, _)| soft);
    Some(SelfUsage {
        cpu_seconds: (stat.utime + stat.stime) as f64 / tps,
        resident_bytes: stat.rss * procfs::page_size(),
        virtual_bytes: stat.vsize,
        open_fds,
        max_fds,
        start_time_seconds: boot + stat.starttime as f64 / tps,
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
    use std::os::unix::fs::MetadataExt;
    // The initial pid namespace has a fixed inode (PROC_PID_INIT_INO): one stat
    // answers the common case; the status file (generated, ~1.5 KB) only otherwise.
    const PROC_PID_INIT_INO: u64 = 0xEFFF_FFFC;
    if std::fs::metadata("/proc/self/ns/pid").is_ok_and(|m| m.ino() == PROC_PID_INIT_INO) {
        return false;
    }
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
    match fd_link_check(&format!("/proc/{pid}/fd/{fd}"), inode) {
        // The thread-group leader has exited while other threads live on: its fd
        // table is gone from /proc/PID/fd, but theirs are in /proc/PID/task/TID/fd.
        FdCheck::Gone if leader_exited(pid) => task_fd_dirs(pid)
            .into_iter()
            .map(|dir| fd_link_check(&format!("{dir}/{fd}"), inode))
            .find(|c| *c != FdCheck::Gone)
            .unwrap_or(FdCheck::Gone),
        c => c,
    }
}

fn fd_link_check(path: &str, inode: u64) -> FdCheck {
    match std::fs::read_link(path) {
        Ok(l) if l.as_os_str().as_encoded_bytes() == format!("socket:[{inode}]").as_bytes() => FdCheck::Holds,
        Ok(_) => FdCheck::Gone,
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => FdCheck::Unknown,
        Err(_) => FdCheck::Gone,
    }
}

/// Whether `pid`'s main thread has exited (a zombie leader) while the process
/// lives on in other threads.
pub fn leader_exited(pid: i32) -> bool {
    start_and_state(pid).is_some_and(|(_, state)| state == 'Z') && task_fd_dirs(pid).len() > 1
}

/// The (fd, socket inode) pairs of an fd directory.
fn socket_fds(dir: &str) -> Vec<(i32, u64)> {
    let Ok(entries) = std::fs::read_dir(dir) else { return Vec::new() };
    entries
        .flatten()
        .filter_map(|e| {
            let fd = e.file_name().to_str()?.parse().ok()?;
            let link = std::fs::read_link(e.path()).ok()?;
            let ino = link.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()?;
            Some((fd, ino))
        })
        .collect()
}

/// The (fd, socket inode) pairs `pid` holds (through its threads' tables when its
/// main thread has exited).
pub fn socket_fds_of(pid: i32) -> Vec<(i32, u64)> {
    let mut v = socket_fds(&format!("/proc/{pid}/fd"));
    if v.is_empty() && leader_exited(pid) {
        v = task_fd_dirs(pid).iter().flat_map(|d| socket_fds(d)).collect();
        v.sort_unstable();
        v.dedup();
    }
    v
}

/// The children of `pid`, from each of its threads' `children` list (an orphan
/// adopted by a subreaper is on the list of the thread that adopted it).
pub fn children_of(pid: i32) -> Vec<i32> {
    let mut out: Vec<i32> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| {
            d.flatten()
                .flat_map(|t| {
                    std::fs::read_to_string(t.path().join("children"))
                        .unwrap_or_default()
                        .split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok())
                        .collect::<Vec<_>>()
                })
                .collect()
        })
        .unwrap_or_default();
    out.sort_unstable();
    out.dedup();
    out
}

/// `/proc/PID/task/TID/fd` of each thread of `pid`.
fn task_fd_dirs(pid: i32) -> Vec<String> {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .map(|d| d.flatten().map(|t| format!("{}/fd", t.path().display())).collect())
        .unwrap_or_default()
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
        let fds: Option<Vec<(i32, u64)>> = match p.fd() {
            Ok(fds) => Some(
                fds.flatten()
                    .filter_map(|fd| match fd.target {
                        FDTarget::Socket(ino) => Some((fd.fd, ino)),
                        _ => None,
                    })
                    .collect(),
            ),
            // A process whose main thread exited shows its fds under its threads.
            Err(_) if leader_exited(pid) => Some(task_fd_dirs(pid).iter().flat_map(|d| socket_fds(d)).collect()),
            Err(_) => None,
        };
        match fds {
            Some(fds) => out.extend(fds.into_iter().filter(|(_, ino)| inodes.contains(ino)).map(|(fd, inode)| FdHolder { pid, fd, inode })),
            None => denied += 1,
        }
    }
    out.sort();
    out.dedup();
    (out, denied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_small_reads_whole_files_up_to_the_limit_with_its_buffer_reused() {
        let dir = tempfile::tempdir().unwrap();
        let big: Vec<u8> = (0..40_000u32).map(|i| (i % 251) as u8).collect();
        let (small_path, big_path) = (dir.path().join("small"), dir.path().join("big"));
        std::fs::write(&small_path, b"hello").unwrap();
        std::fs::write(&big_path, &big).unwrap();
        let (small_path, big_path) = (small_path.to_str().unwrap(), big_path.to_str().unwrap());
        // The thread's buffer grows to 16 KiB, then serves shorter reads and limits.
        assert_eq!(read_small(big_path, 16 * 1024).unwrap(), big[..16 * 1024]);
        assert_eq!(read_small(small_path, 4096).unwrap(), b"hello");
        assert_eq!(read_small(big_path, 4096).unwrap(), big[..4096]);
        assert_eq!(read_small(big_path, 100).unwrap(), big[..100]);
        assert_eq!(read_small(small_path, 3).unwrap(), b"hel");
        // Beyond the shared buffer's size: a buffer of its own.
        assert_eq!(read_small(big_path, 256 * 1024).unwrap(), big);
        assert_eq!(read_small(big_path, 20_000).unwrap(), big[..20_000]);
        assert!(read_small(dir.path().join("missing").to_str().unwrap(), 64).is_err());
    }

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
        let pid = std::process::id() as i32;
        let me = info(pid).unwrap();
        assert_eq!(me.pid, pid);
        assert!(matches!(me.state, 'R' | 'S'));
        assert!(!me.comm.is_empty() && !me.kernel_thread && me.start_ticks > 0);
        let c = creds(pid).unwrap();
        assert_eq!(c.euid, nix::unistd::geteuid().as_raw());
        assert_eq!(ancestors(pid).first().map(|(p, _)| *p), Some(me.ppid));
        let d = details(pid).unwrap();
        assert!(d.ancestry.starts_with(&format!("{pid} ")));
        assert!(exe(pid).is_some());
    }

    #[test]
    fn kernel_threads_by_flag() {
        // kthreadd is pid 2 in the initial pid namespace.
        if let Some(k) = info(2).filter(|p| p.comm == "kthreadd") {
            assert!(k.kernel_thread);
        }
    }

    #[test]
    fn clips_long_text_on_a_char_boundary() {
        let long = "é".repeat(MAX_TEXT);
        let c = clip(long);
        assert!(c.len() <= MAX_TEXT && c.ends_with('…'));
        assert_eq!(clip("short".into()), "short");
    }
}
