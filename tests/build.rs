//! The tests run the real `portwatch` binary. It belongs to another package, so
//! cargo does not hand its path to this one: derive it from this build's profile
//! directory (OUT_DIR is `<target>/<profile>/build/<pkg>-<hash>/out`).
// A test fails by panicking, helpers included.
#![allow(clippy::unwrap_used, clippy::expect_used)]
fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").unwrap_or_default());
    if let Some(profile_dir) = out.ancestors().nth(3) {
        println!("cargo:rustc-env=PORTWATCH_PROFILE_DIR={}", profile_dir.display());
    }
}
