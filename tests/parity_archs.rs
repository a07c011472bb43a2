//! Every architecture against mlx-lm's golden logits on the committed tiny checkpoints
//! (tests/fixtures/models/<case>, made by tests/reference/make_fixtures.py; see
//! tests/reference/FIXTURES.md), loaded through `Model::load` as users load them. Also: every
//! hook point is called with TransformerLens shapes, left padding leaves logits unchanged, and
//! broken checkpoints are clear errors.
//!
//! MLX is not thread safe and cargo runs the tests of a file on several threads: every test
//! holds `MLX` while it runs.

mod common;
use common::{full_f32, max_abs_diff, mlx_lock as lock, FIXTURES};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlx_rs::{Array, Dtype};
use mlxi::hooks::HookName;
use mlxi::model::layers::KvCache;
use mlxi::model::{LoadOptions, Model};

/// Every fixture case, in a fixed order.
fn cases() -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(FIXTURES)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

fn golden(case: &str) -> HashMap<String, Array> {
    Array::load_safetensors(format!("{FIXTURES}/{case}/golden.safetensors")).unwrap()
}

fn rows(input_ids: &Array) -> Vec<Vec<u32>> {
    let shape = input_ids.shape();
    let flat = input_ids.as_slice::<i32>();
    flat.chunks(shape[1] as usize)
        .map(|r| r.iter().map(|&x| x as u32).collect())
        .collect()
}

fn is_quantized(case: &str) -> bool {
    let text = std::fs::read_to_string(format!("{FIXTURES}/{case}/config.json")).unwrap();
    let config: serde_json::Value = serde_json::from_str(&text).unwrap();
    // OpenAI's gpt-oss layout says `quantization_config: {"quant_method": "mxfp4"}`.
    config.get("quantization").is_some() || config.get("quantization_config").is_some()
}

fn load(path: &str, dtype: Dtype, dequantize: bool) -> mlxi::error::Result<Model> {
    Model::load(
        path,
        &LoadOptions {
            dtype: Some(dtype),
            dequantize: Some(dequantize),
            ..Default::default()
        },
    )
}

/// Max |Δ| between `Model::load(case)` run on the golden `input_ids` and the golden `key`.
fn diff(case: &str, key: &str, dtype: Dtype, dequantize: bool) -> Result<f32, String> {
    let g = golden(case);
    let mut model = load(&format!("{FIXTURES}/{case}"), dtype, dequantize)
        .map_err(|e| format!("load failed: {e}"))?;
    let logits = model
        .forward_ids(&rows(&g["input_ids"]))
        .map_err(|e| format!("forward failed: {e}"))?;
    Ok(max_abs_diff(&logits, &g[key]))
}

#[test]
fn every_fixture_matches_mlx_lm() {
    full_f32();
    let _mlx = lock();
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for case in cases() {
        let g = golden(&case);
        let bf16 = g.contains_key("logits_f32");
        let dequantize: &[bool] = if is_quantized(&case) {
            &[true, false]
        } else {
            &[true]
        };
        // (golden key, dtype, tolerance)
        let mut runs = vec![(
            if bf16 { "logits_f32" } else { "logits" },
            Dtype::Float32,
            1e-3,
        )];
        if bf16 {
            runs.push(("logits", Dtype::Bfloat16, 0.1));
        }
        for &(key, dtype, tol) in &runs {
            for &dq in dequantize {
                let label = format!("{case} {key} {dtype:?} dequantize={dq}");
                match diff(&case, key, dtype, dq) {
                    Ok(d) => {
                        report.push(format!("{label}: max |diff| {d:.2e}"));
                        if d >= tol {
                            failures.push(format!("{label}: max |diff| {d} >= {tol}"));
                        }
                    }
                    Err(e) => failures.push(format!("{label}: {e}")),
                }
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(
        failures.is_empty(),
        "failed cases:\n{}",
        failures.join("\n")
    );
}

/// Every hook point is called once per forward, with TransformerLens shapes, and hooking
/// (which computes attention explicitly) leaves the logits unchanged.
#[test]
fn every_architecture_calls_every_hook_point() {
    full_f32();
    let _mlx = lock();
    let mut failures = Vec::new();
    for case in [
        "llama",
        "qwen2",
        "qwen3",
        "gemma2",
        "gemma3_text",
        "phi3",
        "qwen3_moe",
        "gpt_oss",
        "gpt_oss-mxfp4",
    ] {
        let g = golden(case);
        let mut model = load(&format!("{FIXTURES}/{case}"), Dtype::Float32, true).unwrap();
        let ids = rows(&g["input_ids"]);
        let plain = model.forward_ids(&ids).unwrap();
        let n = model.n_layers();
        let points = model.hook_points();
        let routers = points.iter().filter(|p| p.is_router()).count();
        if routers
            != if case == "qwen3_moe" || case.starts_with("gpt_oss") {
                4 * n
            } else {
                0
            }
        {
            failures.push(format!(
                "{case}: {routers} router hook points for {n} layers"
            ));
        }
        model.hooks.start_capture(&points);
        let hooked = model.forward_ids(&ids).unwrap();
        let seen = model.hooks.take_capture();
        let info = &model.info;
        let (b, t) = (2, 16);
        let (d, h, kv, hd) = (info.d_model, info.n_heads, info.n_kv_heads, info.d_head);
        for p in &points {
            let want: Vec<i32> = match p {
                HookName::Embed
                | HookName::LnFinal
                | HookName::ResidPre(_)
                | HookName::ResidMid(_)
                | HookName::ResidPost(_)
                | HookName::AttnOut(_)
                | HookName::MlpOut(_)
                | HookName::Ln1Normalized(_)
                | HookName::Ln2Normalized(_) => vec![b, t, d],
                HookName::Ln1Scale(_) | HookName::Ln2Scale(_) | HookName::LnFinalScale => {
                    vec![b, t, 1]
                }
                HookName::Q(_) | HookName::Z(_) | HookName::RotQ(_) => vec![b, t, h, hd],
                HookName::K(_) | HookName::V(_) | HookName::RotK(_) => vec![b, t, kv, hd],
                HookName::AttnScores(_) | HookName::Pattern(_) => vec![b, h, t, t],
                HookName::HeadResult(_) => vec![b, t, h, d],
                // Mixture of experts: the k chosen experts' activations.
                HookName::MlpPre(_) | HookName::MlpPreLinear(_) | HookName::MlpPost(_)
                    if case == "qwen3_moe" || case.starts_with("gpt_oss") =>
                {
                    vec![b, t, 2, info.d_mlp]
                }
                HookName::MlpPre(_) | HookName::MlpPreLinear(_) | HookName::MlpPost(_) => {
                    vec![b, t, info.d_mlp]
                }
                // Not in `HookName::all`: adapter points (tests/adapters.rs).
                HookName::Lora(..) => unreachable!("no adapter here"),
                HookName::RouterLogits(_) => vec![b, t, info.n_experts],
                HookName::ExpertIds(_) | HookName::ExpertWeights(_) => {
                    vec![b, t, info.experts_per_token]
                }
                HookName::ExpertOut(_) => vec![b, t, info.experts_per_token, d],
            };
            match seen.get(p).map(|v| v.as_slice()) {
                Some([a]) if a.shape() == want => {}
                Some([a]) => failures.push(format!(
                    "{case} {p}: shape {:?}, expected {want:?}",
                    a.shape()
                )),
                other => failures.push(format!(
                    "{case} {p}: called {} times",
                    other.map_or(0, |v| v.len())
                )),
            }
        }
        let d = max_abs_diff(&plain, &hooked);
        if d >= 1e-4 {
            failures.push(format!("{case}: hooking changed the logits by {d}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Decoding with the KV cache (a prefix, then one token at a time) gives the logits of one full
/// forward, sliding windows and soft-capping included.
#[test]
fn cached_decoding_matches_the_full_forward() {
    full_f32();
    let _mlx = lock();
    let mut failures = Vec::new();
    for case in [
        "llama",
        "qwen2",
        "qwen3",
        "gemma2",
        "gemma3_text",
        "phi3",
        "qwen3_moe",
        "gpt_oss",
        "gpt_oss-mxfp4",
    ] {
        let g = golden(case);
        let mut model = load(&format!("{FIXTURES}/{case}"), Dtype::Float32, true).unwrap();
        let full = model.forward_ids(&rows(&g["input_ids"])).unwrap();
        let ids = &g["input_ids"];
        let mut cache = KvCache::new(model.n_layers());
        let prefix = ids.take_axis(Array::from_iter(0..6, &[6]), 1).unwrap();
        let mut parts = vec![model.run(&prefix, &[], Some(&mut cache), false).unwrap()];
        for p in 6..16 {
            let tok = ids.take_axis(Array::from_iter(p..p + 1, &[1]), 1).unwrap();
            parts.push(model.run(&tok, &[], Some(&mut cache), false).unwrap());
        }
        let cached = mlx_rs::ops::concatenate(&parts, 1).unwrap();
        let d = max_abs_diff(&cached, &full);
        println!("{case}: cached decoding max |diff| {d:.2e}");
        if d >= 1e-3 {
            failures.push(format!("{case}: cached decoding differs by {d}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

/// Left padding changes no row's logits (sliding windows and soft-capping included).
#[test]
fn left_padding_does_not_change_logits_on_gemma() {
    full_f32();
    let _mlx = lock();
    for case in ["gemma2", "gemma3_text", "gpt_oss"] {
        let g = golden(case);
        let mut model = load(&format!("{FIXTURES}/{case}"), Dtype::Float32, true).unwrap();
        let ids = rows(&g["input_ids"]);
        let long = ids[0].clone();
        let short = ids[1][..10].to_vec();
        let both = model.forward_ids(&[long.clone(), short.clone()]).unwrap();
        let alone_long = model.forward_ids(&[long]).unwrap();
        let alone_short = model.forward_ids(&[short]).unwrap();
        let row = |i: i32, from: i32| {
            both.take_axis(Array::from_int(i), 0)
                .unwrap()
                .take_axis(Array::from_iter(from..16, &[16 - from]), 0)
                .unwrap()
                .expand_dims(0)
                .unwrap()
        };
        let d_long = max_abs_diff(&row(0, 0), &alone_long);
        let d_short = max_abs_diff(&row(1, 6), &alone_short);
        println!("{case}: padding max |diff| {d_long:.2e} (long row), {d_short:.2e} (padded row)");
        assert!(
            d_long < 1e-3 && d_short < 1e-3,
            "{case}: padding changed logits: {d_long}, {d_short}"
        );
    }
}

/// A scratch copy of a fixture whose weights `edit` may change; removed on drop.
struct Scratch(PathBuf);

impl Scratch {
    fn new(case: &str, name: &str) -> Scratch {
        let dir =
            std::env::temp_dir().join(format!("mlxi-parity-archs-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for e in std::fs::read_dir(Path::new(FIXTURES).join(case)).unwrap() {
            let e = e.unwrap();
            std::fs::copy(e.path(), dir.join(e.file_name())).unwrap();
        }
        Scratch(dir)
    }

    fn edit_weights(&self, edit: impl FnOnce(&mut HashMap<String, Array>)) {
        let path = self.0.join("model.safetensors");
        let mut w = Array::load_safetensors(&path).unwrap();
        edit(&mut w);
        // MLX reads lazily: materialize before overwriting the file the arrays come from.
        mlx_rs::transforms::eval(w.values()).unwrap();
        Array::save_safetensors(&w, None, &path).unwrap();
    }

    fn load_err(&self) -> String {
        match load(self.0.to_str().unwrap(), Dtype::Float32, true) {
            Ok(_) => panic!("{}: loaded without an error", self.0.display()),
            Err(e) => {
                println!("{}: {e}", self.0.display());
                e.to_string()
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn broken_checkpoints_are_clear_errors() {
    full_f32();
    let _mlx = lock();
    let key = "model.layers.1.self_attn.k_norm.weight";

    let s = Scratch::new("qwen3", "missing");
    s.edit_weights(|w| {
        w.remove(key);
    });
    let e = s.load_err();
    assert!(e.contains("missing tensor") && e.contains(key), "{e}");

    let s = Scratch::new("qwen3", "extra");
    s.edit_weights(|w| {
        w.insert(
            "model.layers.0.mlp.extra.weight".into(),
            Array::zeros::<f32>(&[4]).unwrap(),
        );
    });
    let e = s.load_err();
    assert!(
        e.contains("unexpected") && e.contains("model.layers.0.mlp.extra.weight"),
        "{e}"
    );

    let s = Scratch::new("qwen3", "shape");
    s.edit_weights(|w| {
        w.insert(key.into(), Array::zeros::<f32>(&[16]).unwrap());
    });
    let e = s.load_err();
    assert!(
        e.contains(key) && e.contains("shape") && e.contains("[16]"),
        "{e}"
    );

    let s = Scratch::new("gemma2", "truncated");
    let path = s.0.join("model.safetensors");
    let len = std::fs::metadata(&path).unwrap().len();
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(len / 2).unwrap();
    drop(f);
    let e = s.load_err();
    assert!(
        e.contains("model.safetensors") && e.contains("truncated"),
        "{e}"
    );

    let s = Scratch::new("phi3", "unknown-type");
    let config = s.0.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replace("\"phi3\"", "\"phi_mystery\"")).unwrap();
    let e = s.load_err();
    assert!(
        e.contains("phi_mystery") && e.contains("gemma3_text") && e.contains("qwen3_moe"),
        "{e}"
    );

    // A per-expert (Hugging Face layout) MoE checkpoint missing one expert.
    let s = Scratch::new("qwen3_moe", "missing-expert");
    let expert = "model.layers.0.mlp.experts.3.down_proj.weight";
    s.edit_weights(|w| {
        w.remove(expert);
    });
    let e = s.load_err();
    assert!(e.contains("missing tensor") && e.contains(expert), "{e}");

    // OpenAI's MXFP4 layout: blocks of the wrong shape, scales of the wrong type.
    let blocks = "model.layers.0.mlp.experts.gate_up_proj_blocks";
    let s = Scratch::new("gpt_oss-openai", "blocks-shape");
    s.edit_weights(|w| {
        w.insert(blocks.into(), Array::zeros::<u8>(&[4, 64, 1, 32]).unwrap());
    });
    let e = s.load_err();
    assert!(e.contains(blocks) && e.contains("[4, 64, 2, 16]"), "{e}");
    let scales = "model.layers.1.mlp.experts.down_proj_scales";
    let s = Scratch::new("gpt_oss-openai", "scales-type");
    s.edit_weights(|w| {
        w.insert(scales.into(), Array::zeros::<f32>(&[4, 64, 1]).unwrap());
    });
    let e = s.load_err();
    assert!(e.contains("down_proj_scales") && e.contains("uint8"), "{e}");

    // mlx-community's layout: MXFP4 has no offsets; a mode mlxi does not run.
    let s = Scratch::new("gpt_oss-mxfp4", "mxfp4-biases");
    s.edit_weights(|w| {
        w.insert(
            "model.layers.0.mlp.experts.up_proj.biases".into(),
            Array::zeros::<f32>(&[4, 32, 2]).unwrap(),
        );
    });
    let e = s.load_err();
    assert!(e.contains("up_proj") && e.contains("no .biases"), "{e}");
    let s = Scratch::new("gpt_oss-mxfp4", "mode");
    let config = s.0.join("config.json");
    let text = std::fs::read_to_string(&config).unwrap();
    std::fs::write(&config, text.replacen("\"mxfp4\"", "\"nvfp4\"", 1)).unwrap();
    let e = s.load_err();
    assert!(
        e.contains("config.json") && e.contains("nvfp4") && e.contains("mxfp4"),
        "{e}"
    );
}

/// gpt-oss's attention sinks on both attention paths, against mlx-lm's queries and keys
/// (`hook_rot_q`/`hook_rot_k` equal them: YaRN with its attention scale as mlx-lm's): the
/// fused kernel (nothing hooked but `hook_z`) and the explicit scores computed when
/// `hook_pattern` is hooked give the attention output of MLX's kernel with the sinks
/// (`attn_z_l{i}`), and `hook_pattern` is the NumPy softmax with each head's sink as an extra
/// column, left out (`attn_pattern_l{i}`; rows sum to less than one), on the sliding and the
/// full layer.
#[test]
fn gpt_oss_sinks_on_both_attention_paths() {
    full_f32();
    let _mlx = lock();
    let g = golden("gpt_oss");
    let mut model = load(&format!("{FIXTURES}/gpt_oss"), Dtype::Float32, true).unwrap();
    let ids = rows(&g["input_ids"]);
    let mut failures = Vec::new();
    for explicit in [false, true] {
        let mut points = vec![HookName::Z(0), HookName::Z(1)];
        points.extend((0..2).flat_map(|i| [HookName::RotQ(i), HookName::RotK(i)]));
        if explicit {
            points.extend([HookName::Pattern(0), HookName::Pattern(1)]);
        }
        model.hooks.start_capture(&points);
        model.forward_ids(&ids).unwrap();
        let seen = model.hooks.take_capture();
        for i in 0..2 {
            for (p, key) in [
                (HookName::RotQ(i), "attn_rot_q"),
                (HookName::RotK(i), "attn_rot_k"),
            ] {
                let got = seen[&p][0].contiguous().unwrap();
                let d = max_abs_diff(&got, &g[&format!("{key}_l{i}")]);
                if d >= 1e-5 {
                    failures.push(format!("layer {i}: {p} (YaRN) differs by {d}"));
                }
            }
            let z = seen[&HookName::Z(i)][0].contiguous().unwrap();
            let d = max_abs_diff(&z, &g[&format!("attn_z_l{i}")]);
            println!("layer {i} explicit={explicit}: hook_z max |diff| {d:.2e}");
            if d >= 1e-5 {
                failures.push(format!(
                    "layer {i} explicit={explicit}: hook_z differs by {d}"
                ));
            }
            if explicit {
                let p = seen[&HookName::Pattern(i)][0].contiguous().unwrap();
                let want = &g[&format!("attn_pattern_l{i}")];
                let d = max_abs_diff(&p, want);
                println!("layer {i}: hook_pattern max |diff| {d:.2e}");
                if d >= 1e-5 {
                    failures.push(format!("layer {i}: hook_pattern differs by {d}"));
                }
                let sums = p.sum_axis(-1, false).unwrap();
                let most = sums.max(None).unwrap().item_exact::<f32>();
                if most >= 0.999 {
                    failures.push(format!("layer {i}: a pattern row sums to {most}: no sink"));
                }
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
