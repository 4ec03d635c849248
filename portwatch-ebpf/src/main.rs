//! portwatch's kernel programs. One module per hook under `probes/`, each a thin
//! wrapper over a `try_` function; shared state and event emission in `maps`/`emit`.
#![no_std]
#![no_main]
// One atomic add on a shared counter (maps.rs); stable Rust has no way to spell it
// for a target without compare-and-swap.
#![allow(internal_features)]
#![feature(core_intrinsics)]

mod emit;
mod maps;
mod probes;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
