//! Gradients at hook points (`grad`), attribution patching (`attribute`) and integrated
//! gradients (`integrated_gradients`) on the default model in f32.
//!
//! - `grad` against PyTorch autograd on the same weights (tests/reference/grad_golden.py,
//!   committed as tests/fixtures/golden/smollm2/grad.safetensors), and against central
//!   finite differences of the metric computed here, also with a steering hook on.
//! - `attribute` against real activation patching (`patch`) on the Eiffel Tower / Colosseum
//!   pair: the Pearson correlation of the two grids.
//! - `integrated_gradients`: completeness (the attributions add up to the metric's change),
//!   with the baseline's metric checked against a plain forward of the baseline prompt.
//! - Errors that say what is wrong.

mod common;
use common::{expect_err, expect_ok, full_f32, mlx_lock};

use mlxi::fsaccess::{Grants, Permissions};
use mlxi::script::Context;
use rhai::Dynamic;

const CLEAN: &str = "The Eiffel Tower is in";
const CORRUPTED: &str = "The Colosseum is in";
const GOLDEN: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/fixtures/golden/smollm2/grad.safetensors"
);

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
         let clean = \"{CLEAN}\"; let corrupted = \"{CORRUPTED}\";\n\
         let metric = logit_diff(\" Paris\", \" Rome\");\n{code}"
    );
    common::script(Context::with_permissions(perms), &code)
}

fn field(v: &Dynamic, key: &str) -> Dynamic {
    v.read_lock::<rhai::Map>()
        .expect("a map")
        .get(key)
        .unwrap_or_else(|| panic!("no {key}"))
        .clone()
}

fn num(v: &Dynamic, key: &str) -> f64 {
    let x = field(v, key);
    x.as_float()
        .unwrap_or_else(|_| panic!("{key} is not a number: {x}"))
}

fn grid(v: &Dynamic) -> Vec<Vec<f64>> {
    v.clone()
        .into_array()
        .expect("rows")
        .iter()
        .map(common::floats)
        .collect()
}

fn pearson(x: &[f64], y: &[f64]) -> f64 {
    let n = x.len() as f64;
    let (mx, my) = (x.iter().sum::<f64>() / n, y.iter().sum::<f64>() / n);
    let (mut sxy, mut sxx, mut syy) = (0.0, 0.0, 0.0);
    for (a, b) in x.iter().zip(y) {
        sxy += (a - mx) * (b - my);
        sxx += (a - mx) * (a - mx);
        syy += (b - my) * (b - my);
    }
    sxy / (sxx * syy).sqrt()
}

/// `grad` equals PyTorch's autograd on the same f32 weights, and the directional derivative
/// from central differences of the metric, with and without a steering hook on.
///
/// Finite differences: along `v = unit(unit(g) + unit(r))` (r a seeded Gaussian, so the
/// direction is random but not almost orthogonal to the gradient, which in 3,456 dimensions a
/// purely random one would be, leaving a derivative of 1e-3 under f32 noise), with Richardson's
/// extrapolation `(4 D(h/2) - D(h)) / 3` of the central difference `D(h) = (f(a + h v) - f(a -
/// h v)) / 2h`, which cancels the `h^2` error term. The step is relative to the activation's
/// scale: `h = 0.01 |a[last position]|` (the first position's stream is a few hundred times
/// larger than the others, an attention sink, so the whole tensor's norm would be the wrong
/// scale). Smaller steps drown in the metric's f32 rounding (about 1e-5 of logits near 20),
/// larger ones leave curvature; this one gives relative errors of about 1e-4.
#[test]
fn gradients_match_pytorch_and_finite_differences() {
    let _g = mlx_lock();
    let v = expect_ok(eval(&format!(
        r#"
        let golden = load_tensors("{GOLDEN}");
        let points = ["blocks.0.hook_resid_pre", "blocks.13.hook_resid_pre",
                      "blocks.29.hook_resid_pre", "blocks.6.hook_attn_out", "blocks.20.hook_mlp_out"];
        let ids = encode(m, clean);
        let g = grad(m, clean, metric, #{{points: points}});
        let paris = encode(m, " Paris", #{{special: false}})[0];
        let rome = encode(m, " Rome", #{{special: false}})[0];
        let gs = grad(m, ids, |l| l[-1][paris] - l[-1][rome], #{{points: points}});
        let torch = #{{}};
        let script = #{{}};
        for p in points {{
            torch[p] = norm(g[p] - golden[p]) / norm(golden[p]);
            script[p] = max(abs(g[p] - gs[p]));
        }}
        let f = || metric_value(m, metric, forward(m, clean));
        let fd = |p, g, seed| {{
            let a = capture(m, clean, #{{points: [p], positions: "all"}})[p][0];
            let h = 0.01 * norm(a[-1]);
            let r = randn([1, len(ids), 576], seed);
            let v = g / norm(g) + r / norm(r);
            v = v / norm(v);
            let central = |h| {{
                let plus = v * h;
                let minus = v * (-h);
                let hp = #{{}}; hp[p] = |x| x + plus;
                let hm = #{{}}; hm[p] = |x| x + minus;
                let fp = with_hooks(m, hp, f);
                let fm = with_hooks(m, hm, f);
                (fp - fm) / (2.0 * h)
            }};
            let d = (4.0 * central.call(h / 2.0) - central.call(h)) / 3.0;
            let gv = sum(g * v);
            (d - gv).abs() / gv.abs()
        }};
        let fd_err = [];
        for p in points {{ fd_err.push(fd.call(p, g[p], 1)); }}
        // Steering on: a vector added at block 5 changes the gradient at block 13, and the
        // finite differences (run with the same hook on) still agree with it.
        hook(m, "blocks.5.hook_resid_pre", #{{op: "add", vector: randn([576], 7), alpha: 8.0}});
        let p = "blocks.13.hook_resid_pre";
        let gsteer = grad(m, clean, metric, #{{points: p}})[p];
        let steered = [fd.call(p, gsteer, 3), fd.call(p, gsteer, 4)];
        let moved = norm(gsteer - g[p]) / norm(g[p]);
        clear_hooks(m);
        #{{torch: torch, script: script, fd: fd_err, steered: steered, moved: moved,
           shape: g[points[0]].shape, n: keys(g).len(),
           golden_ids: to_list(golden.ids), ids: ids,
           metric: metric_value(m, metric, forward(m, clean)), golden_metric: golden.metric[0]}}
        "#
    )));
    assert_eq!(common::floats(&field(&v, "shape")), [1.0, 6.0, 576.0]);
    assert_eq!(field(&v, "n").as_int().unwrap(), 5);
    assert_eq!(
        common::floats(&field(&v, "ids")),
        common::floats(&field(&v, "golden_ids"))
    );
    assert!((num(&v, "metric") - num(&v, "golden_metric")).abs() < 1e-3);
    let torch = field(&v, "torch").cast::<rhai::Map>();
    for (p, e) in &torch {
        let e = e.as_float().unwrap();
        eprintln!("{p}: relative L2 error against PyTorch {e:.2e}");
        assert!(e < 1e-3, "{p}: relative L2 error against PyTorch {e}");
    }
    for (p, e) in field(&v, "script").cast::<rhai::Map>() {
        let e = e.as_float().unwrap();
        assert!(e < 1e-6, "{p}: script metric vs built-in, max |diff| {e}");
    }
    let fd = common::floats(&field(&v, "fd"));
    eprintln!("finite differences, relative errors: {fd:?}");
    assert_eq!(fd.len(), 5);
    assert!(fd.iter().all(|&e| e < 1e-3), "{fd:?}");
    let steered = common::floats(&field(&v, "steered"));
    eprintln!("with steering on: {steered:?}");
    assert!(steered.iter().all(|&e| e < 1e-3), "{steered:?}");
    assert!(
        num(&v, "moved") > 0.05,
        "steering did not change the gradient"
    );
}

/// Attribution patching estimates real activation patching: the Pearson correlation of the
/// two residual-stream grids on the Eiffel Tower / Colosseum pair.
#[test]
fn attribution_patching_tracks_activation_patching() {
    let _g = mlx_lock();
    let v = expect_ok(eval(
        r#"
        let t0 = timestamp();
        let a = attribute(m, clean, corrupted, #{metric: metric});
        let ta = t0.elapsed;
        let t0 = timestamp();
        let p = patch(m, clean, corrupted, #{metric: metric, progress: false});
        let tp = t0.elapsed;
        #{a: a, p: p, ta: ta, tp: tp}
        "#,
    ));
    let (a, p) = (field(&v, "a"), field(&v, "p"));
    eprintln!(
        "attribute {:.2} s, patch {:.2} s",
        num(&v, "ta"),
        num(&v, "tp")
    );
    // The same result shape as `patch`, the same clean and corrupted metrics.
    for key in ["rows", "cols", "tokens", "positions", "points"] {
        assert_eq!(
            field(&a, key).to_string(),
            field(&p, key).to_string(),
            "{key}"
        );
    }
    assert!((num(&a, "clean") - num(&p, "clean")).abs() < 1e-3);
    assert!((num(&a, "corrupted") - num(&p, "corrupted")).abs() < 1e-3);
    let (ga, gp) = (grid(&field(&a, "grid")), grid(&field(&p, "grid")));
    assert_eq!(ga.len(), 30);
    // Position 0 is the same token in both prompts: nothing to patch, an estimate of 0.
    assert!(ga.iter().all(|r| r[0].abs() < 1e-6));
    let flat = |g: &[Vec<f64>], from: usize| -> Vec<f64> {
        g.iter().flat_map(|r| r[from..].to_vec()).collect()
    };
    let all = pearson(&flat(&ga, 0), &flat(&gp, 0));
    let differing = pearson(&flat(&ga, 1), &flat(&gp, 1));
    let last = pearson(
        &ga.iter().map(|r| r[5]).collect::<Vec<_>>(),
        &gp.iter().map(|r| r[5]).collect::<Vec<_>>(),
    );
    let late = pearson(&flat(&ga[10..], 0), &flat(&gp[10..], 0));
    eprintln!(
        "Pearson r, attribution vs activation patching (hook_resid_pre): all cells {all:.3}, \
         positions 1-5 {differing:.3}, last position {last:.3}, blocks 10-29 {late:.3}"
    );
    assert!(all > 0.6, "{all}");
    assert!(last > 0.9, "{last}");
}

/// Integrated gradients add up to the metric's change (completeness), for a prompt baseline
/// and a zero baseline; with a prompt baseline at the residual stream, the baseline's metric is
/// the baseline prompt's own (the whole stream replaced).
#[test]
fn integrated_gradients_are_complete() {
    let _g = mlx_lock();
    let v = expect_ok(eval(
        r#"
        let ig = integrated_gradients(m, clean, corrupted, metric,
                                      #{points: ["blocks.5.hook_resid_pre", "blocks.2.hook_mlp_out"], steps: 32});
        let z = integrated_gradients(m, clean, (), metric, #{points: "blocks.20.hook_attn_out", steps: 32, batch_size: 8});
        let coarse = integrated_gradients(m, clean, corrupted, metric, #{points: "blocks.5.hook_resid_pre", steps: 2});
        #{ig: ig, z: z["blocks.20.hook_attn_out"], coarse: coarse["blocks.5.hook_resid_pre"],
          clean: metric_value(m, metric, forward(m, clean)),
          corrupted: metric_value(m, metric, forward(m, corrupted)),
          shape: ig["blocks.5.hook_resid_pre"].attributions.shape}
        "#,
    ));
    let ig = field(&v, "ig");
    let resid = field(&ig, "blocks.5.hook_resid_pre");
    let mlp = field(&ig, "blocks.2.hook_mlp_out");
    let (clean, corrupted) = (num(&v, "clean"), num(&v, "corrupted"));
    assert_eq!(common::floats(&field(&v, "shape")), [1.0, 6.0, 576.0]);
    assert!((num(&resid, "input_metric") - clean).abs() < 1e-3);
    assert!((num(&resid, "baseline_metric") - corrupted).abs() < 1e-3);
    for (name, r) in [
        ("resid_pre 5", &resid),
        ("mlp_out 2", &mlp),
        ("attn_out 20, zero baseline", &field(&v, "z")),
    ] {
        let change = num(r, "input_metric") - num(r, "baseline_metric");
        let err = num(r, "error");
        let by_pos: f64 = common::floats(&field(r, "by_position")).iter().sum();
        eprintln!(
            "{name}: sum {:.4}, change {change:.4}, error {err:.1e}",
            num(r, "sum")
        );
        assert!((by_pos - num(r, "sum")).abs() < 1e-6);
        assert!((num(r, "sum") - change - err).abs() < 1e-9);
        assert!(change.abs() > 0.1, "{name}: nothing to attribute");
        assert!(err.abs() < 0.01 * change.abs(), "{name}: {err} of {change}");
    }
    // Two steps are a coarse midpoint rule: visibly incomplete, so the check above can fail.
    let coarse = num(&field(&v, "coarse"), "error");
    assert!(coarse.abs() > 0.1, "{coarse}");
}

#[test]
fn bad_gradient_requests_are_refused_clearly() {
    let _g = mlx_lock();
    let cases = [
        (
            r#"grad(m, clean, metric, #{points: "blocks.0.hook_resid"})"#,
            "unknown hook point",
        ),
        (
            r#"grad(m, clean, |l| l[-1][5].item(), #{points: "blocks.0.hook_resid_pre"})"#,
            "carries no gradient",
        ),
        (
            r#"grad(m, clean, |l| l[-1], #{points: "blocks.0.hook_resid_pre"})"#,
            "must return a scalar Tensor, got shape [49152]",
        ),
        (
            r#"grad(m, clean, |l| tensor(l[-1][5].item()), #{points: "blocks.0.hook_resid_pre"})"#,
            "gradient is zero at every point",
        ),
        (r#"grad(m, clean, 3)"#, "the metric is logit_diff(a, b)"),
        (
            r#"grad(m, [clean, corrupted], metric)"#,
            "not an array of texts",
        ),
        (
            r#"grad(m, clean, metric, #{positions: [6]})"#,
            "position 6 is out of range",
        ),
        (
            r#"attribute(m, clean, "Rome is in", #{metric: metric})"#,
            "the clean input has 6 tokens and the corrupted one 3",
        ),
        (
            r#"attribute(m, clean, corrupted, #{})"#,
            "option 'metric' is required",
        ),
        (
            r#"attribute(m, clean, corrupted, #{metric: metric, pionts: []})"#,
            "did you mean 'points'",
        ),
        (
            r#"integrated_gradients(m, clean, "Rome is in", metric, #{points: "blocks.3.hook_resid_pre"})"#,
            "the input has 6 tokens and the baseline 3",
        ),
        (
            r#"integrated_gradients(m, clean, corrupted, metric, #{steps: 0})"#,
            "steps must be from 1 to 10000",
        ),
    ];
    for (code, want) in cases {
        let err = expect_err(eval(code));
        assert!(err.contains(want), "{code}: {err}");
    }
    // The model is left as it was: no gradient hook stays attached after an error.
    let v = expect_ok(eval(
        r#"
        try { grad(m, clean, |l| l[-1], #{points: "blocks.0.hook_resid_pre"}); } catch {}
        hooks(m).len()
        "#,
    ));
    assert_eq!(v.as_int().unwrap(), 0);
}
