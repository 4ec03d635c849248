//! The one helper that reads kernel memory at a BTF-resolved offset.
use aya_ebpf::helpers::bpf_probe_read_kernel;

/// Reads a `T` at `base + off`. `u32::MAX` marks an offset BTF did not have, and a
/// null base a pointer that was not there: both are errors, as is a failed read.
#[inline(always)]
pub fn rd<T>(base: u64, off: u32) -> Result<T, ()> {
    if off == u32::MAX || base == 0 {
        return Err(());
    }
    // SAFETY: bpf_probe_read_kernel checks the address; a bad one is an error.
    unsafe { bpf_probe_read_kernel((base + u64::from(off)) as *const T) }.map_err(|_| ())
}
