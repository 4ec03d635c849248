//! Seams over the operating system: /proc, mounts, clocks, netlink. Parsing is kept
//! in pure functions so it is unit-tested without root.
pub mod caps;
pub mod clock;
pub mod mmap;
pub mod mounts;
pub mod netns;
pub mod pidfd;
pub mod proc;
pub mod sockdiag;

/// The errno's symbolic name, e.g. `EADDRINUSE`.
pub fn errno_name(errno: i32) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(errno))
}
