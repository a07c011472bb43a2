//! Mixture-of-experts router hooks and routing interventions on the qwen3_moe, qwen3_moe-q4,
//! gpt_oss and gpt_oss-mxfp4 fixtures (the quantized ones loaded dequantized), against mlx-lm: `router_golden.safetensors` beside each fixture holds mlx-lm's
//! router logits, chosen experts, weights and expert outputs, and the logits of forwards with a
//! banned expert (router logit -inf), a forced expert, an expert's output scaled, and a steering
//! vector added, each computed with mlx-lm's own modules (tests/reference/moe_router_golden.py).
//! Also: the router points in cached decoding, capture of them from scripts, and the errors
//! scripts get for bad expert ids, counts, points and windows.
//!
//! MLX is not thread safe and cargo runs the tests of a file on several threads: every test
//! holds `MLX` while it runs.

mod common;
use common::{
    expect_err, expect_ok, full_f32, load_fixture, max_abs_diff, mlx_lock as lock, FIXTURES,
};

use std::collections::HashMap;

use mlx_rs::ops::indexing::IndexOp;
use mlx_rs::{Array, Dtype};
use mlxi::hooks::{Hook, HookName};
use mlxi::interventions::{Intervention, Op, Window};
use mlxi::model::layers::KvCache;
use mlxi::model::Model;
use mlxi::script::Context;
use rhai::Dynamic;

const CASES: [&str; 4] = ["qwen3_moe", "qwen3_moe-q4", "gpt_oss", "gpt_oss-mxfp4"];

/// A fixture's model (f32, dequantized), its router goldens and their metadata.
struct Fixture {
    model: Model,
    golden: HashMap<String, Array>,
    meta: HashMap<String, String>,
}

impl Fixture {
    fn load(case: &str) -> Fixture {
        full_f32();
        let dir = format!("{FIXTURES}/{case}");
        let model = load_fixture(case);
        let (golden, meta) =
            Array::load_safetensors_with_metadata(format!("{dir}/router_golden.safetensors"))
                .unwrap();
        Fixture {
            model,
            golden: golden.into_iter().collect(),
            meta: meta.into_iter().collect(),
        }
    }

    fn g(&self, key: &str) -> &Array {
        self.golden
            .get(key)
            .unwrap_or_else(|| panic!("no {key} in the golden"))
    }

    fn expert(&self, key: &str) -> i32 {
        self.meta[key].parse().unwrap()
    }

    fn rows(&self) -> Vec<Vec<u32>> {
        let ids = self.g("input_ids").as_dtype(Dtype::Int32).unwrap();
        let t = ids.shape()[1] as usize;
        ids.as_slice::<i32>()
            .chunks(t)
            .map(|r| r.iter().map(|&x| x as u32).collect())
            .collect()
    }

    /// Logits of the golden inputs with `ivs` attached (removed afterwards).
    fn logits_with(&mut self, ivs: Vec<Intervention>) -> Array {
        for iv in ivs {
            attach(&mut self.model, iv);
        }
        let rows = self.rows();
        let out = self.model.forward_ids(&rows).unwrap();
        self.model.hooks.clear();
        out
    }
}

fn attach(model: &mut Model, iv: Intervention) {
    model.hooks.attach(Hook {
        name: iv.point,
        label: iv.label(),
        steering: false,
        func: iv.into_hook(),
    });
}

fn iv(point: HookName, op: Op, window: Window) -> Intervention {
    Intervention { point, op, window }
}

#[test]
fn router_points_match_mlx_lm() {
    let _mlx = lock();
    let mut failures = Vec::new();
    for case in CASES {
        let mut fx = Fixture::load(case);
        let n = fx.model.n_layers();
        assert_eq!(
            (fx.model.info.n_experts, fx.model.info.experts_per_token),
            (4, 2)
        );
        let mut points = Vec::new();
        for i in 0..n {
            use HookName::*;
            points.extend([
                RouterLogits(i),
                ExpertIds(i),
                ExpertWeights(i),
                ExpertOut(i),
                MlpOut(i),
            ]);
        }
        fx.model.hooks.start_capture(&points);
        let rows = fx.rows();
        fx.model.forward_ids(&rows).unwrap();
        let got = fx.model.hooks.take_capture();
        for i in 0..n {
            let one = |p: HookName| got[&p][0].clone();
            let ids = one(HookName::ExpertIds(i));
            if ids.dtype() != Dtype::Int32 {
                failures.push(format!("{case} layer {i}: ids are {:?}", ids.dtype()));
            }
            let want_ids = fx.g(&format!("layer{i}.expert_ids"));
            let ids_f = ids.as_dtype(Dtype::Float32).unwrap();
            if max_abs_diff(&ids_f, &want_ids.as_dtype(Dtype::Float32).unwrap()) != 0.0 {
                failures.push(format!(
                    "{case} layer {i}: other experts chosen than mlx-lm's"
                ));
            }
            for (p, key, tol) in [
                (HookName::RouterLogits(i), "router_logits", 1e-5),
                (HookName::ExpertWeights(i), "expert_weights", 1e-5),
                (HookName::ExpertOut(i), "expert_out", 1e-4),
            ] {
                let d = max_abs_diff(&one(p), fx.g(&format!("layer{i}.{key}")));
                if d > tol {
                    failures.push(format!("{case} layer {i} {p}: differs from mlx-lm by {d}"));
                }
            }
            // hook_mlp_out is the weighted sum of hook_expert_out.
            let mixed = one(HookName::ExpertOut(i))
                .multiply(one(HookName::ExpertWeights(i)).expand_dims(-1).unwrap())
                .unwrap()
                .sum_axis(-2, false)
                .unwrap();
            let d = max_abs_diff(&mixed, &one(HookName::MlpOut(i)));
            if d > 1e-5 {
                failures.push(format!(
                    "{case} layer {i}: weighted sum vs hook_mlp_out: {d}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn banning_an_expert_matches_a_minus_infinity_router_logit() {
    let _mlx = lock();
    let mut failures = Vec::new();
    for case in CASES {
        let mut fx = Fixture::load(case);
        let e = fx.expert("ban_expert");
        let n = fx.model.n_layers();
        let ban = |i, window| {
            iv(
                HookName::RouterLogits(i),
                Op::Ban { experts: vec![e] },
                window,
            )
        };
        let every: Vec<Intervention> = (0..n).map(|i| ban(i, Window::All)).collect();
        let got = fx.logits_with(every);
        let d = max_abs_diff(&got, fx.g("ban.logits"));
        if d > 1e-4 {
            failures.push(format!("{case}: ban everywhere differs by {d}"));
        }
        let window = Window::Positions((4..10).collect());
        let got = fx.logits_with(vec![ban(1, window)]);
        let d = max_abs_diff(&got, fx.g("ban_window.logits"));
        if d > 1e-4 {
            failures.push(format!("{case}: ban at positions 4..9 differs by {d}"));
        }
        // The banned expert is never chosen.
        fx.model.hooks.start_capture(&[HookName::ExpertIds(0)]);
        attach(&mut fx.model, ban(0, Window::All));
        let rows = fx.rows();
        fx.model.forward_ids(&rows).unwrap();
        let ids = fx.model.hooks.take_capture()[&HookName::ExpertIds(0)][0].clone();
        fx.model.hooks.clear();
        if ids.as_slice::<i32>().contains(&e) {
            failures.push(format!("{case}: banned expert {e} still chosen"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn forcing_an_expert_matches_mlx_lm() {
    let _mlx = lock();
    let mut failures = Vec::new();
    for case in CASES {
        let mut fx = Fixture::load(case);
        let e = fx.expert("force_expert");
        let force = |i, window| {
            iv(
                HookName::ExpertIds(i),
                Op::Force { experts: vec![e] },
                window,
            )
        };
        let got = fx.logits_with(vec![force(0, Window::All)]);
        let d = max_abs_diff(&got, fx.g("force.logits"));
        if d > 1e-4 {
            failures.push(format!("{case}: force at layer 0 differs by {d}"));
        }
        let got = fx.logits_with(vec![force(1, Window::Positions(vec![2, 5, 11]))]);
        let d = max_abs_diff(&got, fx.g("force_window.logits"));
        if d > 1e-4 {
            failures.push(format!(
                "{case}: force at positions 2, 5, 11 differs by {d}"
            ));
        }
        // A script-style hook that writes the same choice into hook_expert_ids: the forced
        // expert first, then the router's best other one (read from the plain route).
        fx.model.hooks.start_capture(&[HookName::ExpertIds(0)]);
        let rows = fx.rows();
        fx.model.forward_ids(&rows).unwrap();
        let plain = fx.model.hooks.take_capture()[&HookName::ExpertIds(0)][0].clone();
        let chosen: Vec<i32> = plain
            .as_slice::<i32>()
            .chunks(2)
            .flat_map(|c| [e, if c[0] == e { c[1] } else { c[0] }])
            .collect();
        let replacement = Array::from_slice(&chosen, plain.shape());
        fx.model.hooks.attach(Hook {
            name: HookName::ExpertIds(0),
            label: "replace".into(),
            steering: false,
            func: Box::new(move |_, _| Ok(Some(replacement.clone()))),
        });
        let got = fx.model.forward_ids(&rows).unwrap();
        fx.model.hooks.clear();
        let d = max_abs_diff(&got, fx.g("force.logits"));
        if d > 1e-4 {
            failures.push(format!(
                "{case}: replaced ids differ from the forced run by {d}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn scaling_an_experts_output() {
    let _mlx = lock();
    let mut failures = Vec::new();
    for case in CASES {
        let mut fx = Fixture::load(case);
        let e = fx.expert("scale_expert");
        let scale = |i, factor| {
            iv(
                HookName::ExpertOut(i),
                Op::Scale {
                    factor,
                    experts: Some(vec![e]),
                },
                Window::All,
            )
        };
        let plain = fx.logits_with(vec![]);
        let d = max_abs_diff(&fx.logits_with(vec![scale(0, 1.0), scale(1, 1.0)]), &plain);
        if d != 0.0 {
            failures.push(format!("{case}: scaling by 1 changed the logits by {d}"));
        }
        let d = max_abs_diff(&fx.logits_with(vec![scale(0, 0.0)]), fx.g("scale0.logits"));
        if d > 1e-4 {
            failures.push(format!("{case}: scaling by 0 at layer 0 differs by {d}"));
        }
        let d = max_abs_diff(&fx.logits_with(vec![scale(1, 2.5)]), fx.g("scale2.logits"));
        if d > 1e-4 {
            failures.push(format!("{case}: scaling by 2.5 at layer 1 differs by {d}"));
        }
        // The same through the weights: scaling a weight scales that expert's share.
        let w = iv(
            HookName::ExpertWeights(0),
            Op::Scale {
                factor: 0.0,
                experts: Some(vec![e]),
            },
            Window::All,
        );
        let d = max_abs_diff(&fx.logits_with(vec![w]), fx.g("scale0.logits"));
        if d > 1e-4 {
            failures.push(format!(
                "{case}: weight times 0 differs from output times 0 by {d}"
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn steering_an_moe_model_matches_mlx_lm() {
    let _mlx = lock();
    let mut failures = Vec::new();
    for case in CASES {
        let mut fx = Fixture::load(case);
        let add = iv(
            HookName::ResidPost(0),
            Op::Add {
                vector: fx.g("steer.vector").clone(),
                alpha: 3.0,
            },
            Window::All,
        );
        let d = max_abs_diff(&fx.logits_with(vec![add]), fx.g("steer.logits"));
        if d > 1e-4 {
            failures.push(format!("{case}: steered logits differ by {d}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Routing interventions act the same in cached decoding (a prompt, then one token at a time)
/// as in one forward, also with a window that covers part of the prompt and part of the steps
/// (on gpt_oss with its 4-position sliding window too).
#[test]
fn routing_interventions_in_cached_decoding() {
    let _mlx = lock();
    for case in ["qwen3_moe", "gpt_oss"] {
        cached_decoding_case(case);
    }
}

fn cached_decoding_case(case: &str) {
    let mut fx = Fixture::load(case);
    let (ban, force) = (fx.expert("ban_expert"), fx.expert("force_expert"));
    let rows = fx.rows();
    let ids = Array::from_slice(
        &rows.iter().flatten().map(|&x| x as i32).collect::<Vec<_>>(),
        &[2, 16],
    );
    let add = |m: &mut Model| {
        let window = Window::Positions(vec![3, 9, 12]);
        attach(
            m,
            iv(
                HookName::RouterLogits(0),
                Op::Ban { experts: vec![ban] },
                window.clone(),
            ),
        );
        attach(
            m,
            iv(
                HookName::ExpertIds(1),
                Op::Force {
                    experts: vec![force],
                },
                Window::All,
            ),
        );
        attach(
            m,
            iv(
                HookName::ExpertOut(1),
                Op::Scale {
                    factor: 0.5,
                    experts: Some(vec![ban]),
                },
                window,
            ),
        );
    };
    add(&mut fx.model);
    let whole = fx.model.run(&ids, &[], None, false).unwrap();
    let mut cache = KvCache::new(fx.model.n_layers());
    let mut parts = vec![fx
        .model
        .run(&ids.index((.., ..10)), &[], Some(&mut cache), false)
        .unwrap()];
    for t in 10..16 {
        parts.push(
            fx.model
                .run(&ids.index((.., t..t + 1)), &[], Some(&mut cache), false)
                .unwrap(),
        );
    }
    let cached = mlx_rs::ops::concatenate(&parts, 1).unwrap();
    let d = max_abs_diff(&whole, &cached);
    assert!(d < 1e-4, "{case}: cached decoding differs by {d}");
    fx.model.hooks.clear();
    let plain = fx.model.run(&ids, &[], None, false).unwrap();
    assert!(
        max_abs_diff(&whole, &plain) > 1e-2,
        "{case}: the interventions did nothing"
    );
}

fn eval(code: &str) -> Result<Dynamic, String> {
    full_f32();
    let code = format!(
        "let m = load(\"tests/fixtures/models/qwen3_moe\", #{{dtype: \"f32\", dequantize: true}});\n{code}"
    );
    common::script(Context::in_current_dir(), &code)
}

#[test]
fn scripts_hook_and_capture_the_router_points() {
    let _mlx = lock();
    let v = expect_ok(eval(
        r#"
        let texts = ["The capital of France is", "Hi"];
        let n = [tokens(m, texts[0]).len(), tokens(m, texts[1]).len()];
        let c = capture(m, texts, #{points: ["blocks.*.mlp.hook_expert_ids",
                                            "blocks.0.mlp.hook_router_logits"], positions: "all"});
        let ids = c["blocks.1.mlp.hook_expert_ids"];
        let shapes_ok = ids[0].shape == [n[0], 2] && ids[1].shape == [n[1], 2]
            && c["blocks.0.mlp.hook_router_logits"][0].shape == [n[0], 4];
        let plain = forward(m, texts[0]);
        hook(m, "blocks.0.mlp.hook_router_logits", #{op: "ban", experts: [1]});
        hook(m, "blocks.1.mlp.hook_expert_ids", #{op: "force", experts: 3, window: "prompt"});
        hook(m, "blocks.1.mlp.hook_expert_out", #{op: "scale", factor: 0.0, experts: [0, 2]});
        let changed = max(abs(forward(m, texts[0]) - plain));
        let listed = hooks(m).map(|h| h.hook);
        let c2 = capture(m, texts, #{points: ["blocks.*.mlp.hook_expert_ids"], positions: "all"});
        let first = to_list(c2["blocks.1.mlp.hook_expert_ids"][0]);
        let banned = to_list(c2["blocks.0.mlp.hook_expert_ids"][0]);
        clear_hooks(m);
        // A script hook that keeps the choice but swaps the two slots changes nothing.
        hook(m, "blocks.0.mlp.hook_expert_ids", |x| x["..., ::-1"]);
        let swapped = max(abs(forward(m, texts[0]) - plain));
        clear_hooks(m);
        let points = hook_points(m).filter(|p| p.contains("expert") || p.contains("router"));
        let dense = load("tests/fixtures/models/llama", #{dtype: "f32"});
        #{shapes_ok: shapes_ok, keys: keys(c).len(), changed: changed, listed: listed,
          forced_first: first.filter(|r| r[0] == 3.0).len() == n[0],
          banned_used: banned.filter(|r| r.contains(1.0)).len(), swapped: swapped,
          points: points, dense_points: hook_points(dense).filter(|p| p.contains("router")).len(),
          info: [m.info().n_experts, m.info().experts_per_token, dense.info().n_experts]}
        "#,
    ));
    let m = v.cast::<rhai::Map>();
    assert!(m["shapes_ok"].as_bool().unwrap());
    assert_eq!(m["keys"].as_int().unwrap(), 3);
    assert!(m["changed"].as_float().unwrap() > 1e-2);
    let listed = format!("{:?}", m["listed"]);
    assert!(
        listed.contains("ban experts=[1]") && listed.contains("force experts=[3] window=prompt"),
        "{listed}"
    );
    // Every prompt token of layer 1 has expert 3 first; expert 1 is never chosen at layer 0.
    assert!(m["forced_first"].as_bool().unwrap());
    assert_eq!(m["banned_used"].as_int().unwrap(), 0);
    assert_eq!(m["swapped"].as_float().unwrap(), 0.0);
    assert_eq!(
        m["points"].clone().into_array().unwrap().len(),
        8,
        "{:?}",
        m["points"]
    );
    assert_eq!(m["dense_points"].as_int().unwrap(), 0);
    assert_eq!(format!("{:?}", m["info"]), "[4, 2, 0]");
}

#[test]
fn scripts_get_clear_errors_for_bad_routing() {
    let _mlx = lock();
    let cases = [
        (
            r#"hook(m, "blocks.0.mlp.hook_router_logits", #{op: "ban", experts: [4]})"#,
            "expert 4 is out of range; this layer has experts 0..3",
        ),
        (
            r#"hook(m, "blocks.0.mlp.hook_router_logits", #{op: "ban", experts: [-1]})"#,
            "expert -1 is out of range",
        ),
        (
            r#"hook(m, "blocks.0.mlp.hook_router_logits", #{op: "ban", experts: [0, 1, 2]})"#,
            "banning 3 of 4 experts leaves 1, fewer than the 2",
        ),
        (
            r#"hook(m, "blocks.0.mlp.hook_expert_ids", #{op: "force", experts: [0, 1, 2]})"#,
            "3 experts forced, but the router chooses only 2",
        ),
        (
            r#"hook(m, "blocks.0.mlp.hook_expert_ids", #{op: "force", experts: [1, 1]})"#,
            "expert 1 is listed twice",
        ),
        (
            r#"hook(m, "blocks.0.mlp.hook_expert_ids", #{op: "force", experts: []})"#,
            "'experts' is empty",
        ),
        (
            r#"hook(m, "blocks.0.mlp.hook_expert_ids", #{op: "force"})"#,
            "needs 'experts'",
        ),
        (
            r#"hook(m, "blocks.0.mlp.hook_expert_ids", #{op: "force", experts: "one"})"#,
            "'experts' must be an expert id or an array",
        ),
        (
            r#"hook(m, "blocks.0.hook_resid_post", #{op: "ban", experts: [0]})"#,
            "acts at blocks.N.mlp.hook_router_logits only",
        ),
        (
            r#"hook(m, "blocks.0.mlp.hook_router_logits", #{op: "force", experts: [0]})"#,
            "acts at blocks.N.mlp.hook_expert_ids only",
        ),
        (
            r#"hook(m, "blocks.0.mlp.hook_expert_ids", #{op: "ablate"})"#,
            "only \"force\" and \"patch\"",
        ),
        (
            r#"hook(m, "blocks.0.hook_mlp_out", #{op: "scale", factor: 0.0, experts: [0]})"#,
            "'experts' picks expert slots",
        ),
        (
            r#"hook(m, "blocks.0.mlp.hook_expert_out", #{op: "scale", experts: [0]})"#,
            "needs 'factor'",
        ),
        (
            r#"hook(m, "blocks.0.mlp.hook_router_logits", #{op: "ban", experts: [0], window: "later"})"#,
            "window must be \"all\", \"prompt\", \"generated\"",
        ),
        (
            r#"hook(m, "blocks.0.mlp.hook_router_logits", #{op: "add", vector: zeros([64])})"#,
            "the vector has 64 entries; this point takes 4",
        ),
        (
            r#"hook(m, "blocks.0.mlp.hook_expert_ids", |x| x + 3); forward(m, "Hi")"#,
            "a hook chose expert",
        ),
        (
            r#"hook(m, "blocks.0.mlp.hook_expert_ids", |x| x * 0); forward(m, "Hi")"#,
            "the same expert twice",
        ),
        (
            r#"hook(m, "blocks.2.mlp.hook_router_logits", |x| x)"#,
            "layer 2 is out of range",
        ),
        (
            r#"let d = load("tests/fixtures/models/llama", #{dtype: "f32"});
               hook(d, "blocks.0.mlp.hook_router_logits", |x| x)"#,
            "block 0 of this model has no mixture-of-experts router",
        ),
        (
            r#"let d = load("tests/fixtures/models/llama", #{dtype: "f32"});
               capture(d, "Hi", #{points: ["blocks.*.mlp.hook_expert_ids"]})"#,
            "has no mixture-of-experts router",
        ),
        (
            r#"let d = load("tests/fixtures/models/llama", #{dtype: "f32"});
               steer(d, direction(zeros([4]), #{layer: 0, point: "mlp.hook_router_logits"}))"#,
            "steer: hook point blocks.0.mlp.hook_router_logits: block 0 of this model has no",
        ),
    ];
    let mut failures = Vec::new();
    for (code, want) in cases {
        let e = expect_err(eval(code));
        if !e.contains(want) {
            failures.push(format!("{code}\n  expected {want:?}\n  got {e}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// `with_hooks` attaches its hooks for one call and removes exactly them afterwards, also when
/// the call throws; what was attached before stays.
#[test]
fn with_hooks_is_scoped() {
    let _mlx = lock();
    let v = expect_ok(eval(
        r#"
        let plain = forward(m, "Hi there");
        hook(m, "blocks.0.hook_resid_post", #{op: "scale", factor: 1.0});
        let spec = #{"blocks.0.mlp.hook_router_logits": #{op: "ban", experts: [0, 1]},
                     "blocks.1.mlp.hook_expert_out": [#{op: "scale", factor: 0.5}, |x| x * 2.0]};
        let inside = with_hooks(m, spec, || [hooks(m).len(), forward(m, "Hi there")]);
        let after = hooks(m).len();
        let threw = false;
        try { with_hooks(m, spec, || { throw "boom"; }); } catch { threw = true; }
        let bad = "";
        let force9 = #{"blocks.0.mlp.hook_expert_ids": #{op: "force", experts: [9]}};
        try { with_hooks(m, force9, || 1); } catch (e) { bad = `${e}`; }
        #{inside: inside[0], changed: max(abs(inside[1] - plain)), after: after, threw: threw,
          after_throw: hooks(m).len(), bad: bad, after_bad: hooks(m).len(),
          same: max(abs(forward(m, "Hi there") - plain))}
        "#,
    ));
    let m = v.cast::<rhai::Map>();
    assert_eq!(m["inside"].as_int().unwrap(), 4);
    assert!(m["changed"].as_float().unwrap() > 1e-2);
    assert_eq!(m["after"].as_int().unwrap(), 1);
    assert!(m["threw"].as_bool().unwrap());
    assert_eq!(m["after_throw"].as_int().unwrap(), 1);
    assert!(
        m["bad"].to_string().contains("expert 9 is out of range"),
        "{}",
        m["bad"]
    );
    assert_eq!(m["after_bad"].as_int().unwrap(), 1);
    assert_eq!(m["same"].as_float().unwrap(), 0.0);
}

/// The shared router's other weightings (gpt-oss: softmax over the chosen logits; Qwen3-MoE
/// without `norm_topk_prob`), and a ban under the gpt-oss rule, on layer 0's router logits,
/// against mlx-lm's own routing code (`gpt_oss.mlx_topk` + softmax; `argpartition` of the
/// probabilities).
#[test]
fn every_weighting_matches_mlx_lm() {
    use mlxi::hooks::Hooks;
    use mlxi::model::layers::Step;
    use mlxi::model::moe::{Router, Weighting};
    let _mlx = lock();
    let fx = Fixture::load("qwen3_moe");
    let ban = fx.expert("ban_expert");
    let logits = fx.g("layer0.router_logits").clone();
    let mut failures = Vec::new();
    for (name, weighting, banned) in [
        ("gptoss", Weighting::SoftmaxChosen, None),
        ("gptoss_ban", Weighting::SoftmaxChosen, Some(ban)),
        (
            "no_renorm",
            Weighting::SoftmaxAll { renormalize: false },
            None,
        ),
    ] {
        let router = Router {
            n_experts: 4,
            k: 2,
            weighting,
        };
        let mut hooks = Hooks::default();
        if let Some(e) = banned {
            let iv = iv(
                HookName::RouterLogits(0),
                Op::Ban { experts: vec![e] },
                Window::All,
            );
            hooks.attach(Hook {
                name: iv.point,
                label: iv.label(),
                steering: false,
                func: iv.into_hook(),
            });
        }
        let mut step = Step {
            len: 16,
            offset: 0,
            window_start: 0,
            pads: &[],
            hooks: &mut hooks,
            lora: None,
        };
        let route = router.route(0, logits.clone(), &mut step).unwrap();
        let want_ids = fx.g(&format!("{name}.expert_ids"));
        if max_abs_diff(&route.ids, want_ids) != 0.0 {
            failures.push(format!("{name}: other experts chosen than mlx-lm's"));
        }
        let d = max_abs_diff(&route.weights, fx.g(&format!("{name}.expert_weights")));
        if d > 1e-6 {
            failures.push(format!("{name}: weights differ by {d}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
