//! The engine from Rust, with no Rhai: load the default model, watch a hook point, capture
//! activations, read a direction from two groups of texts, steer generation with it, and train
//! a probe.
//!
//! ```sh
//! cargo run --release --example engine
//! ```

use std::cell::Cell;
use std::rc::Rc;

use mlx_rs::Array;
use mlxi::capture::{capture, Captured, Positions};
use mlxi::directions::{self, Recipe, Steering};
use mlxi::generate::GenerateOptions;
use mlxi::hooks::{Hook, HookCtx, HookName};
use mlxi::interventions::Window;
use mlxi::model::{LoadOptions, Model};
use mlxi::probes::{probe_points, Examples, Probe, Settings, Target};
use mlxi::Result;

const HAPPY: [&str; 6] = [
    "I am so happy today!",
    "What a wonderful surprise, thank you!",
    "This is the best day of my life.",
    "I love spending time with my friends.",
    "The sun is shining and I feel great.",
    "We won the game and everyone cheered.",
];

const SAD: [&str; 6] = [
    "I feel so sad and alone today.",
    "Nothing ever goes right for me.",
    "This is the worst day of my life.",
    "I miss my friends terribly.",
    "The rain will not stop and I feel awful.",
    "We lost the game and everyone went home quiet.",
];

const CODE: [&str; 6] = [
    "def add(a, b): return a + b",
    "for i in range(10): print(i)",
    "import numpy as np",
    "x = [n * n for n in xs if n > 0]",
    "with open(name) as f: data = f.read()",
    "return sorted(items, key=lambda t: t[1])",
];

fn main() -> Result<()> {
    let mut m = Model::load_default(&LoadOptions::default())?;
    println!("{} ({}, {} layers)", m.info.name, m.info.arch, m.n_layers());
    let encode = |m: &Model, texts: &[&str]| -> Result<Vec<Vec<u32>>> {
        texts.iter().map(|t| m.encode(t, true)).collect()
    };
    let (happy, sad) = (encode(&m, &HAPPY)?, encode(&m, &SAD)?);

    // A hook that only looks: the shape of the residual stream after block 10.
    let calls = Rc::new(Cell::new(0));
    let seen = calls.clone();
    m.hooks.attach(Hook {
        name: HookName::ResidPost(10),
        label: "count".into(),
        steering: false,
        func: Box::new(move |x: &Array, _: HookCtx<'_>| {
            println!("blocks.10.hook_resid_post {:?}", x.shape());
            seen.set(seen.get() + 1);
            Ok(None)
        }),
    });
    m.forward_ids(&happy[..1])?;
    m.hooks.clear();
    println!("the hook ran {} time(s)", calls.get());

    // Capture the last token's residual stream at two layers.
    let points = [HookName::ResidPost(10), HookName::ResidPost(20)];
    let cache = capture(&mut m, &happy, &points, Positions::Last, 32, false)?;
    for p in &points {
        if let Some(Captured::Stacked(a)) = cache.entries.get(p) {
            println!("captured {p}: {:?}", a.shape());
        }
    }

    // A happy-minus-sad direction at layer 15, and generation with and without it (adding one
    // happy-sad gap, the direction's length before normalizing, to each generated token).
    let d = Recipe::default().direction(&mut m, &happy, &sad, 15, "hook_resid_post")?;
    println!("{}", d.summary());
    let prompt = m.encode("Today I feel", true)?;
    let opts = GenerateOptions {
        max_tokens: 12,
        ..GenerateOptions::default()
    };
    let mut quiet = |_: usize, _: &str| Ok(());
    let plain = m.generate_ids(std::slice::from_ref(&prompt), &opts, &mut quiet)?;
    let steering = Steering {
        alpha: d.norm as f32,
        window: Window::Generated,
        ..Steering::default()
    };
    directions::steer(&mut m, &d, &steering)?;
    let steered = m.generate_ids(std::slice::from_ref(&prompt), &opts, &mut quiet)?;
    m.hooks.clear_steering();
    println!("plain:   Today I feel{}", plain[0].text);
    println!("steered: Today I feel{}", steered[0].text);

    // A probe for prose versus code at every fifth layer (each text's mean activation),
    // cross-validated.
    let code = encode(&m, &CODE)?;
    let texts: Vec<Vec<u32>> = happy.iter().chain(&sad).chain(&code).cloned().collect();
    let prose = happy.len() + sad.len();
    let target = Target::Classes {
        y: (0..texts.len()).map(|i| usize::from(i < prose)).collect(),
        names: vec!["code".into(), "prose".into()],
    };
    let layers: Vec<usize> = (0..m.n_layers()).step_by(5).collect();
    let points = probe_points(&layers, "hook_resid_post", m.n_layers())?;
    let examples = Examples::capture(&mut m, &texts, &points, Positions::Mean, 32, false)?;
    let settings = Settings {
        folds: 3,
        ..Settings::default()
    };
    let probe = Probe::fit(
        &m,
        layers,
        "hook_resid_post".into(),
        examples,
        target,
        settings,
        &|| {},
    )?;
    println!("{}", probe.report());
    Ok(())
}
