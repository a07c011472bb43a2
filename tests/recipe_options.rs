//! Recipes say when an option is misspelled: `options(opts, defaults, name)` merges defaults
//! and rejects unknown keys with the nearest valid one, every library recipe and every script
//! in scripts/ checks its options with it, and the shared `util::show`. None of this needs a
//! model: the options are checked before a recipe touches one.

mod common;
use common::*;

#[test]
fn options_merges_defaults_and_names_the_nearest_key() {
    let out = eval(
        r#"let o = options(#{seed: 3}, #{alpha: 1.5, seed: 0, out: ()}, "mine::run");
           [o.alpha, o.seed, o.out, o.keys().len()]"#,
    );
    assert_eq!(out.ok(), "[1.5, 3, (), 3]");
    let e = eval(r#"options(#{alpah: 2}, #{alpha: 1.5, seed: 0}, "mine::run")"#);
    assert!(
        e.failed().contains(
            "mine::run: unknown option 'alpah' (did you mean 'alpha'?); valid options: alpha, seed"
        ),
        "{}",
        e.stderr
    );
    // Without a name, the error names the calling script or module.
    let dir = scratch();
    write(
        dir.path(),
        "exp.rhai",
        "let o = options(args, #{layer: 15});\nprint(o.layer);",
    );
    assert_eq!(
        run_in(dir.path(), &["exp.rhai", "--set", "layer=3"]).ok(),
        "3"
    );
    let run = run_in(dir.path(), &["exp.rhai", "--set", "layr=3"]);
    let e = run.failed();
    assert!(
        e.contains("exp.rhai: unknown option 'layr' (did you mean 'layer'?)"),
        "{e}"
    );
    assert!(
        e.contains("exp.rhai:1:"),
        "the error has the call's position: {e}"
    );
}

/// A call of a library recipe with a misspelled option, and the message it must give.
const RECIPES: &[(&str, &str)] = &[
    (
        r#"import "std/swap" as swap; swap::run((), #{alpah: 2.0})"#,
        "swap::run: unknown option 'alpah' (did you mean 'alpha'?)",
    ),
    (
        r#"import "std/sweep" as sweep; sweep::run((), #{layer: 3}, #{alphas: [1.0], prompt: ["hi"]})"#,
        "sweep::run: unknown option 'prompt' (did you mean 'prompts'?)",
    ),
    (
        r#"import "std/introspection" as intro; intro::run(#{n_layers: 30}, #{strenghts: [1.0]})"#,
        "introspection::run: unknown option 'strenghts' (did you mean 'strengths'?)",
    ),
    (
        r#"import "std/sycophancy" as syc; syc::run((), #{fold: 3})"#,
        "sycophancy::run: unknown option 'fold' (did you mean 'folds'?)",
    ),
    (
        r#"import "std/lens" as lens; lens::run((), "x", #{trak: 10})"#,
        "lens::run: unknown option 'trak' (did you mean 'track'?)",
    ),
    (
        r#"import "std/attention" as attention; attention::scores((), #{sed: 1})"#,
        "attention::scores: unknown option 'sed' (did you mean 'seed'?)",
    ),
    (
        r#"import "std/anatomy" as anatomy; anatomy::tour((), #{quik: true})"#,
        "anatomy::tour: unknown option 'quik' (did you mean 'quick'?)",
    ),
    (
        r#"import "std/concepts" as concepts; concepts::library((), #{cold: #{pair: []}}, #{})"#,
        "concepts::library: cold: unknown option 'pair' (did you mean 'pairs'?)",
    ),
    (
        r#"import "std/patching" as patching; patching::compare((), "a", "b", #{metirc: 1})"#,
        "patching::compare: unknown option 'metirc' (did you mean 'metric'?)",
    ),
];

#[test]
fn every_recipe_names_the_nearest_valid_option() {
    for (code, want) in RECIPES {
        let run = eval(code);
        let e = run.failed();
        assert!(e.contains(want), "{code}\nwanted {want:?} in:\n{e}");
    }
}

#[test]
fn scripts_reject_misspelled_set_keys() {
    // Checked before the model is loaded: no model needed.
    for (script, key, want) in [
        ("steering", "strenght=2", "did you mean 'strength'?"),
        ("tensors", "dims=8", "did you mean 'dim'?"),
        ("swap", "qiuck=true", "did you mean 'quick'?"),
        ("lens", "promt=hi", "did you mean 'prompt'?"),
    ] {
        let path = repo().join(format!("scripts/{script}.rhai"));
        let run = run_in(&repo(), &[path.to_str().unwrap(), "--set", key]);
        let e = run.failed();
        assert!(e.contains("unknown option"), "{script}: {e}");
        assert!(e.contains(want), "{script}: {e}");
    }
    // The output folder is an option every script takes.
    let out = scratch();
    let path = repo().join("scripts/tensors.rhai");
    let run = run_in(
        &repo(),
        &[
            path.to_str().unwrap(),
            "--out",
            out.path().to_str().unwrap(),
            "--set",
            "dim=8",
        ],
    );
    run.ok();
}

#[test]
fn util_show_is_the_one_token_display() {
    let out = eval(
        r#"import "std/util" as util; import "std/lens" as lens;
           [util::show(" Paris", 8), util::show("a\nb\tc", 8), util::show("abcdefghijk", 5),
            lens::show(" Paris", 8)]"#,
    );
    assert_eq!(out.ok(), r#"["␣Paris", "a↵b⇥c", "abcd…", "␣Paris"]"#);
}
