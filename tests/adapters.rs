//! LoRA adapters (`load(base, #{adapter: DIR})`) against their references, on the committed
//! adapters in tests/fixtures/adapters (made by tests/reference/lora_fixtures.py; see
//! tests/reference/FIXTURES.md):
//! - mlx-lm adapters on the tiny float and quantized (QLoRA) checkpoints against
//!   `mlx_lm.load(base, adapter_path=...)`;
//! - PEFT adapters on the tiny float checkpoints and on a 4-bit one, and a rank-4 q/v adapter
//!   on the default model, against transformers + PEFT;
//! - fused equals unfused, switching the adapter off gives the base model's logits, the
//!   `hook_lora_*` points carry the update, and broken adapters are clear errors that leave
//!   the model as it was.
//!
//! MLX is not thread safe and cargo runs the tests of a file on several threads: every test
//! holds `MLX` while it runs.

mod common;
use common::{full_f32, max_abs_diff, mlx_lock as lock, FIXTURES};

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use mlx_rs::{Array, Dtype};
use mlxi::hooks::{Hook, HookName};
use mlxi::model::lora::Target;
use mlxi::model::{LoadOptions, Model};

const ADAPTERS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/adapters");

fn golden(dir: &str) -> HashMap<String, Array> {
    Array::load_safetensors(format!("{dir}/golden.safetensors")).unwrap()
}

fn rows(input_ids: &Array) -> Vec<Vec<u32>> {
    let shape = input_ids.shape();
    let flat = input_ids.as_slice::<i32>();
    flat.chunks(shape[1] as usize)
        .map(|r| r.iter().filter(|&&x| x >= 0).map(|&x| x as u32).collect())
        .collect()
}

fn opts(adapter: Option<&str>, fuse: bool, dequantize: bool) -> LoadOptions {
    LoadOptions {
        dtype: Some(Dtype::Float32),
        dequantize: Some(dequantize),
        adapter: adapter.map(PathBuf::from),
        fuse,
        pipeline: false,
    }
}

fn load(base: &str, adapter: &str, fuse: bool, dequantize: bool) -> Model {
    let a = format!("{ADAPTERS}/{adapter}");
    Model::load(
        &format!("{FIXTURES}/{base}"),
        &opts(Some(&a), fuse, dequantize),
    )
    .unwrap_or_else(|e| panic!("{adapter} on {base}: {e}"))
}

/// (adapter, base, quantized base) for every tiny-checkpoint adapter.
const CASES: &[(&str, &str, bool)] = &[
    ("llama-mlx", "llama", false),
    ("qwen3-mlx", "qwen3", false),
    ("llama-q4-mlx", "llama-q4", true),
    ("qwen3-q8-mlx", "qwen3-q8", true),
    ("llama-peft", "llama", false),
    ("qwen3-peft", "qwen3", false),
    ("gemma2-mlx", "gemma2", false),
    ("gemma3_text-mlx", "gemma3_text", false),
    ("gemma3_text-peft", "gemma3_text", false),
    ("llama-q4-peft", "llama-q4", true),
];

#[test]
fn adapters_match_their_references_fused_and_not() {
    full_f32();
    let _mlx = lock();
    let mut failures = Vec::new();
    let mut report = Vec::new();
    for &(adapter, base, quantized) in CASES {
        let g = golden(&format!("{ADAPTERS}/{adapter}"));
        let ids = rows(&g["input_ids"]);
        let base_logits = golden(&format!("{FIXTURES}/{base}"))["logits"].clone();
        // The adapter changes the logits far beyond the tolerance, so a no-op would fail.
        let change = max_abs_diff(&g["logits"], &base_logits);
        assert!(
            change > 0.5,
            "{adapter}: the reference barely differs from the base"
        );
        let modes: &[bool] = if quantized { &[true, false] } else { &[true] };
        for &dq in modes {
            let unfused = load(base, adapter, false, dq).forward_ids(&ids).unwrap();
            let fused = load(base, adapter, true, dq).forward_ids(&ids).unwrap();
            let d = max_abs_diff(&unfused, &g["logits"]);
            let df = max_abs_diff(&fused, &g["logits"]);
            let dd = max_abs_diff(&fused, &unfused);
            report.push(format!(
                "{adapter} dequantize={dq}: |unfused - ref| {d:.2e}, |fused - ref| {df:.2e}, \
                 |fused - unfused| {dd:.2e}"
            ));
            // A fused quantized layer is dequantized, so it equals the kept-quantized unfused
            // one only up to MLX's quantized matmul rounding.
            let fuse_tol = if quantized && !dq { 1e-3 } else { 1e-4 };
            if d >= 1e-3 || df >= 1e-3 || dd >= fuse_tol {
                failures.push(report.last().unwrap().clone());
            }
        }
    }
    println!("{}", report.join("\n"));
    assert!(failures.is_empty(), "failed:\n{}", failures.join("\n"));
}

#[test]
fn switching_the_adapter_off_gives_the_base_model() {
    full_f32();
    let _mlx = lock();
    for (adapter, base) in [("llama-mlx", "llama"), ("qwen3-peft", "qwen3")] {
        let g = golden(&format!("{ADAPTERS}/{adapter}"));
        let ids = rows(&g["input_ids"]);
        let base_logits = golden(&format!("{FIXTURES}/{base}"))["logits"].clone();
        let mut m = load(base, adapter, false, true);
        assert!(m.info.adapter.contains("(on;"), "{}", m.info.adapter);
        m.set_adapter(false).unwrap();
        assert!(m.info.adapter.contains("(off;"), "{}", m.info.adapter);
        let off = m.forward_ids(&ids).unwrap();
        assert!(max_abs_diff(&off, &base_logits) < 1e-3, "{adapter} off");
        m.set_adapter(true).unwrap();
        let on = m.forward_ids(&ids).unwrap();
        assert!(max_abs_diff(&on, &g["logits"]) < 1e-3, "{adapter} on again");

        let mut fused = load(base, adapter, true, true);
        let err = fused.set_adapter(false).unwrap_err().to_string();
        assert!(err.contains("fused"), "{err}");
        assert!(
            fused.info.adapter.contains("(fused;"),
            "{}",
            fused.info.adapter
        );
    }
}

#[test]
fn lora_hook_points_carry_the_update() {
    full_f32();
    let _mlx = lock();
    let g = golden(&format!("{ADAPTERS}/qwen3-mlx"));
    let ids = rows(&g["input_ids"]);
    let base_logits = golden(&format!("{FIXTURES}/qwen3"))["logits"].clone();
    let mut m = load("qwen3", "qwen3-mlx", false, true);
    let targets = m.adapter.as_ref().unwrap().targets();
    // keys q, v, o, down on both blocks (num_layers -1).
    assert_eq!(targets.len(), 8, "{targets:?}");
    let points = HookName::lora_points(&targets);
    assert_eq!(points[0].to_string(), "blocks.0.attn.hook_lora_q");
    assert_eq!(points[3].to_string(), "blocks.0.mlp.hook_lora_down");

    // Captured: one [batch, pos, out] activation per point, and capturing changes nothing.
    m.hooks.start_capture(&points);
    let captured_run = m.forward_ids(&ids).unwrap();
    let captured = m.hooks.take_capture();
    assert!(max_abs_diff(&captured_run, &g["logits"]) < 1e-3);
    let q = &captured[&HookName::Lora(0, Target::Q)][0];
    // qwen3's queries: 4 heads of 32.
    assert_eq!(q.shape(), &[2, 16, 128]);
    // The update is the adapter's own: scale * (x A) B with x the layer's input.
    let module = m.adapter.as_ref().unwrap().modules[&(1, Target::Down)].clone();
    m.hooks
        .start_capture(&[HookName::MlpPost(1), HookName::Lora(1, Target::Down)]);
    m.forward_ids(&ids).unwrap();
    let c = m.hooks.take_capture();
    let expected = module.update(&c[&HookName::MlpPost(1)][0]).unwrap();
    assert!(max_abs_diff(&expected, &c[&HookName::Lora(1, Target::Down)][0]) < 1e-5);

    // Zeroing every update at its hook point gives the base model.
    for p in &points {
        m.hooks.attach(Hook {
            name: *p,
            label: "zero".into(),
            steering: false,
            func: Box::new(|x, _| Ok(Some(x.multiply(Array::from_f32(0.0))?))),
        });
    }
    let zeroed = m.forward_ids(&ids).unwrap();
    assert!(max_abs_diff(&zeroed, &base_logits) < 1e-3);
}

#[test]
fn default_model_with_a_peft_adapter_matches_transformers() {
    full_f32();
    let _mlx = lock();
    let dir = format!("{ADAPTERS}/smollm2-peft");
    let g = golden(&dir);
    let expected = &g["logits_last"];
    let mut report = Vec::new();
    for fuse in [false, true] {
        let mut m = Model::load_default(&opts(Some(&dir), fuse, true)).expect("run ./setup first");
        let info = &m.info.adapter;
        assert!(
            info.contains("peft LoRA, rank 4, q,v on 30 of 30 blocks"),
            "{info}"
        );
        for (r, ids) in rows(&g["input_ids"]).iter().enumerate() {
            let logits = m.forward_ids(std::slice::from_ref(ids)).unwrap();
            let t = ids.len() as i32;
            let last = logits
                .reshape(&[t, -1])
                .unwrap()
                .take_axis(Array::from_int(t - 1), 0)
                .unwrap();
            let want = expected.take_axis(Array::from_int(r as i32), 0).unwrap();
            let d = max_abs_diff(&last, &want);
            report.push(format!("fuse={fuse} prompt {r}: max |diff| {d:.2e}"));
            assert!(d < 1e-3, "{}", report.join("\n"));
        }
        if !fuse {
            // Off, the model is the base: far from the adapted reference.
            m.set_adapter(false).unwrap();
            let ids = &rows(&g["input_ids"])[0];
            let logits = m.forward_ids(std::slice::from_ref(ids)).unwrap();
            let t = ids.len() as i32;
            let last = logits
                .reshape(&[t, -1])
                .unwrap()
                .take_axis(Array::from_int(t - 1), 0)
                .unwrap();
            let want = expected.take_axis(Array::from_int(0), 0).unwrap();
            assert!(max_abs_diff(&last, &want) > 1.0);
        }
    }
    println!("{}", report.join("\n"));
}

/// A copy of adapter `name` in a temporary folder, for breaking.
fn copy_adapter(name: &str) -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(format!("{ADAPTERS}/{name}")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), tmp.path().join(e.file_name())).unwrap();
    }
    tmp
}

fn edit_config(dir: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = dir.join("adapter_config.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_string(&v).unwrap()).unwrap();
}

/// Rewrites the adapter's safetensors file through `f` (name -> (shape, f32 values)).
fn edit_tensors(dir: &Path, file: &str, f: impl FnOnce(&mut Vec<(String, Vec<usize>, Vec<f32>)>)) {
    let p = dir.join(file);
    let bytes = std::fs::read(&p).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut tensors: Vec<(String, Vec<usize>, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| {
            assert_eq!(v.dtype(), safetensors::Dtype::F32);
            let data = v
                .data()
                .chunks(4)
                .map(|c| f32::from_le_bytes(c.try_into().unwrap()))
                .collect();
            (n, v.shape().to_vec(), data)
        })
        .collect();
    f(&mut tensors);
    let raw: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .into_iter()
        .map(|(n, s, d)| (n, s, d.iter().flat_map(|x| x.to_le_bytes()).collect()))
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = raw
        .iter()
        .map(|(n, s, d)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &p).unwrap();
}

#[test]
fn broken_adapters_are_clear_errors_that_change_nothing() {
    full_f32();
    let _mlx = lock();
    let base_logits = golden(&format!("{FIXTURES}/llama"))["logits"].clone();
    let ids = rows(&golden(&format!("{FIXTURES}/llama"))["input_ids"]);
    let mut m = Model::load(&format!("{FIXTURES}/llama"), &opts(None, false, true)).unwrap();
    let mut attach = |dir: &Path, want: &str| {
        let err = m.attach_adapter(dir, false).unwrap_err().to_string();
        assert!(err.contains(want), "expected {want:?} in: {err}");
        assert!(m.adapter.is_none());
        assert_eq!(m.info.adapter, "none");
        let logits = m.forward_ids(&ids).unwrap();
        assert!(
            max_abs_diff(&logits, &base_logits) < 1e-3,
            "{want}: model changed"
        );
    };

    let t = copy_adapter("llama-mlx");
    edit_config(t.path(), |c| c["lora_parameters"]["rank"] = 8.into());
    attach(t.path(), "do not fit a rank-8 update");

    let t = copy_adapter("llama-mlx");
    edit_config(t.path(), |c| {
        c["lora_parameters"]["scale"] = serde_json::json!(1e39)
    });
    attach(t.path(), "non-finite scale");

    let t = copy_adapter("llama-mlx");
    edit_config(t.path(), |c| {
        c["lora_parameters"]["keys"] = serde_json::json!(["self_attn.c_attn"])
    });
    attach(t.path(), "is not a linear layer of this model's blocks");

    let t = copy_adapter("llama-mlx");
    edit_config(t.path(), |c| c["num_layers"] = 2.into());
    attach(t.path(), "the file lacks its lora_a/lora_b pair");

    let t = copy_adapter("llama-mlx");
    edit_config(t.path(), |c| c["fine_tune_type"] = "dora".into());
    attach(t.path(), "fine_tune_type \"dora\" is not supported");

    let t = copy_adapter("llama-mlx");
    edit_tensors(t.path(), "adapters.safetensors", |ts| {
        ts.push((
            "model.layers.1.input_layernorm.lora_a".into(),
            vec![2],
            vec![0.0, 0.0],
        ))
    });
    attach(t.path(), "is not a LoRA matrix");

    let t = copy_adapter("llama-mlx");
    edit_tensors(t.path(), "adapters.safetensors", |ts| {
        let (_, shape, data) = ts
            .iter_mut()
            .find(|(n, ..)| n.ends_with("q_proj.lora_b"))
            .unwrap();
        // [4, 64] -> [4, 32]: the base layer's output is 64 wide.
        *shape = vec![4, 32];
        data.truncate(128);
    });
    attach(
        t.path(),
        "do not fit a rank-4 update of a layer from 64 to 64 features",
    );

    let t = copy_adapter("llama-mlx");
    edit_tensors(t.path(), "adapters.safetensors", |ts| {
        ts.retain(|(n, ..)| !n.contains("layers.1.mlp.up_proj"));
    });
    attach(t.path(), "model.layers.1.mlp.up_proj");

    let t = copy_adapter("llama-peft");
    edit_config(t.path(), |c| c["use_dora"] = true.into());
    attach(t.path(), "use_dora is set");

    let t = copy_adapter("llama-peft");
    edit_config(t.path(), |c| c["rank_pattern"] = serde_json::json!({}));
    attach(t.path(), "rank-4 update");

    let t = copy_adapter("llama-peft");
    edit_config(t.path(), |c| {
        c["target_modules"] = serde_json::json!(["q_proj"])
    });
    attach(t.path(), "does not select");

    let t = copy_adapter("llama-peft");
    edit_config(t.path(), |c| {
        c["target_modules"] = serde_json::json!(["q_proj", "c_fc"])
    });
    attach(t.path(), "no layer \"c_fc\"");

    let t = copy_adapter("llama-peft");
    std::fs::remove_file(t.path().join("adapter_model.safetensors")).unwrap();
    attach(
        t.path(),
        "no adapters.safetensors (mlx-lm) or adapter_model.safetensors",
    );

    let t = copy_adapter("llama-peft");
    std::fs::write(
        t.path().join("adapter_model.safetensors"),
        b"not a safetensors file",
    )
    .unwrap();
    attach(t.path(), "not a safetensors file");

    // A qwen3 adapter on the llama checkpoint: the widths differ (qwen3's head_dim).
    let qwen = Path::new(ADAPTERS).join("qwen3-mlx");
    let e = m.attach_adapter(&qwen, false).unwrap_err();
    assert!(e.to_string().contains("do not fit"), "{e}");
    // Fusing needs an adapter; a second adapter is refused.
    let err = Model::load(
        &format!("{FIXTURES}/llama"),
        &LoadOptions {
            fuse: true,
            ..opts(None, false, true)
        },
    );
    assert!(err.err().unwrap().to_string().contains("needs an adapter"));
    let mut adapted = load("llama", "llama-mlx", false, true);
    let again = adapted.attach_adapter(&Path::new(ADAPTERS).join("llama-mlx"), false);
    assert!(again
        .unwrap_err()
        .to_string()
        .contains("already has an adapter"));
    // Architectures without adapter support say so.
    let mut phi3 = Model::load(&format!("{FIXTURES}/phi3"), &opts(None, false, true)).unwrap();
    let e = phi3
        .attach_adapter(&Path::new(ADAPTERS).join("llama-mlx"), false)
        .unwrap_err();
    assert!(
        e.to_string().contains(
            "adapters are not supported on phi3 models yet (supported: llama, mistral, qwen2"
        ),
        "{e}"
    );
}

/// The script verbs: `load(base, #{adapter, fuse})`, `adapter(m)`, `adapter(m, on)`,
/// `hook_points` with the adapter's points, a script hook on `hook_lora_*`, `m.info().adapter`.
#[test]
fn scripts_load_switch_and_hook_adapters() {
    let code = format!(
        r#"let m = load("{FIXTURES}/llama", #{{adapter: "{ADAPTERS}/llama-mlx"}});
        let a = adapter(m);
        let on = forward(m, [5, 6, 7]);
        adapter(m, false);
        let off = forward(m, [5, 6, 7]);
        adapter(m, true);
        let lora = hook_points(m).filter(|p| p.contains("lora"));
        let seen = [];
        hook(m, "blocks.1.attn.hook_lora_q", |x| {{ seen.push(x.shape); () }});
        forward(m, [5, 6, 7]);
        let zero = |x| x * 0.0;
        for p in lora {{ hook(m, p, zero); }}
        let zeroed = forward(m, [5, 6, 7]);
        let f = load("{FIXTURES}/llama", #{{adapter: "{ADAPTERS}/llama-mlx", fuse: true}});
        let err = "";
        try {{ adapter(f, false); }} catch (e) {{ err = `${{e}}`; }}
        [a.format, a.layers, a.targets, a.ranks, a.on, max(abs(on - off)) > 0.1,
         lora.len(), lora[0], seen, max(abs(zeroed - off)) < 1e-4, err.contains("fused"),
         adapter(f).fused, m.info().adapter.contains("(on;"), `${{m}}`.contains("adapter: mlx-lm LoRA"),
         adapter(load("{FIXTURES}/llama")) == ()]"#
    );
    let r = common::eval(&code);
    // The q hook saw both later forwards (it stays attached while the zeroing hooks run).
    let want = r#"["mlx-lm", [1], ["q", "k", "v", "o", "gate", "up", "down"], [4], true, true, 7,
        "blocks.1.attn.hook_lora_q", [[1, 3, 64], [1, 3, 64]], true, true, true, true, true, true,]"#;
    let squash = |s: &str| s.split_whitespace().collect::<String>();
    assert_eq!(squash(r.ok()), squash(want));
    let bad = common::eval(&format!(
        r#"load("{FIXTURES}/llama", #{{adapter: "{ADAPTERS}/no-such-adapter"}})"#
    ));
    assert!(bad.stderr.contains("no such folder"), "{}", bad.stderr);
    let typo = common::eval(&format!(r#"load("{FIXTURES}/llama", #{{adaptor: "x"}})"#));
    assert!(typo.stderr.contains("adapter"), "{}", typo.stderr);
}

/// `load_tensors` reads every matrix of an adapter file; `save_tensors` writes them back.
#[test]
fn adapter_matrices_round_trip_through_scripts() {
    let home = common::scratch();
    let dir = common::scratch();
    // A script reads only inside its folder (unless allowed): the file is copied there.
    std::fs::copy(
        format!("{ADAPTERS}/llama-mlx/adapters.safetensors"),
        dir.path().join("adapters.safetensors"),
    )
    .unwrap();
    let code = r#"let w = load_tensors("adapters.safetensors");
        save_tensors(w, "copy.safetensors");
        let again = load_tensors("copy.safetensors");
        let same = true;
        for k in keys(w) { if max(abs(w[k] - again[k])) != 0.0 { same = false; } }
        [keys(w).len(), w["model.layers.1.self_attn.q_proj.lora_a"].shape, same]"#;
    let r = common::eval_in(home.path(), dir.path(), code);
    assert_eq!(
        r.ok().split_whitespace().collect::<String>(),
        "[14,[64,4],true]"
    );
    let bad = common::eval_in(
        home.path(),
        dir.path(),
        r#"save_tensors(#{a: 1}, "x.safetensors")"#,
    );
    assert!(bad.stderr.contains("is not a Tensor"), "{}", bad.stderr);
}
