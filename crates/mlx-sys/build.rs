//! Build script: compile mlx-c 0.7.0 (with the `cc` crate) against the MLX shipped in Apple's
//! Python wheel, then generate the same bindings the genuine mlx-sys crate does. See `src/lib.rs` for the why.

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
    is_prefix(&dir).then_some(dir)
}

/// A folder laid out like the wheel's `mlx/`: headers, the library and the CMake config (the
/// last only as a marker that this is an MLX install; CMake itself is not used).
fn is_prefix(dir: &Path) -> bool {
    dir.join("share/cmake/MLX/MLXConfig.cmake").is_file() && dir.join("include/mlx/mlx.h").is_file()
}

/// The MLX install prefix (the wheel's `mlx/` folder): `MLX_DIR`, else the stable link
/// `$MLXI_HOME/mlx` that `./setup` keeps pointing at its venv's wheel, else that venv, else
/// whatever `python3` on PATH imports. The path is returned as found, links unresolved, so the
/// rpath baked into binaries survives a re-made venv.
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
        if !is_prefix(&prefix) {
            fail(&format!(
                "MLX_DIR={} is not an MLX install (no include/mlx/mlx.h and \
                 share/cmake/MLX/MLXConfig.cmake)",
                prefix.display()
            ));
        }
        return prefix;
    }
    let home = env::var_os("MLXI_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache/mlxi")));
    if let Some(home) = &home {
        // (./setup touches this build script when it makes or re-points the link.)
        let link = home.join("mlx");
        if is_prefix(&link) {
            return link;
        }
    }
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

/// Which MLX build the wheel is: `metal`, `cuda` or `cpu`. Read from the wheel itself (the
/// metallib beside the library, or the backend wheel's dist-info beside `mlx/`), overridable
/// with `MLXI_MLX_BACKEND` for an MLX built from source.
fn backend(prefix: &Path) -> String {
    println!("cargo:rerun-if-env-changed=MLXI_MLX_BACKEND");
    if let Ok(b) = env::var("MLXI_MLX_BACKEND") {
        if !["metal", "cuda", "cpu"].contains(&b.as_str()) {
            fail(&format!(
                "MLXI_MLX_BACKEND={b}: expected metal, cuda or cpu"
            ));
        }
        return b;
    }
    if prefix.join("lib/mlx.metallib").is_file() {
        return "metal".into();
    }
    let real = std::fs::canonicalize(prefix).unwrap_or_else(|_| prefix.to_path_buf());
    let siblings: Vec<String> = real
        .parent()
        .and_then(|site| std::fs::read_dir(site).ok())
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    if siblings.iter().any(|n| n.starts_with("mlx_cuda")) {
        "cuda".into()
    } else {
        "cpu".into()
    }
}

/// The shared library file of MLX in `lib_dir`.
fn library_file(lib_dir: &Path, target_os: &str) -> PathBuf {
    let name = if target_os == "macos" {
        "libmlx.dylib"
    } else {
        "libmlx.so"
    };
    let file = lib_dir.join(name);
    if !file.is_file() {
        fail(&format!(
            "{} is missing: the MLX wheel is incomplete",
            file.display()
        ));
    }
    file
}

/// mlx-c's C++ sources: every `mlx/c/*.cpp` (the list mlx-c's own CMakeLists compiles).
fn mlx_c_sources(src: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(src.join("mlx/c"))
        .unwrap_or_else(|e| fail(&format!("cannot read {}/mlx/c: {e}", src.display())))
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "cpp"))
        .collect();
    files.sort();
    if files.len() < 20 {
        fail(&format!(
            "{}/mlx/c holds {} C++ files; mlx-c 0.7.0 has 26",
            src.display(),
            files.len()
        ));
    }
    files
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
    let backend = backend(&prefix);
    let lib_dir = prefix.join("lib");
    // Rebuild (and relink everything) when the library itself changes, e.g. a re-made venv.
    println!(
        "cargo:rerun-if-changed={}",
        library_file(&lib_dir, &target_os).display()
    );

    // 1. mlx-c, as a static library, compiled straight against the wheel's headers. MLX's public
    //    headers include no CUDA or Metal header, so no toolkit is needed, whichever wheel it is.
    let mut build = cc::Build::new();
    build
        .cpp(true)
        .std("c++20")
        .files(mlx_c_sources(&src))
        .include(&src)
        .include(prefix.join("include"))
        .flag("-include")
        .flag(compat.join("mlxc_compat.h").to_string_lossy().as_ref())
        .pic(true)
        .warnings(false);
    if target_os == "macos" {
        // Apple's toolchain, whatever CC/CXX or a Homebrew LLVM on PATH say: another compiler's
        // libc++ headers would not match the libc++ that libmlx.dylib was built against.
        build.compiler("/usr/bin/c++");
        // The flags MLXConfig.cmake gives its users on macOS.
        build.define("ACCELERATE_NEW_LAPACK", None);
        if backend == "metal" {
            build.define("_METAL_", None);
        }
    }
    build.compile("mlxc");

    // 2. Link: static mlx-c (cc emitted it), the wheel's shared libmlx, and the C++ runtime.
    println!("cargo:rustc-link-search=native={}", lib_dir.display());
    println!("cargo:rustc-link-lib=dylib=mlx");
    if target_os == "macos" {
        println!("cargo:rustc-link-lib=dylib=c++");
    } else {
        println!("cargo:rustc-link-lib=dylib=stdc++");
    }

    // 3. Tell dependents (mlxi's build script reads DEP_MLX_*) where libmlx lives, for the rpath,
    //    and which backend the wheel is.
    println!("cargo::metadata=libdir={}", lib_dir.display());
    println!("cargo::metadata=prefix={}", prefix.display());
    println!("cargo::metadata=version={MLX_VERSION}");
    println!("cargo::metadata=backend={backend}");

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
