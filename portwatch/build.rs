//! Builds the kernel object from `portwatch-ebpf` (nightly + rust-src + bpf-linker) and
//! leaves it in OUT_DIR, where `src/ebpf/load.rs` embeds it.
use anyhow::{anyhow, Context as _};
use aya_build::Toolchain;

fn main() -> anyhow::Result<()> {
    let root =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().ok_or_else(|| anyhow!("no workspace root"))?.join("portwatch-ebpf");
    let root = root.to_str().context("non-UTF-8 path")?;
    aya_build::build_ebpf([aya_build::Package { name: "portwatch-ebpf", root_dir: root, ..Default::default() }], Toolchain::default())?;
    // A hash of the object names this build's bpffs pins; computed here so `who`
    // does not hash 300 KiB on every run.
    let out = std::env::var("OUT_DIR").context("OUT_DIR")?;
    let object = std::fs::read(std::path::Path::new(&out).join("portwatch")).context("reading the eBPF object")?;
    let mut h = std::collections::hash_map::DefaultHasher::new();
    std::hash::Hash::hash(&object, &mut h);
    println!("cargo:rustc-env=PORTWATCH_OBJECT_HASH={:016x}", std::hash::Hasher::finish(&h));
    Ok(())
}
