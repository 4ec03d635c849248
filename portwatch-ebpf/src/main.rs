//! portwatch's kernel programs. One module per hook under `probes/`, each a thin
//! wrapper over a `try_` function; shared state and event emission in `maps`/`emit`.
#![no_std]
#![no_main]

mod emit;
mod maps;
mod probes;
mod read;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo<'_>) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";
