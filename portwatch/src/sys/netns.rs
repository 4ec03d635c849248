//! Network namespaces, told apart by their cookies (`SO_NETNS_COOKIE`, Linux 5.14).
use std::os::fd::AsRawFd;

const SO_NETNS_COOKIE: libc::c_int = 71;

/// The cookie of this process's network namespace (`None` on older kernels).
pub fn own_cookie() -> Option<u64> {
    let s = std::net::UdpSocket::bind(("127.0.0.1", 0)).ok()?;
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cookie`.
    let r = unsafe { libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, SO_NETNS_COOKIE, (&mut cookie as *mut u64).cast(), &mut len) };
    (r == 0 && cookie != 0).then_some(cookie)
}

#[cfg(test)]
mod tests {
    #[test]
    fn this_namespace_has_a_cookie() {
        // Linux >= 5.14 (CI's kernels).
        let a = super::own_cookie().unwrap();
        assert_eq!(super::own_cookie(), Some(a));
    }
}
