//! Activation patching, `patch(m, clean, corrupted, opts)`, on the default model in f32.
//!
//! The batched grid (one patched copy per row) is checked against the independent path: one
//! forward per cell with the built-in `#{op: "patch"}` hook restricted to that position, and
//! the logit difference read from the logits by indexing. Also: patching the final norm at the
//! last position restores the clean metric exactly and elsewhere nothing (a hand-derived
//! consequence of causal attention), a script metric equals the built-in one, and bad input
//! gets errors that say what is wrong.

mod common;
use common::{expect_err, expect_ok, full_f32, mlx_lock};

use mlxi::fsaccess::{Grants, Permissions};
use mlxi::script::Context;
use rhai::Dynamic;

const CLEAN: &str = "The Eiffel Tower is in";
const CORRUPTED: &str = "The Colosseum is in";

fn eval(code: &str) -> Result<Dynamic, String> {
    let grants = Grants {
        write: vec![std::env::temp_dir()],
        ..Grants::default()
    };
    let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
    let perms = Permissions::interactive(&cwd, &grants).map_err(|e| e.to_string())?;
    full_f32();
    let code = format!(
        "let m = load(\"default\", #{{dtype: \"f32\", dequantize: true}});\n\
         let clean = \"{CLEAN}\"; let corrupted = \"{CORRUPTED}\";\n{code}"
    );
    common::script(Context::with_permissions(perms), &code)
}

fn grid(v: &Dynamic) -> Vec<Vec<f64>> {
    v.clone()
        .into_array()
        .expect("rows")
        .iter()
        .map(common::floats)
        .collect()
}

fn field(v: &Dynamic, key: &str) -> Dynamic {
    v.read_lock::<rhai::Map>()
        .expect("a map")
        .get(key)
        .unwrap_or_else(|| panic!("no {key}"))
        .clone()
}

#[test]
fn batched_grid_equals_one_forward_per_cell() {
    let _g = mlx_lock();
    let v = expect_ok(eval(
        r#"
        let points = ["blocks.0.hook_resid_pre", "blocks.13.hook_resid_pre",
                      "blocks.29.hook_resid_pre", "blocks.6.hook_attn_out", "blocks.20.hook_mlp_out"];
        let r = patch(m, clean, corrupted, #{metric: logit_diff(" Paris", " Rome"), points: points,
                                             progress: false});
        let paris = encode(m, " Paris", #{special: false})[0];
        let rome = encode(m, " Rome", #{special: false})[0];
        let diff = |text| { let l = forward(m, text); l[-1][paris] - l[-1][rome] };
        let c = capture(m, clean, #{points: points, positions: "all"});
        let n = len(encode(m, corrupted));
        let seq = [];
        for p in r.rows {
            let row = [];
            for pos in 0..n {
                hook(m, p, #{op: "patch", from: c, window: [pos]});
                row.push(diff.call(corrupted));
                clear_hooks(m);
            }
            seq.push(row);
        }
        #{raw: r.raw, grid: r.grid, seq: seq, clean: r.clean, corrupted: r.corrupted,
          clean_ref: diff.call(clean), corrupted_ref: diff.call(corrupted), rows: r.rows, positions: r.positions}
        "#,
    ));
    let (raw, seq) = (grid(&field(&v, "raw")), grid(&field(&v, "seq")));
    let clean = field(&v, "clean").as_float().unwrap();
    let corrupted = field(&v, "corrupted").as_float().unwrap();
    assert!((clean - field(&v, "clean_ref").as_float().unwrap()).abs() < 1e-4);
    assert!((corrupted - field(&v, "corrupted_ref").as_float().unwrap()).abs() < 1e-4);
    assert!(
        clean - corrupted > 5.0,
        "clean {clean}, corrupted {corrupted}"
    );
    assert_eq!(raw.len(), 5);
    assert_eq!(
        common::floats(&field(&v, "positions")),
        [0., 1., 2., 3., 4., 5.]
    );
    for (r, (a, b)) in raw.iter().zip(&seq).enumerate() {
        assert_eq!(a.len(), 6);
        for (p, (x, y)) in a.iter().zip(b).enumerate() {
            assert!(
                (x - y).abs() < 2e-3,
                "row {r} position {p}: batched {x}, one by one {y}"
            );
        }
    }
    // The normalised grid is (raw - corrupted) / (clean - corrupted).
    for (g, r) in grid(&field(&v, "grid")).iter().zip(&raw) {
        for (x, y) in g.iter().zip(r) {
            assert!((x - (y - corrupted) / (clean - corrupted)).abs() < 1e-9);
        }
    }
    // Patching the whole stream at the last token before block 0 brings nothing (the last
    // token is the same), at the subject's last token nearly everything.
    let norm = grid(&field(&v, "grid"));
    assert!(norm[0][5].abs() < 1e-3, "{:?}", norm[0]);
    assert!(norm[0][3] > 0.5, "{:?}", norm[0]);
}

#[test]
fn the_final_norm_at_the_last_position_restores_exactly() {
    let _g = mlx_lock();
    let v = expect_ok(eval(
        r#"
        let r = patch(m, clean, corrupted, #{metric: logit_diff(" Paris", " Rome"),
                                             points: "ln_final.hook_normalized", progress: false});
        let paris = encode(m, " Paris", #{special: false})[0];
        let rome = encode(m, " Rome", #{special: false})[0];
        let f = patch(m, clean, corrupted, #{metric: |logits| logits[-1][paris] - logits[-1][rome],
                                             points: ["blocks.3.hook_resid_post", "blocks.25.hook_resid_post"],
                                             positions: [2, -3, -1], progress: false});
        let b = patch(m, clean, corrupted, #{metric: logit_diff(" Paris", " Rome"),
                                             points: ["blocks.3.hook_resid_post", "blocks.25.hook_resid_post"],
                                             positions: [2, -3, -1], batch_size: 1, progress: false});
        #{grid: r.grid, f: f.raw, b: b.raw, pos: f.positions}
        "#,
    ));
    let g = grid(&field(&v, "grid"));
    assert_eq!(g.len(), 1);
    // Only the last position's logits are read: patching the final norm there gives the clean
    // logits, anywhere else it changes nothing (the norm acts on each position alone).
    assert!((g[0][5] - 1.0).abs() < 1e-4, "{:?}", g[0]);
    for x in &g[0][..5] {
        assert!(x.abs() < 1e-4, "{:?}", g[0]);
    }
    // A script metric gives what the built-in one gives; one row per forward gives what a
    // batch gives; positions are counted from the end when negative.
    assert_eq!(common::floats(&field(&v, "pos")), [2., 3., 5.]);
    for (a, b) in grid(&field(&v, "f")).iter().zip(grid(&field(&v, "b"))) {
        for (x, y) in a.iter().zip(&b) {
            assert!((x - y).abs() < 2e-3, "{a:?} vs {b:?}");
        }
    }
}

#[test]
fn patching_writes_a_heatmap() {
    let _g = mlx_lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("grid.svg");
    let v = expect_ok(eval(&format!(
        r#"patch(m, clean, corrupted, #{{metric: logprob_diff(" Paris", " Rome"), progress: false,
                 points: ["blocks.*.hook_resid_pre"], positions: [-1, 3], plot: "{}",
                 title: "Eiffel Tower to Colosseum"}})"#,
        path.display()
    )));
    let svg = std::fs::read_to_string(&path).unwrap();
    assert!(svg.contains("<svg") && svg.contains("Eiffel Tower to Colosseum"));
    assert!(svg.contains("blocks.29.hook_resid_pre"));
    assert_eq!(grid(&field(&v, "grid")).len(), 30);
    assert_eq!(
        field(&v, "cols").into_array().unwrap()[1].to_string(),
        r#"3 " Tower"/"um""#
    );
}

#[test]
fn bad_patching_input_is_refused_clearly() {
    let _g = mlx_lock();
    let cases = [
        (
            r#"patch(m, clean, "Rome is in", #{metric: logit_diff(" Paris", " Rome")})"#,
            "the clean input has 6 tokens and the corrupted one 3",
        ),
        (
            r#"patch(m, clean, corrupted, #{metric: logit_diff(" Parisians and", " Rome")})"#,
            "is 3 tokens",
        ),
        (
            r#"patch(m, clean, corrupted, #{})"#,
            "option 'metric' is required",
        ),
        (
            r#"patch(m, clean, corrupted, #{metric: logit_diff(" Paris", 999999)})"#,
            "token id 999999 is out of range",
        ),
        (
            r#"patch(m, clean, corrupted, #{metric: logit_diff(" Paris", " Rome"), positions: [6]})"#,
            "position 6 is out of range for prompts of 6 tokens",
        ),
        (
            r#"patch(m, clean, corrupted, #{metric: logit_diff(" Paris", " Rome"), pionts: []})"#,
            "did you mean 'points'",
        ),
        (
            r#"patch(m, clean, corrupted, #{metric: logit_diff(" Paris", " Rome"), points: "blocks.30.hook_resid_pre"})"#,
            "blocks.30.hook_resid_pre",
        ),
        (
            r#"patch(m, clean, corrupted, #{metric: |l| "high", points: "blocks.0.hook_resid_pre", progress: false})"#,
            "the metric must return a number",
        ),
        // The built-in patch op refuses a cache of another length instead of aligning it.
        (
            r#"let c = capture(m, "The Eiffel Tower in Paris is in", #{points: ["blocks.3.hook_resid_pre"], positions: "all"});
               hook(m, "blocks.3.hook_resid_pre", #{op: "patch", from: c});
               forward(m, corrupted)"#,
            "the cache holds 8 positions for input 0, this run's prompt has 6 tokens",
        ),
    ];
    for (code, want) in cases {
        let e = expect_err(eval(code));
        assert!(e.contains(want), "{code}\n  gave: {e}\n  expected: {want}");
    }
}
