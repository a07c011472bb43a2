//! Gives every binary of this package (mlxi, tests, benches) an rpath to the MLX library, so it
//! runs without LD_LIBRARY_PATH/DYLD_LIBRARY_PATH; on Linux with the CPU wheel makes OpenBLAS
//! provide the BLAS, and with the CUDA wheel lets the link proceed without the CUDA libraries.

use std::path::PathBuf;

/// The BLAS linked ahead of the CPU wheel's bundled reference BLAS on Linux.
enum Blas {
    /// Intel's MKL, in this folder (`$MLXI_HOME/blas`, a link ./setup keeps to its venv's lib/).
    Mkl(PathBuf),
    /// The system's OpenBLAS (Debian's libopenblas-dev).
    OpenBlas,
}

/// `MLXI_BLAS=openblas` or `mkl` chooses; by default MKL when ./setup installed it, else
/// OpenBLAS.
fn blas() -> Blas {
    println!("cargo:rerun-if-env-changed=MLXI_BLAS");
    println!("cargo:rerun-if-env-changed=MLXI_HOME");
    let home = std::env::var_os("MLXI_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/mlxi")));
    let dir = home.map(|h| h.join("blas"));
    let has_mkl = dir
        .as_ref()
        .is_some_and(|d| d.join("libmkl_core.so.3").is_file());
    if let Some(d) = &dir {
        // (./setup touches this build script when it makes or removes the link.)
        println!("cargo:rerun-if-changed={}", d.display());
    }
    match std::env::var("MLXI_BLAS").as_deref() {
        Ok("openblas") => Blas::OpenBlas,
        Ok("mkl") if !has_mkl => panic!(
            "MLXI_BLAS=mkl but MKL is not installed in $MLXI_HOME/blas: run ./setup (it \
             installs MKL on x86-64 processors with AVX2), or unset MLXI_BLAS"
        ),
        Ok("mkl") | Err(_) if has_mkl => Blas::Mkl(dir.unwrap_or_default()),
        Err(_) => Blas::OpenBlas,
        Ok(other) => panic!("MLXI_BLAS={other}: expected mkl or openblas"),
    }
}

fn main() {
    println!("cargo::rustc-check-cfg=cfg(mlxi_blas, values(\"mkl\", \"openblas\"))");
    let lib_dir =
        std::env::var("DEP_MLX_LIBDIR").expect("the mlx-sys build script publishes DEP_MLX_LIBDIR");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    println!("cargo:rerun-if-env-changed=DEP_MLX_LIBDIR");
    // The recipe library is embedded with include_dir!, which cargo cannot see: rebuild when
    // a file in stdlib/ changes.
    println!("cargo:rerun-if-changed=stdlib");

    println!("cargo:rerun-if-env-changed=DEP_MLX_BACKEND");
    let backend = std::env::var("DEP_MLX_BACKEND").unwrap_or_else(|_| "cpu".into());
    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" && backend == "cpu" {
        // The mlx-cpu wheel links the reference BLAS it bundles (~30x slower matmuls). A direct
        // dependency of the executable is searched before libmlx's own dependencies, so linking
        // a BLAS here makes cblas_sgemm & co. (and LAPACK) resolve to it.
        match blas() {
            Blas::Mkl(dir) => {
                // Intel's MKL from PyPI (./setup installs it where the processor has AVX2):
                // the LP64 interface, GNU OpenMP threading, the core; it finds its kernels
                // (libmkl_avx2.so.3, ...) beside libmkl_core. The link path is kept unresolved
                // so that the rpath survives a re-made venv, as for MLX.
                let d = dir.display();
                println!("cargo:rustc-link-arg=-Wl,-rpath,{d}");
                println!(
                    "cargo:rustc-link-arg=-Wl,--no-as-needed,-L{d},-l:libmkl_intel_lp64.so.3,\
                     -l:libmkl_gnu_thread.so.3,-l:libmkl_core.so.3,-l:libgomp.so.1,--as-needed"
                );
                println!("cargo:rustc-cfg=mlxi_blas=\"mkl\"");
            }
            Blas::OpenBlas => {
                println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-lopenblas,--as-needed");
                println!("cargo:rustc-cfg=mlxi_blas=\"openblas\"");
            }
        }
    }
    if target_os == "linux" && backend == "cuda" {
        // The CUDA wheel's libmlx.so needs the CUDA runtime, cuBLAS, cuDNN, NCCL... only when it
        // runs: a machine with no GPU and no CUDA libraries can still link mlxi against it.
        println!("cargo:rustc-link-arg=-Wl,--allow-shlib-undefined");
    }
    if target_os == "macos" {
        // libmlx.dylib's minimum (its LC_BUILD_VERSION says macOS 14.0); .cargo/config.toml
        // sets MACOSX_DEPLOYMENT_TARGET to the same for rustc and the cc crate.
        println!("cargo:rerun-if-env-changed=MACOSX_DEPLOYMENT_TARGET");
    }
}
