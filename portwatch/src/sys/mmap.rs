//! A whole file in memory that is not the heap: mapped where the file allows it
//! (`/sys/kernel/btf/vmlinux` can be mapped from Linux 6.14), else read into an
//! anonymous mapping. Either way it is unmapped when dropped, so several MiB never
//! pass through the allocator (which would keep them).
use std::{fs::File, num::NonZeroUsize, os::fd::AsFd, ptr::NonNull};

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

pub struct MappedFile {
    ptr: NonNull<std::ffi::c_void>,
    /// Bytes mapped.
    len: usize,
    /// Bytes of the file in the mapping.
    shown: usize,
}

impl MappedFile {
    pub fn open(path: &str) -> std::io::Result<Self> {
        let mut f = File::open(path)?;
        let len = f.metadata()?.len() as usize;
        let size = NonZeroUsize::new(len).ok_or_else(|| std::io::Error::other("empty file"))?;
        // SAFETY: a private read-only mapping of a file we opened; unmapped on drop.
        if let Ok(ptr) = unsafe { mmap(None, size, ProtFlags::PROT_READ, MapFlags::MAP_PRIVATE, f.as_fd(), 0) } {
            return Ok(Self { ptr, len, shown: len });
        }
        // SAFETY: a fresh private anonymous mapping; unmapped on drop (also on error below).
        let ptr =
            unsafe { nix::sys::mman::mmap_anonymous(None, size, ProtFlags::PROT_READ | ProtFlags::PROT_WRITE, MapFlags::MAP_PRIVATE) }
                .map_err(std::io::Error::from)?;
        let mut me = Self { ptr, len, shown: 0 };
        // SAFETY: the mapping is `len` writable bytes, owned by `me` alone.
        let buf = unsafe { std::slice::from_raw_parts_mut(ptr.as_ptr().cast::<u8>(), len) };
        // sysfs reports a size that may be larger than what it gives.
        let mut got = 0;
        while got < len {
            match std::io::Read::read(&mut f, &mut buf[got..]) {
                Ok(0) => break,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        me.shown = got;
        Ok(me)
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len >= shown` bytes are mapped for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>(), self.shown) }
    }
}

impl Drop for MappedFile {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly what `open` mapped.
        let _ = unsafe { munmap(self.ptr, self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn maps_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("f");
        std::fs::write(&p, b"hello").unwrap();
        let m = MappedFile::open(p.to_str().unwrap()).unwrap();
        assert_eq!(m.bytes(), b"hello");
        // A file the kernel does not let us map (a sysfs attribute, whose size says
        // 4096): read instead, as much as it gives.
        let attr = "/sys/kernel/mm/transparent_hugepage/enabled";
        if let Ok(want) = std::fs::read(attr) {
            assert_eq!(MappedFile::open(attr).unwrap().bytes(), want);
        }
    }
}
