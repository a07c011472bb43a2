//! Hooks, interventions, capture, steering, the logit lens and attention patterns on the
//! default model (SmolLM2-135M-Instruct), driven through the script engine as users drive
//! them: invariances (a hook at layer L changes nothing before L, `add` of zero and `reflect`
//! twice are the identity, patching a run with its own cache is the identity, a generated-only
//! window leaves the prompt alone), attention patterns against an independent computation from
//! the captured queries and keys, and clear errors.
//!
//! MLX is not thread safe and cargo runs the tests of a file on several threads: every test
//! holds `MLX` while it runs.

mod common;
use common::{expect_err, expect_ok, floats, full_f32, mlx_lock as lock};

use mlx_rs::{ops, Array, Dtype};
use mlxi::capture::{capture, Captured, Positions};
use mlxi::fsaccess::{Grants, Permissions};
use mlxi::hooks::HookName;
use mlxi::model::layers::Rope;
use mlxi::model::{LoadOptions, Model, Net};
use mlxi::script::Context;
use rhai::Dynamic;

/// Evaluates a script (with `let m = load(...)`, the default model in f32, in front) and returns
/// its value.
fn eval(code: &str) -> Result<Dynamic, String> {
    // These tests write their files in the system's temporary folder, outside the current
    // folder: allowed as `--allow-write` would.
    let grants = Grants {
        write: vec![std::env::temp_dir()],
        ..Grants::default()
    };
    let cwd = std::env::current_dir().map_err(|e| e.to_string())?;
    let perms = Permissions::interactive(&cwd, &grants).map_err(|e| e.to_string())?;
    // The expected values are full-f32 CPU results: load f32, dequantized, with no TF32 matmuls
    // (a GPU would otherwise keep f16 weights, and NVIDIA GPUs and M5 Macs use TF32).
    full_f32();
    let code = format!("let m = load(\"default\", #{{dtype: \"f32\", dequantize: true}});\n{code}");
    common::script(Context::with_permissions(perms), &code)
}

#[track_caller]
fn ok(code: &str) -> Dynamic {
    expect_ok(eval(code))
}

#[track_caller]
fn err(code: &str) -> String {
    expect_err(eval(code))
}

fn float(v: &Dynamic) -> f64 {
    v.as_float().expect("a number")
}

const PROMPTS: &str = r#"let ps = ["The capital of France is", "Hi there"];"#;

#[test]
fn a_hook_at_layer_l_changes_nothing_before_l() {
    let _mlx = lock();
    let v = ok(&format!(
        r#"{PROMPTS}
        let pts = #{{points: ["blocks.*.hook_resid_post"], positions: "all"}};
        let a = capture(m, ps, pts);
        hook(m, "blocks.12.hook_resid_mid", |x| x * 1.5);
        let b = m.capture(ps, pts);
        let out = [];
        for k in keys(a) {{
            let d = 0.0;
            for i in 0..2 {{ d += norm(a[k][i] - b[k][i]); }}
            out.push(d);
        }}
        out"#
    ));
    let d = floats(&v);
    assert_eq!(d.len(), 30);
    assert!(d[..12].iter().all(|&x| x == 0.0), "{d:?}");
    assert!(d[12..].iter().all(|&x| x > 0.0), "{d:?}");
}

#[test]
fn identities_add_zero_reflect_twice_patch_own_cache() {
    let _mlx = lock();
    let v = ok(&format!(
        r#"{PROMPTS}
        let base = forward(m, ps);
        let out = #{{}};
        hook(m, "blocks.5.hook_resid_post", #{{op: "add", vector: zeros([576]), alpha: 7.0}});
        // every head of hook_z at once, and one head's width on hook_k
        hook(m, "blocks.6.attn.hook_z", #{{op: "add", vector: zeros([576])}});
        hook(m, "blocks.6.attn.hook_k", #{{op: "add", vector: zeros([64])}});
        out.add_zero = norm(forward(m, ps) - base);
        clear_hooks(m);
        let v = randn([576], 3);
        m.hook("blocks.5.hook_resid_post", #{{op: "reflect", vector: v}});
        m.hook("blocks.5.hook_resid_post", #{{op: "reflect", vector: v}});
        out.reflect_twice = norm(forward(m, ps) - base) / norm(base);
        clear_hooks(m);
        hook(m, "blocks.5.hook_resid_post", #{{op: "reflect", vector: v}});
        out.reflect_once = norm(forward(m, ps) - base);
        clear_hooks(m);
        let all = capture(m, ps, #{{points: ["blocks.5.hook_resid_post", "blocks.7.attn.hook_v"], positions: "all"}});
        hook(m, "blocks.5.hook_resid_post", #{{op: "patch", from: all}});
        hook(m, "blocks.7.attn.hook_v", #{{op: "patch", from: all}});
        out.patch_all = norm(forward(m, ps) - base);
        clear_hooks(m);
        let last = capture(m, ps, #{{points: ["blocks.9.hook_resid_post"]}});
        hook(m, "blocks.9.hook_resid_post", #{{op: "patch", from: last}});
        out.patch_last = norm(forward(m, ps) - base);
        clear_hooks(m);
        let first = capture(m, ps, #{{points: ["blocks.9.hook_resid_post"], positions: 0}});
        hook(m, "blocks.9.hook_resid_post", #{{op: "patch", from: first}});
        out.patch_index = norm(forward(m, ps) - base);
        clear_hooks(m);
        // Patching in another prompt's activations does change the output.
        let other = capture(m, ["The capital of Italy is", "Good morning"], #{{points: ["blocks.9.hook_resid_post"]}});
        hook(m, "blocks.9.hook_resid_post", #{{op: "patch", from: other}});
        out.patch_other = norm(forward(m, ps) - base);
        clear_hooks(m);
        hook(m, "blocks.5.attn.hook_pattern", |x| ());
        out.pattern_hooked = norm(forward(m, ps) - base) / norm(base);
        out"#
    ));
    let m = v.cast::<rhai::Map>();
    let get = |k: &str| float(&m[k]);
    assert_eq!(get("add_zero"), 0.0);
    assert!(get("reflect_twice") < 1e-5, "{}", get("reflect_twice"));
    assert!(get("reflect_once") > 1.0);
    assert_eq!(get("patch_all"), 0.0);
    assert_eq!(get("patch_last"), 0.0);
    assert_eq!(get("patch_index"), 0.0);
    assert!(get("patch_other") > 1.0);
    // The explicit attention path (pattern hooked) matches the fused kernel.
    assert!(get("pattern_hooked") < 1e-5, "{}", get("pattern_hooked"));
}

#[test]
fn windows_generated_only_leaves_the_prompt_alone() {
    let _mlx = lock();
    let v = ok(r#"
        let p = "My favourite food is";
        let seen = [];
        hook(m, "blocks.20.hook_resid_post", |x| { seen.push(x); });
        let plain = generate(m, p, #{max_tokens: 8});
        let plain_seen = seen;
        clear_hooks(m);
        let seen = [];
        let v = randn([576], 1) * 40.0;
        hook(m, "blocks.10.hook_resid_post", #{op: "add", vector: v, alpha: 1.0, window: "generated"});
        hook(m, "blocks.20.hook_resid_post", |x| { seen.push(x); });
        let steered = generate(m, p, #{max_tokens: 8});
        // A plain forward is all prompt: the window leaves it alone.
        clear_hooks(m);
        let base = forward(m, p);
        hook(m, "blocks.10.hook_resid_post", #{op: "add", vector: v, window: "generated"});
        let fwd = norm(forward(m, p) - base);
        clear_hooks(m);
        hook(m, "blocks.10.hook_resid_post", #{op: "add", vector: v, window: "prompt"});
        let fwd_prompt = norm(forward(m, p) - base);
        #{
            prompt: norm(plain_seen[0] - seen[0]),
            step1: norm(plain_seen[1] - seen[1]),
            calls: seen.len(),
            prompt_shape: seen[0].shape,
            same_text: plain == steered,
            forward_generated: fwd,
            forward_prompt: fwd_prompt,
        }
    "#);
    let m = v.cast::<rhai::Map>();
    assert_eq!(float(&m["prompt"]), 0.0, "prompt activations changed");
    assert!(float(&m["step1"]) > 1.0);
    assert!(m["calls"].as_int().unwrap() >= 2);
    assert!(
        !m["same_text"].as_bool().unwrap(),
        "steering did not change the text"
    );
    assert_eq!(float(&m["forward_generated"]), 0.0);
    assert!(float(&m["forward_prompt"]) > 1.0);
}

#[test]
fn position_windows_follow_each_rows_tokens_under_left_padding() {
    let _mlx = lock();
    // Adding at token 0 of each row, batched (rows padded differently) or one at a time, gives
    // the same logits.
    let v = ok(&format!(
        r#"{PROMPTS}
        let v = randn([576], 5) * 30.0;
        hook(m, "blocks.4.hook_resid_post", #{{op: "add", vector: v, window: [0, -1]}});
        let batched = forward(m, ps);
        let a = forward(m, ps[0]);
        let b = forward(m, ps[1]);
        clear_hooks(m);
        let base = forward(m, ps[1]);
        let t = b.shape[0];
        let row = batched[1];
        [norm(batched[0] - a), norm(row[row.shape[0] - 1] - b[t - 1]), norm(b - base)]"#
    ));
    let d = floats(&v);
    assert!(d[0] < 1e-2, "{d:?}");
    assert!(d[1] < 1e-2, "{d:?}");
    assert!(d[2] > 1.0, "{d:?}");
}

#[test]
fn script_closure_hooks_change_logits_and_cannot_reenter_the_model() {
    let _mlx = lock();
    let v = ok(r#"
        let p = "The capital of France is";
        let base = forward(m, p);
        hook(m, "blocks.3.hook_resid_post", |x| x + randn([576], 2) * 10.0);
        let changed = norm(forward(m, p) - base);
        clear_hooks(m);
        hook(m, "blocks.3.hook_resid_post", |x| ());
        let kept = norm(forward(m, p) - base);
        let n = hooks(m).len();
        [changed, kept, n]
    "#);
    let d = floats(&v);
    assert!(d[0] > 1.0 && d[1] == 0.0 && d[2] == 1.0, "{d:?}");

    let e = err(
        r#"hook(m, "blocks.3.hook_resid_post", |x| { forward(m, "hi"); x }); forward(m, "a b")"#,
    );
    assert!(e.contains("busy"), "{e}");
    let e = err(r#"hook(m, "blocks.3.hook_resid_post", |x| x[0]); forward(m, "a b")"#);
    assert!(e.contains("returned shape"), "{e}");
    let e = err(r#"hook(m, "blocks.3.hook_resid_post", |x| 1); forward(m, "a b")"#);
    assert!(e.contains("must return a Tensor"), "{e}");
}

#[test]
fn errors_name_the_valid_forms() {
    let _mlx = lock();
    let e = err(r#"hook(m, "blocks.0.hook_resid", |x| x)"#);
    assert!(
        e.contains("hook_resid_post") && e.contains("hook_points(m)"),
        "{e}"
    );
    let e = err(r#"hook(m, "blocks.40.hook_resid_post", #{op: "ablate"})"#);
    assert!(e.contains("out of range"), "{e}");
    let e = err(r#"hook(m, "blocks.0.hook_resid_post", #{op: "add", vectr: zeros([576])})"#);
    assert!(
        e.contains("valid options: op, vector, alpha, window"),
        "{e}"
    );
    let e = err(r#"hook(m, "blocks.0.hook_resid_post", #{op: "nudge"})"#);
    assert!(e.contains("add, ablate, mean_ablate"), "{e}");
    let e = err(r#"hook(m, "blocks.0.hook_resid_post", #{op: "add", vector: zeros([5])})"#);
    assert!(e.contains("576"), "{e}");
    let e = err(
        r#"hook(m, "blocks.0.hook_resid_post", #{op: "add", vector: zeros([576]), window: "later"})"#,
    );
    assert!(e.contains("\"generated\""), "{e}");
    let e = err(r#"capture(m, "hi", #{point: ["hook_embed"]})"#);
    assert!(e.contains("valid options: points, positions"), "{e}");
    let e = err(r#"capture(m, "hi", #{points: ["blocks.*.hook_nothing"]})"#);
    assert!(e.contains("valid names look like"), "{e}");
    let e = err(r#"let d = direction(m, ["a"], ["b"]); steer(m, d, #{alpah: 2})"#);
    assert!(
        e.contains("valid options: alpha, mode, layers, window, tau"),
        "{e}"
    );
    let e = err(r#"direction(m, ["a"], ["b"], #{method: "magic"})"#);
    assert!(e.contains("\"mean_diff\", \"pca\", \"probe\""), "{e}");
    let e = err(r#"let c = capture(m, "hi"); c["blocks.0.hook_resid_pre"]"#);
    assert!(
        e.contains("the cache has no blocks.0.hook_resid_pre"),
        "{e}"
    );
    let e = err(
        r#"let c = capture(m, ["a b", "c"], #{positions: "mean"}); hook(m, "blocks.29.hook_resid_post", #{op: "patch", from: c})"#,
    );
    assert!(e.contains("mean_ablate"), "{e}");
    let e = err(
        r#"let c = capture(m, ["a b", "c", "d"]); hook(m, "blocks.29.hook_resid_post", #{op: "patch", from: c}); forward(m, ["x", "y"])"#,
    );
    assert!(e.contains("holds 3 inputs"), "{e}");
}

#[test]
fn capture_respects_left_padding_and_keeps_what_was_asked() {
    let _mlx = lock();
    let v = ok(&format!(
        r#"{PROMPTS}
        let out = [];
        for pos in ["last", "mean", 0, 1, -2] {{
            let o = #{{points: ["blocks.3.hook_resid_post", "blocks.3.attn.hook_q"], positions: pos, batch_size: 2}};
            let both = capture(m, ps, o);
            for i in 0..2 {{
                let one = capture(m, ps[i], o);
                for k in keys(both) {{
                    out.push(norm(both[k][i] - one[k][0]) / norm(one[k][0]));
                }}
            }}
        }}
        let all = capture(m, ps, #{{positions: "all", points: "blocks.-1.hook_resid_post"}});
        let pat = capture(m, ps, #{{positions: "all", points: ["blocks.0.attn.hook_pattern"]}});
        let small = capture(m, ps, #{{batch_size: 1}});
        let big = capture(m, ps);
        let k = "blocks.29.hook_resid_post";
        out.push(norm(small[k] - big[k]) / norm(big[k]));
        #{{
            diffs: out,
            all_shapes: [all["blocks.29.hook_resid_post"][0].shape, all["blocks.29.hook_resid_post"][1].shape],
            pattern_shape: pat["blocks.0.attn.hook_pattern"][1].shape,
            last_shape: big["blocks.29.hook_resid_post"].shape,
            q_shape: capture(m, ps, #{{points: ["blocks.2.attn.hook_q"]}})["blocks.2.attn.hook_q"].shape,
            n_keys: keys(big).len(),
        }}"#
    ));
    let m = v.cast::<rhai::Map>();
    let d = floats(&m["diffs"]);
    assert!(d.iter().all(|&x| x < 1e-4), "{d:?}");
    let shape = |k: &str| format!("{:?}", m[k]);
    assert_eq!(shape("all_shapes"), "[[5, 576], [2, 576]]");
    assert_eq!(shape("pattern_shape"), "[9, 2, 2]");
    assert_eq!(shape("last_shape"), "[2, 576]");
    assert_eq!(shape("q_shape"), "[2, 9, 64]");
    assert_eq!(m["n_keys"].as_int().unwrap(), 30);
}

#[test]
fn caches_and_directions_round_trip_through_files() {
    let _mlx = lock();
    let dir = tempfile::tempdir().unwrap();
    let path = |n: &str| dir.path().join(n).display().to_string();
    let v = ok(&format!(
        r#"{PROMPTS}
        let c = capture(m, ps, #{{points: ["blocks.*.hook_resid_post", "hook_embed"], positions: "all"}});
        save(c, "{c}");
        let c2 = load_cache("{c}");
        let d = 0.0;
        for k in keys(c) {{ for i in 0..2 {{ d += norm(c[k][i] - c2[k][i]); }} }}
        let l = capture(m, ps);
        l.save("{l}");
        let l2 = load_cache("{l}");
        let dir = direction(m, ["I am happy", "What joy"], ["I am sad", "What grief"], #{{layer: -5}});
        save(dir, "{d}");
        let dir2 = load_direction("{d}");
        [d, norm(l["blocks.4.hook_resid_post"] - l2["blocks.4.hook_resid_post"]), keys(c2).len(), l2.n,
         cosine(dir, dir2), dir2.layer, dir2.n, dir2.method == "mean_diff", dir2.point == "hook_resid_post"]"#,
        c = path("all.safetensors"),
        l = path("last.safetensors"),
        d = path("dir.safetensors"),
    ));
    let d = floats(&v.clone().into_array().unwrap()[..7].to_vec().into());
    assert_eq!(d[0], 0.0);
    assert_eq!(d[1], 0.0);
    assert_eq!(d[2], 31.0);
    assert_eq!(d[3], 2.0);
    assert!((d[4] - 1.0).abs() < 1e-6);
    assert_eq!(d[5], 25.0);
    assert_eq!(d[6], 4.0);
    let a = v.into_array().unwrap();
    assert!(a[7].as_bool().unwrap() && a[8].as_bool().unwrap());
    let e = err(&format!(r#"load_cache("{}")"#, path("dir.safetensors")));
    assert!(e.contains("not a cache"), "{e}");
}

#[test]
fn directions_and_steering() {
    let _mlx = lock();
    let v = ok(r#"
        let pos = ["I feel so happy today!", "What a joyful, wonderful day", "I love everything", "This is delightful"];
        let neg = ["I feel so sad today.", "What a miserable, awful day", "I hate everything", "This is depressing"];
        let d = m.direction(pos, neg, #{layer: 15});
        let pca = direction(m, pos, neg, #{layer: 15, method: "pca"});
        let probe = direction(m, pos, neg, #{layer: 15, method: "probe"});
        let c = capture(m, pos + neg, #{points: ["blocks.15.hook_resid_post"]});
        let from_caches = direction(m, capture(m, pos), capture(m, neg), #{layer: 15});
        let r = m.random_direction(d, 3);
        let plain = generate(m, "Today I feel", #{max_tokens: 12});
        steer(m, d, #{alpha: 8.0 * d.norm, window: "generated"});
        let listed = hooks(m);
        let steered = generate(m, "Today I feel", #{max_tokens: 12});
        unsteer(m);
        let after = generate(m, "Today I feel", #{max_tokens: 12});
        m.steer(d, #{mode: "project_out", layers: [10, 15, -1]});
        let n_steer = hooks(m).len();
        hook(m, "blocks.0.hook_resid_post", |x| ());
        unsteer(m);
        #{
            d_norm: norm(d.vector),
            cos_pca: cosine(d, pca),
            cos_probe: cosine(d, probe),
            cos_cache: cosine(d, from_caches),
            cos_random: cosine(d, r),
            random_norm: norm(r.vector),
            layer: d.layer, n: d.n,
            steered_differs: plain != steered,
            unsteer_restores: plain == after,
            listed: listed.len(), steering: listed[0].steering,
            n_steer: n_steer, left: hooks(m).len(),
        }
    "#);
    let m = v.cast::<rhai::Map>();
    let f = |k: &str| float(&m[k]);
    let i = |k: &str| m[k].as_int().unwrap();
    let b = |k: &str| m[k].as_bool().unwrap();
    assert!((f("d_norm") - 1.0).abs() < 1e-5);
    assert!(f("cos_pca") > 0.7, "{}", f("cos_pca"));
    // Per-feature standardisation (undone in the direction) tilts the probe away from the
    // mean difference on 8 examples; random directions in 576 dimensions sit near 0 ± 0.05.
    assert!(f("cos_probe") > 0.3, "{}", f("cos_probe"));
    assert!((f("cos_cache") - 1.0).abs() < 1e-4);
    assert!(f("cos_random").abs() < 0.3);
    assert!((f("random_norm") - 1.0).abs() < 1e-4);
    assert_eq!((i("layer"), i("n")), (15, 8));
    assert!(b("steered_differs") && b("unsteer_restores") && b("steering"));
    assert_eq!((i("listed"), i("n_steer"), i("left")), (1, 3, 1));
}

#[test]
fn logit_lens_reads_paris_from_the_residual_stream() {
    let _mlx = lock();
    let v = ok(r#"
        let ll = m.logit_lens("The capital of France is", 5);
        let firsts = ll.map(|l| l[0].token);
        let in_top = ll.map(|l| l.filter(|e| e.token == " Paris").len() > 0);
        #{n: ll.len(), firsts: firsts, in_top: in_top, p: ll[-1][0].prob, k: ll[0].len()}
    "#);
    let m = v.cast::<rhai::Map>();
    assert_eq!(m["n"].as_int().unwrap(), 30);
    assert_eq!(m["k"].as_int().unwrap(), 5);
    let firsts: Vec<String> = m["firsts"]
        .clone()
        .into_array()
        .unwrap()
        .into_iter()
        .map(|x| x.into_string().unwrap())
        .collect();
    assert_eq!(firsts[29], " Paris");
    // SmolLM2-135M ranks " Paris" first only at the last layer; the layer before already has
    // it in its top 5.
    let in_top: Vec<bool> = m["in_top"]
        .clone()
        .into_array()
        .unwrap()
        .into_iter()
        .map(|x| x.as_bool().unwrap())
        .collect();
    assert!(in_top[28], "{firsts:?}");
    assert!((float(&m["p"]) - 0.7726).abs() < 1e-3);
}

/// Softmax(q k^T / sqrt(d) + causal mask) computed here from the captured pre-RoPE queries and
/// keys, with RoPE applied by hand, against `attention()`.
#[test]
fn attention_patterns_match_an_independent_computation() {
    let _mlx = lock();
    full_f32();
    let opts = LoadOptions {
        dtype: Some(mlx_rs::Dtype::Float32),
        dequantize: Some(true),
        ..Default::default()
    };
    let mut model = Model::load_default(&opts).unwrap();
    let cfg = match &model.net {
        Net::Llama(l) => l.cfg.clone(),
        _ => unreachable!("the default model is a Llama"),
    };
    let ids = model
        .encode("The quick brown fox jumps over the lazy dog because", true)
        .unwrap();
    let t = ids.len() as i32;
    let (h, kv, d) = (cfg.num_attention_heads, cfg.n_kv_heads(), cfg.head_dim());
    let rope = Rope::new(
        d,
        cfg.rope_theta,
        cfg.rope_traditional,
        cfg.rope_scaling.as_ref(),
    )
    .unwrap();
    for layer in [0usize, 7, 29] {
        let pts = [HookName::Q(layer), HookName::K(layer)];
        let c = capture(
            &mut model,
            std::slice::from_ref(&ids),
            &pts,
            Positions::All,
            1,
            false,
        )
        .unwrap();
        let get = |p: &HookName| match &c.entries[p] {
            Captured::PerInput(rows) => rows[0].clone(),
            _ => unreachable!(),
        };
        // [T, H, D] -> [H, T, D], roped.
        let q = rope
            .apply(
                &get(&pts[0])
                    .swap_axes(0, 1)
                    .unwrap()
                    .expand_dims(0)
                    .unwrap(),
                0,
            )
            .unwrap();
        let k = rope
            .apply(
                &get(&pts[1])
                    .swap_axes(0, 1)
                    .unwrap()
                    .expand_dims(0)
                    .unwrap(),
                0,
            )
            .unwrap();
        let q = q.reshape(&[h, t, d]).unwrap();
        let k = k.reshape(&[kv, t, d]).unwrap();
        // Head i uses key head i / (h / kv).
        let heads: Vec<i32> = (0..h).map(|i| i / (h / kv)).collect();
        let k = k.take_axis(Array::from_slice(&heads, &[h]), 0).unwrap();
        let scores = q
            .matmul(k.swap_axes(1, 2).unwrap())
            .unwrap()
            .multiply(Array::from_f32((d as f32).powf(-0.5)))
            .unwrap();
        let qi = Array::from_iter(0..t, &[t, 1]);
        let ki = Array::from_iter(0..t, &[1, t]);
        let allowed = ki.le(&qi).unwrap();
        let scores = ops::select(&allowed, &scores, Array::from_f32(-1e30)).unwrap();
        let want = ops::softmax_axis(&scores, -1, true).unwrap();
        let got = mlxi::analysis::attention(&mut model, &ids, layer).unwrap();
        assert_eq!(got.shape(), &[h, t, t]);
        let diff = got
            .subtract(&want)
            .unwrap()
            .abs()
            .unwrap()
            .max(None)
            .unwrap()
            .as_slice::<f32>()[0];
        assert!(diff < 1e-4, "layer {layer}: max |diff| {diff}");
        // Rows sum to 1; nothing above the diagonal.
        let sums = got
            .sum_axis(-1, None)
            .unwrap()
            .as_dtype(Dtype::Float32)
            .unwrap();
        assert!(sums
            .as_slice::<f32>()
            .iter()
            .all(|s| (s - 1.0).abs() < 1e-4));
        let upper = ops::select(&allowed, Array::from_f32(0.0), &got)
            .unwrap()
            .abs()
            .unwrap()
            .max(None)
            .unwrap()
            .as_slice::<f32>()[0];
        assert_eq!(upper, 0.0);
    }
}

#[test]
fn attention_through_the_script() {
    let _mlx = lock();
    let v = ok(r#"
        let a = m.attention("The cat sat on the mat", -1);
        [a.shape, sum(a, -1).shape, attention(m, "The cat sat on the mat", 29).shape == a.shape]
    "#);
    assert_eq!(format!("{v:?}"), "[[9, 6, 6], [9, 6], true]");
    let e = err(r#"attention(m, "hi", 30)"#);
    assert!(e.contains("out of range"), "{e}");
}

#[test]
fn the_steering_example_runs() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_mlxi"))
        .args(["run", "scripts/steering.rhai", "--set", "tokens=6"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for line in [
        "Direction(mean_diff at blocks.15",
        "plain:",
        "happy:",
        "random:",
    ] {
        assert!(stdout.contains(line), "{stdout}");
    }
}

#[test]
fn control_vectors_export_as_llama_cpp_gguf() {
    let _mlx = lock();
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("happy.gguf");
    let v = ok(&format!(
        r#"let a = direction(m, ["I am happy"], ["I am sad"], #{{layer: 10}});
        let b = direction(m, ["I am happy"], ["I am sad"], #{{layer: 12}});
        export_control_vector([a, b], "{}");
        [to_array(a.vector), to_array(b.vector)]"#,
        path.display()
    ));
    let want: Vec<Vec<f64>> = v.into_array().unwrap().iter().map(floats).collect();
    // Read back with ggus, a GGUF parser independent of MLX's writer that mlxi uses.
    let bytes = std::fs::read(&path).unwrap();
    let g = ggus::GGuf::new(&bytes).unwrap();
    let meta_str = |k: &str| g.meta_kvs[k].value_reader().read_str().unwrap().to_string();
    assert_eq!(meta_str("general.architecture"), "controlvector");
    assert_eq!(meta_str("controlvector.model_hint"), "llama");
    assert_eq!(g.meta_kvs["controlvector.layer_count"].read_unsigned(), 2);
    let names: Vec<&str> = g.tensors.keys().copied().collect();
    assert_eq!(names.len(), 2, "{names:?}");
    for (layer, want) in [(10, &want[0]), (12, &want[1])] {
        let t = g.tensors[format!("direction.{layer}").as_str()].to_info();
        assert_eq!(t.shape(), &[576]);
        assert_eq!(t.ty(), ggus::GGmlType::F32);
        let raw = &g.data[t.offset()..t.offset() + t.nbytes()];
        let got: Vec<f64> = raw
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]) as f64)
            .collect();
        let d = got
            .iter()
            .zip(want)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f64::max);
        assert!(d < 1e-6, "layer {layer}: {d}");
    }
    let e = err(r#"export_control_vector(direction(m, ["a"], ["b"], #{layer: 0}), "x.gguf")"#);
    assert!(e.contains("start at layer 1"), "{e}");
    let e = err(
        r#"export_control_vector(direction(m, ["a"], ["b"], #{point: "attn.hook_z"}), "x.gguf")"#,
    );
    assert!(e.contains("hook_resid_post"), "{e}");
}
