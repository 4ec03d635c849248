//! The `iter/task_file` program: every (process, fd) holding a socket, from one pass
//! in the kernel instead of a /proc walk.
//!
//! Loading a BPF program costs far more than running it (parsing kernel BTF, creating
//! maps, verifying), so the first run pins the iterator in bpffs under a directory
//! named after the embedded object's hash; later runs only open the pinned file and
//! read it, which runs the iterator. Pins of other builds are removed when a new one
//! is made. bpffs pins are root-only, like the iterator itself.
use std::{
    collections::hash_map::DefaultHasher,
    fs::{self, File},
    hash::{Hash, Hasher},
    io::Read,
    path::{Path, PathBuf},
};

use aya::{
    programs::{links::FdLink, Iter},
    Btf,
};
use portwatch_common::{programs, TaskSocket};

use crate::{
    ebpf::{btf as kbtf, load},
    error::{Error, Result},
    sys::{mounts, proc::FdHolder},
};

pub const PIN_ROOT: &str = "/sys/fs/bpf/portwatch";

/// Where this build's iterator is pinned.
pub fn pin_path() -> PathBuf {
    static PATH: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let mut h = DefaultHasher::new();
        load::OBJECT.hash(&mut h);
        Path::new(PIN_ROOT).join(format!("{:016x}", h.finish())).join("task_sockets")
    })
    .clone()
}

/// Whether this build's iterator is pinned (the fast path is available).
pub fn pinned() -> bool {
    pin_path().exists()
}

/// Every (process, fd, inode) for every socket on the host.
pub fn all_socket_fds() -> Result<Vec<FdHolder>> {
    let path = pin_path();
    if let Ok(f) = File::open(&path) {
        return read_iter(f);
    }
    load_and_pin(&path)
}

fn read_iter(mut f: File) -> Result<Vec<FdHolder>> {
    let mut buf = Vec::with_capacity(64 * 1024);
    f.read_to_end(&mut buf).map_err(|e| Error::io("reading the task_file iterator", e))?;
    Ok(parse_records(&buf))
}

fn load_and_pin(path: &Path) -> Result<Vec<FdHolder>> {
    load::preflight()?;
    load::raise_memlock();
    let vmlinux = kbtf::load_vmlinux().map_err(|e| Error::unsupported(e, "a kernel with CONFIG_DEBUG_INFO_BTF"))?;
    let offsets = kbtf::resolve(&vmlinux);
    if !kbtf::iter_ready(&offsets) {
        return Err(Error::unsupported("file/inode/task offsets missing from BTF", "a kernel with full BTF"));
    }
    let btf = Btf::from_sys_fs().map_err(|e| Error::unsupported(format!("kernel BTF: {e}"), "CONFIG_DEBUG_INFO_BTF"))?;
    let me = std::process::id();
    let mut ebpf = load::loader(Some(&btf), &offsets, &me, true).load(load::OBJECT).map_err(|e| load::load_error(&e))?;
    let prog: &mut Iter = ebpf
        .program_mut(programs::TASK_FILE_ITER)
        .ok_or_else(|| Error::Internal("iterator program missing".into()))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| Error::Internal(e.to_string()))?;
    prog.load("task_file", &btf).map_err(|e| Error::unsupported(format!("iter/task_file: {}", load::err_text(&e)), "Linux >= 5.8"))?;
    let link_id = prog.attach().map_err(|e| Error::unsupported(format!("iter/task_file attach: {e}"), "Linux >= 5.8"))?;
    let link = prog.take_link(link_id).map_err(|e| Error::Internal(e.to_string()))?;
    // Without bpffs the iterator still runs, once, unpinned.
    if mounts::ensure_mounted(mounts::BPFFS, "bpf").is_err() {
        return read_iter(link.into_file().map_err(|e| Error::Internal(e.to_string()))?);
    }
    pin(link, path)?;
    read_iter(File::open(path).map_err(|e| Error::io(format!("opening {}", path.display()), e))?)
}

/// Pins the link at `path`, removing pins of other builds.
fn pin(link: aya::programs::iter::IterLink, path: &Path) -> Result<()> {
    let dir = path.parent().unwrap_or(Path::new(PIN_ROOT));
    if let Ok(entries) = fs::read_dir(PIN_ROOT) {
        for e in entries.flatten() {
            if e.path() != dir {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }
    fs::create_dir_all(dir).map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let fd_link: FdLink = link.try_into().map_err(|e: aya::programs::links::LinkError| Error::Internal(e.to_string()))?;
    fd_link.pin(path).map_err(|e| Error::Internal(format!("pinning {}: {e}", path.display())))?;
    Ok(())
}

/// Parses the iterator's output: a packed array of `TaskSocket`. Threads share their
/// process's fd table, so duplicates are removed.
pub fn parse_records(buf: &[u8]) -> Vec<FdHolder> {
    let size = core::mem::size_of::<TaskSocket>();
    let mut out: Vec<FdHolder> = buf
        .chunks_exact(size)
        .map(|c| {
            // SAFETY: exact-size chunk of a POD type.
            let r: TaskSocket = unsafe { core::ptr::read_unaligned(c.as_ptr().cast()) };
            FdHolder { pid: r.tgid as i32, fd: r.fd as i32, inode: r.ino }
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_dedups_records() {
        let recs = [
            TaskSocket { tgid: 7, fd: 3, ino: 99 },
            TaskSocket { tgid: 5, fd: 4, ino: 99 },
            TaskSocket { tgid: 7, fd: 3, ino: 99 },
        ];
        // SAFETY: viewing POD structs as bytes.
        let bytes = unsafe {
            core::slice::from_raw_parts(recs.as_ptr().cast::<u8>(), core::mem::size_of_val(&recs))
        };
        let want = vec![FdHolder { pid: 5, fd: 4, inode: 99 }, FdHolder { pid: 7, fd: 3, inode: 99 }];
        assert_eq!(parse_records(bytes), want);
        // A torn trailing record is ignored.
        assert_eq!(parse_records(&bytes[..bytes.len() - 1]), want);
    }

    #[test]
    fn pin_path_is_per_build() {
        let p = pin_path();
        assert!(p.starts_with(PIN_ROOT));
        assert_eq!(p.file_name().and_then(|f| f.to_str()), Some("task_sockets"));
        assert_eq!(p, pin_path());
    }
}
