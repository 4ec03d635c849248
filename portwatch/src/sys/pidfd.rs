//! Signalling processes by pidfd: a pidfd names one process for its whole life, so a
//! pid reused after the check can never receive the signal.
use std::{
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    time::Duration,
};

use nix::sys::signal::Signal;

/// A handle on one process.
#[derive(Debug)]
pub struct PidFd {
    pub pid: i32,
    fd: OwnedFd,
}

impl PidFd {
    /// Opens a pidfd for `pid` (fails if it is gone).
    pub fn open(pid: i32) -> io::Result<Self> {
        // SAFETY: plain syscall; the returned fd is owned below.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd to us.
        Ok(Self { pid, fd: unsafe { OwnedFd::from_raw_fd(fd as i32) } })
    }

    /// Sends `sig` to exactly this process (ESRCH once it has exited).
    pub fn signal(&self, sig: Signal) -> io::Result<()> {
        // SAFETY: plain syscall on our own fd.
        let r = unsafe {
            libc::syscall(libc::SYS_pidfd_send_signal, self.fd.as_raw_fd(), sig as libc::c_int, std::ptr::null::<libc::siginfo_t>(), 0)
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// A duplicate of the process's fd `fd` (pidfd_getfd: root, or ptrace rights
    /// over it; Linux 5.6).
    pub fn get_fd(&self, fd: i32) -> io::Result<OwnedFd> {
        // SAFETY: plain syscall; the returned fd is owned below.
        let r = unsafe { libc::syscall(libc::SYS_pidfd_getfd, self.fd.as_raw_fd(), fd, 0) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just returned this fd to us.
        Ok(unsafe { OwnedFd::from_raw_fd(r as i32) })
    }

    /// Whether the process has exited (the pidfd becomes readable).
    pub fn exited(&self) -> bool {
        self.wait_exit(Duration::ZERO)
    }

    /// Waits up to `timeout` for the process to exit.
    pub fn wait_exit(&self, timeout: Duration) -> bool {
        let mut pfd = libc::pollfd { fd: self.fd.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        let ms = timeout.as_millis().min(i32::MAX as u128) as i32;
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, ms) };
        r > 0 && pfd.revents & libc::POLLIN != 0
    }
}

/// What a socket another process holds says about itself, through a duplicate of
/// its fd: local address, cookie and owner. For sockets sock_diag does not list
/// (a bound, never-listening TCP socket before Linux 6.8).
pub fn peek_socket(pid: i32, fd: i32) -> io::Result<(std::net::SocketAddr, u64, u32)> {
    let dup = PidFd::open(pid)?.get_fd(fd)?;
    let sock = socket2::SockRef::from(&dup);
    let addr = sock.local_addr()?.as_socket().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "not an inet socket"))?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt into a u64 of the size given.
    let r = unsafe { libc::getsockopt(dup.as_raw_fd(), libc::SOL_SOCKET, libc::SO_COOKIE, (&raw mut cookie).cast(), &mut len) };
    if r < 0 {
        cookie = 0;
    }
    let uid = nix::sys::stat::fstat(dup.as_raw_fd()).map(|st| st.st_uid).unwrap_or(0);
    Ok((addr, cookie, uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_and_sees_exit_of_own_child() {
        let mut child = std::process::Command::new("sleep").arg("30").spawn().unwrap();
        let p = PidFd::open(child.id() as i32).unwrap();
        assert!(!p.exited());
        p.signal(Signal::SIGKILL).unwrap();
        assert!(p.wait_exit(Duration::from_secs(5)));
        let _ = child.wait();
        // Once reaped, signalling through the pidfd cannot reach anyone else.
        assert!(p.signal(Signal::SIGTERM).is_err());
    }
}
