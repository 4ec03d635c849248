//! One pass of the `iter/task_file` program: every (process, fd) holding one of the
//! given socket inodes, without walking /proc.
use std::{collections::HashSet, io::Read};

use aya::{maps::HashMap as BpfHashMap, programs::Iter, Btf};
use portwatch_common::{maps, programs, TaskSocket};

use crate::{
    ebpf::{btf as kbtf, load},
    error::{Error, Result},
    sys::proc::FdHolder,
};

/// Finds the holders of `inodes` with the BPF iterator.
pub fn socket_holders(inodes: &HashSet<u64>) -> Result<Vec<FdHolder>> {
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
    {
        let mut wanted: BpfHashMap<_, u64, u8> = BpfHashMap::try_from(
            ebpf.map_mut(maps::WANTED_INODES).ok_or_else(|| Error::Internal("WANTED_INODES missing".into()))?,
        )
        .map_err(|e| Error::Internal(e.to_string()))?;
        for ino in inodes {
            wanted.insert(ino, 1, 0).map_err(|e| Error::Internal(format!("WANTED_INODES: {e}")))?;
        }
    }
    let prog: &mut Iter = ebpf
        .program_mut(programs::TASK_FILE_ITER)
        .ok_or_else(|| Error::Internal("iterator program missing".into()))?
        .try_into()
        .map_err(|e: aya::programs::ProgramError| Error::Internal(e.to_string()))?;
    prog.load("task_file", &btf).map_err(|e| Error::unsupported(format!("iter/task_file: {e}"), "Linux >= 5.8"))?;
    let link_id = prog.attach().map_err(|e| Error::unsupported(format!("iter/task_file attach: {e}"), "Linux >= 5.8"))?;
    let link = prog.take_link(link_id).map_err(|e| Error::Internal(e.to_string()))?;
    let mut file = link.into_file().map_err(|e| Error::Internal(e.to_string()))?;
    let mut buf = Vec::new();
    file.read_to_end(&mut buf).map_err(|e| Error::io("reading the task_file iterator", e))?;
    Ok(parse_records(&buf))
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
}
