//! One writer per results file: a second process opening a results file that a running mlxi
//! holds gets a clear error naming the file (instead of the two silently losing each other's
//! rows), and opening a results file removes the temporaries a killed run left next to it.

mod common;
use common::*;

use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

/// Starts `mlxi -e` holding `results(path)` open (an endless loop after the first row).
fn holder(home: &Path, path: &Path) -> Child {
    let code = format!(
        "let r = results({:?});\nr.push(\"rows\", 1);\nloop {{}}",
        path.display().to_string()
    );
    // `-e` reads and writes in its current folder: run it where the file is.
    mlxi(home)
        .current_dir(path.parent().expect("a folder"))
        .args(["-e", &code])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starts")
}

/// Waits until the holder has written its first row.
fn wait_for_row(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !std::fs::read_to_string(path).is_ok_and(|t| t.contains("rows")) {
        assert!(
            Instant::now() < deadline,
            "the first mlxi never wrote its row"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn a_second_writer_is_refused() {
    let home = scratch();
    let dir = scratch();
    let path = dir.path().join("out.json");
    let mut first = holder(home.path(), &path);
    wait_for_row(&path);
    let code = format!(
        "let r = results({:?});\nr.push(\"rows\", 2);",
        path.display().to_string()
    );
    let second = eval_in(home.path(), dir.path(), &code);
    let _ = first.kill();
    let _ = first.wait();
    let err = second.failed();
    assert!(
        err.starts_with(&format!(
            "<-e>:1:9: results: {} is being written by another mlxi (process {})",
            path.display(),
            first.id()
        )),
        "{err}"
    );
    // The first writer's row is intact; the second wrote nothing.
    let text = std::fs::read_to_string(&path).expect("the file");
    assert!(text.contains("\"rows\": [\n    1\n  ]"), "{text}");
    // Once the first process is gone, the file can be opened again (and resumed).
    let code = format!(
        "let r = results({:?}, #{{resume: true}});\nr.push(\"rows\", 3)",
        path.display().to_string()
    );
    assert_eq!(eval_in(home.path(), dir.path(), &code).ok(), "2");
}

#[test]
fn one_process_may_reopen_its_own_file() {
    let dir = scratch();
    let path = dir.path().join("r.json");
    let code = format!(
        "let r = results({p:?}); r.set(\"a\", 1);\nlet r = results({p:?}); r.set(\"b\", 2); keys(r)",
        p = path.display().to_string()
    );
    let home = scratch();
    assert_eq!(eval_in(home.path(), dir.path(), &code).ok(), "[\"b\"]");
}

#[test]
fn stale_temporaries_are_removed() {
    let home = scratch();
    let dir = scratch();
    let path = dir.path().join("out.json");
    // A run killed in the middle of a write leaves its temporary behind.
    let mut killed = holder(home.path(), &path);
    wait_for_row(&path);
    let dead_pid = killed.id();
    let _ = killed.kill();
    let _ = killed.wait();
    let stale = dir.path().join(format!(".mlxi-{dead_pid}-aB3dE9.tmp"));
    std::fs::write(&stale, b"{\"rows\": [1, 2").expect("write");
    // Another live writer's temporary, and an unrelated file, stay.
    let live = dir
        .path()
        .join(format!(".mlxi-{}-xY7zQ1.tmp", std::process::id()));
    std::fs::write(&live, b"in progress").expect("write");
    let other = dir.path().join("notes.tmp");
    std::fs::write(&other, b"mine").expect("write");
    let code = format!("results({:?}).path", path.display().to_string());
    eval_in(home.path(), dir.path(), &code).ok();
    assert!(!stale.exists(), "the stale temporary is still there");
    assert!(live.exists() && other.exists());
}
