//! Running the real `mlxi` binary from integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const BIN: &str = env!("CARGO_BIN_EXE_mlxi");

/// A `mlxi` command with its own MLXI_HOME (no history or recipes from the machine).
pub fn mlxi(home: &Path) -> Command {
    let mut c = Command::new(BIN);
    c.env("MLXI_HOME", home)
        .env_remove("MLXI_RECIPES")
        .env_remove("MLXI_MAX_OPERATIONS")
        .env_remove("MLXI_MAX_STRING_SIZE")
        .env_remove("MLXI_MAX_ARRAY_SIZE")
        .env_remove("MLXI_MAX_MAP_SIZE")
        .env_remove("MLXI_MAX_TENSOR_BYTES")
        // Expected values were computed in full f32 on a CPU (see `full_f32`).
        .env(TF32_VAR, "0");
    c
}

/// MLX's switch for TF32 matmuls, its default for f32 on NVIDIA GPUs and M5-class Macs.
const TF32_VAR: &str = "MLX_ENABLE_TF32";

/// Keeps this test process's f32 matmuls in full f32, as the CPU-made expected values were: call
/// it first in a test, before MLX reads the variable.
pub fn full_f32() {
    std::env::set_var(TF32_VAR, "0");
}

/// The result of a run: exit code, stdout, stderr.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

impl Run {
    #[track_caller]
    pub fn ok(&self) -> &str {
        assert_eq!(
            self.code,
            Some(0),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self.stdout.trim_end()
    }

    #[track_caller]
    pub fn failed(&self) -> &str {
        assert_eq!(
            self.code,
            Some(1),
            "stdout:\n{}\nstderr:\n{}",
            self.stdout,
            self.stderr
        );
        self.stderr.trim_end()
    }
}

/// A scratch folder, removed at the end of the test.
pub fn scratch() -> tempfile::TempDir {
    tempfile::tempdir().expect("a temporary folder")
}

/// `mlxi -e CODE`.
pub fn eval(code: &str) -> Run {
    let home = scratch();
    mlxi(home.path())
        .arg("-e")
        .arg(code)
        .output()
        .expect("mlxi runs")
        .into()
}

/// `mlxi -e CODE` in `dir` (the folder `-e` may read and write) with its own MLXI_HOME `home`.
pub fn eval_in(home: &Path, dir: &Path, code: &str) -> Run {
    mlxi(home)
        .current_dir(dir)
        .args(["-e", code])
        .output()
        .expect("mlxi runs")
        .into()
}

/// `mlxi run FILE ARGS...` in `dir`.
pub fn run_in(dir: &Path, args: &[&str]) -> Run {
    let home = scratch();
    mlxi(home.path())
        .current_dir(dir)
        .arg("run")
        .args(args)
        .output()
        .expect("mlxi runs")
        .into()
}

/// Writes `text` to `dir/name`.
pub fn write(dir: &Path, name: &str, text: &str) -> PathBuf {
    let path = dir.join(name);
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("folder");
    }
    std::fs::write(&path, text).expect("write");
    path
}

/// The repository root (where `scripts/` lives).
pub fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A scratch MLXI_HOME that sees the real models folder (where ./setup put the default model).
pub fn home_with_models() -> tempfile::TempDir {
    let home = scratch();
    let real = std::env::var_os("MLXI_HOME")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var("HOME").unwrap()).join(".cache/mlxi"));
    let models = real.join("models");
    assert!(
        models.join("SmolLM2-135M-Instruct.Q4_1.gguf").is_file(),
        "the default model is missing: run ./setup"
    );
    std::os::unix::fs::symlink(&models, home.path().join("models")).unwrap();
    home
}

/// `mlxi run ARGS...` in `dir`, with the default model available.
pub fn run_with_models(dir: &Path, args: &[&str]) -> Run {
    let home = home_with_models();
    mlxi(home.path())
        .current_dir(dir)
        .arg("run")
        .args(args)
        .output()
        .expect("mlxi runs")
        .into()
}

/// MLX is not thread safe and cargo runs the tests of a file on several threads: a test that
/// touches MLX holds this lock while it runs.
pub fn mlx_lock() -> std::sync::MutexGuard<'static, ()> {
    static MLX: std::sync::Mutex<()> = std::sync::Mutex::new(());
    MLX.lock().unwrap_or_else(|e| e.into_inner())
}

/// The committed random-weight checkpoints (tests/reference/FIXTURES.md).
pub const FIXTURES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models");

/// The fixture `case` (a folder of [`FIXTURES`]) loaded in f32, a quantized one dequantized: the
/// precision its mlx-lm goldens are compared in.
pub fn load_fixture(case: &str) -> mlxi::model::Model {
    let opts = mlxi::model::LoadOptions {
        dtype: Some(mlx_rs::Dtype::Float32),
        dequantize: Some(true),
        ..Default::default()
    };
    mlxi::model::Model::load(&format!("{FIXTURES}/{case}"), &opts).unwrap()
}

/// The largest `|a - b|` of two arrays of one shape, in f32; a NaN on either side counts as
/// infinitely far.
#[track_caller]
pub fn max_abs_diff(a: &mlx_rs::Array, b: &mlx_rs::Array) -> f32 {
    assert_eq!(a.shape(), b.shape());
    let a = a.as_dtype(mlx_rs::Dtype::Float32).unwrap();
    let b = b.as_dtype(mlx_rs::Dtype::Float32).unwrap();
    a.as_slice::<f32>()
        .iter()
        .zip(b.as_slice::<f32>())
        .map(|(x, y)| (x - y).abs())
        .fold(
            0.0,
            |m, d| if d.is_nan() { f32::INFINITY } else { m.max(d) },
        )
}

/// Runs a script in this process with `ctx`: its value, or the error as the user sees it.
pub fn script(
    ctx: std::rc::Rc<mlxi::script::Context>,
    code: &str,
) -> Result<rhai::Dynamic, String> {
    mlxi::script::Runner::new(ctx)
        .eval_code("<test>", code)
        .map_err(|e| e.to_string())
}

/// The value of a script that must succeed.
#[track_caller]
pub fn expect_ok(run: Result<rhai::Dynamic, String>) -> rhai::Dynamic {
    run.unwrap_or_else(|e| panic!("script failed: {e}"))
}

/// The error of a script that must fail.
#[track_caller]
pub fn expect_err(run: Result<rhai::Dynamic, String>) -> String {
    match run {
        Ok(v) => panic!("expected an error, got {v:?}"),
        Err(e) => e,
    }
}

/// A script's array of numbers (ints or floats) as f64.
#[track_caller]
pub fn floats(v: &rhai::Dynamic) -> Vec<f64> {
    v.clone()
        .into_array()
        .expect("an array")
        .iter()
        .map(|x| {
            x.as_float()
                .or_else(|_| x.as_int().map(|i| i as f64))
                .expect("a number")
        })
        .collect()
}

pub mod ranks;

/// `mlxi ARGS...` in `dir` (a `launch` or a `run`), with the default model available and the
/// distributed variables of this test process removed; killed and failed past `limit`.
pub fn run_limited(dir: &Path, args: &[&str], limit: std::time::Duration) -> Run {
    let home = home_with_models();
    let child = ranks::command(home.path(), dir, args)
        .spawn()
        .expect("mlxi runs");
    ranks::finish(child, limit).0
}

/// The largest difference between two JSON values of the same structure (numbers compared,
/// everything else equal), or a panic naming where they differ.
pub fn json_max_diff(a: &serde_json::Value, b: &serde_json::Value, at: &str) -> f64 {
    use serde_json::Value::*;
    match (a, b) {
        (Number(x), Number(y)) => (x.as_f64().unwrap() - y.as_f64().unwrap()).abs(),
        (Array(x), Array(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: lengths");
            x.iter()
                .zip(y)
                .enumerate()
                .map(|(i, (x, y))| json_max_diff(x, y, &format!("{at}[{i}]")))
                .fold(0.0, f64::max)
        }
        (Object(x), Object(y)) => {
            assert_eq!(x.len(), y.len(), "{at}: keys");
            x.iter()
                .map(|(k, v)| json_max_diff(v, &y[k], &format!("{at}.{k}")))
                .fold(0.0, f64::max)
        }
        _ => {
            assert_eq!(a, b, "{at}");
            0.0
        }
    }
}
