//! A pinned `iter/task` program run over one process's tasks only: the kernel's
//! task filter for iterator links (`bpf_iter_link_info.task.pid`, Linux >= 6.1).
//! aya 0.14 creates iterator links without link info, so the three `bpf(2)`
//! commands are made here: `BPF_OBJ_GET` of the pinned program, `BPF_LINK_CREATE`
//! with the filter, `BPF_ITER_CREATE`; then the iterator's output is read.
use std::{
    ffi::CString,
    fs::File,
    io::{self, Read},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
/// `enum bpf_attach_type`: BPF_TRACE_ITER.
const BPF_TRACE_ITER: u32 = 28;

/// `union bpf_attr`, large enough for the commands used here (the kernel checks that
/// the bytes past what it knows are zero).
#[repr(C, align(8))]
struct Attr([u8; 128]);

impl Attr {
    fn new() -> Self {
        Self([0; 128])
    }

    fn put_u32(&mut self, at: usize, v: u32) {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }

    fn put_u64(&mut self, at: usize, v: u64) {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
    }
}

fn bpf(cmd: libc::c_long, attr: &mut Attr) -> io::Result<OwnedFd> {
    // SAFETY: `attr` is a zeroed bpf_attr of 128 bytes with the command's fields set;
    // the kernel reads (and for these commands does not write) at most that much.
    let r = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr.0.as_mut_ptr(), attr.0.len() as libc::c_uint) };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: these commands return a new file descriptor that we now own.
    Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
}

/// A pinned BPF program, opened.
pub struct PinnedProgram(OwnedFd);

impl PinnedProgram {
    pub fn open(path: &Path) -> io::Result<Self> {
        use std::os::unix::ffi::OsStrExt;
        let c = CString::new(path.as_os_str().as_bytes()).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
        let mut a = Attr::new();
        // struct { __aligned_u64 pathname; __u32 bpf_fd; __u32 file_flags; ... }
        a.put_u64(0, c.as_ptr() as u64);
        bpf(BPF_OBJ_GET, &mut a).map(Self)
    }

    /// Runs the iterator over the tasks of process `pid` (init pid namespace) and
    /// returns its output. `EINVAL` from a kernel without the task filter.
    pub fn run_for_process(&self, pid: u32, buf: &mut Vec<u8>) -> io::Result<()> {
        // union bpf_iter_link_info: task = { __u32 tid; __u32 pid; __u32 pid_fd; }
        // (the union is 16 bytes: its cgroup member has a u64).
        let mut info = [0u32; 4];
        info[1] = pid;
        let mut a = Attr::new();
        // link_create: prog_fd, target_fd, attach_type, flags, then
        // { __aligned_u64 iter_info; __u32 iter_info_len; }
        a.put_u32(0, self.0.as_raw_fd() as u32);
        a.put_u32(8, BPF_TRACE_ITER);
        a.put_u64(16, info.as_ptr() as u64);
        a.put_u32(24, core::mem::size_of_val(&info) as u32);
        let link = bpf(BPF_LINK_CREATE, &mut a)?;
        let mut a = Attr::new();
        // iter_create: { __u32 link_fd; __u32 flags; }
        a.put_u32(0, link.as_raw_fd() as u32);
        let iter = bpf(BPF_ITER_CREATE, &mut a)?;
        File::from(iter).read_to_end(buf).map(|_| ())
    }
}
