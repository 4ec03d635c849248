//! The library target exists so `portwatch` can name this crate as a
//! build-dependency: cargo then re-runs `portwatch/build.rs` (which builds the
//! programs in `main.rs` for the BPF target) whenever this crate or
//! `portwatch-common` changes, so the embedded object is never stale.
#![no_std]
