//! The kernel side, seen from user space: loading the embedded object, the observer
//! (hooks and maps), the `who` iterators, decoding events, and BTF offsets.
pub mod btf;
pub mod events;
pub mod iter;
pub mod lease;
pub mod loader;
pub mod observer;
pub mod remap;
