//! Build script: compile mlx-c 0.7.0 against the MLX shipped in Apple's Python wheel, then
//! generate the same bindings the genuine mlx-sys crate does. See `src/lib.rs` for the why.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The MLX version mlx-c 0.7.0 was written against. The wheel must match it exactly.
const MLX_VERSION: &str = "0.32.2";
const MLX_C_CRATE: &str = "mlx-sys-0.7.0";

fn fail(message: &str) -> ! {
    eprintln!("\nerror: {message}\n");
    panic!("mlx-sys build failed: {message}");
}

/// Where cargo unpacked the genuine mlx-sys crate (which carries mlx-c's sources).
fn mlx_c_source() -> PathBuf {
    println!("cargo:rerun-if-env-changed=MLX_C_SRC");
    if let Some(dir) = env::var_os("MLX_C_SRC") {
        return PathBuf::from(dir);
    }
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")))
        .unwrap_or_else(|| fail("neither CARGO_HOME nor HOME is set"));
    let registry = cargo_home.join("registry").join("src");
    let mut found: Vec<PathBuf> = std::fs::read_dir(&registry)
        .into_iter()
        .flatten()
        .flatten()
        .map(|index| index.path().join(MLX_C_CRATE).join("src").join("mlx-c"))
        .filter(|dir| dir.join("CMakeLists.txt").is_file())
        .collect();
    found.sort();
    found.pop().unwrap_or_else(|| {
        fail(&format!(
            "mlx-c sources not found under {}/*/{MLX_C_CRATE}/src/mlx-c.\n\
             Run ./setup, or: cargo fetch --manifest-path crates/mlx-sys/fetch/Cargo.toml\n\
             (or point MLX_C_SRC at an mlx-c 0.7.0 source tree)",
            registry.display()
        ))
    })
}

/// Ask a Python interpreter where the `mlx` namespace package lives.
fn mlx_prefix_from_python(python: &Path) -> Option<PathBuf> {
    let out = Command::new(python)
        .args(["-c", "import mlx; print(list(mlx.__path__)[0])"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
    dir.join("share/cmake/MLX/MLXConfig.cmake")
        .is_file()
        .then_some(dir)
}

/// The MLX install prefix (the wheel's `mlx/` folder): `MLX_DIR`, else the venv `./setup` made,
/// else whatever `python3` on PATH imports.
fn mlx_prefix() -> PathBuf {
    for var in ["MLX_DIR", "MLXI_HOME", "MLXI_PYTHON"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    if let Some(dir) = env::var_os("MLX_DIR") {
        let dir = PathBuf::from(dir);
        // Accept either the prefix or the folder holding MLXConfig.cmake.
        let prefix = if dir.join("MLXConfig.cmake").is_file() {
            dir.ancestors().nth(3).map(Path::to_path_buf).unwrap_or(dir)
        } else {
            dir
        };
        if !prefix.join("share/cmake/MLX/MLXConfig.cmake").is_file() {
            fail(&format!(
                "MLX_DIR={} has no share/cmake/MLX/MLXConfig.cmake",
                prefix.display()
            ));
        }
        return prefix;
    }
    let home = env::var_os("MLXI_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/mlxi")));
    let mut pythons: Vec<PathBuf> = Vec::new();
    if let Some(p) = env::var_os("MLXI_PYTHON") {
        pythons.push(p.into());
    }
    if let Some(home) = home {
        pythons.push(home.join("venv/bin/python3"));
    }
    pythons.push("python3".into());
    pythons
        .iter()
        .find_map(|p| mlx_prefix_from_python(p))
        .unwrap_or_else(|| {
            fail(&format!(
                "MLX {MLX_VERSION} not found. Run ./setup, or install the wheel \
                 (pip install \"mlx[cpu]=={MLX_VERSION}\" on Linux, \"mlx=={MLX_VERSION}\" on macOS) \
                 and set MLX_DIR to its mlx/ folder"
            ))
        })
}

fn check_version(prefix: &Path) {
    let file = prefix.join("share/cmake/MLX/MLXConfigVersion.cmake");
    let Ok(text) = std::fs::read_to_string(&file) else {
        return;
    };
    let version = text.lines().find_map(|line| {
        let rest = line.trim().strip_prefix("set(PACKAGE_VERSION \"")?;
        rest.split('"').next().map(str::to_owned)
    });
    if let Some(v) = version {
        if v != MLX_VERSION {
            fail(&format!(
                "MLX at {} is version {v}; mlx-c 0.7.0 needs exactly {MLX_VERSION}. \
                 Install mlx=={MLX_VERSION} (bump mlx-rs, mlx-sys and the wheel together)",
                prefix.display()
            ));
        }
    }
}

fn main() {
    let target_os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    let target_arch = env::var("CARGO_CFG_TARGET_ARCH").unwrap_or_default();
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let compat = manifest.join("compat");
    println!("cargo:rerun-if-changed={}", compat.display());
    println!("cargo:rerun-if-changed=build.rs");

    let src = mlx_c_source();
    let prefix = mlx_prefix();
    check_version(&prefix);
    let lib_dir = prefix.join("lib");

    // 1. mlx-c, as a static library, against the wheel's MLX.
    let dst = cmake::Config::new(&src)
        .define("MLX_C_USE_SYSTEM_MLX", "ON")
        .define("MLX_DIR", prefix.join("share/cmake/MLX"))
        .define("MLX_C_BUILD_EXAMPLES", "OFF")
        .define("BUILD_SHARED_LIBS", "OFF")
        .define("CMAKE_BUILD_TYPE", "Release")
        .define("CMAKE_PROJECT_INCLUDE", compat.join("inject.cmake"))
        .build_target("mlxc")
        .build();

    // 2. Link: static mlx-c, the wheel's shared libmlx, and the C++ runtime.
    println!(
        "cargo:rustc-link-search=native={}",
        dst.join("build").display()
    );
    println!("cargo:rustc-link-lib=static=mlxc");
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=mlx");
    if target_os == "macos" {
        println!("cargo:rustc-link-lib=dylib=c++");
    } else {
        println!("cargo:rustc-link-lib=dylib=stdc++");
    }

    // 3. Tell dependents (mlxi's build script reads DEP_MLX_*) where libmlx lives, for the rpath.
    println!("cargo::metadata=libdir={}", lib_dir.display());
    println!("cargo::metadata=prefix={}", prefix.display());
    println!("cargo::metadata=version={MLX_VERSION}");

    // 4. Bindings over mlx/c/*.h, as the genuine crate generates them.
    let mut headers: Vec<PathBuf> = std::fs::read_dir(src.join("mlx/c"))
        .unwrap_or_else(|e| fail(&format!("cannot read {}/mlx/c: {e}", src.display())))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "h"))
        .collect();
    headers.sort();
    let mut builder = bindgen::Builder::default()
        .rust_target("1.73.0".parse().expect("valid rust target"))
        .clang_arg(format!("-I{}", src.display()))
        .blocklist_function("malloc")
        .blocklist_function("realloc");
    if target_arch != "aarch64" {
        // No native half types on this target: give clang the storage types mlx-rs expects
        // (`float16_t` as bindgen's half struct, `bfloat16_t` as u16), as on aarch64.
        let prelude = compat.join("bindgen_half.h");
        builder = builder.clang_args(["-include".to_string(), prelude.display().to_string()]);
    }
    for header in &headers {
        builder = builder.header(header.to_string_lossy());
    }
    let bindings = builder
        .generate()
        .unwrap_or_else(|e| fail(&format!("bindgen failed: {e}")));
    let out = PathBuf::from(env::var("OUT_DIR").expect("set by cargo"));
    bindings
        .write_to_file(out.join("bindings.rs"))
        .unwrap_or_else(|e| fail(&format!("cannot write bindings: {e}")));
}
