//! Runaway scripts end with an error: recursion at the call-depth limit, loops at the operation
//! limit, and anything at Ctrl-C (SIGINT).

mod common;
use common::*;

use std::io::Read;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn runaway_recursion_is_stopped() {
    let err = eval("fn f(n) { f(n + 1) }\nf(0)").failed().to_string();
    assert!(
        err.starts_with("<-e>:2:1: more than 200 nested function calls (runaway recursion?)"),
        "{err}"
    );
    // Real recursion well inside the limit works.
    assert_eq!(
        eval("fn f(n) { if n == 0 { 0 } else { 1 + f(n - 1) } } f(150)").ok(),
        "150"
    );
}

#[test]
fn the_operation_limit_stops_an_endless_loop() {
    let home = scratch();
    let started = Instant::now();
    let out: Run = mlxi(home.path())
        .env("MLXI_MAX_OPERATIONS", "2000000")
        .args(["-e", "let i = 0;\nloop { i += 1; }"])
        .output()
        .expect("runs")
        .into();
    assert!(started.elapsed() < Duration::from_secs(20));
    let err = out.failed();
    assert!(
        err.starts_with("<-e>:2:")
            && err.contains("stopped after 2000000 operations (runaway loop?)"),
        "{err}"
    );
}

#[test]
fn the_default_operation_limit_is_generous() {
    // A million script operations (far more than experiment scripts do between MLX calls).
    let code = "let s = 0; for i in 0..200000 { s += i % 7; } s";
    assert_eq!(eval(code).ok(), "599994");
}

/// Starts `mlxi` with `args`, waits until it is busy, sends SIGINT, and returns its exit code,
/// stderr and how long it took to stop.
fn interrupt(args: &[&str]) -> (Option<i32>, String, Duration) {
    let home = scratch();
    let mut child = mlxi(home.path())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    std::thread::sleep(Duration::from_millis(700));
    let sent = Instant::now();
    let status = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .expect("kill runs");
    assert!(status.success());
    let deadline = Instant::now() + Duration::from_secs(20);
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s.code();
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("mlxi did not stop on SIGINT");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let took = sent.elapsed();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    (code, stderr, took)
}

#[test]
fn ctrl_c_stops_an_endless_loop() {
    let (code, stderr, took) = interrupt(&["-e", "loop {}"]);
    assert_eq!(code, Some(130), "{stderr}");
    assert_eq!(stderr.trim(), "interrupted");
    assert!(took < Duration::from_secs(5), "took {took:?}");
}

#[test]
fn ctrl_c_stops_a_script() {
    let dir = scratch();
    write(
        dir.path(),
        "spin.rhai",
        "let x = 0;\nwhile true { x += 1; }",
    );
    let path = dir.path().join("spin.rhai");
    let (code, stderr, _) = interrupt(&["run", path.to_str().expect("utf-8 path")]);
    assert_eq!(code, Some(130), "{stderr}");
    assert_eq!(stderr.trim(), "interrupted");
}
