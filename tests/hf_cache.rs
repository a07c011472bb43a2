//! Models by Hugging Face repo id, from a folder laid out exactly like the Hugging Face hub cache
//! (`models--ORG--NAME/refs/main`, `snapshots/HASH/...`, pointed to by `HF_HOME`), offline.

mod common;
use common::*;

use std::path::Path;

const FIXTURE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/models/llama");

/// An HF_HOME whose hub cache holds the llama fixture as `test-org/tiny-llama`.
fn hf_home() -> tempfile::TempDir {
    let home = scratch();
    let repo = home.path().join("hub/models--test-org--tiny-llama");
    let hash = "0123456789abcdef0123456789abcdef01234567";
    let snap = repo.join("snapshots").join(hash);
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), hash).unwrap();
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    ] {
        std::fs::copy(Path::new(FIXTURE).join(f), snap.join(f)).unwrap();
    }
    home
}

#[test]
fn a_cached_repo_loads_by_id_offline() {
    let hf = hf_home();
    let home = scratch();
    let out: Run = mlxi(home.path())
        .env("HF_HOME", hf.path())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HUB_CACHE")
        .args([
            "-e",
            r#"let m = load("test-org/tiny-llama"); [m.info().arch, m.n_layers, m.info().name]"#,
        ])
        .output()
        .unwrap()
        .into();
    // Named by the repo id, not by the snapshot folder (a commit hash).
    assert_eq!(out.ok(), r#"["llama", 2, "test-org/tiny-llama"]"#);

    let listed: Run = mlxi(home.path())
        .env("HF_HOME", hf.path())
        .env_remove("HF_HUB_CACHE")
        .arg("models")
        .output()
        .unwrap()
        .into();
    assert!(
        listed.ok().contains("test-org/tiny-llama"),
        "{}",
        listed.stdout
    );
}

#[test]
fn a_repo_that_is_not_cached_is_a_clear_error_offline() {
    let hf = hf_home();
    let home = scratch();
    let out: Run = mlxi(home.path())
        .env("HF_HOME", hf.path())
        .env("HF_HUB_OFFLINE", "1")
        .env_remove("HF_HUB_CACHE")
        .args(["-e", r#"load("mlx-community/Qwen3-8B-4bit")"#])
        .output()
        .unwrap()
        .into();
    let err = out.failed();
    assert!(
        err.contains("mlx-community/Qwen3-8B-4bit is not in the Hugging Face cache")
            && err.contains("HF_HUB_OFFLINE"),
        "{err}"
    );
}
