//! A cgroup v2 of its own for each `run`: everything the command starts lands in
//! it and cannot leave it without privilege, so the run ends the whole tree; a run
//! that was killed leaves a cgroup named after it that `cleanup` and the agent find.
use std::{
    fs::{self, File},
    io::{self, Write},
    os::fd::{AsRawFd, RawFd},
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use super::{mounts, proc};

/// The prefix of a run's cgroup name: `portwatch-run-PID-STARTTICKS`.
pub const RUN_PREFIX: &str = "portwatch-run-";

/// How deep [`find_runs`] looks below the cgroup root, and how many directories it
/// visits at most.
const MAX_DEPTH: usize = 12;
const MAX_DIRS: usize = 20_000;

/// The supervisor a run cgroup is named after: its pid and start time (clock ticks
/// since boot), so a reused pid is never mistaken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub struct RunOwner {
    pub pid: i32,
    pub start_ticks: u64,
}

impl RunOwner {
    pub fn name(self) -> String {
        format!("{RUN_PREFIX}{}-{}", self.pid, self.start_ticks)
    }

    /// From a cgroup directory name made by [`RunOwner::name`].
    pub fn parse(name: &str) -> Option<Self> {
        let (pid, ticks) = name.strip_prefix(RUN_PREFIX)?.split_once('-')?;
        Some(Self { pid: pid.parse().ok().filter(|p| *p > 0)?, start_ticks: ticks.parse().ok()? })
    }

    /// Whether the supervisor is still running (same pid, same start).
    pub fn alive(self) -> bool {
        proc::start_and_state(self.pid).is_some_and(|(start, state)| start == self.start_ticks && state != 'Z')
    }
}

/// A run's own cgroup.
#[derive(Debug)]
pub struct RunCgroup {
    pub dir: PathBuf,
    /// `cgroup.procs`, opened before the command is forked: the child writes itself
    /// into it between fork and exec.
    procs: File,
}

impl RunCgroup {
    /// Creates `<this process's cgroup>/portwatch-run-PID-TICKS`. Fails where cgroup
    /// v2 is missing or not writable (the caller then falls back to the subreaper).
    pub fn create(owner: RunOwner) -> io::Result<Self> {
        let root = mounts::cgroup2_root().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 mount"))?;
        let own = proc::cgroup_v2_path(&fs::read_to_string("/proc/self/cgroup")?);
        let dir = root.join(own.trim_start_matches('/')).join(owner.name());
        fs::create_dir(&dir)?;
        match File::options().write(true).open(dir.join("cgroup.procs")) {
            Ok(procs) => Ok(Self { dir, procs }),
            Err(e) => {
                let _ = fs::remove_dir(&dir);
                Err(e)
            }
        }
    }

    /// The fd a forked child writes "0" to, to move itself in (async-signal-safe).
    pub fn procs_fd(&self) -> RawFd {
        self.procs.as_raw_fd()
    }

    /// Every process in the cgroup (and cgroups below it).
    pub fn pids(&self) -> Vec<i32> {
        pids_in(&self.dir)
    }

    /// Whether `pid` is in this cgroup (or below it).
    pub fn contains(&self, pid: i32) -> bool {
        let Some(root) = mounts::cgroup2_root() else { return false };
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/cgroup")) else { return false };
        let path = root.join(proc::cgroup_v2_path(&text).trim_start_matches('/'));
        path.starts_with(&self.dir)
    }

    /// Removes the cgroup once it is empty (waits up to `wait` for exiting members).
    pub fn remove(&self, wait: Duration) -> io::Result<()> {
        remove(&self.dir, wait)
    }

    /// The cgroup's id (its directory's inode number) and its depth below the
    /// cgroup v2 mount's root, as `bpf_get_current_ancestor_cgroup_id` counts.
    pub fn id_and_level(&self) -> io::Result<(u64, u32)> {
        use std::os::unix::fs::MetadataExt;
        let root = mounts::cgroup2_root().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 mount"))?;
        let level =
            level(&root, &self.dir).ok_or_else(|| io::Error::other(format!("{} is not below {}", self.dir.display(), root.display())))?;
        Ok((fs::metadata(&self.dir)?.ino(), level))
    }

    /// The directory's name (`portwatch-run-PID-TICKS`).
    pub fn name(&self) -> String {
        self.dir.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default()
    }
}

/// How many levels `dir` is below the cgroup v2 `root` (the root itself is 0).
pub fn level(root: &Path, dir: &Path) -> Option<u32> {
    dir.strip_prefix(root).ok().map(|p| p.components().count() as u32)
}

/// The run cgroups a process's cgroup v2 path (`/proc/PID/cgroup`'s `0::` line)
/// passes through, innermost first: a `run` inside another run's job finds it here.
pub fn runs_in_path(path: &str) -> Vec<String> {
    path.rsplit('/').filter(|c| RunOwner::parse(c).is_some()).map(String::from).collect()
}

/// The run cgroups the calling process is in, innermost first.
pub fn own_runs() -> Vec<String> {
    fs::read_to_string("/proc/self/cgroup").map(|t| runs_in_path(&proc::cgroup_v2_path(&t))).unwrap_or_default()
}

/// Every pid in `dir`'s `cgroup.procs` and in those of the cgroups below it.
pub fn pids_in(dir: &Path) -> Vec<i32> {
    let mut out: Vec<i32> =
        fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().split_whitespace().filter_map(|p| p.parse().ok()).collect();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                out.extend(pids_in(&e.path()));
            }
        }
    }
    out.sort_unstable();
    out.dedup();
    out
}

/// `cgroup.kill` (Linux 5.14): SIGKILL to every process in the cgroup at once,
/// including ones forked meanwhile.
pub fn kill(dir: &Path) -> io::Result<()> {
    File::options().write(true).open(dir.join("cgroup.kill"))?.write_all(b"1")
}

/// Removes an empty cgroup (and empty cgroups below it), waiting up to `wait` for
/// its last members to be reaped.
pub fn remove(dir: &Path, wait: Duration) -> io::Result<()> {
    let until = Instant::now() + wait;
    loop {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                if e.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = remove(&e.path(), Duration::ZERO);
                }
            }
        }
        match fs::remove_dir(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(e) if Instant::now() >= until => return Err(e),
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// A run cgroup found on the host.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct FoundRun {
    pub dir: PathBuf,
    pub owner: RunOwner,
    /// The uid owning the directory (who created it).
    pub uid: u32,
}

/// Every run cgroup under the cgroup v2 root (bounded walk).
pub fn find_runs() -> Vec<FoundRun> {
    let Some(root) = mounts::cgroup2_root() else { return Vec::new() };
    let mut out = Vec::new();
    let mut stack = vec![(root, 0usize)];
    let mut visited = 0;
    while let Some((dir, depth)) = stack.pop() {
        visited += 1;
        if visited > MAX_DIRS {
            break;
        }
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        for e in rd.flatten() {
            let Ok(meta) = e.metadata() else { continue };
            if !meta.is_dir() {
                continue;
            }
            let name = e.file_name();
            match RunOwner::parse(&name.to_string_lossy()) {
                Some(owner) => out.push(FoundRun { dir: e.path(), owner, uid: std::os::unix::fs::MetadataExt::uid(&meta) }),
                None if depth < MAX_DEPTH => stack.push((e.path(), depth + 1)),
                None => {}
            }
        }
    }
    out
}

/// A cgroup's id (its directory's inode number, as `bpf_get_current_cgroup_id`
/// gives it) and its depth below the cgroup v2 root (the root is 0).
pub fn id_and_level(dir: &Path) -> io::Result<(u64, u32)> {
    use std::os::unix::fs::MetadataExt;
    let root = mounts::cgroup2_root().ok_or_else(|| io::Error::new(io::ErrorKind::NotFound, "no cgroup v2 mount"))?;
    let meta = fs::metadata(dir)?;
    if !meta.is_dir() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a cgroup directory"));
    }
    let rel = dir
        .strip_prefix(&root)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, format!("not under the cgroup v2 root {}", root.display())))?;
    if !dir.join("cgroup.procs").exists() {
        return Err(io::Error::new(io::ErrorKind::InvalidInput, "not a cgroup directory (no cgroup.procs)"));
    }
    Ok((meta.ino(), rel.components().count() as u32))
}

/// The cgroup v2 directory of `pid`.
pub fn of_pid(pid: i32) -> Option<PathBuf> {
    let root = mounts::cgroup2_root()?;
    let text = fs::read_to_string(format!("/proc/{pid}/cgroup")).ok()?;
    Some(root.join(proc::cgroup_v2_path(&text).trim_start_matches('/')))
}

/// The cgroup v2 directory whose id is `id`, opened by its id (`open_by_handle_at`
/// with a kernfs file handle: no walk; needs CAP_DAC_READ_SEARCH). `Err` with
/// ESTALE when no cgroup has that id (any more).
pub fn path_by_id(id: u64) -> io::Result<PathBuf> {
    use std::os::fd::{FromRawFd, OwnedFd};
    /// `FILEID_KERNFS`: a kernfs node named by its 64-bit id.
    const FILEID_KERNFS: i32 = 0xfe;
    #[repr(C)]
    struct KernfsHandle {
        handle_bytes: u32,
        handle_type: i32,
        id: u64,
    }
    let root = File::open(mounts::cgroup2_root().ok_or_else(|| io::Error::from(io::ErrorKind::NotFound))?)?;
    let mut h = KernfsHandle { handle_bytes: 8, handle_type: FILEID_KERNFS, id };
    // SAFETY: `h` is a `struct file_handle` with 8 bytes of handle; the kernel reads it.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_open_by_handle_at,
            root.as_raw_fd(),
            (&mut h as *mut KernfsHandle).cast::<libc::c_void>(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a new descriptor that we own.
    let dir = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    fs::read_link(format!("/proc/self/fd/{}", dir.as_raw_fd()))
}

/// The cgroup v2 directory whose id is `id`, if it still exists: opened by its id
/// ([`path_by_id`]), or found by a bounded walk where the kernel cannot open it so.
pub fn find_by_id(id: u64) -> Option<PathBuf> {
    match path_by_id(id) {
        Ok(p) => Some(p),
        Err(e) if e.raw_os_error() == Some(libc::ESTALE) => None,
        Err(_) => walk_for_id(id),
    }
}

/// [`find_by_id`]'s walk: every directory down to [`MAX_DEPTH`], at most [`MAX_DIRS`].
fn walk_for_id(id: u64) -> Option<PathBuf> {
    use std::os::unix::fs::MetadataExt;
    let root = mounts::cgroup2_root()?;
    let mut stack = vec![(root, 0usize)];
    let mut visited = 0;
    while let Some((dir, depth)) = stack.pop() {
        if fs::metadata(&dir).is_ok_and(|m| m.ino() == id) {
            return Some(dir);
        }
        visited += 1;
        if visited > MAX_DIRS || depth >= MAX_DEPTH {
            continue;
        }
        let Ok(rd) = fs::read_dir(&dir) else { continue };
        stack.extend(rd.flatten().filter(|e| e.file_type().is_ok_and(|t| t.is_dir())).map(|e| (e.path(), depth + 1)));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_names_round_trip() {
        let o = RunOwner { pid: 4242, start_ticks: 123_456 };
        assert_eq!(o.name(), "portwatch-run-4242-123456");
        assert_eq!(RunOwner::parse(&o.name()), Some(o));
        assert_eq!(RunOwner::parse("portwatch-run-0-1"), None);
        assert_eq!(RunOwner::parse("portwatch-run-x-1"), None);
        assert_eq!(RunOwner::parse("portwatch-run-12"), None);
        assert_eq!(RunOwner::parse("user.slice"), None);
    }

    #[test]
    fn levels_and_enclosing_runs() {
        let root = Path::new("/sys/fs/cgroup");
        assert_eq!(level(root, root), Some(0));
        assert_eq!(level(root, Path::new("/sys/fs/cgroup/user.slice/portwatch-run-1-2")), Some(2));
        assert_eq!(level(root, Path::new("/elsewhere")), None);
        assert_eq!(
            runs_in_path("/user.slice/portwatch-run-10-20/portwatch-run-30-40/x"),
            vec!["portwatch-run-30-40".to_string(), "portwatch-run-10-20".to_string()]
        );
        assert!(runs_in_path("/").is_empty());
    }
}
