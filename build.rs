//! Lays out the functions the master runs in production together, in front of the rest of its
//! code (`link/hot-text.ld`, written by `link/generate.py`, whose comment says why): the
//! master's code then costs it a few hundred KiB of resident memory instead of most of the
//! binary's text.
//!
//! Only where the linker is the toolchain's own (rust-lld or the system's `ld` through `cc`,
//! which both read a script that `INSERT`s into their default layout): a linker chosen in
//! `RUSTFLAGS` or Cargo's configuration (mold, for one, reads no such script) links the binary
//! as it would without this file.

use std::env;
use std::path::Path;

fn main() {
    println!("cargo::rerun-if-changed=link/hot-text.ld");
    println!("cargo::rerun-if-env-changed=RUSTC_LINKER");
    let on_linux = env::var("CARGO_CFG_TARGET_OS").is_ok_and(|os| os == "linux");
    // Cargo sets RUSTC_LINKER when a linker is configured for the target; a `-C linker=…`,
    // `-C link-arg=-fuse-ld=…` or linker flavour in the flags names one too.
    let flags = env::var("CARGO_ENCODED_RUSTFLAGS").unwrap_or_default();
    let linker_chosen = env::var_os("RUSTC_LINKER").is_some()
        || flags
            .split('\x1f')
            .any(|flag| flag.contains("linker") || flag.contains("fuse-ld"));
    let manifest_dir = env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    let script = Path::new(&manifest_dir).join("link").join("hot-text.ld");
    // A build script speaks to Cargo in UTF-8 only: elsewhere, the ordinary layout.
    let script = script.to_str();
    let skipped = if !on_linux {
        "not Linux"
    } else if linker_chosen {
        "a linker was chosen in RUSTFLAGS or Cargo's configuration"
    } else if script.is_none() {
        "the checkout's path is not UTF-8"
    } else {
        ""
    };
    // For `tests/hot_text.rs`, which checks the layout wherever it is made.
    println!("cargo::rustc-env=MCLUSTER_HOT_TEXT_SKIPPED={skipped}");
    let Some(script) = script.filter(|_| skipped.is_empty()) else {
        return;
    };
    // `-Xlinker`, not `-Wl,`: a path may hold a comma.
    for arg in ["-Xlinker", "-T", "-Xlinker", script] {
        println!("cargo::rustc-link-arg-bin=mcluster={arg}");
    }
}
