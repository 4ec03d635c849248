use which::which;

/// The kernel object is linked by `bpf-linker`, a dependency cargo cannot see: rebuild
/// whenever the binary on PATH changes.
fn main() {
    match which("bpf-linker") {
        Ok(path) => println!("cargo:rerun-if-changed={}", path.display()),
        Err(e) => println!("cargo:warning=bpf-linker not found ({e}); run `cargo xtask setup`"),
    }
}
