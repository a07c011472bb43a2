//! The REPL through a pseudo-terminal: multi-line input, completion, commands, imports that
//! persist, Ctrl-C during a long loop, and leaving with Ctrl-D.

mod common;
use common::*;

use std::time::Duration;

use rexpect::session::{spawn_command, PtySession};

const PROMPT: &str = "mlxi> ";

fn start(home: &std::path::Path) -> PtySession {
    let mut cmd = mlxi(home);
    cmd.env("TERM", "xterm");
    let mut p = spawn_command(cmd, Some(20_000)).expect("mlxi starts in a pty");
    p.exp_string(PROMPT).expect("a prompt");
    p
}

/// Types `line`, waits for `want` in the output, then for the next prompt.
fn expect_after(p: &mut PtySession, line: &str, want: &str) {
    p.send_line(line).expect("send");
    if let Err(e) = p.exp_string(want) {
        panic!("after {line:?}, expected {want:?}: {e}");
    }
    p.exp_string(PROMPT).expect("prompt");
}

#[test]
fn a_session() {
    let home = scratch();
    let mut p = start(home.path());

    // A function defined over several lines, then used on a later line.
    p.send_line("fn twice(x) {").expect("send");
    p.exp_string("  ... ").expect("continuation prompt");
    p.send_line("    x * 2").expect("send");
    p.exp_string("  ... ").expect("continuation prompt");
    p.send_line("}").expect("send");
    p.exp_string(PROMPT).expect("prompt");
    expect_after(&mut p, "twice(21)", "42");

    // Tab completes a function name and a variable name.
    p.send("twi").expect("send");
    p.send("\t").expect("tab");
    std::thread::sleep(Duration::from_millis(200));
    expect_after(&mut p, "(1234)", "2468");
    p.send_line("let activations = zeros([2, 3]);")
        .expect("send");
    p.exp_string(PROMPT).expect("prompt");
    p.send("activ").expect("send");
    p.send("\t").expect("tab");
    std::thread::sleep(Duration::from_millis(200));
    expect_after(&mut p, ".shape", "[2, 3]");
    expect_after(&mut p, ":vars", "activations = Tensor[2, 3] float32");

    // A real syntax error is shown at once, not taken for unfinished input.
    expect_after(&mut p, "let = 5;", "<repl>:1:5:");
    // Unfinished input, then Enter on an empty line: it runs (and here fails) at once.
    p.send_line("let y = [1,").expect("send");
    p.exp_string("  ... ").expect("continuation prompt");
    expect_after(&mut p, "", "<repl>:");

    // Help comes from the functions' doc comments.
    expect_after(&mut p, ":help norm", "Example: `norm(tensor([3, 4]))");
    expect_after(
        &mut p,
        ":help stats::bootstrap_ci",
        "Options: `n` (resamples, 1000)",
    );

    // Imports persist across lines.
    p.send_line("import \"util\" as util;").expect("send");
    p.exp_string(PROMPT).expect("prompt");
    expect_after(&mut p, "\"argmax=\" + util::argmax([3, 9, 1])", "argmax=1");

    // Ctrl-C stops a long loop and the session goes on.
    p.send_line("let n = 0; loop { n += 1; }").expect("send");
    std::thread::sleep(Duration::from_millis(800));
    p.send_control('c').expect("ctrl-c");
    p.exp_string("interrupted").expect("the loop stops");
    p.exp_string(PROMPT).expect("prompt");
    expect_after(
        &mut p,
        "\"still\" + \" here, n > 0: \" + (n > 0)",
        "still here, n > 0: true",
    );

    // Ctrl-D leaves; the history is saved.
    p.send_control('d').expect("ctrl-d");
    p.exp_eof().expect("exits");
    let history = std::fs::read_to_string(home.path().join("history")).expect("history saved");
    assert!(history.contains("twice(21)"), "{history}");
}

#[test]
fn ctrl_c_twice_at_an_empty_prompt_leaves() {
    let home = scratch();
    let mut p = start(home.path());
    p.send_control('c').expect("ctrl-c");
    p.exp_string("Ctrl-C again").expect("a hint");
    p.send_control('c').expect("ctrl-c");
    p.exp_eof().expect("exits");
}

#[test]
fn load_runs_a_file_into_the_session() {
    let home = scratch();
    let dir = scratch();
    write(dir.path(), "beside.rhai", "fn hi() { \"hi from beside\" }");
    let file = write(
        dir.path(),
        "defs.rhai",
        "import \"beside\" as b;\nfn thrice(x) { x * 3 }\nlet loaded = \"yes\";",
    );
    let mut p = start(home.path());
    p.send_line(&format!(":load {}", file.display()))
        .expect("send");
    p.exp_string(PROMPT).expect("prompt");
    expect_after(&mut p, "loaded + thrice(111)", "yes333");
    // The file's import, found beside it, stays usable.
    expect_after(&mut p, "b::hi()", "hi from beside");
    p.send_line(":quit").expect("send");
    p.exp_eof().expect("exits");
}

#[test]
fn the_banner_states_what_the_session_may_touch() {
    let home = scratch();
    let dir = scratch();
    let extra = scratch();
    let real = |p: &std::path::Path| p.canonicalize().expect("exists").display().to_string();
    let mut cmd = mlxi(home.path());
    cmd.env("TERM", "xterm")
        .current_dir(dir.path())
        .arg("--allow-read")
        .arg(extra.path());
    let mut p = spawn_command(cmd, Some(20_000)).expect("mlxi starts in a pty");
    p.exp_string(&format!(
        "files: reads and writes in {}; reads {}; network: allowed",
        real(dir.path()),
        real(extra.path())
    ))
    .expect("the banner names the folders and the network");
    p.exp_string(PROMPT).expect("a prompt");
    // Outside them, a write is refused with the flag that allows it.
    expect_after(
        &mut p,
        &format!("save_json(1, \"{}/x.json\")", real(extra.path())),
        "--allow-write",
    );
    p.send_line(":quit").expect("send");
    p.exp_eof().expect("exits");
    assert!(!extra.path().join("x.json").exists());
}

#[test]
fn input_typed_while_a_command_runs_is_kept() {
    let home = scratch();
    let mut p = start(home.path());
    p.send_line("let n = 0; while n < 1000000 { n += 1; } \"slow done\"")
        .expect("send");
    // Typed while the loop runs: read by the next prompt, not lost.
    std::thread::sleep(Duration::from_millis(50));
    p.send_line("40 + 2").expect("send");
    p.exp_string("slow done")
        .expect("the slow command finishes");
    p.exp_string(PROMPT).expect("prompt");
    p.exp_string("42").expect("the typed-ahead line runs");
    p.exp_string(PROMPT).expect("prompt");
    p.send_line(":quit").expect("send");
    p.exp_eof().expect("exits");
}

#[test]
fn interrupted_starts_on_its_own_line() {
    let home = scratch();
    let mut p = start(home.path());
    p.send_line("let n = 0; loop { n += 1; }").expect("send");
    std::thread::sleep(Duration::from_millis(500));
    p.send_control('c').expect("ctrl-c");
    let before = p.exp_string("interrupted").expect("the loop stops");
    assert!(before.ends_with('\n'), "{before:?}");
    p.exp_string(PROMPT).expect("prompt");
    p.send_line(":quit").expect("send");
    p.exp_eof().expect("exits");
}

#[test]
fn a_finished_progress_bar_is_not_drawn_again() {
    let home = scratch();
    let mut p = start(home.path());
    p.send_line(
        "let bar = progress(3, \"steps\"); bar.tick(); bar.tick(); bar.tick(); bar.finish(); \"after\"",
    )
    .expect("send");
    p.exp_string("steps 3/3 done in")
        .expect("the finished line");
    p.exp_string("after").expect("the value");
    p.exp_string(PROMPT).expect("prompt");
    p.send_line("\"next\" + \" command\"").expect("send");
    let between = p.exp_string("next command").expect("the next value");
    assert!(!between.contains("steps"), "{between:?}");
    p.exp_string(PROMPT).expect("prompt");
    p.send_line(":quit").expect("send");
    p.exp_eof().expect("exits");
}
