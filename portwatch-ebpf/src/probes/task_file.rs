//! `iter/task_file`: one pass over every open file of every task, emitting
//! `(tgid, fd, inode)` for every socket. This is how `portwatch who` finds every
//! holder of a socket (masters and forked workers alike) without walking /proc. It
//! takes no input, so user space can pin it once and read it from many processes.
use aya_ebpf::helpers::generated::bpf_seq_write;
use portwatch_common::{probe, TaskSocket};

use crate::{
    maps::{count_error, offsets},
    read::rd,
};

/// `struct bpf_iter__task_file` (kernel/bpf/task_iter.c): pointers are 8 bytes wide
/// in BPF programs (`__bpf_md_ptr`).
#[repr(C)]
pub struct IterTaskFile {
    meta: *const IterMeta,
    task: *const u8,
    fd: u32,
    _pad: u32,
    file: *const u8,
}

/// `struct bpf_iter_meta`: the seq_file comes first.
#[repr(C)]
pub struct IterMeta {
    pub seq: *mut aya_ebpf::bindings::seq_file,
}

const S_IFMT: u16 = 0o170000;
const S_IFSOCK: u16 = 0o140000;

#[unsafe(no_mangle)]
#[unsafe(link_section = "iter/task_file")]
pub fn pw_task_sockets(ctx: *mut IterTaskFile) -> i32 {
    if try_task_sockets(ctx).is_err() {
        count_error(probe::TASK_FILE);
    }
    0
}

fn try_task_sockets(ctx: *mut IterTaskFile) -> Result<(), ()> {
    // SAFETY: the iterator context is valid for the duration of the call.
    let (meta, task, fd, file) = unsafe { ((*ctx).meta, (*ctx).task, (*ctx).fd, (*ctx).file) };
    if task.is_null() || file.is_null() {
        return Ok(());
    }
    let off = offsets();
    let inode: u64 = rd(file as u64, off.file_inode)?;
    let mode: u16 = rd(inode, off.inode_mode)?;
    if mode & S_IFMT != S_IFSOCK {
        return Ok(());
    }
    let ino: u64 = rd(inode, off.inode_ino)?;
    let tgid: i32 = rd(task as u64, off.task_tgid)?;
    let rec = TaskSocket { tgid: tgid as u32, fd, ino };
    // SAFETY: meta is the iterator's trusted metadata pointer.
    let seq = unsafe { (*meta).seq };
    // SAFETY: writes `rec` (on our stack) into the iterator's seq_file.
    unsafe { bpf_seq_write(seq, (&rec as *const TaskSocket).cast(), core::mem::size_of::<TaskSocket>() as u32) };
    Ok(())
}
