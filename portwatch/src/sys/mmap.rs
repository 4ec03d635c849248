//! A read-only memory map of a whole file.
use std::{fs::File, num::NonZeroUsize, os::fd::AsFd, ptr::NonNull};

use nix::sys::mman::{mmap, munmap, MapFlags, ProtFlags};

pub struct MappedFile {
    ptr: NonNull<std::ffi::c_void>,
    len: usize,
}

impl MappedFile {
    pub fn open(path: &str) -> std::io::Result<Self> {
        let f = File::open(path)?;
        let len = f.metadata()?.len() as usize;
        let size = NonZeroUsize::new(len).ok_or_else(|| std::io::Error::other("empty file"))?;
        // SAFETY: a private read-only mapping of a file we opened; unmapped on drop.
        let ptr = unsafe { mmap(None, size, ProtFlags::PROT_READ, MapFlags::MAP_PRIVATE, f.as_fd(), 0) }.map_err(std::io::Error::from)?;
        Ok(Self { ptr, len })
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: `len` bytes are mapped read-only for as long as `self` lives.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr().cast::<u8>(), self.len) }
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
    }
}
