//! What this host supports, tried for real (`doctor`): privileges, BTF, mounts,
//! every hook type loaded and attached, and a self-test of the observer on a
//! throwaway process.
use std::fs::File;

use portwatch_common::{config, maps, probe, programs, KernelOffsets};
use serde::Serialize;

use crate::{
    ebpf::{
        btf as kbtf,
        events::decode,
        loader::{Loader, Role, Sizes, HOOKS},
    },
    error::exit,
    model::event::EventKind,
    sys::{caps, mounts},
};

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: &'static str,
    pub ok: bool,
    pub detail: String,
}

#[derive(Debug, Serialize)]
pub struct HookProbe {
    pub hook: String,
    pub supported: bool,
    pub used_for: &'static str,
    pub error: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub checks: Vec<Check>,
    pub hooks: Vec<HookProbe>,
    pub btf_offsets: Vec<(String, Option<u32>)>,
    /// Offsets this kernel's BTF lacks, with the first missing step of each path.
    pub missing_offsets: Vec<(String, String)>,
    /// Errors each kernel program counted during the self-test.
    pub kernel_errors: Vec<(&'static str, u64)>,
    /// `watch` / `agent` can run: the bind hooks attach.
    pub observer_ready: bool,
    /// `who` can use the BPF iterator (otherwise it walks /proc).
    pub iterator_ready: bool,
    /// `who` can use the holders pass (`iter/task`), its fast path.
    pub holders_ready: bool,
    /// `run --isolate-ports` can work: every remap hook attaches.
    pub remap_ready: bool,
}

impl Report {
    pub fn exit_code(&self) -> u8 {
        if self.observer_ready {
            exit::OK
        } else if !self.checks.iter().any(|c| c.name == "privileges" && c.ok) {
            exit::PRIVILEGE
        } else {
            exit::UNSUPPORTED
        }
    }
}

fn check(name: &'static str, ok: bool, detail: impl Into<String>) -> Check {
    Check { name, ok, detail: detail.into() }
}

pub fn run() -> Report {
    let mut r = Report {
        checks: Vec::new(),
        hooks: Vec::new(),
        btf_offsets: Vec::new(),
        missing_offsets: Vec::new(),
        kernel_errors: Vec::new(),
        observer_ready: false,
        iterator_ready: false,
        holders_ready: false,
        remap_ready: false,
    };
    let uname = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    r.checks.push(check("kernel", true, uname));
    let missing = caps::current().missing_for_observer();
    r.checks.push(check(
        "privileges",
        missing.is_empty(),
        if missing.is_empty() {
            format!("euid {} with the needed capabilities", nix::unistd::geteuid())
        } else {
            format!("missing {} (run as root)", missing.join(", "))
        },
    ));
    let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown (securityfs not mounted); fentry/lsm results below tell".into());
    r.checks.push(check("lockdown", true, lockdown));
    let cg = mounts::cgroup2_root();
    r.checks.push(check("cgroup v2", cg.is_some(), cg.as_ref().map_or("not mounted".into(), |p| p.display().to_string())));
    // Classic tracepoints need tracefs: mount it (as `setup` does) so they can be tried.
    r.checks.push(match mounts::ensure_mounted(mounts::TRACEFS, "tracefs") {
        Ok(true) => check("tracefs", true, format!("{} (mounted by portwatch)", mounts::TRACEFS)),
        Ok(false) => check("tracefs", true, mounts::TRACEFS),
        Err(e) => check("tracefs", false, format!("not mounted and cannot mount ({e}); only classic tracepoints need it")),
    });
    let bpffs = mounts::is_mounted(mounts::BPFFS, "bpf");
    r.checks.push(check(
        "bpffs",
        bpffs,
        if bpffs {
            mounts::BPFFS.to_string()
        } else {
            format!("not mounted (needed only for pinning: mount -t bpf bpf {})", mounts::BPFFS)
        },
    ));
    let loader = match Loader::new() {
        Ok(l) => l,
        Err(e) => {
            // Without privilege: still say what BTF offers.
            let raw = std::fs::read(kbtf::VMLINUX);
            if let Ok(b) = raw.as_deref().map_err(|e| e.to_string()).and_then(|raw| kbtf::Btf::parse(raw).map_err(|e| e.to_string())) {
                r.btf_offsets = kbtf::listing(&kbtf::resolve::<KernelOffsets>(&b));
            }
            r.checks.push(check("bpf", false, e.to_string()));
            return r;
        }
    };
    r.checks.push(check(
        "memlock",
        true,
        if loader.memlock_raised {
            "RLIMIT_MEMLOCK raised"
        } else {
            "RLIMIT_MEMLOCK not raisable (no CAP_SYS_RESOURCE); fine on kernels >= 5.11, which charge BPF memory to the memory cgroup"
        },
    ));
    r.checks.push(check("btf", loader.btf().is_ok(), loader.btf().map_or_else(String::from, |_| kbtf::VMLINUX.to_string())));
    if loader.holder_offsets.net_udp_table == u32::MAX {
        let found = loader.udp_table != 0;
        r.checks.push(check(
            "udp table",
            found,
            if found {
                format!("global udp_table at {:#x} (kernel before 6.2: no net->ipv4.udp_table)", loader.udp_table)
            } else {
                "neither net->ipv4.udp_table (BTF) nor the global udp_table (/proc/kallsyms) found".to_string()
            },
        ));
    }
    r.btf_offsets = kbtf::listing(&loader.offsets);
    r.btf_offsets.extend(kbtf::listing(&loader.holder_offsets).into_iter().map(|(n, v)| (format!("holders.{n}"), v)));
    r.missing_offsets = loader.missing.iter().map(|(o, s)| (o.to_string(), s.clone())).collect();
    let mut ebpf = match loader.load(Sizes { small: true, ring_bytes: Some(64 * 4096) }) {
        Ok(e) => e,
        Err(e) => {
            r.checks.push(check("bpf", false, e.to_string()));
            return r;
        }
    };
    r.checks.push(check("bpf", true, "maps created, object loaded"));
    r.hooks.push(HookProbe { hook: "ringbuf".into(), supported: true, used_for: "event transport", error: None });
    let cg_file = cg.as_deref().map(File::open).and_then(std::result::Result::ok);
    r.remap_ready = true;
    for h in HOOKS {
        let res = loader.attach(&mut ebpf, h, cg_file.as_ref());
        match (h.role, h.program) {
            (Role::Observer { required: true }, _) => r.observer_ready = res.is_ok(),
            (_, programs::TASK_FILE_ITER) => r.iterator_ready = res.is_ok(),
            (_, programs::HOLDERS_ITER) => r.holders_ready = res.is_ok(),
            (Role::Remap, _) => r.remap_ready &= res.is_ok(),
            _ => {}
        }
        r.hooks.push(HookProbe { hook: h.hook.to_string(), supported: res.is_ok(), used_for: h.purpose, error: res.err() });
    }
    if r.observer_ready {
        r.checks.push(self_test(&mut ebpf));
    }
    if r.holders_ready {
        // Pins the iterators as `who` would, then runs the holders program over
        // this process alone.
        let ready =
            crate::ebpf::iter::ensure_pinned(&loader).map_err(|e| e.to_string()).and_then(|()| crate::ebpf::iter::candidates_supported());
        let waiters = ready.is_ok().then(crate::ebpf::iter::waiters_supported);
        r.checks.push(match ready {
            Ok(()) => check(
                "who candidates",
                true,
                "a repeated who checks the port's last holders, not every task (iter/task with a task filter)",
            ),
            // An optimization: its absence is a note, not a failure.
            Err(why) => check("who candidates", true, format!("unavailable, every who visits every task: {why}")),
        });
        if let Some(waiters) = waiters {
            r.checks.push(match waiters {
                Ok(()) => check(
                    "who waiters",
                    true,
                    "a first who checks the tasks waiting on the socket (accept, poll/select, epoll_wait) and their parents",
                ),
                Err(why) => check("who waiters", true, format!("unavailable, a first who on an idle server may visit every task: {why}")),
            });
        }
    }
    r.kernel_errors = probe::NAMES
        .iter()
        .enumerate()
        .map(|(i, n)| {
            let sum = ebpf
                .map(maps::ERRORS)
                .and_then(|m| aya::maps::PerCpuArray::<_, u64>::try_from(m).ok())
                .and_then(|a| a.get(&(i as u32), 0).ok())
                .map_or(0, |v| v.iter().sum());
            (*n, sum)
        })
        .collect();
    // Dropping `ebpf` detaches and unloads everything tried above.
    r
}

/// A throwaway child binds, listens, connects to itself and closes, with every port
/// watched: the observer must report it, and no kernel read may fail.
fn self_test(ebpf: &mut aya::Ebpf) -> Check {
    let watch_all =
        ebpf.map_mut(maps::CONFIG).and_then(|m| aya::maps::Array::<_, u64>::try_from(m).ok()).map(|mut a| a.set(config::WATCH_ALL, 1, 0));
    if !matches!(watch_all, Some(Ok(()))) {
        return check("self-test", false, "cannot set watch-all in the config map");
    }
    // SAFETY: doctor runs no other threads; the child only makes syscalls and exits.
    let child = match unsafe { nix::unistd::fork() } {
        Ok(nix::unistd::ForkResult::Child) => {
            // A named port (bind(0) has no attempt to report): one the kernel just
            // chose, free again once its first listener is gone.
            let ok = std::net::TcpListener::bind("127.0.0.1:0")
                .and_then(|l| l.local_addr())
                .and_then(std::net::TcpListener::bind)
                .and_then(|l| l.local_addr().and_then(std::net::TcpStream::connect).map(|c| (l, c)))
                .and_then(|(l, c)| l.accept().map(|a| (l, c, a)))
                .is_ok();
            // SAFETY: ends the forked child at once, without running the parent's exit handlers.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) }
        }
        Ok(nix::unistd::ForkResult::Parent { child }) => child,
        Err(e) => return check("self-test", false, format!("fork: {e}")),
    };
    let _ = nix::sys::wait::waitpid(child, None);
    let Some(mut ring) = ebpf.map_mut(maps::EVENTS).and_then(|m| aya::maps::RingBuf::try_from(m).ok()) else {
        return check("self-test", false, "no ring buffer");
    };
    let mut seen = Vec::new();
    while let Some(item) = ring.next() {
        if let Ok(ev) = decode(&item) {
            if ev.task.as_ref().is_none_or(|t| t.pid == child.as_raw() as u32) {
                seen.push(ev.kind);
            }
        }
    }
    let want = [EventKind::BindAttempt, EventKind::Bind, EventKind::Listen, EventKind::Accept, EventKind::Close];
    let missing: Vec<String> = want.iter().filter(|k| !seen.contains(k)).map(|k| format!("{k:?}")).collect();
    if missing.is_empty() {
        check("self-test", true, format!("a test process's bind, listen, accept and close were all seen ({} events)", seen.len()))
    } else {
        check("self-test", false, format!("not seen from a test process: {}", missing.join(", ")))
    }
}
