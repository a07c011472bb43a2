//! The engine without Rhai, on the default model (SmolLM2-135M-Instruct): a hook sees what a
//! capture keeps, steering with a Direction changes the logits by exactly what it adds to the
//! residual stream (checked through the logit lens and a capture further down), a direction
//! is the normalized difference of the groups' mean activations, Directions and caches survive
//! their files, and a probe separates two clearly different kinds of text.
//!
//! One test function: the model is loaded once and MLX stays on one thread.

mod common;
use common::full_f32;

use std::cell::RefCell;
use std::rc::Rc;

use mlx_rs::{Array, Dtype};
use mlxi::arrays::to_f32_vec;
use mlxi::capture::{capture, ActivationCache, Captured, Positions};
use mlxi::directions::{self, Direction, Recipe, Steering};
use mlxi::hooks::{Hook, HookCtx, HookName};
use mlxi::model::{LoadOptions, Model};
use mlxi::probes::{probe_points, Examples, Probe, Settings, Target};

const ANIMALS: [&str; 10] = [
    "The cat slept on the warm windowsill.",
    "A dog barked at the mail carrier.",
    "The horse galloped across the green field.",
    "Two rabbits hid under the garden hedge.",
    "The old owl hooted from the oak tree.",
    "A fox crept quietly past the henhouse.",
    "The cows grazed by the river all day.",
    "A small bird sang outside my window.",
    "The sheep huddled together in the rain.",
    "Our goat ate the farmer's straw hat.",
];

const CODE: [&str; 10] = [
    "def add(a, b): return a + b",
    "for i in range(10): print(i)",
    "import numpy as np",
    "x = [n * n for n in xs if n > 0]",
    "if not os.path.exists(path): os.makedirs(path)",
    "class Point: __slots__ = ('x', 'y')",
    "while queue: node = queue.pop(0)",
    "with open(name) as f: data = f.read()",
    "return sorted(items, key=lambda t: t[1])",
    "assert len(result) == 3, result",
];

fn rows(model: &Model, texts: &[&str]) -> Vec<Vec<u32>> {
    texts
        .iter()
        .map(|t| model.encode(t, true).unwrap())
        .collect()
}

fn values(a: &Array) -> Vec<f32> {
    to_f32_vec(a).unwrap()
}

#[track_caller]
fn assert_close(what: &str, got: &[f32], want: &[f32], tol: f32) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    let worst = got
        .iter()
        .zip(want)
        .map(|(g, w)| (g - w).abs())
        .fold(0.0, f32::max);
    assert!(worst <= tol, "{what}: largest difference {worst} > {tol}");
}

/// The activation at `point` of one input, every position: `[len, d]`.
fn captured_all(model: &mut Model, ids: &[u32], point: HookName) -> Array {
    let c = capture(model, &[ids.to_vec()], &[point], Positions::All, 8, false).unwrap();
    match &c.entries[&point] {
        Captured::PerInput(rows) => rows[0].clone(),
        Captured::Stacked(_) => panic!("positions all gives one array per input"),
    }
}

#[test]
fn engine_without_rhai() {
    full_f32();
    let opts = LoadOptions {
        dtype: Some(Dtype::Float32),
        dequantize: Some(true),
        ..Default::default()
    };
    let mut model = Model::load_default(&opts).expect("run ./setup first");
    let n_layers = model.n_layers();
    let d = model.info.d_model;
    let prompt = model.encode("The weather today is", true).unwrap();
    let t = prompt.len() as i32;

    // A hook sees the same activation that a capture keeps.
    let point = HookName::ResidMid(5);
    let seen: Rc<RefCell<Vec<Array>>> = Rc::default();
    let record = seen.clone();
    model.hooks.attach(Hook {
        name: point,
        label: "record".into(),
        steering: false,
        func: Box::new(move |x: &Array, _: HookCtx<'_>| {
            record.borrow_mut().push(x.clone());
            Ok(None)
        }),
    });
    model.forward_ids(std::slice::from_ref(&prompt)).unwrap();
    model.hooks.clear();
    let hooked = seen.borrow()[0].reshape(&[t, d]).unwrap();
    let captured = captured_all(&mut model, &prompt, point);
    assert_eq!(captured.shape(), &[t, d]);
    assert_close(
        "capture vs hook",
        &values(&captured),
        &values(&hooked),
        1e-5,
    );

    // A direction is the normalized difference of the two groups' mean activations.
    let (animals, code) = (rows(&model, &ANIMALS), rows(&model, &CODE));
    let layer = n_layers - 1;
    let dir: Direction = Recipe::default()
        .direction(&mut model, &animals, &code, layer, "hook_resid_post")
        .unwrap();
    assert_eq!(
        (dir.layer, dir.n, dir.method.as_str()),
        (layer, 20, "mean_diff")
    );
    let v = values(&dir.vector);
    let length = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!(
        (length - 1.0).abs() < 1e-4,
        "a unit vector, got length {length}"
    );
    let mut at = |rows: &[Vec<u32>]| {
        let c = capture(
            &mut model,
            rows,
            &[HookName::ResidPost(layer)],
            Positions::Last,
            32,
            false,
        )
        .unwrap();
        match &c.entries[&HookName::ResidPost(layer)] {
            Captured::Stacked(a) => values(&a.mean_axis(0, None).unwrap()),
            Captured::PerInput(_) => panic!("positions last gives one row per input"),
        }
    };
    let diff: Vec<f32> = at(&animals)
        .iter()
        .zip(at(&code))
        .map(|(p, q)| p - q)
        .collect();
    let diff_norm = diff.iter().map(|x| x * x).sum::<f32>().sqrt();
    assert!((dir.norm as f32 - diff_norm).abs() < 1e-3 * diff_norm);
    let unit: Vec<f32> = diff.iter().map(|x| x / diff_norm).collect();
    assert_close("direction vs mean difference", &v, &unit, 1e-4);

    // Steering at the last block adds alpha * v to its output: the logits are the lens of the
    // unsteered output plus that.
    let alpha = 6.0;
    let last = HookName::ResidPost(layer);
    let plain_logits = model.forward_ids(std::slice::from_ref(&prompt)).unwrap();
    let resid = captured_all(&mut model, &prompt, last);
    let moved = resid
        .add(dir.vector.multiply(Array::from_f32(alpha)).unwrap())
        .unwrap()
        .reshape(&[1, t, d])
        .unwrap();
    let want = model.lens(&moved).unwrap();
    let steering = Steering {
        alpha,
        ..Steering::default()
    };
    directions::steer(&mut model, &dir, &steering).unwrap();
    let steered = model.forward_ids(std::slice::from_ref(&prompt)).unwrap();
    assert_eq!(steered.shape(), want.shape());
    assert_close("steered logits", &values(&steered), &values(&want), 1e-3);
    let change = values(&steered.subtract(&plain_logits).unwrap())
        .iter()
        .fold(0.0f32, |m, x| m.max(x.abs()));
    assert!(change > 0.1, "steering changed the logits by only {change}");

    // Steering earlier: the next block's input is the steered output, alpha * v away.
    model.hooks.clear_steering();
    let early = Steering {
        alpha,
        layers: Some(vec![10]),
        ..Steering::default()
    };
    let before = captured_all(&mut model, &prompt, HookName::ResidPre(11));
    directions::steer(&mut model, &dir, &early).unwrap();
    let after = captured_all(&mut model, &prompt, HookName::ResidPre(11));
    model.hooks.clear_steering();
    let added: Vec<f32> = values(&after.subtract(&before).unwrap());
    let expected: Vec<f32> = (0..t).flat_map(|_| v.iter().map(|x| x * alpha)).collect();
    assert_close("steering adds alpha * v", &added, &expected, 1e-4);
    let unsteered = model.forward_ids(std::slice::from_ref(&prompt)).unwrap();
    assert_close(
        "unsteered logits",
        &values(&unsteered),
        &values(&plain_logits),
        0.0,
    );

    // A Direction and a cache come back from their files unchanged.
    let dir_tmp = tempfile::tempdir().unwrap();
    let path = dir_tmp.path().join("animals.safetensors");
    directions::files::save(&dir, &path).unwrap();
    let back = directions::files::load(&path).unwrap();
    assert_eq!(
        (back.layer, back.point.as_str()),
        (layer, "hook_resid_post")
    );
    assert_close("saved direction", &values(&back.vector), &v, 0.0);
    let cache = capture(
        &mut model,
        &animals,
        &[HookName::ResidPost(3), HookName::ResidPost(7)],
        Positions::Mean,
        4,
        false,
    )
    .unwrap();
    let path = dir_tmp.path().join("cache.safetensors");
    cache.save(&path).unwrap();
    let loaded = ActivationCache::load(&path).unwrap();
    assert_eq!(loaded.points, cache.points);
    assert_eq!(loaded.prompts_hash, cache.prompts_hash);
    for p in &cache.points {
        match (&cache.entries[p], loaded.get(&p.to_string()).unwrap()) {
            (Captured::Stacked(a), Captured::Stacked(b)) => {
                assert_close("loaded cache", &values(b), &values(a), 0.0)
            }
            _ => panic!("a cache of means holds one row per input"),
        }
    }

    // A probe separates prose about animals from lines of Python at every layer it is
    // worth looking at.
    let texts: Vec<Vec<u32>> = animals.iter().chain(&code).cloned().collect();
    let target = Target::Classes {
        y: (0..texts.len())
            .map(|i| usize::from(i < animals.len()))
            .collect(),
        names: vec!["code".into(), "animals".into()],
    };
    let layers = vec![4, 8, 12, 16];
    let points = probe_points(&layers, "hook_resid_post", n_layers).unwrap();
    let examples =
        Examples::capture(&mut model, &texts, &points, Positions::Last, 32, false).unwrap();
    let probe = Probe::fit(
        &model,
        layers,
        "hook_resid_post".into(),
        examples,
        target,
        Settings::default(),
        &|| {},
    )
    .unwrap();
    assert_eq!(probe.kind(), "logistic");
    assert!((probe.target.chance() - 0.5).abs() < 1e-12);
    let best = &probe.results[probe.best()];
    assert!(best.mean >= 0.9, "{}", probe.report());
    assert!(
        probe.report().contains("logistic probe"),
        "{}",
        probe.report()
    );
    // Its direction points from code towards animals.
    let pd = probe.direction_at(probe.best(), 1).unwrap();
    let point = HookName::ResidPost(pd.layer);
    let side = |model: &mut Model, rows: &[Vec<u32>]| -> f32 {
        let c = capture(model, rows, &[point], Positions::Last, 32, false).unwrap();
        let Captured::Stacked(a) = &c.entries[&point] else {
            panic!("positions last gives one row per input")
        };
        let proj = values(&a.matmul(&pd.vector).unwrap());
        proj.iter().sum::<f32>() / proj.len() as f32
    };
    assert!(side(&mut model, &animals) > side(&mut model, &code));
}

/// `examples/engine.rs`, as built by `cargo test` (which builds the examples), runs end to end
/// on the default model and prints what it did.
#[test]
fn the_engine_example_runs() {
    let bin = std::path::Path::new(common::BIN)
        .parent()
        .expect("the target folder")
        .join("examples/engine");
    assert!(
        bin.is_file(),
        "{} is missing: `cargo test --release` builds it",
        bin.display()
    );
    let out = std::process::Command::new(&bin)
        .output()
        .expect("the example runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "stdout:\n{stdout}\nstderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Six prompts, d_model 576: one vector per prompt at the last position.
    for line in [
        "the hook ran 1 time(s)",
        "captured blocks.10.hook_resid_post: [6, 576]",
        "captured blocks.20.hook_resid_post: [6, 576]",
    ] {
        assert!(stdout.contains(line), "no {line:?} in:\n{stdout}");
    }
    let after = |tag: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(tag))
            .unwrap_or_else(|| panic!("no {tag:?} line in:\n{stdout}"))
            .to_string()
    };
    assert_ne!(
        after("plain:"),
        after("steered:"),
        "steering changed nothing"
    );
    let best: f64 = after("best: layer ")
        .split_whitespace()
        .nth(2)
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no accuracy on the best line of:\n{stdout}"));
    assert!(best >= 0.9, "prose against code: best accuracy {best}");
}
