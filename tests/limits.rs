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

#[test]
fn a_string_doubling_forever_is_stopped() {
    let err = eval("let s = \"x\";\nloop { s += s; }")
        .failed()
        .to_string();
    assert!(
        err.starts_with(
            "<-e>:2:10: a string would grow past the limit of 67108864 bytes; set \
             MLXI_MAX_STRING_SIZE to change it, 0 for none"
        ),
        "{err}"
    );
}

#[test]
fn a_huge_array_is_refused_in_one_operation() {
    let started = Instant::now();
    let err = eval("[].pad(100000000000, 0)").failed().to_string();
    assert!(
        err.starts_with("<-e>:1:4: an array would grow past the limit of 16777216 elements"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(20));
}

#[test]
fn size_limits_follow_the_environment() {
    let run = |var: &str, value: &str, code: &str| -> Run {
        let home = scratch();
        mlxi(home.path())
            .env(var, value)
            .args(["-e", code])
            .output()
            .expect("runs")
            .into()
    };
    assert_eq!(
        run(
            "MLXI_MAX_ARRAY_SIZE",
            "100",
            "let a = []; a.pad(100, 0); a.len()"
        )
        .ok(),
        "100"
    );
    let err = run(
        "MLXI_MAX_ARRAY_SIZE",
        "100",
        "let a = []; a.pad(101, 0); a.len()",
    );
    assert!(err
        .failed()
        .contains("limit of 100 elements; set MLXI_MAX_ARRAY_SIZE"));
    let code = "let m = #{}; for i in 0..4 { m[`k${i}`] = i; } m.len()";
    assert_eq!(run("MLXI_MAX_MAP_SIZE", "4", code).ok(), "4");
    let err = run("MLXI_MAX_MAP_SIZE", "3", code);
    assert!(err
        .failed()
        .contains("a map would grow past the limit of 3 entries"));
    let err = run(
        "MLXI_MAX_STRING_SIZE",
        "10",
        "let s = \"0123456789\"; s += \"x\"; s",
    );
    assert!(err
        .failed()
        .contains("limit of 10 bytes; set MLXI_MAX_STRING_SIZE"));
    assert_eq!(
        run("MLXI_MAX_STRING_SIZE", "0", "\"ab\" + \"cd\"").ok(),
        "abcd"
    );
}

#[test]
fn deep_nesting_is_an_error_not_a_crash() {
    let dir = scratch();
    for (open, close) in [("(", ")"), ("[", "]"), ("{", "}"), ("#{a: ", "}")] {
        let deep = format!("{}1{}", open.repeat(100_000), close.repeat(100_000));
        write(dir.path(), "deep.rhai", &deep);
        let err = run_in(dir.path(), &["deep.rhai"]).failed().to_string();
        assert!(
            err.starts_with("deep.rhai:1:")
                && err.contains("Expression exceeds maximum complexity"),
            "{open}: {}",
            &err[..err.len().min(200)]
        );
    }
    // Data nested at run time, printed and dropped.
    let code = "let a = []; for i in 0..3000 { a = [a]; } print(a); a.len()";
    let out = eval(code);
    assert!(out.ok().starts_with("[[[[") && out.ok().ends_with("]]]]\n1"));
}

#[test]
fn a_second_ctrl_c_ends_a_long_computation_at_once() {
    let home = scratch();
    // One MLX call of about 10^12 operations: no check between steps can see the first Ctrl-C.
    let mut child = mlxi(home.path())
        .args([
            "-e",
            "let a = randn([8000, 8000], 1);\nlet b = a.dot(a);\nb.sum()",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starts");
    std::thread::sleep(Duration::from_millis(1500));
    let sigint = || {
        let status = Command::new("kill")
            .args(["-INT", &child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(status.success());
    };
    sigint();
    std::thread::sleep(Duration::from_millis(300));
    sigint();
    let sent = Instant::now();
    let code = loop {
        if let Some(s) = child.try_wait().expect("wait") {
            break s.code();
        }
        if sent.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            panic!("mlxi did not stop on the second SIGINT");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let took = sent.elapsed();
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut stderr);
    }
    assert_eq!(code, Some(130), "{stderr}");
    assert!(
        stderr.contains("interrupted (second Ctrl-C: mlxi stopped at once)"),
        "{stderr}"
    );
    assert!(took < Duration::from_secs(2), "took {took:?}");
}
