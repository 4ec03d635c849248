//! What this host supports, tried for real (`doctor`): privileges, BTF, mounts, and
//! every hook type loaded and attached.
use std::fs::File;

use aya::{
    programs::{FEntry, Iter, KProbe, Lsm, RawTracePoint, TracePoint},
    Btf,
};
use portwatch_common::{programs, KernelOffsets};
use serde::Serialize;

use crate::{
    ebpf::{btf as kbtf, loader as load},
    error::exit,
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
    /// `watch` / `agent` can run: the bind hooks attach.
    pub observer_ready: bool,
    /// `who` can use the BPF iterator (otherwise it walks /proc).
    pub iterator_ready: bool,
    /// `who` can use the holders pass (`iter/task`), its fast path.
    pub holders_ready: bool,
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
    let mut checks = Vec::new();
    let uname = nix::sys::utsname::uname().map(|u| u.release().to_string_lossy().into_owned()).unwrap_or_default();
    checks.push(check("kernel", true, uname));
    let c = caps::current();
    let missing = c.missing_for_observer();
    checks.push(check(
        "privileges",
        missing.is_empty(),
        if missing.is_empty() {
            format!("euid {} with the needed capabilities", nix::unistd::geteuid())
        } else {
            format!("missing {} (run as root)", missing.join(", "))
        },
    ));
    checks.push(check(
        "memlock",
        true,
        if load::raise_memlock() {
            "RLIMIT_MEMLOCK raised".to_string()
        } else {
            "RLIMIT_MEMLOCK not raisable (no CAP_SYS_RESOURCE); fine on kernels >= 5.11, which charge BPF memory to the memory cgroup"
                .to_string()
        },
    ));
    let lockdown = std::fs::read_to_string("/sys/kernel/security/lockdown")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown (securityfs not mounted); fentry/lsm results below tell".into());
    checks.push(check("lockdown", true, lockdown));
    let vmlinux = kbtf::load_vmlinux();
    let offsets = vmlinux.as_ref().map(kbtf::resolve).unwrap_or(KernelOffsets::UNSET);
    checks.push(check(
        "btf",
        vmlinux.is_ok(),
        match &vmlinux {
            Ok(_) => kbtf::VMLINUX.to_string(),
            Err(e) => e.clone(),
        },
    ));
    let cg = mounts::cgroup2_root();
    checks.push(check("cgroup v2", cg.is_some(), cg.as_ref().map_or("not mounted".into(), |p| p.display().to_string())));
    // Classic tracepoints need tracefs: mount it (as `setup` does) so they can be tried.
    let tracefs = match mounts::ensure_mounted(mounts::TRACEFS, "tracefs") {
        Ok(true) => check("tracefs", true, format!("{} (mounted by portwatch)", mounts::TRACEFS)),
        Ok(false) => check("tracefs", true, mounts::TRACEFS),
        Err(e) => check("tracefs", false, format!("not mounted and cannot mount ({e}); only classic tracepoints need it")),
    };
    checks.push(tracefs);
    let bpffs = mounts::is_mounted(mounts::BPFFS, "bpf");
    checks.push(check(
        "bpffs",
        bpffs,
        if bpffs {
            mounts::BPFFS.to_string()
        } else {
            format!("not mounted (needed only for pinning: mount -t bpf bpf {})", mounts::BPFFS)
        },
    ));

    let mut hooks = Vec::new();
    let mut observer_ready = false;
    let mut iterator_ready = false;
    let mut holders_ready = false;
    if missing.is_empty() {
        let btf = Btf::from_sys_fs().ok();
        let me = std::process::id();
        let hoffsets = kbtf::load_vmlinux().map(|v| kbtf::resolve_holders(&v)).unwrap_or(portwatch_common::HolderOffsets::UNSET);
        let mut loader = load::loader(btf.as_ref(), &offsets, &me, true);
        loader.override_global(portwatch_common::globals::HOLDER_OFFSETS, &hoffsets, true);
        match loader.load(load::OBJECT) {
            Err(e) => checks.push(check("bpf", false, format!("{e}"))),
            Ok(mut ebpf) => {
                checks.push(check("bpf", true, "maps created, object loaded"));
                hooks.push(HookProbe { hook: "ringbuf".into(), supported: true, used_for: "event transport", error: None });
                let cg_file = cg.as_deref().map(File::open);
                for (prog, hook, used_for) in [
                    (programs::BIND4, "cgroup/bind4", "bind attempts (IPv4)"),
                    (programs::BIND6, "cgroup/bind6", "bind attempts (IPv6)"),
                    (programs::POST_BIND4, "cgroup/post_bind4", "successful binds, real port (IPv4)"),
                    (programs::POST_BIND6, "cgroup/post_bind6", "successful binds, real port (IPv6)"),
                    (programs::SOCK_RELEASE, "cgroup/sock_release", "closes"),
                ] {
                    let r = match &cg_file {
                        Some(Ok(f)) => load::attach_cgroup(&mut ebpf, prog, f),
                        Some(Err(e)) => Err(e.to_string()),
                        None => Err("no cgroup v2 mount".into()),
                    };
                    if hook == "cgroup/post_bind4" && r.is_ok() {
                        observer_ready = true;
                    }
                    hooks.push(probe(hook, used_for, r));
                }
                let kbtf_ref = btf.as_ref().ok_or_else(|| "kernel BTF unavailable".to_string());
                let r = if offsets.valid == 0 {
                    Err("struct sock offsets not found in BTF".into())
                } else {
                    kbtf_ref.clone().and_then(|b| load::attach_tp_btf(&mut ebpf, programs::STATE_BTF, "inet_sock_set_state", b))
                };
                hooks.push(probe("tp_btf/inet_sock_set_state", "listen starts, accept-queue arrivals", r));
                let r = kbtf_ref.clone().and_then(|b| {
                    let p: &mut Iter = prog_mut(&mut ebpf, programs::TASK_FILE_ITER)?;
                    p.load("task_file", b).map_err(|e| text(&e))?;
                    p.attach().map(drop).map_err(|e| text(&e))
                });
                iterator_ready = r.is_ok() && kbtf::iter_ready(&offsets);
                hooks.push(probe("iter/task_file", "`who` fallback: every process holding a socket", r));
                let r = match kbtf::holders_ready(&hoffsets) {
                    (true, true) => kbtf_ref.clone().and_then(|b| {
                        let p: &mut Iter = prog_mut(&mut ebpf, programs::HOLDERS_ITER)?;
                        p.load("task", b).map_err(|e| text(&e))?;
                        p.attach().map(drop).map_err(|e| text(&e))
                    }),
                    (tcp, udp) => Err(format!("kernel layout not supported (TCP bind hash: {tcp}, UDP hash: {udp})")),
                };
                holders_ready = r.is_ok();
                hooks.push(probe("iter/task + bpf_loop", "`who` fast path: holders of the asked ports, one visit per task", r));
                let r = kbtf_ref.clone().and_then(|b| {
                    let p: &mut FEntry = prog_mut(&mut ebpf, programs::PROBE_FENTRY)?;
                    p.load("inet_listen", b).map_err(|e| text(&e))?;
                    p.attach().map(drop).map_err(|e| text(&e))
                });
                hooks.push(probe("fentry", "not used (portwatch needs no fentry)", r));
                let r = kbtf_ref.clone().and_then(|b| {
                    let p: &mut Lsm = prog_mut(&mut ebpf, programs::PROBE_LSM)?;
                    p.load("socket_listen", b).map_err(|e| text(&e))?;
                    p.attach().map(drop).map_err(|e| text(&e))
                });
                hooks.push(probe("lsm", "not used", r));
                let r = (|| {
                    let p: &mut KProbe = prog_mut(&mut ebpf, programs::PROBE_KPROBE)?;
                    p.load().map_err(|e| text(&e))?;
                    p.attach("inet_listen", 0).map(drop).map_err(|e| text(&e))
                })();
                hooks.push(probe("kprobe", "not used", r));
                let r = (|| {
                    let p: &mut TracePoint = prog_mut(&mut ebpf, programs::PROBE_TRACEPOINT)?;
                    p.load().map_err(|e| text(&e))?;
                    p.attach("sock", "inet_sock_set_state").map(drop).map_err(|e| text(&e))
                })();
                hooks.push(probe("tracepoint/sock/inet_sock_set_state", "not used (tp_btf preferred)", r));
                let r = (|| {
                    let p: &mut RawTracePoint = prog_mut(&mut ebpf, programs::PROBE_RAW_TP)?;
                    p.load().map_err(|e| text(&e))?;
                    p.attach("inet_sock_set_state").map(drop).map_err(|e| text(&e))
                })();
                hooks.push(probe("raw_tp/inet_sock_set_state", "not used (tp_btf preferred)", r));
                // Dropping `ebpf` detaches and unloads everything tried above.
            }
        }
    }
    Report { checks, hooks, btf_offsets: kbtf::as_list(&offsets), observer_ready, iterator_ready, holders_ready }
}

fn prog_mut<'a, T>(ebpf: &'a mut aya::Ebpf, name: &str) -> Result<&'a mut T, String>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let p = ebpf.program_mut(name).ok_or_else(|| format!("program {name} missing"))?;
    p.try_into().map_err(|e: aya::programs::ProgramError| text(&e))
}

fn text(e: &dyn std::error::Error) -> String {
    load::err_text(e)
}

fn probe(hook: &str, used_for: &'static str, r: Result<(), String>) -> HookProbe {
    HookProbe { hook: hook.to_string(), supported: r.is_ok(), used_for, error: r.err() }
}
