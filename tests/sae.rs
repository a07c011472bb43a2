//! Sparse autoencoders against NumPy and mlx-lm (tests/reference/sae_golden.py): encoding,
//! decoding and the spliced, ablated and steered forwards of a random SAE of each kind on the
//! `llama` fixture; load errors; the save -> load round trip; training.
//!
//! MLX is not thread safe and cargo runs the tests of a file on several threads: every test
//! holds the MLX lock while it runs.

mod common;
use common::{expect_err, expect_ok, max_abs_diff, mlx_lock as lock, script, FIXTURES};

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::rc::Rc;

use mlx_rs::{Array, Dtype};
use mlxi::hooks::{Hook, HookName};
use mlxi::interventions::{Intervention, Op, Window};
use mlxi::model::{LoadOptions, Model};
use mlxi::sae::{Sae, SaeEdit};

const KINDS: [&str; 5] = ["standard", "jumprelu", "topk", "standard_cnr", "gemmascope"];

fn sae_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/sae")
}

fn sae_path(kind: &str) -> PathBuf {
    match kind {
        "gemmascope" => sae_dir().join("gemmascope/layer_0/width_128/params.npz"),
        k => sae_dir().join(k),
    }
}

fn golden() -> HashMap<String, Array> {
    let (t, _) = mlxi::arrays::read_safetensors(&sae_dir().join("golden.safetensors")).unwrap();
    t.into_iter().collect()
}

fn model() -> Model {
    let opts = LoadOptions {
        dtype: Some(Dtype::Float32),
        ..Default::default()
    };
    Model::load(&format!("{FIXTURES}/llama"), &opts).unwrap()
}

/// The fixture's two input rows (16 tokens each).
fn rows() -> Vec<Vec<u32>> {
    let (t, _) =
        mlxi::arrays::read_safetensors(Path::new(&format!("{FIXTURES}/llama/golden.safetensors")))
            .unwrap();
    let ids = t.into_iter().find(|(k, _)| k == "input_ids").unwrap().1;
    let v = ids.as_dtype(Dtype::Int32).unwrap();
    v.as_slice::<i32>()
        .chunks(16)
        .map(|r| r.iter().map(|&i| i as u32).collect())
        .collect()
}

/// Largest |a - b| relative to the largest |b|.
fn rel_diff(a: &Array, b: &Array) -> f32 {
    let scale = b
        .abs()
        .unwrap()
        .max(None)
        .unwrap()
        .as_dtype(Dtype::Float32)
        .unwrap();
    scale.eval().unwrap();
    max_abs_diff(a, b) / scale.as_slice::<f32>()[0].max(1e-6)
}

#[test]
fn encode_and_decode_match_numpy_for_every_kind() {
    let _g = lock();
    let gold = golden();
    let x = &gold["acts"];
    for kind in KINDS {
        let sae = Sae::load(&sae_path(kind), None).unwrap();
        assert_eq!(
            sae.hook.as_deref(),
            Some("blocks.0.hook_resid_post"),
            "{kind}"
        );
        let f = sae.encode(x).unwrap();
        let d = rel_diff(&f, &gold[&format!("{kind}.encode")]);
        assert!(d < 1e-4, "{kind}: encode differs by {d}");
        let r = sae.reconstruct(x).unwrap();
        let d = rel_diff(&r, &gold[&format!("{kind}.reconstruct")]);
        assert!(d < 1e-4, "{kind}: reconstruct differs by {d}");
        if kind != "standard_cnr" {
            let r2 = sae.decode(&gold[&format!("{kind}.encode")]).unwrap();
            let d = rel_diff(&r2, &gold[&format!("{kind}.reconstruct")]);
            assert!(d < 1e-4, "{kind}: decode differs by {d}");
        } else {
            let err = sae.decode(&f).unwrap_err().to_string();
            assert!(err.contains("sae_reconstruct"), "{err}");
        }
    }
}

fn run_with(m: &mut Model, sae: &Rc<Sae>, edit: SaeEdit, window: Window) -> Array {
    let iv = Intervention {
        point: HookName::ResidPost(0),
        op: Op::Sae {
            sae: sae.clone(),
            edit,
        },
        window,
    };
    iv.check(&[64]).unwrap();
    let id = m.hooks.attach(Hook {
        name: iv.point,
        label: iv.label(),
        steering: false,
        func: iv.into_hook(),
    });
    let out = m.forward_ids(&rows()).unwrap();
    m.hooks.detach(&[id]);
    out
}

#[test]
fn spliced_ablated_and_steered_forwards_match_mlx_lm() {
    let _g = lock();
    common::full_f32();
    let gold = golden();
    let mut m = model();
    let not_first = Window::Positions((1..16).collect());
    for kind in KINDS {
        let sae = Rc::new(Sae::load(&sae_path(kind), None).unwrap());
        let logits = run_with(
            &mut m,
            &sae,
            SaeEdit::Splice { keep_error: false },
            not_first.clone(),
        );
        let d = rel_diff(&logits, &gold[&format!("{kind}.spliced_logits")]);
        assert!(d < 1e-4, "{kind}: spliced logits differ by {d}");
    }
    let sae = Rc::new(Sae::load(&sae_path("topk"), None).unwrap());
    let ablate = SaeEdit::Ablate {
        features: vec![3, 17, 40],
        keep_error: true,
    };
    let logits = run_with(&mut m, &sae, ablate, Window::All);
    let d = rel_diff(&logits, &gold["topk.ablate_logits"]);
    assert!(d < 1e-4, "ablated logits differ by {d}");
    let steer = SaeEdit::Steer {
        features: vec![5],
        scale: 2.5,
    };
    let logits = run_with(&mut m, &sae, steer, Window::Positions((3..16).collect()));
    let d = rel_diff(&logits, &gold["topk.steer_logits"]);
    assert!(d < 1e-4, "steered logits differ by {d}");
    // keep_error leaves the forward exactly as it was.
    let plain = m.forward_ids(&rows()).unwrap();
    let kept = run_with(
        &mut m,
        &sae,
        SaeEdit::Splice { keep_error: true },
        Window::All,
    );
    assert_eq!(max_abs_diff(&plain, &kept), 0.0);
}

#[test]
fn save_and_load_round_trip_bit_exactly() {
    let _g = lock();
    let dir = common::scratch();
    for kind in ["jumprelu", "topk", "gemmascope"] {
        let a = Sae::load(&sae_path(kind), None).unwrap();
        let out = dir.path().join(kind);
        a.save(&out).unwrap();
        let b = Sae::load(&out, None).unwrap();
        assert_eq!(a.activation, b.activation, "{kind}");
        assert_eq!(a.apply_b_dec_to_input, b.apply_b_dec_to_input, "{kind}");
        assert_eq!(a.hook, b.hook, "{kind}");
        let pairs = [
            (&a.w_enc, &b.w_enc),
            (&a.b_enc, &b.b_enc),
            (&a.w_dec, &b.w_dec),
            (&a.b_dec, &b.b_dec),
        ];
        for (x, y) in pairs {
            assert_eq!(x.as_slice::<f32>(), y.as_slice::<f32>(), "{kind}");
        }
        assert_eq!(
            a.threshold.as_ref().map(|t| t.as_slice::<f32>().to_vec()),
            b.threshold.as_ref().map(|t| t.as_slice::<f32>().to_vec()),
            "{kind}"
        );
    }
}

/// A copy of the topk fixture in a scratch folder, with `cfg` edited and tensors replaced.
fn broken(
    dir: &Path,
    name: &str,
    edit_cfg: impl Fn(&mut serde_json::Value),
    tensors: Option<Vec<(&str, Array)>>,
) -> PathBuf {
    let d = dir.join(name);
    std::fs::create_dir_all(&d).unwrap();
    let text = std::fs::read_to_string(sae_path("topk").join("cfg.json")).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(&text).unwrap();
    edit_cfg(&mut cfg);
    std::fs::write(d.join("cfg.json"), cfg.to_string()).unwrap();
    match tensors {
        None => {
            std::fs::copy(
                sae_path("topk").join("sae_weights.safetensors"),
                d.join("sae_weights.safetensors"),
            )
            .unwrap();
        }
        Some(t) => {
            let refs: Vec<(&str, &Array)> = t.iter().map(|(k, a)| (*k, a)).collect();
            mlxi::arrays::write_safetensors(&d.join("sae_weights.safetensors"), &refs, None)
                .unwrap();
        }
    }
    d
}

#[test]
fn bad_files_are_clear_errors() {
    let _g = lock();
    let dir = common::scratch();
    let p = dir.path();
    let z = |s: &[i32]| mlx_rs::ops::zeros::<f32>(s).unwrap();
    let cases: Vec<(PathBuf, &str)> = vec![
        (
            broken(p, "arch", |c| c["architecture"] = "gated".into(), None),
            "architecture \"gated\" is not supported",
        ),
        (
            broken(p, "arch2", |c| c["architecture"] = "SECRET".into(), None),
            "architecture (a value SAELens does not define) is not supported",
        ),
        (
            broken(p, "d_in", |c| c["d_in"] = 32.into(), None),
            "W_enc has shape [64, 128], expected [32, 128]",
        ),
        (
            broken(p, "no_k", |c| c["k"] = serde_json::Value::Null, None),
            "a topk SAE needs 'k'",
        ),
        (
            broken(p, "neg", |c| c["d_sae"] = (-3).into(), None),
            "'d_sae' must be an integer from 1",
        ),
        (
            broken(
                p,
                "missing",
                |_| {},
                Some(vec![
                    ("W_enc", z(&[64, 128])),
                    ("b_enc", z(&[128])),
                    ("W_dec", z(&[128, 64])),
                ]),
            ),
            "the weights have no \"b_dec\"",
        ),
        (
            broken(
                p,
                "extra",
                |_| {},
                Some(vec![
                    ("W_enc", z(&[64, 128])),
                    ("b_enc", z(&[128])),
                    ("W_dec", z(&[128, 64])),
                    ("b_dec", z(&[64])),
                    ("surprise", z(&[2])),
                ]),
            ),
            "unexpected tensors for a topk SAE: \"surprise\"",
        ),
        (
            broken(
                p,
                "bshape",
                |_| {},
                Some(vec![
                    ("W_enc", z(&[64, 128])),
                    ("b_enc", z(&[127])),
                    ("W_dec", z(&[128, 64])),
                    ("b_dec", z(&[64])),
                ]),
            ),
            "b_enc has shape [127], expected [128]",
        ),
    ];
    for (path, want) in cases {
        let err = Sae::load(&path, None).unwrap_err().to_string();
        assert!(err.contains(want), "{}: {err}", path.display());
    }
    // Not JSON, and not an npz: said without quoting the file.
    let d = p.join("garbage");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(d.join("cfg.json"), "SECRET-TEXT {").unwrap();
    let err = Sae::load(&d, None).unwrap_err().to_string();
    assert!(err.contains("not JSON") && !err.contains("SECRET"), "{err}");
    let npz = p.join("x.npz");
    std::fs::write(&npz, "SECRET-TEXT").unwrap();
    let err = Sae::load(&npz, None).unwrap_err().to_string();
    assert!(
        err.contains("not a .npz") && !err.contains("SECRET"),
        "{err}"
    );
}

#[test]
fn script_verbs_check_the_hook_point_and_change_nothing_on_error() {
    let _g = lock();
    let dir = common::scratch();
    let small = broken(
        dir.path(),
        "small",
        |c| c["d_in"] = 32.into(),
        Some(vec![
            ("W_enc", mlx_rs::ops::zeros::<f32>(&[32, 128]).unwrap()),
            ("b_enc", mlx_rs::ops::zeros::<f32>(&[128]).unwrap()),
            ("W_dec", mlx_rs::ops::zeros::<f32>(&[128, 32]).unwrap()),
            ("b_dec", mlx_rs::ops::zeros::<f32>(&[32]).unwrap()),
        ]),
    );
    let topk = dir.path().join("topk");
    std::fs::create_dir_all(&topk).unwrap();
    for f in ["cfg.json", "sae_weights.safetensors"] {
        std::fs::copy(sae_path("topk").join(f), topk.join(f)).unwrap();
    }
    let ctx = mlxi::script::Context::new(dir.path());
    let code = format!(
        r#"let m = load("{FIXTURES}/llama");
           let s = load_sae("{}");
           try {{ hook(m, s.hook, #{{op: "sae_splice", sae: s}}); }} catch (e) {{ print(e); }}
           let n = hooks(m).len();
           let t = load_sae("{}");
           try {{ hook(m, t.hook, #{{op: "sae_ablate", sae: t, features: [128]}}); }} catch (e) {{ print(e); }}
           hook(m, t.hook, #{{op: "sae_steer", sae: t, feature: 2, scale: 1.5, window: "prompt"}});
           [n, hooks(m).len(), hooks(m)[0].hook, t.d_in, t.d_sae, t.k, t.architecture, `${{t}}`]"#,
        small.display(),
        topk.display()
    );
    let v = expect_ok(script(ctx.clone(), &code)).into_array().unwrap();
    assert_eq!(v[0].as_int().unwrap(), 0);
    assert_eq!(v[1].as_int().unwrap(), 1);
    assert_eq!(
        v[2].clone().into_string().unwrap(),
        "sae_steer features=[2] scale=1.5 window=prompt"
    );
    assert_eq!(v[3].as_int().unwrap(), 64);
    assert_eq!(v[4].as_int().unwrap(), 128);
    assert_eq!(v[5].as_int().unwrap(), 8);
    assert_eq!(v[6].clone().into_string().unwrap(), "topk");
    let err = expect_err(script(
        ctx.clone(),
        &format!(
            r#"let m = load("{FIXTURES}/llama"); let s = load_sae("{}");
               hook(m, s.hook, #{{op: "sae_splice", sae: s}})"#,
            small.display()
        ),
    ));
    assert!(
        err.contains("the SAE reads 32 dimensions (d_in); this point has 64"),
        "{err}"
    );
    let err = expect_err(script(
        ctx,
        &format!(
            r#"let m = load("{FIXTURES}/llama"); let s = load_sae("{}");
               hook(m, s.hook, #{{op: "sae_ablate", sae: s, features: [128]}})"#,
            topk.display()
        ),
    ));
    assert!(err.contains("feature 128 is out of range"), "{err}");
}

/// Training on the llama fixture's layer-0 residual stream over random token sequences: a
/// TopK SAE reaches explained variance > 0.8 on held-out tokens within a few hundred steps,
/// and the script verbs report L0 and the change in next-token loss when it is spliced in.
#[test]
fn a_trained_sae_reconstructs_held_out_activations() {
    let _g = lock();
    let dir = common::scratch();
    let ctx = mlxi::script::Context::new(dir.path());
    let code = format!(
        r#"let m = load("{FIXTURES}/llama");
           let texts = [];
           for i in 0..160 {{
               let ids = [];
               for j in 0..32 {{ ids.push((i * 7919 + j * 104729 + i * j * 31) % 300 + 10); }}
               texts.push(ids);
           }}
           let r = sae_train(m, texts, #{{point: "blocks.0.hook_resid_post", d_sae: 128, k: 32,
                                          steps: 600, batch_size: 128, progress: false}});
           save_sae(r.sae, "trained");
           let s = load_sae("trained");
           let e = sae_eval(m, s, texts.extract(0, 8));
           #{{ev: r.explained_variance, l0: r.l0, eval_ev: e.explained_variance,
              eval_l0: e.l0, loss: e.loss, loss_spliced: e.loss_spliced,
              change: e.loss_change, first: r.losses[0], last: r.losses[-1], hook: s.hook}}"#
    );
    let v = expect_ok(script(ctx, &code));
    let m = v.cast::<rhai::Map>();
    let f = |k: &str| m[k].as_float().unwrap();
    println!("trained SAE: {m:?}");
    assert!(f("ev") > 0.8, "held-out explained variance {}", f("ev"));
    assert!((f("l0") - 32.0).abs() < 1e-3, "TopK L0 {}", f("l0"));
    assert!(
        f("last") < 0.2 * f("first"),
        "loss {} -> {}",
        f("first"),
        f("last")
    );
    assert!(f("eval_ev") > 0.8, "{}", f("eval_ev"));
    assert!(f("loss").is_finite() && f("loss_spliced").is_finite());
    assert!((f("change") - (f("loss_spliced") - f("loss"))).abs() < 1e-9);
    assert_eq!(
        m["hook"].clone().into_string().unwrap(),
        "blocks.0.hook_resid_post"
    );
}
