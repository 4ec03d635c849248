//! Loading the embedded kernel object, once per process, the same way for the
//! observer, the `who` iterators and `doctor`: privileges checked first, memlock,
//! kernel BTF read once (aya gets it for loading, [`btf`](super::btf) resolves the
//! offsets from the same bytes), globals set, and every hook attached by one table,
//! [`HOOKS`].
use std::fs::File;

use aya::{
    programs::{
        iter::IterLink, BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockAddr, FEntry, Iter, KProbe, Lsm, Program, ProgramError,
        RawTracePoint, TracePoint,
    },
    Btf, Ebpf, EbpfLoader, Endianness,
};
use portwatch_common::{globals, maps, offsets::Offsets, programs, HolderOffsets, KernelOffsets};

use super::btf::{self as kbtf, VMLINUX};
use crate::{
    error::{Error, Result},
    sys::caps,
};

/// The kernel object built by `build.rs`, embedded so the binary is self-contained.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portwatch"));

/// How a program attaches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Attach {
    /// `cgroup/bind4`, `cgroup/bind6` (to the root cgroup v2).
    CgroupSockAddr,
    /// `cgroup/post_bind4|6`, `cgroup/sock_release`.
    CgroupSock,
    TpBtf(&'static str),
    /// A BPF iterator over this target (`task`, `task_file`); its link is pinned.
    Iter(&'static str),
    FEntry(&'static str),
    Lsm(&'static str),
    KProbe(&'static str),
    TracePoint(&'static str, &'static str),
    RawTp(&'static str),
}

/// Who uses a hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// The observer (`watch`, `agent`, `cleanup`); `required` ones must attach.
    Observer { required: bool },
    /// `who`'s iterators.
    Who,
    /// Leases (`run --lease`, `lease add`): loaded by `ebpf::lease`, one pair per
    /// holder; `doctor` tries the IPv4 one of each build.
    Lease,
    /// Loaded by `doctor` only, to tell what this host supports.
    Probe,
    /// `run --isolate-ports`: one set per run, see [`super::remap`].
    Remap,
}

/// One kernel program and where it goes.
#[derive(Clone, Copy, Debug)]
pub struct Hook {
    pub program: &'static str,
    /// As `doctor` names it.
    pub hook: &'static str,
    pub attach: Attach,
    pub role: Role,
    pub purpose: &'static str,
}

/// Every program in the object.
pub const HOOKS: &[Hook] = &[
    Hook {
        program: programs::BIND4,
        hook: "cgroup/bind4",
        attach: Attach::CgroupSockAddr,
        role: Role::Observer { required: false },
        purpose: "bind attempts (IPv4)",
    },
    Hook {
        program: programs::BIND6,
        hook: "cgroup/bind6",
        attach: Attach::CgroupSockAddr,
        role: Role::Observer { required: false },
        purpose: "bind attempts (IPv6)",
    },
    Hook {
        program: programs::POST_BIND4,
        hook: "cgroup/post_bind4",
        attach: Attach::CgroupSock,
        role: Role::Observer { required: true },
        purpose: "successful binds with the real port (IPv4)",
    },
    Hook {
        program: programs::POST_BIND6,
        hook: "cgroup/post_bind6",
        attach: Attach::CgroupSock,
        role: Role::Observer { required: false },
        purpose: "successful binds with the real port (IPv6)",
    },
    Hook {
        program: programs::SOCK_RELEASE,
        hook: "cgroup/sock_release",
        attach: Attach::CgroupSock,
        role: Role::Observer { required: false },
        purpose: "closes of watched sockets",
    },
    Hook {
        program: programs::STATE_BTF,
        hook: "tp_btf/inet_sock_set_state",
        attach: Attach::TpBtf("inet_sock_set_state"),
        role: Role::Observer { required: false },
        purpose: "listen starts and connections queued for accept",
    },
    Hook {
        program: programs::HOLDERS_ITER,
        hook: "iter/task + bpf_loop",
        attach: Attach::Iter("task"),
        role: Role::Who,
        purpose: "`who` fast path: holders of the asked ports, one visit per task",
    },
    Hook {
        program: programs::TASK_FILE_ITER,
        hook: "iter/task_file",
        attach: Attach::Iter("task_file"),
        role: Role::Who,
        purpose: "`who` fallback: every process holding a socket",
    },
    Hook {
        program: programs::LEASE4,
        hook: "cgroup/bind4 + bpf_set_retval",
        attach: Attach::CgroupSockAddr,
        role: Role::Lease,
        purpose: "leases (run --lease, lease add): refused binds fail with EADDRINUSE",
    },
    Hook {
        program: programs::LEASE4_EPERM,
        hook: "cgroup/bind4 (refusing)",
        attach: Attach::CgroupSockAddr,
        role: Role::Lease,
        purpose: "leases where bpf_set_retval is missing (Linux < 5.18): refused binds fail with EPERM",
    },
    Hook {
        program: programs::PROBE_FENTRY,
        hook: "fentry",
        attach: Attach::FEntry("inet_listen"),
        role: Role::Probe,
        purpose: "not used (portwatch needs no fentry)",
    },
    Hook { program: programs::PROBE_LSM, hook: "lsm", attach: Attach::Lsm("socket_listen"), role: Role::Probe, purpose: "not used" },
    Hook { program: programs::PROBE_KPROBE, hook: "kprobe", attach: Attach::KProbe("inet_listen"), role: Role::Probe, purpose: "not used" },
    Hook {
        program: programs::PROBE_TRACEPOINT,
        hook: "tracepoint/sock/inet_sock_set_state",
        attach: Attach::TracePoint("sock", "inet_sock_set_state"),
        role: Role::Probe,
        purpose: "not used (tp_btf preferred)",
    },
    Hook {
        program: programs::PROBE_RAW_TP,
        hook: "raw_tp/inet_sock_set_state",
        attach: Attach::RawTp("inet_sock_set_state"),
        role: Role::Probe,
        purpose: "not used (tp_btf preferred)",
    },
    Hook {
        program: programs::REMAP_BIND4,
        hook: "cgroup/bind4 (remap)",
        attach: Attach::CgroupSockAddr,
        role: Role::Remap,
        purpose: "`run --isolate-ports`: binds to an isolated port go to the job's real port (IPv4)",
    },
    Hook {
        program: programs::REMAP_BIND6,
        hook: "cgroup/bind6 (remap)",
        attach: Attach::CgroupSockAddr,
        role: Role::Remap,
        purpose: "`run --isolate-ports`: binds to an isolated port go to the job's real port (IPv6)",
    },
    Hook {
        program: programs::REMAP_CONNECT4,
        hook: "cgroup/connect4 (remap)",
        attach: Attach::CgroupSockAddr,
        role: Role::Remap,
        purpose: "`run --isolate-ports`: a job's local connects to an isolated port reach its real port (IPv4)",
    },
    Hook {
        program: programs::REMAP_CONNECT6,
        hook: "cgroup/connect6 (remap)",
        attach: Attach::CgroupSockAddr,
        role: Role::Remap,
        purpose: "`run --isolate-ports`: a job's local connects to an isolated port reach its real port (IPv6)",
    },
    Hook {
        program: programs::REMAP_GETSOCKNAME4,
        hook: "cgroup/getsockname4 (remap)",
        attach: Attach::CgroupSockAddr,
        role: Role::Remap,
        purpose: "`run --isolate-ports`: a job sees its isolated port as its own address (IPv4)",
    },
    Hook {
        program: programs::REMAP_GETSOCKNAME6,
        hook: "cgroup/getsockname6 (remap)",
        attach: Attach::CgroupSockAddr,
        role: Role::Remap,
        purpose: "`run --isolate-ports`: a job sees its isolated port as its own address (IPv6)",
    },
    Hook {
        program: programs::REMAP_GETPEERNAME4,
        hook: "cgroup/getpeername4 (remap)",
        attach: Attach::CgroupSockAddr,
        role: Role::Remap,
        purpose: "`run --isolate-ports`: a job sees its isolated port as its peer's (IPv4)",
    },
    Hook {
        program: programs::REMAP_GETPEERNAME6,
        hook: "cgroup/getpeername6 (remap)",
        attach: Attach::CgroupSockAddr,
        role: Role::Remap,
        purpose: "`run --isolate-ports`: a job sees its isolated port as its peer's (IPv6)",
    },
    Hook {
        program: programs::REMAP_SENDMSG4,
        hook: "cgroup/sendmsg4 (remap)",
        attach: Attach::CgroupSockAddr,
        role: Role::Remap,
        purpose: "`run --isolate-ports`: a job's UDP datagrams to an isolated local port (IPv4)",
    },
    Hook {
        program: programs::REMAP_SENDMSG6,
        hook: "cgroup/sendmsg6 (remap)",
        attach: Attach::CgroupSockAddr,
        role: Role::Remap,
        purpose: "`run --isolate-ports`: a job's UDP datagrams to an isolated local port (IPv6)",
    },
    Hook {
        program: programs::REMAP_RECVMSG4,
        hook: "cgroup/recvmsg4 (remap)",
        attach: Attach::CgroupSockAddr,
        role: Role::Remap,
        purpose: "`run --isolate-ports`: UDP senders on a real port seen as the isolated one (IPv4)",
    },
    Hook {
        program: programs::REMAP_RECVMSG6,
        hook: "cgroup/recvmsg6 (remap)",
        attach: Attach::CgroupSockAddr,
        role: Role::Remap,
        purpose: "`run --isolate-ports`: UDP senders on a real port seen as the isolated one (IPv6)",
    },
];

/// The hook of a program.
pub fn hook(program: &str) -> Option<&'static Hook> {
    HOOKS.iter().find(|h| h.program == program)
}

/// Loads the object for programs that read no kernel structs (the lease
/// programs): no BTF is parsed and no offset resolved (a [`Loader`] does both),
/// the events ring has `ring_bytes`, and every map only those programs' callers
/// use has one entry. Checks privileges first.
pub fn load_without_btf(ring_bytes: u32) -> Result<Ebpf> {
    preflight()?;
    raise_memlock();
    let mut l = EbpfLoader::new();
    l.btf(None);
    l.map_max_entries(maps::EVENTS, ring_bytes);
    for small in [maps::TRACKED, maps::QUEUED, maps::PORTS, maps::HOLDER_QUERY] {
        l.map_max_entries(small, 1);
    }
    l.load(OBJECT).map_err(|e| Error::bpf("loading the BPF object", e))
}

/// Checks privileges before touching BPF, so the user gets one clear line.
pub fn preflight() -> Result<()> {
    let missing = caps::current().missing_for_observer();
    if missing.is_empty() {
        return Ok(());
    }
    Err(Error::privilege(format!("the eBPF observer needs {}", missing.join(" and ")), "run as root, e.g. `sudo portwatch ...`"))
}

/// Tries to lift RLIMIT_MEMLOCK. Kernels >= 5.11 charge BPF memory to the memory
/// cgroup instead, so failure (no CAP_SYS_RESOURCE) is not an error.
pub fn raise_memlock() -> bool {
    use nix::sys::resource::{setrlimit, Resource, RLIM_INFINITY};
    setrlimit(Resource::RLIMIT_MEMLOCK, RLIM_INFINITY, RLIM_INFINITY).is_ok()
}

/// Which maps to size, and how, for one load.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sizes {
    /// One-shot use (the iterators, `doctor`): the big maps shrink so loading is cheap.
    pub small: bool,
    /// Ring buffer bytes (a power of two); default `EVENTS_BYTES`.
    pub ring_bytes: Option<u32>,
}

/// The kernel object's loader for this process: BTF read and offsets resolved once.
pub struct Loader {
    btf: std::result::Result<Btf, String>,
    /// The bytes aya parsed, freed with the loader, after everything is loaded: glibc
    /// raises its mmap threshold when a big block is freed, and a block freed before
    /// the load would send the load's own allocations to the heap, where they stay.
    _lean: Option<Vec<u8>>,
    pub offsets: KernelOffsets,
    pub holder_offsets: HolderOffsets,
    /// Address of the global `udp_table` (kernels before 6.2), or 0.
    pub udp_table: u64,
    /// Addresses of `pollwake` and `ep_poll_callback` (for the holders iterator's
    /// file references and waiters), looked up on first use.
    wake_functions: std::sync::OnceLock<[u64; 2]>,
    pub memlock_raised: bool,
    /// Paths of offsets this kernel's BTF lacks: (offset, first missing step).
    pub missing: Vec<(&'static str, String)>,
}

impl Loader {
    /// Checks privileges, raises memlock, reads kernel BTF and resolves every offset.
    pub fn new() -> Result<Self> {
        preflight()?;
        let memlock_raised = raise_memlock();
        // Mapped, not read: several MiB that must not pass through the heap (once
        // freed there, the allocator keeps them).
        let raw = crate::sys::mmap::MappedFile::open(VMLINUX).map_err(|e| format!("{VMLINUX}: {e}"));
        let parsed = raw.as_ref().map_err(Clone::clone).and_then(|r| kbtf::Btf::parse(r.bytes()).map_err(|e| format!("{VMLINUX}: {e}")));
        let (offsets, holder_offsets, missing, lean) = match &parsed {
            Ok(b) => {
                let mut missing = missing_steps::<KernelOffsets>(b);
                missing.extend(missing_steps::<HolderOffsets>(b));
                (kbtf::resolve::<KernelOffsets>(b), kbtf::resolve::<HolderOffsets>(b), missing, Ok(b.lean_copy()))
            }
            Err(e) => (KernelOffsets::UNSET, HolderOffsets::UNSET, Vec::new(), Err(e.clone())),
        };
        drop(parsed);
        drop(raw);
        // Before 6.2 the UDP table is a global, not `net->ipv4.udp_table`.
        let udp_table = if holder_offsets.net_udp_table == u32::MAX {
            kallsyms_addresses(&[("udp_table", &["d", "D", "b", "B"])])[0].unwrap_or(0)
        } else {
            0
        };
        let btf =
            lean.as_ref().map_err(Clone::clone).and_then(|r| Btf::parse(r, Endianness::default()).map_err(|e| format!("{VMLINUX}: {e}")));
        Ok(Self {
            btf,
            _lean: lean.ok(),
            offsets,
            holder_offsets,
            udp_table,
            wake_functions: std::sync::OnceLock::new(),
            memlock_raised,
            missing,
        })
    }

    /// Kernel BTF for loading, or why there is none.
    pub fn btf(&self) -> std::result::Result<&Btf, &str> {
        self.btf.as_ref().map_err(String::as_str)
    }

    /// Loads the object with its globals set and maps sized.
    pub fn load(&self, sizes: Sizes) -> Result<Ebpf> {
        self.load_with(sizes, None)
    }

    /// Loads the object for one run's port remapping: small maps, and the remap
    /// programs pointed at the run's cgroup (`id`, `level`).
    pub fn load_remap(&self, cgroup_id: u64, level: u32) -> Result<Ebpf> {
        self.load_with(Sizes { small: true, ring_bytes: None }, Some((cgroup_id, level)))
    }

    fn load_with(&self, sizes: Sizes, remap: Option<(u64, u32)>) -> Result<Ebpf> {
        let me = std::process::id();
        let mut l = EbpfLoader::new();
        l.btf(self.btf.as_ref().ok());
        l.override_global(globals::SELF_TGID, &me, true);
        l.override_global(globals::OFFSETS, &self.offsets, true);
        l.override_global(globals::HOLDER_OFFSETS, &self.holder_offsets, true);
        l.override_global(globals::UDP_TABLE, &self.udp_table, true);
        // The holders iterator's (small loads: the pinned iterators, doctor).
        let [pollwake, ep_poll_callback] = if sizes.small {
            *self.wake_functions.get_or_init(|| {
                let text = ["t", "T"];
                let found = kallsyms_addresses(&[("pollwake", &text), ("ep_poll_callback", &text)]);
                [found[0].unwrap_or(0), found[1].unwrap_or(0)]
            })
        } else {
            [0, 0]
        };
        l.override_global(globals::POLLWAKE, &pollwake, true);
        l.override_global(globals::EP_POLL_CALLBACK, &ep_poll_callback, true);
        if sizes.small {
            l.map_max_entries(maps::EVENTS, 4096);
            l.map_max_entries(maps::TRACKED, 1);
            l.map_max_entries(maps::QUEUED, 1);
            l.map_max_entries(maps::PORTS, 1);
        }
        if let Some(bytes) = sizes.ring_bytes {
            l.map_max_entries(maps::EVENTS, bytes);
        }
        let (remap_cgroup, remap_level) = remap.unwrap_or((0, 0));
        l.override_global(globals::REMAP_CGROUP, &remap_cgroup, true);
        l.override_global(globals::REMAP_LEVEL, &remap_level, true);
        l.load(OBJECT).map_err(|e| Error::bpf("loading the BPF object", e))
    }

    /// Whether a hook's program can work on this kernel before trying it: the
    /// offsets it reads must all be there.
    pub fn ready(&self, h: &Hook) -> std::result::Result<(), String> {
        match h.program {
            programs::STATE_BTF if !self.offsets.state_hook_ready() => Err("struct sock offsets not found in BTF".into()),
            programs::TASK_FILE_ITER if !self.offsets.iterator_ready() => Err("file/inode/task offsets not found in BTF".into()),
            programs::HOLDERS_ITER => {
                let (tcp, udp) = (self.holder_offsets.tcp_ready(), self.holder_offsets.udp_ready(self.udp_table != 0));
                if tcp && udp {
                    return Ok(());
                }
                let why: Vec<String> = self.missing.iter().map(|(o, step)| format!("{o}: {step}")).collect();
                Err(format!("kernel layout not supported (TCP bind hash: {tcp}, UDP hash: {udp}); missing {}", why.join(", ")))
            }
            _ => Ok(()),
        }
    }

    /// Loads and attaches one hook (not an iterator: see [`Loader::attach_iter`]).
    pub fn attach(&self, ebpf: &mut Ebpf, h: &Hook, cgroup: Option<&File>) -> std::result::Result<(), String> {
        self.ready(h)?;
        let prog = ebpf.program_mut(h.program).ok_or_else(|| format!("program {} missing", h.program))?;
        let cg = || cgroup.ok_or_else(|| "no cgroup v2 mount".to_string());
        let btf = || self.btf().map_err(String::from);
        match h.attach {
            Attach::CgroupSockAddr => {
                let p: &mut CgroupSockAddr = as_kind(prog)?;
                p.load().map_err(text)?;
                p.attach(cg()?, CgroupAttachMode::Single).map(drop).map_err(text)
            }
            Attach::CgroupSock => {
                let p: &mut CgroupSock = as_kind(prog)?;
                p.load().map_err(text)?;
                p.attach(cg()?, CgroupAttachMode::Single).map(drop).map_err(text)
            }
            Attach::TpBtf(tp) => {
                let p: &mut BtfTracePoint = as_kind(prog)?;
                p.load(tp, btf()?).map_err(text)?;
                p.attach().map(drop).map_err(text)
            }
            Attach::Iter(_) => self.attach_iter(ebpf, h).map(drop),
            Attach::FEntry(f) => {
                let p: &mut FEntry = as_kind(prog)?;
                p.load(f, btf()?).map_err(text)?;
                p.attach().map(drop).map_err(text)
            }
            Attach::Lsm(hook) => {
                let p: &mut Lsm = as_kind(prog)?;
                p.load(hook, btf()?).map_err(text)?;
                p.attach().map(drop).map_err(text)
            }
            Attach::KProbe(f) => {
                let p: &mut KProbe = as_kind(prog)?;
                p.load().map_err(text)?;
                p.attach(f, 0).map(drop).map_err(text)
            }
            Attach::TracePoint(cat, name) => {
                let p: &mut TracePoint = as_kind(prog)?;
                p.load().map_err(text)?;
                p.attach(cat, name).map(drop).map_err(text)
            }
            Attach::RawTp(tp) => {
                let p: &mut RawTracePoint = as_kind(prog)?;
                p.load().map_err(text)?;
                p.attach(tp).map(drop).map_err(text)
            }
        }
    }

    /// Loads and attaches an iterator; its link is returned for pinning.
    pub fn attach_iter(&self, ebpf: &mut Ebpf, h: &Hook) -> std::result::Result<IterLink, String> {
        self.ready(h)?;
        let Attach::Iter(target) = h.attach else { return Err(format!("{} is not an iterator", h.program)) };
        let btf = self.btf().map_err(String::from)?;
        let prog = ebpf.program_mut(h.program).ok_or_else(|| format!("program {} missing", h.program))?;
        let p: &mut Iter = as_kind(prog)?;
        p.load(target, btf).map_err(text)?;
        let id = p.attach().map_err(text)?;
        p.take_link(id).map_err(text)
    }
}

fn missing_steps<T: Offsets>(b: &kbtf::Btf<'_>) -> Vec<(&'static str, String)> {
    T::SPEC.iter().filter_map(|(name, path)| b.missing_step(path).map(|s| (*name, s))).collect()
}

fn as_kind<'a, T>(prog: &'a mut Program) -> std::result::Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut Program, Error = ProgramError>,
{
    prog.try_into().map_err(|e: ProgramError| err_text(&e))
}

fn text<E: std::error::Error>(e: E) -> String {
    err_text(&e)
}

/// The addresses of kernel symbols, each of one of its kinds, in one read of
/// `/proc/kallsyms` (root reads real addresses there; others see zeros, which
/// count as missing).
fn kallsyms_addresses(wanted: &[(&str, &[&str])]) -> Vec<Option<u64>> {
    use std::io::BufRead;
    let mut found = vec![None; wanted.len()];
    let Ok(f) = File::open("/proc/kallsyms") else { return found };
    for l in std::io::BufReader::new(f).lines().map_while(std::result::Result::ok) {
        let mut it = l.split_whitespace();
        let (Some(addr), Some(kind), Some(name), None) = (it.next(), it.next(), it.next(), it.next()) else { continue };
        for (slot, (symbol, kinds)) in found.iter_mut().zip(wanted) {
            if slot.is_none() && name == *symbol && kinds.contains(&kind) {
                *slot = u64::from_str_radix(addr, 16).ok().filter(|&a| a != 0);
            }
        }
        if found.iter().all(Option::is_some) {
            break;
        }
    }
    found
}

/// An error with its sources on one line.
pub fn err_text(e: &dyn std::error::Error) -> String {
    crate::error::chain_text(e)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_program_has_one_hook() {
        for p in [
            programs::BIND4,
            programs::POST_BIND4,
            programs::STATE_BTF,
            programs::HOLDERS_ITER,
            programs::TASK_FILE_ITER,
            programs::LEASE4,
            programs::LEASE4_EPERM,
        ] {
            assert_eq!(HOOKS.iter().filter(|h| h.program == p).count(), 1, "{p}");
        }
        assert!(HOOKS.iter().any(|h| h.role == Role::Observer { required: true }));
    }
}
