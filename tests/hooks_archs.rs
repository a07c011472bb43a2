//! Hooks, interventions, capture and attention patterns on every architecture (the tiny
//! committed checkpoints in tests/fixtures/models): invariances under batched, left-padded
//! forwards and cached generation.
//!
//! MLX is not thread safe and cargo runs the tests of a file on several threads: every test
//! holds `MLX` while it runs.

mod common;
use common::{load_fixture, max_abs_diff, mlx_lock as lock};

use mlx_rs::{ops, Array};
use mlxi::capture::{capture, Captured, Positions};
use mlxi::generate::GenerateOptions;
use mlxi::hooks::{Hook, HookName};
use mlxi::interventions::{Intervention, Op, PatchSource, Window};
use mlxi::model::Model;

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

/// Two rows of different lengths (the second is left-padded in a batch).
fn rows() -> Vec<Vec<u32>> {
    vec![vec![5, 9, 14, 3, 7, 22, 11], vec![8, 4, 17]]
}

fn attach(model: &mut Model, iv: Intervention) {
    model.hooks.attach(Hook {
        name: iv.point,
        label: iv.label(),
        steering: false,
        func: iv.into_hook(),
    });
}

fn greedy(model: &mut Model, prompts: &[Vec<u32>]) -> Vec<Vec<u32>> {
    let opts = GenerateOptions {
        max_tokens: 6,
        ..Default::default()
    };
    let mut sink = |_: usize, _: &str| Ok(());
    model
        .generate_ids(prompts, &opts, &mut sink)
        .unwrap()
        .into_iter()
        .map(|g| g.ids)
        .collect()
}

#[test]
fn interventions_are_identities_where_they_should_be() {
    let _mlx = lock();
    let mut failures = Vec::new();
    for case in CASES {
        let mut model = load_fixture(case);
        let d = model.info.d_model;
        let n = model.n_layers();
        let base = model.forward_ids(&rows()).unwrap();
        let mut check = |model: &mut Model, what: &str, tol: f32| {
            let got = model.forward_ids(&rows()).unwrap();
            let diff = max_abs_diff(&got, &base);
            if diff > tol {
                failures.push(format!("{case}: {what} changed the logits by {diff}"));
            }
            model.hooks.clear();
        };
        // add of zero everywhere
        for i in 0..n {
            let iv = Intervention {
                point: HookName::ResidPost(i),
                op: Op::Add {
                    vector: ops::zeros::<f32>(&[d]).unwrap(),
                    alpha: 3.0,
                },
                window: Window::All,
            };
            attach(&mut model, iv);
        }
        check(&mut model, "add of zero", 0.0);
        // reflect twice
        let v = mlx_rs::random::normal::<f32>(&[d], None, None, None).unwrap();
        for _ in 0..2 {
            let iv = Intervention {
                point: HookName::ResidMid(0),
                op: Op::Reflect {
                    vector: v.clone(),
                    alpha: 1.0,
                },
                window: Window::All,
            };
            attach(&mut model, iv);
        }
        check(&mut model, "reflect twice", 1e-4);
        // patching with the run's own activations, every token
        let pts = [HookName::ResidPost(0), HookName::Z(n - 1)];
        let c = capture(&mut model, &rows(), &pts, Positions::All, 2, false).unwrap();
        for p in pts {
            let Captured::PerInput(rs) = &c.entries[&p] else {
                unreachable!()
            };
            let iv = Intervention {
                point: p,
                op: Op::Patch(PatchSource::All(rs.clone())),
                window: Window::All,
            };
            attach(&mut model, iv);
        }
        check(&mut model, "patching its own cache", 0.0);
        // a window that selects nothing in a plain forward
        let iv = Intervention {
            point: HookName::ResidPre(0),
            op: Op::Ablate,
            window: Window::Generated,
        };
        attach(&mut model, iv);
        check(&mut model, "a generated-only ablation", 0.0);
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn steering_only_generated_tokens_in_batched_generation() {
    let _mlx = lock();
    let mut failures = Vec::new();
    for case in CASES {
        let mut model = load_fixture(case);
        let d = model.info.d_model;
        let plain = greedy(&mut model, &rows());
        // A generated-only intervention leaves the prompt's activations alone: record the
        // last block's output on every call.
        let record = |model: &mut Model, steer: bool| -> Vec<Array> {
            model.hooks.clear();
            if steer {
                let v = mlx_rs::random::normal::<f32>(&[d], None, None, None).unwrap();
                let iv = Intervention {
                    point: HookName::ResidPost(0),
                    op: Op::Add {
                        vector: v,
                        alpha: 50.0,
                    },
                    window: Window::Generated,
                };
                attach(model, iv);
            }
            let last = HookName::ResidPost(model.n_layers() - 1);
            model.hooks.start_capture(&[last]);
            let _ = greedy(model, &rows());
            let mut got = model.hooks.take_capture();
            model.hooks.clear();
            got.remove(&last).unwrap()
        };
        let a = record(&mut model, false);
        let b = record(&mut model, true);
        let prompt_diff = max_abs_diff(&a[0], &b[0]);
        if prompt_diff != 0.0 {
            failures.push(format!("{case}: the prompt changed by {prompt_diff}"));
        }
        let step_diff = max_abs_diff(&a[1], &b[1]);
        if step_diff == 0.0 {
            failures.push(format!("{case}: the first generated step did not change"));
        }
        // Hooks with nothing to do leave generation unchanged.
        let iv = Intervention {
            point: HookName::ResidPost(0),
            op: Op::Add {
                vector: ops::zeros::<f32>(&[d]).unwrap(),
                alpha: 1.0,
            },
            window: Window::All,
        };
        attach(&mut model, iv);
        if greedy(&mut model, &rows()) != plain {
            failures.push(format!("{case}: add of zero changed generation"));
        }
        model.hooks.clear();
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

#[test]
fn capture_and_attention_under_left_padding() {
    let _mlx = lock();
    let mut failures = Vec::new();
    for case in CASES {
        let mut model = load_fixture(case);
        let n = model.n_layers();
        let pts: Vec<HookName> = vec![
            HookName::Embed,
            HookName::ResidPost(0),
            HookName::Q(n - 1),
            HookName::MlpPost(0),
            HookName::LnFinal,
        ];
        for pos in [
            Positions::Last,
            Positions::Mean,
            Positions::Index(1),
            Positions::Index(-2),
        ] {
            let both = capture(&mut model, &rows(), &pts, pos, 8, false).unwrap();
            for (r, row) in rows().iter().enumerate() {
                let one =
                    capture(&mut model, std::slice::from_ref(row), &pts, pos, 1, false).unwrap();
                for p in &pts {
                    let (Captured::Stacked(a), Captured::Stacked(b)) =
                        (&both.entries[p], &one.entries[p])
                    else {
                        unreachable!()
                    };
                    let a = a.take_axis(Array::from_int(r as i32), 0).unwrap();
                    let b = b.take_axis(Array::from_int(0), 0).unwrap();
                    let diff = max_abs_diff(&a, &b);
                    if diff > 1e-4 {
                        failures.push(format!("{case} {p} {pos}: row {r} differs by {diff}"));
                    }
                }
            }
        }
        // Attention rows sum to 1 (at most 1 with gpt-oss's sinks, which take the rest) and
        // never look ahead, in every layer.
        for layer in 0..n {
            let ids = &rows()[0];
            let t = ids.len() as i32;
            let a = mlxi::analysis::attention(&mut model, ids, layer).unwrap();
            if a.shape() != [model.info.n_heads, t, t] {
                failures.push(format!("{case}: pattern shape {:?}", a.shape()));
                continue;
            }
            let sums = a.sum_axis(-1, None).unwrap();
            if case == "gpt_oss" {
                let s = sums.as_slice::<f32>();
                if s.iter().any(|&x| !(x > 0.0 && x <= 1.0 + 1e-6)) || s.iter().all(|&x| x > 0.999)
                {
                    failures.push(format!("{case} layer {layer}: row sums {s:?} show no sink"));
                }
            } else {
                let ones = ops::ones::<f32>(sums.shape()).unwrap();
                let d = max_abs_diff(&sums, &ones);
                if d > 1e-4 {
                    failures.push(format!("{case} layer {layer}: rows sum to 1 +- {d}"));
                }
            }
            let ahead = Array::from_iter(0..t, &[1, t])
                .gt(Array::from_iter(0..t, &[t, 1]))
                .unwrap();
            let upper = ops::select(&ahead, &a, Array::from_f32(0.0)).unwrap();
            let zeros = ops::zeros::<f32>(upper.shape()).unwrap();
            if max_abs_diff(&upper, &zeros) != 0.0 {
                failures.push(format!("{case} layer {layer}: attends to later tokens"));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
