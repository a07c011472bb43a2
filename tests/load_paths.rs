//! `load` resolves a path as every file verb does: `~/` is the home folder and a relative path
//! is relative to the script's folder (not the current folder); a path that is neither a model
//! nor a repo id is an error naming where it looked.

mod common;
use common::*;

use std::path::Path;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/llama");

/// A copy of the llama fixture at `dir/name`.
fn model_at(dir: &Path, name: &str) {
    let to = dir.join(name);
    std::fs::create_dir_all(&to).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(Path::new(FIXTURE).join(f), to.join(f)).unwrap();
    }
}

#[test]
fn a_relative_model_path_is_relative_to_the_script() {
    let project = scratch();
    let elsewhere = scratch();
    model_at(project.path(), "weights/small/tiny");
    let script = write(
        project.path(),
        "exp.rhai",
        r#"let m = load("weights/small/tiny"); print(`${m.info().name} ${m.n_layers}`);"#,
    );
    let out = run_in(elsewhere.path(), &[script.to_str().unwrap()]);
    assert_eq!(out.ok(), "tiny 2");
    // From the current folder it is not found.
    let home = scratch();
    let out = eval_in(
        home.path(),
        elsewhere.path(),
        r#"load("weights/small/tiny")"#,
    );
    let err = out.failed();
    assert!(
        err.contains("no such file or folder") && err.contains("weights/small/tiny"),
        "{err}"
    );
}

#[test]
fn a_model_path_may_start_at_home() {
    let fake_home = scratch();
    let cwd = scratch();
    model_at(fake_home.path(), "m/tiny");
    let home = scratch();
    let out: Run = mlxi(home.path())
        .env("HOME", fake_home.path())
        .current_dir(cwd.path())
        .args(["-e", r#"load("~/m/tiny").n_layers"#])
        .output()
        .unwrap()
        .into();
    assert_eq!(out.ok(), "2");
}
