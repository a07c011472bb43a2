//! The TransformerLens hook points beyond the residual stream (norm scales and outputs, rotated
//! queries and keys, attention scores, per-head results, MLP pre-activations) on every
//! architecture's committed fixture, each checked against its definition computed here in plain
//! Rust from the captured inputs and the weights read from the fixture's safetensors file; and
//! replacing each of them in plain forwards, batched with left padding, and in cached decoding.
//!
//! MLX is not thread safe and cargo runs the tests of a file on several threads: every test
//! holds `MLX` while it runs.

mod common;
use common::{expect_ok, floats, full_f32, load_fixture, max_abs_diff, mlx_lock as lock, FIXTURES};

use std::collections::HashMap;

use mlx_rs::{ops, Array, Dtype};
use mlxi::capture::{capture, Captured, Positions};
use mlxi::hooks::{Hook, HookName};
use mlxi::interventions::{Intervention, Op, Window};
use mlxi::model::layers::KvCache;
use mlxi::model::{pad_left, Model};
use serde_json::Value;

const CASES: [&str; 8] = [
    "llama",
    "qwen2",
    "qwen3",
    "gemma2",
    "gemma3_text",
    "phi3",
    "qwen3_moe",
    "gpt_oss",
];

/// A fixture: the model (f32), its config.json and its stored tensors.
struct Fixture {
    case: &'static str,
    model: Model,
    cfg: Value,
    weights: HashMap<String, Array>,
}

impl Fixture {
    fn load(case: &'static str) -> Fixture {
        full_f32();
        let dir = format!("{FIXTURES}/{case}");
        let model = load_fixture(case);
        let cfg =
            serde_json::from_str(&std::fs::read_to_string(format!("{dir}/config.json")).unwrap())
                .unwrap();
        let weights = Array::load_safetensors(format!("{dir}/model.safetensors"))
            .unwrap()
            .into_iter()
            .collect();
        Fixture {
            case,
            model,
            cfg,
            weights,
        }
    }

    fn gemma(&self) -> bool {
        self.case.starts_with("gemma")
    }

    fn f(&self, key: &str) -> Option<f32> {
        self.cfg.get(key).and_then(Value::as_f64).map(|x| x as f32)
    }

    /// A stored tensor's values.
    fn w(&self, key: &str) -> Vec<f32> {
        vals(self.weights.get(key).unwrap_or_else(|| panic!("no {key}")))
    }

    /// The scale a norm multiplies by: the stored weight (`1 + w` for Gemma's offset norms).
    fn norm_weight(&self, key: &str) -> Vec<f32> {
        let w = self.w(&format!("{key}.weight"));
        if self.gemma() {
            w.iter().map(|x| 1.0 + x).collect()
        } else {
            w
        }
    }

    fn eps(&self) -> f32 {
        self.f("rms_norm_eps").unwrap()
    }

    /// The checkpoint names of block `i`'s norm before attention and before the MLP.
    fn norm_keys(&self, i: usize) -> [String; 2] {
        let ln2 = if self.gemma() {
            "pre_feedforward_layernorm"
        } else {
            "post_attention_layernorm"
        };
        [
            format!("model.layers.{i}.input_layernorm"),
            format!("model.layers.{i}.{ln2}"),
        ]
    }

    /// Layer `i`'s sliding window, if it has one.
    fn window(&self, i: usize) -> Option<usize> {
        let sliding = self.cfg["layer_types"]
            .as_array()
            .is_some_and(|t| t[i] == "sliding_attention");
        let w = self.cfg["sliding_window"].as_u64()? as usize;
        ((self.gemma() || self.gpt_oss()) && sliding).then_some(w)
    }

    fn gpt_oss(&self) -> bool {
        self.case == "gpt_oss"
    }

    /// Layer `i`'s attention sink logits, one per head (gpt-oss), else none.
    fn sinks(&self, i: usize) -> Option<Vec<f32>> {
        self.gpt_oss()
            .then(|| self.w(&format!("model.layers.{i}.self_attn.sinks")))
    }

    /// Layer `i`'s RoPE `(base, position scale)`.
    fn rope(&self, i: usize) -> (f32, f32) {
        if self.case == "gemma3_text" && self.window(i).is_some() {
            return (self.f("rope_local_base_freq").unwrap(), 1.0);
        }
        let factor = self.cfg["rope_scaling"]["factor"].as_f64().unwrap_or(1.0) as f32;
        (self.f("rope_theta").unwrap(), 1.0 / factor)
    }

    /// The attention score scale.
    fn score_scale(&self) -> f32 {
        match self.f("query_pre_attn_scalar") {
            Some(s) => s.powf(-0.5),
            None => (self.model.info.d_head as f32).powf(-0.5),
        }
    }
}

/// Two rows of different lengths (the second is left-padded in a batch); 7 tokens is more
/// than the Gemma fixtures' sliding window of 4.
fn rows() -> Vec<Vec<u32>> {
    vec![vec![5, 9, 14, 3, 7, 22, 11], vec![8, 4, 17]]
}

fn vals(a: &Array) -> Vec<f32> {
    let a = a.as_dtype(Dtype::Float32).unwrap().contiguous().unwrap();
    a.as_slice::<f32>().to_vec()
}

/// Every token's activations at `points` for `rows()`, run as one left-padded batch: per point,
/// per row, the row's activation without its padding.
fn capture_all(model: &mut Model, points: &[HookName]) -> HashMap<HookName, Vec<Array>> {
    let c = capture(model, &rows(), points, Positions::All, 8, false).unwrap();
    points
        .iter()
        .map(|p| match &c.entries[p] {
            Captured::PerInput(rs) => (*p, rs.clone()),
            _ => unreachable!(),
        })
        .collect()
}

/// `|a - b| <= tol` elementwise; `-inf` must meet `-inf`.
fn close(a: &[f32], b: &[f32], tol: f32) -> Result<(), String> {
    if a.len() != b.len() {
        return Err(format!("{} values against {}", a.len(), b.len()));
    }
    for (j, (x, y)) in a.iter().zip(b).enumerate() {
        let same_inf = x.is_infinite() && x == y;
        if !(same_inf || (x - y).abs() <= tol) {
            return Err(format!("entry {j}: {x} against {y}"));
        }
    }
    Ok(())
}

/// `x / sqrt(mean(x^2) + eps) * w` over each row of `d` values; also the scales.
fn rms_norm(x: &[f32], w: &[f32], eps: f32) -> (Vec<f32>, Vec<f32>) {
    let d = w.len();
    let mut out = Vec::with_capacity(x.len());
    let mut scales = Vec::new();
    for row in x.chunks(d) {
        let s = (row.iter().map(|v| v * v).sum::<f32>() / d as f32 + eps).sqrt();
        scales.push(s);
        out.extend(row.iter().zip(w).map(|(v, w)| v / s * w));
    }
    (out, scales)
}

/// `x W^T` for rows `x` `[n, in]` and `w` `[out, in]`.
fn matmul_t(x: &[f32], w: &[f32], n_in: usize) -> Vec<f32> {
    let mut out = Vec::new();
    for row in x.chunks(n_in) {
        out.extend(
            w.chunks(n_in)
                .map(|wr| row.iter().zip(wr).map(|(a, b)| a * b).sum::<f32>()),
        );
    }
    out
}

/// Rotate-half RoPE of one head vector at position `pos`.
fn rope(x: &[f32], pos: usize, (base, scale): (f32, f32)) -> Vec<f32> {
    let d = x.len();
    let half = d / 2;
    let mut out = vec![0.0; d];
    for j in 0..half {
        let angle = pos as f64 * scale as f64 * (base as f64).powf(-2.0 * j as f64 / d as f64);
        let (s, c) = (angle.sin() as f32, angle.cos() as f32);
        out[j] = x[j] * c - x[j + half] * s;
        out[j + half] = x[j + half] * c + x[j] * s;
    }
    out
}

fn silu(x: f32) -> f32 {
    x / (1.0 + (-x).exp())
}

/// gpt-oss's SwiGLU of one gate and up value: the gate clamped above at 7, the up value to
/// [-7, 7], `(up + 1) * g * sigmoid(1.702 g)`.
fn swiglu_oai(gate: f32, up: f32) -> f32 {
    let g = gate.min(7.0);
    (up.clamp(-7.0, 7.0) + 1.0) * g / (1.0 + (-1.702 * g).exp())
}

fn gelu_tanh(x: f32) -> f32 {
    let c = (2.0 / std::f32::consts::PI).sqrt();
    0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
}

#[test]
fn norm_points_match_their_definition() {
    let _mlx = lock();
    let mut failures = Vec::new();
    for case in CASES {
        let mut fx = Fixture::load(case);
        let n = fx.model.n_layers();
        let d = fx.model.info.d_model as usize;
        let eps = fx.eps();
        // (input, scale, normalized, the norm's checkpoint name) for every norm.
        let mut norms = Vec::new();
        for i in 0..n {
            let [ln1, ln2] = fx.norm_keys(i);
            norms.push((
                HookName::ResidPre(i),
                HookName::Ln1Scale(i),
                HookName::Ln1Normalized(i),
                ln1,
            ));
            norms.push((
                HookName::ResidMid(i),
                HookName::Ln2Scale(i),
                HookName::Ln2Normalized(i),
                ln2,
            ));
        }
        norms.push((
            HookName::ResidPost(n - 1),
            HookName::LnFinalScale,
            HookName::LnFinal,
            "model.norm".to_string(),
        ));
        // Outputs alone (the fused norm runs), then with the scales (computed explicitly).
        let plain: Vec<HookName> = norms.iter().flat_map(|n| [n.0, n.2]).collect();
        let with_scale: Vec<HookName> = norms.iter().flat_map(|n| [n.0, n.1, n.2]).collect();
        let a = capture_all(&mut fx.model, &plain);
        let b = capture_all(&mut fx.model, &with_scale);
        for (input, scale, normalized, key) in &norms {
            let w = fx.norm_weight(key);
            assert_eq!(w.len(), d);
            for r in 0..rows().len() {
                let x = vals(&a[input][r]);
                let (want, want_scale) = rms_norm(&x, &w, eps);
                let t = x.len() / d;
                let shape = b[scale][r].shape().to_vec();
                if shape != [t as i32, 1] {
                    failures.push(format!(
                        "{case} {scale}: shape {shape:?}, expected [{t}, 1]"
                    ));
                }
                let checks = [
                    (normalized, &a[normalized][r], &want, "fused"),
                    (normalized, &b[normalized][r], &want, "from the scale"),
                    (scale, &b[scale][r], &want_scale, "scale"),
                ];
                for (p, got, want, how) in checks {
                    if let Err(e) = close(&vals(got), want, 1e-4) {
                        failures.push(format!("{case} {p} ({how}) row {r}: {e}"));
                    }
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn attention_points_match_their_definition() {
    let _mlx = lock();
    let mut failures = Vec::new();
    for case in CASES {
        let mut fx = Fixture::load(case);
        let info = fx.model.info.clone();
        let (h, kv, dh, dm) = (
            info.n_heads as usize,
            info.n_kv_heads as usize,
            info.d_head as usize,
            info.d_model as usize,
        );
        let cap = fx.f("attn_logit_softcapping");
        let scale = fx.score_scale();
        for i in 0..fx.model.n_layers() {
            use HookName::*;
            let pts = [
                Q(i),
                K(i),
                RotQ(i),
                RotK(i),
                AttnScores(i),
                Pattern(i),
                Z(i),
                HeadResult(i),
                AttnOut(i),
            ];
            let c = capture_all(&mut fx.model, &pts);
            let mut fail = |what: &str, r: usize, e: String| {
                failures.push(format!("{case} layer {i} {what} row {r}: {e}"));
            };
            for (r, row) in rows().iter().enumerate() {
                let t = row.len();
                let v = |p: HookName| vals(&c[&p][r]);
                let (q, k, rq, rk) = (v(Q(i)), v(K(i)), v(RotQ(i)), v(RotK(i)));
                let (scores, pattern) = (v(AttnScores(i)), v(Pattern(i)));
                // Row 0 is not padded: its positions are 0..t. RoPE by hand, every position
                // (gpt-oss's YaRN is checked against mlx-lm's own roped queries and keys in
                // parity_archs.rs, gpt_oss_sinks_on_both_attention_paths).
                if r == 0 && !fx.gpt_oss() {
                    let (want_q, want_k): (Vec<f32>, Vec<f32>) = (
                        q.chunks(dh)
                            .enumerate()
                            .flat_map(|(j, x)| rope(x, j / h, fx.rope(i)))
                            .collect(),
                        k.chunks(dh)
                            .enumerate()
                            .flat_map(|(j, x)| rope(x, j / kv, fx.rope(i)))
                            .collect(),
                    );
                    if let Err(e) = close(&rq, &want_q, 1e-4) {
                        fail("hook_rot_q", r, e);
                    }
                    if let Err(e) = close(&rk, &want_k, 1e-4) {
                        fail("hook_rot_k", r, e);
                    }
                    // Position 0 is rotated by angle 0.
                    if let Err(e) = close(&rq[..h * dh], &q[..h * dh], 0.0) {
                        fail("hook_rot_q at position 0", r, e);
                    }
                }
                // Scores by hand from the rotated queries and keys: scaled dot products,
                // soft-capped (Gemma 2), -inf outside the causal (and sliding) window.
                let mut want = Vec::with_capacity(h * t * t);
                for head in 0..h {
                    let kh = head / (h / kv);
                    for qi in 0..t {
                        for ki in 0..t {
                            let visible = ki <= qi && fx.window(i).is_none_or(|w| ki + w > qi);
                            if !visible {
                                want.push(f32::NEG_INFINITY);
                                continue;
                            }
                            let qv = &rq[(qi * h + head) * dh..][..dh];
                            let kv_ = &rk[(ki * kv + kh) * dh..][..dh];
                            let s = qv.iter().zip(kv_).map(|(a, b)| a * b).sum::<f32>() * scale;
                            want.push(match cap {
                                Some(cap) => cap * (s / cap).tanh(),
                                None => s,
                            });
                        }
                    }
                }
                if let Err(e) = close(&scores, &want, 1e-4) {
                    fail("hook_attn_scores", r, e);
                }
                // The pattern is the softmax of the scores; with sinks (gpt-oss), each head's
                // sink logit joins the softmax and its share is left out.
                let sinks = fx.sinks(i);
                let mut soft = Vec::with_capacity(scores.len());
                for (j, row) in scores.chunks(t).enumerate() {
                    let sink = sinks.as_ref().map(|s| s[j / t]);
                    let m = row
                        .iter()
                        .chain(&sink)
                        .cloned()
                        .fold(f32::NEG_INFINITY, f32::max);
                    let e: Vec<f32> = row.iter().map(|s| (s - m).exp()).collect();
                    let z: f32 = e.iter().sum::<f32>() + sink.map_or(0.0, |s| (s - m).exp());
                    soft.extend(e.iter().map(|x| x / z));
                }
                if let Err(e) = close(&pattern, &soft, 1e-5) {
                    fail("softmax(hook_attn_scores) vs hook_pattern", r, e);
                }
                // Each head's result is its z through its columns of W_O; the results add up
                // to the output projection (before Gemma's post-attention norm).
                let z = v(Z(i));
                let result = v(HeadResult(i));
                let wo = fx.w(&format!("model.layers.{i}.self_attn.o_proj.weight"));
                let mut want = Vec::with_capacity(t * h * dm);
                let mut sum = vec![0.0f32; t * dm];
                for p in 0..t {
                    for head in 0..h {
                        let zh = &z[(p * h + head) * dh..][..dh];
                        for m in 0..dm {
                            let col = &wo[m * h * dh + head * dh..][..dh];
                            let y = zh.iter().zip(col).map(|(a, b)| a * b).sum::<f32>();
                            want.push(y);
                            sum[p * dm + m] += y;
                        }
                    }
                }
                if let Err(e) = close(&result, &want, 1e-4) {
                    fail("hook_result", r, e);
                }
                let mut got_sum = vals(&c[&HeadResult(i)][r].sum_axis(1, false).unwrap());
                if let Err(e) = close(&got_sum, &sum, 1e-4) {
                    fail("sum of hook_result", r, e);
                }
                if fx.gpt_oss() {
                    // The output projection's bias is no head's.
                    let bias = fx.w(&format!("model.layers.{i}.self_attn.o_proj.bias"));
                    for (j, x) in got_sum.iter_mut().enumerate() {
                        *x += bias[j % dm];
                    }
                }
                let attn_out = if fx.gemma() {
                    let w = fx.norm_weight(&format!("model.layers.{i}.post_attention_layernorm"));
                    rms_norm(&got_sum, &w, fx.eps()).0
                } else {
                    got_sum
                };
                if let Err(e) = close(&attn_out, &v(AttnOut(i)), 1e-4) {
                    fail("hook_result vs hook_attn_out", r, e);
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn mlp_points_match_their_definition() {
    let _mlx = lock();
    let mut failures = Vec::new();
    for case in CASES {
        let mut fx = Fixture::load(case);
        let d = fx.model.info.d_model as usize;
        let act = if fx.gemma() { gelu_tanh } else { silu };
        for i in 0..fx.model.n_layers() {
            use HookName::*;
            let pts = [Ln2Normalized(i), MlpPre(i), MlpPreLinear(i), MlpPost(i)];
            let c = capture_all(&mut fx.model, &pts);
            let p = format!("model.layers.{i}.mlp");
            for (r, post) in c[&MlpPost(i)].iter().enumerate() {
                let v = |p: HookName| vals(&c[&p][r]);
                let (x, pre, lin, post) = (
                    v(Ln2Normalized(i)),
                    v(MlpPre(i)),
                    v(MlpPreLinear(i)),
                    vals(post),
                );
                let mut fail = |what: &str, e: String| {
                    failures.push(format!("{case} layer {i} {what} row {r}: {e}"));
                };
                let want: Vec<f32> = if fx.gpt_oss() {
                    pre.iter()
                        .zip(&lin)
                        .map(|(g, u)| swiglu_oai(*g, *u))
                        .collect()
                } else {
                    pre.iter().zip(&lin).map(|(g, u)| act(*g) * u).collect()
                };
                if let Err(e) = close(&post, &want, 1e-5) {
                    fail("act(hook_pre) * hook_pre_linear vs hook_post", e);
                }
                if fx.gpt_oss()
                    && i == 0
                    && r == 0
                    && !pre.iter().chain(&lin).any(|x| x.abs() > 7.0)
                {
                    fail(
                        "SwiGLU-OAI clamp",
                        "no pre-activation reaches the limit 7".into(),
                    );
                }
                if case == "qwen3_moe" || fx.gpt_oss() {
                    // [t, k, d_expert]: each chosen expert's gate and up projections.
                    let shape = c[&MlpPre(i)][r].shape().to_vec();
                    let (k, ff) = (shape[1] as usize, shape[2] as usize);
                    let per_expert: Vec<(Vec<f32>, Vec<f32>)> = if fx.gpt_oss() {
                        // Stacked [experts, ff, d] with biases [experts, ff].
                        let (g, u) = (
                            fx.w(&format!("{p}.experts.gate_proj.weight")),
                            fx.w(&format!("{p}.experts.up_proj.weight")),
                        );
                        let (gb, ub) = (
                            fx.w(&format!("{p}.experts.gate_proj.bias")),
                            fx.w(&format!("{p}.experts.up_proj.bias")),
                        );
                        let biased = |y: Vec<f32>, b: &[f32]| -> Vec<f32> {
                            y.iter().enumerate().map(|(j, v)| v + b[j % ff]).collect()
                        };
                        (0..g.len() / (ff * d))
                            .map(|e| {
                                let w = |a: &[f32]| a[e * ff * d..][..ff * d].to_vec();
                                (
                                    biased(matmul_t(&x, &w(&g), d), &gb[e * ff..][..ff]),
                                    biased(matmul_t(&x, &w(&u), d), &ub[e * ff..][..ff]),
                                )
                            })
                            .collect()
                    } else {
                        let n_experts = fx.cfg["num_experts"].as_u64().unwrap() as usize;
                        (0..n_experts)
                            .map(|e| {
                                let g = fx.w(&format!("{p}.experts.{e}.gate_proj.weight"));
                                let u = fx.w(&format!("{p}.experts.{e}.up_proj.weight"));
                                (matmul_t(&x, &g, d), matmul_t(&x, &u, d))
                            })
                            .collect()
                    };
                    for (tok, choice) in (0..x.len() / d).flat_map(|t| (0..k).map(move |j| (t, j)))
                    {
                        let at = (tok * k + choice) * ff;
                        let found = per_expert.iter().any(|(g, u)| {
                            close(&pre[at..at + ff], &g[tok * ff..][..ff], 1e-4).is_ok()
                                && close(&lin[at..at + ff], &u[tok * ff..][..ff], 1e-4).is_ok()
                        });
                        if !found {
                            fail(
                                "hook_pre",
                                format!("token {tok} choice {choice} is no expert's"),
                            );
                        }
                    }
                    continue;
                }
                let (g, u) = if case == "phi3" {
                    let gu = fx.w(&format!("{p}.gate_up_proj.weight"));
                    let half = gu.len() / 2;
                    (gu[..half].to_vec(), gu[half..].to_vec())
                } else {
                    (
                        fx.w(&format!("{p}.gate_proj.weight")),
                        fx.w(&format!("{p}.up_proj.weight")),
                    )
                };
                if let Err(e) = close(&pre, &matmul_t(&x, &g, d), 1e-4) {
                    fail("hook_pre vs the gate projection", e);
                }
                if let Err(e) = close(&lin, &matmul_t(&x, &u, d), 1e-4) {
                    fail("hook_pre_linear vs the up projection", e);
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Replaces the activation `x` at `point` by `x / 2 + 1 / 4`: neither a uniform scale (a norm
/// after the point would undo it) nor a uniform shift (a softmax would) alone.
fn perturb(model: &mut Model, point: HookName) {
    model.hooks.attach(Hook {
        name: point,
        label: "x / 2 + 1 / 4".into(),
        steering: false,
        func: Box::new(|x, _| {
            let y = x.multiply(Array::from_f32(0.5))?;
            Ok(Some(y.add(Array::from_f32(0.25))?))
        }),
    });
}

/// Logits of `rows()` followed by three more tokens each, as one left-padded batch: run whole,
/// and run as the prompt then one cached decoding step per token (`[batch, pos, vocab]` each).
fn whole_and_cached(model: &mut Model) -> (Array, Array) {
    let more = [[30u32, 31, 32], [40, 41, 42]];
    let prompts = rows();
    let full: Vec<Vec<u32>> = prompts
        .iter()
        .zip(&more)
        .map(|(p, m)| p.iter().chain(m).copied().collect())
        .collect();
    let (ids, pads) = pad_left(&full, 0).unwrap();
    let whole = model.run(&ids, &pads, None, false).unwrap();
    let (ids, pads2) = pad_left(&prompts, 0).unwrap();
    assert_eq!(pads, pads2);
    let mut cache = KvCache::new(model.n_layers());
    let mut parts = vec![model.run(&ids, &pads, Some(&mut cache), false).unwrap()];
    for s in 0..3 {
        let step: Vec<i32> = more.iter().map(|m| m[s] as i32).collect();
        let step = Array::from_slice(&step, &[2, 1]);
        parts.push(model.run(&step, &pads, Some(&mut cache), false).unwrap());
    }
    (whole, ops::concatenate(&parts, 1).unwrap())
}

#[test]
fn replacing_the_new_points_works_in_forwards_and_cached_decoding() {
    let _mlx = lock();
    let mut failures = Vec::new();
    for case in CASES {
        let mut fx = Fixture::load(case);
        let model = &mut fx.model;
        let last = model.n_layers() - 1;
        let (plain, _) = whole_and_cached(model);
        use HookName::*;
        for point in [
            Ln1Scale(0),
            Ln1Normalized(last),
            RotQ(0),
            RotK(last),
            AttnScores(0),
            HeadResult(last),
            Ln2Scale(last),
            Ln2Normalized(0),
            MlpPre(0),
            MlpPreLinear(last),
            LnFinalScale,
        ] {
            perturb(model, point);
            let (whole, cached) = whole_and_cached(model);
            model.hooks.clear();
            let changed = max_abs_diff(&whole, &plain);
            if changed < 1e-4 {
                failures.push(format!(
                    "{case}: perturbing {point} changed the logits by {changed}"
                ));
            }
            let diff = max_abs_diff(&whole, &cached);
            if diff > 1e-4 {
                failures.push(format!(
                    "{case}: with {point} perturbed, cached decoding differs from the whole run by {diff}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn zeroed_scores_give_a_uniform_pattern_over_visible_keys() {
    let _mlx = lock();
    let mut failures = Vec::new();
    for case in CASES {
        let mut fx = Fixture::load(case);
        let all_sinks: Vec<Option<Vec<f32>>> =
            (0..fx.model.n_layers()).map(|i| fx.sinks(i)).collect();
        let model = &mut fx.model;
        for i in 0..model.n_layers() {
            let scores = capture_all(model, &[HookName::AttnScores(i)]);
            model.hooks.attach(Hook {
                name: HookName::AttnScores(i),
                label: "ablate".into(),
                steering: false,
                func: Intervention {
                    point: HookName::AttnScores(i),
                    op: Op::Ablate,
                    window: Window::All,
                }
                .into_hook(),
            });
            let pattern = capture_all(model, &[HookName::Pattern(i)]);
            model.hooks.clear();
            for (r, row) in rows().iter().enumerate() {
                let t = row.len();
                let s = vals(&scores[&HookName::AttnScores(i)][r]);
                // With sinks (gpt-oss), each head's sink takes its share first.
                let sinks = &all_sinks[i];
                let mut want = Vec::with_capacity(s.len());
                for (j, row) in s.chunks(t).enumerate() {
                    let sink = sinks.as_ref().map_or(0.0, |s| s[j / t].exp());
                    let visible = row.iter().filter(|x| x.is_finite()).count() as f32;
                    want.extend(row.iter().map(|x| {
                        if x.is_finite() {
                            1.0 / (visible + sink)
                        } else {
                            0.0
                        }
                    }));
                }
                if let Err(e) = close(&vals(&pattern[&HookName::Pattern(i)][r]), &want, 1e-6) {
                    failures.push(format!("{case} layer {i} row {r}: {e}"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn the_new_points_through_the_script() {
    let _mlx = lock();
    full_f32();
    let ctx = mlxi::script::Context::in_current_dir();
    let code = format!(
        r#"
        let m = load("{FIXTURES}/gemma2", #{{dtype: "f32"}});
        let names = hook_points(m);
        let before = [
            ["blocks.0.ln1.hook_scale", "blocks.0.ln1.hook_normalized"],
            ["blocks.0.ln1.hook_normalized", "blocks.0.attn.hook_q"],
            ["blocks.0.attn.hook_v", "blocks.0.attn.hook_rot_q"],
            ["blocks.0.attn.hook_rot_k", "blocks.0.attn.hook_attn_scores"],
            ["blocks.0.attn.hook_attn_scores", "blocks.0.attn.hook_pattern"],
            ["blocks.0.attn.hook_z", "blocks.0.attn.hook_result"],
            ["blocks.0.attn.hook_result", "blocks.0.hook_attn_out"],
            ["blocks.0.hook_resid_mid", "blocks.0.ln2.hook_scale"],
            ["blocks.0.ln2.hook_normalized", "blocks.0.mlp.hook_pre"],
            ["blocks.0.mlp.hook_pre_linear", "blocks.0.mlp.hook_post"],
            ["ln_final.hook_scale", "ln_final.hook_normalized"],
        ];
        let order = [];
        for pair in before {{
            let a = names.index_of(pair[0]);
            let b = names.index_of(pair[1]);
            order.push(a >= 0 && a + 1 == b);
        }}
        let ids = [5, 9, 14, 3, 7, 22, 11];
        let pts = ["blocks.-1.attn.hook_attn_scores", "blocks.0.attn.hook_result",
                   "blocks.*.ln1.hook_scale", "blocks.0.mlp.hook_pre", "blocks.1.attn.hook_rot_q",
                   "ln_final.hook_scale"];
        let c = capture(m, ids, #{{points: pts, positions: "all"}});
        let shapes = [];
        for p in ["blocks.1.attn.hook_attn_scores", "blocks.0.attn.hook_result",
                  "blocks.1.ln1.hook_scale", "blocks.0.mlp.hook_pre", "blocks.1.attn.hook_rot_q",
                  "ln_final.hook_scale"] {{
            shapes.push(c[p][0].shape);
        }}
        let last = capture(m, ids, #{{points: ["blocks.0.attn.hook_result"]}});
        let base = forward(m, ids);
        hook(m, "blocks.1.attn.hook_attn_scores", |x| x * 0.0);
        let zeroed = norm(forward(m, ids) - base);
        [order, shapes, last["blocks.0.attn.hook_result"].shape, zeroed > 0.0]
        "#
    );
    let v = expect_ok(common::script(ctx, &code));
    let v = v.into_array().unwrap();
    assert!(
        v[0].clone()
            .into_array()
            .unwrap()
            .iter()
            .all(|b| b.as_bool().unwrap()),
        "{v:?}"
    );
    let shapes: Vec<Vec<f64>> = v[1]
        .clone()
        .into_array()
        .unwrap()
        .iter()
        .map(floats)
        .collect();
    // 4 heads, 7 tokens, d_model 64, d_mlp 128, d_head 16.
    let want: Vec<Vec<f64>> = vec![
        vec![4.0, 7.0, 7.0],
        vec![7.0, 4.0, 64.0],
        vec![7.0, 1.0],
        vec![7.0, 128.0],
        vec![7.0, 4.0, 16.0],
        vec![7.0, 1.0],
    ];
    assert_eq!(shapes, want);
    assert_eq!(floats(&v[2]), [1.0, 4.0, 64.0]);
    assert!(v[3].as_bool().unwrap(), "{v:?}");
}
