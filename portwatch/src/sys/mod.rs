//! Seams over the operating system: /proc, mounts, clocks, netlink. Parsing is kept
//! in pure functions so it is unit-tested without root.
pub mod bindable;
pub mod bpf_iter;
pub mod caps;
pub mod cgroup;
pub mod clock;
pub mod mmap;
pub mod mounts;
pub mod netns;
pub mod notify;
pub mod pidfd;
pub mod proc;
pub mod sockdiag;

/// The errno's symbolic name, e.g. `EADDRINUSE`.
pub fn errno_name(errno: i32) -> String {
    format!("{:?}", nix::errno::Errno::from_raw(errno))
}

/// A signal's name, e.g. `SIGTERM`.
pub fn signal_name(sig: i32) -> String {
    nix::sys::signal::Signal::try_from(sig).map_or_else(|_| format!("signal {sig}"), |s| s.as_str().to_string())
}
