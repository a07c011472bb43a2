//! Gives every binary of this package (mlxi, tests, benches) an rpath to the MLX library, so it
//! runs without LD_LIBRARY_PATH/DYLD_LIBRARY_PATH; on Linux with the CPU wheel makes OpenBLAS
//! provide the BLAS, and with the CUDA wheel lets the link proceed without the CUDA libraries.

fn main() {
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
        // OpenBLAS here makes cblas_sgemm & co. resolve to it. The results are the same.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-lopenblas,--as-needed");
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
