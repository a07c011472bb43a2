//! mlxi's stand-in for the `mlx-sys` 0.7.0 crate that `mlx-rs` 0.33 depends on.
//!
//! # Why this crate exists
//! The published mlx-sys builds MLX from a GitHub checkout at configure time and always links
//! Apple frameworks, so it cannot build on Linux or without network access. This crate keeps the
//! same name, version and `links = "mlx"` key and is swapped in with `[patch.crates-io]` in the
//! workspace manifest. Its build script:
//! 1. finds mlx-c 0.7.0's sources in cargo's own unpacked copy of the genuine crate
//!    (`$CARGO_HOME/registry/src/*/mlx-sys-0.7.0/src/mlx-c`, put there by
//!    `cargo fetch --manifest-path crates/mlx-sys/fetch/Cargo.toml`; override with `MLX_C_SRC`);
//! 2. finds MLX itself in Apple's Python wheel (`mlx[cpu]` on Linux, `mlx` with Metal on macOS,
//!    `mlx[cuda12]`/`mlx[cuda13]` on NVIDIA): `MLX_DIR`, else the link `$MLXI_HOME/mlx` (kept by
//!    `./setup`), else `$MLXI_HOME/venv`, else `python3` on PATH; and which backend the wheel is
//!    (published as `DEP_MLX_BACKEND`);
//! 3. compiles mlx-c's C++ files statically with the `cc` crate, straight against the wheel's
//!    headers (no CMake, so no CUDA toolkit for the CUDA wheel; Apple's `/usr/bin/c++` on
//!    macOS), with `compat/mlxc_compat.h` force-included (a minimal
//!    `std::format` for GCC 12, and MLX's software half types on non-aarch64 targets);
//! 4. links `static=mlxc`, `dylib=mlx`, and the C++ runtime (`stdc++` on Linux, `c++` on macOS);
//! 5. runs bindgen over `mlx/c/*.h` and publishes the MLX library folder as `DEP_MLX_LIBDIR`, which
//!    mlxi's own build script turns into an rpath.
//!
//! # Bumping MLX
//! mlx-rs pins mlx-sys exactly, and mlx-c matches one MLX release exactly. Bump all three together:
//! the mlx-rs version in `Cargo.toml`, this crate's version and `MLX_C_CRATE`/`MLX_VERSION` in
//! `build.rs`, `fetch/Cargo.toml`, and the wheel pin in `setup`.
#![allow(non_upper_case_globals)]
#![allow(non_camel_case_types)]
#![allow(non_snake_case)]
#![allow(clippy::all)]

include!(concat!(env!("OUT_DIR"), "/bindings.rs"));

/// mlx-rs seeds `RandomState::new()` with this macOS-only clock. Elsewhere, provide it from the
/// system clock (nanoseconds), which serves the same purpose: a seed that varies per run.
#[cfg(not(target_vendor = "apple"))]
#[no_mangle]
pub extern "C" fn mach_approximate_time() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}
