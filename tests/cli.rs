//! The command line: -e, run with --set, --help/--version, and error reports with positions.

mod common;
use common::*;

#[test]
fn version_and_help() {
    let home = scratch();
    let v: Run = mlxi(home.path())
        .arg("--version")
        .output()
        .expect("runs")
        .into();
    assert_eq!(v.ok(), format!("mlxi {}", env!("CARGO_PKG_VERSION")));
    let h: Run = mlxi(home.path())
        .arg("--help")
        .output()
        .expect("runs")
        .into();
    let help = h.ok();
    for needle in ["run", "-e", "--version", "interactive shell"] {
        assert!(help.contains(needle), "--help lacks {needle}:\n{help}");
    }
    let h: Run = mlxi(home.path())
        .args(["run", "--help"])
        .output()
        .expect("runs")
        .into();
    assert!(h.ok().contains("--set <KEY=VALUE>"));
}

#[test]
fn eval_prints_the_value() {
    assert_eq!(eval("40 + 2").ok(), "42");
    assert_eq!(eval("\"text as is\"").ok(), "text as is");
    assert_eq!(eval("[1, 2.5, \"a\"]").ok(), "[1, 2.5, \"a\"]");
    // A unit value prints nothing; print() goes to stdout.
    assert_eq!(eval("let x = 1;").ok(), "");
    assert_eq!(eval("print(\"hello\"); ()").ok(), "hello");
}

#[test]
fn eval_shows_tables_for_rows_of_maps() {
    let out =
        eval(r#"[#{token: " Paris", prob: 0.5, id: 7}, #{token: " the", prob: 0.25, id: 12}]"#);
    assert_eq!(
        out.ok(),
        "token     id  prob\n\" Paris\"   7   0.5\n\" the\"    12  0.25"
    );
}

#[test]
fn run_passes_set_values_with_their_types() {
    let dir = scratch();
    write(
        dir.path(),
        "exp.rhai",
        "for k in args.keys() { print(`${k}=${args[k]}:${type_of(args[k])}`); }",
    );
    let out = run_in(
        dir.path(),
        &[
            "exp.rhai",
            "--set",
            "n=3",
            "--set",
            "alpha=-0.5",
            "--set",
            "chat=true",
            "--set",
            "name=blocks.3",
            "--set",
            "empty=",
        ],
    );
    assert_eq!(
        out.ok(),
        "alpha=-0.5:f64\nchat=true:bool\nempty=:string\nn=3:i64\nname=blocks.3:string"
    );
    let bad = run_in(dir.path(), &["exp.rhai", "--set", "novalue"]);
    assert_eq!(bad.code, Some(2));
    assert!(bad.stderr.contains("expected KEY=VALUE"), "{}", bad.stderr);
}

#[test]
fn run_without_set_has_an_empty_args_map() {
    let dir = scratch();
    write(dir.path(), "exp.rhai", "print(args.len());");
    assert_eq!(run_in(dir.path(), &["exp.rhai"]).ok(), "0");
}

#[test]
fn runtime_errors_name_file_line_and_column() {
    let dir = scratch();
    write(
        dir.path(),
        "bad.rhai",
        "let x = 1;\nlet y = x + undefined_var;\n",
    );
    let out = run_in(dir.path(), &["bad.rhai"]);
    assert_eq!(
        out.failed(),
        "bad.rhai:2:13: Variable not found: undefined_var\n   2 | let y = x + undefined_var;\n     |             ^"
    );
}

#[test]
fn syntax_errors_name_file_line_and_column() {
    let dir = scratch();
    write(dir.path(), "sub/bad.rhai", "let x = 1;\nlet = 5;\n");
    let out = run_in(dir.path(), &["sub/bad.rhai"]);
    let err = out.failed();
    assert!(err.starts_with("sub/bad.rhai:2:5: "), "{err}");
    assert!(err.contains("   2 | let = 5;\n     |     ^"), "{err}");
}

#[test]
fn errors_inside_functions_show_the_call_trail() {
    let dir = scratch();
    write(
        dir.path(),
        "f.rhai",
        "fn inner(t) {\n    t[5]\n}\nfn outer() { inner(zeros([2])) }\nouter();\n",
    );
    let err = run_in(dir.path(), &["f.rhai"]).failed().to_string();
    assert_eq!(
        err,
        "f.rhai:2:6: index 5 is out of bounds for a tensor of shape [2]\n   2 |     t[5]\n     |      ^\n  in inner(), called at f.rhai:4:14\n  in outer(), called at f.rhai:5:1"
    );
}

#[test]
fn eval_errors_are_reported_against_the_code() {
    let out = eval("let a = 1;\nthrow \"custom failure\";");
    assert_eq!(
        out.failed(),
        "<-e>:2:1: custom failure\n   2 | throw \"custom failure\";\n     | ^"
    );
}

#[test]
fn a_missing_script_is_an_error_not_a_panic() {
    let dir = scratch();
    let out = run_in(dir.path(), &["nope.rhai"]);
    assert_eq!(out.failed(), "mlxi: nope.rhai: no such script file");
}

#[test]
fn example_scripts_run() {
    let out = run_in(
        &repo(),
        &["scripts/tensors.rhai", "--set", "dim=32", "--set", "seed=3"],
    );
    let text = out.ok();
    assert!(text.contains("a: Tensor[32] float32"), "{text}");
    assert!(text.contains("mean shift along a: 2"), "{text}");
}
