//! Gives every binary of this package (mlxi, tests, benches) an rpath to the MLX library, so it
//! runs without LD_LIBRARY_PATH/DYLD_LIBRARY_PATH, and on Linux makes OpenBLAS provide the BLAS.

fn main() {
    let lib_dir =
        std::env::var("DEP_MLX_LIBDIR").expect("the mlx-sys build script publishes DEP_MLX_LIBDIR");
    println!("cargo:rustc-link-arg=-Wl,-rpath,{lib_dir}");
    println!("cargo:rerun-if-env-changed=DEP_MLX_LIBDIR");
    // The recipe library is embedded with include_dir!, which cargo cannot see: rebuild when
    // a file in stdlib/ changes.
    println!("cargo:rerun-if-changed=stdlib");

    let target_os = std::env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if target_os == "linux" {
        // The mlx-cpu wheel links the reference BLAS it bundles (~30x slower matmuls). A direct
        // dependency of the executable is searched before libmlx's own dependencies, so linking
        // OpenBLAS here makes cblas_sgemm & co. resolve to it. The results are the same.
        println!("cargo:rustc-link-arg=-Wl,--no-as-needed,-lopenblas,--as-needed");
    }
}
