//! What the Mac build relies on, checked in Apple's real macOS wheels from Linux: nobody here has
//! a Mac, so a broken Mac path is only ever found by checks like these.
//!
//! The wheels (`mlx==0.32.2` and `mlx-metal==0.32.2` for `macosx_14_0_arm64`) are downloaded
//! from PyPI once, checked against pinned SHA-256 sums, and kept in
//! `$MLXI_HOME/downloads/macos/`. Then, read with goblin (a Mach-O parser) and the zip crate:
//! `libmlx.dylib` and `mlx.metallib` side by side in `mlx/lib/` (MLX finds the metallib beside
//! its library), the install name `@rpath/libmlx.dylib` (what mlxi's rpath resolves), an arm64
//! library whose minimum macOS is 14.0 (what `.cargo/config.toml` and setup build for), every
//! `@rpath` dependency shipped beside it, `MLXConfig.cmake` version 0.32.2 with Metal on,
//! `Requires-Python >= 3.10` (why setup looks for a newer Python than macOS's 3.9), and that pip
//! refuses a Python 3.9 download. Finally mlx-c's headers are compiled (syntax only) against the
//! Mac wheel's headers with the defines the Mac build passes, as crates/mlx-sys/build.rs does.

use std::collections::BTreeSet;
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::Command;

use goblin::mach::load_command::CommandVariant;
use goblin::mach::{Mach, MachO};

const MLX_WHEEL: &str = "mlx-0.32.2-cp312-cp312-macosx_14_0_arm64.whl";
const MLX_WHEEL_SHA256: &str = "77217798a2b036bae9f213b851d4cde4581893787c9964458b7d471f86036bd6";
const METAL_WHEEL: &str = "mlx_metal-0.32.2-py3-none-macosx_14_0_arm64.whl";
const METAL_WHEEL_SHA256: &str = "3825fff379dbc107dd3413e564a06caeaa24819910ec49c0439e454c06a1b9b8";

fn mlxi_home() -> PathBuf {
    std::env::var_os("MLXI_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").expect("HOME is set")).join(".cache/mlxi")
        })
}

/// A Python with pip: the venv ./setup made, else python3.
fn python() -> PathBuf {
    let venv = mlxi_home().join("venv/bin/python3");
    if venv.exists() {
        venv
    } else {
        "python3".into()
    }
}

fn sha256(path: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(path)
        .output()
        .expect("sha256sum runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_string()
}

/// The two wheels, downloaded once (a lock file keeps parallel tests from racing).
fn wheels() -> (PathBuf, PathBuf) {
    let dir = mlxi_home().join("downloads/macos");
    fs::create_dir_all(&dir).expect("create the download folder");
    let lock = fs::File::create(dir.join(".lock")).expect("lock file");
    // SAFETY: flock on a file descriptor this function owns; released when `lock` drops.
    let rc = unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&lock), libc::LOCK_EX) };
    assert_eq!(rc, 0, "lock the download folder");
    let mlx = dir.join(MLX_WHEEL);
    let metal = dir.join(METAL_WHEEL);
    let good = |p: &Path, sum: &str| p.exists() && sha256(p) == sum;
    if !good(&mlx, MLX_WHEEL_SHA256) || !good(&metal, METAL_WHEEL_SHA256) {
        let out = Command::new(python())
            .args([
                "-m",
                "pip",
                "download",
                "-q",
                "--disable-pip-version-check",
                "--no-deps",
            ])
            .args([
                "--platform",
                "macosx_14_0_arm64",
                "--python-version",
                "3.12",
            ])
            .args([
                "--only-binary=:all:",
                "mlx==0.32.2",
                "mlx-metal==0.32.2",
                "-d",
            ])
            .arg(&dir)
            .output()
            .expect("pip runs");
        assert!(
            out.status.success(),
            "pip download of the macOS wheels failed:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(sha256(&mlx), MLX_WHEEL_SHA256, "{}", mlx.display());
    assert_eq!(sha256(&metal), METAL_WHEEL_SHA256, "{}", metal.display());
    (mlx, metal)
}

fn member(wheel: &Path, name: &str) -> Vec<u8> {
    let file = fs::File::open(wheel).expect("open wheel");
    let mut zip = zip::ZipArchive::new(file).expect("a wheel is a zip");
    let mut entry = zip
        .by_name(name)
        .unwrap_or_else(|_| panic!("{} has no {name}", wheel.display()));
    let mut bytes = Vec::new();
    entry.read_to_end(&mut bytes).expect("read member");
    bytes
}

fn names(wheel: &Path) -> BTreeSet<String> {
    let file = fs::File::open(wheel).expect("open wheel");
    let zip = zip::ZipArchive::new(file).expect("a wheel is a zip");
    zip.file_names().map(str::to_owned).collect()
}

fn text(wheel: &Path, name: &str) -> String {
    String::from_utf8(member(wheel, name)).expect("utf-8")
}

/// The thin arm64 Mach-O of a dylib (a universal file's arm64 slice).
fn arm64<'a>(bytes: &'a [u8]) -> MachO<'a> {
    match Mach::parse(bytes).expect("a Mach-O file") {
        Mach::Binary(m) => m,
        Mach::Fat(fat) => {
            let archs = fat.arches().expect("fat arches");
            let i = archs
                .iter()
                .position(|a| a.cputype == goblin::mach::constants::cputype::CPU_TYPE_ARM64)
                .expect("an arm64 slice");
            match fat.get(i).expect("arm64 slice") {
                goblin::mach::SingleArch::MachO(m) => m,
                _ => panic!("the arm64 slice is an archive"),
            }
        }
    }
}

/// `(major, minor)` from a Mach-O packed version (`xxxx.yy.zz`).
fn version(packed: u32) -> (u32, u32) {
    (packed >> 16, (packed >> 8) & 0xff)
}

#[test]
fn libmlx_and_its_metallib_sit_side_by_side_with_the_names_the_build_expects() {
    let (_, metal) = wheels();
    let files = names(&metal);
    for f in ["mlx/lib/libmlx.dylib", "mlx/lib/mlx.metallib"] {
        assert!(files.contains(f), "{f} missing from {METAL_WHEEL}");
    }
    // The metallib holds MLX's compiled kernels: far larger than any stray placeholder.
    let metallib = member(&metal, "mlx/lib/mlx.metallib");
    assert!(metallib.len() > 10_000_000, "{} bytes", metallib.len());
    assert_eq!(&metallib[..4], b"MTLB", "a Metal library");

    let bytes = member(&metal, "mlx/lib/libmlx.dylib");
    let lib = arm64(&bytes);
    assert_eq!(
        lib.header.cputype,
        goblin::mach::constants::cputype::CPU_TYPE_ARM64
    );
    assert_eq!(lib.name, Some("@rpath/libmlx.dylib"), "install name");

    // The minimum macOS: LC_BUILD_VERSION (platform 1 = macOS) or LC_VERSION_MIN_MACOSX.
    let minos = lib
        .load_commands
        .iter()
        .find_map(|c| match &c.command {
            CommandVariant::BuildVersion(b) if b.platform == 1 => Some(b.minos),
            CommandVariant::VersionMinMacosx(v) => Some(v.version),
            _ => None,
        })
        .expect("a minimum macOS version");
    assert_eq!(version(minos), (14, 0), "libmlx.dylib's minimum macOS");
    let setup = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/setup")).unwrap();
    assert!(setup.contains("MACOS_MIN=14\n"), "setup refuses macOS < 14");
    let config = fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/.cargo/config.toml"))
        .expect(".cargo/config.toml");
    assert!(
        config.contains("MACOSX_DEPLOYMENT_TARGET = { value = \"14.0\", force = true }"),
        "{config}"
    );

    // Every library it loads through @rpath ships beside it; the rest are the system's.
    for dep in &lib.libs {
        if let Some(name) = dep.strip_prefix("@rpath/") {
            assert!(
                files.contains(&format!("mlx/lib/{name}")),
                "libmlx.dylib needs {dep}, which the wheel does not ship in mlx/lib"
            );
        } else if *dep != "self" {
            assert!(
                dep.starts_with("/usr/lib/") || dep.starts_with("/System/Library/"),
                "libmlx.dylib needs {dep}, outside the system and the wheel"
            );
        }
    }
    assert!(
        lib.libs.contains(&"/usr/lib/libc++.1.dylib"),
        "built against the system libc++ (which the pinned /usr/bin/c++ uses): {:?}",
        lib.libs
    );
}

#[test]
fn the_cmake_config_and_metadata_say_0_32_2_metal_and_python_3_10() {
    let (mlx, metal) = wheels();
    let version = text(&metal, "mlx/share/cmake/MLX/MLXConfigVersion.cmake");
    assert!(
        version.contains("set(PACKAGE_VERSION \"0.32.2\")"),
        "{version}"
    );
    let config = text(&metal, "mlx/share/cmake/MLX/MLXConfig.cmake");
    // configure_file leaves `if (ON)` for the options the wheel was built with.
    assert!(
        config.contains("if (ON)\n    set(MLX_BUILD_METAL ON)"),
        "Metal on"
    );
    assert!(config.contains("-DACCELERATE_NEW_LAPACK"), "{config}");
    let build = fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crates/mlx-sys/build.rs"
    ))
    .unwrap();
    for define in [
        "\"ACCELERATE_NEW_LAPACK\"",
        "\"_METAL_\"",
        "\"/usr/bin/c++\"",
    ] {
        assert!(build.contains(define), "mlx-sys passes {define} on macOS");
    }
    for (wheel, meta) in [
        (&metal, "mlx_metal-0.32.2.dist-info/METADATA"),
        (&mlx, "mlx-0.32.2.dist-info/METADATA"),
    ] {
        let m = text(wheel, meta);
        assert!(m.contains("\nRequires-Python: >=3.10\n"), "{meta}");
    }
    let m = text(&mlx, "mlx-0.32.2.dist-info/METADATA");
    assert!(
        m.contains("Requires-Dist: mlx-metal==0.32.2; platform_system == \"Darwin\""),
        "plain mlx==0.32.2 brings Metal on a Mac"
    );
}

#[test]
fn pip_refuses_mlx_for_python_3_9_as_on_a_fresh_mac() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(python())
        .args([
            "-m",
            "pip",
            "download",
            "--disable-pip-version-check",
            "--no-deps",
        ])
        .args(["--platform", "macosx_14_0_arm64", "--python-version", "3.9"])
        .args(["--only-binary=:all:", "mlx==0.32.2", "-d"])
        .arg(dir.path())
        .output()
        .expect("pip runs");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "pip found an mlx for Python 3.9");
    assert!(
        err.contains("No matching distribution found for mlx==0.32.2"),
        "{err}"
    );
}

#[test]
fn mlx_c_compiles_against_the_mac_wheels_headers() {
    let (_, metal) = wheels();
    let dir = tempfile::tempdir().unwrap();
    let file = fs::File::open(&metal).unwrap();
    let mut zip = zip::ZipArchive::new(file).unwrap();
    for i in 0..zip.len() {
        let mut entry = zip.by_index(i).unwrap();
        let Some(path) = entry.enclosed_name() else {
            continue;
        };
        if !path.starts_with("mlx/include") {
            continue;
        }
        let dest = dir.path().join(path);
        if entry.is_dir() {
            continue;
        }
        fs::create_dir_all(dest.parent().unwrap()).unwrap();
        let mut bytes = Vec::new();
        entry.read_to_end(&mut bytes).unwrap();
        fs::write(dest, bytes).unwrap();
    }
    let src = mlx_c_source();
    let compat = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/crates/mlx-sys/compat/mlxc_compat.h"
    );
    // metal.cpp includes the Metal backend header and, through private/mlx.h, all of mlx/mlx.h.
    for unit in ["metal.cpp", "ops.cpp"] {
        let out = Command::new("c++")
            .args([
                "-std=c++20",
                "-fsyntax-only",
                "-D_METAL_",
                "-DACCELERATE_NEW_LAPACK",
            ])
            .arg("-I")
            .arg(&src)
            .arg("-I")
            .arg(dir.path().join("mlx/include"))
            .args(["-include", compat])
            .arg(src.join("mlx/c").join(unit))
            .output()
            .expect("c++ runs");
        assert!(
            out.status.success(),
            "{unit} against the Mac headers:\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

/// mlx-c's sources, where ./setup's `cargo fetch` put them (as crates/mlx-sys/build.rs finds them).
fn mlx_c_source() -> PathBuf {
    if let Some(dir) = std::env::var_os("MLX_C_SRC") {
        return dir.into();
    }
    let cargo_home = std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").unwrap()).join(".cargo"));
    fs::read_dir(cargo_home.join("registry/src"))
        .expect("cargo's registry")
        .flatten()
        .map(|d| d.path().join("mlx-sys-0.7.0/src/mlx-c"))
        .find(|p| p.join("mlx/c/ops.cpp").is_file())
        .expect("mlx-c sources (run ./setup)")
}
