//! Loading the embedded kernel object: privileges checked first, memlock, the
//! loader with its globals, attaching hooks, and errors in one line.
use std::fs::File;

use aya::{
    programs::{BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockAddr},
    Btf, Ebpf, EbpfLoader,
};
use portwatch_common::{globals, maps, KernelOffsets};

use crate::{
    error::{Error, Result},
    sys::caps,
};

/// The kernel object built by `build.rs`, embedded so the binary is self-contained.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/portwatch"));

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

/// Creates the loader with globals set; `small` shrinks the big maps for one-shot use
/// (the iterator) so loading stays cheap.
pub fn loader<'a>(btf: Option<&'a Btf>, offsets: &'a KernelOffsets, self_tgid: &'a u32, small: bool) -> EbpfLoader<'a> {
    let mut l = EbpfLoader::new();
    l.btf(btf);
    l.override_global(globals::SELF_TGID, self_tgid, true);
    l.override_global(globals::OFFSETS, offsets, true);
    if small {
        l.map_max_entries(maps::EVENTS, 4096);
        l.map_max_entries(maps::TRACKED, 1);
        l.map_max_entries(maps::QUEUED, 1);
        l.map_max_entries(maps::PORTS, 1);
    }
    l
}

pub fn load_error(e: &aya::EbpfError) -> Error {
    let text = e.to_string();
    if text.contains("Operation not permitted") || text.contains("EPERM") {
        Error::privilege(format!("loading BPF maps/programs failed: {text}"), "run as root")
    } else {
        Error::unsupported(format!("BPF is unavailable: {text}"), "use a kernel with BPF enabled (>= 5.8)")
    }
}

/// An error with its sources on one line; a verifier log is cut to its verdict (the
/// last lines), since the whole log runs to thousands of lines.
pub fn err_text(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(inner) = src {
        s.push_str(": ");
        s.push_str(&inner.to_string());
        src = inner.source();
    }
    summarize_verifier(&s)
}

pub fn summarize_verifier(s: &str) -> String {
    let Some((head, log)) = s.split_once("Verifier output:") else {
        return s.to_string();
    };
    let tail: Vec<&str> = log
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with("verification time") && !l.starts_with("stack depth") && !l.starts_with("processed "))
        .collect();
    let keep = &tail[tail.len().saturating_sub(2)..];
    format!("{}verifier: {}", head, keep.join(" | "))
}

/// Parsing kernel BTF allocates tens of MiB that are free once the programs are
/// loaded; hand them back to the OS so a long-running agent stays small.
pub fn release_heap() {
    // SAFETY: malloc_trim only releases free memory at the top of glibc's heaps.
    unsafe {
        libc::malloc_trim(0);
    }
}

pub fn attach_cgroup(ebpf: &mut Ebpf, name: &str, cgroup: &File) -> Result<(), String> {
    let prog = ebpf.program_mut(name).ok_or_else(|| format!("program {name} missing"))?;
    if let Ok(p) = <&mut CgroupSockAddr>::try_from(&mut *prog) {
        p.load().map_err(|e| err_text(&e))?;
        p.attach(cgroup, CgroupAttachMode::Single).map_err(|e| err_text(&e))?;
        return Ok(());
    }
    let p: &mut CgroupSock = prog.try_into().map_err(|e: aya::programs::ProgramError| err_text(&e))?;
    p.load().map_err(|e| err_text(&e))?;
    p.attach(cgroup, CgroupAttachMode::Single).map_err(|e| err_text(&e))?;
    Ok(())
}

pub fn attach_tp_btf(ebpf: &mut Ebpf, name: &str, tracepoint: &str, btf: &Btf) -> Result<(), String> {
    let prog = ebpf.program_mut(name).ok_or_else(|| format!("program {name} missing"))?;
    let p: &mut BtfTracePoint = prog.try_into().map_err(|e: aya::programs::ProgramError| err_text(&e))?;
    p.load(tracepoint, btf).map_err(|e| err_text(&e))?;
    p.attach().map_err(|e| err_text(&e))?;
    Ok(())
}
